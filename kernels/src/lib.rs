//! Compute kernels for training recurrent networks on the CPU.
//!
//! Plain numeric routines over row-major slices, generic over `f32` and `f64` ([`Float`]),
//! with no knowledge of any model:
//!
//! - [`gemm`]: `C (+)= A B`, `A Bᵀ`, `Aᵀ B` through faer, and a pulp kernel for products
//!   with few rows (the recurrent step of a small batch), where faer is slow.
//! - [`aligned`]: a growable buffer whose elements start on a cache line.
//! - [`panels`]: a weight packed once into column panels for many few-row products (the
//!   recurrent steps of a pass), where faer would repack it at every call.
//! - [`activation`]: fused bias + tanh / ReLU, sigmoid, and their backward passes.
//! - [`gates`]: the elementwise half of LSTM and GRU steps (all gates and the state update
//!   in one pass), forward and backward.
//! - [`loss`]: softmax cross-entropy and squared error, loss and gradient in one pass.
//! - [`dropout`]: inverted dropout with a mask recomputed from a seed, forward and backward.
//! - [`reduce`]: sums of squares, column sums, `axpy`, scaling, clamping.
//! - [`optim`]: fused SGD (momentum, Nesterov, weight decay) and Adam / AdamW updates.
//!
//! Elementwise kernels run on the best instruction set the CPU has (AVX-512, AVX2+FMA, or
//! scalar), chosen once; [`arch::with_isa`] forces one, for tests or reproducibility.
//!
//! Shapes are written `[rows, cols]` for a row-major buffer of `rows * cols` elements.
//!
//! ```
//! use kernels::{activation, gemm::{gemm_nt, GemmShape}};
//! use faer::{Accum, Par};
//! // One RNN step for a batch of 1: h = tanh(W x + b) with W: [2, 3].
//! let (w, x, b) = ([0.1f32, 0.2, 0.3, 0.0, 0.0, 0.0], [1.0f32, 1.0, 1.0], [0.0f32, 0.5]);
//! let mut z = [0.0f32; 2];
//! gemm_nt(&mut z, Accum::Replace, &x, &w, GemmShape::new(1, 2, 3), Par::Seq);
//! let mut h = [0.0f32; 2];
//! activation::bias_tanh(&mut h, &z, &b);
//! assert!((h[0] - 0.6f32.tanh()).abs() < 1e-6 && (h[1] - 0.5f32.tanh()).abs() < 1e-6);
//! ```

// Unsafe code lives only here, and each block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod activation;
pub mod aligned;
pub mod arch;
pub mod dropout;
mod float;
pub mod gates;
pub mod gemm;
mod lanewise;
pub mod loss;
pub mod optim;
pub mod pair;
pub mod panels;
pub mod reduce;

pub use faer::{Accum, Par};
pub use float::Float;
