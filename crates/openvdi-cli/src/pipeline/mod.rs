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

/// Why a pipeline stopped early; the first reason wins.
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
    /// Records the first reason and raises the flag.
    pub fn stop(&self, why: StopReason) {
        if let Ok(mut r) = self.reason.lock() {
            if r.is_none() {
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
            Err(e) => return Err(StopReason::Failed(format!("GetConfiguration: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests;
