//! Builds netwatch's eBPF programs (`netwatch-ebpf`) for the BPF target and leaves the
//! object in `OUT_DIR`, where `src/probe.rs` embeds it with `include_bytes_aligned!`.

fn main() -> anyhow::Result<()> {
    netwatch_ebpf_build::build(&["netwatch-ebpf"])
}
