//! Measuring: one record from bench-runner, the median of interleaved rounds, a peer
//! framework's figures.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::plan::Run;
use crate::root;

/// A record's name, `cell/workload/t<threads>`: how records of two runs (a baseline, a
/// peer's) are matched.
pub(crate) fn key(r: &Value) -> String {
    format!(
        "{}/{}/t{}",
        r["cell"].as_str().unwrap_or("?"),
        r["workload"].as_str().unwrap_or("?"),
        r["threads"]
    )
}

/// A peer framework's figures: its name and tokens/s by record [`key`].
pub(crate) type PeerFigures = (String, BTreeMap<String, f64>);

/// Runs the plan in a peer framework through `scripts/<peer>_bench.py` (`torch`, `jax`).
pub(crate) fn run_peer(peer: &str, plan: &[Run]) -> Result<PeerFigures, String> {
    if !matches!(peer, "torch" | "jax") {
        return Err(format!("--peer {peer}: the peers are `torch` and `jax`"));
    }
    let ok = Command::new("python3")
        .args(["-c", &format!("import {peer}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Err(format!(
            "--peer {peer}: `import {peer}` fails in python3; install it with `pip install {peer}` and retry"
        ));
    }
    let script = format!("{peer}_bench.py");
    let mut out = BTreeMap::new();
    for &(cell, w, threads) in plan {
        let v = json_output(
            Command::new("python3")
                .arg(root().join("scripts").join(&script))
                .args([w, &threads.to_string(), cell]),
            &format!("{script} {cell} {w}"),
        )?;
        out.insert(key(&v), v["tokens_per_s"].as_f64().unwrap_or(0.0));
    }
    Ok((peer.to_string(), out))
}

/// Runs `cmd` (`what` names it in errors) and parses the JSON it prints; a failed run is an
/// error carrying its stderr.
pub(crate) fn json_output(cmd: &mut Command, what: &str) -> Result<Value, String> {
    let o = cmd.output().map_err(|e| format!("running {what}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&o.stderr)));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("{what} output: {e}"))
}

/// One record from bench-runner.
pub(crate) fn measure_record(
    runner: &Path,
    cell: &str,
    w: &str,
    threads: usize,
    seconds: f64,
) -> Result<Value, String> {
    let v = json_output(
        Command::new(runner).args([
            w.to_string(),
            threads.to_string(),
            seconds.to_string(),
            cell.to_string(),
        ]),
        &format!("bench-runner {cell} {w} {threads}"),
    )?;
    eprintln!(
        "  {:24} {:>12.0} tokens/s  {:5.1} % of GEMM rate",
        key(&v),
        v["tokens_per_s"].as_f64().unwrap_or(0.0),
        100.0 * v["peak_fraction"].as_f64().unwrap_or(0.0)
    );
    Ok(v)
}

/// For each record of the plan, the round whose share of the GEMM rate is the median.
pub(crate) fn median_records(rounds: Vec<Vec<Value>>) -> Vec<Value> {
    let n = rounds.first().map_or(0, Vec::len);
    (0..n)
        .map(|i| {
            let mut same: Vec<&Value> = rounds.iter().map(|r| &r[i]).collect();
            let share = |v: &Value| v["peak_fraction"].as_f64().unwrap_or(0.0);
            same.sort_by(|a, b| share(a).total_cmp(&share(b)));
            same[same.len() / 2].clone()
        })
        .collect()
}
