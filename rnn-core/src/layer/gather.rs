//! The all-step products of a chunk over its live rows only.
//!
//! The step loops compute each step's live rows ([`Batch::live_rows`]) and no others; the
//! products over all of a chunk's steps at once (a layer's input projection, weight
//! gradients and `dL/dx`; the head's outputs, `dW_hy` and `dL/dh` at every step) would still
//! compute every row, the finished sequences' padding included: a GEMM's rows must be evenly
//! spaced, and step `t`'s live rows are the first `live_rows(t)` of its `B`. When at least
//! [`GATHER_MIN_PADDING`] of a chunk's rows are padding, these products instead copy the
//! live rows, [`GATHER_ROWS`] at a time, into a buffer of their own (`LayerBuffers::gather`,
//! `Workspace::head_gather`), multiply there, and copy results back. The copies cost one
//! pass over the rows; the padding's flops are saved. Every thread count gathers the same
//! blocks, so the results stay the same bits at any.
//!
//! [`Batch::live_rows`]: crate::batch::Batch::live_rows

use std::ops::Range;

use faer::Accum;
use kernels::Float;
use kernels::gemm::{GemmShape, gemm_tn};

use super::{PassThreads, Product};
use crate::batch::Batch;

/// Rows a gathered product takes at a time: the `K` of a weight gradient's GEMM (past
/// faer's depth blocking, so a gradient's blocks add up at the same rate as one whole
/// product), the `M` of a row product.
pub(crate) const GATHER_ROWS: usize = 256;

/// The share of a chunk's rows that must be padding for its products to gather: below it
/// the copies cost about what they save.
pub(crate) const GATHER_MIN_PADDING: f64 = 0.125;

/// Room gathered products need: [`GATHER_ROWS`] rows (fewer for a smaller pass) of the
/// widest pair of operands: for a layer the gates (`G·H`) and the widest of its input,
/// state and cell widths; for the head its outputs (`O`) and the states it reads.
pub(crate) fn gather_len(rows: usize, gate_width: usize, widest: usize) -> usize {
    rows.min(GATHER_ROWS) * (gate_width + widest)
}

/// What a gathered row product does with the rows it leaves out (the padding): where the
/// product runs whole, they are computed like the others.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Padding {
    /// Left as they are: nothing reads them, or they are overwritten after.
    Keep,
    /// Zeroed, as a whole product of zero padding rows would leave them.
    Zero,
}

/// A piece of a block of gathered rows: `len` rows of the chunk from `row` on.
#[derive(Clone, Copy, Default)]
struct Piece {
    row: usize,
    len: usize,
}

/// Copies the rows `pieces` of `src` (`[rows, width]`) one after the other into `dst`.
fn gather_rows<T: Copy>(dst: &mut [T], src: &[T], width: usize, pieces: &[Piece]) {
    let mut at = 0;
    for p in pieces {
        let n = p.len * width;
        dst[at..at + n].copy_from_slice(&src[p.row * width..][..n]);
        at += n;
    }
}

/// The inverse of [`gather_rows`]: the rows of `src`, in order, back to the rows `pieces`
/// of `dst`.
fn scatter_rows<T: Copy>(dst: &mut [T], src: &[T], width: usize, pieces: &[Piece]) {
    let mut at = 0;
    for p in pieces {
        let n = p.len * width;
        dst[p.row * width..][..n].copy_from_slice(&src[at..at + n]);
        at += n;
    }
}

/// The rows of a chunk of a pass's steps that its all-step products run over (`[steps, B]`,
/// time-major), on the pass's threads: all of them, or, when enough are padding, the live
/// ones gathered.
pub(crate) struct ChunkRows<'c, T> {
    batch: &'c Batch<'c, T>,
    steps: Range<usize>,
    threads: PassThreads<'c>,
    /// Whether the products gather the live rows.
    gathered: bool,
}

impl<'c, T: Float> ChunkRows<'c, T> {
    /// The chunk `steps` of `batch`. Its products gather the live rows when the batch has
    /// lengths, there is room (`scratch`, which the products are then given), and
    /// [`GATHER_MIN_PADDING`] of the rows are padding.
    pub(crate) fn new(
        batch: &'c Batch<'c, T>,
        steps: Range<usize>,
        threads: PassThreads<'c>,
        scratch: &[T],
    ) -> Self {
        let gathered = batch.lengths.is_some() && !scratch.is_empty() && {
            let live: usize = steps.clone().map(|t| batch.live_rows(t)).sum();
            let rows = steps.len() * batch.batch;
            (rows - live) as f64 >= GATHER_MIN_PADDING * rows as f64
        };
        Self {
            batch,
            steps,
            threads,
            gathered,
        }
    }

    /// Calls `block(pieces, rows)` for the chunk's live rows (chunk rows `(t - start)·B + r`
    /// for `r < live_rows(t)`) in blocks of at most [`GATHER_ROWS`] rows, each block's
    /// `pieces` in order.
    fn live_blocks(&self, mut block: impl FnMut(&[Piece], usize)) {
        let (start, b) = (self.steps.start, self.batch.batch);
        let mut pieces = [Piece::default(); GATHER_ROWS];
        let (mut count, mut rows) = (0, 0);
        for t in self.steps.clone() {
            let (mut row, end) = ((t - start) * b, (t - start) * b + self.batch.live_rows(t));
            while row < end {
                let len = (end - row).min(GATHER_ROWS - rows);
                pieces[count] = Piece { row, len };
                (count, rows, row) = (count + 1, rows + len, row + len);
                if rows == GATHER_ROWS {
                    block(&pieces[..count], rows);
                    (count, rows) = (0, 0);
                }
            }
        }
        if rows > 0 {
            block(&pieces[..count], rows);
        }
    }

    /// One product on the pass's threads ([`PassThreads::product`]).
    fn run(
        &self,
        product: Product<'c, T>,
        dst: &mut [T],
        accum: Accum,
        a: &[T],
        b: &[T],
        s: GemmShape,
    ) {
        product(dst, accum, a, b, s, self.threads.product(s));
    }

    /// `dst (+)= aᵀ b` over the chunk's rows (`a` `[rows, m]`, `b` `[rows, n]`), or its
    /// live rows only, gathered into `scratch`: a weight gradient.
    pub(crate) fn tn(
        &self,
        dst: &mut [T],
        accum: Accum,
        (a, m): (&[T], usize),
        (b, n): (&[T], usize),
        scratch: &mut [T],
    ) {
        if !self.gathered {
            let shape = GemmShape::new(m, n, a.len() / m);
            return self.run(gemm_tn, dst, accum, a, b, shape);
        }
        let (ga, gb) = scratch.split_at_mut(GATHER_ROWS.min(a.len() / m) * m);
        let mut first = Some(accum);
        self.live_blocks(|pieces, rows| {
            gather_rows(ga, a, m, pieces);
            gather_rows(gb, b, n, pieces);
            let (ga, gb) = (&ga[..rows * m], &gb[..rows * n]);
            let accum = first.take().unwrap_or(Accum::Add);
            self.run(gemm_tn, dst, accum, ga, gb, GemmShape::new(m, n, rows));
        });
        // No live row at all: the gradient is zero.
        if first == Some(Accum::Replace) {
            dst.fill(T::zero());
        }
    }

    /// `dst (+)= a · w` through `product` (`a` `[rows, k]`, `dst` `[rows, n]`, `w` as
    /// `product` reads it) over the chunk's rows, or its live rows only, gathered into
    /// `scratch`, the others as `padding` says: an input projection, `dL/dx`, the head's
    /// outputs or `dL/dh`.
    pub(crate) fn product(
        &self,
        product: Product<'c, T>,
        (dst, n): (&mut [T], usize),
        accum: Accum,
        (a, k): (&[T], usize),
        w: &[T],
        scratch: &mut [T],
        padding: Padding,
    ) {
        if !self.gathered {
            let shape = GemmShape::new(a.len() / k, n, k);
            return self.run(product, dst, accum, a, w, shape);
        }
        if padding == Padding::Zero {
            dst.fill(T::zero());
        }
        let (ga, gd) = scratch.split_at_mut(GATHER_ROWS.min(a.len() / k) * k);
        self.live_blocks(|pieces, rows| {
            gather_rows(ga, a, k, pieces);
            let out = &mut gd[..rows * n];
            if accum == Accum::Add {
                gather_rows(out, dst, n, pieces);
            }
            let s = GemmShape::new(rows, n, k);
            self.run(product, out, accum, &ga[..rows * k], w, s);
            scatter_rows(dst, out, n, pieces);
        });
    }
}
