//! What a running analyzer process costs, read from `/proc/<pid>`: CPU time
//! (`stat`'s `utime` + `stime`, every thread), peak and current RSS and open file
//! descriptors. The fleet benchmarks run the real binary as a child process and
//! read these around a measured span, so the figures are the whole analyzer's
//! (API, check loop, scrapes, logging), not one function's.

use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux
/// when `getconf` is missing, the value every mainstream kernel config uses).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// `utime` + `stime` of process `pid` in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the command name (which may hold spaces) start at `state` (field 3);
    // `utime` and `stime` are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).expect("stat has (comm)");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields[i].parse::<f64>().expect("utime/stime are numbers");
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`) in MiB.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).expect("status field");
    line.trim().trim_end_matches("kB").trim().parse::<f64>().expect("kB value") / 1024.0
}

/// Open file descriptors of `pid` (sockets included).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// CPU used by `pid` from one reading to the next, as a fraction of one core.
pub struct CpuMeter {
    pid: u32,
    cpu_s: f64,
    at: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter { pid, cpu_s: cpu_seconds(pid), at: Instant::now() }
    }

    /// CPU seconds and wall seconds since [`CpuMeter::start`].
    pub fn read(&self) -> (f64, f64) {
        (cpu_seconds(self.pid) - self.cpu_s, self.at.elapsed().as_secs_f64())
    }
}
