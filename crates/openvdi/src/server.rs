//! The server half: what SQL Server does (reference §3, `IServerVirtualDeviceSet2`,
//! `IServerVirtualDevice`). Completions are received by a blocking wait per device
//! ([`ServerDevice::wait_completion`]) rather than by a callback agent: the engine
//! drives one thread per device, as SQL Server does, and a blocking receive keeps the
//! buffer ownership visible in the types.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::consts::{vdc, vdf, win32};
use crate::error::{AbortReason, Error, Result};
use crate::layout::{dev_state, set_state, DeviceBlock, MAX_SEGMENTS, SLOTS};
use crate::set::{self, block_on, wake_if_sleeping, LiveWord, Sentinel, SetShared, WaitOn};
use crate::shm::{write_name, SharedBuf};
use crate::sys::{self, Mapping, ShmDirWatch, Woke};
use crate::{Timeout, VdConfig};

/// The server's configuration choices (`BeginConfiguration`), plus the device names
/// the T-SQL statement gave (its VIRTUAL_DEVICE clauses).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Feature mask returned to the client: must contain exactly one of
    /// `VDF_WriteMedia` (BACKUP) or `VDF_ReadMedia` (RESTORE); `VDF_CompleteEnabled`
    /// only if the client asked for `VDF_RequestComplete`.
    pub features: u32,
    /// BLOCKSIZE: power of two, 512..=65536.
    pub block_size: u32,
    /// Buffer alignment; 0 means `block_size`. Power of two, ≥ block size, ≤ 64 KiB.
    pub alignment: u32,
    /// MAXTRANSFERSIZE: multiple of 64 KiB, up to 4 MiB.
    pub max_transfer_size: u32,
    /// How long configuration may take (kept for the API's shape; buffers are
    /// declared by this same process, so nothing waits on it).
    pub timeout: Timeout,
    /// One name per device; `[0]` must be the set's name. Empty: the set's name,
    /// then `{set}1`, `{set}2`, …
    pub device_names: Vec<String>,
}

/// Whom a server serves, and how it shares the buffer objects it creates. Nothing
/// here is taken from the peer: the set's header records the client's wishes, but a
/// server that followed them would hand its data to whoever wrote that header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// Users (besides this process's own) whose sets this server opens.
    pub serve_uids: Vec<u32>,
    /// Groups whose members' sets this server opens: a control object owned by such a
    /// group with group read-write (0660), as Microsoft's Linux VDI requires the
    /// client to share a group with the server (reference §9.3).
    pub serve_gids: Vec<u32>,
}

impl ServerOptions {
    /// From the environment: `OPENVDI_SERVE_UIDS` and `OPENVDI_SERVE_GIDS`, comma-
    /// separated numeric ids. Unset: this process's own user only.
    pub fn from_env() -> ServerOptions {
        let ids = |k: &str| -> Vec<u32> {
            std::env::var(k)
                .ok()
                .map(|v| {
                    v.split(',')
                        .filter_map(|x| x.trim().parse::<u32>().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        ServerOptions {
            serve_uids: ids("OPENVDI_SERVE_UIDS"),
            serve_gids: ids("OPENVDI_SERVE_GIDS"),
        }
    }

    /// How this server shares a set whose control object has owner `o`: `Ok(None)`
    /// for a set of its own user (segments 0600), `Ok(Some((uid, gid)))` for
    /// another's (segments owned by `uid` — chown needs root — or shared with group
    /// `gid`, mode 0660), `Err` when this server does not serve that user.
    fn sharing(&self, name: &str, o: &set::ObjectOwner) -> Result<Sharing> {
        let me = sys::geteuid();
        if o.mode & 0o007 != 0 {
            return Err(Error::Security(format!(
                "the control object of set {name:?} is accessible to every user (mode {:o}); refusing it",
                o.mode & 0o777
            )));
        }
        if o.uid == me {
            return Ok(
                if o.mode & 0o060 == 0o060 && sys::own_groups().contains(&o.gid) {
                    Sharing::Group(o.gid)
                } else {
                    Sharing::Private
                },
            );
        }
        if self.serve_uids.contains(&o.uid) {
            return Ok(if me == 0 {
                Sharing::User(o.uid)
            } else if o.mode & 0o060 == 0o060 && sys::own_groups().contains(&o.gid) {
                Sharing::Group(o.gid)
            } else {
                return Err(Error::Security(format!(
                    "set {name:?} belongs to uid {}, whom this server serves, but it shares no group with this server (uid {me})",
                    o.uid
                )));
            });
        }
        if o.mode & 0o060 == 0o060 && self.serve_gids.contains(&o.gid) {
            return Ok(Sharing::Group(o.gid));
        }
        Err(Error::Security(format!(
            "set {name:?} belongs to uid {} (group {}), which this server (uid {me}) is not configured to serve; see OPENVDI_SERVE_UIDS / OPENVDI_SERVE_GIDS",
            o.uid, o.gid
        )))
    }
}

/// How the buffer objects of a set are shared (see [`ServerOptions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sharing {
    /// 0600, this process's user.
    Private,
    /// 0600, owned by that user (the server runs as root).
    User(u32),
    /// 0660 with that group.
    Group(u32),
}

/// A completed command, as the server receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The caller's tag from [`ServerCommand::tag`].
    pub tag: u64,
    /// The `VDC_*` code that was sent.
    pub code: u32,
    /// The Win32 completion code (995 after an abort, 1117 when flushed by IO-ERROR).
    pub completion_code: u32,
    /// Bytes transferred (Read/Write).
    pub bytes_transferred: u32,
    /// Position (GetPosition/SetPosition).
    pub position: u64,
}

/// A command to send.
#[derive(Debug, Clone, Copy)]
pub struct ServerCommand<'a> {
    /// `VDC_*` code.
    pub code: u32,
    /// `size`.
    pub size: u32,
    /// `position`.
    pub position: u64,
    /// The data buffer (Read/Write).
    pub buffer: Option<&'a ServerBuffer>,
    /// Returned in the [`Completion`].
    pub tag: u64,
}

/// A buffer from the shared area ([`ServerSet::allocate_buffer`]). While a command
/// that names it is outstanding, it belongs to the client: don't touch it until the
/// completion is received.
#[derive(Debug)]
pub struct ServerBuffer {
    seg: u32,
    /// Start of the data zone within the segment.
    offset: u64,
    /// Start of the block (prefix zone included) and its length, for FreeBuffer.
    block: (u64, u64),
    buf: SharedBuf,
}

impl ServerBuffer {
    /// Usable bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == 0
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.as_slice()
    }
    /// The bytes, for filling.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.buf.as_mut_slice()
    }
    /// Address in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.buf.as_ptr()
    }
}

/// A virtual device set, server side (`IServerVirtualDeviceSet2`).
#[derive(Debug, Clone)]
pub struct ServerSet {
    inner: Arc<ServerInner>,
}

#[derive(Debug)]
struct ServerInner {
    set: Arc<SetShared>,
    sharing: Sharing,
    /// How long a client may take to open its devices after EndConfiguration.
    open_timeout: Timeout,
    /// EndConfiguration + `open_timeout`: a device the client has not opened by then
    /// fails the set, so a client that never configures cannot hold the server.
    open_deadline: OnceLock<Option<Instant>>,
    closed: AtomicBool,
    local: Mutex<ServerLocal>,
    cfg: OnceLock<VdConfig>,
    /// Commands outstanding on all devices, and when a completion last arrived (ns
    /// since `epoch`): the serverTimeOut rule is set-wide.
    outstanding: AtomicUsize,
    last_progress: AtomicU64,
    epoch: Instant,
}

/// Whether the client asked for a serverTimeOut, the only user of the set-wide
/// count of outstanding commands: without it no shared counter is touched per
/// command (a locked instruction that would also wait for the ring entry's line).
fn sto_set(inner: &ServerInner) -> bool {
    inner.cfg.get().is_some_and(|c| c.server_time_out != 0)
}

#[derive(Debug)]
struct ServerLocal {
    phase: Phase,
    sentinel: Option<Sentinel>,
    requests: Vec<(u64, u64, u64)>,
    pending_cfg: Option<VdConfig>,
    names: Vec<String>,
    opened: Vec<bool>,
    closed_devs: Vec<bool>,
    segments: Vec<Arc<Mapping>>,
    /// Free ranges per segment: (start, len), sorted.
    free: Vec<Vec<(u64, u64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connected,
    Configurable,
    Configured,
}

fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl ServerSet {
    /// Open the set `name` (`Open`), waiting up to `timeout` for a client to create
    /// it. Only one server may open a set.
    #[doc(alias = "Open")]
    pub fn open(name: &str, timeout: Timeout) -> Result<ServerSet> {
        ServerSet::open_with(name, timeout, &ServerOptions::from_env())
    }

    /// [`ServerSet::open`] with explicit options: which users' sets to serve. The
    /// same `timeout` bounds how long the client may take to open its devices after
    /// EndConfiguration.
    pub fn open_with(name: &str, timeout: Timeout, opts: &ServerOptions) -> Result<ServerSet> {
        set::validate_name("set", name)?;
        crate::sweep_stale_sets_bounded(crate::AUTO_SWEEP_LIMIT);
        let deadline = timeout.deadline();
        let watch = ShmDirWatch::new().map_err(|e| Error::os("watching /dev/shm", e))?;
        let (ctl, sharing, owner) = loop {
            if let Some((ctl, owner)) = set::map_control_owned(name)? {
                // Who owns the object decides whether we talk at all: before any byte
                // of the header is believed.
                let sharing = opts.sharing(name, &owner)?;
                let h = ctl.header();
                // SYNC POINT: Acquire pairs with the creator's Release store of magic.
                if h.magic.load(Ordering::Acquire) == crate::layout::MAGIC {
                    let st = h.state.v.load(Ordering::Acquire);
                    if st >= set_state::CREATED {
                        break (set::validate_header(ctl, name)?, sharing, owner);
                    }
                    // Magic written, CREATED not yet: wait on the state word briefly.
                    let short = Instant::now() + Duration::from_millis(5);
                    let _ = sys::futex_waitv(
                        &[(&h.state.v, st)],
                        Some(deadline.map_or(short, |d| d.min(short))),
                    );
                } else if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::Timeout);
                } else {
                    // The header is being written; the state wake will come.
                    let _ = sys::futex_waitv(
                        &[(&h.state.v, h.state.v.load(Ordering::Acquire))],
                        Some(Instant::now() + Duration::from_millis(5)),
                    );
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::Timeout);
                }
                continue;
            }
            match watch
                .wait(deadline)
                .map_err(|e| Error::os("waiting for the set", e))?
            {
                Woke::TimedOut if set::map_control(name)?.is_none() => return Err(Error::Timeout),
                _ => {}
            }
        };
        let shared = Arc::new(SetShared::new(name.to_string(), ctl));
        shared.peer_uid.store(owner.uid, Ordering::Relaxed);
        let h = shared.ctl.header();
        if let Some(e) = shared.abort_error() {
            return Err(e);
        }
        if h.client_closed.v.load(Ordering::Acquire) != 0 {
            return Err(Error::Invalid(format!(
                "virtual device set {name:?} was already closed by its client"
            )));
        }
        if h.state
            .v
            .compare_exchange(
                set_state::CREATED,
                set_state::SERVER_OPEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(Error::Busy(format!(
                "virtual device set {name:?} is already open by a server"
            )));
        }
        let sentinel = Sentinel::start(shared.clone(), LiveWord::Server)?;
        sys::futex_wake_all(&h.state.v);
        let dc = shared.devices();
        Ok(ServerSet {
            inner: Arc::new(ServerInner {
                set: shared,
                sharing,
                open_timeout: timeout,
                open_deadline: OnceLock::new(),
                closed: AtomicBool::new(false),
                local: Mutex::new(ServerLocal {
                    phase: Phase::Connected,
                    sentinel: Some(sentinel),
                    requests: Vec::new(),
                    pending_cfg: None,
                    names: Vec::new(),
                    opened: vec![false; dc],
                    closed_devs: vec![false; dc],
                    segments: Vec::new(),
                    free: Vec::new(),
                }),
                cfg: OnceLock::new(),
                outstanding: AtomicUsize::new(0),
                last_progress: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        })
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.inner.set.name
    }

    fn local(&self) -> Result<MutexGuard<'_, ServerLocal>> {
        self.inner
            .local
            .lock()
            .map_err(|_| Error::Corrupt("a lock was poisoned by a panic".into()))
    }

    fn check(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Protocol("the server set is closed".into()));
        }
        if let Some(e) = self.inner.set.abort_error() {
            return Err(e);
        }
        Ok(())
    }

    /// The client's requested configuration (`GetConfiguration`), validated.
    #[doc(alias = "GetConfiguration")]
    pub fn get_configuration(&self) -> Result<VdConfig> {
        self.check()?;
        let h = self.inner.set.ctl.header();
        let mut w = [0u32; 11];
        for (v, a) in w.iter_mut().zip(h.client_cfg.iter()) {
            *v = a.load(Ordering::Relaxed);
        }
        let cfg = VdConfig::from_words(w);
        if cfg.device_count as usize != self.inner.set.devices()
            || cfg.features & !vdf::CLIENT_BITS != 0
            || cfg.prefix_zone_size > 1 << 20
            || (cfg.alignment != 0 && !cfg.alignment.is_power_of_two())
        {
            self.inner.set.abort(AbortReason::Corrupt);
            return Err(Error::Corrupt(
                "the client's configuration is inconsistent".into(),
            ));
        }
        Ok(cfg)
    }

    /// The final configuration (after [`ServerSet::end_configuration`]).
    pub fn config(&self) -> Option<VdConfig> {
        self.inner.cfg.get().copied()
    }

    /// Fix the configuration (`BeginConfiguration`).
    #[doc(alias = "BeginConfiguration")]
    pub fn begin_configuration(&self, sc: &ServerConfig) -> Result<()> {
        self.check()?;
        let client = self.get_configuration()?;
        let mut local = self.local()?;
        if local.phase != Phase::Connected {
            return Err(Error::Protocol(
                "BeginConfiguration is legal only right after Open".into(),
            ));
        }
        let dir = sc.features & (vdf::VDF_WriteMedia | vdf::VDF_ReadMedia);
        if dir != vdf::VDF_WriteMedia && dir != vdf::VDF_ReadMedia {
            return Err(Error::Invalid(
                "features must contain exactly one of VDF_WriteMedia and VDF_ReadMedia".into(),
            ));
        }
        if sc.features & !vdf::SERVER_BITS != 0 {
            return Err(Error::Invalid(format!(
                "features 0x{:x} contain unknown bits",
                sc.features
            )));
        }
        if sc.features & vdf::VDF_CompleteEnabled != 0
            && client.features & vdf::VDF_RequestComplete == 0
        {
            return Err(Error::Invalid(
                "VDF_CompleteEnabled without the client's VDF_RequestComplete".into(),
            ));
        }
        if !sc.block_size.is_power_of_two() || !(512..=65536).contains(&sc.block_size) {
            return Err(Error::Invalid(format!(
                "block size {} is not a power of two in 512..=65536",
                sc.block_size
            )));
        }
        let alignment = if sc.alignment == 0 {
            sc.block_size.max(client.alignment)
        } else {
            sc.alignment
        };
        if !alignment.is_power_of_two()
            || alignment < sc.block_size
            || alignment > 65536
            || alignment < client.alignment
        {
            return Err(Error::Invalid(format!("alignment {alignment} must be a power of two, at least the block size and the client's alignment, at most 65536")));
        }
        if sc.max_transfer_size == 0
            || !sc.max_transfer_size.is_multiple_of(65536)
            || sc.max_transfer_size > 4 << 20
        {
            return Err(Error::Invalid(format!(
                "max transfer size {} is not a multiple of 64 KiB up to 4 MiB",
                sc.max_transfer_size
            )));
        }
        let dc = self.inner.set.devices();
        let names: Vec<String> = if sc.device_names.is_empty() {
            (0..dc)
                .map(|i| {
                    if i == 0 {
                        self.name().to_string()
                    } else {
                        format!("{}{}", self.name(), i)
                    }
                })
                .collect()
        } else {
            sc.device_names.clone()
        };
        if names.len() != dc {
            return Err(Error::Invalid(format!(
                "{} device names for a set of {dc} devices",
                names.len()
            )));
        }
        if names[0] != self.name() {
            return Err(Error::Invalid(
                "the first device must carry the set's name".into(),
            ));
        }
        for (i, n) in names.iter().enumerate() {
            set::validate_name("device", n)?;
            if names[..i].contains(n) {
                return Err(Error::Invalid(format!("device name {n:?} is given twice")));
            }
        }
        for (i, n) in names.iter().enumerate() {
            let d = self
                .inner
                .set
                .ctl
                .device(i)
                .ok_or_else(|| Error::Corrupt("device block missing".into()))?;
            write_name(&d.name, n);
            d.name_len.store(n.len() as u32, Ordering::Relaxed);
        }
        local.names = names;
        local.pending_cfg = Some(VdConfig {
            device_count: dc as u32,
            features: sc.features,
            prefix_zone_size: client.prefix_zone_size,
            alignment,
            soft_file_mark_block_size: client.soft_file_mark_block_size,
            eom_warning_size: client.eom_warning_size,
            server_time_out: client.server_time_out,
            block_size: sc.block_size,
            max_io_depth: 4,
            max_transfer_size: sc.max_transfer_size,
            buffer_area_size: 0,
        });
        local.phase = Phase::Configurable;
        self.inner
            .set
            .ctl
            .header()
            .state
            .v
            .store(set_state::CONFIGURING, Ordering::Release);
        Ok(())
    }

    /// Declare `count` buffers of `size` bytes (`RequestBuffers`). During configuration
    /// requests are summed into one area at EndConfiguration; afterwards each call
    /// adds a segment at once.
    #[doc(alias = "RequestBuffers")]
    pub fn request_buffers(&self, size: u32, alignment: u32, count: u32) -> Result<()> {
        self.check()?;
        let mut local = self.local()?;
        let cfg = match local.phase {
            Phase::Connected => {
                return Err(Error::Protocol(
                    "RequestBuffers before BeginConfiguration".into(),
                ))
            }
            Phase::Configurable => local
                .pending_cfg
                .ok_or_else(|| Error::Protocol("no configuration".into()))?,
            Phase::Configured => *self
                .inner
                .cfg
                .get()
                .ok_or_else(|| Error::Protocol("no configuration".into()))?,
        };
        if alignment != 0 && !alignment.is_power_of_two() {
            return Err(Error::Invalid(format!(
                "alignment {alignment} is not a power of two"
            )));
        }
        let a = u64::from(alignment.max(cfg.alignment));
        let stride = round_up(u64::from(cfg.prefix_zone_size), a) + round_up(u64::from(size), a);
        let bytes = stride
            .checked_mul(u64::from(count))
            .ok_or_else(|| Error::Memory("buffer request overflows".into()))?;
        if local.phase == Phase::Configurable {
            local.requests.push((u64::from(size), a, u64::from(count)));
            return Ok(());
        }
        self.add_segment(&mut local, bytes + a)?;
        Ok(())
    }

    fn add_segment(&self, local: &mut ServerLocal, bytes: u64) -> Result<u64> {
        let i = local.segments.len();
        if i >= MAX_SEGMENTS {
            return Err(Error::Memory(format!(
                "a set can have at most {MAX_SEGMENTS} buffer segments"
            )));
        }
        let bytes = round_up(bytes.max(4096), 4096);
        let h = self.inner.set.ctl.header();
        // The mode comes from this server's own decision at Open, never from the
        // header (whose mode and gid fields are the client's wishes, unchecked).
        let (mode, gid) = match self.inner.sharing {
            Sharing::Private | Sharing::User(_) => (0o600, None),
            Sharing::Group(g) => (0o660, Some(g)),
        };
        let name = set::seg_name(self.name(), i);
        // A leftover of this user's own (a server that died with the same set name)
        // is replaced; anyone else's object under the name is not ours to delete.
        if let Some((_, _, uid, ..)) = sys::lstat_path(&format!("/dev/shm{name}")) {
            if uid == sys::geteuid() {
                let _ = sys::shm_unlink(&name);
            }
        }
        let fd = sys::shm_create(&name, mode, gid)
            .map_err(|e| Error::os(format!("creating {name}"), e))?;
        if let Sharing::User(uid) = self.inner.sharing {
            if let Err(e) = sys::fchown(&fd, uid, u32::MAX) {
                let _ = sys::shm_unlink(&name);
                return Err(Error::os(format!("giving {name} to uid {uid}"), e));
            }
        }
        sys::ftruncate(&fd, bytes).map_err(|e| Error::os(format!("sizing {name}"), e))?;
        let map = Arc::new(
            Mapping::map(&fd, bytes as usize, true)
                .map_err(|e| Error::os(format!("mapping {name}"), e))?,
        );
        h.segments[i].size.store(bytes, Ordering::Relaxed);
        // SYNC POINT: Release pairs with the Acquire load of segment_count in
        // `SetShared::segment`: the size above is visible first.
        h.segment_count.v.store((i + 1) as u32, Ordering::Release);
        self.inner.set.install_segment(i, map.clone())?;
        local.segments.push(map);
        local.free.push(vec![(0, bytes)]);
        Ok(bytes)
    }

    /// Finish configuration (`EndConfiguration`): create the buffer area and release
    /// the client's GetConfiguration.
    #[doc(alias = "EndConfiguration")]
    pub fn end_configuration(&self) -> Result<()> {
        self.check()?;
        let mut local = self.local()?;
        if local.phase != Phase::Configurable {
            return Err(Error::Protocol(
                "EndConfiguration is legal only after BeginConfiguration".into(),
            ));
        }
        let mut cfg = local
            .pending_cfg
            .ok_or_else(|| Error::Protocol("no configuration".into()))?;
        let prefix = u64::from(cfg.prefix_zone_size);
        let mut total = 0u64;
        for &(size, a, count) in &local.requests {
            total = total.saturating_add(
                (round_up(prefix, a) + round_up(size, a)).saturating_mul(count) + a,
            );
        }
        if total > (1u64 << 40) {
            return Err(Error::Memory(format!(
                "a buffer area of {total} bytes is too large"
            )));
        }
        let area = if total > 0 {
            self.add_segment(&mut local, total)?
        } else {
            0
        };
        cfg.buffer_area_size = u32::try_from(area).unwrap_or(u32::MAX);
        let h = self.inner.set.ctl.header();
        for (a, v) in h.server_cfg.iter().zip(cfg.to_words()) {
            a.store(v, Ordering::Relaxed);
        }
        let _ = self.inner.cfg.set(cfg);
        local.phase = Phase::Configured;
        // SYNC POINT: Release pairs with the client's Acquire in GetConfiguration:
        // server_cfg, device names and segment table are visible first.
        h.state.v.store(set_state::CONFIGURED, Ordering::Release);
        sys::futex_wake_all(&h.state.v);
        let _ = self
            .inner
            .open_deadline
            .set(self.inner.open_timeout.deadline());
        Ok(())
    }

    /// Open the device called `name` (`OpenDevice`). `VD_E_OPEN` once all are open.
    #[doc(alias = "OpenDevice")]
    pub fn open_device(&self, name: &str) -> Result<ServerDevice> {
        self.check()?;
        let mut local = self.local()?;
        if local.phase != Phase::Configured {
            return Err(Error::Protocol("OpenDevice before EndConfiguration".into()));
        }
        if local.opened.iter().all(|&o| o) {
            return Err(Error::Open("every device is already open".into()));
        }
        let index = local
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::Invalid(format!("no device named {name:?} in this set")))?;
        if local.opened[index] {
            return Err(Error::Protocol(format!("device {name:?} is already open")));
        }
        local.opened[index] = true;
        let d = self
            .inner
            .set
            .ctl
            .device(index)
            .ok_or_else(|| Error::Corrupt("device block missing".into()))?;
        d.state.v.fetch_or(dev_state::SERVER_OPEN, Ordering::AcqRel);
        Ok(ServerDevice {
            set: self.inner.clone(),
            index,
            name: name.to_string(),
            local: sys::DeviceLock::new(ServerDeviceLocal {
                sub_head: 0,
                cmp_tail: 0,
                slots: [None; SLOTS],
                free: (0..SLOTS as u32).rev().collect(),
                next_seq: 1,
                closed: false,
            }),
        })
    }

    /// A buffer of `size` bytes from the shared area (`AllocateBuffer`), its data zone
    /// aligned to `alignment` (at least the set's) with the client's prefix zone
    /// before it. `VD_E_MEMORY` when the area has no room.
    #[doc(alias = "AllocateBuffer")]
    pub fn allocate_buffer(&self, size: u32, alignment: u32) -> Result<ServerBuffer> {
        self.check()?;
        let mut local = self.local()?;
        let cfg = *self
            .inner
            .cfg
            .get()
            .ok_or_else(|| Error::Protocol("AllocateBuffer before EndConfiguration".into()))?;
        if alignment != 0 && !alignment.is_power_of_two() {
            return Err(Error::Invalid(format!(
                "alignment {alignment} is not a power of two"
            )));
        }
        let a = u64::from(alignment.max(cfg.alignment).max(64));
        let prefix = u64::from(cfg.prefix_zone_size);
        let size64 = u64::from(size);
        for seg in 0..local.free.len() {
            let ranges = &mut local.free[seg];
            for k in 0..ranges.len() {
                let (start, len) = ranges[k];
                let data = round_up(start + prefix, a);
                let end = data + size64;
                if end <= start + len {
                    let block_start = data - prefix;
                    ranges.remove(k);
                    if end < start + len {
                        ranges.insert(k, (end, start + len - end));
                    }
                    if block_start > start {
                        ranges.insert(k, (start, block_start - start));
                    }
                    let map = local.segments[seg].clone();
                    let buf = SharedBuf::new(map, data, size64)
                        .ok_or_else(|| Error::Memory("allocation outside segment".into()))?;
                    return Ok(ServerBuffer {
                        seg: seg as u32,
                        offset: data,
                        block: (block_start, end - block_start),
                        buf,
                    });
                }
            }
        }
        Err(Error::Memory(format!(
            "no room for a buffer of {size} bytes in the buffer area"
        )))
    }

    /// Return a buffer (`FreeBuffer`).
    #[doc(alias = "FreeBuffer")]
    pub fn free_buffer(&self, buf: ServerBuffer) -> Result<()> {
        let mut local = self.local()?;
        let ranges = local
            .free
            .get_mut(buf.seg as usize)
            .ok_or_else(|| Error::Invalid("not a buffer of this set".into()))?;
        let (s, l) = buf.block;
        let pos = ranges.partition_point(|r| r.0 < s);
        ranges.insert(pos, (s, l));
        // Coalesce neighbours.
        let mut i = pos.saturating_sub(1);
        while i + 1 < ranges.len() {
            if ranges[i].0 + ranges[i].1 == ranges[i + 1].0 {
                ranges[i].1 += ranges[i + 1].1;
                ranges.remove(i + 1);
            } else if i > pos {
                break;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Whether `p` is inside this set's buffer area (`IsSharedBuffer`).
    #[doc(alias = "IsSharedBuffer")]
    pub fn is_shared_buffer(&self, p: *const u8) -> bool {
        self.inner.set.locate(p).is_some()
    }

    /// Abort the set (`SignalAbort`).
    #[doc(alias = "SignalAbort")]
    pub fn signal_abort(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Protocol("the server set is closed".into()));
        }
        self.inner.set.abort(AbortReason::Server);
        Ok(())
    }

    /// Why the set was aborted, if it was.
    pub fn abort_reason(&self) -> Option<AbortReason> {
        self.inner.set.aborted()
    }

    /// Release everything (`Close`) and remove the set's objects from /dev/shm. With
    /// devices still open (not closed with CloseDevice) the set is aborted and
    /// `VD_E_PROTOCOL` returned, as the reference says.
    #[doc(alias = "Close")]
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Err(Error::Protocol("the server set is not open".into()));
        }
        self.inner.release()
    }
}

impl ServerInner {
    fn release(&self) -> Result<()> {
        let mut local = match self.local.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let mut r = Ok(());
        let open = local
            .opened
            .iter()
            .zip(&local.closed_devs)
            .any(|(&o, &c)| o && !c);
        if open && self.set.aborted().is_none() {
            self.set.abort(AbortReason::Server);
            r = Err(Error::Protocol(
                "devices were still open; the set was aborted".into(),
            ));
        }
        let h = self.set.ctl.header();
        h.state.v.store(set_state::SERVER_CLOSED, Ordering::Release);
        self.set.wake_everyone();
        if let Some(mut s) = local.sentinel.take() {
            s.stop();
        }
        self.set.unlink_all();
        r
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

impl Drop for ServerInner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.release();
        }
    }
}

/// An opened device, server side (`IServerVirtualDevice`).
#[derive(Debug)]
pub struct ServerDevice {
    set: Arc<ServerInner>,
    index: usize,
    name: String,
    local: sys::DeviceLock<ServerDeviceLocal>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    tag: u64,
    code: u32,
    size: u32,
    seq: u32,
}

#[derive(Debug)]
struct ServerDeviceLocal {
    sub_head: u32,
    cmp_tail: u32,
    slots: [Option<Sent>; SLOTS],
    free: Vec<u32>,
    next_seq: u32,
    closed: bool,
}

impl ServerDevice {
    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The device's index in the set.
    pub fn index(&self) -> usize {
        self.index
    }

    fn block(&self) -> Result<&DeviceBlock> {
        self.set
            .set
            .ctl
            .device(self.index)
            .ok_or_else(|| Error::Corrupt("device block missing".into()))
    }

    fn lock(&self) -> Result<sys::DeviceGuard<'_, ServerDeviceLocal>> {
        self.local
            .lock()
            .ok_or_else(|| Error::Corrupt("a lock was poisoned by a panic".into()))
    }

    /// Queue a command to the client (`SendCommand`). `VD_E_QUEUE_FULL` when
    /// [`crate::MAX_OUTSTANDING`] commands are already in flight; `VD_E_IO_ERROR` when the
    /// device is in IO-ERROR and the command is not VDC_ClearError.
    #[doc(alias = "SendCommand")]
    pub fn send_command(&self, cmd: &ServerCommand<'_>) -> Result<()> {
        if self.set.closed.load(Ordering::Acquire) {
            return Err(Error::Protocol("the server set is closed".into()));
        }
        let set = &self.set.set;
        if let Some(e) = set.abort_error() {
            return Err(e);
        }
        let d = self.block()?;
        let mut local = self.lock()?;
        if local.closed {
            return Err(Error::Protocol("the device is closed".into()));
        }
        if cmd.code == 0 {
            return Err(Error::Invalid("command code 0".into()));
        }
        if d.state.v.load(Ordering::Acquire) & dev_state::IO_ERROR != 0
            && cmd.code != vdc::VDC_ClearError
        {
            return Err(Error::IoError);
        }
        let data = matches!(cmd.code, vdc::VDC_Read | vdc::VDC_Write);
        if data && cmd.size > 0 {
            match cmd.buffer {
                None => return Err(Error::Invalid("a Read or Write needs a buffer".into())),
                Some(b) if (cmd.size as usize) > b.len() => {
                    return Err(Error::Invalid(format!(
                        "size {} exceeds the buffer's {} bytes",
                        cmd.size,
                        b.len()
                    )))
                }
                _ => {}
            }
        }
        let Some(idx) = local.free.pop() else {
            return Err(Error::QueueFull);
        };
        let seq = local.next_seq;
        local.next_seq = local.next_seq.wrapping_add(1).max(1);
        let pos = local.sub_head;
        let e = &d.sub_ring[(pos as usize) % SLOTS];
        e.code.store(cmd.code, Ordering::Relaxed);
        e.size.store(cmd.size, Ordering::Relaxed);
        e.slot.store(idx, Ordering::Relaxed);
        e.position.store(cmd.position, Ordering::Relaxed);
        match cmd.buffer {
            Some(b) => {
                e.segment.store(b.seg, Ordering::Relaxed);
                e.offset.store(b.offset, Ordering::Relaxed);
                e.buf_len.store(b.len() as u32, Ordering::Relaxed);
            }
            None => {
                e.segment.store(u32::MAX, Ordering::Relaxed);
                e.offset.store(0, Ordering::Relaxed);
                e.buf_len.store(0, Ordering::Relaxed);
            }
        }
        e.seq.store(seq, Ordering::Relaxed);
        local.slots[idx as usize] = Some(Sent {
            tag: cmd.tag,
            code: cmd.code,
            size: cmd.size,
            seq,
        });
        local.sub_head = pos.wrapping_add(1);
        if sto_set(&self.set) && self.set.outstanding.fetch_add(1, Ordering::AcqRel) == 0 {
            self.set
                .last_progress
                .store(self.set.now_ns(), Ordering::Relaxed);
        }
        // SYNC POINT: Release pairs with the client's Acquire load of `turn` in
        // `ClientDevice::try_take`: the entry's fields above are visible first.
        e.turn.store(pos.wrapping_add(1), Ordering::Release);
        wake_if_sleeping(&d.sub_event.v, &d.client_waiting.v);
        Ok(())
    }

    /// Commands sent and not yet received back.
    pub fn outstanding(&self) -> usize {
        self.local
            .lock()
            .map(|l| l.slots.iter().filter(|s| s.is_some()).count())
            .unwrap_or(0)
    }

    /// Receive the next completion on this device, waiting up to `timeout`. After an
    /// abort every outstanding command comes back with ERROR_OPERATION_ABORTED (995),
    /// then `Err(Abort)`. With nothing outstanding: `VD_E_PROTOCOL`. Enforces the
    /// client's serverTimeOut: outstanding commands and no completion for two
    /// intervals abort the set.
    pub fn wait_completion(&self, timeout: Timeout) -> Result<Completion> {
        if self.set.closed.load(Ordering::Acquire) {
            return Err(Error::Protocol("the server set is closed".into()));
        }
        let set = &self.set.set;
        let h = set.ctl.header();
        let d = self.block()?;
        let sto = self.set.cfg.get().map(|c| c.server_time_out).unwrap_or(0);
        // One attempt before any deadline is computed: a completion already waiting
        // costs no clock read.
        if let Some(r) = match self.lock() {
            Ok(mut local) => self.try_reap(set, d, &mut local, sto),
            Err(e) => Some(Err(e)),
        } {
            return r;
        }
        let user_deadline = timeout.deadline();
        // With serverTimeOut, wake at least once per interval to apply its rule.
        let capped = |user: Option<Instant>| {
            if sto == 0 {
                return user;
            }
            let cap = Instant::now() + Duration::from_millis(u64::from(sto));
            Some(user.map_or(cap, |d| d.min(cap)))
        };
        let on = WaitOn {
            event: &d.cmp_event.v,
            abort: &h.abort.v,
            peer_live: &h.client_live.v,
            state: None,
            sleepers: Some(&d.server_waiting.v),
            health: Some((set, AbortReason::ClientDied)),
        };
        // The ring position the last attempt found empty, for `peek`.
        let next = std::cell::Cell::new(0u32);
        // A hint only (SYNC POINT: none; the attempt reads `turn` again with Acquire
        // under the device lock).
        let peek = || {
            let pos = next.get();
            d.cmp_ring[(pos as usize) % SLOTS]
                .turn
                .load(Ordering::Relaxed)
                == pos.wrapping_add(1)
        };
        // The device lock is taken per attempt, never across a sleep, so another
        // thread may send on this device while this one waits.
        let attempt = || match self.lock() {
            Ok(mut local) => {
                let r = self.try_reap(set, d, &mut local, sto);
                next.set(local.cmp_tail);
                r
            }
            Err(e) => Some(Err(e)),
        };
        if sto == 0 {
            // Returned as it is: no look at the result, which would copy it.
            return block_on(user_deadline, &on, peek, attempt);
        }
        loop {
            let r = block_on(capped(user_deadline), &on, peek, attempt);
            match r {
                Err(Error::Timeout)
                    if sto != 0 && user_deadline.is_none_or(|t| Instant::now() < t) => {}
                other => return other,
            }
        }
    }

    fn try_reap(
        &self,
        set: &SetShared,
        d: &DeviceBlock,
        local: &mut ServerDeviceLocal,
        sto: u32,
    ) -> Option<Result<Completion>> {
        // Read the client's Close flag before the ring: a client publishes its last
        // completions before it closes, so if the flag is seen here the ring check
        // below sees them too (SYNC POINT: Acquire pairing with the client's Release
        // store of client_closed), and a normal end is not mistaken for an abort.
        let client_closed = set.ctl.header().client_closed.v.load(Ordering::Acquire) != 0;
        let pos = local.cmp_tail;
        let e = &d.cmp_ring[(pos as usize) % SLOTS];
        // SYNC POINT: Acquire pairs with the client's Release store of `turn` in
        // `publish_completion`: the completion fields are visible.
        let turn = e.turn.load(Ordering::Acquire);
        let ready = turn == pos.wrapping_add(1);
        // One look at the abort word per attempt: an abort that lands after it is
        // seen by the next attempt, and a completion published before it is still
        // the client's answer.
        let aborted = set.aborted().is_some();
        if !aborted && !ready && turn != 0 && turn != pos.wrapping_sub(SLOTS as u32 - 1) {
            set.abort(AbortReason::Corrupt);
            return Some(Err(Error::Corrupt(
                "the completion ring holds an entry out of turn".into(),
            )));
        }
        if !aborted && ready {
            let idx = e.slot.load(Ordering::Relaxed) as usize;
            let sent = match local.slots.get(idx).copied().flatten() {
                Some(s) => s,
                None => {
                    set.abort(AbortReason::Corrupt);
                    return Some(Err(Error::Corrupt(
                        "the completion ring names a slot with no command".into(),
                    )));
                }
            };
            if e.seq.load(Ordering::Relaxed) != sent.seq {
                set.abort(AbortReason::Corrupt);
                return Some(Err(Error::Corrupt(
                    "a completion does not match the command sent".into(),
                )));
            }
            let completion_code = e.completion_code.load(Ordering::Relaxed);
            let bytes_transferred = e.bytes.load(Ordering::Relaxed);
            let position = e.out_position.load(Ordering::Relaxed);
            // A client that reports more bytes than the command asked for is lying (or
            // broken): the engine would take bytes past what it sent, or count data it
            // never had. The set fails; nothing of it is believed.
            if matches!(sent.code, vdc::VDC_Read | vdc::VDC_Write) && bytes_transferred > sent.size
            {
                set.abort(AbortReason::Corrupt);
                return Some(Err(Error::Corrupt(format!(
                    "the client completed a command of {} bytes with {} bytes transferred",
                    sent.size, bytes_transferred
                ))));
            }
            local.cmp_tail = pos.wrapping_add(1);
            self.finish_slot(local, idx);
            // Only the serverTimeOut rule reads the progress stamp: without it, no
            // clock read per completion.
            if sto != 0 {
                self.set
                    .last_progress
                    .store(self.set.now_ns(), Ordering::Relaxed);
            }
            // Built where it is returned, from registers: a `Completion` assembled
            // on the stack and then copied out was read back wider than it was
            // written (a store-forwarding stall per completion).
            return Some(Ok(Completion {
                tag: sent.tag,
                code: sent.code,
                completion_code,
                bytes_transferred,
                position,
            }));
        }
        if aborted {
            return self.reap_aborted(set, local);
        }
        if local.slots.iter().all(|s| s.is_none()) {
            return Some(Err(Error::Protocol(
                "no command is outstanding on this device".into(),
            )));
        }
        let h = set.ctl.header();
        // A dead or departed client aborts the set; `reap_aborted` then hands back
        // the outstanding commands with ERROR_OPERATION_ABORTED (spec §1.9).
        if set
            .check_peer(&h.client_live.v, AbortReason::ClientDied)
            .is_some()
        {
            return self.reap_aborted(set, local);
        }
        if client_closed {
            set.abort(AbortReason::Client);
            return self.reap_aborted(set, local);
        }
        // A client that never opens this device (never configured, or stalled before
        // OpenDevice) gets the open timeout and no more: SQL Server fails such a
        // BACKUP/RESTORE instead of waiting for ever.
        if d.state.v.load(Ordering::Acquire) & dev_state::CLIENT_OPEN == 0 {
            if let Some(Some(limit)) = self.set.open_deadline.get() {
                if Instant::now() >= *limit {
                    set.abort(AbortReason::Server);
                    return Some(Err(Error::Timeout));
                }
            }
        }
        if sto != 0 && self.set.outstanding.load(Ordering::Acquire) > 0 {
            let idle = self
                .set
                .now_ns()
                .saturating_sub(self.set.last_progress.load(Ordering::Relaxed));
            if idle > 2 * u64::from(sto) * 1_000_000 {
                set.abort(AbortReason::ServerTimeout);
                return self.reap_aborted(set, local);
            }
        }
        None
    }

    /// After an abort (spec §1.9): the next outstanding command comes back with
    /// ERROR_OPERATION_ABORTED; with none left, the abort error.
    #[cold]
    fn reap_aborted(
        &self,
        set: &SetShared,
        local: &mut ServerDeviceLocal,
    ) -> Option<Result<Completion>> {
        if let Some(idx) = local.slots.iter().position(|s| s.is_some()) {
            let sent = local.slots[idx].unwrap_or(Sent {
                tag: 0,
                code: 0,
                size: 0,
                seq: 0,
            });
            self.finish_slot(local, idx);
            return Some(Ok(Completion {
                tag: sent.tag,
                code: sent.code,
                completion_code: win32::ERROR_OPERATION_ABORTED,
                bytes_transferred: 0,
                position: 0,
            }));
        }
        set.abort_error().map(Err)
    }

    fn finish_slot(&self, local: &mut ServerDeviceLocal, idx: usize) {
        if local.slots[idx].take().is_some() {
            local.free.push(idx as u32);
            if sto_set(&self.set) {
                self.set.outstanding.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Close the device (`CloseDevice`): once its queue is drained the client gets
    /// `VD_E_CLOSE`. `VD_E_CLOSE` if already closed.
    #[doc(alias = "CloseDevice")]
    pub fn close(&self) -> Result<()> {
        if self.set.closed.load(Ordering::Acquire) {
            return Err(Error::Protocol("the server set is closed".into()));
        }
        let mut local = self.lock()?;
        if local.closed {
            return Err(Error::Close);
        }
        if let Some(e) = self.set.set.abort_error() {
            return Err(e);
        }
        local.closed = true;
        if let Ok(mut l) = self.set.local.lock() {
            l.closed_devs[self.index] = true;
        }
        let d = self.block()?;
        d.state
            .v
            .fetch_or(dev_state::SERVER_CLOSED, Ordering::AcqRel);
        // The client also sleeps on the device state word, so this change cannot be
        // missed between its last check and its sleep (the futex value check).
        sys::futex_wake_all(&d.state.v);
        d.sub_event.v.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&d.sub_event.v);
        Ok(())
    }

    /// Whether the client put the device in IO-ERROR.
    pub fn is_io_error(&self) -> bool {
        self.block()
            .map(|d| d.state.v.load(Ordering::Acquire) & dev_state::IO_ERROR != 0)
            .unwrap_or(false)
    }
}
