//! Inverted dropout with a counter-based mask: which elements a pass drops is a pure function
//! of a seed, the row and the column, so the backward pass recomputes the mask instead of
//! storing it, and the result does not depend on how rows are split into chunks, segments or
//! threads.
//!
//! Element `j` of row `r` is kept when `mix32(row_key(seed, r) ^ j·φ) ≥ threshold`, with
//! `threshold ≈ p · 2³²`; kept elements are scaled by `1 / (1 - p)` so that the expected
//! output equals the input (PyTorch's `nn.Dropout` in training mode, with its own random
//! stream).
//!
//! ```
//! use kernels::dropout::{DropMask, drop_rows};
//! let mask = DropMask::<f32>::new(0.5, 7);
//! let x = vec![1.0f32; 4 * 64];
//! let mut y = vec![0.0f32; 4 * 64];
//! drop_rows(&mut y, &x, 64, 0, &mask);
//! assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
//! let kept = y.iter().filter(|&&v| v == 2.0).count();
//! assert!((96..160).contains(&kept)); // about half of 256
//! ```

use pulp::{Simd, WithSimd};

use crate::float::Float;

/// The mask and scale of one dropout: which elements of a `[rows, width]` buffer it keeps
/// and by how much it scales them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropMask<T> {
    seed: u64,
    /// Elements whose hash is below this are dropped.
    threshold: u32,
    /// `1 / (1 - p)`.
    scale: T,
}

impl<T: Float> DropMask<T> {
    /// The mask that drops each element with probability `p` (`0 ≤ p < 1`; the caller
    /// validates it), drawn from `seed`.
    ///
    /// # Panics
    /// If `p` is not in `[0, 1)`.
    pub fn new(p: f64, seed: u64) -> Self {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout probability {p} not in [0, 1)"
        );
        // p · 2³² rounded, at most 2³² - 1 (p < 1): the keep probability is 1 - p within 2⁻³³.
        let threshold = (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
        Self {
            seed,
            threshold,
            scale: T::of(1.0 / (1.0 - p)),
        }
    }

    /// Whether element `col` of row `row` is kept.
    #[inline(always)]
    pub fn keeps(&self, row: usize, col: usize) -> bool {
        self.keeps_in(self.row_key(row), col)
    }

    /// What a kept element is multiplied by: `1 / (1 - p)`.
    pub fn scale(&self) -> T {
        self.scale
    }

    /// The key of row `row`: [`mix64`] of the seed and the row, folded to 32 bits (each row
    /// gets an independent-looking key, whatever the seed).
    #[inline(always)]
    fn row_key(&self, row: usize) -> u32 {
        let z = mix64(self.seed.wrapping_add((row as u64).wrapping_mul(GOLDEN)));
        (z ^ (z >> 32)) as u32
    }

    /// Whether the row with key `key` keeps element `col`: MurmurHash3's 32-bit finaliser
    /// of the key and the column. 32-bit multiplies only, so the loops over a row vectorise
    /// on AVX2 as well as AVX-512.
    #[inline(always)]
    fn keeps_in(&self, key: u32, col: usize) -> bool {
        let mut h = key ^ (col as u32).wrapping_mul(0x9E37_79B9);
        h ^= h >> 16;
        h = h.wrapping_mul(0x85EB_CA6B);
        h ^= h >> 13;
        h = h.wrapping_mul(0xC2B2_AE35);
        h ^= h >> 16;
        h >= self.threshold
    }
}

/// 2⁶⁴ / φ, SplitMix64's increment.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output for the state `x`: nearby inputs give unrelated outputs, for deriving
/// seeds (a layer's, a step's) from one another.
///
/// ```
/// use kernels::dropout::mix64;
/// assert_ne!(mix64(1) ^ mix64(2), 3);
/// assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF); // SplitMix64's first output from seed 0
/// ```
#[inline(always)]
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `dst = dropout(src)` over rows of `width` elements, the first being row `first_row` of
/// the mask: `src · scale` where kept, else 0.
///
/// # Panics
/// If `dst` and `src` differ in length, or it is not a multiple of `width`.
#[track_caller]
pub fn drop_rows<T: Float>(
    dst: &mut [T],
    src: &[T],
    width: usize,
    first_row: usize,
    mask: &DropMask<T>,
) {
    assert_eq!(dst.len(), src.len(), "dropout: dst and src lengths");
    assert_rows(dst.len(), width);
    crate::arch::dispatch(DropRows {
        dst,
        src: Some(src),
        width,
        first_row,
        mask,
    });
}

/// The backward pass of [`drop_rows`] with the same mask, in place: `grad · scale` where
/// kept, else 0.
///
/// # Panics
/// If `grad`'s length is not a multiple of `width`.
#[track_caller]
pub fn drop_rows_backward<T: Float>(
    grad: &mut [T],
    width: usize,
    first_row: usize,
    mask: &DropMask<T>,
) {
    assert_rows(grad.len(), width);
    crate::arch::dispatch(DropRows {
        dst: grad,
        src: None,
        width,
        first_row,
        mask,
    });
}

#[track_caller]
fn assert_rows(len: usize, width: usize) {
    assert!(
        width > 0 && len.is_multiple_of(width),
        "dropout: {len} elements are not rows of {width}"
    );
}

/// `dst[r, j] = (src or dst)[r, j] · (scale if kept else 0)`.
struct DropRows<'a, T> {
    dst: &'a mut [T],
    /// `None`: in place.
    src: Option<&'a [T]>,
    width: usize,
    first_row: usize,
    mask: &'a DropMask<T>,
}

impl<T: Float> WithSimd for DropRows<'_, T> {
    type Output = ();

    // A plain loop, inlined into the dispatcher's target-feature context so the compiler
    // vectorises the integer hash and the select for the chosen instruction set: the hash
    // has no float lanes for pulp's `Float` operations to express.
    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Self {
            dst,
            src,
            width,
            first_row,
            mask,
        } = self;
        let (zero, scale) = (T::zero(), mask.scale);
        for (r, row) in dst.chunks_exact_mut(width).enumerate() {
            let key = mask.row_key(first_row + r);
            let factor = |j: usize| if mask.keeps_in(key, j) { scale } else { zero };
            match src {
                Some(src) => {
                    let from = &src[r * width..(r + 1) * width];
                    for (j, (d, &s)) in row.iter_mut().zip(from).enumerate() {
                        *d = s * factor(j);
                    }
                }
                None => {
                    for (j, d) in row.iter_mut().enumerate() {
                        *d *= factor(j);
                    }
                }
            }
        }
    }
}
