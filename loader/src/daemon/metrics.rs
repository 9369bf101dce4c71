//! Prometheus text endpoint (`bpfnat up --metrics ADDR`): the same counters and table
//! occupancy as `bpfnat stats --json`, read from the instance's pinned maps on every scrape.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::Context as _;
use log::{info, warn};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::{bpf::instance::PinnedMaps, bpf::stats::Stats};

/// Render `stats` in the Prometheus text exposition format (version 0.0.4).
pub(crate) fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let inst = &stats.instance;
    let _ = writeln!(out, "# HELP bpfnat_packets_total Datapath events by counter (packets, mappings, drops by reason).");
    let _ = writeln!(out, "# TYPE bpfnat_packets_total counter");
    for (counter, value) in &stats.counters {
        let _ = writeln!(
            out,
            "bpfnat_packets_total{{instance=\"{inst}\",counter=\"{}\"}} {value}",
            counter.name()
        );
    }
    let _ = writeln!(
        out,
        "# HELP bpfnat_traffic_packets_total Packets by hook (direction) and protocol."
    );
    let _ = writeln!(out, "# TYPE bpfnat_traffic_packets_total counter");
    for t in &stats.traffic {
        let _ = writeln!(
            out,
            "bpfnat_traffic_packets_total{{instance=\"{inst}\",hook=\"{}\",proto=\"{}\"}} {}",
            t.hook, t.proto, t.packets
        );
    }
    let _ = writeln!(
        out,
        "# HELP bpfnat_traffic_bytes_total Bytes by hook (direction) and protocol."
    );
    let _ = writeln!(out, "# TYPE bpfnat_traffic_bytes_total counter");
    for t in &stats.traffic {
        let _ = writeln!(
            out,
            "bpfnat_traffic_bytes_total{{instance=\"{inst}\",hook=\"{}\",proto=\"{}\"}} {}",
            t.hook, t.proto, t.bytes
        );
    }
    let _ = writeln!(
        out,
        "# HELP bpfnat_table_entries Entries in each connection-tracking map."
    );
    let _ = writeln!(out, "# TYPE bpfnat_table_entries gauge");
    let o = &stats.occupancy;
    for (table, entries) in [
        ("nat_out", o.nat_out),
        ("nat_in", o.nat_in),
        ("nat6_out", o.nat6_out),
        ("nat6_in", o.nat6_in),
        ("hairpin", o.hairpin),
        ("hairpin6", o.hairpin6),
    ] {
        let _ = writeln!(
            out,
            "bpfnat_table_entries{{instance=\"{inst}\",table=\"{table}\"}} {entries}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP bpfnat_table_max_entries Capacity of each connection-tracking map."
    );
    let _ = writeln!(out, "# TYPE bpfnat_table_max_entries gauge");
    let _ = writeln!(
        out,
        "bpfnat_table_max_entries{{instance=\"{inst}\"}} {}",
        stats.occupancy.max_entries
    );
    let _ = writeln!(out, "# HELP bpfnat_external_address_present Whether the uplink has an address to masquerade with.");
    let _ = writeln!(out, "# TYPE bpfnat_external_address_present gauge");
    let _ = writeln!(
        out,
        "bpfnat_external_address_present{{instance=\"{inst}\"}} {}",
        u8::from(stats.external_addr.is_some())
    );
    out
}

/// Bind the metrics address (before the daemon reports ready, so a busy port is an error).
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))?;
    info!("metrics on http://{addr}/metrics");
    Ok(listener)
}

/// Serve `/metrics` (any path, in fact) until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, instance: String) -> anyhow::Result<()> {
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                continue;
            }
        };
        let instance = instance.clone();
        tokio::spawn(async move {
            // The request itself does not matter; read what the client sent (bounded).
            let mut buf = [0u8; 1024];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), conn.read(&mut buf)).await;
            let (status, body) = match PinnedMaps::open(&instance).and_then(|m| Stats::read(&m)) {
                Ok(stats) => ("200 OK", render(&stats)),
                Err(e) => ("503 Service Unavailable", format!("# {e:#}\n")),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use bpfnat_common::Counter;

    use super::*;
    use crate::bpf::instance::Occupancy;

    #[test]
    fn renders_every_counter_and_the_table() {
        let stats = Stats {
            instance: "lab-host".into(),
            external_addr: Some("203.0.113.2".parse().unwrap()),
            counters: Counter::ALL.iter().map(|c| (*c, *c as u64 * 10)).collect(),
            occupancy: Occupancy {
                nat_out: 3,
                nat_in: 4,
                nat6_out: 5,
                nat6_in: 6,
                max_entries: 262_144,
                hairpin: 2,
                hairpin6: 6,
            },
            traffic: vec![crate::bpf::instance::TrafficRow {
                hook: "uplink_egress",
                proto: "tcp",
                packets: 5,
                bytes: 300,
            }],
        };
        let text = render(&stats);
        for c in Counter::ALL {
            let line = format!(
                "bpfnat_packets_total{{instance=\"lab-host\",counter=\"{}\"}} {}",
                c.name(),
                c as u64 * 10
            );
            assert!(text.contains(&line), "missing {line}");
        }
        assert!(text.contains("bpfnat_table_entries{instance=\"lab-host\",table=\"nat_in\"} 4"));
        assert!(text.contains("bpfnat_table_entries{instance=\"lab-host\",table=\"nat6_in\"} 6"));
        assert!(text.contains("bpfnat_table_entries{instance=\"lab-host\",table=\"hairpin\"} 2"));
        assert!(text.contains("bpfnat_table_entries{instance=\"lab-host\",table=\"hairpin6\"} 6"));
        assert!(text.contains("bpfnat_table_max_entries{instance=\"lab-host\"} 262144"));
        assert!(text.contains("bpfnat_traffic_bytes_total{instance=\"lab-host\",hook=\"uplink_egress\",proto=\"tcp\"} 300"));
        // Every sample line belongs to a declared metric family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split('{').next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} has no TYPE line"
            );
        }
    }
}
