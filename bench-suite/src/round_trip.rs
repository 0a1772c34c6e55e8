//! How far apart the machine's cores are at the moment: the round trip of one cache line
//! between two spinning threads.
//!
//! On the project's 2-core VM the two virtual cores sometimes share an L3 (a round trip of
//! about 70 ns) and sometimes not (310-340 ns), as the host moves them, minute to minute. The
//! one-thread rate does not notice; two threads, which hand each other half of every step's
//! state and read each other's halves in the all-steps products, often do (GRU char at two
//! threads: 130 ms per step at 67-69 ns, 143-144 ms at 321-339 ns, one thread 220 ms in both,
//! back to back; though one later sample at 336 ns ran 120-122 ms). A two-thread bench record
//! carries the round trip measured in its rounds, so a record taken while the cores were far
//! apart can be told apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The line the two threads bounce, alone in its cache line (and the adjacent one the
/// prefetcher pairs with it).
#[repr(align(128))]
struct Line(AtomicU64);

/// Written by the initiator to end the responder's loop.
const STOP: u64 = u64::MAX;

/// The mean round trip in nanoseconds of a cache line between the calling thread and a
/// second one, over up to `trips` round trips or `budget`, whichever ends first (a
/// second thread that shares the caller's core, or is not scheduled, would take a whole
/// time slice per trip). `None` when not one trip completed within the budget.
///
/// ```
/// let ns = bench_suite::round_trip::core_round_trip_ns(1000, std::time::Duration::from_millis(50));
/// assert!(ns.is_none_or(|ns| ns > 0.0));
/// ```
pub fn core_round_trip_ns(trips: u64, budget: Duration) -> Option<f64> {
    probe(trips, budget, || {})
}

/// [`core_round_trip_ns`], with `between` run by the responder between reading a trip and
/// answering it (the tests widen that window).
fn probe(trips: u64, budget: Duration, between: impl Fn() + Sync) -> Option<f64> {
    let line = Line(AtomicU64::new(0));
    let start = Instant::now();
    let over = || start.elapsed() >= budget;
    std::thread::scope(|s| {
        s.spawn(|| respond(&line, &between));
        let (mut done, mut v) = (0u64, 1u64);
        let mut first = None;
        'trips: while done < trips {
            line.0.store(v, Ordering::Release);
            let mut spins = 0u32;
            while line.0.load(Ordering::Acquire) != v + 1 {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1024) && over() {
                    break 'trips;
                }
                std::hint::spin_loop();
            }
            v += 2;
            // The first trip waits for the responder to start: time the others.
            if first.is_none() {
                first = Some(Instant::now());
            } else {
                done += 1;
            }
            if done.is_multiple_of(64) && over() {
                break;
            }
        }
        line.0.store(STOP, Ordering::Release);
        first
            .filter(|_| done > 0)
            .map(|t| t.elapsed().as_nanos() as f64 / done as f64)
    })
}

/// The responder's loop: answers each odd value `v` on the line with `v + 1` until it reads
/// [`STOP`].
fn respond(line: &Line, between: impl Fn()) {
    loop {
        let v = line.0.load(Ordering::Acquire);
        if v == STOP {
            return;
        }
        if !v.is_multiple_of(2) {
            between();
            // Only if the line still holds that trip: the initiator may have given up on it
            // and stored STOP meanwhile, which a plain store would overwrite, leaving this
            // loop spinning forever and the initiator's scope waiting for it (this hung a
            // CI run's bench check).
            let _ = line
                .0
                .compare_exchange(v, v + 1, Ordering::Release, Ordering::Relaxed);
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_takes_time_and_ends_within_its_budget() {
        let start = Instant::now();
        let ns = core_round_trip_ns(u64::MAX, Duration::from_millis(30));
        // A machine with one free core may not complete a trip; one that does takes at least
        // a few nanoseconds per trip and stops at the budget, not after 2^64 trips.
        assert!(ns.is_none_or(|ns| ns > 1.0), "{ns:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    /// A budget that ends while the responder holds a trip it has read but not answered:
    /// its answer must not overwrite the stop. The responder here sleeps 50 ms between
    /// reading the first trip and answering it; the probe's budget ends after 5.
    #[test]
    fn a_probe_cut_short_mid_trip_still_ends() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let nap = || std::thread::sleep(Duration::from_millis(50));
            tx.send(probe(u64::MAX, Duration::from_millis(5), nap))
                .unwrap();
        });
        let ended = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(ended, Ok(None), "the probe did not end, or timed a trip");
    }

    #[test]
    fn few_trips_end_before_the_budget() {
        let start = Instant::now();
        let ns = core_round_trip_ns(100, Duration::from_secs(30));
        assert!(ns.is_some_and(|ns| ns > 1.0), "{ns:?}");
        assert!(start.elapsed() < Duration::from_secs(20));
    }
}
