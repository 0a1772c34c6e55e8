//! Times every matrix product of one training step of a workload, in isolation, to show
//! which fall short of the machine's GEMM rate:
//! `cargo run --release -p bench-suite --example gemm_breakdown -- medium [rnn|lstm|gru] [threads]`
//! (threads for the all-steps products; the per-step ones are timed on one thread).

use rnn_core::config::Cell;
use std::time::Instant;

use faer::{Accum, Par};
use kernels::gemm::{GemmShape, gemm_nn, gemm_nt, gemm_tn};

/// Parallelism of the all-steps products (set once from the command line).
static PAR: std::sync::OnceLock<Par> = std::sync::OnceLock::new();

type Product = fn(&mut [f32], Accum, &[f32], &[f32], GemmShape, Par);

fn time(name: &str, f: Product, s: GemmShape, a_len: usize, b_len: usize, calls: usize) -> f64 {
    let par = if calls == 1 {
        PAR.get().copied().unwrap_or(Par::Seq)
    } else {
        Par::Seq
    };
    let a = vec![0.01f32; a_len * calls.min(100)];
    let b = vec![0.02f32; b_len];
    let mut c = vec![0.0f32; s.m * s.n * calls.min(100)];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        for i in 0..calls {
            let j = i % 100;
            f(
                &mut c[j * s.m * s.n..(j + 1) * s.m * s.n],
                Accum::Add,
                &a[j * a_len..(j + 1) * a_len],
                &b,
                s,
                par,
            );
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{name:28} {:>5}x {:4}x{:4}x{:4}  {:7.3} ms  {:6.1} GFLOP/s",
        calls,
        s.m,
        s.n,
        s.k,
        best * 1e3,
        s.flops() * calls as f64 / best / 1e9
    );
    best
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "medium".into());
    let w = bench_suite::Workload::named(&name).expect("workload");
    let cell = Cell::parse(&std::env::args().nth(2).unwrap_or_else(|| "rnn".into())).expect("cell");
    let threads: usize = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    PAR.set(if threads > 1 {
        Par::rayon(threads)
    } else {
        Par::Seq
    })
    .expect("set once");
    let (t, b, i, h, o) = (w.t, w.b, w.i, w.h, w.o);
    // Gate rows: every product touching W_ih or W_hh is G times wider.
    let gh = cell.gates() * h;
    let rows = t * b;
    let mut total = 0.0;
    total += time(
        "F1 input projection (nt)",
        gemm_nt,
        GemmShape::new(rows, gh, i),
        rows * i,
        gh * i,
        1,
    );
    total += time(
        "F2 recurrent step (nn)",
        gemm_nn,
        GemmShape::new(b, gh, h),
        b * h,
        h * gh,
        t,
    );
    total += time(
        "F3 head (nt)",
        gemm_nt,
        GemmShape::new(rows, o, h),
        rows * h,
        o * h,
        1,
    );
    total += time(
        "B1 dW_hy (tn)",
        gemm_tn,
        GemmShape::new(o, h, rows),
        rows * o,
        rows * h,
        1,
    );
    total += time(
        "B2 dH from head (nn)",
        gemm_nn,
        GemmShape::new(rows, h, o),
        rows * o,
        o * h,
        1,
    );
    total += time(
        "B3 recurrent step (nn)",
        gemm_nn,
        GemmShape::new(b, h, gh),
        b * gh,
        h * gh,
        t,
    );
    total += time(
        "B4 dW_hh (tn)",
        gemm_tn,
        GemmShape::new(gh, h, rows),
        rows * gh,
        rows * h,
        1,
    );
    total += time(
        "B5 dW_ih (tn)",
        gemm_tn,
        GemmShape::new(gh, i, rows),
        rows * gh,
        rows * i,
        1,
    );
    println!(
        "products total {:.2} ms, {:.1} GFLOP/s over the step's {:.2} GFLOP",
        total * 1e3,
        w.flops(cell) / total / 1e9,
        w.flops(cell) / 1e9
    );
}
