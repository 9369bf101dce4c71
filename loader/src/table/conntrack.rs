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
//!   creates a new mapping; it finds its own old reply half still holding the reply tuple and
//!   keeps that port (`nat::keep_own_port` in the datapath: with another port the peer would
//!   reset the connection); the paragraph below says how the second deletion then spares it.
//! - the other order would free the reply tuple while `NAT_OUT` still translates the old flow
//!   to it: another internal host could claim the same external tuple in that window, and both
//!   flows would leave with the same address/port to the same destination, with the replies
//!   of both going to one of them.
//!
//! The reply half is removed only if it still points back at the deleted original (it may
//! have been expired and claimed by another flow meanwhile).
//!
//! Both families are removed by the same routines ([`Halves`]: the IPv4 tables and the IPv6
//! ones, [`crate::table::conntrack6`]), so they keep the same order and checks.
//!
//! A packet of the flow arriving in that window usually finds its own old reply half and takes
//! it back (the datapath keeps the flow's port rather than move it: the peer would reset a
//! connection that changed ports). If that happens just before the reply half is deleted, the
//! new original half is left without one and the flow's replies stop being translated. So every
//! removal of reply halves ([`remove_reply_halves`]) checks afterwards whether an original half
//! came back pointing at a removed one, and puts that one back.
//!
//! # Published ports
//!
//! A connection to a published port (`NAT_FLAG_PUBLISHED`) is started from outside: its
//! `NAT_IN` half holds the initiator's direction (client -> host:port) and its `NAT_OUT` half the
//! container's answers. Listing shows it as conntrack shows a DNAT: original tuple client ->
//! host:port, reply tuple container -> client, and the TCP state is derived with the halves'
//! roles swapped.

use std::{cmp::Ordering, fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::bail;
use bpfnat_common::{
    FlowKey, FlowKey6, NatEntry, NatEntry6, PublishKey, PublishTarget, TcpState, Timeouts,
    IPPROTO_ICMP, IPPROTO_TCP, NAT_FLAG_PORT_REMAPPED, NAT_FLAG_PUBLISHED,
};
use serde_json::{json, Value};

use crate::{
    bpf::datapath::{NatTables, NatTables6},
    table::timeouts::{idle_since, idle_timeout, tcp_state_of},
    util::addr::{proto_name, IpNet},
};

use bpfnat_common::wire::{BPF_NOEXIST, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST};

/// One mapping: both halves and what is derived from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// `NAT_OUT` key: the tuple as the container sends it (for a masqueraded flow, the
    /// original tuple; for a published port, the container's answers).
    pub original: FlowKey,
    /// `NAT_OUT` value: external address/port, accounting of the container's direction.
    pub out: NatEntry,
    /// `NAT_IN` key: the tuple as packets arrive on the uplink.
    pub reply: FlowKey,
    /// `NAT_IN` value, if that half exists.
    pub reply_entry: Option<NatEntry>,
    /// Idle timeout that applies now (protocol, TCP state, replies seen).
    pub timeout: Duration,
    /// Time since the last packet in either direction.
    pub idle: Duration,
    /// Time since the mapping was created.
    pub age: Duration,
}

impl Connection {
    fn new(
        original: FlowKey,
        out: NatEntry,
        reply_entry: Option<NatEntry>,
        timeouts: &Timeouts,
        now_ns: u64,
    ) -> Self {
        let last = idle_since(original.proto, &out, reply_entry.as_ref());
        let created = View {
            proto: original.proto,
            out: &out,
            reply: reply_entry.as_ref(),
        }
        .created_ns();
        Self {
            original,
            reply: original.reply_key(&out),
            out,
            reply_entry,
            timeout: idle_timeout(timeouts, original.proto, &out, reply_entry.as_ref()),
            idle: Duration::from_nanos(now_ns.saturating_sub(last)),
            age: Duration::from_nanos(now_ns.saturating_sub(created)),
        }
    }

    pub(crate) fn proto(&self) -> u8 {
        self.original.proto
    }

    fn view(&self) -> View<'_> {
        View {
            proto: self.proto(),
            out: &self.out,
            reply: self.reply_entry.as_ref(),
        }
    }

    /// Made through a published port (the outside initiated it).
    pub(crate) fn published(&self) -> bool {
        self.view().published()
    }

    /// The original tuple as conntrack shows it: the initiator's direction (client ->
    /// host:port for a published port).
    pub(crate) fn orig_tuple(&self) -> FlowKey {
        self.view().initiator_first(self.original, self.reply).0
    }

    /// The reply tuple as conntrack shows it (container -> client for a published port).
    pub(crate) fn reply_tuple(&self) -> FlowKey {
        self.view().initiator_first(self.original, self.reply).1
    }

    /// Packets and bytes of the initiator's direction.
    pub(crate) fn orig_counts(&self) -> (u64, u64) {
        self.view().counts().0
    }

    /// Packets and bytes of the answering direction.
    pub(crate) fn reply_counts(&self) -> (u64, u64) {
        self.view().counts().1
    }

    /// TCP state from both halves' flag bits; None for other protocols.
    pub(crate) fn state(&self) -> Option<TcpState> {
        self.view().state()
    }

    /// Whole seconds until the mapping may expire (0 once it is due; the sweeper removes it
    /// at its next pass).
    pub(crate) fn seconds_left(&self) -> u64 {
        self.timeout.saturating_sub(self.idle).as_secs()
    }

    /// No answer seen yet (`[UNREPLIED]`).
    pub(crate) fn unreplied(&self) -> bool {
        self.view().unreplied()
    }

    /// Traffic seen both ways (TCP: and the handshake is over), like conntrack's `[ASSURED]`.
    pub(crate) fn assured(&self) -> bool {
        self.view().assured()
    }

    /// The external address the mapping uses (for a published port: the host address).
    pub(crate) fn external_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.out.addr.to_ne_bytes())
    }

    /// The external port (ICMP: identifier), host order.
    pub(crate) fn external_port(&self) -> u16 {
        u16::from_be(self.out.port)
    }

    fn tuple_json(&self, key: &FlowKey, (packets, bytes): (u64, u64), is_reply: bool) -> Value {
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
            "family": "ipv4",
            "proto": proto_name(self.proto()),
            "proto_num": self.proto(),
            "state": self.state().map(TcpState::name),
            "timeout": self.timeout.as_secs(),
            "seconds_left": self.seconds_left(),
            "idle_ms": self.idle.as_millis() as u64,
            "age_secs": self.age.as_secs(),
            "assured": self.assured(),
            "unreplied": self.unreplied(),
            "port_remapped": self.view().port_remapped(),
            "published": self.published(),
            "external_addr": self.external_addr().to_string(),
            "external_port": self.external_port(),
            "reply_half": self.reply_entry.is_some(),
            "original": self.tuple_json(&self.orig_tuple(), self.orig_counts(), false),
            "reply": self.tuple_json(&self.reply_tuple(), self.reply_counts(), true),
        })
    }

    fn tuple_text(
        &self,
        out: &mut String,
        key: &FlowKey,
        (packets, bytes): (u64, u64),
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
        self.tuple_text(&mut s, &self.orig_tuple(), self.orig_counts(), false);
        if self.unreplied() {
            s.push_str(" [UNREPLIED]");
        }
        s.push(' ');
        self.tuple_text(&mut s, &self.reply_tuple(), self.reply_counts(), true);
        if self.assured() {
            s.push_str(" [ASSURED]");
        }
        s
    }

    fn sort_key(&self) -> (u8, u32, u16, u32, u16) {
        let k = &self.orig_tuple();
        (
            k.proto,
            u32::from(k.src_ip()),
            k.src_port_host(),
            u32::from(k.dst_ip()),
            k.dst_port_host(),
        )
    }
}

/// What conntrack shows of a mapping that its two halves' state alone decides, for both
/// families: a published connection (started from outside) listed initiator first, as
/// conntrack lists a DNAT, its TCP state, `[UNREPLIED]`, `[ASSURED]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View<'a> {
    pub proto: u8,
    /// The container's direction (`NAT_OUT`, `NAT6_OUT`).
    pub out: &'a NatEntry,
    /// The uplink's direction, if that half exists.
    pub reply: Option<&'a NatEntry>,
}

impl View<'_> {
    /// When the mapping was made (its older half).
    pub(crate) fn created_ns(&self) -> u64 {
        self.reply.map_or(self.out.created_ns, |r| {
            r.created_ns.min(self.out.created_ns)
        })
    }

    pub(crate) fn published(&self) -> bool {
        self.out.flags & NAT_FLAG_PUBLISHED != 0
    }

    pub(crate) fn port_remapped(&self) -> bool {
        self.out.flags & NAT_FLAG_PORT_REMAPPED != 0
    }

    /// The container's and the uplink's direction, in the initiator's order.
    pub(crate) fn initiator_first<T>(&self, container: T, uplink: T) -> (T, T) {
        if self.published() {
            (uplink, container)
        } else {
            (container, uplink)
        }
    }

    /// Packets and bytes of the initiator's direction, then of the answering one.
    pub(crate) fn counts(&self) -> ((u64, u64), (u64, u64)) {
        let out = (self.out.packets, self.out.bytes);
        let reply = self.reply.map_or((0, 0), |r| (r.packets, r.bytes));
        self.initiator_first(out, reply)
    }

    /// TCP state from both halves' flag bits; None for other protocols.
    pub(crate) fn state(&self) -> Option<TcpState> {
        (self.proto == IPPROTO_TCP).then(|| tcp_state_of(self.out, self.reply))
    }

    /// No answer seen yet (`[UNREPLIED]`).
    pub(crate) fn unreplied(&self) -> bool {
        self.counts().1 .0 == 0
    }

    /// Traffic seen both ways (TCP: and the handshake is over), like conntrack's `[ASSURED]`.
    pub(crate) fn assured(&self) -> bool {
        !self.unreplied() && !matches!(self.state(), Some(TcpState::SynSent | TcpState::SynRecv))
    }
}

/// Which connections a command acts on; every given criterion must match the original tuple
/// (as listed: for a published port, client -> host:port).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<u8>,
    /// Networks of either version: one of IPv4 selects no IPv6 mapping, and the reverse.
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    /// Source port (ICMP: echo identifier).
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn matches(&self, c: &Connection) -> bool {
        let k = &c.orig_tuple();
        self.proto.is_none_or(|p| p == k.proto)
            && self.src.is_none_or(|n| n.contains(k.src_ip().into()))
            && self.dst.is_none_or(|n| n.contains(k.dst_ip().into()))
            && self.sport.is_none_or(|p| p == k.src_port_host())
            && self.dport.is_none_or(|p| p == k.dst_port_host())
    }
}

/// An address filter: a CIDR or one address (= /32, /128), IPv4 or IPv6.
pub fn parse_net(s: &str) -> anyhow::Result<IpNet> {
    s.parse()
}

/// Every mapping of the table (one per `NAT_OUT` entry), sorted by original tuple.
pub fn list(tables: &NatTables<'_>, timeouts: &Timeouts, now_ns: u64) -> Vec<Connection> {
    let mut conns: Vec<Connection> = tables
        .out
        .iter()
        .filter_map(Result::ok)
        .map(|(key, out)| {
            let reply = tables.inbound.get(&key.reply_key(&out), 0).ok();
            Connection::new(key, out, reply, timeouts, now_ns)
        })
        .collect();
    conns.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()).then(Ordering::Equal));
    conns
}

/// The two halves of one family's connection table (`NAT_OUT`/`NAT_IN`, `NAT6_OUT`/`NAT6_IN`),
/// as the removal routines use them: both families are removed in the same order, with the
/// same checks (see the module documentation).
pub trait Halves {
    type Key: Copy + PartialEq;
    type Entry: Copy;
    fn out_get(&self, key: &Self::Key) -> Option<Self::Entry>;
    fn out_remove(&mut self, key: &Self::Key) -> bool;
    fn in_get(&self, key: &Self::Key) -> Option<Self::Entry>;
    fn in_remove(&mut self, key: &Self::Key) -> bool;
    /// Insert a reply half unless one exists (`BPF_NOEXIST`); whether it was inserted.
    fn in_insert_new(&mut self, key: &Self::Key, entry: &Self::Entry) -> bool;
    /// Every reply half.
    fn in_entries(&self) -> Vec<(Self::Key, Self::Entry)>;
    /// The key of the other half.
    fn reply_key(key: &Self::Key, out: &Self::Entry) -> Self::Key;
    fn original_key(key: &Self::Key, inbound: &Self::Entry) -> Self::Key;
    /// The state both families keep per half (times, accounting, port, flags).
    fn state(entry: &Self::Entry) -> &NatEntry;
    /// Whether two original halves give their flow the same external address and port.
    fn same_mapping(a: &Self::Entry, b: &Self::Entry) -> bool;
}

/// [`Halves`] for a table pair whose `out` and `inbound` maps are aya hash maps.
macro_rules! halves {
    ($tables:ident, $key:ty, $entry:ty, |$e:ident| $state:expr, |$a:ident, $b:ident| $same:expr) => {
        impl Halves for $tables<'_> {
            type Key = $key;
            type Entry = $entry;
            fn out_get(&self, key: &$key) -> Option<$entry> {
                self.out.get(key, 0).ok()
            }
            fn out_remove(&mut self, key: &$key) -> bool {
                self.out.remove(key).is_ok()
            }
            fn in_get(&self, key: &$key) -> Option<$entry> {
                self.inbound.get(key, 0).ok()
            }
            fn in_remove(&mut self, key: &$key) -> bool {
                self.inbound.remove(key).is_ok()
            }
            fn in_insert_new(&mut self, key: &$key, entry: &$entry) -> bool {
                self.inbound.insert(key, entry, BPF_NOEXIST).is_ok()
            }
            fn in_entries(&self) -> Vec<($key, $entry)> {
                self.inbound.iter().filter_map(Result::ok).collect()
            }
            fn reply_key(key: &$key, out: &$entry) -> $key {
                key.reply_key(out)
            }
            fn original_key(key: &$key, inbound: &$entry) -> $key {
                key.original_key(inbound)
            }
            fn state($e: &$entry) -> &NatEntry {
                $state
            }
            fn same_mapping($a: &$entry, $b: &$entry) -> bool {
                $same
            }
        }
    };
}

halves!(NatTables, FlowKey, NatEntry, |e| e, |a, b| a.addr == b.addr
    && a.port == b.port);
halves!(NatTables6, FlowKey6, NatEntry6, |e| &e.entry, |a, b| a.addr
    == b.addr
    && a.entry.port == b.entry.port);

/// Delete mappings (original key, its value as listed, reply key), original half first (see
/// the module documentation). Returns how many mappings were deleted.
pub(crate) fn remove_mappings<T: Halves>(
    tables: &mut T,
    conns: impl IntoIterator<Item = (T::Key, T::Entry, T::Key)>,
) -> u64 {
    let mut removed = 0;
    for (original, out, reply) in conns {
        // Only the mapping we listed: if it was expired and re-created meanwhile, the new one
        // (another external port) is left alone.
        match tables.out_get(&original) {
            Some(now) if T::same_mapping(&now, &out) => {
                if tables.out_remove(&original) {
                    removed += 1;
                }
            }
            _ => continue,
        }
        if let Some(back) = tables.in_get(&reply) {
            if T::original_key(&reply, &back) == original {
                remove_reply_halves(tables, &[(reply, back)]);
            }
        }
    }
    removed
}

/// Delete mappings, original half first (see the module documentation). Returns how many
/// mappings were deleted.
pub(crate) fn remove(tables: &mut NatTables<'_>, conns: &[Connection]) -> u64 {
    remove_mappings(tables, conns.iter().map(|c| (c.original, c.out, c.reply)))
}

/// Delete reply halves (key and the value read before), then put back any that an original
/// half points at again: the datapath took it back for a packet of its flow in the meantime
/// (see the module documentation). Returns how many stayed deleted.
pub fn remove_reply_halves<T: Halves>(tables: &mut T, halves: &[(T::Key, T::Entry)]) -> u64 {
    let mut removed = 0;
    for (reply, back) in halves {
        if !tables.in_remove(reply) {
            continue;
        }
        let original = T::original_key(reply, back);
        let taken_back = tables
            .out_get(&original)
            .is_some_and(|out| T::reply_key(&original, &out) == *reply);
        // BPF_NOEXIST: if the datapath has already made a new reply half, keep that one.
        if !(taken_back && tables.in_insert_new(reply, back)) {
            removed += 1;
        }
    }
    removed
}

/// Delete reply halves whose original half is gone and that have been idle for `grace`
/// (younger ones may belong to a mapping the datapath is creating right now: it inserts the
/// reply half first).
pub(crate) fn remove_orphans<T: Halves>(tables: &mut T, grace: Duration, now_ns: u64) -> u64 {
    let grace = grace.as_nanos() as u64;
    let orphans: Vec<(T::Key, T::Entry)> = tables
        .in_entries()
        .into_iter()
        .filter(|(key, entry)| {
            let original = T::original_key(key, entry);
            let has_original = tables
                .out_get(&original)
                .is_some_and(|out| T::reply_key(&original, &out) == *key);
            !has_original && now_ns.saturating_sub(T::state(entry).last_seen_ns) > grace
        })
        .collect();
    remove_reply_halves(tables, &orphans)
}

/// Remove the connections made through published ports whose reply half (the client's
/// direction) `matches`, and return how many. The reply half goes first: see
/// [`remove_published`].
pub(crate) fn remove_published_where<T: Halves>(
    tables: &mut T,
    matches: impl Fn(&T::Key, &T::Entry) -> bool,
) -> u64 {
    let doomed: Vec<(T::Key, T::Entry)> = tables
        .in_entries()
        .into_iter()
        .filter(|(key, entry)| {
            T::state(entry).flags & NAT_FLAG_PUBLISHED != 0 && matches(key, entry)
        })
        .collect();
    let mut removed = 0;
    for (key, entry) in &doomed {
        if !tables.in_remove(key) {
            continue; // expired meanwhile
        }
        removed += 1;
        let out_key = T::original_key(key, entry);
        if tables
            .out_get(&out_key)
            .is_some_and(|out| T::reply_key(&out_key, &out) == *key)
        {
            tables.out_remove(&out_key);
        }
    }
    removed
}

/// Remove the connections made through the published ports `publishes` (host port key and
/// the target it led to), and return how many. Used when a publish is removed or re-targeted:
/// the datapath consults `PUBLISH` only for a connection's first packet.
///
/// The `NAT_IN` half (the client's direction) goes first: the publish itself is already gone,
/// so a client packet arriving in between matches nothing and is not forwarded any more;
/// the container's answers are still translated until the `NAT_OUT` half goes. (The other
/// order would let an answer in between miss `NAT_OUT` and be masqueraded as a new outbound
/// flow from the container's port.)
pub(crate) fn remove_published(
    tables: &mut NatTables<'_>,
    publishes: &[(PublishKey, PublishTarget)],
) -> u64 {
    if publishes.is_empty() {
        return 0;
    }
    remove_published_where(tables, |key, entry| {
        publishes.iter().any(|(k, t)| {
            k.proto == key.proto
                && k.host_port == key.dst_port
                && (k.host_addr == 0 || k.host_addr == key.dst_addr)
                && t.addr == entry.addr
                && t.port == entry.port
        })
    })
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
pub(crate) const FLUSH_ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// Delete every mapping whose connection satisfies `pred`.
pub(crate) fn remove_where(
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
    use bpfnat_common::{addr_to_map, port_to_map, IPPROTO_UDP, NAT_FLAG_ORIGINAL};

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
            ..NatEntry::default()
        };
        let reply = reply_pkts.map(|p| NatEntry {
            last_seen_ns: 9_500_000_000,
            created_ns: 1_000_000_000,
            packets: p,
            bytes: p * 50,
            addr: original.src_addr,
            port: original.src_port,
            ..NatEntry::default()
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
        assert_eq!(j["family"], "ipv4");
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

    /// A connection to a published port: listed as conntrack lists a DNAT, client -> host:port
    /// then container -> client, with the TCP state from the client's side.
    #[test]
    fn published_connection_is_shown_from_the_client() {
        let client = addr_to_map([192, 0, 2, 201]);
        let host = addr_to_map([192, 0, 2, 101]);
        let ctr = addr_to_map([10, 92, 1, 2]);
        // NAT_OUT: the container's answers; NAT_IN: the client's packets.
        let out_key = FlowKey::new(
            ctr,
            client,
            port_to_map(80),
            port_to_map(50000),
            IPPROTO_TCP,
        );
        let in_entry = |tcp_flags, packets| NatEntry {
            last_seen_ns: 9_000_000_000,
            created_ns: 1_000_000_000,
            packets,
            bytes: packets * 60,
            addr: ctr,
            port: port_to_map(80),
            flags: NAT_FLAG_PUBLISHED,
            tcp_flags,
            ..NatEntry::default()
        };
        let out_entry = |tcp_flags, packets| NatEntry {
            addr: host,
            port: port_to_map(8080),
            flags: NAT_FLAG_PUBLISHED | NAT_FLAG_ORIGINAL,
            ..in_entry(tcp_flags, packets)
        };
        let t = Timeouts::KERNEL;
        let now = 10_000_000_000;
        use bpfnat_common::{TCP_SEEN_ACK as A, TCP_SEEN_SYN as S};
        // The client's SYN, no answer yet: its timeout runs from the SYN (1 s), not from the
        // last packet (9 s).
        let c = Connection::new(out_key, out_entry(0, 0), Some(in_entry(S, 1)), &t, now);
        assert!(c.published());
        assert_eq!(c.state(), Some(TcpState::SynSent));
        assert_eq!(c.timeout, Duration::from_secs(u64::from(t.tcp_syn_sent)));
        assert_eq!(
            c.line(),
            "tcp      6 111 SYN_SENT src=192.0.2.201 dst=192.0.2.101 sport=50000 dport=8080 \
             packets=1 bytes=60 [UNREPLIED] src=10.92.1.2 dst=192.0.2.201 sport=80 dport=50000 \
             packets=0 bytes=0"
        );
        // The container's SYN-ACK: SYN_RECV (the client has not acknowledged it yet).
        let c = Connection::new(out_key, out_entry(S | A, 1), Some(in_entry(S, 1)), &t, now);
        assert_eq!(c.state(), Some(TcpState::SynRecv));
        let c = Connection::new(
            out_key,
            out_entry(S | A, 3),
            Some(in_entry(S | A, 4)),
            &t,
            now,
        );
        assert_eq!(c.state(), Some(TcpState::Established));
        assert!(c.assured());
        let j = c.to_json();
        assert_eq!(j["published"], true);
        assert_eq!(j["original"]["src"], "192.0.2.201");
        assert_eq!(j["original"]["dport"], 8080);
        assert_eq!(j["original"]["packets"], 4);
        assert_eq!(j["reply"]["src"], "10.92.1.2");
        assert_eq!(j["reply"]["sport"], 80);
        assert_eq!(j["reply"]["packets"], 3);
        // Filters match what is listed: the client's tuple.
        let f = Filter {
            src: Some(parse_net("192.0.2.201").unwrap()),
            dport: Some(8080),
            ..Filter::default()
        };
        assert!(f.matches(&c));
    }

    #[test]
    fn filters() {
        let c = conn(IPPROTO_UDP, 40001, 1, Some(1));
        assert!(Filter::default().matches(&c));
        let f = Filter {
            proto: Some(crate::util::addr::parse_proto("udp").unwrap()),
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
        assert!(parse_net("10.0.0").is_err());
    }
}
