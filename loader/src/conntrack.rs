//! The connection table as `conntrack -L` shows it: list, filter, delete, flush. Used by the
//! `bpfnat conntrack` command (on the pinned maps of a running instance), by the daemon (to
//! forget mappings when the uplink address changes) and by tests.
//!
//! # Deletion order
//!
//! A mapping is deleted original half (`NAT_OUT`) first, reply half (`NAT_IN`) second. The
//! reply half is what reserves the external port for a destination (the datapath claims it
//! with `BPF_NOEXIST`), so it is released last:
//!
//! - in the window between the two deletions, a packet of the same flow misses `NAT_OUT` and
//!   creates a new mapping; the old reply tuple is still taken, so the new mapping gets another
//!   port, and the second deletion removes only the old reply half. Nothing conflicts; the flow
//!   merely continues on a new port, as it would after a conntrack flush.
//! - the other order would free the reply tuple while `NAT_OUT` still translates the old flow
//!   to it: another internal host could claim the same external tuple in that window, and both
//!   flows would leave with the same address/port to the same destination, with the replies
//!   of both going to one of them.
//!
//! The reply half is removed only if it still points back at the deleted original (it may
//! have been expired and claimed by another flow meanwhile).

use std::{cmp::Ordering, fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{anyhow, bail};
use bpfnat_common::{
    tcp_state, FlowKey, NatEntry, TcpState, Timeouts, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    NAT_FLAG_PORT_REMAPPED,
};
use serde_json::{json, Value};

use crate::{
    addr::Ipv4Net,
    datapath::NatTables,
    expiry::{idle_timeout, original_key, reply_key},
};

/// ICMP echo request/reply types: an echo mapping's two directions.
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;

/// One mapping: both halves and what is derived from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Original tuple (`NAT_OUT` key), as the container sent it.
    pub original: FlowKey,
    /// `NAT_OUT` value: external address/port, original-direction accounting.
    pub out: NatEntry,
    /// Reply tuple (`NAT_IN` key), as replies arrive on the uplink.
    pub reply: FlowKey,
    /// `NAT_IN` value, if the reply half exists.
    pub reply_entry: Option<NatEntry>,
    /// Idle timeout that applies now (protocol, TCP state, replies seen).
    pub timeout: Duration,
    /// Time since the last packet in either direction.
    pub idle: Duration,
    /// Time since the mapping was created.
    pub age: Duration,
}

/// Name of an IP protocol number, as conntrack prints it.
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "unknown",
    }
}

/// `tcp`, `udp`, `icmp` or a protocol number.
pub fn parse_proto(s: &str) -> anyhow::Result<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(IPPROTO_TCP),
        "udp" => Ok(IPPROTO_UDP),
        "icmp" => Ok(IPPROTO_ICMP),
        other => other
            .parse::<u8>()
            .map_err(|_| anyhow!("bad protocol {s:?}: expected tcp, udp, icmp or a number")),
    }
}

impl Connection {
    fn new(
        original: FlowKey,
        out: NatEntry,
        reply_entry: Option<NatEntry>,
        timeouts: &Timeouts,
        now_ns: u64,
    ) -> Self {
        let last = reply_entry.map_or(out.last_seen_ns, |r| r.last_seen_ns.max(out.last_seen_ns));
        let created = reply_entry.map_or(out.created_ns, |r| r.created_ns.min(out.created_ns));
        Self {
            original,
            reply: reply_key(&original, &out),
            out,
            reply_entry,
            timeout: idle_timeout(timeouts, original.proto, &out, reply_entry.as_ref()),
            idle: Duration::from_nanos(now_ns.saturating_sub(last)),
            age: Duration::from_nanos(now_ns.saturating_sub(created)),
        }
    }

    pub fn proto(&self) -> u8 {
        self.original.proto
    }

    /// TCP state from both halves' flag bits; None for other protocols.
    pub fn state(&self) -> Option<TcpState> {
        (self.proto() == IPPROTO_TCP).then(|| {
            tcp_state(
                self.out.tcp_flags,
                self.reply_entry.map_or(0, |r| r.tcp_flags),
            )
        })
    }

    /// Whole seconds until the mapping may expire (0 once it is due; the sweeper removes it
    /// at its next pass).
    pub fn seconds_left(&self) -> u64 {
        self.timeout.saturating_sub(self.idle).as_secs()
    }

    pub fn reply_packets(&self) -> u64 {
        self.reply_entry.map_or(0, |r| r.packets)
    }

    pub fn reply_bytes(&self) -> u64 {
        self.reply_entry.map_or(0, |r| r.bytes)
    }

    /// No reply seen yet (`[UNREPLIED]`).
    pub fn unreplied(&self) -> bool {
        self.reply_packets() == 0
    }

    /// Traffic seen both ways (TCP: and the handshake is over), like conntrack's `[ASSURED]`.
    pub fn assured(&self) -> bool {
        !self.unreplied() && !matches!(self.state(), Some(TcpState::SynSent | TcpState::SynRecv))
    }

    /// The external address the mapping uses.
    pub fn external_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.out.addr.to_ne_bytes())
    }

    /// The external port (ICMP: identifier), host order.
    pub fn external_port(&self) -> u16 {
        u16::from_be(self.out.port)
    }

    fn tuple_json(&self, key: &FlowKey, packets: u64, bytes: u64, is_reply: bool) -> Value {
        let mut v = json!({
            "src": key.src_ip().to_string(),
            "dst": key.dst_ip().to_string(),
            "packets": packets,
            "bytes": bytes,
        });
        if self.proto() == IPPROTO_ICMP {
            let (ty, id) = if is_reply {
                (ICMP_ECHO_REPLY, key.dst_port_host())
            } else {
                (ICMP_ECHO_REQUEST, key.src_port_host())
            };
            v["type"] = json!(ty);
            v["code"] = json!(0);
            v["id"] = json!(id);
        } else {
            v["sport"] = json!(key.src_port_host());
            v["dport"] = json!(key.dst_port_host());
        }
        v
    }

    /// Every field, for `--json`.
    pub fn to_json(&self) -> Value {
        json!({
            "proto": proto_name(self.proto()),
            "proto_num": self.proto(),
            "state": self.state().map(TcpState::name),
            "timeout": self.timeout.as_secs(),
            "seconds_left": self.seconds_left(),
            "idle_ms": self.idle.as_millis() as u64,
            "age_secs": self.age.as_secs(),
            "assured": self.assured(),
            "unreplied": self.unreplied(),
            "port_remapped": self.out.flags & NAT_FLAG_PORT_REMAPPED != 0,
            "external_addr": self.external_addr().to_string(),
            "external_port": self.external_port(),
            "reply_half": self.reply_entry.is_some(),
            "original": self.tuple_json(&self.original, self.out.packets, self.out.bytes, false),
            "reply": self.tuple_json(&self.reply, self.reply_packets(), self.reply_bytes(), true),
        })
    }

    fn tuple_text(
        &self,
        out: &mut String,
        key: &FlowKey,
        packets: u64,
        bytes: u64,
        is_reply: bool,
    ) {
        let _ = write!(out, "src={} dst={} ", key.src_ip(), key.dst_ip());
        if self.proto() == IPPROTO_ICMP {
            let (ty, id) = if is_reply {
                (ICMP_ECHO_REPLY, key.dst_port_host())
            } else {
                (ICMP_ECHO_REQUEST, key.src_port_host())
            };
            let _ = write!(out, "type={ty} code=0 id={id} ");
        } else {
            let _ = write!(
                out,
                "sport={} dport={} ",
                key.src_port_host(),
                key.dst_port_host()
            );
        }
        let _ = write!(out, "packets={packets} bytes={bytes}");
    }

    /// One line as `conntrack -L` prints it.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:<8} {} {} ",
            proto_name(self.proto()),
            self.proto(),
            self.seconds_left()
        );
        if let Some(state) = self.state() {
            s.push_str(state.name());
            s.push(' ');
        }
        self.tuple_text(
            &mut s,
            &self.original,
            self.out.packets,
            self.out.bytes,
            false,
        );
        if self.unreplied() {
            s.push_str(" [UNREPLIED]");
        }
        s.push(' ');
        self.tuple_text(
            &mut s,
            &self.reply,
            self.reply_packets(),
            self.reply_bytes(),
            true,
        );
        if self.assured() {
            s.push_str(" [ASSURED]");
        }
        s
    }

    fn sort_key(&self) -> (u8, u32, u16, u32, u16) {
        let k = &self.original;
        (
            k.proto,
            u32::from(k.src_ip()),
            k.src_port_host(),
            u32::from(k.dst_ip()),
            k.dst_port_host(),
        )
    }
}

/// Which connections a command acts on; every given criterion must match the original tuple.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<u8>,
    pub src: Option<Ipv4Net>,
    pub dst: Option<Ipv4Net>,
    /// Source port (ICMP: echo identifier).
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn matches(&self, c: &Connection) -> bool {
        let k = &c.original;
        self.proto.is_none_or(|p| p == k.proto)
            && self.src.is_none_or(|n| n.contains(k.src_ip()))
            && self.dst.is_none_or(|n| n.contains(k.dst_ip()))
            && self.sport.is_none_or(|p| p == k.src_port_host())
            && self.dport.is_none_or(|p| p == k.dst_port_host())
    }
}

/// An address filter: a CIDR, or one address (= /32).
pub fn parse_net(s: &str) -> anyhow::Result<Ipv4Net> {
    if s.contains('/') {
        s.parse()
    } else {
        let addr: Ipv4Addr = s
            .parse()
            .map_err(|_| anyhow!("bad address {s:?}: expected an IPv4 address or CIDR"))?;
        Ipv4Net::new(addr, 32)
    }
}

/// Every mapping of the table (one per `NAT_OUT` entry), sorted by original tuple.
pub fn list(tables: &NatTables<'_>, timeouts: &Timeouts, now_ns: u64) -> Vec<Connection> {
    let mut conns: Vec<Connection> = tables
        .out
        .iter()
        .filter_map(Result::ok)
        .map(|(key, out)| {
            let reply = tables.inbound.get(&reply_key(&key, &out), 0).ok();
            Connection::new(key, out, reply, timeouts, now_ns)
        })
        .collect();
    conns.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()).then(Ordering::Equal));
    conns
}

/// Delete mappings, original half first (see the module documentation). Returns how many
/// mappings were deleted.
pub fn remove(tables: &mut NatTables<'_>, conns: &[Connection]) -> u64 {
    let mut removed = 0;
    for c in conns {
        // Only the mapping we listed: if it was expired and re-created meanwhile, the new one
        // (another external port) is left alone.
        match tables.out.get(&c.original, 0) {
            Ok(now) if now.addr == c.out.addr && now.port == c.out.port => {
                if tables.out.remove(&c.original).is_ok() {
                    removed += 1;
                }
            }
            _ => continue,
        }
        if let Ok(back) = tables.inbound.get(&c.reply, 0) {
            if original_key(&c.reply, &back) == c.original {
                let _ = tables.inbound.remove(&c.reply);
            }
        }
    }
    removed
}

/// Delete reply halves whose original half is gone and that have been idle for `grace`
/// (younger ones may belong to a mapping the datapath is creating right now: it inserts the
/// reply half first).
pub fn remove_orphans(tables: &mut NatTables<'_>, grace: Duration, now_ns: u64) -> u64 {
    let grace = grace.as_nanos() as u64;
    let orphans: Vec<FlowKey> = tables
        .inbound
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, entry)| {
            let has_original = tables
                .out
                .get(&original_key(key, entry), 0)
                .is_ok_and(|out| reply_key(&original_key(key, entry), &out) == *key);
            !has_original && now_ns.saturating_sub(entry.last_seen_ns) > grace
        })
        .map(|(key, _)| key)
        .collect();
    orphans
        .iter()
        .filter(|k| tables.inbound.remove(k).is_ok())
        .count() as u64
}

/// What a flush removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Mappings (both halves).
    pub mappings: u64,
    /// Reply halves without an original half.
    pub orphans: u64,
}

/// How long a lone reply half is left alone by a flush: the datapath inserts the reply half
/// an instant before the original half.
pub const FLUSH_ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// Delete every mapping whose connection satisfies `pred`.
pub fn remove_where(
    tables: &mut NatTables<'_>,
    timeouts: &Timeouts,
    now_ns: u64,
    pred: impl Fn(&Connection) -> bool,
) -> u64 {
    let doomed: Vec<Connection> = list(tables, timeouts, now_ns)
        .into_iter()
        .filter(|c| pred(c))
        .collect();
    remove(tables, &doomed)
}

/// Delete every mapping, then the reply halves left without an original.
pub fn flush(tables: &mut NatTables<'_>, timeouts: &Timeouts, now_ns: u64) -> FlushReport {
    let mappings = remove_where(tables, timeouts, now_ns, |_| true);
    let orphans = remove_orphans(tables, FLUSH_ORPHAN_GRACE, now_ns);
    FlushReport { mappings, orphans }
}

/// Delete the mappings matching a non-empty filter.
pub fn delete(
    tables: &mut NatTables<'_>,
    timeouts: &Timeouts,
    now_ns: u64,
    filter: &Filter,
) -> anyhow::Result<u64> {
    if filter.is_empty() {
        bail!("conntrack delete needs at least one filter (--proto, --src, --dst, --sport, --dport); use `conntrack flush` to delete everything");
    }
    Ok(remove_where(tables, timeouts, now_ns, |c| {
        filter.matches(c)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfnat_common::{addr_to_map, port_to_map, NAT_FLAG_ORIGINAL};

    fn conn(proto: u8, sport: u16, out_pkts: u64, reply_pkts: Option<u64>) -> Connection {
        let original = FlowKey::new(
            addr_to_map([10, 95, 1, 2]),
            addr_to_map([198, 51, 100, 95]),
            port_to_map(sport),
            port_to_map(if proto == IPPROTO_ICMP { 0 } else { 53 }),
            proto,
        );
        let out = NatEntry {
            last_seen_ns: 9_000_000_000,
            created_ns: 1_000_000_000,
            packets: out_pkts,
            bytes: out_pkts * 100,
            addr: addr_to_map([192, 0, 2, 131]),
            port: port_to_map(sport),
            flags: NAT_FLAG_ORIGINAL,
            tcp_flags: 0,
        };
        let reply = reply_pkts.map(|p| NatEntry {
            last_seen_ns: 9_500_000_000,
            created_ns: 1_000_000_000,
            packets: p,
            bytes: p * 50,
            addr: original.src_addr,
            port: original.src_port,
            flags: 0,
            tcp_flags: 0,
        });
        let mut t = Timeouts::KERNEL;
        t.udp_both_ways = 4;
        t.udp_one_way = 3;
        Connection::new(original, out, reply, &t, 10_000_000_000)
    }

    #[test]
    fn udp_line_and_json() {
        let c = conn(IPPROTO_UDP, 40001, 2, Some(1));
        // Idle 0.5 s of 4 s: 3 whole seconds left.
        assert_eq!(c.seconds_left(), 3);
        assert_eq!(
            c.line(),
            "udp      17 3 src=10.95.1.2 dst=198.51.100.95 sport=40001 dport=53 packets=2 \
             bytes=200 src=198.51.100.95 dst=192.0.2.131 sport=53 dport=40001 packets=1 bytes=50 \
             [ASSURED]"
        );
        let j = c.to_json();
        assert_eq!(j["proto"], "udp");
        assert_eq!(j["state"], Value::Null);
        assert_eq!(j["reply"]["dst"], "192.0.2.131");
        assert_eq!(j["original"]["sport"], 40001);
        assert_eq!(j["timeout"], 4);
    }

    #[test]
    fn unreplied_udp_uses_one_way_timeout() {
        let c = conn(IPPROTO_UDP, 40001, 1, None);
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert!(c
            .line()
            .contains("packets=1 bytes=100 [UNREPLIED] src=198.51.100.95"));
        assert!(!c.assured());
    }

    #[test]
    fn icmp_and_tcp() {
        let c = conn(IPPROTO_ICMP, 777, 3, Some(3));
        assert!(
            c.line().contains("type=8 code=0 id=777 packets=3")
                && c.line().contains("type=0 code=0 id=777"),
            "{}",
            c.line()
        );
        assert_eq!(c.to_json()["original"]["id"], 777);
        let t = conn(IPPROTO_TCP, 5555, 3, Some(3));
        assert_eq!(t.state(), Some(TcpState::Established));
        assert!(
            t.line().starts_with("tcp      6 431999 ESTABLISHED src="),
            "{}",
            t.line()
        );
    }

    #[test]
    fn filters() {
        let c = conn(IPPROTO_UDP, 40001, 1, Some(1));
        assert!(Filter::default().matches(&c));
        let f = Filter {
            proto: Some(parse_proto("udp").unwrap()),
            sport: Some(40001),
            src: Some(parse_net("10.95.1.0/24").unwrap()),
            dst: Some(parse_net("198.51.100.95").unwrap()),
            dport: Some(53),
        };
        assert!(f.matches(&c));
        for miss in [
            Filter {
                proto: Some(IPPROTO_TCP),
                ..Filter::default()
            },
            Filter {
                sport: Some(40002),
                ..Filter::default()
            },
            Filter {
                dport: Some(54),
                ..Filter::default()
            },
            Filter {
                src: Some(parse_net("10.95.2.0/24").unwrap()),
                ..Filter::default()
            },
        ] {
            assert!(!miss.matches(&c), "{miss:?}");
        }
        assert!(parse_proto("sctp").is_err());
        assert_eq!(parse_proto("47").unwrap(), 47);
        assert!(parse_net("10.0.0").is_err());
    }
}
