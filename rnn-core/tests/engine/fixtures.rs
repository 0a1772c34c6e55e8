//! Reading the PyTorch fixtures in `tests/fixtures/` (made by `scripts/torch_fixtures.py`):
//! their paths, the parameters of a training run, its class labels, and the comparison of
//! trained weights with PyTorch's.

use std::path::PathBuf;

use rnn_core::io;
use rnn_core::params::Layout;
use safetensors::SafeTensors;

/// The path of fixture `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every parameter of `layout`, read from the tensors `{prefix}.{name}` (PyTorch's names).
pub fn params(st: &SafeTensors<'_>, layout: &Layout, prefix: &str) -> Vec<f64> {
    let mut p = vec![0.0f64; layout.len];
    for t in &layout.tensors {
        let (v, _) = io::float_tensor::<f64>(st, &format!("{prefix}.{}", t.name)).unwrap();
        p[t.range.clone()].copy_from_slice(&v);
    }
    p
}

/// The integer tensor `name` as class labels.
pub fn classes(st: &SafeTensors<'_>, name: &str) -> Vec<usize> {
    let (labels, _) = io::int_tensor(st, name).unwrap();
    labels.iter().map(|&l| l as usize).collect()
}

/// Asserts that trained weights are PyTorch's to 1e-12, naming the first tensor and index off.
pub fn assert_weights_match(what: &str, layout: &Layout, got: &[f64], want: &[f64]) {
    for t in &layout.tensors {
        for i in t.range.clone() {
            assert!(
                (got[i] - want[i]).abs() <= 1e-12,
                "{what}: {}[{}] = {} vs PyTorch {}",
                t.name,
                i - t.range.start,
                got[i],
                want[i]
            );
        }
    }
}

/// A one-cycle schedule built as a fixture's `one_cycle` metadata says (`one_cycle_meta` in
/// scripts/torch_fixtures.py: OneCycleLR's options as `key=value;...`).
pub fn one_cycle(options: &str) -> rnn_core::schedule::OneCycle {
    let options: std::collections::HashMap<&str, &str> = options
        .split(';')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let num = |k: &str| options[k].parse::<f64>().unwrap();
    let mut cycle = rnn_core::schedule::OneCycle::new(options["total_steps"].parse().unwrap())
        .unwrap()
        .with_pct_start(num("pct_start"))
        .unwrap()
        .with_div_factors(num("div_factor"), num("final_div_factor"))
        .unwrap()
        .with_momentum(num("base_momentum"), num("max_momentum"))
        .unwrap();
    if options["anneal_strategy"] == "linear" {
        cycle = cycle.linear();
    }
    if options["three_phase"] == "True" {
        cycle = cycle.three_phase();
    }
    if options["cycle_momentum"] == "False" {
        cycle = cycle.without_momentum();
    }
    cycle
}
