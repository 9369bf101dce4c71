//! Expiry of idle mappings. Userspace owns expiry (not LRU, not bpf_timer): one sweeper that
//! always removes both halves of a mapping together, so no half can outlive the other, and
//! that can count what it removes. The datapath only stamps `last_seen_ns`.

use std::{borrow::BorrowMut, time::Duration};

use aya::maps::{HashMap, MapData};
use bpfnat_common::{
    batch::{self, BatchAttr, BPF_MAP_LOOKUP_BATCH},
    wire::BPF_NOEXIST,
    FlowKey, FlowKey6, HairpinEntry, HairpinEntry6, NatEntry, Timeouts, NAT_FLAG_PUBLISHED,
};

use crate::{
    bpf::datapath::NatTables,
    table::{
        conntrack,
        timeouts::{hairpin_timeout, idle_since, idle_timeout, monotonic_ns, shortest_timeout},
    },
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Mappings removed because they were idle past their timeout.
    pub expired: u64,
    /// Reply entries removed because their original half was gone.
    pub orphans: u64,
    /// Original halves whose reply half was gone, given it back (replies to the flow would
    /// not be translated otherwise); or removed when another mapping had taken its tuple.
    pub repaired: u64,
}

/// Up to `max` entries of the hash map behind `fd` from where `cursor` stopped (`None`: from
/// the start), by the raw `BPF_MAP_LOOKUP_BATCH` command (Linux 5.6; aya has no wrapper): one
/// syscall for thousands of entries instead of two per entry. The cursor is the kernel's
/// bucket position, so entries deleted meanwhile do not disturb it. Returns the entries and
/// whether the walk reached the end of the map.
fn lookup_batch(
    fd: std::os::fd::RawFd,
    cursor: &mut Option<u64>,
    max: usize,
) -> anyhow::Result<(Vec<(FlowKey, NatEntry)>, bool)> {
    let mut keys = vec![FlowKey::default(); max];
    let mut values = vec![NatEntry::default(); max];
    let in_token = cursor.unwrap_or(0);
    let mut out_token: u64 = 0;
    let mut attr = BatchAttr {
        in_batch: if cursor.is_some() {
            &in_token as *const u64 as u64
        } else {
            0
        },
        out_batch: &mut out_token as *mut u64 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: max as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: a batch attribute block whose pointers refer to live buffers of the sizes the
    // kernel writes: `max` keys and values of the map's key and value sizes, and 8-byte tokens.
    let end = match unsafe { batch::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        Ok(_) => false,
        // ENOENT: the end of the map (the entries before it are still returned).
        Err(libc::ENOENT) => true,
        Err(errno) => {
            return Err(anyhow::Error::new(std::io::Error::from_raw_os_error(errno))
                .context("BPF_MAP_LOOKUP_BATCH on a NAT table"));
        }
    };
    let n = (attr.count as usize).min(max);
    keys.truncate(n);
    values.truncate(n);
    *cursor = if end { None } else { Some(out_token) };
    Ok((keys.into_iter().zip(values).collect(), end))
}

/// Orphaned reply halves only come from a failed insert, and the datapath takes its own back:
/// the reply table is checked for them every this many passes (the first pass included).
const ORPHAN_PASS_EVERY: u64 = 8;

/// Expiry: removes every mapping idle past its timeout (both halves together), and reply
/// halves whose original half is gone (left by a failed insert) after `orphan_grace`, which
/// keeps a half that is being created right now. A slice at a time, so that a table of
/// millions of mappings never stalls the daemon (a signal waits at most one slice) nor takes
/// a core: each `step` reads up to `budget` mappings after where the previous step stopped,
/// in batches, and looks up the other half only of a mapping that may have expired. A full
/// pass over a table of N mappings takes about N / budget steps.
#[derive(Debug, Default)]
pub struct Sweeper {
    out_cursor: Option<u64>,
    in_cursor: Option<u64>,
    /// The last step stopped for its budget, not at the end of the table.
    out_pending: bool,
    in_pending: bool,
    /// Passes over the original table started so far.
    passes: u64,
}

impl Sweeper {
    /// Whether a pass is under way (the last step stopped before the end of a table).
    pub fn mid_pass(&self) -> bool {
        self.out_pending || self.in_pending
    }

    pub fn step(
        &mut self,
        tables: &mut NatTables,
        timeouts: &Timeouts,
        orphan_grace: Duration,
        budget: usize,
    ) -> anyhow::Result<SweepReport> {
        let now = monotonic_ns();
        let (out_fd, in_fd) = tables.fds;
        let budget = budget.max(256);
        if !self.mid_pass() {
            // A new pass: the reply table takes part in one pass out of ORPHAN_PASS_EVERY.
            self.in_pending = self.passes.is_multiple_of(ORPHAN_PASS_EVERY);
            self.out_pending = true;
            self.passes += 1;
        }
        let mut expired = Vec::new();
        let mut orphans = Vec::new();
        let mut halfless = Vec::new();
        {
            let (out, inbound) = (&tables.out, &tables.inbound);
            if self.out_pending {
                let (batch, end) = lookup_batch(out_fd, &mut self.out_cursor, budget)?;
                self.out_pending = !end;
                // The orphan pass also looks at the reply half of every live mapping.
                let check_halves = self.in_pending;
                for (key, entry) in batch {
                    let idle = now.saturating_sub(entry.last_seen_ns);
                    if idle <= shortest_timeout(timeouts, key.proto).as_nanos() as u64 {
                        if check_halves && inbound.get(&key.reply_key(&entry), 0).is_err() {
                            halfless.push((key, entry));
                        }
                        continue; // alive whatever its other half says
                    }
                    let reply = key.reply_key(&entry);
                    let reply_entry = inbound.get(&reply, 0).ok();
                    if reply_entry.is_none() && check_halves {
                        halfless.push((key, entry));
                        continue;
                    }
                    let last = idle_since(key.proto, &entry, reply_entry.as_ref());
                    let timeout = idle_timeout(timeouts, key.proto, &entry, reply_entry.as_ref())
                        .as_nanos() as u64;
                    if now.saturating_sub(last) > timeout {
                        expired.push((key, reply_entry.map(|r| (reply, r))));
                    }
                }
            }
            if self.in_pending {
                let grace = orphan_grace.as_nanos() as u64;
                let (batch, end) = lookup_batch(in_fd, &mut self.in_cursor, budget)?;
                self.in_pending = !end;
                for (key, entry) in batch {
                    if now.saturating_sub(entry.last_seen_ns) > grace
                        && out.get(&key.original_key(&entry), 0).is_err()
                    {
                        orphans.push((key, entry));
                    }
                }
            }
        }
        // Original halves first, then the reply halves, the way `conntrack` deletes (and
        // with the same check for a reply half the datapath took back meanwhile).
        for (key, _) in &expired {
            let _ = tables.out.remove(key);
        }
        let halves: Vec<(FlowKey, NatEntry)> = expired
            .iter()
            .filter_map(|(_, half)| *half)
            .chain(orphans.iter().copied())
            .collect();
        conntrack::remove_reply_halves(tables, &halves);
        let repaired = halfless
            .iter()
            .filter(|(key, entry)| give_back_reply_half(tables, key, entry))
            .count() as u64;
        Ok(SweepReport {
            expired: expired.len() as u64,
            orphans: orphans.len() as u64,
            repaired,
        })
    }
}

/// A mapping's original half `key` whose reply half is gone (nothing the datapath or the
/// tools do leaves one behind now, but a mapping in that state translates its flow one way
/// only, forever): give it its reply half back, as the datapath would have created it; if
/// another mapping holds that reply tuple meanwhile, remove the original half instead, so the
/// flow's next packet creates a whole mapping. Whether anything was done.
fn give_back_reply_half(tables: &mut NatTables, key: &FlowKey, entry: &NatEntry) -> bool {
    let reply = key.reply_key(entry);
    let half = NatEntry {
        last_seen_ns: entry.last_seen_ns,
        created_ns: entry.created_ns,
        addr: key.src_addr,
        port: key.src_port,
        flags: entry.flags & NAT_FLAG_PUBLISHED,
        ..NatEntry::default()
    };
    match tables.inbound.insert(reply, half, BPF_NOEXIST) {
        Ok(()) => true,
        Err(_) => match tables.inbound.get(&reply, 0) {
            // Taken back by the flow itself meanwhile.
            Ok(back) if back.addr == key.src_addr && back.port == key.src_port => false,
            Ok(_) => tables.out.remove(key).is_ok(),
            Err(_) => false,
        },
    }
}

/// One direction of a hairpin connection, either family (`HAIRPIN`, `HAIRPIN6`): what
/// expiry and the removal of a publish's connections read of it.
pub trait HairpinDirection: aya::Pod {
    type Key: aya::Pod + Eq + std::hash::Hash;
    fn proto(key: &Self::Key) -> u8;
    fn last_seen_ns(&self) -> u64;
    /// The FIN and RST this direction has sent.
    fn tcp_flags(&self) -> u8;
    /// The key of the other direction (the tuple this entry's rewrite produces, reversed).
    fn partner_key(&self, key: &Self::Key) -> Self::Key;
}

/// Both families' entries, whose fields have the same names.
macro_rules! hairpin_direction {
    ($($entry:ty => $key:ty),*) => {$(
        impl HairpinDirection for $entry {
            type Key = $key;
            fn proto(key: &$key) -> u8 {
                key.proto
            }
            fn last_seen_ns(&self) -> u64 {
                self.last_seen_ns
            }
            fn tcp_flags(&self) -> u8 {
                self.tcp_flags
            }
            fn partner_key(&self, key: &$key) -> $key {
                self.partner(key)
            }
        }
    )*};
}
hairpin_direction!(HairpinEntry => FlowKey, HairpinEntry6 => FlowKey6);

/// Expiry of hairpin connections, either family (`HAIRPIN` or `HAIRPIN6`, at most 16,384
/// entries each, read whole): both directions of a connection idle past its timeout go
/// together. Returns how many connections.
pub fn sweep_hairpin<T: BorrowMut<MapData>, E: HairpinDirection>(
    hairpin: &mut HashMap<T, E::Key, E>,
    timeouts: &Timeouts,
) -> u64 {
    let now = monotonic_ns();
    let entries: std::collections::HashMap<E::Key, E> =
        hairpin.iter().filter_map(Result::ok).collect();
    let mut removed = 0;
    let mut done = std::collections::HashSet::new();
    for (key, entry) in &entries {
        if done.contains(key) {
            continue;
        }
        let partner = entry.partner_key(key);
        let other = entries.get(&partner);
        done.insert(*key);
        done.insert(partner);
        let last = other.map_or(entry.last_seen_ns(), |o| {
            o.last_seen_ns().max(entry.last_seen_ns())
        });
        let flags = (entry.tcp_flags(), other.map_or(0, E::tcp_flags));
        let timeout = hairpin_timeout(timeouts, E::proto(key), flags.0, flags.1).as_nanos() as u64;
        if now.saturating_sub(last) > timeout {
            let _ = hairpin.remove(key);
            let _ = hairpin.remove(&partner);
            removed += 1;
        }
    }
    removed
}

/// Remove the hairpin connections, either family, one of whose entries `doomed` picks (the
/// asking side's direction): that entry first, so that its next packet no longer reaches the
/// old target, then its partner. Returns how many connections.
pub(crate) fn remove_hairpin_where<T: BorrowMut<MapData>, E: HairpinDirection>(
    hairpin: &mut HashMap<T, E::Key, E>,
    doomed: impl Fn(&E::Key, &E) -> bool,
) -> u64 {
    let picked: Vec<(E::Key, E)> = hairpin
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, to)| doomed(key, to))
        .collect();
    let mut removed = 0;
    for (key, to) in &picked {
        if hairpin.remove(key).is_ok() {
            removed += 1;
        }
        let _ = hairpin.remove(&to.partner_key(key));
    }
    removed
}
