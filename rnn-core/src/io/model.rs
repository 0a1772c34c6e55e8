//! A model as tensors: its parameters under PyTorch's names and its architecture in the
//! file's metadata (or, for PyTorch's own files, read from the shapes).

use std::collections::HashMap;
use std::path::Path;

use kernels::Float;
use safetensors::tensor::SafeTensors;

use super::file::{
    OwnedTensor, float_tensor, parse_with_metadata, read_bytes, tensor_view, write_tensors,
};
use crate::config::{Cell, Nonlinearity, RnnConfig};
use crate::error::{Result, RnnError, shape};
use crate::params::Layout;

/// The parameters of `layout` from a parsed file, every tensor checked by name and shape.
///
/// Like PyTorch's strict `load_state_dict`, a file whose `rnn.*` or `head.*` tensors include
/// one the layout has no place for is refused: dropping it would give a model that computes
/// something else than the file's (reverse-direction tensors without the first layer's, an
/// LSTM's projection, a layer beyond the metadata's count). Tensors of other names (inputs, the
/// optimizer state, a program's extras) are not the model's and are left alone.
///
/// # Errors
/// [`RnnError::Format`] for a missing, stray or wrong-dtype tensor or a NaN or infinity in
/// one, [`RnnError::ShapeMismatch`] for a misshapen one.
pub fn load_params<T: Float>(st: &SafeTensors<'_>, layout: &Layout) -> Result<Vec<T>> {
    let mut params = vec![T::zero(); layout.len];
    for t in &layout.tensors {
        let (values, got) = float_tensor::<T>(st, &t.name)?;
        if got != t.shape {
            return Err(shape(
                t.name.clone(),
                format!("{:?}", t.shape),
                format!("{got:?}"),
            ));
        }
        reject_non_finite(&t.name, &values)?;
        params[t.range.clone()].copy_from_slice(&values);
    }
    reject_stray_tensors(st, layout)?;
    Ok(params)
}

/// [`RnnError::Format`] naming tensor `name` and its first NaN or infinity: a file of a
/// diverged run would otherwise load, and every step after it would be rejected.
pub(super) fn reject_non_finite<T: Float>(name: &str, values: &[T]) -> Result<()> {
    crate::batch::finite("tensor", values).map_err(|e| match e {
        RnnError::NonFiniteInput { index, value, .. } => RnnError::Format(format!(
            "tensor {name:?} holds {value} at flat index {index}: it must be finite"
        )),
        other => other,
    })
}

/// [`RnnError::Format`] naming every `rnn.*` / `head.*` tensor that `layout` does not have,
/// with what the names say the file's model is.
fn reject_stray_tensors(st: &SafeTensors<'_>, layout: &Layout) -> Result<()> {
    let mut stray: Vec<String> = st
        .names()
        .into_iter()
        .filter(|name| {
            (name.starts_with("rnn.") || name.starts_with("head.")) && layout.find(name).is_none()
        })
        .map(|name| name.to_string())
        .collect();
    if stray.is_empty() {
        return Ok(());
    }
    stray.sort();
    let kind = if stray.iter().any(|n| n.ends_with("_reverse")) {
        ": reverse-direction tensors without rnn.weight_ih_l0_reverse (a bidirectional model \
         has both directions in every layer)"
    } else if stray.iter().any(|n| n.starts_with("rnn.weight_hr_l")) {
        ": an LSTM's projections (proj_size) in some layers only, or without \
         rnn.weight_hr_l0 (a projected model has one in every layer and direction)"
    } else if stray.iter().any(|n| n.starts_with("rnn.bias_")) {
        ": biases in a model without rnn.bias_ih_l0 (a model has every layer's biases or none)"
    } else {
        ""
    };
    Err(RnnError::Format(format!(
        "the file holds tensors this model has no place for, {}{kind}",
        stray.join(", ")
    )))
}

/// The model's tensors under their PyTorch names.
pub fn param_tensors<T: Float>(layout: &Layout, params: &[T]) -> Vec<(String, OwnedTensor)> {
    layout
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                OwnedTensor::float(t.shape.clone(), &params[t.range.clone()]),
            )
        })
        .collect()
}

/// The metadata describing `config` (`cell`, `layers`, `nonlinearity`, sizes, `learn_h0`,
/// `bias`, `bidirectional`, `num_embeddings`, `proj_size`; the last five for readers, since
/// loading reads them from the tensors present).
pub fn config_metadata(config: &RnnConfig) -> HashMap<String, String> {
    HashMap::from([
        ("cell".into(), config.cell.as_str().into()),
        ("layers".into(), config.num_layers.to_string()),
        ("nonlinearity".into(), config.nonlinearity.as_str().into()),
        ("input_size".into(), config.input_size.to_string()),
        ("hidden_size".into(), config.hidden_size.to_string()),
        ("output_size".into(), config.output_size.to_string()),
        ("learn_h0".into(), config.learn_h0.to_string()),
        ("bias".into(), config.bias.to_string()),
        ("bidirectional".into(), config.bidirectional.to_string()),
        (
            "num_embeddings".into(),
            config
                .num_embeddings
                .map_or("none".into(), |v| v.to_string()),
        ),
        (
            "proj_size".into(),
            config.proj_size.map_or("none".into(), |v| v.to_string()),
        ),
    ])
}

/// The architecture of a file: the cell, `layers` and `nonlinearity` from metadata when
/// present, otherwise from the tensors (PyTorch's own files carry no metadata): the cell from
/// the gate rows of `rnn.weight_hh_l0` (`[G·H, H]`: 1, 4 or 3 gates), the layer count from the
/// `rnn.weight_ih_l{k}` present, the sizes from the shapes; nonlinearity defaults to tanh.
/// A learned initial state, the recurrent biases and the reverse direction are there when
/// their tensors are (`rnn.h0`, `rnn.bias_ih_l0`: PyTorch's `bias=False` saves none;
/// `rnn.weight_ih_l0_reverse`: PyTorch's `bidirectional=True`; `embedding.weight`, a token
/// embedding `[V, I]`; `rnn.weight_hr_l0`, an LSTM's projection `[P, H]`, PyTorch's
/// `proj_size`).
///
/// # Errors
/// [`RnnError::Format`] if the metadata or the first layer's tensors are missing or bad, or
/// the metadata disagrees with the shapes.
pub fn infer_config(st: &SafeTensors<'_>, metadata: &HashMap<String, String>) -> Result<RnnConfig> {
    let bad = |e: RnnError| RnnError::Format(e.to_string());
    let dims = |name: &str| -> Result<Vec<usize>> { Ok(tensor_view(st, name)?.shape().to_vec()) };
    let (w_ih, w_hh, w_hy) = (
        dims("rnn.weight_ih_l0")?,
        dims("rnn.weight_hh_l0")?,
        dims("head.weight")?,
    );
    if w_ih.len() != 2 || w_hh.len() != 2 || w_hy.len() != 2 {
        return Err(RnnError::Format(
            "rnn.weight_ih_l0, rnn.weight_hh_l0 and head.weight must be 2-D".into(),
        ));
    }
    // An LSTM with projections (`proj_size`) has `weight_hr_l0` `[P, H]` and reads its
    // `P`-wide state: `weight_hh_l0` is `[4H, P]`.
    let proj = match st.tensor("rnn.weight_hr_l0") {
        Ok(w_hr) if w_hr.shape().len() == 2 => Some((w_hr.shape()[0], w_hr.shape()[1])),
        Ok(w_hr) => {
            return Err(RnnError::Format(format!(
                "rnn.weight_hr_l0 has shape {:?}: it must be [proj_size, H]",
                w_hr.shape()
            )));
        }
        Err(_) => None,
    };
    let hidden = proj.map_or(w_hh[1], |(_, h)| h);
    let gates = w_hh[0].checked_div(hidden);
    let cell = match metadata.get("cell") {
        Some(s) => Cell::parse(s).map_err(bad)?,
        None => match (gates, w_hh[0] % hidden.max(1)) {
            (Some(1), 0) => Cell::Rnn,
            (Some(4), 0) => Cell::Lstm,
            (Some(3), 0) => Cell::Gru,
            _ => {
                return Err(RnnError::Format(format!(
                    "rnn.weight_hh_l0 has shape {w_hh:?}: not [G*H, H] for 1 (rnn), 4 (lstm) or 3 (gru) gates"
                )));
            }
        },
    };
    if w_hh[0] != cell.gates() * hidden {
        return Err(RnnError::Format(format!(
            "rnn.weight_hh_l0 has shape {w_hh:?}, but a {} cell needs [{}*H, H]",
            cell.as_str(),
            cell.gates()
        )));
    }
    let present = (0..)
        .take_while(|k| st.tensor(&format!("rnn.weight_ih_l{k}")).is_ok())
        .count();
    let layers = match metadata.get("layers") {
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| RnnError::Format(format!("metadata layers = {s:?} is not a number")))?,
        None => present,
    };
    // Checked before anything is sized by it: a count no tensor backs is not believed.
    if layers > present {
        return Err(RnnError::Format(format!(
            "metadata layers = {layers}, but the file holds rnn.weight_ih_l0..{present}"
        )));
    }
    let nonlinearity = match metadata.get("nonlinearity") {
        Some(s) => Nonlinearity::parse(s).map_err(bad)?,
        None => Nonlinearity::Tanh,
    };
    let config = RnnConfig {
        cell,
        input_size: w_ih[1],
        hidden_size: hidden,
        num_layers: layers,
        output_size: w_hy[0],
        nonlinearity,
        learn_h0: st.tensor("rnn.h0").is_ok(),
        bias: st.tensor("rnn.bias_ih_l0").is_ok(),
        bidirectional: st.tensor("rnn.weight_ih_l0_reverse").is_ok(),
        // The table's rows; its width must be the first layer's input (checked on load).
        num_embeddings: match st.tensor("embedding.weight") {
            Ok(table) if table.shape().len() == 2 => Some(table.shape()[0]),
            Ok(table) => {
                return Err(RnnError::Format(format!(
                    "embedding.weight has shape {:?}: it must be [num_embeddings, I]",
                    table.shape()
                )));
            }
            Err(_) => None,
        },
        proj_size: proj.map(|(p, _)| p),
    };
    config.validate().map_err(bad)?;
    Ok(config)
}

/// Saves a model's weights (PyTorch names, the model's float type) to `path`, atomically.
///
/// # Errors
/// [`RnnError::Io`] / [`RnnError::Format`]; nothing is written for `params` that
/// [`load_weights`] would refuse: an invalid `config`, the wrong length
/// ([`RnnError::ShapeMismatch`]), a NaN or infinity ([`RnnError::NonFiniteInput`]).
pub fn save_weights<T: Float>(path: &Path, config: &RnnConfig, params: &[T]) -> Result<()> {
    let layout = Layout::of_params(config, params)?;
    write_tensors(
        path,
        &param_tensors(&layout, params),
        config_metadata(config),
    )
}

/// Loads a model's weights: the architecture from the file, every tensor checked.
///
/// # Errors
/// [`RnnError::Io`], [`RnnError::Format`], [`RnnError::ShapeMismatch`].
pub fn load_weights<T: Float>(path: &Path) -> Result<(RnnConfig, Vec<T>)> {
    weights_from_bytes(&read_bytes(path)?)
}

/// [`load_weights`] on a file's bytes.
///
/// # Errors
/// As [`load_weights`], without the I/O.
pub fn weights_from_bytes<T: Float>(bytes: &[u8]) -> Result<(RnnConfig, Vec<T>)> {
    let (st, metadata) = parse_with_metadata(bytes)?;
    let config = infer_config(&st, &metadata)?;
    let params = load_params(&st, &Layout::new(&config))?;
    Ok((config, params))
}
