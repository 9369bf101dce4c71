//! `bpfnat conntrack list|flush|delete`: the connection table of a running instance, as
//! conntrack(8) shows it.

use crate::{
    bpf::instance::PinnedMaps,
    table::{
        conntrack::{self, Filter},
        timeouts::monotonic_ns,
    },
};

pub enum Action {
    List(Filter),
    Flush,
    /// At least one criterion.
    Delete(Filter),
}

pub fn run(name: &str, json: bool, action: &Action) -> anyhow::Result<()> {
    // Checked before opening anything, so bad input fails the same way everywhere.
    if let Action::Delete(filter) = action {
        if filter.is_empty() {
            anyhow::bail!(
                "conntrack delete needs at least one filter (--proto, --src, --dst, --sport, \
                 --dport); `conntrack flush` deletes everything"
            );
        }
    }
    let mut maps = PinnedMaps::open(name)?;
    let timeouts = maps.config()?.timeouts;
    let mut tables = maps.tables()?;
    let now = monotonic_ns();
    match action {
        Action::List(filter) => {
            let conns: Vec<_> = conntrack::list(&tables, &timeouts, now)
                .into_iter()
                .filter(|c| filter.matches(c))
                .collect();
            if json {
                super::print_json(&serde_json::Value::Array(
                    conns.iter().map(conntrack::Connection::to_json).collect(),
                ));
            } else {
                let text: String = conns.iter().map(|c| c.line() + "\n").collect();
                if !super::write_stdout(&text)? {
                    return Ok(());
                }
                eprintln!(
                    "bpfnat conntrack ({name}): {} flow entries have been shown.",
                    conns.len()
                );
            }
        }
        Action::Flush => {
            let report = conntrack::flush(&mut tables, &timeouts, now);
            if json {
                super::print_json(&serde_json::json!({
                    "flushed": report.mappings,
                    "orphan_halves": report.orphans,
                }));
            } else {
                println!(
                    "bpfnat conntrack ({name}): {} flow entries have been deleted.",
                    report.mappings
                );
            }
        }
        Action::Delete(filter) => {
            let n = conntrack::delete(&mut tables, &timeouts, now, filter)?;
            if json {
                super::print_json(&serde_json::json!({ "deleted": n }));
            } else {
                println!("bpfnat conntrack ({name}): {n} flow entries have been deleted.");
            }
        }
    }
    Ok(())
}
