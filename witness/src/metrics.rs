//! Counters an operator reads through the `Status` query (`chainiac witness status`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Metrics {
    pub rounds_led: AtomicU64,
    pub rounds_failed: AtomicU64,
    pub blocks_signed: AtomicU64,
    /// Locked blocks this node re-led to fill their index.
    pub blocks_adopted: AtomicU64,
    /// Members left out of rounds' trees because they missed a recent round.
    pub peers_left_out: AtomicU64,
    /// Members named by an aggregator for a missing or wrong partial signature.
    pub faults_named: AtomicU64,
    /// Frames refused: malformed, oversized, unknown version, or not allowed to this caller.
    pub refused_frames: AtomicU64,
    pub round_ms_total: AtomicU64,
    pub round_ms_max: AtomicU64,
    /// When this node last warned of a committee member's clock (ms since the Unix epoch).
    pub clock_warned_ms: AtomicU64,
}

impl Metrics {
    pub fn record_round(&self, took: Duration) {
        let ms = took.as_millis() as u64;
        self.round_ms_total.fetch_add(ms, Ordering::Relaxed);
        self.round_ms_max.fetch_max(ms, Ordering::Relaxed);
    }
}
