//! Weights and checkpoints in safetensors, with PyTorch's state-dict names.
//!
//! A model's file holds `rnn.weight_ih_l{k}`, `rnn.weight_hh_l{k}`, `rnn.bias_ih_l{k}`,
//! `rnn.bias_hh_l{k}`, `head.weight`, `head.bias` (the names of a PyTorch module with
//! submodules `rnn = nn.RNN(...)` and `head = nn.Linear(...)`), so
//! `safetensors.torch.save_file(model.state_dict(), path)` loads here and our files load into
//! PyTorch. F32 and F64 tensors are accepted and converted to the model's type.
//!
//! Files are written atomically: to a temporary file in the same folder, flushed to disk,
//! then renamed over the target (and the folder synced), so a crash leaves either the old or
//! the new file. Every file written here carries a CRC-32 of its tensors in its metadata; a
//! truncated or bit-flipped file is an error on load, never a silently different model.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kernels::Float;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::config::{Cell, Nonlinearity, RnnConfig};
use crate::error::{Result, RnnError, shape};
use crate::optim::Optimizer;
use crate::params::Layout;

/// Reads a whole file, naming it in the error.
///
/// # Errors
/// [`RnnError::Io`].
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| RnnError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses safetensors bytes (header and every offset are checked against the buffer).
///
/// # Errors
/// [`RnnError::Format`] for anything malformed.
pub fn parse(bytes: &[u8]) -> Result<SafeTensors<'_>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| RnnError::Format(format!("not a valid safetensors file: {e}")))
}

/// Parses safetensors bytes and returns the file's string metadata too (empty when it has
/// none). safetensors 0.7 keeps a parsed file's metadata private, so the header is read a
/// second time for it; headers are small.
///
/// # Errors
/// [`RnnError::Format`] for anything malformed.
pub fn parse_with_metadata(bytes: &[u8]) -> Result<(SafeTensors<'_>, HashMap<String, String>)> {
    let st = parse(bytes)?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| RnnError::Format(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if let Some(want) = metadata.get(CHECKSUM_KEY) {
        let got = format!(
            "{:08x}",
            checksum(st.tensors().iter().map(|(n, v)| (n.as_str(), v)))
        );
        if *want != got {
            return Err(RnnError::Format(format!(
                "checksum mismatch (file says {want}, contents give {got}): the file is corrupt"
            )));
        }
    }
    Ok((st, metadata))
}

/// The metadata key of the CRC-32 that [`write_tensors`] stores (files from elsewhere, such
/// as PyTorch's, have none and are not checked).
pub const CHECKSUM_KEY: &str = "checksum.crc32";

/// CRC-32 over every tensor's name, dtype, shape and bytes, in name order.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a TensorView<'a>)>) -> u32 {
    let mut all: Vec<_> = tensors.collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = crc32fast::Hasher::new();
    for (name, view) in all {
        h.update(name.as_bytes());
        h.update(format!("{:?}", view.dtype()).as_bytes());
        for d in view.shape() {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(view.data());
    }
    h.finalize()
}

/// `data` as consecutive little-endian values of `N` bytes, each turned into a `V` by
/// `value`. (safetensors has checked that the data is a whole number of elements.)
fn decode<const N: usize, V>(data: &[u8], value: impl Fn([u8; N]) -> V) -> Vec<V> {
    data.chunks_exact(N)
        .map(|c| value(c.try_into().expect("chunks_exact gives N bytes")))
        .collect()
}

/// Tensor `name` as floats of type `T`, with its shape: from F32 or F64, or from BF16 or F16
/// (a model PyTorch saved in half precision), whose every value `T` holds exactly.
///
/// # Errors
/// [`RnnError::Format`] if it is missing or not a float tensor.
pub fn float_tensor<T: Float>(st: &SafeTensors<'_>, name: &str) -> Result<(Vec<T>, Vec<usize>)> {
    let view = st
        .tensor(name)
        .map_err(|_| RnnError::Format(format!("missing tensor {name:?}")))?;
    let data = view.data();
    let values = match view.dtype() {
        Dtype::F32 => decode(data, |b| T::of(f64::from(f32::from_le_bytes(b)))),
        Dtype::F64 => decode(data, |b| T::of(f64::from_le_bytes(b))),
        Dtype::BF16 => decode(data, |b| T::of(half::bf16::from_le_bytes(b).to_f64())),
        Dtype::F16 => decode(data, |b| T::of(half::f16::from_le_bytes(b).to_f64())),
        other => {
            return Err(RnnError::Format(format!(
                "tensor {name:?} has dtype {other:?}, expected F32, F64, BF16 or F16"
            )));
        }
    };
    Ok((values, view.shape().to_vec()))
}

/// Tensor `name` as integers (from I64 or I32), with its shape.
///
/// # Errors
/// [`RnnError::Format`] if it is missing or not an integer tensor.
pub fn int_tensor(st: &SafeTensors<'_>, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
    let view = st
        .tensor(name)
        .map_err(|_| RnnError::Format(format!("missing tensor {name:?}")))?;
    let data = view.data();
    let values = match view.dtype() {
        Dtype::I64 => decode(data, i64::from_le_bytes),
        Dtype::I32 => decode(data, |b| i64::from(i32::from_le_bytes(b))),
        other => {
            return Err(RnnError::Format(format!(
                "tensor {name:?} has dtype {other:?}, expected I64 or I32"
            )));
        }
    };
    Ok((values, view.shape().to_vec()))
}

/// The parameters of `layout` from a parsed file, every tensor checked by name and shape.
///
/// Like PyTorch's strict `load_state_dict`, a file whose `rnn.*` or `head.*` tensors include
/// one the layout has no place for is refused: dropping it would give a model that computes
/// something else than the file's (a bidirectional model's reverse direction, an LSTM's
/// projection, a layer beyond the metadata's count). Tensors of other names (inputs, the
/// optimizer state, a program's extras) are not the model's and are left alone.
///
/// # Errors
/// [`RnnError::Format`] for a missing, stray or wrong-dtype tensor or a NaN or infinity in
/// one, [`RnnError::ShapeMismatch`] for a misshapen one.
pub fn load_params<T: Float>(st: &SafeTensors<'_>, layout: &Layout) -> Result<Vec<T>> {
    let mut params = vec![T::zero(); layout.len];
    for t in &layout.tensors {
        if t.name.starts_with("rnn.bias_") && st.tensor(&t.name).is_err() {
            return Err(RnnError::Format(format!(
                "missing tensor {:?}: a model without biases (bias=False) is not supported",
                t.name
            )));
        }
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
fn reject_non_finite<T: Float>(name: &str, values: &[T]) -> Result<()> {
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
        ": a bidirectional model's reverse direction (bidirectional layers are not supported)"
    } else if stray.iter().any(|n| n.starts_with("rnn.weight_hr_l")) {
        ": an LSTM's projection (proj_size is not supported)"
    } else {
        ""
    };
    Err(RnnError::Format(format!(
        "the file holds tensors this model has no place for, {}{kind}",
        stray.join(", ")
    )))
}

/// A tensor to write: dtype, shape and little-endian bytes.
#[derive(Clone, Debug)]
pub struct OwnedTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian data.
    pub bytes: Vec<u8>,
}

impl OwnedTensor {
    /// A float tensor, stored as `T`'s own dtype.
    pub fn float<T: Float>(shape: Vec<usize>, values: &[T]) -> Self {
        let dtype = if T::BYTES == 4 {
            Dtype::F32
        } else {
            Dtype::F64
        };
        Self {
            dtype,
            shape,
            bytes: bytemuck::cast_slice(values).to_vec(),
        }
    }
}

/// Serializes named tensors with metadata to `path`, atomically.
///
/// # Errors
/// [`RnnError::Io`] if the file cannot be written, [`RnnError::Format`] if serialization fails
/// or two tensors share a name.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, OwnedTensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    // safetensors indexes tensors by name and panics on a repeated one while serializing.
    let mut names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(RnnError::Format(format!(
            "two tensors are named {:?}",
            pair[0]
        )));
    }
    let views = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                    .map_err(|e| RnnError::Format(e.to_string()))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut metadata = metadata;
    metadata.insert(
        CHECKSUM_KEY.into(),
        format!(
            "{:08x}",
            checksum(views.iter().map(|(n, v)| (n.as_str(), v)))
        ),
    );
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| RnnError::Format(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
///
/// # Errors
/// [`RnnError::Io`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| RnnError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("not a file path")))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself is durable only once the directory is synced (best effort: not
        // every platform can open a directory).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
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

/// The metadata describing `config` (`cell`, `layers`, `nonlinearity`, sizes).
pub fn config_metadata(config: &RnnConfig) -> HashMap<String, String> {
    HashMap::from([
        ("cell".into(), config.cell.as_str().into()),
        ("layers".into(), config.num_layers.to_string()),
        ("nonlinearity".into(), config.nonlinearity.as_str().into()),
        ("input_size".into(), config.input_size.to_string()),
        ("hidden_size".into(), config.hidden_size.to_string()),
        ("output_size".into(), config.output_size.to_string()),
        ("learn_h0".into(), config.learn_h0.to_string()),
    ])
}

/// The architecture of a file: the cell, `layers` and `nonlinearity` from metadata when
/// present, otherwise from the tensors (PyTorch's own files carry no metadata): the cell from
/// the gate rows of `rnn.weight_hh_l0` (`[G·H, H]`: 1, 4 or 3 gates), the layer count from the
/// `rnn.weight_ih_l{k}` present, the sizes from the shapes; nonlinearity defaults to tanh.
///
/// # Errors
/// [`RnnError::Format`] if the metadata or the first layer's tensors are missing or bad, or
/// the metadata disagrees with the shapes.
pub fn infer_config(st: &SafeTensors<'_>, metadata: &HashMap<String, String>) -> Result<RnnConfig> {
    let bad = |e: RnnError| RnnError::Format(e.to_string());
    let dims = |name: &str| -> Result<Vec<usize>> {
        let v = st
            .tensor(name)
            .map_err(|_| RnnError::Format(format!("missing tensor {name:?}")))?;
        Ok(v.shape().to_vec())
    };
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
    let hidden = w_hh[1];
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

/// Saves weights, optimizer state (`optim.state1`, `optim.state2`) and its step count.
///
/// # Errors
/// [`RnnError::Io`] / [`RnnError::Format`].
pub fn save_checkpoint<T: Float>(
    path: &Path,
    config: &RnnConfig,
    params: &[T],
    optimizer: &Optimizer<T>,
) -> Result<()> {
    save_checkpoint_with(path, config, params, optimizer, &Extras::default())
}

/// What a training program keeps in its checkpoint beside the model and optimizer: data
/// position, stream states, RNG state. Stored as tensors and metadata under `extra.`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extras<T> {
    /// Named float tensors (1-D).
    pub tensors: Vec<(String, Vec<T>)>,
    /// Named strings.
    pub metadata: HashMap<String, String>,
}

impl<T: Float> Extras<T> {
    /// The tensor called `name`.
    ///
    /// # Errors
    /// [`RnnError::Format`] naming it when absent.
    pub fn tensor(&self, name: &str) -> Result<&[T]> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
            .ok_or_else(|| RnnError::Format(format!("checkpoint has no extra tensor {name:?}")))
    }

    /// The metadata entry `name`, parsed.
    ///
    /// # Errors
    /// [`RnnError::Format`] naming it when absent or unparsable.
    pub fn value<V: std::str::FromStr>(&self, name: &str) -> Result<V> {
        self.metadata
            .get(name)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                RnnError::Format(format!("checkpoint extra {name:?} is missing or malformed"))
            })
    }
}

/// [`save_checkpoint`] with the program's own state in the same file, so both are written
/// (atomically) together.
///
/// # Errors
/// [`RnnError::Io`] / [`RnnError::Format`]; nothing is written for a model or optimizer
/// state that [`load_checkpoint`] would refuse: as [`save_weights`], and optimizer state
/// neither empty nor one value per parameter ([`RnnError::ShapeMismatch`]) or not finite
/// ([`RnnError::NonFiniteInput`]).
pub fn save_checkpoint_with<T: Float>(
    path: &Path,
    config: &RnnConfig,
    params: &[T],
    optimizer: &Optimizer<T>,
    extras: &Extras<T>,
) -> Result<()> {
    let layout = Layout::of_params(config, params)?;
    for (name, state) in [
        ("optim.state1", &optimizer.state1),
        ("optim.state2", &optimizer.state2),
    ] {
        if !state.is_empty() && state.len() != layout.len {
            return Err(shape(name, format!("0 or {}", layout.len), state.len()));
        }
        crate::batch::finite("optimizer state", state)?;
    }
    let mut tensors = param_tensors(&layout, params);
    tensors.push((
        "optim.state1".into(),
        OwnedTensor::float(vec![optimizer.state1.len()], &optimizer.state1),
    ));
    tensors.push((
        "optim.state2".into(),
        OwnedTensor::float(vec![optimizer.state2.len()], &optimizer.state2),
    ));
    for (name, values) in &extras.tensors {
        tensors.push((
            format!("extra.{name}"),
            OwnedTensor::float(vec![values.len()], values),
        ));
    }
    let mut meta = config_metadata(config);
    meta.insert("optim.steps".into(), optimizer.steps.to_string());
    for (k, v) in &extras.metadata {
        meta.insert(format!("extra.{k}"), v.clone());
    }
    write_tensors(path, &tensors, meta)
}

/// Loads a checkpoint into `params` and `optimizer` (whose kind and hyper-parameters stay
/// as given); the file's architecture must equal `config`.
///
/// # Errors
/// [`RnnError::Io`], [`RnnError::Format`] (including an architecture mismatch),
/// [`RnnError::ShapeMismatch`].
pub fn load_checkpoint<T: Float>(
    path: &Path,
    config: &RnnConfig,
    params: &mut Vec<T>,
    optimizer: &mut Optimizer<T>,
) -> Result<()> {
    load_checkpoint_with(path, config, params, optimizer).map(|_| ())
}

/// [`load_checkpoint`], also returning the program's [`Extras`]. Nothing is changed unless
/// the whole file is good.
///
/// # Errors
/// As [`load_checkpoint`].
pub fn load_checkpoint_with<T: Float>(
    path: &Path,
    config: &RnnConfig,
    params: &mut Vec<T>,
    optimizer: &mut Optimizer<T>,
) -> Result<Extras<T>> {
    checkpoint_from_bytes(&read_bytes(path)?, config, params, optimizer)
}

/// [`load_checkpoint_with`] on a file's bytes.
///
/// # Errors
/// As [`load_checkpoint`], without the I/O.
pub fn checkpoint_from_bytes<T: Float>(
    bytes: &[u8],
    config: &RnnConfig,
    params: &mut Vec<T>,
    optimizer: &mut Optimizer<T>,
) -> Result<Extras<T>> {
    let (st, metadata) = parse_with_metadata(bytes)?;
    let found = infer_config(&st, &metadata)?;
    if found != *config {
        return Err(RnnError::Format(format!(
            "checkpoint is for {found:?}, the model is {config:?}"
        )));
    }
    let new_params = load_params(&st, &Layout::new(config))?;
    let (s1, _) = float_tensor::<T>(&st, "optim.state1")?;
    let (s2, _) = float_tensor::<T>(&st, "optim.state2")?;
    reject_non_finite("optim.state1", &s1)?;
    reject_non_finite("optim.state2", &s2)?;
    if s1.len() != optimizer.state1.len() || s2.len() != optimizer.state2.len() {
        return Err(RnnError::Format(format!(
            "optimizer state of {}+{} values does not fit this optimizer ({}+{})",
            s1.len(),
            s2.len(),
            optimizer.state1.len(),
            optimizer.state2.len()
        )));
    }
    let steps = metadata
        .get("optim.steps")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            RnnError::Format("metadata optim.steps is missing or not a number".into())
        })?;
    let mut extras = Extras::default();
    for name in st.names() {
        if let Some(short) = name.strip_prefix("extra.") {
            extras
                .tensors
                .push((short.to_string(), float_tensor::<T>(&st, name)?.0));
        }
    }
    extras.tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in &metadata {
        if let Some(short) = k.strip_prefix("extra.") {
            extras.metadata.insert(short.to_string(), v.clone());
        }
    }
    *params = new_params;
    optimizer.state1 = s1;
    optimizer.state2 = s2;
    optimizer.steps = steps;
    Ok(extras)
}
