//! `bpfnat status`: what a running instance serves, from its pinned maps and the kernel.
//!
//! Everything comes from the pins (configuration, bridges, ports, learned containers, published
//! ports, table occupancy) plus a TCX query per interface; interface names come from
//! rtnetlink in the current network namespace, which must be the daemon's (`--netns`).

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, os::unix::fs::MetadataExt as _};

use anyhow::Context as _;
use bpfnat_common::{BRIDGE_ICC_OFF, BRIDGE_INTERNAL, BRIDGE_NO_MASQUERADE};
use serde_json::{json, Value};

use crate::{
    bpf::datapath::{tcx_programs, AttachedProgram},
    bpf::instance::{self, Occupancy, PinnedMaps},
    host::iface,
    table::publish::PublishSpec,
};

/// One interface as the status shows it.
#[derive(Clone, Debug)]
pub(crate) struct Iface {
    pub ifindex: u32,
    /// None: no such interface in this network namespace.
    pub name: Option<String>,
    pub programs: Vec<AttachedProgram>,
}

impl Iface {
    fn new(ifindex: u32, names: &BTreeMap<u32, String>) -> Self {
        let name = names.get(&ifindex).cloned();
        let programs = name
            .as_deref()
            .and_then(|n| tcx_programs(n).ok())
            .unwrap_or_default();
        Self {
            ifindex,
            name,
            programs,
        }
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("?")
    }

    fn programs_text(&self) -> String {
        if self.programs.is_empty() {
            return "no TCX program".to_owned();
        }
        self.programs
            .iter()
            .map(|p| format!("tcx/{} {} (id {})", p.hook, p.name, p.id))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "ifindex": self.ifindex,
            "programs": self.programs.iter().map(|p| json!({
                "hook": p.hook, "name": p.name, "id": p.id,
            })).collect::<Vec<_>>(),
        })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct PortStatus {
    pub iface: Iface,
    /// Containers learned behind it.
    pub containers: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug)]
pub(crate) struct BridgeStatus {
    pub iface: Iface,
    pub gateway: Option<Ipv4Addr>,
    pub mac: [u8; 6],
    pub subnets: Vec<String>,
    pub icc: bool,
    pub internal: bool,
    /// Its subnets leave translated (off: routed as they are).
    pub masquerade: bool,
    pub ports: Vec<PortStatus>,
}

/// Everything `status` shows.
#[derive(Clone, Debug)]
pub(crate) struct Status {
    pub instance: String,
    pub pid: Option<u32>,
    pub uplink: Iface,
    pub external_addr: Option<Ipv4Addr>,
    pub bridges: Vec<BridgeStatus>,
    pub published: Vec<PublishSpec>,
    pub occupancy: Occupancy,
    pub endpoints: usize,
    /// The interface names were looked up in another network namespace than the daemon's.
    pub other_netns: bool,
}

/// Whether process `pid` lives in another network namespace than this thread.
fn in_other_netns(pid: u32) -> bool {
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    match (
        ino(&format!("/proc/{pid}/ns/net")),
        ino("/proc/thread-self/ns/net"),
    ) {
        (Some(a), Some(b)) => a != b,
        _ => false, // another PID namespace: cannot tell
    }
}

impl Status {
    pub(crate) fn read(maps: &PinnedMaps) -> anyhow::Result<Self> {
        let pid = instance::Owner::read(&maps.dir)?.map(|o| o.pid);
        let other_netns = pid.is_some_and(in_other_netns);
        let names: BTreeMap<u32, String> = if other_netns {
            BTreeMap::new()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(async {
                    let handle = iface::netlink()?;
                    iface::links(&handle).await
                })?
                .into_iter()
                .map(|l| (l.index, l.name))
                .collect()
        };
        let cfg = maps.config()?;
        let topo = maps.topology()?;
        let bridges = topo
            .bridges
            .iter()
            .map(|(&ifindex, info)| BridgeStatus {
                iface: Iface::new(ifindex, &names),
                gateway: (info.gateway != 0).then(|| Ipv4Addr::from(info.gateway.to_ne_bytes())),
                mac: info.mac,
                subnets: topo
                    .nets
                    .iter()
                    .filter(|(_, b)| *b == ifindex)
                    .map(|(n, _)| n.to_string())
                    .collect(),
                icc: info.flags & BRIDGE_ICC_OFF == 0,
                internal: info.flags & BRIDGE_INTERNAL != 0,
                masquerade: info.flags & BRIDGE_NO_MASQUERADE == 0,
                ports: topo
                    .ports
                    .iter()
                    .filter(|(_, b)| **b == ifindex)
                    .map(|(&port, _)| PortStatus {
                        iface: Iface::new(port, &names),
                        containers: topo
                            .endpoints
                            .iter()
                            .filter(|(_, ep)| ep.port_ifindex == port)
                            .map(|(a, _)| *a)
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Self {
            instance: maps.instance.clone(),
            pid,
            uplink: Iface::new(cfg.uplink_ifindex, &names),
            external_addr: (cfg.external_addr != 0)
                .then(|| Ipv4Addr::from(cfg.external_addr.to_ne_bytes())),
            bridges,
            published: PublishSpec::group(&maps.publishes()?),
            occupancy: maps.occupancy()?,
            endpoints: topo.endpoints.len(),
            other_netns,
        })
    }

    pub(crate) fn to_json(&self) -> Value {
        let o = &self.occupancy;
        json!({
            "instance": self.instance,
            "pid": self.pid,
            "uplink": self.uplink.to_json(),
            "external_addr": self.external_addr.map(|a| a.to_string()),
            "bridges": self.bridges.iter().map(|b| {
                let mut v = b.iface.to_json();
                v["gateway"] = json!(b.gateway.map(|g| g.to_string()));
                v["mac"] = json!(iface::format_mac(&b.mac));
                v["subnets"] = json!(b.subnets);
                v["icc"] = json!(b.icc);
                v["internal"] = json!(b.internal);
                v["masquerade"] = json!(b.masquerade);
                v["ports"] = Value::Array(b.ports.iter().map(|p| {
                    let mut v = p.iface.to_json();
                    v["containers"] = json!(p.containers.iter().map(ToString::to_string).collect::<Vec<_>>());
                    v
                }).collect());
                v
            }).collect::<Vec<_>>(),
            "published": self.published.iter().map(PublishSpec::to_json).collect::<Vec<_>>(),
            "table": {
                "nat_out": o.nat_out,
                "nat_in": o.nat_in,
                "nat6_out": o.nat6_out,
                "nat6_in": o.nat6_in,
                "max_entries": o.max_entries,
                "endpoints": self.endpoints,
            },
            "names_from_other_netns": self.other_netns,
        })
    }

    pub(crate) fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "instance {}{}: uplink {} (ifindex {}), external address {}",
            self.instance,
            self.pid.map_or(String::new(), |p| format!(" (pid {p})")),
            self.uplink.name(),
            self.uplink.ifindex,
            self.external_addr
                .map_or("none (translating nothing)".to_owned(), |a| a.to_string())
        );
        let _ = writeln!(s, "  {}", self.uplink.programs_text());
        for b in &self.bridges {
            let _ = writeln!(
                s,
                "bridge {} (ifindex {}): gateway {}, mac {}, subnets {}, icc {}{}{}",
                b.iface.name(),
                b.iface.ifindex,
                b.gateway.map_or("none".to_owned(), |g| g.to_string()),
                iface::format_mac(&b.mac),
                b.subnets.join(","),
                if b.icc { "on" } else { "off" },
                if b.internal { ", internal" } else { "" },
                if b.masquerade { "" } else { ", masquerade off" }
            );
            if b.ports.is_empty() {
                let _ = writeln!(s, "  no ports");
            }
            for p in &b.ports {
                let containers: Vec<String> =
                    p.containers.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    s,
                    "  port {} (ifindex {}): {}; containers {}",
                    p.iface.name(),
                    p.iface.ifindex,
                    p.iface.programs_text(),
                    if containers.is_empty() {
                        "none seen yet".to_owned()
                    } else {
                        containers.join(",")
                    }
                );
            }
        }
        if self.published.is_empty() {
            let _ = writeln!(s, "published: none");
        } else {
            let _ = writeln!(s, "published:");
            for p in &self.published {
                let _ = writeln!(s, "  {p}");
            }
        }
        let o = &self.occupancy;
        let pct = |n: u64| n as f64 * 100.0 / f64::from(o.max_entries.max(1));
        let _ = writeln!(
            s,
            "table: nat_out {} / {} ({:.1}%), nat_in {} / {} ({:.1}%), containers seen {}",
            o.nat_out,
            o.max_entries,
            pct(o.nat_out),
            o.nat_in,
            o.max_entries,
            pct(o.nat_in),
            self.endpoints
        );
        s
    }
}

/// `bpfnat status [--json]`.
pub fn run(name: &str, json: bool) -> anyhow::Result<()> {
    let maps = PinnedMaps::open(name)?;
    let status = Status::read(&maps)?;
    if status.other_netns {
        eprintln!(
            "bpfnat: warning: instance {name:?} runs in another network namespace: interface \
             names and programs not shown (give its --netns)"
        );
    }
    if json {
        println!("{}", status.to_json());
    } else {
        print!("{}", status.text());
    }
    Ok(())
}
