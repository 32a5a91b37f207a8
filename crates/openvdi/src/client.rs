//! The client half: what a backup application uses (reference §2, §9.2).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::consts::{vdc, vdf, win32};
use crate::error::{AbortReason, Error, Result};
use crate::layout::{self, dev_state, set_state, slot_state, DeviceBlock, SLOTS};
use crate::set::{self, block_on, wake_if_sleeping, LiveWord, Sentinel, SetShared, WaitOn};
use crate::shm::{read_name, write_name, Control, SharedBuf};
use crate::sys::{self, Mapping};
use crate::{SetOptions, Timeout, VdConfig};

/// A virtual device set, client side (`ClientVirtualDeviceSet`). Create it with
/// [`ClientSet::create`] (the primary) or join one with
/// [`ClientSet::open_in_secondary`]. Every method may be called from any thread.
#[derive(Debug, Clone)]
pub struct ClientSet {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    set: Arc<SetShared>,
    primary: bool,
    closed: AtomicBool,
    local: Mutex<ClientLocal>,
}

#[derive(Debug, Default)]
struct ClientLocal {
    sentinel: Option<Sentinel>,
    configured_seen: bool,
    /// Per device: opened through this handle and not yet terminated by VD_E_CLOSE.
    open: Vec<bool>,
}

/// A buffer mapped from a handle ([`ClientSet::map_buffer_handle`]).
#[derive(Debug, Clone, Copy)]
pub struct MappedBuffer {
    /// The buffer's address in this process.
    pub ptr: *mut u8,
    /// Its usable length in bytes.
    pub len: usize,
}

impl ClientSet {
    /// Create a set named `name` with the client's configuration (`Create`). Objects
    /// get mode 0600; see [`ClientSet::create_with`] to share with a group.
    #[doc(alias = "Create")]
    pub fn create(name: &str, cfg: &VdConfig) -> Result<ClientSet> {
        ClientSet::create_with(name, cfg, &SetOptions::default())
    }

    /// Create a set with explicit [`SetOptions`].
    #[doc(alias = "Create")]
    #[doc(alias = "CreateEx")]
    pub fn create_with(name: &str, cfg: &VdConfig, opts: &SetOptions) -> Result<ClientSet> {
        set::validate_name("set", name)?;
        validate_client_config(cfg)?;
        // Leftovers of this user's dead sets go first, whatever their names (clients
        // that use fresh names never meet their own leftovers again).
        crate::sweep_stale_sets_bounded(crate::AUTO_SWEEP_LIMIT);
        let mode = if opts.group.is_some() { 0o660 } else { 0o600 };
        let dc = cfg.device_count as usize;
        let size = layout::region_size(dc);
        let cname = set::ctl_name(name);
        // The control object is built under a staging name that carries this
        // process's pid, and appears under the set's name only complete (creator pid,
        // header, magic): a Create killed half-way leaves either a staging object
        // that the sweep reclaims by its pid, or a whole header the sweep can judge —
        // never a nameless, unsized object nobody can attribute.
        let staging = set::staging_name(sys::getpid());
        let fd = match sys::shm_create(&staging, mode, opts.group) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Left by an earlier process that had our pid.
                let _ = sys::shm_unlink(&staging);
                sys::shm_create(&staging, mode, opts.group)
            }
            r => r,
        }
        .map_err(|e| Error::os(format!("creating {staging}"), e))?;
        let build = || -> Result<Control> {
            sys::ftruncate(&fd, size as u64)
                .map_err(|e| Error::os("sizing the control object", e))?;
            let map = Mapping::map(&fd, size, true)
                .map_err(|e| Error::os("mapping the control object", e))?;
            let ctl = Control::new(map, dc)
                .ok_or_else(|| Error::Corrupt("control object too small".into()))?;
            let h = ctl.header();
            h.creator_pid.store(sys::getpid(), Ordering::Relaxed);
            h.version.store(layout::VERSION, Ordering::Relaxed);
            h.header_size.store(
                std::mem::size_of::<layout::SetHeader>() as u32,
                Ordering::Relaxed,
            );
            h.region_size.store(size as u64, Ordering::Relaxed);
            h.device_count.store(dc as u32, Ordering::Relaxed);
            h.slots_per_device.store(SLOTS as u32, Ordering::Relaxed);
            h.device_block_size
                .store(std::mem::size_of::<DeviceBlock>() as u32, Ordering::Relaxed);
            h.mode.store(mode, Ordering::Relaxed);
            h.gid
                .store(opts.group.unwrap_or(u32::MAX), Ordering::Relaxed);
            h.name_len.store(name.len() as u32, Ordering::Relaxed);
            write_name(&h.name, name);
            for (w, v) in h.client_cfg.iter().zip(cfg.to_words()) {
                w.store(v, Ordering::Relaxed);
            }
            // SYNC POINT: Release; the opener's Acquire load of `magic` then sees every
            // field above.
            h.magic.store(layout::MAGIC, Ordering::Release);
            Ok(ctl)
        };
        let ctl = build().inspect_err(|_| {
            let _ = sys::shm_unlink(&staging);
        })?;
        drop(fd);
        // Publish under the set's name, never over another's object.
        let mut reclaimed = false;
        loop {
            match sys::shm_rename_noreplace(&staging, &cname) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !reclaimed => {
                    let alive = owner_alive(name).inspect_err(|_| {
                        let _ = sys::shm_unlink(&staging);
                    })?;
                    if alive {
                        let _ = sys::shm_unlink(&staging);
                        return Err(Error::Busy(format!(
                            "the virtual device set name {name:?} is in use by a live process"
                        )));
                    }
                    // Left behind by a dead owner: reclaim every object of that set.
                    set::unlink_set_objects(name);
                    reclaimed = true;
                }
                Err(e) => {
                    let _ = sys::shm_unlink(&staging);
                    return Err(if e.raw_os_error() == Some(libc::EEXIST) {
                        Error::Busy(format!(
                            "the virtual device set name {name:?} was taken while reclaiming it"
                        ))
                    } else {
                        Error::os(format!("publishing {cname}"), e)
                    });
                }
            }
        }
        let setup = || -> Result<ClientSet> {
            let shared = Arc::new(SetShared::new(name.to_string(), ctl));
            let sentinel = Sentinel::start(shared.clone(), LiveWord::Client)?;
            // SYNC POINT: Release; pairs with the server's Acquire in `ServerSet::open`.
            shared
                .ctl
                .header()
                .state
                .v
                .store(set_state::CREATED, Ordering::Release);
            sys::futex_wake_all(&shared.ctl.header().state.v);
            Ok(ClientSet {
                inner: Arc::new(ClientInner {
                    set: shared,
                    primary: true,
                    closed: AtomicBool::new(false),
                    local: Mutex::new(ClientLocal {
                        sentinel: Some(sentinel),
                        configured_seen: false,
                        open: vec![false; dc],
                    }),
                }),
            })
        };
        setup().inspect_err(|_| set::unlink_set_objects(name))
    }

    /// Join a set that a primary created and the server configured
    /// (`OpenInSecondary`). The secondary may open devices, get commands and map
    /// buffer handles; the primary remains responsible for the set.
    #[doc(alias = "OpenInSecondary")]
    pub fn open_in_secondary(name: &str) -> Result<ClientSet> {
        set::validate_name("set", name)?;
        let ctl = set::map_control(name)?.ok_or_else(|| {
            Error::Protocol(format!("no virtual device set named {name:?} exists"))
        })?;
        let ctl = set::validate_header(ctl, name)?;
        let shared = Arc::new(SetShared::new(name.to_string(), ctl));
        if let Some(e) = shared.abort_error() {
            return Err(e);
        }
        let st = shared.ctl.header().state.v.load(Ordering::Acquire);
        if st != set_state::CONFIGURED {
            return Err(Error::Protocol(format!("virtual device set {name:?} is not configured yet; secondaries may join only after the primary's GetConfiguration")));
        }
        let dc = shared.devices();
        Ok(ClientSet {
            inner: Arc::new(ClientInner {
                set: shared,
                primary: false,
                closed: AtomicBool::new(false),
                local: Mutex::new(ClientLocal {
                    sentinel: None,
                    configured_seen: true,
                    open: vec![false; dc],
                }),
            }),
        })
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.inner.set.name
    }

    /// Whether this handle is the primary (created the set).
    pub fn is_primary(&self) -> bool {
        self.inner.primary
    }

    fn local(&self) -> Result<MutexGuard<'_, ClientLocal>> {
        self.inner
            .local
            .lock()
            .map_err(|_| Error::Corrupt("a lock was poisoned by a panic".into()))
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Protocol("the virtual device set is closed".into()));
        }
        Ok(())
    }

    /// Wait up to `timeout` for the server to configure the set, then return the
    /// final configuration (`GetConfiguration`). A timeout changes nothing; once
    /// configured, every later call (any thread, any process of the set) returns the
    /// same data at once.
    #[doc(alias = "GetConfiguration")]
    pub fn get_configuration(&self, timeout: Timeout) -> Result<VdConfig> {
        self.check_open()?;
        let set = &self.inner.set;
        let h = set.ctl.header();
        let deadline = timeout.deadline();
        let on = WaitOn {
            event: &h.state.v,
            abort: &h.abort.v,
            peer_live: &h.server_live.v,
            state: None,
            sleepers: None,
            health: Some((set, AbortReason::ServerDied)),
        };
        let cfg = block_on(
            deadline,
            &on,
            || true,
            || {
                if let Some(e) = set.abort_error() {
                    return Some(Err(e));
                }
                if let Some(e) = set.check_peer(&h.server_live.v, AbortReason::ServerDied) {
                    return Some(Err(e));
                }
                // SYNC POINT: Acquire pairs with the server's Release store of CONFIGURED,
                // published after server_cfg and the device names.
                match h.state.v.load(Ordering::Acquire) {
                    set_state::CONFIGURED => Some(read_server_config(set)),
                    set_state::SERVER_CLOSED => Some(Err(Error::Abort(AbortReason::Server))),
                    _ => None,
                }
            },
        )?;
        self.local()?.configured_seen = true;
        Ok(cfg)
    }

    /// Open the device called `name` (`OpenDevice`); the first device's name is the
    /// set's name. Unknown name → `VD_E_INVALID`; a device already open →
    /// `VD_E_PROTOCOL`; every device already open → `VD_E_OPEN`.
    #[doc(alias = "OpenDevice")]
    pub fn open_device(&self, name: &str) -> Result<ClientDevice> {
        self.check_open()?;
        set::validate_name("device", name)?;
        let set = &self.inner.set;
        if let Some(e) = set.abort_error() {
            return Err(e);
        }
        let mut local = self.local()?;
        if !local.configured_seen {
            return Err(Error::Protocol(
                "OpenDevice before GetConfiguration returned the configuration".into(),
            ));
        }
        if set.ctl.header().state.v.load(Ordering::Acquire) != set_state::CONFIGURED {
            return Err(Error::Protocol(
                "the set is not in the configured state".into(),
            ));
        }
        let n = set.devices();
        let mut index = None;
        let mut all_open = true;
        for i in 0..n {
            let d = set
                .ctl
                .device(i)
                .ok_or_else(|| Error::Corrupt("device block missing".into()))?;
            if d.state.v.load(Ordering::Acquire) & dev_state::CLIENT_OPEN == 0 {
                all_open = false;
            }
            if read_name(&d.name, d.name_len.load(Ordering::Relaxed)).as_deref() == Some(name) {
                index = Some(i);
            }
        }
        if all_open {
            return Err(Error::Open(
                "every device of the set is already open".into(),
            ));
        }
        let index =
            index.ok_or_else(|| Error::Invalid(format!("the set has no device named {name:?}")))?;
        let d = set
            .ctl
            .device(index)
            .ok_or_else(|| Error::Corrupt("device block missing".into()))?;
        let prev = d.state.v.fetch_or(dev_state::CLIENT_OPEN, Ordering::AcqRel);
        if prev & dev_state::CLIENT_OPEN != 0 {
            return Err(Error::Protocol(format!("device {name:?} is already open")));
        }
        local.open[index] = true;
        static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(ClientDevice {
            set: self.inner.clone(),
            index,
            token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            local: sys::DeviceLock::new(DeviceLocal {
                sub_tail: 0,
                cmp_head: 0,
                outstanding: [0; SLOTS],
                n_outstanding: 0,
                terminated: false,
                seq_hint: 0,
            }),
        })
    }

    /// Abort the set (`SignalAbort`): every blocked and later call of either side
    /// returns `VD_E_ABORT`; outstanding commands complete toward the server with
    /// ERROR_OPERATION_ABORTED. Call Close afterwards.
    #[doc(alias = "SignalAbort")]
    pub fn signal_abort(&self) -> Result<()> {
        self.check_open()?;
        self.inner.set.abort(AbortReason::Client);
        Ok(())
    }

    /// Release the set (`Close`). With devices still open (opened through this handle
    /// and not ended by `VD_E_CLOSE`) the set is aborted and `VD_E_OPEN` returned,
    /// but the resources are released all the same. The primary removes the set's
    /// objects from /dev/shm.
    #[doc(alias = "Close")]
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Err(Error::Protocol("the virtual device set is not open".into()));
        }
        self.inner.release()
    }

    /// A process-independent handle for the buffer of a command outstanding on this
    /// set (`GetBufferHandle`). The process that received the command still completes it.
    #[doc(alias = "GetBufferHandle")]
    pub fn get_buffer_handle(&self, buffer: *const u8) -> Result<u32> {
        self.check_open()?;
        let set = &self.inner.set;
        let (seg, off) = set
            .locate(buffer)
            .ok_or_else(|| Error::Invalid("the address is not a buffer of this set".into()))?;
        for di in 0..set.devices() {
            let d = set
                .ctl
                .device(di)
                .ok_or_else(|| Error::Corrupt("device block missing".into()))?;
            for (si, s) in d.slots.iter().enumerate() {
                if s.state.load(Ordering::Acquire) == slot_state::DELIVERED
                    && s.segment.load(Ordering::Relaxed) == seg
                    && s.offset.load(Ordering::Relaxed) == off
                {
                    let seq = s.seq.load(Ordering::Relaxed);
                    return Ok(encode_handle(di, si, seq));
                }
            }
        }
        Err(Error::Invalid(
            "the address is not the buffer of an outstanding command".into(),
        ))
    }

    /// Map a handle from [`ClientSet::get_buffer_handle`] (possibly made by another
    /// process of this set) to this process's address of the buffer (`MapBufferHandle`).
    #[doc(alias = "MapBufferHandle")]
    pub fn map_buffer_handle(&self, handle: u32) -> Result<MappedBuffer> {
        self.check_open()?;
        let set = &self.inner.set;
        let (di, si, seq) = decode_handle(handle);
        let invalid = || {
            Error::Invalid(format!(
                "buffer handle 0x{handle:08x} is not valid in this set"
            ))
        };
        let d = set.ctl.device(di).ok_or_else(invalid)?;
        let s = &d.slots[si];
        if s.state.load(Ordering::Acquire) != slot_state::DELIVERED
            || s.seq.load(Ordering::Relaxed) & HANDLE_SEQ_MASK != seq
        {
            return Err(invalid());
        }
        let seg = s.segment.load(Ordering::Relaxed);
        let off = s.offset.load(Ordering::Relaxed);
        let len = s.buf_len.load(Ordering::Relaxed);
        if seg == u32::MAX {
            return Err(invalid());
        }
        let map = set.segment(seg)?;
        let buf = SharedBuf::new(map, off, u64::from(len))
            .ok_or_else(|| Error::Corrupt("a buffer lies outside its segment".into()))?;
        Ok(MappedBuffer {
            ptr: buf.as_ptr(),
            len: buf.len(),
        })
    }
}

impl ClientInner {
    fn release(&self) -> Result<()> {
        let mut result = Ok(());
        let mut local = match self.local.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        // State table (reference §2.1): Close in the Abort state is OK. Only a Close
        // that finds devices open on a live set aborts it and reports VD_E_OPEN.
        if local.open.iter().any(|&o| o) && self.set.aborted().is_none() {
            self.set.abort(AbortReason::Client);
            result = Err(Error::Open(
                "devices were still open; the set was aborted".into(),
            ));
        }
        if self.primary {
            self.set
                .ctl
                .header()
                .client_closed
                .v
                .store(1, Ordering::Release);
            self.set.wake_everyone();
            if let Some(mut s) = local.sentinel.take() {
                s.stop();
            }
            self.set.unlink_all();
        }
        result
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.release();
        }
    }
}

const HANDLE_SEQ_MASK: u32 = 0xF_FFFF;

fn encode_handle(dev: usize, slot: usize, seq: u32) -> u32 {
    ((dev as u32) << 26) | ((slot as u32) << 20) | (seq & HANDLE_SEQ_MASK)
}

fn decode_handle(h: u32) -> (usize, usize, u32) {
    (
        (h >> 26) as usize,
        ((h >> 20) & 0x3F) as usize,
        h & HANDLE_SEQ_MASK,
    )
}

fn owner_alive(name: &str) -> Result<bool> {
    // Another user's object under the name is never ours to reclaim, dead or alive.
    if let Some((_, _, uid, ..)) = sys::lstat_path(&format!("/dev/shm{}", set::ctl_name(name))) {
        if uid != sys::geteuid() {
            return Ok(true);
        }
    }
    let Some(ctl) = set::map_control(name)? else {
        // Exists but not sized yet: its creator is mid-way; treat as alive unless it
        // vanished (then the retry simply succeeds).
        return Ok(sys::shm_open_existing(&set::ctl_name(name)).is_ok());
    };
    let h = ctl.header();
    let pid = h.creator_pid.load(Ordering::Relaxed);
    let live = h.client_live.v.load(Ordering::Acquire);
    if h.client_closed.v.load(Ordering::Acquire) != 0 {
        // The primary closed it; the server may still hold it. Alive only if the server is.
        return Ok(set::word_alive(h.server_live.v.load(Ordering::Acquire))
            && h.state.v.load(Ordering::Acquire) != set_state::SERVER_CLOSED);
    }
    if live & sys::FUTEX_OWNER_DIED != 0 {
        return Ok(false);
    }
    Ok(sys::process_exists(pid))
}

fn validate_client_config(cfg: &VdConfig) -> Result<()> {
    if cfg.device_count == 0 || cfg.device_count as usize > crate::MAX_DEVICES {
        return Err(Error::NotSupported(format!(
            "deviceCount {} is outside 1..={}",
            cfg.device_count,
            crate::MAX_DEVICES
        )));
    }
    if cfg.features & !vdf::CLIENT_BITS != 0 {
        return Err(Error::NotSupported(format!(
            "features 0x{:x} contain bits a client may not request",
            cfg.features
        )));
    }
    if cfg.alignment != 0 && (!cfg.alignment.is_power_of_two() || cfg.alignment > 65536) {
        return Err(Error::NotSupported(format!(
            "alignment {} is not a power of two up to 65536",
            cfg.alignment
        )));
    }
    if cfg.prefix_zone_size > 1 << 20 {
        return Err(Error::NotSupported(format!(
            "prefixZoneSize {} is larger than 1 MiB",
            cfg.prefix_zone_size
        )));
    }
    Ok(())
}

fn read_server_config(set: &SetShared) -> Result<VdConfig> {
    let h = set.ctl.header();
    let mut w = [0u32; 11];
    for (v, a) in w.iter_mut().zip(h.server_cfg.iter()) {
        *v = a.load(Ordering::Relaxed);
    }
    let cfg = VdConfig::from_words(w);
    // The same rules the server library enforces at BeginConfiguration (reference
    // §3.2): a server that breaks them is not a server this client can work with.
    let bad = if cfg.device_count as usize != set.devices() {
        Some(format!(
            "device count {} for a set of {}",
            cfg.device_count,
            set.devices()
        ))
    } else if cfg.features & !vdf::SERVER_BITS != 0
        || (cfg.features & (vdf::VDF_ReadMedia | vdf::VDF_WriteMedia)) == 0
    {
        Some(format!("features 0x{:x}", cfg.features))
    } else if !cfg.block_size.is_power_of_two() || !(512..=65536).contains(&cfg.block_size) {
        Some(format!("block size {}", cfg.block_size))
    } else if !cfg.alignment.is_power_of_two()
        || cfg.alignment < cfg.block_size
        || cfg.alignment > 65536
    {
        Some(format!("alignment {}", cfg.alignment))
    } else if cfg.max_transfer_size == 0
        || !cfg.max_transfer_size.is_multiple_of(65536)
        || cfg.max_transfer_size > 4 << 20
    {
        Some(format!("maximum transfer size {}", cfg.max_transfer_size))
    } else {
        None
    };
    if let Some(what) = bad {
        set.abort(AbortReason::Corrupt);
        return Err(Error::Corrupt(format!(
            "the server's configuration is inconsistent: {what}"
        )));
    }
    Ok(cfg)
}

/// An opened device, client side (`ClientVirtualDevice`). Drive it from one thread
/// at a time: get a command, execute it, complete it.
#[derive(Debug)]
pub struct ClientDevice {
    set: Arc<ClientInner>,
    index: usize,
    /// Unique in this process: commands carry it, so CompleteCommand can tell a
    /// command of another device (or set) apart from its own. Slot and sequence
    /// number alone cannot: every device numbers its commands from 1.
    token: u64,
    name: String,
    local: sys::DeviceLock<DeviceLocal>,
}

#[derive(Debug)]
struct DeviceLocal {
    sub_tail: u32,
    cmp_head: u32,
    /// Sequence number of the command delivered in each slot, 0 = none.
    outstanding: [u32; SLOTS],
    n_outstanding: usize,
    terminated: bool,
    seq_hint: u32,
}

/// Identifies one delivered command: its slot and sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CommandId {
    /// Slot index on the device.
    pub slot: u32,
    /// Sequence number of the command instance.
    pub seq: u32,
}

/// A command received with [`ClientDevice::get_command`]: a copy of the request
/// fields (so it stays readable after completion) and a zero-copy view of its buffer.
#[derive(Debug)]
pub struct Command {
    id: CommandId,
    /// The delivering device's [`ClientDevice`] token.
    device: u64,
    code: u32,
    size: u32,
    position: u64,
    buf: Option<SharedBuf>,
}

impl Command {
    /// Its identity, for [`ClientDevice::complete_id`].
    pub fn id(&self) -> CommandId {
        self.id
    }
    /// The `VDC_*` command code.
    pub fn code(&self) -> u32 {
        self.code
    }
    /// `size`: bytes to transfer for Read/Write; a count or origin for others.
    pub fn size(&self) -> u32 {
        self.size
    }
    /// `position` (random-access devices, SetPosition).
    pub fn position(&self) -> u64 {
        self.position
    }
    /// The data buffer (for VDC_Write: the bytes to store). Empty if none.
    pub fn buffer(&self) -> &[u8] {
        self.buf.as_ref().map(|b| b.as_slice()).unwrap_or(&[])
    }
    /// The data buffer for writing into (VDC_Read: fill it). Empty if none.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        match self.buf.as_mut() {
            Some(b) => b.as_mut_slice(),
            None => &mut [],
        }
    }
    /// The buffer's address in this process, or null.
    pub fn buffer_ptr(&self) -> *mut u8 {
        self.buf
            .as_ref()
            .map(|b| b.as_ptr())
            .unwrap_or(std::ptr::null_mut())
    }
}

impl ClientDevice {
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

    fn lock(&self) -> Result<sys::DeviceGuard<'_, DeviceLocal>> {
        self.local
            .lock()
            .ok_or_else(|| Error::Corrupt("a lock was poisoned by a panic".into()))
    }

    /// Wait up to `timeout` for the next command (`GetCommand`). `Err(Error::Close)`
    /// (VD_E_CLOSE) is the normal end: the server closed the device.
    #[doc(alias = "GetCommand")]
    pub fn get_command(&self, timeout: Timeout) -> Result<Command> {
        let inner = &self.set;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Protocol("the virtual device set is closed".into()));
        }
        let set = &inner.set;
        let h = set.ctl.header();
        let d = self.block()?;
        let on = WaitOn {
            event: &d.sub_event.v,
            abort: &h.abort.v,
            peer_live: &h.server_live.v,
            state: Some(&d.state.v),
            sleepers: Some(&d.client_waiting.v),
            health: Some((set, AbortReason::ServerDied)),
        };
        // The device lock is taken per attempt, never across a sleep, so another
        // thread may complete commands of this device while this one waits.
        // `next` is the ring position the last attempt found empty, for `peek`.
        let next = std::cell::Cell::new(0u32);
        let attempt = || match self.lock() {
            Ok(local) if local.terminated => Some(Err(Error::Protocol(
                "the device was already closed by the server".into(),
            ))),
            Ok(mut local) => {
                let r = self.try_take(set, d, &mut local);
                next.set(local.sub_tail);
                // `try_take` marks the device terminated when it returns the Close.
                if local.terminated {
                    drop(local);
                    if let Ok(mut l) = inner.local.lock() {
                        l.open[self.index] = false;
                    }
                }
                r
            }
            Err(e) => Some(Err(e)),
        };
        // One attempt before the deadline is computed: a command already waiting
        // costs no clock read. (Returned as it is, not inspected here: a copy of the
        // result to look at it cost more than the rest of the call.)
        if let Some(r) = attempt() {
            return r;
        }
        // SYNC POINT: none needed; a hint only, `attempt` reads it again with Acquire
        // under the device lock.
        let peek = || {
            let pos = next.get();
            d.sub_ring[(pos as usize) % SLOTS]
                .turn
                .load(Ordering::Relaxed)
                == pos.wrapping_add(1)
        };
        block_on(timeout.deadline(), &on, peek, attempt)
    }

    /// One non-blocking attempt to take a command.
    fn try_take(
        &self,
        set: &SetShared,
        d: &DeviceBlock,
        local: &mut DeviceLocal,
    ) -> Option<Result<Command>> {
        if let Some(e) = set.abort_error() {
            return Some(Err(e));
        }
        // Read the end-of-stream flags *before* looking at the ring. The server sets
        // them only after publishing its last command (device bit, then set state),
        // so a flag seen here guarantees the ring check below sees every command, and
        // a closed set seen here guarantees the device bit is seen too: no command is
        // lost and a normal close is never mistaken for an abort.
        // SYNC POINT: Acquire loads pairing with the server's AcqRel fetch_or of
        // SERVER_CLOSED (CloseDevice) and Release store of the set state (Close).
        let set_closed =
            set.ctl.header().state.v.load(Ordering::Acquire) == set_state::SERVER_CLOSED;
        let dev_closed = d.state.v.load(Ordering::Acquire) & dev_state::SERVER_CLOSED != 0;
        loop {
            let pos = local.sub_tail;
            let e = &d.sub_ring[(pos as usize) % SLOTS];
            // SYNC POINT: Acquire pairs with the server's Release store of `turn` in
            // `ServerDevice::send_command`: the entry's fields are visible.
            let turn = e.turn.load(Ordering::Acquire);
            if turn != pos.wrapping_add(1) {
                // Not yet sent: the entry still holds the command of the previous lap
                // (or nothing, on the first). Anything else was not written by a server.
                if turn != 0 && turn != pos.wrapping_sub(SLOTS as u32 - 1) {
                    return Some(Err(
                        self.corrupt(set, "the submission ring holds an entry out of turn")
                    ));
                }
                break;
            }
            let idx = e.slot.load(Ordering::Relaxed) as usize;
            if idx >= SLOTS || local.outstanding[idx] != 0 {
                return Some(Err(
                    self.corrupt(set, "the submission ring names a bad slot")
                ));
            }
            let code = e.code.load(Ordering::Relaxed);
            let seq = e.seq.load(Ordering::Relaxed);
            let io_error = d.state.v.load(Ordering::Acquire) & dev_state::IO_ERROR != 0;
            if io_error && code != vdc::VDC_ClearError {
                // Spec §6.0: commands queued behind a failure never reach the client.
                local.sub_tail = pos.wrapping_add(1);
                self.publish_completion(d, local, idx, seq, win32::ERROR_IO_DEVICE, 0, 0);
                continue;
            }
            if io_error && local.n_outstanding > 0 {
                // ClearError waits until every outstanding command was completed.
                return None;
            }
            if seq == 0 {
                return Some(Err(self.corrupt(set, "a command has sequence number 0")));
            }
            let size = e.size.load(Ordering::Relaxed);
            let position = e.position.load(Ordering::Relaxed);
            let seg = e.segment.load(Ordering::Relaxed);
            let len = e.buf_len.load(Ordering::Relaxed);
            let off = e.offset.load(Ordering::Relaxed);
            let buf = if seg == u32::MAX {
                if matches!(code, vdc::VDC_Read | vdc::VDC_Write) && size != 0 {
                    return Some(Err(self.corrupt(set, "a data command has no buffer")));
                }
                None
            } else {
                if matches!(code, vdc::VDC_Read | vdc::VDC_Write) && size > len {
                    return Some(Err(self.corrupt(set, "a command's size exceeds its buffer")));
                }
                let map = match set.segment(seg) {
                    Ok(m) => m,
                    Err(e) => {
                        set.abort(AbortReason::Corrupt);
                        return Some(Err(e));
                    }
                };
                let view = if matches!(code, vdc::VDC_Read | vdc::VDC_Write) {
                    size
                } else {
                    len
                };
                match SharedBuf::new(map, off, u64::from(view)) {
                    Some(b) => Some(b),
                    None => {
                        return Some(Err(self.corrupt(set, "a buffer lies outside its segment")))
                    }
                }
            };
            // The client side's record of the delivered command, for buffer handles
            // (any client process of the set may look it up).
            let s = &d.slots[idx];
            s.code.store(code, Ordering::Relaxed);
            s.size.store(size, Ordering::Relaxed);
            s.position.store(position, Ordering::Relaxed);
            s.segment.store(seg, Ordering::Relaxed);
            s.buf_len.store(len, Ordering::Relaxed);
            s.offset.store(off, Ordering::Relaxed);
            s.seq.store(seq, Ordering::Relaxed);
            // SYNC POINT: Release pairs with the Acquire load of `state` in
            // `get_buffer_handle` / `map_buffer_handle`.
            s.state.store(slot_state::DELIVERED, Ordering::Release);
            local.sub_tail = pos.wrapping_add(1);
            local.outstanding[idx] = seq;
            local.n_outstanding += 1;
            local.seq_hint = seq;
            return Some(Ok(Command {
                id: CommandId {
                    slot: idx as u32,
                    seq,
                },
                device: self.token,
                code,
                size,
                position,
                buf,
            }));
        }
        if dev_closed {
            local.terminated = true;
            return Some(Err(Error::Close));
        }
        if set_closed {
            // The server closed the set without closing this device.
            set.abort(AbortReason::Server);
            return set.abort_error().map(Err);
        }
        if let Some(e) = set.check_peer(&set.ctl.header().server_live.v, AbortReason::ServerDied) {
            return Some(Err(e));
        }
        None
    }

    fn corrupt(&self, set: &SetShared, what: &str) -> Error {
        set.abort(AbortReason::Corrupt);
        Error::Corrupt(format!("device {:?}: {what}", self.name))
    }

    /// Report a command's completion to the server (`CompleteCommand`). A nonzero
    /// `completion_code` puts the device in IO-ERROR (reference §6.0).
    #[doc(alias = "CompleteCommand")]
    pub fn complete_command(
        &self,
        cmd: &Command,
        completion_code: u32,
        bytes_transferred: u32,
        position: u64,
    ) -> Result<()> {
        // §10: another device's command → VD_E_INVALID. Its (slot, seq) may well
        // match one outstanding here, so the id check in `complete_id` is not enough.
        if cmd.device != self.token {
            return Err(Error::Invalid(
                "the command was delivered by another device".into(),
            ));
        }
        self.complete_id(cmd.id, completion_code, bytes_transferred, position)
    }

    /// [`ClientDevice::complete_command`] by command id. Ids are per device (every
    /// device numbers its commands from 1): pass only ids this device delivered.
    #[doc(alias = "CompleteCommand")]
    pub fn complete_id(
        &self,
        id: CommandId,
        completion_code: u32,
        bytes_transferred: u32,
        position: u64,
    ) -> Result<()> {
        let inner = &self.set;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Protocol("the virtual device set is closed".into()));
        }
        let set = &inner.set;
        let d = self.block()?;
        let mut local = self.lock()?;
        if let Some(e) = set.abort_error() {
            return Err(e);
        }
        if local.terminated {
            return Err(Error::Protocol(
                "the device was already closed by the server".into(),
            ));
        }
        let slot = id.slot as usize;
        if slot >= SLOTS || id.seq == 0 || local.outstanding[slot] != id.seq {
            return Err(Error::Invalid(
                "the command is not outstanding on this device".into(),
            ));
        }
        let code = d.slots[slot].code.load(Ordering::Relaxed);
        let seq = local.outstanding[slot];
        local.outstanding[slot] = 0;
        local.n_outstanding -= 1;
        if completion_code != win32::ERROR_SUCCESS {
            // Set IO-ERROR before the completion is visible, so the server, once it
            // sees the failure, also sees the state (SYNC POINT: Release/Acquire on
            // dev state via the cmp_head Release below).
            d.state.v.fetch_or(dev_state::IO_ERROR, Ordering::AcqRel);
        } else if code == vdc::VDC_ClearError {
            d.state.v.fetch_and(!dev_state::IO_ERROR, Ordering::AcqRel);
        }
        self.publish_completion(
            d,
            &mut local,
            slot,
            seq,
            completion_code,
            bytes_transferred,
            position,
        );
        if completion_code != win32::ERROR_SUCCESS {
            // Drain what is queued behind the failure with ERROR_IO_DEVICE.
            self.drain_queued(d, &mut local);
        }
        Ok(())
    }

    fn drain_queued(&self, d: &DeviceBlock, local: &mut DeviceLocal) {
        loop {
            let pos = local.sub_tail;
            let e = &d.sub_ring[(pos as usize) % SLOTS];
            if e.turn.load(Ordering::Acquire) != pos.wrapping_add(1) {
                return;
            }
            let idx = e.slot.load(Ordering::Relaxed) as usize;
            if idx >= SLOTS || local.outstanding[idx] != 0 {
                return;
            }
            if e.code.load(Ordering::Relaxed) == vdc::VDC_ClearError {
                return;
            }
            let seq = e.seq.load(Ordering::Relaxed);
            local.sub_tail = pos.wrapping_add(1);
            self.publish_completion(d, local, idx, seq, win32::ERROR_IO_DEVICE, 0, 0);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn publish_completion(
        &self,
        d: &DeviceBlock,
        local: &mut DeviceLocal,
        slot: usize,
        seq: u32,
        code: u32,
        bytes: u32,
        position: u64,
    ) {
        // No longer delivered: its buffer handle stops resolving before the server
        // can reuse the buffer.
        let s = &d.slots[slot];
        if s.state.load(Ordering::Relaxed) != slot_state::FREE {
            s.state.store(slot_state::FREE, Ordering::Release);
        }
        let pos = local.cmp_head;
        let e = &d.cmp_ring[(pos as usize) % SLOTS];
        e.slot.store(slot as u32, Ordering::Relaxed);
        e.seq.store(seq, Ordering::Relaxed);
        e.completion_code.store(code, Ordering::Relaxed);
        e.bytes.store(bytes, Ordering::Relaxed);
        e.out_position.store(position, Ordering::Relaxed);
        local.cmp_head = pos.wrapping_add(1);
        // SYNC POINT: Release pairs with the server's Acquire load of `turn` in
        // `ServerDevice::try_reap`: the completion fields above are visible.
        e.turn.store(local.cmp_head, Ordering::Release);
        wake_if_sleeping(&d.cmp_event.v, &d.server_waiting.v);
    }

    /// Commands taken and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.local.lock().map_or(0, |l| l.n_outstanding)
    }
}

/// Lets tests and the fuzzer reach the raw control object of a set they created.
#[doc(hidden)]
pub fn control_bytes_for_tests(set: &ClientSet) -> (*mut u8, usize) {
    let h = set.inner.set.ctl.header() as *const layout::SetHeader as *mut u8;
    (h, layout::region_size(set.inner.set.devices()))
}
