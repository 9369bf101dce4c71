//! The IPv6 connection table (`NAT6_OUT`, `NAT6_IN`): the mappings NAT66 masquerade makes,
//! listed, expired and removed with the same rules as IPv4's ([`super::conntrack`],
//! [`super::expiry`]). Each half's state is an IPv4 [`NatEntry`] inside the [`NatEntry6`], so
//! [`super::timeouts`] judges both families alike.

use std::{net::Ipv6Addr, time::Duration};

use bpfnat_common::{addr6_from_map, FlowKey6, NatEntry6, Timeouts, IPPROTO_TCP};
use serde_json::{json, Value};

use crate::{
    bpf::datapath::NatTables6,
    table::{
        conntrack::{self, Filter},
        timeouts::{idle_since, idle_timeout, tcp_state_of},
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
    fn tuple(key: &FlowKey6, half: Option<&NatEntry6>) -> Value {
        json!({
            "src": Ipv6Addr::from(addr6_from_map(key.src_addr)).to_string(),
            "dst": Ipv6Addr::from(addr6_from_map(key.dst_addr)).to_string(),
            "sport": u16::from_be(key.src_port),
            "dport": u16::from_be(key.dst_port),
            "packets": half.map_or(0, |h| h.entry.packets),
            "bytes": half.map_or(0, |h| h.entry.bytes),
        })
    }

    fn state(&self) -> Option<&'static str> {
        (self.original.proto == IPPROTO_TCP).then(|| {
            tcp_state_of(&self.out.entry, self.reply_entry.as_ref().map(|e| &e.entry)).name()
        })
    }

    fn seconds_left(&self) -> u64 {
        self.timeout.saturating_sub(self.idle).as_secs()
    }

    /// As `conntrack --json` objects of IPv4 mappings are, with `"family": "ipv6"`.
    pub fn to_json(&self) -> Value {
        json!({
            "family": "ipv6",
            "proto": proto_name(self.original.proto),
            "proto_num": self.original.proto,
            "state": self.state(),
            "timeout": self.timeout.as_secs(),
            "seconds_left": self.seconds_left(),
            "idle_ms": self.idle.as_millis() as u64,
            "external_addr": self.external().to_string(),
            "external_port": u16::from_be(self.out.entry.port),
            "reply_half": self.reply_entry.is_some(),
            "original": Self::tuple(&self.original, Some(&self.out)),
            "reply": Self::tuple(&self.reply, self.reply_entry.as_ref()),
        })
    }

    /// One line, as conntrack(8) prints an IPv6 entry.
    pub fn line(&self) -> String {
        let t = |k: &FlowKey6| {
            format!(
                "src={} dst={} sport={} dport={}",
                Ipv6Addr::from(addr6_from_map(k.src_addr)),
                Ipv6Addr::from(addr6_from_map(k.dst_addr)),
                u16::from_be(k.src_port),
                u16::from_be(k.dst_port)
            )
        };
        format!(
            "ipv6     10 {:<8} {} {} {}{} {}",
            proto_name(self.original.proto),
            self.original.proto,
            self.seconds_left(),
            self.state().map_or(String::new(), |s| format!("{s} ")),
            t(&self.original),
            t(&self.reply)
        )
    }

    /// Whether the (IPv4) filter selects it: protocol and ports apply; an address filter,
    /// being IPv4, selects no IPv6 mapping.
    pub fn matches(&self, filter: &Filter) -> bool {
        filter.src.is_none()
            && filter.dst.is_none()
            && filter.proto.is_none_or(|p| p == self.original.proto)
            && filter
                .sport
                .is_none_or(|p| p == u16::from_be(self.original.src_port))
            && filter
                .dport
                .is_none_or(|p| p == u16::from_be(self.original.dst_port))
    }
}

/// Every mapping (an original half, with its reply half if present).
pub fn list6(tables: &NatTables6<'_>, timeouts: &Timeouts, now_ns: u64) -> Vec<Connection6> {
    tables
        .out
        .iter()
        .filter_map(Result::ok)
        .map(|(original, out)| {
            let reply = original.reply_key(&out);
            let reply_entry = tables.inbound.get(&reply, 0).ok();
            let r = reply_entry.as_ref().map(|e| &e.entry);
            let since = idle_since(original.proto, &out.entry, r);
            Connection6 {
                original,
                out,
                reply,
                reply_entry,
                timeout: idle_timeout(timeouts, original.proto, &out.entry, r),
                idle: Duration::from_nanos(now_ns.saturating_sub(since)),
            }
        })
        .collect()
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
