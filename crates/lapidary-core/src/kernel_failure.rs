//! Turns a kernel that failed to compile or run into an `Err` at the next host read or sync.
//!
//! CubeCL's runtimes report some failures as panics on their device thread, which the runtime
//! catches and logs; the launch's output buffer is then simply never written and a read returns
//! whatever it held. A panic hook (installed once, chained to the previous hook) records every
//! panic raised inside the runtime's own code; from then on every read and sync of this process
//! fails with that message, since every result computed from the unwritten buffer is garbage.
//! Not a recovery mechanism: the process should stop and report.

use std::panic::PanicHookInfo;
use std::sync::{Mutex, Once};

static HOOK: Once = Once::new();
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

/// Source paths of the crates whose panics mean a failed kernel compile or launch.
const RUNTIME_CRATES: [&str; 3] = ["cubecl", "pliron", "cubek"];

/// Installs the hook once per process.
pub(crate) fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(loc) = info.location()
                && is_runtime_source(loc.file())
            {
                record(format!("{} (at {}:{})", message(info), short_path(loc.file()), loc.line()));
            }
            previous(info);
        }));
    });
}

fn is_runtime_source(file: &str) -> bool {
    let file = file.replace('\\', "/");
    file.split('/').any(|part| RUNTIME_CRATES.iter().any(|c| part.starts_with(c)))
}

/// The path from the crate directory on (`cubecl-llvm-0.11.3/src/cpu/jit/engine.rs`).
fn short_path(file: &str) -> &str {
    let start = RUNTIME_CRATES.iter().filter_map(|c| file.find(&format!("/{c}"))).min();
    start.map_or(file, |i| &file[i + 1..])
}

fn message(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Records a failure (the first one is kept: later ones usually follow from it).
pub(crate) fn record(msg: String) {
    let mut slot = FAILURE.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = Some(msg);
    }
}

/// The recorded failure, if a kernel has failed in this process.
pub fn kernel_failure() -> Option<String> {
    FAILURE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// An error naming the failed kernel when one has failed in this process; `context` says what
/// was being read.
pub(crate) fn check(context: &str) -> crate::Result<()> {
    let Some(msg) = kernel_failure() else { return Ok(()) };
    let builtins = crate::jit_builtins::problem()
        .map(|p| format!(" (the CPU runtime's bf16/f16 conversion builtins are not available: {p})"))
        .unwrap_or_default();
    Err(crate::Error::Runtime(format!(
        "{context}: a kernel failed to compile or run earlier in this process, so this and every \
         later result is unusable: {msg}{builtins}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_sources_are_recognized_and_shortened() {
        let f = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cubecl-llvm-0.11.3/src/cpu/jit/engine.rs";
        assert!(is_runtime_source(f));
        assert_eq!(short_path(f), "cubecl-llvm-0.11.3/src/cpu/jit/engine.rs");
        assert!(is_runtime_source("C:\\cargo\\cubek-matmul-0.3.1\\src\\lib.rs"));
        assert!(!is_runtime_source("crates/lapidary-kernels/src/matmul/mod.rs"));
    }
}
