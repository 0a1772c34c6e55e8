//! Kernel throughput: products in GFLOP/s against plain faer, elementwise kernels in GB/s
//! against a scalar `std` loop.
//!
//! `cargo bench -p kernels --bench kernels -- gemm_small` (products), `-- panels` (packed
//! step products), `-- weight_gradient` (products over all steps) or `-- tanh`
//! (activations).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use faer::linalg::matmul::matmul;
use faer::{Accum, Par};
use faer::{MatMut, MatRef};
use kernels::aligned::AlignedVec;
use kernels::gemm::{self, GemmShape};
use kernels::panels::Panels;
use kernels::{Float, activation};

fn data<T: Float>(n: usize) -> Vec<T> {
    (0..n)
        .map(|i| T::of(((i * 7919) % 1000) as f64 / 500.0 - 1.0))
        .collect()
}

/// The recurrent product `Z[B, H] += H_prev[B, H] · W[H, H]` by the small-M kernel and by faer.
fn recurrent_products(c: &mut Criterion) {
    for (b, h) in [
        (1, 64),
        (1, 256),
        (1, 512),
        (1, 1024),
        (4, 256),
        (8, 256),
        (16, 256),
        (32, 256),
        (64, 1024),
    ] {
        let s = GemmShape::new(b, h, h);
        let mut group = c.benchmark_group(format!("gemm_small_b{b}_h{h}"));
        group.throughput(Throughput::Elements(s.flops() as u64));
        let (a, w) = (data::<f32>(b * h), data::<f32>(h * h));
        let mut z = vec![0.0f32; b * h];
        group.bench_function("gemm_nn", |bch| {
            bch.iter(|| {
                gemm::gemm_nn(
                    &mut z,
                    Accum::Add,
                    black_box(&a),
                    black_box(&w),
                    s,
                    Par::Seq,
                )
            })
        });
        group.bench_function("small_m", |bch| {
            bch.iter(|| gemm::small_m_gemm_nn(&mut z, Accum::Add, black_box(&a), black_box(&w), s))
        });
        group.bench_function("faer_nn", |bch| {
            bch.iter(|| {
                gemm::faer_nn(
                    &mut z,
                    Accum::Add,
                    black_box(&a),
                    black_box(&w),
                    s,
                    Par::Seq,
                )
            })
        });
        // faer's best orientation for a GEMV: the weight on the left, column-major.
        group.bench_function("faer_nt", |bch| {
            bch.iter(|| {
                gemm::gemm_nt(
                    &mut z,
                    Accum::Add,
                    black_box(&a),
                    black_box(&w),
                    s,
                    Par::Seq,
                )
            })
        });
        group.finish();
    }
}

fn tanh_throughput<T: Float>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("tanh_{}", T::NAME));
    for n in [256usize, 8192, 262_144] {
        let x = data::<T>(n);
        let mut y = vec![T::zero(); n];
        group.throughput(Throughput::Bytes((2 * n * T::BYTES) as u64));
        group.bench_with_input(BenchmarkId::new("pulp", n), &n, |b, _| {
            b.iter(|| activation::tanh(&mut y, black_box(&x)))
        });
        group.bench_with_input(BenchmarkId::new("std_scalar", n), &n, |b, _| {
            b.iter(|| {
                for (o, i) in y.iter_mut().zip(black_box(&x)) {
                    *o = num_traits::Float::tanh(*i);
                }
            })
        });
        let dh = data::<T>(n);
        group.bench_with_input(BenchmarkId::new("tanh_backward", n), &n, |b, _| {
            b.iter(|| {
                activation::tanh_backward(&mut y, Accum::Replace, black_box(&dh), black_box(&x))
            })
        });
    }
    group.finish();
}

/// A unit block's recurrent product `Z[B, n] += H[B, k] · B[k, n]`, with `B` a column block
/// of a wider row-major weight (row stride `2n`), by faer (which repacks `B` every call)
/// and by [`Panels`] (packed once, outside the timed loop). The shapes are the two-block
/// steps of the reference workloads: RNN char (32 x 256 x 512), LSTM char backward
/// (32 x 256 x 2048), RNN large / LSTM large forward per gate (64 x 512 x 1024), LSTM
/// large backward (64 x 512 x 4096), RNN medium (32 x 128 x 256).
fn panel_products(c: &mut Criterion) {
    for (b, n, k) in [
        (32, 256, 512),
        (32, 256, 2048),
        (64, 512, 1024),
        (64, 512, 4096),
        (32, 128, 256),
    ] {
        let s = GemmShape::new(b, n, k);
        let mut group = c.benchmark_group(format!("panels_b{b}_n{n}_k{k}"));
        group.throughput(Throughput::Elements(s.flops() as u64));
        let (a, w) = (data::<f32>(b * k), data::<f32>(k * 2 * n));
        let a = MatRef::from_row_major_slice(&a, b, k);
        let w = MatRef::from_row_major_slice(&w, k, 2 * n).subcols(0, n);
        let mut z = vec![0.0f32; b * n];
        group.bench_function("faer", |bch| {
            bch.iter(|| {
                let z = MatMut::from_row_major_slice_mut(&mut z, b, n);
                matmul(z, Accum::Add, black_box(a), black_box(w), 1.0, Par::Seq)
            })
        });
        let mut packed = Panels::new(k, n);
        packed.pack(w);
        group.bench_function("panels", |bch| {
            bch.iter(|| {
                let z = MatMut::from_row_major_slice_mut(&mut z, b, n);
                packed.product(z, Accum::Add, black_box(a))
            })
        });
        group.finish();
    }
}

/// Weight gradients `dW[m, n] = dZ[k, m]ᵀ · X[k, n]` over `k = T·B` rows, by `gemm_tn` (which
/// sums the rows in blocks, `gemm::depth_block`) and by one faer product over all rows, on
/// buffers like the engine's workspace (`AlignedVec`: cache-line aligned, on transparent huge
/// pages where the kernel grants them). The shapes are the reference workloads' `dW_hh` and
/// `dW_ih`: LSTM large (4096 x 1024 x 3200, 4096 x 256 x 3200), RNN large (1024 x 1024 x 3200),
/// LSTM char (2048 x 512 x 4096, and its `dW_ih` 2048 x 65 x 4096), GRU char in chunks of 16
/// steps (1536 x 512 x 512), RNN medium (256 x 256 x 3200).
fn weight_gradients(c: &mut Criterion) {
    for (m, n, k) in [
        (4096, 1024, 3200),
        (4096, 256, 3200),
        (1024, 1024, 3200),
        (2048, 512, 4096),
        (1536, 512, 512),
        (256, 256, 3200),
        (2048, 65, 4096),
    ] {
        let s = GemmShape::new(m, n, k);
        let mut group = c.benchmark_group(format!("weight_gradient_{m}x{n}x{k}"));
        group.throughput(Throughput::Elements(s.flops() as u64));
        let (dz, x) = (
            AlignedVec::from_slice(&data(k * m)),
            AlignedVec::from_slice(&data(k * n)),
        );
        let mut dw = AlignedVec::<f32>::zeros(m * n);
        group.bench_function("gemm_tn", |bch| {
            bch.iter(|| gemm::gemm_tn(&mut dw, Accum::Replace, black_box(&dz), &x, s, Par::Seq))
        });
        group.bench_function("faer", |bch| {
            bch.iter(|| {
                let dz = MatRef::from_row_major_slice(black_box(&dz), k, m);
                let x = MatRef::from_row_major_slice(&x, k, n);
                let dw = MatMut::from_row_major_slice_mut(&mut dw, m, n);
                matmul(dw, Accum::Replace, dz.transpose(), x, 1.0, Par::Seq)
            })
        });
        group.finish();
    }
}

fn activations(c: &mut Criterion) {
    tanh_throughput::<f32>(c);
    tanh_throughput::<f64>(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_millis(800));
    targets = recurrent_products, panel_products, weight_gradients, activations
}
criterion_main!(benches);
