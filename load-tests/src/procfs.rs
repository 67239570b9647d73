//! CPU time and resident memory from /proc (Linux).

use anyhow::Context;

/// USER_HZ on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime, in seconds, from a `stat` file's text.
fn stat_seconds(stat: &str) -> anyhow::Result<f64> {
    // Fields after the ")" that closes the name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / TICKS_PER_SECOND)
}

/// CPU seconds (user + system) a whole process used so far, all its threads.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    stat_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
pub fn thread_cpu_seconds(prefix: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let dir = task?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            total += stat_seconds(&stat)?;
        }
    }
    Ok(total)
}

/// Resident memory of a process (a pid, or `self`), in MiB.
pub fn rss_mib(proc: &str) -> anyhow::Result<f64> {
    let statm = std::fs::read_to_string(format!("/proc/{proc}/statm"))?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
    Ok(pages as f64 * 4096.0 / (1024.0 * 1024.0))
}

/// The machine's one-minute load average (runnable tasks), for reports on a shared machine.
pub fn loadavg() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg")?;
    let first = text.split_whitespace().next().unwrap_or("");
    Ok(first.parse()?)
}

/// This machine, for reports: CPU model, cores, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown CPU");
    // Not available_parallelism(): under taskset that counts only the CPUs allowed.
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(process_cpu_seconds(std::process::id()).unwrap() >= 0.0);
        assert!(rss_mib("self").unwrap() > 1.0);
        assert!(thread_cpu_seconds("").unwrap() >= 0.0);
        assert!(machine().contains("cores"));
        assert!(loadavg().unwrap() >= 0.0);
    }

    #[test]
    fn a_name_with_a_parenthesis_does_not_confuse_stat() {
        let stat = "42 (a) b) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(stat_seconds(stat).unwrap(), 3.0);
    }
}
