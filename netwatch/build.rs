//! Builds the eBPF programs (`netwatch-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR`, where `src/probe.rs` embeds it with `include_bytes_aligned!`.
//!
//! The eBPF crate needs `-Z build-std=core`. It is built with the same pinned stable
//! toolchain as everything else (rust-toolchain.toml), with `RUSTC_BOOTSTRAP=1` set for that
//! inner build only, so no nightly can ever break it.
use std::{env, fs, path::Path};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("no workspace"))?;
    let toolchain_file = workspace.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let channel =
        pinned_channel(&fs::read_to_string(&toolchain_file).context("rust-toolchain.toml")?)?;
    let ebpf_dir = workspace.join("netwatch-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;

    // SAFETY: build scripts are single-threaded; this only shapes the inner cargo's env.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "netwatch-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&channel),
    )
}

/// The `channel = "..."` of rust-toolchain.toml.
fn pinned_channel(toml: &str) -> anyhow::Result<String> {
    toml.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| anyhow!("rust-toolchain.toml has no channel"))
}
