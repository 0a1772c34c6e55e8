//! The `grad_dump` file contract: loss, outputs and every gradient of one batch described
//! by a safetensors file, for checking against PyTorch and for users porting a model.
//!
//! ```text
//! cargo run --release -p rnn-core --example grad_dump -- IN.safetensors OUT.safetensors
//! ```
//!
//! IN holds the parameters (`rnn.*`, `head.*`; a bidirectional model's `rnn.*_reverse` too),
//! `x` `[T,B,I]`, `h0` `[L·D,B,H]` (`D` = 2 for a bidirectional model), `target` (mse, l1,
//! huber, smooth_l1, bce: floats `[T,B,O]` or `[B,O]` when many-to-one; ce: int64 labels `[T,B]` or
//! `[B]`, where -100, PyTorch's default `ignore_index`, marks a position with no label),
//! optionally `lengths` int64 `[B]` and `sequence_weights` `[B]` (floats of `x`'s type, as
//! [`Batch::with_sequence_weights`] takes them), and metadata `cell` (rnn|lstm|gru), `layers`,
//! `nonlinearity` (tanh|relu), `loss` (mse|l1|huber|smooth_l1|bce|ce), `many_to_one` (true|false),
//! `reduction` (mean|sum). With `loss` = huber, optional metadata `huber_delta` (a positive
//! number, default 1.0 as PyTorch's) is the threshold; with `loss` = smooth_l1, optional
//! metadata `smooth_l1_beta` (a non-negative number, default 1.0 as PyTorch's) is `beta`;
//! with `loss` = ce, optional metadata `label_smoothing` (between 0 and 1, default 0 as PyTorch's)
//! smooths the labels, and an optional float tensor `class_weights` `[O]` weighs each class
//! (PyTorch's `weight`); with `loss` = bce, an optional float tensor `pos_weight` `[O]` weighs
//! each output's positive targets (PyTorch's `pos_weight`), and an optional `class_weights`
//! `[O]` rescales each output's terms (PyTorch's `weight`). An LSTM also reads `c0` `[L·D,B,H]`. Optional metadata `dropout` (p in `[0,
//! 1)`, default 0) and `dropout_seed` (an integer, default 0) drop between stacked layers as
//! [`Dropout::new(p, seed)`](crate::dropout::Dropout::new) does in one pass: element `j` of row
//! `t·B + b` of layer `k`'s output is kept when `kernels::dropout::DropMask::new(p, mix64(seed +
//! k))` keeps it (`scripts/torch_fixtures.py` writes the same masks in Python). A model without
//! `rnn.bias_*` tensors is one without recurrent biases (PyTorch's `bias=False`). An LSTM
//! with `rnn.weight_hr_l*` tensors `[P,H]` is one with projections (PyTorch's `proj_size`):
//! its `h0`, `out.h_last` and `grad.h0` are `[L·D,B,P]`, while `c0` stays `[L·D,B,H]`.
//! A model with an embedding (`embedding.weight` `[V, I]`) reads `x` as int64 token ids
//! `[T,B]` and writes no `grad.x` (the table's gradient is `grad.embedding.weight`).
//! It computes in the float type of `x` (F32 or F64; the embedding's for token ids) and
//! writes `out.loss` `[1]`, `out.y`,
//! `out.h_last` `[L·D,B,H]`, `grad.<parameter>` for every parameter, `grad.x` and `grad.h0`;
//! an LSTM also `out.c_last` `[L·D,B,H]` and `grad.c0`.

use std::collections::HashMap;
use std::path::Path;

use crate::batch::{Batch, IGNORED_LABEL, Target};
use crate::config::{LossKind, LossSpec, Reduction, RnnConfig};
use crate::dropout::Dropout;
use crate::error::{Result, RnnError};
use crate::io::{self, OwnedTensor};
use crate::network::{PassOptions, UnitSplit, forward_backward};
use crate::params::Layout;
use crate::workspace::Workspace;
use kernels::Float;
use safetensors::tensor::{Dtype, SafeTensors};

fn meta<'a>(m: &'a HashMap<String, String>, key: &str, default: &'a str) -> &'a str {
    m.get(key).map_or(default, String::as_str)
}

/// The number in metadata `key` (`default` when absent).
fn meta_number(m: &HashMap<String, String>, key: &str, default: &str) -> Result<f64> {
    let text = meta(m, key, default);
    text.parse()
        .map_err(|_| RnnError::Format(format!("metadata {key} = {text:?} is not a number")))
}

fn loss_spec(m: &HashMap<String, String>) -> Result<LossSpec> {
    let kind = match meta(m, "loss", "mse") {
        "mse" => LossKind::Mse,
        "ce" => {
            let smoothing = meta_number(m, "label_smoothing", "0.0")?;
            LossKind::cross_entropy(smoothing).map_err(|e| RnnError::Format(e.to_string()))?
        }
        "l1" => LossKind::L1,
        "bce" => LossKind::BceWithLogits,
        "huber" => {
            let delta = meta_number(m, "huber_delta", "1.0")?;
            LossKind::huber(delta).map_err(|e| RnnError::Format(e.to_string()))?
        }
        "smooth_l1" => {
            let beta = meta_number(m, "smooth_l1_beta", "1.0")?;
            LossKind::smooth_l1(beta).map_err(|e| RnnError::Format(e.to_string()))?
        }
        other => {
            return Err(RnnError::Format(format!(
                "metadata loss = {other:?}, expected mse, l1, huber, smooth_l1, bce or ce"
            )));
        }
    };
    let many_to_one = match meta(m, "many_to_one", "false") {
        "true" => true,
        "false" => false,
        other => {
            return Err(RnnError::Format(format!(
                "metadata many_to_one = {other:?}, expected true or false"
            )));
        }
    };
    let reduction = match meta(m, "reduction", "mean") {
        "mean" => Reduction::Mean,
        "sum" => Reduction::Sum,
        other => {
            return Err(RnnError::Format(format!(
                "metadata reduction = {other:?}, expected mean or sum"
            )));
        }
    };
    Ok(LossSpec {
        kind,
        reduction,
        many_to_one,
        class_weights: None,
        pos_weights: None,
    })
}

/// `spec` weighted by the optional tensor `class_weights` `[O]`.
fn with_class_weights(spec: LossSpec, st: &SafeTensors<'_>) -> Result<LossSpec> {
    let spec = match per_output(st, "class_weights")? {
        Some(weights) => spec.with_class_weights(&weights),
        None => Ok(spec),
    };
    let spec = spec.map_err(|e| RnnError::Format(e.to_string()))?;
    match per_output(st, "pos_weight")? {
        Some(weights) => spec
            .with_pos_weights(&weights)
            .map_err(|e| RnnError::Format(e.to_string())),
        None => Ok(spec),
    }
}

/// The optional float tensor `name` of shape `[O]`.
fn per_output(st: &SafeTensors<'_>, name: &str) -> Result<Option<Vec<f64>>> {
    if st.tensor(name).is_err() {
        return Ok(None);
    }
    let (weights, shape) = io::float_tensor::<f64>(st, name)?;
    if shape.len() != 1 {
        return Err(RnnError::Format(format!(
            "{name} must be [O], got shape {shape:?}"
        )));
    }
    Ok(Some(weights))
}

/// The dropout the metadata asks for (`dropout`, `dropout_seed`), `None` when it asks for
/// none.
fn dropout(m: &HashMap<String, String>) -> Result<Option<Dropout>> {
    if !m.contains_key("dropout") {
        return Ok(None);
    }
    let p = meta_number(m, "dropout", "0")?;
    let seed_text = meta(m, "dropout_seed", "0");
    let seed: u64 = seed_text.parse().map_err(|_| {
        RnnError::Format(format!(
            "metadata dropout_seed = {seed_text:?} is not a non-negative integer"
        ))
    })?;
    let dropout = Dropout::new(p, seed).map_err(|e| RnnError::Format(e.to_string()))?;
    Ok((p > 0.0).then_some(dropout))
}

/// PyTorch's default `ignore_index`, which `target` labels may hold.
const TORCH_IGNORE_INDEX: i64 = -100;

/// Class labels, with PyTorch's `ignore_index` (-100) read as [`IGNORED_LABEL`].
fn labels(v: Vec<i64>) -> Result<Vec<usize>> {
    v.into_iter()
        .map(|x| match x {
            TORCH_IGNORE_INDEX => Ok(IGNORED_LABEL),
            x => non_negative_value("target", x),
        })
        .collect()
}

fn non_negative(name: &str, v: Vec<i64>) -> Result<Vec<usize>> {
    v.into_iter().map(|x| non_negative_value(name, x)).collect()
}

fn non_negative_value(name: &str, x: i64) -> Result<usize> {
    usize::try_from(x).map_err(|_| RnnError::Format(format!("{name} holds a negative value {x}")))
}

/// Activations may take this many bytes per byte of input file (at least 1 GiB) before a
/// file is refused: a small file cannot make the process allocate without bound.
const MEMORY_PER_FILE_BYTE: usize = 64;

fn run<T: Float>(
    st: &SafeTensors<'_>,
    m: &HashMap<String, String>,
    file_len: usize,
    split: UnitSplit,
) -> Result<Vec<(String, OwnedTensor)>> {
    let config: RnnConfig = io::infer_config(st, m)?;
    let spec = with_class_weights(loss_spec(m)?, st)?;
    let dropout = dropout(m)?;
    let layout = Layout::new(&config);
    let params = io::load_params::<T>(st, &layout)?;
    // Token ids `[T, B]` for a model with an embedding, else floats `[T, B, I]`.
    let (x, tokens, x_shape) = match config.num_embeddings {
        Some(_) => {
            let (ids, shape) = io::int_tensor(st, "x")?;
            (Vec::new(), Some(non_negative("x", ids)?), shape)
        }
        None => {
            let (x, shape) = io::float_tensor::<T>(st, "x")?;
            (x, None, shape)
        }
    };
    let want_dims = if tokens.is_some() { 2 } else { 3 };
    if x_shape.len() != want_dims {
        let want = if tokens.is_some() {
            "[T, B] token ids"
        } else {
            "[T, B, I]"
        };
        return Err(RnnError::Format(format!(
            "x must be {want}, got shape {x_shape:?}"
        )));
    }
    if x_shape.contains(&0) {
        // A zero-sized x holds no bytes, so its other dimensions would be unchecked.
        return Err(RnnError::Format(format!(
            "x has shape {x_shape:?}: each dimension must be positive"
        )));
    }
    let (t, b) = (x_shape[0], x_shape[1]);
    let need = Workspace::<T>::bytes_for(&config, t, b, spec.many_to_one, split, dropout.is_some())
        + t * b * config.input_size * T::BYTES;
    let limit = (MEMORY_PER_FILE_BYTE * file_len).max(1 << 30);
    if need > limit {
        return Err(RnnError::Format(format!(
            "the batch would need {need} bytes of activations, over the {limit} allowed for a \
             {file_len}-byte file; call rnn_core::network directly for runs this large"
        )));
    }
    let (h0, _) = io::float_tensor::<T>(st, "h0")?;
    let c0 = if config.cell.has_cell_state() {
        Some(io::float_tensor::<T>(st, "c0")?.0)
    } else {
        None
    };
    let lengths = match st.tensor("lengths") {
        Ok(_) => Some(non_negative("lengths", io::int_tensor(st, "lengths")?.0)?),
        Err(_) => None,
    };
    let sequence_weights = match st.tensor("sequence_weights") {
        Ok(_) => Some(io::float_tensor::<T>(st, "sequence_weights")?.0),
        Err(_) => None,
    };
    let (values, classes);
    let target = if spec.kind.takes_values() {
        values = io::float_tensor::<T>(st, "target")?.0;
        Target::Values(&values[..])
    } else {
        classes = labels(io::int_tensor(st, "target")?.0)?;
        Target::Classes(&classes[..])
    };
    let batch = Batch {
        seq_len: t,
        batch: b,
        x: &x,
        tokens: tokens.as_deref(),
        target,
        lengths: lengths.as_deref(),
        h0: Some(&h0),
        c0: c0.as_deref(),
        score_from: 0,
        sequence_weights: sequence_weights.as_deref(),
    };
    let mut ws = Workspace::new();
    let mut grads = vec![T::zero(); layout.len];
    let opts = PassOptions {
        input_grad: true,
        split,
        dropout,
        ..Default::default()
    };
    let loss = forward_backward(
        &config, &layout, &params, &mut grads, &mut ws, &batch, &spec, opts,
    )?;

    // `s`: the state's width (`P` with projections); the cell state's is `H`.
    let (h, s, o, l) = (
        config.hidden_size,
        config.state_size(),
        config.output_size,
        config.passes(),
    );
    let y_shape = if spec.many_to_one {
        vec![b, o]
    } else {
        vec![t, b, o]
    };
    let lstm = config.cell.has_cell_state();
    let (mut h_last, mut c_last) = (vec![T::zero(); l * b * s], vec![T::zero(); l * b * h]);
    ws.states_at(
        &config,
        b,
        t,
        &mut h_last,
        if lstm { &mut c_last } else { &mut [] },
    );
    let mut out = vec![
        ("out.loss".to_string(), OwnedTensor::float(vec![1], &[loss])),
        ("out.y".to_string(), OwnedTensor::float(y_shape, &ws.y)),
        (
            "out.h_last".to_string(),
            OwnedTensor::float(vec![l, b, s], &h_last),
        ),
        (
            "grad.h0".to_string(),
            OwnedTensor::float(vec![l, b, s], &ws.dh0),
        ),
    ];
    if tokens.is_none() {
        // Token ids have no gradient; the table's is `grad.embedding.weight`.
        out.push((
            "grad.x".to_string(),
            OwnedTensor::float(x_shape.clone(), &ws.dx),
        ));
    }
    if lstm {
        out.push((
            "out.c_last".to_string(),
            OwnedTensor::float(vec![l, b, h], &c_last),
        ));
        out.push((
            "grad.c0".to_string(),
            OwnedTensor::float(vec![l, b, h], &ws.dc0),
        ));
    }
    for tensor in &layout.tensors {
        out.push((
            format!("grad.{}", tensor.name),
            OwnedTensor::float(tensor.shape.clone(), &grads[tensor.range.clone()]),
        ));
    }
    Ok(out)
}

/// Runs the file contract above on the bytes of an IN file and returns OUT's tensors.
///
/// # Errors
/// A typed error for anything malformed in the file, or invalid in the batch it describes.
pub fn grad_dump(bytes: &[u8]) -> Result<Vec<(String, OwnedTensor)>> {
    grad_dump_with(bytes, UnitSplit::Auto)
}

/// [`grad_dump`] with each step's hidden units split as `split` says (the engine's per-step
/// blocks; the results agree to rounding for any split).
///
/// # Errors
/// As [`grad_dump`].
pub fn grad_dump_with(bytes: &[u8], split: UnitSplit) -> Result<Vec<(String, OwnedTensor)>> {
    let (st, m) = io::parse_with_metadata(bytes)?;
    // Dense inputs set the float type; token ids leave it to the embedding table.
    let x = io::tensor_view(&st, "x")?;
    let float = match (x.dtype(), st.tensor("embedding.weight")) {
        (Dtype::I64 | Dtype::I32, Ok(table)) => ("embedding.weight", table.dtype()),
        (dtype, _) => ("x", dtype),
    };
    match float {
        (_, Dtype::F32) => run::<f32>(&st, &m, bytes.len(), split),
        (_, Dtype::F64) => run::<f64>(&st, &m, bytes.len(), split),
        (name, other) => Err(RnnError::Format(format!(
            "{name} has dtype {other:?}, expected F32 or F64"
        ))),
    }
}

/// Reads IN, runs [`grad_dump`], writes OUT atomically.
///
/// # Errors
/// As [`grad_dump`], plus I/O errors naming the file.
pub fn grad_dump_file(input: &Path, output: &Path) -> Result<()> {
    let tensors = grad_dump(&io::read_bytes(input)?)?;
    io::write_tensors(output, &tensors, HashMap::new())
}
