//! Loop-turn durations: how long the loop was away from epoll.
//!
//! A turn that holds the loop for long delays every reply and every
//! heartbeat behind it; past the manager's dead-after limit (1 s by
//! default) the node is declared down although it is alive. [`TurnWatch`]
//! times each turn of [`run`](super::run) in its phases at the cost of a
//! few clock reads, keeps the longest turn and a coarse histogram per
//! window, and logs a window whose longest turn was over a threshold.

use std::time::{Duration, Instant};

use log::info;

/// The phases of a turn, in the order [`run`](super::run) runs them.
pub const PHASES: [&str; 5] = ["read and handle", "timers", "early flush", "before sleep", "write and reap"];

/// Upper bounds of the histogram's buckets; the last bucket is open.
const BUCKETS: [Duration; 5] = [
    Duration::from_millis(1),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_secs(1),
];

/// Names of the buckets, for the log line.
const BUCKET_NAMES: [&str; 6] = ["<1ms", "1-10ms", "10-50ms", "50-200ms", "0.2-1s", ">=1s"];

/// The longest turns of a loop, per window and since start.
#[derive(Debug, Clone)]
pub struct TurnWatch {
    /// How long a window lasts.
    window: Duration,
    /// A window is logged only if its longest turn took longer than this.
    log_over: Duration,
    started: Option<Instant>,
    longest: Duration,
    /// The phases of the window's longest turn.
    phases: [Duration; 5],
    counts: [u64; 6],
    longest_ever: Duration,
    /// The most CPU time one turn used, in the window and ever: a turn
    /// much longer than its CPU time waited for the disk or was preempted.
    cpu: Duration,
    cpu_ever: Duration,
    /// Every turn's duration since start, for `--metrics-listen`.
    all: crate::metrics::Histogram,
}

impl TurnWatch {
    /// Windows of `window`, logged when their longest turn is over `log_over`.
    pub fn new(window: Duration, log_over: Duration) -> TurnWatch {
        TurnWatch {
            window,
            log_over,
            started: None,
            longest: Duration::ZERO,
            phases: [Duration::ZERO; 5],
            counts: [0; 6],
            longest_ever: Duration::ZERO,
            cpu: Duration::ZERO,
            cpu_ever: Duration::ZERO,
            all: crate::metrics::Histogram::durations(),
        }
    }

    /// Records a turn from its six instants (start, then the end of each
    /// phase); logs and starts a new window when this one is over.
    pub fn record(&mut self, marks: [Instant; 6], cpu: Duration) {
        self.cpu = self.cpu.max(cpu);
        self.cpu_ever = self.cpu_ever.max(cpu);
        let total = marks[5].saturating_duration_since(marks[0]);
        self.all.observe_duration(total);
        let bucket = BUCKETS.iter().position(|&b| total < b).unwrap_or(BUCKETS.len());
        if let Some(c) = self.counts.get_mut(bucket) {
            *c += 1;
        }
        if total > self.longest {
            self.longest = total;
            for (i, p) in self.phases.iter_mut().enumerate() {
                *p = marks[i + 1].saturating_duration_since(marks[i]);
            }
        }
        self.longest_ever = self.longest_ever.max(total);
        let started = *self.started.get_or_insert(marks[0]);
        if marks[5].saturating_duration_since(started) >= self.window {
            if self.longest > self.log_over {
                info!("{}", self.summary());
            }
            self.longest = Duration::ZERO;
            self.cpu = Duration::ZERO;
            self.counts = [0; 6];
            self.started = Some(marks[5]);
        }
    }

    /// The longest turn since the loop started.
    pub fn longest_ever(&self) -> Duration {
        self.longest_ever
    }

    /// The duration of every turn since the loop started.
    pub fn histogram(&self) -> &crate::metrics::Histogram {
        &self.all
    }

    /// The most CPU time a turn used since the loop started.
    pub fn cpu_ever(&self) -> Duration {
        self.cpu_ever
    }

    /// The current window's figures, as logged.
    pub fn summary(&self) -> String {
        let phases: Vec<String> =
            PHASES.iter().zip(self.phases).map(|(name, d)| format!("{name} {:.1}ms", ms(d))).collect();
        let counts: Vec<String> = BUCKET_NAMES.iter().zip(self.counts).map(|(name, n)| format!("{name} {n}")).collect();
        format!(
            "longest loop turn {:.1}ms in the last {:?} ({}); most CPU in a turn {:.1}ms; turns: {}",
            ms(self.longest),
            self.window,
            phases.join(", "),
            ms(self.cpu),
            counts.join(", ")
        )
    }
}

/// CPU time this thread has used (zero if the clock cannot be read).
pub fn thread_cpu() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_turn_and_its_phases_are_kept() {
        let mut w = TurnWatch::new(Duration::from_secs(3600), Duration::from_millis(50));
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        w.record([at(0), at(1), at(1), at(1), at(2), at(2)], Duration::from_millis(2));
        w.record([at(10), at(10), at(10), at(10), at(80), at(81)], Duration::from_millis(5));
        w.record([at(100), at(100), at(100), at(100), at(100), at(100)], Duration::ZERO);
        assert_eq!(w.cpu_ever(), Duration::from_millis(5));
        assert_eq!(w.longest_ever(), Duration::from_millis(71));
        assert_eq!(w.counts, [1, 1, 0, 1, 0, 0]);
        assert_eq!(w.histogram().count(), 3);
        assert_eq!(w.phases[3], Duration::from_millis(70));
        assert!(w.summary().contains("before sleep 70.0ms"), "{}", w.summary());
    }
}
