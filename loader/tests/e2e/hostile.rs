//! Hostile remotes and containers (issue 13): what any packet from the internet or from a
//! container may do to the table and to the other containers. Each test names the item of
//! issue 13 it covers.

use crate::support::{
    cli::{conntrack_json, counter, stats_json},
    e2e::*,
    packet::{Frame, L4},
    require_root_alone,
};

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

fn lab(prefix: &str, n: u8, containers: u8) -> Lab {
    Lab::up(crate::support::topo::test_lab(
        prefix,
        [10, 88, n],
        containers,
        Ipv4Addr::new(192, 0, 2, 60 + n),
        Ipv4Addr::new(192, 0, 2, 70 + n),
        Ipv4Addr::new(198, 51, 100, 88),
    ))
}

/// A raw IPv4 socket: of `IPPROTO_RAW` (the packets carry their own header, any source
/// address), or of one protocol (the kernel writes the IP header; received packets come with
/// theirs).
struct RawSender(std::os::fd::OwnedFd);

impl RawSender {
    fn open() -> Self {
        Self::of_protocol(libc::IPPROTO_RAW)
    }

    fn of_protocol(proto: i32) -> Self {
        // SAFETY: socket(2) with constant arguments; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a valid socket and a timeval of the size given.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Self(fd)
    }

    /// Send from `addr` (a raw socket's bind sets the source address).
    fn bind(&self, addr: Ipv4Addr) {
        nix::sys::socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&self.0),
            &nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(addr, 0)),
        )
        .expect("bind a raw socket");
    }

    /// The next packet received (IP header included), None after the 1 s timeout.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: the buffer is live and writable for its length.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        (n > 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }

    /// Send one IP packet to `dst`; false if the kernel refused it (a full queue).
    fn send(&self, packet: &[u8], dst: Ipv4Addr) -> bool {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and the address are live for the call and their lengths are
        // the ones given.
        let n = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        n == packet.len() as isize
    }
}

/// Run `body` with a raw socket of `proto` opened in `ns`; returns once the socket is open,
/// so that what is sent next cannot arrive before it.
fn with_raw_socket<T: Send + 'static>(
    ns: &str,
    proto: i32,
    body: impl FnOnce(RawSender) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, move || {
        let raw = RawSender::of_protocol(proto);
        ready_tx.send(()).ok();
        body(raw)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("raw socket open");
    h
}

/// A TCP segment from `src:sport` to `dst:dport` with `flags` and no payload, as IP bytes.
fn segment(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = Frame::new(
        &src.to_string(),
        &dst.to_string(),
        L4::Tcp {
            sport,
            dport,
            flags,
        },
    );
    f.payload.clear();
    f.ip_bytes()
}

/// Source `i` of a forged range: `first.second.x.y` over 65,536 addresses, ports spread too.
fn forged(first: u8, second: u8, i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(first, second, (i >> 8) as u8, i as u8),
        1024 + (i % 60000) as u16,
    )
}

/// Send `count` segments from forged sources `first.second.0.0/16` to `dst:dport`, paced so
/// that the veth's backlog (1,000 packets) does not drop them before the datapath sees them.
/// Bounded by `deadline`. Returns how many were sent.
fn flood(
    raw: &RawSender,
    (first, second): (u8, u8),
    dst: SocketAddrV4,
    flags: u8,
    count: u32,
    deadline: Instant,
) -> u32 {
    let mut sent = 0;
    for i in 0..count {
        if Instant::now() > deadline {
            break;
        }
        let (src, sport) = forged(first, second, i);
        let packet = segment(src, sport, *dst.ip(), dst.port(), flags);
        while !raw.send(&packet, *dst.ip()) {
            if Instant::now() > deadline {
                return sent;
            }
            thread::sleep(Duration::from_micros(50));
        }
        sent += 1;
        if i % 200 == 199 {
            thread::sleep(Duration::from_micros(300));
        }
    }
    sent
}

/// Open connections from `ns` to `dst` one after the other until `stop`, each one echoing a
/// line. Returns (succeeded, failed, the first failure).
fn keep_connecting(
    ns: &str,
    dst: SocketAddrV4,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(u32, u32, Option<String>)> {
    spawn_in(ns, move || {
        let (mut ok, mut failed, mut first) = (0, 0, None);
        while !stop.load(Ordering::Relaxed) {
            let result = (|| -> std::io::Result<()> {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"ping\n")?;
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf)?;
                if &buf[..n] != b"ping\n" {
                    return Err(std::io::Error::other("wrong echo"));
                }
                Ok(())
            })();
            match result {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    first.get_or_insert_with(|| e.to_string());
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        (ok, failed, first)
    })
}

/// Item 3 (done-when 2): a bounded flood at a published port, into a table of the default
/// size: 300,000 segments without flags, 300,000 ACK-only segments and 300,000 SYNs, each
/// kind from 65,536 forged sources, while a container keeps opening connections to the
/// outside and a client keeps connecting to the published service. No connection of either
/// fails; the flagless and ACK-only segments leave no entry (they are dropped, counted); the
/// SYNs that were never acknowledged hold at most a quarter of the table (early drop).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item3_flood_at_a_published_port_leaves_room_for_everyone_else() {
    let _slot = require_root_alone();
    let lab = lab("bnt-ho-fl", 1, 2);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let (c1, c2) = (
        lab.spec.containers[0].netns.clone(),
        lab.spec.containers[1].netns.clone(),
    );
    let service_addr = lab.spec.containers[0].addr;
    let (ext, remote) = (lab.spec.uplink_addr, lab.spec.remote_server);
    let publish = format!("8080:{service_addr}:80/tcp");
    let _daemon = Daemon::start(
        &host,
        &["--uplink", "up0", "--bridge", "br0", "--publish", &publish],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let service = echo_server(&c1, SocketAddrV4::new(service_addr, 80), stop.clone());
    let outside = echo_server(&wan, SocketAddrV4::new(remote, 7700), stop.clone());
    let container_conns = keep_connecting(&c2, SocketAddrV4::new(remote, 7700), stop.clone());
    let published = SocketAddrV4::new(ext, 8080);
    let client_conns = keep_connecting(&wan, published, stop.clone());

    const EACH: u32 = 300_000;
    let deadline = Instant::now() + Duration::from_secs(150);
    let sent = spawn_in(&wan, move || {
        let raw = RawSender::open();
        [
            flood(&raw, (198, 18), published, 0, EACH, deadline),
            flood(&raw, (198, 19), published, 0x10, EACH, deadline),
            flood(&raw, (100, 64), published, 0x02, EACH, deadline),
        ]
    })
    .join()
    .expect("flood");
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (c_ok, c_failed, c_first) = container_conns.join().expect("container connections");
    let (p_ok, p_failed, p_first) = client_conns.join().expect("client connections");
    service.join().ok();
    outside.join().ok();

    let stats = stats_json(&host);
    let table = &stats["table"];
    let flagless_left = conntrack_json(&host, &["--src", "198.18.0.0/16"]).len();
    let ack_only_left = conntrack_json(&host, &["--src", "198.19.0.0/16"]).len();
    let syn_left = conntrack_json(&host, &["--src", "100.64.0.0/16"]).len();
    eprintln!(
        "flood: sent flagless {} ACK-only {} SYN {}; table nat_out {} nat_in {} of {}; \
         entries left: flagless {flagless_left}, ACK-only {ack_only_left}, SYN {syn_left}; \
         drop_invalid_tcp {} drop_stray_tcp {} drop_table_full {} early_drops {} \
         published_mappings {}; container connections ok {c_ok} failed {c_failed}; \
         published connections ok {p_ok} failed {p_failed}",
        sent[0],
        sent[1],
        sent[2],
        table["nat_out"],
        table["nat_in"],
        table["max_entries"],
        counter(&stats, "drop_invalid_tcp"),
        counter(&stats, "drop_stray_tcp"),
        counter(&stats, "drop_table_full"),
        counter(&stats, "early_drops"),
        counter(&stats, "published_mappings"),
    );
    assert_eq!(
        sent, [EACH; 3],
        "the whole flood was sent within the time bound"
    );
    assert_eq!(flagless_left, 0, "segments without flags hold no entry");
    assert_eq!(ack_only_left, 0, "ACK-only segments hold no entry");
    assert!(
        syn_left <= bpfnat_common::embryonic_slots(bpfnat_common::DEFAULT_TABLE_SIZE) as usize,
        "unacknowledged SYNs hold at most a quarter of the table: {syn_left}"
    );
    assert!(
        counter(&stats, "early_drops") > 0,
        "the SYN flood was cut by early drop"
    );
    assert_eq!(counter(&stats, "drop_table_full"), 0);
    assert!(
        c_failed == 0 && c_ok > 0,
        "every connection of the container succeeded: {c_ok} ok, {c_failed} failed ({c_first:?})"
    );
    assert!(
        p_failed == 0 && p_ok > 0,
        "every connection to the published service succeeded: {p_ok} ok, {p_failed} failed \
         ({p_first:?})"
    );
}

/// The source address of a received IP packet.
fn ip_src(packet: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15])
}

/// Item 4: a protocol without ports (253, reserved for experiments) leaves a container with
/// the uplink's address and its answer comes back to the container, as MASQUERADE does; an
/// ICMP timestamp request (neither echo nor an error) never leaves with the container's
/// address; and neither reaches a container from outside directly, even with a route to it.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item4_other_protocols_leave_masqueraded_and_never_enter_directly() {
    let _slot = crate::support::require_root();
    let lab = lab("bnt-ho-pr", 2, 1);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let container = lab.spec.containers[0].addr;
    let (ext, remote) = (lab.spec.uplink_addr, lab.spec.remote_server);
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    const EXPERIMENT: i32 = 253;

    // Out and back.
    let remote_side = with_raw_socket(&wan, EXPERIMENT, move |raw| {
        // From the remote server's address (the wan device has another).
        raw.bind(remote);
        let got = raw.recv();
        if got.is_some() {
            assert!(raw.send(b"answer", ext), "the remote's answer");
        }
        got.map(|p| ip_src(&p))
    });
    let container_side = spawn_in(&c, move || {
        let raw = RawSender::of_protocol(EXPERIMENT);
        assert!(raw.send(b"question", remote));
        raw.recv()
    });
    let seen_from = remote_side.join().expect("remote");
    let answer = container_side.join().expect("container");
    assert_eq!(seen_from, Some(ext), "the remote sees the uplink's address");
    let answer = answer.expect("the answer reaches the container");
    assert!(answer.ends_with(b"answer"));

    // An ICMP timestamp request: the remote receives nothing from the container's address.
    let watcher = with_raw_socket(&wan, libc::IPPROTO_ICMP, move |raw| {
        let mut leaked = Vec::new();
        while let Some(p) = raw.recv() {
            if ip_src(&p) == container {
                leaked.push(p);
            }
        }
        leaked
    });
    spawn_in(&c, move || {
        let raw = RawSender::of_protocol(libc::IPPROTO_ICMP);
        // type 13, code 0, checksum, id, seq, three timestamps
        let mut msg = vec![13u8, 0, 0, 0, 0, 7, 0, 1];
        msg.extend_from_slice(&[0; 12]);
        let sum =
            !crate::support::packet::fold(crate::support::packet::ones_complement_sum(&msg, 0));
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        assert!(raw.send(&msg, remote));
    })
    .join()
    .expect("timestamp request");
    assert!(
        watcher.join().expect("watcher").is_empty(),
        "a packet left with the container's address"
    );

    // Directly to the container from outside, with a route to it: nothing arrives.
    let (ok, out) = ns_exec(
        &wan,
        &[
            "ip",
            "route",
            "add",
            &format!("{container}/32"),
            "via",
            &ext.to_string(),
        ],
    );
    assert!(ok, "route to the container: {out}");
    let inside = with_raw_socket(&c, EXPERIMENT, |raw| raw.recv());
    spawn_in(&wan, move || {
        assert!(RawSender::of_protocol(EXPERIMENT).send(b"direct", container));
    })
    .join()
    .expect("direct");
    assert!(
        inside.join().expect("inside").is_none(),
        "a packet from outside reached the container directly"
    );
    let stats = stats_json(&host);
    assert!(counter(&stats, "drop_untranslatable") >= 1);
    assert!(counter(&stats, "drop_direct_access") >= 1);
}

fn run(ns: &str, args: &[&str]) {
    let (ok, out) = ns_exec(ns, args);
    assert!(ok, "{}: {out}", args.join(" "));
}

/// Item 5: a container cannot spoof. Its packets from the host's (uplink) address, or from an
/// address of its subnet that is not its own, are dropped, not forwarded; and sending from an
/// unused address does not make it that address's owner: the container later given that
/// address gets its replies, its published connections and its neighbours' traffic, because
/// a container's address is read from its end of the veth, which it cannot forge.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item5_containers_cannot_spoof_nor_take_an_address_over() {
    let _slot = crate::support::require_root();
    let lab = lab("bnt-ho-sp", 3, 3);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let spoofer = lab.spec.containers[0].netns.clone();
    let neighbour = lab.spec.containers[1].netns.clone();
    let late = lab.spec.containers[2].clone();
    let (ext, remote) = (lab.spec.uplink_addr, lab.spec.remote_server);
    let gateway = lab.spec.bridge_addr;
    let unused = Ipv4Addr::new(10, 88, 3, 50);

    // The third container is given the unused address, and plugged in only later.
    run(&late.netns, &["ip", "addr", "flush", "dev", &late.ifname]);
    run(
        &late.netns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{unused}/24"),
            "dev",
            &late.ifname,
        ],
    );
    run(
        &late.netns,
        &["ip", "route", "add", "default", "via", &gateway.to_string()],
    );
    run(&host, &["ip", "link", "set", &late.host_veth, "nomaster"]);
    let publish = format!("8081:{unused}:80/tcp");
    let _daemon = Daemon::start(
        &host,
        &["--uplink", "up0", "--bridge", "br0", "--publish", &publish],
    );
    let echo = udp_echo(
        &wan,
        SocketAddrV4::new(remote, 7800),
        Duration::from_secs(20),
    );

    // The spoofer: a datagram from the host's address, and one from the unused address.
    for src in [ext, unused] {
        let mut f = Frame::new(
            &src.to_string(),
            &remote.to_string(),
            L4::Udp {
                sport: 40000,
                dport: 7800,
            },
        );
        f.payload = b"spoofed".to_vec();
        let packet = f.ip_bytes();
        spawn_in(&spoofer, move || {
            assert!(RawSender::open().send(&packet, remote));
        })
        .join()
        .expect("spoofer");
    }
    // The raw datagrams go through the spoofer's neighbour resolution first: wait for them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(&stats_json(&host), "drop_spoofed") < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        counter(&stats_json(&host), "drop_spoofed"),
        2,
        "both spoofed datagrams were dropped at the spoofer's port"
    );

    // The rightful owner of the address arrives.
    run(
        &host,
        &["ip", "link", "set", &late.host_veth, "master", "br0"],
    );
    let service = echo_server(
        &late.netns,
        SocketAddrV4::new(unused, 80),
        Arc::new(AtomicBool::new(false)),
    );
    drop(service); // runs until the lab goes
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answer = None;
    while answer.is_none() && Instant::now() < deadline {
        answer = udp_request(
            &late.netns,
            SocketAddrV4::new(remote, 7800),
            b"mine".to_vec(),
        );
    }
    let answer = answer.expect("the owner of the address gets its replies");
    assert_eq!(echo_peer(&answer).map(|p| *p.ip()), Some(ext));
    // Its published port, from outside.
    let published = spawn_in(&wan, move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(ext, 8081)),
            Duration::from_secs(5),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"hello\n")?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].to_vec())
    })
    .join()
    .expect("client");
    assert_eq!(
        published.expect("the published connection reaches the owner"),
        b"hello\n"
    );
    // Its neighbour on the bridge.
    assert!(ping(&neighbour, unused), "the neighbour reaches the owner");
    drop(echo);
}

/// Item 7: blind RSTs do not close a connection. A remote that knows a connection's
/// addresses and ports but not its sequence numbers sends RSTs across the sequence space;
/// they are dropped (counted), the connection stays ESTABLISHED and is not swept (CLOSE
/// would expire after 1 s here), and it keeps carrying data.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item7_blind_resets_do_not_close_a_connection() {
    let _slot = crate::support::require_root();
    let lab = lab("bnt-ho-rs", 4, 1);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let (ext, remote) = (lab.spec.uplink_addr, lab.spec.remote_server);
    let _daemon = Daemon::start(
        &host,
        &[
            "--uplink",
            "up0",
            "--bridge",
            "br0",
            "--timeout",
            "tcp_close=1",
            "--sweep-interval",
            "1",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&wan, SocketAddrV4::new(remote, 7900), stop.clone());
    let mut conn = spawn_in(&c, move || {
        TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(remote, 7900)),
            Duration::from_secs(5),
        )
    })
    .join()
    .expect("connect thread")
    .expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let mut echo = |text: &[u8]| -> bool {
        let mut buf = [0u8; 64];
        conn.write_all(text).is_ok() && conn.read(&mut buf).is_ok_and(|n| &buf[..n] == text)
    };
    assert!(echo(b"before\n"));
    let entries = conntrack_json(&host, &["--proto", "tcp", "--dport", "7900"]);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let ext_port = entries[0]["external_port"].as_u64().expect("external port") as u16;

    // 64 RSTs spread over the sequence space, from the remote's address and port.
    spawn_in(&wan, move || {
        let raw = RawSender::open();
        for i in 0..64u32 {
            let mut f = Frame::new(
                &remote.to_string(),
                &ext.to_string(),
                L4::Tcp {
                    sport: 7900,
                    dport: ext_port,
                    flags: 0x04,
                },
            );
            f.payload.clear();
            f.tcp_seq = i.wrapping_mul(0x0400_0000).wrapping_add(12345);
            assert!(raw.send(&f.ip_bytes(), ext));
        }
    })
    .join()
    .expect("attacker");
    // Long enough for a CLOSE mapping to expire and be swept.
    thread::sleep(Duration::from_secs(3));
    let entries = conntrack_json(&host, &["--proto", "tcp", "--dport", "7900"]);
    assert_eq!(entries.len(), 1, "the connection's mapping is still there");
    assert_eq!(entries[0]["state"], "ESTABLISHED", "{:?}", entries[0]);
    assert!(echo(b"after\n"), "the connection still carries data");
    assert_eq!(counter(&stats_json(&host), "drop_tcp_window"), 64);
    stop.store(true, Ordering::Relaxed);
    drop(conn);
    server.join().ok();
}

/// Item 9: a packet for a container whose TTL runs out at the host is dropped: the sender
/// gets no ICMP time-exceeded quoting the container's address (which the host would send,
/// quoting the packet as translated).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item9_no_time_exceeded_quotes_a_container_address() {
    let _slot = crate::support::require_root();
    let lab = lab("bnt-ho-tl", 5, 1);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let container = lab.spec.containers[0].addr;
    let (ext, remote) = (lab.spec.uplink_addr, lab.spec.remote_server);
    let publish = format!("8082:{container}:80/tcp");
    let _daemon = Daemon::start(
        &host,
        &["--uplink", "up0", "--bridge", "br0", "--publish", &publish],
    );
    let watcher = with_raw_socket(&wan, libc::IPPROTO_ICMP, move |raw| {
        let mut quoting = Vec::new();
        let octets = container.octets();
        while let Some(p) = raw.recv() {
            if p.windows(4).any(|w| w == octets) {
                quoting.push(p);
            }
        }
        quoting
    });
    spawn_in(&wan, move || {
        let mut syn = Frame::new(
            &remote.to_string(),
            &ext.to_string(),
            L4::Tcp {
                sport: 45500,
                dport: 8082,
                flags: 0x02,
            },
        );
        syn.payload.clear();
        syn.ttl = 1;
        assert!(RawSender::open().send(&syn.ip_bytes(), ext));
    })
    .join()
    .expect("sender");
    let quoting = watcher.join().expect("watcher");
    assert!(
        quoting.is_empty(),
        "ICMP quoting the container's address reached the sender: {quoting:?}"
    );
    assert_eq!(counter(&stats_json(&host), "drop_ttl_exceeded"), 1);
}

/// Item 9: with inter-container traffic off, broadcast and multicast do not pass between
/// containers either (the kernel bridge floods them where the port program cannot stop
/// them): the ports are isolated in the kernel bridge, including a port plugged in after
/// the daemon started, and they stay isolated while the loader is down (stopped with
/// `--keep`, the datapath running on); `down` gives the bridge back as it was.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item9_icc_off_holds_for_broadcast_new_ports_and_a_stopped_daemon() {
    let _slot = crate::support::require_root();
    let lab = lab("bnt-ho-ic", 6, 2);
    let host = lab.spec.host_netns.clone();
    let sender = lab.spec.containers[0].netns.clone();
    let late = lab.spec.containers[1].clone();
    run(&host, &["ip", "link", "set", &late.host_veth, "nomaster"]);
    let daemon = Daemon::start(
        &host,
        &["--uplink", "up0", "--bridge", "br0:icc=false", "--keep"],
    );
    let _down = DownOnDrop(host.clone());
    run(
        &host,
        &["ip", "link", "set", &late.host_veth, "master", "br0"],
    );
    let isolated = |ns: &str, dev: &str| {
        ns_exec(ns, &["bridge", "-d", "link", "show", "dev", dev])
            .1
            .contains("isolated on")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !isolated(&host, &late.host_veth) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(isolated(&host, &late.host_veth), "the new port is isolated");
    assert!(isolated(&host, &lab.spec.containers[0].host_veth));

    let broadcast = lab.spec.bridge_addr.octets();
    let subnet_broadcast = Ipv4Addr::new(broadcast[0], broadcast[1], broadcast[2], 255);
    let send_all = |sender: &str| {
        spawn_in(sender, move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            sock.set_broadcast(true).expect("SO_BROADCAST");
            sock.set_multicast_ttl_v4(1).ok();
            for dst in [
                Ipv4Addr::BROADCAST,
                subnet_broadcast,
                Ipv4Addr::new(224, 0, 0, 251),
            ] {
                let _ = sock.send_to(b"flood", SocketAddrV4::new(dst, 9999));
            }
        })
        .join()
        .expect("sender");
    };
    let receive = |ns: &str| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let h = spawn_in(ns, move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:9999").expect("bind receiver");
            sock.join_multicast_v4(&Ipv4Addr::new(224, 0, 0, 251), &Ipv4Addr::UNSPECIFIED)
                .ok();
            sock.set_read_timeout(Some(Duration::from_millis(800))).ok();
            ready_tx.send(()).ok();
            let mut got = 0;
            let mut buf = [0u8; 64];
            while sock.recv(&mut buf).is_ok() {
                got += 1;
            }
            got
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver");
        h
    };
    let receiver = receive(&late.netns);
    send_all(&sender);
    assert_eq!(receiver.join().expect("receiver"), 0, "nothing passed");

    // The loader stops, keeping the datapath; the ports stay isolated.
    let _ = daemon.stop();
    assert!(isolated(&host, &late.host_veth));
    let receiver = receive(&late.netns);
    send_all(&sender);
    assert_eq!(
        receiver.join().expect("receiver"),
        0,
        "nothing passed while the daemon is down"
    );
    // A normal stop gives the ports back: the next daemon (no --keep) adopts the state and,
    // when it stops, lifts the isolation it set.
    let daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0:icc=false"]);
    let _ = daemon.stop();
    assert!(
        !isolated(&host, &late.host_veth),
        "isolation lifted by a normal stop"
    );
}

/// `bpfnat down` for an instance left pinned by `--keep`, even when the test fails.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = crate::support::cli::bpfnat(&["--netns", &self.0, "down"]);
    }
}
