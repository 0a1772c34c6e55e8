//! Sequence to sequence: an encoder reads a string of digits, its final state starts a
//! decoder, and the decoder writes the digits back reversed (Sutskever et al. 2014's setting
//! on a toy task). The two models train as one: the decoder's `dL/dh0`
//! (`Trainer::initial_state_grads`) comes back to the encoder as the gradient of its final
//! state (`Trainer::grads_from_final_states`). Strings of different lengths come in
//! shuffled batches of like lengths (`loader::Loader`); the decoder reads the right answer's
//! previous digit in training (teacher forcing) and its own at test time, greedily, a step at
//! a time (`Predictor`, started from the encoder's state).
//!
//! ```text
//! cargo run --release --example seq2seq
//! cargo run --release --example seq2seq -- --cell gru --max-len 12 --epochs 30
//! cargo run --release --example seq2seq -- --bidirectional
//! ```
//!
//! By default (LSTMs of 128 units, strings of 3-8 digits, 20 epochs of 8192 strings, about
//! 7 s on one core of the AMD kind) it reversed 99.2 % of 512 held-out strings without a
//! mistake (99.7 % of their digits), from 0 % before training; GRUs reached 93.6 %, and a
//! bidirectional LSTM encoder with a two-layer decoder 96.1 % (16 s).

mod common;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::config::Cell;
use rnn_core::loader::{Loader, pad_batch};
use rnn_core::padding::Padded;
use rnn_core::predict::Predictor;
use rnn_core::prelude::*;
use rnn_core::sampling::Sampler;

/// Digits, and the decoder's start token.
const DIGITS: usize = 10;
const START: usize = DIGITS;

/// Train an encoder-decoder to reverse strings of digits.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The recurrent cell of both models (rnn, lstm, gru).
    #[arg(long, default_value = "lstm")]
    cell: String,
    /// Hidden units of each model.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// A bidirectional encoder (its two final states start a decoder of two layers).
    #[arg(long)]
    bidirectional: bool,
    /// Width of the digit embeddings.
    #[arg(long, default_value_t = 16)]
    embed: usize,
    /// Shortest string.
    #[arg(long, default_value_t = 3)]
    min_len: usize,
    /// Longest string.
    #[arg(long, default_value_t = 8)]
    max_len: usize,
    /// Training strings.
    #[arg(long, default_value_t = 8192)]
    train: usize,
    /// Held-out strings, decoded greedily after each epoch.
    #[arg(long, default_value_t = 512)]
    test: usize,
    /// Strings per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Passes over the training strings.
    #[arg(long, default_value_t = 20)]
    epochs: u64,
    /// Adam learning rate of both models.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Seed of weights, data and batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The encoder and the decoder.
struct Models {
    encoder: Trainer<f32>,
    decoder: Trainer<f32>,
}

impl Models {
    fn new(args: &Args, cell: Cell) -> Result<Self> {
        let config = |vocabulary, outputs| {
            let cfg = RnnConfig::new(args.embed, args.hidden, outputs).embedding(vocabulary);
            RnnConfig { cell, ..cfg }
        };
        let adam = OptimizerKind::adam(args.lr);
        // The encoder's head takes no part: frozen, it gets no update (and no work).
        let unused = LossSpec::every_step(LossKind::Mse);
        let mut source = config(DIGITS, 1);
        source.bidirectional = args.bidirectional;
        let mut encoder = Trainer::new(source, unused, adam, args.seed)?.with_clip(Clip::Norm(1.0));
        encoder.freeze_where(|name| name.starts_with("head."));
        let spec = LossSpec::every_step(LossKind::CrossEntropy);
        // One decoder layer per encoder pass: a bidirectional encoder's two directions'
        // final states start two layers.
        let reply = config(DIGITS + 1, DIGITS).layers(source.passes());
        let decoder = Trainer::new(reply, spec, adam, args.seed + 1)?
            .with_clip(Clip::Norm(1.0))
            .with_input_grads(); // for dL/dh0: the encoder's final-state gradient
        Ok(Self { encoder, decoder })
    }

    /// One update of both models on the strings `chosen` of `strings`; the decoder's loss.
    fn step(&mut self, strings: &[Vec<usize>], chosen: &[usize]) -> Result<f32> {
        let source = pad_batch(strings, chosen, 1, 0)?;
        let encoded = token_batch(&source, Target::None);
        let (h_n, c_n) = self.encoder.final_states(&encoded)?;
        let (h_n, c_n) = (h_n.to_vec(), c_n.to_vec());
        // The decoder reads the start token, then the answer's digits one step late.
        let answers: Vec<Vec<usize>> = chosen.iter().map(|&i| reversed(&strings[i])).collect();
        let inputs: Vec<Vec<usize>> = answers.iter().map(|a| teacher_forced(a)).collect();
        let all: Vec<usize> = (0..chosen.len()).collect();
        let inputs = pad_batch(&inputs, &all, 1, START)?;
        let targets = pad_batch(&answers, &all, 1, IGNORED_LABEL)?;
        let reply = token_batch(&inputs, Target::Classes(&targets.values));
        let reply = Batch {
            h0: Some(&h_n),
            c0: (!c_n.is_empty()).then_some(&c_n[..]),
            ..reply
        };
        let loss = self.decoder.loss_and_grads(&reply)?;
        let (dh_n, dc_n) = self.decoder.initial_state_grads();
        self.encoder.grads_from_final_states(&encoded, dh_n, dc_n)?;
        self.encoder.update(loss)?;
        self.decoder.update(loss)?;
        Ok(loss)
    }

    /// Each string of `strings` reversed by greedy decoding: the encoder's final state starts
    /// the decoder, which reads its own previous digit, as many steps as the string is long.
    fn reverse(&mut self, strings: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let all: Vec<usize> = (0..strings.len()).collect();
        let source = pad_batch(strings, &all, 1, 0)?;
        let b = strings.len();
        let (h_n, c_n) = self
            .encoder
            .eval_final_states(&token_batch(&source, Target::None))?;
        let mut predictor = Predictor::new(self.decoder.config, &self.decoder.params[..], b)?;
        predictor.set_state(h_n, c_n)?;
        // Greedy: each step's most likely digit (the sampler draws nothing from `rng`).
        let (mut greedy, mut rng) = (Sampler::greedy(), StdRng::seed_from_u64(0));
        let mut previous = vec![START; b];
        let mut written = vec![Vec::new(); b];
        for _ in 0..source.seq_len {
            let logits = predictor.step_tokens(&previous)?;
            for (s, row) in logits.chunks_exact(DIGITS).enumerate() {
                previous[s] = greedy.sample(row, &mut rng)?;
                if written[s].len() < strings[s].len() {
                    written[s].push(previous[s]);
                }
            }
        }
        Ok(written)
    }
}

fn reversed(digits: &[usize]) -> Vec<usize> {
    digits.iter().rev().copied().collect()
}

/// The decoder's inputs under teacher forcing: the start token, then the answer but its last.
fn teacher_forced(answer: &[usize]) -> Vec<usize> {
    std::iter::once(START)
        .chain(answer[..answer.len() - 1].iter().copied())
        .collect()
}

/// A batch of padded strings of tokens, with their lengths.
fn token_batch<'a>(padded: &'a Padded<usize>, target: Target<'a, f32>) -> Batch<'a, f32> {
    let batch = Batch::of_tokens(padded.seq_len, padded.lengths.len(), &padded.values, target);
    Batch {
        lengths: Some(&padded.lengths),
        ..batch
    }
}

/// The share of strings reversed without a mistake, and of digits right.
fn score(strings: &[Vec<usize>], written: &[Vec<usize>]) -> (f64, f64) {
    let (mut exact, mut right, mut digits) = (0, 0, 0);
    for (string, written) in strings.iter().zip(written) {
        let answer = reversed(string);
        exact += usize::from(&answer == written);
        right += answer.iter().zip(written).filter(|(a, w)| a == w).count();
        digits += answer.len();
    }
    (
        exact as f64 / strings.len() as f64,
        right as f64 / digits as f64,
    )
}

fn strings(rng: &mut StdRng, n: usize, min: usize, max: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|_| {
            (0..rng.random_range(min..=max))
                .map(|_| rng.random_range(0..DIGITS))
                .collect()
        })
        .collect()
}

fn show(digits: &[usize]) -> String {
    digits
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("")
}

fn run(args: &Args) -> Result<(), String> {
    let cell = match args.cell.as_str() {
        "rnn" => Cell::Rnn,
        "lstm" => Cell::Lstm,
        "gru" => Cell::Gru,
        other => return Err(format!("unknown cell {other:?} (rnn, lstm, gru)")),
    };
    if args.min_len == 0 || args.min_len > args.max_len {
        return Err(format!(
            "lengths {}..={} are not a range of positive lengths",
            args.min_len, args.max_len
        ));
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let train = strings(&mut rng, args.train, args.min_len, args.max_len);
    let test = strings(&mut rng, args.test, args.min_len, args.max_len);
    let mut models = Models::new(args, cell).map_err(|e| e.to_string())?;
    let lengths: Vec<usize> = train.iter().map(Vec::len).collect();
    let loader = Loader::new(&lengths, args.batch)
        .and_then(|l| l.shuffled(args.seed).bucketed(8))
        .map_err(|e| e.to_string())?;
    println!(
        "{} {}encoder and decoder, H = {}, strings of {}-{} digits: {} to train on, {} held out",
        args.cell,
        if args.bidirectional {
            "bidirectional "
        } else {
            ""
        },
        args.hidden,
        args.min_len,
        args.max_len,
        args.train,
        args.test
    );
    let (exact, digits) = score(&test, &models.reverse(&test).map_err(|e| e.to_string())?);
    println!(
        "before training: {:.1} % reversed exactly, {:.1} % of digits right",
        100.0 * exact,
        100.0 * digits
    );
    let start = Instant::now();
    for epoch in 0..args.epochs {
        let mut losses = Vec::new();
        for chosen in loader.epoch(epoch) {
            losses.push(models.step(&train, &chosen).map_err(|e| e.to_string())?);
        }
        let mean = losses.iter().sum::<f32>() / losses.len().max(1) as f32;
        let (exact, digits) = score(&test, &models.reverse(&test).map_err(|e| e.to_string())?);
        println!(
            "epoch {:>2}: training loss {mean:.3}, held out {:.1} % reversed exactly, {:.1} % of digits right ({:.1} s)",
            epoch + 1,
            100.0 * exact,
            100.0 * digits,
            start.elapsed().as_secs_f64()
        );
    }
    let written = models
        .reverse(&test[..3.min(test.len())])
        .map_err(|e| e.to_string())?;
    for (string, written) in test.iter().zip(&written) {
        println!("  {} -> {}", show(string), show(written));
    }
    Ok(())
}

fn main() -> ExitCode {
    common::exit_code(run(&Args::parse()))
}
