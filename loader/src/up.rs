//! `bpfnat up`: attach the datapath to a host's uplink and keep it running until a signal.

use std::{io::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{bail, Context as _};
use bpfnat_common::{Counter, Timeouts};
use log::{info, warn};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    addr::{Ipv4Net, PortRange},
    conntrack,
    datapath::{Datapath, LoadOptions, TcMode},
    expiry, iface,
    instance::InstanceLock,
    system,
};

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub uplink: String,
    pub bridge: String,
    /// Internal subnets; empty = the bridge's own IPv4 subnets.
    pub subnets: Vec<Ipv4Net>,
    pub port_range: Option<PortRange>,
    pub table_size: u32,
    pub tc_mode: TcMode,
    pub timeouts: Timeouts,
    pub sweep_interval: Duration,
    /// Print a status line every second.
    pub status: bool,
    /// Name of the pinned state directory (`/sys/fs/bpf/bpfnat/<instance>/`).
    pub instance: String,
}

/// How often the uplink's address is checked.
const ADDRESS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(opts: UpOptions) -> anyhow::Result<()> {
    // Before anything is claimed or attached: a signal from now on means a clean shutdown
    // (pins removed) instead of the default action (killed, pins left stale).
    let mut signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
    };
    system::require_root()?;
    system::ensure_bpffs()?;
    let uplink_index = iface::ifindex(&opts.uplink)?;
    iface::ifindex(&opts.bridge)?;

    let netlink = iface::netlink()?;
    let external = iface::primary_ipv4(&netlink, &opts.uplink)
        .await?
        .with_context(|| {
            format!(
                "uplink {:?} has no IPv4 address to masquerade with",
                opts.uplink
            )
        })?;
    let subnets = if opts.subnets.is_empty() {
        let nets: Vec<Ipv4Net> = iface::ipv4_addrs(&netlink, &opts.bridge)
            .await?
            .iter()
            .map(|a| a.network())
            .collect();
        if nets.is_empty() {
            bail!(
                "bridge {:?} has no IPv4 address; give the container subnet with --subnet",
                opts.bridge
            );
        }
        nets
    } else {
        opts.subnets.clone()
    };
    if let Some(net) = subnets.iter().find(|n| n.contains(external)) {
        bail!("uplink address {external} is inside internal subnet {net}: check --uplink and --subnet");
    }

    // Refuse early, before anything is loaded or attached, if the instance is held.
    let lock = InstanceLock::acquire(&opts.instance)?;
    let mut dp = Datapath::load_pinned(
        LoadOptions {
            table_size: opts.table_size,
        },
        lock.dir(),
    )?;
    if let Err(e) = dp.start_logging() {
        warn!("datapath log records unavailable: {e:#}");
    }
    dp.configure(external, opts.port_range, &opts.timeouts)?;
    for net in &subnets {
        dp.add_internal_subnet(*net)?;
    }
    let had_clsact = iface::has_clsact(&netlink, uplink_index).await?;
    let mode = dp.attach(&opts.uplink, opts.tc_mode)?;
    let subnet_list = subnets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    info!(
        "attached to {} ({mode:?}): masquerading {subnet_list} behind bridge {} as {external}",
        opts.uplink, opts.bridge
    );
    // The readiness line scripts and tests wait for.
    println!(
        "ready: uplink={} external={external} subnets={subnet_list} mode={mode:?} instance={}",
        opts.uplink, opts.instance
    );
    std::io::stdout().flush().ok();

    let result = serve(&mut dp, &opts, &netlink, external, &mut signals).await;

    drop(dp); // closes the TCX links / removes the cls_bpf filters
    if mode == TcMode::Clsact && !had_clsact {
        if let Err(e) = iface::delete_clsact(&netlink, uplink_index).await {
            warn!(
                "could not remove the clsact qdisc we added to {}: {e:#}",
                opts.uplink
            );
        }
    }
    info!("detached from {}", opts.uplink);
    if let Err(e) = lock.release() {
        warn!("pinned state: {e:#}");
    }
    println!("stopped");
    result
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

async fn serve(
    dp: &mut Datapath,
    opts: &UpOptions,
    netlink: &rtnetlink::Handle,
    external: Ipv4Addr,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    let mut sweep = tokio::time::interval(opts.sweep_interval);
    let mut status = tokio::time::interval(Duration::from_secs(1));
    let mut address_check = tokio::time::interval(ADDRESS_CHECK_INTERVAL);
    address_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = AddressWatch {
        current: Some(external),
        failing: false,
    };
    loop {
        tokio::select! {
            _ = signals.int.recv() => { info!("SIGINT: shutting down"); return Ok(()) }
            _ = signals.term.recv() => { info!("SIGTERM: shutting down"); return Ok(()) }
            _ = address_check.tick() => watch.check(dp, opts, netlink).await,
            _ = sweep.tick() => {
                match expiry::sweep(dp, &opts.timeouts, opts.sweep_interval * 2) {
                    Ok(r) if r.expired + r.orphans > 0 => info!("expired {} mappings, {} orphan halves", r.expired, r.orphans),
                    Ok(_) => {}
                    Err(e) => warn!("expiry sweep failed: {e:#}"),
                }
            }
            _ = status.tick(), if opts.status => {
                let shown = watch.current.unwrap_or(Ipv4Addr::UNSPECIFIED);
                println!("{}", status_line(dp, shown)?);
                std::io::stdout().flush().ok();
            }
        }
    }
}

/// Follows the uplink's primary IPv4 address, as MASQUERADE does: when it changes, the new
/// address goes to the datapath and every mapping made with another address is forgotten
/// (its replies would go to an address the host no longer has).
struct AddressWatch {
    /// The address in the datapath's configuration; None = the uplink has none.
    current: Option<Ipv4Addr>,
    /// The last check failed (logged once until it works again).
    failing: bool,
}

impl AddressWatch {
    async fn check(&mut self, dp: &mut Datapath, opts: &UpOptions, netlink: &rtnetlink::Handle) {
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

    fn apply(
        &mut self,
        dp: &mut Datapath,
        opts: &UpOptions,
        now: Option<Ipv4Addr>,
    ) -> anyhow::Result<()> {
        // New address first, then forget the old mappings: a flow that starts in between
        // already gets the new address and is kept.
        dp.set_external(now)?;
        let keep = now.map(|a| bpfnat_common::addr_to_map(a.octets()));
        let forgotten = {
            let mut tables = dp.tables()?;
            let n =
                conntrack::remove_where(&mut tables, &opts.timeouts, expiry::monotonic_ns(), |c| {
                    Some(c.out.addr) != keep
                });
            // Reply halves left by failed inserts would otherwise wait for the sweeper.
            conntrack::remove_orphans(
                &mut tables,
                conntrack::FLUSH_ORPHAN_GRACE,
                expiry::monotonic_ns(),
            );
            n
        };
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

/// One line: flows, translated packets each way, drops.
pub fn status_line(dp: &Datapath, external: Ipv4Addr) -> anyhow::Result<String> {
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
        "status: external={external} flows={flows} out={} in={} new={} drops={drops}",
        get(Counter::EgressTranslated),
        get(Counter::IngressTranslated),
        get(Counter::NewMappings),
    ))
}
