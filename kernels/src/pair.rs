//! A two-worker fork-join for work that meets often: a training pass, whose every time step
//! splits into two blocks of about 50-500 µs each, and whose products between the time loops
//! split into two shares ([`crate::gemm::Threads::Pair`]).
//!
//! [`with_pair`] runs a body on the calling rayon worker and lends a second worker to it for
//! the whole body: one rayon job that serves [`Pair::join`]'s second closure each time the
//! body posts one, spinning on an atomic between posts instead of going back to rayon's sleep
//! machinery, from which each `rayon::join` would have to wake it again. A join is then a
//! store, a compare-and-swap and a load: no queue, no condition variable, and the second
//! block always runs on the same thread, which keeps its share of the weights in that core's
//! cache.
//!
//! No result depends on which thread runs which closure, and nothing waits on a thread that
//! may never come: when the helper has not claimed a posted closure by the time the first one
//! is done (it is busy, or the pool has one thread), the caller runs it itself.
//!
//! ```
//! let mut halves = [0u64, 0];
//! kernels::pair::with_pair(true, |pair| {
//!     for step in 0..100u64 {
//!         let [lo, hi] = &mut halves;
//!         pair.join(|| *lo += step, || *hi += 2 * step);
//!     }
//! });
//! assert_eq!(halves, [4950, 9900]);
//! ```

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

/// Nothing posted.
const IDLE: u8 = 0;
/// A closure is posted and unclaimed.
const POSTED: u8 = 1;
/// The helper claimed the posted closure and runs it.
const RUNNING: u8 = 2;
/// The helper finished the posted closure.
const DONE: u8 = 3;
/// The caller claimed its own posted closure.
const RECLAIMED: u8 = 4;

/// Busy-wait rounds (a `spin_loop` hint each, tens of nanoseconds) before a waiting thread
/// starts yielding its core: about the length of a short block, so a helper that is between
/// steps answers at once while one left idle by a long serial stretch lets others run.
const SPINS: u32 = 1 << 14;

/// The two workers of a loop: the caller and, when parallel, one helper.
/// Created by [`with_pair`].
pub struct Pair {
    parallel: bool,
    state: AtomicU8,
    quit: AtomicBool,
    /// The posted `Slot<B>`. Written by the caller while `state` is `IDLE`, read by the
    /// helper after it claims `POSTED`.
    job: AtomicPtr<()>,
}

/// A posted closure, the function that runs it (first, so that a pointer to the slot of any
/// closure type is also a pointer to it), and, after it ran on the helper, its panic if any.
#[repr(C)]
struct Slot<B> {
    run: unsafe fn(*const ()),
    f: UnsafeCell<Option<B>>,
    panic: UnsafeCell<Option<Box<dyn Any + Send>>>,
}

/// Runs the closure in the `Slot<B>` at `slot`, keeping a panic in the slot.
///
/// # Safety
/// `slot` points to a live `Slot<B>` that no other thread touches until this returns.
unsafe fn run_slot<B: FnOnce()>(slot: *const ()) {
    // SAFETY: the caller's contract: `slot` is a live `Slot<B>`, exclusively ours meanwhile.
    let slot = unsafe { &*slot.cast::<Slot<B>>() };
    // SAFETY: as above, no one else reads or writes the slot's cells while we run.
    let f = unsafe { (*slot.f.get()).take() }.expect("a posted closure runs once");
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        // SAFETY: as above.
        unsafe { *slot.panic.get() = Some(panic) };
    }
}

impl Pair {
    fn new(parallel: bool) -> Self {
        Self {
            parallel,
            state: AtomicU8::new(IDLE),
            quit: AtomicBool::new(false),
            job: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Whether the second closure of [`Pair::join`] may run on another thread.
    pub fn is_parallel(&self) -> bool {
        self.parallel
    }

    /// Runs `a` on the calling thread and `b` on the helper (or after `a`, here, when the
    /// helper has not taken it), and returns when both are done. A panic in either is
    /// resumed here once both have finished. Joins of one pair must not nest.
    pub fn join<A: FnOnce(), B: FnOnce() + Send>(&self, a: A, b: B) {
        if !self.parallel {
            a();
            b();
            return;
        }
        assert_eq!(
            self.state.load(Ordering::Relaxed),
            IDLE,
            "Pair::join called from inside a join"
        );
        let slot = Slot {
            run: run_slot::<B>,
            f: UnsafeCell::new(Some(b)),
            panic: UnsafeCell::new(None),
        };
        self.job
            .store((&raw const slot).cast_mut().cast(), Ordering::Relaxed);
        // Publishes the slot to the helper's acquiring claim.
        self.state.store(POSTED, Ordering::Release);
        let first = catch_unwind(AssertUnwindSafe(a));
        if self
            .state
            .compare_exchange(POSTED, RECLAIMED, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
        {
            // SAFETY: we took the slot back before the helper claimed it, so only this
            // thread touches it, and it lives until the end of this function.
            unsafe { run_slot::<B>((&raw const slot).cast()) };
        } else {
            // The helper claimed it: the slot must outlive its run, so wait for DONE, whose
            // release store also makes the helper's writes to the slot visible here.
            wait_until(|| self.state.load(Ordering::Acquire) == DONE);
        }
        self.state.store(IDLE, Ordering::Relaxed);
        if let Err(panic) = first {
            resume_unwind(panic);
        }
        if let Some(panic) = slot.panic.into_inner() {
            resume_unwind(panic);
        }
    }

    /// The helper's loop: claims and runs posted closures until [`Pair::finish`].
    fn serve(&self) {
        loop {
            let mut claimed = false;
            wait_until(|| {
                // Reads before it writes, so that waiting does not pull the line away from
                // the caller on every round.
                claimed = self.state.load(Ordering::Relaxed) == POSTED
                    && self
                        .state
                        .compare_exchange(POSTED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok();
                claimed || self.quit.load(Ordering::Acquire)
            });
            if !claimed {
                return;
            }
            let job = self.job.load(Ordering::Relaxed).cast_const();
            // SAFETY: the claim (POSTED -> RUNNING) acquired the caller's release store of
            // POSTED, made after it wrote `job`; `job` points to a live `Slot<B>`, which is
            // `repr(C)` with its function first, so it also points to that function.
            let run = unsafe { *job.cast::<unsafe fn(*const ())>() };
            // SAFETY: the claim makes the slot ours until we store DONE: the caller neither
            // reclaims it nor returns from `join` before it sees DONE.
            unsafe { run(job) };
            self.state.store(DONE, Ordering::Release);
        }
    }

    /// Ends the helper's loop.
    fn finish(&self) {
        self.quit.store(true, Ordering::Release);
    }
}

/// Spins on `ready`, then keeps polling it between yields of the core.
fn wait_until(mut ready: impl FnMut() -> bool) {
    let mut rounds = 0u32;
    while !ready() {
        if rounds < SPINS {
            rounds += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Runs `body` with a [`Pair`]. When `parallel`, `body` runs on a worker of the current
/// rayon pool (the calling thread, when it is one) and the other side of a `rayon::join`
/// serves as the pair's helper on another worker until `body` returns; nothing is allocated.
/// Otherwise the pair runs both closures of every join in turn on the calling thread.
pub fn with_pair<R: Send>(parallel: bool, body: impl FnOnce(&Pair) -> R + Send) -> R {
    let pair = Pair::new(parallel);
    if !parallel {
        return body(&pair);
    }
    /// Stops the helper even when `body` panics, so that the join can end.
    struct Finish<'a>(&'a Pair);
    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            self.0.finish();
        }
    }
    let pair = &pair;
    rayon::join(
        || {
            let _finish = Finish(pair);
            body(pair)
        },
        || pair.serve(),
    )
    .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn every_join_runs_both_closures_once() {
        for threads in [1, 2, 3] {
            for parallel in [false, true] {
                let (mut a, mut b) = (vec![0u32; 1000], vec![0u32; 1000]);
                pool(threads).install(|| {
                    with_pair(parallel, |pair| {
                        assert_eq!(pair.is_parallel(), parallel);
                        for i in 0..1000 {
                            pair.join(|| a[i] += 1, || b[i] += 1);
                        }
                    })
                });
                assert!(a.iter().chain(&b).all(|&n| n == 1), "{threads} {parallel}");
            }
        }
    }

    #[test]
    fn the_second_closure_runs_on_the_helper_when_one_is_free() {
        pool(2).install(|| {
            with_pair(true, |pair| {
                let me = rayon::current_thread_index();
                for _ in 0..20 {
                    let (started, mut who) = (AtomicBool::new(false), None);
                    // The first closure waits (up to a generous deadline) for the second to
                    // start, which only the helper can do meanwhile.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                    pair.join(
                        || {
                            while !started.load(Ordering::Acquire)
                                && std::time::Instant::now() < deadline
                            {
                                std::thread::yield_now();
                            }
                        },
                        || {
                            started.store(true, Ordering::Release);
                            who = rayon::current_thread_index();
                        },
                    );
                    assert!(
                        who.is_some() && who != me,
                        "ran on {who:?}, the caller is {me:?}"
                    );
                }
            })
        });
    }

    #[test]
    fn a_pool_of_one_thread_still_finishes() {
        let sum = pool(1).install(|| {
            with_pair(true, |pair| {
                let (mut x, mut y) = (0, 0);
                for i in 0..100 {
                    pair.join(|| x += i, || y += i);
                }
                x + y
            })
        });
        assert_eq!(sum, 9900);
    }

    #[test]
    fn panics_reach_the_caller_after_both_closures() {
        for panic_in_second in [false, true] {
            let other_ran = AtomicBool::new(false);
            let result = pool(2).install(|| {
                catch_unwind(AssertUnwindSafe(|| {
                    with_pair(true, |pair| {
                        pair.join(
                            || {
                                if !panic_in_second {
                                    panic!("first");
                                }
                                other_ran.store(true, Ordering::Relaxed);
                            },
                            || {
                                if panic_in_second {
                                    panic!("second");
                                }
                                other_ran.store(true, Ordering::Relaxed);
                            },
                        )
                    })
                }))
            });
            let msg = *result.unwrap_err().downcast::<&str>().unwrap();
            assert_eq!(msg, if panic_in_second { "second" } else { "first" });
            assert!(other_ran.load(Ordering::Relaxed));
        }
    }
}
