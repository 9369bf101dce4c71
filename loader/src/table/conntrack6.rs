//! The IPv6 connection table (`NAT6_OUT`, `NAT6_IN`): the mappings NAT66 masquerade makes,
//! listed, expired and removed with the same rules as IPv4's ([`super::conntrack`],
//! [`super::expiry`]). Each half's state is an IPv4 [`NatEntry`] inside the [`NatEntry6`], so
//! [`super::timeouts`] judges both families alike.

use std::{net::Ipv6Addr, time::Duration};

use bpfnat_common::{addr6_from_map, FlowKey6, NatEntry6, Timeouts};
use serde_json::{json, Value};

use crate::{
    bpf::datapath::NatTables6,
    table::{
        conntrack::{self, Filter, View},
        timeouts::{idle_since, idle_timeout},
    },
    util::addr::proto_name,
};

/// One IPv6 mapping.
#[derive(Clone, Copy, Debug)]
pub struct Connection6 {
    /// `NAT6_OUT` key and value.
    pub original: FlowKey6,
    pub out: NatEntry6,
    /// `NAT6_IN` key, and its value if that half exists.
    pub reply: FlowKey6,
    pub reply_entry: Option<NatEntry6>,
    /// Idle timeout that applies now, and time since the last packet either way.
    pub timeout: Duration,
    pub idle: Duration,
    /// Time since the mapping was created.
    pub age: Duration,
}

impl Connection6 {
    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(addr6_from_map(self.original.src_addr))
    }

    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(addr6_from_map(self.original.dst_addr))
    }

    /// The external (translated) address.
    pub fn external(&self) -> Ipv6Addr {
        Ipv6Addr::from(addr6_from_map(self.out.addr))
    }
}

impl Connection6 {
    fn view(&self) -> View<'_> {
        View {
            proto: self.original.proto,
            out: &self.out.entry,
            reply: self.reply_entry.as_ref().map(|e| &e.entry),
        }
    }

    /// The tuples as conntrack shows them: the initiator's direction first (client ->
    /// host:port for a published port), as for IPv4.
    pub fn tuples(&self) -> (FlowKey6, FlowKey6) {
        self.view().initiator_first(self.original, self.reply)
    }

    /// The order of `conntrack list`: protocol, then source and destination (address, port)
    /// of the tuple as listed, addresses as numbers.
    fn sort_key(&self) -> (u8, u128, u16, u128, u16) {
        let (k, _) = self.tuples();
        let ip = |a: [u32; 4]| u128::from_be_bytes(addr6_from_map(a));
        (
            k.proto,
            ip(k.src_addr),
            u16::from_be(k.src_port),
            ip(k.dst_addr),
            u16::from_be(k.dst_port),
        )
    }

    fn tuple(key: &FlowKey6, (packets, bytes): (u64, u64)) -> Value {
        json!({
            "src": Ipv6Addr::from(addr6_from_map(key.src_addr)).to_string(),
            "dst": Ipv6Addr::from(addr6_from_map(key.dst_addr)).to_string(),
            "sport": u16::from_be(key.src_port),
            "dport": u16::from_be(key.dst_port),
            "packets": packets,
            "bytes": bytes,
        })
    }

    fn seconds_left(&self) -> u64 {
        self.timeout.saturating_sub(self.idle).as_secs()
    }

    /// The fields of IPv4 mappings' `conntrack --json` objects, with `"family": "ipv6"`.
    pub fn to_json(&self) -> Value {
        let view = self.view();
        let (orig, reply) = self.tuples();
        let (orig_counts, reply_counts) = view.counts();
        json!({
            "family": "ipv6",
            "proto": proto_name(self.original.proto),
            "proto_num": self.original.proto,
            "state": view.state().map(|s| s.name()),
            "timeout": self.timeout.as_secs(),
            "seconds_left": self.seconds_left(),
            "idle_ms": self.idle.as_millis() as u64,
            "age_secs": self.age.as_secs(),
            "assured": view.assured(),
            "unreplied": view.unreplied(),
            "port_remapped": view.port_remapped(),
            "published": view.published(),
            "external_addr": self.external().to_string(),
            "external_port": u16::from_be(self.out.entry.port),
            "reply_half": self.reply_entry.is_some(),
            "original": Self::tuple(&orig, orig_counts),
            "reply": Self::tuple(&reply, reply_counts),
        })
    }

    /// One line, as conntrack(8) prints an IPv6 entry.
    pub fn line(&self) -> String {
        let view = self.view();
        let t = |k: &FlowKey6, (packets, bytes): (u64, u64)| {
            format!(
                "src={} dst={} sport={} dport={} packets={packets} bytes={bytes}",
                Ipv6Addr::from(addr6_from_map(k.src_addr)),
                Ipv6Addr::from(addr6_from_map(k.dst_addr)),
                u16::from_be(k.src_port),
                u16::from_be(k.dst_port)
            )
        };
        let (orig, reply) = self.tuples();
        let (orig_counts, reply_counts) = view.counts();
        format!(
            "ipv6     10 {:<8} {} {} {}{}{} {}{}",
            proto_name(self.original.proto),
            self.original.proto,
            self.seconds_left(),
            view.state()
                .map_or(String::new(), |s| format!("{} ", s.name())),
            t(&orig, orig_counts),
            if view.unreplied() { " [UNREPLIED]" } else { "" },
            t(&reply, reply_counts),
            if view.assured() { " [ASSURED]" } else { "" },
        )
    }

    /// Whether the filter selects it, on the original tuple (as listed); an IPv4 address
    /// filter selects no IPv6 mapping.
    pub fn matches(&self, filter: &Filter) -> bool {
        let (orig, _) = self.tuples();
        let addr = |a: [u32; 4]| std::net::IpAddr::from(bpfnat_common::addr6_from_map(a));
        filter.src.is_none_or(|n| n.contains(addr(orig.src_addr)))
            && filter.dst.is_none_or(|n| n.contains(addr(orig.dst_addr)))
            && filter.proto.is_none_or(|p| p == orig.proto)
            && filter
                .sport
                .is_none_or(|p| p == u16::from_be(orig.src_port))
            && filter
                .dport
                .is_none_or(|p| p == u16::from_be(orig.dst_port))
    }
}

/// Every mapping (an original half, with its reply half if present).
pub fn list6(tables: &NatTables6<'_>, timeouts: &Timeouts, now_ns: u64) -> Vec<Connection6> {
    let mut conns = tables
        .out
        .iter()
        .filter_map(Result::ok)
        .map(|(original, out)| {
            let reply = original.reply_key(&out);
            let reply_entry = tables.inbound.get(&reply, 0).ok();
            let r = reply_entry.as_ref().map(|e| &e.entry);
            let since = idle_since(original.proto, &out.entry, r);
            let created = View {
                proto: original.proto,
                out: &out.entry,
                reply: r,
            }
            .created_ns();
            Connection6 {
                original,
                out,
                reply,
                reply_entry,
                timeout: idle_timeout(timeouts, original.proto, &out.entry, r),
                idle: Duration::from_nanos(now_ns.saturating_sub(since)),
                age: Duration::from_nanos(now_ns.saturating_sub(created)),
            }
        })
        .collect::<Vec<_>>();
    // Sorted as IPv4's are: by the original tuple as listed (protocol, source, destination).
    conns.sort_by_key(Connection6::sort_key);
    conns
}

/// Remove mappings as IPv4's are removed ([`conntrack::remove_mappings`]): original half
/// first, then the reply half if it still points back at it, given back if the datapath took
/// it back meanwhile; a mapping expired and re-created since it was listed is left alone.
/// Returns how many.
pub fn remove6(tables: &mut NatTables6<'_>, doomed: &[Connection6]) -> u64 {
    conntrack::remove_mappings(tables, doomed.iter().map(|c| (c.original, c.out, c.reply)))
}

/// Remove the mappings matching `pred`.
pub fn remove6_where(
    tables: &mut NatTables6<'_>,
    timeouts: &Timeouts,
    now_ns: u64,
    pred: impl Fn(&Connection6) -> bool,
) -> u64 {
    let doomed: Vec<Connection6> = list6(tables, timeouts, now_ns)
        .into_iter()
        .filter(|c| pred(c))
        .collect();
    remove6(tables, &doomed)
}

/// How long a reply half may wait for its original half (being inserted by the datapath an
/// instant later) before it counts as an orphan.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// One expiry pass over the IPv6 table: mappings idle past their timeout, both halves, and
/// reply halves whose original half is gone. Returns (expired, orphans).
pub fn sweep6(tables: &mut NatTables6<'_>, timeouts: &Timeouts, now_ns: u64) -> (u64, u64) {
    let expired = remove6_where(tables, timeouts, now_ns, |c| c.idle > c.timeout);
    let orphans = conntrack::remove_orphans(tables, ORPHAN_GRACE, now_ns);
    (expired, orphans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfnat_common::{addr6_to_map, port_to_map, NatEntry, NAT_FLAG_PUBLISHED, TCP_SEEN_SYN};

    fn a(s: &str) -> [u32; 4] {
        addr6_to_map(s.parse::<Ipv6Addr>().unwrap().octets())
    }

    /// A connection from client 2001:db8:300::1 port 50000 to the published port 8080 of
    /// 2001:db8::2, led to fd00:18::2 port 80.
    fn published(reply_packets: u64) -> Connection6 {
        let half = |packets: u64, addr: &str, port: u16| NatEntry6 {
            entry: NatEntry {
                last_seen_ns: 9_000_000_000,
                created_ns: 1_000_000_000,
                packets,
                bytes: packets * 60,
                port: port_to_map(port),
                flags: NAT_FLAG_PUBLISHED,
                tcp_flags: TCP_SEEN_SYN,
                ..NatEntry::default()
            },
            addr: a(addr),
        };
        // NAT6_OUT: the container's answers; NAT6_IN: the client's direction.
        let original = FlowKey6::new(
            a("fd00:18::2"),
            a("2001:db8:300::1"),
            port_to_map(80),
            port_to_map(50000),
            6,
        );
        let out = half(reply_packets, "2001:db8::2", 8080);
        let reply = original.reply_key(&out);
        Connection6 {
            original,
            out,
            reply,
            reply_entry: Some(half(3, "fd00:18::2", 80)),
            timeout: Duration::from_secs(60),
            idle: Duration::from_secs(1),
            age: Duration::from_secs(8),
        }
    }

    /// Listed in the order of the tuple as listed: protocol, then addresses as numbers (not
    /// as the map's words), then ports.
    #[test]
    fn listing_order_is_by_the_listed_tuple() {
        let masqueraded = |src: &str, sport: u16, proto: u8| {
            let original = FlowKey6::new(
                a(src),
                a("2001:db8:100::1"),
                port_to_map(sport),
                port_to_map(443),
                proto,
            );
            let out = NatEntry6 {
                entry: NatEntry {
                    port: port_to_map(sport),
                    ..NatEntry::default()
                },
                addr: a("2001:db8::2"),
            };
            let reply = original.reply_key(&out);
            Connection6 {
                original,
                out,
                reply,
                reply_entry: None,
                timeout: Duration::from_secs(60),
                idle: Duration::ZERO,
                age: Duration::ZERO,
            }
        };
        let mut conns = [
            masqueraded("fd00:18::10", 1000, 17),
            masqueraded("fd00:18::2", 2000, 6),
            masqueraded("fd00:18::9", 1000, 6),
            masqueraded("fd00:18::2", 1000, 6),
        ];
        conns.sort_by_key(Connection6::sort_key);
        let order: Vec<(u8, String, u16)> = conns
            .iter()
            .map(|c| {
                let j = c.to_json();
                let o = &j["original"];
                (
                    c.original.proto,
                    o["src"].as_str().unwrap().to_owned(),
                    o["sport"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                (6, "fd00:18::2".to_owned(), 1000),
                (6, "fd00:18::2".to_owned(), 2000),
                (6, "fd00:18::9".to_owned(), 1000),
                (17, "fd00:18::10".to_owned(), 1000),
            ]
        );
    }

    #[test]
    fn a_published_connection_is_listed_from_the_client() {
        let c = published(2);
        let j = c.to_json();
        assert_eq!(j["published"], true);
        assert_eq!(j["original"]["src"], "2001:db8:300::1");
        assert_eq!(j["original"]["dst"], "2001:db8::2");
        assert_eq!(j["original"]["dport"], 8080);
        assert_eq!(j["original"]["packets"], 3, "the client's packets");
        assert_eq!(j["reply"]["src"], "fd00:18::2");
        assert_eq!(j["reply"]["sport"], 80);
        assert_eq!(j["reply"]["packets"], 2, "the container's answers");
        assert_eq!(j["age_secs"], 8);
        assert_eq!(j["unreplied"], false);
        let filter = |dport| Filter {
            dport: Some(dport),
            ..Filter::default()
        };
        assert!(c.matches(&filter(8080)) && !c.matches(&filter(50000)));
        // Address filters of either version, on the tuple as listed.
        let net = |src: &str, dst: &str| Filter {
            src: (!src.is_empty()).then(|| src.parse().unwrap()),
            dst: (!dst.is_empty()).then(|| dst.parse().unwrap()),
            ..Filter::default()
        };
        assert!(c.matches(&net("2001:db8:300::/48", "")));
        assert!(c.matches(&net("", "2001:db8::2")));
        assert!(
            !c.matches(&net("fd00:18::/64", "")),
            "the container is not the source"
        );
        assert!(!c.matches(&net("0.0.0.0/0", "")), "an IPv4 network");
        assert!(c.line().contains(
            "src=2001:db8:300::1 dst=2001:db8::2 sport=50000 dport=8080 packets=3 bytes=180 \
             src=fd00:18::2 dst=2001:db8:300::1 sport=80 dport=50000 packets=2"
        ));
        let unanswered = published(0);
        assert_eq!(unanswered.to_json()["unreplied"], true);
        assert!(unanswered
            .line()
            .contains("packets=3 bytes=180 [UNREPLIED] src="));
    }
}
