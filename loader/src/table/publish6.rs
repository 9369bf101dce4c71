//! Ports published on the uplink's IPv6 address (Docker's `-p [::]:HOST_PORT:PORT`):
//! `[[::]:]HOST_PORT[-END]:[CONTAINER_IPV6]:PORT[-END][/tcp|udp]`, the container's address in
//! brackets. One `PUBLISH6` entry per host port; removing or re-targeting a port removes the
//! connections made through it (hairpin connections included), as for IPv4
//! ([`super::publish`]).

use std::{fmt, net::Ipv6Addr};

use anyhow::{anyhow, bail};
use aya::maps::{HashMap, MapData};
use bpfnat_common::{
    addr6_from_map, addr6_to_map, FlowKey6, HairpinEntry6, PublishKey6, PublishTarget6,
    IPPROTO_TCP, IPPROTO_UDP,
};
use serde_json::{json, Value};

use crate::{
    bpf::datapath::NatTables6,
    table::expiry::remove_hairpin_where,
    util::addr::{proto_name, PortRange},
};

/// The syntax, for error messages.
pub const SYNTAX6: &str = "[[::]:]HOST_PORT[-END]:[CONTAINER_IPV6]:PORT[-END][/tcp|udp]";

/// One IPv6 publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish6Spec {
    pub host_ports: PortRange,
    /// None only in a removal spec that names host ports alone.
    pub target: Option<(Ipv6Addr, PortRange)>,
    pub proto: u8,
}

impl Publish6Spec {
    /// Whether `s` is an IPv6 spec (it has a bracketed address).
    pub fn is_ipv6(s: &str) -> bool {
        s.contains('[')
    }

    /// Parse a spec, or (for removal) host ports alone.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::parse_inner(s).map_err(|e| anyhow!("bad publish spec {s:?}: {e}; expected {SYNTAX6}"))
    }

    fn parse_inner(s: &str) -> anyhow::Result<Self> {
        let (body, proto) = match s.rsplit_once('/') {
            Some((body, p)) if !p.contains(']') => (
                body,
                match p.to_ascii_lowercase().as_str() {
                    "tcp" => IPPROTO_TCP,
                    "udp" => IPPROTO_UDP,
                    _ => bail!("protocol {p:?} is not tcp or udp"),
                },
            ),
            _ => (s, IPPROTO_TCP),
        };
        // Published on the uplink's IPv6 address: "[::]:" may be written, nothing else.
        let body = body.strip_prefix("[::]:").unwrap_or(body);
        let (host, rest) = body.split_once(':').unwrap_or((body, ""));
        let host_ports = PortRange::parse_ports(host, "host port")?;
        if rest.is_empty() {
            return Ok(Self {
                host_ports,
                target: None,
                proto,
            });
        }
        let rest = rest
            .strip_prefix('[')
            .ok_or_else(|| anyhow!("the container address must be in brackets"))?;
        let (addr, ports) = rest
            .split_once("]:")
            .ok_or_else(|| anyhow!("no container port"))?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| anyhow!("container address {addr:?} is not an IPv6 address"))?;
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
            bail!("container address {addr} is not a unicast address");
        }
        let ports = PortRange::parse_ports(ports, "container port")?;
        if ports.len() != 1 && ports.len() != host_ports.len() {
            bail!(
                "host ports {host_ports} and container ports {ports} differ in length: give \
                 equal ranges or one container port"
            );
        }
        Ok(Self {
            host_ports,
            target: Some((addr, ports)),
            proto,
        })
    }

    /// The datapath entries, one per host port (a zero target for host-only specs).
    pub fn entries(&self) -> Vec<(PublishKey6, PublishTarget6)> {
        (self.host_ports.lo..=self.host_ports.hi)
            .map(|port| {
                let key = PublishKey6 {
                    host_port: port.to_be(),
                    proto: self.proto,
                    pad: 0,
                };
                let target =
                    self.target
                        .map_or(PublishTarget6::default(), |(a, p)| PublishTarget6 {
                            addr: addr6_to_map(a.octets()),
                            port: if p.len() == 1 {
                                p.lo
                            } else {
                                p.lo + (port - self.host_ports.lo)
                            }
                            .to_be(),
                            pad: 0,
                        });
                (key, target)
            })
            .collect()
    }

    /// One spec per entry, sorted.
    pub fn from_entries(entries: &[(PublishKey6, PublishTarget6)]) -> Vec<Self> {
        let mut out: Vec<Self> = entries
            .iter()
            .map(|(k, t)| {
                let port = u16::from_be(k.host_port);
                let tport = u16::from_be(t.port);
                Self {
                    host_ports: PortRange { lo: port, hi: port },
                    target: Some((
                        Ipv6Addr::from(addr6_from_map(t.addr)),
                        PortRange {
                            lo: tport,
                            hi: tport,
                        },
                    )),
                    proto: k.proto,
                }
            })
            .collect();
        out.sort_by_key(|s| (s.proto, s.host_ports.lo));
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "spec": self.to_string(),
            "family": "ipv6",
            "proto": proto_name(self.proto),
            "host_port": self.host_ports.lo,
            "host_port_end": self.host_ports.hi,
            "container_addr": self.target.map(|(a, _)| a.to_string()),
            "container_port": self.target.map(|(_, p)| p.lo),
            "container_port_end": self.target.map(|(_, p)| p.hi),
        })
    }
}

impl fmt::Display for Publish6Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[::]:{}", self.host_ports)?;
        if let Some((a, p)) = self.target {
            write!(f, ":[{a}]:{p}")?;
        }
        write!(f, "/{}", proto_name(self.proto))
    }
}

/// The connections an IPv6 publish can have made: both IPv6 connection tables and the IPv6
/// hairpin table (as [`super::publish::Flows`] for IPv4).
pub struct Flows6<'a> {
    pub tables: NatTables6<'a>,
    pub hairpin: HashMap<&'a mut MapData, FlowKey6, HairpinEntry6>,
}

impl Flows6<'_> {
    /// Remove the connections made through `publishes` (host port and the target it led
    /// to): connections from outside, and hairpin connections from containers (each two
    /// entries: the asking side's, to the uplink's address and the host port, rewritten to the
    /// target; and the target's answers). Returns how many connections.
    pub(crate) fn remove(&mut self, publishes: &[(PublishKey6, PublishTarget6)]) -> u64 {
        if publishes.is_empty() {
            return 0;
        }
        // The client's direction first, as for IPv4 (`conntrack::remove_published`).
        let nat =
            crate::table::conntrack::remove_published_where(&mut self.tables, |key, entry| {
                publishes.iter().any(|(k, t)| {
                    k.proto == key.proto
                        && k.host_port == key.dst_port
                        && t.addr == entry.addr
                        && t.port == entry.entry.port
                })
            });
        let hairpin = remove_hairpin_where(&mut self.hairpin, |key, to: &HairpinEntry6| {
            publishes.iter().any(|(k, t)| {
                k.proto == key.proto
                    && k.host_port == key.dst_port
                    && t.addr == to.dst_addr
                    && t.port == to.dst_port
            })
        });
        nat + hairpin
    }
}

/// Publish `spec`; a port that led elsewhere is re-targeted and the connections to its old
/// target removed. Returns (added or changed, connections removed).
pub fn add6(
    map: &mut HashMap<&mut MapData, PublishKey6, PublishTarget6>,
    flows: &mut Flows6<'_>,
    spec: &Publish6Spec,
) -> anyhow::Result<(u64, u64)> {
    if spec.target.is_none() {
        bail!("cannot publish {spec}: no container address");
    }
    let mut old = Vec::new();
    let mut changed = 0;
    for (key, target) in spec.entries() {
        match map.get(&key, 0) {
            Ok(t) if t == target => continue,
            Ok(t) => old.push((key, t)),
            Err(_) => {}
        }
        map.insert(key, target, 0)
            .map_err(|e| anyhow!("publishing {spec}: {e} (is the PUBLISH6 table full?)"))?;
        changed += 1;
    }
    Ok((changed, flows.remove(&old)))
}

/// Unpublish the host ports of `spec` (all must be published), with their connections.
/// Returns (removed, connections removed).
pub fn remove6(
    map: &mut HashMap<&mut MapData, PublishKey6, PublishTarget6>,
    flows: &mut Flows6<'_>,
    spec: &Publish6Spec,
) -> anyhow::Result<(u64, u64)> {
    let mut doomed = Vec::new();
    for (key, want) in spec.entries() {
        let port = u16::from_be(key.host_port);
        let found = map
            .get(&key, 0)
            .map_err(|_| anyhow!("[::]:{port} is not published (nothing removed)"))?;
        if spec.target.is_some() && found != want {
            bail!("[::]:{port} leads elsewhere (nothing removed)");
        }
        doomed.push((key, found));
    }
    let removed = doomed.iter().filter(|(k, _)| map.remove(k).is_ok()).count() as u64;
    Ok((removed, flows.remove(&doomed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_specs() {
        let s = Publish6Spec::parse("[::]:8080:[fd00:18::2]:80").unwrap();
        assert_eq!(s.to_string(), "[::]:8080:[fd00:18::2]:80/tcp");
        let s = Publish6Spec::parse("5353-5354:[fd00:18::3]:53-54/udp").unwrap();
        assert_eq!(s.entries().len(), 2);
        assert_eq!(u16::from_be(s.entries()[1].1.port), 54);
        assert_eq!(
            Publish6Spec::parse("8080").unwrap().target,
            None,
            "host ports alone, for removal"
        );
        for bad in [
            "8080:fd00:18::2:80",
            "8080:[fd00::x]:80",
            "8080:[::]:80",
            "8080:[fd00::2]:80/sctp",
            "1-3:[fd00::2]:1-2",
        ] {
            assert!(Publish6Spec::parse(bad).is_err(), "{bad}");
        }
        assert!(Publish6Spec::is_ipv6("8080:[fd00::2]:80"));
        assert!(!Publish6Spec::is_ipv6("8080:10.0.0.2:80"));
    }
}
