//! `cargo xtask setup`: makes CubeCL build offline. CubeCL's LLVM bundler downloads a prebuilt
//! LLVM unless a marker file exists in `$XDG_DATA_HOME/tracel/tracel-llvm-<ver>/`; after that it
//! only runs `bin/llvm-config` there. This lays a shim `llvm-config` that forwards to Debian's
//! LLVM 22 (installed with apt-get when missing) and rewrites absolute library paths into `-l`
//! flags. `.cargo/config.toml` points `XDG_DATA_HOME` into `target/`, so nothing outside the
//! checkout is touched. `setup --user` lays the same shim in the user's data directory
//! (`$XDG_DATA_HOME`, else `~/.local/share`), where CubeCL's build looks from any project: then a
//! project outside this workspace that depends on a lapidary crate builds offline too.
//! Idempotent; nothing of this is needed at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The LLVM release CubeCL 0.11.3's bundler expects (directory name only: any LLVM with the same
/// C API works, and Debian's 22 is what this project tests with).
const BUNDLE_DIR: &str = "tracel/tracel-llvm-23.1.0-4";
const SENTINEL: &str = ".tracel-llvm-installed";
const LLVM_MAJOR: u32 = 22;
const PACKAGES: &[&str] =
    &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev", "libxml2-dev", "build-essential"];

/// The shim for this workspace's builds (`target/llvm-shim`, or `$XDG_DATA_HOME` when the caller
/// set one).
pub fn run() -> Result<(), String> {
    let data_home = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(workspace_shim);
    lay_shim(&data_home)
}

/// The shim in the user's data directory, for projects outside this workspace.
pub fn run_user() -> Result<(), String> {
    let data_home = user_data_home()?;
    lay_shim(&data_home)?;
    eprintln!(
        "setup: CubeCL's LLVM shim is in {}; any project depending on a lapidary crate now builds offline",
        data_home.join(BUNDLE_DIR).display()
    );
    Ok(())
}

fn workspace_shim() -> PathBuf {
    crate::workspace_root().join("target/llvm-shim")
}

/// Where CubeCL's build looks outside this workspace: `$XDG_DATA_HOME` as the user set it (the
/// workspace's own value, which cargo sets for this process, does not count), else
/// `~/.local/share`.
fn user_data_home() -> Result<PathBuf, String> {
    match std::env::var_os("XDG_DATA_HOME").map(PathBuf::from) {
        Some(p) if p != workspace_shim() && p.is_absolute() => Ok(p),
        _ => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/share"))
            .ok_or_else(|| "neither XDG_DATA_HOME nor HOME is set: no user data directory".to_string()),
    }
}

/// Installs LLVM when missing and lays the shim and the bundler's marker under `data_home`.
pub fn lay_shim(data_home: &Path) -> Result<(), String> {
    let llvm_config = find_or_install_llvm()?;
    let dir = data_home.join(BUNDLE_DIR);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("creating {}: {e}", bin.display()))?;
    let shim = bin.join("llvm-config");
    let script = shim_script(&llvm_config);
    if std::fs::read_to_string(&shim).ok().as_deref() != Some(script.as_str()) {
        std::fs::write(&shim, &script).map_err(|e| format!("writing {}: {e}", shim.display()))?;
        make_executable(&shim)?;
        eprintln!("setup: llvm-config shim -> {}", llvm_config.display());
    }
    let sentinel = dir.join(SENTINEL);
    if !sentinel.exists() {
        std::fs::write(&sentinel, b"system LLVM via lapidary's shim\n")
            .map_err(|e| format!("writing {}: {e}", sentinel.display()))?;
    }
    Ok(())
}

/// The system `llvm-config` to forward to: `LAPIDARY_LLVM_CONFIG` when set, else Debian's
/// LLVM 22, installed with apt-get (as root) when it or Polly is missing.
fn find_or_install_llvm() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LAPIDARY_LLVM_CONFIG") {
        let p = PathBuf::from(p);
        return if p.exists() { Ok(p) } else { Err(format!("LAPIDARY_LLVM_CONFIG={} does not exist", p.display())) };
    }
    let prefix = PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}"));
    let llvm_config = prefix.join("bin/llvm-config");
    let complete = |p: &Path| {
        p.join("bin/llvm-config").exists()
            && p.join("lib/libPolly.a").exists()
            && has_lib("libzstd.so")
            && has_lib("libz.so")
            && has_lib("libxml2.so")
    };
    if complete(&prefix) {
        return Ok(llvm_config);
    }
    let install = format!("apt-get update && apt-get install -y --no-install-recommends {}", PACKAGES.join(" "));
    if !is_root() {
        return Err(format!(
            "CubeCL needs LLVM {LLVM_MAJOR} with Polly; run as root:\n  {install}\n(or set LAPIDARY_LLVM_CONFIG to another llvm-config)"
        ));
    }
    eprintln!("setup: installing LLVM {LLVM_MAJOR} for CubeCL: {install}");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(&install)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("running apt-get: {e}"))?
        .success();
    if !ok || !complete(&prefix) {
        return Err(format!("installing LLVM {LLVM_MAJOR} failed; the command was:\n  {install}"));
    }
    Ok(llvm_config)
}

fn has_lib(name: &str) -> bool {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/lib64"]
        .iter()
        .any(|d| Path::new(d).join(name).exists())
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

fn shim_script(target: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # Written by `cargo xtask setup`: forwards to the system LLVM; absolute library paths\n\
         # (e.g. /usr/lib/x86_64-linux-gnu/libz3.so) become -l flags, as CubeCL's build expects.\n\
         out=$('{}' \"$@\") || exit $?\n\
         printf '%s\\n' \"$out\" | sed -E 's#(^| )/[^ ]*/lib([A-Za-z0-9_+.-]+)\\.(so|a)[^ ]*#\\1-l\\2#g'\n",
        target.display()
    )
}

#[cfg(unix)]
fn make_executable(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<(), String> {
    Ok(())
}
