//! Times every matrix product of one training step of a workload, in isolation, to show
//! which fall short of the machine's GEMM rate (the per-step products both as whole faer
//! products and, when the engine splits the workload's steps, as the two unit blocks'
//! packed-panel products it actually runs):
//! `cargo run --release -p bench-suite --example gemm_breakdown -- medium [rnn|lstm|gru] [threads]`
//! (threads for the all-steps products; the per-step ones are timed on one thread).

use rnn_core::config::Cell;
use std::time::Instant;

use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};
use kernels::aligned::AlignedVec;
use kernels::gemm::{GemmShape, gemm_nn, gemm_nt, gemm_tn};
use kernels::panels::Panels;
use rnn_core::network::UnitSplit;

/// Parallelism of the all-steps products (set once from the command line).
static PAR: std::sync::OnceLock<Par> = std::sync::OnceLock::new();

type Product = fn(&mut [f32], Accum, &[f32], &[f32], GemmShape, Par);

/// A buffer of the engine's kind (`AlignedVec`: on a cache line, and on transparent huge
/// pages where the kernel grants them), filled with `value`. On plain `Vec`s some products
/// ran at other speeds than in the engine: the weight gradients, whose rows are a power of
/// two apart, collide in the cache more on huge pages (`kernels::gemm::depth_block`).
fn filled(len: usize, value: f32) -> AlignedVec<f32> {
    let mut v = AlignedVec::zeros(len);
    v.fill(value);
    v
}

fn time(name: &str, f: Product, s: GemmShape, a_len: usize, b_len: usize, calls: usize) -> f64 {
    let par = if calls == 1 {
        PAR.get().copied().unwrap_or(Par::Seq)
    } else {
        Par::Seq
    };
    let a = filled(a_len * calls.min(100), 0.01);
    let b = filled(b_len, 0.02);
    let mut c = filled(s.m * s.n * calls.min(100), 0.0);
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

/// The per-step products of a step split into two unit blocks, as the engine runs them: each
/// block's forward product per gate (`[B, H/2] (+)= h · W_hhᵀ` columns) and its backward
/// product (`[B, H/2] += dZ · W_hh` columns), from weights packed once
/// (`kernels::panels`), over `t` steps. Returns the forward and backward seconds.
fn time_panels(b: usize, h: usize, gates: usize, t: usize) -> (f64, f64) {
    let gh = gates * h;
    let w: Vec<f32> = (0..gh * h)
        .map(|i| ((i % 97) as f32 - 48.0) / 480.0)
        .collect();
    let w = MatRef::from_row_major_slice(&w, gh, h);
    let units = [0..h / 2, h / 2..h];
    let forward: Vec<Vec<Panels<f32>>> = (units.iter())
        .map(|u| {
            (0..gates)
                .map(|k| {
                    let mut p = Panels::new(h, u.len());
                    p.pack(w.subrows(k * h + u.start, u.len()).transpose());
                    p
                })
                .collect()
        })
        .collect();
    let backward: Vec<Panels<f32>> = (units.iter())
        .map(|u| {
            let mut p = Panels::new(gh, u.len());
            p.pack(w.subcols(u.start, u.len()));
            p
        })
        .collect();
    let (hs, dz) = (filled(b * h, 0.01), filled(b * gh, 0.02));
    let (mut z, mut dh) = (filled(b * gh, 0.0), filled(b * h, 0.0));
    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let fwd = best(&mut || {
        for _ in 0..t {
            let a = MatRef::from_row_major_slice(&hs, b, h);
            let mut zm = MatMut::from_row_major_slice_mut(&mut z, b, gh);
            for (u, panels) in units.iter().zip(&forward) {
                for (k, p) in panels.iter().enumerate() {
                    let zk = zm.rb_mut().subcols_mut(k * h + u.start, u.len());
                    p.product(zk, Accum::Add, a);
                }
            }
        }
    });
    let bwd = best(&mut || {
        for _ in 0..t {
            let a = MatRef::from_row_major_slice(&dz, b, gh);
            let mut dm = MatMut::from_row_major_slice_mut(&mut dh, b, h);
            for (u, p) in units.iter().zip(&backward) {
                p.product(dm.rb_mut().subcols_mut(u.start, u.len()), Accum::Add, a);
            }
        }
    });
    (fwd, bwd)
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
    if UnitSplit::Auto.blocks(b, h, cell.gates()) == 2 {
        let (fwd, bwd) = time_panels(b, h, cell.gates(), t);
        let flops = 2.0 * (t * b * gh * h) as f64;
        println!(
            "F2/B3 as the engine runs them (two unit blocks, packed panels): forward {:.3} ms \
             {:.1} GFLOP/s, backward {:.3} ms {:.1} GFLOP/s",
            fwd * 1e3,
            flops / fwd / 1e9,
            bwd * 1e3,
            flops / bwd / 1e9
        );
    }
    println!(
        "products total {:.2} ms, {:.1} GFLOP/s over the step's {:.2} GFLOP",
        total * 1e3,
        w.flops(cell) / total / 1e9,
        w.flops(cell) / 1e9
    );
}
