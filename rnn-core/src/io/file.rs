//! Safetensors files: parsing with the checksum verified, tensors of any float or integer
//! dtype read, tensors written atomically with their checksum.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kernels::Float;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Result, RnnError};

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

/// Tensor `name` of a parsed file.
///
/// # Errors
/// [`RnnError::Format`] naming it when the file has no such tensor.
pub(crate) fn tensor_view<'data>(st: &SafeTensors<'data>, name: &str) -> Result<TensorView<'data>> {
    st.tensor(name)
        .map_err(|_| RnnError::Format(format!("missing tensor {name:?}")))
}

/// Tensor `name` as floats of type `T`, with its shape: from F32 or F64, or from BF16 or F16
/// (a model PyTorch saved in half precision), whose every value `T` holds exactly.
///
/// # Errors
/// [`RnnError::Format`] if it is missing or not a float tensor.
pub fn float_tensor<T: Float>(st: &SafeTensors<'_>, name: &str) -> Result<(Vec<T>, Vec<usize>)> {
    let view = tensor_view(st, name)?;
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
    let view = tensor_view(st, name)?;
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
