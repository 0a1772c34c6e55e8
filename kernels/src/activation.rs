//! Activations and their backward passes, fused with what surrounds them in an RNN step.
//!
//! Forward kernels write (`Replace`); backward kernels take an [`Accum`] so a gradient can be
//! overwritten or added to. Backward passes read the forward *output* (`h = tanh(z)`,
//! `y = sigmoid(x)`), which is what the engine keeps, so pre-activations need not be stored.

use faer::Accum;
use pulp::Simd;

use crate::float::Float;
use crate::lanewise::{Lanewise, zip_rows};

#[derive(Clone, Copy)]
struct BiasTanh;
impl<T: Float> Lanewise<T, 1> for BiasTanh {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        _: T::Lanes<S>,
        [z]: [T::Lanes<S>; 1],
        b: T::Lanes<S>,
    ) -> T::Lanes<S> {
        T::vtanh(s, T::vadd(s, z, b))
    }
}

#[derive(Clone, Copy)]
struct Tanh;
impl<T: Float> Lanewise<T, 1> for Tanh {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        _: T::Lanes<S>,
        [x]: [T::Lanes<S>; 1],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        T::vtanh(s, x)
    }
}

#[derive(Clone, Copy)]
struct BiasRelu;
impl<T: Float> Lanewise<T, 1> for BiasRelu {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        _: T::Lanes<S>,
        [z]: [T::Lanes<S>; 1],
        b: T::Lanes<S>,
    ) -> T::Lanes<S> {
        let x = T::vadd(s, z, b);
        // max(x, 0) would turn NaN into 0 on x86: keep it visible instead.
        T::vkeep_nan(s, x, T::vmax(s, x, T::splat(s, T::zero())))
    }
}

#[derive(Clone, Copy)]
struct Sigmoid;
impl<T: Float> Lanewise<T, 1> for Sigmoid {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        _: T::Lanes<S>,
        [x]: [T::Lanes<S>; 1],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        T::vsigmoid(s, x)
    }
}

/// `dst[r, j] = tanh(z[r, j] + bias[j])` over rows of `bias.len()`: the RNN step's bias add
/// and activation in one pass.
///
/// # Panics
/// If `z.len() != dst.len()` or `dst.len()` is not a multiple of `bias.len()`.
///
/// ```
/// let mut h = [0.0f32; 4];
/// kernels::activation::bias_tanh(&mut h, &[0.0, 1.0, -1.0, 0.0], &[0.0, -1.0]);
/// let want = [0.0, 0.0, -1.0f32.tanh(), -1.0f32.tanh()];
/// assert!(h.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6));
/// ```
#[track_caller]
pub fn bias_tanh<T: Float>(dst: &mut [T], z: &[T], bias: &[T]) {
    zip_rows(BiasTanh, dst, [z], Some(bias));
}

/// `dst = tanh(x)`. Error below 3 eps (f32, absolute and relative) or a few ulp (f64)
/// against `std`; exactly `±1` past saturation; NaN in gives NaN out.
///
/// # Panics
/// If `x.len() != dst.len()`.
#[track_caller]
pub fn tanh<T: Float>(dst: &mut [T], x: &[T]) {
    zip_rows(Tanh, dst, [x], None);
}

/// `dst[r, j] = max(z[r, j] + bias[j], 0)` over rows of `bias.len()` (NaN stays NaN).
///
/// # Panics
/// If `z.len() != dst.len()` or `dst.len()` is not a multiple of `bias.len()`.
#[track_caller]
pub fn bias_relu<T: Float>(dst: &mut [T], z: &[T], bias: &[T]) {
    zip_rows(BiasRelu, dst, [z], Some(bias));
}

/// `dst = 1 / (1 + exp(-x))`; NaN in gives NaN out, no overflow at any finite `x`.
///
/// # Panics
/// If `x.len() != dst.len()`.
///
/// ```
/// let mut y = [0.0f64; 3];
/// kernels::activation::sigmoid(&mut y, &[0.0, 1e4, -1e4]);
/// assert_eq!(y, [0.5, 1.0, 0.0]);
/// ```
#[track_caller]
pub fn sigmoid<T: Float>(dst: &mut [T], x: &[T]) {
    zip_rows(Sigmoid, dst, [x], None);
}

#[derive(Clone, Copy)]
struct Backward {
    kind: Kind,
    accum: Accum,
}

#[derive(Clone, Copy)]
enum Kind {
    Tanh,
    Relu,
    Sigmoid,
}

impl Kind {
    /// `dy * act'(y)` from the forward output `y`.
    #[inline(always)]
    fn grad<T: Float, S: Simd>(self, s: S, dy: T::Lanes<S>, y: T::Lanes<S>) -> T::Lanes<S> {
        let one = T::splat(s, T::one());
        let zero = T::splat(s, T::zero());
        match self {
            // d tanh = 1 - h^2
            Kind::Tanh => T::vmul(s, dy, T::vneg_mul_add(s, y, y, one)),
            // d relu = [h > 0]
            Kind::Relu => T::vselect_gt(s, y, zero, dy, zero),
            // d sigmoid = y (1 - y)
            Kind::Sigmoid => T::vmul(s, dy, T::vmul(s, y, T::vsub(s, one, y))),
        }
    }
}

impl<T: Float> Lanewise<T, 2> for Backward {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        old: T::Lanes<S>,
        [dy, y]: [T::Lanes<S>; 2],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        let g = self.kind.grad::<T, S>(s, dy, y);
        match self.accum {
            Accum::Replace => g,
            Accum::Add => T::vadd(s, old, g),
        }
    }
}

#[derive(Clone, Copy)]
struct BackwardInPlace(Kind);

impl<T: Float> Lanewise<T, 1> for BackwardInPlace {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        dy: T::Lanes<S>,
        [y]: [T::Lanes<S>; 1],
        _: T::Lanes<S>,
    ) -> T::Lanes<S> {
        self.0.grad::<T, S>(s, dy, y)
    }
}

/// `g *= 1 - h²` in place: the tanh backward when the gradient buffer becomes `dz` (the engine
/// keeps one buffer for `dL/dh` and `dL/dz`).
///
/// # Panics
/// If the lengths differ.
///
/// ```
/// let mut g = [2.0f32, 2.0];
/// kernels::activation::tanh_backward_in_place(&mut g, &[0.0, 0.5]);
/// assert_eq!(g, [2.0, 1.5]);
/// ```
#[track_caller]
pub fn tanh_backward_in_place<T: Float>(g: &mut [T], h: &[T]) {
    zip_rows(BackwardInPlace(Kind::Tanh), g, [h], None);
}

/// `g *= [h > 0]` in place: the ReLU backward when the gradient buffer becomes `dz`.
///
/// # Panics
/// If the lengths differ.
#[track_caller]
pub fn relu_backward_in_place<T: Float>(g: &mut [T], h: &[T]) {
    zip_rows(BackwardInPlace(Kind::Relu), g, [h], None);
}

/// `dz (+)= dh * (1 - h²)`, the tanh backward from the forward output `h`.
///
/// # Panics
/// If the three lengths differ.
///
/// ```
/// use faer::Accum;
/// let mut dz = [1.0f32; 2];
/// kernels::activation::tanh_backward(&mut dz, Accum::Add, &[2.0, 2.0], &[0.0, 0.5]);
/// assert_eq!(dz, [3.0, 2.5]);
/// ```
#[track_caller]
pub fn tanh_backward<T: Float>(dz: &mut [T], accum: Accum, dh: &[T], h: &[T]) {
    zip_rows(
        Backward {
            kind: Kind::Tanh,
            accum,
        },
        dz,
        [dh, h],
        None,
    );
}

/// `dz (+)= dh * [h > 0]`, the ReLU backward from the forward output `h`.
///
/// # Panics
/// If the three lengths differ.
#[track_caller]
pub fn relu_backward<T: Float>(dz: &mut [T], accum: Accum, dh: &[T], h: &[T]) {
    zip_rows(
        Backward {
            kind: Kind::Relu,
            accum,
        },
        dz,
        [dh, h],
        None,
    );
}

/// `dx (+)= dy * y * (1 - y)`, the sigmoid backward from the forward output `y`.
///
/// # Panics
/// If the three lengths differ.
#[track_caller]
pub fn sigmoid_backward<T: Float>(dx: &mut [T], accum: Accum, dy: &[T], y: &[T]) {
    zip_rows(
        Backward {
            kind: Kind::Sigmoid,
            accum,
        },
        dx,
        [dy, y],
        None,
    );
}
