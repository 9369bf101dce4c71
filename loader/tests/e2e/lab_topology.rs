//! Builds small labs in throwaway namespaces and checks them with `ip` and
//! `ping`. Needs root; skipped otherwise.
//!
//! Every test uses its own namespace names (prefix `bnt-tN-`) and its own
//! addresses, so tests can run in parallel and alongside a user's default lab.

use crate::support::require_root;

use std::{net::Ipv4Addr, process::Command};

use bpfnat::{
    host::lab::{self, ContainerSpec, LabSpec},
    host::netns,
};

/// Tears the lab down when the test ends, pass or fail.
struct LabGuard(LabSpec);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(err) = lab::down(&self.0) {
            eprintln!("cleanup of test lab failed: {err:#}");
        }
    }
}

/// A two-container lab with names unique to test number `test`:
/// containers 10.99.<test>.0/24, uplink 192.0.2.<4*test>/30-ish, remote
/// 198.51.100.77.
fn test_spec(test: u8) -> LabSpec {
    let prefix = format!("bnt-t{test}");
    let mut first = ContainerSpec::new(&format!("{prefix}-c1"), Ipv4Addr::new(10, 99, test, 2));
    first.host_veth = "veth-c1".to_owned();
    let mut second = ContainerSpec::new(&format!("{prefix}-c2"), Ipv4Addr::new(10, 99, test, 3));
    second.host_veth = "veth-c2".to_owned();
    LabSpec {
        host_netns: format!("{prefix}-h"),
        wan_netns: format!("{prefix}-w"),
        bridge: "bntbr0".to_owned(),
        bridge_addr: Ipv4Addr::new(10, 99, test, 1),
        subnet_prefix_len: 24,
        uplink: "up0".to_owned(),
        uplink_addr: Ipv4Addr::new(192, 0, 2, 2),
        wan_iface: "wan0".to_owned(),
        wan_addr: Ipv4Addr::new(192, 0, 2, 1),
        uplink_prefix_len: 24,
        remote_server: Ipv4Addr::new(198, 51, 100, 77),
        containers: vec![first, second],
        ipv6: None,
    }
}

/// Starts from a clean slate (a previous crashed run may have left the
/// namespaces) and returns the guard that cleans up afterwards.
fn fresh_lab(spec: LabSpec) -> LabGuard {
    lab::down(&spec).expect("pre-test cleanup");
    LabGuard(spec)
}

fn ping(netns: &str, target: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "ping",
            "-c1",
            "-W1",
            "-q",
            &target.to_string(),
        ])
        .output()
        .expect("running ip netns exec ping")
        .status
        .success()
}

fn ip_output(netns: &str, args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        output.status.success(),
        "ip -n {netns} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run_ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn netns_listed(name: &str) -> bool {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running ip netns list");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

fn assert_connectivity(spec: &LabSpec) {
    for container in &spec.containers {
        assert!(
            ping(&container.netns, spec.bridge_addr),
            "{} cannot reach the bridge",
            container.netns
        );
        assert!(
            ping(&spec.host_netns, container.addr),
            "host cannot reach {}",
            container.netns
        );
    }
    let (first, second) = (&spec.containers[0], &spec.containers[1]);
    assert!(
        ping(&first.netns, second.addr),
        "containers cannot reach each other"
    );
    assert!(
        ping(&spec.host_netns, spec.wan_addr),
        "host cannot reach the WAN peer"
    );
    assert!(
        ping(&spec.host_netns, spec.remote_server),
        "host cannot reach the remote server"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn up_builds_a_working_lab() {
    let _slot = require_root();
    let guard = fresh_lab(test_spec(1));
    let spec = &guard.0;
    lab::up(spec).expect("lab up");

    for name in spec.namespaces() {
        assert!(netns::exists(name), "{name} missing");
        assert!(netns_listed(name), "`ip netns list` does not show {name}");
        assert!(
            ip_output(name, &["link", "show", "lo"]).contains("UP"),
            "lo down in {name}"
        );
    }
    assert_eq!(
        netns::read_sysctl(&spec.host_netns, "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    let bridge_ports = ip_output(&spec.host_netns, &["link", "show", "master", &spec.bridge]);
    assert!(
        bridge_ports.contains("veth-c1") && bridge_ports.contains("veth-c2"),
        "{bridge_ports}"
    );
    let container_routes = ip_output(&spec.containers[0].netns, &["route", "show", "default"]);
    assert!(
        container_routes.contains("via 10.99.1.1"),
        "{container_routes}"
    );
    let host_routes = ip_output(&spec.host_netns, &["route", "show", "default"]);
    assert!(
        host_routes.contains("via 192.0.2.1 dev up0"),
        "{host_routes}"
    );
    assert!(ip_output(&spec.wan_netns, &["addr", "show", "lo"]).contains("198.51.100.77/32"));
    // Fixed MACs, so a rebuilt interface keeps the one its neighbours cached.
    assert!(ip_output(&spec.host_netns, &["link", "show", "bntbr0"]).contains("02:42:0a:63:01:01"));
    assert!(
        ip_output(&spec.containers[0].netns, &["link", "show", "eth0"])
            .contains("02:42:0a:63:01:02")
    );

    assert_connectivity(spec);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn wan_has_no_route_back_to_the_containers() {
    let _slot = require_root();
    let guard = fresh_lab(test_spec(2));
    let spec = &guard.0;
    lab::up(spec).expect("lab up");

    let routes = ip_output(&spec.wan_netns, &["-4", "route", "show"]);
    assert!(
        !routes.contains("10.99.2.") && !routes.contains("default"),
        "unexpected WAN routes:\n{routes}"
    );
    let lookup = Command::new("ip")
        .args(["-n", &spec.wan_netns, "route", "get", "10.99.2.2"])
        .output()
        .expect("running ip route get");
    assert!(
        !lookup.status.success(),
        "WAN can route to the containers: {}",
        String::from_utf8_lossy(&lookup.stdout)
    );

    // Without NAT the request gets out but the reply has nowhere to go.
    assert!(
        ping(&spec.host_netns, spec.remote_server),
        "host cannot reach the remote server"
    );
    assert!(
        !ping(&spec.containers[0].netns, spec.remote_server),
        "container reached the remote server without NAT"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn up_is_idempotent_and_repairs_a_damaged_lab() {
    let _slot = require_root();
    let guard = fresh_lab(test_spec(3));
    let spec = &guard.0;
    lab::up(spec).expect("first lab up");
    let host_links_before = ip_output(&spec.host_netns, &["-o", "link", "show"]);
    lab::up(spec).expect("second lab up");
    assert_eq!(
        ip_output(&spec.host_netns, &["-o", "link", "show"]),
        host_links_before,
        "a second up over a complete lab changed the host's links"
    );

    // Damage: one container namespace gone, the uplink address removed.
    let lost = &spec.containers[1];
    run_ip(&["netns", "delete", &lost.netns]);
    run_ip(&[
        "-n",
        &spec.host_netns,
        "addr",
        "del",
        "192.0.2.2/24",
        "dev",
        "up0",
    ]);
    lab::up(spec).expect("repairing lab up");
    assert!(netns::exists(&lost.netns));
    assert!(ip_output(&spec.host_netns, &["addr", "show", "up0"]).contains("192.0.2.2/24"));
    assert_connectivity(spec);

    // Damage as a crash mid-build leaves it: a namespace file that was never
    // mounted, a veth whose peer was never moved out of the host namespace,
    // and a missing bridge address.
    let stale = netns::netns_path(&spec.containers[0].netns).unwrap();
    netns::delete(&spec.containers[0].netns).unwrap();
    std::fs::File::create(&stale).unwrap();
    assert!(!netns::exists(&spec.containers[0].netns));
    run_ip(&["-n", &spec.wan_netns, "link", "del", "wan0"]);
    run_ip(&[
        "-n",
        &spec.host_netns,
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "bntstray",
    ]);
    run_ip(&[
        "-n",
        &spec.host_netns,
        "addr",
        "del",
        "10.99.3.1/24",
        "dev",
        "bntbr0",
    ]);
    lab::up(spec).expect("repairing lab up after a simulated crash");
    assert!(netns::exists(&spec.containers[0].netns));
    let host_links = ip_output(&spec.host_netns, &["link", "show"]);
    assert!(
        !host_links.contains("bntstray"),
        "stray veth end survived:\n{host_links}"
    );
    assert_connectivity(spec);
}

/// The default lab's exact interface names and addresses, in namespaces
/// renamed so the test cannot collide with a user's real lab.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn default_lab_addressing_works() {
    let _slot = require_root();
    let mut spec = LabSpec::default_lab();
    spec.host_netns = "bnt-t7-h".to_owned();
    spec.wan_netns = "bnt-t7-w".to_owned();
    for (index, container) in spec.containers.iter_mut().enumerate() {
        container.netns = format!("bnt-t7-c{}", index + 1);
    }
    let guard = fresh_lab(spec);
    let spec = &guard.0;
    lab::up(spec).expect("lab up");

    let host_links = ip_output(&spec.host_netns, &["link", "show"]);
    for ifname in ["docker1", "veth-ns1", "veth-ns2", "ens5"] {
        assert!(
            host_links.contains(&format!(": {ifname}")),
            "{ifname} missing:\n{host_links}"
        );
    }
    assert!(
        ip_output(&spec.containers[0].netns, &["addr", "show", "eth0"]).contains("172.18.0.2/24")
    );
    assert!(
        ip_output(&spec.containers[1].netns, &["addr", "show", "eth0"]).contains("172.18.0.3/24")
    );
    assert!(ping(
        &spec.containers[0].netns,
        Ipv4Addr::new(172, 18, 0, 1)
    ));
    assert!(ping(
        &spec.containers[1].netns,
        Ipv4Addr::new(172, 18, 0, 2)
    ));
    assert!(ping(&spec.host_netns, Ipv4Addr::new(203, 0, 113, 1)));
    assert!(ping(&spec.host_netns, Ipv4Addr::new(198, 51, 100, 1)));
    assert!(
        !ping(&spec.containers[0].netns, Ipv4Addr::new(198, 51, 100, 1)),
        "reached the remote without NAT"
    );
    assert!(!ip_output(&spec.wan_netns, &["route", "show"]).contains("172.18.0"));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn down_removes_every_namespace() {
    let _slot = require_root();
    let guard = fresh_lab(test_spec(4));
    let spec = &guard.0;
    lab::up(spec).expect("lab up");
    lab::down(spec).expect("lab down");
    for name in spec.namespaces() {
        assert!(!netns::exists(name), "{name} still exists");
        assert!(!netns_listed(name), "`ip netns list` still shows {name}");
        assert!(
            !netns::netns_path(name).unwrap().exists(),
            "{name} file left behind"
        );
    }
    lab::down(spec).expect("down over an absent lab");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn tx_checksum_round_trip() {
    let _slot = require_root();
    let mut spec = test_spec(5);
    spec.containers[0].tx_checksum = false;
    let guard = fresh_lab(spec);
    let spec = &guard.0;
    lab::up(spec).expect("lab up");

    let (off, on) = (&spec.containers[0], &spec.containers[1]);
    assert!(
        !netns::tx_checksum(&off.netns, &off.ifname).unwrap(),
        "spec asked for tx checksum off"
    );
    assert!(netns::tx_checksum(&on.netns, &on.ifname).unwrap());

    netns::set_tx_checksum(&on.netns, &on.ifname, false).unwrap();
    assert!(!netns::tx_checksum(&on.netns, &on.ifname).unwrap());
    let features = Command::new("ip")
        .args(["netns", "exec", &on.netns, "ethtool", "-k", &on.ifname])
        .output();
    // ethtool is optional on the machine; when present it must agree.
    if let Ok(output) = features {
        if output.status.success() {
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(text.contains("tx-checksumming: off"), "{text}");
        }
    }
    netns::set_tx_checksum(&on.netns, &on.ifname, true).unwrap();
    assert!(netns::tx_checksum(&on.netns, &on.ifname).unwrap());

    // up re-applies the spec's choice.
    netns::set_tx_checksum(&off.netns, &off.ifname, true).unwrap();
    lab::up(spec).expect("second lab up");
    assert!(!netns::tx_checksum(&off.netns, &off.ifname).unwrap());

    assert!(netns::set_tx_checksum(&off.netns, "nosuchif0", false).is_err());
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn netns_primitives() {
    let _slot = require_root();
    let name = "bnt-t6-x";
    let spec = LabSpec {
        containers: Vec::new(),
        ..test_spec(6)
    };
    let _guard = LabGuard(LabSpec {
        host_netns: name.to_owned(),
        ..spec
    });
    netns::delete(name).unwrap();
    assert!(!netns::exists(name));
    netns::create(name).unwrap();
    netns::create(name).unwrap();
    assert!(netns::exists(name));

    // Threads in the namespace see its (lo-only) link table, not the root
    // one. (/proc/net is /proc/self/net, i.e. the *main* thread's namespace.)
    let links = netns::run_in(name, || {
        Ok(std::fs::read_to_string("/proc/thread-self/net/dev")?)
    })
    .unwrap();
    assert_eq!(
        links.lines().filter(|line| line.contains(':')).count(),
        1,
        "{links}"
    );
    // enter() moves only the calling thread.
    let entered = std::thread::spawn(move || {
        netns::enter(name).unwrap();
        std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(
        entered.lines().filter(|line| line.contains(':')).count(),
        1,
        "{entered}"
    );
    netns::sysctl(name, "net/ipv4/ip_forward", "1").unwrap();
    assert_eq!(
        netns::read_sysctl(name, "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    assert!(netns::sysctl(name, "../../etc/passwd", "x").is_err());

    // A panicking closure is an error, not a crashed test binary.
    let panicked = netns::run_in(name, || -> anyhow::Result<()> { panic!("boom") });
    assert!(format!("{:#}", panicked.unwrap_err()).contains("boom"));

    assert!(netns::create("../escape").is_err());
    assert!(netns::run_in("bnt-t6-absent", || Ok(())).is_err());

    netns::delete(name).unwrap();
    netns::delete(name).unwrap();
    assert!(!netns::exists(name));
}
