//! What the client benchmarks share: argument lookup and the one JSON line they print, shaped
//! like `../shared/bench/tuf-client.py`'s.

// `runs` is never empty (checked), so the median and extremes index within it
#![allow(clippy::indexing_slicing)]

/// The value after `name` in `args`.
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The median of `runs` (sorted in place; the mean of the middle two for an even count).
pub fn median(runs: &mut [f64]) -> f64 {
    assert!(!runs.is_empty(), "no timings to summarize");
    runs.sort_by(f64::total_cmp);
    let n = runs.len();
    if n % 2 == 1 {
        runs[n / 2]
    } else {
        (runs[n / 2 - 1] + runs[n / 2]) / 2.0
    }
}

/// Print one JSON line: median, min and max of `runs` (seconds).
pub fn print_summary(client: &str, mode: &str, target: &str, mut runs: Vec<f64>) {
    let median = median(&mut runs);
    let n = runs.len();
    println!(
        "{{\"client\": \"{client}\", \"mode\": \"{mode}\", \"target\": \"{target}\", \"iters\": {n}, \"seconds\": {{\"total\": {{\"median\": {median:.6}, \"min\": {:.6}, \"max\": {:.6}}}}}}}",
        runs[0],
        runs[n - 1]
    );
}
