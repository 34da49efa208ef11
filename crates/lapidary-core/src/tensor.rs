//! The device tensor: a buffer on a [`Device`] with a shape and a storage [`DType`]. Always
//! contiguous (row-major); views that only change the shape share the buffer. Not an autograd
//! variable (see `lapidary-autograd`) and it has no arithmetic of its own (see `lapidary-kernels`).

use crate::{DType, Device, Error, Result};
use cubecl::server::Handle;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static POISON_OUTPUTS: AtomicBool = AtomicBool::new(false);

/// When on, every tensor made by [`Tensor::uninit`] (every kernel output) is first filled with
/// NaN, so an element a kernel forgets to write shows up in a test. Off by default (it costs an
/// upload per output).
pub fn set_poison_outputs(on: bool) {
    POISON_OUTPUTS.store(on, Ordering::SeqCst);
}

thread_local! {
    static HOST_READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Reads from a device back to the host made by this thread so far ([`Tensor::to_bytes`] and
/// what calls it). Each one waits for the device to finish the work queued before it, so a
/// training step should make a handful, not one per tensor; tests count them.
pub fn host_reads() -> u64 {
    HOST_READS.with(|c| c.get())
}

/// A contiguous tensor on a device.
#[derive(Clone)]
pub struct Tensor {
    handle: Handle,
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
}

impl Tensor {
    /// Uploads f32 host values, stored as `dtype` (rounded to nearest even for 16-bit types).
    pub fn from_f32(device: &Device, values: &[f32], shape: &[usize], dtype: DType) -> Result<Self> {
        check_len("Tensor::from_f32", values.len(), shape)?;
        Self::from_bytes(device, &dtype.encode(values), shape, dtype)
    }

    /// Uploads raw little-endian bytes of `dtype`.
    pub fn from_bytes(device: &Device, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Self> {
        let n: usize = shape.iter().product();
        if bytes.len() != n * dtype.size() {
            return Err(Error::invalid(format!(
                "Tensor::from_bytes: shape {shape:?} of {dtype} needs {} bytes, got {}",
                n * dtype.size(),
                bytes.len()
            )));
        }
        // CubeCL rejects empty buffers on some runtimes; keep one dummy element.
        let handle = if bytes.is_empty() {
            device.client().create_from_slice(&vec![0u8; dtype.size()])
        } else {
            device.client().create_from_slice(bytes)
        };
        Ok(Tensor { handle, shape: shape.to_vec(), dtype, device: device.clone() })
    }

    /// A tensor of zeros.
    pub fn zeros(device: &Device, shape: &[usize], dtype: DType) -> Result<Self> {
        let n: usize = shape.iter().product();
        Self::from_bytes(device, &vec![0u8; n * dtype.size()], shape, dtype)
    }

    /// A tensor whose every element is `value`.
    pub fn full(device: &Device, shape: &[usize], value: f32, dtype: DType) -> Result<Self> {
        let n: usize = shape.iter().product();
        Self::from_f32(device, &vec![value; n], shape, dtype)
    }

    /// An output buffer for a kernel to fill; its contents are unspecified (NaN when output
    /// poisoning is on, see [`set_poison_outputs`]).
    pub fn uninit(device: &Device, shape: &[usize], dtype: DType) -> Result<Self> {
        if POISON_OUTPUTS.load(Ordering::Relaxed) {
            return Self::full(device, shape, f32::NAN, dtype);
        }
        let n: usize = shape.iter().product();
        let handle = device.client().empty(n.max(1) * dtype.size());
        Ok(Tensor { handle, shape: shape.to_vec(), dtype, device: device.clone() })
    }

    /// Downloads and widens to f32.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(self.dtype.decode(&self.to_bytes()?))
    }

    /// Downloads the raw little-endian bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        HOST_READS.with(|c| c.set(c.get() + 1));
        let bytes = self
            .device
            .client()
            .read_one(self.handle.clone())
            .map_err(|e| Error::Runtime(format!("reading a {:?} {} tensor: {e:?}", self.shape, self.dtype)))?;
        crate::kernel_failure::check(&format!("reading a {:?} {} tensor", self.shape, self.dtype))?;
        let n = self.numel() * self.dtype.size();
        Ok(bytes[..n].to_vec())
    }

    /// The same buffer seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape(format!("reshape to {shape:?}"), format!("{} elements", n), &self.shape));
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    /// Shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.shape.len()];
        for i in (0..self.shape.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * self.shape[i + 1];
        }
        s
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Size of dimension `d` (negative counts from the end, as in PyTorch).
    pub fn dim(&self, d: isize) -> usize {
        let r = self.shape.len() as isize;
        self.shape[(if d < 0 { r + d } else { d }) as usize]
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Storage dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the buffer lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The CubeCL buffer handle (for launching kernels).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Whether `other` is this tensor: the same memory (not merely equal values), offset, shape
    /// and dtype. While either is alive its memory is not given to another tensor, so a cache
    /// that holds one can tell it from a later tensor.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        std::ptr::eq(self.handle.memory.descriptor(), other.handle.memory.descriptor())
            && self.handle.offset_start == other.handle.offset_start
            && self.shape == other.shape
            && self.dtype == other.dtype
    }

    /// Bytes the buffer holds.
    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// An error unless the shape equals `expected`; `context` names the tensor or op.
    pub fn expect_shape(&self, context: &str, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(Error::shape(context, format!("{expected:?}"), &self.shape));
        }
        Ok(())
    }

    /// An error unless the dtype is one of `allowed`.
    pub fn expect_dtype(&self, context: &str, allowed: &[DType]) -> Result<()> {
        if !allowed.contains(&self.dtype) {
            let names: Vec<_> = allowed.iter().map(|d| d.name()).collect();
            return Err(Error::DType { context: context.into(), expected: names.join(" or "), got: self.dtype });
        }
        Ok(())
    }
}

fn check_len(context: &str, len: usize, shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    if len != n {
        return Err(Error::invalid(format!("{context}: shape {shape:?} holds {n} elements, got {len} values")));
    }
    Ok(())
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {}, {})", self.shape, self.dtype, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_views() {
        let d = Device::cpu().unwrap();
        let vals: Vec<f32> = (0..12).map(|i| i as f32 * 0.37 - 2.0).collect();
        let t = Tensor::from_f32(&d, &vals, &[3, 4], DType::F32).unwrap();
        assert_eq!(t.strides(), vec![4, 1]);
        assert_eq!(t.to_f32_vec().unwrap(), vals);
        let r = t.reshape(&[2, 6]).unwrap();
        assert_eq!(r.to_f32_vec().unwrap(), vals);
        let err = t.reshape(&[5]).unwrap_err().to_string();
        assert!(err.contains("reshape to [5]") && err.contains("[3, 4]"), "{err}");
        let err = Tensor::from_f32(&d, &vals, &[5, 5], DType::F32).unwrap_err().to_string();
        assert!(err.contains("25 elements") && err.contains("12 values"), "{err}");
    }
}
