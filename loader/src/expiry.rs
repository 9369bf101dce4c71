//! Expiry of idle mappings. Userspace owns expiry (not LRU, not bpf_timer): one sweeper that
//! always removes both halves of a mapping together, so no half can outlive the other, and
//! that can count what it removes. The datapath only stamps `last_seen_ns`.

use std::time::Duration;

use bpfnat_common::{
    tcp_state, FlowKey, NatEntry, TcpState, Timeouts, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    NAT_FLAG_PUBLISHED,
};

use crate::datapath::Datapath;

/// The TCP state of a mapping from its `NAT_OUT` half and its `NAT_IN` half (if any). The
/// state is derived from the initiator's and the responder's flags: the `NAT_OUT` half
/// initiates a masqueraded flow, the `NAT_IN` half a connection to a published port.
pub fn tcp_state_of(out: &NatEntry, inbound: Option<&NatEntry>) -> TcpState {
    let in_flags = inbound.map_or(0, |r| r.tcp_flags);
    if out.flags & NAT_FLAG_PUBLISHED != 0 {
        tcp_state(in_flags, out.tcp_flags)
    } else {
        tcp_state(out.tcp_flags, in_flags)
    }
}

/// How long a mapping may stay idle, from its protocol and (TCP) the state both halves show.
pub fn idle_timeout(
    timeouts: &Timeouts,
    proto: u8,
    out: &NatEntry,
    reply: Option<&NatEntry>,
) -> Duration {
    // Traffic both ways: each half has carried a packet (the half a mapping is created for
    // is counted at once; the other only when the answer comes).
    let both_ways = out.packets > 0 && reply.is_some_and(|r| r.packets > 0);
    let secs = match proto {
        IPPROTO_TCP => timeouts.tcp(tcp_state_of(out, reply)),
        IPPROTO_UDP if both_ways => timeouts.udp_both_ways,
        IPPROTO_UDP => timeouts.udp_one_way,
        IPPROTO_ICMP => timeouts.icmp,
        _ => timeouts.generic,
    };
    Duration::from_secs(u64::from(secs))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    (ts.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec() as u64)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Mappings removed because they were idle past their timeout.
    pub expired: u64,
    /// Reply entries removed because their original half was gone.
    pub orphans: u64,
}

/// The key after `after` in the hash map behind `fd` (the first key for `None`), by the raw
/// `BPF_MAP_GET_NEXT_KEY` command. `None` at the end of the map. A key that has been deleted
/// meanwhile makes the kernel start over from the first key, which only restarts the walk.
fn next_key(fd: std::os::fd::RawFd, after: Option<&FlowKey>) -> Option<FlowKey> {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        pad: u32,
        key: u64,
        next_key: u64,
    }
    let mut next = FlowKey::default();
    let attr = Attr {
        map_fd: fd as u32,
        pad: 0,
        key: after.map_or(0, |k| k as *const FlowKey as u64),
        next_key: &mut next as *mut FlowKey as u64,
    };
    // SAFETY: `attr` points at live, correctly sized key buffers for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_NEXT_KEY,
            &attr as *const Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    (ret == 0).then_some(next)
}

/// Expiry: removes every mapping idle past its timeout (both halves together), and reply
/// halves whose original half is gone (left by a failed insert) after `orphan_grace`, which
/// keeps a half that is being created right now. A slice at a time, so that a table of millions of mappings never stalls the daemon
/// (a signal waits at most one slice) nor takes a core: each `step` looks at up to `budget`
/// mappings after where the previous step stopped, in each table, and starts over at the end.
/// A full pass over a table of N mappings takes N / budget steps.
#[derive(Debug, Default)]
pub struct Sweeper {
    out_cursor: Option<FlowKey>,
    in_cursor: Option<FlowKey>,
    /// The last step stopped for its budget, not at the end of the table.
    out_pending: bool,
    in_pending: bool,
}

impl Sweeper {
    /// Whether a pass is under way (the last step stopped before the end of a table).
    pub fn mid_pass(&self) -> bool {
        self.out_pending || self.in_pending
    }

    pub fn step(
        &mut self,
        dp: &mut Datapath,
        timeouts: &Timeouts,
        orphan_grace: Duration,
        budget: usize,
    ) -> anyhow::Result<SweepReport> {
        let now = monotonic_ns();
        let (out_fd, in_fd) = dp.nat_fds()?;
        let mut expired = Vec::new();
        let mut orphans = Vec::new();
        // The last key looked at that stays: where the next step resumes if the cursor's own
        // key is removed below.
        let (mut out_keep, mut in_keep) = (None, None);
        {
            let out = dp.nat_out()?;
            let inbound = dp.nat_in()?;
            self.out_pending = true;
            for _ in 0..budget {
                let Some(key) = next_key(out_fd, self.out_cursor.as_ref()) else {
                    self.out_cursor = None;
                    self.out_pending = false;
                    break;
                };
                self.out_cursor = Some(key);
                let Ok(entry) = out.get(&key, 0) else {
                    continue;
                };
                let reply = key.reply_key(&entry);
                let reply_entry = inbound.get(&reply, 0).ok();
                let last = reply_entry.map_or(entry.last_seen_ns, |r| {
                    r.last_seen_ns.max(entry.last_seen_ns)
                });
                let timeout = idle_timeout(timeouts, key.proto, &entry, reply_entry.as_ref())
                    .as_nanos() as u64;
                if now.saturating_sub(last) > timeout {
                    expired.push((key, reply));
                } else {
                    out_keep = Some(key);
                }
            }
            let grace = orphan_grace.as_nanos() as u64;
            self.in_pending = true;
            for _ in 0..budget {
                let Some(key) = next_key(in_fd, self.in_cursor.as_ref()) else {
                    self.in_cursor = None;
                    self.in_pending = false;
                    break;
                };
                self.in_cursor = Some(key);
                let Ok(entry) = inbound.get(&key, 0) else {
                    continue;
                };
                if out.get(&key.original_key(&entry), 0).is_err()
                    && now.saturating_sub(entry.last_seen_ns) > grace
                {
                    orphans.push(key);
                } else {
                    in_keep = Some(key);
                }
            }
        }
        {
            let mut out = dp.nat_out_mut()?;
            for (key, _) in &expired {
                let _ = out.remove(key);
            }
        }
        {
            let mut inbound = dp.nat_in_mut()?;
            for (_, reply) in &expired {
                let _ = inbound.remove(reply);
            }
            for key in &orphans {
                let _ = inbound.remove(key);
            }
        }
        // A removed cursor key would make the next step start over: harmless but wasteful,
        // so step back to a key that still exists when the cursor itself was removed.
        if self
            .out_cursor
            .is_some_and(|c| expired.iter().any(|(k, _)| *k == c))
        {
            self.out_cursor = None;
        }
        if self
            .in_cursor
            .is_some_and(|c| orphans.contains(&c) || expired.iter().any(|(_, r)| *r == c))
        {
            self.in_cursor = None;
        }
        // Resuming from a removed key would make the kernel start over from the first key:
        // resume from the last key that stays instead (none: start over, which skips only
        // what was just removed).
        if self
            .out_cursor
            .is_some_and(|c| expired.iter().any(|(k, _)| *k == c))
        {
            self.out_cursor = out_keep;
        }
        if self
            .in_cursor
            .is_some_and(|c| orphans.contains(&c) || expired.iter().any(|(_, r)| *r == c))
        {
            self.in_cursor = in_keep;
        }
        Ok(SweepReport {
            expired: expired.len() as u64,
            orphans: orphans.len() as u64,
        })
    }
}
