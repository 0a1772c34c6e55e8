//! The all-step products of a chunk over its live rows only.
//!
//! The step loops compute each step's live rows ([`Batch::live_rows`]) and no others; the
//! products over all of a chunk's steps at once (the input projection, the weight
//! gradients, `dL/dx`) would still compute every row, the finished sequences' padding
//! included: a GEMM's rows must be evenly spaced, and step `t`'s live rows are the first
//! `live_rows(t)` of its `B`. When at least [`GATHER_MIN_PADDING`] of a chunk's rows are
//! padding, these products instead copy the live rows, [`GATHER_ROWS`] at a time, into a
//! buffer of their own (`LayerBuffers::gather`), multiply there, and copy results back. The
//! copies cost one pass over the rows; the padding's flops are saved. Every thread count
//! gathers the same blocks, so the results stay the same bits at any.
//!
//! [`Batch::live_rows`]: crate::batch::Batch::live_rows

use faer::Accum;
use kernels::Float;
use kernels::gemm::{GemmShape, gemm_tn};

use super::{LayerPass, Product};

/// Rows a gathered product takes at a time: the `K` of a weight gradient's GEMM (past
/// faer's depth blocking, so a gradient's blocks add up at the same rate as one whole
/// product), the `M` of a row product.
pub(crate) const GATHER_ROWS: usize = 256;

/// The share of a chunk's rows that must be padding for its products to gather: below it
/// the copies cost about what they save.
pub(crate) const GATHER_MIN_PADDING: f64 = 0.125;

/// Room a layer's gathered products need: [`GATHER_ROWS`] rows (fewer for a smaller
/// pass) of the widest pair of operands, the gates (`G·H`) and the widest of the layer's
/// input, state and cell widths.
pub(crate) fn gather_len(rows: usize, gate_width: usize, widest: usize) -> usize {
    rows.min(GATHER_ROWS) * (gate_width + widest)
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

impl<'a, T: Float> LayerPass<'a, T> {
    /// Whether this chunk's all-step products gather its live rows: the batch has lengths,
    /// the layer has room (`scratch`), and [`GATHER_MIN_PADDING`] of the rows are padding.
    pub(super) fn gathers(&self, scratch: &[T]) -> bool {
        if self.batch.lengths.is_none() || scratch.is_empty() {
            return false;
        }
        let live: usize = self.steps.clone().map(|t| self.batch.live_rows(t)).sum();
        let rows = self.steps.len() * self.batch.batch;
        (rows - live) as f64 >= GATHER_MIN_PADDING * rows as f64
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

    /// `dst (+)= aᵀ b` over the chunk's rows (`a` `[rows, m]`, `b` `[rows, n]`): one
    /// product, or, when `gathered` ([`LayerPass::gathers`]), the live rows' only, gathered
    /// into `scratch`. A weight gradient.
    pub(super) fn rows_tn(
        &self,
        gathered: bool,
        dst: &mut [T],
        accum: Accum,
        (a, m): (&[T], usize),
        (b, n): (&[T], usize),
        scratch: &mut [T],
    ) {
        if !gathered {
            let shape = GemmShape::new(m, n, a.len() / m);
            return self.chunk_product(gemm_tn, dst, accum, a, b, shape);
        }
        let (ga, gb) = scratch.split_at_mut(GATHER_ROWS.min(a.len() / m) * m);
        let mut first = Some(accum);
        self.live_blocks(|pieces, rows| {
            gather_rows(ga, a, m, pieces);
            gather_rows(gb, b, n, pieces);
            let (ga, gb) = (&ga[..rows * m], &gb[..rows * n]);
            let accum = first.take().unwrap_or(Accum::Add);
            self.chunk_product(gemm_tn, dst, accum, ga, gb, GemmShape::new(m, n, rows));
        });
        // No live row at all: the gradient is zero.
        if first == Some(Accum::Replace) {
            dst.fill(T::zero());
        }
    }

    /// `dst = a · w` through `product` (`a` `[rows, k]`, `dst` `[rows, n]`, `w` as `product`
    /// reads it) over the chunk's rows: one product, or, when `gathered`, on the live rows
    /// only, the others of `dst` zeroed when `zero_rest`, else left as they are. The input
    /// projection, or `dL/dx`.
    pub(super) fn rows_product(
        &self,
        gathered: bool,
        product: Product<'a, T>,
        (dst, n): (&mut [T], usize),
        (a, k): (&[T], usize),
        w: &[T],
        scratch: &mut [T],
        zero_rest: bool,
    ) {
        if !gathered {
            let shape = GemmShape::new(a.len() / k, n, k);
            return self.chunk_product(product, dst, Accum::Replace, a, w, shape);
        }
        if zero_rest {
            dst.fill(T::zero());
        }
        let (ga, gd) = scratch.split_at_mut(GATHER_ROWS.min(a.len() / k) * k);
        self.live_blocks(|pieces, rows| {
            gather_rows(ga, a, k, pieces);
            let out = &mut gd[..rows * n];
            let s = GemmShape::new(rows, n, k);
            self.chunk_product(product, out, Accum::Replace, &ga[..rows * k], w, s);
            scatter_rows(dst, out, n, pieces);
        });
    }
}
