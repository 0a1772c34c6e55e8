//! Crash-safe checkpoints: a child process saving checkpoints in a loop is SIGKILLed at random
//! moments, many times; the file left behind always loads, passes its checksum, and is exactly
//! one of the states that were saved. A flipped bit is a clear error.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::scratch_dir;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rnn_core::io;
use rnn_core::optim::{Optimizer, OptimizerKind};
use rnn_core::prelude::*;

const DIR_VAR: &str = "RNN_CRASH_DIR";

fn model() -> RnnConfig {
    RnnConfig::lstm(16, 64, 8).layers(2)
}

/// The state saved at iteration `i`: every parameter and optimizer value derived from `i`,
/// so a file mixing two saves would be caught.
fn state(i: u64) -> (Vec<f32>, Optimizer<f32>) {
    let n = rnn_core::params::Layout::new(&model()).len;
    let params = (0..n).map(|k| (i as f32) + (k % 7) as f32 * 0.25).collect();
    let mut opt = Optimizer::new(OptimizerKind::adam(0.01), n);
    opt.state1.iter_mut().for_each(|v| *v = i as f32);
    opt.state2.iter_mut().for_each(|v| *v = 2.0 * i as f32);
    opt.steps = i;
    (params, opt)
}

/// The child: saves states 1, 2, 3, ... to the same path until killed.
#[test]
#[ignore = "run by checkpoints_survive_sigkill as a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let path = PathBuf::from(dir).join("ckpt.safetensors");
    for i in 1.. {
        let (params, opt) = state(i);
        io::save_checkpoint(&path, &model(), &params, &opt).unwrap();
    }
}

#[test]
fn checkpoints_survive_sigkill() {
    let dir = scratch_dir("crash");
    let path = dir.join("ckpt.safetensors");
    let mut rng = StdRng::seed_from_u64(1);
    let mut last_seen = 0;
    let kills = if std::env::var_os("CI").is_some() {
        25
    } else {
        40
    };
    for round in 0..kills {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "crash::crash_child", "--nocapture"])
            .env(DIR_VAR, &dir)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(5..80)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        if !path.exists() {
            continue; // killed before its first save finished: nothing half-written either
        }
        let cfg = model();
        let n = rnn_core::params::Layout::new(&cfg).len;
        let mut params = vec![0.0f32; n];
        let mut opt = Optimizer::new(OptimizerKind::adam(0.01), n);
        io::load_checkpoint(&path, &cfg, &mut params, &mut opt)
            .unwrap_or_else(|e| panic!("round {round}: the checkpoint left behind is bad: {e}"));
        let (want_params, want_opt) = state(opt.steps);
        assert_eq!(params, want_params, "round {round}: a mixed state");
        assert_eq!((opt.state1, opt.state2), (want_opt.state1, want_opt.state2));
        last_seen = last_seen.max(opt.steps);
    }
    assert!(last_seen > 0, "no child ever completed a save");
    // Temporary files of killed writers may remain; they are never the checkpoint itself.
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flipped_or_truncated_checkpoints_are_errors() {
    let dir = scratch_dir("flip");
    let path = dir.join("ckpt.safetensors");
    let (params, opt) = state(3);
    io::save_checkpoint(&path, &model(), &params, &opt).unwrap();
    let good = std::fs::read(&path).unwrap();
    let n = params.len();
    let load = || {
        let mut p = vec![0.0f32; n];
        let mut o = Optimizer::new(OptimizerKind::adam(0.01), n);
        io::load_checkpoint(&path, &model(), &mut p, &mut o)
    };
    load().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    for _ in 0..20 {
        // A bit in the data (past the JSON header), where the format itself cannot notice.
        let header = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize + 8;
        let at = rng.random_range(header..good.len());
        let mut bad = good.clone();
        bad[at] ^= 1 << rng.random_range(0..8);
        std::fs::write(&path, &bad).unwrap();
        let e = load().unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    assert!(matches!(load().unwrap_err(), RnnError::Format(_)));
    std::fs::remove_dir_all(&dir).unwrap();
}
