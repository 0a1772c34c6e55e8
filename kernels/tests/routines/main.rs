//! The kernels' integration tests: every routine against a reference, one module per family.
//!
//! They form one test binary, not one per file: each binary links faer and the kernels again,
//! which costs CI compile time for no test time.

mod common;

mod dropout;
mod elementwise;
mod gates;
mod gemm;
mod panels;
