//! [`Settings`]: the process-wide choices of how kernels run — the attention path, whether fused
//! attention stages f32 products in bf16, CPU launch pacing, how many threads a CPU kernel runs
//! on, the CPU caches its blocking is sized for — decided in one place: read once from the
//! environment ([`Settings::from_env`]: `LAPIDARY_ATTENTION`, `LAPIDARY_ATTENTION_PRODUCTS`,
//! `LAPIDARY_CPU_PACING`, `LAPIDARY_THREADS`, `LAPIDARY_CPU_CACHES`), or set by a program
//! ([`set_settings`]) before its first kernel. The kernels ask [`settings`]; nothing else reads
//! these variables. Not the device choice (`Device::from_env`).

use std::sync::RwLock;

/// Which attention implementation runs (lapidary-kernels' `attention` module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionPath {
    /// Fused in the CPU's shape on the CPU runtime (faster there at every length measured, 16 to
    /// 8,192 tokens), fused in the GPU's shape on GPUs.
    #[default]
    Auto,
    /// Scores and probabilities materialized (the reference).
    Materialized,
    /// Fused, O(T·D) memory, in the CPU's shape: a unit per four query rows, a block of keys in
    /// one vector register.
    Flash,
    /// Fused, O(T·D) memory, in the GPU's shape: a cube per block of query rows, a plane per 16
    /// of them, tiles in shared memory, products on tensor cores where the device has them. Runs
    /// on the CPU runtime too (without tensor cores), where it is tested; the CPU-shaped kernel
    /// takes over when a tile of the head dimension does not fit in shared memory.
    Tiled,
}

/// How the GPU-shaped fused attention multiplies f32 tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionProducts {
    /// In the tensors' own dtype (f32 stays f32).
    #[default]
    AsStored,
    /// f32 tensors staged in bf16 so that their products run on tensor cores (as HF's bf16 model
    /// computes attention); softmax, accumulation and results stay f32.
    Bf16,
}

/// The process-wide kernel settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The attention path ([`AttentionPath::Auto`] picks by device).
    pub attention: AttentionPath,
    /// How fused attention multiplies f32 tensors.
    pub attention_products: AttentionProducts,
    /// On the CPU runtime, each kernel runs to completion before the next is issued (`pacing`).
    pub cpu_pacing: bool,
    /// On the CPU runtime, the most units (threads) one kernel runs on; `None`: one per logical
    /// CPU this process may use (its affinity mask and cgroup CPU quota). Never more than that.
    pub cpu_threads: Option<usize>,
    /// On the CPU runtime, the caches kernels size their blocking for; `None`: the running
    /// CPU's ([`crate::cpu::caches`]).
    pub cpu_caches: Option<crate::cpu::CpuCaches>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            attention: AttentionPath::Auto,
            attention_products: AttentionProducts::AsStored,
            cpu_pacing: true,
            cpu_threads: None,
            cpu_caches: None,
        }
    }
}

impl Settings {
    /// The defaults, changed by `LAPIDARY_ATTENTION=flash|tiled|materialized`,
    /// `LAPIDARY_ATTENTION_PRODUCTS=bf16`, `LAPIDARY_CPU_PACING=0`, `LAPIDARY_THREADS=N` and
    /// `LAPIDARY_CPU_CACHES=l1d=32K,l2=512K`. An unknown value is an error naming the variable
    /// and the values it takes.
    pub fn from_env() -> crate::Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> crate::Result<Self> {
        let mut s = Settings::default();
        let bad = |name: &str, value: &str, allowed: &str| {
            crate::Error::invalid(format!("{name}={value:?}: expected one of {allowed}"))
        };
        if let Some(v) = var("LAPIDARY_ATTENTION").filter(|v| !v.trim().is_empty()) {
            s.attention = match v.trim() {
                "auto" => AttentionPath::Auto,
                "flash" => AttentionPath::Flash,
                "tiled" => AttentionPath::Tiled,
                "materialized" => AttentionPath::Materialized,
                other => return Err(bad("LAPIDARY_ATTENTION", other, "auto, flash, tiled, materialized")),
            };
        }
        if let Some(v) = var("LAPIDARY_ATTENTION_PRODUCTS").filter(|v| !v.trim().is_empty()) {
            s.attention_products = match v.trim() {
                "bf16" => AttentionProducts::Bf16,
                "f32" | "as-stored" => AttentionProducts::AsStored,
                other => return Err(bad("LAPIDARY_ATTENTION_PRODUCTS", other, "bf16, f32")),
            };
        }
        if let Some(v) = var("LAPIDARY_CPU_PACING").filter(|v| !v.trim().is_empty()) {
            s.cpu_pacing = match v.trim() {
                "0" | "off" => false,
                "1" | "on" => true,
                other => return Err(bad("LAPIDARY_CPU_PACING", other, "0, 1")),
            };
        }
        if let Some(v) = var("LAPIDARY_THREADS").filter(|v| !v.trim().is_empty()) {
            s.cpu_threads = match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(bad("LAPIDARY_THREADS", v.trim(), "a positive number of threads")),
            };
        }
        if let Some(v) = var("LAPIDARY_CPU_CACHES").filter(|v| !v.trim().is_empty()) {
            s.cpu_caches = Some(
                crate::cpu::CpuCaches::parse(&v)
                    .map_err(|e| crate::Error::invalid(format!("LAPIDARY_CPU_CACHES={:?}: {e}", v.trim())))?,
            );
        }
        Ok(s)
    }
}

static SETTINGS: RwLock<Option<Settings>> = RwLock::new(None);

/// The settings in force: those set by [`set_settings`], else the environment's (read once; a
/// malformed variable is reported on stderr and the defaults are used).
pub fn settings() -> Settings {
    if let Some(s) = *SETTINGS.read().unwrap_or_else(|p| p.into_inner()) {
        return s;
    }
    let mut slot = SETTINGS.write().unwrap_or_else(|p| p.into_inner());
    *slot.get_or_insert_with(|| {
        Settings::from_env().unwrap_or_else(|e| {
            eprintln!("lapidary: {e}; using the default settings");
            Settings::default()
        })
    })
}

/// Sets the settings for the rest of the process (kernels launched from now on follow them).
pub fn set_settings(s: Settings) {
    *SETTINGS.write().unwrap_or_else(|p| p.into_inner()) = Some(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_set_the_settings_and_unknown_values_are_named() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(Settings::from_vars(vars(&[])).unwrap(), Settings::default());
        let s = Settings::from_vars(vars(&[
            ("LAPIDARY_ATTENTION", "tiled"),
            ("LAPIDARY_ATTENTION_PRODUCTS", "bf16"),
            ("LAPIDARY_CPU_PACING", "0"),
            ("LAPIDARY_THREADS", "3"),
            ("LAPIDARY_CPU_CACHES", "l1d=32K,l2=512K"),
        ]))
        .unwrap();
        assert_eq!(
            s,
            Settings {
                attention: AttentionPath::Tiled,
                attention_products: AttentionProducts::Bf16,
                cpu_pacing: false,
                cpu_threads: Some(3),
                cpu_caches: Some(crate::cpu::CpuCaches { l1d: 32 << 10, l2: 512 << 10 }),
            }
        );
        let e = Settings::from_vars(vars(&[("LAPIDARY_ATTENTION", "fast")])).unwrap_err().to_string();
        assert!(e.contains("LAPIDARY_ATTENTION") && e.contains("\"fast\"") && e.contains("materialized"), "{e}");
        let e = Settings::from_vars(vars(&[("LAPIDARY_CPU_PACING", "no")])).unwrap_err().to_string();
        assert!(e.contains("LAPIDARY_CPU_PACING"), "{e}");
        let e = Settings::from_vars(vars(&[("LAPIDARY_CPU_CACHES", "l1d=32K")])).unwrap_err().to_string();
        assert!(e.contains("LAPIDARY_CPU_CACHES") && e.contains("l2"), "{e}");
        for bad in ["0", "-1", "two"] {
            let e = Settings::from_vars(move |name: &str| (name == "LAPIDARY_THREADS").then(|| bad.to_string()))
                .unwrap_err()
                .to_string();
            assert!(e.contains("LAPIDARY_THREADS") && e.contains("positive"), "{e}");
        }
    }
}
