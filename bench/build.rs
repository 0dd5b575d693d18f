//! Builds the benchmarks' reference programs (`netwatch-ebpf`'s `netwatch-bench` binary)
//! with the same compiler as netwatch's own, into `OUT_DIR`: only the bench embeds them.

fn main() -> anyhow::Result<()> {
    netwatch_ebpf_build::build(&["netwatch-bench"])
}
