//! A stand-in for the CUDA driver (`libcuda.so.1`) that `cargo xtask cuda-check` builds and puts
//! first on the library path, so that lapidary's CUDA builds start on a machine without a GPU and
//! compile every kernel they launch through CubeCL's real CUDA code paths (LLVM's NVPTX back end,
//! or CUDA C++ through the real NVRTC).
//!
//! It is not an emulator: kernels are never run. "Device" memory is host memory (a device pointer
//! is a host address), copies are `memcpy`, every launch is recorded — kernel name, grid, block,
//! dynamic shared memory — to the file named by `LAPIDARY_FAKE_CUDA_LOG`, and checked against the
//! card's limits. The card it describes is an H100/H200-class part; `LAPIDARY_FAKE_CUDA_SM`
//! (`80`, `90`) picks the compute capability, which is what the PTX is generated for.
//!
//! Built by xtask with `rustc --crate-type cdylib`; depends on nothing but std.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

type CUresult = c_int;
const SUCCESS: CUresult = 0;
const INVALID_VALUE: CUresult = 1;
const OUT_OF_MEMORY: CUresult = 2;
const NOT_FOUND: CUresult = 500;

/// Live allocations: address → layout, for frees.
static ALLOCATIONS: Mutex<Option<HashMap<usize, std::alloc::Layout>>> = Mutex::new(None);
/// Function handles: a handle is an index into this list of kernel names (plus one).
static FUNCTIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Modules loaded so far, naming their PTX files.
static MODULES: AtomicUsize = AtomicUsize::new(0);
static LOG: Mutex<Option<std::fs::File>> = Mutex::new(None);

fn sm() -> i32 {
    std::env::var("LAPIDARY_FAKE_CUDA_SM").ok().and_then(|s| s.parse().ok()).unwrap_or(90)
}

/// Opt-in shared memory per block the card allows: 227 KiB on sm_90, 163 KiB on sm_80.
fn max_shared_optin() -> i32 {
    if sm() >= 90 { 232_448 } else { 166_912 }
}

fn log_line(line: &str) {
    let mut log = LOG.lock().unwrap();
    if log.is_none()
        && let Some(path) = std::env::var_os("LAPIDARY_FAKE_CUDA_LOG")
    {
        *log = std::fs::OpenOptions::new().create(true).append(true).open(path).ok();
    }
    if let Some(f) = log.as_mut() {
        let _ = writeln!(f, "{line}");
    }
}

fn alloc(bytes: usize) -> *mut u8 {
    let layout = match std::alloc::Layout::from_size_align(bytes.max(1), 256) {
        Ok(l) => l,
        Err(_) => return std::ptr::null_mut(),
    };
    // Zeroed: a kernel that "ran" here wrote nothing, and zeros keep the caller's arithmetic finite.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if !ptr.is_null() {
        ALLOCATIONS.lock().unwrap().get_or_insert_with(HashMap::new).insert(ptr as usize, layout);
    }
    ptr
}

fn free(ptr: usize) -> CUresult {
    if ptr == 0 {
        return SUCCESS;
    }
    match ALLOCATIONS.lock().unwrap().get_or_insert_with(HashMap::new).remove(&ptr) {
        Some(layout) => {
            unsafe { std::alloc::dealloc(ptr as *mut u8, layout) };
            SUCCESS
        }
        None => INVALID_VALUE,
    }
}

unsafe fn out<T>(ptr: *mut T, value: T) -> CUresult {
    if ptr.is_null() {
        return INVALID_VALUE;
    }
    unsafe { ptr.write(value) };
    SUCCESS
}

// ---- initialization, device, context ----

#[unsafe(no_mangle)]
pub extern "C" fn cuInit(_flags: c_uint) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    unsafe { out(v, 12090) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    unsafe { out(n, 1) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(d: *mut c_int, ordinal: c_int) -> CUresult {
    if ordinal != 0 {
        return INVALID_VALUE;
    }
    unsafe { out(d, 0) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(v: *mut c_int, attribute: c_int, _dev: c_int) -> CUresult {
    let value = match attribute {
        1 => 1024,                     // max threads per block
        2 | 3 => 1024,                 // max block dim x, y
        4 => 64,                       // max block dim z
        5 => i32::MAX,                 // max grid dim x
        6 | 7 => 65_535,               // max grid dim y, z
        8 => 49_152,                   // shared memory per block (without opt-in)
        9 => 65_536,                   // constant memory
        10 => 32,                      // warp size
        12 => 65_536,                  // registers per block
        13 => 1_980_000,               // clock (kHz)
        16 => 132,                     // multiprocessors
        38 => 50 << 20,                // L2 bytes
        41 => 1,                       // unified addressing
        75 => sm() / 10,               // compute capability major
        76 => sm() % 10,               // compute capability minor
        81 => max_shared_optin() + 1024, // shared memory per multiprocessor
        82 => 65_536,                  // registers per multiprocessor
        97 => max_shared_optin(),      // shared memory per block, opt-in
        115 => 1,                      // memory pools supported
        _ => 0,
    };
    unsafe { out(v, value) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, _dev: c_int) -> CUresult {
    let text = format!("lapidary cuda-check (no GPU, sm_{})\0", sm());
    let n = text.len().min(len.max(0) as usize);
    if name.is_null() || n == 0 {
        return INVALID_VALUE;
    }
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), name as *mut u8, n);
        *name.add(n - 1) = 0;
    }
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(id: *mut c_char, len: c_int, _dev: c_int) -> CUresult {
    let text = b"0000:00:00.0\0";
    if id.is_null() || (len as usize) < text.len() {
        return INVALID_VALUE;
    }
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), id as *mut u8, text.len()) };
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, _dev: c_int) -> CUresult {
    unsafe { out(bytes, 141 << 30) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    unsafe {
        out(free, 140 << 30);
        out(total, 141 << 30)
    }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut *mut c_void, _dev: c_int) -> CUresult {
    unsafe { out(ctx, 0x1000 as *mut c_void) }
}
#[unsafe(no_mangle)]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(_dev: c_int) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub extern "C" fn cuCtxSetCurrent(_ctx: *mut c_void) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut *mut c_void) -> CUresult {
    unsafe { out(ctx, 0x1000 as *mut c_void) }
}
#[unsafe(no_mangle)]
pub extern "C" fn cuCtxSynchronize() -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int) -> CUresult {
    unsafe {
        if !least.is_null() {
            *least = 0;
        }
        if !greatest.is_null() {
            *greatest = -5;
        }
    }
    SUCCESS
}

// ---- streams and events (everything is already complete when it is issued) ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(s: *mut *mut c_void, _flags: c_uint) -> CUresult {
    unsafe { out(s, Box::into_raw(Box::new(0u64)) as *mut c_void) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreateWithPriority(s: *mut *mut c_void, flags: c_uint, _p: c_int) -> CUresult {
    unsafe { cuStreamCreate(s, flags) }
}
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamDestroy_v2(_s: *mut c_void) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamSynchronize(_s: *mut c_void) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamQuery(_s: *mut c_void) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamWaitEvent(_s: *mut c_void, _e: *mut c_void, _flags: c_uint) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(e: *mut *mut c_void, _flags: c_uint) -> CUresult {
    unsafe { out(e, Box::into_raw(Box::new(0u64)) as *mut c_void) }
}
#[unsafe(no_mangle)]
pub extern "C" fn cuEventRecord(_e: *mut c_void, _s: *mut c_void) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub extern "C" fn cuEventRecordWithFlags(_e: *mut c_void, _s: *mut c_void, _f: c_uint) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub extern "C" fn cuEventSynchronize(_e: *mut c_void) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub extern "C" fn cuEventQuery(_e: *mut c_void) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, _a: *mut c_void, _b: *mut c_void) -> CUresult {
    unsafe { out(ms, 0.0) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, a: *mut c_void, b: *mut c_void) -> CUresult {
    unsafe { cuEventElapsedTime(ms, a, b) }
}
#[unsafe(no_mangle)]
pub extern "C" fn cuEventDestroy_v2(_e: *mut c_void) -> CUresult {
    SUCCESS
}

// ---- memory ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(ptr: *mut u64, bytes: usize) -> CUresult {
    let p = alloc(bytes);
    if p.is_null() {
        return OUT_OF_MEMORY;
    }
    unsafe { out(ptr, p as u64) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(ptr: *mut u64, bytes: usize, _s: *mut c_void) -> CUresult {
    unsafe { cuMemAlloc_v2(ptr, bytes) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost_v2(ptr: *mut *mut c_void, bytes: usize) -> CUresult {
    let p = alloc(bytes);
    if p.is_null() {
        return OUT_OF_MEMORY;
    }
    unsafe { out(ptr, p as *mut c_void) }
}
#[unsafe(no_mangle)]
pub extern "C" fn cuMemFree_v2(ptr: u64) -> CUresult {
    free(ptr as usize)
}
#[unsafe(no_mangle)]
pub extern "C" fn cuMemFreeAsync(ptr: u64, _s: *mut c_void) -> CUresult {
    free(ptr as usize)
}
#[unsafe(no_mangle)]
pub extern "C" fn cuMemFreeHost(ptr: *mut c_void) -> CUresult {
    free(ptr as usize)
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(dst: u64, src: *const c_void, n: usize, _s: *mut c_void) -> CUresult {
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: u64, n: usize, _s: *mut c_void) -> CUresult {
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(dst: u64, src: u64, n: usize, _s: *mut c_void) -> CUresult {
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, n: usize) -> CUresult {
    unsafe { cuMemcpyHtoDAsync_v2(dst, src, n, std::ptr::null_mut()) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: u64, n: usize) -> CUresult {
    unsafe { cuMemcpyDtoHAsync_v2(dst, src, n, std::ptr::null_mut()) }
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8Async(dst: u64, value: u8, n: usize, _s: *mut c_void) -> CUresult {
    unsafe { std::ptr::write_bytes(dst as *mut u8, value, n) };
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD32Async(dst: u64, value: u32, n: usize, _s: *mut c_void) -> CUresult {
    let p = dst as *mut u32;
    for i in 0..n {
        unsafe { p.add(i).write_unaligned(value) };
    }
    SUCCESS
}

/// CUDA's `CUDA_MEMCPY2D`.
#[repr(C)]
pub struct Memcpy2d {
    src_x_bytes: usize,
    src_y: usize,
    src_memory_type: c_uint,
    src_host: *const c_void,
    src_device: u64,
    src_array: *mut c_void,
    src_pitch: usize,
    dst_x_bytes: usize,
    dst_y: usize,
    dst_memory_type: c_uint,
    dst_host: *mut c_void,
    dst_device: u64,
    dst_array: *mut c_void,
    dst_pitch: usize,
    width_bytes: usize,
    height: usize,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpy2DAsync_v2(c: *const Memcpy2d, _s: *mut c_void) -> CUresult {
    let Some(c) = (unsafe { c.as_ref() }) else { return INVALID_VALUE };
    // Memory type 1 is host; device and unified are addresses here too.
    let src = if c.src_memory_type == 1 { c.src_host as usize } else { c.src_device as usize };
    let dst = if c.dst_memory_type == 1 { c.dst_host as usize } else { c.dst_device as usize };
    for row in 0..c.height {
        let s = src + (c.src_y + row) * c.src_pitch + c.src_x_bytes;
        let d = dst + (c.dst_y + row) * c.dst_pitch + c.dst_x_bytes;
        unsafe { std::ptr::copy(s as *const u8, d as *mut u8, c.width_bytes) };
    }
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpy2D_v2(c: *const Memcpy2d) -> CUresult {
    unsafe { cuMemcpy2DAsync_v2(c, std::ptr::null_mut()) }
}

// ---- modules and launches ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut *mut c_void, image: *const c_void) -> CUresult {
    if image.is_null() {
        return INVALID_VALUE;
    }
    // The image is PTX text (both code paths hand the driver PTX): kept for ptxas.
    let ptx = unsafe { CStr::from_ptr(image as *const c_char) }.to_bytes();
    let id = MODULES.fetch_add(1, Ordering::Relaxed);
    let file = format!("{}-{id}.ptx", std::process::id());
    if let Some(dir) = std::env::var_os("LAPIDARY_FAKE_CUDA_PTX_DIR") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        if std::fs::write(dir.join(&file), ptx).is_err() {
            return INVALID_VALUE;
        }
    }
    unsafe { out(module, Box::into_raw(Box::new(file)) as *mut c_void) }
}
#[unsafe(no_mangle)]
pub extern "C" fn cuModuleUnload(_m: *mut c_void) -> CUresult {
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(f: *mut usize, m: *mut c_void, name: *const c_char) -> CUresult {
    if name.is_null() || m.is_null() {
        return NOT_FOUND;
    }
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    let file = unsafe { &*(m as *const String) };
    log_line(&format!("module {file} {name}"));
    let mut functions = FUNCTIONS.lock().unwrap();
    functions.push(name);
    let handle = functions.len();
    unsafe { out(f, handle) }
}
#[unsafe(no_mangle)]
pub extern "C" fn cuFuncSetAttribute(f: usize, attribute: c_int, value: c_int) -> CUresult {
    // 8: max dynamic shared memory.
    if attribute == 8 && value > max_shared_optin() {
        log_line(&format!("error {} dynamic shared memory {value} B over the card's {}", name_of(f), max_shared_optin()));
        return INVALID_VALUE;
    }
    SUCCESS
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncGetAttribute(v: *mut c_int, _attribute: c_int, _f: usize) -> CUresult {
    unsafe { out(v, 0) }
}

fn name_of(f: usize) -> String {
    FUNCTIONS.lock().unwrap().get(f.wrapping_sub(1)).cloned().unwrap_or_else(|| format!("<function {f}>"))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuLaunchKernel(
    f: usize,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    _stream: *mut c_void,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    let name = name_of(f);
    let threads = bx as u64 * by as u64 * bz as u64;
    let bad = threads == 0
        || threads > 1024
        || bz > 64
        || gx == 0
        || gy == 0
        || gz == 0
        || gy > 65_535
        || gz > 65_535
        || shared as i32 > max_shared_optin();
    log_line(&format!(
        "{} {name} grid {gx}x{gy}x{gz} block {bx}x{by}x{bz} shared {shared}",
        if bad { "error" } else { "launch" }
    ));
    if bad { INVALID_VALUE } else { SUCCESS }
}

/// NVRTC opens the driver too and asks it for private tables; there are none here, which it
/// accepts (CUDA_ERROR_NOT_SUPPORTED).
#[unsafe(no_mangle)]
pub extern "C" fn cuGetExportTable(_table: *mut *const c_void, _id: *const c_void) -> CUresult {
    801
}
