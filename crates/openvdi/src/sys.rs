//! The operating-system layer: POSIX shared memory, mmap, futexes, robust lists,
//! inotify. This file and `shm.rs` are the only places with `unsafe` in the crate.
//!
//! Every wrapper cites the man page of the call it wraps and turns failures into
//! `std::io::Error`; none of them interprets protocol data.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU32;
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
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
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
        Ok(Mapping { ptr: p.cast(), len })
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
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and every reference into the
        // mapping borrows the `Mapping` (or an `Arc` of it), so none outlives this call.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
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

/// FUTEX_WAKE of every waiter on a shared (not process-private) futex word
/// (futex(2)). The word lives in shared memory, so the wake must not be private.
pub fn futex_wake_all(word: &AtomicU32) {
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
pub fn futex_waitv(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> io::Result<Woke> {
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
