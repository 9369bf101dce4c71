//! Published ports, Docker's `-p`: `[HOST_IP:]HOST_PORT[-END]:CONTAINER_IP:PORT[-END][/tcp|udp]`.
//!
//! The datapath keeps one `PUBLISH` entry per host port (`PublishKey` -> `PublishTarget`); a
//! spec with a range expands into several entries, and `publish list` groups them back.
//!
//! - a host range with one container port maps every host port to that port;
//! - two ranges must have the same length and map pairwise;
//! - no protocol means TCP (as with Docker);
//! - no host address (or `0.0.0.0`) means the uplink's address, whatever it is at the time.
//!
//! Removing (or re-targeting) a publish also removes the connections made through it: the
//! datapath looks `PUBLISH` up only for the first packet of a connection, so without that a
//! UDP client that keeps sending would keep reaching the old container for as long as it
//! sends ([`crate::table::conntrack::remove_published`]). Hairpin connections (containers reaching the
//! port through the host's address, `HAIRPIN`) are removed the same way.

use std::{borrow::BorrowMut, collections::HashSet, fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{anyhow, bail};
use aya::maps::{HashMap, MapData};
use bpfnat_common::{
    addr_to_map, FlowKey, HairpinEntry, PublishKey, PublishTarget, BRIDGE_INTERNAL, IPPROTO_TCP,
    IPPROTO_UDP,
};
use serde_json::{json, Value};

use crate::{
    bpf::datapath::{NatTables, Served},
    util::addr::{proto_name, PortRange},
};

/// One publish: host ports to a container's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishSpec {
    /// None: any (the uplink's address).
    pub host_addr: Option<Ipv4Addr>,
    pub host_ports: PortRange,
    /// None only in a removal spec that names host ports alone.
    pub target: Option<(Ipv4Addr, PortRange)>,
    pub proto: u8,
}

/// The syntax, for error messages.
pub const SYNTAX: &str = "[HOST_IP:]HOST_PORT[-END]:CONTAINER_IP:PORT[-END][/tcp|udp]";

impl PublishSpec {
    /// Parse a full spec (host and container part).
    pub(crate) fn parse(s: &str) -> anyhow::Result<Self> {
        let spec = Self::parse_any(s)?;
        if spec.target.is_none() {
            bail!("bad publish spec {s:?}: no container address; expected {SYNTAX}");
        }
        Ok(spec)
    }

    /// Parse a full spec, or host ports alone (`[HOST_IP:]HOST_PORT[-END][/tcp|udp]`, for
    /// removal).
    pub(crate) fn parse_any(s: &str) -> anyhow::Result<Self> {
        Self::parse_inner(s).map_err(|e| anyhow!("bad publish spec {s:?}: {e}; expected {SYNTAX}"))
    }

    /// The spec given as one argument, or as two (`HOST CONTAINER`, joined with ':').
    pub fn from_args(args: &[String]) -> anyhow::Result<Self> {
        match args {
            [one] => Self::parse_any(one),
            [host, container] => Self::parse_any(&format!("{host}:{container}")),
            _ => bail!("expected one publish spec ({SYNTAX}) or HOST CONTAINER"),
        }
    }

    fn parse_inner(s: &str) -> anyhow::Result<Self> {
        let (body, proto) = match s.split_once('/') {
            Some((body, proto)) => (
                body,
                match proto.to_ascii_lowercase().as_str() {
                    "tcp" => IPPROTO_TCP,
                    "udp" => IPPROTO_UDP,
                    _ => bail!("protocol {proto:?} is not tcp or udp"),
                },
            ),
            None => (s, IPPROTO_TCP),
        };
        let addr = |a: &str, what: &str| -> anyhow::Result<Ipv4Addr> {
            a.parse()
                .map_err(|_| anyhow!("{what} {a:?} is not an IPv4 address"))
        };
        let fields: Vec<&str> = body.split(':').collect();
        let (host_addr, host_ports, target) = match fields.as_slice() {
            [hp] => (None, *hp, None),
            [ha, hp] if ha.parse::<Ipv4Addr>().is_ok() => {
                (Some(addr(ha, "host address")?), *hp, None)
            }
            [_, _] => bail!("no container port"),
            [hp, ca, cp] => (None, *hp, Some((*ca, *cp))),
            [ha, hp, ca, cp] => (Some(addr(ha, "host address")?), *hp, Some((*ca, *cp))),
            _ => bail!("too many ':'"),
        };
        let host_ports = PortRange::parse_ports(host_ports, "host port")?;
        let target = match target {
            None => None,
            Some((ca, cp)) => {
                let a = addr(ca, "container address")?;
                if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
                    bail!("container address {a} is not a unicast address");
                }
                let ports = PortRange::parse_ports(cp, "container port")?;
                if ports.len() != 1 && ports.len() != host_ports.len() {
                    bail!(
                        "host ports {host_ports} ({} ports) and container ports {ports} ({} ports) \
                         differ in length: give equal ranges or one container port",
                        host_ports.len(),
                        ports.len()
                    );
                }
                Some((a, ports))
            }
        };
        Ok(Self {
            host_addr: host_addr.filter(|a| !a.is_unspecified()),
            host_ports,
            target,
            proto,
        })
    }

    /// The datapath entries, one per host port. Host-only specs give the keys with a zero
    /// target.
    pub(crate) fn entries(&self) -> Vec<(PublishKey, PublishTarget)> {
        (self.host_ports.lo..=self.host_ports.hi)
            .map(|port| {
                let key = PublishKey {
                    host_addr: self.host_addr.map_or(0, |a| addr_to_map(a.octets())),
                    host_port: port.to_be(),
                    proto: self.proto,
                    pad: 0,
                };
                let target = match self.target {
                    Some((addr, ports)) => PublishTarget {
                        addr: addr_to_map(addr.octets()),
                        port: if ports.len() == 1 {
                            ports.lo
                        } else {
                            ports.lo + (port - self.host_ports.lo)
                        }
                        .to_be(),
                        pad: 0,
                    },
                    None => PublishTarget::default(),
                };
                (key, target)
            })
            .collect()
    }

    /// Group entries back into specs (consecutive host ports to one container, with
    /// consecutive or equal container ports), sorted by protocol, host address and port.
    pub fn group(entries: &[(PublishKey, PublishTarget)]) -> Vec<Self> {
        let mut sorted: Vec<_> = entries.to_vec();
        sorted.sort_by_key(|(k, _)| (k.proto, host_addr(k), u16::from_be(k.host_port)));
        let mut out: Vec<Self> = Vec::new();
        for (k, t) in sorted {
            let port = u16::from_be(k.host_port);
            let (taddr, tport) = (target_addr(&t), u16::from_be(t.port));
            if let Some(last) = out.last_mut() {
                if let Some((laddr, lports)) = &mut last.target {
                    let contiguous = last.proto == k.proto
                        && last.host_addr == host_addr(&k)
                        && *laddr == taddr
                        && u32::from(last.host_ports.hi) + 1 == u32::from(port);
                    let single = last.host_ports.len() == 1;
                    // Pairwise (container ports advance with host ports) or many-to-one.
                    let pairwise = (single || lports.len() > 1)
                        && u32::from(lports.hi) + 1 == u32::from(tport);
                    let to_one = (single || lports.len() == 1) && lports.lo == tport;
                    if contiguous && (pairwise || to_one) {
                        last.host_ports.hi = port;
                        if pairwise && !to_one {
                            lports.hi = tport;
                        }
                        continue;
                    }
                }
            }
            out.push(Self {
                host_addr: host_addr(&k),
                host_ports: PortRange { lo: port, hi: port },
                target: Some((
                    taddr,
                    PortRange {
                        lo: tport,
                        hi: tport,
                    },
                )),
                proto: k.proto,
            });
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let (addr, ports) = self
            .target
            .map_or((None, None), |(a, p)| (Some(a), Some(p)));
        json!({
            "spec": self.to_string(),
            "proto": proto_name(self.proto),
            "host_addr": self.host_addr.map(|a| a.to_string()),
            "host_port": self.host_ports.lo,
            "host_port_end": self.host_ports.hi,
            "container_addr": addr.map(|a| a.to_string()),
            "container_port": ports.map(|p| p.lo),
            "container_port_end": ports.map(|p| p.hi),
        })
    }
}

fn host_addr(k: &PublishKey) -> Option<Ipv4Addr> {
    (k.host_addr != 0).then(|| Ipv4Addr::from(k.host_addr.to_ne_bytes()))
}

fn target_addr(t: &PublishTarget) -> Ipv4Addr {
    Ipv4Addr::from(t.addr.to_ne_bytes())
}

impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(a) = self.host_addr {
            write!(f, "{a}:")?;
        }
        write!(f, "{}", self.host_ports)?;
        if let Some((a, p)) = self.target {
            write!(f, ":{a}:{p}")?;
        }
        write!(f, "/{}", proto_name(self.proto))
    }
}

impl FromStr for PublishSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Self::parse(s)
    }
}

// `Served` is read from the maps (crate::bpf::datapath); checking a spec against it is the
// publishes' business.
impl Served {
    /// Refuse a publish that cannot work, with one line saying why.
    pub fn check(&self, spec: &PublishSpec) -> anyhow::Result<()> {
        if let (Some(host), Some(ext)) = (spec.host_addr, self.external) {
            if host != ext {
                bail!(
                    "cannot publish {spec}: {host} is not the uplink's address ({ext}); published \
                     ports are served on the uplink address (omit HOST_IP or give {ext})"
                );
            }
        }
        let Some((addr, _)) = spec.target else {
            return Ok(());
        };
        let Some((net, bridge)) = self.subnet_of(addr) else {
            let nets: Vec<String> = self.nets.iter().map(|(n, _)| n.to_string()).collect();
            bail!(
                "cannot publish {spec}: {addr} is in no served bridge subnet ({})",
                if nets.is_empty() {
                    "none".to_owned()
                } else {
                    nets.join(", ")
                }
            );
        };
        if let Some(info) = self.bridges.get(&bridge) {
            if info.flags & BRIDGE_INTERNAL != 0 {
                bail!(
                    "cannot publish {spec}: {addr} is on an internal bridge ({net}), which is not \
                     reachable from outside"
                );
            }
            if info.gateway == addr_to_map(addr.octets()) {
                bail!("cannot publish {spec}: {addr} is the bridge's own address, not a container");
            }
        }
        Ok(())
    }
}

/// What adding a spec changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddReport {
    /// Host ports newly published.
    pub added: u64,
    /// Host ports that led elsewhere before.
    pub changed: u64,
    /// Host ports already published exactly so.
    pub unchanged: u64,
    /// Connections to a previous target removed.
    pub connections_removed: u64,
}

/// The connections a publish can have made: both connection tables and the hairpin table.
pub struct Flows<'a> {
    pub tables: NatTables<'a>,
    pub hairpin: HashMap<&'a mut MapData, FlowKey, HairpinEntry>,
}

impl Flows<'_> {
    /// Remove the connections made through `publishes` (host port and the target it led to).
    pub(crate) fn remove(&mut self, publishes: &[(PublishKey, PublishTarget)]) -> u64 {
        if publishes.is_empty() {
            return 0;
        }
        let nat = crate::table::conntrack::remove_published(&mut self.tables, publishes);
        nat + remove_hairpin(&mut self.hairpin, publishes)
    }
}

/// Remove the hairpin connections made through `publishes`: each is two entries, the asking
/// container's direction (to the host address and port, rewritten to the target) and the
/// target's answers (to the gateway). Returns how many connections.
pub(crate) fn remove_hairpin<T: BorrowMut<MapData>>(
    hairpin: &mut HashMap<T, FlowKey, HairpinEntry>,
    publishes: &[(PublishKey, PublishTarget)],
) -> u64 {
    crate::table::expiry::remove_hairpin_where(hairpin, |key: &FlowKey, to: &HairpinEntry| {
        publishes.iter().any(|(k, t)| {
            k.proto == key.proto
                && k.host_port == key.dst_port
                && (k.host_addr == 0 || k.host_addr == key.dst_addr)
                && t.addr == to.dst_addr
                && t.port == to.dst_port
        })
    })
}

/// Publish `spec` (checked by the caller). A host port that led elsewhere is re-targeted, and
/// the connections made to its old target are removed (when `flows` is given).
pub fn add<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, PublishKey, PublishTarget>,
    flows: Option<&mut Flows<'_>>,
    spec: &PublishSpec,
) -> anyhow::Result<AddReport> {
    if spec.target.is_none() {
        bail!("cannot publish {spec}: no container address");
    }
    let mut report = AddReport::default();
    let mut old = Vec::new();
    for (key, target) in spec.entries() {
        match map.get(&key, 0) {
            Ok(t) if t == target => {
                report.unchanged += 1;
                continue;
            }
            Ok(t) => {
                old.push((key, t));
                report.changed += 1;
            }
            Err(_) => report.added += 1,
        }
        map.insert(key, target, 0)
            .map_err(|e| anyhow!("publishing {spec}: {e} (is the PUBLISH table full?)"))?;
    }
    if let Some(flows) = flows {
        report.connections_removed = flows.remove(&old);
    }
    Ok(report)
}

/// What removing a spec changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoveReport {
    pub removed: u64,
    pub connections_removed: u64,
}

/// Remove the host ports of `spec`; all of them must be published (to the spec's target, if it
/// names one), or nothing is removed. Then remove the connections made through them.
pub fn remove<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, PublishKey, PublishTarget>,
    flows: &mut Flows<'_>,
    spec: &PublishSpec,
) -> anyhow::Result<RemoveReport> {
    let mut doomed = Vec::new();
    for (key, want) in spec.entries() {
        let port = u16::from_be(key.host_port);
        let proto = proto_name(key.proto);
        let found = map
            .get(&key, 0)
            .map_err(|_| anyhow!("{port}/{proto} is not published (nothing removed)"))?;
        if spec.target.is_some() && found != want {
            bail!(
                "{port}/{proto} leads to {}:{}, not {}:{} (nothing removed)",
                target_addr(&found),
                u16::from_be(found.port),
                target_addr(&want),
                u16::from_be(want.port)
            );
        }
        doomed.push((key, found));
    }
    // The publish first: from then on no new connection is made through it, and the
    // connections made before can be removed for good.
    let mut report = RemoveReport::default();
    for (key, _) in &doomed {
        if map.remove(key).is_ok() {
            report.removed += 1;
        }
    }
    report.connections_removed = flows.remove(&doomed);
    Ok(report)
}

/// Host ports published more than once in `specs` (refused: the last one would silently win).
pub(crate) fn duplicates(specs: &[PublishSpec]) -> Option<String> {
    let mut seen = HashSet::new();
    for spec in specs {
        for (key, _) in spec.entries() {
            if !seen.insert(key) {
                return Some(format!(
                    "{}{}/{} is published twice",
                    spec.host_addr.map_or(String::new(), |a| format!("{a}:")),
                    u16::from_be(key.host_port),
                    proto_name(key.proto)
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfnat_common::BridgeInfo;

    fn spec(s: &str) -> PublishSpec {
        PublishSpec::parse(s).unwrap()
    }

    fn ports(entries: &[(PublishKey, PublishTarget)]) -> Vec<(u16, u16)> {
        entries
            .iter()
            .map(|(k, t)| (u16::from_be(k.host_port), u16::from_be(t.port)))
            .collect()
    }

    #[test]
    fn docker_syntax() {
        let s = spec("8080:10.92.1.2:80");
        assert_eq!(s.proto, IPPROTO_TCP);
        assert_eq!(s.host_addr, None);
        assert_eq!(s.to_string(), "8080:10.92.1.2:80/tcp");
        assert_eq!(ports(&s.entries()), [(8080, 80)]);

        let s = spec("192.0.2.101:5353:10.92.1.3:53/UDP");
        assert_eq!(s.proto, IPPROTO_UDP);
        assert_eq!(s.host_addr, Some(Ipv4Addr::new(192, 0, 2, 101)));
        assert_eq!(s.to_string(), "192.0.2.101:5353:10.92.1.3:53/udp");
        assert_eq!(
            spec("0.0.0.0:80:10.0.0.2:80").to_string(),
            "80:10.0.0.2:80/tcp"
        );

        // A host range to one container port, and two ranges pairwise.
        assert_eq!(
            ports(&spec("8000-8002:10.0.0.2:80").entries()),
            [(8000, 80), (8001, 80), (8002, 80)]
        );
        assert_eq!(
            ports(&spec("8000-8002:10.0.0.2:9000-9002/udp").entries()),
            [(8000, 9000), (8001, 9001), (8002, 9002)]
        );

        let s = PublishSpec::from_args(&["8080".into(), "10.0.0.2:80/udp".into()]).unwrap();
        assert_eq!(s.to_string(), "8080:10.0.0.2:80/udp");
        let s = PublishSpec::parse_any("8080-8081/udp").unwrap();
        assert_eq!((s.target, s.entries().len()), (None, 2));
    }

    #[test]
    fn bad_specs_say_why_in_one_line() {
        for (bad, why) in [
            ("8080", "no container address"),
            ("8080:10.0.0.2", "no container port"),
            ("x:10.0.0.2:80", "host port \"x\""),
            ("8080:10.0.0:80", "container address \"10.0.0\""),
            ("8080:10.0.0.2:80/sctp", "protocol \"sctp\""),
            ("0:10.0.0.2:80", "not a port number"),
            ("70000:10.0.0.2:80", "not a port number"),
            ("8002-8000:10.0.0.2:80", "ends before it starts"),
            ("8000-8002:10.0.0.2:80-81", "differ in length"),
            ("8000:10.0.0.2:80-81", "differ in length"),
            ("1:2:3:4:5", "too many"),
            ("8080:0.0.0.0:80", "not a unicast"),
            ("", "not a port number"),
        ] {
            let err = format!("{:#}", PublishSpec::parse(bad).unwrap_err());
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.starts_with("bad publish spec"), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{bad:?}: {err}");
        }
    }

    #[test]
    fn entries_group_back_into_specs() {
        for text in [
            "8000-8002:10.0.0.2:80/tcp",
            "8000-8002:10.0.0.2:9000-9002/udp",
            "8080:10.0.0.2:80/tcp",
            "192.0.2.1:8080-8081:10.0.0.3:8080-8081/tcp",
        ] {
            let s = spec(text);
            assert_eq!(PublishSpec::group(&s.entries()), [s], "{text}");
        }
        // Several specs, shuffled: each comes back on its own.
        let specs = [
            spec("8000-8001:10.0.0.2:80"),
            spec("8002:10.0.0.3:80"),
            spec("8003-8004:10.0.0.2:81-82"),
            spec("8000:10.0.0.2:80/udp"),
        ];
        let mut all: Vec<_> = specs.iter().flat_map(PublishSpec::entries).collect();
        all.reverse();
        let grouped: Vec<String> = PublishSpec::group(&all)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            grouped,
            [
                "8000-8001:10.0.0.2:80/tcp",
                "8002:10.0.0.3:80/tcp",
                "8003-8004:10.0.0.2:81-82/tcp",
                "8000:10.0.0.2:80/udp"
            ]
        );
        assert!(duplicates(&specs).is_none());
        let twice = [spec("8000-8001:10.0.0.2:80"), spec("8001:10.0.0.3:80")];
        assert_eq!(
            duplicates(&twice).as_deref(),
            Some("8001/tcp is published twice")
        );
    }

    #[test]
    fn checks_against_served_bridges() {
        let mut served = Served {
            nets: vec![
                ("10.92.1.0/24".parse().unwrap(), 5),
                ("10.91.1.0/24".parse().unwrap(), 6),
            ],
            external: Some(Ipv4Addr::new(192, 0, 2, 101)),
            ..Served::default()
        };
        served.bridges.insert(
            5,
            BridgeInfo {
                gateway: addr_to_map([10, 92, 1, 1]),
                ..BridgeInfo::default()
            },
        );
        served.bridges.insert(
            6,
            BridgeInfo {
                gateway: addr_to_map([10, 91, 1, 1]),
                flags: BRIDGE_INTERNAL,
                ..BridgeInfo::default()
            },
        );
        served.check(&spec("8080:10.92.1.2:80")).unwrap();
        served
            .check(&spec("192.0.2.101:8080:10.92.1.2:80"))
            .unwrap();
        for (bad, why) in [
            (
                "8080:10.93.1.2:80",
                "in no served bridge subnet (10.92.1.0/24, 10.91.1.0/24)",
            ),
            ("8080:10.91.1.2:80", "internal bridge"),
            ("8080:10.92.1.1:80", "bridge's own address"),
            (
                "192.0.2.7:8080:10.92.1.2:80",
                "not the uplink's address (192.0.2.101)",
            ),
        ] {
            let err = served.check(&spec(bad)).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
