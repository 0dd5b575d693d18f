//! Building this crate depends on the `bpf-linker` binary, which cargo cannot know about:
//! rebuild when the linker on PATH changes.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask build` to install it"
        ),
    }
}
