//! `bpfnat up`: attach the datapath to a host's uplink and keep it running until a signal.

use std::{io::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{bail, Context as _};
use bpfnat_common::{Counter, Timeouts};
use log::{info, warn};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    addr::{Ipv4Net, PortRange},
    datapath::{Datapath, LoadOptions, TcMode},
    expiry, iface, system,
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
}

pub async fn run(opts: UpOptions) -> anyhow::Result<()> {
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

    let mut dp = Datapath::load(LoadOptions {
        table_size: opts.table_size,
    })?;
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
        "ready: uplink={} external={external} subnets={subnet_list} mode={mode:?}",
        opts.uplink
    );
    std::io::stdout().flush().ok();

    let result = serve(&mut dp, &opts, external).await;

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
    println!("stopped");
    result
}

async fn serve(dp: &mut Datapath, opts: &UpOptions, external: Ipv4Addr) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sweep = tokio::time::interval(opts.sweep_interval);
    let mut status = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: shutting down"); return Ok(()) }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); return Ok(()) }
            _ = sweep.tick() => {
                match expiry::sweep(dp, &opts.timeouts, opts.sweep_interval * 2) {
                    Ok(r) if r.expired + r.orphans > 0 => info!("expired {} mappings, {} orphan halves", r.expired, r.orphans),
                    Ok(_) => {}
                    Err(e) => warn!("expiry sweep failed: {e:#}"),
                }
            }
            _ = status.tick(), if opts.status => {
                println!("{}", status_line(dp, external)?);
                std::io::stdout().flush().ok();
            }
        }
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
