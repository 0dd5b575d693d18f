//! The real eBPF programs on crafted packets (BPF_PROG_TEST_RUN).

use std::time::Duration;

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;
use netwatch::probe::{KernelTables as _, Probe};
use netwatch_common::{EGRESS_PROGRAM, INGRESS_PROGRAM};

#[test]
fn syn_then_syn_ack_is_answered() {
    if !netwatch_tests::prerequisites("syn_then_syn_ack_is_answered", &[]) {
        return;
    }
    let mut probe = Probe::load(Duration::from_secs(3)).unwrap();
    let mut syn = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([203, 0, 113, 2], [198, 51, 100, 10], 64)
        .tcp(40000, 443, 1000, 64240)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    let ret = probe.classifier(EGRESS_PROGRAM).unwrap()
        .test_run(TestRunOptions { data_in: Some(&syn), ..TestRunOptions::default() }).unwrap();
    assert_eq!(ret.return_value as i32, -1);
    assert_eq!(probe.read_pending().unwrap().len(), 1);
    let mut syn_ack = Vec::new();
    PacketBuilder::ethernet2([4; 6], [2; 6])
        .ipv4([198, 51, 100, 10], [203, 0, 113, 2], 64)
        .tcp(443, 40000, 5000, 64240)
        .syn()
        .ack(1001)
        .write(&mut syn_ack, &[])
        .unwrap();
    probe.classifier(INGRESS_PROGRAM).unwrap()
        .test_run(TestRunOptions { data_in: Some(&syn_ack), ..TestRunOptions::default() }).unwrap();
    assert_eq!(probe.read_pending().unwrap().len(), 0);
    let mut answered = 0;
    probe.read_targets(&mut |_, c| answered += c.answered).unwrap();
    assert_eq!(answered, 1);
}
