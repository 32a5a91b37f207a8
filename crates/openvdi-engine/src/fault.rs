//! Fault injection: the engine misbehaves on purpose, the way a real server or a
//! real failure would, so a VDI client's error paths can be tested without SQL
//! Server. Chosen per run with `OPENVDI_FAULT=mode[:arg][,mode[:arg]…]` or
//! [`crate::Engine::with_fault`].
//!
//! | mode | what the engine does | what the client should see |
//! |---|---|---|
//! | `abort-after-bytes:N` | SignalAbort once N bytes (all devices) have been transferred | `VD_E_ABORT` from GetCommand/CompleteCommand; the statement fails with 3013 |
//! | `abort-after-commands:N` | SignalAbort once N data commands were sent | as above |
//! | `crash-at:POINT` | the engine process kills itself with SIGKILL (no cleanup) at POINT: `open`, `configured`, `first-transfer`, `mid` (half the stream), `flush`, `complete` | `VD_E_ABORT` within milliseconds (the core notices the dead peer through its robust liveness word); nothing hangs |
//! | `delay:MS` | sleeps MS before sending each command | GetCommand with a shorter timeout returns `VD_E_TIMEOUT` and may be retried; the operation still succeeds |
//! | `multi-flush:N` | sends VDC_Flush N times per device at the end (as with FILESTREAM) | each Flush must be completed; a client that took the first Flush as the end fails; with VDF_RequestComplete, VDC_Complete still comes last |
//! | `stall[:MS]` | after the first command on each device, stops sending and stops waiting for completions for MS (default 60000), then aborts | the client's own GetCommand timeout fires (`VD_E_TIMEOUT`); a client that gives up calls SignalAbort and the statement fails with 3013 (`VD_E_ABORT` in the engine) |
//! | `fail-command:N` | as the Nth command on the first device sends VDC_Rewind, which a pipe-like device does not support; expects `ERROR_NOT_SUPPORTED`, then sends VDC_ClearError and carries on | the client completes the unknown command with 50 (ERROR_NOT_SUPPORTED) and VDC_ClearError with 0; the operation succeeds. Completing the Rewind with success fails the statement (the engine cannot trust the device) |
//! | `enospc-after:N` | RESTORE's writes into database files fail with ENOSPC once N bytes (all devices) have been written — a test-only stand-in for a full disk, so the disk-full path is tested without filling one | the statement fails with 3202 "… no space left on device" naming the file; the database stays RESTORING |
//! | `no-complete` | never sends VDC_Complete, even to a client that asked for it (VDF_RequestComplete), as SQL Server did before KB 3188454: the end of a backup is the last VDC_Flush, then the devices close | a client must harden its data by the last Flush (or at the latest when the device closes) and succeed without VDC_Complete |
//! | `abort-at:POINT` | SignalAbort at POINT (`open`, `configured`, `first-transfer`, `mid`, `flush`, `complete`, as for `crash-at`) and fail the statement | `VD_E_ABORT`; the client must exit non-zero and keep nothing it presents as a backup |
//! | `short-reads` | RESTORE asks for reads of one to eight blocks in an irregular pattern, BACKUP writes such sizes too | a client that assumed read sizes equal write sizes, or full-size reads, fails; a correct one succeeds |
//! | `fixed-reads` | RESTORE asks for full MAXTRANSFERSIZE reads only (by default every fourth read has another size) | nothing: the conformance kit uses it so that only its read-size scenario varies them |
//!
//! The serverTimeOut path (the client stops completing and the engine gives up after
//! two intervals) needs no fault mode: the engine always honours the client's
//! `serverTimeOut`; the test makes the client stall.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Where `crash-at` fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after opening the set.
    Open,
    /// After EndConfiguration (the client's GetConfiguration has returned).
    Configured,
    /// After the first data command was sent.
    FirstTransfer,
    /// When half of the stream has been transferred.
    Mid,
    /// Before the first VDC_Flush.
    Flush,
    /// Before VDC_Complete (or, without it, before closing the devices).
    Complete,
}

/// One fault mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `abort-after-bytes:N`.
    AbortAfterBytes(u64),
    /// `abort-after-commands:N`.
    AbortAfterCommands(u64),
    /// `crash-at:POINT`.
    CrashAt(CrashPoint),
    /// `delay:MS`.
    Delay(u64),
    /// `multi-flush:N`.
    MultiFlush(u32),
    /// `stall[:MS]`.
    Stall(u64),
    /// `fail-command:N`.
    FailCommand(u64),
    /// `short-reads`.
    ShortReads,
    /// `fixed-reads`.
    FixedReads,
    /// `enospc-after:N`.
    EnospcAfter(u64),
    /// `no-complete`.
    NoComplete,
    /// `abort-at:POINT`.
    AbortAt(CrashPoint),
}

/// A set of faults for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The faults.
    pub faults: Vec<Fault>,
}

impl FaultPlan {
    /// No faults.
    pub fn none() -> FaultPlan {
        FaultPlan::default()
    }

    /// From `OPENVDI_FAULT` (empty or unset: none).
    pub fn from_env() -> Result<FaultPlan, String> {
        match std::env::var("OPENVDI_FAULT") {
            Ok(s) if !s.trim().is_empty() => FaultPlan::parse(&s),
            _ => Ok(FaultPlan::none()),
        }
    }

    /// Parse `mode[:arg][,mode[:arg]…]`.
    pub fn parse(s: &str) -> Result<FaultPlan, String> {
        let mut faults = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (mode, arg) = match part.split_once(':') {
                Some((m, a)) => (m.trim(), Some(a.trim())),
                None => (part, None),
            };
            let num = |what: &str| -> Result<u64, String> {
                arg.ok_or_else(|| format!("fault mode {mode} needs :{what}"))?
                    .parse()
                    .map_err(|_| format!("fault mode {mode}: {arg:?} is not a number"))
            };
            let f = match mode {
                "abort-after-bytes" => Fault::AbortAfterBytes(num("N")?),
                "abort-after-commands" => Fault::AbortAfterCommands(num("N")?),
                "crash-at" => Fault::CrashAt(point(mode, arg)?),
                "abort-at" => Fault::AbortAt(point(mode, arg)?),
                "no-complete" => Fault::NoComplete,
                "delay" => Fault::Delay(num("MS")?),
                "multi-flush" => {
                    let n = num("N")?;
                    Fault::MultiFlush(u32::try_from(n.clamp(1, 64)).unwrap_or(1))
                }
                "stall" => Fault::Stall(if arg.is_some() { num("MS")? } else { 60_000 }),
                "fail-command" => Fault::FailCommand(num("N")?.max(1)),
                "short-reads" => Fault::ShortReads,
                "fixed-reads" => Fault::FixedReads,
                "enospc-after" => Fault::EnospcAfter(num("N")?),
                _ => return Err(format!("unknown fault mode {mode:?}")),
            };
            faults.push(f);
        }
        Ok(FaultPlan { faults })
    }

    /// `no-complete`: VDC_Complete is never sent.
    pub fn no_complete(&self) -> bool {
        self.faults.contains(&Fault::NoComplete)
    }

    /// `abort-at:POINT`, if any.
    pub fn abort_at(&self) -> Option<CrashPoint> {
        self.find(|f| match f {
            Fault::AbortAt(p) => Some(*p),
            _ => None,
        })
    }

    /// Whether there are no faults.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    fn find<T>(&self, f: impl Fn(&Fault) -> Option<T>) -> Option<T> {
        self.faults.iter().find_map(f)
    }

    /// `enospc-after:N`: bytes a restore may write before writes fail with ENOSPC.
    pub fn enospc_after(&self) -> Option<u64> {
        self.find(|f| match f {
            Fault::EnospcAfter(n) => Some(*n),
            _ => None,
        })
    }

    /// The crash point, if any.
    pub fn crash_at(&self) -> Option<CrashPoint> {
        self.find(|f| match f {
            Fault::CrashAt(p) => Some(*p),
            _ => None,
        })
    }

    /// Delay before each command.
    pub fn delay(&self) -> Option<Duration> {
        self.find(|f| match f {
            Fault::Delay(ms) => Some(Duration::from_millis(*ms)),
            _ => None,
        })
    }

    /// How many VDC_Flush per device (1 without the fault).
    pub fn flushes(&self) -> u32 {
        self.find(|f| match f {
            Fault::MultiFlush(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(1)
    }

    /// Stall duration.
    pub fn stall(&self) -> Option<Duration> {
        self.find(|f| match f {
            Fault::Stall(ms) => Some(Duration::from_millis(*ms)),
            _ => None,
        })
    }

    /// Which command of the first device is replaced by an unsupported one.
    pub fn fail_command(&self) -> Option<u64> {
        self.find(|f| match f {
            Fault::FailCommand(n) => Some(*n),
            _ => None,
        })
    }

    /// Whether transfers are short and irregular.
    pub fn short_reads(&self) -> bool {
        self.faults.contains(&Fault::ShortReads)
    }

    /// Whether restore reads are all full size (`fixed-reads`).
    pub fn fixed_reads(&self) -> bool {
        self.faults.contains(&Fault::FixedReads)
    }
}

/// A `crash-at` / `abort-at` point by name.
fn point(mode: &str, arg: Option<&str>) -> Result<CrashPoint, String> {
    Ok(match arg {
        Some("open") => CrashPoint::Open,
        Some("configured") => CrashPoint::Configured,
        Some("first-transfer") => CrashPoint::FirstTransfer,
        Some("mid") => CrashPoint::Mid,
        Some("flush") => CrashPoint::Flush,
        Some("complete") => CrashPoint::Complete,
        other => {
            return Err(format!(
                "{mode} needs one of open, configured, first-transfer, mid, flush, complete (got {other:?})"
            ))
        }
    })
}

/// Counters shared by the device threads of one operation, to decide when an
/// `abort-after-*` fault or `crash-at:mid` fires.
#[derive(Debug, Default)]
pub struct FaultState {
    /// Data bytes transferred so far.
    pub bytes: AtomicU64,
    /// Data commands sent so far.
    pub commands: AtomicU64,
    /// Expected total bytes (for `crash-at:mid`), 0 if unknown.
    pub total_hint: AtomicU64,
    /// Set once an abort fault fired.
    pub fired: AtomicBool,
}

impl FaultState {
    /// Whether an abort fault should fire now (and mark it fired).
    pub fn should_abort(&self, plan: &FaultPlan) -> bool {
        let b = self.bytes.load(Ordering::Relaxed);
        let c = self.commands.load(Ordering::Relaxed);
        let due = plan.faults.iter().any(|f| match f {
            Fault::AbortAfterBytes(n) => b >= *n,
            Fault::AbortAfterCommands(n) => c >= *n,
            _ => false,
        });
        due && !self.fired.swap(true, Ordering::AcqRel)
    }

    /// Whether `crash-at:mid` is due.
    pub fn past_middle(&self) -> bool {
        let t = self.total_hint.load(Ordering::Relaxed);
        t > 0 && self.bytes.load(Ordering::Relaxed) * 2 >= t
    }
}

/// Kill this process with SIGKILL: no destructors, no atexit, no shared-memory
/// cleanup — what a crashed SQL Server looks like to the client.
pub fn crash_now(point: CrashPoint) -> ! {
    // Straight to fd 2, not through `eprintln!`: another thread of this process may
    // hold the standard error lock for as long as it likes (openvdi-sqlcmd holds it
    // while a statement runs), and a crash must never wait for it.
    let msg =
        format!("openvdi-engine: fault crash-at:{point:?}: killing this process with SIGKILL\n");
    let _ = rustix::io::write(rustix::stdio::stderr(), msg.as_bytes());
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    // SIGKILL cannot be caught; if kill itself failed, abort is the next best thing.
    std::process::abort()
}

/// Crash if the plan says so at `point`.
pub fn maybe_crash(plan: &FaultPlan, point: CrashPoint) {
    if plan.crash_at() == Some(point) {
        crash_now(point);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_mode() {
        let p = FaultPlan::parse(
            "abort-after-bytes:100, abort-after-commands:3,crash-at:mid,delay:5,multi-flush:3,stall,fail-command:2,short-reads,enospc-after:4096,no-complete,abort-at:flush,fixed-reads",
        )
        .unwrap();
        assert_eq!(p.faults.len(), 12);
        assert!(p.fixed_reads());
        assert!(p.no_complete());
        assert_eq!(p.abort_at(), Some(CrashPoint::Flush));
        assert!(FaultPlan::parse("abort-at:never").is_err());
        assert_eq!(p.enospc_after(), Some(4096));
        assert_eq!(p.crash_at(), Some(CrashPoint::Mid));
        assert_eq!(p.delay(), Some(Duration::from_millis(5)));
        assert_eq!(p.flushes(), 3);
        assert_eq!(p.stall(), Some(Duration::from_millis(60_000)));
        assert_eq!(p.fail_command(), Some(2));
        assert!(p.short_reads());
        assert_eq!(
            FaultPlan::parse("stall:10").unwrap().stall(),
            Some(Duration::from_millis(10))
        );
        assert!(FaultPlan::parse("bogus").is_err());
        assert!(FaultPlan::parse("delay").is_err());
        assert!(FaultPlan::parse("crash-at:never").is_err());
        assert!(FaultPlan::parse("").unwrap().is_empty());
        assert_eq!(FaultPlan::none().flushes(), 1);
    }

    #[test]
    fn abort_fires_once() {
        let p = FaultPlan::parse("abort-after-bytes:10").unwrap();
        let s = FaultState::default();
        assert!(!s.should_abort(&p));
        s.bytes.store(10, Ordering::Relaxed);
        assert!(s.should_abort(&p));
        assert!(!s.should_abort(&p));
        s.total_hint.store(20, Ordering::Relaxed);
        assert!(s.past_middle());
    }
}
