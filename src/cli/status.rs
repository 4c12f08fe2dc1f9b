//! `hookrelay status [--json]`: one line per instance, from the daemon or the stopped store.

use serde::{Deserialize, Serialize};

use super::access::{Access, Offline};
use super::{EXIT_FAILURE, Failure};
use crate::config::Config;
use crate::ops::status::{self, InstanceStatus};
use crate::time;

/// `status --json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// "running" (read through the admin API) or "stopped" (read from the store).
    pub daemon: String,
    pub instances: Vec<InstanceStatus>,
}

pub async fn run(config: &Config, json: bool) -> Result<(), Failure> {
    let (report, source) = report(config).await?;
    if json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
        println!("{text}");
    } else {
        println!("daemon: {source}");
        let now_ms = time::now_ms();
        print!("{}", table(&report.instances, now_ms));
        print!("{}", outages(&report.instances, now_ms));
        if report.instances.iter().any(|i| i.state == "held") {
            println!(
                "held: events of an instance no longer in the config; they are delivered if it \
                 comes back, and `hookrelay dead purge --instance NAME` drops them"
            );
        }
    }
    Ok(())
}

/// The figures, from the daemon or the stopped store, and a line saying which.
pub async fn report(config: &Config) -> Result<(Report, String), Failure> {
    let access = Access::open(config).await?;
    let (report, source) = match &access {
        Access::Daemon(client) => {
            let instances = client.get("/admin/status").await?;
            let report = Report {
                daemon: "running".into(),
                instances,
            };
            (report, format!("running, admin API {}", client.base()))
        }
        Access::Offline(offline) => {
            let report = Report {
                daemon: "stopped".into(),
                instances: offline_figures(config, offline),
            };
            let source = format!(
                "stopped; figures read from the store at {} (last success and last error are \
                 known only while it runs)",
                offline.path.display()
            );
            (report, source)
        }
    };
    access.close().await?;
    Ok((report, source))
}

fn offline_figures(config: &Config, offline: &Offline) -> Vec<InstanceStatus> {
    match &offline.store {
        Some(store) => status::instances(config, store, None),
        None => config
            .instances
            .iter()
            .map(|instance| InstanceStatus {
                instance: instance.name.clone(),
                state: status::state(Some(instance), status::never_authorized(instance)).into(),
                queued: 0,
                in_retry: 0,
                queued_bytes: 0,
                dead_lettered: 0,
                oldest_pending_age_seconds: None,
                last_success_ms: None,
                last_error: None,
                quarantined: 0,
                held: 0,
                outage: None,
            })
            .collect(),
    }
}

/// The table people read: aligned columns, ages instead of timestamps.
pub fn table(instances: &[InstanceStatus], now_ms: u64) -> String {
    let header = [
        "INSTANCE",
        "STATE",
        "QUEUED",
        "IN RETRY",
        "DEAD",
        "OLDEST PENDING",
        "LAST SUCCESS",
        "LAST ERROR",
    ];
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                i.instance.clone(),
                i.state.clone(),
                i.queued.to_string(),
                i.in_retry.to_string(),
                match i.quarantined {
                    0 => i.dead_lettered.to_string(),
                    n => format!("{} ({n} corrupt)", i.dead_lettered),
                },
                i.oldest_pending_age_seconds
                    .map_or_else(|| "-".into(), |s| age((s * 1000.0) as u64)),
                i.last_success_ms.map_or_else(
                    || "-".into(),
                    |ms| format!("{} ago", age(now_ms.saturating_sub(ms))),
                ),
                i.last_error.as_deref().map_or_else(|| "-".into(), one_line),
            ]
        })
        .collect();
    render(&header, &rows)
}

/// One line per instance in an outage: since when, the error that began it, what it holds.
pub fn outages(instances: &[InstanceStatus], now_ms: u64) -> String {
    let mut out = String::new();
    for (instance, outage) in instances
        .iter()
        .filter_map(|i| i.outage.as_ref().map(|o| (i, o)))
    {
        out.push_str(&format!(
            "outage: {} since {} ({} ago), {} held, one probe per probe_interval; began with: {}\n",
            instance.instance,
            time::rfc3339(outage.since_ms),
            age(now_ms.saturating_sub(outage.since_ms)),
            instance.held,
            outage
                .last_error
                .as_deref()
                .map_or_else(|| "-".into(), one_line),
        ));
    }
    out
}

/// Columns padded to their widest cell, the last one left ragged.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(n, cell)| {
                if n == last {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[n])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A duration in its two largest units: `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn age(ms: u64) -> String {
    let seconds = ms / 1000;
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let Some(first) = units.iter().position(|(_, size)| seconds >= *size) else {
        return "0s".into();
    };
    let (name, size) = units[first];
    let mut text = format!("{}{name}", seconds / size);
    if let Some((next, next_size)) = units.get(first + 1) {
        let rest = (seconds % size) / next_size;
        if rest > 0 {
            text.push_str(&format!("{rest}{next}"));
        }
    }
    text
}

/// Errors on one line, at most 60 characters.
fn one_line(text: &str) -> String {
    let flat = text.replace(['\n', '\r'], " ");
    match flat.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_use_two_units() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(45_000), "45s");
        assert_eq!(age(192_000), "3m12s");
        assert_eq!(age(7_500_000), "2h5m");
        assert_eq!(age(2 * 86_400_000), "2d");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000 + 59_000), "3d4h");
    }

    #[test]
    fn the_table_aligns_columns_and_shows_dashes() {
        let now = 1_800_000_000_000;
        let instances = vec![
            InstanceStatus {
                instance: "acme-dropbox".into(),
                state: "active".into(),
                queued: 12,
                in_retry: 3,
                queued_bytes: 4096,
                dead_lettered: 1,
                oldest_pending_age_seconds: Some(95.0),
                last_success_ms: Some(now - 120_000),
                last_error: Some("HTTP 503\nService Unavailable".into()),
                quarantined: 0,
                held: 0,
                outage: None,
            },
            InstanceStatus {
                instance: "old".into(),
                state: "held".into(),
                queued: 2,
                in_retry: 0,
                queued_bytes: 10,
                dead_lettered: 0,
                oldest_pending_age_seconds: None,
                last_success_ms: None,
                last_error: None,
                quarantined: 0,
                held: 0,
                outage: None,
            },
        ];
        let text = table(&instances, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "INSTANCE      STATE   QUEUED  IN RETRY  DEAD  OLDEST PENDING  LAST SUCCESS  LAST ERROR"
        );
        assert_eq!(
            lines[1],
            "acme-dropbox  active  12      3         1     1m35s           2m ago        HTTP 503 Service Unavailable"
        );
        assert_eq!(
            lines[2],
            "old           held    2       0         0     -               -             -"
        );
        assert_eq!(outages(&instances, now), "");
    }

    #[test]
    fn an_outage_gets_a_line_of_its_own() {
        let now = 1_800_000_000_000;
        let instance = InstanceStatus {
            instance: "acme-dropbox".into(),
            state: "outage".into(),
            queued: 1200,
            in_retry: 0,
            queued_bytes: 4096,
            dead_lettered: 0,
            oldest_pending_age_seconds: Some(7200.0),
            last_success_ms: None,
            last_error: Some("connect error: Connection refused".into()),
            quarantined: 0,
            held: 1200,
            outage: Some(crate::ops::status::OutageStatus {
                since_ms: now - 3 * 3_600_000 - 12 * 60_000,
                last_error: Some("HTTP 503 Service Unavailable".into()),
            }),
        };
        assert_eq!(
            outages(&[instance], now),
            "outage: acme-dropbox since 2027-01-15T04:48:00Z (3h12m ago), 1200 held, one probe \
             per probe_interval; began with: HTTP 503 Service Unavailable\n"
        );
    }
}
