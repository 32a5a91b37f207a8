//! # openvdi — SQL Server's Virtual Device Interface, both halves
//!
//! VDI is how SQL Server streams BACKUP and RESTORE data to a backup application:
//! the application (the *client*) creates a named virtual device set, the engine
//! (the *server*) opens it, allocates buffers in shared memory and sends commands
//! (write these bytes, read into this buffer, flush …) to each device; the client
//! executes and completes them. Microsoft ships only the client half; this crate
//! implements both, over POSIX shared memory and futexes, on Linux.
//!
//! * Client half: [`ClientSet`] (`ClientVirtualDeviceSet`), [`ClientDevice`]
//!   (`ClientVirtualDevice`), [`Command`].
//! * Server half: [`ServerSet`] (`IServerVirtualDeviceSet2`), [`ServerDevice`]
//!   (`IServerVirtualDevice`), [`ServerBuffer`], [`Completion`].
//! * Constants with their exact values: [`vdc`], [`vdf`], [`win32`], [`HResult`].
//!
//! Data is never copied by the library: the server fills or reads a shared buffer,
//! the client gets a slice of the same memory. A blocked call on either side returns
//! `VD_E_ABORT` within microseconds when the other process dies, because each side
//! holds a robust futex word that the kernel marks and wakes at process exit.
//! `docs/PROTOCOL.md` in the repository describes the shared memory byte by byte.
//!
//! ```no_run
//! use openvdi::*;
//! # fn main() -> Result<()> {
//! let set = ClientSet::create("mybackup", &VdConfig { device_count: 1, ..Default::default() })?;
//! // … start `BACKUP DATABASE db TO VIRTUAL_DEVICE='mybackup'` elsewhere …
//! let cfg = set.get_configuration(Timeout::from_millis(30_000))?;
//! assert!(cfg.features & vdf::VDF_WriteMedia != 0);
//! let dev = set.open_device("mybackup")?;
//! let mut out = Vec::new();
//! loop {
//!     match dev.get_command(Timeout::INFINITE) {
//!         Ok(cmd) => {
//!             let code = match cmd.code() {
//!                 vdc::VDC_Write => { out.extend_from_slice(cmd.buffer()); win32::ERROR_SUCCESS }
//!                 vdc::VDC_Flush | vdc::VDC_ClearError => win32::ERROR_SUCCESS,
//!                 _ => win32::ERROR_NOT_SUPPORTED,
//!             };
//!             dev.complete_command(&cmd, code, cmd.size(), 0)?;
//!         }
//!         Err(Error::Close) => break,
//!         Err(e) => { set.signal_abort()?; return Err(e); }
//!     }
//! }
//! set.close()?;
//! # Ok(()) }
//! ```

#![cfg(target_os = "linux")]
// Unsafe code is denied everywhere except the two files that wrap the operating
// system and view shared memory; each of their unsafe blocks has a SAFETY comment.
#![deny(unsafe_code)]

mod client;
mod consts;
mod error;
mod layout;
mod server;
mod set;
#[allow(unsafe_code)]
mod shm;
#[allow(unsafe_code)]
mod sys;

use std::time::{Duration, Instant};

pub use client::{ClientDevice, ClientSet, Command, CommandId, MappedBuffer};
pub use consts::{vdc, vdf, whence, win32};
pub use error::{AbortReason, Error, HResult, Result};
pub use server::{Completion, ServerBuffer, ServerCommand, ServerConfig, ServerDevice, ServerSet};

#[doc(hidden)]
pub use client::control_bytes_for_tests;

/// CLOCK_MONOTONIC in nanoseconds, comparable between processes (for measuring how
/// fast one process learns of another's death).
pub fn monotonic_ns() -> u64 {
    sys::monotonic_ns()
}

/// Devices a set may have (reference §1.2).
pub const MAX_DEVICES: usize = 64;
/// Longest set or device name, in bytes.
pub const MAX_NAME_LEN: usize = layout::NAME_BYTES;
/// Commands a device can have queued or outstanding at once.
pub const MAX_OUTSTANDING: usize = layout::SLOTS;
/// Prefix of every object openvdi creates in /dev/shm: `openvdi-ctl.<set>` for the
/// control object, `openvdi-buf<N>.<set>` for buffer segments.
pub const SHM_PREFIX: &str = set::SHM_PREFIX;

/// The VDI configuration (`VDConfig`, reference §4.1): 11 × 32-bit fields, 44 bytes,
/// the same layout as the C struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[doc(alias = "VDConfig")]
pub struct VdConfig {
    /// Number of devices, 1..=64 (client).
    pub device_count: u32,
    /// Feature bits ([`vdf`]): requested by the client, returned by the server.
    pub features: u32,
    /// Bytes reserved before each buffer for the client (client).
    pub prefix_zone_size: u32,
    /// Buffer alignment: the client's minimum, the server's final value.
    pub alignment: u32,
    /// Soft filemark block size (client, with VDF_FileMarks).
    pub soft_file_mark_block_size: u32,
    /// End-of-media warning size (client).
    pub eom_warning_size: u32,
    /// Milliseconds the server waits for client progress; 0 = forever (client).
    pub server_time_out: u32,
    /// BLOCKSIZE (server).
    pub block_size: u32,
    /// Deprecated; returned as 4 (server).
    pub max_io_depth: u32,
    /// MAXTRANSFERSIZE (server).
    pub max_transfer_size: u32,
    /// Size of the buffer area (server).
    pub buffer_area_size: u32,
}

const _: () = assert!(std::mem::size_of::<VdConfig>() == 44);

impl VdConfig {
    pub(crate) fn to_words(self) -> [u32; 11] {
        [
            self.device_count,
            self.features,
            self.prefix_zone_size,
            self.alignment,
            self.soft_file_mark_block_size,
            self.eom_warning_size,
            self.server_time_out,
            self.block_size,
            self.max_io_depth,
            self.max_transfer_size,
            self.buffer_area_size,
        ]
    }

    pub(crate) fn from_words(w: [u32; 11]) -> VdConfig {
        VdConfig {
            device_count: w[0],
            features: w[1],
            prefix_zone_size: w[2],
            alignment: w[3],
            soft_file_mark_block_size: w[4],
            eom_warning_size: w[5],
            server_time_out: w[6],
            block_size: w[7],
            max_io_depth: w[8],
            max_transfer_size: w[9],
            buffer_area_size: w[10],
        }
    }
}

/// A VDI timeout in milliseconds (reference §1.8): 0 polls; a negative value and
/// `0xFFFFFFFF` (Windows' `INFINITE`) wait forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(Option<Duration>);

impl Timeout {
    /// Wait forever.
    pub const INFINITE: Timeout = Timeout(None);
    /// Do not wait.
    pub const POLL: Timeout = Timeout(Some(Duration::ZERO));

    /// From VDI milliseconds: negative or `0xFFFFFFFF` = forever.
    pub fn from_millis(ms: i64) -> Timeout {
        if ms < 0 || ms == 0xFFFF_FFFF {
            Timeout::INFINITE
        } else {
            Timeout(Some(Duration::from_millis(ms as u64)))
        }
    }

    /// From a duration.
    pub fn from_duration(d: Duration) -> Timeout {
        Timeout(Some(d))
    }

    /// The duration, or `None` for forever.
    pub fn duration(self) -> Option<Duration> {
        self.0
    }

    pub(crate) fn deadline(self) -> Option<Instant> {
        self.0.map(|d| {
            Instant::now()
                .checked_add(d)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365))
        })
    }
}

/// Options for creating a set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Share the set with a group: objects get mode 0660 and this group id, for an
    /// engine running as another user in that group (reference §9.3). `None`: 0600.
    pub group: Option<u32>,
}

/// System calls of the wait/wake hand-off made by this process so far:
/// (FUTEX_WAKE calls, futex_waitv calls). For benchmarks: with layout version 2 a
/// sleep costs at most one wake call.
pub fn futex_calls() -> (u64, u64) {
    (
        sys::FUTEX_WAKES.load(std::sync::atomic::Ordering::Relaxed),
        sys::FUTEX_WAITS.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// How many waits of the calling thread ended because the periodic health check
/// (every 200 ms of an idle sleep) found the peer dead or an object shrunk, rather
/// than a wake-up. A peer's death is meant to wake its survivors at once through the
/// robust-futex liveness word; the tests check that it does without timing it.
#[doc(hidden)]
pub fn waits_ended_by_health_check() -> u64 {
    set::health_ends()
}

/// Whether this kernel gives a sleeper the barrier that lets it sleep without a
/// bound (membarrier(2)); without it every sleep is a 1 ms slice followed by checks.
#[doc(hidden)]
pub fn has_sleep_barrier() -> bool {
    sys::heavy_barrier()
}

/// Remove objects in /dev/shm left by sets whose processes all died. Returns the
/// names of the sets reclaimed. Creating a set reclaims its own name's leftovers on
/// its own; this sweeps every name.
pub fn sweep_stale_sets() -> Vec<String> {
    sweep_stale_sets_bounded(usize::MAX)
}

/// At most this many control objects are looked at by the sweep that every Create
/// and server Open runs, so a /dev/shm full of names cannot make them slow.
pub(crate) const AUTO_SWEEP_LIMIT: usize = 256;

/// How old a control object without a valid header, or a buffer segment without a
/// control object, must be before the sweep takes it for debris.
const DEBRIS_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// [`sweep_stale_sets`], looking at no more than `limit` control objects.
pub(crate) fn sweep_stale_sets_bounded(limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    // Control objects whose Create died before publishing them (see
    // `ClientSet::create_with`): the staging name says whose they were.
    for n in sys::list_shm_names(set::STAGING_PREFIX)
        .into_iter()
        .take(limit)
    {
        let Some(pid) = set::staging_pid(&n) else {
            continue;
        };
        match sys::lstat_path(&format!("/dev/shm/{n}")) {
            Some((_, _, uid, ..)) if uid == sys::geteuid() => {}
            _ => continue,
        }
        if !sys::process_exists(pid) {
            let _ = sys::shm_unlink(&format!("/{n}"));
        }
    }
    for n in sys::list_shm_names(&format!("{SHM_PREFIX}ctl."))
        .into_iter()
        .take(limit)
    {
        let set = n[format!("{SHM_PREFIX}ctl.").len()..].to_string();
        // Only this user's own leftovers: another user's objects are theirs to clean.
        match sys::lstat_path(&format!("/dev/shm/{n}")) {
            Some((_, _, uid, ..)) if uid == sys::geteuid() => {}
            _ => continue,
        }
        let ctl = set::map_control(&set);
        if matches!(ctl, Ok(None))
            || matches!(&ctl, Ok(Some(c)) if c.header().magic.load(std::sync::atomic::Ordering::Acquire) != layout::MAGIC)
        {
            // Unsized or without the magic: published control objects are always
            // whole (built under a staging name first), so this is debris — of a
            // writer that truncated or replaced it, or of a version that built in
            // place. Left a minute to whoever is at it, then reclaimed.
            if sys::modified_ago(&format!("/dev/shm/{n}")).is_some_and(|a| a >= DEBRIS_AGE) {
                set::unlink_set_objects(&set);
                out.push(set);
            }
            continue;
        }
        if let Ok(Some(ctl)) = ctl {
            let h = ctl.header();
            let pid = h.creator_pid.load(std::sync::atomic::Ordering::Relaxed);
            let client = h.client_live.v.load(std::sync::atomic::Ordering::Acquire);
            // A header still being written (no pid yet) belongs to a Create in progress.
            if pid == 0 && client & sys::FUTEX_OWNER_DIED == 0 {
                continue;
            }
            let server = h.server_live.v.load(std::sync::atomic::Ordering::Acquire);
            // Gone: the kernel marked its liveness word, or its process is no more,
            // or it closed the set. A word still 0 with a live creator is a Create
            // that has not started its sentinel yet, not a departure.
            let closed = h.client_closed.v.load(std::sync::atomic::Ordering::Acquire) != 0;
            let client_gone =
                client & sys::FUTEX_OWNER_DIED != 0 || !sys::process_exists(pid) || closed;
            if client_gone && !set::word_alive(server) {
                set::unlink_set_objects(&set);
                out.push(set);
            }
        }
    }
    // Buffer segments whose set has no control object any more (its owner was
    // killed between the two unlinks, or something removed the control object):
    // nothing can find them again. Segments only ever exist after their control
    // object was published, so none of these is a set being made.
    for n in sys::list_shm_names(&format!("{SHM_PREFIX}buf"))
        .into_iter()
        .take(limit)
    {
        let Some((_, set)) = n.split_once('.') else {
            continue;
        };
        let path = format!("/dev/shm/{n}");
        match sys::lstat_path(&path) {
            Some((_, _, uid, ..)) if uid == sys::geteuid() => {}
            _ => continue,
        }
        if sys::lstat_path(&format!("/dev/shm{}", set::ctl_name(set))).is_none()
            && sys::modified_ago(&path).is_some_and(|a| a >= DEBRIS_AGE)
        {
            let _ = sys::shm_unlink(&format!("/{n}"));
        }
    }
    out
}
