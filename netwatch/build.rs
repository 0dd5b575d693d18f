//! Builds netwatch's eBPF programs (`netwatch-ebpf`) for the BPF target and leaves the
//! objects in `OUT_DIR`, where `src/probe.rs` embeds them with `include_bytes_aligned!`: one
//! for kernels with BPF compare-and-swap (5.12+), one for older ones (`no-cmpxchg`).

fn main() -> anyhow::Result<()> {
    netwatch_ebpf_build::build(&["netwatch-ebpf"])?;
    netwatch_ebpf_build::build_variant(&["netwatch-ebpf"], Some("no-cmpxchg"))
}
