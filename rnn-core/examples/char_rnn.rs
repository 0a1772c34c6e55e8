//! A character-level language model, trained with truncated BPTT over `B` parallel streams
//! of text: by default the project's own README and sources (embedded at compile time, so
//! nothing is downloaded), or `--text FILE`.
//!
//! ```text
//! cargo run --release --example char_rnn                       # LSTM, about 2 minutes
//! cargo run --release --example char_rnn -- --cell gru --steps 500 --text notes.txt
//! cargo run --release --example char_rnn -- --resume --steps 4000   # continue a run
//! ```
//!
//! It holds out the text's last `--validation` share and scores it every `--eval-every`
//! updates (`--lr-schedule plateau` halves the rate when that score stalls, PyTorch's
//! `ReduceLROnPlateau`), shows a progress bar (loss, tokens/s, ETA), samples text every
//! `--sample-every` steps at `--temperature`, checkpoints to `--out` (model, optimizer, stream
//! state and position, loss histories, plateau state: `--resume` continues exactly where an
//! uninterrupted run would be), draws the loss curves as an SVG, and ends with the final
//! training and validation losses beside the corpus's unigram entropy (what a model that
//! ignores context would reach). `--ema DECAY` also keeps an exponential moving average of
//! the weights (PyTorch's `AveragedModel`) and scores it beside them.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{SeedableRng, rngs::StdRng};
use rnn_core::average::WeightAverage;
use rnn_core::config::Cell;
use rnn_core::io::{self, Extras};
use rnn_core::predict::Predictor;
use rnn_core::prelude::*;
use rnn_core::sampling::Sampler;
use rnn_core::schedule::{Decay, LrSchedule, OneCycle, Plateau};
use rnn_core::text::{CharCorpus, CharStreams};

/// The built-in corpus: this project's documentation and sources.
const CORPUS: &[&str] = &[
    include_str!("../../README.md"),
    include_str!("../src/lib.rs"),
    include_str!("../src/config.rs"),
    include_str!("../src/batch.rs"),
    include_str!("../src/network.rs"),
    include_str!("../src/layer/mod.rs"),
    include_str!("../src/layer/rnn.rs"),
    include_str!("../src/layer/lstm.rs"),
    include_str!("../src/layer/gru.rs"),
    include_str!("../src/tbptt.rs"),
    include_str!("../src/trainer.rs"),
    include_str!("../src/optim.rs"),
    include_str!("../src/params.rs"),
    include_str!("../src/io/file.rs"),
    include_str!("../src/io/model.rs"),
    include_str!("../src/io/checkpoint.rs"),
    include_str!("../../kernels/src/lib.rs"),
    include_str!("../../kernels/src/gates.rs"),
    include_str!("../../kernels/src/activation.rs"),
    include_str!("../../kernels/src/gemm.rs"),
];

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CellArg {
    Rnn,
    Lstm,
    Gru,
}

impl From<CellArg> for Cell {
    fn from(c: CellArg) -> Cell {
        match c {
            CellArg::Rnn => Cell::Rnn,
            CellArg::Lstm => Cell::Lstm,
            CellArg::Gru => Cell::Gru,
        }
    }
}

/// `--optimizer`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerArg {
    Adam,
    Adamw,
    Rmsprop,
    Adagrad,
    /// SGD with momentum 0.9.
    Sgd,
}

impl OptimizerArg {
    /// The optimizer at learning rate `lr`, with PyTorch's defaults otherwise.
    fn kind(self, lr: f64) -> OptimizerKind<f32> {
        match self {
            Self::Adam => OptimizerKind::adam(lr),
            Self::Adamw => OptimizerKind::adamw(lr),
            Self::Rmsprop => OptimizerKind::rmsprop(lr),
            Self::Adagrad => OptimizerKind::adagrad(lr),
            Self::Sgd => OptimizerKind::Sgd {
                lr: lr as f32,
                momentum: 0.9,
                weight_decay: 0.0,
                nesterov: false,
            },
        }
    }
}

/// `--lr-schedule`.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
    /// Cosine cycles of 1, 2 and 4 sevenths of the updates, each restarting at --lr.
    Restarts,
    /// PyTorch's OneCycleLR peaking at --lr, the momentum (Adam's beta1) moving against the
    /// rate (except for Adagrad, which has none).
    OneCycle,
    /// Halve the rate after two validations in a row without a better score.
    Plateau,
}

/// The schedule `--lr-schedule` and `--warmup` ask for over `--steps` updates.
fn lr_schedule(args: &Args) -> Result<LrSchedule, String> {
    let decay_steps = args.steps.saturating_sub(args.warmup).max(1) as u64;
    let decay = match args.lr_schedule {
        ScheduleArg::Constant | ScheduleArg::Plateau => Decay::Constant,
        ScheduleArg::Cosine => {
            Decay::cosine(decay_steps, args.lr / 10.0).map_err(|e| e.to_string())?
        }
        ScheduleArg::Restarts => {
            let first = decay_steps.div_ceil(7);
            Decay::cosine_restarts(first, 2, args.lr / 10.0).map_err(|e| e.to_string())?
        }
        ScheduleArg::OneCycle => {
            let cycle = OneCycle::new(decay_steps).map_err(|e| e.to_string())?;
            Decay::OneCycle(match args.optimizer {
                OptimizerArg::Adagrad => cycle.without_momentum(),
                _ => cycle,
            })
        }
    };
    let schedule = LrSchedule::new(decay);
    if args.warmup == 0 {
        return Ok(schedule);
    }
    schedule
        .with_warmup(args.warmup as u64, 0.1)
        .map_err(|e| format!("--warmup: {e}"))
}

/// Train a character-level language model with truncated BPTT.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Train on this text file instead of the built-in corpus (the project's own sources).
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// The recurrent cell.
    #[arg(long, value_enum, default_value = "lstm")]
    cell: CellArg,
    /// Hidden units per layer.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Stacked layers.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Read characters through an embedding of this width (PyTorch's nn.Embedding) instead
    /// of one-hot vectors (0: one-hot).
    #[arg(long, default_value_t = 0)]
    embed: usize,
    /// Dropout between stacked layers in training (PyTorch's `dropout`; needs --layers 2+).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Recurrent layers without biases (PyTorch's `bias=False`; the head keeps its bias).
    #[arg(long)]
    no_bias: bool,
    /// Project each LSTM layer's state to this many units (PyTorch's `proj_size`; --cell
    /// lstm, below --hidden; 0: none).
    #[arg(long, default_value_t = 0)]
    proj: usize,
    /// Parallel streams (B).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Steps per chunk (TBPTT k1); an update follows every chunk, or every --accumulate
    /// chunks.
    #[arg(long, default_value_t = 64)]
    chunk: usize,
    /// Steps backpropagated through (TBPTT k2, at least --chunk; default --chunk).
    #[arg(long)]
    k2: Option<usize>,
    /// Chunks per update: the gradients of this many chunks add up to one update
    /// (Tbptt::accumulate), for --chunk x this steps per update at the memory of one window.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    accumulate: u16,
    /// Updates to run in total (a resumed run continues up to this count).
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    /// Optimizer (a resumed run must use the checkpoint's).
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerArg,
    /// Learning rate (the peak, with a schedule).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Learning-rate schedule after any warm-up: constant, cosine down to --lr / 10 at
    /// update --steps (PyTorch's CosineAnnealingLR; resuming with another --steps bends the
    /// curve from there), restarts: three such cycles, each twice the last and restarting at
    /// --lr (CosineAnnealingWarmRestarts, T_mult = 2), or plateau: halved after two
    /// validations without a better score (ReduceLROnPlateau; needs --validation and
    /// --eval-every).
    #[arg(long, value_enum, default_value = "constant")]
    lr_schedule: ScheduleArg,
    /// Updates of linear warm-up from --lr / 10 to --lr (0: none; PyTorch's LinearLR).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// The share of the text, at its end, held out for validation (0: none).
    #[arg(long, default_value_t = 0.05)]
    validation: f64,
    /// Score the held-out text every this many updates (and at the end; 0: only at the end).
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Sampling temperature (lower: safer, higher: more varied).
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    /// Sample only from the k likeliest characters (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample only from the likeliest characters whose probability reaches p (nucleus
    /// sampling; 1: all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sample text every this many updates (0: only at the end).
    #[arg(long, default_value_t = 500)]
    sample_every: usize,
    /// Characters per sample.
    #[arg(long, default_value_t = 240)]
    sample_len: usize,
    /// Save a checkpoint every this many updates (and at the end).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Directory for the checkpoint and the loss curve.
    #[arg(long, default_value = "target/char_rnn")]
    out: PathBuf,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Freeze these tensors, by state-dict name, comma-separated (PyTorch's
    /// `requires_grad_(False)`; e.g. `embedding.weight,rnn.weight_ih_l0`): with --resume,
    /// fine-tunes the rest of a trained model. A frozen bottom layer costs no backward pass.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    freeze: Vec<String>,
    /// Also keep an exponential moving average of the weights with this decay (PyTorch's
    /// `AveragedModel` with `get_ema_multi_avg_fn`), scored beside them at each validation and
    /// kept in the checkpoint (0: none).
    #[arg(long, default_value_t = 0.0)]
    ema: f64,
    /// Threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seed of the initial weights and the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Samples `len` characters, starting from `prime`, drawing each with `sampler`.
fn sample(
    cfg: RnnConfig,
    params: &[f32],
    corpus: &CharCorpus,
    prime: &[u8],
    len: usize,
    sampler: &mut Sampler,
    rng: &mut StdRng,
) -> Result<String, RnnError> {
    let v = corpus.classes();
    let mut p = Predictor::new(cfg, params, 1)?;
    let mut out = Vec::with_capacity(len);
    // The prime is one run of steps, token ids or one-hot; a character the corpus lacks
    // reads as its first character.
    let ids: Vec<usize> = (prime.iter())
        .map(|&c| corpus.id_of(c).unwrap_or(0))
        .collect();
    let embedded = cfg.num_embeddings.is_some();
    let one_hot = |ids: &[usize]| {
        let mut x = vec![0.0f32; ids.len() * v];
        ids.iter()
            .enumerate()
            .for_each(|(t, &id)| x[t * v + id] = 1.0);
        x
    };
    let primed = if embedded {
        p.run_tokens(&ids, ids.len())?
    } else {
        p.run(&one_hot(&ids), ids.len())?
    };
    let mut logits = primed[(prime.len() - 1) * v..].to_vec();
    for _ in 0..len {
        let next = sampler.sample(&logits, rng)?;
        out.push(corpus.alphabet()[next]);
        logits = if embedded {
            p.step_tokens(&[next])?.to_vec()
        } else {
            p.step(&one_hot(&[next]))?.to_vec()
        };
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The held-out text as one batch: up to 64 sequences of up to 128 characters, cut from it
/// end to end, each read from a zero state.
struct Validation {
    x: Vec<f32>,
    tokens: Vec<usize>,
    labels: Vec<usize>,
    steps: usize,
    sequences: usize,
}

impl Validation {
    fn new(held_out: &CharCorpus, embedded: bool) -> Result<Self, String> {
        let steps = 128.min(held_out.len() - 1);
        let sequences = (held_out.len() / (steps + 1)).clamp(1, 64);
        let mut rows = CharStreams::new(held_out, sequences, steps).map_err(|e| e.to_string())?;
        let v = held_out.classes();
        let mut set = Self {
            x: vec![0.0; if embedded { 0 } else { steps * sequences * v }],
            tokens: vec![0; if embedded { steps * sequences } else { 0 }],
            labels: vec![0; steps * sequences],
            steps,
            sequences,
        };
        if embedded {
            rows.next_chunk_tokens(held_out, &mut set.tokens, &mut set.labels)
        } else {
            rows.next_chunk(held_out, &mut set.x, &mut set.labels)
        }
        .map_err(|e| e.to_string())?;
        Ok(set)
    }

    /// The model's mean cross-entropy on it (nats/char).
    fn loss(&self, trainer: &mut Trainer<f32>) -> Result<f32, String> {
        let target = Target::Classes(&self.labels);
        let batch = if self.tokens.is_empty() {
            Batch::new(self.steps, self.sequences, &self.x, target)
        } else {
            Batch::of_tokens(self.steps, self.sequences, &self.tokens, target)
        };
        trainer.evaluate(&batch).map_err(|e| e.to_string())
    }

    /// The loss of the average `weights` (swapped into the trainer for it, then back).
    fn loss_of(
        &self,
        weights: &mut WeightAverage<f32>,
        trainer: &mut Trainer<f32>,
    ) -> Result<f32, String> {
        weights
            .swap(&mut trainer.params)
            .map_err(|e| e.to_string())?;
        let loss = self.loss(trainer);
        weights
            .swap(&mut trainer.params)
            .map_err(|e| e.to_string())?;
        loss
    }
}

fn run(args: Args) -> Result<(), String> {
    let bytes = match &args.text {
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => CORPUS.concat().into_bytes(),
    };
    let corpus = CharCorpus::from_bytes(&bytes).map_err(|e| e.to_string())?;
    if !(0.0..0.5).contains(&args.validation) {
        return Err(format!(
            "--validation {}: it must be in [0, 0.5)",
            args.validation
        ));
    }
    if args.lr_schedule == ScheduleArg::Plateau && (args.validation == 0.0 || args.eval_every == 0)
    {
        return Err("--lr-schedule plateau needs --validation and --eval-every".into());
    }
    // The alphabet is the whole text's, so the held-out part reads as the model's input.
    let held_out_len = (corpus.len() as f64 * args.validation) as usize;
    let (train, held_out) = match held_out_len {
        0 => (corpus.clone(), None),
        n => {
            let (train, held_out) = corpus
                .split_at(corpus.len() - n)
                .map_err(|e| format!("--validation {}: {e}", args.validation))?;
            (train, Some(held_out))
        }
    };
    let (k1, b) = (args.chunk, args.batch);
    let k2 = args.k2.unwrap_or(k1);
    let mut streams = CharStreams::new(&train, b, k1).map_err(|e| e.to_string())?;
    let mut sampler = Sampler::new(args.temperature)
        .and_then(|s| match args.top_k {
            0 => Ok(s),
            k => s.with_top_k(k),
        })
        .and_then(|s| s.with_top_p(args.top_p))
        .map_err(|e| format!("--temperature, --top-k or --top-p: {e}"))?;
    let v = corpus.classes();
    let cfg = RnnConfig::new(v, args.hidden, v)
        .cell(args.cell.into())
        .layers(args.layers)
        .bias(!args.no_bias);
    let cfg = match args.embed {
        0 => cfg,
        width => RnnConfig {
            input_size: width,
            ..cfg.embedding(v)
        },
    };
    let cfg = match args.proj {
        0 => cfg,
        p => cfg.projection(p),
    };
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let trainer = Trainer::<f32>::new(
        cfg,
        LossSpec::every_step(LossKind::CrossEntropy),
        args.optimizer.kind(args.lr),
        args.seed,
    )
    .map_err(|e| e.to_string())?
    .with_clip(Clip::Norm(1.0))
    .with_threads(threads)
    .with_dropout(Dropout::new(args.dropout, args.seed).map_err(|e| e.to_string())?)
    .with_lr_schedule(lr_schedule(&args)?);
    let mut stream = Tbptt::new(trainer, k1, k2, b).map_err(|e| e.to_string())?;
    for name in &args.freeze {
        stream
            .trainer
            .freeze(name)
            .map_err(|e| format!("--freeze: {e}"))?;
    }
    let validation = held_out
        .as_ref()
        .map(|h| Validation::new(h, cfg.num_embeddings.is_some()))
        .transpose()?;
    let mut plateau = (args.lr_schedule == ScheduleArg::Plateau)
        .then(|| Plateau::new(args.lr, 0.5, 1))
        .transpose()
        .map_err(|e| format!("--lr: {e}"))?;
    let mut ema = (args.ema > 0.0)
        .then(|| WeightAverage::ema(args.ema))
        .transpose()
        .map_err(|e| format!("--ema: {e}"))?;
    let ckpt = args.out.join("char_rnn.ckpt.safetensors");
    let mut losses: Vec<f32> = Vec::new();
    // (update, validation loss) pairs.
    let mut scores: Vec<(f32, f32)> = Vec::new();
    if args.resume {
        let tr = &mut stream.trainer;
        let extras =
            io::load_checkpoint_with(&ckpt, &tr.config.clone(), &mut tr.params, &mut tr.optimizer)
                .map_err(|e| format!("cannot resume from {}: {e}", ckpt.display()))?;
        losses = extras.tensor("losses").map_err(|e| e.to_string())?.to_vec();
        streams
            .set_position(extras.value("pos").map_err(|e| e.to_string())?)
            .map_err(|e| format!("cannot resume from {}: {e}", ckpt.display()))?;
        stream
            .restore_snapshot(&extras.tensors)
            .map_err(|e| format!("cannot resume from {}: {e}", ckpt.display()))?;
        // Checkpoints from before validation hold no scores.
        if let Ok(pairs) = extras.tensor("val_losses") {
            scores = pairs.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        }
        if let Some(plateau) = &mut plateau {
            plateau
                .restore(&extras)
                .map_err(|e| format!("cannot resume a plateau schedule: {e}"))?;
            stream.trainer.set_base_lr(plateau.lr());
        }
        if let Some(ema) = &mut ema {
            ema.restore(&extras)
                .map_err(|e| format!("cannot resume the weights' EMA (--ema): {e}"))?;
        }
        println!("resumed from {} at update {}", ckpt.display(), losses.len());
    }
    let unigram = corpus.unigram_entropy();
    println!(
        "{} characters ({} held out), alphabet of {v}; {} {}x{}{} model, {} streams, TBPTT({k1}, {k2}){}, {threads} thread(s){}",
        corpus.len(),
        held_out_len,
        cfg.cell.as_str(),
        args.layers,
        args.hidden,
        match args.proj {
            0 => String::new(),
            p => format!(" (projected to {p})"),
        },
        b,
        match args.accumulate {
            1 => String::new(),
            n => format!(" x {n} chunks per update"),
        },
        match stream.trainer.frozen()[..] {
            [] => String::new(),
            ref names => format!("; frozen: {}", names.join(", ")),
        }
    );
    let save = |stream: &Tbptt<f32>,
                losses: &[f32],
                scores: &[(f32, f32)],
                (plateau, ema): (Option<&Plateau>, Option<&WeightAverage<f32>>),
                pos: usize|
     -> Result<(), String> {
        let pairs = scores.iter().flat_map(|&(u, l)| [u, l]).collect();
        let mut extras = Extras {
            tensors: [
                ("losses".to_string(), losses.to_vec()),
                ("val_losses".to_string(), pairs),
            ]
            .into_iter()
            .chain(stream.snapshot())
            .collect(),
            metadata: [("pos".to_string(), pos.to_string())].into(),
        };
        if let Some(plateau) = plateau {
            plateau.save(&mut extras);
        }
        if let Some(ema) = ema {
            ema.save(&mut extras);
        }
        std::fs::create_dir_all(&args.out)
            .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
        let tr = &stream.trainer;
        io::save_checkpoint_with(&ckpt, &tr.config, &tr.params, &tr.optimizer, &extras)
            .map_err(|e| e.to_string())
    };

    // Each sample draws from its own generator, seeded by the update it follows, so a resumed
    // run prints exactly the samples an uninterrupted one would.
    let rng_at =
        |update: usize| StdRng::seed_from_u64(args.seed ^ 0x5a3b1e ^ (update as u64) << 20);
    // Samples start after "//", a comment opener, so they read as the corpus's prose.
    let mut sample_now = |params: &[f32], rng: &mut StdRng| {
        sample(
            cfg,
            params,
            &corpus,
            b"//",
            args.sample_len,
            &mut sampler,
            rng,
        )
        .map_err(|e| e.to_string())
    };
    let embedded = cfg.num_embeddings.is_some();
    let (dense, ids) = if embedded {
        (0, k1 * b)
    } else {
        (k1 * b * v, 0)
    };
    let (mut x, mut tokens, mut y) = (vec![0.0f32; dense], vec![0usize; ids], vec![0; k1 * b]);
    let start_step = losses.len();
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_position(start_step.min(args.steps) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}").expect("template"),
    );
    let begin = Instant::now();
    let chunks = usize::from(args.accumulate);
    for step in start_step..args.steps {
        // One update: a step of one chunk, or the sum of several chunks' gradients.
        let mut stepped = None;
        for _ in 0..chunks {
            let wrapped = if embedded {
                streams.next_chunk_tokens(&train, &mut tokens, &mut y)
            } else {
                streams.next_chunk(&train, &mut x, &mut y)
            };
            if wrapped.map_err(|e| e.to_string())? {
                stream.reset();
            }
            let target = Target::Classes(&y);
            let result = match (chunks, embedded) {
                (1, true) => stream.step_tokens(&tokens, target).map(Some),
                (1, false) => stream.step(&x, target).map(Some),
                (_, true) => stream.accumulate_tokens(&tokens, target).map(|_| None),
                (_, false) => stream.accumulate(&x, target).map(|_| None),
            };
            stepped = result.map_err(|e| e.to_string())?;
        }
        let report = match stepped {
            Some(report) => report,
            None => stream.apply_accumulated().map_err(|e| e.to_string())?,
        };
        losses.push(report.loss);
        if let Some(ema) = &mut ema {
            ema.update(&stream.trainer.params)
                .map_err(|e| e.to_string())?;
        }
        let done = step + 1 - start_step;
        let tokens_per_s = (done * chunks * k1 * b) as f64 / begin.elapsed().as_secs_f64();
        bar.set_message(format!(
            "loss {:.3}  {:.0} tokens/s",
            report.loss, tokens_per_s
        ));
        bar.inc(1);
        if args.sample_every > 0 && (step + 1) % args.sample_every == 0 {
            let text = sample_now(&stream.trainer.params, &mut rng_at(step + 1))?;
            // Through the bar, which also prints when it is hidden (no terminal).
            bar.suspend(|| {
                println!(
                    "--- sample at update {} (loss {:.3}) ---\n//{text}\n",
                    step + 1,
                    report.loss
                )
            });
        }
        let last = step + 1 == args.steps;
        if let Some(set) = &validation
            && (last || (args.eval_every > 0 && (step + 1) % args.eval_every == 0))
        {
            let loss = set.loss(&mut stream.trainer)?;
            scores.push(((step + 1) as f32, loss));
            let averaged = match &mut ema {
                Some(ema) => {
                    let loss = set.loss_of(ema, &mut stream.trainer)?;
                    format!("; EMA weights {loss:.3}")
                }
                None => String::new(),
            };
            let lr = match &mut plateau {
                Some(p) => {
                    let lr = p.observe(loss as f64).map_err(|e| e.to_string())?;
                    stream.trainer.set_base_lr(lr);
                    format!(", next lr {lr:.2e}")
                }
                None => String::new(),
            };
            bar.suspend(|| {
                println!(
                    "update {}: validation loss {loss:.3} nats/char ({:.2} bits){averaged}{lr}",
                    step + 1,
                    loss / std::f32::consts::LN_2
                )
            });
        }
        if (step + 1) % args.checkpoint_every == 0 {
            save(
                &stream,
                &losses,
                &scores,
                (plateau.as_ref(), ema.as_ref()),
                streams.position(),
            )?;
        }
    }
    bar.finish_and_clear();
    save(
        &stream,
        &losses,
        &scores,
        (plateau.as_ref(), ema.as_ref()),
        streams.position(),
    )?;

    let curve: Vec<(f64, f64)> = smooth(&losses, 50)
        .into_iter()
        .enumerate()
        .map(|(i, l)| (i as f64 + 1.0, l))
        .collect();
    let svg = common::line_plot(
        &format!(
            "char_rnn: {} training and validation loss",
            cfg.cell.as_str()
        ),
        "update",
        "cross-entropy (nats/char)",
        &[
            common::Series {
                name: "loss (50-update mean)".into(),
                points: curve,
            },
            common::Series {
                name: "validation loss".into(),
                points: scores.iter().map(|&(u, l)| (u as f64, l as f64)).collect(),
            },
            common::Series {
                name: "unigram entropy".into(),
                points: vec![(1.0, unigram), (losses.len().max(2) as f64, unigram)],
            },
        ],
        false,
    );
    let plot = args.out.join("loss.svg");
    common::write(&plot, &svg)?;
    let text = sample_now(&stream.trainer.params, &mut rng_at(losses.len()))?;
    println!("--- final sample ---\n//{text}\n");
    let recent = &losses[losses.len().saturating_sub(50)..];
    let final_loss = recent.iter().map(|&l| l as f64).sum::<f64>() / recent.len().max(1) as f64;
    println!(
        "final loss {final_loss:.3} nats/char ({:.2} bits) after {} updates; unigram entropy {unigram:.3} nats/char ({:.2} bits): {}",
        final_loss / std::f64::consts::LN_2,
        losses.len(),
        unigram / std::f64::consts::LN_2,
        if final_loss < 0.8 * unigram {
            "clearly below, the model uses context"
        } else {
            "not yet clearly below; train longer (--resume --steps N)"
        }
    );
    if let Some(&(update, loss)) = scores.last() {
        println!(
            "validation loss {loss:.3} nats/char ({:.2} bits) on the held-out {held_out_len} characters at update {update}",
            loss / std::f32::consts::LN_2
        );
    }
    println!(
        "checkpoint {}, loss curve {}",
        ckpt.display(),
        plot.display()
    );
    Ok(())
}

/// Trailing means over `window` values.
fn smooth(v: &[f32], window: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(v.len());
    let mut sum = 0.0f64;
    for i in 0..v.len() {
        sum += v[i] as f64;
        if i >= window {
            sum -= v[i - window] as f64;
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}

fn main() -> ExitCode {
    common::exit_code(run(Args::parse()))
}
