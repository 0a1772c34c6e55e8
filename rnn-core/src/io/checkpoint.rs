//! Checkpoints: a model's file plus the optimizer's state and step count, and whatever a
//! training program keeps beside them ([`Extras`]), written and loaded together.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use kernels::Float;

use super::file::{OwnedTensor, float_tensor, parse_with_metadata, read_bytes, write_tensors};
use super::model::{config_metadata, infer_config, load_params, param_tensors, reject_non_finite};
use crate::config::RnnConfig;
use crate::error::{Result, RnnError, shape};
use crate::optim::Optimizer;
use crate::params::Layout;

/// Saves weights, optimizer state (`optim.state1`, `optim.state2`, `optim.state3`: see
/// [`Optimizer`]'s fields), its family (`optim.kind`), its step count (`optim.steps`), the
/// update its state started at (`optim.state_start`, [`Optimizer::state_start`]) and, for
/// each tensor that sat out updates while frozen, how many (`optim.skipped`:
/// `name=count,...`, [`Optimizer::updates_seen`]).
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

/// The optimizer's state buffers in a checkpoint, [`Optimizer::state1`] to `state3`.
const STATE_NAMES: [&str; 3] = ["optim.state1", "optim.state2", "optim.state3"];

/// [`RnnError::Format`] if state buffer `slot` of `kind` holds sums or averages of squares
/// (Adam's `exp_avg_sq`, RMSprop's `square_avg`, Adagrad's `sum`) and one is negative: no
/// update makes one, and the next update would take its square root.
fn reject_negative_squares<T: Float>(
    kind: &crate::optim::OptimizerKind<T>,
    slot: usize,
    state: &[T],
) -> Result<()> {
    match kind.negative_square(slot, state) {
        None => Ok(()),
        Some((i, v)) => Err(RnnError::Format(format!(
            "{} holds {} at flat index {i}: this {} optimizer's {} is a sum of squares, never \
             negative",
            STATE_NAMES[slot],
            v.f64(),
            kind.family(),
            kind.state_names()[slot].unwrap_or("state")
        ))),
    }
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
/// state that [`load_checkpoint`] would refuse: as [`save_weights`](super::save_weights),
/// and optimizer state neither empty nor one value per parameter
/// ([`RnnError::ShapeMismatch`]) or not finite ([`RnnError::NonFiniteInput`]).
pub fn save_checkpoint_with<T: Float>(
    path: &Path,
    config: &RnnConfig,
    params: &[T],
    optimizer: &Optimizer<T>,
    extras: &Extras<T>,
) -> Result<()> {
    let layout = Layout::of_params(config, params)?;
    let mut tensors = param_tensors(&layout, params);
    // A buffer the optimizer's kind does not use (one a former kind left) is not saved; after
    // a change to another family, none is, and no update: the state the next update starts.
    let current = optimizer.state_is_current();
    let buffers = [&optimizer.state1, &optimizer.state2, &optimizer.state3];
    let kind = &optimizer.kind;
    for (slot, (name, state)) in STATE_NAMES.into_iter().zip(buffers).enumerate() {
        let state: &[T] = if kind.uses_state()[slot] && current {
            state
        } else {
            &[]
        };
        if !state.is_empty() && state.len() != layout.len {
            return Err(shape(name, format!("0 or {}", layout.len), state.len()));
        }
        crate::batch::finite("optimizer state", state)?;
        reject_negative_squares(kind, slot, state)?;
        tensors.push((name.into(), OwnedTensor::float(vec![state.len()], state)));
    }
    for (name, values) in &extras.tensors {
        tensors.push((
            format!("extra.{name}"),
            OwnedTensor::float(vec![values.len()], values),
        ));
    }
    let mut meta = config_metadata(config);
    meta.insert("optim.steps".into(), optimizer.steps.to_string());
    let state_start = if current {
        optimizer.state_start()
    } else {
        optimizer.steps
    };
    meta.insert("optim.state_start".into(), state_start.to_string());
    meta.insert("optim.kind".into(), optimizer.kind.family().into());
    if current && !optimizer.skipped().is_empty() {
        meta.insert("optim.skipped".into(), skipped_entry(&layout, optimizer)?);
    }
    for (k, v) in &extras.metadata {
        meta.insert(format!("extra.{k}"), v.clone());
    }
    write_tensors(path, &tensors, meta)
}

/// Loads a checkpoint into `params` and `optimizer` (whose kind and hyper-parameters stay
/// as given); the file's architecture must equal `config`, and `params` must hold its
/// parameter count (a [`Trainer`](crate::trainer::Trainer)'s `params`, or a `Vec` of
/// [`Layout::new`]`(config).len`).
///
/// # Errors
/// [`RnnError::Io`], [`RnnError::Format`] (including an architecture mismatch, and state of
/// another optimizer family or of another size than the optimizer's kind uses),
/// [`RnnError::ShapeMismatch`] (including `params` of another length).
pub fn load_checkpoint<T: Float>(
    path: &Path,
    config: &RnnConfig,
    params: &mut [T],
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
    params: &mut [T],
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
    params: &mut [T],
    optimizer: &mut Optimizer<T>,
) -> Result<Extras<T>> {
    let (st, metadata) = parse_with_metadata(bytes)?;
    let found = infer_config(&st, &metadata)?;
    if found != *config {
        return Err(RnnError::Format(format!(
            "checkpoint is for {found:?}, the model is {config:?}"
        )));
    }
    let layout = Layout::new(config);
    if params.len() != layout.len {
        return Err(shape("params", layout.len, params.len()));
    }
    let new_params = load_params(&st, &layout)?;
    // Files from before RMSprop (SGD and Adam only) do not name the family.
    let family = optimizer.kind.family();
    if let Some(saved) = metadata.get("optim.kind")
        && saved != family
    {
        return Err(RnnError::Format(format!(
            "checkpoint holds {saved} optimizer state, the optimizer is {family}"
        )));
    }
    // Each buffer the optimizer uses holds one value per parameter (or none yet); the others
    // none.
    let mut states = [Vec::new(), Vec::new(), Vec::new()];
    for (slot, ((name, state), used)) in STATE_NAMES
        .into_iter()
        .zip(&mut states)
        .zip(optimizer.kind.uses_state())
        .enumerate()
    {
        // Files from before RMSprop have no third buffer.
        if name != STATE_NAMES[2] || st.names().contains(&name) {
            *state = float_tensor::<T>(&st, name)?.0;
        }
        reject_non_finite(name, state)?;
        reject_negative_squares(&optimizer.kind, slot, state)?;
        let fits = state.is_empty() || (used && state.len() == layout.len);
        if !fits {
            return Err(RnnError::Format(format!(
                "{name} holds {} values; this {family} optimizer {}",
                state.len(),
                if used {
                    format!("needs {} (one per parameter)", layout.len)
                } else {
                    "does not use it".into()
                }
            )));
        }
    }
    let steps = metadata
        .get("optim.steps")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            RnnError::Format("metadata optim.steps is missing or not a number".into())
        })?;
    // Files from before family changes started the state over have no start: 0.
    let state_start = match metadata.get("optim.state_start") {
        None => 0,
        Some(s) => s.parse().ok().filter(|&start| start <= steps).ok_or_else(|| {
            RnnError::Format(format!(
                "metadata optim.state_start {s:?} is not a number of updates up to optim.steps ({steps})"
            ))
        })?,
    };
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
    let skipped = match metadata.get("optim.skipped") {
        None => Vec::new(),
        Some(entry) => parse_skipped(entry, &layout, steps - state_start)?,
    };
    params.copy_from_slice(&new_params);
    [optimizer.state1, optimizer.state2, optimizer.state3] = states;
    optimizer.steps = steps;
    optimizer.mark_state_current(state_start);
    optimizer.set_skipped(skipped);
    Ok(extras)
}

/// `optim.skipped`: `name=count` for each tensor that sat out updates, by state-dict name.
fn skipped_entry<T: Float>(layout: &Layout, optimizer: &Optimizer<T>) -> Result<String> {
    let entries = optimizer.skipped().iter().map(|(range, count)| {
        let tensor = layout.tensors.iter().find(|t| t.range == *range);
        let tensor = tensor.ok_or_else(|| {
            RnnError::Format(format!(
                "the optimizer counts updates skipped by elements {range:?}, which are no tensor"
            ))
        })?;
        Ok(format!("{}={count}", tensor.name))
    });
    Ok(entries.collect::<Result<Vec<_>>>()?.join(","))
}

/// The ranges and counts of `optim.skipped`, sorted; each a tensor of `layout`, once, with
/// no more than the `updates` the state has seen.
fn parse_skipped(entry: &str, layout: &Layout, updates: u64) -> Result<Vec<(Range<usize>, u64)>> {
    let bad = |why: String| RnnError::Format(format!("metadata optim.skipped {entry:?}: {why}"));
    let mut skipped = Vec::new();
    for item in entry.split(',') {
        let (name, count) = item
            .split_once('=')
            .ok_or_else(|| bad(format!("{item:?} is not name=count")))?;
        let tensor = layout
            .find(name)
            .ok_or_else(|| bad(format!("the model has no tensor {name:?}")))?;
        let count: u64 = count
            .parse()
            .ok()
            .filter(|&c| c <= updates)
            .ok_or_else(|| {
                bad(format!(
                    "{count:?} is not a number of updates up to the {updates} the state has seen"
                ))
            })?;
        skipped.push((tensor.range.clone(), count));
    }
    skipped.sort_by_key(|(range, _)| range.start);
    if let Some(pair) = skipped.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(bad(format!("elements {:?} are listed twice", pair[0].0)));
    }
    Ok(skipped)
}
