//! Reading the instruments: wrk's report, a process's resident memory, the processes of a
//! network namespace, the load average.

use std::process::Command;

use anyhow::{Context, bail};

/// What one wrk run reported.
#[derive(Clone, Debug, Default)]
pub struct Wrk {
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Requests per second.
    pub rps: f64,
    /// Socket errors and non-2xx responses, as wrk counts them.
    pub errors: u64,
}

/// A wrk latency such as `52.00us`, `1.20ms` or `2.00s`, in µs.
fn duration_us(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else {
        bail!("unknown wrk duration {text:?}");
    };
    Ok(number.parse::<f64>().context("wrk duration")? * scale)
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let mut wrk = Wrk::default();
    let (mut p50, mut p99, mut rps) = (None, None, None);
    for line in out.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["50%", v] => p50 = Some(duration_us(v)?),
            ["99%", v] => p99 = Some(duration_us(v)?),
            ["Requests/sec:", v] => rps = Some(v.parse::<f64>().context("Requests/sec")?),
            ["Non-2xx", "or", "3xx", "responses:", n] => wrk.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for pair in rest.chunks(2) {
                    if let [_, n] = pair {
                        wrk.errors += n.trim_end_matches(',').parse::<u64>()?;
                    }
                }
            }
            _ => {}
        }
    }
    wrk.p50_us = p50.context("no 50% line in wrk's output")?;
    wrk.p99_us = p99.context("no 99% line in wrk's output")?;
    wrk.rps = rps.context("no Requests/sec line in wrk's output")?;
    Ok(wrk)
}

/// A process's resident memory, MiB: all of it (VmRSS) and the part that is its own
/// anonymous memory (RssAnon; the rest is mostly the executable's and libraries' file pages,
/// which the page cache shares with every process mapping the same files).
#[derive(Clone, Copy, Debug)]
pub struct Rss {
    /// VmRSS.
    pub total: f64,
    /// RssAnon.
    pub anon: f64,
}

/// [`Rss`] of process `pid` from /proc/<pid>/status.
pub fn rss_mib(pid: u32) -> anyhow::Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?
            .trim()
            .parse::<f64>()?;
        Ok(kib / 1024.0)
    };
    Ok(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
    })
}

/// The process named `comm` in network namespace `netns` (exactly one).
pub fn pid_in(netns: &str, comm: &str) -> anyhow::Result<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .context("ip netns pids")?;
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .collect();
    match pids.as_slice() {
        [pid] => Ok(*pid),
        _ => bail!("expected one {comm} in {netns}, found {pids:?}"),
    }
}

/// This process's soft limit on open files (inherited by everything it starts).
pub fn open_files_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-file limit in /proc/self/limits")?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .context("open-file limit")?;
    Ok(soft.parse().unwrap_or(u64::MAX)) // "unlimited"
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// What is missing to run the benchmark, if anything.
pub fn missing_tools() -> Option<String> {
    if let Some(why) = palisade::demo::lab::missing_prerequisite() {
        return Some(why);
    }
    for (tool, arg, package) in [("haproxy", "-v", "haproxy"), ("wrk", "-v", "wrk")] {
        // wrk -v exits 1 after printing its version; it only has to start.
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!(
                "{tool} is not installed (Debian: apt-get install -y {package})"
            ));
        }
    }
    None
}
