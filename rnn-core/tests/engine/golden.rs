//! Parity with PyTorch: fixtures made by `scripts/torch_fixtures.py` (torch 2.15, CPU) in
//! grad_dump's format; every output and gradient must match.

use crate::common::{owned_tensors, scratch_dir};
use crate::fixtures;
use rnn_core::dump::{grad_dump, grad_dump_with};
use rnn_core::io;
use rnn_core::network::UnitSplit;

/// Checks a fixture with the engine's default split and with every step in two unit blocks
/// (what two per-step workers run).
fn check(name: &str, tol: f64) {
    for split in [UnitSplit::Auto, UnitSplit::Halves] {
        check_split(name, tol, split);
    }
}

fn check_split(name: &str, tol: f64, split: UnitSplit) {
    let input = io::read_bytes(&fixtures::path(&format!("{name}.in.safetensors"))).unwrap();
    let got = grad_dump_with(&input, split).unwrap_or_else(|e| panic!("{name} {split:?}: {e}"));
    let want_bytes =
        io::read_bytes(&fixtures::path(&format!("{name}.expected.safetensors"))).unwrap();
    let want = io::parse(&want_bytes).unwrap();
    let want_names = want.names();
    assert_eq!(
        got.len(),
        want_names.len(),
        "{name}: tensor count (got {:?})",
        got.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    for (tensor, out) in &got {
        let (expected, shape) =
            io::float_tensor::<f64>(&want, tensor).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(shape, out.shape, "{name}: shape of {tensor}");
        let values: Vec<f64> = if out.bytes.len() == expected.len() * 4 {
            out.bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect()
        } else {
            out.bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let scale = expected.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in values.iter().zip(&expected).enumerate() {
            assert!(
                (g - w).abs() <= tol * scale,
                "{name}: {tensor}[{i}] = {g}, PyTorch {w}"
            );
        }
    }
}

#[test]
fn tanh_mse() {
    check("tanh_mse", 1e-12);
}

#[test]
fn relu_ce_two_layers() {
    check("relu_ce_2layers", 1e-12);
}

#[test]
fn packed_lengths_ce_three_layers() {
    check("lengths_ce_3layers", 1e-12);
}

#[test]
fn packed_lengths_mse_sum() {
    check("lengths_mse_sum", 1e-12);
}

#[test]
fn many_to_one_ce_with_lengths() {
    check("many_to_one_ce_lengths", 1e-12);
}

#[test]
fn many_to_one_mse_relu_sum() {
    check("many_to_one_mse_relu", 1e-12);
}

#[test]
fn batch_one_f32() {
    check("batch1_f32", 2e-5);
}

#[test]
fn batch_eight_ce_f32() {
    check("batch8_ce_f32", 2e-5);
}

#[test]
fn lstm_mse() {
    check("lstm_mse", 1e-12);
}

#[test]
fn lstm_packed_lengths_ce_two_layers() {
    check("lstm_ce_2layers_lengths", 1e-12);
}

#[test]
fn lstm_many_to_one_with_lengths() {
    check("lstm_many_to_one_lengths", 1e-12);
}

#[test]
fn lstm_batch_one_f32() {
    check("lstm_batch1_f32", 2e-5);
}

#[test]
fn gru_mse_sum() {
    check("gru_mse_sum", 1e-12);
}

#[test]
fn gru_packed_lengths_ce_three_layers() {
    check("gru_ce_3layers_lengths", 1e-12);
}

#[test]
fn gru_many_to_one_mse() {
    check("gru_many_to_one_mse", 1e-12);
}

#[test]
fn gru_batch_eight_ce_f32() {
    check("gru_batch8_ce_f32", 2e-5);
}

/// PyTorch's `bias=False`: the files hold no bias tensors, the config is read from them.
#[test]
fn rnn_without_biases_packed_lengths_ce_two_layers() {
    check("rnn_nobias_ce_2layers_lengths", 1e-12);
}

#[test]
fn lstm_without_biases_many_to_one_with_lengths() {
    check("lstm_nobias_many_to_one_lengths", 1e-12);
}

#[test]
fn gru_without_biases_batch_eight_mse_f32() {
    check("gru_nobias_batch8_mse_f32", 2e-5);
}

/// Dropout between layers (grad_dump's `dropout`, `dropout_seed`): PyTorch runs the layers
/// one at a time with rnn-core's masks between them (`dropped_stack` in
/// scripts/torch_fixtures.py), pinning what drops (every layer's output but the top's, not
/// the head's input) and the `1/(1-p)` scale.
#[test]
fn rnn_dropout_packed_lengths_ce_three_layers() {
    check("rnn_dropout_ce_3layers_lengths", 1e-12);
}

#[test]
fn lstm_dropout_many_to_one_with_lengths() {
    check("lstm_dropout_many_to_one", 1e-12);
}

#[test]
fn gru_dropout_without_biases_mse() {
    check("gru_dropout_mse_nobias", 1e-12);
}

#[test]
fn training_matches_pytorch_gru_without_biases_adam_clip() {
    check_training("gru_adam_clip_nobias");
}

/// PyTorch's own files carry no metadata: the cell and layer count come from the shapes.
#[test]
fn cell_and_layers_are_inferred_from_bare_pytorch_files() {
    for (name, cell, layers) in [
        ("tanh_mse", "rnn", 1),
        ("lstm_ce_2layers_lengths", "lstm", 2),
        ("gru_ce_3layers_lengths", "gru", 3),
    ] {
        let bytes = io::read_bytes(&fixtures::path(&format!("{name}.in.safetensors"))).unwrap();
        let st = io::parse(&bytes).unwrap();
        let config = io::infer_config(&st, &Default::default()).unwrap();
        assert_eq!(
            (config.cell.as_str(), config.num_layers),
            (cell, layers),
            "{name}"
        );
    }
}

/// PyTorch files round-trip: loaded weights saved again load back identically, with and
/// without recurrent biases.
#[test]
fn pytorch_weights_roundtrip() {
    let dir = scratch_dir("golden");
    for (name, bias) in [
        ("relu_ce_2layers", true),
        ("lstm_nobias_many_to_one_lengths", false),
        ("lstm_bidi_ce_2layers_lengths", true),
        ("lstm_embedding_bidi_lengths", true),
        ("lstm_proj_ce_2layers_lengths", true),
    ] {
        let bytes = io::read_bytes(&fixtures::path(&format!("{name}.in.safetensors"))).unwrap();
        let (st, meta) = io::parse_with_metadata(&bytes).unwrap();
        let config = io::infer_config(&st, &meta).unwrap();
        assert_eq!(
            (config.input_size, config.num_layers, config.bias),
            (3, 2, bias),
            "{name}"
        );
        let layout = rnn_core::params::Layout::new(&config);
        let params = io::load_params::<f64>(&st, &layout).unwrap();
        let path = dir.join(format!("{name}.safetensors"));
        io::save_weights(&path, &config, &params).unwrap();
        // `scripts/check_export.py DIR` loads these copies into PyTorch with
        // load_state_dict(strict=True) and checks their outputs.
        if let Some(out) = std::env::var_os("RNN_EXPORT_TO") {
            std::fs::create_dir_all(&out).unwrap();
            std::fs::copy(
                &path,
                std::path::Path::new(&out).join(format!("{name}.safetensors")),
            )
            .unwrap();
        }
        assert_eq!(
            io::load_weights::<f64>(&path).unwrap(),
            (config, params),
            "{name}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model PyTorch saved in half precision (`model.to(torch.bfloat16)`, `torch.float16`)
/// loads with every value exact, in f64 and f32 (`half_precision(...)` in
/// scripts/torch_fixtures.py stores the values as float64 under `exact.*`).
#[test]
fn half_precision_pytorch_weights_load_exactly() {
    for (name, cell) in [("half_bf16_lstm", "lstm"), ("half_f16_gru", "gru")] {
        let bytes = io::read_bytes(&fixtures::path(&format!("{name}.safetensors"))).unwrap();
        let (config, params) = io::weights_from_bytes::<f64>(&bytes).unwrap();
        assert_eq!(
            (config.cell.as_str(), config.num_layers, config.hidden_size),
            (cell, 2, 5),
            "{name}"
        );
        let st = io::parse(&bytes).unwrap();
        let layout = rnn_core::params::Layout::new(&config);
        assert_eq!(params, fixtures::params(&st, &layout, "exact"), "{name}");
        let (_, params32) = io::weights_from_bytes::<f32>(&bytes).unwrap();
        let widened: Vec<f64> = params32.iter().map(|&v| f64::from(v)).collect();
        assert_eq!(widened, params, "{name} in f32");
    }
}

/// Rebuilds a fixture's IN file with `edit` applied to its tensors and metadata.
fn edited(
    name: &str,
    edit: impl FnOnce(
        &mut Vec<(String, io::OwnedTensor)>,
        &mut std::collections::HashMap<String, String>,
    ),
) -> Vec<u8> {
    let bytes = io::read_bytes(&fixtures::path(&format!("{name}.in.safetensors"))).unwrap();
    let (mut tensors, mut meta) = owned_tensors(&bytes);
    edit(&mut tensors, &mut meta);
    // One folder per call: tests editing the same fixture run in parallel.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch_dir(&format!("edit-{name}-{call}"));
    let path = dir.join("in.safetensors");
    io::write_tensors(&path, &tensors, meta).unwrap();
    let out = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

/// A copy of tensor `name` among a file's `tensors`.
fn copy_of(tensors: &[(String, io::OwnedTensor)], name: &str) -> io::OwnedTensor {
    let (_, tensor) = tensors
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no tensor {name:?}"));
    tensor.clone()
}

fn load_error(bytes: &[u8]) -> String {
    match io::weights_from_bytes::<f64>(bytes) {
        Ok(_) => panic!("weights_from_bytes accepted a file with stray tensors"),
        Err(e) => e.to_string(),
    }
}

/// Fixture `name` with a copy of every `rnn.*_l0` tensor under PyTorch's name for the same
/// tensor of a bidirectional layer's reverse direction.
fn with_a_reverse_direction(name: &str) -> Vec<u8> {
    edited(name, |t, _| {
        let copies: Vec<_> = t
            .iter()
            .filter(|(n, _)| n.starts_with("rnn.") && n.ends_with("_l0"))
            .map(|(n, v)| (format!("{n}_reverse"), v.clone()))
            .collect();
        t.extend(copies);
    })
}

/// A model tensor the layout has no place for is refused, as PyTorch's strict
/// `load_state_dict` would: loading the rest would give a model that computes something else
/// than the file's.
#[test]
fn model_tensors_without_a_place_are_refused() {
    // Reverse-direction tensors, by PyTorch's names, but not the first layer's input
    // weights that make a model bidirectional.
    let partly = edited("lstm_mse", |t, _| {
        let copies: Vec<_> = t
            .iter()
            .filter(|(n, _)| n.starts_with("rnn.") && n.ends_with("_l0"))
            .filter(|(n, _)| n != "rnn.weight_ih_l0")
            .map(|(n, v)| (format!("{n}_reverse"), v.clone()))
            .collect();
        t.extend(copies);
    });
    for e in [load_error(&partly), dump_error(&partly)] {
        assert!(
            e.contains("rnn.weight_hh_l0_reverse") && e.contains("bidirectional"),
            "{e}"
        );
    }
    // Every reverse tensor, but a head that reads one direction: named with its shape.
    let one_sided_head = with_a_reverse_direction("lstm_mse");
    let e = load_error(&one_sided_head);
    assert!(e.contains("head.weight") && e.contains("[3, 12]"), "{e}");
    // An LSTM's projection (`proj_size`) wider than its hidden size, as PyTorch refuses to
    // build; and one in a layer above the first only.
    let too_wide = edited("lstm_mse", |t, _| {
        t.push(("rnn.weight_hr_l0".into(), copy_of(t, "rnn.weight_hh_l0")));
    });
    let e = load_error(&too_wide);
    assert!(
        e.contains("proj_size 24 must be in 1..hidden_size (6)"),
        "{e}"
    );
    let one_layer = edited("lstm_ce_2layers_lengths", |t, _| {
        t.push(("rnn.weight_hr_l1".into(), copy_of(t, "rnn.bias_hh_l1")));
    });
    let e = load_error(&one_layer);
    assert!(
        e.contains("rnn.weight_hr_l1") && e.contains("some layers only"),
        "{e}"
    );
    // A projected model missing a layer's projection.
    let e = load_error(&edited("lstm_proj_ce_2layers_lengths", |t, _| {
        t.retain(|(name, _)| name != "rnn.weight_hr_l1")
    }));
    assert!(e.contains("missing tensor \"rnn.weight_hr_l1\""), "{e}");
    // Biases in some layers or on one side only: neither a model with biases nor one
    // without (`bias=False` models, which have none, load: `model_without_biases_...`).
    let e = load_error(&edited("lstm_mse", |t, _| {
        t.retain(|(name, _)| name != "rnn.bias_ih_l0")
    }));
    assert!(
        e.contains("rnn.bias_hh_l0") && e.contains("every layer's biases or none"),
        "{e}"
    );
    let one_layer_short = edited("relu_ce_2layers", |t, _| {
        t.retain(|(name, _)| name != "rnn.bias_hh_l1")
    });
    for e in [load_error(&one_layer_short), dump_error(&one_layer_short)] {
        assert!(e.contains("missing tensor \"rnn.bias_hh_l1\""), "{e}");
    }
    // A second layer the metadata does not count.
    let e = load_error(&edited("relu_ce_2layers", |_, m| {
        m.insert("layers".into(), "1".into());
    }));
    assert!(
        e.contains("rnn.weight_ih_l1") && e.contains("no place for"),
        "{e}"
    );
    // An unknown head tensor; tensors outside the model's modules are left alone.
    let e = load_error(&edited("tanh_mse", |t, _| {
        t.push(("head.scale".into(), copy_of(t, "head.bias")));
        t.push(("embedding.bias".into(), copy_of(t, "head.bias")));
    }));
    assert!(
        e.contains("head.scale") && !e.contains("embedding.bias"),
        "{e}"
    );
    let good = edited("tanh_mse", |t, _| {
        t.push(("embedding.bias".into(), copy_of(t, "head.bias")));
    });
    io::weights_from_bytes::<f64>(&good).unwrap();
}

/// A file without recurrent biases (PyTorch's `bias=False`) is a model without them: the
/// config says so, nothing is zero-filled, and a save writes no bias tensors either.
#[test]
fn model_without_biases_loads_and_saves_without_them() {
    let with = io::weights_from_bytes::<f64>(
        &io::read_bytes(&fixtures::path("lstm_mse.in.safetensors")).unwrap(),
    )
    .unwrap();
    let bias_free = edited("lstm_mse", |t, _| {
        t.retain(|(name, _)| !name.starts_with("rnn.bias_"))
    });
    let (config, params) = io::weights_from_bytes::<f64>(&bias_free).unwrap();
    assert!(with.0.bias && !config.bias);
    assert_eq!(config, with.0.bias(false));
    let layout = rnn_core::params::Layout::new(&config);
    assert_eq!(params.len(), layout.len);
    assert_eq!(
        with.1.len() - params.len(),
        2 * 4 * 6,
        "two [4H] biases fewer"
    );
    let st = io::parse(&bias_free).unwrap();
    for t in &layout.tensors {
        let (want, _) = io::float_tensor::<f64>(&st, &t.name).unwrap();
        assert_eq!(&params[t.range.clone()], &want[..], "{}", t.name);
    }
    let dir = scratch_dir("golden-bias-free");
    let path = dir.join("w.safetensors");
    io::save_weights(&path, &config, &params).unwrap();
    let saved = io::read_bytes(&path).unwrap();
    let names = io::parse(&saved).unwrap().names().len();
    assert_eq!(names, layout.tensors.len());
    assert_eq!(io::load_weights::<f64>(&path).unwrap(), (config, params));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// L1 and Huber (`nn.L1Loss`, `nn.HuberLoss`): PyTorch's own functions and reductions where
/// every position is scored, its per-element losses masked where sequences are padded; a
/// Huber delta from the metadata (0.3) and PyTorch's default (1.0, no metadata).
#[test]
fn gru_l1_two_layers() {
    check("gru_l1_2layers", 1e-12);
}

#[test]
fn rnn_huber_many_to_one_sum_with_delta() {
    check("rnn_huber_many_to_one_sum", 1e-12);
}

#[test]
fn lstm_huber_default_delta_packed_lengths() {
    check("lstm_huber_lengths", 1e-12);
}

#[test]
fn lstm_l1_packed_lengths_sum_f32() {
    check("lstm_l1_lengths_sum_f32", 2e-5);
}

/// `nn.SmoothL1Loss`: a beta from the metadata (0.4) with packed lengths, and PyTorch's
/// default (1.0, no metadata) many-to-one in f32.
#[test]
fn gru_smooth_l1_packed_lengths() {
    check("gru_smooth_l1_lengths", 1e-12);
}

#[test]
fn rnn_smooth_l1_many_to_one_sum_f32() {
    check("rnn_smooth_l1_many_to_one_sum_f32", 2e-5);
}

/// `nn.BCEWithLogitsLoss` on soft and hard targets: packed lengths, many-to-one with sequence
/// weights (one of 0) under `sum`, and f32.
#[test]
fn lstm_bce_packed_lengths() {
    check("lstm_bce_lengths", 1e-12);
}

#[test]
fn gru_bce_many_to_one_sum_weighted() {
    check("gru_bce_many_to_one_sum_weighted", 1e-12);
}

#[test]
fn rnn_bce_f32() {
    check("rnn_bce_f32", 2e-5);
}

/// `BCEWithLogitsLoss(pos_weight=...)`, one weight per output, with packed lengths.
#[test]
fn gru_bce_pos_weight_packed_lengths() {
    check("gru_bce_pos_weight_lengths", 1e-12);
}

/// `BCEWithLogitsLoss(weight=...)` of shape `[O]` (each output's terms rescaled; a mean
/// still over the elements): with `pos_weight` and packed lengths, and summed many-to-one
/// in f32 with a weight of 0.
#[test]
fn bce_weight_per_output() {
    check("gru_bce_weight_pos_weight_lengths", 1e-12);
    check("lstm_bce_weight_many_to_one_sum_f32", 2e-5);
}

/// Sequence weights (`sequence_weights` `[B]`, against PyTorch's `reduction="none"` losses
/// weighted and reduced by hand): MSE with packed lengths and a weight of 0, weighted and
/// smoothed many-to-one cross-entropy, Huber summed in f32, ignored labels.
#[test]
fn rnn_sequence_weights_mse_packed_lengths() {
    check("rnn_seqweights_mse_lengths", 1e-12);
}

#[test]
fn lstm_sequence_weights_class_weights_smoothing_many_to_one() {
    check("lstm_seqweights_ce_classweights_many_to_one", 1e-12);
}

#[test]
fn gru_sequence_weights_huber_sum_f32() {
    check("gru_seqweights_huber_sum_f32", 2e-5);
}

#[test]
fn gru_sequence_weights_ignored_labels_packed_lengths() {
    check("gru_seqweights_ce_ignore_lengths", 1e-12);
}

/// Cross-entropy's `ignore_index`: labels of -100 (PyTorch's default, grad_dump reads it as
/// `IGNORED_LABEL`) score nothing, and a mean divides by the labelled positions only.
#[test]
fn gru_ce_ignored_labels_packed_lengths() {
    check("gru_ce_ignore_lengths", 1e-12);
}

#[test]
fn lstm_ce_ignored_labels_many_to_one() {
    check("lstm_ce_ignore_many_to_one", 1e-12);
}

#[test]
fn rnn_ce_ignored_labels_sum_f32() {
    check("rnn_ce_ignore_sum_f32", 2e-5);
}

/// `nn.CrossEntropyLoss(label_smoothing=ε)`: with ignored labels and packed lengths (mean),
/// many-to-one (sum), and in f32.
#[test]
fn gru_ce_label_smoothing_ignored_labels_packed_lengths() {
    check("gru_ce_smoothing_ignore_lengths", 1e-12);
}

#[test]
fn lstm_ce_label_smoothing_many_to_one_sum() {
    check("lstm_ce_smoothing_many_to_one_sum", 1e-12);
}

#[test]
fn rnn_ce_label_smoothing_f32() {
    check("rnn_ce_smoothing_f32", 2e-5);
}

/// `nn.CrossEntropyLoss(weight=w)`: a class of weight 0 among them; with label smoothing,
/// ignored labels and packed lengths (mean), many-to-one (mean), and in f32 (sum).
#[test]
fn lstm_ce_class_weights_label_smoothing_packed_lengths() {
    check("lstm_ce_weights_smoothing_lengths", 1e-12);
}

#[test]
fn gru_ce_class_weights_many_to_one() {
    check("gru_ce_weights_many_to_one", 1e-12);
}

#[test]
fn rnn_ce_class_weights_sum_f32() {
    check("rnn_ce_weights_sum_f32", 2e-5);
}

/// `bidirectional=True`: packed lengths (each sequence's reverse direction starts at its own
/// end), many-to-one from both final states (`h_n[-2]`, `h_n[-1]`), ReLU in f32, no biases.
#[test]
fn lstm_bidirectional_ce_two_layers_packed_lengths() {
    check("lstm_bidi_ce_2layers_lengths", 1e-12);
}

#[test]
fn gru_bidirectional_many_to_one_packed_lengths() {
    check("gru_bidi_many_to_one_lengths", 1e-12);
}

#[test]
fn rnn_bidirectional_relu_sum_f32() {
    check("rnn_bidi_relu_sum_f32", 2e-5);
}

#[test]
fn lstm_bidirectional_without_biases() {
    check("lstm_bidi_nobias_mse", 1e-12);
}

/// Token input through `nn.Embedding` (`x` holds int64 ids): a stacked bidirectional LSTM
/// over packed lengths, and a GRU language model in f32 whose tokens repeat.
#[test]
fn lstm_embedding_bidirectional_packed_lengths() {
    check("lstm_embedding_bidi_lengths", 1e-12);
}

#[test]
fn gru_embedding_ce_f32() {
    check("gru_embedding_ce_f32", 2e-5);
}

/// LSTM projections (`proj_size`): `h_t = W_hr (o ⊙ tanh(c_t))`, `P` wide, read by the
/// recurrent product, the layer above and the head; packed lengths, stacked, bidirectional
/// many-to-one, and a token LSTM without biases in f32.
#[test]
fn lstm_projections() {
    check("lstm_proj_mse", 1e-12);
    check("lstm_proj_ce_2layers_lengths", 1e-12);
    check("lstm_proj_bidi_many_to_one_lengths", 1e-12);
    check("lstm_proj_nobias_embedding_ce_f32", 2e-5);
}

fn dump_error(bytes: &[u8]) -> String {
    match grad_dump(bytes) {
        Ok(_) => panic!("grad_dump accepted a bad file"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn grad_dump_rejects_bad_files_clearly() {
    assert!(dump_error(b"not a safetensors file").contains("not a valid safetensors file"));
    let good = io::read_bytes(&fixtures::path("tanh_mse.in.safetensors")).unwrap();
    assert!(dump_error(&good[..good.len() - 7]).contains("not a valid safetensors file"));

    let e = dump_error(&edited("tanh_mse", |_, m| {
        m.insert("loss".into(), "hinge".into());
    }));
    assert!(e.contains("loss") && e.contains("hinge"), "{e}");
    let e = dump_error(&edited("tanh_mse", |_, m| {
        m.insert("cell".into(), "transformer".into());
    }));
    assert!(e.contains("transformer"), "{e}");
    let e = dump_error(&edited("lstm_mse", |t, _| t.retain(|(n, _)| n != "c0")));
    assert!(e.contains("missing tensor \"c0\""), "{e}");
    let e = dump_error(&edited("lstm_mse", |_, m| {
        m.insert("cell".into(), "gru".into());
    }));
    assert!(e.contains("gru") && e.contains("rnn.weight_hh_l0"), "{e}");
    let e = dump_error(&edited("tanh_mse", |t, _| t.retain(|(n, _)| n != "x")));
    assert!(e.contains("missing tensor \"x\""), "{e}");
    for (p, seed, says) in [
        ("1", "0", "not in [0, 1)"),
        ("-0.1", "0", "not in [0, 1)"),
        ("NaN", "0", "not in [0, 1)"),
        ("half", "0", "dropout = \"half\" is not a number"),
        ("0.5", "-3", "dropout_seed = \"-3\""),
    ] {
        let e = dump_error(&edited("relu_ce_2layers", |_, m| {
            m.insert("dropout".into(), p.into());
            m.insert("dropout_seed".into(), seed.into());
        }));
        assert!(e.contains(says), "{p} {seed}: {e}");
    }
    for (delta, says) in [
        ("0", "Huber delta = 0"),
        ("-1", "Huber delta = -1"),
        ("inf", "Huber delta = inf"),
        ("wide", "huber_delta = \"wide\" is not a number"),
    ] {
        let e = dump_error(&edited("rnn_huber_many_to_one_sum", |_, m| {
            m.insert("huber_delta".into(), delta.into());
        }));
        assert!(e.contains(says), "{delta}: {e}");
    }
    for (beta, says) in [
        ("-1", "smooth L1 beta = -1"),
        ("inf", "smooth L1 beta = inf"),
        ("NaN", "smooth L1 beta = NaN"),
        ("wide", "smooth_l1_beta = \"wide\" is not a number"),
    ] {
        let e = dump_error(&edited("gru_smooth_l1_lengths", |_, m| {
            m.insert("smooth_l1_beta".into(), beta.into());
        }));
        assert!(e.contains(says), "{beta}: {e}");
    }
    for (smoothing, says) in [
        ("1.5", "label smoothing = 1.5"),
        ("-0.1", "label smoothing = -0.1"),
        ("NaN", "label smoothing = NaN"),
        ("some", "label_smoothing = \"some\" is not a number"),
    ] {
        let e = dump_error(&edited("lstm_ce_smoothing_many_to_one_sum", |_, m| {
            m.insert("label_smoothing".into(), smoothing.into());
        }));
        assert!(e.contains(says), "{smoothing}: {e}");
    }
    // Class weights of the wrong count, shape or sign, or on a loss of float targets.
    let weights = |edit: fn(&mut Vec<f64>)| {
        move |t: &mut Vec<(String, io::OwnedTensor)>,
              _: &mut std::collections::HashMap<String, String>| {
            let w = t.iter_mut().find(|(n, _)| n == "class_weights").unwrap();
            let mut values: Vec<f64> = (w.1.bytes.chunks_exact(8))
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            edit(&mut values);
            w.1.bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.1.shape = vec![values.len()];
        }
    };
    let e = dump_error(&edited(
        "gru_ce_weights_many_to_one",
        weights(|w| w.push(1.0)),
    ));
    assert!(e.contains("class weights") && e.contains("[O=4]"), "{e}");
    let e = dump_error(&edited(
        "gru_ce_weights_many_to_one",
        weights(|w| w[1] = -1.0),
    ));
    assert!(e.contains("class weight 1 = -1"), "{e}");
    let e = dump_error(&edited(
        "gru_ce_weights_many_to_one",
        weights(|w| w[2] = f64::NAN),
    ));
    assert!(e.contains("class weight 2 = NaN"), "{e}");
    let e = dump_error(&edited(
        "gru_ce_weights_many_to_one",
        weights(|w| w.fill(0.0)),
    ));
    assert!(e.contains("every class weight is 0"), "{e}");
    let e = dump_error(&edited("gru_ce_weights_many_to_one", |t, _| {
        let w = t.iter_mut().find(|(n, _)| n == "class_weights").unwrap();
        w.1.shape = vec![2, 2];
    }));
    assert!(e.contains("class_weights must be [O]"), "{e}");
    let e = dump_error(&edited("gru_ce_weights_many_to_one", |_, m| {
        m.insert("loss".into(), "mse".into());
    }));
    assert!(e.contains("BCE with logits only, not MSE"), "{e}");
    let e = dump_error(&edited("tanh_mse", |t, _| {
        t.retain(|(n, _)| n != "rnn.bias_hh_l0")
    }));
    assert!(e.contains("rnn.bias_hh_l0"), "{e}");
    let e = dump_error(&edited("tanh_mse", |t, _| {
        let w = t.iter_mut().find(|(n, _)| n == "rnn.weight_hh_l0").unwrap();
        w.1.shape = vec![3, 12];
    }));
    assert!(e.contains("rnn.weight_hh_l0"), "{e}");
    // A label past the class count, and a non-finite input, in an otherwise good CE file.
    let e = dump_error(&edited("relu_ce_2layers", |t, _| {
        let target = t.iter_mut().find(|(n, _)| n == "target").unwrap();
        target.1.bytes[..8].copy_from_slice(&99i64.to_le_bytes());
    }));
    assert!(e.contains("label 99"), "{e}");
    let e = dump_error(&edited("tanh_mse", |t, _| {
        let x = t.iter_mut().find(|(n, _)| n == "x").unwrap();
        x.1.bytes[8..16].copy_from_slice(&f64::NAN.to_le_bytes());
    }));
    assert!(e.contains("non-finite") && e.contains("x"), "{e}");
    // -100 is PyTorch's ignore_index; any other negative label is refused.
    let e = dump_error(&edited("gru_ce_ignore_lengths", |t, _| {
        let target = t.iter_mut().find(|(n, _)| n == "target").unwrap();
        target.1.bytes[..8].copy_from_slice(&(-5i64).to_le_bytes());
    }));
    assert!(e.contains("target holds a negative value -5"), "{e}");
    let e = dump_error(&edited("lengths_mse_sum", |t, _| {
        let l = t.iter_mut().find(|(n, _)| n == "lengths").unwrap();
        l.1.bytes[..8].copy_from_slice(&(-1i64).to_le_bytes());
    }));
    assert!(e.contains("lengths") && e.contains("negative"), "{e}");
}

/// Several optimizer steps with clipping, against PyTorch's own training loop
/// (`training(...)` in scripts/torch_fixtures.py): SGD with momentum and weight decay, Nesterov,
/// Adam with L2, AdamW, RMSprop with momentum and centering, Adagrad with rate decay and a
/// starting accumulator; clip_grad_norm_ with its 1e-6 guard; frozen parameters
/// (`requires_grad_(False)` for some of the steps: metadata `frozen`, `name:first:end;...`);
/// parameter groups (metadata `rules`, `name:lr_scale:weight_decay;...`, `-` for the
/// optimizer's decay) under a StepLR schedule (`step_lr`, `step_size:gamma`); a OneCycleLR
/// schedule moving the rate and the momentum (`one_cycle`, its options).
fn check_training(name: &str) {
    use rnn_core::prelude::*;
    let bytes = io::read_bytes(&fixtures::path(&format!("train_{name}.safetensors"))).unwrap();
    let (st, meta) = io::parse_with_metadata(&bytes).unwrap();
    let num = |k: &str, d: f64| meta.get(k).map_or(d, |v| v.parse().unwrap());
    let cell =
        rnn_core::config::Cell::parse(meta.get("cell").map_or("rnn", String::as_str)).unwrap();
    let bias = meta.get("bias").is_none_or(|v| v == "true");
    let cfg = RnnConfig::new(4, 5, 3).layers(2).cell(cell).bias(bias);
    let layout = rnn_core::params::Layout::new(&cfg);
    let (lr, wd) = (num("lr", 0.0), num("weight_decay", 0.0));
    let optimizer = match meta["optimizer"].as_str() {
        "sgd" => OptimizerKind::Sgd {
            lr,
            momentum: num("momentum", 0.0),
            weight_decay: wd,
            nesterov: meta.get("nesterov").is_some_and(|v| v == "True"),
        },
        "adam" => OptimizerKind::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: wd,
            decoupled: false,
        },
        "adamw" => OptimizerKind::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: wd,
            decoupled: true,
        },
        "rmsprop" => OptimizerKind::RmsProp {
            lr,
            alpha: num("alpha", 0.99),
            eps: num("eps", 1e-8),
            weight_decay: wd,
            momentum: num("momentum", 0.0),
            centered: meta.get("centered").is_some_and(|v| v == "True"),
        },
        "adagrad" => OptimizerKind::Adagrad {
            lr,
            lr_decay: num("lr_decay", 0.0),
            weight_decay: wd,
            eps: num("eps", 1e-10),
            initial_accumulator_value: num("initial_accumulator_value", 0.0),
        },
        other => panic!("optimizer {other}"),
    };
    let clip = match meta["clip"].as_str() {
        "none" => Clip::None,
        c => Clip::Norm(c.parse().unwrap()),
    };
    let mut tr = Trainer::with_params(
        cfg,
        LossSpec::every_step(LossKind::CrossEntropy),
        optimizer,
        fixtures::params(&st, &layout, "init"),
    )
    .unwrap()
    .with_clip(clip);
    for rule in meta.get("rules").iter().flat_map(|r| r.split(';')) {
        let v: Vec<&str> = rule.split(':').collect();
        tr.set_lr_scale(v[0], v[1].parse().unwrap()).unwrap();
        if v[2] != "-" {
            tr.set_weight_decay(v[0], v[2].parse().unwrap()).unwrap();
        }
    }
    if let Some(step_lr) = meta.get("step_lr") {
        use rnn_core::schedule::{Decay, LrSchedule};
        let (every, gamma) = step_lr.split_once(':').unwrap();
        let decay = Decay::step(every.parse().unwrap(), gamma.parse().unwrap()).unwrap();
        tr = tr.with_lr_schedule(LrSchedule::new(decay));
    }
    if let Some(options) = meta.get("one_cycle") {
        use rnn_core::schedule::{Decay, LrSchedule};
        let cycle = fixtures::one_cycle(options);
        tr = tr.with_lr_schedule(LrSchedule::new(Decay::OneCycle(cycle)));
    }
    let (x, _) = io::float_tensor::<f64>(&st, "x").unwrap();
    let labels = fixtures::classes(&st, "target");
    let frozen: Vec<(&str, std::ops::Range<usize>)> = meta.get("frozen").map_or(vec![], |f| {
        let entry = |e| {
            let v: Vec<&str> = str::split(e, ':').collect();
            (v[0], v[1].parse().unwrap()..v[2].parse().unwrap())
        };
        f.split(';').map(entry).collect()
    });
    for step in 0..num("steps", 0.0) as usize {
        for (tensor, steps) in &frozen {
            if steps.contains(&step) {
                tr.freeze(tensor).unwrap();
            } else {
                tr.unfreeze(tensor).unwrap();
            }
        }
        tr.step(&Batch::new(6, 3, &x, Target::Classes(&labels)))
            .unwrap();
    }
    let want = fixtures::params(&st, &layout, "final");
    fixtures::assert_weights_match(name, &layout, &tr.params, &want);
    // The optimizer's state: the same buffers as PyTorch's, under its names, each in the
    // parameters' layout.
    let ours: Vec<&str> = tr.optimizer.named_state().iter().map(|(n, _)| *n).collect();
    let mut torch_keys: Vec<&str> = meta["state_keys"].split(',').collect();
    let mut sorted = ours.clone();
    sorted.sort_unstable();
    torch_keys.sort_unstable();
    assert_eq!(sorted, torch_keys, "{name}: optimizer state names");
    for key in ours {
        let want = fixtures::params(&st, &layout, key);
        let got = tr.optimizer.state(key).unwrap();
        fixtures::assert_weights_match(&format!("{name} {key}"), &layout, got, &want);
    }
}

#[test]
fn training_matches_pytorch_sgd_momentum_weight_decay_clip() {
    check_training("sgd_momentum_clip");
}

#[test]
fn training_matches_pytorch_sgd_nesterov() {
    check_training("sgd_nesterov");
}

#[test]
fn training_matches_pytorch_adam_l2_clip() {
    check_training("adam_clip");
}

#[test]
fn training_matches_pytorch_adamw() {
    check_training("adamw");
}

#[test]
fn training_matches_pytorch_lstm_adam_clip() {
    check_training("lstm_adam_clip");
}

#[test]
fn training_matches_pytorch_gru_sgd_momentum() {
    check_training("gru_sgd_momentum");
}

#[test]
fn training_matches_pytorch_adagrad_decay_l2_accumulator_clip() {
    check_training("adagrad_clip");
}

#[test]
fn training_matches_pytorch_gru_adagrad() {
    check_training("gru_adagrad");
}

#[test]
fn training_matches_pytorch_with_frozen_tensors_adam() {
    check_training("adam_frozen");
}

#[test]
fn training_matches_pytorch_with_frozen_tensors_adagrad() {
    check_training("adagrad_frozen");
}

#[test]
fn training_matches_pytorch_with_frozen_tensors_gru_sgd_momentum() {
    check_training("gru_sgd_momentum_frozen");
}

#[test]
fn training_matches_pytorch_with_parameter_groups_adamw_step_lr() {
    check_training("adamw_groups");
}

#[test]
fn training_matches_pytorch_with_parameter_groups_and_frozen_tensors_sgd() {
    check_training("sgd_groups_frozen");
}

#[test]
fn training_matches_pytorch_with_parameter_groups_adagrad() {
    check_training("adagrad_groups");
}

#[test]
fn training_matches_pytorch_under_one_cycle_sgd_turning_momentum_on() {
    check_training("sgd_one_cycle");
}

#[test]
fn training_matches_pytorch_under_one_cycle_adam_moving_beta1() {
    check_training("adam_one_cycle");
}

#[test]
fn training_matches_pytorch_under_one_cycle_rmsprop() {
    check_training("rmsprop_one_cycle");
}

#[test]
fn training_matches_pytorch_rmsprop_l2_clip() {
    check_training("rmsprop_clip");
}

#[test]
fn training_matches_pytorch_rmsprop_momentum() {
    check_training("rmsprop_momentum");
}

#[test]
fn training_matches_pytorch_lstm_rmsprop_centered() {
    check_training("lstm_rmsprop_centered");
}

#[test]
fn training_matches_pytorch_gru_rmsprop_centered_momentum_clip() {
    check_training("gru_rmsprop_centered_momentum_clip");
}

/// Counts and sizes a file declares are checked against what it holds before anything is
/// allocated from them.
#[test]
fn declared_sizes_are_checked_before_allocating() {
    let e = dump_error(&edited("tanh_mse", |_, m| {
        m.insert("layers".into(), "1000000000000".into());
    }));
    assert!(e.contains("layers") && e.contains("1000000000000"), "{e}");
    // A tiny file whose batch would need terabytes of activations.
    let e = dump_error(&edited("tanh_mse", |t, _| {
        let x = t.iter_mut().find(|(n, _)| n == "x").unwrap();
        x.1.shape = vec![1 << 20, 1 << 20, 0];
        x.1.bytes.clear();
        let h0 = t.iter_mut().find(|(n, _)| n == "h0").unwrap();
        h0.1.shape = vec![1, 1 << 20, 6];
        h0.1.bytes = vec![0; (1 << 20) * 6 * 8];
    }));
    assert!(e.contains("must be positive"), "{e}");
}
