//! CPU time and resident memory of a process, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux). CPU is utime + stime of all threads, in clock ticks converted to
//! microseconds; the tick (usually 10 ms) bounds the resolution, so runs must last seconds.

use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// User plus system CPU time since the process started, µs.
    pub cpu_us: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads `pid` now; `None` when the process is gone (or this is not Linux).
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let cpu_us = (utime + stime) * 1_000_000 / clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(Sample { cpu_us, rss_bytes: rss_kib * 1024 })
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Raises this process's soft limit on open files to its hard limit. Children inherit it, so
/// calling it once in the bench parent covers the gateways and load children it spawns.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let s = sample(std::process::id()).expect("/proc is readable");
        assert!(s.rss_bytes > 0);
    }
}
