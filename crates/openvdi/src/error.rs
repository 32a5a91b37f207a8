//! Errors of the protocol library.
//!
//! Policy: every fallible call returns [`Error`]. Each variant maps to exactly one
//! `VD_E_*` result code through [`Error::hresult`], so the C layer is a plain
//! table lookup and never invents codes. Variants that carry a message say what was
//! wrong in words a user can act on (which name, which limit); the code alone is
//! what the VDI specification promises callers. Failures of the operating system
//! (shm_open, mmap, futex) keep their `std::io::Error` so nothing is lost; they map
//! to `VD_E_UNEXPECTED` unless the specification names a better code. A value read
//! from shared memory that breaks an invariant is [`Error::Corrupt`], which also
//! aborts the set: the peer can no longer be trusted.

use std::fmt;

/// A VDI result code: `0` for success or one of the `VD_E_*` values of
/// `vdierror.h` (reference §5.4), as the signed 32-bit integer the Linux headers use.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HResult(pub i32);

#[allow(non_upper_case_globals)]
impl HResult {
    /// Success (`NOERROR`).
    pub const NOERROR: HResult = HResult(0);
    /// Object not open.
    pub const VD_E_NOTOPEN: HResult = HResult(0x8077_0002_u32 as i32);
    /// The wait interval expired.
    pub const VD_E_TIMEOUT: HResult = HResult(0x8077_0003_u32 as i32);
    /// An abort is in effect; only termination calls are useful.
    pub const VD_E_ABORT: HResult = HResult(0x8077_0004_u32 as i32);
    /// The security environment could not be built.
    pub const VD_E_SECURITY: HResult = HResult(0x8077_0005_u32 as i32);
    /// An invalid parameter.
    pub const VD_E_INVALID: HResult = HResult(0x8077_0006_u32 as i32);
    /// The instance name is not recognised.
    pub const VD_E_INSTANCE_NAME: HResult = HResult(0x8077_0007_u32 as i32);
    /// The requested configuration is invalid or unsupported.
    pub const VD_E_NOTSUPPORTED: HResult = HResult(0x8077_0009_u32 as i32);
    /// Out of memory.
    pub const VD_E_MEMORY: HResult = HResult(0x8077_000A_u32 as i32);
    /// Internal error.
    pub const VD_E_UNEXPECTED: HResult = HResult(0x8077_000B_u32 as i32);
    /// The call is not legal in the current state.
    pub const VD_E_PROTOCOL: HResult = HResult(0x8077_000C_u32 as i32);
    /// All devices are open.
    pub const VD_E_OPEN: HResult = HResult(0x8077_000D_u32 as i32);
    /// The object is now closed.
    pub const VD_E_CLOSE: HResult = HResult(0x8077_000E_u32 as i32);
    /// The resource is busy.
    pub const VD_E_BUSY: HResult = HResult(0x8077_000F_u32 as i32);
    /// SendCommand: the device queue is full. The public headers give this name no
    /// value (reference §3.3, §11.5); openvdi uses the unused facility code 0x10.
    pub const VD_E_QUEUE_FULL: HResult = HResult(0x8077_0010_u32 as i32);
    /// SendCommand: the device is in IO-ERROR. No public value exists; openvdi uses 0x11.
    pub const VD_E_IO_ERROR: HResult = HResult(0x8077_0011_u32 as i32);

    /// The header name of this code.
    pub fn name(self) -> &'static str {
        match self {
            HResult::NOERROR => "NOERROR",
            HResult::VD_E_NOTOPEN => "VD_E_NOTOPEN",
            HResult::VD_E_TIMEOUT => "VD_E_TIMEOUT",
            HResult::VD_E_ABORT => "VD_E_ABORT",
            HResult::VD_E_SECURITY => "VD_E_SECURITY",
            HResult::VD_E_INVALID => "VD_E_INVALID",
            HResult::VD_E_INSTANCE_NAME => "VD_E_INSTANCE_NAME",
            HResult::VD_E_NOTSUPPORTED => "VD_E_NOTSUPPORTED",
            HResult::VD_E_MEMORY => "VD_E_MEMORY",
            HResult::VD_E_UNEXPECTED => "VD_E_UNEXPECTED",
            HResult::VD_E_PROTOCOL => "VD_E_PROTOCOL",
            HResult::VD_E_OPEN => "VD_E_OPEN",
            HResult::VD_E_CLOSE => "VD_E_CLOSE",
            HResult::VD_E_BUSY => "VD_E_BUSY",
            HResult::VD_E_QUEUE_FULL => "VD_E_QUEUE_FULL",
            HResult::VD_E_IO_ERROR => "VD_E_IO_ERROR",
            _ => "unknown",
        }
    }

    /// The code as the unsigned `0x8077xxxx` pattern.
    pub fn as_u32(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Debug for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(0x{:08X})", self.name(), self.0 as u32)
    }
}

impl fmt::Display for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a call of the protocol library failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `VD_E_TIMEOUT`: nothing happened within the timeout; the state is unchanged and
    /// the call may be repeated.
    #[error("timed out (VD_E_TIMEOUT)")]
    Timeout,
    /// `VD_E_ABORT`: the set is aborted; only Close is useful.
    #[error("the virtual device set is aborted: {0} (VD_E_ABORT)")]
    Abort(AbortReason),
    /// `VD_E_PROTOCOL`: the call is not legal in the current state.
    #[error("{0} (VD_E_PROTOCOL)")]
    Protocol(String),
    /// `VD_E_INVALID`: a bad argument (name, handle, pointer, command).
    #[error("{0} (VD_E_INVALID)")]
    Invalid(String),
    /// `VD_E_OPEN`: every device is already open (OpenDevice), or Close found devices
    /// still open and aborted the set.
    #[error("{0} (VD_E_OPEN)")]
    Open(String),
    /// `VD_E_CLOSE`: the server closed this device; the normal end of a stream.
    #[error("the device was closed by the server (VD_E_CLOSE)")]
    Close,
    /// `VD_E_NOTSUPPORTED`: a configuration value is invalid or unsupported.
    #[error("{0} (VD_E_NOTSUPPORTED)")]
    NotSupported(String),
    /// `VD_E_MEMORY`: shared memory could not be obtained.
    #[error("{0} (VD_E_MEMORY)")]
    Memory(String),
    /// `VD_E_BUSY`: the set name is held by a live owner (Create on a name another
    /// live set holds). "Create twice on one object" (reference §2.1, VD_E_PROTOCOL)
    /// cannot happen in this API, where Create makes a new [`ClientSet`](crate::ClientSet);
    /// the C layer keeps that cell and returns VD_E_PROTOCOL itself.
    #[error("{0} (VD_E_BUSY)")]
    Busy(String),
    /// `VD_E_QUEUE_FULL`: SendCommand found the device queue full.
    #[error("the device command queue is full (VD_E_QUEUE_FULL)")]
    QueueFull,
    /// `VD_E_IO_ERROR`: SendCommand found the device in IO-ERROR; only VDC_ClearError
    /// may be sent.
    #[error(
        "the device is in the IO-ERROR state; only VDC_ClearError may be sent (VD_E_IO_ERROR)"
    )]
    IoError,
    /// `VD_E_SECURITY`: permissions of the shared-memory objects refused access.
    #[error("{0} (VD_E_SECURITY)")]
    Security(String),
    /// `VD_E_UNEXPECTED`: shared memory broke an invariant; the set was aborted.
    #[error("corrupt shared memory: {0} (VD_E_UNEXPECTED)")]
    Corrupt(String),
    /// `VD_E_UNEXPECTED`: an operating-system call failed.
    #[error("{context}: {source} (VD_E_UNEXPECTED)")]
    Os {
        /// What was being done.
        context: String,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a set is aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// A client process called SignalAbort (or Close with devices open).
    Client,
    /// The server called SignalAbort.
    Server,
    /// The server process died.
    ServerDied,
    /// The primary client process died.
    ClientDied,
    /// The server gave up waiting for completions (serverTimeOut).
    ServerTimeout,
    /// A value in shared memory was corrupt.
    Corrupt,
    /// The reason was not recorded (an unknown value in shared memory).
    Unknown,
}

impl AbortReason {
    pub(crate) fn to_raw(self) -> u32 {
        match self {
            AbortReason::Client => 1,
            AbortReason::Server => 2,
            AbortReason::ServerDied => 3,
            AbortReason::ClientDied => 4,
            AbortReason::ServerTimeout => 5,
            AbortReason::Corrupt => 6,
            AbortReason::Unknown => 7,
        }
    }
    pub(crate) fn from_raw(v: u32) -> AbortReason {
        match v {
            1 => AbortReason::Client,
            2 => AbortReason::Server,
            3 => AbortReason::ServerDied,
            4 => AbortReason::ClientDied,
            5 => AbortReason::ServerTimeout,
            6 => AbortReason::Corrupt,
            _ => AbortReason::Unknown,
        }
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbortReason::Client => "the client signalled an abort",
            AbortReason::Server => "the server signalled an abort",
            AbortReason::ServerDied => "the server process died",
            AbortReason::ClientDied => "the primary client process died",
            AbortReason::ServerTimeout => {
                "the server timed out waiting for the client (serverTimeOut)"
            }
            AbortReason::Corrupt => "shared memory was found corrupt",
            AbortReason::Unknown => "reason unknown",
        })
    }
}

impl Error {
    /// The `VD_E_*` code for this error.
    pub fn hresult(&self) -> HResult {
        match self {
            Error::Timeout => HResult::VD_E_TIMEOUT,
            Error::Abort(_) => HResult::VD_E_ABORT,
            Error::Protocol(_) => HResult::VD_E_PROTOCOL,
            Error::Invalid(_) => HResult::VD_E_INVALID,
            Error::Open(_) => HResult::VD_E_OPEN,
            Error::Close => HResult::VD_E_CLOSE,
            Error::NotSupported(_) => HResult::VD_E_NOTSUPPORTED,
            Error::Memory(_) => HResult::VD_E_MEMORY,
            Error::Busy(_) => HResult::VD_E_BUSY,
            Error::QueueFull => HResult::VD_E_QUEUE_FULL,
            Error::IoError => HResult::VD_E_IO_ERROR,
            Error::Security(_) => HResult::VD_E_SECURITY,
            Error::Corrupt(_) | Error::Os { .. } => HResult::VD_E_UNEXPECTED,
        }
    }

    pub(crate) fn os(context: impl Into<String>, source: std::io::Error) -> Error {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => {
                Error::Security(format!("{context}: {source}"))
            }
            Some(libc::ENOMEM) | Some(libc::ENOSPC) => {
                Error::Memory(format!("{context}: {source}"))
            }
            _ => Error::Os { context, source },
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
