//! How the CPU runtime waits (its patched copy in `vendor/cubecl-cpu`): a thread waiting for
//! kernels sleeps instead of spinning or yielding, so training beside a busy process does not
//! collapse. Checked by CPU time, not by speed: a waiter that polls uses about as much CPU as
//! the kernel it waits for.

use cubecl::cpu::compute::threadpool::completion::Completion;
use cubecl::prelude::*;
use lapidary_core::{DType, Device, Tensor};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The tests run one at a time: CPU time read for the process would count a test beside it.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write into.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn completion_reaches_every_count_and_loses_no_wake_up() {
    let _serial = one_at_a_time();
    let completion = Arc::new(Completion::default());
    let units = 20_000;
    let worker = {
        let completion = completion.clone();
        std::thread::spawn(move || {
            for i in 0..units {
                if i % 4_000 == 0 {
                    std::thread::sleep(Duration::from_millis(3));
                }
                completion.finish_unit();
            }
        })
    };
    for target in (1..=units).step_by(997).chain([units]) {
        completion.wait_for(target);
        assert!(completion.done() >= target);
    }
    worker.join().unwrap();
    assert_eq!(completion.done(), units);
}

#[test]
fn a_thread_waiting_for_units_sleeps() {
    let _serial = one_at_a_time();
    let completion = Arc::new(Completion::default());
    let worker = {
        let completion = completion.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            completion.finish_unit();
        })
    };
    let (wall, cpu) = (Instant::now(), cpu_time(libc::CLOCK_THREAD_CPUTIME_ID));
    completion.wait_for(1);
    let (wall, cpu) = (wall.elapsed(), cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - cpu);
    worker.join().unwrap();
    assert!(wall >= Duration::from_millis(250), "returned after {wall:?}");
    // A spinning or yielding waiter would use about the whole 300 ms.
    assert!(cpu < Duration::from_millis(60), "{cpu:?} of CPU over a {wall:?} wait");
}

/// One unit that runs `iters` dependent multiply-adds.
#[cube(launch_unchecked)]
fn long_unit(out: &mut [f32], iters: u32) {
    let mut x = out[0];
    for _ in 0..iters {
        x = x * 0.999_999 + 0.5;
    }
    out[0] = x;
}

fn run_long_unit(device: &Device, iters: u32) -> Duration {
    let out = Tensor::from_f32(device, &[1.0], &[1], DType::F32).unwrap();
    let start = Instant::now();
    unsafe {
        long_unit::launch_unchecked(
            device.client(),
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(1),
            BufferArg::from_raw_parts(out.handle().clone(), 1),
            iters,
        )
    };
    let value = out.to_f32_vec().unwrap()[0];
    assert!(value.is_finite() && value > 1.0, "{value}");
    start.elapsed()
}

/// A single-unit kernel of about 400 ms: the process uses one CPU for the unit and next to
/// nothing for the threads waiting on it (the launching thread, the runtime's server thread, the
/// idle workers). The original runtime's waiters yielded in a loop: about twice the CPU.
#[test]
fn waiting_on_a_long_kernel_uses_no_cpu_of_its_own() {
    let _serial = one_at_a_time();
    let device = Device::cpu().unwrap();
    run_long_unit(&device, 1_000); // compiles the kernel
    let probe = 20_000_000;
    let took = run_long_unit(&device, probe).max(Duration::from_millis(1));
    let iters = ((probe as f64) * 0.4 / took.as_secs_f64()).clamp(1e6, 4e9) as u32;

    let (wall, cpu) = (Instant::now(), cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID));
    run_long_unit(&device, iters);
    let (wall, cpu) = (wall.elapsed(), cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu);
    assert!(wall >= Duration::from_millis(150), "the kernel ran only {wall:?}");
    let extra = cpu.as_secs_f64() / wall.as_secs_f64() - 1.0;
    assert!(extra < 0.3, "waiting used {:.0}% of a CPU beside the kernel ({cpu:?} over {wall:?})", extra * 100.0);
}
