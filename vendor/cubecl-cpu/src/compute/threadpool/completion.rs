//! How many units of a stream's launches have finished, and a wait for a count that sleeps until
//! the unit reaching it wakes the waiter.
//!
//! A waiter that spins or yields in a loop keeps a logical CPU busy for as long as the work
//! takes. With as many workers as logical CPUs that CPU is one a unit needs, and on a machine
//! where another process holds a core, the yields turn into system time and every launch waits
//! for a time slice: measured, a training step 20x slower beside one busy process.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Longest a sleeping waiter goes without looking at the count: a safety net only, the unit
/// that reaches a count wakes its waiter.
const SLEEP_STEP: Duration = Duration::from_millis(2);

/// Finished units of one stream, in launch order.
#[derive(Default)]
pub struct Completion {
    done: CachePadded<AtomicU64>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Completion {
    /// Units finished so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Counts one more finished unit and wakes the sleeping waiters.
    pub fn finish_unit(&self) {
        // SeqCst pairs with `wait_for`: either the waiter's check sees this unit, or this sees
        // the waiter asleep (or about to be) and wakes it under the lock.
        self.done.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
    }

    /// Returns once at least `target` units have finished, asleep while they run.
    pub fn wait_for(&self, target: u64) {
        if self.done() >= target {
            return;
        }
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.done.load(Ordering::SeqCst) < target {
            guard = match self.wake.wait_timeout(guard, SLEEP_STEP) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(guard);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// CPU time the calling thread has used.
    fn thread_cpu_time() -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec to write into.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0);
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    #[test]
    fn a_wait_returns_at_once_when_the_units_are_done() {
        let completion = Completion::default();
        completion.finish_unit();
        completion.finish_unit();
        completion.wait_for(2);
        completion.wait_for(0);
        assert_eq!(completion.done(), 2);
    }

    #[test]
    fn every_waited_count_is_reached_and_no_wake_up_is_lost() {
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

    /// The point of the type: a thread waiting on long work uses next to no CPU while it waits.
    #[test]
    fn a_waiter_sleeps_while_the_units_run() {
        let completion = Arc::new(Completion::default());
        let worker = {
            let completion = completion.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                completion.finish_unit();
            })
        };
        let (wall, cpu) = (Instant::now(), thread_cpu_time());
        completion.wait_for(1);
        let (wall, cpu) = (wall.elapsed(), thread_cpu_time() - cpu);
        worker.join().unwrap();
        assert!(wall >= Duration::from_millis(250), "returned after {wall:?}");
        // A spinning or yielding waiter would use about the whole 300 ms.
        assert!(cpu < Duration::from_millis(60), "{cpu:?} of CPU over a {wall:?} wait");
    }
}
