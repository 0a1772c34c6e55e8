//! Each step's work split by hidden units between two per-step workers.
//!
//! The recurrent product of a step is too small for a generic parallel GEMM (faer gains
//! 1.16x at 64x256x256 on two threads), so a step is split by *output columns*: worker `w`
//! owns hidden units `units[w]`, computes the gate columns of those units (all gates of a unit
//! together), applies the elementwise pass to them, and writes its units of `h_t` and `c_t`.
//! Backward, it owns the same units of `dL/dh_{t-1}`. The inner (summed) dimension is never
//! split, and the blocks depend only on the shape ([`UnitSplit`]), so results are bitwise the
//! same whether the two blocks run on one thread or two.
//!
//! Each block is a set of column views (faer `MatMut`) into the step's `[B, G·H]` and
//! `[B, H]` buffers; the gate kernels take a block, or a piece of one, in one call
//! (`kernels::gates::*_tile`).
//!
//! A pass whose steps are split runs inside one `kernels::pair::with_pair` session (the
//! pass's [`Pair`], see `PassThreads`): block 0 on the calling thread, block 1 on a helper
//! that stays with the pass from its first step to its last and meets the caller once per
//! step through an atomic ([`Pair::join`]), so block 1's half of `W_hh` stays in the
//! helper's core's cache. Against a `rayon::join` per step this measured 5-20 % faster at
//! two threads (char, large; `kernels::pair`).
//!
//! At two threads the LSTM's and GRU's forward steps go one further ([`Sharing::Pieces`]):
//! each block is cut into pieces (rows by unit groups, [`Grid`]) that the two threads pull
//! with [`Pair::pull_each`], each starting on its own block and taking the other's last
//! pieces when it runs out, so a core slowed by other work on a shared machine does less of
//! each step instead of holding the other back at every meeting. The products of a piece
//! cover whole panels, so the bits are those of whole blocks. Backward steps stay whole
//! blocks: pulled the same way, the LSTM's were 1-2 ms per char training step slower in
//! quiet phases (a piece's product re-reads its `K = 4H` panels for each row tile).
//!
//! Each block's two products read its own copy of `W_hh`, packed once per pass into
//! `kernels::panels` by the thread that runs the block ([`pack_forward`],
//! [`pack_backward`]). faer would repack the weight at every step; skipping that made
//! whole training steps 4-10 % faster on one thread (char and large, every cell).

use std::ops::Range;

use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, MatRef};
use kernels::Float;
use kernels::pair::Pair;

use super::LayerPass;
use crate::batch::Batch;
use crate::workspace::UnitBlock;

/// How each step's hidden units are divided between per-step workers.
///
/// Results depend on the split (each block's products are separate GEMMs) but never on the
/// thread count: with one thread the blocks run one after the other. `Auto` splits when a
/// step's recurrent product is large enough for two workers to pay off.
///
/// ```
/// use rnn_core::network::UnitSplit;
/// assert_eq!(UnitSplit::Auto.blocks(1, 1024, 4), 1); // batch 1: one block
/// assert_eq!(UnitSplit::Auto.blocks(16, 128, 1), 1); // too small to pay off
/// assert_eq!(UnitSplit::Auto.blocks(32, 512, 1), 2);
/// assert_eq!(UnitSplit::Halves.blocks(1, 8, 1), 2);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnitSplit {
    /// Two blocks when a step's recurrent product has at least [`UnitSplit::MIN_FLOPS`]
    /// flops, the batch at least [`UnitSplit::MIN_BATCH`] rows and `H >= 2`; otherwise one.
    /// A pass of one step (each [`crate::predict::Predictor::step`]) always runs whole.
    #[default]
    Auto,
    /// One block: every step runs on one thread.
    Whole,
    /// Two blocks (when `H >= 2`): units `0..H/2` and `H/2..H`.
    Halves,
}

impl UnitSplit {
    /// The smallest recurrent product (`2·B·G·H·H` flops) that `Auto` splits: below it a
    /// step lasts a few microseconds and the per-step join (about one) eats the gain. Measured
    /// at `B = 16, H = 128`: the LSTM's 2.1 MFLOP steps ran 1.3x faster split over two
    /// threads, the RNN's 0.5 MFLOP steps stay whole.
    pub const MIN_FLOPS: usize = 2_000_000;

    /// The smallest batch `Auto` splits: a block's product with fewer rows goes through
    /// faer's general path, which is far slower than the whole step's batch-1 GEMV kernel.
    pub const MIN_BATCH: usize = 4;

    /// The split a pass of `seq_len` steps runs with: `Auto` runs a one-step pass whole.
    /// Split steps read each block's `W_hh` packed into panels, packed once per pass, and one
    /// step does not repay the packing. `Predictor::step` on one thread (f32, batch 32, or 64
    /// for H = 1024), split and whole: LSTM H = 256 344 and 268 µs, GRU 2 x 512 3.26 and
    /// 2.15 ms, LSTM H = 1024 13.7 and 9.5 ms (whole, a one-step pass reads `W_hh` as it is).
    pub(crate) fn for_steps(self, seq_len: usize) -> Self {
        match self {
            Self::Auto if seq_len == 1 => Self::Whole,
            split => split,
        }
    }

    /// The number of unit blocks for a step of `batch` rows, `hidden` units and `gates`
    /// gates.
    pub fn blocks(self, batch: usize, hidden: usize, gates: usize) -> usize {
        let splittable = hidden >= 2;
        match self {
            Self::Whole => 1,
            Self::Halves if splittable => 2,
            Self::Auto
                if splittable
                    && batch >= Self::MIN_BATCH
                    && 2.0 * (batch * gates) as f64 * (hidden as f64).powi(2)
                        >= Self::MIN_FLOPS as f64 =>
            {
                2
            }
            _ => 1,
        }
    }
}

/// What both blocks of one step share: the layer's pass and the step.
#[derive(Clone, Copy)]
pub(super) struct Step<'a, T> {
    pub p: &'a LayerPass<'a, T>,
    pub t: usize,
}

/// The two blocks' units: `0..H/2` and `H/2..H`.
pub(crate) fn halves(hidden: usize) -> [Range<usize>; 2] {
    let cut = hidden / 2;
    [0..cut, cut..hidden]
}

/// [`Pair::join`] for blocks that each report a share of a sum (`‖dL/dh_t‖²`): returns the
/// sum, block 0's share first.
pub(super) fn join_summed<T: Float, A, B>(pair: &Pair, a: A, b: B) -> T
where
    A: FnOnce(&mut T),
    B: FnOnce(&mut T) + Send,
{
    let (mut sa, mut sb) = (T::zero(), T::zero());
    pair.join(|| a(&mut sa), || b(&mut sb));
    sa + sb
}

/// The last product of a backward pass, `dL/dh0 += dZ_0 W_hh`, split by units like every
/// step's: `dh0` `[B, H]`, `dz0` `[B, G·H]`.
pub(super) fn initial_state_product<T: Float>(
    pair: &Pair,
    dh0: &mut [T],
    dz0: MatRef<'_, T>,
    blocks: &[UnitBlock<T>],
) {
    let [b0, b1] = two(blocks);
    let h = b1.units.end;
    let [d0, d1] = split_units(view(dh0, dz0.nrows(), h), h);
    pair.join(
        || backward_product(d0, dz0, b0),
        || backward_product(d1, dz0, b1),
    );
}

/// The two unit blocks of a split step.
pub(super) fn two<T>(blocks: &[UnitBlock<T>]) -> [&UnitBlock<T>; 2] {
    let [b0, b1] = blocks else {
        unreachable!("a split step has two unit blocks")
    };
    [b0, b1]
}

/// The most pieces a pulled step is cut into; the pieces live on the stack.
pub(super) const MAX_PIECES: usize = 128;

/// How a split step is cut into pieces that the pair's two threads pull as they go
/// ([`Pair::pull_each`]), so that a core slowed by other work does less of the step instead
/// of holding the other one back at every meeting: each unit block into tiles of `rows`
/// batch rows by `units` hidden units (all gates of those units).
///
/// A piece's product covers whole panels (`kernels::panels`), so every element is summed
/// exactly as in the block's whole product: the pieces give the same bits as whole blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grid {
    /// Batch rows per piece (the last piece of a group may have fewer).
    pub rows: usize,
    /// Hidden units per piece: whole panels (the last group of a block may be narrower).
    pub units: usize,
}

impl Grid {
    /// Two panels of units (96 for f32): one panel per piece re-reads each gate's weights
    /// from a cold start too often (the LSTM char forward steps at one thread, pieces run in
    /// order: 92.8 ms per training step, against 85-89 for two or more panels and 86-88 for
    /// whole blocks). Rows
    /// in tiles of 8 (the product's tile height), more when the pieces would not fit in
    /// [`MAX_PIECES`]. `widest_block` is the units of the wider of the two blocks (for an odd
    /// `H` the second has one more, which can add a unit group to every tile row).
    pub fn new<T: Float>(batch: usize, widest_block: usize) -> Self {
        let width = kernels::panels::Panels::<T>::width();
        // Wider groups only when two blocks of two-panel groups would not fit.
        let panels = widest_block.div_ceil(width).div_ceil(MAX_PIECES / 2).max(2);
        let units = panels * width;
        let per_tile_row = 2 * widest_block.div_ceil(units).max(1);
        let max_tiles = (MAX_PIECES / per_tile_row).max(1);
        let rows = 8 * batch.div_ceil(8).div_ceil(max_tiles).max(1);
        Self { rows, units }
    }

    /// The pieces of a block of `block_units` units over `batch` rows, in the order of
    /// [`Grid::tiles`]: `(rows, units relative to the block)`.
    pub fn cells(
        self,
        batch: usize,
        block_units: usize,
    ) -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
        (0..block_units).step_by(self.units).flat_map(move |u| {
            (0..batch).step_by(self.rows).map(move |r| {
                (
                    r..(r + self.rows).min(batch),
                    u..(u + self.units).min(block_units),
                )
            })
        })
    }

    /// A block's pieces, in the order of [`Grid::cells`].
    fn pieces<'a, T, const G: usize, const S: usize>(
        self,
        batch: usize,
        (block, gates, states): BlockViews<'a, T, G, S>,
    ) -> impl Iterator<Item = Piece<'a, T, G, S>> {
        let mut gates = gates.map(|m| self.tiles(m));
        let mut states = states.map(|m| self.tiles(m));
        let cells = self.cells(batch, block.units.len());
        cells.map(move |(rows, cols)| Piece {
            gates: core::array::from_fn(|k| gates[k].next().expect("a tile per cell")),
            states: core::array::from_fn(|k| states[k].next().expect("a tile per cell")),
            rows,
            cols,
            block,
        })
    }

    /// `m` cut into the grid's tiles, unit group after unit group, rows within a group.
    pub fn tiles<T>(self, m: MatMut<'_, T>) -> impl Iterator<Item = MatMut<'_, T>> {
        let (mut rest, mut group) = (Some(m), None::<MatMut<'_, T>>);
        std::iter::from_fn(move || {
            loop {
                if let Some(g) = group.take().filter(|g| g.nrows() > 0) {
                    let height = self.rows.min(g.nrows());
                    let (tile, below) = g.split_at_row_mut(height);
                    group = Some(below);
                    return Some(tile);
                }
                let r = rest.take().filter(|r| r.ncols() > 0)?;
                let width = self.units.min(r.ncols());
                let (g, tail) = r.split_at_col_mut(width);
                (group, rest) = (Some(g), Some(tail));
            }
        })
    }
}

/// A piece of a split forward step: rows `rows` of the units `cols` of `block`, with its
/// tiles of the step's gate matrices (`G`, per gate `[rows, cols]`) and of its state
/// matrices (`S`, `[rows, cols]` each).
pub(super) struct Piece<'a, T, const G: usize, const S: usize> {
    pub gates: [MatMut<'a, T>; G],
    pub states: [MatMut<'a, T>; S],
    /// Batch rows.
    pub rows: Range<usize>,
    /// Units, relative to the block's first.
    pub cols: Range<usize>,
    pub block: &'a UnitBlock<T>,
}

impl<T: Float, const G: usize, const S: usize> Piece<'_, T, G, S> {
    /// The piece's hidden units.
    pub fn units(&self) -> Range<usize> {
        let first = self.block.units.start;
        first + self.cols.start..first + self.cols.end
    }

    /// Carries the piece's rows of the sequences in `finished` (batch rows: those ended by
    /// this step) through unchanged: `states[k]` gets the piece's units of `prev[k]`
    /// (`[B, hidden]`) on those rows.
    pub fn carry_finished(
        &mut self,
        finished: impl Iterator<Item = usize>,
        hidden: usize,
        prev: [&[T]; S],
    ) {
        let units = self.units();
        for r in finished.filter(|r| self.rows.contains(r)) {
            let own = r * hidden + units.start..r * hidden + units.end;
            for (state, prev) in self.states.iter_mut().zip(prev) {
                row_mut(state, r - self.rows.start).copy_from_slice(&prev[own.clone()]);
            }
        }
    }

    /// The recurrent product of the piece into its gate tiles from `first_gate` on (one per
    /// gate of the block's packed weights): `gates[first_gate + k] (+)= h_prev[rows] ·
    /// W_hhᵀ[:, k·H + units]`, `h_prev` `[B, H]`.
    pub fn forward_product(&mut self, first_gate: usize, accum: Accum, h_prev: MatRef<'_, T>) {
        let h_prev = h_prev.subrows(self.rows.start, self.rows.len());
        let gates = &mut self.gates[first_gate..];
        for (zk, panels) in gates.iter_mut().zip(&self.block.forward) {
            panels.product_cols(zk.rb_mut(), accum, h_prev, self.cols.clone());
        }
    }
}

/// What a split forward step gives each block: the block, its gate columns (per gate
/// `[B, |units|]`) and its units of the states it writes (`[B, |units|]` each).
pub(super) type BlockViews<'a, T, const G: usize, const S: usize> =
    (&'a UnitBlock<T>, [MatMut<'a, T>; G], [MatMut<'a, T>; S]);

/// How two threads share a split forward step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sharing {
    /// Each thread runs one whole block.
    Blocks,
    /// The blocks are cut into the [`Grid`]'s pieces that the threads pull
    /// ([`Pair::pull_each`]), each starting on its own block: a core slowed by other work on
    /// a shared machine then does less of the step instead of holding the other back.
    Pieces(Grid),
}

impl Sharing {
    /// The smallest recurrent product (`2·B·G·H·H` flops per step) whose step is pulled in
    /// pieces. Below it the pieces' claims and the restarts of their weight streams cost more
    /// than a slowed core does: at two threads the LSTM's small steps (2.1 MFLOP) ran 6.0-7.0
    /// ms per training step in pieces against 5.2-5.7 whole, and its medium ones (17 MFLOP)
    /// 36.4 against 35.2-36.2 in quiet rounds (alternating `profile_step`).
    pub const PIECES_MIN_FLOPS: usize = 32_000_000;

    /// [`Sharing::Pieces`] for a step of `batch` rows, `hidden` units (split in [`halves`])
    /// and `gates` gates whose product reaches [`Sharing::PIECES_MIN_FLOPS`], else
    /// [`Sharing::Blocks`]. Decided once per pass, not per step.
    pub fn for_step<T: Float>(batch: usize, hidden: usize, gates: usize) -> Self {
        let flops = 2.0 * (batch * gates) as f64 * (hidden as f64).powi(2);
        if flops >= Self::PIECES_MIN_FLOPS as f64 {
            // The second half is the wider one when `H` is odd.
            let [_, widest] = halves(hidden);
            Self::Pieces(Grid::new::<T>(batch, widest.len()))
        } else {
            Self::Blocks
        }
    }
}

/// Runs a split forward step's two blocks through `f`: on one thread each block whole, in
/// turn (whole blocks stream each gate's weights with fewer restarts: LSTM char forward
/// steps on one thread take 85-88 ms per training step as whole blocks, 89-93 in pieces);
/// on two as `sharing` says. Every element comes out the same either way (the products
/// cover whole panels).
pub(super) fn forward_step<'a, T: Float, const G: usize, const S: usize>(
    pair: &Pair,
    batch: usize,
    sharing: Sharing,
    [first, second]: [BlockViews<'a, T, G, S>; 2],
    f: impl Fn(&mut Piece<'a, T, G, S>) + Sync,
) {
    let grid = match sharing {
        Sharing::Pieces(grid) if pair.is_parallel() => grid,
        _ => {
            let whole = |(block, gates, states): BlockViews<'a, T, G, S>| Piece {
                gates,
                states,
                rows: 0..batch,
                cols: 0..block.units.len(),
                block,
            };
            let (mut first, mut second) = (whole(first), whole(second));
            pair.join(|| f(&mut first), || f(&mut second));
            return;
        }
    };
    let mine = grid.cells(batch, first.0.units.len()).count();
    let pieces = grid.pieces(batch, first).chain(grid.pieces(batch, second));
    let mut pieces = stack_pieces(pieces);
    pair.pull_each(&mut pieces, mine, |piece| {
        if let Some(piece) = piece {
            f(piece);
        }
    });
}

/// Up to [`MAX_PIECES`] pieces on the stack, in order, for [`Pair::pull_each`].
fn stack_pieces<P>(mut pieces: impl Iterator<Item = P>) -> [Option<P>; MAX_PIECES] {
    let slots = core::array::from_fn(|_| pieces.next());
    assert!(pieces.next().is_none(), "more than {MAX_PIECES} pieces");
    slots
}

/// Copies the rows of a step's state `cur` (`[B, width]`) from row `live` on, all of them
/// finished ([`Batch::live_rows`]), from `prev`, and returns the live rows
/// that the step computes.
pub(super) fn carry_past_live<'a, T: Copy>(
    cur: &'a mut [T],
    prev: &[T],
    live: usize,
    width: usize,
) -> &'a mut [T] {
    let (computed, carried) = cur.split_at_mut(live * width);
    carried.copy_from_slice(&prev[live * width..]);
    computed
}

/// A row-major `[rows, cols]` view of `buf`.
pub(super) fn view<T>(buf: &mut [T], rows: usize, cols: usize) -> MatMut<'_, T> {
    MatMut::from_row_major_slice_mut(buf, rows, cols)
}

/// Splits a `[B, G·H]` gate matrix into the gate columns of the two halves' units: for
/// each half, `G` views `[B, |units|]`, gate `k`'s columns `k·H + units`.
pub(super) fn split_gates<T, const G: usize>(
    m: MatMut<'_, T>,
    hidden: usize,
) -> [[MatMut<'_, T>; G]; 2] {
    let cut = hidden / 2;
    let mut rest = Some(m);
    let mut lo: [Option<MatMut<'_, T>>; G] = core::array::from_fn(|_| None);
    let mut hi: [Option<MatMut<'_, T>>; G] = core::array::from_fn(|_| None);
    for k in 0..G {
        let (gate, tail) = rest.take().expect("columns left").split_at_col_mut(hidden);
        let (a, b) = gate.split_at_col_mut(cut);
        lo[k] = Some(a);
        hi[k] = Some(b);
        rest = Some(tail);
    }
    [lo.map(|v| v.expect("set")), hi.map(|v| v.expect("set"))]
}

/// Splits a `[B, H]` matrix into the two halves' unit columns.
pub(super) fn split_units<T>(m: MatMut<'_, T>, hidden: usize) -> [MatMut<'_, T>; 2] {
    let (a, b) = m.split_at_col_mut(hidden / 2);
    [a, b]
}

/// Row `r` of a view with unit column stride, as a slice.
#[inline]
pub(super) fn row_mut<'a, T>(m: &'a mut MatMut<'_, T>, r: usize) -> &'a mut [T] {
    m.rb_mut()
        .row_mut(r)
        .try_as_row_major_mut()
        .expect("unit column stride")
        .as_slice_mut()
}

/// Every view in `ms`, reborrowed.
#[inline]
pub(super) fn reborrow<'a, T, const G: usize>(
    ms: &'a mut [MatMut<'_, T>; G],
) -> [MatMut<'a, T>; G] {
    let mut it = ms.iter_mut();
    core::array::from_fn(|_| it.next().expect("G views").rb_mut())
}

/// Rows `rows` of every view in `ms`, reborrowed: the tile a kernel call covers.
#[inline]
pub(super) fn subrows_mut<'a, T, const G: usize>(
    ms: &'a mut [MatMut<'_, T>; G],
    rows: Range<usize>,
) -> [MatMut<'a, T>; G] {
    let mut it = ms.iter_mut();
    core::array::from_fn(|_| {
        let m = it.next().expect("G views");
        m.rb_mut().subrows_mut(rows.start, rows.len())
    })
}

/// The `rows` by `units` tile of a row-major `[B, H]` state.
#[inline]
pub(super) fn state_tile<T>(
    state: &[T],
    hidden: usize,
    rows: Range<usize>,
    units: Range<usize>,
) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(state, state.len() / hidden, hidden)
        .subrows(rows.start, rows.len())
        .subcols(units.start, units.len())
}

/// The batch rows `0..batch` in maximal runs of equal `active(r)`: `(rows, active)`. A
/// backward step runs its gate kernel once per active run (every row, when no sequence has
/// ended) and passes the gradient of an inactive row through.
pub(super) fn row_runs(
    batch: usize,
    active: impl Fn(usize) -> bool,
) -> impl Iterator<Item = (Range<usize>, bool)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        (start < batch).then(|| {
            let kind = active(start);
            let end = (start + 1..batch)
                .find(|&r| active(r) != kind)
                .unwrap_or(batch);
            let run = start..end;
            start = end;
            (run, kind)
        })
    })
}

/// Gate `k`'s slice of `units` in a `[G·H]` vector (a bias), for every `k`.
pub(super) fn gate_units<'a, T, const G: usize>(
    v: &'a [T],
    hidden: usize,
    units: &Range<usize>,
) -> [&'a [T]; G] {
    core::array::from_fn(|k| &v[k * hidden + units.start..k * hidden + units.end])
}

/// Packs each block's forward weights (`W_hhᵀ` restricted to its units, per gate) from
/// `w_hh` `[G·H, H]`.
pub(super) fn pack_forward<T: Float>(
    pair: &Pair,
    blocks: &mut [UnitBlock<T>],
    w_hh: &[T],
    hidden: usize,
) {
    let w = MatRef::from_row_major_slice(w_hh, w_hh.len() / hidden, hidden);
    on_each_block(pair, blocks, |block| {
        let units = block.units.clone();
        for (k, panels) in block.forward.iter_mut().enumerate() {
            panels.pack(w.subrows(k * hidden + units.start, units.len()).transpose());
        }
    });
}

/// Packs each block's backward weights (`W_hh` restricted to its units' columns).
pub(super) fn pack_backward<T: Float>(
    pair: &Pair,
    blocks: &mut [UnitBlock<T>],
    w_hh: &[T],
    hidden: usize,
) {
    let w = MatRef::from_row_major_slice(w_hh, w_hh.len() / hidden, hidden);
    on_each_block(pair, blocks, |block| {
        let units = block.units.clone();
        block.backward.pack(w.subcols(units.start, units.len()));
    });
}

/// Runs `f` on both blocks, each on the thread that runs the block in the time loops (so
/// what `f` writes starts out in that core's cache).
fn on_each_block<T: Float>(
    pair: &Pair,
    blocks: &mut [UnitBlock<T>],
    f: impl Fn(&mut UnitBlock<T>) + Sync,
) {
    let [b0, b1] = blocks else {
        unreachable!("a split step has two unit blocks")
    };
    pair.join(|| f(b0), || f(b1));
}

/// Backward product of a block: `dh_prev[:, units] += dZ · W_hh[:, units]`, with `dz` the
/// step's `[n, G·H]` gradient on its first `n` rows ([`live_grads`]), which it adds to.
pub(super) fn backward_product<T: Float>(
    dh_prev: MatMut<'_, T>,
    dz: MatRef<'_, T>,
    block: &UnitBlock<T>,
) {
    let dh_prev = dh_prev.subrows_mut(0, dz.nrows());
    block.backward.product(dh_prev, Accum::Add, dz);
}

/// The live rows ([`Batch::live_rows`]) of step `t`'s `[B, width]` gradient,
/// `grads` starting at the step: the rows past them are zero, and a product over them
/// would add nothing.
pub(super) fn live_grads<'a, T: Float>(
    batch: &Batch<'_, T>,
    t: usize,
    grads: &'a [T],
    width: usize,
) -> MatRef<'a, T> {
    let live = batch.live_rows(t);
    MatRef::from_row_major_slice(&grads[..live * width], live, width)
}

/// `Σ x²` over a view's rows: one block's share of `‖dL/dh_t‖²` (telemetry).
pub(super) fn sum_squares<T: Float>(m: &mut MatMut<'_, T>) -> T {
    (0..m.nrows()).fold(T::zero(), |acc, r| {
        acc + kernels::reduce::sum_squares(row_mut(m, r))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiles of a grid are its cells, in the same order, and cover the matrix once.
    #[test]
    fn grid_tiles_are_its_cells_and_cover_the_matrix() {
        for (batch, units) in [(1, 1), (19, 150), (32, 256), (64, 512), (5, 97)] {
            let grid = Grid::new::<f32>(batch, units);
            let mut m = vec![0u32; batch * units];
            let cells: Vec<_> = grid.cells(batch, units).collect();
            let tiles: Vec<_> = grid.tiles(view(&mut m, batch, units)).collect();
            assert_eq!(cells.len(), tiles.len());
            for ((rows, cols), tile) in cells.iter().zip(tiles) {
                assert_eq!((tile.nrows(), tile.ncols()), (rows.len(), cols.len()));
                let mut tile = tile;
                for r in 0..tile.nrows() {
                    for c in 0..tile.ncols() {
                        tile[(r, c)] +=
                            (rows.start + r) as u32 * 1000 + (cols.start + c) as u32 + 1;
                    }
                }
            }
            let expected: Vec<u32> = (0..batch * units)
                .map(|k| (k / units) as u32 * 1000 + (k % units) as u32 + 1)
                .collect();
            assert_eq!(m, expected, "B = {batch}, units = {units}");
        }
    }

    /// Runs cover the batch in order, alternate in kind and are maximal.
    #[test]
    fn row_runs_are_maximal_and_cover_the_batch() {
        let runs = |batch, active: &[usize]| -> Vec<_> {
            row_runs(batch, |r| active.contains(&r)).collect()
        };
        assert_eq!(runs(0, &[]), vec![]);
        assert_eq!(runs(3, &[0, 1, 2]), vec![(0..3, true)]);
        assert_eq!(runs(3, &[]), vec![(0..3, false)]);
        assert_eq!(
            runs(6, &[0, 1, 4]),
            vec![(0..2, true), (2..4, false), (4..5, true), (5..6, false)]
        );
    }

    /// Pieces only where a step is big enough: the LSTM's and GRU's char and large shapes,
    /// not their medium or small ones.
    #[test]
    fn steps_are_pulled_in_pieces_from_32_mflop() {
        let pieces = |b, h, g| match Sharing::for_step::<f32>(b, h, g) {
            Sharing::Pieces(grid) => Some(grid),
            Sharing::Blocks => None,
        };
        assert_eq!(pieces(16, 128, 4), None);
        assert_eq!(pieces(32, 256, 4), None);
        assert_eq!(pieces(32, 512, 3), Some(Grid::new::<f32>(32, 256)));
        assert_eq!(pieces(32, 512, 4), Some(Grid::new::<f32>(32, 256)));
        assert_eq!(pieces(64, 1024, 3), Some(Grid::new::<f32>(64, 512)));
        assert_eq!(pieces(1, 2000, 4), Some(Grid::new::<f32>(1, 1000)));
        // An odd `H`: the grid comes from the second, wider block.
        assert_eq!(pieces(1000, 385, 4), Some(Grid::new::<f32>(1000, 193)));
    }

    /// Unit groups are whole panels (what `Panels::product_cols` needs), rows come in
    /// multiples of the product's 8-row tile, and two blocks' pieces fit on the stack, also
    /// when `H` is odd and the second block has one unit more than the first.
    #[test]
    fn grids_fit_the_panels_and_the_stack() {
        let width = kernels::panels::Panels::<f32>::width();
        for batch in [1, 4, 32, 64, 1000] {
            for units in [1, 64, 192, 256, 512, 4096, 40_000] {
                for second in [units, units + 1] {
                    let grid = Grid::new::<f32>(batch, second);
                    assert_eq!(grid.units % width, 0);
                    assert!(grid.units >= 2 * width);
                    assert_eq!(grid.rows % 8, 0);
                    let pieces =
                        grid.cells(batch, units).count() + grid.cells(batch, second).count();
                    assert!(
                        pieces <= MAX_PIECES,
                        "B = {batch}, blocks of {units} and {second} units: {pieces}"
                    );
                }
            }
        }
        // The char shape: groups of two panels, tiles of 8 rows.
        assert_eq!(Grid::new::<f32>(32, 256), Grid { rows: 8, units: 96 });
    }
}
