//! The standard `process_*` series (as Prometheus's client libraries name them), read from
//! `/proc/self` at each scrape. prometheus-client has no process collector. A figure that
//! cannot be read (no `/proc`, another system) is left out; the scrape goes on.

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct ProcessCollector;

/// The figures of `/proc/self/stat` the series need.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    /// Start after boot, in clock ticks.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page_size = rustix::param::page_size() as u64;
        let stat = fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| parse_stat(&text));
        if let Some(stat) = stat {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stat.resident_pages.saturating_mul(page_size) as f64,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.virtual_bytes as f64,
            )?;
            if ticks > 0.0 {
                let counter = ConstCounter::new(stat.cpu_ticks as f64 / ticks);
                let metric = encoder.encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds",
                    None,
                    counter.metric_type(),
                )?;
                counter.encode(metric)?;
                let boot = fs::read_to_string("/proc/stat")
                    .ok()
                    .and_then(|text| parse_boot_time(&text));
                if let Some(boot) = boot {
                    gauge(
                        &mut encoder,
                        "process_start_time_seconds",
                        "Start time of the process since the Unix epoch in seconds",
                        boot as f64 + stat.start_ticks as f64 / ticks,
                    )?;
                }
            }
        }
        // Counting the entries opens one more descriptor, as every collector does.
        if let Ok(entries) = fs::read_dir("/proc/self/fd") {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                entries.count() as f64,
            )?;
        }
        let max_fds = fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| parse_max_fds(&text));
        if let Some(max) = max_fds {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

/// `/proc/self/stat`: the fields after the command name, which is in parentheses and may hold
/// spaces and parentheses itself (so the last `)` ends it). Fields counted from 1 as in
/// proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // `rest` starts with field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)?.saturating_add(field(15)?),
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`; `None` when unlimited.
fn parse_max_fds(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_awkward_command_name() {
        let text = "4242 (hook) relay (x)) S 1 4242 4242 0 -1 4194560 1234 0 5 0 \
                    250 75 0 0 20 0 12 0 9000 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 \
                    4096 17610 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 325,
                start_ticks: 9000,
                virtual_bytes: 123_456_789,
                resident_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             62811                62811                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_is_read() {
        let stat = fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let stat = parse_stat(&stat).expect("parsed");
        assert!(
            stat.resident_pages > 0 && stat.virtual_bytes > 0,
            "{stat:?}"
        );
    }
}
