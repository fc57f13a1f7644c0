//! `scim-sync status`: per target, the pending rows, the age of the oldest one, the resources
//! applied and the dead letters; then each live instance sharing the store (id, host, version,
//! started, claims held, last heartbeat, mapping fingerprint, marked when it differs from this
//! configuration's). Reads the store only; exit 0 whenever the store answers.

use std::path::Path;
use std::process::ExitCode;

/// A duration in ms as `1h02m`, `3m05s` or `12s`.
pub(crate) fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The instance table: each live instance at `now`, a `*` after a fingerprint other than
/// `mine`, and a closing warning when any differs.
pub(crate) fn instance_lines(
    instances: &[crate::store::InstanceInfo],
    mine: &str,
    now: i64,
) -> Vec<String> {
    let live: Vec<_> = instances.iter().filter(|i| i.live(now)).collect();
    if live.is_empty() {
        return Vec::new();
    }
    let mut out = vec![format!(
        "{:<20} {:<20} {:<10} {:>10} {:>7} {:>10}  {}",
        "INSTANCE", "HOST", "VERSION", "STARTED", "CLAIMS", "HEARTBEAT", "FINGERPRINT"
    )];
    let mut odd = false;
    for i in live {
        let differs = i.fingerprint != mine;
        odd |= differs;
        out.push(format!(
            "{:<20} {:<20} {:<10} {:>10} {:>7} {:>10}  {}{}",
            i.id,
            i.host,
            i.version,
            format!("{} ago", age(now.saturating_sub(i.started_ms))),
            i.claims,
            format!("{} ago", age(now.saturating_sub(i.heartbeat_ms))),
            i.fingerprint,
            if differs { " *" } else { "" }
        ));
    }
    if odd {
        out.push(format!(
            "* maps with another configuration than this one ({mine}): instances would fight over entries; reload them all to one (docs/deployment.md)"
        ));
    }
    out
}

/// Run `status`.
pub fn run(config: &Path) -> ExitCode {
    let settings = match super::settings_or_exit(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    super::block_on(async move {
        let store = match super::open_store(&settings).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let names: Vec<String> = settings
            .raw
            .targets
            .iter()
            .map(|t| t.name().to_owned())
            .collect();
        if names.is_empty() {
            println!("No targets configured.");
            return ExitCode::SUCCESS;
        }
        match store.status(&names).await {
            Ok(rows) => {
                let now = crate::clock::now_ms();
                println!(
                    "{:<20} {:>8} {:>14} {:>8} {:>6}",
                    "TARGET", "PENDING", "OLDEST", "APPLIED", "DEAD"
                );
                for r in rows {
                    let oldest = r
                        .oldest_pending_ms
                        .map_or_else(|| "-".to_owned(), |ms| age(now.saturating_sub(ms)));
                    println!(
                        "{:<20} {:>8} {:>14} {:>8} {:>6}",
                        r.target, r.pending, oldest, r.applied, r.dead
                    );
                }
                match store.instances(now).await {
                    Ok(all) => {
                        let mine = crate::daemon::instance::fingerprint(&settings);
                        let lines = instance_lines(&all, &mine, now);
                        if !lines.is_empty() {
                            println!();
                        }
                        for line in lines {
                            println!("{line}");
                        }
                    }
                    Err(e) => eprintln!("cannot read the instances: {e}"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot read the status: {e}");
                ExitCode::from(1)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{age, instance_lines};
    use crate::store::InstanceInfo;

    #[test]
    fn live_instances_are_listed_and_a_differing_fingerprint_is_marked() {
        let i = |id: &str, fp: &str, heartbeat_ms: i64| InstanceInfo {
            id: id.into(),
            host: "h".into(),
            version: "1".into(),
            fingerprint: fp.into(),
            started_ms: 0,
            heartbeat_ms,
            takeover_ms: 15_000,
            claims: 3,
        };
        let all = [
            i("a", "f1", 100_000),
            i("b", "f2", 99_000),
            i("dead", "f1", 1_000),
            i("stopped", "f1", 0),
        ];
        let lines = instance_lines(&all, "f1", 100_500);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines[1].starts_with("a ") && lines[1].ends_with("f1"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("b ") && lines[2].ends_with("f2 *"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("1s ago"), "{}", lines[2]);
        assert!(lines[3].contains("another configuration"));
        assert!(instance_lines(&all[2..], "f1", 100_500).is_empty());
    }

    #[test]
    fn ages_read_naturally_and_never_go_negative() {
        assert_eq!(age(-5000), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(65_000), "1m05s");
        assert_eq!(age(3_720_000), "1h02m");
    }
}
