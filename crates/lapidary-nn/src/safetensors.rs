//! safetensors checkpoints on a device: the files themselves (memory-mapped, sharded, written
//! atomically) are `lapidary-io`'s and re-exported here; this adds only what needs a device —
//! [`LoadTensor::load`] uploads a float tensor, [`entry_of`] downloads one for writing.

use lapidary_core::{DType, Device, Result, Tensor};
pub use lapidary_io::safetensors::*;

/// Uploading a float tensor of a checkpoint to a device.
pub trait LoadTensor {
    /// Uploads float tensor `name` to `device` as `dtype` (converted through f32 when the stored
    /// dtype differs); an error naming the file when it is missing or not a float tensor.
    fn load(&self, name: &str, device: &Device, dtype: DType) -> Result<Tensor>;
}

impl LoadTensor for SafetensorsFiles {
    fn load(&self, name: &str, device: &Device, dtype: DType) -> Result<Tensor> {
        let (stored, bytes, shape) = self.float(name)?;
        if stored == dtype {
            Tensor::from_bytes(device, bytes, shape, dtype)
        } else {
            Tensor::from_f32(device, &stored.decode(bytes), shape, dtype)
        }
    }
}

/// The entry for a device tensor (its bytes downloaded, its dtype kept).
pub fn entry_of(name: impl Into<String>, t: &Tensor) -> Result<Entry> {
    let dtype = match t.dtype() {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
    };
    Ok((name.into(), dtype, t.shape().to_vec(), t.to_bytes()?))
}
