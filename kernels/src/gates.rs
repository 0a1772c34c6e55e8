//! The elementwise part of an LSTM or GRU step, forward and backward, each in one pass.
//!
//! A step's gate pre-activations for `B` sequences are one `[B, G·H]` buffer (PyTorch's gate
//! order: LSTM `i, f, g, o`; GRU `r, z, n`), the output of one recurrent product. These kernels
//! apply every nonlinearity and the state update while the row is in cache, and the backward
//! kernels turn the saved activations into the pre-activation gradients in place, so the
//! engine keeps one gate buffer per step for both directions.
//!
//! Every kernel walks hidden unit `j` of all gate slices together, a register at a time; the
//! partial register at the end of a row goes through the same arithmetic, so results do not
//! depend on `H` modulo the register width.

use faer::Accum;
use pulp::{Simd, WithSimd};

use crate::float::Float;

/// One register from `x` (`x.len() <= lanes`; a short slice is zero-padded).
#[inline(always)]
fn load<T: Float, S: Simd>(s: S, x: &[T]) -> T::Lanes<S> {
    let (full, tail) = T::as_simd::<S>(x);
    match full.first() {
        Some(v) => *v,
        None => T::partial_load(s, tail),
    }
}

/// Stores the first `x.len()` lanes of `v` into `x`.
#[inline(always)]
fn store<T: Float, S: Simd>(s: S, x: &mut [T], v: T::Lanes<S>) {
    let (full, tail) = T::as_mut_simd::<S>(x);
    match full.first_mut() {
        Some(r) => *r = v,
        None => T::partial_store(s, tail, v),
    }
}

/// `(j, n)` for every register of a row of `hidden` units: start and width.
#[inline(always)]
fn registers<T: Float, S: Simd>(hidden: usize) -> impl Iterator<Item = (usize, usize)> {
    let lanes = T::lanes::<S>();
    (0..hidden)
        .step_by(lanes)
        .map(move |j| (j, lanes.min(hidden - j)))
}

#[track_caller]
fn check_rows(what: &str, len: usize, rows: usize, width: usize) {
    assert_eq!(
        len,
        rows * width,
        "{what} has {len} elements, want {rows} rows of {width}"
    );
}

/// Row count of a `[B, gates·H]` buffer, checked.
#[track_caller]
fn rows_of(gates_len: usize, gates: usize, hidden: usize) -> usize {
    assert!(hidden > 0, "hidden size must be positive");
    let width = gates * hidden;
    assert!(
        gates_len.is_multiple_of(width),
        "gate buffer of {gates_len} elements is not a whole number of rows of {width}"
    );
    gates_len / width
}

/// Splits a row of `G` gate slices of `hidden` units each.
#[inline(always)]
fn split_gates<T, const G: usize>(row: &mut [T], hidden: usize) -> [&mut [T]; G] {
    let mut rest = row;
    core::array::from_fn(|_| {
        let (gate, tail) = core::mem::take(&mut rest).split_at_mut(hidden);
        rest = tail;
        gate
    })
}

/// Splits a `[G·H]` vector (a bias) into its `G` gate slices.
#[inline(always)]
fn gate_slices<T, const G: usize>(v: &[T], hidden: usize) -> [&[T]; G] {
    core::array::from_fn(|k| &v[k * hidden..(k + 1) * hidden])
}

#[track_caller]
fn check_units(what: &str, len: usize, units: usize) {
    assert_eq!(
        len, units,
        "{what} has {len} elements, want {units} (the block's units)"
    );
}

/// `x + b`, a register of each.
#[inline(always)]
fn biased<T: Float, S: Simd>(s: S, x: &[T], b: &[T]) -> T::Lanes<S> {
    T::vadd(s, load(s, x), load(s, b))
}

/// One row of an LSTM step forward over a block of units (see [`lstm_forward`]).
#[inline(always)]
fn lstm_forward_row<T: Float, S: Simd>(
    s: S,
    [gi, gf, gg, go]: [&mut [T]; 4],
    bias: [&[T]; 4],
    cp: &[T],
    c: &mut [T],
    h: &mut [T],
) {
    for (j, n) in registers::<T, S>(cp.len()) {
        let r = j..j + n;
        let i = T::vsigmoid(s, biased(s, &gi[r.clone()], &bias[0][r.clone()]));
        let f = T::vsigmoid(s, biased(s, &gf[r.clone()], &bias[1][r.clone()]));
        let gv = T::vtanh(s, biased(s, &gg[r.clone()], &bias[2][r.clone()]));
        let o = T::vsigmoid(s, biased(s, &go[r.clone()], &bias[3][r.clone()]));
        // c = f c_prev + i g; h = o tanh(c)
        let cv = T::vmul_add(s, f, load(s, &cp[r.clone()]), T::vmul(s, i, gv));
        store(s, &mut gi[r.clone()], i);
        store(s, &mut gf[r.clone()], f);
        store(s, &mut gg[r.clone()], gv);
        store(s, &mut go[r.clone()], o);
        store(s, &mut c[r.clone()], cv);
        store(s, &mut h[r], T::vmul(s, o, T::vtanh(s, cv)));
    }
}

struct LstmForward<'a, T> {
    gates: &'a mut [T],
    bias: &'a [T],
    c_prev: &'a [T],
    c: &'a mut [T],
    h: &'a mut [T],
    hidden: usize,
}

impl<T: Float> WithSimd for LstmForward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let hd = self.hidden;
        let bias = gate_slices(self.bias, hd);
        let rows = self
            .gates
            .chunks_exact_mut(4 * hd)
            .zip(self.c_prev.chunks_exact(hd))
            .zip(self.c.chunks_exact_mut(hd))
            .zip(self.h.chunks_exact_mut(hd));
        for (((g, cp), c), h) in rows {
            lstm_forward_row(s, split_gates(g, hd), bias, cp, c, h);
        }
    }
}

struct LstmForwardUnits<'a, T> {
    gates: [&'a mut [T]; 4],
    bias: [&'a [T]; 4],
    c_prev: &'a [T],
    c: &'a mut [T],
    h: &'a mut [T],
}

impl<T: Float> WithSimd for LstmForwardUnits<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        lstm_forward_row(s, self.gates, self.bias, self.c_prev, self.c, self.h);
    }
}

/// [`lstm_forward`] for one sequence and a block of hidden units: `gates[k]` and `bias[k]`
/// are gate `k`'s slices for those units, `c_prev`, `c` and `h` theirs. The engine's
/// per-step workers each run their own block of units with it.
///
/// # Panics
/// If the slices' lengths differ.
///
/// ```
/// let (mut i, mut f, mut g, mut o) = ([0.0f64], [0.0], [0.0], [0.0]);
/// let (mut c, mut h) = ([0.0; 1], [0.0; 1]);
/// kernels::gates::lstm_forward_units([&mut i, &mut f, &mut g, &mut o], [&[0.0]; 4], &[2.0], &mut c, &mut h);
/// assert_eq!((i[0], c[0]), (0.5, 1.0));
/// ```
#[track_caller]
pub fn lstm_forward_units<T: Float>(
    gates: [&mut [T]; 4],
    bias: [&[T]; 4],
    c_prev: &[T],
    c: &mut [T],
    h: &mut [T],
) {
    let units = c_prev.len();
    gates
        .iter()
        .for_each(|g| check_units("a gate", g.len(), units));
    bias.iter()
        .for_each(|b| check_units("a bias", b.len(), units));
    check_units("c", c.len(), units);
    check_units("h", h.len(), units);
    crate::arch::dispatch(LstmForwardUnits {
        gates,
        bias,
        c_prev,
        c,
        h,
    });
}

/// The elementwise half of an LSTM step (PyTorch's `nn.LSTM`).
///
/// `gates` `[B, 4H]` holds the pre-activations without bias (`x W_ihᵀ + h_prev W_hhᵀ`) on
/// entry and the activated gates `i, f, g, o` on return (what [`lstm_backward`] reads);
/// `bias` `[4H]` is `b_ih + b_hh`. Writes `c = f ⊙ c_prev + i ⊙ g` and `h = o ⊙ tanh(c)`, both
/// `[B, H]`.
///
/// # Panics
/// If the buffers are not `[B, 4H]`, `[4H]` and `[B, H]` for the same `B` and `H = hidden`.
///
/// ```
/// // One unit, zero pre-activations: i = f = o = 1/2, g = 0, so c = c_prev / 2.
/// let mut gates = [0.0f64; 4];
/// let (mut c, mut h) = ([0.0; 1], [0.0; 1]);
/// kernels::gates::lstm_forward(&mut gates, &[0.0; 4], &[2.0], &mut c, &mut h, 1);
/// assert_eq!(gates, [0.5, 0.5, 0.0, 0.5]);
/// assert_eq!(c, [1.0]);
/// assert!((h[0] - 0.5 * 1.0f64.tanh()).abs() < 1e-15);
/// ```
#[track_caller]
pub fn lstm_forward<T: Float>(
    gates: &mut [T],
    bias: &[T],
    c_prev: &[T],
    c: &mut [T],
    h: &mut [T],
    hidden: usize,
) {
    let rows = rows_of(gates.len(), 4, hidden);
    check_rows("bias", bias.len(), 1, 4 * hidden);
    check_rows("c_prev", c_prev.len(), rows, hidden);
    check_rows("c", c.len(), rows, hidden);
    check_rows("h", h.len(), rows, hidden);
    crate::arch::dispatch(LstmForward {
        gates,
        bias,
        c_prev,
        c,
        h,
        hidden,
    });
}

/// `y (1 - y)`: the sigmoid's derivative from its output.
#[inline(always)]
fn sigmoid_grad<T: Float, S: Simd>(s: S, y: T::Lanes<S>) -> T::Lanes<S> {
    T::vmul(s, y, T::vsub(s, T::splat(s, T::one()), y))
}

/// One row of an LSTM step backward over a block of units (see [`lstm_backward`]).
#[inline(always)]
fn lstm_backward_row<T: Float, S: Simd>(
    s: S,
    [gi, gf, gg, go]: [&mut [T]; 4],
    cp: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
) {
    let one = T::splat(s, T::one());
    for (j, n) in registers::<T, S>(cp.len()) {
        let r = j..j + n;
        let (i, f) = (load(s, &gi[r.clone()]), load(s, &gf[r.clone()]));
        let (gv, o) = (load(s, &gg[r.clone()]), load(s, &go[r.clone()]));
        let dhv = load(s, &dh[r.clone()]);
        let tc = T::vtanh(s, load(s, &c[r.clone()]));
        // dc_t = dc_{t+1 → t} + dh o (1 - tanh² c)
        let dct = T::vmul_add(
            s,
            T::vmul(s, dhv, o),
            T::vneg_mul_add(s, tc, tc, one),
            load(s, &dc[r.clone()]),
        );
        let di = T::vmul(s, T::vmul(s, dct, gv), sigmoid_grad::<T, S>(s, i));
        let df = T::vmul(
            s,
            T::vmul(s, dct, load(s, &cp[r.clone()])),
            sigmoid_grad::<T, S>(s, f),
        );
        let dg = T::vmul(s, T::vmul(s, dct, i), T::vneg_mul_add(s, gv, gv, one));
        let dov = T::vmul(s, T::vmul(s, dhv, tc), sigmoid_grad::<T, S>(s, o));
        store(s, &mut gi[r.clone()], di);
        store(s, &mut gf[r.clone()], df);
        store(s, &mut gg[r.clone()], dg);
        store(s, &mut go[r.clone()], dov);
        store(s, &mut dc[r], T::vmul(s, dct, f));
    }
}

struct LstmBackward<'a, T> {
    gates: &'a mut [T],
    c_prev: &'a [T],
    c: &'a [T],
    dh: &'a [T],
    dc: &'a mut [T],
    hidden: usize,
}

impl<T: Float> WithSimd for LstmBackward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let hd = self.hidden;
        let rows = self
            .gates
            .chunks_exact_mut(4 * hd)
            .zip(self.c_prev.chunks_exact(hd))
            .zip(self.c.chunks_exact(hd))
            .zip(self.dh.chunks_exact(hd))
            .zip(self.dc.chunks_exact_mut(hd));
        for ((((g, cp), c), dh), dc) in rows {
            lstm_backward_row(s, split_gates(g, hd), cp, c, dh, dc);
        }
    }
}

struct LstmBackwardUnits<'a, T> {
    gates: [&'a mut [T]; 4],
    c_prev: &'a [T],
    c: &'a [T],
    dh: &'a [T],
    dc: &'a mut [T],
}

impl<T: Float> WithSimd for LstmBackwardUnits<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        lstm_backward_row(s, self.gates, self.c_prev, self.c, self.dh, self.dc);
    }
}

/// [`lstm_backward`] for one sequence and a block of hidden units (the slices of
/// [`lstm_forward_units`]).
///
/// # Panics
/// If the slices' lengths differ.
#[track_caller]
pub fn lstm_backward_units<T: Float>(
    gates: [&mut [T]; 4],
    c_prev: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
) {
    let units = c_prev.len();
    gates
        .iter()
        .for_each(|g| check_units("a gate", g.len(), units));
    for (what, len) in [("c", c.len()), ("dh", dh.len()), ("dc", dc.len())] {
        check_units(what, len, units);
    }
    crate::arch::dispatch(LstmBackwardUnits {
        gates,
        c_prev,
        c,
        dh,
        dc,
    });
}

/// The elementwise half of an LSTM step backward, the mirror of [`lstm_forward`].
///
/// `gates` `[B, 4H]` holds the activated gates on entry and `dL/d(pre-activation)` on return
/// (the same for both biases). `dh` `[B, H]` is the whole `dL/dh_t`; `dc` `[B, H]` holds
/// `dL/dc_t` arriving from step `t+1` on entry and `dL/dc_{t-1}` on return. `c_prev` and `c`
/// are the forward cell states (`tanh(c)` is recomputed rather than stored).
///
/// # Panics
/// If the buffers are not `[B, 4H]` and `[B, H]` for the same `B` and `H = hidden`.
#[track_caller]
pub fn lstm_backward<T: Float>(
    gates: &mut [T],
    c_prev: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
    hidden: usize,
) {
    let rows = rows_of(gates.len(), 4, hidden);
    for (what, len) in [
        ("c_prev", c_prev.len()),
        ("c", c.len()),
        ("dh", dh.len()),
        ("dc", dc.len()),
    ] {
        check_rows(what, len, rows, hidden);
    }
    crate::arch::dispatch(LstmBackward {
        gates,
        c_prev,
        c,
        dh,
        dc,
        hidden,
    });
}

/// `(x + b_i) + (h + b_h)`: a GRU gate's pre-activation from its input and hidden sides.
#[inline(always)]
fn gru_pre<T: Float, S: Simd>(s: S, [x, b_i, h, b_h]: [&[T]; 4]) -> T::Lanes<S> {
    T::vadd(s, biased(s, x, b_i), biased(s, h, b_h))
}

/// One row of a GRU step forward over a block of units (see [`gru_forward`]).
#[inline(always)]
fn gru_forward_row<T: Float, S: Simd>(
    s: S,
    [xr, xz, xn]: [&mut [T]; 3],
    [hr, hz, hn]: [&mut [T]; 3],
    b_ih: [&[T]; 3],
    b_hh: [&[T]; 3],
    hp: &[T],
    h: &mut [T],
) {
    for (j, n) in registers::<T, S>(hp.len()) {
        let r = j..j + n;
        let rv = T::vsigmoid(
            s,
            gru_pre(
                s,
                [
                    &xr[r.clone()],
                    &b_ih[0][r.clone()],
                    &hr[r.clone()],
                    &b_hh[0][r.clone()],
                ],
            ),
        );
        let zv = T::vsigmoid(
            s,
            gru_pre(
                s,
                [
                    &xz[r.clone()],
                    &b_ih[1][r.clone()],
                    &hz[r.clone()],
                    &b_hh[1][r.clone()],
                ],
            ),
        );
        // n = tanh(x_n + b_in + r (W_hn h + b_hn)); the bracket is kept for backward.
        let hnv = biased(s, &hn[r.clone()], &b_hh[2][r.clone()]);
        let nv = T::vtanh(
            s,
            T::vmul_add(s, rv, hnv, biased(s, &xn[r.clone()], &b_ih[2][r.clone()])),
        );
        // h = (1 - z) n + z h_prev = n + z (h_prev - n)
        let hv = T::vmul_add(s, zv, T::vsub(s, load(s, &hp[r.clone()]), nv), nv);
        store(s, &mut xr[r.clone()], rv);
        store(s, &mut xz[r.clone()], zv);
        store(s, &mut xn[r.clone()], nv);
        store(s, &mut h[r.clone()], hv);
        store(s, &mut hn[r], hnv);
    }
}

struct GruForward<'a, T> {
    gx: &'a mut [T],
    gh: &'a mut [T],
    b_ih: &'a [T],
    b_hh: &'a [T],
    h_prev: &'a [T],
    h: &'a mut [T],
    hidden: usize,
}

impl<T: Float> WithSimd for GruForward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let hd = self.hidden;
        let (b_ih, b_hh) = (gate_slices(self.b_ih, hd), gate_slices(self.b_hh, hd));
        let rows = self
            .gx
            .chunks_exact_mut(3 * hd)
            .zip(self.gh.chunks_exact_mut(3 * hd))
            .zip(self.h_prev.chunks_exact(hd))
            .zip(self.h.chunks_exact_mut(hd));
        for (((gx, gh), hp), h) in rows {
            gru_forward_row(
                s,
                split_gates(gx, hd),
                split_gates(gh, hd),
                b_ih,
                b_hh,
                hp,
                h,
            );
        }
    }
}

struct GruForwardUnits<'a, T> {
    gx: [&'a mut [T]; 3],
    gh: [&'a mut [T]; 3],
    b_ih: [&'a [T]; 3],
    b_hh: [&'a [T]; 3],
    h_prev: &'a [T],
    h: &'a mut [T],
}

impl<T: Float> WithSimd for GruForwardUnits<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        gru_forward_row(
            s,
            self.gx,
            self.gh,
            self.b_ih,
            self.b_hh,
            self.h_prev,
            self.h,
        );
    }
}

/// [`gru_forward`] for one sequence and a block of hidden units: `gx[k]`, `gh[k]`, `b_ih[k]`
/// and `b_hh[k]` are gate `k`'s slices for those units, `h_prev` and `h` theirs.
///
/// # Panics
/// If the slices' lengths differ.
#[track_caller]
pub fn gru_forward_units<T: Float>(
    gx: [&mut [T]; 3],
    gh: [&mut [T]; 3],
    b_ih: [&[T]; 3],
    b_hh: [&[T]; 3],
    h_prev: &[T],
    h: &mut [T],
) {
    let units = h_prev.len();
    gx.iter()
        .chain(&gh)
        .for_each(|g| check_units("a gate", g.len(), units));
    b_ih.iter()
        .chain(&b_hh)
        .for_each(|b| check_units("a bias", b.len(), units));
    check_units("h", h.len(), units);
    crate::arch::dispatch(GruForwardUnits {
        gx,
        gh,
        b_ih,
        b_hh,
        h_prev,
        h,
    });
}

/// The elementwise half of a GRU step (PyTorch's `nn.GRU`, gates `r, z, n`).
///
/// `gx` `[B, 3H]` holds `x W_ihᵀ` (no bias) on entry and the activated gates `r, z, n` on
/// return; `gh` `[B, 3H]` holds `h_prev W_hhᵀ` (no bias), and its `n` slice becomes
/// `W_hn h_prev + b_hn` (what `r` multiplies, needed by [`gru_backward`]). Writes
/// `h = (1 - z) ⊙ n + z ⊙ h_prev` `[B, H]`, where `r = σ(x_r + b_ir + h_r + b_hr)`,
/// `z = σ(x_z + b_iz + h_z + b_hz)`, `n = tanh(x_n + b_in + r ⊙ (h_n + b_hn))`.
///
/// # Panics
/// If the buffers are not `[B, 3H]`, `[3H]` and `[B, H]` for the same `B` and `H = hidden`.
///
/// ```
/// // Zero pre-activations: r = z = 1/2, n = 0, so h = h_prev / 2.
/// let (mut gx, mut gh, mut h) = ([0.0f64; 3], [0.0f64; 3], [0.0; 1]);
/// kernels::gates::gru_forward(&mut gx, &mut gh, &[0.0; 3], &[0.0; 3], &[2.0], &mut h, 1);
/// assert_eq!(gx, [0.5, 0.5, 0.0]);
/// assert_eq!(h, [1.0]);
/// ```
#[track_caller]
pub fn gru_forward<T: Float>(
    gx: &mut [T],
    gh: &mut [T],
    b_ih: &[T],
    b_hh: &[T],
    h_prev: &[T],
    h: &mut [T],
    hidden: usize,
) {
    let rows = rows_of(gx.len(), 3, hidden);
    check_rows("gh", gh.len(), rows, 3 * hidden);
    check_rows("b_ih", b_ih.len(), 1, 3 * hidden);
    check_rows("b_hh", b_hh.len(), 1, 3 * hidden);
    check_rows("h_prev", h_prev.len(), rows, hidden);
    check_rows("h", h.len(), rows, hidden);
    crate::arch::dispatch(GruForward {
        gx,
        gh,
        b_ih,
        b_hh,
        h_prev,
        h,
        hidden,
    });
}

/// One row of a GRU step backward over a block of units (see [`gru_backward`]).
#[inline(always)]
fn gru_backward_row<T: Float, S: Simd>(
    s: S,
    [xr, xz, xn]: [&mut [T]; 3],
    [hr, hz, hn]: [&mut [T]; 3],
    hp: &[T],
    dh: &[T],
    dhp: &mut [T],
    accum: Accum,
) {
    let one = T::splat(s, T::one());
    for (j, n) in registers::<T, S>(hp.len()) {
        let r = j..j + n;
        let (rv, zv, nv) = (
            load(s, &xr[r.clone()]),
            load(s, &xz[r.clone()]),
            load(s, &xn[r.clone()]),
        );
        let (hnv, hpv, dhv) = (
            load(s, &hn[r.clone()]),
            load(s, &hp[r.clone()]),
            load(s, &dh[r.clone()]),
        );
        // Through n: dL/d(n's pre-activation) = dh (1 - z) (1 - n²).
        let dan = T::vmul(
            s,
            T::vmul(s, dhv, T::vsub(s, one, zv)),
            T::vneg_mul_add(s, nv, nv, one),
        );
        let dar = T::vmul(s, T::vmul(s, dan, hnv), T::vmul(s, rv, T::vsub(s, one, rv)));
        let daz = T::vmul(
            s,
            T::vmul(s, dhv, T::vsub(s, hpv, nv)),
            T::vmul(s, zv, T::vsub(s, one, zv)),
        );
        store(s, &mut xr[r.clone()], dar);
        store(s, &mut xz[r.clone()], daz);
        store(s, &mut xn[r.clone()], dan);
        store(s, &mut hr[r.clone()], dar);
        store(s, &mut hz[r.clone()], daz);
        store(s, &mut hn[r.clone()], T::vmul(s, dan, rv));
        // The direct path h_prev → h through z.
        let direct = T::vmul(s, dhv, zv);
        let v = match accum {
            Accum::Replace => direct,
            Accum::Add => T::vadd(s, load(s, &dhp[r.clone()]), direct),
        };
        store(s, &mut dhp[r], v);
    }
}

struct GruBackward<'a, T> {
    gx: &'a mut [T],
    gh: &'a mut [T],
    h_prev: &'a [T],
    dh: &'a [T],
    dh_prev: &'a mut [T],
    accum: Accum,
    hidden: usize,
}

impl<T: Float> WithSimd for GruBackward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let hd = self.hidden;
        let rows = self
            .gx
            .chunks_exact_mut(3 * hd)
            .zip(self.gh.chunks_exact_mut(3 * hd))
            .zip(self.h_prev.chunks_exact(hd))
            .zip(self.dh.chunks_exact(hd))
            .zip(self.dh_prev.chunks_exact_mut(hd));
        for ((((gx, gh), hp), dh), dhp) in rows {
            let (gx, gh) = (split_gates(gx, hd), split_gates(gh, hd));
            gru_backward_row(s, gx, gh, hp, dh, dhp, self.accum);
        }
    }
}

struct GruBackwardUnits<'a, T> {
    gx: [&'a mut [T]; 3],
    gh: [&'a mut [T]; 3],
    h_prev: &'a [T],
    dh: &'a [T],
    dh_prev: &'a mut [T],
    accum: Accum,
}

impl<T: Float> WithSimd for GruBackwardUnits<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self {
            gx,
            gh,
            h_prev,
            dh,
            dh_prev,
            accum,
        } = self;
        gru_backward_row(s, gx, gh, h_prev, dh, dh_prev, accum);
    }
}

/// [`gru_backward`] for one sequence and a block of hidden units (the slices of
/// [`gru_forward_units`]).
///
/// # Panics
/// If the slices' lengths differ.
#[track_caller]
pub fn gru_backward_units<T: Float>(
    gx: [&mut [T]; 3],
    gh: [&mut [T]; 3],
    h_prev: &[T],
    dh: &[T],
    dh_prev: &mut [T],
    accum: Accum,
) {
    let units = h_prev.len();
    gx.iter()
        .chain(&gh)
        .for_each(|g| check_units("a gate", g.len(), units));
    check_units("dh", dh.len(), units);
    check_units("dh_prev", dh_prev.len(), units);
    crate::arch::dispatch(GruBackwardUnits {
        gx,
        gh,
        h_prev,
        dh,
        dh_prev,
        accum,
    });
}

/// The elementwise half of a GRU step backward, the mirror of [`gru_forward`].
///
/// On entry `gx` `[B, 3H]` holds the gates `r, z, n` and `gh`'s `n` slice `W_hn h_prev + b_hn`;
/// on return `gx` holds `dL/d` of the input-side pre-activations (`x W_ihᵀ + b_ih`, for
/// `W_ih`, `b_ih` and `x`) and `gh` those of the hidden side (`h W_hhᵀ + b_hh`, for `W_hh`,
/// `b_hh` and the recurrent product). `dh` `[B, H]` is the whole `dL/dh_t`; the direct part of
/// `dL/dh_prev`, `dh ⊙ z`, is written or added (`accum`) into `dh_prev` `[B, H]`.
///
/// # Panics
/// If the buffers are not `[B, 3H]` and `[B, H]` for the same `B` and `H = hidden`.
#[track_caller]
pub fn gru_backward<T: Float>(
    gx: &mut [T],
    gh: &mut [T],
    h_prev: &[T],
    dh: &[T],
    dh_prev: &mut [T],
    accum: Accum,
    hidden: usize,
) {
    let rows = rows_of(gx.len(), 3, hidden);
    check_rows("gh", gh.len(), rows, 3 * hidden);
    for (what, len) in [
        ("h_prev", h_prev.len()),
        ("dh", dh.len()),
        ("dh_prev", dh_prev.len()),
    ] {
        check_rows(what, len, rows, hidden);
    }
    crate::arch::dispatch(GruBackward {
        gx,
        gh,
        h_prev,
        dh,
        dh_prev,
        accum,
        hidden,
    });
}
