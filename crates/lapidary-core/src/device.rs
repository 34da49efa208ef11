//! Device selection: which CubeCL runtime and which device a tensor lives on. The CPU runtime is
//! always built; CUDA is built with the `cuda` feature and chosen at run time. Not a memory
//! manager: CubeCL's client owns allocation.

use crate::{Error, Result};
use cubecl::client::Client;
use std::fmt;

/// Which runtime and device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// CubeCL's CPU runtime (kernels JIT-compiled by LLVM, one OS thread per unit).
    Cpu,
    /// A CUDA GPU, by index.
    Cuda(usize),
}

/// A device and the CubeCL client that launches on it. Cheap to clone.
#[derive(Clone)]
pub struct Device {
    kind: DeviceKind,
    client: Client,
}

impl Device {
    /// The CPU runtime.
    pub fn cpu() -> Result<Self> {
        crate::kernel_failure::install_hook();
        // A failure to load them is reported with the first kernel that needs them.
        let _ = crate::jit_builtins::ensure_loaded();
        let d = cubecl::Device::cpu().map_err(|e| Error::Device(format!("cpu: {e}")))?;
        crate::pacing::cpu_device_opened();
        Ok(Device { kind: DeviceKind::Cpu, client: d.client() })
    }

    /// The CUDA GPU at `index`; an error when this build has no `cuda` feature or the machine
    /// has no such GPU.
    pub fn cuda(index: usize) -> Result<Self> {
        crate::kernel_failure::install_hook();
        let d = cubecl::Device::cuda(index).map_err(|e| Error::Device(format!("cuda:{index}: {e}")))?;
        crate::pacing::gpu_device_opened();
        Ok(Device { kind: DeviceKind::Cuda(index), client: d.client() })
    }

    /// Parses `cpu`, `cuda` or `cuda:N`.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec.trim() {
            "cpu" => Self::cpu(),
            "cuda" | "gpu" => Self::cuda(0),
            s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Self::cuda(i),
                _ => Err(Error::Device(format!("unknown device '{s}': expected cpu, cuda or cuda:N"))),
            },
        }
    }

    /// The device named by `LAPIDARY_DEVICE` (`cpu`, `cuda`, `cuda:N`); without it, CUDA device 0
    /// when this build has CUDA and the machine a GPU, else the CPU.
    pub fn from_env() -> Result<Self> {
        Self::named_by_env().unwrap_or_else(|| Self::cuda(0).or_else(|_| Self::cpu()))
    }

    /// The device named by `LAPIDARY_DEVICE`, else the CPU runtime: what tests and examples run
    /// on, so that a CUDA build runs them on a GPU only when asked (`LAPIDARY_DEVICE=cuda`).
    pub fn from_env_or_cpu() -> Result<Self> {
        Self::named_by_env().unwrap_or_else(Self::cpu)
    }

    /// The device `LAPIDARY_DEVICE` names, when it is set and not empty.
    fn named_by_env() -> Option<Result<Self>> {
        std::env::var("LAPIDARY_DEVICE").ok().filter(|s| !s.trim().is_empty()).map(|s| Self::parse(&s))
    }

    /// Which runtime and device this is.
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// True on the CPU runtime.
    pub fn is_cpu(&self) -> bool {
        self.kind == DeviceKind::Cpu
    }

    /// The CubeCL client, for launching kernels.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The most units one cube may have on this device. On the CPU runtime, where each unit is
    /// an OS thread: the logical CPUs this process may use (its affinity mask and cgroup CPU
    /// quota), or [`crate::Settings::cpu_threads`] when that is lower — the CPU kernels run one
    /// unit per thread.
    pub fn max_units_per_cube(&self) -> u32 {
        let hardware = self.client.properties().hardware.max_units_per_cube;
        match crate::settings().cpu_threads {
            Some(threads) if self.is_cpu() => hardware.min(threads.clamp(1, u32::MAX as usize) as u32),
            _ => hardware,
        }
    }

    /// What CubeCL's memory pools hold on this device now, every stream together: bytes handed
    /// out to live tensors and bytes reserved from the driver (pools keep what they reserved
    /// until [`Self::release_memory`], so a reading taken at the end of a step is the step's
    /// peak reservation).
    pub fn memory(&self) -> MemoryStats {
        let usage = self.client.memory_report(cubecl::MemoryScope::Device).usage();
        MemoryStats { in_use: usage.bytes_in_use, reserved: usage.bytes_reserved }
    }

    /// Returns the pools' free pages to the driver (what can be; live tensors stay).
    pub fn release_memory(&self) -> Result<()> {
        self.client.memory_cleanup().map_err(|e| Error::Runtime(format!("{e:?}")))
    }

    /// Waits for every launched kernel to finish; reports a failed launch.
    pub fn sync(&self) -> Result<()> {
        cubecl::future::block_on(self.client.sync()).map_err(|e| Error::Runtime(format!("{e:?}")))?;
        crate::kernel_failure::check(&format!("sync of {self}"))
    }
}

/// Device memory held by CubeCL's pools, in bytes (see [`Device::memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes of live allocations.
    pub in_use: u64,
    /// Bytes reserved from the driver (live allocations, padding and free pool pages).
    pub reserved: u64,
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DeviceKind::Cpu => write!(f, "cpu"),
            DeviceKind::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
