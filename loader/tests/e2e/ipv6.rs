//! IPv6 end to end (issue 15): NAT66 masquerade of a bridge's IPv6 subnet with
//! the uplink's global address. Lab `bnt-v6N` (`support::topo::test_lab`) gets IPv6 with
//! `ip` inside its own namespaces: the bridge `br0` fd00:85:N::1/64, containers
//! fd00:85:N::(1+i), the uplink `up0` 2001:db8:N::2/64 with its default route via
//! 2001:db8:N::1 on the WAN side, which holds the remote 2001:db8:100::1 and has no route back
//! to fd00:85:N::/64, like the IPv6 internet.
//!
//! The IPv6 twins of the IPv4 end-to-end tests are in submodules: [`paths`] (traceroute6,
//! path MTU, fragments), [`bridges`] (icc off, direct access from outside, two bridges),
//! [`exhaustion`] (a narrowed port range running out), [`dual_stack`] (both families at
//! once). Tests that share a lab number take turns (`lab`). Lab numbers: 1-3 the tests
//! below; 4 traceroute6 and path MTU (with a server behind a router), 5 fragments and dual
//! stack, 6 icc off and direct access, 7 hairpin, 8 port exhaustion, 9 two bridges, 10
//! checksums, 11 trace.

mod bridges;
mod dual_stack;
mod exhaustion;
mod paths;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    ops::Deref,
    sync::{mpsc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::support::{
    e2e::{ns_exec, spawn_in, Daemon, Lab},
    require_root,
};

const REMOTE6: &str = "2001:db8:100::1";

/// The IPv4 remote of every `bnt-v6N` lab.
const REMOTE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 83);

/// Lab `n` (`bnt-v6N-*`), removed on drop; then the next test with the same number may build
/// it again.
pub(crate) struct V6Lab {
    // Fields drop in order: the lab goes before the turn is handed on.
    lab: Lab,
    _turn: MutexGuard<'static, ()>,
}

impl Deref for V6Lab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

/// Build lab `n`, once the test before with the same number has removed its own.
fn lab(n: u8) -> V6Lab {
    static TURNS: [Mutex<()>; 16] = [const { Mutex::new(()) }; 16];
    // A test that failed holding its turn has removed its lab all the same.
    let turn = TURNS[usize::from(n)]
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let lab = Lab::up(crate::support::topo::test_lab(
        &format!("bnt-v6{n}"),
        [10, 83, n],
        2,
        Ipv4Addr::new(192, 0, 2, 110 + n),
        Ipv4Addr::new(192, 0, 2, 120 + n),
        REMOTE4,
    ));
    V6Lab { lab, _turn: turn }
}

/// Container `i` of lab `n`: its namespace and its IPv6 address.
fn container6(lab: &Lab, n: u8, i: usize) -> (String, Ipv6Addr) {
    let addr = format!("fd00:85:{n}::{:x}", 2 + i).parse().unwrap();
    (lab.spec.containers[i].netns.clone(), addr)
}

/// The bridge's IPv6 address in lab `n` (the containers' gateway).
fn gateway6(n: u8) -> Ipv6Addr {
    format!("fd00:85:{n}::1").parse().unwrap()
}

/// One `ping -6` from `ns` to `dst` (from the source address `from` if given); failures are
/// printed.
fn ping6(ns: &str, from: Option<&str>, dst: &str) -> bool {
    let mut args = vec!["ping", "-6", "-c", "1", "-W", "2"];
    if let Some(src) = from {
        args.extend_from_slice(&["-I", src]);
    }
    args.push(dst);
    let (ok, out) = ns_exec(ns, &args);
    if !ok {
        eprintln!("ping6 from {ns} ({from:?}) to {dst} failed: {out}");
    }
    ok
}

fn count(host: &str, name: &str) -> u64 {
    crate::support::cli::counter_in(host, name)
}

/// Wait (at most 10 s) until no address in the namespaces `all` is tentative: until then
/// neighbour discovery is not reliable.
fn settle<S: AsRef<str>>(all: &[S]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while all.iter().any(|ns| {
        !ns_exec(ns.as_ref(), &["ip", "-6", "addr", "show", "tentative"])
            .1
            .is_empty()
    }) {
        assert!(Instant::now() < deadline, "IPv6 addresses still tentative");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ip(ns: &str, args: &[&str]) {
    let mut all = vec!["ip"];
    all.extend_from_slice(args);
    let (ok, out) = ns_exec(ns, &all);
    assert!(ok, "ip {} in {ns}: {out}", args.join(" "));
}

/// Give lab `n` its IPv6 addresses and routes (no DAD: the addresses are usable at once).
pub(crate) fn add_ipv6(lab: &Lab, n: u8) -> Ipv6Addr {
    let s = &lab.spec;
    let (host, wan) = (s.host_netns.as_str(), s.wan_netns.as_str());
    let uplink: Ipv6Addr = format!("2001:db8:{n}::2").parse().unwrap();
    ns_exec(host, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    ip(
        host,
        &[
            "-6",
            "addr",
            "add",
            &format!("fd00:85:{n}::1/64"),
            "dev",
            "br0",
            "nodad",
        ],
    );
    ip(
        host,
        &[
            "-6",
            "addr",
            "add",
            &format!("{uplink}/64"),
            "dev",
            "up0",
            "nodad",
        ],
    );
    ip(
        host,
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("2001:db8:{n}::1"),
        ],
    );
    ip(
        wan,
        &[
            "-6",
            "addr",
            "add",
            &format!("2001:db8:{n}::1/64"),
            "dev",
            "wan0",
            "nodad",
        ],
    );
    ip(
        wan,
        &["-6", "addr", "add", &format!("{REMOTE6}/128"), "dev", "lo"],
    );
    for (i, c) in s.containers.iter().enumerate() {
        let addr = format!("fd00:85:{n}::{:x}/64", 2 + i);
        ip(
            &c.netns,
            &["-6", "addr", "add", &addr, "dev", &c.ifname, "nodad"],
        );
        ip(
            &c.netns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:85:{n}::1"),
            ],
        );
    }
    // The link-local addresses of a fresh lab are still tentative (duplicate address
    // detection, about a second).
    let all: Vec<String> = [host, wan]
        .into_iter()
        .map(str::to_owned)
        .chain(s.containers.iter().map(|c| c.netns.clone()))
        .collect();
    settle(&all);
    uplink
}

/// A UDP echo in `ns` on `bind` answering each datagram with its peer's address and port;
/// until the returned sender is dropped (at most 30 s).
fn udp_echo6(ns: &str, bind: &str) -> mpsc::Sender<()> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let bind = bind.to_owned();
    spawn_in(ns, move || {
        let sock = UdpSocket::bind(&bind).expect("bind udp6");
        sock.set_read_timeout(Some(Duration::from_millis(50))).ok();
        ready_tx.send(()).ok();
        let end = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 1500];
        while Instant::now() < end && stop_rx.try_recv() != Err(mpsc::TryRecvError::Disconnected) {
            if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(peer.to_string().as_bytes(), peer);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("udp6 echo ready");
    stop_tx
}

/// Ask the remote's UDP echo from `ns`.
fn udp_ask(ns: &str) -> Option<String> {
    udp_ask_from(ns, 0, SocketAddrV6::new(REMOTE6.parse().unwrap(), 7, 0, 0))
}

/// One UDP request from `ns`, from port `from` (0: any) to `dst`: the answer, if one comes
/// within three tries.
fn udp_ask_from(ns: &str, from: u16, dst: SocketAddrV6) -> Option<String> {
    spawn_in(ns, move || {
        let sock = UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, from, 0, 0)).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(1))).ok();
        let mut buf = [0u8; 1500];
        for _ in 0..3 {
            sock.send_to(b"q", dst).ok()?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    })
    .join()
    .ok()
    .flatten()
}

/// ping6, UDP and TCP from two containers reach the remote, which sees only the uplink's
/// IPv6 address; the connections are in the IPv6 table; the host namespace has no
/// ip6tables or nftables rule.
#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_containers_reach_out_masqueraded() {
    let _slot = require_root();
    let lab = lab(1);
    let uplink = add_ipv6(&lab, 1);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let (c1, c2) = (
        lab.spec.containers[0].netns.clone(),
        lab.spec.containers[1].netns.clone(),
    );
    // Without bpfnat the remote cannot answer (no route back to fd00:85:1::/64).
    let (ok, _) = ns_exec(&c1, &["ping", "-6", "-c", "1", "-W", "1", REMOTE6]);
    assert!(!ok, "reached the remote without NAT66");

    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    for c in [&c1, &c2] {
        let (ok, out) = ns_exec(
            c,
            &["ping", "-6", "-c", "2", "-W", "2", "-i", "0.2", REMOTE6],
        );
        assert!(ok, "ping6 from {c}: {out}");
    }
    let stop = udp_echo6(&wan, &format!("[{REMOTE6}]:7"));
    for c in [&c1, &c2] {
        let peer = udp_ask(c).unwrap_or_else(|| panic!("no UDP answer for {c}"));
        let peer: SocketAddr = peer.parse().expect("peer");
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V6(uplink),
            "{c}: seen as {peer}"
        );
    }
    drop(stop);

    // TCP: a transfer through the NAT, the server sees the uplink's address.
    let (seen_tx, seen_rx) = mpsc::channel();
    spawn_in(&wan, move || {
        let listener = TcpListener::bind(format!("[{REMOTE6}]:9000")).expect("bind tcp6");
        seen_tx.send(None).ok();
        if let Ok((mut sock, peer)) = listener.accept() {
            sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut got = Vec::new();
            let _ = sock.read_to_end(&mut got);
            seen_tx.send(Some((peer, got.len()))).ok();
        }
    });
    assert_eq!(seen_rx.recv_timeout(Duration::from_secs(5)), Ok(None));
    let sent = spawn_in(&c1, || {
        let dst = SocketAddrV6::new(REMOTE6.parse().unwrap(), 9000, 0, 0);
        let mut sock = TcpStream::connect_timeout(&dst.into(), Duration::from_secs(3)).ok()?;
        let block = vec![7u8; 64 * 1024];
        for _ in 0..16 {
            sock.write_all(&block).ok()?;
        }
        Some(16 * block.len())
    })
    .join()
    .expect("client")
    .expect("TCP connection through NAT66");
    let (peer, got) = seen_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server done")
        .expect("accepted");
    assert_eq!(peer.ip(), std::net::IpAddr::V6(uplink));
    assert_eq!(got, sent, "every byte arrived");
    // Only IPv6 moved in this test: the datapath forwarded it itself (the fast path both
    // ways), past the bridge and the host's forwarding.
    let stats = crate::support::cli::stats_json(&host);
    let forwarded = crate::support::cli::counter(&stats, "forwarded");
    assert!(forwarded >= 20, "forwarded {forwarded}");
    // The IPv6 mappings in `conntrack list` (the TCP one closed, the UDP ones and the
    // echoes), and gone after `conntrack flush`.
    let list = crate::support::cli::conntrack_json(&host, &[]);
    let v6: Vec<_> = list.iter().filter(|c| c["family"] == "ipv6").collect();
    assert!(
        v6.iter().any(|c| c["proto"] == "tcp"
            && c["external_addr"] == uplink.to_string()
            && c["original"]["dst"] == REMOTE6
            && c["original"]["dport"] == 9000),
        "{v6:?}"
    );
    assert!(v6.len() >= 4, "{v6:?}");
    let (code, _, err) = crate::support::cli::bpfnat(&["--netns", &host, "conntrack", "flush"]);
    assert_eq!(code, 0, "{err}");
    let list = crate::support::cli::conntrack_json(&host, &[]);
    assert!(!list.iter().any(|c| c["family"] == "ipv6"), "{list:?}");
    let (_, rules) = ns_exec(&host, &["ip6tables-save"]);
    assert!(!rules.lines().any(|l| l.starts_with("-A")), "{rules}");
    let (_, nft) = ns_exec(&host, &["nft", "list", "ruleset"]);
    assert!(!nft.lines().any(|l| l.starts_with("table")), "{nft}");
}

/// A container's IPv6 addresses are read on its end of the veth: another container that
/// configures the same address and sends from it is dropped (`drop_spoofed`), and the
/// rightful owner keeps reaching out. An internal bridge's containers reach their IPv6
/// gateway and nothing beyond.
#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_sources_are_checked_and_internal_stays_in() {
    let _slot = require_root();
    let lab = lab(2);
    add_ipv6(&lab, 2);
    let host = lab.spec.host_netns.clone();
    let (c1, c2) = (
        lab.spec.containers[0].netns.clone(),
        lab.spec.containers[1].netns.clone(),
    );
    let daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let ping = ping6;
    assert!(ping(&c1, None, REMOTE6), "c1 reaches out");
    // c2 reaches out too, which resolves its gateway: the spoofed echo request below is sent
    // at once, rather than queued behind neighbour solicitations from the spoofed address
    // (dropped as well), whose failure would fail c2's next ping from its own address too.
    assert!(ping(&c2, None, REMOTE6), "c2 reaches out");
    // c2 takes c1's address as a second one and sends from it.
    ip(
        &c2,
        &[
            "-6",
            "addr",
            "add",
            "fd00:85:2::2/64",
            "dev",
            "eth0",
            "nodad",
        ],
    );
    assert!(
        !ping(&c2, Some("fd00:85:2::2"), REMOTE6),
        "spoofed ping got through"
    );
    let spoofed =
        crate::support::cli::counter(&crate::support::cli::stats_json(&host), "drop_spoofed");
    assert!(spoofed > 0, "drop_spoofed {spoofed}");
    assert!(ping(&c1, None, REMOTE6), "the owner still reaches out");
    assert!(
        ping(&c2, Some("fd00:85:2::3"), REMOTE6),
        "c2 from its own address"
    );
    drop(daemon);
    // Taken back: configured from outside (as only the runtime can), the address would be
    // c2's by right at the next start.
    ip(
        &c2,
        &["-6", "addr", "del", "fd00:85:2::2/64", "dev", "eth0"],
    );

    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0:internal"]);
    assert!(ping(&c1, None, "fd00:85:2::1"), "internal: the gateway");
    assert!(!ping(&c1, None, REMOTE6), "internal: nothing beyond");
    let internal =
        crate::support::cli::counter(&crate::support::cli::stats_json(&host), "drop_internal");
    assert!(internal > 0, "drop_internal {internal}");
}

/// `bpfnat publish add 8080:[fd00:85:3::2]:80` (and `--publish 8081:[...]:80` at start, and
/// `5300:[...]:53/udp`): a TCP and a UDP port on the uplink's IPv6 address reach the container
/// with the client's own address as its peer, listed with `publish list`; after `publish
/// remove` it no longer answers.
#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_published_port_keeps_the_client_address() {
    let _slot = require_root();
    let lab = lab(3);
    let uplink = add_ipv6(&lab, 3);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let c1 = lab.spec.containers[0].netns.clone();
    let _daemon = Daemon::start(
        &host,
        &[
            "--uplink",
            "up0",
            "--bridge",
            "br0",
            "--publish",
            "8081:[fd00:85:3::2]:80",
        ],
    );
    let out = crate::support::cli::bpfnat_ok(&[
        "--netns",
        &host,
        "publish",
        "add",
        "8080:[fd00:85:3::2]:80",
    ]);
    assert!(
        out.contains("published [::]:8080:[fd00:85:3::2]:80/tcp"),
        "{out}"
    );
    let list = crate::support::cli::bpfnat_ok(&["--netns", &host, "publish", "list"]);
    assert!(list.contains("[::]:8080:[fd00:85:3::2]:80/tcp"), "{list}");
    assert!(
        list.contains("[::]:8081:[fd00:85:3::2]:80/tcp"),
        "--publish at start: {list}"
    );

    // The container's server answers each connection with the peer it sees.
    peer_server6(&c1);
    let ask = |wan: &str| ask_peer6(wan, uplink, 8080);
    let peer = ask(&wan).expect("published port answers");
    assert_eq!(
        peer, "2001:db8:3::1",
        "the container sees the client's own address"
    );
    // UDP too: the container's echo answers with the peer it sees.
    let out = crate::support::cli::bpfnat_ok(&[
        "--netns",
        &host,
        "publish",
        "add",
        "5300:[fd00:85:3::2]:53/udp",
    ]);
    assert!(out.contains("published"), "{out}");
    let stop = udp_echo6(&c1, "[::]:53");
    let answer = udp_ask_from(&wan, 0, SocketAddrV6::new(uplink, 5300, 0, 0))
        .expect("published UDP port answers");
    drop(stop);
    let seen: SocketAddr = answer.parse().expect("peer");
    assert_eq!(
        seen.ip().to_string(),
        "2001:db8:3::1",
        "UDP: the container sees the client's own address"
    );
    let stats = crate::support::cli::stats_json(&host);
    assert!(crate::support::cli::counter(&stats, "published_mappings") >= 2);
    // Listed as conntrack lists a DNAT, as IPv4's are: the client's tuple to the published
    // port first, the container's answers second.
    let list = crate::support::cli::conntrack_json(&host, &["--dport", "8080"]);
    let conn = list
        .iter()
        .find(|c| c["family"] == "ipv6" && c["published"] == true)
        .unwrap_or_else(|| panic!("no published IPv6 connection to port 8080: {list:#?}"));
    assert_eq!(
        (
            &conn["original"]["src"],
            &conn["original"]["dst"],
            &conn["original"]["dport"],
            &conn["reply"]["src"],
            &conn["reply"]["sport"],
        ),
        (
            &"2001:db8:3::1".into(),
            &uplink.to_string().into(),
            &8080.into(),
            &"fd00:85:3::2".into(),
            &80.into()
        ),
        "{conn:#}"
    );

    let out = crate::support::cli::bpfnat_ok(&[
        "--netns",
        &host,
        "publish",
        "remove",
        "8080:[fd00:85:3::2]:80",
    ]);
    assert!(out.contains("unpublished"), "{out}");
    assert_eq!(ask(&wan), None, "reachable after publish remove");
}

/// A TCP server on `[::]:80` in `ns` that answers each connection with the address of the
/// peer it sees, for 30 s at most.
fn peer_server6(ns: &str) {
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in(ns, move || {
        let listener = TcpListener::bind("[::]:80").expect("bind");
        listener.set_nonblocking(true).ok();
        ready_tx.send(()).ok();
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok((mut sock, peer)) = listener.accept() {
                let _ = sock.write_all(peer.ip().to_string().as_bytes());
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server");
}

/// Connect from `ns` to `[addr]:port` and read what the server says (the peer it sees).
fn ask_peer6(ns: &str, addr: Ipv6Addr, port: u16) -> Option<String> {
    spawn_in(ns, move || {
        let dst = SocketAddrV6::new(addr, port, 0, 0);
        let mut sock = TcpStream::connect_timeout(&dst.into(), Duration::from_secs(2)).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let mut peer = String::new();
        sock.read_to_string(&mut peer).ok()?;
        Some(peer)
    })
    .join()
    .ok()
    .flatten()
}

/// Hairpin over IPv6: containers reach a port published on the uplink's IPv6 address through
/// that address, from another container and from the published one itself, and the server
/// sees the bridge's IPv6 gateway as its peer (Docker's hairpin masquerade); UDP too.
/// Removing a publish removes its hairpin connections: a UDP flow that keeps sending gets no
/// answer any more, and the IPv6 hairpin table empties once both publishes are gone.
#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_hairpin_through_the_uplink_address() {
    let _slot = require_root();
    let lab = lab(7);
    let uplink = add_ipv6(&lab, 7);
    let host = lab.spec.host_netns.clone();
    let (c1, c2) = (
        lab.spec.containers[0].netns.clone(),
        lab.spec.containers[1].netns.clone(),
    );
    let _daemon = Daemon::start(
        &host,
        &[
            "--uplink",
            "up0",
            "--bridge",
            "br0",
            "--publish",
            "8080:[fd00:85:7::2]:80",
            "--publish",
            "5353:[fd00:85:7::2]:53/udp",
        ],
    );
    peer_server6(&c1);
    for ns in [&c2, &c1] {
        let peer = ask_peer6(ns, uplink, 8080)
            .unwrap_or_else(|| panic!("{ns}: no answer through [{uplink}]:8080"));
        assert_eq!(
            peer, "fd00:85:7::1",
            "{ns}: the server sees the bridge's gateway"
        );
    }
    let stats = crate::support::cli::stats_json(&host);
    assert!(crate::support::cli::counter(&stats, "hairpin_translated") > 0);
    let hairpin6 = || {
        crate::support::cli::stats_json(&host)["table"]["hairpin6"]
            .as_u64()
            .expect("table.hairpin6")
    };
    assert_eq!(hairpin6(), 4, "two TCP connections, two directions each");

    let stop = udp_echo6(&c1, "[::]:53");
    let dns = SocketAddrV6::new(uplink, 5353, 0, 0);
    let peer = udp_ask_from(&c2, 41000, dns).expect("hairpin UDP");
    assert_eq!(
        peer.parse::<SocketAddr>().map(|p| p.ip()).ok(),
        Some("fd00:85:7::1".parse().unwrap()),
        "hairpin UDP: {peer}"
    );
    assert_eq!(hairpin6(), 6);
    let out = crate::support::cli::bpfnat_ok(&[
        "--netns",
        &host,
        "publish",
        "remove",
        "5353:[fd00:85:7::2]:53/udp",
    ]);
    assert!(out.contains("1 connections removed"), "{out}");
    assert_eq!(hairpin6(), 4, "the UDP connection went with its publish");
    assert_eq!(
        udp_ask_from(&c2, 41000, dns),
        None,
        "a hairpin flow outlived its publish"
    );
    assert!(
        ask_peer6(&c2, uplink, 8080).is_some(),
        "the other publish is untouched"
    );
    crate::support::cli::bpfnat_ok(&["--netns", &host, "publish", "remove", "[::]:8080/tcp"]);
    assert_eq!(
        hairpin6(),
        0,
        "every hairpin connection went with its publish"
    );
    assert_eq!(
        ask_peer6(&c2, uplink, 8080),
        None,
        "reachable after publish remove"
    );
    drop(stop);
}

/// The namespace's checksum error counters: TCP's (one for both families, /proc/net/snmp) and
/// UDPv6's (/proc/net/snmp6). A segment or datagram with a bad checksum is dropped there and
/// counted.
fn checksum_errors(ns: &str) -> u64 {
    let (_, snmp) = ns_exec(ns, &["cat", "/proc/net/snmp"]);
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    let tcp_errors = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InCsumErrors")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .expect("Tcp InCsumErrors");
    let (_, snmp6) = ns_exec(ns, &["cat", "/proc/net/snmp6"]);
    let udp6_errors = snmp6
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(n, _)| *n == "Udp6InCsumErrors")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .expect("Udp6InCsumErrors");
    tcp_errors + udp6_errors
}

/// Checksums through NAT66 are verified by a receiver, from partial (offloaded) and full
/// checksums: c1 sends with TX checksum offload on (CHECKSUM_PARTIAL through the NAT), c2
/// with it off (full checksums). The uplink's TX offload is off, so the kernel completes a
/// partial checksum after the NAT rewrote the pseudo-header, and the remote verifies every
/// segment and datagram; the remote answers with full checksums (its TX offload off), which
/// the containers verify after the reverse rewrite. No checksum error is counted anywhere,
/// every byte arrives, and UDP datagrams of 1,200 bytes come back intact.
#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_partial_and_full_checksums_are_verified_after_nat() {
    let _slot = require_root();
    let lab = lab(10);
    let uplink = add_ipv6(&lab, 10);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let containers: Vec<String> = lab
        .spec
        .containers
        .iter()
        .map(|c| c.netns.clone())
        .collect();
    let set_tx = |ns: &str, dev: &str, on: bool| {
        bpfnat::host::netns::set_tx_checksum(ns, dev, on)
            .unwrap_or_else(|e| panic!("tx checksum {dev} in {ns}: {e:#}"));
    };
    set_tx(&containers[0], &lab.spec.containers[0].ifname, true);
    set_tx(&containers[1], &lab.spec.containers[1].ifname, false);
    set_tx(&host, "up0", false);
    set_tx(&wan, "wan0", false);
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let before: Vec<u64> = containers
        .iter()
        .chain([&wan])
        .map(|ns| checksum_errors(ns))
        .collect();

    // TCP: 4 MB from each container, a byte stream the server checks.
    use crate::support::e2e::{tcp_send, tcp_sink, udp_echo, udp_request};
    let remote: Ipv6Addr = REMOTE6.parse().unwrap();
    const BYTES: u64 = 4 << 20;
    let sink = tcp_sink(&wan, SocketAddrV6::new(remote, 9100, 0, 0), 2, 11);
    for c in &containers {
        tcp_send(c, None, SocketAddrV6::new(remote, 9100, 0, 0), BYTES, 11)
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{c}: TCP transfer through NAT66: {e}"));
    }
    for seen in sink.join().unwrap() {
        assert_eq!(seen.peer.ip(), std::net::IpAddr::V6(uplink), "{seen:?}");
        assert!(seen.intact && seen.bytes == BYTES, "{seen:?}");
    }

    // UDP both ways, 1,200-byte payloads (a wrong checksum cannot go unnoticed).
    let echo = udp_echo(
        &wan,
        SocketAddrV6::new(remote, 9101, 0, 0),
        Duration::from_secs(6),
    );
    for c in &containers {
        let payload: Vec<u8> = (0..1200u32).map(|i| (i % 251) as u8).collect();
        let answer = udp_request(c, SocketAddrV6::new(remote, 9101, 0, 0), payload.clone());
        assert!(
            answer.is_some_and(|a| a.ends_with(&payload)),
            "{c}: 1,200-byte datagram echoed intact"
        );
    }
    echo.join().unwrap();
    let after: Vec<u64> = containers
        .iter()
        .chain([&wan])
        .map(|ns| checksum_errors(ns))
        .collect();
    assert_eq!(
        before, after,
        "checksum errors counted (containers, remote)"
    );
}

/// `bpfnat trace --src fd00:85:11::/64` follows IPv6 packets: a container's UDP datagram
/// shows at the uplink's egress with its address before and the uplink's IPv6 address after
/// translation (JSON `"family": "ipv6"`), the same container's IPv4 traffic is not traced
/// (the filter is of the other version), and the pcap holds IPv6 packets tcpdump reads.
#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_trace_shows_translation_and_writes_pcap() {
    let _slot = require_root();
    let lab = lab(11);
    let uplink = add_ipv6(&lab, 11);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let (c1, c1_addr) = container6(&lab, 11, 0);
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let pcap = std::env::temp_dir().join(format!("bnt-v611-{}.pcap", std::process::id()));
    let tracer = crate::support::cli::Tracer::start(
        &host,
        &[
            "--src",
            "fd00:85:11::/64",
            "--duration",
            "20",
            "--pcap",
            pcap.to_str().unwrap(),
        ],
    );

    // IPv4 from the same container: outside the filter.
    let echo4 = crate::support::e2e::udp_echo(
        &wan,
        std::net::SocketAddrV4::new(REMOTE4, 7),
        Duration::from_secs(4),
    );
    let asked = crate::support::e2e::udp_request(
        &c1,
        std::net::SocketAddrV4::new(REMOTE4, 7),
        b"v4".to_vec(),
    );
    assert!(asked.is_some(), "IPv4 echo");
    echo4.join().unwrap();
    // IPv6: inside.
    let stop = udp_echo6(&wan, &format!("[{REMOTE6}]:7"));
    assert!(udp_ask(&c1).is_some(), "IPv6 echo");
    drop(stop);

    let (events, out) = tracer.stop();
    assert!(
        events.iter().all(|e| e["family"] == "ipv6"),
        "IPv4 traced: {out}"
    );
    let out_event = events
        .iter()
        .find(|e| e["hook"] == "uplink_egress" && e["proto"] == "udp")
        .unwrap_or_else(|| panic!("no UDP event at the uplink's egress: {out}"));
    assert_eq!(out_event["before"]["src"], c1_addr.to_string());
    assert_eq!(out_event["after"]["src"], uplink.to_string());
    assert_eq!(out_event["after"]["dst"], REMOTE6);
    assert_eq!(out_event["after"]["dport"], 7);
    assert_eq!(out_event["translated"], true);
    assert!(
        events
            .iter()
            .any(|e| e["hook"] == "port_ingress" && e["before"]["src"] == c1_addr.to_string()),
        "nothing from the container's port: {out}"
    );

    let read = std::process::Command::new("tcpdump")
        .args(["-nn", "-r", pcap.to_str().unwrap()])
        .output()
        .expect("tcpdump");
    let _ = std::fs::remove_file(&pcap);
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success(), "tcpdump: {text}");
    assert!(
        text.contains(&format!("IP6 {uplink}.")) && text.contains(&format!("> {REMOTE6}.7: UDP")),
        "{text}"
    );
}
