//! `--vdi-library PATH` through Microsoft's C++ ABI: the classes
//! `ClientVirtualDeviceSet` and `ClientVirtualDevice` of the Linux `vdi.h`
//! (reference §9.2), resolved by their Itanium-mangled names with `dlsym` and
//! called as what they are on x86-64 and aarch64 Linux — ordinary C functions whose
//! first argument is `this` (non-virtual members; the classes have no virtual
//! functions, so there is no vtable to honour).
//!
//! This is one of the two files of the crate with unsafe code (with `vdi_lib`).
//!
//! # Object storage
//!
//! A C++ client writes `new ClientVirtualDeviceSet()`: `operator new(sizeof)` and then
//! the complete-object constructor (`C1`). Here the storage is ours: Microsoft's
//! header declares the class with one private member, `CVDS* cvds`, and no virtual
//! functions, so `sizeof(ClientVirtualDeviceSet)` is 8 on LP64 (openvdi's own
//! library lays it out the same way: `crates/openvdi-ffi/src/cpp_abi.rs`,
//! `CppSet`, one pointer, const-asserted). Every client built against that header
//! allocates exactly 8 bytes, so a library that works with it writes no more; the
//! block allocated here is [`OBJECT_SIZE`] = 64 bytes nevertheless, zeroed, aligned
//! to 16 (`__STDCPP_DEFAULT_NEW_ALIGNMENT__`, what `operator new` guarantees): a
//! margin that costs nothing against a build of the library from a header revision
//! with a few more members. The destructor called is the complete-object one
//! (`D1`, which does not free); the block is freed here afterwards.
//!
//! `ClientVirtualDevice` objects are made by the library (`OpenDevice`); who frees
//! them is not documented and Microsoft's sample never does (reference §9.2), so
//! they are left to the library: openvdi's deletes them with their set, Microsoft's
//! keeps or leaks them as its own sample run would.
//!
//! # Threading
//!
//! The set may be used from any thread; each device is "meant to be driven by a
//! single thread" (reference §1.3). The pipelines take commands on a device thread
//! and complete them on the stripe writer, so every device here gets an owner
//! thread that makes all of that device's calls: `GetCommand` and `CompleteCommand`
//! requests reach it over a channel. While commands are out (a completion may
//! arrive) it polls `GetCommand` with a 0 timeout and waits at most
//! [`COMPLETION_POLL`] for a completion in between; with none out it may block in
//! `GetCommand`, since no completion can be asked for then.

#![allow(unsafe_code)]

use std::alloc::Layout;
use std::ffi::{c_char, c_int, c_ulong, c_void, CString};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use openvdi::VdConfig;

use crate::vdi::{Cmd, DevError, Device, DeviceSet, Transport};
use crate::vdi_lib::{check, LibCmd, RawCommand, RawConfig};

/// Bytes allocated for one `ClientVirtualDeviceSet` object (see the module docs:
/// `sizeof` is 8; the rest is margin).
pub const OBJECT_SIZE: usize = 64;
/// `operator new`'s alignment on x86-64/aarch64 Linux.
const OBJECT_ALIGN: usize = 16;
const _: () = assert!(OBJECT_SIZE >= std::mem::size_of::<*mut c_void>());

/// How long a device's owner thread waits for a completion between two polls of
/// `GetCommand` while commands are out.
const COMPLETION_POLL: Duration = Duration::from_millis(1);

type CtorFn = unsafe extern "C" fn(*mut c_void);
type CreateFn = unsafe extern "C" fn(*mut c_void, *mut c_char, *mut RawConfig) -> c_int;
type GetConfigFn = unsafe extern "C" fn(*mut c_void, libc_time_t, *mut RawConfig) -> c_int;
type OpenDeviceFn = unsafe extern "C" fn(*mut c_void, *mut c_char, *mut *mut c_void) -> c_int;
type SetFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetCommandFn = unsafe extern "C" fn(*mut c_void, libc_time_t, *mut *mut RawCommand) -> c_int;
type CompleteFn = unsafe extern "C" fn(*mut c_void, *mut RawCommand, c_int, c_ulong, i64) -> c_int;

/// `time_t` on LP64 Linux: `long` (the `l` in the mangled names).
#[allow(non_camel_case_types)]
type libc_time_t = std::ffi::c_long;

/// One entry point: its mangled names (alternatives in order) and what it is.
pub struct Sym {
    pub names: &'static [&'static str],
    pub what: &'static str,
}

/// The members used, in the order of [`CppApi`]'s fields. Constructors and
/// destructors come as complete-object (C1/D1) and base-object (C2/D2) variants;
/// for these classes (no virtual bases) both do the same, and a library may export
/// either.
pub const SYMBOLS: [Sym; 9] = [
    Sym {
        names: &[
            "_ZN22ClientVirtualDeviceSetC1Ev",
            "_ZN22ClientVirtualDeviceSetC2Ev",
        ],
        what: "ClientVirtualDeviceSet::ClientVirtualDeviceSet()",
    },
    Sym {
        names: &[
            "_ZN22ClientVirtualDeviceSetD1Ev",
            "_ZN22ClientVirtualDeviceSetD2Ev",
        ],
        what: "ClientVirtualDeviceSet::~ClientVirtualDeviceSet()",
    },
    Sym {
        names: &["_ZN22ClientVirtualDeviceSet6CreateEPcP8VDConfig"],
        what: "ClientVirtualDeviceSet::Create(char*, VDConfig*)",
    },
    Sym {
        names: &["_ZN22ClientVirtualDeviceSet16GetConfigurationElP8VDConfig"],
        what: "ClientVirtualDeviceSet::GetConfiguration(time_t, VDConfig*)",
    },
    Sym {
        names: &["_ZN22ClientVirtualDeviceSet10OpenDeviceEPcPP19ClientVirtualDevice"],
        what: "ClientVirtualDeviceSet::OpenDevice(char*, ClientVirtualDevice**)",
    },
    Sym {
        names: &["_ZN22ClientVirtualDeviceSet5CloseEv"],
        what: "ClientVirtualDeviceSet::Close()",
    },
    Sym {
        names: &["_ZN22ClientVirtualDeviceSet11SignalAbortEv"],
        what: "ClientVirtualDeviceSet::SignalAbort()",
    },
    Sym {
        names: &["_ZN19ClientVirtualDevice10GetCommandElPP11VDC_Command"],
        what: "ClientVirtualDevice::GetCommand(time_t, VDC_Command**)",
    },
    Sym {
        names: &["_ZN19ClientVirtualDevice15CompleteCommandEP11VDC_Commandiml"],
        what: "ClientVirtualDevice::CompleteCommand(VDC_Command*, int, unsigned long, int64_t)",
    },
];

/// The resolved members; the library stays loaded as long as any object lives.
pub struct CppApi {
    ctor: CtorFn,
    dtor: CtorFn,
    create: CreateFn,
    get_configuration: GetConfigFn,
    open_device: OpenDeviceFn,
    close: SetFn,
    signal_abort: SetFn,
    get_command: GetCommandFn,
    complete: CompleteFn,
    path: String,
    _lib: Arc<libloading::Library>,
}

/// The address of the first of `names` the library exports.
fn address(lib: &libloading::Library, names: &[&str]) -> Option<*mut c_void> {
    names.iter().find_map(|n| {
        let c = CString::new(*n).ok()?;
        // SAFETY: the symbol is only looked up here, as an untyped address; it is
        // given a type by `CppApi::resolve`, whose names fix it.
        let s = unsafe { lib.get::<*mut c_void>(c.as_bytes_with_nul()) }.ok()?;
        let p = *s;
        (!p.is_null()).then_some(p)
    })
}

/// Which members of [`SYMBOLS`] the library does not export (by what they are).
pub fn missing(lib: &libloading::Library) -> Vec<&'static Sym> {
    SYMBOLS
        .iter()
        .filter(|s| address(lib, s.names).is_none())
        .collect()
}

impl CppApi {
    /// Resolves every member, or says which are missing.
    pub fn resolve(lib: Arc<libloading::Library>, path: &str) -> Result<CppApi, Vec<&'static Sym>> {
        let m = missing(&lib);
        if !m.is_empty() {
            return Err(m);
        }
        let a = |i: usize| address(&lib, SYMBOLS[i].names).expect("checked above");
        // SAFETY: each address is the named member of Microsoft's Linux vdi.h; on
        // LP64 Linux (Itanium C++ ABI) a non-virtual member function is a C function
        // taking `this` first, so these are their exact types (time_t = long,
        // VDConfig/VDC_Command as laid out in `vdi_lib`). They are called only
        // while `_lib` keeps the library loaded.
        unsafe {
            Ok(CppApi {
                ctor: std::mem::transmute::<*mut c_void, CtorFn>(a(0)),
                dtor: std::mem::transmute::<*mut c_void, CtorFn>(a(1)),
                create: std::mem::transmute::<*mut c_void, CreateFn>(a(2)),
                get_configuration: std::mem::transmute::<*mut c_void, GetConfigFn>(a(3)),
                open_device: std::mem::transmute::<*mut c_void, OpenDeviceFn>(a(4)),
                close: std::mem::transmute::<*mut c_void, SetFn>(a(5)),
                signal_abort: std::mem::transmute::<*mut c_void, SetFn>(a(6)),
                get_command: std::mem::transmute::<*mut c_void, GetCommandFn>(a(7)),
                complete: std::mem::transmute::<*mut c_void, CompleteFn>(a(8)),
                path: path.to_string(),
                _lib: lib,
            })
        }
    }
}

fn layout() -> Layout {
    Layout::from_size_align(OBJECT_SIZE, OBJECT_ALIGN).expect("a valid layout")
}

/// A constructed `ClientVirtualDeviceSet` in storage of ours.
struct SetObject {
    api: Arc<CppApi>,
    this: *mut c_void,
}

// SAFETY: reference §1.3: the set interface may be used from any thread; the object
// is just its address.
unsafe impl Send for SetObject {}
// SAFETY: as above.
unsafe impl Sync for SetObject {}

impl SetObject {
    fn new(api: Arc<CppApi>) -> Result<SetObject, DevError> {
        // SAFETY: a non-zero-sized layout.
        let this = unsafe { std::alloc::alloc_zeroed(layout()) }.cast::<c_void>();
        if this.is_null() {
            return Err(DevError::Other("out of memory".into()));
        }
        // SAFETY: `this` is zeroed storage of OBJECT_SIZE ≥ sizeof(ClientVirtualDeviceSet)
        // bytes aligned as operator new would (module docs); the constructor is run
        // once on it.
        unsafe { (api.ctor)(this) };
        Ok(SetObject { api, this })
    }
}

impl Drop for SetObject {
    fn drop(&mut self) {
        // SAFETY: constructed in `new`; every device (which holds an Arc of this
        // object) is gone, so no member call runs concurrently; destroyed once, then
        // the storage is freed with the layout it was allocated with.
        unsafe {
            (self.api.dtor)(self.this);
            std::alloc::dealloc(self.this.cast(), layout());
        }
    }
}

/// The `DeviceSet` seen by the pipelines.
struct CppSet(Arc<SetObject>);

impl DeviceSet for CppSet {
    fn get_configuration(&self, timeout_ms: u32) -> Result<VdConfig, DevError> {
        let mut c = RawConfig::default();
        let o = &self.0;
        // SAFETY: a constructed, created set; `c` is valid for writing a VDConfig.
        let rc =
            unsafe { (o.api.get_configuration)(o.this, libc_time_t::from(timeout_ms), &mut c) };
        check(rc, "GetConfiguration")?;
        Ok(c.to_config())
    }

    fn open_device(&self, name: &str) -> Result<Box<dyn Device>, DevError> {
        let n = CString::new(name).map_err(|_| DevError::Other("NUL in device name".into()))?;
        let mut d: *mut c_void = std::ptr::null_mut();
        let o = &self.0;
        // SAFETY: a constructed set; the name is NUL-terminated and only read
        // (`char*` in the header for historical reasons); `d` valid for writing.
        let rc = unsafe { (o.api.open_device)(o.this, n.as_ptr().cast_mut(), &mut d) };
        check(rc, "OpenDevice")?;
        if d.is_null() {
            return Err(DevError::Other("OpenDevice returned no device".into()));
        }
        Ok(Box::new(OwnedDevice::start(
            self.0.clone(),
            DevPtr(d),
            name,
        )?))
    }

    fn signal_abort(&self) {
        // SAFETY: a constructed set; SignalAbort may be called from any thread.
        let _ = unsafe { (self.0.api.signal_abort)(self.0.this) };
    }

    fn close(&self) -> Result<(), DevError> {
        // SAFETY: a constructed set.
        check(unsafe { (self.0.api.close)(self.0.this) }, "Close")
    }
}

/// A `ClientVirtualDevice*` from OpenDevice.
struct DevPtr(*mut c_void);

// SAFETY: the pointer is moved to the device's owner thread, which alone calls
// members through it (module docs, Threading).
unsafe impl Send for DevPtr {}

enum Req {
    Get {
        timeout_ms: u32,
        reply: Sender<Result<LibCmd, DevError>>,
    },
    Complete {
        token: u64,
        code: u32,
        bytes: u32,
        position: u64,
        reply: Sender<Result<(), DevError>>,
    },
}

/// A device driven by its own thread.
struct OwnedDevice {
    tx: Option<Sender<Req>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OwnedDevice {
    fn start(set: Arc<SetObject>, dev: DevPtr, name: &str) -> Result<OwnedDevice, DevError> {
        let (tx, rx) = unbounded::<Req>();
        let thread = std::thread::Builder::new()
            .name(format!("vdi-dev {name}"))
            .spawn(move || owner(&set, dev, rx))
            .map_err(|e| DevError::Other(format!("starting the device thread: {e}")))?;
        Ok(OwnedDevice {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<Result<T, DevError>>) -> Req) -> Result<T, DevError> {
        let (reply, answer) = bounded(1);
        let gone = || DevError::Other("the device thread is gone".into());
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(make(reply))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for OwnedDevice {
    fn drop(&mut self) {
        drop(self.tx.take()); // the owner thread ends when its channel closes
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Device for OwnedDevice {
    fn get_command(&self, timeout_ms: u32) -> Result<Cmd, DevError> {
        let c = self.ask(|reply| Req::Get { timeout_ms, reply })?;
        Ok(Box::new(c))
    }

    fn complete(&self, token: u64, code: u32, bytes: u32, position: u64) -> Result<(), DevError> {
        self.ask(|reply| Req::Complete {
            token,
            code,
            bytes,
            position,
            reply,
        })
    }
}

/// The owner thread of one device: makes every call on it.
fn owner(set: &SetObject, dev: DevPtr, rx: Receiver<Req>) {
    let api = &set.api;
    let mut out = 0usize; // commands handed out, not yet completed
    let get = |timeout: libc_time_t| -> Result<LibCmd, DevError> {
        let mut p: *mut RawCommand = std::ptr::null_mut();
        // SAFETY: a device of a live set (`set` outlives this thread), called from its
        // one thread; `p` valid for writing.
        let rc = unsafe { (api.get_command)(dev.0, timeout, &mut p) };
        check(rc, "GetCommand")?;
        // SAFETY: on success `p` is the library's command block, readable now; its
        // fields are copied at once (the block may be reused by a later GetCommand).
        unsafe { LibCmd::from_block(p) }
    };
    let complete = |token: u64, code: u32, bytes: u32, position: u64| {
        let block = token as usize as *mut RawCommand;
        // SAFETY: a device of a live set, from its one thread; `block` is the address
        // GetCommand returned for this command (the token is nothing else).
        let rc = unsafe {
            (api.complete)(
                dev.0,
                block,
                code as c_int,
                c_ulong::from(bytes),
                position as i64,
            )
        };
        check(rc, "CompleteCommand")
    };
    let serve = |r: Req, out: &mut usize| -> Option<Req> {
        match r {
            Req::Complete {
                token,
                code,
                bytes,
                position,
                reply,
            } => {
                *out = out.saturating_sub(1);
                let _ = reply.send(complete(token, code, bytes, position));
                None
            }
            get @ Req::Get { .. } => Some(get),
        }
    };
    while let Ok(r) = rx.recv() {
        let Some(Req::Get { timeout_ms, reply }) = serve(r, &mut out) else {
            continue;
        };
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let answer = loop {
            // Completions first: each frees a buffer the engine may be waiting for.
            loop {
                match rx.try_recv() {
                    Ok(r) => {
                        if let Some(Req::Get { reply, .. }) = serve(r, &mut out) {
                            let _ = reply.send(Err(DevError::Other(
                                "two threads asked one device for a command".into(),
                            )));
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if out == 0 {
                // No command is out, so no completion can be asked for: wait in the
                // library.
                match get(left.as_millis() as libc_time_t) {
                    Err(DevError::Timeout) if Instant::now() < deadline => continue,
                    r => break r,
                }
            }
            match get(0) {
                Err(DevError::Timeout) => {}
                r => break r,
            }
            match rx.recv_timeout(COMPLETION_POLL.min(left)) {
                Ok(r) => {
                    if let Some(Req::Get { reply, .. }) = serve(r, &mut out) {
                        let _ = reply.send(Err(DevError::Other(
                            "two threads asked one device for a command".into(),
                        )));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        break Err(DevError::Timeout);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        if answer.is_ok() {
            out += 1;
        }
        let _ = reply.send(answer);
    }
}

/// A loaded library driven through the C++ classes.
pub struct CppLibrary(Arc<CppApi>);

impl CppLibrary {
    pub fn new(api: CppApi) -> CppLibrary {
        CppLibrary(Arc::new(api))
    }
}

impl std::fmt::Debug for CppLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CppLibrary").field(&self.0.path).finish()
    }
}

impl Transport for CppLibrary {
    fn create(&self, name: &str, cfg: &VdConfig) -> Result<Box<dyn DeviceSet>, DevError> {
        let n = CString::new(name).map_err(|_| DevError::Other("NUL in set name".into()))?;
        let mut c = RawConfig::from_config(cfg);
        let obj = SetObject::new(self.0.clone())?;
        // SAFETY: a constructed set object; NUL-terminated name (only read); a valid
        // config (the header takes both by non-const pointer).
        let rc = unsafe { (self.0.create)(obj.this, n.as_ptr().cast_mut(), &mut c) };
        check(rc, "Create")?;
        Ok(Box::new(CppSet(Arc::new(obj))))
    }

    fn describe(&self) -> String {
        format!("{} (C++ ABI of vdi.h)", self.0.path)
    }
}
