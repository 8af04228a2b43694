//! Shared pieces of the benchmarks: where the `berth` binary is, timing, medians, tables.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `berth` binary to measure: `$BERTH_BIN`, or the one built beside this benchmark
/// (`cargo build --release -p berth -p berth-bench` puts both in `target/release`).
pub fn berth_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let candidate = exe.with_file_name("berth");
    assert!(
        candidate.exists(),
        "{} is missing: build it (cargo build --release -p berth) or set BERTH_BIN",
        candidate.display()
    );
    candidate
}

/// Runs `f` and returns how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}
