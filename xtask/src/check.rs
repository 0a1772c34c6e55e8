//! The performance-regression check: this machine kind's committed baseline, and the verdict
//! of a run against it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::measure::key;
use crate::plan::speedup_goal;
use crate::report::speedups;
use crate::root;

/// A geometric-mean drop of the GEMM-relative ratio beyond this fails `--check`.
const CHECK_GEOMEAN_TOLERANCE: f64 = 0.12;
/// A single record dropping beyond this fails `--check`.
const CHECK_RECORD_TOLERANCE: f64 = 0.25;
/// The smallest two-thread speedup `--check` accepts where the goal is 1.5x (medium): far
/// enough below it for a shared machine's noise, far above what a lost per-step split gives
/// (about 1.0-1.1x).
const CHECK_MIN_SPEEDUP: f64 = 1.25;

/// The machine kind, from its CPU model and core count: baselines are kept per kind.
pub(crate) fn machine_key() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown-cpu".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slug: String = cpu
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let slug = slug
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    format!("{slug}-{cores}c")
}

/// The committed baseline of this machine kind.
pub(crate) fn baseline_path() -> PathBuf {
    root()
        .join("bench-suite/baselines")
        .join(format!("{}.json", machine_key()))
}

/// Compares `records` with the baseline by their GEMM-relative ratio (`peak_fraction`),
/// which cancels most of a shared machine's noise. Returns the verdict lines and pass/fail.
pub(crate) fn check(records: &[Value], baseline: &[Value]) -> (String, bool) {
    let base: BTreeMap<String, f64> = baseline
        .iter()
        .map(|r| (key(r), r["peak_fraction"].as_f64().unwrap_or(0.0)))
        .collect();
    let mut out = String::new();
    let (mut log_sum, mut n, mut ok) = (0.0, 0, true);
    for r in records {
        let Some(&b) = base.get(&key(r)) else {
            let _ = writeln!(out, "  {}: no baseline, skipped", key(r));
            continue;
        };
        let now = r["peak_fraction"].as_f64().unwrap_or(0.0);
        let ratio = now / b;
        log_sum += ratio.ln();
        n += 1;
        let bad = ratio < 1.0 - CHECK_RECORD_TOLERANCE;
        ok &= !bad;
        let _ = writeln!(
            out,
            "  {}: {:.3} of GEMM rate, baseline {:.3} ({:+.1} %){}",
            key(r),
            now,
            b,
            100.0 * (ratio - 1.0),
            if bad { "  REGRESSION" } else { "" }
        );
    }
    if n > 0 {
        let geo = (log_sum / n as f64).exp();
        let bad = geo < 1.0 - CHECK_GEOMEAN_TOLERANCE;
        ok &= !bad;
        let _ = writeln!(
            out,
            "  geometric mean: {:+.1} % (fails below -{:.0} %){}",
            100.0 * (geo - 1.0),
            100.0 * CHECK_GEOMEAN_TOLERANCE,
            if bad { "  REGRESSION" } else { "" }
        );
    }
    for s in speedups(records) {
        let slow =
            speedup_goal(&s.workload).is_some_and(|g| g > 1.0) && s.ratio() < CHECK_MIN_SPEEDUP;
        // When the reference GEMM beside it gained less than the floor too, the host gave
        // no second core in those rounds, and the record says nothing about the split.
        let no_second_core = s.gemm_speedup.filter(|&g| g < CHECK_MIN_SPEEDUP);
        ok &= !(slow && no_second_core.is_none());
        let verdict = match (slow, no_second_core) {
            (true, Some(g)) => {
                format!("  not judged: the reference GEMM gained {g:.2}x in the same rounds")
            }
            (true, None) => "  REGRESSION".to_string(),
            (false, _) => String::new(),
        };
        let _ = writeln!(
            out,
            "  {}/{}: two threads {:.2}x one (fails below {CHECK_MIN_SPEEDUP:.2}x){verdict}",
            s.cell,
            s.workload,
            s.ratio(),
        );
    }
    (out, ok)
}

/// [`check`]s `records`; when they fail, measures the plan once more (`remeasure`) and
/// checks that instead, so that only a drop seen twice fails: a neighbour on this shared
/// machine can slow one measurement (a two-thread record whose cores were far apart, or
/// one core taken for a while), while a regression in the code shows in both. Each
/// verdict goes to `print`. Returns whether the check passed.
pub(crate) fn check_confirmed(
    records: &[Value],
    baseline: &[Value],
    remeasure: impl FnOnce() -> Result<Vec<Value>, String>,
    mut print: impl FnMut(&str),
) -> Result<bool, String> {
    let (report, ok) = check(records, baseline);
    print(&report);
    if ok {
        return Ok(true);
    }
    print("check failed; measuring once more to confirm:");
    let (report, ok) = check(&remeasure()?, baseline);
    print(&report);
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::record;

    /// A failing check measures once more and judges that; a passing one does not.
    #[test]
    fn only_a_failure_seen_twice_fails_the_check() {
        let at = |share: f64, speedup: f64| {
            let shape =
                |threads| serde_json::json!({ "peak_fraction": share, "threads_used": threads });
            vec![
                record("rnn", "medium", 1, 100_000.0, shape(1)),
                record("rnn", "medium", 2, 100_000.0 * speedup, shape(2)),
            ]
        };
        let baseline = at(0.5, 1.8);
        let verdict = |first: Vec<Value>, again: Option<Vec<Value>>| {
            let mut printed = String::new();
            let remeasure = || again.ok_or_else(|| "measured again".to_string());
            let ok = check_confirmed(&first, &baseline, remeasure, |s| printed.push_str(s));
            (ok, printed.contains("measuring once more"))
        };
        assert_eq!(verdict(at(0.48, 1.7), None), (Ok(true), false));
        // A record 40 % below its baseline share, then a lost split: each passes when
        // measured again, and fails when seen twice.
        for bad in [at(0.3, 1.7), at(0.5, 1.1)] {
            assert_eq!(verdict(bad.clone(), Some(at(0.5, 1.8))), (Ok(true), true));
            assert_eq!(verdict(bad.clone(), Some(bad.clone())), (Ok(false), true));
        }
        assert_eq!(
            verdict(at(0.3, 1.7), None),
            (Err("measured again".to_string()), true)
        );
    }

    /// A lost split fails only where the reference GEMM in the same rounds shows that the
    /// host gave the second core.
    #[test]
    fn a_slow_split_fails_only_beside_a_gemm_that_gained() {
        let at = |speedup: f64, gemm_speedup: f64| {
            let one = serde_json::json!({ "peak_fraction": 0.5, "threads_used": 1 });
            let two = serde_json::json!({
                "peak_fraction": 0.5,
                "threads_used": 2,
                "gemm_gflops": 150.0 * gemm_speedup,
                "one_thread_gemm_gflops": 150.0,
            });
            vec![
                record("rnn", "medium", 1, 100_000.0, one),
                record("rnn", "medium", 2, 100_000.0 * speedup, two),
            ]
        };
        let baseline = at(1.8, 1.9);
        let (report, ok) = check(&at(1.1, 1.9), &baseline);
        assert!(!ok && report.contains("REGRESSION"), "{report}");
        let (report, ok) = check(&at(1.1, 1.05), &baseline);
        assert!(ok && report.contains("not judged"), "{report}");
        assert!(check(&at(1.7, 1.05), &baseline).1);
    }
}
