//! The operating-system layer: POSIX shared memory, mmap, futexes, robust lists,
//! inotify. This file and `shm.rs` are the only places with `unsafe` in the crate.
//!
//! Every wrapper cites the man page of the call it wraps and turns failures into
//! `std::io::Error`; none of them interprets protocol data.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

/// `FUTEX_WAITERS`: set in a robust word by a waiter, so that the kernel's
/// robust-list cleanup wakes it when the owner dies (futex(2), "Robust futexes").
pub const FUTEX_WAITERS: u32 = 0x8000_0000;
/// `FUTEX_OWNER_DIED`: set by the kernel in a robust word whose owner exited.
pub const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
/// The owner's thread id in a robust word.
pub const FUTEX_TID_MASK: u32 = 0x3FFF_FFFF;

const SYS_FUTEX_WAITV: libc::c_long = 449;
const FUTEX_32: u32 = 2;

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// shm_open(3) with `O_CREAT | O_EXCL | O_RDWR`, then fchmod(2) so that the mode is
/// exactly `mode` whatever the umask (the Linux SDK sample needed `umask(0)` for
/// the same reason, reference §9.3), and fchown(2) to `gid` when given.
pub fn shm_create(name: &str, mode: u32, gid: Option<u32>) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid NUL-terminated string; shm_open has no other preconditions.
    let fd = unsafe {
        libc::shm_open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
            mode as libc::mode_t,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: shm_open returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
        let e = io::Error::last_os_error();
        let _ = shm_unlink(name);
        return Err(e);
    }
    if let Some(g) = gid {
        // SAFETY: fchown on a descriptor we own; uid -1 leaves the owner unchanged.
        if unsafe { libc::fchown(fd.as_raw_fd(), u32::MAX, g) } != 0 {
            let e = io::Error::last_os_error();
            let _ = shm_unlink(name);
            return Err(e);
        }
    }
    Ok(fd)
}

/// shm_open(3) of an existing object, read-write.
pub fn shm_open_existing(name: &str) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Rename shm object `from` to `to` unless `to` exists (renameat2(2) with
/// RENAME_NOREPLACE on /dev/shm, where glibc's shm_open keeps its objects): the
/// create-exclusive step of publishing a fully built object. EEXIST when `to` exists.
pub fn shm_rename_noreplace(from: &str, to: &str) -> io::Result<()> {
    let f = cstr(&format!("/dev/shm{from}"))?;
    let t = cstr(&format!("/dev/shm{to}"))?;
    // SAFETY: both are valid NUL-terminated paths; renameat2 reads them and nothing else.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// shm_unlink(3); a missing object is not an error (unlinking is idempotent here).
pub fn shm_unlink(name: &str) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    if unsafe { libc::shm_unlink(c.as_ptr()) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    Ok(())
}

/// ftruncate(2).
pub fn ftruncate(fd: &OwnedFd, len: u64) -> io::Result<()> {
    // SAFETY: ftruncate on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// fstat(2): size, mode and owner of a descriptor.
pub fn fstat(fd: &OwnedFd) -> io::Result<(u64, u32, u32, u32)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`; the descriptor is ours.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.st_size as u64, st.st_mode, st.st_uid, st.st_gid))
}

/// A shared, read-write mapping of a whole shared-memory object (mmap(2)).
/// Unmapped on drop. The memory may be changed at any time by another process, so
/// it is only ever accessed through atomics or raw byte copies (see `shm.rs`).
///
/// Every mapping is registered with the SIGBUS guard ([`install_sigbus_guard`]): a
/// peer that shrinks the object under it cannot crash this process.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// The object, kept open so its size can be re-checked (`intact`).
    fd: Option<OwnedFd>,
    /// Index in the guard table.
    guard: usize,
}

// SAFETY: the mapping is plain shared memory; all accesses go through atomics or
// explicit raw copies, so sharing the base pointer between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// mmap(2) `len` bytes of `fd` shared and read-write, and populate them so that
    /// the data path takes no page faults later.
    pub fn map(fd: &OwnedFd, len: usize, populate: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: a fresh mapping at an address the kernel chooses; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let guard = match guard_register(p as usize, len) {
            Some(g) => g,
            None => {
                // SAFETY: unmapping exactly what mmap just returned; nothing refers to it.
                unsafe { libc::munmap(p, len) };
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
        };
        Ok(Mapping {
            ptr: p.cast(),
            len,
            fd: fd.try_clone().ok(),
            guard,
        })
    }

    /// Whether the peer pulled the object away under this mapping: a SIGBUS on it
    /// was caught (its pages are now private zeros), or the object is now shorter
    /// than the mapping (the next access would fault).
    pub fn intact(&self) -> bool {
        if GUARDS[self.guard].hit.load(Ordering::Acquire) {
            return false;
        }
        match &self.fd {
            Some(fd) => fstat(fd)
                .map(|(size, ..)| size >= self.len as u64)
                .unwrap_or(false),
            None => true,
        }
    }

    /// Whether a SIGBUS on this mapping was caught (no system call).
    pub fn faulted(&self) -> bool {
        GUARDS[self.guard].hit.load(Ordering::Acquire)
    }

    /// (device, inode) of the mapped object, if it is still open.
    pub fn identity(&self) -> Option<(u64, u64)> {
        self.fd.as_ref().and_then(|fd| fstat_id(fd).ok())
    }

    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `p` points inside this mapping.
    pub fn contains(&self, p: *const u8) -> bool {
        let a = p as usize;
        let b = self.ptr as usize;
        a >= b && a < b + self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        guard_unregister(self.guard);
        // SAFETY: `ptr`/`len` are exactly what mmap returned (or the anonymous pages the
        // SIGBUS guard put at the same place), and every reference into the mapping
        // borrows the `Mapping` (or an `Arc` of it), so none outlives this call.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// fstat(2): (st_dev, st_ino) of a descriptor, to tell one object from another of
/// the same name.
pub fn fstat_id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`; the descriptor is ours.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

/// stat(2) of a path: (size, mode, uid, gid, dev, ino); `None` if it does not exist.
/// Does not follow a final symlink (lstat), so a planted link is seen as such.
pub fn lstat_path(path: &str) -> Option<(u64, u32, u32, u32, u64, u64)> {
    let c = cstr(path).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid NUL-terminated path; `st` is valid for writes of one `stat`.
    if unsafe { libc::lstat(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: lstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Some((
        st.st_size as u64,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_dev,
        st.st_ino,
    ))
}

/// How long ago a path was last modified (lstat(2)'s st_mtime against the
/// realtime clock); `None` if it does not exist or the clock is behind it.
pub fn modified_ago(path: &str) -> Option<std::time::Duration> {
    let m = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
    std::time::SystemTime::now().duration_since(m).ok()
}

/// geteuid(2).
pub fn geteuid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() }
}

/// getegid(2) and getgroups(2): every group this process acts with.
pub fn own_groups() -> Vec<u32> {
    // SAFETY: no preconditions.
    let mut v = vec![unsafe { libc::getegid() }];
    let mut buf = [0 as libc::gid_t; 256];
    // SAFETY: `buf` is valid for writes of 256 gids.
    let n = unsafe { libc::getgroups(buf.len() as libc::c_int, buf.as_mut_ptr()) };
    if n > 0 {
        v.extend_from_slice(&buf[..n as usize]);
    }
    v
}

/// fchown(2) of a descriptor we own to `uid` (and/or `gid`; `u32::MAX` keeps it).
pub fn fchown(fd: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fchown on a descriptor we own.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The SIGBUS guard.
//
// A shared-memory object can be shrunk by anyone who may write it (ftruncate):
// the peer, or another process of the same user. An access to a mapped page past
// the new end raises SIGBUS, which would kill this process. The guard is a SIGBUS
// handler that looks the faulting address up in a table of openvdi's mappings; if
// it is one of them, it puts anonymous zero pages over the whole mapping
// (mmap MAP_FIXED, a plain system call) and marks it faulted, and the faulting
// access is restarted on those pages. The library checks the mark wherever it
// checks for an abort, and aborts the set (VD_E_UNEXPECTED/VD_E_ABORT). Faults at
// other addresses go to the handler that was installed before (Rust's own
// stack-overflow handler, or the host program's), or to the default action. The
// fast path pays nothing: no check per access, no extra system call.
// ---------------------------------------------------------------------------

/// Mappings the guard can hold at once (a set uses at most 17).
const MAX_GUARDS: usize = 4096;

struct Guard {
    start: AtomicUsize,
    len: AtomicUsize,
    hit: AtomicBool,
}

static GUARDS: [Guard; MAX_GUARDS] = [const {
    Guard {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        hit: AtomicBool::new(false),
    }
}; MAX_GUARDS];

/// How many SIGBUS faults the guard has absorbed in this process: a single load
/// tells the hot path that nothing ever happened.
pub static GUARD_FAULTS: AtomicU32 = AtomicU32::new(0);

struct OldAction(std::cell::UnsafeCell<std::mem::MaybeUninit<libc::sigaction>>);
// SAFETY: written once inside `Once::call_once` before the handler that reads it is
// installed, and never written again.
unsafe impl Sync for OldAction {}
static OLD_SIGBUS: OldAction =
    OldAction(std::cell::UnsafeCell::new(std::mem::MaybeUninit::zeroed()));
static GUARD_INSTALLED: std::sync::Once = std::sync::Once::new();

/// Install the SIGBUS handler once per process (done by the first mapping).
pub fn install_sigbus_guard() {
    GUARD_INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler has the
        // SA_SIGINFO signature; OLD_SIGBUS is written here, before the handler can run.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, (*OLD_SIGBUS.0.get()).as_mut_ptr());
        }
    });
}

fn guard_register(start: usize, len: usize) -> Option<usize> {
    install_sigbus_guard();
    for (i, g) in GUARDS.iter().enumerate() {
        if g.start.load(Ordering::Relaxed) == 0
            && g.start
                .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            g.len.store(len, Ordering::Relaxed);
            g.hit.store(false, Ordering::Relaxed);
            // SYNC POINT: Release pairs with the handler's Acquire load of `start`.
            g.start.store(start, Ordering::Release);
            return Some(i);
        }
    }
    None
}

fn guard_unregister(i: usize) {
    GUARDS[i].start.store(0, Ordering::Release);
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for g in GUARDS.iter() {
        let start = g.start.load(Ordering::Acquire);
        if start == 0 || start == usize::MAX {
            continue;
        }
        let len = g.len.load(Ordering::Relaxed);
        if addr >= start && addr < start + len {
            // SAFETY: the range is one of our own live mappings (registered until just
            // before munmap); replacing it with anonymous pages keeps every pointer into
            // it valid. mmap is a plain system call, safe to make in a handler.
            let r = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                g.hit.store(true, Ordering::Release);
                GUARD_FAULTS.fetch_add(1, Ordering::Release);
                return;
            }
        }
    }
    // Not ours: hand over to whoever handled SIGBUS before us.
    // SAFETY: OLD_SIGBUS was filled by sigaction before this handler was installed.
    let old = unsafe { (*OLD_SIGBUS.0.get()).assume_init_ref() };
    let h = old.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        // SAFETY: restoring the default action; returning re-executes the faulting
        // instruction, which now terminates the process as it would have without us.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
        return;
    }
    if old.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with the SA_SIGINFO signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the previous handler was installed with the one-argument signature.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
}

/// gettid(2).
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// getpid(2).
pub fn getpid() -> u32 {
    std::process::id()
}

/// Whether process `pid` exists (kill(2) with signal 0; EPERM means it exists).
pub fn process_exists(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether this process publishes without a StoreLoad fence (see
/// [`heavy_barrier`]): true once membarrier(2) registered the process for
/// `MEMBARRIER_CMD_GLOBAL_EXPEDITED`, so a sleeper's heavy barrier reaches its threads.
pub fn light_publication() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // SAFETY: membarrier takes no pointers; registration only marks this process.
        let r = unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
                0,
                0,
            )
        };
        r == 0
    })
}

const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 2;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 4;

/// The sleeper's half of the asymmetric Dekker handshake: a full memory barrier on
/// every running thread of every process registered by [`light_publication`] (and
/// the caller), so that a publisher's plain store before its read of the sleep
/// announcement is ordered as if it had fenced. False if no such barrier could be
/// made; the caller must then not sleep without a bound.
pub fn heavy_barrier() -> bool {
    for cmd in [MEMBARRIER_CMD_GLOBAL_EXPEDITED, MEMBARRIER_CMD_GLOBAL] {
        // SAFETY: membarrier takes no pointers.
        if unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) } == 0 {
            return true;
        }
    }
    false
}

/// FUTEX_WAKE of every waiter on a shared (not process-private) futex word
/// (futex(2)). The word lives in shared memory, so the wake must not be private.
pub fn futex_wake_all(word: &AtomicU32) {
    FUTEX_WAKES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: FUTEX_WAKE only uses the address as a key; the reference keeps it valid.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            0,
            0,
        );
    }
}

#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// Outcome of a futex wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Woke {
    /// Woken, or a word differed from the expected value, or a signal: re-check.
    Recheck,
    /// The deadline passed.
    TimedOut,
}

/// futex_waitv(2) (Linux 5.16): sleep until one of the shared words is woken or no
/// longer holds its expected value, or until `deadline`. Waiting on several words at
/// once is what lets a blocked call wake both for its own event and for the death
/// of the peer (whose robust word the kernel wakes when the peer exits).
/// FUTEX_WAKE calls made by this process (every caller of [`futex_wake_all`]).
pub static FUTEX_WAKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// futex_waitv calls made by this process (sleeps, or attempts to).
pub static FUTEX_WAITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn futex_waitv(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> io::Result<Woke> {
    FUTEX_WAITS.fetch_add(1, Ordering::Relaxed);
    let mut v: [FutexWaitv; 4] = std::array::from_fn(|_| FutexWaitv {
        val: 0,
        uaddr: 0,
        flags: 0,
        reserved: 0,
    });
    if words.len() > v.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (slot, (w, val)) in v.iter_mut().zip(words) {
        *slot = FutexWaitv {
            val: u64::from(*val),
            uaddr: w.as_ptr() as u64,
            flags: FUTEX_32,
            reserved: 0,
        };
    }
    let ts: libc::timespec;
    let tsp: *const libc::timespec = match deadline {
        None => std::ptr::null(),
        Some(d) => {
            let now = Instant::now();
            if d <= now {
                return Ok(Woke::TimedOut);
            }
            // futex_waitv takes an absolute CLOCK_MONOTONIC time.
            let mut now_ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `now_ts` is a valid out-parameter.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now_ts) };
            let rem = d - now;
            let mut sec = now_ts.tv_sec + rem.as_secs() as libc::time_t;
            let mut nsec = now_ts.tv_nsec + rem.subsec_nanos() as libc::c_long;
            if nsec >= 1_000_000_000 {
                sec += 1;
                nsec -= 1_000_000_000;
            }
            ts = libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            };
            &ts
        }
    };
    // SAFETY: `v` holds `words.len()` valid entries whose addresses are kept alive by
    // the borrowed atomics; `tsp` is null or points at `ts`, which outlives the call.
    let r = unsafe {
        libc::syscall(
            SYS_FUTEX_WAITV,
            v.as_ptr(),
            words.len() as libc::c_uint,
            0u32,
            tsp,
            libc::CLOCK_MONOTONIC,
        )
    };
    if r >= 0 {
        return Ok(Woke::Recheck);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(Woke::Recheck),
        Some(libc::ETIMEDOUT) => Ok(Woke::TimedOut),
        Some(libc::ENOSYS) => futex_wait_fallback(words, deadline),
        _ => Err(e),
    }
}

/// Without futex_waitv (kernels before 5.16, or valgrind, which does not know the
/// call): sleep on the first word only, for at most 1 ms, and let the caller re-check
/// every condition. Peer death is then noticed within about a millisecond instead of
/// at once.
fn futex_wait_fallback(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> io::Result<Woke> {
    let Some((w, val)) = words.first() else {
        return Ok(Woke::Recheck);
    };
    let now = Instant::now();
    let mut slice = std::time::Duration::from_millis(1);
    if let Some(d) = deadline {
        if d <= now {
            return Ok(Woke::TimedOut);
        }
        slice = slice.min(d - now);
    }
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: slice.as_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a live atomic with a relative timeout that outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            w.as_ptr(),
            libc::FUTEX_WAIT,
            *val,
            &ts as *const libc::timespec,
            0,
            0,
        );
    }
    Ok(Woke::Recheck)
}

#[repr(C)]
struct RobustList {
    next: *mut RobustList,
}

#[repr(C)]
struct RobustListHead {
    list: RobustList,
    futex_offset: libc::c_long,
    list_op_pending: *mut RobustList,
}

/// Registers, for the calling thread, a robust list with one entry: the shared word
/// `word` (set_robust_list(2), and the kernel's `Documentation/locking/robust-futexes`).
/// When the thread exits for any reason, SIGKILL included, the kernel finds our thread
/// id in the word, sets `FUTEX_OWNER_DIED` and wakes a waiter if `FUTEX_WAITERS` is
/// set — before it tears down the address space, so the peer learns of the death in
/// microseconds whatever the size of the dead process.
///
/// The list head and its node are leaked into the returned guard, which must stay
/// alive (and on this thread) for as long as the registration is wanted.
///
/// This replaces glibc's own robust list for this thread, so it may only be called on
/// a thread that never locks a robust pthread mutex: openvdi's private sentinel thread.
pub struct RobustRegistration {
    head: *mut RobustListHead,
    node: *mut RobustList,
}

impl RobustRegistration {
    /// Register `word` (which must stay mapped while registered) and store our tid in it.
    pub fn register(word: &AtomicU32) -> io::Result<RobustRegistration> {
        let node = Box::into_raw(Box::new(RobustList {
            next: std::ptr::null_mut(),
        }));
        let head = Box::into_raw(Box::new(RobustListHead {
            list: RobustList { next: node },
            futex_offset: (word.as_ptr() as isize - node as isize) as libc::c_long,
            list_op_pending: std::ptr::null_mut(),
        }));
        // SAFETY: `node` and `head` are valid heap allocations we own; the list is
        // circular (node -> head), as the kernel ABI requires.
        unsafe {
            (*node).next = &mut (*head).list;
        }
        // SAFETY: `head` points at a valid robust_list_head that lives until `Drop` of the
        // returned guard, which unregisters it first.
        let r = unsafe {
            libc::syscall(
                libc::SYS_set_robust_list,
                head,
                std::mem::size_of::<RobustListHead>(),
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: never registered; we still own both allocations.
            unsafe {
                drop(Box::from_raw(head));
                drop(Box::from_raw(node));
            }
            return Err(e);
        }
        word.store(gettid(), std::sync::atomic::Ordering::SeqCst);
        Ok(RobustRegistration { head, node })
    }
}

impl Drop for RobustRegistration {
    fn drop(&mut self) {
        // SAFETY: unregister (an empty list head) before freeing what the kernel points at.
        unsafe {
            libc::syscall(
                libc::SYS_set_robust_list,
                std::ptr::null::<RobustListHead>(),
                std::mem::size_of::<RobustListHead>(),
            );
            drop(Box::from_raw(self.head));
            drop(Box::from_raw(self.node));
        }
    }
}

/// An inotify(7) watch on /dev/shm, used to wait for a set to be created without
/// polling: the server may start before the client creates the set.
pub struct ShmDirWatch {
    fd: OwnedFd,
}

impl ShmDirWatch {
    /// inotify_init1(2) + inotify_add_watch(2) for creations in /dev/shm.
    pub fn new() -> io::Result<ShmDirWatch> {
        // SAFETY: no preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = cstr("/dev/shm")?;
        // SAFETY: valid descriptor and path.
        let w = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ATTRIB | libc::IN_MODIFY,
            )
        };
        if w < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ShmDirWatch { fd })
    }

    /// Wait until something happens in /dev/shm or `deadline` passes; drains events.
    pub fn wait(&self, deadline: Option<Instant>) -> io::Result<Woke> {
        let ms: i32 = match deadline {
            None => -1,
            Some(d) => {
                let now = Instant::now();
                if d <= now {
                    return Ok(Woke::TimedOut);
                }
                ((d - now).as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
            }
        };
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(Woke::Recheck)
            } else {
                Err(e)
            };
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
        Ok(if r == 0 {
            Woke::TimedOut
        } else {
            Woke::Recheck
        })
    }
}

/// The names of the objects in /dev/shm (for reclaiming leftovers of dead sets).
pub fn list_shm_names(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/dev/shm") {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str() {
                if n.starts_with(prefix) {
                    out.push(n.to_string());
                }
            }
        }
    }
    out
}

/// CLOCK_MONOTONIC in nanoseconds (clock_gettime(2)): comparable across processes,
/// unlike `Instant`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The lock of one device's process-local state (its ring positions and
/// outstanding-command table), taken for a few hundred nanoseconds by every call on
/// the hand-off path, by one thread in the common case and by up to a handful (the
/// C++ sample drives one device from four threads).
///
/// Unlike `std::sync::Mutex`, releasing it is a plain Release store, not a locked
/// read-modify-write: on the round trip's critical path each locked instruction
/// also waits for the stores before it to drain. The price is that a waiter never
/// sleeps in the kernel: it spins, then yields the CPU between attempts, which is
/// right for sections that never block (the only system calls made under it are a
/// futex wake and, once per buffer segment, its first mapping).
///
/// A panic while it is held marks it poisoned, like `std::sync::Mutex`: the state
/// may be half-updated, and every later `lock` says so.
pub struct DeviceLock<T> {
    /// Taken (true) or free.
    held: AtomicBool,
    poisoned: AtomicBool,
    value: std::cell::UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, and at most one guard exists at
// a time (the `held` flag, taken with an Acquire compare-exchange and given back with
// a Release store, orders every access of one holder before the next holder's). So
// sharing the lock between threads only ever sends `T` from one thread to another.
unsafe impl<T: Send> Sync for DeviceLock<T> {}

impl<T> std::fmt::Debug for DeviceLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLock")
            .field("held", &self.held.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Exclusive access to a [`DeviceLock`]'s value until dropped.
pub struct DeviceGuard<'a, T> {
    lock: &'a DeviceLock<T>,
    /// Shares like a `&mut T`: a guard is `Sync` only if `T` is (a shared guard hands
    /// out `&T` on every thread that holds it), `Send` only if `T` is.
    _value: std::marker::PhantomData<&'a mut T>,
}

impl<T> DeviceLock<T> {
    pub fn new(value: T) -> DeviceLock<T> {
        DeviceLock {
            held: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            value: std::cell::UnsafeCell::new(value),
        }
    }

    /// Take the lock; `None` if a holder panicked.
    #[inline]
    pub fn lock(&self) -> Option<DeviceGuard<'_, T>> {
        // SYNC POINT: Acquire pairs with the Release store in `DeviceGuard::drop`.
        if self
            .held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        let g = DeviceGuard {
            lock: self,
            _value: std::marker::PhantomData,
        };
        if self.poisoned.load(Ordering::Relaxed) {
            return None;
        }
        Some(g)
    }

    #[cold]
    fn lock_contended(&self) {
        let mut n = 0u32;
        loop {
            if !self.held.load(Ordering::Relaxed)
                && self
                    .held
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            n = n.saturating_add(1);
            if n < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl<T> std::ops::Deref for DeviceGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (see the `Sync` impl), so no `&mut T`
        // exists while it lives.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for DeviceGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this borrow unique among the
        // guard's own borrows.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for DeviceGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.lock.poisoned.store(true, Ordering::Relaxed);
        }
        // SYNC POINT: Release pairs with the Acquire compare-exchange in `lock`.
        self.lock.held.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceLock;

    /// Four threads (more than this machine's cores, so holders get preempted)
    /// increment a plain counter under the lock: no increment is lost.
    #[test]
    fn device_lock_excludes() {
        let lock = DeviceLock::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100_000 {
                        let mut g = lock.lock().expect("not poisoned");
                        // Read, then write back: a second holder at once loses counts.
                        let v = *g;
                        std::hint::black_box(&mut *g);
                        *g = v + 1;
                    }
                });
            }
        });
        assert_eq!(*lock.lock().expect("not poisoned"), 400_000);
    }

    /// A panic while holding it poisons it for every later caller, and releases it.
    #[test]
    fn device_lock_poisons_on_panic() {
        let lock = DeviceLock::new(vec![1u32]);
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                let mut g = lock.lock().expect("not poisoned");
                g.push(2);
                panic!("holder dies half-way");
            })
            .join()
        });
        assert!(r.is_err());
        assert!(lock.lock().is_none(), "a half-updated value is refused");
        assert!(lock.lock().is_none(), "and stays refused");
    }
}
