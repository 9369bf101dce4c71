//! `bpfnat profile`: what each program costs per packet on this kernel, path by path.
//!
//! The datapath is loaded (not attached) in the host namespace of a private copy of the lab
//! topology, with that copy's bridge, port and uplink registered as `bpfnat up` would, and each
//! program is run on crafted frames with `BPF_PROG_TEST_RUN`: one fresh frame per run (so a
//! run never sees its predecessor's rewrite), the kernel timing each run. The frames take the
//! paths real traffic takes: `bpf_fib_lookup` answers from the namespace's routing table and
//! neighbour cache, and every case checks the verdict its path must give, so a profile of the
//! wrong path fails instead of printing a misleading figure.
//!
//! The figures are the programs' own cost (plus the kernel's timing of one run, a few tens of
//! ns); what the stack does with the verdict (the redirect itself) is not included. The
//! benchmark reports them next to the end-to-end figures.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::programs::{TestRun as _, TestRunOptions};
use bpfnat_common::{names, BridgeInfo, Timeouts, TraceFilter};
use serde::Serialize;

use crate::{
    bpf::datapath::{Datapath, LoadOptions},
    host::lab::{lab_mac, ContainerSpec, Ipv6Lab, LabSpec},
    host::netns,
    util::addr::{Ipv4Net, Ipv6Net},
    util::packet::{udp6_frame, Frame, ETH_HLEN, L4},
};

use bpfnat_common::wire::{TCX_NEXT, TC_ACT_REDIRECT};
/// Size of the kernel's `struct __sk_buff`, the context of a TC program.
const SK_BUFF_CTX_LEN: usize = 192;
/// Offset of `ifindex` in `struct __sk_buff`: the device the test skb arrives on.
const SK_BUFF_IFINDEX_OFF: usize = 40;

const CONTAINER: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);
const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const WAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 91);
/// 22 bytes of payload make a 64-byte UDP frame (14 + 20 + 8 + 22), the bench's packet size.
const PAYLOAD: usize = 22;

const CONTAINER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x91, 0, 0, 0, 0, 0, 2);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x91, 0, 0, 0, 0, 0, 1);
const UPLINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x91, 0, 0, 0, 0, 2);
const WAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x91, 0, 0, 0, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x91);

#[derive(Clone, Debug)]
pub struct ProfileOptions {
    /// Runs per case (each on a fresh frame).
    pub runs: u32,
}

/// The cost of one program on one path.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Short identifier, stable across versions (used by the bench report).
    pub case: &'static str,
    pub program: &'static str,
    pub path: &'static str,
    /// Whether `bpfnat trace` was on (with a filter that matches nothing) for this case.
    pub trace_on: bool,
    pub runs: u32,
    pub median_ns: u64,
    pub p10_ns: u64,
    pub p90_ns: u64,
}

/// `bpfnat profile`: measure, then print a table or, with `json`, the cases as JSON.
pub fn command(opts: &ProfileOptions, json: bool) -> anyhow::Result<()> {
    let results = run(opts)?;
    if json {
        super::print_json(&serde_json::to_value(&results)?);
    } else {
        print!("{}", render(&results));
    }
    Ok(())
}

/// Build the private topology, measure every case, tear the topology down.
pub fn run(opts: &ProfileOptions) -> anyhow::Result<Vec<CaseResult>> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    crate::host::system::require_root()?;
    let spec = topology();
    let lab = LabGuard(spec.clone());
    crate::host::lab::up(&lab.0).context("building the profile topology")?;
    let opts = opts.clone();
    netns::run_in(&spec.host_netns.clone(), move || measure(&spec, &opts))
}

/// A lab copy of its own (namespaces `bnb-prof<pid>-*`, like the benchmark's `bnb-`), so a
/// profile can run next to the user's lab.
fn topology() -> LabSpec {
    let prefix = format!("bnb-prof{}", std::process::id());
    let mut container = ContainerSpec::new(&format!("{prefix}-c1"), CONTAINER);
    container.host_veth = "port1".into();
    LabSpec {
        host_netns: format!("{prefix}-h"),
        wan_netns: format!("{prefix}-w"),
        bridge: "br0".into(),
        bridge_addr: GATEWAY,
        subnet_prefix_len: 24,
        uplink: "up0".into(),
        uplink_addr: UPLINK,
        wan_iface: "wan0".into(),
        wan_addr: WAN,
        uplink_prefix_len: 24,
        remote_server: SERVER,
        containers: vec![container],
        ipv6: Some(Ipv6Lab {
            bridge_addr: GATEWAY6,
            uplink_addr: UPLINK6,
            wan_addr: WAN6,
            remote_server: SERVER6,
        }),
    }
}

struct LabGuard(LabSpec);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = crate::host::lab::down(&self.0) {
            log::warn!("profile: removing the profile topology: {e:#}");
        }
    }
}

/// Runs inside the topology's host namespace.
fn measure(spec: &LabSpec, opts: &ProfileOptions) -> anyhow::Result<Vec<CaseResult>> {
    resolve_gateway(spec.wan_addr)?;
    resolve_gateway6(WAN6)?;
    let bridge = crate::host::iface::ifindex(&spec.bridge)?;
    let port = crate::host::iface::ifindex(&spec.containers[0].host_veth)?;
    let uplink = crate::host::iface::ifindex(&spec.uplink)?;

    let mut dp = Datapath::load(LoadOptions::default())?;
    dp.configure(spec.uplink_addr, None, &Timeouts::KERNEL)?;
    dp.set_uplink_ifindex(uplink)?;
    dp.set_external6(Some(UPLINK6))?;
    let info = BridgeInfo {
        gateway: bpfnat_common::addr_to_map(spec.bridge_addr.octets()),
        flags: 0,
        mac: lab_mac(spec.bridge_addr),
        pad: [0; 2],
        gateway6: bpfnat_common::addr6_to_map(GATEWAY6.octets()),
    };
    let subnet = Ipv4Net::new(spec.subnet(), spec.subnet_prefix_len)?;
    dp.add_bridge(bridge, info, &[subnet])?;
    dp.add_bridge_nets6(bridge, &[Ipv6Net::new(GATEWAY6, 64)?])?;
    dp.add_port(port, bridge)?;

    let mut bench = Bench {
        dp: &mut dp,
        runs: opts.runs,
        results: Vec::new(),
    };
    bench.cases(port, uplink)?;
    Ok(bench.results)
}

/// Make the uplink's next hop known to the neighbour cache (as it is on a host carrying
/// traffic), so `bpf_fib_lookup` takes its full-answer path.
fn resolve_gateway(gateway: Ipv4Addr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("opening a UDP socket")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        // The discard port: the datagram only makes the kernel resolve the next hop.
        let _ = socket.send_to(b"arp", SocketAddrV4::new(gateway, 9));
        let arp = std::fs::read_to_string("/proc/thread-self/net/arp").unwrap_or_default();
        let resolved = arp.lines().skip(1).any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.first() == Some(&gateway.to_string().as_str()) && cols.get(2) == Some(&"0x2")
        });
        if resolved {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the profile topology's gateway {gateway} did not answer ARP within 5 s")
}

/// The same for IPv6: the uplink's next hop in the neighbour cache.
fn resolve_gateway6(gateway: Ipv6Addr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("[::]:0").context("opening a UDP socket")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let _ = socket.send_to(b"nd", SocketAddrV6::new(gateway, 9, 0, 0));
        // The child inherits this thread's network namespace.
        let out = Command::new("ip")
            .args(["-6", "neigh", "show", &gateway.to_string()])
            .output()
            .context("running ip -6 neigh")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if ["REACHABLE", "STALE", "DELAY"]
            .iter()
            .any(|state| text.contains(state))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the profile topology's IPv6 gateway {gateway} did not answer within 5 s")
}

struct Bench<'a> {
    dp: &'a mut Datapath,
    runs: u32,
    results: Vec<CaseResult>,
}

/// One case to time: a program, the frame it gets and the device it arrives on.
struct Case<'f> {
    case: &'static str,
    program: &'static str,
    path: &'static str,
    ifindex: u32,
    /// The frame of each run (`run` = 0, 1, ...).
    frame: &'f dyn Fn(u32) -> Vec<u8>,
    verdict: u32,
}

impl Bench<'_> {
    fn set_trace(&mut self, on: bool) -> anyhow::Result<()> {
        let mut filter = TraceFilter::default();
        if on {
            // On, matching nothing of the profile's traffic: the cost of tracing filtered out.
            filter.enabled = 1;
            filter.port = 1u16.to_be();
            filter.proto = bpfnat_common::IPPROTO_UDP;
        }
        self.dp.set_trace_filter(filter)
    }

    fn cases(&mut self, port: u32, uplink: u32) -> anyhow::Result<()> {
        let udp = |sport: u16, src: Ipv4Addr, dst: Ipv4Addr, dport: u16, ttl: u8| {
            let mut f = Frame::new(&src.to_string(), &dst.to_string(), L4::Udp { sport, dport });
            f.payload = vec![0x5a; PAYLOAD];
            f.ttl = ttl;
            f
        };
        let from_container = |f: &Frame| {
            let mut b = f.build();
            b[0..6].copy_from_slice(&lab_mac(GATEWAY));
            b[6..12].copy_from_slice(&lab_mac(CONTAINER));
            b
        };

        // Container -> internet, routed in BPF: learning, policy, FIB lookup, redirect.
        let outbound = from_container(&udp(40000, CONTAINER, SERVER, 9, 64));
        // The floor: a device the program does not serve (one map lookup, then pass). What
        // this costs is mostly the kernel's timing of a run.
        self.time(&Case {
            case: "port_not_served",
            program: names::PROG_PORT,
            path: "a device that is not a served port: one lookup, pass (the floor)",
            ifindex: uplink,
            frame: &|_| outbound.clone(),
            verdict: TCX_NEXT,
        })?;
        let routed = self.time(&Case {
            case: "port_udp_out",
            program: names::PROG_PORT,
            path: "container -> internet, UDP: learn, policy, FIB lookup, redirect to the uplink",
            ifindex: port,
            frame: &|_| outbound.clone(),
            verdict: TC_ACT_REDIRECT,
        })?;

        // The same packet on the uplink's egress: an existing mapping.
        let translated = self.time(&Case {
            case: "egress_udp_known",
            program: names::PROG_EGRESS,
            path: "uplink egress, UDP of a known flow: lookup, rewrite source",
            ifindex: uplink,
            frame: &|_| routed.clone(),
            verdict: TCX_NEXT,
        })?;
        let external_port =
            u16::from_be_bytes([translated[ETH_HLEN + 20], translated[ETH_HLEN + 21]]);

        // New flows: each run a new source port (from 10000 up, the off and on runs of a pair
        // each their own), so each run creates a mapping; past 50,000 runs ports repeat and
        // those runs find their mapping instead.
        self.time(&Case {
            case: "egress_udp_new",
            program: names::PROG_EGRESS,
            path: "uplink egress, UDP of a new flow: port allocation, both table entries",
            ifindex: uplink,
            frame: &|i| udp((10_000 + i % 55_000) as u16, CONTAINER, SERVER, 9, 63).build(),
            verdict: TCX_NEXT,
        })?;

        // The reply: reverse translation and delivery into the container's namespace.
        let reply = udp(9, SERVER, UPLINK, external_port, 64).build();
        self.time(&Case {
            case: "ingress_udp_reply",
            program: names::PROG_INGRESS,
            path:
                "uplink ingress, UDP reply: lookup, rewrite destination, redirect to the container",
            ifindex: uplink,
            frame: &|_| reply.clone(),
            verdict: TC_ACT_REDIRECT,
        })?;
        self.cases6(port, uplink)
    }

    /// The same paths over IPv6: the programs above tail-call their IPv6 twins, so each
    /// figure includes that dispatch.
    fn cases6(&mut self, port: u32, uplink: u32) -> anyhow::Result<()> {
        // The same 22-byte payload as the IPv4 cases (an 84-byte frame: IPv6's header is 20
        // bytes longer).
        let udp6 = |src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, hop: u8| {
            udp6_frame(src, dst, sport, dport, hop, &[0x5a; PAYLOAD])
        };
        let mut outbound = udp6(CONTAINER6, 40000, SERVER6, 9, 64);
        outbound[0..6].copy_from_slice(&lab_mac(GATEWAY));
        outbound[6..12].copy_from_slice(&lab_mac(CONTAINER));
        let routed = self.time(&Case {
            case: "port_udp_out6",
            program: names::PROG_PORT,
            path: "IPv6 container -> internet, UDP: learn, policy, FIB lookup, redirect to the \
                   uplink",
            ifindex: port,
            frame: &|_| outbound.clone(),
            verdict: TC_ACT_REDIRECT,
        })?;
        let translated = self.time(&Case {
            case: "egress_udp_known6",
            program: names::PROG_EGRESS,
            path: "IPv6 uplink egress, UDP of a known flow: lookup, rewrite source",
            ifindex: uplink,
            frame: &|_| routed.clone(),
            verdict: TCX_NEXT,
        })?;
        // Source port: after the 40-byte IPv6 header.
        let external_port =
            u16::from_be_bytes([translated[ETH_HLEN + 40], translated[ETH_HLEN + 41]]);
        self.time(&Case {
            case: "egress_udp_new6",
            program: names::PROG_EGRESS,
            path: "IPv6 uplink egress, UDP of a new flow: port allocation, both table entries",
            ifindex: uplink,
            frame: &|i| udp6(CONTAINER6, (10_000 + i % 55_000) as u16, SERVER6, 9, 63),
            verdict: TCX_NEXT,
        })?;
        let reply = udp6(SERVER6, 9, UPLINK6, external_port, 64);
        self.time(&Case {
            case: "ingress_udp_reply6",
            program: names::PROG_INGRESS,
            path: "IPv6 uplink ingress, UDP reply: lookup, rewrite destination, redirect to \
                   the container",
            ifindex: uplink,
            frame: &|_| reply.clone(),
            verdict: TC_ACT_REDIRECT,
        })?;
        Ok(())
    }

    /// Run one case `runs` times with tracing off and `runs` times with it on, alternating
    /// (so both see the same machine), and record both timings; returns the frame as the
    /// program left it on the last run with tracing off.
    fn time(&mut self, case: &Case) -> anyhow::Result<Vec<u8>> {
        let mut samples = [
            Vec::with_capacity(self.runs as usize),
            Vec::with_capacity(self.runs as usize),
        ];
        let mut last = Vec::new();
        // Run 0 is a warm-up (it learns the container, creates the mapping): not timed.
        for run in 0..=self.runs {
            for trace_on in [false, true] {
                self.set_trace(trace_on)?;
                let (ns, out) = self.run_once(case, 2 * run + u32::from(trace_on))?;
                if run > 0 {
                    samples[usize::from(trace_on)].push(ns);
                }
                if !trace_on {
                    last = out;
                }
            }
        }
        self.set_trace(false)?;
        for (trace_on, mut samples) in [(false, samples[0].clone()), (true, samples[1].clone())] {
            samples.sort_unstable();
            let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
            self.results.push(CaseResult {
                case: case.case,
                program: case.program,
                path: case.path,
                trace_on,
                runs: self.runs,
                median_ns: at(0.5),
                p10_ns: at(0.1),
                p90_ns: at(0.9),
            });
        }
        Ok(last)
    }

    /// One run of a case on frame number `run`: its duration and the frame it leaves.
    fn run_once(&mut self, case: &Case, run: u32) -> anyhow::Result<(u64, Vec<u8>)> {
        let mut ctx = [0u8; SK_BUFF_CTX_LEN];
        ctx[SK_BUFF_IFINDEX_OFF..SK_BUFF_IFINDEX_OFF + 4]
            .copy_from_slice(&case.ifindex.to_ne_bytes());
        let program = self.dp.classifier(case.program)?;
        let input = (case.frame)(run);
        let mut out = vec![0u8; input.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", case.program))?;
        if result.return_value != case.verdict {
            bail!(
                "profile case {}: {} returned {} on run {run}, not {} (the path it measures \
                     was not taken)",
                case.case,
                case.program,
                result.return_value,
                case.verdict
            );
        }
        out.truncate(result.data_size_out as usize);
        Ok((result.duration.as_nanos() as u64, out))
    }
}

/// The results as a table.
pub fn render(results: &[CaseResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:<13} {:>10} {:>10} {:>10} {:>10}   path",
        "case", "program", "trace", "median ns", "p10 ns", "p90 ns"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<18} {:<13} {:>10} {:>10} {:>10} {:>10}   {}",
            r.case,
            r.program,
            if r.trace_on { "on" } else { "off" },
            r.median_ns,
            r.p10_ns,
            r.p90_ns,
            r.path
        );
    }
    out
}
