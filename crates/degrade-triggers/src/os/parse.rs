//! Parsers of the kernel's text files: pure functions of a string, tested without a machine.

use crate::signal::SignalError;

/// `cpu.max`: `"<quota> <period>"` in microseconds, or `"max <period>"` when unlimited.
/// Returns the quota in CPUs (quota / period), or `None` when unlimited.
pub(crate) fn cpu_max(text: &str) -> Result<Option<f64>, SignalError> {
    let mut it = text.split_whitespace();
    let (Some(quota), Some(period), None) = (it.next(), it.next(), it.next()) else {
        return Err(SignalError::new(
            "cpu.max: expected `<quota> <period>` or `max <period>`",
        ));
    };
    let period: u64 = period
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| SignalError::new("cpu.max: the period is not a positive integer"))?;
    if quota == "max" {
        return Ok(None);
    }
    let quota: u64 = quota.parse().ok().filter(|q| *q > 0).ok_or_else(|| {
        SignalError::new("cpu.max: the quota is neither `max` nor a positive integer")
    })?;
    Ok(Some(quota as f64 / period as f64))
}

/// The fields of `cpu.stat` this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CpuStat {
    pub(crate) usage_usec: u64,
    pub(crate) nr_periods: u64,
    pub(crate) nr_throttled: u64,
}

/// `cpu.stat`: `key value` lines. `usage_usec` is required; the throttling counters exist only
/// when the cpu controller is enabled, and read as zero otherwise.
pub(crate) fn cpu_stat(text: &str) -> Result<CpuStat, SignalError> {
    let mut stat = CpuStat::default();
    let mut usage = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        let slot = match key {
            "usage_usec" => &mut stat.usage_usec,
            "nr_periods" => &mut stat.nr_periods,
            "nr_throttled" => &mut stat.nr_throttled,
            _ => continue,
        };
        *slot = value
            .parse()
            .map_err(|_| SignalError::new(format!("cpu.stat: `{key}` is not an integer")))?;
        if key == "usage_usec" {
            usage = Some(());
        }
    }
    usage
        .map(|()| stat)
        .ok_or_else(|| SignalError::new("cpu.stat: no `usage_usec` line"))
}

/// A byte count or `max` (`memory.max`, `memory.high`): `None` when unlimited.
pub(crate) fn limit(file: &str, text: &str) -> Result<Option<u64>, SignalError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| SignalError::new(format!("{file}: expected a byte count or `max`")))
}

/// A plain byte count (`memory.current`).
pub(crate) fn bytes(file: &str, text: &str) -> Result<u64, SignalError> {
    text.trim()
        .parse()
        .map_err(|_| SignalError::new(format!("{file}: expected a byte count")))
}

/// `VmRSS` from `/proc/<pid>/status`, in bytes.
pub(crate) fn vm_rss(text: &str) -> Result<u64, SignalError> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| SignalError::new("status: no `VmRSS` line"))?;
    let mut it = line.split_whitespace();
    match (it.next().map(str::parse::<u64>), it.next()) {
        (Some(Ok(kb)), Some("kB")) => Ok(kb.saturating_mul(1024)),
        _ => Err(SignalError::new("status: `VmRSS` is not `<n> kB`")),
    }
}

/// The `avg10` of the `some` or `full` line of a PSI file, in percent. `Ok(None)` when the
/// line is absent (the `full` line of `cpu` on kernels before 5.13).
pub(crate) fn psi_avg10(text: &str, kind: &str) -> Result<Option<f64>, SignalError> {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some(kind) {
            continue;
        }
        for field in it {
            if let Some(v) = field.strip_prefix("avg10=") {
                return v
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .map(Some)
                    .ok_or_else(|| SignalError::new("pressure: `avg10` is not a number"));
            }
        }
        return Err(SignalError::new(format!(
            "pressure: `{kind}` line has no `avg10`"
        )));
    }
    Ok(None)
}

/// The cgroup v2 path of the process from `/proc/self/cgroup` (the `0::<path>` line).
pub(crate) fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_quota_and_unlimited() {
        assert_eq!(cpu_max("150000 100000\n").unwrap(), Some(1.5));
        assert_eq!(cpu_max("max 100000\n").unwrap(), None);
        assert!(cpu_max("").is_err());
        assert!(cpu_max("max").is_err());
        assert!(cpu_max("abc 100000").is_err());
        assert!(cpu_max("100 0").is_err());
        assert!(cpu_max("1 2 3").is_err());
    }

    #[test]
    fn cpu_stat_reads_usage_and_throttling() {
        let s = cpu_stat(
            "usage_usec 1000\nuser_usec 600\nsystem_usec 400\nnr_periods 10\nnr_throttled 2\nthrottled_usec 5\n",
        )
        .unwrap();
        assert_eq!((s.usage_usec, s.nr_periods, s.nr_throttled), (1000, 10, 2));
        assert_eq!(cpu_stat("usage_usec 7\n").unwrap().nr_periods, 0);
        assert!(cpu_stat("user_usec 1\n").is_err());
        assert!(cpu_stat("usage_usec x\n").is_err());
    }

    #[test]
    fn limits_bytes_and_rss() {
        assert_eq!(limit("memory.max", "max\n").unwrap(), None);
        assert_eq!(limit("memory.max", "1048576\n").unwrap(), Some(1 << 20));
        assert!(limit("memory.max", "lots").is_err());
        assert_eq!(bytes("memory.current", "42\n").unwrap(), 42);
        assert!(bytes("memory.current", "").is_err());
        assert_eq!(vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n").unwrap(), 2 << 20);
        assert!(vm_rss("Name:\tx\n").is_err());
        assert!(vm_rss("VmRSS: 12 MB\n").is_err());
    }

    #[test]
    fn psi_lines() {
        let text = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=0.40 avg60=0.00 avg300=0.00 total=9\n";
        assert_eq!(psi_avg10(text, "some").unwrap(), Some(12.5));
        assert_eq!(psi_avg10(text, "full").unwrap(), Some(0.4));
        assert_eq!(
            psi_avg10("some avg10=1.00 total=1\n", "full").unwrap(),
            None
        );
        assert!(psi_avg10("some avg60=1.00\n", "some").is_err());
        assert!(psi_avg10("some avg10=x\n", "some").is_err());
        assert!(psi_avg10("some avg10=-1\n", "some").is_err());
    }

    #[test]
    fn cgroup_path() {
        assert_eq!(
            cgroup_v2_path("0::/system.slice/app.service\n"),
            Some("/system.slice/app.service")
        );
        assert_eq!(cgroup_v2_path("4:memory:/x\n0::/\n"), Some("/"));
        assert_eq!(cgroup_v2_path("4:memory:/x\n"), None);
    }
}
