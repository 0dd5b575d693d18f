//! What the running kernel's BPF can do, asked of the kernel itself (a version number says
//! nothing of backports): a tiny program is loaded and thrown away.

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_type};

use crate::batch;

/// One BPF instruction as the kernel reads it: opcode, registers (destination in the low
/// nibble, source in the high one), offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let off = off.to_le_bytes();
    let imm = imm.to_le_bytes();
    u64::from_le_bytes([
        code,
        (src << 4) | dst,
        off[0],
        off[1],
        imm[0],
        imm[1],
        imm[2],
        imm[3],
    ])
}

const BPF_MOV64_IMM: u8 = 0xb7;
const BPF_STX_MEM_DW: u8 = 0x7b;
/// `BPF_STX | BPF_ATOMIC | BPF_DW`.
const BPF_ATOMIC_DW: u8 = 0xdb;
/// `BPF_CMPXCHG` (`0xf0 | BPF_FETCH`).
const BPF_CMPXCHG: i32 = 0xf1;
const BPF_EXIT: u8 = 0x95;
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R10: u8 = 10;

/// Whether the kernel takes `BPF_ATOMIC | BPF_CMPXCHG` (Linux 5.12+): loads a socket filter
/// that swaps a word on its stack. Before 5.12 the kernel refuses the instruction ("`BPF_STX`
/// uses reserved fields").
#[must_use]
pub(crate) fn has_cmpxchg() -> bool {
    let program = [
        insn(BPF_MOV64_IMM, R1, 0, 0, 0),
        insn(BPF_STX_MEM_DW, R10, R1, -8, 0),
        insn(BPF_MOV64_IMM, R0, 0, 0, 0),
        insn(BPF_MOV64_IMM, R2, 0, 0, 1),
        // r0 = cmpxchg(*(u64 *)(r10 - 8), r0, r2)
        insn(BPF_ATOMIC_DW, R10, R2, -8, BPF_CMPXCHG),
        insn(BPF_MOV64_IMM, R0, 0, 0, 0),
        insn(BPF_EXIT, 0, 0, 0, 0),
    ];
    let license = c"GPL";
    let mut attr: bpf_attr = batch::zeroed_attr();
    // Writing a union's member is safe; the other members stay zero.
    attr.__bindgen_anon_3.prog_type = bpf_prog_type::BPF_PROG_TYPE_SOCKET_FILTER as u32;
    attr.__bindgen_anon_3.insn_cnt = u32::try_from(program.len()).unwrap_or(0);
    attr.__bindgen_anon_3.insns = program.as_ptr() as u64;
    attr.__bindgen_anon_3.license = license.as_ptr() as u64;
    match batch::bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(_program) => true,
        Err(err) => {
            log::debug!("no BPF compare-and-swap in this kernel ({err})");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        // *(u64 *)(r10 - 8) = r1: 7b 1a f8 ff 00 00 00 00
        assert_eq!(
            insn(BPF_STX_MEM_DW, R10, R1, -8, 0).to_le_bytes(),
            [0x7b, 0x1a, 0xf8, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(
            insn(BPF_ATOMIC_DW, R10, R2, -8, BPF_CMPXCHG).to_le_bytes(),
            [0xdb, 0x2a, 0xf8, 0xff, 0xf1, 0, 0, 0]
        );
    }
}
