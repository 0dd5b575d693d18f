//! The eBPF programs live in `main.rs` (a `bin` built for the BPF target by
//! `netwatch/build.rs`). This empty library lets `netwatch` declare a build-dependency on
//! the crate, so cargo rebuilds the programs when their sources change.
#![no_std]
