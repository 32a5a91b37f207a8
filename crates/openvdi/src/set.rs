//! What both halves share: object names, the mapped set, abort, peer liveness,
//! segment mappings and the spin-then-futex wait.

use std::sync::atomic::{compiler_fence, fence, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{AbortReason, Error, Result};
use crate::layout::{self, MAX_SEGMENTS};
use crate::shm::Control;
use crate::sys::{self, Mapping, Woke, FUTEX_OWNER_DIED, FUTEX_TID_MASK, FUTEX_WAITERS};

/// Prefix of every object openvdi puts in /dev/shm.
pub const SHM_PREFIX: &str = "openvdi-";

/// The control object's shm name.
pub fn ctl_name(set: &str) -> String {
    format!("/{SHM_PREFIX}ctl.{set}")
}

/// Prefix of the staging names control objects are built under (see
/// `ClientSet::create_with`): `openvdi-new.<pid>.<n>`.
pub const STAGING_PREFIX: &str = "openvdi-new.";

/// A fresh staging name for a control object built by process `pid`.
pub fn staging_name(pid: u32) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("/{STAGING_PREFIX}{pid}.{n}")
}

/// The pid a staging object name carries (`None`: not a staging name).
pub fn staging_pid(object: &str) -> Option<u32> {
    let rest = object.strip_prefix(STAGING_PREFIX)?;
    let (pid, n) = rest.split_once('.')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Buffer segment `i`'s shm name.
pub fn seg_name(set: &str, i: usize) -> String {
    format!("/{SHM_PREFIX}buf{i}.{set}")
}

/// Check a set or device name: 1..=128 bytes, no '/', '\\' or NUL (reference §1.2,
/// §9.2: the names become parts of shm object names).
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid(format!("{kind} name is empty")));
    }
    if name.len() > crate::MAX_NAME_LEN {
        return Err(Error::Invalid(format!(
            "{kind} name is {} bytes long; the limit is {}",
            name.len(),
            crate::MAX_NAME_LEN
        )));
    }
    if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\' | '\0')) {
        return Err(Error::Invalid(format!(
            "{kind} name {name:?} contains the forbidden character {c:?}"
        )));
    }
    Ok(())
}

/// How long a waiter spins before it sleeps on a futex. A busy pipeline then pays no
/// system call per command; an idle one costs a few microseconds of CPU per wait.
fn spin_budget() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("OPENVDI_SPIN_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(30);
        Duration::from_micros(us)
    })
}

thread_local! {
    /// This thread's current spin budget in ns (see [`block_on`]), 0 = not yet set.
    static SPIN_NOW: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Waits of this thread that a periodic health check ended (see
    /// [`crate::waits_ended_by_health_check`]).
    static HEALTH_ENDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Waits of the calling thread that ended because a periodic health check, not a
/// wake-up, found the set broken.
pub fn health_ends() -> u64 {
    HEALTH_ENDS.with(|c| c.get())
}

/// The spin budget adapts per thread between [`spin_budget`] and 1/32 of it: halved
/// each time a spin ends in a sleep, doubled each time the event arrives while
/// spinning, and back at its maximum when the event arrives during a sleep but within
/// the maximum (see [`spin_would_have_caught`]). On a machine with more runnable
/// threads than cores the peer is often not running at all, and every microsecond
/// spent spinning for it is taken from it or from the process it waits behind; when
/// both run, spins succeed and the budget stays at its maximum.
fn adapt_spin(succeeded: bool) {
    let max = spin_budget().as_nanos() as u64;
    SPIN_NOW.with(|c| {
        let now = match c.get() {
            0 => max,
            v => v,
        };
        let next = if succeeded {
            (now * 2).min(max)
        } else {
            (now / 2).max(max / 32)
        };
        c.set(next);
    });
}

/// A wait that slept but ended within the maximum spin budget: a full-length spin
/// would have caught it, and this one slept only because earlier waits had shrunk the
/// budget. Without this the budget only grew back through spins that succeeded, which
/// at 1 µs almost none do when each hand-off takes a few: a one-device transfer whose
/// peer stalled once could sleep on every command for the rest of the run, each sleep
/// costing the peer a wake call (6–11 GB/s instead of 70–95, 5 000–15 000 client
/// sleeps). Ten 48 GiB runs each with two CPU hogs for their first 0.3 s: without it
/// two ended at 7 and 17.5 GB/s; with it none fell below 31 GB/s.
fn spin_would_have_caught(waited: Duration) {
    let max = spin_budget();
    if waited < max {
        SPIN_NOW.with(|c| c.set(max.as_nanos() as u64));
    }
}

fn current_spin() -> Duration {
    let v = SPIN_NOW.with(|c| c.get());
    if v == 0 {
        spin_budget()
    } else {
        Duration::from_nanos(v)
    }
}

/// The mapped set, shared by every handle of one process.
#[derive(Debug)]
pub struct SetShared {
    pub name: String,
    pub ctl: Control,
    /// Buffer segments mapped in this process. Each entry is set once (the server's
    /// own segment when it makes it, a client's on first use) and never replaced or
    /// unmapped before the set is dropped, so looking one up on the hot path is a
    /// single Acquire load: no lock, no reference-count traffic but the caller's.
    segs: [OnceLock<Arc<Mapping>>; MAX_SEGMENTS],
    /// The peer's process (thread) id, remembered the first time it was seen alive,
    /// so its death is noticed even when its liveness word can no longer be trusted
    /// (a peer that zeroed it, or an object pulled away before the kernel could mark it).
    peer_tid: AtomicU32,
    /// The uid this process expects the peer's objects to belong to (besides its own
    /// and root): the control object's owner, for a server; the server's, for a client.
    pub peer_uid: AtomicU32,
}

/// How long a blocked call sleeps at most before it re-checks, with system calls,
/// what no futex can report: that an object of the set was shrunk under it, or that
/// the peer died without its liveness word saying so. Idle waits only; the hand-off
/// path never reaches it.
const HEALTH_SLICE: Duration = Duration::from_millis(200);
/// Longest sleep when membarrier(2) is unavailable (see `block_on`).
const NO_BARRIER_SLICE: Duration = Duration::from_millis(1);

impl SetShared {
    pub fn new(name: String, ctl: Control) -> SetShared {
        // Before this process publishes anything on the set (see `wake_if_sleeping`).
        let _ = sys::light_publication();
        SetShared {
            name,
            ctl,
            segs: std::array::from_fn(|_| OnceLock::new()),
            peer_tid: AtomicU32::new(0),
            peer_uid: AtomicU32::new(sys::geteuid()),
        }
    }

    /// If a SIGBUS on one of this set's mappings was absorbed by the guard, why.
    /// One load when nothing ever faulted in this process (inlined: every hot path
    /// asks; the rest is out of line and cold).
    #[inline]
    fn faulted(&self) -> Option<String> {
        if sys::GUARD_FAULTS.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.faulted_slow()
    }

    #[cold]
    fn faulted_slow(&self) -> Option<String> {
        if self.ctl.mapping().faulted() {
            return Some(format!(
                "the control object of set {:?} was shrunk by another process while in use",
                self.name
            ));
        }
        self.segs.iter().enumerate().find_map(|(i, m)| {
            m.get().filter(|m| m.faulted()).map(|_| {
                format!(
                    "buffer segment {i} of set {:?} was shrunk by another process while in use",
                    self.name
                )
            })
        })
    }

    /// The checks that need system calls, made once per [`HEALTH_SLICE`] of an idle
    /// wait: every mapped object still as large as its mapping, and the peer alive.
    /// Aborts the set and returns the error when one fails.
    pub fn health(&self, peer_live: &AtomicU32, peer_died: AbortReason) -> Option<Error> {
        let mut why = None;
        if !self.ctl.mapping().intact() {
            why = Some(format!(
                "the control object of set {:?} was shrunk by another process",
                self.name
            ));
        } else {
            for (i, m) in self.segs.iter().enumerate() {
                if m.get().is_some_and(|m| !m.intact()) {
                    why = Some(format!(
                        "buffer segment {i} of set {:?} was shrunk by another process",
                        self.name
                    ));
                    break;
                }
            }
        }
        if let Some(why) = why {
            self.abort(AbortReason::Corrupt);
            return Some(Error::Corrupt(why));
        }
        let v = peer_live.load(Ordering::Acquire);
        if word_alive(v) {
            let _ = self.peer_tid.compare_exchange(
                0,
                v & FUTEX_TID_MASK,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        let tid = self.peer_tid.load(Ordering::Relaxed);
        if tid != 0 && !sys::process_exists(tid) && self.aborted().is_none() {
            self.abort(peer_died);
            return self.abort_error();
        }
        None
    }

    pub fn devices(&self) -> usize {
        self.ctl.devices()
    }

    /// The abort reason, if the set is aborted. SYNC POINT: Acquire pairs with the
    /// AcqRel compare-exchange in `abort`.
    /// A set whose memory was pulled away (see `faulted`) counts as aborted for
    /// corrupt memory, whatever its (now private, zeroed) abort word says.
    #[inline]
    pub fn aborted(&self) -> Option<AbortReason> {
        if self.faulted().is_some() {
            return Some(AbortReason::Corrupt);
        }
        match self.ctl.header().abort.v.load(Ordering::Acquire) {
            0 => None,
            r => Some(AbortReason::from_raw(r)),
        }
    }

    /// The abort as an error, if the set is aborted. Two loads when it is not (every
    /// call of the hand-off path asks); the rest is out of line.
    #[inline(always)]
    pub fn abort_error(&self) -> Option<Error> {
        if sys::GUARD_FAULTS.load(Ordering::Acquire) == 0
            && self.ctl.header().abort.v.load(Ordering::Acquire) == 0
        {
            return None;
        }
        self.abort_error_slow()
    }

    #[cold]
    #[inline(never)]
    fn abort_error_slow(&self) -> Option<Error> {
        if let Some(why) = self.faulted() {
            self.abort(AbortReason::Corrupt);
            return Some(Error::Corrupt(why));
        }
        self.aborted().map(Error::Abort)
    }

    /// Put the set in the Abort state (first reason wins) and wake every waiter of
    /// both sides.
    pub fn abort(&self, reason: AbortReason) {
        let h = self.ctl.header();
        let _ = h
            .abort
            .v
            .compare_exchange(0, reason.to_raw(), Ordering::AcqRel, Ordering::Acquire);
        self.wake_everyone();
    }

    pub fn wake_everyone(&self) {
        let h = self.ctl.header();
        sys::futex_wake_all(&h.abort.v);
        sys::futex_wake_all(&h.state.v);
        for i in 0..self.devices() {
            if let Some(d) = self.ctl.device(i) {
                sys::futex_wake_all(&d.sub_event.v);
                sys::futex_wake_all(&d.cmp_event.v);
            }
        }
    }

    /// Abort with `reason` if the robust word says its owner died; returns the abort
    /// error then.
    pub fn check_peer(&self, live: &AtomicU32, reason: AbortReason) -> Option<Error> {
        if live.load(Ordering::Acquire) & FUTEX_OWNER_DIED != 0 {
            self.abort(reason);
            return self.abort_error();
        }
        None
    }

    /// A mapping of buffer segment `i`, mapped on first use. The index and size come
    /// from the peer and are validated against the published table.
    #[inline]
    pub fn segment(&self, i: u32) -> Result<Arc<Mapping>> {
        match self.segs.get(i as usize).and_then(|m| m.get()) {
            Some(m) => Ok(m.clone()),
            None => self.map_segment(i as usize),
        }
    }

    #[cold]
    fn map_segment(&self, i: usize) -> Result<Arc<Mapping>> {
        let h = self.ctl.header();
        // SYNC POINT: Acquire pairs with the server's Release store of segment_count
        // after it wrote the entry, so the size read below is the published one.
        let count = h.segment_count.v.load(Ordering::Acquire) as usize;
        if i >= count.min(MAX_SEGMENTS) {
            return Err(Error::Corrupt(format!(
                "buffer segment {i} is not published (count {count})"
            )));
        }
        let size = h.segments[i].size.load(Ordering::Relaxed);
        if size == 0 || size > (1u64 << 40) {
            return Err(Error::Corrupt(format!(
                "buffer segment {i} has an impossible size {size}"
            )));
        }
        let name = seg_name(&self.name, i);
        let fd = sys::shm_open_existing(&name)
            .map_err(|e| Error::os(format!("opening buffer segment {name}"), e))?;
        let (actual, mode, uid, _) =
            sys::fstat(&fd).map_err(|e| Error::os("fstat of a buffer segment", e))?;
        // Only the server may have made it: an object another user slipped in under
        // the name (after unlinking ours, or before the server created it) would
        // receive the data. Nobody but owner and group may have access.
        let mut peer = self.peer_uid.load(Ordering::Relaxed);
        if uid != peer {
            // The server's user: the owner of its process, found through the thread id
            // its liveness word holds (kernel facts; the header is only a pointer to them).
            let tid = self.ctl.header().server_live.v.load(Ordering::Acquire) & FUTEX_TID_MASK;
            if let Some((_, _, u, ..)) = sys::lstat_path(&format!("/proc/{tid}")) {
                peer = u;
            }
        }
        if (uid != peer && uid != sys::geteuid() && uid != 0) || mode & 0o007 != 0 {
            self.abort(AbortReason::Corrupt);
            return Err(Error::Security(format!(
                "buffer segment {name} belongs to uid {uid} with mode {:o}; expected the server's (uid {peer}) without access for others",
                mode & 0o777
            )));
        }
        if actual < size {
            return Err(Error::Corrupt(format!(
                "buffer segment {name} is {actual} bytes, {size} published"
            )));
        }
        let m = Arc::new(
            Mapping::map(&fd, size as usize, true)
                .map_err(|e| Error::os(format!("mapping {name}"), e))?,
        );
        // Two threads may have mapped it at once: the first to publish wins, the
        // other's mapping is dropped (unmapped) here.
        Ok(self.segs[i].get_or_init(|| m).clone())
    }

    /// Install a mapping made by this process (the server's own segments).
    pub fn install_segment(&self, i: usize, m: Arc<Mapping>) -> Result<()> {
        self.segs
            .get(i)
            .ok_or_else(|| Error::Memory(format!("no buffer segment {i}")))?
            .set(m)
            .map_err(|_| Error::Protocol(format!("buffer segment {i} already exists")))
    }

    /// Find which mapped segment holds `p`: (segment, offset).
    pub fn locate(&self, p: *const u8) -> Option<(u32, u64)> {
        for (i, m) in self.segs.iter().enumerate() {
            if let Some(m) = m.get() {
                if m.contains(p) {
                    return Some((i as u32, p as u64 - m.as_ptr() as u64));
                }
            }
        }
        None
    }

    /// Remove every object of this set from /dev/shm (idempotent). A name that now
    /// holds another object than the one this process mapped (someone replaced it)
    /// or one that belongs to neither side's user is left alone: it is not ours.
    pub fn unlink_all(&self) {
        let me = sys::geteuid();
        let peer = self.peer_uid.load(Ordering::Relaxed);
        let ours = |path_name: &str, mapped: Option<&Mapping>| -> bool {
            let Some((_, _, uid, _, dev, ino)) = sys::lstat_path(&format!("/dev/shm{path_name}"))
            else {
                return false;
            };
            match mapped.and_then(|m| m.identity()) {
                Some(id) => id == (dev, ino),
                None => uid == me || uid == peer,
            }
        };
        let cn = ctl_name(&self.name);
        if ours(&cn, Some(self.ctl.mapping())) {
            let _ = sys::shm_unlink(&cn);
        }
        for (i, m) in self.segs.iter().enumerate() {
            let sn = seg_name(&self.name, i);
            if ours(&sn, m.get().map(|m| &**m)) {
                let _ = sys::shm_unlink(&sn);
            }
        }
    }
}

pub fn unlink_set_objects(name: &str) {
    let _ = sys::shm_unlink(&ctl_name(name));
    for i in 0..MAX_SEGMENTS {
        let _ = sys::shm_unlink(&seg_name(name, i));
    }
}

/// Whether a robust word names a live owner.
pub fn word_alive(v: u32) -> bool {
    v & FUTEX_TID_MASK != 0 && v & FUTEX_OWNER_DIED == 0
}

/// Set FUTEX_WAITERS in a robust word that has a live owner, so the kernel wakes us
/// if that owner dies.
fn arm_waiters(live: &AtomicU32) {
    let mut v = live.load(Ordering::SeqCst);
    while word_alive(v) && v & FUTEX_WAITERS == 0 {
        match live.compare_exchange_weak(v, v | FUTEX_WAITERS, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => break,
            Err(cur) => v = cur,
        }
    }
}

/// The sleeping side of a wait: the event word, the set's abort word, and the peer's
/// robust word; optionally a "someone sleeps" counter that wakers check.
pub struct WaitOn<'a> {
    pub event: &'a AtomicU32,
    pub abort: &'a AtomicU32,
    pub peer_live: &'a AtomicU32,
    /// A state word whose changes must also wake the waiter (the device state, whose
    /// SERVER_CLOSED bit ends a GetCommand). Without it a flag set between the
    /// waiter's last check and its sleep would be missed, because the event word's
    /// value would not have changed.
    pub state: Option<&'a AtomicU32>,
    pub sleepers: Option<&'a AtomicU32>,
    /// The set, for the periodic [`SetShared::health`] checks, and the reason to
    /// abort with if the peer turns out to be dead.
    pub health: Option<(&'a SetShared, AbortReason)>,
}

/// Pauses of a spin before a waiter counts itself in [`SPINNERS`] and looks whether
/// it should yield, and between two looks (~0.4 µs here). A round trip's hand-off
/// lands sooner (no shared write on its path). In the four-device case each thread
/// waits once per 1 MiB turn of ~12 µs; looking only every 64 pauses spun 1.6 µs of
/// each turn before yielding: median of 14 alternating 16 GiB runs 63 GB/s with 64,
/// 68 GB/s with 16.
const YIELD_CHECK: u32 = 16;

/// Threads of this process in the spin phase of [`block_on`] past its first
/// [`YIELD_CHECK`] pauses (a hand-off that lands sooner is not counted, and costs no
/// shared write).
static SPINNERS: AtomicUsize = AtomicUsize::new(0);

/// One thread's place in [`SPINNERS`], given back however the spin ends.
struct Spinning;

impl Spinning {
    fn start() -> Spinning {
        SPINNERS.fetch_add(1, Ordering::Relaxed);
        Spinning
    }
    /// Other threads spinning now.
    fn others(&self) -> usize {
        SPINNERS.load(Ordering::Relaxed).saturating_sub(1)
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        SPINNERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Block until `check` returns `Some`, spinning first, then sleeping on the futex
/// words; every sleep is bounded by `deadline`. `check` must itself detect abort and
/// peer death. Returns `Err(Timeout)` at the deadline.
///
/// While spinning, `check` runs only when `peek` says the awaited entry may have
/// arrived (one load of its ring word, no lock) or the abort word is set, and at
/// least every 64 pauses for everything `peek` does not look at (a closed device or
/// set, a dead peer). A hand-off is then seen one pause after it lands, not after a
/// whole `check` that started just before it.
pub fn block_on<T>(
    deadline: Option<Instant>,
    on: &WaitOn<'_>,
    peek: impl Fn() -> bool,
    mut check: impl FnMut() -> Option<Result<T>>,
) -> Result<T> {
    if let Some(r) = check() {
        return r;
    }
    // The spin budget starts at the first clock read, 64 pauses in: a hand-off that
    // lands within those (the busy-pipeline case) never reads the clock.
    let mut started: Option<Instant> = None;
    let mut n = 0u32;
    let mut spinning: Option<Spinning> = None;
    loop {
        // Re-check after every pause: a PAUSE costs ~40-140 cycles, so checking only
        // every few pauses would add microseconds to each hand-off. The clock is read
        // less often, it costs more than the check.
        std::hint::spin_loop();
        n = n.wrapping_add(1);
        let full = n.is_multiple_of(64);
        if full || peek() || on.abort.load(Ordering::Relaxed) != 0 {
            if let Some(r) = check() {
                // Only a wait that reached the budget's clock says the budget helped;
                // a hand-off within the first pauses says nothing about it (and costs
                // no thread-local update on the round trip's critical path).
                if started.is_some() {
                    adapt_spin(true);
                }
                return r;
            }
        }
        if n.is_multiple_of(YIELD_CHECK) {
            // Another thread of this process spinning too means more waiters than
            // the work can use (four devices' clients on two cores): the thread that
            // would end this wait may be queued behind a spinner, so give up the core
            // between checks. A lone spinner keeps it: yielding would hand it to any
            // other busy process for a whole time slice.
            let others = spinning.get_or_insert_with(Spinning::start).others();
            if others > 0 {
                std::thread::yield_now();
            }
        }
        if full {
            let now = Instant::now();
            // The budget does not change during a wait (only its end adapts it).
            let until = *started.get_or_insert(now) + current_spin();
            if now >= until || deadline.is_some_and(|d| now >= d) {
                adapt_spin(false);
                break;
            }
        }
    }
    drop(spinning);
    let caught = || {
        if let Some(t) = started {
            spin_would_have_caught(t.elapsed());
        }
    };
    loop {
        if let Some(r) = check() {
            caught();
            return r;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::Timeout);
        }
        // Dekker-style handshake with the waker: announce the sleep, then snapshot the
        // words, then re-check; the waker publishes, fences, then reads `sleepers`.
        // SYNC POINT: the SeqCst RMW here and the SeqCst fence in `wake_if_sleeping`.
        if let Some(s) = on.sleepers {
            s.fetch_or(1, Ordering::SeqCst);
        }
        arm_waiters(on.peer_live);
        fence(Ordering::SeqCst);
        // The other half of `wake_if_sleeping`'s SYNC POINT. Without a barrier that
        // reaches the publishers (no membarrier(2)), sleep in short slices instead:
        // a wake-up missed then costs at most a slice, never a hang.
        let barrier = sys::heavy_barrier();
        let ev = on.event.load(Ordering::SeqCst);
        let ab = on.abort.load(Ordering::SeqCst);
        let lv = on.peer_live.load(Ordering::SeqCst);
        let st = on.state.map(|w| (w, w.load(Ordering::SeqCst)));
        let ready = check();
        let woke = if ready.is_none() && ab == 0 {
            let mut words = vec![(on.event, ev), (on.abort, ab), (on.peer_live, lv)];
            words.extend(st);
            let slice = match (on.health, barrier) {
                (_, false) => Some(NO_BARRIER_SLICE),
                (Some(_), true) => Some(HEALTH_SLICE),
                (None, true) => None,
            };
            match slice.map(|s| Instant::now() + s) {
                Some(slice) => {
                    sys::futex_waitv(&words, Some(deadline.map_or(slice, |d| d.min(slice))))
                }
                None => sys::futex_waitv(&words, deadline),
            }
        } else {
            Ok(Woke::Recheck)
        };
        // No decrement (layout version 2): the waker cleared the announcement when it
        // woke us. A sleeper that woke for another reason leaves it set, which costs
        // at most one spare wake call later, never a lost one.
        if let Some(r) = ready {
            caught();
            return r;
        }
        match woke {
            Ok(Woke::TimedOut) => {
                if let Some((set, reason)) = on.health {
                    if let Some(e) = set.health(on.peer_live, reason) {
                        HEALTH_ENDS.with(|c| c.set(c.get() + 1));
                        return Err(e);
                    }
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => return Err(Error::os("futex_waitv", e)),
        }
    }
}

/// The waker's half of the handshake in `block_on`: after publishing with Release,
/// wake the event word only if a peer announced it sleeps on it — and take the
/// announcement down in the same step (swap to 0), so the next publications make no
/// wake call for a sleeper that is already woken but not yet running (layout version
/// 2: at most one wake call per sleep). The event word changes only here, so a
/// sleeper's futex value check sees the change whenever it is woken.
///
/// SYNC POINT (asymmetric Dekker): the publisher's store and its load of the
/// announcement need StoreLoad order against the sleeper's announcement and its
/// re-check. Since layout version 3 the sleeper pays for it (membarrier(2) in
/// `block_on`, a barrier on every running thread of the registered processes) and
/// a registered publisher only stops the compiler from reordering; a process that
/// could not register fences as before.
pub fn wake_if_sleeping(event: &AtomicU32, sleepers: &AtomicU32) {
    if sys::light_publication() {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
    // The plain load first keeps the common case (nobody asleep) a read-only access
    // to the line, so the publishing side does not take it exclusive on every command.
    if sleepers.load(Ordering::Relaxed) != 0 && sleepers.swap(0, Ordering::SeqCst) != 0 {
        event.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(event);
    }
}

/// A thread that owns a robust word for as long as this process takes part in the
/// set. A dedicated thread, because the kernel ties robust words to threads, and the
/// thread that created a set may well exit before the set ends.
#[derive(Debug)]
pub struct Sentinel {
    release: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub enum LiveWord {
    Client,
    Server,
}

impl Sentinel {
    pub fn start(set: Arc<SetShared>, which: LiveWord) -> Result<Sentinel> {
        let release = Arc::new(AtomicU32::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let rel = release.clone();
        let thread = std::thread::Builder::new()
            .name("openvdi-sentinel".into())
            .spawn(move || {
                let h = set.ctl.header();
                let word = match which {
                    LiveWord::Client => &h.client_live.v,
                    LiveWord::Server => &h.server_live.v,
                };
                let reg = match sys::RobustRegistration::register(word) {
                    Ok(r) => {
                        let _ = tx.send(Ok(()));
                        r
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                while rel.load(Ordering::Acquire) == 0 {
                    let _ = sys::futex_waitv(&[(&rel, 0)], None);
                }
                // A clean departure: 0 (not OWNER_DIED) tells the peer we left on purpose.
                word.store(0, Ordering::SeqCst);
                sys::futex_wake_all(word);
                drop(reg);
            })
            .map_err(|e| Error::os("starting the liveness thread", e))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(Sentinel {
                release,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(Error::os("set_robust_list", e))
            }
            Err(_) => Err(Error::Corrupt("the liveness thread ended early".into())),
        }
    }

    pub fn stop(&mut self) {
        self.release.store(1, Ordering::Release);
        sys::futex_wake_all(&self.release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Map the control object of `name` for reading its header; `None` if absent.
pub fn map_control(name: &str) -> Result<Option<Control>> {
    Ok(map_control_owned(name)?.map(|(c, _)| c))
}

/// Owner and permission bits of a control object, as the kernel reports them.
#[derive(Clone, Copy, Debug)]
pub struct ObjectOwner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// [`map_control`], with the object's owner from fstat(2) (never from the header).
pub fn map_control_owned(name: &str) -> Result<Option<(Control, ObjectOwner)>> {
    let cname = ctl_name(name);
    let fd = match sys::shm_open_existing(&cname) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(Error::os(format!("opening {cname}"), e)),
    };
    let (size, ..) = sys::fstat(&fd).map_err(|e| Error::os("fstat", e))?;
    if (size as usize) < layout::region_size(0) {
        // Still being sized by its creator (or garbage): treat as not ready.
        return Ok(None);
    }
    // Never map more than the largest set needs, whatever size the object claims.
    let size = size.min(layout::region_size(crate::MAX_DEVICES) as u64);
    let (_, mode, uid, gid) = sys::fstat(&fd).map_err(|e| Error::os("fstat", e))?;
    let map = Mapping::map(&fd, size as usize, false)
        .map_err(|e| Error::os(format!("mapping {cname}"), e))?;
    Ok(Control::header_only(map).map(|c| {
        (
            c,
            ObjectOwner {
                uid,
                gid,
                mode: mode & 0o7777,
            },
        )
    }))
}

/// Validate a mapped header and re-wrap the control object with its device count.
pub fn validate_header(ctl: Control, name: &str) -> Result<Control> {
    let h = ctl.header();
    if h.magic.load(Ordering::Acquire) != layout::MAGIC {
        return Err(Error::Corrupt(format!("set {name:?}: bad magic")));
    }
    let version = h.version.load(Ordering::Relaxed);
    if version != layout::VERSION {
        return Err(Error::NotSupported(format!(
            "set {name:?} uses shared-memory layout version {version}; this library speaks {}",
            layout::VERSION
        )));
    }
    let dc = h.device_count.load(Ordering::Relaxed) as usize;
    if h.header_size.load(Ordering::Relaxed) as usize != std::mem::size_of::<layout::SetHeader>()
        || h.device_block_size.load(Ordering::Relaxed) as usize
            != std::mem::size_of::<layout::DeviceBlock>()
        || h.slots_per_device.load(Ordering::Relaxed) as usize != layout::SLOTS
        || dc == 0
        || dc > crate::MAX_DEVICES
        || h.region_size.load(Ordering::Relaxed) != layout::region_size(dc) as u64
    {
        return Err(Error::Corrupt(format!("set {name:?}: inconsistent header")));
    }
    let stored = crate::shm::read_name(&h.name, h.name_len.load(Ordering::Relaxed));
    if stored.as_deref() != Some(name) {
        return Err(Error::Corrupt(format!(
            "set {name:?}: the header names another set"
        )));
    }
    ctl.with_devices(dc).map_err(|_| {
        Error::Corrupt(format!(
            "set {name:?}: object smaller than its header claims"
        ))
    })
}
