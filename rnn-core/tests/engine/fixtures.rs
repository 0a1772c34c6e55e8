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
