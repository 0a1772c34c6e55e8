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
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, Ordering};

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

    /// Runs `f` once on every element of `pieces`, shared between the caller and the helper
    /// as they go. The caller starts on `pieces[..mine]` and the helper on `pieces[mine..]`,
    /// each from the front of its share; a thread that runs out of its own share takes the
    /// other's pieces from the back, so a slower thread (a busy core) simply ends up with
    /// fewer. `f` must not depend on which thread runs it or in what order the pieces run; a
    /// panic in `f` is resumed here once both threads are done. Calls must not nest.
    ///
    /// ```
    /// let mut squares: Vec<u64> = (0..100).collect();
    /// kernels::pair::with_pair(true, |pair| pair.pull_each(&mut squares, 50, |x| *x *= *x));
    /// assert_eq!(squares[99], 99 * 99);
    /// ```
    ///
    /// # Panics
    /// If `mine > pieces.len()`.
    pub fn pull_each<P: Send, F: Fn(&mut P) + Sync>(&self, pieces: &mut [P], mine: usize, f: F) {
        assert!(
            mine <= pieces.len(),
            "Pair::pull_each: share {mine} of {} pieces",
            pieces.len()
        );
        if !self.parallel {
            pieces.iter_mut().for_each(f);
            return;
        }
        let n = u32::try_from(pieces.len()).expect("Pair::pull_each: more than 2^32 pieces");
        let mine = mine as u32;
        let shares = [Ends::new(0, mine), Ends::new(mine, n)];
        let base = SharedPieces(pieces.as_mut_ptr());
        let take = |own: &Ends, other: &Ends| {
            while let Some(i) = own.claim(true).or_else(|| other.claim(false)) {
                // SAFETY: `claim` hands out each index below `pieces.len()` at most once (the
                // two shares are disjoint ranges), and `pieces` stays mutably borrowed for
                // this whole call: this is the only reference to element `i`.
                f(unsafe { &mut *base.at(i) });
            }
        };
        let [first, second] = &shares;
        self.join(|| take(first, second), || take(second, first));
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

/// The unclaimed pieces of one share of a [`Pair::pull_each`], `front..back`, in one atomic
/// word on a cache line of its own: its owner's claims then stay in its own core's cache
/// until the other thread comes to take from it.
#[repr(align(64))]
struct Ends(AtomicU64);

impl Ends {
    fn new(front: u32, back: u32) -> Self {
        Self(AtomicU64::new(Self::pack(front, back)))
    }

    fn pack(front: u32, back: u32) -> u64 {
        u64::from(front) | (u64::from(back) << 32)
    }

    /// Claims the first unclaimed index (`from_front`) or the last one.
    fn claim(&self, from_front: bool) -> Option<usize> {
        let mut claimed = None;
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (front, back) = (word as u32, (word >> 32) as u32);
                (front < back).then(|| {
                    let (i, front, back) = if from_front {
                        (front, front + 1, back)
                    } else {
                        (back - 1, front, back - 1)
                    };
                    claimed = Some(i as usize);
                    Self::pack(front, back)
                })
            })
            .ok()
            .and(claimed)
    }
}

/// The pieces of a [`Pair::pull_each`], shared by both threads, which reach each only
/// through an index claimed once.
struct SharedPieces<P>(*mut P);

impl<P> SharedPieces<P> {
    /// A pointer to piece `i` (a method, so that closures capture the whole `Sync` wrapper
    /// rather than its raw pointer field).
    fn at(&self, i: usize) -> *mut P {
        self.0.wrapping_add(i)
    }
}

// SAFETY: both threads dereference the pointer only at indices claimed once each (see
// `Pair::pull_each`), so sharing it hands each `P` to one thread at a time: `P: Send` is
// what that needs.
unsafe impl<P: Send> Sync for SharedPieces<P> {}

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
    fn pull_each_runs_every_piece_once_whatever_the_threads() {
        for threads in [1, 2, 3] {
            for parallel in [false, true] {
                for (n, mine) in [(0, 0), (1, 0), (1, 1), (7, 3), (64, 32), (65, 0), (65, 65)] {
                    let mut runs = vec![0u32; n];
                    pool(threads).install(|| {
                        with_pair(parallel, |pair| {
                            for _ in 0..10 {
                                pair.pull_each(&mut runs, mine, |r| *r += 1);
                            }
                        })
                    });
                    assert!(
                        runs.iter().all(|&r| r == 10),
                        "{threads} {parallel} {n} {mine}"
                    );
                }
            }
        }
    }

    /// A thread held up in its share leaves the rest of that share to the other: the point
    /// of pulling pieces instead of joining fixed halves.
    #[test]
    fn a_slow_thread_leaves_its_pieces_to_the_other() {
        use std::sync::atomic::AtomicUsize;
        pool(2).install(|| {
            with_pair(true, |pair| {
                let me = rayon::current_thread_index();
                let by_helper = AtomicUsize::new(0);
                let mut pieces: Vec<(usize, bool)> = (0..40).map(|i| (i, false)).collect();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                pair.pull_each(&mut pieces, 20, |(i, by_caller)| {
                    *by_caller = rayon::current_thread_index() == me;
                    if !*by_caller {
                        by_helper.fetch_add(1, Ordering::Relaxed);
                    }
                    // The caller's first piece stalls until the helper has run every other
                    // piece: its own 20 and the caller's 19 others (or a generous deadline).
                    if *i == 0 {
                        while by_helper.load(Ordering::Relaxed) < 39
                            && std::time::Instant::now() < deadline
                        {
                            std::thread::yield_now();
                        }
                    }
                });
                let by_caller: Vec<usize> = pieces.iter().filter(|p| p.1).map(|p| p.0).collect();
                assert_eq!(by_caller, [0], "pieces the caller ran");
            })
        });
    }

    #[test]
    fn a_panic_in_a_pulled_piece_reaches_the_caller() {
        let result = pool(2).install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                with_pair(true, |pair| {
                    let mut pieces = [0u8; 16];
                    pair.pull_each(&mut pieces, 8, |p| {
                        *p += 1;
                        assert!(*p < 1, "piece failed");
                    });
                })
            }))
        });
        let msg = result.unwrap_err();
        let msg = msg
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| msg.downcast_ref::<&str>().copied())
            .unwrap();
        assert_eq!(msg, "piece failed");
    }

    #[test]
    #[should_panic(expected = "share 5 of 4 pieces")]
    fn pull_each_rejects_a_share_beyond_the_pieces() {
        with_pair(false, |pair| pair.pull_each(&mut [0u8; 4], 5, |_| {}));
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
