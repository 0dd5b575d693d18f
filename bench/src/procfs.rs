//! What /proc says about a process and the machine, parsed by pure functions.

use std::time::Duration;

/// CPU time a process has used so far, user and system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user_ticks: u64,
    pub system_ticks: u64,
}

impl CpuTimes {
    /// `utime` and `stime` from the text of `/proc/PID/stat`.
    #[must_use]
    pub fn parse(stat: &str) -> Option<Self> {
        // The command name is in parentheses and may hold anything: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state (field 3) … utime (14), stime (15).
        Some(Self {
            user_ticks: fields.get(11)?.parse().ok()?,
            system_ticks: fields.get(12)?.parse().ok()?,
        })
    }

    /// Of process `pid`, now.
    #[must_use]
    pub fn of(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// (user, system) used since `earlier`, as percentages of one core over `wall`.
    #[must_use]
    pub fn percent_since(&self, earlier: &Self, wall: Duration) -> (f64, f64) {
        let ticks = clock_ticks_per_second();
        let wall = wall.as_secs_f64();
        if wall <= 0.0 || ticks <= 0.0 {
            return (0.0, 0.0);
        }
        #[expect(clippy::cast_precision_loss, reason = "clock ticks, far below 2^52")]
        let percent = |now: u64, then: u64| now.saturating_sub(then) as f64 / ticks / wall * 100.0;
        (
            percent(self.user_ticks, earlier.user_ticks),
            percent(self.system_ticks, earlier.system_ticks),
        )
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(clippy::cast_precision_loss, reason = "a small positive number")]
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// A `kB` field (`VmRSS:`, `VmHWM:`, `MemTotal:`) of a /proc status-like text, in KiB.
#[must_use]
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The (resident, peak resident) memory of `pid` in KiB.
#[must_use]
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((kib_field(&status, "VmRSS:")?, kib_field(&status, "VmHWM:")?))
}

/// The first `model name` of /proc/cpuinfo.
#[must_use]
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The three load averages of /proc/loadavg.
#[must_use]
pub fn load_average(loadavg: &str) -> Option<[f64; 3]> {
    let mut fields = loadavg.split_whitespace().map(str::parse::<f64>);
    Some([
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ])
}

/// The load averages now (zeros when /proc cannot say).
#[must_use]
pub fn load_now() -> [f64; 3] {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .as_deref()
        .and_then(load_average)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_times_past_a_strange_command_name() {
        let stat = "4242 (net watch) (x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 173 41 0 0 20 0 3 0 100 0 0";
        assert_eq!(
            CpuTimes::parse(stat),
            Some(CpuTimes {
                user_ticks: 173,
                system_ticks: 41
            })
        );
        assert_eq!(CpuTimes::parse("4242 (netwatch) S 1"), None);
        assert_eq!(CpuTimes::parse("garbage"), None);
    }

    #[test]
    fn cpu_percentages_are_of_one_core() {
        let ticks = clock_ticks_per_second();
        let before = CpuTimes {
            user_ticks: 0,
            system_ticks: 0,
        };
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "small test values"
        )]
        let after = CpuTimes {
            user_ticks: ticks as u64,
            system_ticks: 2 * ticks as u64,
        };
        let (user, system) = after.percent_since(&before, Duration::from_secs(10));
        assert!(
            (user - 10.0).abs() < 1e-9 && (system - 20.0).abs() < 1e-9,
            "{user} {system}"
        );
        assert_eq!(after.percent_since(&before, Duration::ZERO), (0.0, 0.0));
    }

    #[test]
    fn reads_kib_fields() {
        let status = "Name:\tnetwatch\nVmHWM:\t   20480 kB\nVmRSS:\t   12288 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(12_288));
        assert_eq!(kib_field(status, "VmHWM:"), Some(20_480));
        assert_eq!(kib_field(status, "VmSwap:"), None);
        assert_eq!(
            kib_field("MemTotal:       24684400 kB\n", "MemTotal:"),
            Some(24_684_400)
        );
    }

    #[test]
    fn reads_the_cpu_model_and_load() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)   CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert_eq!(
            load_average("0.15 0.30 0.45 1/123 4567\n"),
            Some([0.15, 0.30, 0.45])
        );
        assert_eq!(load_average("x"), None);
    }
}
