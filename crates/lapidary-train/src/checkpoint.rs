//! Checkpoints: everything needed to continue a run exactly — the trainable tensors, the AdamW
//! moments, the step, the data position — in `checkpoint-NNNNNN/` (for LoRA also a PEFT adapter
//! there, so a checkpoint is usable as an adapter). Written into a temporary directory and
//! renamed, so a crash never leaves a half-written checkpoint. Not the training loop.

use lapidary_core::{Error, Result, Tensor};
use lapidary_nn::safetensors::{self, SafetensorsFiles};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a run stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Current pass over the data (0-based).
    pub epoch: usize,
    /// Rows of the current epoch's order already used.
    pub cursor: usize,
    /// Real (non-padding) tokens seen.
    pub tokens: u64,
}

/// What `trainer_state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The run's position.
    pub state: TrainState,
    /// AdamW steps (equal to `state.step`).
    pub optimizer_steps: u64,
    /// The configuration the run was started with.
    pub config: crate::TrainConfig,
}

/// The directory name of the checkpoint after `step` steps.
pub fn dir_name(step: usize) -> String {
    format!("checkpoint-{step:06}")
}

/// Writes a checkpoint into `output_dir/checkpoint-NNNNNN/` atomically; `extra` writes more
/// files (the PEFT adapter) into the temporary directory first. Returns the final path.
pub fn save(
    output_dir: &Path,
    meta: &CheckpointMeta,
    trainable: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dst = output_dir.join(dir_name(meta.state.step));
    let entries = |ts: &[(String, Tensor)]| -> Result<Vec<_>> {
        ts.iter().map(|(n, t)| safetensors::entry_of(n.clone(), t)).collect()
    };
    lapidary_core::fsio::write_dir(&dst, |tmp| {
        safetensors::save(tmp.join("trainable.safetensors"), &entries(trainable)?)?;
        safetensors::save(tmp.join("optimizer.safetensors"), &entries(optimizer)?)?;
        let json = serde_json::to_string_pretty(meta).map_err(|e| Error::invalid(e.to_string()))?;
        lapidary_core::fsio::write_atomic(&tmp.join("trainer_state.json"), json.as_bytes())?;
        extra(tmp)
    })?;
    Ok(dst)
}

/// The newest complete checkpoint in `output_dir`, if any.
pub fn latest(output_dir: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(output_dir) else { return Ok(None) };
    let mut best: Option<(usize, PathBuf)> = None;
    for e in entries {
        let e = e.map_err(|err| Error::io(output_dir, err))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("checkpoint-").and_then(|s| s.parse::<usize>().ok())
            && e.path().join("trainer_state.json").is_file()
            && best.as_ref().is_none_or(|(b, _)| step > *b)
        {
            best = Some((step, e.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// A checkpoint read back.
pub struct Loaded {
    /// `trainer_state.json`.
    pub meta: CheckpointMeta,
    /// `trainable.safetensors`.
    pub trainable: SafetensorsFiles,
    /// `optimizer.safetensors`.
    pub optimizer: SafetensorsFiles,
}

/// Reads a checkpoint directory.
pub fn load(dir: &Path) -> Result<Loaded> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let meta: CheckpointMeta = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("{}: not a lapidary trainer state: {e}", state_path.display())))?;
    Ok(Loaded {
        meta,
        trainable: SafetensorsFiles::open(dir.join("trainable.safetensors"))?,
        optimizer: SafetensorsFiles::open(dir.join("optimizer.safetensors"))?,
    })
}
