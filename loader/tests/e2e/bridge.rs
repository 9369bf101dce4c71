//! Docker's bridge semantics without iptables, end to end: the port program on every bridge
//! port, forwarding past a FORWARD chain with policy DROP, direct-access protection, published
//! ports (`--publish`, `bpfnat publish add/list/remove`), inter-container traffic off, isolation
//! between bridges, internal bridges, hairpin, ports coming and going, `bpfnat status`.
//!
//! Each test builds its own topology (`bnt-brN-*` namespaces, containers 10.92.N.0/24 behind
//! `br0`, a second bridge `br1` with 10.91.N.0/24, uplink `up0` 192.0.2.(100+N)/24, its WAN peer
//! 192.0.2.(200+N), remote server 198.51.100.92) and removes it, even on failure. Firewall
//! rules are only ever set inside those namespaces.

use crate::support::require_root;

use crate::support::cli::bpfnat;
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use crate::support::e2e::{
    echo_peer, ns_exec, ping, spawn_in, tcp_send, tcp_sink, udp_echo, udp_request,
    udp_request_from, Daemon, Lab, Stream,
};
use bpfnat::{
    host::lab::{lab_mac, LabSpec},
    host::netns,
};
use serde_json::Value;

const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 92);
const MB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------------------

/// Lab number `n`: containers `bnt-brN-c1` (10.92.N.2) and `bnt-brN-c2` (10.92.N.3) behind
/// `br0` (10.92.N.1) in `bnt-brN-h`; uplink `up0` 192.0.2.(100+N)/24 to `wan0` 192.0.2.(200+N)
/// in `bnt-brN-w`, which holds the remote server.
fn spec(n: u8) -> LabSpec {
    crate::support::topo::test_lab(
        &format!("bnt-br{n}"),
        [10, 92, n],
        2,
        Ipv4Addr::new(192, 0, 2, 100 + n),
        Ipv4Addr::new(192, 0, 2, 200 + n),
        REMOTE,
    )
}

fn c(lab: &Lab, i: usize) -> (&str, Ipv4Addr) {
    let c = &lab.spec.containers[i];
    (c.netns.as_str(), c.addr)
}

/// One more container namespace on a bridge of the host namespace (created if missing, with
/// `gateway/24`); removed on drop.
pub(crate) struct ExtraContainer {
    ns: String,
    pub addr: Ipv4Addr,
    pub host_veth: String,
    host_ns: String,
}

impl ExtraContainer {
    pub(crate) fn up(
        host_ns: &str,
        bridge: &str,
        gateway: Ipv4Addr,
        ns: &str,
        veth: &str,
        addr: Ipv4Addr,
    ) -> Self {
        netns::create(ns).unwrap();
        let guard = Self {
            ns: ns.into(),
            addr,
            host_veth: veth.into(),
            host_ns: host_ns.into(),
        };
        let (br, v) = (bridge.to_owned(), veth.to_owned());
        let br2 = br.clone();
        netns::with_netlink(host_ns, move |h| async move {
            netns::ensure_bridge(&h, &br).await?;
            netns::set_link_mac(&h, &br, lab_mac(gateway)).await?;
            netns::set_link_up(&h, &br).await?;
            netns::add_address(&h, &br, gateway.into(), 24).await
        })
        .unwrap();
        netns::create_veth_pair(host_ns, veth, ns, "eth0").unwrap();
        netns::with_netlink(host_ns, move |h| async move {
            netns::set_bridge_port(&h, &v, &br2).await?;
            netns::set_link_up(&h, &v).await
        })
        .unwrap();
        netns::with_netlink(ns, move |h| async move {
            netns::set_link_up(&h, "lo").await?;
            netns::set_link_mac(&h, "eth0", lab_mac(addr)).await?;
            netns::set_link_up(&h, "eth0").await?;
            netns::add_address(&h, "eth0", addr.into(), 24).await?;
            netns::replace_default_route_v4(&h, gateway).await
        })
        .unwrap();
        guard
    }

    pub(crate) fn ns(&self) -> &str {
        &self.ns
    }

    /// Remove the container's link (both veth ends), keeping the namespace.
    fn unplug(&self) {
        netns::delete_link_in(&self.host_ns, &self.host_veth).unwrap();
    }
}

impl Drop for ExtraContainer {
    fn drop(&mut self) {
        let _ = netns::delete_link_in(&self.host_ns, &self.host_veth);
        let _ = netns::delete(&self.ns);
    }
}

/// A Docker host's filter: FORWARD policy DROP in iptables and in an nftables chain, and no
/// NAT rule. (`br_netfilter` makes bridged frames cross these chains too.)
fn forward_drop(host: &str) {
    for args in [
        &["iptables", "-P", "FORWARD", "DROP"][..],
        &["nft", "add", "table", "inet", "bnt"],
        &[
            "nft",
            "add chain inet bnt bnt_forward { type filter hook forward priority 0; policy drop; }",
        ],
    ] {
        let (ok, _) = ns_exec(host, args);
        assert!(ok, "{args:?} in {host} failed");
    }
    let (_, rules) = ns_exec(host, &["iptables", "-S", "FORWARD"]);
    assert!(rules.contains("-P FORWARD DROP"), "{rules}");
    crate::support::e2e::assert_no_netfilter_nat(host);
}

/// A route to the container subnet in the WAN namespace, through the uplink: the outside
/// could now reach containers directly, if nothing stopped it.
fn wan_route_to_containers(lab: &Lab) {
    let (net, via) = (lab.spec.subnet(), lab.spec.uplink_addr);
    netns::with_netlink(&lab.spec.wan_netns, move |h| async move {
        netns::replace_route_v4(&h, net, 24, via).await
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

/// Run the CLI in `ns`, which must succeed; its stdout.
fn cli_ok(ns: &str, args: &[&str]) -> String {
    let all: Vec<&str> = ["--netns", ns].iter().chain(args).copied().collect();
    let (code, stdout, stderr) = bpfnat(&all);
    assert_eq!(code, 0, "{all:?} failed:\n{stderr}");
    stdout
}

/// The CLI in `ns` must fail with one line on stderr containing `expected`.
fn cli_fails(ns: &str, args: &[&str], expected: &str) {
    let all: Vec<&str> = ["--netns", ns].iter().chain(args).copied().collect();
    let (code, _, stderr) = bpfnat(&all);
    assert_ne!(code, 0, "{all:?} should fail");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{all:?}: expected one line:\n{stderr}");
    assert!(
        lines[0].starts_with("bpfnat: error: ") && lines[0].contains(expected),
        "{all:?}: expected {expected:?} in {stderr}"
    );
}

fn json(ns: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = cli_ok(ns, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

fn counter(ns: &str, name: &str) -> u64 {
    let stats = json(ns, &["stats"]);
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing in {stats}"))
}

/// Poll `cond` every 100 ms for at most `limit`; true once it holds.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------

/// A TCP connection from `ns` to `dst` (either family) within 2 s.
fn tcp_connect(ns: &str, dst: impl Into<SocketAddr>) -> std::io::Result<TcpStream> {
    let dst = dst.into();
    spawn_in(ns, move || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(2))
    })
    .join()
    .unwrap()
}

pub(crate) fn tcp_connects(ns: &str, dst: impl Into<SocketAddr>) -> bool {
    tcp_connect(ns, dst).is_ok()
}

/// A TCP listener in `ns` that accepts connections and holds them open until dropped.
pub(crate) struct Listener {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Listener {
    pub(crate) fn start(ns: &str, addr: impl Into<SocketAddr>) -> Self {
        let addr = addr.into();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = stop.clone();
        let handle = spawn_in(ns, move || {
            let l = TcpListener::bind(addr).expect("bind listener");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((sock, _)) => held.push(sock),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A small HTTP server in a container: answers every GET with 200 and the client's address,
/// and records who asked. Stops on drop.
struct HttpServer {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl HttpServer {
    fn start(ns: &str, addr: SocketAddrV4) -> Self {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (seen, flag) = (peers.clone(), stop.clone());
        let handle = spawn_in(ns, move || {
            let l = TcpListener::bind(addr).expect("bind http");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut sock, peer)) = l.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                sock.set_nonblocking(false).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if req.starts_with(b"GET ") {
                    seen.lock().unwrap().push(peer);
                    let body = format!("hello {peer}\n");
                    let _ = sock.write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Self {
            peers,
            stop,
            handle: Some(handle),
        }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `GET /` from `ns` to `dst`: the response, or why there was none.
fn http_get(ns: &str, dst: SocketAddrV4) -> Result<String, String> {
    spawn_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(2))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: bnt\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)
            .map_err(|e| format!("read: {e}"))?;
        Ok(resp)
    })
    .join()
    .unwrap()
}

fn http_ok(ns: &str, dst: SocketAddrV4) -> bool {
    http_get(ns, dst).is_ok_and(|r| r.starts_with("HTTP/1.0 200 OK"))
}

/// Send `len` bytes of `Stream::new(seed)` from `ns` to a `tcp_sink` at `dst`, paced at about
/// `rate` bytes a second (so it is still running while the test does something else).
fn paced_send(
    ns: &str,
    dst: SocketAddrV4,
    len: u64,
    rate: u64,
    seed: u64,
) -> thread::JoinHandle<Result<String, String>> {
    const BLOCK: usize = 1 << 16; // the sink checks the stream in blocks of this size
    spawn_in(ns, move || {
        let mut sock = TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(3))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        sock.set_write_timeout(Some(Duration::from_secs(30))).ok();
        sock.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut gen = Stream::new(seed);
        let mut buf = vec![0u8; BLOCK];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < len {
            gen.fill(&mut buf);
            let n = ((len - sent) as usize).min(BLOCK);
            sock.write_all(&buf[..n])
                .map_err(|e| format!("send after {sent} bytes: {e}"))?;
            sent += n as u64;
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
        sock.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut answer = String::new();
        sock.read_to_string(&mut answer)
            .map_err(|e| format!("read answer: {e}"))?;
        Ok(answer.trim().to_owned())
    })
}

fn daemon(lab: &Lab, extra: &[&str]) -> Daemon {
    let mut args = vec!["--uplink", "up0"];
    args.extend_from_slice(extra);
    Daemon::start(&lab.spec.host_netns, &args)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// With FORWARD policy DROP (iptables and nftables) and no NAT rule, containers still reach the
/// outside and each other, because the datapath forwards their packets itself; with the
/// daemon stopped, the same traffic is dropped.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn forward_drop_host_forwards_through_the_datapath() {
    let _slot = require_root();
    let lab = Lab::up(spec(1));
    forward_drop(&lab.spec.host_netns);
    let host = lab.spec.host_netns.clone();
    let external = lab.spec.uplink_addr;
    let (c1, a1) = c(&lab, 0);
    let (c2, a2) = c(&lab, 1);

    let d = daemon(&lab, &["--bridge", "br0"]);
    assert!(
        d.ready_line.contains("bridges=br0 ports=2"),
        "{}",
        d.ready_line
    );

    // To the remote: ping, 16 MiB each way checked byte for byte, UDP.
    for (ns, _) in [(c1, a1), (c2, a2)] {
        assert!(ping(ns, REMOTE), "{ns} cannot ping the remote");
    }
    let sink = tcp_sink(&lab.spec.wan_netns, SocketAddrV4::new(REMOTE, 5001), 2, 5);
    for ns in [c1, c2] {
        let answer = tcp_send(ns, None, SocketAddrV4::new(REMOTE, 5001), 16 * MB, 5)
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{ns}: {e}"));
        assert!(answer.starts_with(&format!("OK {external}:")), "{answer}");
    }
    for seen in sink.join().unwrap() {
        assert!(seen.intact && seen.bytes == 16 * MB, "{seen:?}");
    }
    let echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(REMOTE, 5353),
        Duration::from_secs(6),
    );
    for ns in [c1, c2] {
        let answer = udp_request(ns, SocketAddrV4::new(REMOTE, 5353), b"x".to_vec())
            .unwrap_or_else(|| panic!("{ns}: no UDP answer"));
        assert_eq!(echo_peer(&answer).map(|p| *p.ip()), Some(external));
    }
    echo.join().unwrap();

    // To each other: ping both ways, TCP, UDP.
    assert!(
        ping(c1, a2) && ping(c2, a1),
        "containers cannot ping each other"
    );
    let sink = tcp_sink(c2, SocketAddrV4::new(a2, 5002), 1, 6);
    tcp_send(c1, None, SocketAddrV4::new(a2, 5002), 8 * MB, 6)
        .join()
        .unwrap()
        .expect("c1 -> c2 TCP");
    let seen = sink.join().unwrap();
    assert!(seen[0].intact && seen[0].bytes == 8 * MB, "{seen:?}");
    assert_eq!(
        seen[0].peer.ip().to_string(),
        a1.to_string(),
        "bridged, not translated"
    );
    let echo = udp_echo(c1, SocketAddrV4::new(a1, 5354), Duration::from_secs(4));
    let answer = udp_request(c2, SocketAddrV4::new(a1, 5354), b"y".to_vec()).expect("c2 -> c1 UDP");
    assert_eq!(echo_peer(&answer).map(|p| *p.ip()), Some(a2));
    echo.join().unwrap();

    let forwarded = counter(&host, "forwarded");
    assert!(forwarded > 0, "forwarded = {forwarded}");

    // Control: without the datapath, the host's FORWARD policy drops all of it.
    let (status, _) = d.stop();
    assert!(status.success());
    assert!(!ping(c1, REMOTE), "reached the remote without the datapath");
    assert!(
        !ping(c1, a2),
        "bridged traffic passed FORWARD DROP without the datapath"
    );
    let _l = Listener::start(c2, SocketAddrV4::new(a2, 5003));
    assert!(!tcp_connects(c1, SocketAddrV4::new(a2, 5003)));
    let echo = udp_echo(c1, SocketAddrV4::new(a1, 5355), Duration::from_secs(4));
    assert!(udp_request(c2, SocketAddrV4::new(a1, 5355), b"z".to_vec()).is_none());
    echo.join().unwrap();
}

/// Docker 28's direct-access protection: even with a route to the container subnet, the
/// outside reaches no container (the same traffic gets through without the datapath).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn direct_access_from_outside_is_dropped() {
    let _slot = require_root();
    let lab = Lab::up(spec(2));
    let (c1, a1) = c(&lab, 0);
    let wan = lab.spec.wan_netns.clone();
    wan_route_to_containers(&lab);
    let _l = Listener::start(c1, SocketAddrV4::new(a1, 80));

    // Control: the route works, and the host forwards (FORWARD is open in this test).
    assert!(
        ping(&wan, a1),
        "control: the WAN cannot reach the container at all"
    );
    assert!(tcp_connects(&wan, SocketAddrV4::new(a1, 80)));

    let d = daemon(&lab, &["--bridge", "br0"]);
    let host = lab.spec.host_netns.clone();
    let before = counter(&host, "drop_direct_access");
    assert!(!ping(&wan, a1), "ping from outside reached a container");
    assert!(
        !tcp_connects(&wan, SocketAddrV4::new(a1, 80)),
        "TCP from outside reached a container"
    );
    let after = counter(&host, "drop_direct_access");
    assert!(
        after >= before + 3,
        "drop_direct_access {before} -> {after}"
    );
    // The container itself still gets out.
    assert!(ping(c1, REMOTE));
    drop(d);
}

/// Published ports: an HTTP server and a UDP echo reached from outside through the uplink
/// address (seeing the client's real address), past FORWARD DROP; `publish add` at run time,
/// a port range; `publish remove` cuts both at once (UDP too, from the same client port),
/// while an unrelated transfer keeps running byte for byte.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn published_ports_and_their_removal() {
    let _slot = require_root();
    let lab = Lab::up(spec(3));
    forward_drop(&lab.spec.host_netns);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let (ext, client) = (lab.spec.uplink_addr, lab.spec.wan_addr);
    let (c1, a1) = c(&lab, 0);
    let (c2, a2) = c(&lab, 1);
    let http = HttpServer::start(c1, SocketAddrV4::new(a1, 80));
    let echo = udp_echo(c2, SocketAddrV4::new(a2, 53), Duration::from_secs(40));

    let tcp_spec = format!("8080:{a1}:80/tcp");
    let udp_spec = format!("5353:{a2}:53/udp");
    let d = daemon(
        &lab,
        &[
            "--bridge",
            "br0",
            "--publish",
            &tcp_spec,
            "--publish",
            &udp_spec,
        ],
    );
    let list = cli_ok(&host, &["publish", "list"]);
    assert_eq!(list, format!("{tcp_spec}\n{udp_spec}\n"));

    // From outside: HTTP through the uplink address; the server sees the real client.
    let web = SocketAddrV4::new(ext, 8080);
    let resp = http_get(&wan, web).expect("GET through the published port");
    assert!(resp.starts_with("HTTP/1.0 200 OK"), "{resp}");
    assert!(resp.contains(&format!("hello {client}:")), "{resp}");
    assert!(http
        .peers()
        .iter()
        .all(|p| p.ip().to_string() == client.to_string()));
    // UDP, from a fixed client port (the one that must stop working later).
    let dns = SocketAddrV4::new(ext, 5353);
    let from = SocketAddrV4::new(client, 40000);
    let answer =
        udp_request_from(&wan, from, dns, b"q1".to_vec()).expect("UDP through the published port");
    assert_eq!(
        echo_peer(&answer),
        Some(from),
        "the container saw the real client"
    );
    assert!(counter(&host, "published_mappings") >= 2);

    // conntrack shows them as DNAT: client -> host:port, container -> client.
    let conns = json(&host, &["conntrack", "list", "--proto", "udp"]);
    let udp = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["published"] == true)
        .unwrap_or_else(|| panic!("no published UDP flow in {conns}"));
    assert_eq!(udp["original"]["src"], client.to_string());
    assert_eq!(udp["original"]["dst"], ext.to_string());
    assert_eq!(udp["original"]["sport"], 40000);
    assert_eq!(udp["original"]["dport"], 5353);
    assert_eq!(udp["reply"]["src"], a2.to_string());
    assert_eq!(udp["reply"]["sport"], 53);
    assert_eq!(udp["reply"]["dst"], client.to_string());
    assert_eq!(udp["assured"], true);

    // Bad input: one line each, nothing changed.
    cli_fails(
        &host,
        &["publish", "add", "8081:10.93.3.2:80"],
        "in no served bridge subnet (10.92.3.0/24)",
    );
    cli_fails(
        &host,
        &["publish", "add", "8081:10.92.3.1:80"],
        "the bridge's own address",
    );
    cli_fails(
        &host,
        &["publish", "add", "192.0.2.7:8081:10.92.3.2:80"],
        "not the uplink's address",
    );
    cli_fails(
        &host,
        &["publish", "add", "8081-8083:10.92.3.2:80-81"],
        "differ in length",
    );
    cli_fails(&host, &["publish", "add", "8081"], "no container address");
    cli_fails(
        &host,
        &["publish", "remove", "9999/tcp"],
        "9999/tcp is not published",
    );
    cli_fails(
        &host,
        &["publish", "remove", &format!("8080:{a2}:80")],
        "leads to",
    );

    // At run time: a host range to one container port, given as two arguments.
    let out = cli_ok(
        &host,
        &["publish", "add", "8000-8002", &format!("{a1}:80/tcp")],
    );
    assert!(
        out.contains(&format!("published 8000-8002:{a1}:80/tcp")),
        "{out}"
    );
    for port in 8000..=8002 {
        assert!(
            http_ok(&wan, SocketAddrV4::new(ext, port)),
            "range port {port}"
        );
    }
    let list = cli_ok(&host, &["publish", "list"]);
    assert!(list.contains(&format!("8000-8002:{a1}:80/tcp\n")), "{list}");
    let listed = json(&host, &["publish", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");

    // An unrelated long transfer from the other container is running while publishes go.
    let sink = tcp_sink(&wan, SocketAddrV4::new(REMOTE, 5001), 1, 9);
    let long = paced_send(c2, SocketAddrV4::new(REMOTE, 5001), 24 * MB, 8 * MB, 9);
    thread::sleep(Duration::from_millis(800));

    cli_ok(&host, &["publish", "remove", &tcp_spec]);
    let out = cli_ok(&host, &["publish", "remove", "5353/udp"]);
    assert!(out.contains("connections removed"), "{out}");
    // Both fail at once: no new HTTP connection, and no answer to the same UDP client port
    // (its mapping went with the publish).
    assert!(http_get(&wan, web).is_err(), "HTTP still published");
    assert!(
        udp_request_from(&wan, from, dns, b"q2".to_vec()).is_none(),
        "stale UDP mapping"
    );
    assert!(udp_request(&wan, dns, b"q3".to_vec()).is_none());
    // The range is still there.
    assert!(http_ok(&wan, SocketAddrV4::new(ext, 8001)));
    let list = cli_ok(&host, &["publish", "list"]);
    assert_eq!(list, format!("8000-8002:{a1}:80/tcp\n"));

    let answer = long.join().unwrap().expect("unrelated transfer");
    assert!(answer.starts_with(&format!("OK {ext}:")), "{answer}");
    let seen = sink.join().unwrap();
    assert!(seen[0].intact && seen[0].bytes == 24 * MB, "{seen:?}");
    drop(d);
    drop(echo);
}

/// A published TCP connection's state comes from the client's side: a SYN that gets no
/// answer is SYN_SENT (not SYN_RECV), an open one ESTABLISHED.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn published_tcp_state_is_the_clients() {
    let _slot = require_root();
    let lab = Lab::up(spec(4));
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let ext = lab.spec.uplink_addr;
    let (c1, a1) = c(&lab, 0);
    // 10.92.4.9 does not exist: the SYN is forwarded and never answered.
    let d = daemon(
        &lab,
        &[
            "--bridge",
            "br0",
            "--publish",
            "7000:10.92.4.9:80",
            "--publish",
            &format!("7001:{a1}:7001"),
        ],
    );
    assert!(!tcp_connects(&wan, SocketAddrV4::new(ext, 7000)));
    let conns = json(&host, &["conntrack", "list", "--dport", "7000"]);
    let first = &conns[0];
    assert_eq!(first["state"], "SYN_SENT", "{conns}");
    assert_eq!(first["unreplied"], true, "{conns}");
    assert_eq!(first["original"]["dst"], ext.to_string(), "{conns}");
    assert_eq!(first["reply"]["src"], "10.92.4.9", "{conns}");

    let _server = Listener::start(c1, SocketAddrV4::new(a1, 7001));
    let held = tcp_connect(&wan, SocketAddrV4::new(ext, 7001)).expect("published connection");
    thread::sleep(Duration::from_millis(200));
    let conns = json(&host, &["conntrack", "list", "--dport", "7001"]);
    assert_eq!(conns[0]["state"], "ESTABLISHED", "{conns}");
    assert_eq!(conns[0]["reply"]["src"], a1.to_string(), "{conns}");
    assert!(
        conns[0]["seconds_left"].as_u64().unwrap() > 400_000,
        "{conns}"
    );
    let text = cli_ok(&host, &["conntrack", "list", "--dport", "7001"]);
    assert!(
        text.contains(&format!(
            "ESTABLISHED src={} dst={ext} sport={} dport=7001",
            lab.spec.wan_addr,
            held.local_addr().unwrap().port()
        )) && text.contains(&format!("src={a1} dst={} sport=7001", lab.spec.wan_addr)),
        "{text}"
    );
    drop(held);
    drop(d);
}

/// `--icc=false`: containers of a bridge cannot talk to each other (the datapath drops it
/// before the bridge sees it), but still reach their gateway and the outside.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn icc_off_keeps_containers_apart() {
    let _slot = require_root();
    let lab = Lab::up(spec(5));
    let host = lab.spec.host_netns.clone();
    let gateway = lab.spec.bridge_addr;
    let (c1, a1) = c(&lab, 0);
    let (c2, a2) = c(&lab, 1);
    let _l = Listener::start(c2, SocketAddrV4::new(a2, 5005));
    // Control: the bridge connects them.
    assert!(ping(c1, a2) && tcp_connects(c1, SocketAddrV4::new(a2, 5005)));

    // Bad settings: one line, nothing attached.
    for (args, why) in [
        (
            &["--bridge", "br0:icc=maybe"][..],
            "icc=maybe is not true or false",
        ),
        (&["--bridge", "br0:bogus"], "unknown option \"bogus\""),
        (&["--bridge", "br9"], "unknown interface \"br9\""),
        (
            &["--bridge", "br0", "--icc", "perhaps"],
            "is not true or false",
        ),
        (
            &["--bridge", "br0", "--publish", "80:10.99.0.2:80"],
            "10.99.0.2 is in no served bridge subnet (10.92.5.0/24)",
        ),
        (
            &["--bridge", "br0", "--publish", "80:10.92.5.2"],
            "bad publish spec",
        ),
    ] {
        let mut all = vec!["up", "--uplink", "up0"];
        all.extend_from_slice(args);
        let (code, _, stderr) = {
            let mut a = vec!["--netns", host.as_str()];
            a.extend_from_slice(&all);
            bpfnat(&a)
        };
        assert_ne!(code, 0, "{all:?}");
        // Ours are one line; clap's own (a bad --icc value) end with a usage hint.
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(why)
                && (first.starts_with("bpfnat: error: ") || first.starts_with("error: ")),
            "{all:?}: expected {why:?} in {stderr}"
        );
        if first.starts_with("bpfnat: error: ") {
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
    assert_eq!(crate::support::e2e::tc_programs(&host, "up0"), "");
    assert_eq!(
        crate::support::e2e::tc_programs(&host, &lab.spec.containers[0].host_veth),
        ""
    );

    let d = daemon(&lab, &["--bridge", "br0", "--icc=false"]);
    let status = json(&host, &["status"]);
    assert_eq!(status["bridges"][0]["icc"], false, "{status}");
    let before = counter(&host, "drop_icc");
    assert!(!ping(c1, a2), "icc=false: ping between containers");
    assert!(
        !tcp_connects(c1, SocketAddrV4::new(a2, 5005)),
        "icc=false: TCP between containers"
    );
    assert!(!ping(c2, a1), "icc=false: ping the other way");
    assert!(counter(&host, "drop_icc") > before);

    assert!(
        ping(c1, gateway) && ping(c2, gateway),
        "the gateway must stay reachable"
    );
    assert!(ping(c1, REMOTE) && ping(c2, REMOTE));
    let sink = tcp_sink(&lab.spec.wan_netns, SocketAddrV4::new(REMOTE, 5001), 1, 3);
    tcp_send(c1, None, SocketAddrV4::new(REMOTE, 5001), 4 * MB, 3)
        .join()
        .unwrap()
        .expect("c1 -> remote");
    assert!(sink.join().unwrap()[0].intact);
    drop(d);
}

/// Two bridges: their containers cannot reach each other (the host would route it), and
/// both reach the outside.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn two_bridges_are_isolated() {
    let _slot = require_root();
    let lab = Lab::up(spec(6));
    let host = lab.spec.host_netns.clone();
    let external = lab.spec.uplink_addr;
    let (c1, a1) = c(&lab, 0);
    let c3 = ExtraContainer::up(
        &host,
        "br1",
        Ipv4Addr::new(10, 91, 6, 1),
        "bnt-br6-c3",
        "bnt-br6-v3",
        Ipv4Addr::new(10, 91, 6, 2),
    );
    let _l = Listener::start(c3.ns(), SocketAddrV4::new(c3.addr, 5006));
    // Control: the host routes between the bridges.
    assert!(ping(c1, c3.addr) && tcp_connects(c1, SocketAddrV4::new(c3.addr, 5006)));

    let d = daemon(&lab, &["--bridge", "br0", "--bridge", "br1"]);
    assert!(
        d.ready_line.contains("subnets=10.92.6.0/24,10.91.6.0/24"),
        "{}",
        d.ready_line
    );
    let before = counter(&host, "drop_isolation");
    assert!(!ping(c1, c3.addr), "bridge A reached bridge B");
    assert!(!ping(c3.ns(), a1), "bridge B reached bridge A");
    assert!(!tcp_connects(c1, SocketAddrV4::new(c3.addr, 5006)));
    assert!(counter(&host, "drop_isolation") > before);

    let echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(REMOTE, 5353),
        Duration::from_secs(6),
    );
    for ns in [c1, c3.ns()] {
        assert!(ping(ns, REMOTE), "{ns} cannot reach the remote");
        let answer = udp_request(ns, SocketAddrV4::new(REMOTE, 5353), ns.as_bytes().to_vec())
            .unwrap_or_else(|| panic!("{ns}: no UDP answer"));
        assert_eq!(echo_peer(&answer).map(|p| *p.ip()), Some(external));
    }
    echo.join().unwrap();
    drop(d);
}

/// An internal bridge (from the config file): its containers reach their gateway and each
/// other, nothing outside; the other bridge is unaffected; nothing can be published to it.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn internal_bridge_keeps_traffic_in() {
    let _slot = require_root();
    let lab = Lab::up(spec(7));
    let host = lab.spec.host_netns.clone();
    let (c1, _) = c(&lab, 0);
    let gw = Ipv4Addr::new(10, 91, 7, 1);
    let c3 = ExtraContainer::up(
        &host,
        "br1",
        gw,
        "bnt-br7-c3",
        "bnt-br7-v3",
        Ipv4Addr::new(10, 91, 7, 2),
    );
    let c4 = ExtraContainer::up(
        &host,
        "br1",
        gw,
        "bnt-br7-c4",
        "bnt-br7-v4",
        Ipv4Addr::new(10, 91, 7, 3),
    );
    let config = std::env::temp_dir().join(format!("bnt-br7-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "uplink = \"up0\"\nbridge = \"br0\"\n\n[[bridges]]\nname = \"br1\"\ninternal = true\n",
    )
    .unwrap();
    let d = Daemon::start(&host, &["--config", config.to_str().unwrap()]);
    let _ = std::fs::remove_file(&config);
    // Not masqueraded, but served.
    assert!(
        d.ready_line.contains("subnets=10.92.7.0/24 ")
            && d.ready_line.contains("bridges=br0,br1 ports=4"),
        "{}",
        d.ready_line
    );
    let status = json(&host, &["status"]);
    let br1 = status["bridges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "br1")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(
        (br1["internal"].as_bool(), br1["icc"].as_bool()),
        (Some(true), Some(true))
    );

    let before = counter(&host, "drop_internal");
    assert!(
        !ping(c3.ns(), REMOTE),
        "an internal container reached the outside"
    );
    let echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(REMOTE, 5353),
        Duration::from_secs(5),
    );
    assert!(udp_request(c3.ns(), SocketAddrV4::new(REMOTE, 5353), b"x".to_vec()).is_none());
    assert!(counter(&host, "drop_internal") > before);
    assert!(
        echo.join().unwrap().is_empty(),
        "the remote heard from an internal container"
    );

    assert!(ping(c3.ns(), gw), "internal container to its gateway");
    assert!(ping(c3.ns(), c4.addr), "internal containers to each other");
    let sink = tcp_sink(c4.ns(), SocketAddrV4::new(c4.addr, 5007), 1, 4);
    tcp_send(c3.ns(), None, SocketAddrV4::new(c4.addr, 5007), MB, 4)
        .join()
        .unwrap()
        .expect("c3 -> c4");
    assert!(sink.join().unwrap()[0].intact);
    assert!(ping(c1, REMOTE), "the other bridge still gets out");
    cli_fails(
        &host,
        &["publish", "add", "8080:10.91.7.2:80"],
        "internal bridge",
    );
    drop(d);
}

/// IDs of the TCX links of program `prog_id`, system wide.
fn links_of(prog_id: u64) -> usize {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| u64::from(l.program_id()) == prog_id)
        .count()
}

fn port_names(status: &Value) -> Vec<String> {
    status["bridges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["ports"].as_array().unwrap().iter())
        .map(|p| p["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// A container started after the daemon is served within a second or so; one that goes
/// away is forgotten, its link released (no leak); `status` shows all of it.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ports_follow_containers_and_status_shows_them() {
    let _slot = require_root();
    let lab = Lab::up(spec(8));
    forward_drop(&lab.spec.host_netns);
    let host = lab.spec.host_netns.clone();
    let (c1, a1) = c(&lab, 0);
    let d = daemon(
        &lab,
        &["--bridge", "br0", "--publish", &format!("8080:{a1}:80")],
    );
    assert!(ping(c1, REMOTE));

    let status = json(&host, &["status"]);
    assert_eq!(status["uplink"]["name"], "up0", "{status}");
    assert_eq!(status["external_addr"], lab.spec.uplink_addr.to_string());
    let uplink_progs: Vec<&str> = status["uplink"]["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(uplink_progs, ["nat_egress", "nat_ingress"], "{status}");
    let br0 = &status["bridges"][0];
    assert_eq!(br0["name"], "br0");
    assert_eq!(br0["gateway"], "10.92.8.1");
    assert_eq!(
        br0["mac"], "02:42:0a:5c:08:01",
        "read by rtnetlink in the daemon's namespace"
    );
    assert_eq!(br0["subnets"][0], "10.92.8.0/24");
    assert_eq!(port_names(&status), ["bnt-br8-v1", "bnt-br8-v2"]);
    let port = &br0["ports"][0];
    assert_eq!(port["programs"][0]["name"], "port_ingress", "{status}");
    assert_eq!(port["containers"][0], a1.to_string(), "{status}");
    assert_eq!(status["published"][0]["spec"], format!("8080:{a1}:80/tcp"));
    let prog_id = port["programs"][0]["id"].as_u64().unwrap();
    assert_eq!(links_of(prog_id), 2);

    let text = cli_ok(&host, &["status"]);
    for want in [
        "uplink up0 (ifindex",
        "external address 192.0.2.108",
        "tcx/egress nat_egress (id",
        "bridge br0 (ifindex",
        "gateway 10.92.8.1, mac 02:42:0a:5c:08:01, subnets 10.92.8.0/24, icc on",
        "port bnt-br8-v1 (ifindex",
        "tcx/ingress port_ingress (id",
        "containers 10.92.8.2",
        "published:\n  8080:10.92.8.2:80/tcp\n",
        "table: nat_out",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }

    // A container started now.
    let c3 = ExtraContainer::up(
        &host,
        "br0",
        lab.spec.bridge_addr,
        "bnt-br8-c3",
        "bnt-br8-v3",
        Ipv4Addr::new(10, 92, 8, 4),
    );
    assert!(
        wait_for(Duration::from_secs(5), || port_names(&json(
            &host,
            &["status"]
        ))
        .len()
            == 3),
        "new port not served"
    );
    assert_eq!(links_of(prog_id), 3);
    // Served: it gets out past FORWARD DROP, and is learned.
    assert!(ping(c3.ns(), REMOTE), "the new container cannot get out");
    assert!(ping(c3.ns(), a1));
    let status = json(&host, &["status"]);
    assert!(status.to_string().contains("\"10.92.8.4\""), "{status}");

    // ... and gone again.
    c3.unplug();
    assert!(
        wait_for(Duration::from_secs(5), || port_names(&json(
            &host,
            &["status"]
        ))
        .len()
            == 2),
        "vanished port still listed"
    );
    let status = json(&host, &["status"]);
    assert!(
        !status.to_string().contains("\"10.92.8.4\""),
        "its container is still known: {status}"
    );
    assert_eq!(
        links_of(prog_id),
        2,
        "the vanished port's link was not released"
    );

    let (code, stopped) = d.stop();
    assert!(code.success());
    assert!(stopped.iter().any(|l| l == "stopped"), "{stopped:?}");
    assert_eq!(
        links_of(prog_id),
        0,
        "port links left after the daemon stopped"
    );
}

/// Hairpin: containers reach a published port through the host's uplink address, from
/// another container and from the published one itself; the server sees the bridge's gateway
/// (Docker's hairpin masquerade). Removing the publish cuts a running hairpin UDP flow too.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn hairpin_through_the_uplink_address() {
    let _slot = require_root();
    let lab = Lab::up(spec(9));
    let host = lab.spec.host_netns.clone();
    let (ext, gateway) = (lab.spec.uplink_addr, lab.spec.bridge_addr);
    let (c1, a1) = c(&lab, 0);
    let (c2, _) = c(&lab, 1);
    let http = HttpServer::start(c1, SocketAddrV4::new(a1, 80));
    let echo = udp_echo(c1, SocketAddrV4::new(a1, 53), Duration::from_secs(20));
    let d = daemon(
        &lab,
        &[
            "--bridge",
            "br0",
            "--publish",
            &format!("8080:{a1}:80"),
            "--publish",
            &format!("5353:{a1}:53/udp"),
        ],
    );
    let web = SocketAddrV4::new(ext, 8080);
    for ns in [c2, c1] {
        let resp = http_get(ns, web).unwrap_or_else(|e| panic!("{ns}: hairpin GET: {e}"));
        assert!(resp.starts_with("HTTP/1.0 200 OK"), "{ns}: {resp}");
    }
    let peers = http.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(
        peers
            .iter()
            .all(|p| p.ip().to_string() == gateway.to_string()),
        "{peers:?}"
    );
    assert!(counter(&host, "hairpin_translated") > 0);

    let dns = SocketAddrV4::new(ext, 5353);
    let from = SocketAddrV4::new(lab.spec.containers[1].addr, 41000);
    let answer = udp_request_from(c2, from, dns, b"h1".to_vec()).expect("hairpin UDP");
    assert_eq!(echo_peer(&answer).map(|p| *p.ip()), Some(gateway));
    cli_ok(&host, &["publish", "remove", "5353/udp"]);
    assert!(
        udp_request_from(c2, from, dns, b"h2".to_vec()).is_none(),
        "a hairpin flow outlived its publish"
    );
    assert!(http_ok(c2, web), "the other publish is untouched");
    drop(d);
    drop(echo);
}
