//! The report: the table of records (with peers' columns), the two-thread scaling table, the
//! tokens-against-sequence-length chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::measure::{PeerFigures, key};
use crate::plan::speedup_goal;

/// One two-thread record against the one-thread rate of the same workload.
pub(crate) struct Speedup {
    pub(crate) cell: String,
    pub(crate) workload: String,
    /// One-thread tokens/s: measured in alternation with the two-thread record when it has
    /// one, else the one-thread record's.
    pub(crate) one: f64,
    /// Two-thread tokens/s.
    pub(crate) two: f64,
    /// Threads the two-thread trainer used (1 when it judged the shape too small).
    pub(crate) used: u64,
    /// The speedup within each round, `(min, median, max)`, when the record has it.
    pub(crate) rounds: Option<(f64, f64, f64)>,
    /// The median round trip of a cache line between two threads in the record's rounds
    /// (ns), when it has one: how far apart the cores were.
    pub(crate) round_trip_ns: Option<f64>,
    /// The reference GEMM's two-thread rate over its one-thread rate in the same rounds,
    /// when the record has both and its trainer used two threads: what the cores gave a
    /// perfectly split product meanwhile. (Beside a trainer that chose one thread the pool's
    /// second worker is parked, and often comes too late for the GEMM.)
    pub(crate) gemm_speedup: Option<f64>,
}

impl Speedup {
    pub(crate) fn ratio(&self) -> f64 {
        self.two / self.one
    }
}

/// Every two-thread record of `records` against its one-thread rate.
pub(crate) fn speedups(records: &[Value]) -> Vec<Speedup> {
    let rate = |cell: &Value, w: &Value, threads: u64| {
        records
            .iter()
            .find(|r| &r["cell"] == cell && &r["workload"] == w && r["threads"] == threads)
            .and_then(|r| r["tokens_per_s"].as_f64())
    };
    records
        .iter()
        .filter(|r| r["threads"] == 2)
        .filter_map(|r| {
            let one = r["one_thread_tokens_per_s"]
                .as_f64()
                .or_else(|| rate(&r["cell"], &r["workload"], 1))?;
            let two = r["tokens_per_s"].as_f64()?;
            let name = |v: &Value| v.as_str().unwrap_or("?").to_string();
            let spread = |end: &str| r[format!("round_speedup_{end}")].as_f64();
            let used = r["threads_used"].as_u64().unwrap_or(2);
            Some(Speedup {
                cell: name(&r["cell"]),
                workload: name(&r["workload"]),
                one,
                two,
                used,
                rounds: spread("min")
                    .zip(spread("median"))
                    .zip(spread("max"))
                    .map(|((lo, mid), hi)| (lo, mid, hi)),
                round_trip_ns: r["core_round_trip_ns"].as_f64(),
                gemm_speedup: r["gemm_gflops"]
                    .as_f64()
                    .zip(r["one_thread_gemm_gflops"].as_f64())
                    .map(|(two, one)| two / one)
                    .filter(|_| used > 1),
            })
        })
        .collect()
}

/// The two-thread speedups of a run, measured in the same run, against their goals.
pub(crate) fn scaling_table(records: &[Value]) -> String {
    let mut md = String::from(
        "| cell | workload | 1 thread tokens/s | 2 threads tokens/s | speedup | goal | \
         per round (least / median / most) | core round trip (ns) | GEMM speedup |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for s in speedups(records) {
        let goal = speedup_goal(&s.workload).map_or(String::new(), |g| {
            let met = if s.ratio() >= g {
                "met"
            } else if s.used == 1 {
                // Both trainers ran the same one-thread code: the ratio is measurement noise
                // between two trainers in one process, not a cost of threads.
                "one thread chosen, same code"
            } else {
                "missed"
            };
            format!(">= {g:.2}x ({met})")
        });
        let rounds = s.rounds.map_or(String::new(), |(lo, mid, hi)| {
            format!("{lo:.2}x / {mid:.2}x / {hi:.2}x")
        });
        let trip = s
            .round_trip_ns
            .map_or(String::new(), |ns| format!("{ns:.0}"));
        let gemm = s.gemm_speedup.map_or(String::new(), |x| format!("{x:.2}x"));
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {goal} | {rounds} | {trip} | {gemm} |",
            s.cell,
            s.workload,
            s.one,
            s.two,
            s.ratio()
        );
    }
    md
}

/// A chart of one-thread tokens/s against `T` for `cell` at the medium shape.
pub(crate) fn svg(records: &[Value], cell: &str) -> String {
    let mut pts: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for r in records.iter().filter(|r| {
        r["cell"] == cell && r["threads"] == 1 && r["B"] == 32 && r["H"] == 256 && r["I"] == 64
    }) {
        pts.insert(
            r["T"].as_u64().unwrap_or(0),
            (
                r["T"].as_f64().unwrap_or(1.0),
                r["tokens_per_s"].as_f64().unwrap_or(0.0),
            ),
        );
    }
    let (w, h, pad) = (640.0, 360.0, 60.0);
    let xs: Vec<f64> = pts.values().map(|p| p.0.log2()).collect();
    let ymax = pts.values().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::INFINITY, f64::min),
        xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    let sx = |x: f64| pad + (x - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - y / ymax * (h - 2.0 * pad);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{cell}: tokens/s against sequence length (B=32, I=64, H=256, O=64, 1 thread)</text>",
        w / 2.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>",
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    for k in 0..=4 {
        let y = ymax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}k</text>",
            pad - 5.0,
            sy(y) + 4.0,
            y / 1e3
        );
    }
    let line: Vec<String> = pts
        .values()
        .map(|&(t, v)| format!("{:.1},{:.1}", sx(t.log2()), sy(v)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>",
        line.join(" ")
    );
    for &(t, v) in pts.values() {
        let _ = writeln!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#1f77b4\"/><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">T={t}</text>",
            sx(t.log2()),
            sy(v),
            sx(t.log2()),
            h - pad + 18.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Every record as a Markdown table row, with a tokens/s and ratio column per peer.
pub(crate) fn table(records: &[Value], peers: &[PeerFigures]) -> String {
    let mut md = String::from(
        "| cell | workload | T | B | I | H | O | threads | tokens/s | GFLOP/s | share of GEMM rate | peak RSS (MiB) |",
    );
    for (peer, _) in peers {
        let _ = write!(md, " {peer} tokens/s | ratio |");
    }
    md.push('\n');
    md.push_str(&"|---".repeat(12 + 2 * peers.len()));
    md.push_str("|\n");
    for r in records {
        let _ = write!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.0} % | {:.0} |",
            r["cell"].as_str().unwrap_or(""),
            r["workload"].as_str().unwrap_or(""),
            r["T"],
            r["B"],
            r["I"],
            r["H"],
            r["O"],
            r["threads"],
            r["tokens_per_s"].as_f64().unwrap_or(0.0),
            r["gflops"].as_f64().unwrap_or(0.0),
            100.0 * r["peak_fraction"].as_f64().unwrap_or(0.0),
            r["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
        for (_, figures) in peers {
            match figures.get(&key(r)) {
                Some(p) => {
                    let _ = write!(
                        md,
                        " {p:.0} | {:.2}x |",
                        r["tokens_per_s"].as_f64().unwrap_or(0.0) / p
                    );
                }
                None => md.push_str(" | |"),
            }
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::record;

    #[test]
    fn scaling_table_judges_each_pair_against_its_goal() {
        let records = [
            record("rnn", "char", 1, 50_000.0, Value::Null),
            record(
                "rnn",
                "char",
                2,
                90_000.0,
                serde_json::json!({
                    "one_thread_tokens_per_s": 50_000.0, "threads_used": 2,
                    "round_speedup_min": 1.6, "round_speedup_median": 1.8,
                    "round_speedup_max": 1.95, "core_round_trip_ns": 331.6,
                    "gemm_gflops": 190.0, "one_thread_gemm_gflops": 100.0,
                }),
            ),
            // No alternated one-thread rate: the one-thread record's is used.
            record("lstm", "medium", 1, 40_000.0, Value::Null),
            record("lstm", "medium", 2, 70_000.0, Value::Null),
            record(
                "lstm",
                "tiny",
                2,
                95_000.0,
                serde_json::json!({
                    "one_thread_tokens_per_s": 100_000.0, "threads_used": 1,
                    "gemm_gflops": 115.0, "one_thread_gemm_gflops": 110.0,
                }),
            ),
        ];
        let table = scaling_table(&records);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| rnn | char | 50000 | 90000 | 1.80x | >= 1.85x (missed) | 1.60x / 1.80x / 1.95x | 332 | 1.90x |",
                "| lstm | medium | 40000 | 70000 | 1.75x | >= 1.50x (met) |  |  |  |",
                "| lstm | tiny | 100000 | 95000 | 0.95x | >= 1.00x (one thread chosen, same code) |  |  |  |",
            ]
        );
    }

    /// One column pair per peer, in the order given; a record a peer did not run gets
    /// empty cells.
    #[test]
    fn table_has_a_tokens_and_ratio_column_per_peer() {
        let shape = serde_json::json!({
            "T": 128, "B": 32, "I": 65, "H": 512, "O": 65, "gflops": 100.0,
            "peak_fraction": 0.9, "peak_rss_bytes": 33554432.0,
        });
        let records = [
            record("rnn", "char", 1, 50_000.0, shape.clone()),
            record("gru", "char", 1, 18_000.0, shape),
        ];
        let peers = [
            (
                "torch".to_string(),
                BTreeMap::from([("rnn/char/t1".into(), 25_000.0)]),
            ),
            (
                "jax".to_string(),
                BTreeMap::from([
                    ("rnn/char/t1".into(), 40_000.0),
                    ("gru/char/t1".into(), 9_000.0),
                ]),
            ),
        ];
        let md = table(&records, &peers);
        let lines: Vec<&str> = md.lines().collect();
        assert!(
            lines[0]
                .ends_with("| peak RSS (MiB) | torch tokens/s | ratio | jax tokens/s | ratio |")
        );
        assert_eq!(lines[1], "|---".repeat(16) + "|");
        assert!(
            lines[2].ends_with("| 32 | 25000 | 2.00x | 40000 | 1.25x |"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].ends_with("| 32 | | | 9000 | 2.00x |"),
            "{}",
            lines[3]
        );
        // Without peers, the table is the engine's columns alone.
        assert!(
            table(&records, &[])
                .lines()
                .next()
                .unwrap()
                .ends_with("| peak RSS (MiB) |")
        );
    }
}
