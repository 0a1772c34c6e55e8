//! Weight averages (`average::WeightAverage`): PyTorch's `AveragedModel` (EMA and uniform)
//! bit for bit, their checks, and a resume from a checkpoint that averages on exactly.

use crate::common::scratch_dir;
use crate::fixtures;

use kernels::Float;
use rnn_core::average::{Averaging, WeightAverage};
use rnn_core::error::RnnError;
use rnn_core::io::{self, Extras};
use rnn_core::prelude::*;

/// Runs a fixture (`average(...)` in scripts/torch_fixtures.py) in `T`: after every update
/// the average must be PyTorch's, bit for bit.
fn check_fixture<T: Float>(name: &str) {
    let bytes = io::read_bytes(&fixtures::path(&format!("average_{name}.safetensors"))).unwrap();
    let (st, meta) = io::parse_with_metadata(&bytes).unwrap();
    let (weights, shape) = io::float_tensor::<T>(&st, "weights").unwrap();
    let (averages, _) = io::float_tensor::<T>(&st, "averages").unwrap();
    let mut avg = match meta["kind"].as_str() {
        "ema" => WeightAverage::<T>::ema(meta["decay"].parse().unwrap()).unwrap(),
        _ => WeightAverage::<T>::uniform(),
    };
    let size = shape[1];
    for (k, (w, want)) in weights
        .chunks_exact(size)
        .zip(averages.chunks_exact(size))
        .enumerate()
    {
        avg.update(w).unwrap();
        for (i, (got, want)) in avg.params().iter().zip(want).enumerate() {
            assert_eq!(
                got.to_bits_u64(),
                want.to_bits_u64(),
                "{name}: update {k}, [{i}]: {got} vs PyTorch {want}"
            );
        }
    }
    assert_eq!(avg.count(), shape[0] as u64);
}

/// Bits of a float, for exact comparison in either type.
trait Bits {
    fn to_bits_u64(self) -> u64;
}
impl<T: Float> Bits for T {
    fn to_bits_u64(self) -> u64 {
        self.f64().to_bits()
    }
}

/// `AveragedModel` with `get_ema_multi_avg_fn` (a lerp weight below and above ½) and with
/// the default uniform average, in f64 and f32: the same bits after every update.
#[test]
fn weight_averages_match_pytorch() {
    check_fixture::<f64>("ema_f64");
    check_fixture::<f64>("ema_heavy_f64");
    check_fixture::<f64>("uniform_f64");
    check_fixture::<f32>("ema_f32");
    check_fixture::<f32>("uniform_f32");
}

/// Weights of another length or not finite, a decay outside [0, 1], a swap before any
/// average: typed errors, and the average is unchanged.
#[test]
fn averages_refuse_bad_input_unchanged() {
    assert!(matches!(
        WeightAverage::<f32>::ema(1.5),
        Err(RnnError::Config(_))
    ));
    assert!(matches!(
        WeightAverage::<f32>::ema(-0.1),
        Err(RnnError::Config(_))
    ));
    let mut avg = WeightAverage::<f64>::ema(0.5).unwrap();
    let mut params = vec![1.0, 2.0, 3.0];
    assert!(matches!(
        avg.swap(&mut params),
        Err(RnnError::ShapeMismatch { .. })
    ));
    avg.update(&params).unwrap();
    assert!(matches!(
        avg.update(&[1.0, 2.0]),
        Err(RnnError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        avg.update(&[1.0, f64::NAN, 3.0]),
        Err(RnnError::NonFiniteInput { .. })
    ));
    assert_eq!((avg.params(), avg.count()), (&[1.0, 2.0, 3.0][..], 1));
    avg.update(&[3.0, 2.0, 1.0]).unwrap();
    assert_eq!(avg.params(), [2.0, 2.0, 2.0]);
    avg.swap(&mut params).unwrap();
    assert_eq!(
        (avg.params(), &params[..]),
        (&[1.0, 2.0, 3.0][..], &[2.0, 2.0, 2.0][..])
    );
}

/// An average saved with a checkpoint and restored averages on to the same bits as one
/// never stopped; a checkpoint's average of another kind, or an inconsistent one, is refused
/// and nothing changes.
#[test]
fn a_restored_average_goes_on_exactly() {
    let dir = scratch_dir("average");
    let cfg = RnnConfig::lstm(2, 6, 1);
    let spec = LossSpec::every_step(LossKind::Mse);
    let (x, y) = (vec![0.3f32; 5 * 2 * 2], vec![0.7f32; 5 * 2]);
    let batch = Batch::new(5, 2, &x, Target::Values(&y));
    let mut tr = Trainer::<f32>::new(cfg, spec.clone(), OptimizerKind::adam(1e-2), 0).unwrap();
    let mut whole = WeightAverage::uniform();
    for _ in 0..3 {
        tr.step(&batch).unwrap();
        whole.update(&tr.params).unwrap();
    }
    let path = dir.join("run.safetensors");
    let mut extras = Extras::default();
    whole.save(&mut extras);
    io::save_checkpoint_with(&path, &cfg, &tr.params, &tr.optimizer, &extras).unwrap();

    let mut resumed_tr = Trainer::<f32>::new(cfg, spec, OptimizerKind::adam(1e-2), 9).unwrap();
    let extras = io::load_checkpoint_with(
        &path,
        &cfg,
        &mut resumed_tr.params,
        &mut resumed_tr.optimizer,
    )
    .unwrap();
    let mut resumed = WeightAverage::uniform();
    resumed.restore(&extras).unwrap();
    for _ in 0..3 {
        for (t, a) in [(&mut tr, &mut whole), (&mut resumed_tr, &mut resumed)] {
            t.step(&batch).unwrap();
            a.update(&t.params).unwrap();
        }
    }
    assert_eq!((resumed.params(), resumed.count()), (whole.params(), 6));

    // Another kind, a count without weights, a NaN: refused, the average as it was.
    let mut ema = WeightAverage::<f32>::ema(0.9).unwrap();
    assert!(matches!(ema.restore(&extras), Err(RnnError::Format(_))));
    assert_eq!(
        (ema.count(), ema.averaging()),
        (0, Averaging::Ema { decay: 0.9 })
    );
    let mut edited = extras.clone();
    edited.tensors.iter_mut().for_each(|(_, v)| v.clear());
    assert!(matches!(resumed.restore(&edited), Err(RnnError::Format(_))));
    let mut edited = extras.clone();
    edited.tensors.iter_mut().for_each(|(_, v)| v[2] = f32::NAN);
    assert!(matches!(resumed.restore(&edited), Err(RnnError::Format(_))));
    assert_eq!((resumed.params(), resumed.count()), (whole.params(), 6));
    std::fs::remove_dir_all(&dir).unwrap();
}
