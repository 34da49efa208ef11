//! Per-kernel time of a pass, from CubeCL's launch observer: every kernel launched while a
//! [`profile`] call is recording is timed on its own (the runtime waits for each one, so the
//! pass runs slower than unprofiled and the sum is each kernel's own cost), and the rest of the
//! pass's wall time is host work between launches. Not a sampling profiler: time spent on the
//! host is one figure, not broken down.

use crate::core::cubecl::logging::{Duration, LaunchObservation, LaunchObserver, TimingMethod, TimingRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One kernel's launches and time.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelRow {
    /// The kernel's name, as CubeCL knows it (generic parameters and hashes removed).
    pub kernel: String,
    /// Launches.
    pub launches: usize,
    /// Seconds, summed over its launches.
    pub seconds: f64,
}

/// The kernels of one pass, slowest first, and its wall time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassProfile {
    /// Per kernel, slowest first.
    pub rows: Vec<KernelRow>,
    /// Wall seconds of the whole pass while profiled.
    pub wall_s: f64,
}

impl PassProfile {
    /// Seconds in kernels, all together.
    pub fn kernel_s(&self) -> f64 {
        self.rows.iter().map(|r| r.seconds).sum()
    }

    /// Launches, all together.
    pub fn launches(&self) -> usize {
        self.rows.iter().map(|r| r.launches).sum()
    }

    /// Wall time not inside a kernel: the host's work between launches (and the waits that
    /// timing each kernel adds).
    pub fn host_s(&self) -> f64 {
        (self.wall_s - self.kernel_s()).max(0.0)
    }

    /// A plain-text table: kernel, launches, total and mean time, share of the wall time.
    pub fn table(&self) -> String {
        let mut s = format!("{:<44} {:>8} {:>11} {:>11} {:>7}\n", "kernel", "launches", "total ms", "mean us", "share");
        let pct = |x: f64| if self.wall_s > 0.0 { 100.0 * x / self.wall_s } else { 0.0 };
        for r in &self.rows {
            s += &format!(
                "{:<44} {:>8} {:>11.2} {:>11.1} {:>6.1}%\n",
                r.kernel,
                r.launches,
                r.seconds * 1e3,
                r.seconds * 1e6 / r.launches.max(1) as f64,
                pct(r.seconds)
            );
        }
        s += &format!(
            "{:<44} {:>8} {:>11.2} {:>11} {:>6.1}%\n",
            "all kernels",
            self.launches(),
            self.kernel_s() * 1e3,
            "",
            pct(self.kernel_s())
        );
        s += &format!(
            "{:<44} {:>8} {:>11.2} {:>11} {:>6.1}%\n",
            "host between launches",
            "",
            self.host_s() * 1e3,
            "",
            pct(self.host_s())
        );
        s
    }

    /// As JSON (for tables made elsewhere).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "wall_s": self.wall_s,
            "kernel_s": self.kernel_s(),
            "host_s": self.host_s(),
            "launches": self.launches(),
            "kernels": self.rows.iter().map(|r| serde_json::json!({
                "kernel": r.kernel, "launches": r.launches, "seconds": r.seconds,
            })).collect::<Vec<_>>(),
        })
    }
}

#[derive(Default)]
struct Recorder {
    per_kernel: Mutex<HashMap<&'static str, (usize, f64)>>,
}

impl LaunchObserver for Recorder {
    fn launched(&self, kernel: &'static str) {
        self.per_kernel.lock().unwrap_or_else(|p| p.into_inner()).entry(kernel).or_default().0 += 1;
    }

    fn timing(&self) -> TimingRequest {
        TimingRequest::Resolved
    }

    fn timed(&self, kernel: &'static str, duration: Duration, _method: TimingMethod) {
        self.per_kernel.lock().unwrap_or_else(|p| p.into_inner()).entry(kernel).or_default().1 +=
            duration.as_secs_f64();
    }
}

/// Runs `pass` with every kernel launch timed; returns its result and the profile.
pub fn profile<T>(pass: impl FnOnce() -> T) -> (T, PassProfile) {
    let recorder = Arc::new(Recorder::default());
    let watching = LaunchObservation::new(recorder.clone());
    let start = Instant::now();
    let out = pass();
    let wall_s = start.elapsed().as_secs_f64();
    drop(watching);
    let table = recorder.per_kernel.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut merged: HashMap<String, KernelRow> = HashMap::new();
    for (kernel, (launches, seconds)) in table {
        let name = short_name(kernel);
        let row = merged.entry(name.clone()).or_insert(KernelRow { kernel: name, launches: 0, seconds: 0.0 });
        row.launches += launches;
        row.seconds += seconds;
    }
    let mut rows: Vec<KernelRow> = merged.into_values().collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then_with(|| a.kernel.cmp(&b.kernel)));
    (out, PassProfile { rows, wall_s })
}

/// `a::b::matmul_kernel<f32, 8>` -> `matmul_kernel`; instantiations of one kernel merge.
fn short_name(kernel: &str) -> String {
    let base = kernel.split('<').next().unwrap_or(kernel);
    base.rsplit("::").next().unwrap_or(base).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_paths_and_generics() {
        assert_eq!(short_name("lapidary_kernels::matmul::kernel::matmul_kernel<f32, 8>"), "matmul_kernel");
        assert_eq!(short_name("softmax"), "softmax");
    }
}
