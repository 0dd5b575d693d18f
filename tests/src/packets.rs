//! Crafted packets for `BPF_PROG_TEST_RUN`.
