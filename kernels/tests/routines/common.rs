//! Helpers every kernel test uses: random inputs, conversion to f64, a relative comparison.

use kernels::Float;
use rand::{Rng, rngs::StdRng};

/// `n` values drawn uniformly from `(-scale, scale)`.
pub fn random<T: Float>(rng: &mut StdRng, n: usize, scale: f64) -> Vec<T> {
    (0..n)
        .map(|_| T::of(rng.random_range(-scale..scale)))
        .collect()
}

pub fn f64s<T: Float>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.f64()).collect()
}

/// Asserts `|got - want| <= tol (1 + |want|)` element by element, naming `what` and the
/// first index that is off.
pub fn close<T: Float>(got: &[T], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g.f64() - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what} [{}] at {i}: got {g}, want {w} (err {err:e})",
            T::NAME
        );
    }
}
