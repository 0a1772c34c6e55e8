//! What a run measures: the records of each plan, and the two-thread speedup each workload
//! is asked for.

use crate::BenchArgs;

/// One record to measure: (cell, workload, threads).
pub(crate) type Run = (&'static str, &'static str, usize);

/// The records of a run.
pub(crate) fn plan(args: &BenchArgs) -> Vec<Run> {
    if args.check {
        return vec![
            ("rnn", "tiny", 1),
            ("rnn", "small", 1),
            ("rnn", "medium", 1),
            ("rnn", "medium", 2),
            ("rnn", "seq64", 1),
            ("lstm", "medium", 1),
            ("lstm", "medium", 2),
            ("gru", "medium", 1),
        ];
    }
    let mut p: Vec<Run> = ["tiny", "small", "medium", "seq16", "seq64", "seq256"]
        .iter()
        .map(|&w| ("rnn", w, 1))
        .collect();
    p.push(("rnn", "medium", 2));
    for cell in ["lstm", "gru"] {
        p.push((cell, "medium", 1));
        p.push((cell, "medium", 2));
    }
    if !args.quick {
        for w in [
            "char",
            "large",
            "seq1024",
            "medium_t4096",
            "medium_h128",
            "medium_h512",
            "medium_h1024",
            "medium_b1",
            "medium_b8",
            "medium_b128",
        ] {
            p.push(("rnn", w, 1));
        }
        for w in ["tiny", "small", "char", "large"] {
            p.push(("rnn", w, 2));
        }
        for cell in ["lstm", "gru"] {
            for w in ["tiny", "small", "char", "large"] {
                p.push((cell, w, 1));
                p.push((cell, w, 2));
            }
        }
        // Char's LSTM with projections (`proj_size` 128), whose steps run whole.
        p.push(("lstm", "char_p128", 1));
        p.push(("lstm", "char_p128", 2));
    }
    p
}

/// The two-thread speedup the scaling goal asks of a workload (issue 9): 1.85x where the
/// per-step products are large, 1.5x at medium, and never slower on tiny and small.
pub(crate) fn speedup_goal(workload: &str) -> Option<f64> {
    match workload {
        "char" | "large" => Some(1.85),
        "medium" => Some(1.5),
        "tiny" | "small" => Some(1.0),
        _ => None,
    }
}
