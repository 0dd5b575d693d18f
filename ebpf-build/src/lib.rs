//! Builds binaries of `netwatch-ebpf` (the BPF objects) from a build script and leaves each
//! in `OUT_DIR` under its name, for `include_bytes_aligned!`. `netwatch` builds its
//! programs, `netwatch-bench` the benchmarks' reference programs: the production binary
//! carries only its own.
//!
//! The eBPF crate needs `-Z build-std=core`: it is built with the pinned stable toolchain
//! (rust-toolchain.toml) and `RUSTC_BOOTSTRAP=1` for that inner build only, so no nightly
//! can break it. The inner cargo's output is shown only when it fails: a build script can
//! only print warnings, and "Compiling netwatch-ebpf" on every build is not one.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

/// The eBPF crate's package name.
const PACKAGE: &str = "netwatch-ebpf";
const TARGET: &str = "bpfel-unknown-none";

/// Builds `bins` of the eBPF crate (release) and copies each to `OUT_DIR/<bin>`.
pub fn build(bins: &[&str]) -> anyhow::Result<()> {
    build_variant(bins, None)
}

/// Builds `bins` of the eBPF crate with the cargo feature `feature` (or none), copying each
/// to `OUT_DIR/<bin>` (with a feature: `OUT_DIR/<bin>-<feature>`). A variant builds in a
/// target directory of its own, so the two builds never overwrite each other's binaries.
pub fn build_variant(bins: &[&str], feature: Option<&str>) -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("no workspace"))?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    let toolchain_file = workspace.join("rust-toolchain.toml");
    let ebpf_dir = workspace.join(PACKAGE);
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    // Directories: cargo reruns the script when anything under them changes (the eBPF crate
    // and the types it shares with userspace).
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("netwatch-common").display()
    );
    let channel =
        pinned_channel(&fs::read_to_string(&toolchain_file).context("rust-toolchain.toml")?)?;
    let mut target_dir = shared_target_dir(&out_dir);
    if let Some(feature) = feature {
        target_dir.as_mut_os_string().push(format!("-{feature}"));
    }

    let mut command = if which("rustup") {
        let mut command = Command::new("rustup");
        command.args(["run", &channel, "cargo"]);
        command
    } else {
        Command::new("cargo")
    };
    command
        .current_dir(&ebpf_dir)
        .args([
            "build",
            "--package",
            PACKAGE,
            "--release",
            "--target",
            TARGET,
        ])
        .args(["-Z", "build-std=core"])
        .args(bins.iter().flat_map(|bin| ["--bin", bin]))
        .args(feature.iter().flat_map(|feature| ["--features", feature]))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags()?)
        // The outer build's compiler and wrappers are for the host: the toolchain above decides.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER");
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        // A failing build script's stderr is shown in full.
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        bail!("building the eBPF programs failed ({})", output.status);
    }
    for bin in bins {
        let built = target_dir.join(TARGET).join("release").join(bin);
        let name = feature.map_or_else(|| (*bin).to_owned(), |feature| format!("{bin}-{feature}"));
        fs::copy(&built, out_dir.join(name))
            .with_context(|| format!("copying {}", built.display()))?;
    }
    Ok(())
}

/// The flags aya's programs need: the target architecture for its helpers, BTF for the
/// loader. And memory intrinsics expanded inline: bpf-linker's default
/// (`--bpf-expand-memcpy-in-order`, for JITs that pattern-match copies) leaves every
/// `memset` a call to a byte loop, a BPF function of its own: zeroing a request key was 40
/// iterations, and every read of a header field zeroed its fallback buffer that way.
fn rustflags() -> anyhow::Result<OsString> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    Ok(OsString::from(
        [
            format!("--cfg=bpf_target_arch=\"{arch}\""),
            "-Cdebuginfo=2".to_owned(),
            "-Clink-arg=--btf".to_owned(),
            "-Clink-arg=--disable-expand-memcpy-in-order".to_owned(),
        ]
        .join("\x1f"),
    ))
}

/// One target directory for every package that builds eBPF binaries in this profile
/// (`<target>/<profile>/ebpf`): the crate and its `core` are compiled once, and the inner
/// cargo's own lock orders concurrent builds.
fn shared_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .unwrap_or(out_dir)
        .join("ebpf")
}

fn which(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_comes_from_rust_toolchain_toml() {
        let toml = "[toolchain]\nchannel = \"1.95.0\"\ncomponents = [\"rust-src\"]\n";
        assert_eq!(pinned_channel(toml).unwrap(), "1.95.0");
        assert!(pinned_channel("[toolchain]\n").is_err());
    }

    #[test]
    fn every_package_of_a_profile_shares_one_ebpf_target_dir() {
        let out = Path::new("/w/target/release/build/netwatch-0123abcd/out");
        assert_eq!(shared_target_dir(out), Path::new("/w/target/release/ebpf"));
        let bench = Path::new("/w/target/release/build/netwatch-bench-4567/out");
        assert_eq!(shared_target_dir(bench), shared_target_dir(out));
    }
}
