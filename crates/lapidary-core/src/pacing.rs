//! Launch pacing on the CPU runtime: every kernel is run to completion before the next one is
//! issued. CubeCL's CPU runtime hands each unit of a queued kernel to the least-loaded worker
//! thread; with launches queued ahead, both units of a kernel can land behind the same worker and
//! run one after the other while the other core waits on the kernel order (the likely cause).
//! Issued one at a time they spread over the workers. Measured on 2 Zen 4 cores: the Gemma 3 270M
//! LoRA step (512 tokens) 16.7-18.5 s queued, 14.7-15.6 s paced; the tiny VLM's training about
//! 5x the tokens/s; the same losses. Done through CubeCL's process-wide launch observer asking
//! for each launch's time (which waits for the kernel), as long as a CPU device exists and no GPU
//! device was opened; `LAPIDARY_CPU_PACING=0` (or `Settings::cpu_pacing`) turns it off. Not a profiler (see the `lapidary`
//! crate's `profile` for that).

use cubecl::logging::{LaunchObservation, LaunchObserver, TimingRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

struct Paced;

impl LaunchObserver for Paced {
    fn launched(&self, _kernel: &'static str) {}

    fn timing(&self) -> TimingRequest {
        TimingRequest::Resolved
    }
}

static PACING: Mutex<Option<LaunchObservation>> = Mutex::new(None);
static GPU_OPENED: AtomicBool = AtomicBool::new(false);

/// Paces launches from now on, unless turned off or a GPU device is open.
pub(crate) fn cpu_device_opened() {
    if !crate::settings().cpu_pacing {
        return;
    }
    let mut slot = PACING.lock().unwrap_or_else(|p| p.into_inner());
    if !GPU_OPENED.load(Ordering::Relaxed) && slot.is_none() {
        *slot = Some(LaunchObservation::new(Arc::new(Paced)));
    }
}

/// A GPU's launches must stay queued: stop pacing for the rest of the process.
pub(crate) fn gpu_device_opened() {
    GPU_OPENED.store(true, Ordering::Relaxed);
    PACING.lock().unwrap_or_else(|p| p.into_inner()).take();
}
