//! Configuration values given on the command line.

use anyhow::{anyhow, bail};
use bpfnat_common::Timeouts;

/// Timeout names accepted by `--timeout NAME=SECONDS`, with their field.
pub const TIMEOUT_NAMES: [&str; 12] = [
    "tcp_syn_sent",
    "tcp_syn_recv",
    "tcp_established",
    "tcp_fin_wait",
    "tcp_close_wait",
    "tcp_last_ack",
    "tcp_time_wait",
    "tcp_close",
    "udp_one_way",
    "udp_both_ways",
    "icmp",
    "generic",
];

fn timeout_field<'a>(t: &'a mut Timeouts, name: &str) -> Option<&'a mut u32> {
    Some(match name {
        "tcp_syn_sent" => &mut t.tcp_syn_sent,
        "tcp_syn_recv" => &mut t.tcp_syn_recv,
        "tcp_established" => &mut t.tcp_established,
        "tcp_fin_wait" => &mut t.tcp_fin_wait,
        "tcp_close_wait" => &mut t.tcp_close_wait,
        "tcp_last_ack" => &mut t.tcp_last_ack,
        "tcp_time_wait" => &mut t.tcp_time_wait,
        "tcp_close" => &mut t.tcp_close,
        "udp_one_way" => &mut t.udp_one_way,
        "udp_both_ways" => &mut t.udp_both_ways,
        "icmp" => &mut t.icmp,
        "generic" => &mut t.generic,
        _ => return None,
    })
}

/// Set one timeout by name.
pub fn set_timeout(t: &mut Timeouts, name: &str, secs: u32) -> anyhow::Result<()> {
    if secs == 0 {
        bail!("timeout {name} must be at least 1 second");
    }
    let field = timeout_field(t, name).ok_or_else(|| {
        anyhow!(
            "unknown timeout {name:?}; known: {}",
            TIMEOUT_NAMES.join(", ")
        )
    })?;
    *field = secs;
    Ok(())
}

/// The kernel's defaults overridden by `NAME=SECONDS` items.
pub fn parse_timeouts(items: &[String]) -> anyhow::Result<Timeouts> {
    let mut t = Timeouts::KERNEL;
    for item in items {
        let (name, secs) = item.split_once('=').ok_or_else(|| {
            anyhow!("bad timeout {item:?}: expected NAME=SECONDS, e.g. udp_one_way=30")
        })?;
        let secs: u32 = secs
            .trim()
            .parse()
            .map_err(|_| anyhow!("bad timeout {item:?}: {secs:?} is not a number of seconds"))?;
        set_timeout(&mut t, name.trim(), secs)?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_override_kernel_defaults() {
        let t = parse_timeouts(&["udp_one_way=3".into(), "tcp_time_wait=2".into()]).unwrap();
        assert_eq!(
            (t.udp_one_way, t.tcp_time_wait, t.tcp_established),
            (3, 2, 432_000)
        );
        for name in TIMEOUT_NAMES {
            let mut t = Timeouts::KERNEL;
            set_timeout(&mut t, name, 7).unwrap();
            assert_ne!(t, Timeouts::KERNEL, "{name} is not wired to a field");
        }
        for bad in ["udp=3", "udp_one_way", "udp_one_way=x", "icmp=0"] {
            assert!(parse_timeouts(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
