//! ICMP errors about translated flows, both directions, and unrelated ones.

use super::*;

const ROUTER: &str = "203.0.113.1";

/// An ICMP error from `src` to `dst` quoting `quoted` (cut to `quote_len` bytes of IP packet).
fn icmp_error(
    src: &str,
    dst: &str,
    kind: u8,
    code: u8,
    rest: u32,
    quoted: &Frame,
    quote_len: usize,
) -> Frame {
    let mut quote = quoted.ip_bytes();
    quote.truncate(quote_len);
    Frame::new(
        src,
        dst,
        L4::IcmpError {
            kind,
            code,
            rest,
            quote,
        },
    )
}

/// Check the quoted IP header's checksum of an ICMP error frame.
fn assert_quote_ip_checksum(frame: &[u8], case: &str) {
    let outer_ihl = usize::from(frame[14] & 0x0f) * 4;
    let quote = &frame[14 + outer_ihl + 8..];
    let ihl = usize::from(quote[0] & 0x0f) * 4;
    assert_eq!(
        support::packet::checksum(&quote[..ihl]),
        0,
        "{case}: quoted IP header checksum"
    );
}

/// Errors about translated flows, of every kind, quoting TCP, UDP and echo, with short and
/// long quotes, translated back to the container: outer destination, quoted source address
/// and port, quoted IP and L4 checksums, outer IP and ICMP checksums.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn inbound_icmp_errors_table() {
    let _slot = require_root();
    // (kind, code, rest of header): port unreachable, fragmentation needed (MTU 1400),
    // time exceeded in transit, parameter problem (pointer 20).
    let kinds: [(u8, u8, u32); 4] = [(3, 3, 0), (3, 4, 1400), (11, 0, 0), (12, 0, 20 << 24)];
    // Flows from NS2 whose external port differs (NS1 holds the port first), so the quoted
    // port is rewritten too, and an echo.
    let flows = [
        Frame::new(
            NS2,
            REMOTE,
            L4::Udp {
                sport: 40200,
                dport: 53,
            },
        ),
        Frame::new(
            NS2,
            REMOTE,
            L4::Tcp {
                sport: 40201,
                dport: 443,
                flags: SYN,
            },
        ),
        Frame::new(
            NS2,
            REMOTE,
            L4::IcmpEcho {
                kind: 8,
                id: 0x0bad,
                seq: 7,
            },
        ),
    ];
    for flow in &flows {
        for quote_len in [28usize, 48] {
            for (kind, code, rest) in kinds {
                let mut dp = datapath(None);
                let holder = with_src(flow, NS1, None);
                assert_eq!(egress(&mut dp, &holder).0, TCX_NEXT);
                let (v, sent) = egress(&mut dp, flow);
                assert_eq!(v, TCX_NEXT);
                let ext_port = external_port(&dp, flow);
                let original_port = match flow.l4 {
                    L4::Udp { sport, .. } | L4::Tcp { sport, .. } => sport,
                    L4::IcmpEcho { id, .. } => id,
                    _ => unreachable!(),
                };
                assert_ne!(ext_port, original_port, "the test needs a remapped port");
                let translated = with_src(flow, EXTERNAL, Some(ext_port));
                assert_eq!(sent, translated.build());

                let case = format!(
                    "type {kind}/{code} quoting {:?} ({quote_len} bytes)",
                    flow.l4
                );
                let error = icmp_error(ROUTER, EXTERNAL, kind, code, rest, &translated, quote_len);
                let (v, got) = ingress(&mut dp, &error);
                assert_eq!(v, TCX_NEXT, "{case}");
                let want = icmp_error(ROUTER, NS2, kind, code, rest, flow, quote_len);
                verify_checksums(&got).unwrap_or_else(|e| panic!("{case}: {e}"));
                assert_quote_ip_checksum(&got, &case);
                assert_eq!(
                    got,
                    want.build(),
                    "{case}: output differs from the expected frame"
                );
                assert_eq!(
                    dp.counter(Counter::IcmpErrorsTranslated).unwrap(),
                    1,
                    "{case}"
                );
            }
        }
    }
}

/// A container's own ICMP error about a reply it received (e.g. port unreachable after its
/// socket closed) leaves with the external address and port in the quote.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn outbound_icmp_errors_table() {
    let _slot = require_root();
    for (kind, code) in [(3u8, 3u8), (3, 1), (11, 0), (12, 0)] {
        let mut dp = datapath(None);
        let holder = Frame::new(
            NS1,
            REMOTE,
            L4::Udp {
                sport: 40300,
                dport: 53,
            },
        );
        let flow = Frame::new(
            NS2,
            REMOTE,
            L4::Udp {
                sport: 40300,
                dport: 53,
            },
        );
        egress(&mut dp, &holder);
        egress(&mut dp, &flow);
        let ext_port = external_port(&dp, &flow);
        // The reply as the container received it (after translation back)...
        let received = Frame::new(
            REMOTE,
            NS2,
            L4::Udp {
                sport: 53,
                dport: 40300,
            },
        );
        // ...and as it travelled outside.
        let outside = Frame::new(
            REMOTE,
            EXTERNAL,
            L4::Udp {
                sport: 53,
                dport: ext_port,
            },
        );
        let error = icmp_error(NS2, REMOTE, kind, code, 0, &received, 48);
        let (v, got) = egress(&mut dp, &error);
        assert_eq!(v, TCX_NEXT);
        let want = icmp_error(EXTERNAL, REMOTE, kind, code, 0, &outside, 48);
        verify_checksums(&got).unwrap();
        assert_quote_ip_checksum(&got, "outbound");
        assert_eq!(got, want.build(), "type {kind}/{code}");
    }
}

/// Errors that quote no flow of ours pass untouched (the host's own traffic).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn unrelated_icmp_errors_pass() {
    let _slot = require_root();
    let mut dp = datapath(None);
    let host_packet = Frame::new(
        EXTERNAL,
        REMOTE,
        L4::Udp {
            sport: 5555,
            dport: 53,
        },
    );
    let error = icmp_error(ROUTER, EXTERNAL, 3, 3, 0, &host_packet, 28).build();
    let (v, got) = run(&mut dp, names::PROG_INGRESS, &error);
    assert_eq!((v, got), (TCX_NEXT, error));
    assert_eq!(dp.counter(Counter::IcmpErrorsTranslated).unwrap(), 0);
}
