//! Installs what the build and the tests need and is missing, saying what and why:
//! the rust-src component, the LLVM development package matching rustc's LLVM, bpf-linker
//! built against it, and the Debian packages of the namespace lab.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd, is_root, say};

/// bpf-linker release the build is known to work with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// A Debian package and a file it provides, to tell whether it is installed.
pub struct Package {
    pub name: &'static str,
    pub provides: &'static str,
    pub why: &'static str,
}

/// What the namespace lab and the tests drive.
pub const LAB_PACKAGES: &[Package] = &[
    Package {
        name: "iproute2",
        provides: "/usr/sbin/ip",
        why: "network namespaces and veth pairs",
    },
    Package {
        name: "nftables",
        provides: "/usr/sbin/nft",
        why: "the lab firewall",
    },
    Package {
        name: "iptables",
        provides: "/usr/sbin/iptables-nft",
        why: "iptables-nft and legacy iptables rules in the ruleset tests",
    },
    Package {
        name: "dnsmasq-base",
        provides: "/usr/sbin/dnsmasq",
        why: "the lab DNS server",
    },
    Package {
        name: "dnsutils",
        provides: "/usr/bin/dig",
        why: "DNS queries over UDP and TCP",
    },
    Package {
        name: "iputils-ping",
        provides: "/usr/bin/ping",
        why: "ICMP echo",
    },
    Package {
        name: "curl",
        provides: "/usr/bin/curl",
        why: "HTTP clients",
    },
    Package {
        name: "netcat-openbsd",
        provides: "/usr/bin/nc.openbsd",
        why: "TCP connects",
    },
    Package {
        name: "bpftool",
        provides: "/usr/sbin/bpftool",
        why: "checking nothing stays attached",
    },
    Package {
        name: "util-linux",
        provides: "/usr/bin/setpriv",
        why: "running netwatch with only the capabilities it needs",
    },
    Package {
        name: "tmux",
        provides: "/usr/bin/tmux",
        why: "driving the live view in a real terminal",
    },
    Package {
        name: "prometheus",
        provides: "/usr/bin/promtool",
        why: "checking the metrics and the alert rules",
    },
    Package {
        name: "tcpdump",
        provides: "/usr/bin/tcpdump",
        why: "captures the trust tests check netwatch against",
    },
    Package {
        name: "tshark",
        provides: "/usr/bin/tshark",
        why: "the independent dissector of the differential test",
    },
    Package {
        name: "wireguard-tools",
        provides: "/usr/bin/wg",
        why: "the keys and peers of the kernel matrix's WireGuard tunnel",
    },
];

/// What the benchmarks drive besides the lab's tools.
pub const BENCH_PACKAGES: &[Package] = &[
    Package {
        name: "tcpdump",
        provides: "/usr/bin/tcpdump",
        why: "the capture netwatch is compared with",
    },
    Package {
        name: "util-linux",
        provides: "/usr/bin/taskset",
        why: "pinning the traffic generator",
    },
];

/// LLVM major of the pinned rustc (`rustc -vV`).
pub fn rustc_llvm_major() -> anyhow::Result<u32> {
    let out = cmd::output(Command::new("rustc").arg("-vV"))?;
    parse_llvm_major(&out).context("`rustc -vV` printed no LLVM version")
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|version| version.trim().split('.').next())
        .and_then(|major| major.parse().ok())
}

/// Everything `cargo build` of netwatch needs: rust-src, and bpf-linker linked against the
/// LLVM of the pinned rustc (installing llvm-N-dev first when bpf-linker must be built).
pub fn ensure_build_toolchain() -> anyhow::Result<()> {
    ensure_rust_src()?;
    let major = rustc_llvm_major()?;
    put_cargo_bin_on_path()?;
    let linker = cargo_bin_dir().join("bpf-linker");
    match linked_llvm_major(&linker) {
        Some(found) if found == major => return Ok(()),
        Some(found) => say(&format!(
            "reinstalling bpf-linker: it links LLVM {found}, rustc uses LLVM {major}"
        )),
        None => say(&format!(
            "installing bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about a minute)"
        )),
    }
    let llvm_prefix = PathBuf::from(format!("/usr/lib/llvm-{major}"));
    if !llvm_prefix.join("lib/libLLVM.so").exists() {
        say(&format!(
            "installing llvm-{major}-dev: bpf-linker must link the LLVM {major} that rustc uses"
        ));
        apt_install(&[format!("llvm-{major}-dev").as_str()])?;
    }
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &llvm_prefix),
    )?;
    match linked_llvm_major(&linker) {
        Some(found) if found == major => Ok(()),
        other => bail!("bpf-linker was installed but links LLVM {other:?}, expected {major}"),
    }
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let sysroot = cmd::output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        return Ok(());
    }
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "1.95.0".into());
    say(&format!(
        "installing rust-src for {toolchain}: the eBPF crate builds core from source"
    ));
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        &toolchain,
    ]))
}

fn cargo_bin_dir() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// cargo-installed binaries must be found by the eBPF build even under sudo or in CI.
fn put_cargo_bin_on_path() -> anyhow::Result<()> {
    let bin = cargo_bin_dir();
    let path = env::var_os("PATH").unwrap_or_default();
    if !env::split_paths(&path).any(|dir| dir == bin) {
        let mut dirs: Vec<PathBuf> = vec![bin];
        dirs.extend(env::split_paths(&path));
        // SAFETY: xtask is single-threaded here; this only shapes its children's PATH.
        unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
    }
    Ok(())
}

/// The LLVM major `bpf-linker` is dynamically linked against (from `ldd`).
fn linked_llvm_major(linker: &Path) -> Option<u32> {
    if !linker.exists() {
        return None;
    }
    let out = Command::new("ldd").arg(linker).output().ok()?;
    parse_ldd_llvm_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ldd_llvm_major(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|line| {
        let name = line.split_whitespace().next()?;
        // libLLVM.so.22.1 (Debian) or libLLVM-22.so (upstream)
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        rest.split(['.', '-']).next()?.parse().ok()
    })
}

/// Installs the Debian packages of `packages` whose file is missing.
pub fn ensure_packages(packages: &[Package]) -> anyhow::Result<()> {
    let missing: Vec<&Package> = packages
        .iter()
        .filter(|p| !Path::new(p.provides).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for package in &missing {
        say(&format!("installing {} ({})", package.name, package.why));
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    apt_install(&names)
}

fn apt_install(names: &[&str]) -> anyhow::Result<()> {
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut command = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            command.arg("apt-get");
        }
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    cmd::run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(names);
    cmd::run(&mut install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rustc_llvm_major() {
        let vv = "rustc 1.95.0 (59807616e 2026-04-14)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.2\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0"), None);
    }

    #[test]
    fn reads_ldd_llvm_major() {
        let debian = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibLLVM.so.22.1 => /usr/lib/x86_64-linux-gnu/libLLVM.so.22.1 (0x00007f)\n";
        assert_eq!(parse_ldd_llvm_major(debian), Some(22));
        let upstream = "\tlibLLVM-21.so => /usr/lib/llvm-21/lib/libLLVM-21.so (0x1)\n";
        assert_eq!(parse_ldd_llvm_major(upstream), Some(21));
        assert_eq!(
            parse_ldd_llvm_major("\tlibc.so.6 => /lib/libc.so.6\n"),
            None
        );
    }
}
