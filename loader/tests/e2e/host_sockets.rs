//! The host's own sockets share the uplink address with the containers' mappings (issue 13,
//! items 1 and 8): a port the host uses is never handed to a container, and a mapping created
//! by two CPUs at once keeps both halves. Each test names the item it covers.

use crate::support::{
    cli::{counter, stats_json},
    e2e::*,
    require_root,
};

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{Arc, Barrier},
    thread,
    time::Duration,
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
    let peer_thread = spawn_in(&wan, move || {
        let sock = UdpSocket::bind(peer).expect("bind peer");
        sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
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
    let server_thread = spawn_in(&wan, move || {
        let listener = TcpListener::bind(server).expect("bind server");
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
    let connect_from = |ns: &str, local: SocketAddrV4| {
        spawn_in(ns, move || -> std::io::Result<TcpStream> {
            let sock = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::empty(),
                None,
            )?;
            nix::sys::socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                &nix::sys::socket::SockaddrIn::from(local),
            )?;
            nix::sys::socket::connect(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                &nix::sys::socket::SockaddrIn::from(server),
            )?;
            let stream = TcpStream::from(sock);
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(stream)
        })
        .join()
        .expect("connect thread")
    };
    let echo = |stream: &mut TcpStream, text: &[u8]| -> bool {
        use std::io::{Read, Write};
        let mut buf = [0u8; 64];
        stream.write_all(text).is_ok() && stream.read(&mut buf).is_ok_and(|n| &buf[..n] == text)
    };
    let mut host_conn =
        connect_from(&host, SocketAddrV4::new(uplink, PORT)).expect("the host's connection");
    assert!(echo(&mut host_conn, b"host-1"));
    let mut container_conn = connect_from(&c, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT))
        .expect("the container connects from the host's port");
    assert!(
        echo(&mut container_conn, b"container"),
        "the container's connection works"
    );
    assert!(
        echo(&mut host_conn, b"host-2"),
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
