//! Back-off delays: image pulls (`ImagePullBackOff`) and container restarts
//! (`CrashLoopBackOff`), 10 s doubling to 300 s, and the reset after a container ran long enough.
//!
//! Pure arithmetic; the sleeping is done by the pod worker.

use std::time::Duration;

/// Back-off parameters. The defaults are Kubernetes': 10 s doubling to 300 s, reset after 10
/// minutes of running. Tests shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// A container that ran at least this long restarts with `initial` again.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffPolicy {
    /// The delay after `previous` (the last delay used, if any): `initial`, then doubling up to
    /// `max`.
    pub fn next(&self, previous: Option<Duration>) -> Duration {
        match previous {
            None => self.initial,
            Some(prev) => prev.saturating_mul(2).clamp(self.initial, self.max),
        }
    }

    /// The restart delay of a container that ran for `ran_for` after the last delay `previous`.
    pub fn restart_delay(&self, previous: Option<Duration>, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.initial
        } else {
            self.next(previous)
        }
    }
}

/// `30s`, `5m0s`, `1m20s`: how kubelet prints a back-off in `CrashLoopBackOff` messages.
pub fn format_go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        if d.subsec_millis() == 0 {
            format!("{secs}s")
        } else {
            format!("{}s", d.as_secs_f64())
        }
    } else if secs < 3600 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{}h{}m{}s", secs / 3600, (secs % 3600) / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap() {
        let policy = BackoffPolicy::default();
        let mut previous = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let d = policy.next(previous);
            seen.push(d.as_secs());
            previous = Some(d);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn resets_after_a_long_run() {
        let policy = BackoffPolicy::default();
        let prev = Some(Duration::from_secs(160));
        assert_eq!(
            policy.restart_delay(prev, Duration::from_secs(5)),
            Duration::from_secs(300)
        );
        assert_eq!(
            policy.restart_delay(prev, Duration::from_secs(600)),
            Duration::from_secs(10)
        );
        assert_eq!(
            policy.restart_delay(None, Duration::ZERO),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn go_durations() {
        let cases = [
            (10, "10s"),
            (40, "40s"),
            (80, "1m20s"),
            (300, "5m0s"),
            (3700, "1h1m40s"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_go_duration(Duration::from_secs(secs)), want);
        }
        assert_eq!(format_go_duration(Duration::from_millis(50)), "0.05s");
    }
}
