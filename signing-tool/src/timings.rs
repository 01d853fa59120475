//! Opt-in phase timings for benchmarks: with `--timings` (or `HALE_SIGN_TIMINGS=1`) a command
//! prints one JSON line to stderr, e.g.
//! `{"command":"publish","seconds":{"load":0.01,"unlock":0.24,…,"total":0.61}}`.
//!
//! Phases (each present only when the command has it):
//! `load` reading and parsing the working directory; `check` hale-core's threshold and profile
//! checks; `unlock` opening encrypted key files (scrypt); `hash` reading and hashing target
//! contents; `copy` writing them under their consistent names; `build` building metadata bodies;
//! `sign` canonicalising and signing; `write` serialising and writing metadata; `flush` waiting
//! for written metadata to reach the disk (`fsync`, taken out of `write`);
//! `verify` the client workflow over the published repository; `other` the rest (argument
//! parsing, reading key files' public halves, messages); `total` the whole command.

use std::time::{Duration, Instant};

/// Environment switch, for scripts that cannot add the flag.
pub const ENV: &str = "HALE_SIGN_TIMINGS";

/// Accumulated time per phase, in first-seen order.
#[derive(Debug)]
pub struct Timings {
    command: &'static str,
    enabled: bool,
    start: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timings {
    /// Start timing `command`; printed at [`finish`](Self::finish) when `flag` or the
    /// environment switch is set.
    pub fn start(command: &'static str, flag: bool) -> Self {
        let env = std::env::var(ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        Timings {
            command,
            enabled: flag || env,
            start: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Add `d` to `phase`.
    pub fn add(&mut self, phase: &'static str, d: Duration) {
        match self.phases.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, t)) => *t += d,
            None => self.phases.push((phase, d)),
        }
    }

    /// The time counted to `phase` so far.
    pub fn get(&self, phase: &str) -> Duration {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, d)| *d)
            .unwrap_or_default()
    }

    /// Run `f`, counting its time to `phase`.
    pub fn time<T>(&mut self, phase: &'static str, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        self.add(phase, t0.elapsed());
        out
    }

    /// Print the JSON line (when enabled).
    pub fn finish(mut self) {
        if !self.enabled {
            return;
        }
        // flushing happens inside the `write` phases: show it as its own phase
        let flush = crate::durable::flush_time();
        if let Some((_, w)) = self.phases.iter_mut().find(|(p, _)| *p == "write") {
            *w = w.saturating_sub(flush);
        }
        if !flush.is_zero() {
            self.phases.push(("flush", flush));
        }
        let mut seconds = serde_json::Map::new();
        for (p, d) in &self.phases {
            seconds.insert((*p).to_string(), round(*d));
        }
        let total = self.start.elapsed();
        let counted: Duration = self.phases.iter().map(|(_, d)| *d).sum();
        seconds.insert("other".into(), round(total.saturating_sub(counted)));
        seconds.insert("total".into(), round(total));
        eprintln!(
            "{}",
            serde_json::json!({"command": self.command, "seconds": seconds})
        );
    }
}

fn round(d: Duration) -> serde_json::Value {
    serde_json::json!((d.as_secs_f64() * 1e6).round() / 1e6)
}
