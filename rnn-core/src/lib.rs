//! Recurrent networks trained with backpropagation through time, on the CPU, fast.
//!
//! A model is a stack of `L` recurrent layers and a linear head, exactly PyTorch's
//! `nn.RNN(I, H, num_layers=L, nonlinearity=..., bias=...)` (or `nn.LSTM`, `nn.GRU`) +
//! `nn.Linear(H, O)`, with the same parameter names, shapes, gate order and initialisation, so
//! weights move both ways through safetensors (`bias=False` drops every `b_ih`, `b_hh`:
//! [`config::RnnConfig::bias`](method@config::RnnConfig::bias)):
//!
//! ```text
//! RNN:  h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)      act = tanh | relu
//! LSTM: i, f, g, o = σ, σ, tanh, σ of (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
//!       c_t = f ⊙ c_{t-1} + i ⊙ g,  h_t = o ⊙ tanh(c_t)
//! GRU:  r, z = σ(W_i{r,z} x_t + b_i{r,z} + W_h{r,z} h_{t-1} + b_h{r,z})
//!       n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn)),  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
//! head: y_t = W_hy h_t + b_y
//! ```
//!
//! Token input: [`config::RnnConfig::embedding`] puts PyTorch's `nn.Embedding(V, I)`
//! (`embedding.weight`) before the first layer, and batches give token ids
//! ([`batch::Batch::of_tokens`]).
//!
//! A bidirectional model ([`config::RnnConfig::bidirectional`], PyTorch's
//! `bidirectional=True`) adds each layer's reverse direction (`*_reverse` tensors) and reads
//! both directions' states side by side (`D = 2`: layers above and the head are `2H` wide).
//!
//! Shape legend: `T` steps, `B` sequences, `I` inputs, `H` hidden, `O` outputs, `L` layers,
//! `D` directions.
//! Buffers are time-major, row-major: `x: [T, B, I]`, targets `[T, B, O]` (MSE, L1, Huber,
//! smooth L1, BCE on logits) or labels `[T, B]` (cross-entropy); many-to-one losses take
//! `[B, O]` / `[B]`.
//!
//! ```
//! use rnn_core::prelude::*;
//! let cfg = RnnConfig::new(3, 16, 4);
//! let loss = LossSpec::every_step(LossKind::CrossEntropy);
//! let mut trainer = Trainer::<f32>::new(cfg, loss, OptimizerKind::adam(1e-2), 42)?
//!     .with_clip(Clip::Norm(1.0));
//! let (t, b) = (5, 2);
//! let x = vec![0.1f32; t * b * 3];
//! let labels = vec![1usize; t * b];
//! let report = trainer.step(&Batch::new(t, b, &x, Target::Classes(&labels)))?;
//! assert!(report.loss > 0.0 && report.grad_norm > 0.0);
//! # Ok::<(), rnn_core::RnnError>(())
//! ```
//!
//! The engine ([`network`]) follows the known-fast schedule for every cell: the input
//! projection of many steps' rows is one GEMM; each step does only the recurrent product of
//! all gates at once (a pulp GEMV at batch 1) and one fused elementwise pass; the reverse loop
//! does only the elementwise backward and `dh_{t-1}`; weight gradients are a few GEMMs over
//! many steps. "Many steps" is a time chunk sized to stay in cache between these phases
//! ([`network::TimeChunks`]). Nothing allocates inside the step loop.
//!
//! Threads: a step uses the available cores by default ([`trainer::Trainer::with_threads`],
//! [`trainer::Trainer::with_thread_pool`]). Each step's hidden units are split into two blocks,
//! one per thread, when the step is large enough ([`network::UnitSplit`]; an LSTM with
//! projections, [`config::RnnConfig::projection`], splits its batch's sequences instead); the
//! split depends on the shape only and no sum is ever divided between threads, so weights are
//! bitwise the same on one thread or two.
//!
//! Learning rates: [`trainer::Trainer::with_lr_schedule`] sets each update's rate by a
//! [`schedule::LrSchedule`] (PyTorch's step, exponential and cosine decays, linear warm-up,
//! and the one-cycle policy, which moves the momentum too);
//! [`schedule::Plateau`] lowers the rate when a validation metric stalls
//! (`ReduceLROnPlateau`, through [`trainer::Trainer::set_base_lr`]), and
//! [`schedule::EarlyStopping`] says when to stop (Keras' `EarlyStopping`).
//!
//! Regularisation: [`trainer::Trainer::with_dropout`] drops units between stacked layers as
//! PyTorch's `dropout` argument does ([`dropout`]), and [`trainer::Trainer::evaluate`] gives
//! the undropped model's loss, for a validation set.
//!
//! Sequences of different lengths: [`padding::pad`] puts them into one time-major batch
//! with their lengths (PyTorch's `pad_sequence`), [`padding::unpad`] takes each one's
//! outputs back out, and [`padding::time_major`] turns `batch_first` buffers around.
//! [`loader::Loader`] cuts a data set into minibatches each epoch (shuffled, of like lengths
//! when asked), PyTorch's `DataLoader`. The padding costs little: a trainer runs a batch
//! longest first (as `pack_padded_sequence(..., enforce_sorted=False)` sorts it), each step
//! computes only the sequences still running ([`batch::Batch::live_rows`]), and the products
//! over all steps gather the running rows when padding is an eighth or more of them.
//!
//! Fine-tuning: [`trainer::Trainer::freeze`] keeps tensors as they are (PyTorch's
//! `requires_grad_(False)`, skipping the work only they need: their own gradient products,
//! and the backward pass of a frozen bottom of the stack), and
//! [`trainer::Trainer::set_lr_scale`] and [`trainer::Trainer::set_weight_decay`] give a
//! tensor its own rate and decay (PyTorch's parameter groups).
//!
//! Losses of your own: [`trainer::Trainer::step_with`] (and [`tbptt::Tbptt::step_with`])
//! take a closure that reads the head's outputs and writes `dL/dy`, as PyTorch's autograd
//! takes any function of them: a Gaussian or quantile loss for a probabilistic forecast, a
//! policy gradient.
//!
//! Unaligned labels: [`ctc::Ctc`] is PyTorch's `nn.CTCLoss` (a string of labels per
//! sequence, read off its steps in any alignment: speech, handwriting), and
//! [`ctc::greedy_decode`] reads a model's outputs back into labels.
//!
//! Weight averages: [`average::WeightAverage`] keeps PyTorch's `AveragedModel` (an EMA, or
//! SWA's uniform mean) of a trainer's weights, to evaluate, save or predict with.
//!
//! Weighting and scoring sequences: [`batch::Batch::with_sequence_weights`] weighs each
//! sequence's loss (Keras' `sample_weight`), and [`trainer::Trainer::sequence_losses`] gives
//! each sequence's own loss (PyTorch's `reduction="none"`, per sequence: an anomaly score
//! per series, a perplexity per document).
//!
//! Big batches: [`trainer::Trainer::accumulate`] sums the gradients of micro-batches and
//! [`trainer::Trainer::apply_accumulated`] makes the update of the one batch holding them all
//! ([`accumulate`]).
//!
//! Long sequences: [`tbptt::Tbptt`] trains endless streams with truncated BPTT (with
//! gradient accumulation over chunks, [`tbptt::Tbptt::accumulate`]), and
//! [`trainer::Trainer::with_telemetry`] reports the gradient reaching every step, and
//! [`trainer::Trainer::with_input_grads`] the gradients of the inputs and initial states
//! themselves (PyTorch's `x.grad`), for layers of your own that feed the model;
//! [`trainer::Trainer::final_states`] and [`trainer::Trainer::grads_from_final_states`]
//! train through the final states handed on to another model (an encoder's to a decoder).
//! [`predict::Predictor`] runs a trained model one step at a time, [`sampling::Sampler`]
//! draws the next token from its logits, and [`text`] turns any text into character-level
//! training streams.

#![forbid(unsafe_code)]

pub mod accumulate;
pub mod average;
pub mod batch;
pub mod config;
pub mod ctc;
pub mod dropout;
pub mod dump;
pub mod error;
pub mod io;
mod layer;
pub mod loader;
pub mod network;
pub mod optim;
pub mod padding;
pub mod params;
pub mod predict;
pub mod sampling;
pub mod schedule;
pub mod tbptt;
pub mod text;
pub mod trainer;
pub mod workspace;

pub use error::{Result, RnnError};
/// The buffer type of [`Trainer::params`](trainer::Trainer::params) and its gradients: a
/// `Vec`-like slice that starts on a cache line.
pub use kernels::aligned::AlignedVec;

/// The types most programs need.
pub mod prelude {
    pub use crate::batch::{Batch, IGNORED_LABEL, Target};
    pub use crate::config::{ClassWeights, LossKind, LossSpec, Nonlinearity, Reduction, RnnConfig};
    pub use crate::dropout::Dropout;
    pub use crate::error::{Result, RnnError};
    pub use crate::network::UnitSplit;
    pub use crate::optim::{Clip, OptimizerKind};
    pub use crate::tbptt::Tbptt;
    pub use crate::trainer::{Memory, StepReport, Trainer};
}
