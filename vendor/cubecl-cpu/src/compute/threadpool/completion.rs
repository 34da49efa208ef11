//! How many units of a stream's launches have finished, and a wait for a count that sleeps until
//! the unit reaching it wakes the waiter.
//!
//! A waiter that spins or yields in a loop keeps a logical CPU busy for as long as the work
//! takes. With as many workers as logical CPUs that CPU is one a unit needs, and on a machine
//! where another process holds a core, the yields turn into system time and every launch waits
//! for a time slice: measured, a training step 20x slower beside one busy process. Tested from
//! the workspace: `crates/lapidary-core/tests/cpu_waits.rs`.

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
