//! Parsing of the user's address arguments: IPv4 CIDRs, port ranges and protocol names, with
//! one-line errors.

use std::{
    borrow::Cow,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use anyhow::{anyhow, bail, Context as _};
use bpfnat_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// `tcp`, `udp`, `icmp`, `icmpv6` (in any case) or a protocol number: every command's protocol
/// argument.
pub fn parse_proto(s: &str) -> anyhow::Result<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(IPPROTO_TCP),
        "udp" => Ok(IPPROTO_UDP),
        "icmp" => Ok(IPPROTO_ICMP),
        "icmpv6" | "icmp6" => Ok(IPPROTO_ICMPV6),
        other => other.parse::<u8>().map_err(|_| {
            anyhow!("bad protocol {s:?}: expected tcp, udp, icmp, icmpv6 or a number")
        }),
    }
}

/// The name of a protocol number as the CLI prints it: `tcp`, `udp`, `icmp`, `icmpv6`, else
/// the number.
pub(crate) fn proto_name(proto: u8) -> Cow<'static, str> {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmpv6".into(),
        n => n.to_string().into(),
    }
}

/// An IPv4 network, normalised so that host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    pub(crate) fn new(addr: Ipv4Addr, prefix_len: u8) -> anyhow::Result<Self> {
        if prefix_len > 32 {
            bail!("prefix length {prefix_len} is larger than 32");
        }
        let masked = u32::from(addr) & Self::mask_of(prefix_len);
        Ok(Self {
            addr: Ipv4Addr::from(masked),
            prefix_len,
        })
    }

    fn mask_of(prefix_len: u8) -> u32 {
        if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix_len))
        }
    }

    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.prefix_len) == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (addr, len) = s.split_once('/').ok_or_else(|| {
            anyhow!("bad CIDR {s:?}: expected ADDRESS/PREFIX, e.g. 172.18.0.0/24")
        })?;
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("bad CIDR {s:?}: {addr:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| anyhow!("bad CIDR {s:?}: prefix length must be 0-32"))?;
        Self::new(addr, len)
    }
}

/// An IPv6 network, normalised so that host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Net {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
}

impl Ipv6Net {
    pub(crate) fn new(addr: Ipv6Addr, prefix_len: u8) -> anyhow::Result<Self> {
        if prefix_len > 128 {
            bail!("prefix length {prefix_len} is larger than 128");
        }
        Ok(Self {
            addr: Ipv6Addr::from(u128::from(addr) & Self::mask_of(prefix_len)),
            prefix_len,
        })
    }

    fn mask_of(prefix_len: u8) -> u128 {
        if prefix_len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(prefix_len))
        }
    }

    pub(crate) fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & Self::mask_of(self.prefix_len) == u128::from(self.addr)
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv6Net {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| anyhow!("bad CIDR {s:?}: expected ADDRESS/PREFIX, e.g. fd00:18::/64"))?;
        let addr: Ipv6Addr = addr
            .parse()
            .with_context(|| format!("bad CIDR {s:?}: {addr:?} is not an IPv6 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 128)
            .ok_or_else(|| anyhow!("bad CIDR {s:?}: prefix length must be 0-128"))?;
        Self::new(addr, len)
    }
}

/// A network of either family: a filter that may name IPv4 or IPv6 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpNet {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

impl IpNet {
    /// The network as 4 words in network order (an IPv4 address in the first, the rest
    /// zero, as the datapath lays out both families) and its mask alike.
    pub fn words(&self) -> ([u32; 4], [u32; 4]) {
        match self {
            IpNet::V4(n) => {
                let mask = Ipv4Net::mask_of(n.prefix_len).to_be();
                let addr = u32::from_ne_bytes(n.addr.octets());
                ([addr, 0, 0, 0], [mask, 0, 0, 0])
            }
            IpNet::V6(n) => {
                let mask = Ipv6Net::mask_of(n.prefix_len).to_be_bytes();
                (
                    bpfnat_common::addr6_to_map(n.addr.octets()),
                    bpfnat_common::addr6_to_map(mask),
                )
            }
        }
    }

    pub fn is_ipv6(&self) -> bool {
        matches!(self, IpNet::V6(_))
    }

    /// Whether `ip` is in the network (never for an address of the other version).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        match (self, ip) {
            (IpNet::V4(n), std::net::IpAddr::V4(a)) => n.contains(a),
            (IpNet::V6(n), std::net::IpAddr::V6(a)) => n.contains(a),
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpNet::V4(n) => n.fmt(f),
            IpNet::V6(n) => n.fmt(f),
        }
    }
}

impl FromStr for IpNet {
    type Err = anyhow::Error;

    /// A CIDR of either family, or one address (/32, /128).
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let addr = s.split_once('/').map_or(s, |(a, _)| a);
        if addr.contains(':') {
            return Ok(IpNet::V6(if s.contains('/') {
                s.parse()?
            } else {
                let a: Ipv6Addr = s
                    .parse()
                    .with_context(|| format!("bad address {s:?}: not an IPv6 address"))?;
                Ipv6Net::new(a, 128)?
            }));
        }
        Ok(IpNet::V4(if s.contains('/') {
            s.parse()?
        } else {
            let a: Ipv4Addr = s.parse().map_err(|_| {
                anyhow!("bad address {s:?}: expected an IPv4 or IPv6 address or CIDR")
            })?;
            Ipv4Net::new(a, 32)?
        }))
    }
}

/// An inclusive range of ports (1-65535): `--port-range`, and the host and container ports of a
/// publish; `lo == hi` for one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// How many ports.
    pub(crate) fn len(&self) -> u32 {
        u32::from(self.hi) - u32::from(self.lo) + 1
    }

    /// `N` or `LO-HI` (a published port's syntax); errors name `what` ("host port", ...).
    pub(crate) fn parse_ports(s: &str, what: &str) -> anyhow::Result<Self> {
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| anyhow!("{what} {p:?} is not a port number (1-65535)"))
        };
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            bail!("{what} range {s:?} ends before it starts");
        }
        Ok(Self { lo, hi })
    }
}

/// `LO-HI`, the syntax of `--port-range`.
impl FromStr for PortRange {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let bad = || anyhow!("bad port range {s:?}: expected LO-HI with 1 <= LO <= HI <= 65535");
        let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(Self { lo, hi })
    }
}

/// `N` for one port, else `LO-HI`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_cidrs() {
        let net: Ipv6Net = "fd00:18::7/64".parse().unwrap();
        assert_eq!(net.to_string(), "fd00:18::/64");
        assert!(net.contains("fd00:18::2".parse().unwrap()));
        assert!(!net.contains("fd00:19::2".parse().unwrap()));
        for bad in ["fd00::", "fd00::/129", "172.18.0.0/24", "x/64"] {
            assert!(bad.parse::<Ipv6Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn protocol_names_in_any_case_and_numbers() {
        assert_eq!(parse_proto("tcp").unwrap(), IPPROTO_TCP);
        assert_eq!(parse_proto("UDP").unwrap(), IPPROTO_UDP);
        assert_eq!(parse_proto("Icmp").unwrap(), IPPROTO_ICMP);
        assert_eq!(parse_proto("47").unwrap(), 47);
        assert!(parse_proto("sctp").is_err());
        assert!(parse_proto("300").is_err());
        assert_eq!(proto_name(IPPROTO_UDP), "udp");
        assert_eq!(proto_name(47), "47");
        assert_eq!(parse_proto("ICMPv6").unwrap(), IPPROTO_ICMPV6);
        assert_eq!(parse_proto("icmp6").unwrap(), IPPROTO_ICMPV6);
        assert_eq!(proto_name(IPPROTO_ICMPV6), "icmpv6");
    }

    #[test]
    fn networks_of_either_family() {
        let v4: IpNet = "172.18.0.7/24".parse().unwrap();
        assert_eq!(v4.to_string(), "172.18.0.0/24");
        assert!(!v4.is_ipv6());
        let (addr, mask) = v4.words();
        assert_eq!(addr, [u32::from_ne_bytes([172, 18, 0, 0]), 0, 0, 0]);
        assert_eq!(mask, [u32::from_ne_bytes([255, 255, 255, 0]), 0, 0, 0]);
        let one: IpNet = "10.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "10.0.0.1/32");
        let v6: IpNet = "fd00:18::2".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00:18::2/128");
        let v6: IpNet = "fd00:18::/48".parse().unwrap();
        assert!(v6.is_ipv6());
        let (addr, mask) = v6.words();
        assert_eq!(
            bpfnat_common::addr6_from_map(addr),
            "fd00:18::".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(
            bpfnat_common::addr6_from_map(mask),
            "ffff:ffff:ffff::".parse::<Ipv6Addr>().unwrap().octets()
        );
        for bad in ["fd00::/129", "172.18.0.0/33", "x", "fd00::zz"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidr_parses_and_masks_host_bits() {
        let net: Ipv4Net = "172.18.0.7/24".parse().unwrap();
        assert_eq!(net.to_string(), "172.18.0.0/24");
        assert!(net.contains("172.18.0.200".parse().unwrap()));
        assert!(!net.contains("172.18.1.1".parse().unwrap()));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_are_rejected_with_a_reason() {
        for bad in [
            "172.18.0.0",
            "172.18.0.0/33",
            "172.18.0/24",
            "x/24",
            "172.18.0.0/-1",
            "::1/64",
        ] {
            let err = bad.parse::<Ipv4Net>().unwrap_err().to_string();
            assert!(err.starts_with("bad CIDR"), "{bad}: {err}");
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "1024-65535".parse::<PortRange>().unwrap(),
            PortRange {
                lo: 1024,
                hi: 65535
            }
        );
        assert_eq!(
            "5000-5000".parse::<PortRange>().unwrap(),
            PortRange { lo: 5000, hi: 5000 }
        );
        for bad in ["0-10", "10-5", "10", "a-b", "1-65536", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
