//! Accounting from /proc and the file system: CPU ticks per process and thread, memory, bytes
//! written, disk usage of a store.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::figures::round;

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ is 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

pub(crate) fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(crate) fn mib_of_kib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| round(k as f64 / 1024.0, 1))
}

/// User + system clock ticks in a `/proc/.../stat` file.
fn stat_ticks(path: &Path) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After "(comm)" comes field 3 of proc_pid_stat(5); utime and stime are fields 14 and 15.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((stat[open + 1..close].to_owned(), user + system))
}

/// CPU clock ticks per live thread name of a process; tokio's and sled's numbered threads are
/// summed under one name.
fn cpu_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        if let Some((name, ticks)) = stat_ticks(&task.path().join("stat")) {
            let name = name
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
                .to_owned();
            *by_name.entry(name).or_default() += ticks;
        }
    }
    by_name
}

/// CPU ticks the calling thread has used since it started.
pub(crate) fn own_thread_ticks() -> u64 {
    stat_ticks(Path::new("/proc/thread-self/stat")).map_or(0, |(_, ticks)| ticks)
}

pub(crate) struct CpuWatch {
    pids: Vec<(&'static str, u32)>,
    started: Instant,
    before: Vec<(u64, BTreeMap<String, u64>)>,
}

impl CpuWatch {
    pub(crate) fn start(pids: Vec<(&'static str, u32)>) -> CpuWatch {
        let before = pids
            .iter()
            .map(|(_, pid)| (process_ticks(*pid), cpu_ticks(*pid)))
            .collect();
        CpuWatch {
            pids,
            started: Instant::now(),
            before,
        }
    }

    /// Percent of one core per process and per thread name since `start`; the generator's
    /// threads (gone by now) are reported from `generator_ticks`.
    pub(crate) fn finish(&self, generator_ticks: u64) -> Value {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let percent = |ticks: u64| json!(round(ticks as f64 / CLOCK_TICKS / seconds * 100.0, 1));
        let mut out = Map::new();
        for ((label, pid), (total_before, before)) in self.pids.iter().zip(&self.before) {
            let mut threads = Map::new();
            for (name, ticks) in &cpu_ticks(*pid) {
                let used = ticks.saturating_sub(before.get(name).copied().unwrap_or(0));
                if used > 0 {
                    threads.insert(name.clone(), percent(used));
                }
            }
            if *pid == std::process::id() && generator_ticks > 0 {
                threads.insert("bench-gen".into(), percent(generator_ticks));
            }
            let total = process_ticks(*pid).saturating_sub(*total_before);
            out.insert(
                (*label).to_owned(),
                json!({ "total_percent_of_one_core": percent(total), "threads": threads }),
            );
        }
        Value::Object(out)
    }
}

/// Bytes a process wrote: handed to `write`-like calls (`wchar`), and sent to the block device
/// (`write_bytes`: the page-cache pages it dirtied, whole folios).
#[derive(Clone, Copy)]
pub(crate) struct Written {
    pub(crate) syscall_bytes: u64,
    pub(crate) device_bytes: u64,
}

impl std::ops::Sub for Written {
    type Output = Written;

    fn sub(self, before: Written) -> Written {
        Written {
            syscall_bytes: self.syscall_bytes.saturating_sub(before.syscall_bytes),
            device_bytes: self.device_bytes.saturating_sub(before.device_bytes),
        }
    }
}

impl Written {
    /// Bytes per acknowledged request, as JSON.
    pub(crate) fn per(self, acked: u64) -> Value {
        let per = |bytes: u64| json!((bytes as f64 / acked.max(1) as f64).round());
        json!({ "syscall_bytes": per(self.syscall_bytes), "device_bytes": per(self.device_bytes) })
    }
}

/// CPU ticks of a whole process, exited threads included.
fn process_ticks(pid: u32) -> u64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).map_or(0, |(_, ticks)| ticks)
}

/// (apparent bytes, allocated bytes) of everything under `path`, like `du -b` and `du`.
pub(crate) fn disk_usage(path: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(entries) = std::fs::read_dir(path) else {
        return total;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            let (apparent, allocated) = disk_usage(&entry.path());
            total.0 += apparent;
            total.1 += allocated;
        } else {
            total.0 += meta.len();
            total.1 += meta.blocks() * 512;
        }
    }
    total
}
