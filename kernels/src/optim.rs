//! Fused optimizer updates over flat parameter buffers, with PyTorch's exact formulas.
//!
//! Each update reads the gradient once, multiplied by `grad_scale` on the fly: global-norm
//! clipping folds its factor in there instead of rewriting the gradient buffer.

use pulp::{Simd, WithSimd};

use crate::float::Float;

/// Hyper-parameters of [`sgd`] (PyTorch's `torch.optim.SGD` with `dampening = 0`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep<T> {
    /// Learning rate.
    pub lr: T,
    /// Momentum factor (0 disables the velocity buffer's effect).
    pub momentum: T,
    /// L2 penalty added to the gradient: `g += weight_decay * p`.
    pub weight_decay: T,
    /// Nesterov momentum: step along `g + momentum * v` instead of `v`.
    pub nesterov: bool,
    /// Factor applied to every gradient element (the clipping factor, or 1).
    pub grad_scale: T,
}

/// Hyper-parameters of [`adam`] (PyTorch's `Adam`, or `AdamW` when `decoupled`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep<T> {
    /// Learning rate.
    pub lr: T,
    /// Decay of the first moment.
    pub beta1: T,
    /// Decay of the second moment.
    pub beta2: T,
    /// Added to the denominator.
    pub eps: T,
    /// Weight decay: L2 in the gradient (Adam) or `p *= 1 - lr * wd` (AdamW).
    pub weight_decay: T,
    /// AdamW's decoupled weight decay.
    pub decoupled: bool,
    /// The 1-based step number, for bias correction.
    pub step: u64,
    /// Factor applied to every gradient element (the clipping factor, or 1).
    pub grad_scale: T,
}

struct Sgd<'a, T> {
    p: &'a mut [T],
    v: &'a mut [T],
    g: &'a [T],
    h: SgdStep<T>,
}

impl<T: Float> Sgd<'_, T> {
    #[inline(always)]
    fn lane<S: Simd>(
        s: S,
        h: &SgdStep<T>,
        p: T::Lanes<S>,
        v: T::Lanes<S>,
        g: T::Lanes<S>,
    ) -> (T::Lanes<S>, T::Lanes<S>) {
        let mut g = T::vmul(s, g, T::splat(s, h.grad_scale));
        g = T::vmul_add(s, T::splat(s, h.weight_decay), p, g);
        let mom = T::splat(s, h.momentum);
        let v = T::vmul_add(s, mom, v, g);
        let dir = if h.nesterov {
            T::vmul_add(s, mom, v, g)
        } else {
            v
        };
        (T::vneg_mul_add(s, T::splat(s, h.lr), dir, p), v)
    }
}

impl<T: Float> WithSimd for Sgd<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self { p, v, g, h } = self;
        let (pv, pt) = T::as_mut_simd::<S>(p);
        let (vv, vt) = T::as_mut_simd::<S>(v);
        let (gv, gt) = T::as_simd::<S>(g);
        for ((p, v), g) in pv.iter_mut().zip(vv.iter_mut()).zip(gv) {
            (*p, *v) = Self::lane(s, &h, *p, *v, *g);
        }
        let (np, nv) = Self::lane(
            s,
            &h,
            T::partial_load(s, pt),
            T::partial_load(s, vt),
            T::partial_load(s, gt),
        );
        T::partial_store(s, pt, np);
        T::partial_store(s, vt, nv);
    }
}

/// One SGD step: `g = grad_scale * grad + wd * p; v = momentum * v + g;
/// p -= lr * (nesterov ? g + momentum * v : v)`.
///
/// With `v` starting at zero this equals PyTorch's SGD (`dampening = 0`), whose first step
/// sets `v = g`.
///
/// # Panics
/// If the three lengths differ.
///
/// ```
/// use kernels::optim::{sgd, SgdStep};
/// let (mut p, mut v) = ([1.0f32], [0.0f32]);
/// let h = SgdStep { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false, grad_scale: 1.0 };
/// sgd(&mut p, &mut v, &[2.0], h);
/// assert_eq!((p[0], v[0]), (0.8, 2.0));
/// ```
#[track_caller]
pub fn sgd<T: Float>(p: &mut [T], v: &mut [T], g: &[T], h: SgdStep<T>) {
    assert!(
        p.len() == v.len() && p.len() == g.len(),
        "sgd: lengths {} {} {}",
        p.len(),
        v.len(),
        g.len()
    );
    crate::arch::dispatch(Sgd { p, v, g, h });
}

struct Adam<'a, T> {
    p: &'a mut [T],
    m: &'a mut [T],
    v: &'a mut [T],
    g: &'a [T],
    h: AdamStep<T>,
}

struct AdamConsts<S: Simd, T: Float> {
    scale: T::Lanes<S>,
    wd: T::Lanes<S>,
    decay: T::Lanes<S>,
    b1: T::Lanes<S>,
    one_b1: T::Lanes<S>,
    b2: T::Lanes<S>,
    one_b2: T::Lanes<S>,
    step_size: T::Lanes<S>,
    inv_sqrt_bc2: T::Lanes<S>,
    eps: T::Lanes<S>,
    decoupled: bool,
}

impl<T: Float> Adam<'_, T> {
    #[inline(always)]
    fn lane<S: Simd>(
        s: S,
        c: &AdamConsts<S, T>,
        p: T::Lanes<S>,
        m: T::Lanes<S>,
        v: T::Lanes<S>,
        g: T::Lanes<S>,
    ) -> [T::Lanes<S>; 3] {
        let mut g = T::vmul(s, g, c.scale);
        let p = if c.decoupled {
            T::vmul(s, p, c.decay)
        } else {
            g = T::vmul_add(s, c.wd, p, g);
            p
        };
        let m = T::vmul_add(s, c.b1, m, T::vmul(s, c.one_b1, g));
        let v = T::vmul_add(s, c.b2, v, T::vmul(s, c.one_b2, T::vmul(s, g, g)));
        // PyTorch: denom = sqrt(v) / sqrt(1 - b2^t) + eps; p -= lr / (1 - b1^t) * m / denom.
        let denom = T::vadd(s, T::vmul(s, T::vsqrt(s, v), c.inv_sqrt_bc2), c.eps);
        let p = T::vneg_mul_add(s, c.step_size, T::vdiv(s, m, denom), p);
        [p, m, v]
    }
}

impl<T: Float> WithSimd for Adam<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self { p, m, v, g, h } = self;
        let t = i32::try_from(h.step.max(1)).unwrap_or(i32::MAX);
        let bc1 = T::one() - h.beta1.powi(t);
        let bc2 = T::one() - h.beta2.powi(t);
        let c = AdamConsts::<S, T> {
            scale: T::splat(s, h.grad_scale),
            wd: T::splat(s, h.weight_decay),
            decay: T::splat(s, T::one() - h.lr * h.weight_decay),
            b1: T::splat(s, h.beta1),
            one_b1: T::splat(s, T::one() - h.beta1),
            b2: T::splat(s, h.beta2),
            one_b2: T::splat(s, T::one() - h.beta2),
            step_size: T::splat(s, h.lr / bc1),
            inv_sqrt_bc2: T::splat(s, T::one() / bc2.sqrt()),
            eps: T::splat(s, h.eps),
            decoupled: h.decoupled,
        };
        let (pv, pt) = T::as_mut_simd::<S>(p);
        let (mv, mt) = T::as_mut_simd::<S>(m);
        let (vv, vt) = T::as_mut_simd::<S>(v);
        let (gv, gt) = T::as_simd::<S>(g);
        for (((p, m), v), g) in pv.iter_mut().zip(mv.iter_mut()).zip(vv.iter_mut()).zip(gv) {
            [*p, *m, *v] = Self::lane(s, &c, *p, *m, *v, *g);
        }
        let [np, nm, nv] = Self::lane(
            s,
            &c,
            T::partial_load(s, pt),
            T::partial_load(s, mt),
            T::partial_load(s, vt),
            T::partial_load(s, gt),
        );
        T::partial_store(s, pt, np);
        T::partial_store(s, mt, nm);
        T::partial_store(s, vt, nv);
    }
}

/// One Adam / AdamW step with PyTorch's formulas (`amsgrad = false`):
/// `g = grad_scale * grad (+ wd * p for Adam)`; AdamW first does `p *= 1 - lr * wd`;
/// `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²;
/// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
///
/// # Panics
/// If the four lengths differ.
///
/// ```
/// use kernels::optim::{adam, AdamStep};
/// let (mut p, mut m, mut v) = ([1.0f64], [0.0], [0.0]);
/// let h = AdamStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0,
///                    decoupled: false, step: 1, grad_scale: 1.0 };
/// adam(&mut p, &mut m, &mut v, &[0.5], h);
/// assert!((p[0] - 0.9).abs() < 1e-7); // the first Adam step moves by lr
/// ```
#[track_caller]
pub fn adam<T: Float>(p: &mut [T], m: &mut [T], v: &mut [T], g: &[T], h: AdamStep<T>) {
    assert!(
        p.len() == m.len() && p.len() == v.len() && p.len() == g.len(),
        "adam: lengths {} {} {} {}",
        p.len(),
        m.len(),
        v.len(),
        g.len()
    );
    crate::arch::dispatch(Adam { p, m, v, g, h });
}

/// Hyper-parameters of [`rmsprop`] (PyTorch's `torch.optim.RMSprop`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsPropStep<T> {
    /// Learning rate.
    pub lr: T,
    /// Decay of the squared-gradient average (PyTorch's `alpha`).
    pub alpha: T,
    /// Added to the denominator.
    pub eps: T,
    /// L2 penalty added to the gradient: `g += weight_decay * p`.
    pub weight_decay: T,
    /// Momentum factor; 0 steps along the scaled gradient directly and uses no buffer.
    pub momentum: T,
    /// Divide by the gradient's estimated variance rather than its raw second moment.
    pub centered: bool,
    /// Factor applied to every gradient element (the clipping factor, or 1).
    pub grad_scale: T,
}

struct RmsProp<'a, T> {
    p: &'a mut [T],
    sq: &'a mut [T],
    buf: &'a mut [T],
    avg: &'a mut [T],
    g: &'a [T],
    h: RmsPropStep<T>,
}

struct RmsPropConsts<S: Simd, T: Float> {
    scale: T::Lanes<S>,
    wd: T::Lanes<S>,
    alpha: T::Lanes<S>,
    one_alpha: T::Lanes<S>,
    eps: T::Lanes<S>,
    lr: T::Lanes<S>,
    momentum: T::Lanes<S>,
    zero: T::Lanes<S>,
    with_momentum: bool,
    centered: bool,
}

impl<T: Float> RmsProp<'_, T> {
    /// One lane's `[p, sq, buf, avg]` after the step; `buf` and `avg` pass through (and are
    /// not stored) when momentum or centering is off.
    #[inline(always)]
    fn lane<S: Simd>(
        s: S,
        c: &RmsPropConsts<S, T>,
        [p, sq, buf, avg]: [T::Lanes<S>; 4],
        g: T::Lanes<S>,
    ) -> [T::Lanes<S>; 4] {
        let g = T::vmul_add(s, c.wd, p, T::vmul(s, g, c.scale));
        let sq = T::vmul_add(s, c.alpha, sq, T::vmul(s, c.one_alpha, T::vmul(s, g, g)));
        // PyTorch: grad_avg.lerp_(g, 1 - alpha), i.e. avg + (1 - alpha) (g - avg) for
        // alpha > 0.5; the variance estimate sq - avg² is clamped at 0, where rounding could
        // take it below and PyTorch's sqrt would give NaN.
        let (avg, var) = if c.centered {
            let avg = T::vmul_add(s, c.one_alpha, T::vsub(s, g, avg), avg);
            (avg, T::vmax(s, T::vneg_mul_add(s, avg, avg, sq), c.zero))
        } else {
            (avg, sq)
        };
        let denom = T::vadd(s, T::vsqrt(s, var), c.eps);
        let step = T::vdiv(s, g, denom);
        if c.with_momentum {
            let buf = T::vmul_add(s, c.momentum, buf, step);
            [T::vneg_mul_add(s, c.lr, buf, p), sq, buf, avg]
        } else {
            [T::vneg_mul_add(s, c.lr, step, p), sq, buf, avg]
        }
    }
}

impl<T: Float> WithSimd for RmsProp<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self {
            p,
            sq,
            buf,
            avg,
            g,
            h,
        } = self;
        let c = RmsPropConsts::<S, T> {
            scale: T::splat(s, h.grad_scale),
            wd: T::splat(s, h.weight_decay),
            alpha: T::splat(s, h.alpha),
            one_alpha: T::splat(s, T::one() - h.alpha),
            eps: T::splat(s, h.eps),
            lr: T::splat(s, h.lr),
            momentum: T::splat(s, h.momentum),
            zero: T::splat(s, T::zero()),
            with_momentum: !buf.is_empty(),
            centered: !avg.is_empty(),
        };
        let (pv, pt) = T::as_mut_simd::<S>(p);
        let (sv, st) = T::as_mut_simd::<S>(sq);
        let (bv, bt) = T::as_mut_simd::<S>(buf);
        let (av, at) = T::as_mut_simd::<S>(avg);
        let (gv, gt) = T::as_simd::<S>(g);
        for i in 0..pv.len() {
            // An unused buffer is empty: its lanes read as zero and are not written back.
            let b = bv.get(i).copied().unwrap_or(c.zero);
            let a = av.get(i).copied().unwrap_or(c.zero);
            let [np, ns, nb, na] = Self::lane(s, &c, [pv[i], sv[i], b, a], gv[i]);
            (pv[i], sv[i]) = (np, ns);
            if let Some(b) = bv.get_mut(i) {
                *b = nb;
            }
            if let Some(a) = av.get_mut(i) {
                *a = na;
            }
        }
        let [np, ns, nb, na] = Self::lane(
            s,
            &c,
            [
                T::partial_load(s, pt),
                T::partial_load(s, st),
                T::partial_load(s, bt),
                T::partial_load(s, at),
            ],
            T::partial_load(s, gt),
        );
        T::partial_store(s, pt, np);
        T::partial_store(s, st, ns);
        T::partial_store(s, bt, nb);
        T::partial_store(s, at, na);
    }
}

/// One RMSprop step with PyTorch's formulas: `g = grad_scale * grad + wd * p;
/// sq = alpha sq + (1 - alpha) g²`; centered, `avg = avg + (1 - alpha) (g - avg)` and
/// `denom = sqrt(sq - avg²) + eps`, else `denom = sqrt(sq) + eps`; with momentum
/// `buf = momentum buf + g / denom; p -= lr buf`, without `p -= lr g / denom`.
///
/// `buf` is the momentum buffer and `avg` the centered gradient average: each either as long
/// as `p` or empty, and empty exactly when `h.momentum == 0` / `!h.centered`.
///
/// # Panics
/// If a buffer's length does not fit that rule.
///
/// ```
/// use kernels::optim::{rmsprop, RmsPropStep};
/// let (mut p, mut sq) = ([1.0f64], [0.0]);
/// let h = RmsPropStep { lr: 0.01, alpha: 0.99, eps: 1e-8, weight_decay: 0.0, momentum: 0.0,
///                       centered: false, grad_scale: 1.0 };
/// rmsprop(&mut p, &mut sq, &mut [], &mut [], &[0.5], h);
/// // sq = 0.01 * 0.25, so the first step moves by lr * 0.5 / 0.05 = 10 lr.
/// assert!((p[0] - 0.9).abs() < 1e-7);
/// ```
#[track_caller]
pub fn rmsprop<T: Float>(
    p: &mut [T],
    sq: &mut [T],
    buf: &mut [T],
    avg: &mut [T],
    g: &[T],
    h: RmsPropStep<T>,
) {
    let fits = |len: usize, used: bool| len == if used { p.len() } else { 0 };
    assert!(
        p.len() == sq.len()
            && p.len() == g.len()
            && fits(buf.len(), h.momentum != T::zero())
            && fits(avg.len(), h.centered),
        "rmsprop: lengths {} {} {} {} {} (momentum {:?}, centered {})",
        p.len(),
        sq.len(),
        buf.len(),
        avg.len(),
        g.len(),
        h.momentum,
        h.centered
    );
    crate::arch::dispatch(RmsProp {
        p,
        sq,
        buf,
        avg,
        g,
        h,
    });
}

/// Hyper-parameters of [`adagrad`] (PyTorch's `torch.optim.Adagrad`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradStep<T> {
    /// This step's learning rate, `lr / (1 + (t - 1) · lr_decay)` for step `t`.
    pub lr: T,
    /// Added to the denominator.
    pub eps: T,
    /// L2 penalty added to the gradient: `g += weight_decay * p`.
    pub weight_decay: T,
    /// Factor applied to every gradient element (the clipping factor, or 1).
    pub grad_scale: T,
}

struct Adagrad<'a, T> {
    p: &'a mut [T],
    sum: &'a mut [T],
    g: &'a [T],
    h: AdagradStep<T>,
}

impl<T: Float> Adagrad<'_, T> {
    #[inline(always)]
    fn lane<S: Simd>(
        s: S,
        h: &AdagradStep<T>,
        p: T::Lanes<S>,
        sum: T::Lanes<S>,
        g: T::Lanes<S>,
    ) -> (T::Lanes<S>, T::Lanes<S>) {
        let g = T::vmul_add(
            s,
            T::splat(s, h.weight_decay),
            p,
            T::vmul(s, g, T::splat(s, h.grad_scale)),
        );
        let sum = T::vmul_add(s, g, g, sum);
        let denom = T::vadd(s, T::vsqrt(s, sum), T::splat(s, h.eps));
        (
            T::vneg_mul_add(s, T::splat(s, h.lr), T::vdiv(s, g, denom), p),
            sum,
        )
    }
}

impl<T: Float> WithSimd for Adagrad<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self { p, sum, g, h } = self;
        let (pv, pt) = T::as_mut_simd::<S>(p);
        let (sv, st) = T::as_mut_simd::<S>(sum);
        let (gv, gt) = T::as_simd::<S>(g);
        for ((p, sum), g) in pv.iter_mut().zip(sv.iter_mut()).zip(gv) {
            (*p, *sum) = Self::lane(s, &h, *p, *sum, *g);
        }
        let (np, ns) = Self::lane(
            s,
            &h,
            T::partial_load(s, pt),
            T::partial_load(s, st),
            T::partial_load(s, gt),
        );
        T::partial_store(s, pt, np);
        T::partial_store(s, st, ns);
    }
}

/// One Adagrad step with PyTorch's formulas: `g = grad_scale * grad + wd * p;
/// sum += g²; p -= lr * g / (sqrt(sum) + eps)`, with `lr` already decayed for this step.
///
/// # Panics
/// If the three lengths differ.
///
/// ```
/// use kernels::optim::{adagrad, AdagradStep};
/// let (mut p, mut sum) = ([1.0f64], [0.0]);
/// let h = AdagradStep { lr: 0.1, eps: 1e-10, weight_decay: 0.0, grad_scale: 1.0 };
/// adagrad(&mut p, &mut sum, &[0.5], h);
/// assert!((p[0] - 0.9).abs() < 1e-9); // the first step moves by lr
/// assert_eq!(sum[0], 0.25);
/// ```
#[track_caller]
pub fn adagrad<T: Float>(p: &mut [T], sum: &mut [T], g: &[T], h: AdagradStep<T>) {
    assert!(
        p.len() == sum.len() && p.len() == g.len(),
        "adagrad: lengths {} {} {}",
        p.len(),
        sum.len(),
        g.len()
    );
    crate::arch::dispatch(Adagrad { p, sum, g, h });
}
