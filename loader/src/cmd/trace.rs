//! `bpfnat trace`: stream the datapath's per-packet trace events of a running instance, with
//! the filter applied in the kernel, as text, JSON lines, and optionally a pcap file.

use std::{
    fs::File,
    io::{BufWriter, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::maps::{Array, Map, MapData, RingBuf};
use bpfnat_common::{
    hook_name, names, Counter, TraceEvent, TraceFilter, TraceTuple, IPPROTO_TCP, TRACE_IPV4,
    TRACE_IPV6, TRACE_NOT_DROPPED,
};
use serde_json::json;

use crate::util::addr::{proto_name, IpNet};

/// What to trace, from the command line.
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub port: Option<u16>,
    pub proto: Option<u8>,
    pub pcap: Option<PathBuf>,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub json: bool,
}

impl TraceOptions {
    /// The kernel-side filter (tracing on). A network filter restricts the trace to its
    /// family.
    pub(crate) fn filter(&self) -> TraceFilter {
        let net = |n: Option<IpNet>| n.map_or(([0; 4], [0; 4]), |n| n.words());
        let (src_addr, src_mask) = net(self.src);
        let (dst_addr, dst_mask) = net(self.dst);
        let family = match self.src.or(self.dst) {
            Some(n) if n.is_ipv6() => TRACE_IPV6,
            Some(_) => TRACE_IPV4,
            None => 0,
        };
        TraceFilter {
            enabled: 1,
            proto: self.proto.unwrap_or(0),
            family,
            port: self.port.unwrap_or(0).to_be(),
            src_addr,
            src_mask,
            dst_addr,
            dst_mask,
        }
    }
}

/// `bpfnat trace` on instance `name`: check the options, then stream until `count`,
/// `duration` or Ctrl-C.
pub fn command(name: &str, opts: &TraceOptions) -> anyhow::Result<()> {
    crate::host::system::require_root()?;
    validate(opts)?;
    let dir = crate::bpf::instance::require_running(name)?;
    let events = run(&dir, opts, &mut std::io::stdout().lock())?;
    eprintln!("bpfnat trace ({name}): {events} events");
    Ok(())
}

/// Turns tracing off when dropped, whatever way `run` ends.
struct FilterGuard(Map);

impl FilterGuard {
    fn set(&mut self, f: TraceFilter) -> anyhow::Result<()> {
        let mut arr: Array<&mut MapData, TraceFilter> = Array::try_from(&mut self.0)?;
        arr.set(0, f, 0).context("writing the trace filter")
    }
}

impl Drop for FilterGuard {
    fn drop(&mut self) {
        let _ = self.set(TraceFilter::default());
    }
}

fn open_pin(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is the running bpfnat recent enough to pin it?)",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

/// Trace the instance whose pins live in `dir` until Ctrl-C, `count` events or `duration`.
/// `out` receives one line per event. Returns the number of events.
pub fn run(dir: &Path, opts: &TraceOptions, out: &mut dyn Write) -> anyhow::Result<u64> {
    // First: a SIGTERM (`timeout`, systemd) or SIGINT from here on ends the loop below, which
    // flushes the capture and turns the filter off; before, it would kill the process with the
    // pcap file created but empty.
    stop_on_signals()?;
    let mut filter = FilterGuard(open_pin(dir, names::MAP_TRACE_FILTER)?);
    let ring_map = open_pin(dir, names::MAP_TRACE)?;
    let mut ring = RingBuf::try_from(ring_map)?;
    let mut pcap = opts.pcap.as_deref().map(Pcap::create).transpose()?;

    // Drain events left by an earlier session, then turn tracing on.
    while ring.next().is_some() {}
    filter.set(opts.filter())?;

    let started = Instant::now();
    let mut seen = 0u64;
    while !STOP.load(Ordering::Relaxed)
        && opts.count.is_none_or(|c| seen < c)
        && opts.duration.is_none_or(|d| started.elapsed() < d)
    {
        let Some(item) = ring.next() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if item.len() < std::mem::size_of::<TraceEvent>() {
            continue;
        }
        let event: TraceEvent =
            bytemuck::pod_read_unaligned(&item[..std::mem::size_of::<TraceEvent>()]);
        drop(item);
        seen += 1;
        if opts.json {
            writeln!(out, "{}", event_json(&event))?;
        } else {
            writeln!(out, "{}", event_line(&event))?;
        }
        out.flush()?;
        if let Some(p) = pcap.as_mut() {
            p.write(&event)?;
        }
    }
    if let Some(p) = pcap.as_mut() {
        p.flush()?;
    }
    Ok(seen)
}

/// Set by SIGINT/SIGTERM: stop tracing (and turn the filter off) cleanly.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: i32) {
    STOP.store(true, Ordering::Relaxed);
}

fn stop_on_signals() -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only performs an atomic store.
        unsafe { sigaction(sig, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

fn action_name(action: i32) -> &'static str {
    match action {
        // TCX_NEXT: on its way, past the programs after ours (the datapath's pass).
        -1 => "pass",
        0 => "pass (final)",
        2 => "drop",
        7 => "redirect",
        _ => "other",
    }
}

fn reason_name(reason: u32) -> Option<&'static str> {
    if reason == TRACE_NOT_DROPPED {
        return None;
    }
    Counter::ALL
        .iter()
        .find(|c| **c as u32 == reason)
        .map(|c| c.name())
}

/// An address of the tuple, as the event's family lays it out.
fn addr(family: u8, words: [u32; 4]) -> IpAddr {
    if family == TRACE_IPV6 {
        Ipv6Addr::from(bpfnat_common::addr6_from_map(words)).into()
    } else {
        Ipv4Addr::from(words[0].to_ne_bytes()).into()
    }
}

fn tuple_text(family: u8, t: &TraceTuple) -> String {
    let end = |a: [u32; 4], port: u16| {
        std::net::SocketAddr::new(addr(family, a), u16::from_be(port)).to_string()
    };
    format!(
        "{} > {}",
        end(t.src_addr, t.src_port),
        end(t.dst_addr, t.dst_port)
    )
}

fn tcp_flags_text(flags: u8) -> String {
    let names = [
        (0x02, 'S'),
        (0x10, '.'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
    ];
    names
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// One line per event: time, hook, protocol, tuple before -> after, flags, verdict.
pub(crate) fn event_line(e: &TraceEvent) -> String {
    let secs = e.ts_ns as f64 / 1e9;
    let mut line = format!(
        "{secs:.6} if{} {} {} {}",
        e.ifindex,
        hook_name(e.hook),
        proto_name(e.proto),
        tuple_text(e.family, &e.before)
    );
    if e.after != e.before {
        line.push_str(&format!(" => {}", tuple_text(e.family, &e.after)));
    }
    if e.proto == IPPROTO_TCP {
        line.push_str(&format!(" [{}]", tcp_flags_text(e.tcp_flags)));
    }
    line.push_str(&format!(" len {} {}", e.pkt_len, action_name(e.action)));
    if let Some(r) = reason_name(e.reason) {
        line.push_str(&format!(" ({r})"));
    }
    line
}

pub(crate) fn event_json(e: &TraceEvent) -> serde_json::Value {
    let tuple = |t: &TraceTuple| {
        json!({
            "src": addr(e.family, t.src_addr).to_string(),
            "dst": addr(e.family, t.dst_addr).to_string(),
            "sport": u16::from_be(t.src_port),
            "dport": u16::from_be(t.dst_port),
        })
    };
    json!({
        "ts_ns": e.ts_ns,
        "ifindex": e.ifindex,
        "hook": hook_name(e.hook),
        "family": match e.family {
            TRACE_IPV4 => "ipv4",
            TRACE_IPV6 => "ipv6",
            _ => "other",
        },
        "proto": proto_name(e.proto),
        "tcp_flags": tcp_flags_text(e.tcp_flags),
        "before": tuple(&e.before),
        "after": tuple(&e.after),
        "translated": e.before != e.after,
        "len": e.pkt_len,
        "verdict": action_name(e.action),
        "reason": reason_name(e.reason),
    })
}

/// A pcap file (the classic format, Ethernet link type), one record per event with the bytes
/// the kernel captured.
struct Pcap {
    out: BufWriter<File>,
}

impl Pcap {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        // magic, version 2.4, timezone 0, sigfigs 0, snaplen, LINKTYPE_ETHERNET
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&(bpfnat_common::TRACE_CAPTURE as u32).to_le_bytes())?;
        out.write_all(&1u32.to_le_bytes())?;
        // A valid (empty) capture at once, whatever happens later.
        out.flush()?;
        Ok(Self { out })
    }

    fn write(&mut self, e: &TraceEvent) -> anyhow::Result<()> {
        if e.cap_len == 0 {
            return Ok(());
        }
        let cap = (e.cap_len as usize).min(e.data.len());
        // Timestamps: monotonic nanoseconds as seconds + microseconds (relative, but ordered).
        self.out
            .write_all(&((e.ts_ns / 1_000_000_000) as u32).to_le_bytes())?;
        self.out
            .write_all(&(((e.ts_ns % 1_000_000_000) / 1000) as u32).to_le_bytes())?;
        self.out.write_all(&(cap as u32).to_le_bytes())?;
        self.out
            .write_all(&e.pkt_len.max(cap as u32).to_le_bytes())?;
        self.out.write_all(&e.data[..cap])?;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("writing the pcap file")
    }
}

/// Check the options before touching the kernel.
pub fn validate(opts: &TraceOptions) -> anyhow::Result<()> {
    if opts.count == Some(0) {
        bail!("--count must be at least 1");
    }
    if let (Some(src), Some(dst)) = (opts.src, opts.dst) {
        if src.is_ipv6() != dst.is_ipv6() {
            bail!("--src {src} and --dst {dst} are of different IP versions: no packet has both");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfnat_common::HOOK_UPLINK_EGRESS;

    fn event() -> TraceEvent {
        let t = |a: [u8; 4], p: u16, b: [u8; 4], q: u16| TraceTuple {
            src_addr: [u32::from_ne_bytes(a), 0, 0, 0],
            dst_addr: [u32::from_ne_bytes(b), 0, 0, 0],
            src_port: p.to_be(),
            dst_port: q.to_be(),
        };
        TraceEvent {
            ts_ns: 1_500_000_000,
            ifindex: 7,
            pkt_len: 74,
            cap_len: 3,
            hook: HOOK_UPLINK_EGRESS,
            proto: IPPROTO_TCP,
            tcp_flags: 0x02,
            family: TRACE_IPV4,
            action: -1,
            reason: TRACE_NOT_DROPPED,
            before: t([172, 18, 0, 2], 40000, [198, 51, 100, 1], 80),
            after: t([203, 0, 113, 2], 40000, [198, 51, 100, 1], 80),
            data: [0xab; bpfnat_common::TRACE_CAPTURE],
        }
    }

    #[test]
    fn lines_and_json_show_before_and_after() {
        let e = event();
        assert_eq!(
            event_line(&e),
            "1.500000 if7 uplink_egress tcp 172.18.0.2:40000 > 198.51.100.1:80 => 203.0.113.2:40000 > 198.51.100.1:80 [S] len 74 pass"
        );
        let j = event_json(&e);
        assert_eq!(j["before"]["src"], "172.18.0.2");
        assert_eq!(j["after"]["src"], "203.0.113.2");
        assert_eq!(j["translated"], true);
        assert_eq!(j["family"], "ipv4");
        let mut dropped = e;
        dropped.action = 2;
        dropped.reason = Counter::DropNoPort as u32;
        assert!(event_line(&dropped).ends_with("drop (drop_no_port)"));
    }

    #[test]
    fn ipv6_events_show_ipv6_tuples() {
        let a6 = |s: &str| bpfnat_common::addr6_to_map(s.parse::<Ipv6Addr>().unwrap().octets());
        let mut e = event();
        e.family = TRACE_IPV6;
        e.before.src_addr = a6("fd00:18::2");
        e.before.dst_addr = a6("2001:db8:100::1");
        e.after = e.before;
        e.after.src_addr = a6("2001:db8::2");
        assert_eq!(
            event_line(&e),
            "1.500000 if7 uplink_egress tcp [fd00:18::2]:40000 > [2001:db8:100::1]:80 => [2001:db8::2]:40000 > [2001:db8:100::1]:80 [S] len 74 pass"
        );
        let j = event_json(&e);
        assert_eq!(j["family"], "ipv6");
        assert_eq!(j["before"]["src"], "fd00:18::2");
        assert_eq!(j["after"]["src"], "2001:db8::2");
        assert_eq!(j["after"]["dst"], "2001:db8:100::1");
    }

    #[test]
    fn filter_masks_networks() {
        let opts = TraceOptions {
            src: Some("172.18.0.0/24".parse().unwrap()),
            port: Some(80),
            proto: Some(IPPROTO_TCP),
            ..TraceOptions::default()
        };
        let f = opts.filter();
        assert_eq!(f.enabled, 1);
        assert_eq!(f.family, TRACE_IPV4);
        assert_eq!(f.src_mask[0].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(f.src_addr[0].to_ne_bytes(), [172, 18, 0, 0]);
        assert_eq!(f.src_mask[1..], [0; 3]);
        assert_eq!((f.dst_addr, f.dst_mask), ([0; 4], [0; 4]));
        assert_eq!(u16::from_be(f.port), 80);

        // IPv6: 128-bit address and mask, the family set; no network: either family.
        let opts = TraceOptions {
            dst: Some("2001:db8:100::/48".parse().unwrap()),
            ..TraceOptions::default()
        };
        let f = opts.filter();
        assert_eq!(f.family, TRACE_IPV6);
        assert_eq!(
            bpfnat_common::addr6_from_map(f.dst_addr),
            "2001:db8:100::".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(
            bpfnat_common::addr6_from_map(f.dst_mask),
            "ffff:ffff:ffff::".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(TraceOptions::default().filter().family, 0);
    }

    #[test]
    fn pcap_has_a_header_and_one_record_per_event() {
        let path =
            std::env::temp_dir().join(format!("bpfnat-trace-test-{}.pcap", std::process::id()));
        let mut p = Pcap::create(&path).unwrap();
        p.write(&event()).unwrap();
        p.flush().unwrap();
        drop(p);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&bytes[..4], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(
            bytes.len(),
            24 + 16 + 3,
            "global header, record header, 3 captured bytes"
        );
        assert_eq!(
            &bytes[24 + 8..24 + 12],
            &3u32.to_le_bytes(),
            "captured length"
        );
        assert_eq!(
            &bytes[24 + 12..24 + 16],
            &74u32.to_le_bytes(),
            "original length"
        );
    }
}
