//! The host's own sockets share the uplink address with the containers' mappings, and the
//! gateway address with hairpin connections (issue 13, items 1, 2 and 8): a port the host uses
//! is never handed to a container nor to a hairpin connection, hairpin connections age, and a
//! mapping created by two CPUs at once keeps both halves. Each test names the item it covers.

use crate::support::{
    cli::{counter, stats_json},
    e2e::*,
    require_root,
};

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier,
    },
    thread,
    time::{Duration, Instant},
};

fn lab(prefix: &str, n: u8) -> Lab {
    Lab::up(crate::support::topo::test_lab(
        prefix,
        [10, 87, n],
        1,
        Ipv4Addr::new(192, 0, 2, 40 + n),
        Ipv4Addr::new(192, 0, 2, 50 + n),
        Ipv4Addr::new(198, 51, 100, 87),
    ))
}

/// Item 1, UDP: the host talks to a peer from its uplink address and port 51820 (WireGuard,
/// a resolver); a container then sends to the same peer from its own port 51820. The
/// container's datagram leaves from another port, and the peer's next datagram to port 51820
/// still reaches the host's socket, not the container.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item1_host_udp_port_is_not_given_to_a_container() {
    let _slot = require_root();
    let lab = lab("bnt-hs-udp", 1);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let (uplink, remote) = (lab.spec.uplink_addr, lab.spec.remote_server);
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let peer = SocketAddrV4::new(remote, 51820);
    let host_end = SocketAddrV4::new(uplink, 51820);

    // The peer: records who sent each datagram, answers the first two with a datagram to
    // the host's port, then reports.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let peer_thread = spawn_in(&wan, move || {
        let sock = UdpSocket::bind(peer).expect("bind peer");
        sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
        ready_tx.send(()).ok();
        let mut from = Vec::new();
        let mut buf = [0u8; 64];
        while from.len() < 2 {
            let Ok((n, src)) = sock.recv_from(&mut buf) else {
                break;
            };
            from.push((buf[..n].to_vec(), src));
            let _ = sock.send_to(b"to-the-host", host_end);
        }
        from
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the peer is listening");
    // The host's socket, connected to the peer.
    let host_sock = spawn_in(&host, move || {
        let sock = UdpSocket::bind(host_end).expect("bind the host's socket");
        sock.connect(peer).expect("connect");
        sock.send(b"host").expect("send");
        sock
    })
    .join()
    .expect("host socket");
    thread::sleep(Duration::from_millis(300));
    // The container, from the same port, to the same peer.
    spawn_in(&c, move || {
        let sock = UdpSocket::bind("0.0.0.0:51820").expect("bind in the container");
        sock.send_to(b"container", peer).expect("send");
        thread::sleep(Duration::from_millis(300));
    })
    .join()
    .expect("container");
    let seen = peer_thread.join().expect("peer");
    assert_eq!(seen.len(), 2, "the peer got both datagrams: {seen:?}");
    let container_src = seen
        .iter()
        .find(|(data, _)| data == b"container")
        .map(|(_, src)| *src)
        .expect("the container's datagram");
    assert_eq!(container_src.ip(), std::net::IpAddr::V4(uplink));
    assert_ne!(
        container_src.port(),
        51820,
        "the container's datagram must not leave from the host's port"
    );
    // Both answers to port 51820 reached the host's socket.
    host_sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .ok();
    let mut buf = [0u8; 64];
    for i in 0..2 {
        let n = host_sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("the host's socket got answer {i}: {e}"));
        assert_eq!(&buf[..n], b"to-the-host");
    }
    assert!(counter(&stats_json(&host), "port_host_owned") >= 1);
}

/// Item 1, TCP: the host holds a connection to a peer from its uplink address and a port; a
/// container connects to the same peer from that same port. Both connections work, on two
/// different external ports.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item1_host_tcp_port_is_not_given_to_a_container() {
    let _slot = require_root();
    let lab = lab("bnt-hs-tcp", 2);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let (uplink, remote) = (lab.spec.uplink_addr, lab.spec.remote_server);
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let server = SocketAddrV4::new(remote, 7600);
    const PORT: u16 = 47001;

    // The server echoes one line per connection, with the client's address.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_thread = spawn_in(&wan, move || {
        let listener = TcpListener::bind(server).expect("bind server");
        ready_tx.send(()).ok();
        let mut peers = Vec::new();
        for _ in 0..2 {
            let (mut sock, peer) = listener.accept().expect("accept");
            peers.push(peer);
            thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 64];
                while let Ok(n) = sock.read(&mut buf) {
                    if n == 0 || sock.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
        peers
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the server is listening");
    let mut host_conn = connect_from(&host, SocketAddrV4::new(uplink, PORT), server)
        .expect("the host's connection");
    assert!(echoes(&mut host_conn, b"host-1"));
    let mut container_conn =
        connect_from(&c, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT), server)
            .expect("the container connects from the host's port");
    assert!(
        echoes(&mut container_conn, b"container"),
        "the container's connection works"
    );
    assert!(
        echoes(&mut host_conn, b"host-2"),
        "the host's connection still works after the container's"
    );
    let peers = server_thread.join().expect("server");
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].port(), PORT, "the host's connection: {peers:?}");
    assert_ne!(
        peers[1].port(),
        PORT,
        "the container's connection must leave from another port: {peers:?}"
    );
}

/// Item 8: two CPUs creating the same flow's mapping at once, with the port kept, must leave
/// both halves: the one whose insert loses must not remove the reply half the winner uses.
/// Two sockets in a container share a port (SO_REUSEPORT), each on its own CPU, and send the
/// first datagram of each flow at the same instant (a barrier), for many flows; every
/// original half in the table must then have its reply half.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item8_two_cpus_creating_one_mapping_keep_both_halves() {
    let _slot = require_root();
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("SKIPPED: item8 race needs two CPUs, this machine has {cpus}");
        return;
    }
    let lab = lab("bnt-hs-race", 3);
    let host = lab.spec.host_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let remote = lab.spec.remote_server;
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    // Distinct flows: one source port, many destination ports (nothing listens: the
    // datagrams only need to cross the uplink).
    const FLOWS: u16 = 3000;
    const SRC_PORT: u16 = 45000;
    let barrier = Arc::new(Barrier::new(2));
    let senders: Vec<_> = (0..2)
        .map(|cpu| {
            let barrier = barrier.clone();
            spawn_in(&c, move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).expect("cpu set");
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .expect("pin to a CPU");
                let sock = nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Datagram,
                    nix::sys::socket::SockFlag::empty(),
                    None,
                )
                .expect("socket");
                nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReusePort, &true)
                    .expect("SO_REUSEPORT");
                nix::sys::socket::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    &nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(
                        Ipv4Addr::UNSPECIFIED,
                        SRC_PORT,
                    )),
                )
                .expect("bind");
                let sock = UdpSocket::from(sock);
                for i in 0..FLOWS {
                    barrier.wait();
                    let _ = sock.send_to(b"x", SocketAddrV4::new(remote, 20000 + i));
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender");
    }
    thread::sleep(Duration::from_millis(200));
    let out = conntrack_halves(&host);
    assert_eq!(out.0, FLOWS as usize, "one mapping per flow");
    assert_eq!(
        out.1, 0,
        "original halves without their reply half (a lost race): {} of {}",
        out.1, out.0
    );
}

/// (mappings of the lab's UDP flows, how many of them lack their reply half), from
/// `bpfnat conntrack list --json`, which says of each mapping whether its reply half exists.
fn conntrack_halves(host: &str) -> (usize, usize) {
    let entries = crate::support::cli::conntrack_json(host, &["--proto", "udp"]);
    let missing = entries
        .iter()
        .filter(|e| e["reply_half"] != serde_json::Value::Bool(true))
        .count();
    (entries.len(), missing)
}

/// Connect from `local` (in `ns`) to `dst`, with a 3 s read timeout.
fn connect_from(ns: &str, local: SocketAddrV4, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    spawn_in(ns, move || -> std::io::Result<TcpStream> {
        use nix::sys::socket::{
            bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        let sock = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &SockaddrIn::from(local),
        )?;
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &SockaddrIn::from(dst),
        )?;
        let stream = TcpStream::from(sock);
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(stream)
    })
    .join()
    .expect("connect thread")
}

/// One line through an echo connection.
fn echoes(stream: &mut TcpStream, text: &[u8]) -> bool {
    use std::io::{Read, Write};
    let mut buf = [0u8; 64];
    stream.write_all(text).is_ok() && stream.read(&mut buf).is_ok_and(|n| &buf[..n] == text)
}

fn hairpin_lab(
    prefix: &str,
    n: u8,
) -> (
    Lab,
    Daemon,
    SocketAddrV4,
    Arc<AtomicBool>,
    thread::JoinHandle<()>,
) {
    let lab = Lab::up(crate::support::topo::test_lab(
        prefix,
        [10, 87, n],
        2,
        Ipv4Addr::new(192, 0, 2, 40 + n),
        Ipv4Addr::new(192, 0, 2, 50 + n),
        Ipv4Addr::new(198, 51, 100, 87),
    ));
    let service = SocketAddrV4::new(lab.spec.containers[1].addr, 80);
    let publish = format!("8083:{service}/tcp");
    let daemon = Daemon::start(
        &lab.spec.host_netns,
        &[
            "--uplink",
            "up0",
            "--bridge",
            "br0",
            "--publish",
            &publish,
            "--timeout",
            "tcp_fin_wait=1",
            "--timeout",
            "tcp_time_wait=1",
            "--sweep-interval",
            "1",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&lab.spec.containers[1].netns, service, stop.clone());
    (lab, daemon, service, stop, server)
}

/// Item 2: a hairpin connection (a container reaching a published port through the uplink
/// address) never takes a gateway port the host itself uses with the published container: the
/// host holds a connection from the gateway and a port to the container, then another
/// container reaches the published port from that same port; both connections work.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item2_hairpin_avoids_the_hosts_own_connection_to_a_container() {
    let _slot = require_root();
    let (lab, _daemon, service, stop, server) = hairpin_lab("bnt-hs-hp", 4);
    let host = lab.spec.host_netns.clone();
    let client = lab.spec.containers[0].netns.clone();
    let gateway = lab.spec.bridge_addr;
    const PORT: u16 = 47100;
    let mut host_conn = connect_from(&host, SocketAddrV4::new(gateway, PORT), service)
        .expect("the host's connection to the container");
    assert!(echoes(&mut host_conn, b"host-1"));
    let published = SocketAddrV4::new(lab.spec.uplink_addr, 8083);
    let mut hairpin = connect_from(
        &client,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
        published,
    )
    .expect("the hairpin connection");
    assert!(
        echoes(&mut hairpin, b"hairpin"),
        "the hairpin connection works"
    );
    assert!(
        echoes(&mut host_conn, b"host-2"),
        "the host's connection still works"
    );
    assert!(counter(&stats_json(&host), "port_host_owned") >= 1);
    stop.store(true, Ordering::Relaxed);
    drop((host_conn, hairpin));
    server.join().ok();
}

/// Item 2: hairpin connections age like mappings (the table is no longer an LRU that keeps
/// them forever): a closed one is gone once its FIN timeouts pass.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item2_closed_hairpin_connections_expire() {
    let _slot = require_root();
    let (lab, _daemon, _service, stop, server) = hairpin_lab("bnt-hs-ha", 5);
    let host = lab.spec.host_netns.clone();
    let client = lab.spec.containers[0].netns.clone();
    let published = SocketAddrV4::new(lab.spec.uplink_addr, 8083);
    let hairpin_entries = || stats_json(&host)["table"]["hairpin"].as_u64();
    let mut conn = connect_from(
        &client,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        published,
    )
    .expect("the hairpin connection");
    assert!(echoes(&mut conn, b"hello"));
    assert_eq!(hairpin_entries(), Some(2), "one connection, two directions");
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while hairpin_entries() != Some(0) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(hairpin_entries(), Some(0), "the closed connection expired");
    stop.store(true, Ordering::Relaxed);
    server.join().ok();
}

/// Item 1, the other order: a container holds a connection to a peer from its own port, kept
/// on the uplink; then the host connects to the same peer from that same port (its kernel
/// knows nothing of the container's mapping). The host's connection gets another external
/// port, and both connections work.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item1_host_connection_on_a_port_a_container_holds_gets_another() {
    let _slot = require_root();
    let lab = lab("bnt-hs-rv", 6);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let (uplink, remote) = (lab.spec.uplink_addr, lab.spec.remote_server);
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let server = SocketAddrV4::new(remote, 7601);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = echo_server(&wan, server, stop.clone());
    const PORT: u16 = 47200;
    let mut container_conn =
        connect_from(&c, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT), server)
            .expect("the container's connection");
    assert!(echoes(&mut container_conn, b"container-1"));
    let mut host_conn = connect_from(&host, SocketAddrV4::new(uplink, PORT), server)
        .expect("the host connects from the port the container's mapping holds");
    assert!(
        echoes(&mut host_conn, b"host"),
        "the host's connection works"
    );
    assert!(
        echoes(&mut container_conn, b"container-2"),
        "the container's connection still works"
    );
    assert!(counter(&stats_json(&host), "host_flows_remapped") >= 1);
    stop.store(true, Ordering::Relaxed);
    drop((container_conn, host_conn));
    echo.join().ok();
}
