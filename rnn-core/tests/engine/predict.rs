//! Inference: a [`Predictor`] fed in steps and runs of steps equals one forward pass over the
//! whole sequence, and bad input is a typed error that leaves its state alone.

use faer::Par;
use kernels::Float;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::RnnError;
use rnn_core::batch::{Batch, Target};
use rnn_core::config::{Cell, RnnConfig};
use rnn_core::network::{Exec, TimeChunks, UnitSplit, forward};
use rnn_core::params::{Layout, init_params};
use rnn_core::predict::Predictor;
use rnn_core::workspace::Workspace;

/// A two-layer model of `cell` and `T = 7` steps of `B = 3` random inputs.
fn model(cell: Cell, bias: bool) -> (RnnConfig, Vec<f64>, Vec<f64>) {
    projected_model(cell, bias, None)
}

/// [`model`], with LSTM projections of width `proj`.
fn projected_model(cell: Cell, bias: bool, proj: Option<usize>) -> (RnnConfig, Vec<f64>, Vec<f64>) {
    let mut cfg = RnnConfig::new(4, 9, 5).cell(cell).layers(2).bias(bias);
    cfg.proj_size = proj;
    let params = init_params::<f64>(&cfg, 3);
    let mut rng = StdRng::seed_from_u64(4);
    let x = (0..7 * 3 * 4)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    (cfg, params, x)
}

/// The workspace after one inference pass over `batch`.
fn forward_pass<T: Float>(
    cfg: &RnnConfig,
    params: &[T],
    batch: &Batch<T>,
    exec: impl Into<Exec>,
) -> Workspace<T> {
    let mut ws = Workspace::new();
    forward(cfg, &Layout::new(cfg), params, &mut ws, batch, false, exec).unwrap();
    ws
}

#[test]
fn steps_and_runs_equal_one_forward_pass() {
    let (t, b, i, o) = (7, 3, 4, 5);
    let models = [
        (Cell::Rnn, None),
        (Cell::Lstm, None),
        (Cell::Gru, None),
        (Cell::Lstm, Some(4)),
    ];
    for (cell, proj) in models {
        for bias in [true, false] {
            let (cfg, params, x) = projected_model(cell, bias, proj);
            let h = cfg.state_size();
            let ws = forward_pass(
                &cfg,
                &params,
                &Batch::new(t, b, &x, Target::Values(&[])),
                Par::Seq,
            );
            // Three steps at once, two one at a time, the last two at once.
            let mut p = Predictor::new(cfg, &params, b).unwrap();
            let mut ys = Vec::new();
            for (first, steps) in [(0, 3), (3, 1), (4, 1), (5, 2)] {
                let xs = &x[first * b * i..(first + steps) * b * i];
                let y = if steps == 1 {
                    p.step(xs).unwrap()
                } else {
                    p.run(xs, steps).unwrap()
                };
                assert_eq!(y.len(), steps * b * o);
                ys.extend_from_slice(y);
            }
            let close = |got: &[f64], want: &[f64], what: &str| {
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{cell:?} {proj:?} bias {bias}: {what}"
                );
                for (k, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-12,
                        "{cell:?} {proj:?} bias {bias}: {what}[{k}] = {g}, whole pass {w}"
                    );
                }
            };
            close(&ys, &ws.y, "y");
            let last: Vec<f64> = (ws.layers.iter())
                .flat_map(|l| l.hs[t * b * h..(t + 1) * b * h].to_vec())
                .collect();
            close(p.state(), &last, "state");
            if cell == Cell::Lstm {
                let hc = cfg.hidden_size;
                let cells: Vec<f64> = (ws.layers.iter())
                    .flat_map(|l| l.cs[t * b * hc..(t + 1) * b * hc].to_vec())
                    .collect();
                close(p.cell_state(), &cells, "cell state");
            }
        }
    }
}

#[test]
fn a_single_step_runs_whole_where_auto_splits_longer_passes() {
    // B = 32, H = 192: every cell's step is big enough for `Auto` to split a longer pass.
    let (b, i, h) = (32, 8, 192);
    for cell in [Cell::Rnn, Cell::Lstm, Cell::Gru] {
        let cfg = RnnConfig::new(i, h, 4).cell(cell);
        let params = init_params::<f32>(&cfg, 5);
        let mut rng = StdRng::seed_from_u64(6);
        let x: Vec<f32> = (0..2 * b * i)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        // The outputs of `steps` steps, and whether the pass packed W_hh into unit blocks' panels
        // and into `w_hh_t`.
        let pass = |steps, split| {
            let exec = Exec {
                par: Par::Seq,
                split,
                chunks: TimeChunks::Auto,
            };
            let batch = Batch::new(steps, b, &x[..steps * b * i], Target::Values(&[]));
            let ws = forward_pass(&cfg, &params, &batch, exec);
            let layer = &ws.layers[0];
            let packed = (!layer.blocks.is_empty(), !layer.w_hh_t.is_empty());
            (ws.y.to_vec(), packed)
        };
        assert_eq!(
            pass(2, UnitSplit::Auto).1,
            (true, false),
            "{cell:?}: two steps split"
        );
        assert_eq!(
            pass(2, UnitSplit::Whole).1,
            (false, true),
            "{cell:?}: W_hh transposed"
        );
        let (y, packed) = pass(1, UnitSplit::Auto);
        // One step runs whole and reads W_hh as it is: no packed copy of it, split or not.
        assert_eq!(packed, (false, false), "{cell:?}: one step packs nothing");
        assert_eq!(y, pass(1, UnitSplit::Whole).0, "{cell:?}");
        let mut p = Predictor::new(cfg, &params, b).unwrap();
        assert_eq!(p.step(&x[..b * i]).unwrap(), y, "{cell:?}: Predictor::step");
    }
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_the_state_alone() {
    let (cfg, params, x) = model(Cell::Lstm, true);
    let mut p = Predictor::new(cfg, &params, 3).unwrap();
    p.run(&x[..2 * 3 * 4], 2).unwrap();
    let state = p.state().to_vec();
    let ahead = p.clone().step(&x[..12]).unwrap().to_vec();
    let e = p.run(&[], 0).unwrap_err();
    assert!(matches!(e, RnnError::Empty { .. }), "{e}");
    let e = p.run(&x[..23], 2).unwrap_err();
    assert!(e.to_string().contains("[T=2, B=3, I=4] = 24"), "{e}");
    let e = p.step(&x[..13]).unwrap_err();
    assert!(matches!(e, RnnError::ShapeMismatch { .. }), "{e}");
    let mut nan = x[..12].to_vec();
    nan[5] = f64::NAN;
    let e = p.step(&nan).unwrap_err();
    assert!(
        matches!(e, RnnError::NonFiniteInput { index: 5, .. }),
        "{e}"
    );
    assert_eq!(p.state(), &state[..]);
    assert_eq!(p.step(&x[..12]).unwrap(), &ahead[..]);

    // The whole-batch forward pass checks its batch too, rather than panicking.
    let layout = Layout::new(&cfg);
    let mut ws = Workspace::new();
    let short = Batch::new(7, 3, &x[..80], Target::Values(&[]));
    let e = forward(&cfg, &layout, &params, &mut ws, &short, false, Par::Seq).unwrap_err();
    assert!(matches!(e, RnnError::ShapeMismatch { .. }), "{e}");
    let lengths = [7, 8, 1];
    let too_long = Batch {
        lengths: Some(&lengths),
        ..Batch::new(7, 3, &x, Target::Values(&[]))
    };
    let e = forward(&cfg, &layout, &params, &mut ws, &too_long, true, Par::Seq).unwrap_err();
    assert!(
        matches!(e, RnnError::LengthOutOfRange { index: 1, .. }),
        "{e}"
    );
}
