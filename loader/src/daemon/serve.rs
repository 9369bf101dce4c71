//! `bpfnat up`: attach the datapath to a host's uplink and keep it running until a signal.

use std::{io::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{bail, Context as _};
use bpfnat_common::Counter;
use futures::StreamExt as _;
use log::{info, warn};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    bpf::{
        datapath::{Datapath, LoadOptions, TcMode},
        instance::InstanceLock,
    },
    daemon::{
        bridge::{Bridge, PortWatcher},
        docker::{self, DockerState},
        docker_sync::DockerSync,
        settings::Settings,
    },
    host::{iface, system},
    table::{conntrack, expiry, publish},
    util::addr::Ipv4Net,
};
use bpfnat_common::{PublishKey, PublishTarget};

/// How often the uplink's address is checked.
const ADDRESS_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Mappings the sweeper looks at per slice, in each table.
const SWEEP_SLICE: usize = 32_768;
/// Pause between two slices of a pass, in multiples of the last slice's duration.
const SWEEP_PAUSE_FACTOR: u32 = 40;
/// How often the bridges' ports are looked for.
const PORT_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How long start-up waits for the Docker daemon's first answer before going on without it
/// (it is followed from then on all the same).
const DOCKER_FIRST_ANSWER: Duration = Duration::from_secs(5);

pub async fn run(opts: Settings) -> anyhow::Result<()> {
    // Before anything is claimed or attached: a signal from now on means a clean shutdown
    // (pins removed) instead of the default action (killed, pins left stale).
    let mut signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
    };
    system::require_root()?;
    system::ensure_bpffs()?;
    let uplink_index = iface::ifindex(&opts.uplink)?;
    for b in &opts.bridges {
        iface::ifindex(&b.name)?;
    }

    let netlink = iface::netlink()?;
    let external = iface::primary_ipv4(&netlink, &opts.uplink)
        .await?
        .with_context(|| {
            format!(
                "uplink {:?} has no IPv4 address to masquerade with",
                opts.uplink
            )
        })?;
    let links = iface::links(&netlink).await?;
    let mut bridges = Vec::new();
    for spec in &opts.bridges {
        bridges.push(Bridge::resolve(&netlink, &links, spec).await?);
    }
    crate::daemon::bridge::check_subnets(&bridges, Some(external))?;
    // Publishes are checked before anything is claimed or attached, against what will be
    // served.
    let served = crate::bpf::datapath::Served {
        nets: bridges
            .iter()
            .flat_map(|b| b.subnets.iter().map(|n| (*n, b.ifindex)))
            .collect(),
        bridges: bridges.iter().map(|b| (b.ifindex, b.info())).collect(),
        external: Some(external),
    };
    for spec in &opts.publish {
        served.check(spec)?;
    }

    // TCX links can be pinned, so the datapath can outlive this process and be adopted;
    // cls_bpf filters cannot.
    let tcx = opts.tc_mode.resolve() == TcMode::Tcx;
    if opts.keep && !tcx {
        bail!("--keep needs TCX links (Linux >= 6.6, --tc-mode auto or tcx): cls_bpf filters cannot be pinned");
    }
    let load = LoadOptions {
        table_size: opts.table_size,
    };
    let dir = crate::bpf::instance::dir(&opts.instance);
    if tcx
        && matches!(
            crate::bpf::instance::status_of(&dir)?,
            crate::bpf::instance::Status::Stale(_)
        )
    {
        // Before claiming: a misfit leaves the old state untouched.
        crate::bpf::datapath::check_pinned_maps(load, &dir, &opts.instance)?;
    }
    // Refuse early, before anything is loaded or attached, if the instance is held.
    let lock = InstanceLock::acquire_or_adopt(&opts.instance, tcx)?;
    let mut dp = Datapath::load_pinned(load, lock.dir())?;
    if let Err(e) = dp.start_logging() {
        warn!("datapath log records unavailable: {e:#}");
    }
    // An adopted table may translate to the address the uplink had under the previous owner.
    let previous = lock
        .adopted()
        .then(|| dp.config().map(|c| c.external_addr).unwrap_or(0))
        .filter(|&a| a != 0 && a != bpfnat_common::addr_to_map(external.octets()));
    dp.configure(external, opts.port_range, &opts.timeouts)?;
    // IPv6: the uplink's global address, if it has one (NAT66 masquerade; none: no IPv6 is
    // translated, and the address watch picks one up when it comes).
    let external6 = iface::ipv6_global_addrs(&netlink, &opts.uplink)
        .await?
        .first()
        .map(|(a, _)| *a);
    dp.set_external6(external6)?;
    if let Some(old) = previous {
        let forgotten = forget_other_addresses(&mut dp, &opts, Some(external))?;
        info!(
            "the adopted table translated to {}, the uplink now has {external}: {forgotten} \
             mappings forgotten",
            Ipv4Addr::from(old.to_ne_bytes())
        );
    }
    // Internal bridges' subnets are listed too: the port program needs them to learn their
    // containers, keep their traffic on the bridge and isolate them from the other bridges.
    // It drops what an internal bridge sends towards the outside, so none of it reaches the
    // uplink to be masqueraded.
    for b in &bridges {
        dp.add_bridge(b.ifindex, b.info(), &b.subnets)?;
        dp.add_bridge_nets6(b.ifindex, &b.subnets6)?;
    }
    let had_clsact = iface::has_clsact(&netlink, uplink_index).await?;
    let mode = dp.attach(&opts.uplink, opts.tc_mode)?;
    for spec in &opts.publish {
        publish::add(&mut dp.publish_map()?, None, spec)?;
    }
    for spec in &opts.publish6 {
        for (key, target) in spec.entries() {
            dp.publish6(key, target)?;
        }
    }
    let mut ports = PortWatcher::new(&bridges, uplink_index, mode);
    // Docker's networks are served before anything is pruned after an adoption: their ports
    // are then ours already, and keep their pinned links and their containers.
    let mut docker = match &opts.docker {
        Some(url) => {
            let fixed_publishes = opts
                .publish
                .iter()
                .flat_map(|p| p.entries().into_iter().map(|(k, _)| k))
                .collect();
            let mut follower = DockerFollower {
                states: docker::follow(url.clone()),
                sync: DockerSync::new(
                    &bridges,
                    fixed_publishes,
                    opts.publish6
                        .iter()
                        .flat_map(|p| p.entries().into_iter().map(|(k, _)| k))
                        .collect(),
                ),
            };
            // Start-up serves what runs already, before the readiness line.
            let first = tokio::time::timeout(
                DOCKER_FIRST_ANSWER,
                follower.states.wait_for(Option::is_some),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            match first {
                true => {
                    follower
                        .apply(&mut dp, &mut ports, &netlink, Some(external), &opts)
                        .await
                }
                false => warn!(
                    "no answer from the Docker daemon at {url} yet: serving its networks as \
                     soon as it answers"
                ),
            }
            Some(follower)
        }
        None => None,
    };

    ports.apply(&mut dp, &netlink, &links).await;
    if lock.adopted() {
        let uplink_pins: Vec<_> = [
            aya::programs::TcAttachType::Egress,
            aya::programs::TcAttachType::Ingress,
        ]
        .into_iter()
        .map(|hook| crate::bpf::datapath::link_pin_path(lock.dir(), &opts.uplink, hook))
        .collect();
        ports.prune(&mut dp, &uplink_pins);
        forget_internal_publishes(&mut dp, &bridges)?;
        let served: Vec<u32> = bridges
            .iter()
            .chain(docker.iter().flat_map(|d| d.sync.bridges()))
            .map(|b| b.ifindex)
            .collect();
        let gone = dp.retain_bridges(&served)?;
        if !gone.is_empty() {
            let mut tables = dp.tables()?;
            let now = crate::table::timeouts::monotonic_ns();
            let removed = conntrack::remove_where(&mut tables, &opts.timeouts, now, |c| {
                let src = Ipv4Addr::from(c.original.src_addr.to_ne_bytes());
                gone.iter().any(|n| n.contains(src))
            });
            info!(
                "no longer serving subnets {} of the previous run: {removed} mappings removed",
                gone.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
    }
    ports.assign_addresses(&mut dp, &links).await;

    let masqueraded: Vec<String> = bridges
        .iter()
        .filter(|b| !b.internal)
        .flat_map(|b| b.subnets.iter().map(ToString::to_string))
        .collect();
    let described: Vec<String> = bridges
        .iter()
        .map(|b| {
            let nets: Vec<String> = b.subnets.iter().map(ToString::to_string).collect();
            format!(
                "{} ({}{}{})",
                b.name,
                nets.join(","),
                if b.internal { ", internal" } else { "" },
                if b.icc { "" } else { ", icc off" }
            )
        })
        .collect();
    info!(
        "attached to {} ({mode:?}) as {external}: bridges {}; {} ports, {} published ports",
        opts.uplink,
        described.join(", "),
        ports.len(),
        opts.publish
            .iter()
            .map(|p| p.entries().len())
            .sum::<usize>()
    );
    // Bound before the readiness line: a taken address is a start-up error.
    let metrics = match opts.metrics {
        Some(addr) => Some(crate::daemon::metrics::bind(addr).await?),
        None => None,
    };
    let _metrics_task = metrics.map(|l| {
        AbortOnDrop(tokio::spawn(crate::daemon::metrics::serve(
            l,
            opts.instance.clone(),
        )))
    });
    // The readiness line scripts and tests wait for.
    println!(
        "ready: uplink={} external={external} subnets={} mode={mode:?} instance={} bridges={} ports={} adopted={} docker={}",
        opts.uplink,
        masqueraded.join(","),
        opts.instance,
        bridges
            .iter()
            .chain(docker.iter().flat_map(|d| d.sync.bridges()))
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        ports.len(),
        lock.adopted(),
        opts.docker.as_deref().unwrap_or("off")
    );
    std::io::stdout().flush().ok();

    let result = serve(
        &mut dp,
        &mut ports,
        docker.as_mut(),
        &opts,
        &netlink,
        external,
        &mut signals,
    )
    .await;

    if opts.keep {
        // Nothing is detached or unlisted: the pinned links keep the programs running with
        // the pinned maps.
        ports.shutdown(&mut dp, &netlink, true).await;
        drop(dp);
        lock.keep();
        println!("stopped (pinned state kept: the datapath keeps running)");
        return result;
    }
    // Ports first: their links are ours, not the datapath's.
    ports.shutdown(&mut dp, &netlink, false).await;
    drop(dp); // closes the TCX links / removes the cls_bpf filters
              // Removing the pins lets go of the pinned links: the programs detach.
    if let Err(e) = lock.release() {
        warn!("pinned state: {e:#}");
    }
    if mode == TcMode::Clsact && !had_clsact {
        if let Err(e) = iface::delete_clsact(&netlink, uplink_index).await {
            warn!(
                "could not remove the clsact qdisc we added to {}: {e:#}",
                opts.uplink
            );
        }
    }
    info!("detached from {}", opts.uplink);
    println!("stopped");
    result
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

/// The Docker daemon's state as it comes, and what of it is applied.
struct DockerFollower {
    states: tokio::sync::watch::Receiver<Option<DockerState>>,
    sync: DockerSync,
}

impl DockerFollower {
    /// Apply the latest state, then attach the ports of bridges served since and give them
    /// their containers' addresses.
    async fn apply(
        &mut self,
        dp: &mut Datapath,
        ports: &mut PortWatcher,
        netlink: &rtnetlink::Handle,
        external: Option<Ipv4Addr>,
        opts: &Settings,
    ) {
        let state = self.states.borrow_and_update().clone();
        if let Some(state) = state {
            self.sync
                .apply(&state, dp, ports, netlink, external, &opts.timeouts)
                .await;
            ports.rescan(dp, netlink).await;
        }
    }

    /// The next change of Docker's state (never, once the follower has stopped).
    async fn changed(follower: Option<&mut Self>) {
        if let Some(f) = follower {
            if f.states.changed().await.is_ok() {
                return;
            }
        }
        std::future::pending().await
    }
}

async fn serve(
    dp: &mut Datapath,
    ports: &mut PortWatcher,
    mut docker: Option<&mut DockerFollower>,
    opts: &Settings,
    netlink: &rtnetlink::Handle,
    external: Ipv4Addr,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    // Expiry in slices (see `expiry::Sweeper`): a pass starts every sweep interval; while a
    // pass is under way the next slice follows after SWEEP_PAUSE_FACTOR times the last
    // slice's duration, so a huge table costs at most about 2.5 % of a core (a pass over a
    // million idle mappings then takes about a minute: expiry is that much late, as the
    // kernel's own conntrack GC lags on huge tables) and never delays a signal long.
    let mut sweeper = expiry::Sweeper::default();
    let mut next_sweep = tokio::time::Instant::now() + opts.sweep_interval;
    let mut status = tokio::time::interval(Duration::from_secs(1));
    let mut address_check = tokio::time::interval(ADDRESS_CHECK_INTERVAL);
    address_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut port_scan = tokio::time::interval(PORT_SCAN_INTERVAL);
    port_scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = AddressWatch {
        current: Some(external),
        current6: dp
            .config()
            .ok()
            .map(|c| c.external_addr6)
            .filter(|a| *a != [0; 4])
            .map(|a| std::net::Ipv6Addr::from(bpfnat_common::addr6_from_map(a))),
        failing: false,
    };
    // Link events: a new port is served (and checked, and isolated) as soon as it joins a
    // bridge, not up to a scan interval later; the interval stays as a safety net.
    let mut link_events = link_events()?;
    loop {
        tokio::select! {
            Some(_) = link_events.next() => {
                // A burst of events (a container starting) is one rescan.
                while link_events.try_recv().is_ok() {}
                ports.rescan(dp, netlink).await;
                // A Docker network whose bridge was not there yet may be now.
                if let Some(d) = docker.as_deref_mut().filter(|d| d.sync.pending()) {
                    d.states.mark_changed();
                }
            }
            () = DockerFollower::changed(docker.as_deref_mut()) => {
                if let Some(d) = docker.as_deref_mut() {
                    d.apply(dp, ports, netlink, watch.current, opts).await;
                }
            }
            _ = signals.int.recv() => { info!("SIGINT: shutting down"); return Ok(()) }
            _ = signals.term.recv() => { info!("SIGTERM: shutting down"); return Ok(()) }
            _ = address_check.tick() => watch.check(dp, opts, netlink).await,
            _ = port_scan.tick() => {
                ports.rescan(dp, netlink).await;
                if let Some(d) = docker.as_deref_mut().filter(|d| d.sync.pending()) {
                    d.states.mark_changed();
                }
            }
            _ = tokio::time::sleep_until(next_sweep) => {
                let started = tokio::time::Instant::now();
                let swept = dp.tables().and_then(|mut tables| {
                    sweeper.step(&mut tables, &opts.timeouts, opts.sweep_interval * 2, SWEEP_SLICE)
                });
                match swept {
                    Ok(r) if r.expired + r.orphans + r.repaired > 0 => info!("expired {} mappings, {} orphan halves; repaired {} mappings missing their reply half", r.expired, r.orphans, r.repaired),
                    Ok(_) => {}
                    Err(e) => warn!("expiry sweep failed: {e:#}"),
                }
                if !sweeper.mid_pass() {
                    // The IPv6 table, whole, with every pass.
                    match dp.tables6() {
                        Ok(mut t6) => {
                            let now = crate::table::timeouts::monotonic_ns();
                            let (expired, orphans) =
                                crate::table::conntrack6::sweep6(&mut t6, &opts.timeouts, now);
                            if expired + orphans > 0 {
                                info!("expired {expired} IPv6 mappings, {orphans} orphan halves");
                            }
                        }
                        Err(e) => warn!("IPv6 expiry sweep failed: {e:#}"),
                    }
                    // Hairpin connections age with every pass (their tables are small).
                    sweep_hairpin_logged(dp.hairpin_map(), &opts.timeouts, "hairpin");
                    sweep_hairpin_logged(dp.hairpin6_map(), &opts.timeouts, "IPv6 hairpin");
                }
                next_sweep = if sweeper.mid_pass() {
                    tokio::time::Instant::now() + (started.elapsed() * SWEEP_PAUSE_FACTOR).max(Duration::from_millis(50))
                } else {
                    started + opts.sweep_interval
                };
            }
            _ = status.tick(), if opts.status => {
                let shown = watch.current.unwrap_or(Ipv4Addr::UNSPECIFIED);
                println!("{}", status_line(dp, shown)?);
                std::io::stdout().flush().ok();
            }
        }
    }
}

/// After adopting pinned state: unpublish the ports that lead into a bridge that is now
/// internal (nothing of an internal network is reachable from outside; the datapath refuses
/// them anyway, this keeps `publish list` truthful).
/// One expiry pass over a hairpin table of either family (`what` names it in the log).
fn sweep_hairpin_logged<E: expiry::HairpinDirection>(
    map: anyhow::Result<aya::maps::HashMap<&mut aya::maps::MapData, E::Key, E>>,
    timeouts: &bpfnat_common::Timeouts,
    what: &str,
) {
    match map {
        Ok(mut map) => {
            let n = expiry::sweep_hairpin(&mut map, timeouts);
            if n > 0 {
                info!("expired {n} {what} connections");
            }
        }
        Err(e) => warn!("{what} expiry failed: {e:#}"),
    }
}

fn forget_internal_publishes(dp: &mut Datapath, bridges: &[Bridge]) -> anyhow::Result<()> {
    let internal: Vec<Ipv4Net> = bridges
        .iter()
        .filter(|b| b.internal)
        .flat_map(|b| b.subnets.iter().copied())
        .collect();
    if internal.is_empty() {
        return Ok(());
    }
    let mut map = dp.publish_map()?;
    let doomed: Vec<(PublishKey, PublishTarget)> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, t)| {
            let addr = Ipv4Addr::from(t.addr.to_ne_bytes());
            internal.iter().any(|n| n.contains(addr))
        })
        .collect();
    for (key, target) in doomed {
        if map.remove(&key).is_ok() {
            warn!(
                "unpublished host port {} ({}): it leads to {}, on a bridge that is now internal",
                u16::from_be(key.host_port),
                crate::util::addr::proto_name(key.proto),
                Ipv4Addr::from(target.addr.to_ne_bytes())
            );
        }
    }
    Ok(())
}

/// Netlink messages announcing link changes, as the connection hands them over.
type LinkEvents = futures::channel::mpsc::UnboundedReceiver<(
    netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
    netlink_sys::SocketAddr,
)>;

/// Link changes in the current namespace (`RTMGRP_LINK`).
fn link_events() -> anyhow::Result<LinkEvents> {
    use netlink_sys::{AsyncSocket as _, SocketAddr};
    let (mut connection, _handle, messages) =
        rtnetlink::new_connection().context("opening an rtnetlink socket for link events")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))
        .context("subscribing to link events")?;
    tokio::spawn(connection);
    Ok(messages)
}

/// Follows the uplink's primary IPv4 address, as MASQUERADE does: when it changes, the new
/// address goes to the datapath and every mapping made with another address is forgotten
/// (its replies would go to an address the host no longer has).
struct AddressWatch {
    /// The address in the datapath's configuration; None = the uplink has none.
    current: Option<Ipv4Addr>,
    /// Its global IPv6 address in the configuration (None: none, no IPv6 translated).
    current6: Option<std::net::Ipv6Addr>,
    /// The last check failed (logged once until it works again).
    failing: bool,
}

impl AddressWatch {
    async fn check(&mut self, dp: &mut Datapath, opts: &Settings, netlink: &rtnetlink::Handle) {
        self.check6(dp, opts, netlink).await;
        let now = match iface::primary_ipv4(netlink, &opts.uplink).await {
            Ok(addr) => {
                self.failing = false;
                addr
            }
            Err(e) => {
                if !self.failing {
                    warn!("cannot read the address of {}: {e:#}", opts.uplink);
                    self.failing = true;
                }
                return;
            }
        };
        if now == self.current {
            return;
        }
        if let Err(e) = self.apply(dp, opts, now) {
            // Tried again at the next check: `current` is unchanged.
            warn!("uplink {} address change not applied: {e:#}", opts.uplink);
        }
    }

    /// The IPv6 address: as for IPv4, the new one for new flows, the old one's mappings
    /// forgotten.
    async fn check6(&mut self, dp: &mut Datapath, opts: &Settings, netlink: &rtnetlink::Handle) {
        let Ok(addrs) = iface::ipv6_global_addrs(netlink, &opts.uplink).await else {
            return; // the IPv4 check reports a failing uplink
        };
        // The current one while the uplink still has it: a second address does not move
        // the flows.
        let now = match self.current6 {
            Some(a) if addrs.iter().any(|(x, _)| *x == a) => Some(a),
            _ => addrs.first().map(|(a, _)| *a),
        };
        if now == self.current6 {
            return;
        }
        if let Err(e) = dp.set_external6(now) {
            warn!(
                "uplink {} IPv6 address change not applied: {e:#}",
                opts.uplink
            );
            return;
        }
        let keep = now.map(|a| bpfnat_common::addr6_to_map(a.octets()));
        let forgotten = dp.tables6().map_or(0, |mut t6| {
            crate::table::conntrack6::remove6_where(
                &mut t6,
                &opts.timeouts,
                crate::table::timeouts::monotonic_ns(),
                |c| Some(c.out.addr) != keep,
            )
        });
        let show = |a: Option<std::net::Ipv6Addr>| a.map_or("none".to_owned(), |a| a.to_string());
        info!(
            "uplink {} IPv6 address changed from {} to {}: {forgotten} IPv6 mappings forgotten",
            opts.uplink,
            show(self.current6),
            show(now)
        );
        self.current6 = now;
    }

    fn apply(
        &mut self,
        dp: &mut Datapath,
        opts: &Settings,
        now: Option<Ipv4Addr>,
    ) -> anyhow::Result<()> {
        // New address first, then forget the old mappings: a flow that starts in between
        // already gets the new address and is kept.
        dp.set_external(now)?;
        let forgotten = forget_other_addresses(dp, opts, now)?;
        let show = |a: Option<Ipv4Addr>| a.map_or("none".to_owned(), |a| a.to_string());
        info!(
            "uplink {} address changed from {} to {}: {}, {forgotten} mappings forgotten",
            opts.uplink,
            show(self.current),
            show(now),
            if now.is_some() {
                "new flows use the new address"
            } else {
                "translating nothing until it has one"
            }
        );
        self.current = now;
        Ok(())
    }
}

/// Remove the mappings that translate to another address than `keep` (all of them when the
/// uplink has none): their packets would leave with an address the host no longer has, and
/// their replies would never come. Returns how many were removed.
fn forget_other_addresses(
    dp: &mut Datapath,
    opts: &Settings,
    keep: Option<Ipv4Addr>,
) -> anyhow::Result<u64> {
    let keep = keep.map(|a| bpfnat_common::addr_to_map(a.octets()));
    let mut tables = dp.tables()?;
    let now = crate::table::timeouts::monotonic_ns();
    let n = conntrack::remove_where(&mut tables, &opts.timeouts, now, |c| {
        Some(c.out.addr) != keep
    });
    // Reply halves left by failed inserts would otherwise wait for the sweeper.
    conntrack::remove_orphans(&mut tables, conntrack::FLUSH_ORPHAN_GRACE, now);
    Ok(n)
}

/// One line: flows, translated packets each way, drops.
pub(crate) fn status_line(dp: &Datapath, external: Ipv4Addr) -> anyhow::Result<String> {
    let flows = dp.nat_out()?.keys().filter(Result::is_ok).count();
    let counters = dp.counters()?;
    let get = |c: Counter| {
        counters
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, v)| *v)
    };
    let drops: u64 = counters
        .iter()
        .filter(|(c, _)| c.name().starts_with("drop_"))
        .map(|(_, v)| v)
        .sum();
    Ok(format!(
        "status: external={external} flows={flows} out={} in={} new={} fwd={} drops={drops}",
        get(Counter::EgressTranslated),
        get(Counter::IngressTranslated),
        get(Counter::NewMappings),
        get(Counter::Forwarded),
    ))
}

/// Stops a background task when the daemon leaves `run`.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
