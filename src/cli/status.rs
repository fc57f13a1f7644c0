//! `scim-sync status`: per target, the pending rows, the age of the oldest one, the resources
//! applied and the dead letters. Reads the store only; exit 0 whenever the store answers.

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
    use super::age;

    #[test]
    fn ages_read_naturally_and_never_go_negative() {
        assert_eq!(age(-5000), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(65_000), "1m05s");
        assert_eq!(age(3_720_000), "1h02m");
    }
}
