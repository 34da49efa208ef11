//! The running CPU's per-core data caches, which the CPU runtime's kernels size their blocking
//! from (lapidary-kernels' matmul walks K in blocks that keep a block of tiles in L2). Read
//! once: Linux's `/sys/devices/system/cpu/cpu0/cache`, else CPUID (leaf 4 on Intel, 0x8000001D
//! on AMD), else [`CpuCaches::FALLBACK`]; `LAPIDARY_CPU_CACHES`
//! (see [`crate::Settings`]) replaces what was read, for a machine that reports its caches wrong
//! (virtual machines often do) or to see another CPU's choice. Not the vector width
//! ([`crate::launch::cpu_register_lanes`]) and not the core count.

use std::fmt;

/// Per-core data cache sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuCaches {
    /// The level-1 data cache.
    pub l1d: usize,
    /// The level-2 cache (unified or data).
    pub l2: usize,
}

/// Where [`caches`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSource {
    /// `LAPIDARY_CPU_CACHES` or [`crate::set_settings`].
    Settings,
    /// Linux's sysfs.
    Sysfs,
    /// The CPUID instruction.
    Cpuid,
    /// Nothing could be read: [`CpuCaches::FALLBACK`].
    Fallback,
}

impl CpuCaches {
    /// Assumed when the caches cannot be read: as small as common x86-64 cores of the last
    /// decade have (32 KiB L1d, 256 KiB L2), so blocking sized from them fits every such CPU.
    pub const FALLBACK: CpuCaches = CpuCaches { l1d: 32 << 10, l2: 256 << 10 };

    /// Parses `l1d=32K,l2=512K` (sizes in bytes, or with a K or M suffix; both keys required).
    pub fn parse(text: &str) -> Result<CpuCaches, String> {
        let (mut l1d, mut l2) = (None, None);
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?} is not key=size"))?;
            let bytes = parse_size(value.trim()).ok_or_else(|| format!("{value:?} is not a size such as 48K or 2M"))?;
            match key.trim().to_ascii_lowercase().as_str() {
                "l1d" => l1d = Some(bytes),
                "l2" => l2 = Some(bytes),
                other => return Err(format!("unknown cache {other:?} (l1d, l2)")),
            }
        }
        match (l1d, l2) {
            (Some(l1d), Some(l2)) if l1d >= 1024 && l2 >= l1d => Ok(CpuCaches { l1d, l2 }),
            (Some(_), Some(_)) => Err("l1d must be at least 1K and l2 at least l1d".into()),
            _ => Err("both l1d and l2 are needed, e.g. l1d=32K,l2=512K".into()),
        }
    }
}

impl fmt::Display for CpuCaches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L1d {}, L2 {}", human(self.l1d), human(self.l2))
    }
}

impl fmt::Display for CacheSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheSource::Settings => "LAPIDARY_CPU_CACHES",
            CacheSource::Sysfs => "sysfs",
            CacheSource::Cpuid => "CPUID",
            CacheSource::Fallback => "not readable, assumed",
        })
    }
}

/// `48K`, `2M`, `2048K`, `49152`.
fn parse_size(text: &str) -> Option<usize> {
    let (digits, scale) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 1usize << 10),
        b'M' | b'm' => (&text[..text.len() - 1], 1 << 20),
        _ => (text, 1),
    };
    digits.trim().parse::<usize>().ok()?.checked_mul(scale)
}

/// A size in KiB or MiB when it is a whole number of them.
fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// The caches in force and where they came from: the settings' when set, else the CPU's (read
/// once per process).
pub fn caches() -> (CpuCaches, CacheSource) {
    if let Some(c) = crate::settings().cpu_caches {
        return (c, CacheSource::Settings);
    }
    static READ: std::sync::OnceLock<(CpuCaches, CacheSource)> = std::sync::OnceLock::new();
    *READ.get_or_init(|| {
        if let Some(c) = from_sysfs(std::path::Path::new("/sys/devices/system/cpu/cpu0/cache")) {
            return (c, CacheSource::Sysfs);
        }
        if let Some(c) = from_cpuid() {
            return (c, CacheSource::Cpuid);
        }
        (CpuCaches::FALLBACK, CacheSource::Fallback)
    })
}

/// Reads `index*/{level,type,size}` under a sysfs cache directory.
fn from_sysfs(dir: &std::path::Path) -> Option<CpuCaches> {
    let (mut l1d, mut l2) = (None, None);
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok().map(|s| s.trim().to_string());
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else { continue };
        let Some(bytes) = parse_size(&size) else { continue };
        match (level.as_str(), kind.as_str()) {
            ("1", "Data") => l1d = Some(bytes),
            ("2", "Unified" | "Data") => l2 = Some(bytes),
            _ => {}
        }
    }
    plausible(l1d?, l2?)
}

/// CPUID's deterministic cache parameters: leaf 4 (Intel), 0x8000001D (AMD).
#[cfg(target_arch = "x86_64")]
fn from_cpuid() -> Option<CpuCaches> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaves past the reported maximum are not read.
    let max_basic = __cpuid(0).eax;
    let max_extended = __cpuid(0x8000_0000).eax;
    let leaf = if max_extended >= 0x8000_001D && __cpuid_count(0x8000_001D, 0).eax & 0x1f != 0 {
        0x8000_001D
    } else if max_basic >= 4 {
        4
    } else {
        return None;
    };
    let (mut l1d, mut l2) = (None, None);
    for sub in 0..16 {
        let r = __cpuid_count(leaf, sub);
        let kind = r.eax & 0x1f;
        if kind == 0 {
            break;
        }
        let level = (r.eax >> 5) & 0x7;
        let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
        let partitions = ((r.ebx >> 12) & 0x3ff) as usize + 1;
        let line = (r.ebx & 0xfff) as usize + 1;
        let sets = r.ecx as usize + 1;
        let bytes = ways * partitions * line * sets;
        match (level, kind) {
            (1, 1) => l1d = Some(bytes),
            (2, 1 | 3) => l2 = Some(bytes),
            _ => {}
        }
    }
    plausible(l1d?, l2?)
}

#[cfg(not(target_arch = "x86_64"))]
fn from_cpuid() -> Option<CpuCaches> {
    None
}

/// Sizes no CPU has are taken as a misreport.
fn plausible(l1d: usize, l2: usize) -> Option<CpuCaches> {
    ((4 << 10..=1 << 20).contains(&l1d) && (l1d..=256 << 20).contains(&l2)).then_some(CpuCaches { l1d, l2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_overrides_parse_and_bad_ones_are_named() {
        assert_eq!(CpuCaches::parse("l1d=32K,l2=512K").unwrap(), CpuCaches { l1d: 32 << 10, l2: 512 << 10 });
        assert_eq!(CpuCaches::parse(" L2=2M , l1d=49152 ").unwrap(), CpuCaches { l1d: 48 << 10, l2: 2 << 20 });
        for (bad, says) in [
            ("l1d=32K", "both"),
            ("l1d=32K,l2=big", "\"big\""),
            ("l1d=32K,l3=8M", "\"l3\""),
            ("l1d=32K;l2=1M", "not a size"),
            ("l1d", "key=size"),
            ("l1d=1M,l2=512K", "at least"),
        ] {
            let e = CpuCaches::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(CpuCaches { l1d: 48 << 10, l2: 2 << 20 }.to_string(), "L1d 48 KiB, L2 2 MiB");
    }

    #[test]
    fn sysfs_layout_is_read_level_by_level() {
        let dir = std::env::temp_dir().join(format!("lapidary-cpu-caches-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (index, level, kind, size) in
            [("index0", "1", "Data", "48K"), ("index1", "1", "Instruction", "64K"), ("index2", "2", "Unified", "2048K")]
        {
            let d = dir.join(index);
            std::fs::create_dir_all(&d).unwrap();
            for (name, value) in [("level", level), ("type", kind), ("size", size)] {
                std::fs::write(d.join(name), format!("{value}\n")).unwrap();
            }
        }
        assert_eq!(from_sysfs(&dir), Some(CpuCaches { l1d: 48 << 10, l2: 2 << 20 }));
        // Without an L2 entry nothing is guessed.
        std::fs::remove_dir_all(dir.join("index2")).unwrap();
        assert_eq!(from_sysfs(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_running_cpu_reports_plausible_caches() {
        let (c, source) = caches();
        assert!(plausible(c.l1d, c.l2).is_some(), "{c} from {source}");
        #[cfg(target_arch = "x86_64")]
        if let Some(from_cpu) = from_cpuid() {
            assert!(plausible(from_cpu.l1d, from_cpu.l2).is_some(), "{from_cpu}");
        }
    }
}
