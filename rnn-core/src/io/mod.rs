//! Weights and checkpoints in safetensors, with PyTorch's state-dict names.
//!
//! A model's file holds `rnn.weight_ih_l{k}`, `rnn.weight_hh_l{k}`, `rnn.bias_ih_l{k}`,
//! `rnn.bias_hh_l{k}`, `head.weight`, `head.bias` (the names of a PyTorch module with
//! submodules `rnn = nn.RNN(...)` and `head = nn.Linear(...)`), so
//! `safetensors.torch.save_file(model.state_dict(), path)` loads here and our files load into
//! PyTorch. F32, F64, BF16 and F16 tensors are accepted and converted to the model's type.
//!
//! Files are written atomically: to a temporary file in the same folder, flushed to disk,
//! then renamed over the target (and the folder synced), so a crash leaves either the old or
//! the new file. Every file written here carries a CRC-32 of its tensors in its metadata; a
//! truncated or bit-flipped file is an error on load, never a silently different model.
//!
//! Three layers, one module each: `file` reads and writes safetensors files (parsing, the
//! checksum, dtypes, the atomic write), `model` maps a model's parameters and architecture
//! to PyTorch's tensors and back, and `checkpoint` adds the optimizer's state and a
//! program's own to a model's file.

mod checkpoint;
mod file;
mod model;

pub use checkpoint::{
    Extras, checkpoint_from_bytes, load_checkpoint, load_checkpoint_with, save_checkpoint,
    save_checkpoint_with,
};
pub(crate) use file::tensor_view;
pub use file::{
    CHECKSUM_KEY, OwnedTensor, float_tensor, int_tensor, parse, parse_with_metadata, read_bytes,
    write_atomic, write_tensors,
};
pub use model::{
    config_metadata, infer_config, load_params, load_weights, param_tensors, save_weights,
    weights_from_bytes,
};
