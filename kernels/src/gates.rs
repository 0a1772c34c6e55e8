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

use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, MatRef};
use pulp::{Simd, WithSimd};

use crate::float::Float;

/// What a kernel does to one register of each of its slices (a trait, not a closure: a
/// closure is not compiled with the SIMD target features of the function it is written in,
/// so every intrinsic in it would become a call; a GRU forward register took 30x longer).
trait RegisterOp<T: Float, const M: usize, const N: usize>: Copy {
    /// Updates `io` (the registers read and written back) from `inputs` (only read).
    fn apply<S: Simd>(self, s: S, io: &mut [T::Lanes<S>; M], inputs: [T::Lanes<S>; N]);
}

/// Runs `op` on every register of a row of unit slices, all the same length: `io`'s registers
/// are read, passed to `op` to update and written back; `inputs`' are only read. The partial
/// register at the end is zero-padded on the way in and only its live lanes are stored, so it
/// goes through exactly the arithmetic of the whole ones.
///
/// The slices are walked through raw pointers rather than split into register slices with
/// `array::map` / `from_fn`: those are not inlined into the SIMD function, and their calls
/// cost each row about 560 instructions (70 ns), as much as four registers of the GRU's
/// forward arithmetic (the engine's tiles are 96 units wide, six f32 registers).
///
/// # Panics
/// If the slices' lengths differ.
#[inline(always)]
fn walk<T: Float, S: Simd, const M: usize, const N: usize>(
    s: S,
    io: [&mut [T]; M],
    inputs: [&[T]; N],
    op: impl RegisterOp<T, M, N>,
) {
    let units = io.first().map_or(0, |x| x.len());
    let mut io_at = [core::ptr::null_mut::<T>(); M];
    for (at, x) in io_at.iter_mut().zip(io) {
        assert_eq!(x.len(), units, "a row's slices differ in length");
        *at = x.as_mut_ptr();
    }
    let mut in_at = [core::ptr::null::<T>(); N];
    for (at, x) in in_at.iter_mut().zip(inputs) {
        assert_eq!(x.len(), units, "a row's slices differ in length");
        *at = x.as_ptr();
    }
    let lanes = T::lanes::<S>();
    let zero = T::splat(s, T::zero());
    let mut j = 0;
    while j + lanes <= units {
        let (mut regs, mut ins) = ([zero; M], [zero; N]);
        for (v, at) in regs.iter_mut().zip(io_at) {
            // SAFETY: `at` starts a live `&mut [T]` of `units` elements (checked above) that
            // nothing else touches during this call, and `j + lanes <= units`: the register is
            // inside it. `Lanes` is `lanes` plain `T`s, read without alignment.
            *v = unsafe { at.add(j).cast::<T::Lanes<S>>().read_unaligned() };
        }
        for (v, at) in ins.iter_mut().zip(in_at) {
            // SAFETY: as above, for a live `&[T]` of `units` elements.
            *v = unsafe { at.add(j).cast::<T::Lanes<S>>().read_unaligned() };
        }
        op.apply(s, &mut regs, ins);
        for (v, at) in regs.into_iter().zip(io_at) {
            // SAFETY: as for the read: inside the same exclusively borrowed slice.
            unsafe { at.add(j).cast::<T::Lanes<S>>().write_unaligned(v) };
        }
        j += lanes;
    }
    if j < units {
        let tail = units - j;
        let (mut regs, mut ins) = ([zero; M], [zero; N]);
        for (v, at) in regs.iter_mut().zip(io_at) {
            // SAFETY: elements `j..units` of the live slice `at` starts (see above).
            *v = T::partial_load(s, unsafe { core::slice::from_raw_parts(at.add(j), tail) });
        }
        for (v, at) in ins.iter_mut().zip(in_at) {
            // SAFETY: elements `j..units` of the live slice `at` starts (see above).
            *v = T::partial_load(s, unsafe { core::slice::from_raw_parts(at.add(j), tail) });
        }
        op.apply(s, &mut regs, ins);
        for (v, at) in regs.into_iter().zip(io_at) {
            // SAFETY: elements `j..units` of the exclusively borrowed slice `at` starts.
            T::partial_store(
                s,
                unsafe { core::slice::from_raw_parts_mut(at.add(j), tail) },
                v,
            );
        }
    }
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

/// One row of an LSTM step forward over a block of units (see [`lstm_forward`]).
#[inline(always)]
fn lstm_forward_row<T: Float, S: Simd>(
    s: S,
    [gi, gf, gg, go]: [&mut [T]; 4],
    [bi, bf, bg, bo]: [&[T]; 4],
    cp: &[T],
    c: &mut [T],
    h: &mut [T],
) {
    walk(
        s,
        [gi, gf, gg, go, c, h],
        [bi, bf, bg, bo, cp],
        LstmForwardOp,
    );
}

#[derive(Clone, Copy)]
struct LstmForwardOp;

impl<T: Float> RegisterOp<T, 6, 5> for LstmForwardOp {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        [i, f, g, o, c, h]: &mut [T::Lanes<S>; 6],
        [bi, bf, bg, bo, cp]: [T::Lanes<S>; 5],
    ) {
        *i = T::vsigmoid(s, T::vadd(s, *i, bi));
        *f = T::vsigmoid(s, T::vadd(s, *f, bf));
        *g = T::vtanh(s, T::vadd(s, *g, bg));
        *o = T::vsigmoid(s, T::vadd(s, *o, bo));
        // c = f c_prev + i g; h = o tanh(c)
        *c = T::vmul_add(s, *f, cp, T::vmul(s, *i, *g));
        *h = T::vmul(s, *o, T::vtanh(s, *c));
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
    walk(s, [gi, gf, gg, go, dc], [cp, c, dh], LstmBackwardOp);
}

#[derive(Clone, Copy)]
struct LstmBackwardOp;

impl<T: Float> RegisterOp<T, 5, 3> for LstmBackwardOp {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        [gi, gf, gg, go, dc]: &mut [T::Lanes<S>; 5],
        [cp, c, dhv]: [T::Lanes<S>; 3],
    ) {
        let one = T::splat(s, T::one());
        let (i, f, gv, o) = (*gi, *gf, *gg, *go);
        let tc = T::vtanh(s, c);
        // dc_t = dc_{t+1 → t} + dh o (1 - tanh² c)
        let dct = T::vmul_add(s, T::vmul(s, dhv, o), T::vneg_mul_add(s, tc, tc, one), *dc);
        *gi = T::vmul(s, T::vmul(s, dct, gv), sigmoid_grad::<T, S>(s, i));
        *gf = T::vmul(s, T::vmul(s, dct, cp), sigmoid_grad::<T, S>(s, f));
        *gg = T::vmul(s, T::vmul(s, dct, i), T::vneg_mul_add(s, gv, gv, one));
        *go = T::vmul(s, T::vmul(s, dhv, tc), sigmoid_grad::<T, S>(s, o));
        *dc = T::vmul(s, dct, f);
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
fn gru_pre<T: Float, S: Simd>(s: S, [x, b_i, h, b_h]: [T::Lanes<S>; 4]) -> T::Lanes<S> {
    T::vadd(s, T::vadd(s, x, b_i), T::vadd(s, h, b_h))
}

/// One row of a GRU step forward over a block of units (see [`gru_forward`]).
#[inline(always)]
fn gru_forward_row<T: Float, S: Simd>(
    s: S,
    [xr, xz, xn]: [&mut [T]; 3],
    [hr, hz, hn]: [&mut [T]; 3],
    [bir, biz, bin]: [&[T]; 3],
    [bhr, bhz, bhn]: [&[T]; 3],
    hp: &[T],
    h: &mut [T],
) {
    let inputs = [&*hr, &*hz, bir, biz, bin, bhr, bhz, bhn, hp];
    walk(s, [xr, xz, xn, hn, h], inputs, GruForwardOp);
}

#[derive(Clone, Copy)]
struct GruForwardOp;

impl<T: Float> RegisterOp<T, 5, 9> for GruForwardOp {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        [xr, xz, xn, hn, h]: &mut [T::Lanes<S>; 5],
        [hr, hz, bir, biz, bin, bhr, bhz, bhn, hp]: [T::Lanes<S>; 9],
    ) {
        let rv = T::vsigmoid(s, gru_pre::<T, S>(s, [*xr, bir, hr, bhr]));
        let zv = T::vsigmoid(s, gru_pre::<T, S>(s, [*xz, biz, hz, bhz]));
        // n = tanh(x_n + b_in + r (W_hn h + b_hn)); the bracket is kept for backward.
        *hn = T::vadd(s, *hn, bhn);
        let nv = T::vtanh(s, T::vmul_add(s, rv, *hn, T::vadd(s, *xn, bin)));
        // h = (1 - z) n + z h_prev = n + z (h_prev - n)
        *h = T::vmul_add(s, zv, T::vsub(s, hp, nv), nv);
        (*xr, *xz, *xn) = (rv, zv, nv);
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
    walk(
        s,
        [xr, xz, xn, hr, hz, hn, dhp],
        [hp, dh],
        GruBackwardOp(accum),
    );
}

#[derive(Clone, Copy)]
struct GruBackwardOp(Accum);

impl<T: Float> RegisterOp<T, 7, 2> for GruBackwardOp {
    #[inline(always)]
    fn apply<S: Simd>(
        self,
        s: S,
        [xr, xz, xn, hr, hz, hn, dhp]: &mut [T::Lanes<S>; 7],
        [hpv, dhv]: [T::Lanes<S>; 2],
    ) {
        let one = T::splat(s, T::one());
        let (rv, zv, nv) = (*xr, *xz, *xn);
        // Through n: dL/d(n's pre-activation) = dh (1 - z) (1 - n²).
        let dan = T::vmul(
            s,
            T::vmul(s, dhv, T::vsub(s, one, zv)),
            T::vneg_mul_add(s, nv, nv, one),
        );
        let dar = T::vmul(s, T::vmul(s, dan, *hn), T::vmul(s, rv, T::vsub(s, one, rv)));
        let daz = T::vmul(
            s,
            T::vmul(s, dhv, T::vsub(s, hpv, nv)),
            T::vmul(s, zv, T::vsub(s, one, zv)),
        );
        (*xr, *xz, *xn) = (dar, daz, dan);
        (*hr, *hz, *hn) = (dar, daz, T::vmul(s, dan, rv));
        // The direct path h_prev → h through z.
        let direct = T::vmul(s, dhv, zv);
        *dhp = match self.0 {
            Accum::Replace => direct,
            Accum::Add => T::vadd(s, *dhp, direct),
        };
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

/// A tile of a step: rows (sequences) `0..rows` by a block of hidden units, every view of it
/// `[rows, units]` with unit column stride (a gate's columns of a `[B, G·H]` buffer, or a
/// block of a `[B, H]` one). The engine's per-step workers run their blocks and pieces with
/// the `*_tile` kernels: the shapes are checked and the ISA dispatched once per tile, and
/// each row then costs only its registers ([`walk`]). The whole-step kernels keep their own
/// slice entry: building and checking a tile's views cost GRU tiny (one row per step)
/// 10-18 % of its training step when they were routed through it.
#[derive(Clone, Copy, Debug)]
struct Tile {
    rows: usize,
    units: usize,
}

impl Tile {
    /// The tile of `first`, checked against every other view's shape and stride.
    #[track_caller]
    fn of(first: (usize, usize), groups: &[&[Shape<'_>]]) -> Self {
        let (rows, units) = first;
        for &(what, r, u, col_stride) in groups.iter().copied().flatten() {
            assert!(
                (r, u) == (rows, units),
                "{what} is [{r}, {u}], want [{rows}, {units}] (the tile's rows and units)"
            );
            assert!(
                col_stride == 1 || r == 0 || u == 0,
                "{what} has column stride {col_stride}: a tile's rows must be contiguous"
            );
        }
        Self { rows, units }
    }

    /// Checks that each bias slice has the tile's units.
    #[track_caller]
    fn check_bias(self, bias: &[&[impl Sized]]) {
        for b in bias {
            assert_eq!(
                b.len(),
                self.units,
                "a bias has {} elements, want {} (the tile's units)",
                b.len(),
                self.units
            );
        }
    }
}

/// `(name, rows, cols, column stride)` of a view, for [`Tile::of`].
type Shape<'a> = (&'a str, usize, usize, isize);

fn shape_mut<'a, T>(what: &'a str, m: &MatMut<'_, T>) -> Shape<'a> {
    (what, m.nrows(), m.ncols(), m.col_stride())
}

fn shape_ref<'a, T>(what: &'a str, m: &MatRef<'_, T>) -> Shape<'a> {
    (what, m.nrows(), m.ncols(), m.col_stride())
}

/// The shapes of an LSTM tile's gate views.
fn lstm_gate_shapes<T>([i, f, g, o]: &[MatMut<'_, T>; 4]) -> [Shape<'static>; 4] {
    [
        shape_mut("gate i", i),
        shape_mut("gate f", f),
        shape_mut("gate g", g),
        shape_mut("gate o", o),
    ]
}

/// The shapes of a GRU tile's gate views, input side then hidden side.
fn gru_gate_shapes<T>(
    [xr, xz, xn]: &[MatMut<'_, T>; 3],
    [hr, hz, hn]: &[MatMut<'_, T>; 3],
) -> [Shape<'static>; 6] {
    [
        shape_mut("input-side gate r", xr),
        shape_mut("input-side gate z", xz),
        shape_mut("input-side gate n", xn),
        shape_mut("hidden-side gate r", hr),
        shape_mut("hidden-side gate z", hz),
        shape_mut("hidden-side gate n", hn),
    ]
}

/// Row `r` of a tile view checked by [`Tile::of`] (unit column stride), as a slice.
#[inline(always)]
fn row_mut<'a, T>(m: &'a mut MatMut<'_, T>, r: usize) -> &'a mut [T] {
    m.rb_mut()
        .row_mut(r)
        .try_as_row_major_mut()
        .map_or(&mut [], |row| row.as_slice_mut())
}

/// Row `r` of a tile view checked by [`Tile::of`] (unit column stride), as a slice.
#[inline(always)]
fn row_ref<'a, T>(m: MatRef<'a, T>, r: usize) -> &'a [T] {
    m.row(r)
        .try_as_row_major()
        .map_or(&[], |row| row.as_slice())
}

/// Row `r` of each of an LSTM tile's four gate views (written out: `array::map` would not be
/// inlined into the SIMD function, see [`walk`]).
#[inline(always)]
fn gate_rows4<'a, T>([i, f, g, o]: &'a mut [MatMut<'_, T>; 4], r: usize) -> [&'a mut [T]; 4] {
    [row_mut(i, r), row_mut(f, r), row_mut(g, r), row_mut(o, r)]
}

/// Row `r` of each of a GRU tile side's three gate views.
#[inline(always)]
fn gate_rows3<'a, T>([a, b, c]: &'a mut [MatMut<'_, T>; 3], r: usize) -> [&'a mut [T]; 3] {
    [row_mut(a, r), row_mut(b, r), row_mut(c, r)]
}

struct LstmForwardTile<'a, T> {
    gates: [MatMut<'a, T>; 4],
    bias: [&'a [T]; 4],
    c_prev: MatRef<'a, T>,
    c: MatMut<'a, T>,
    h: MatMut<'a, T>,
    tile: Tile,
}

impl<T: Float> WithSimd for LstmForwardTile<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self {
            mut gates,
            bias,
            c_prev,
            mut c,
            mut h,
            tile,
        } = self;
        for r in 0..tile.rows {
            let (c_row, h_row) = (row_mut(&mut c, r), row_mut(&mut h, r));
            lstm_forward_row(
                s,
                gate_rows4(&mut gates, r),
                bias,
                row_ref(c_prev, r),
                c_row,
                h_row,
            );
        }
    }
}

/// [`lstm_forward`] for a tile of a step: some rows by a block of hidden units. `gates[k]`
/// is gate `k`'s columns of the block (`[rows, units]`, unit column stride), `bias[k]` its
/// slice of the summed bias; `c_prev`, `c` and `h` are the block's `[rows, units]`.
///
/// # Panics
/// If the views' shapes differ, a view's rows are not contiguous, or a bias slice is not
/// `units` long.
///
/// ```
/// use faer::{MatMut, MatRef};
/// // Two rows, one unit: zero pre-activations give i = f = o = 1/2, g = 0: c = c_prev / 2.
/// let mut gates = [[0.0f64; 2]; 4];
/// let (mut c, mut h) = ([0.0; 2], [0.0; 2]);
/// let [i, f, g, o] = gates.each_mut().map(|v| MatMut::from_row_major_slice_mut(v, 2, 1));
/// kernels::gates::lstm_forward_tile(
///     [i, f, g, o],
///     [&[0.0]; 4],
///     MatRef::from_row_major_slice(&[2.0, 4.0], 2, 1),
///     MatMut::from_row_major_slice_mut(&mut c, 2, 1),
///     MatMut::from_row_major_slice_mut(&mut h, 2, 1),
/// );
/// assert_eq!(c, [1.0, 2.0]);
/// assert_eq!(gates[0], [0.5, 0.5]);
/// ```
#[track_caller]
pub fn lstm_forward_tile<T: Float>(
    gates: [MatMut<'_, T>; 4],
    bias: [&[T]; 4],
    c_prev: MatRef<'_, T>,
    c: MatMut<'_, T>,
    h: MatMut<'_, T>,
) {
    let tile = Tile::of(
        (c_prev.nrows(), c_prev.ncols()),
        &[
            &lstm_gate_shapes(&gates),
            &[
                shape_ref("c_prev", &c_prev),
                shape_mut("c", &c),
                shape_mut("h", &h),
            ],
        ],
    );
    tile.check_bias(&bias);
    crate::arch::dispatch(LstmForwardTile {
        gates,
        bias,
        c_prev,
        c,
        h,
        tile,
    });
}

struct LstmBackwardTile<'a, T> {
    gates: [MatMut<'a, T>; 4],
    c_prev: MatRef<'a, T>,
    c: MatRef<'a, T>,
    dh: MatRef<'a, T>,
    dc: MatMut<'a, T>,
    tile: Tile,
}

impl<T: Float> WithSimd for LstmBackwardTile<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self {
            mut gates,
            c_prev,
            c,
            dh,
            mut dc,
            tile,
        } = self;
        for r in 0..tile.rows {
            let (cp, c, dh) = (row_ref(c_prev, r), row_ref(c, r), row_ref(dh, r));
            lstm_backward_row(s, gate_rows4(&mut gates, r), cp, c, dh, row_mut(&mut dc, r));
        }
    }
}

/// [`lstm_backward`] for a tile of a step (the views of [`lstm_forward_tile`]; `dh` and
/// `dc` are the block's `[rows, units]` of `dL/dh_t` and of `dL/dc`).
///
/// # Panics
/// If the views' shapes differ or a view's rows are not contiguous.
#[track_caller]
pub fn lstm_backward_tile<T: Float>(
    gates: [MatMut<'_, T>; 4],
    c_prev: MatRef<'_, T>,
    c: MatRef<'_, T>,
    dh: MatRef<'_, T>,
    dc: MatMut<'_, T>,
) {
    let tile = Tile::of(
        (c_prev.nrows(), c_prev.ncols()),
        &[
            &lstm_gate_shapes(&gates),
            &[
                shape_ref("c_prev", &c_prev),
                shape_ref("c", &c),
                shape_ref("dh", &dh),
                shape_mut("dc", &dc),
            ],
        ],
    );
    crate::arch::dispatch(LstmBackwardTile {
        gates,
        c_prev,
        c,
        dh,
        dc,
        tile,
    });
}

struct GruForwardTile<'a, T> {
    gx: [MatMut<'a, T>; 3],
    gh: [MatMut<'a, T>; 3],
    b_ih: [&'a [T]; 3],
    b_hh: [&'a [T]; 3],
    h_prev: MatRef<'a, T>,
    h: MatMut<'a, T>,
    tile: Tile,
}

impl<T: Float> WithSimd for GruForwardTile<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self {
            mut gx,
            mut gh,
            b_ih,
            b_hh,
            h_prev,
            mut h,
            tile,
        } = self;
        for r in 0..tile.rows {
            let (x, y) = (gate_rows3(&mut gx, r), gate_rows3(&mut gh, r));
            gru_forward_row(s, x, y, b_ih, b_hh, row_ref(h_prev, r), row_mut(&mut h, r));
        }
    }
}

/// [`gru_forward`] for a tile of a step: some rows by a block of hidden units. `gx[k]` and
/// `gh[k]` are gate `k`'s columns of the block on the input and hidden sides (`[rows,
/// units]`, unit column stride), `b_ih[k]` and `b_hh[k]` its bias slices; `h_prev` and `h`
/// are the block's `[rows, units]`.
///
/// # Panics
/// If the views' shapes differ, a view's rows are not contiguous, or a bias slice is not
/// `units` long.
#[track_caller]
pub fn gru_forward_tile<T: Float>(
    gx: [MatMut<'_, T>; 3],
    gh: [MatMut<'_, T>; 3],
    b_ih: [&[T]; 3],
    b_hh: [&[T]; 3],
    h_prev: MatRef<'_, T>,
    h: MatMut<'_, T>,
) {
    let tile = Tile::of(
        (h_prev.nrows(), h_prev.ncols()),
        &[
            &gru_gate_shapes(&gx, &gh),
            &[shape_ref("h_prev", &h_prev), shape_mut("h", &h)],
        ],
    );
    tile.check_bias(&b_ih);
    tile.check_bias(&b_hh);
    crate::arch::dispatch(GruForwardTile {
        gx,
        gh,
        b_ih,
        b_hh,
        h_prev,
        h,
        tile,
    });
}

struct GruBackwardTile<'a, T> {
    gx: [MatMut<'a, T>; 3],
    gh: [MatMut<'a, T>; 3],
    h_prev: MatRef<'a, T>,
    dh: MatRef<'a, T>,
    dh_prev: MatMut<'a, T>,
    accum: Accum,
    tile: Tile,
}

impl<T: Float> WithSimd for GruBackwardTile<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Self {
            mut gx,
            mut gh,
            h_prev,
            dh,
            mut dh_prev,
            accum,
            tile,
        } = self;
        for r in 0..tile.rows {
            let (x, y) = (gate_rows3(&mut gx, r), gate_rows3(&mut gh, r));
            let (hp, dhr) = (row_ref(h_prev, r), row_ref(dh, r));
            gru_backward_row(s, x, y, hp, dhr, row_mut(&mut dh_prev, r), accum);
        }
    }
}

/// [`gru_backward`] for a tile of a step (the views of [`gru_forward_tile`]; `dh` and
/// `dh_prev` are the block's `[rows, units]` of `dL/dh_t` and `dL/dh_{t-1}`).
///
/// # Panics
/// If the views' shapes differ or a view's rows are not contiguous.
#[track_caller]
pub fn gru_backward_tile<T: Float>(
    gx: [MatMut<'_, T>; 3],
    gh: [MatMut<'_, T>; 3],
    h_prev: MatRef<'_, T>,
    dh: MatRef<'_, T>,
    dh_prev: MatMut<'_, T>,
    accum: Accum,
) {
    let tile = Tile::of(
        (h_prev.nrows(), h_prev.ncols()),
        &[
            &gru_gate_shapes(&gx, &gh),
            &[
                shape_ref("h_prev", &h_prev),
                shape_ref("dh", &dh),
                shape_mut("dh_prev", &dh_prev),
            ],
        ],
    );
    crate::arch::dispatch(GruBackwardTile {
        gx,
        gh,
        h_prev,
        dh,
        dh_prev,
        accum,
        tile,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `walk` (the one `unsafe` reader and writer of the gate kernels) visits every element
    /// of every slice exactly once, whole registers and tail, at lengths around the register
    /// widths: small enough for Miri (`scripts/miri.sh`) to check each access.
    #[test]
    fn walk_touches_every_element_once() {
        #[derive(Clone, Copy)]
        struct AddInputs;
        impl RegisterOp<f32, 2, 1> for AddInputs {
            #[inline(always)]
            fn apply<S: Simd>(self, s: S, [a, b]: &mut [Lanes<S>; 2], [x]: [Lanes<S>; 1]) {
                *a = f32::vadd(s, *a, x);
                *b = f32::vsub(s, *b, x);
            }
        }
        type Lanes<S> = <f32 as Float>::Lanes<S>;

        struct Walk<'a>(&'a mut [f32], &'a mut [f32], &'a [f32]);
        impl WithSimd for Walk<'_> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) {
                walk(s, [self.0, self.1], [self.2], AddInputs);
            }
        }
        for (isa, units) in crate::arch::Isa::available()
            .into_iter()
            .flat_map(|isa| [0, 1, 3, 7, 8, 9, 15, 16, 17, 33].map(|u| (isa, u)))
        {
            let x: Vec<f32> = (0..units).map(|k| k as f32 + 1.0).collect();
            let (mut a, mut b) = (vec![10.0; units], vec![10.0; units]);
            crate::arch::with_isa(isa, || crate::arch::dispatch(Walk(&mut a, &mut b, &x)));
            let want_a: Vec<f32> = x.iter().map(|v| 10.0 + v).collect();
            let want_b: Vec<f32> = x.iter().map(|v| 10.0 - v).collect();
            assert_eq!((a, b), (want_a, want_b), "{isa:?}, {units} units");
        }
    }
}
