//! The data paths between the virtual devices and storage.
//!
//! Backup, per stripe: a *device thread* takes commands and hands each `VDC_Write`
//! buffer (still in shared memory: zero-copy) to the shared pool of *compression
//! workers*; a *stripe writer* puts the compressed frames back in order, hashes the raw
//! stream, appends to the stored object and only then completes the command, so the
//! engine reuses a buffer only once its bytes are safely out. `VDC_Flush` and
//! `VDC_Complete` travel through the same ordered queue, so they complete only after
//! every earlier write is durable.
//!
//! Restore, per stripe: a *stripe reader* verifies and decompresses frames ahead of the
//! engine; the device thread copies them into `VDC_Read` buffers. End of data is
//! reported only after the trailer and the whole-stripe blake3 checked out; any
//! mismatch aborts the set (SignalAbort) and fails the restore.

pub mod backup;
pub mod restore;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::vdi::{DevError, DeviceSet};

/// How often blocked device calls wake up to look at the stop flag.
pub const POLL_MS: u32 = 200;

/// Per-stripe byte counters read by the progress reporter.
#[derive(Debug, Default)]
pub struct Counters {
    /// Raw (engine-side) bytes moved so far.
    pub raw: AtomicU64,
    /// Bytes stored (or read from storage) so far.
    pub stored: AtomicU64,
    pub done: AtomicBool,
}

/// Why a pipeline stopped early.
///
/// Several threads see one failure: the stripe writer that could not store, the
/// device thread that then sees the set aborted, the engine thread whose statement
/// then fails. They report in whatever order the scheduler picks, so "first one
/// wins" would print the symptom about half the time. Reasons are ranked instead:
/// a cause (ours, or Ctrl-C) outranks the engine's message, which outranks the bare
/// "the set was aborted"; among equals the first one stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Ctrl-C / SIGTERM.
    Interrupted,
    /// The engine's statement failed (its message).
    Engine(String),
    /// Stored data failed verification.
    Verify(String),
    /// Storage or protocol failure.
    Failed(String),
    /// The other side aborted the set without telling us why: a symptom, replaced by
    /// any other reason that arrives.
    Aborted,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Failed(m) | StopReason::Verify(m) | StopReason::Engine(m) => f.write_str(m),
            StopReason::Aborted => f.write_str("the virtual device set was aborted"),
            StopReason::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl StopReason {
    /// A failed device call: an aborted set is the bare symptom, anything else is
    /// a failure of ours, named after the call.
    pub fn device(call: &str, e: DevError) -> StopReason {
        match e {
            DevError::Abort => StopReason::Aborted,
            e => StopReason::Failed(format!("{call}: {e}")),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            StopReason::Aborted => 0,
            StopReason::Engine(_) => 1,
            StopReason::Interrupted | StopReason::Verify(_) | StopReason::Failed(_) => 2,
        }
    }
}

/// A stop flag shared by every thread of a run (and the signal handler).
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    reason: Mutex<Option<StopReason>>,
}

impl Stop {
    pub fn new() -> Arc<Stop> {
        Arc::new(Stop::default())
    }
    /// Records the reason (unless one of at least its rank is already there, see
    /// [`StopReason`]) and raises the flag.
    pub fn stop(&self, why: StopReason) {
        if let Ok(mut r) = self.reason.lock() {
            if r.as_ref().is_none_or(|old| why.rank() > old.rank()) {
                *r = Some(why);
            }
        }
        // SYNC POINT: Release pairs with the Acquire in `is_stopped`: whoever sees the
        // flag also sees the reason.
        self.flag.store(true, Ordering::Release);
    }
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

/// Runs one thread's part of a transfer. If it panics, the run stops with
/// `"{what} panicked: {cause}"` and the set is aborted: the engine waits for this
/// thread's completions, and only an abort releases it. That message is the `Err`.
pub fn abort_on_panic<T>(
    stop: &Stop,
    set: &dyn DeviceSet,
    what: &str,
    f: impl FnOnce() -> T,
) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown cause".into());
        let e = format!("{what} panicked: {why}");
        stop.stop(StopReason::Failed(e.clone()));
        set.signal_abort();
        e
    })
}

/// Waits for the engine to configure the set, checking the stop flag between polls.
pub fn wait_configuration(
    set: &dyn DeviceSet,
    stop: &Stop,
    timeout: Duration,
) -> Result<openvdi::VdConfig, StopReason> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = stop.is_stopped().then(|| stop.reason()).flatten() {
            return Err(r);
        }
        match set.get_configuration(POLL_MS) {
            Ok(c) => return Ok(c),
            Err(DevError::Timeout) if Instant::now() < deadline => {}
            Err(DevError::Timeout) => {
                return Err(StopReason::Failed(format!(
                    "the engine did not open the virtual device set within {} s",
                    timeout.as_secs()
                )))
            }
            Err(e) => return Err(StopReason::device("GetConfiguration", e)),
        }
    }
}

#[cfg(test)]
mod tests;
