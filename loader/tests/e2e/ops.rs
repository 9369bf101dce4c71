//! End to end: the tools an operator debugs with, on a running instance. Packet trace with
//! kernel-side filters and a pcap that tcpdump reads, the Prometheus endpoint matching
//! `stats --json`, and traffic counters by direction and protocol.

use crate::support::require_root;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::support::e2e::*;
use serde_json::Value;

fn lab(prefix: &str, n: u8) -> Lab {
    Lab::up(crate::support::topo::test_lab(
        prefix,
        [10, 89, n],
        1,
        Ipv4Addr::new(192, 0, 2, 60 + n),
        Ipv4Addr::new(192, 0, 2, 70 + n),
        Ipv4Addr::new(198, 51, 100, 89),
    ))
}

fn bpfnat(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bpfnat"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("bpfnat")
}

fn stats(host: &str) -> Value {
    let out = bpfnat(&["--netns", host, "--json", "stats"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats json")
}

/// `trace` with a filter shows the SYN of a new connection before and after translation with
/// its verdict, shows nothing of traffic outside the filter, and writes a pcap tcpdump reads.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn trace_shows_a_syn_translated_and_writes_pcap() {
    let _slot = require_root();
    let lab = lab("bnt-op-tr", 1);
    let host = lab.spec.host_netns.clone();
    let c = lab.spec.containers[0].clone();
    let remote = lab.spec.remote_server;
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let pcap = std::env::temp_dir().join(format!("bnt-op-tr-{}.pcap", std::process::id()));

    let tracer = crate::support::cli::Tracer::start(
        &host,
        &[
            "--proto",
            "tcp",
            "--port",
            "7400",
            "--duration",
            "20",
            "--pcap",
            pcap.to_str().unwrap(),
        ],
    );

    // Outside the filter: UDP, and TCP to another port.
    let echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(remote, 7400),
        Duration::from_secs(4),
    );
    assert!(udp_request(&c.netns, SocketAddrV4::new(remote, 7400), b"x".to_vec()).is_some());
    echo.join().unwrap();
    let sink = tcp_sink(&lab.spec.wan_netns, SocketAddrV4::new(remote, 7401), 1, 1);
    tcp_send(&c.netns, None, SocketAddrV4::new(remote, 7401), 1000, 1)
        .join()
        .unwrap()
        .unwrap();
    sink.join().unwrap();
    // Inside the filter.
    let sink = tcp_sink(&lab.spec.wan_netns, SocketAddrV4::new(remote, 7400), 1, 2);
    tcp_send(&c.netns, None, SocketAddrV4::new(remote, 7400), 1000, 2)
        .join()
        .unwrap()
        .unwrap();
    sink.join().unwrap();
    let (events, out) = tracer.stop();
    assert!(!events.is_empty(), "no events");
    for e in &events {
        assert_eq!(e["proto"], "tcp", "outside the filter: {e}");
        assert!(
            e["before"]["sport"] == 7400 || e["before"]["dport"] == 7400,
            "outside the filter: {e}"
        );
    }
    let syn = events
        .iter()
        .find(|e| e["hook"] == "uplink_egress" && e["tcp_flags"] == "S")
        .unwrap_or_else(|| panic!("no SYN at the uplink's egress: {out}"));
    assert_eq!(syn["before"]["src"], c.addr.to_string());
    assert_eq!(syn["after"]["src"], lab.spec.uplink_addr.to_string());
    assert_eq!(syn["translated"], true);
    assert_eq!(syn["verdict"], "pass");
    assert!(events
        .iter()
        .any(|e| e["hook"] == "uplink_ingress" && e["after"]["dst"] == c.addr.to_string()));

    let read = Command::new("tcpdump")
        .args(["-nn", "-r", pcap.to_str().unwrap()])
        .output()
        .expect("tcpdump");
    let _ = std::fs::remove_file(&pcap);
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(
        read.status.success(),
        "tcpdump -r failed: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(
        text.lines().count(),
        events.len(),
        "one pcap record per event:\n{text}"
    );
    assert!(
        text.contains(&format!("{}.", lab.spec.uplink_addr)) && text.contains(".7400"),
        "{text}"
    );
}

/// GET on the metrics endpoint inside the host namespace.
fn scrape(host: &str, addr: SocketAddrV4) -> String {
    spawn_in(host, move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(mut s) = TcpStream::connect(addr) {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut body = String::new();
                s.read_to_string(&mut body).unwrap();
                return body;
            }
            assert!(Instant::now() < deadline, "metrics endpoint not listening");
            thread::sleep(Duration::from_millis(100));
        }
    })
    .join()
    .unwrap()
}

fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"))
}

/// The metrics endpoint serves valid Prometheus text whose values match `stats --json`, and
/// the traffic counters count exactly what was sent.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn metrics_match_stats_and_traffic_is_counted() {
    let _slot = require_root();
    let lab = lab("bnt-op-me", 2);
    let host = lab.spec.host_netns.clone();
    let c = lab.spec.containers[0].clone();
    let remote = lab.spec.remote_server;
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464);
    let _daemon = Daemon::start(
        &host,
        &[
            "--uplink",
            "up0",
            "--bridge",
            "br0",
            "--metrics",
            &addr.to_string(),
        ],
    );

    const PINGS: u64 = 5;
    let (ok, _) = ns_exec(
        &c.netns,
        &[
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "1",
            "-q",
            &remote.to_string(),
        ],
    );
    assert!(ok);
    let echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(remote, 7500),
        Duration::from_secs(4),
    );
    for _ in 0..3 {
        assert!(udp_request(&c.netns, SocketAddrV4::new(remote, 7500), b"m".to_vec()).is_some());
    }
    echo.join().unwrap();

    let text = scrape(&host, addr);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    // Valid exposition format: every sample belongs to a family with HELP and TYPE lines,
    // and every value is a number.
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line.rsplit_once(' ').unwrap();
        let family = name.split('{').next().unwrap();
        assert!(
            body.contains(&format!("# TYPE {family} "))
                && body.contains(&format!("# HELP {family} ")),
            "{line}"
        );
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    let s = stats(&host);
    let inst = format!("instance=\"{host}\"");
    for name in [
        "egress_translated",
        "ingress_translated",
        "new_mappings",
        "drop_no_port",
    ] {
        let m = metric(
            body,
            &format!("bpfnat_packets_total{{{inst},counter=\"{name}\"}}"),
        );
        assert_eq!(m, s["counters"][name].as_u64().unwrap(), "{name}");
    }
    assert_eq!(
        metric(
            body,
            &format!("bpfnat_table_entries{{{inst},table=\"nat_out\"}}")
        ),
        s["table"]["nat_out"].as_u64().unwrap()
    );

    // Exactly what was sent: 5 echo requests out, 5 replies in; 3 UDP requests and answers.
    let traffic = |hook: &str, proto: &str| -> u64 {
        s["traffic"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["hook"] == hook && t["proto"] == proto)
            .unwrap()["packets"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(traffic("uplink_egress", "icmp"), PINGS);
    assert_eq!(traffic("uplink_ingress", "icmp"), PINGS);
    assert_eq!(traffic("uplink_egress", "udp"), 3);
    assert_eq!(traffic("uplink_ingress", "udp"), 3);
    assert!(traffic("port_ingress", "icmp") >= PINGS);
    assert_eq!(
        metric(
            body,
            &format!(
                "bpfnat_traffic_packets_total{{{inst},hook=\"uplink_egress\",proto=\"icmp\"}}"
            )
        ),
        PINGS
    );
}
