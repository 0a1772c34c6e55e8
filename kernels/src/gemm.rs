//! Matrix products on row-major buffers: `C (+)= A B`, `C (+)= A Bᵀ`, `C (+)= Aᵀ B`.
//!
//! Every matrix is a row-major slice `[rows, cols]` (row stride = `cols`), the layout the
//! engine's time-major buffers have. The products are thin wrappers over faer's views (no
//! copies: a transpose is a view), except where faer is slow: products with few rows, such
//! as the recurrent step at batch 1, where faer reaches only 6-32 GFLOP/s on this machine.
//! [`gemm_nn`] sends those to [`small_m_gemm_nn`], a pulp kernel that keeps a strip of `C` in
//! registers and streams `B` by rows; `Aᵀ B` products with a narrow, odd-width `C`
//! (`dW_ih` at `I = 65`), which [`gemm_tn`] computes transposed in blocks; and the other
//! `Aᵀ B` products over many rows (the weight gradients), which it sums in blocks of rows
//! ([`depth_block`], by CPU): on an Intel Xeon faer over all rows at once ran them at half
//! speed.
//!
//! On several threads ([`Threads`]) a product is cut by this crate into one contiguous share
//! of `C`'s rows or columns per thread, each a sequential faer product (faer's own split
//! barely helped the narrow products). The threads are rayon's (a [`Par`]) or the two
//! workers of a [`Pair`] already running a loop, which take a share each without waking
//! anyone. Nothing splits the inner dimension, and the kernel choice depends only on the
//! shape: results are bitwise identical for any [`Threads`].

use faer::linalg::matmul::matmul;
use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};
use pulp::{Simd, WithSimd};

use crate::float::Float;
use crate::pair::Pair;

/// The threads a product may use. A bare [`Par`] converts into one.
#[derive(Clone, Copy)]
pub enum Threads<'a> {
    /// Shares on rayon's threads (`Par::Seq`: the calling thread alone).
    Par(Par),
    /// Two shares, one on each worker of the pair (in turn when it is not parallel), each
    /// cut further over the given [`Par`]. A product inside one of the pair's joins must not
    /// use it.
    Pair(&'a Pair, Par),
}

impl From<Par> for Threads<'_> {
    fn from(par: Par) -> Self {
        Self::Par(par)
    }
}

/// The shape of a product `C[m, n] (+)= op(A)[m, k] · op(B)[k, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    /// Rows of `C`.
    pub m: usize,
    /// Columns of `C`.
    pub n: usize,
    /// The inner (summed) dimension.
    pub k: usize,
}

impl GemmShape {
    /// A shape `m x n x k`.
    pub const fn new(m: usize, n: usize, k: usize) -> Self {
        Self { m, n, k }
    }

    /// Floating-point operations of the product (`2 m n k`).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Largest `m` for which [`gemm_nn`] uses the pulp small-M kernel instead of faer.
///
/// Measured with `cargo bench -p kernels --bench kernels -- gemm_small`: at one row (a GEMV)
/// the pulp kernel is 1.3-2x faer; from 4 rows on, faer with row-major operands reaches
/// 90-105 GFLOP/s and the pulp tile kernel does not beat it.
pub const SMALL_M_MAX: usize = 1;

#[track_caller]
fn check<T>(dst: &[T], a: &[T], b: &[T], s: GemmShape) {
    assert!(
        dst.len() == s.m * s.n && a.len() == s.m * s.k && b.len() == s.k * s.n,
        "gemm shape {s:?}: dst.len() = {} (want m*n = {}), a.len() = {} (want m*k = {}), \
         b.len() = {} (want k*n = {})",
        dst.len(),
        s.m * s.n,
        a.len(),
        s.m * s.k,
        b.len(),
        s.k * s.n
    );
}

/// `C[m, n] (+)= A[m, k] · B[k, n]`, all row-major.
///
/// With `m <= SMALL_M_MAX` this runs the pulp small-M kernel (sequential), otherwise faer.
///
/// # Panics
/// If a slice length does not match the shape.
///
/// # Example
/// ```
/// use kernels::gemm::{gemm_nn, GemmShape};
/// use faer::{Accum, Par};
/// let a = [1.0f32, 2.0]; // [1, 2]
/// let b = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
/// let mut c = [1.0f32; 3];
/// gemm_nn(&mut c, Accum::Add, &a, &b, GemmShape::new(1, 3, 2), Par::Seq);
/// assert_eq!(c, [10.0, 13.0, 16.0]);
/// ```
#[track_caller]
pub fn gemm_nn<'p, T: Float>(
    dst: &mut [T],
    accum: Accum,
    a: &[T],
    b: &[T],
    s: GemmShape,
    threads: impl Into<Threads<'p>>,
) {
    check(dst, a, b, s);
    if s.m <= SMALL_M_MAX {
        small_m_gemm_nn(dst, accum, a, b, s);
    } else {
        faer_nn(dst, accum, a, b, s, threads);
    }
}

/// `C[m, n] (+)= A[m, k] · B[k, n]` through faer only (the reference for [`gemm_nn`]).
///
/// # Panics
/// If a slice length does not match the shape.
#[track_caller]
pub fn faer_nn<'p, T: Float>(
    dst: &mut [T],
    accum: Accum,
    a: &[T],
    b: &[T],
    s: GemmShape,
    threads: impl Into<Threads<'p>>,
) {
    check(dst, a, b, s);
    let GemmShape { m, n, k } = s;
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, k, n);
    let c = MatMut::from_row_major_slice_mut(dst, m, n);
    product(c, accum, a, b, threads.into(), Leaf::Faer);
}

/// `C[m, n] (+)= A[m, k] · B[n, k]ᵀ`: `B` is stored row-major as `[n, k]` (a PyTorch weight
/// `[out, in]` applied to rows of `A`).
///
/// # Panics
/// If a slice length does not match the shape.
///
/// # Example
/// ```
/// use kernels::gemm::{gemm_nt, GemmShape};
/// use faer::{Accum, Par};
/// let x = [1.0f64, 2.0]; // [1, 2]
/// let w = [1.0f64, 0.0, 0.0, 1.0, 1.0, 1.0]; // [3, 2]
/// let mut y = [0.0f64; 3];
/// gemm_nt(&mut y, Accum::Replace, &x, &w, GemmShape::new(1, 3, 2), Par::Seq);
/// assert_eq!(y, [1.0, 2.0, 3.0]);
/// ```
#[track_caller]
pub fn gemm_nt<'p, T: Float>(
    dst: &mut [T],
    accum: Accum,
    a: &[T],
    b: &[T],
    s: GemmShape,
    threads: impl Into<Threads<'p>>,
) {
    check(dst, a, b, s);
    let GemmShape { m, n, k } = s;
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, n, k);
    let c = MatMut::from_row_major_slice_mut(dst, m, n);
    product(c, accum, a, b.transpose(), threads.into(), Leaf::Faer);
}

/// `C[m, n] (+)= A[k, m]ᵀ · B[k, n]`: `A` is stored row-major as `[k, m]` (weight gradients
/// `dW = dZᵀ X` summed over all `k = T·B` rows).
///
/// Over more than 64 rows it sums them in blocks of [`depth_block`]`(m · size_of::<T>())`
/// rows, whose boundaries depend on the shape alone (never on the threads).
///
/// # Panics
/// If a slice length does not match the shape.
///
/// # Example
/// ```
/// use kernels::gemm::{gemm_tn, GemmShape};
/// use faer::{Accum, Par};
/// let dz = [1.0f32, 2.0, 3.0, 4.0]; // [k=2, m=2]
/// let x = [1.0f32, 1.0]; // [k=2, n=1]
/// let mut dw = [0.0f32; 2];
/// gemm_tn(&mut dw, Accum::Replace, &dz, &x, GemmShape::new(2, 1, 2), Par::Seq);
/// assert_eq!(dw, [4.0, 6.0]);
/// ```
#[track_caller]
pub fn gemm_tn<'p, T: Float>(
    dst: &mut [T],
    accum: Accum,
    a: &[T],
    b: &[T],
    s: GemmShape,
    threads: impl Into<Threads<'p>>,
) {
    check(dst, a, b, s);
    let GemmShape { m, n, k } = s;
    let a = MatRef::from_row_major_slice(a, k, m);
    let b = MatRef::from_row_major_slice(b, k, n);
    let c = MatMut::from_row_major_slice_mut(dst, m, n);
    product(c, accum, a.transpose(), b, threads.into(), Leaf::tn(s));
}

/// The least rows (or columns) of `C` a thread's share of a split product gets: faer's
/// kernels for one row differ from the others (a GEMV), so a share is never that thin.
const MIN_SHARE: usize = 16;

/// `C (+)= A B` through faer, split by this crate on two or more threads: the longer
/// dimension of `C` is cut into one contiguous share per thread, each computed by faer
/// sequentially, so no share waits on another. faer's own parallel split barely helped
/// the products with a narrow side (one thread → two, char's 4096 x 65 x 512 head 1.10x,
/// its 65 x 512 x 4096 `dW_hy` 1.09x, its 4096 x 512 x 65 `dH` 1.17x). Every element is
/// computed the same way whichever share holds it (faer's results do not depend on how
/// the rows or columns of `C` are divided, which its own parallel mode relies on too), so
/// the result is bitwise the one of `Par::Seq`.
fn product<T: Float>(
    c: MatMut<'_, T>,
    accum: Accum,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    threads: Threads<'_>,
    leaf: Leaf,
) {
    let (m, n) = (c.nrows(), c.ncols());
    let by_rows = m >= n;
    match threads {
        Threads::Pair(pair, each) if pair.is_parallel() && m.max(n) >= 2 * MIN_SHARE => {
            let (s0, s1) = halve(c, a, b, 1, 2, by_rows);
            pair.join(
                || product(s0.0, accum, s0.1, s0.2, each.into(), leaf),
                || product(s1.0, accum, s1.1, s1.2, each.into(), leaf),
            );
        }
        Threads::Pair(_, each) => product(c, accum, a, b, each.into(), leaf),
        Threads::Par(par) => {
            let shares = par.degree().min(m.max(n) / MIN_SHARE);
            split_product(c, accum, a, b, shares, by_rows, leaf);
        }
    }
}

/// One share of a product: its part of `C` and the operands it reads.
type Share<'c, 'a, 'b, T> = (MatMut<'c, T>, MatRef<'a, T>, MatRef<'b, T>);

/// Cuts `C (+)= A B` at `C`'s rows (`by_rows`) or columns `left / shares` of the way.
fn halve<'c, 'a, 'b, T>(
    c: MatMut<'c, T>,
    a: MatRef<'a, T>,
    b: MatRef<'b, T>,
    left: usize,
    shares: usize,
    by_rows: bool,
) -> (Share<'c, 'a, 'b, T>, Share<'c, 'a, 'b, T>) {
    if by_rows {
        let cut = c.nrows() * left / shares;
        let (c0, c1) = c.split_at_row_mut(cut);
        let (a0, a1) = a.split_at_row(cut);
        ((c0, a0, b), (c1, a1, b))
    } else {
        let cut = c.ncols() * left / shares;
        let (c0, c1) = c.split_at_col_mut(cut);
        let (b0, b1) = b.split_at_col(cut);
        ((c0, a, b0), (c1, a, b1))
    }
}

/// How one thread computes its share of a product.
#[derive(Clone, Copy)]
enum Leaf {
    /// One sequential faer product.
    Faer,
    /// `C (+)= Aᵀ B` summed over the inner dimension in blocks of rows of `A` and `B`
    /// ([`depth_block`] each), one sequential faer product per block, the first with the
    /// caller's `Accum` and the others adding. faer's x86 kernel reads `A` of these products
    /// in place, up to 512 of its rows per pass, and the engine's rows are `G·H` floats apart,
    /// often a power of two (1-16 KiB): such rows fall into a few sets of the cache and evict
    /// one another before their reuse, the more so on transparent huge pages, where the
    /// physical address (which picks the L2 set) is the virtual one. On an Intel Xeon, blocks
    /// that span at most [`TN_BLOCK_SPAN`] of `A` stay in the cache; an AMD EPYC lost less
    /// to whole products and gains most from longer blocks ([`DepthBlocking`]).
    DepthBlocked,
    /// `C = Aᵀ B` with `C` narrow and of odd width (`dW_ih` for `I = 65`): blocks of
    /// [`NARROW_TN_ROWS`] rows of `C` computed transposed, `C_blkᵀ = Bᵀ A_blk`, then copied
    /// back. faer's kernels run such a `C` at 56-76 GFLOP/s (char's 512 x 65 x 4096 and
    /// 2048 x 65 x 4096); transposed, with its long side in the registers, at 79-86.
    NarrowTn,
}

/// Rows of `C` per transposed block of [`Leaf::NarrowTn`]: the block (`64 x n`, `n` under
/// [`NARROW_TN_MAX_COLS`]) sits on the stack, and measured 79-84 GFLOP/s against 74-86 for
/// 32-512 rows.
const NARROW_TN_ROWS: usize = 64;

/// `C` narrower than this can take [`Leaf::NarrowTn`] (wider ones gained nothing).
const NARROW_TN_MAX_COLS: usize = 128;

/// The bytes of `A` (its rows times their stride) one block of a [`gemm_tn`] summed in blocks
/// may span under [`DepthBlocking::BoundedSpan`], between [`TN_BLOCK_ROWS`] rows. Measured on
/// an Intel Xeon (2 MiB L2 per core, 512³ GEMM at 160-165 GFLOP/s), `A` on huge pages as the
/// engine's workspace is, in GFLOP/s, whole against blocks of 64 / 128 / 192 rows:
/// `4096 x 256 x 3200` (rows 16 KiB apart) 54 against 129 / 90 / 76, `2048 x 512 x 4096`
/// (8 KiB) 61 against 133 / 137 / 123, `1024 x 1024 x 3200` (4 KiB) 78 against 144 / 142 /
/// 141, `256 x 256 x 3200` (1 KiB) 144 against 141 / 150 / 147. On small pages,
/// `4096 x 1024 x 3200` ran at 79 whole and 134 / 140 / 140 in blocks. (`cargo bench -p
/// kernels --bench kernels -- weight_gradient` compares with one faer product on the engine's
/// kind of buffer.)
pub const TN_BLOCK_SPAN: usize = 512 << 10;

/// The fewest and the most rows in a block of a [`gemm_tn`] summed in blocks under
/// [`DepthBlocking::BoundedSpan`]: fewer rows re-read `C` more often than they save (32 rows
/// ran 116-122 GFLOP/s where 64 ran 134-137), and more than 192 gained nowhere.
pub const TN_BLOCK_ROWS: core::ops::RangeInclusive<usize> = 64..=192;

/// Rows per block under [`DepthBlocking::FixedRows`]. Measured on an AMD EPYC (Zen 4, 1 MiB
/// L2 per core, 512³ GEMM at 95-110 GFLOP/s), huge pages, median GFLOP/s of blocks of 64 /
/// 128 / 256 / 512 rows and whole: `4096 x 1024 x 3200` (rows 16 KiB apart) 83 / 96 / 96 /
/// 95 / 93, `4096 x 256 x 3200` (16 KiB) 71 / 83 / 92 / 91 / 89, `2048 x 512 x 4096`
/// (8 KiB) 86 / 87 / 93 / 89 / 87, `1024 x 1024 x 3200` (4 KiB) 88 / 93 / 93 / 87 / 85,
/// `512 x 512 x 4096` (2 KiB) 101 / 102 / 102 / 88 / 89, `256 x 256 x 3200` (1 KiB) 86 / 89
/// / 90 / 90 / 91. There a whole faer product does not collapse as on the Intel Xeon, and
/// the Xeon's 64-row blocks at wide `A` lose 10-23 %: 256 rows is at or within 1 % of the
/// best at every stride.
pub const FIXED_TN_BLOCK_ROWS: usize = 256;

/// How [`gemm_tn`] cuts a deep product's inner dimension into blocks. The best block
/// depends on the processor, not only on the shape, so it is chosen once per process from
/// the CPU's vendor; a product's bits then depend on its shape and the machine, never on
/// the thread count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepthBlocking {
    /// Blocks spanning at most [`TN_BLOCK_SPAN`] bytes of `A`, within [`TN_BLOCK_ROWS`]
    /// rows: measured on Intel, and taken on any CPU not measured.
    BoundedSpan,
    /// [`FIXED_TN_BLOCK_ROWS`] rows whatever the stride: measured on AMD.
    FixedRows,
}

impl DepthBlocking {
    /// The blocking measured best on this machine's CPU: [`Self::FixedRows`] on AMD,
    /// [`Self::BoundedSpan`] elsewhere.
    ///
    /// ```
    /// use kernels::gemm::{depth_block, DepthBlocking};
    /// assert_eq!(depth_block(1024 * 4), DepthBlocking::of_this_cpu().rows(1024 * 4));
    /// ```
    pub fn of_this_cpu() -> Self {
        static CHOSEN: std::sync::OnceLock<DepthBlocking> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            if cpu_vendor() == *b"AuthenticAMD" {
                Self::FixedRows
            } else {
                Self::BoundedSpan
            }
        })
    }

    /// Rows of the inner dimension per block of `C (+)= Aᵀ B` when the rows of `A` are
    /// `row_bytes` apart.
    ///
    /// ```
    /// use kernels::gemm::DepthBlocking::{BoundedSpan, FixedRows};
    /// assert_eq!(BoundedSpan.rows(4096 * 4), 64); // LSTM H = 1024: gates 16 KiB apart
    /// assert_eq!(BoundedSpan.rows(1024 * 4), 128);
    /// assert_eq!(BoundedSpan.rows(256 * 4), 192);
    /// assert_eq!(FixedRows.rows(4096 * 4), 256);
    /// ```
    pub fn rows(self, row_bytes: usize) -> usize {
        match self {
            Self::BoundedSpan => (TN_BLOCK_SPAN / row_bytes.max(1))
                .clamp(*TN_BLOCK_ROWS.start(), *TN_BLOCK_ROWS.end()),
            Self::FixedRows => FIXED_TN_BLOCK_ROWS,
        }
    }
}

/// The CPU's vendor string (`GenuineIntel`, `AuthenticAMD`, ...).
#[cfg(target_arch = "x86_64")]
fn cpu_vendor() -> [u8; 12] {
    let leaf = core::arch::x86_64::__cpuid(0);
    let mut vendor = [0u8; 12];
    for (bytes, word) in vendor.chunks_mut(4).zip([leaf.ebx, leaf.edx, leaf.ecx]) {
        bytes.copy_from_slice(&word.to_le_bytes());
    }
    vendor
}

/// No vendor string off x86-64: such CPUs take the default blocking.
#[cfg(not(target_arch = "x86_64"))]
fn cpu_vendor() -> [u8; 12] {
    [0; 12]
}

/// Rows of the inner dimension per block of `C (+)= Aᵀ B` on this machine when the rows of
/// `A` are `row_bytes` apart ([`DepthBlocking::of_this_cpu`]).
pub fn depth_block(row_bytes: usize) -> usize {
    DepthBlocking::of_this_cpu().rows(row_bytes)
}

impl Leaf {
    /// The leaf for `C[m, n] = A[k, m]ᵀ B[k, n]`: the transposed blocks where `n` is narrow
    /// and not a whole number of AVX-512 registers of f32 and `C` is tall enough to gain
    /// (measured: `n` = 65 and 100 gain, `n` = 32, 48 and 64 do not).
    /// Other products deeper than the fewest rows of a block are summed in blocks.
    fn tn(s: GemmShape) -> Self {
        if s.n < NARROW_TN_MAX_COLS && !s.n.is_multiple_of(16) && s.m >= 256 && s.k >= 256 {
            Leaf::NarrowTn
        } else if s.k > *TN_BLOCK_ROWS.start() {
            Leaf::DepthBlocked
        } else {
            Leaf::Faer
        }
    }

    fn run<T: Float>(self, c: MatMut<'_, T>, accum: Accum, a: MatRef<'_, T>, b: MatRef<'_, T>) {
        self.run_faer(c, accum, a, b);
        // faer's kernels leave the vector registers' upper bits set, slowing the SSE code
        // that runs next on this thread.
        crate::arch::clear_upper_registers();
    }

    /// [`Leaf::run`]'s products.
    fn run_faer<T: Float>(
        self,
        mut c: MatMut<'_, T>,
        accum: Accum,
        a: MatRef<'_, T>,
        b: MatRef<'_, T>,
    ) {
        match self {
            Leaf::Faer => matmul(c, accum, a, b, T::one(), Par::Seq),
            Leaf::DepthBlocked => {
                let depth = a.ncols();
                // `a` is `Aᵀ`: its column stride is the rows' stride in `A`, the same for
                // every share of `C`. So the block boundaries depend on the shape alone, and
                // a split product stays bitwise the sequential one. Blocks are evened out.
                let row_bytes = a.col_stride().unsigned_abs() * core::mem::size_of::<T>();
                let len = depth.div_ceil(depth.div_ceil(depth_block(row_bytes)).max(1));
                for (i, k0) in (0..depth).step_by(len.max(1)).enumerate() {
                    let rows = len.min(depth - k0);
                    let accum = if i == 0 { accum } else { Accum::Add };
                    let (a, b) = (a.subcols(k0, rows), b.subrows(k0, rows));
                    matmul(c.rb_mut(), accum, a, b, T::one(), Par::Seq);
                }
            }
            Leaf::NarrowTn => {
                let n = c.ncols();
                let mut block = [T::zero(); NARROW_TN_ROWS * NARROW_TN_MAX_COLS];
                for r0 in (0..c.nrows()).step_by(NARROW_TN_ROWS) {
                    let rows = NARROW_TN_ROWS.min(c.nrows() - r0);
                    let block = &mut block[..rows * n];
                    let bt = MatMut::from_row_major_slice_mut(block, n, rows);
                    matmul(
                        bt,
                        Accum::Replace,
                        b.transpose(),
                        a.subrows(r0, rows).transpose(),
                        T::one(),
                        Par::Seq,
                    );
                    let done = MatRef::from_row_major_slice(block, n, rows).transpose();
                    let mut dst = c.rb_mut().subrows_mut(r0, rows);
                    match accum {
                        Accum::Replace => dst.copy_from(done),
                        Accum::Add => {
                            for i in 0..rows {
                                for j in 0..n {
                                    dst[(i, j)] += done[(i, j)];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`product`] cut into `shares` contiguous parts of the rows of `C` (`by_rows`) or its
/// columns, halving recursively with `rayon::join` (nothing is allocated).
fn split_product<T: Float>(
    c: MatMut<'_, T>,
    accum: Accum,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    shares: usize,
    by_rows: bool,
    leaf: Leaf,
) {
    if shares < 2 {
        return leaf.run(c, accum, a, b);
    }
    let left = shares / 2;
    let (s0, s1) = halve(c, a, b, left, shares, by_rows);
    rayon::join(
        || split_product(s0.0, accum, s0.1, s0.2, left, by_rows, leaf),
        || split_product(s1.0, accum, s1.1, s1.2, shares - left, by_rows, leaf),
    );
}

/// `dst[cols, rows] = src[rows, cols]ᵀ`, both row-major.
///
/// The engine packs `W_hhᵀ` with it once per pass of several whole steps, so the forward
/// recurrent product streams contiguous rows like the backward one does.
///
/// It copies tiles of 8 x 8: each tile reads 8 source rows and writes 8 contiguous elements
/// of 8 destination rows, so both stay in L1 whatever the strides. faer's `copy_from` of a
/// transposed view, which this replaced, is much slower where the rows are a power of two
/// apart (they collide in the cache): f32, one thread, faer then tiles, 1024 x 256 300 and
/// 180 µs, 2048 x 512 3.5 and 0.74 ms, 4096 x 1024 (an LSTM with `H = 1024`) 31.5 and
/// 6.0 ms.
///
/// # Panics
/// If `src.len() != rows * cols` or `dst.len() != rows * cols`.
#[track_caller]
pub fn transpose<T: Float>(dst: &mut [T], src: &[T], rows: usize, cols: usize) {
    assert!(
        src.len() == rows * cols && dst.len() == rows * cols,
        "transpose: lengths"
    );
    const TILE: usize = 8;
    for r0 in (0..rows).step_by(TILE) {
        let tile_rows = r0..(r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let out = &mut dst[c * rows + tile_rows.start..c * rows + tile_rows.end];
                for (o, r) in out.iter_mut().zip(tile_rows.clone()) {
                    *o = src[r * cols + c];
                }
            }
        }
    }
}

/// `C[m, n] (+)= A[m, k] · B[k, n]`, all row-major, by the pulp small-M kernel.
///
/// For few rows (the recurrent step of a small batch): tiles of up to 8 rows of `C` times 2-3
/// registers (8 x 3 with AVX-512's 32 registers, 4 x 2 otherwise) stay in registers while `k`
/// rows of `B` stream past, so there are no horizontal reductions and `B` (a weight matrix,
/// hot in L2 across time steps) is read once per tile of rows. One row takes tiles of up to 8
/// registers when `B` is small, and otherwise streams `B` front to back (a GEMV whose
/// accumulators live in `C`). Sums run over `k` in order, one accumulator per output: the
/// result does not depend on the instruction set's width except through FMA contraction.
///
/// # Panics
/// If a slice length does not match the shape.
#[track_caller]
pub fn small_m_gemm_nn<T: Float>(dst: &mut [T], accum: Accum, a: &[T], b: &[T], s: GemmShape) {
    check(dst, a, b, s);
    crate::arch::dispatch(SmallGemm {
        dst,
        accum,
        a,
        b,
        s,
    });
}

/// The largest `B` (in bytes) that a one-row product reads in register tiles, column block
/// by column block; a larger one is streamed front to back by [`gemv_rows`]. Measured
/// (`cargo bench -p kernels -- gemm_small_b1`, square `B`): tiles are 7 % faster at 16 KiB
/// and the whole tiny workloads 8-25 % faster (64 KiB products), but 6 % slower at 256 KiB
/// and 26-35 % slower at 1-4 MiB, where `B` comes from L2 or beyond and the prefetcher
/// wants it read in order.
const GEMV_TILE_MAX_BYTES: usize = 128 << 10;

struct SmallGemm<'a, T> {
    dst: &'a mut [T],
    accum: Accum,
    a: &'a [T],
    b: &'a [T],
    s: GemmShape,
}

impl<T: Float> WithSimd for SmallGemm<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            dst,
            accum,
            a,
            b,
            s,
        } = self;
        let lanes = T::lanes::<S>();
        // AVX-512 has 32 registers: an 8 x 3 tile (24 accumulators) amortises each load of B
        // over 8 rows. With 16 registers, 4 x 2.
        let wide = lanes >= 16;
        if s.m == 1 {
            if s.k * s.n * size_of::<T>() > GEMV_TILE_MAX_BYTES {
                return gemv_rows(simd, dst, accum, a, b, s.n);
            }
            // One row in tiles of up to 8 registers: that many independent sums in flight
            // hide the FMA latency, and `dst` is read and written once, not once per row
            // block of `B`. A tile sums over `k` in order and then adds to `dst`, as the
            // taller tiles below do, so a row's result does not depend on the batch size.
            let strip = Strip {
                row: 0,
                accum,
                a,
                b,
                s,
            };
            let mut col = 0;
            while col < s.n {
                // The widest tile the columns left fill: 8 registers (AVX-512 only), 4, 2, 1.
                let regs = match (s.n - col).div_ceil(lanes) {
                    left if left >= 8 && wide => 8,
                    left if left >= 4 => 4,
                    left if left >= 2 => 2,
                    _ => 1,
                };
                let width = (regs * lanes).min(s.n - col);
                match regs {
                    8 => strip.tile::<S, 1, 8>(simd, dst, col, width),
                    4 => strip.tile::<S, 1, 4>(simd, dst, col, width),
                    2 => strip.tile::<S, 1, 2>(simd, dst, col, width),
                    _ => strip.tile::<S, 1, 1>(simd, dst, col, width),
                }
                col += width;
            }
            return;
        }
        let mut row = 0;
        while row < s.m {
            // The tallest tile the remaining rows fill: 8 (AVX-512 only), 4, then 3, 2, 1.
            let rows = match s.m - row {
                left if wide && left >= 8 => 8,
                left => left.min(4),
            };
            let strip = Strip {
                row,
                accum,
                a,
                b,
                s,
            };
            match (rows, wide) {
                (8, _) => strip.run::<S, 8, 3>(simd, dst, lanes),
                (4, true) => strip.run::<S, 4, 3>(simd, dst, lanes),
                (4, false) => strip.run::<S, 4, 2>(simd, dst, lanes),
                (3, _) => strip.run::<S, 3, 2>(simd, dst, lanes),
                (2, _) => strip.run::<S, 2, 2>(simd, dst, lanes),
                _ => strip.run::<S, 1, 2>(simd, dst, lanes),
            }
            row += rows;
        }
    }
}

/// `z[n] (+)= a[k] · B[k, n]` for one row: streams `B` front to back, four rows at a time,
/// updating `z` (which stays in L1). Contiguous reads let the prefetcher run at full memory
/// bandwidth when `B` does not fit in L2 (H = 1024); the four-row blocking divides the `z`
/// traffic by four. Each `z[j]` is summed over `k` in order.
#[inline(always)]
fn gemv_rows<T: Float, S: Simd>(simd: S, z: &mut [T], accum: Accum, a: &[T], b: &[T], n: usize) {
    if matches!(accum, Accum::Replace) {
        z.fill(T::zero());
    }
    let (blocks, rest) = a.as_chunks::<4>();
    let (b_blocks, b_rest) = b.split_at(blocks.len() * 4 * n);
    for (coef, rows) in blocks.iter().zip(b_blocks.chunks_exact(4 * n)) {
        let c: [T::Lanes<S>; 4] = core::array::from_fn(|r| T::splat(simd, coef[r]));
        let r: [crate::float::Split<'_, T, S>; 4] =
            core::array::from_fn(|i| T::as_simd::<S>(&rows[i * n..(i + 1) * n]));
        let (zv, zt) = T::as_mut_simd::<S>(z);
        for (j, zj) in zv.iter_mut().enumerate() {
            let mut acc = *zj;
            for i in 0..4 {
                acc = T::vmul_add(simd, c[i], r[i].0[j], acc);
            }
            *zj = acc;
        }
        if !zt.is_empty() {
            let mut acc = T::partial_load(simd, zt);
            for i in 0..4 {
                acc = T::vmul_add(simd, c[i], T::partial_load(simd, r[i].1), acc);
            }
            T::partial_store(simd, zt, acc);
        }
    }
    for (&coef, row) in rest.iter().zip(b_rest.chunks_exact(n.max(1))) {
        let c = T::splat(simd, coef);
        let (rv, rt) = T::as_simd::<S>(row);
        let (zv, zt) = T::as_mut_simd::<S>(z);
        for (zj, bj) in zv.iter_mut().zip(rv) {
            *zj = T::vmul_add(simd, c, *bj, *zj);
        }
        if !zt.is_empty() {
            let acc = T::vmul_add(
                simd,
                c,
                T::partial_load(simd, rt),
                T::partial_load(simd, zt),
            );
            T::partial_store(simd, zt, acc);
        }
    }
}

/// Rows `row..row + MR` of the product, swept left to right in tiles of `NR` registers.
struct Strip<'a, T> {
    row: usize,
    accum: Accum,
    a: &'a [T],
    b: &'a [T],
    s: GemmShape,
}

impl<T: Float> Strip<'_, T> {
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NR: usize>(&self, simd: S, dst: &mut [T], lanes: usize) {
        let n = self.s.n;
        let mut col = 0;
        while col + NR * lanes <= n {
            self.tile::<S, MR, NR>(simd, dst, col, NR * lanes);
            col += NR * lanes;
        }
        while col < n {
            let width = (n - col).min(lanes);
            self.tile::<S, MR, 1>(simd, dst, col, width);
            col += width;
        }
    }

    /// `C[row..row+MR, col..col+width] (+)= A[row..row+MR, :] · B[:, col..col+width]`, with
    /// `width <= NR * lanes`; a partial last register goes through partial loads and stores
    /// so it rounds exactly like a full one.
    #[inline(always)]
    fn tile<S: Simd, const MR: usize, const NR: usize>(
        &self,
        simd: S,
        dst: &mut [T],
        col: usize,
        width: usize,
    ) {
        let GemmShape { n, k, .. } = self.s;
        let lanes = T::lanes::<S>();
        let full = width == NR * lanes;
        let zero = T::splat(simd, T::zero());
        let mut acc = [[zero; NR]; MR];
        let a_rows: [&[T]; MR] =
            core::array::from_fn(|r| &self.a[(self.row + r) * k..(self.row + r + 1) * k]);
        for kk in 0..k {
            let b_row = &self.b[kk * n + col..kk * n + col + width];
            let bv: [T::Lanes<S>; NR] = if full {
                let (regs, _) = T::as_simd::<S>(b_row);
                core::array::from_fn(|c| regs[c])
            } else {
                core::array::from_fn(|c| T::partial_load(simd, &b_row[(c * lanes).min(width)..]))
            };
            for r in 0..MR {
                let av = T::splat(simd, a_rows[r][kk]);
                for c in 0..NR {
                    acc[r][c] = T::vmul_add(simd, av, bv[c], acc[r][c]);
                }
            }
        }
        for r in 0..MR {
            let out = &mut dst[(self.row + r) * n + col..(self.row + r) * n + col + width];
            for c in 0..NR {
                let lo = (c * lanes).min(width);
                let hi = ((c + 1) * lanes).min(width);
                let chunk = &mut out[lo..hi];
                let v = match self.accum {
                    Accum::Replace => acc[r][c],
                    Accum::Add => T::vadd(simd, T::partial_load(simd, chunk), acc[r][c]),
                };
                T::partial_store(simd, chunk, v);
            }
        }
    }
}
