//! `bpfnat stats`: the datapath's counters and how full the connection table is.

use std::{fmt::Write as _, net::Ipv4Addr};

use bpfnat_common::Counter;
use serde_json::{json, Map, Value};

use crate::bpf::instance::{Occupancy, PinnedMaps, TrafficRow};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub instance: String,
    /// None: the uplink has no address, nothing is translated.
    pub external_addr: Option<Ipv4Addr>,
    /// Summed over CPUs, in `Counter::ALL` order.
    pub counters: Vec<(Counter, u64)>,
    pub occupancy: Occupancy,
    /// Packets and bytes by hook (direction) and protocol.
    pub traffic: Vec<TrafficRow>,
}

impl Stats {
    pub fn read(maps: &PinnedMaps) -> anyhow::Result<Self> {
        let cfg = maps.config()?;
        Ok(Self {
            instance: maps.instance.clone(),
            external_addr: (cfg.external_addr != 0)
                .then(|| Ipv4Addr::from(cfg.external_addr.to_ne_bytes())),
            counters: maps.counters()?,
            occupancy: maps.occupancy()?,
            traffic: maps.traffic()?,
        })
    }

    pub fn to_json(&self) -> Value {
        let counters: Map<String, Value> = self
            .counters
            .iter()
            .map(|(c, v)| (c.name().to_owned(), json!(v)))
            .collect();
        json!({
            "instance": self.instance,
            "external_addr": self.external_addr.map(|a| a.to_string()),
            "counters": counters,
            "table": {
                "nat_out": self.occupancy.nat_out,
                "nat_in": self.occupancy.nat_in,
                "nat6_out": self.occupancy.nat6_out,
                "nat6_in": self.occupancy.nat6_in,
                "max_entries": self.occupancy.max_entries,
                "hairpin": self.occupancy.hairpin,
                "hairpin6": self.occupancy.hairpin6,
            },
            "traffic": self.traffic.iter().map(|t| json!({
                "hook": t.hook, "proto": t.proto, "packets": t.packets, "bytes": t.bytes,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "instance {}: external address {}",
            self.instance,
            self.external_addr
                .map_or("none (translating nothing)".to_owned(), |a| a.to_string())
        );
        let o = &self.occupancy;
        let pct = |n: u64| n as f64 * 100.0 / f64::from(o.max_entries.max(1));
        // One line per family: IPv4's tables, then IPv6's.
        for (line, tables) in [
            ("table", [("nat_out", o.nat_out), ("nat_in", o.nat_in)]),
            ("table6", [("nat6_out", o.nat6_out), ("nat6_in", o.nat6_in)]),
        ] {
            let [(out_name, out), (in_name, inn)] = tables;
            let _ = writeln!(
                s,
                "{line}: {out_name} {out} / {max} ({:.1}%), {in_name} {inn} / {max} ({:.1}%)",
                pct(out),
                pct(inn),
                max = o.max_entries,
            );
        }
        let width = Counter::ALL
            .iter()
            .map(|c| c.name().len())
            .max()
            .unwrap_or(0);
        for (c, v) in &self.counters {
            let _ = writeln!(s, "{:<width$}  {v}", c.name());
        }
        let _ = writeln!(s, "traffic (packets / bytes):");
        for t in self.traffic.iter().filter(|t| t.packets > 0) {
            let _ = writeln!(
                s,
                "  {:<15} {:<6} {:>10} / {}",
                t.hook, t.proto, t.packets, t.bytes
            );
        }
        s
    }
}
