//! The eBPF programs live in `main.rs` (a `bin` built for the BPF target by `ebpf-build`, from
//! netwatch's build script, twice: with and without the `no-cmpxchg` feature) and the
//! benchmarks' reference programs in `bench.rs`. This empty library lets `netwatch` declare a
//! build-dependency on the crate, so cargo rebuilds the programs when their sources change.
#![no_std]
