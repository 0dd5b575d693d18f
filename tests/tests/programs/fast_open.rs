//! TCP Fast Open: SYN-ACKs acknowledging the SYN's data answer it.

use super::*;

/// TCP Fast Open (RFC 7413): the SYN carries data and a server that takes it acknowledges
/// it in the SYN-ACK (ISN + 1 + length); one that does not acknowledges only the SYN. Both
/// answer the request; anything past the data does not.
#[test]
fn fast_open_syn_acks_acknowledging_the_data_answer_the_syn() {
    const NAME: &str = "fast_open_syn_acks_acknowledging_the_data_answer_the_syn";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let data = [0x47u8; 100];
    for v6 in [false, true] {
        for (port, ack_past_isn, answers) in [
            (41_000, 101, true),  // the data taken
            (41_001, 1, true),    // the data refused, the SYN answered
            (41_002, 51, true),   // part of it (a server may take less)
            (41_003, 102, false), // past what was sent: not ours
        ] {
            let flow = Flow::tcp(v6, port, 80, 1000);
            let mut header = etherparse::TcpHeader::new(port, 80, 1000, 64240);
            header.syn = true;
            let syn = packets::frame(
                packets::local(v6),
                packets::remote(v6),
                &Shape::plain(),
                Transport::Tcp(header),
                &data,
            );
            h.egress(
                &syn,
                &format!("a Fast Open SYN with 100 bytes, {}", flow.describe()),
            );
            assert_eq!(
                h.entry(&flow).map(|e| e.syn_payload_len),
                Some(100),
                "{}: the SYN's data length is kept",
                flow.describe()
            );
            let syn_ack = packets::syn_ack(v6, 80, port, 1000 + ack_past_isn);
            let what = format!(
                "a SYN-ACK acking ISN+{ack_past_isn} for {}",
                flow.describe()
            );
            let expected = if answers {
                Change::none().answered(&flow)
            } else {
                Change::none().count(InvalidAnswer, 1)
            };
            h.check(INGRESS_PROGRAM, &syn_ack, expected, &what);
        }
        // A reset acknowledging the data rejects the SYN.
        let flow = Flow::tcp(v6, 41_010, 9000, 1000);
        let mut header = etherparse::TcpHeader::new(41_010, 9000, 1000, 64240);
        header.syn = true;
        let syn = packets::frame(
            packets::local(v6),
            packets::remote(v6),
            &Shape::plain(),
            Transport::Tcp(header),
            &data[..40],
        );
        h.egress(&syn, "a Fast Open SYN with 40 bytes");
        h.check(
            INGRESS_PROGRAM,
            &packets::rst(v6, 9000, 41_010, Some(1041)),
            Change::none().rejected(&flow, Reason::TCP_RESET),
            "a RST acknowledging the SYN's data",
        );
    }
}
