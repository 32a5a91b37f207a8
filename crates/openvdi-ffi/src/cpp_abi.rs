//! The C++ classes of `include/vdi.h`, implemented here under their Itanium C++ ABI
//! (mangled) names, so that `libsqlvdi.so` exports exactly the symbols a client
//! compiled against Microsoft's Linux header expects — without a line of C++ and
//! with no protocol logic of their own: each method is a call into the C API of
//! this crate.
//!
//! On x86-64 and aarch64 Linux a non-virtual member function is an ordinary C
//! function whose first argument is `this`; constructors and destructors come in
//! "complete" (C1/D1) and "base" (C2/D2) variants, identical for these classes.
//! Each object holds one pointer (`cvds` / `cvd`), as the header declares.
//!
//! Ownership: `OpenDevice` allocates the `ClientVirtualDevice` with C++'s
//! `operator new`, so a client may `delete` it; devices the client did not delete
//! are deleted with their set. The `VDC_Command` blocks belong to the device.

use std::ffi::{c_char, c_int, c_ulong, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openvdi::{ClientSet, HResult};

use crate::{guard, name_arg, openvdi_client_device, openvdi_command, openvdi_config};

extern "C" {
    /// C++ `operator new(size_t)`.
    fn _Znwm(size: usize) -> *mut c_void;
    /// C++ `operator delete(void*)`.
    fn _ZdlPv(p: *mut c_void);
}

const PROTOCOL: c_int = HResult::VD_E_PROTOCOL.0;
const INVALID: c_int = HResult::VD_E_INVALID.0;
const UNEXPECTED: c_int = HResult::VD_E_UNEXPECTED.0;

/// What a `ClientVirtualDevice` object points to.
#[derive(Debug)]
pub struct DevRecord {
    dev: openvdi_client_device,
    /// Set once the C++ object is gone (deleted by the client or by its set).
    deleted: AtomicBool,
    object: *mut CppDevice,
}

// SAFETY: `object` is only dereferenced by the set's destructor, under the VDI rule
// that a set and its devices are not destroyed concurrently; the rest is Sync.
unsafe impl Send for DevRecord {}
// SAFETY: as above.
unsafe impl Sync for DevRecord {}

/// The state behind one `ClientVirtualDeviceSet` object.
#[derive(Debug, Default)]
pub struct Cvds {
    set: Mutex<Option<ClientSet>>,
    devices: Mutex<Vec<Arc<DevRecord>>>,
}

/// The C++ object `ClientVirtualDeviceSet`: one pointer.
#[repr(C)]
#[derive(Debug)]
pub struct CppSet {
    cvds: *mut Cvds,
}

/// The C++ object `ClientVirtualDevice`: one pointer.
#[repr(C)]
#[derive(Debug)]
pub struct CppDevice {
    cvd: *const DevRecord,
}

const _: () = assert!(std::mem::size_of::<CppSet>() == std::mem::size_of::<*mut c_void>());
const _: () = assert!(std::mem::size_of::<CppDevice>() == std::mem::size_of::<*mut c_void>());

/// # Safety
/// `this` must point to a constructed `ClientVirtualDeviceSet`.
unsafe fn state<'a>(this: *mut CppSet) -> Option<&'a Cvds> {
    // SAFETY: caller contract; `cvds` was set by the constructor.
    unsafe { this.as_ref().and_then(|t| t.cvds.as_ref()) }
}

/// # Safety
/// `this` must point to a `ClientVirtualDevice` made by `OpenDevice` (or by its
/// public constructor, whose pointer is NULL).
unsafe fn record<'a>(this: *mut CppDevice) -> Option<&'a DevRecord> {
    // SAFETY: caller contract.
    unsafe { this.as_ref().and_then(|t| t.cvd.as_ref()) }
}

fn with_set(s: &Cvds, f: impl FnOnce(&ClientSet) -> c_int) -> c_int {
    match s.set.lock() {
        Ok(g) => match g.as_ref() {
            Some(set) => f(set),
            None => PROTOCOL,
        },
        Err(_) => UNEXPECTED,
    }
}

/// `ClientVirtualDeviceSet::ClientVirtualDeviceSet()` (complete object).
///
/// # Safety
/// `this` must point to writable storage for one pointer.
#[export_name = "_ZN22ClientVirtualDeviceSetC1Ev"]
pub unsafe extern "C" fn set_ctor_c1(this: *mut CppSet) {
    if !this.is_null() {
        // SAFETY: storage provided by the C++ caller.
        unsafe { (*this).cvds = Box::into_raw(Box::default()) };
    }
}

/// `ClientVirtualDeviceSet::ClientVirtualDeviceSet()` (base object).
///
/// # Safety
/// As for C1.
#[export_name = "_ZN22ClientVirtualDeviceSetC2Ev"]
pub unsafe extern "C" fn set_ctor_c2(this: *mut CppSet) {
    // SAFETY: same contract.
    unsafe { set_ctor_c1(this) }
}

/// `ClientVirtualDeviceSet::~ClientVirtualDeviceSet()`: closes the set if still
/// open and deletes the devices the client did not delete.
///
/// # Safety
/// `this` must point to a constructed object, not used afterwards.
#[export_name = "_ZN22ClientVirtualDeviceSetD1Ev"]
pub unsafe extern "C" fn set_dtor_d1(this: *mut CppSet) {
    let _ = guard(|| {
        // SAFETY: caller contract.
        let Some(t) = (unsafe { this.as_mut() }) else {
            return 0;
        };
        if t.cvds.is_null() {
            return 0;
        }
        // SAFETY: made by Box::into_raw in the constructor; taken once.
        let st = unsafe { Box::from_raw(t.cvds) };
        t.cvds = std::ptr::null_mut();
        let devices = std::mem::take(&mut *st.devices.lock().unwrap_or_else(|p| p.into_inner()));
        for rec in devices {
            if !rec.deleted.swap(true, Ordering::AcqRel) {
                let obj = rec.object;
                // SAFETY: the object is alive (not deleted by the client); drop the
                // reference it holds, then free it with the operator that made it.
                unsafe {
                    let held = (*obj).cvd;
                    (*obj).cvd = std::ptr::null();
                    if !held.is_null() {
                        drop(Arc::from_raw(held));
                    }
                    _ZdlPv(obj.cast());
                }
            }
        }
        drop(st);
        0
    });
}

/// Base-object destructor.
///
/// # Safety
/// As for D1.
#[export_name = "_ZN22ClientVirtualDeviceSetD2Ev"]
pub unsafe extern "C" fn set_dtor_d2(this: *mut CppSet) {
    // SAFETY: same contract.
    unsafe { set_dtor_d1(this) }
}

/// `int ClientVirtualDeviceSet::Create(char* name, VDConfig* cfg)`.
///
/// # Safety
/// `this` constructed; `name` NUL-terminated; `cfg` valid.
#[export_name = "_ZN22ClientVirtualDeviceSet6CreateEPcP8VDConfig"]
pub unsafe extern "C" fn set_create(
    this: *mut CppSet,
    name: *mut c_char,
    cfg: *mut openvdi_config,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { state(this) }) else {
            return INVALID;
        };
        let mut g = match s.set.lock() {
            Ok(g) => g,
            Err(_) => return UNEXPECTED,
        };
        if g.is_some() {
            return PROTOCOL; // a set was already created on this object
        }
        // SAFETY: caller contract.
        let (Some(name), Some(cfg)) = (unsafe { name_arg(name) }, unsafe { cfg.as_ref() }) else {
            return INVALID;
        };
        match ClientSet::create(name, &crate::to_cfg(cfg)) {
            Ok(set) => {
                *g = Some(set);
                0
            }
            Err(e) => e.hresult().0,
        }
    })
}

/// `int ClientVirtualDeviceSet::GetConfiguration(time_t timeout, VDConfig* cfg)`.
///
/// # Safety
/// `this` constructed; `cfg` valid for writing.
#[export_name = "_ZN22ClientVirtualDeviceSet16GetConfigurationElP8VDConfig"]
pub unsafe extern "C" fn set_get_configuration(
    this: *mut CppSet,
    timeout: libc::time_t,
    cfg: *mut openvdi_config,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { state(this) }) else {
            return INVALID;
        };
        // Clone the handle out of the lock so other threads may use the set while
        // this one waits.
        let set = match s.set.lock() {
            Ok(g) => match g.as_ref() {
                Some(set) => set.clone(),
                None => return PROTOCOL,
            },
            Err(_) => return UNEXPECTED,
        };
        if cfg.is_null() {
            return INVALID;
        }
        match set.get_configuration(openvdi::Timeout::from_millis(timeout)) {
            Ok(c) => {
                // SAFETY: checked non-null; caller contract.
                unsafe { cfg.write(crate::from_cfg(&c)) };
                0
            }
            Err(e) => e.hresult().0,
        }
    })
}

/// `int ClientVirtualDeviceSet::OpenDevice(char* name, ClientVirtualDevice** pp)`.
/// On failure `*pp` is set to NULL.
///
/// # Safety
/// `this` constructed; `name` NUL-terminated; `pp` valid for writing.
#[export_name = "_ZN22ClientVirtualDeviceSet10OpenDeviceEPcPP19ClientVirtualDevice"]
pub unsafe extern "C" fn set_open_device(
    this: *mut CppSet,
    name: *mut c_char,
    pp: *mut *mut CppDevice,
) -> c_int {
    guard(|| {
        if pp.is_null() {
            return INVALID;
        }
        // SAFETY: checked non-null.
        unsafe { pp.write(std::ptr::null_mut()) };
        // SAFETY: caller contract.
        let Some(s) = (unsafe { state(this) }) else {
            return INVALID;
        };
        // SAFETY: caller contract.
        let Some(name) = (unsafe { name_arg(name) }) else {
            return INVALID;
        };
        let dev = match with_set_value(s, |set| set.open_device(name).map_err(|e| e.hresult().0)) {
            Ok(d) => d,
            Err(c) => return c,
        };
        // SAFETY: operator new returns storage for one pointer or throws/aborts.
        let obj = unsafe { _Znwm(std::mem::size_of::<CppDevice>()) } as *mut CppDevice;
        if obj.is_null() {
            return HResult::VD_E_MEMORY.0;
        }
        let rec = Arc::new(DevRecord {
            dev: openvdi_client_device::new(dev),
            deleted: AtomicBool::new(false),
            object: obj,
        });
        // SAFETY: `obj` is fresh storage of the right size.
        unsafe {
            obj.write(CppDevice {
                cvd: Arc::into_raw(rec.clone()),
            })
        };
        if let Ok(mut d) = s.devices.lock() {
            d.push(rec);
        }
        // SAFETY: checked non-null above.
        unsafe { pp.write(obj) };
        0
    })
}

fn with_set_value<T>(s: &Cvds, f: impl FnOnce(&ClientSet) -> Result<T, c_int>) -> Result<T, c_int> {
    match s.set.lock() {
        Ok(g) => match g.as_ref() {
            Some(set) => f(set),
            None => Err(PROTOCOL),
        },
        Err(_) => Err(UNEXPECTED),
    }
}

/// `int ClientVirtualDeviceSet::Close()`. Afterwards the object may Create again.
///
/// # Safety
/// `this` constructed.
#[export_name = "_ZN22ClientVirtualDeviceSet5CloseEv"]
pub unsafe extern "C" fn set_close(this: *mut CppSet) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { state(this) }) else {
            return INVALID;
        };
        let taken = match s.set.lock() {
            Ok(mut g) => g.take(),
            Err(_) => return UNEXPECTED,
        };
        match taken {
            None => PROTOCOL,
            Some(set) => set.close().map_or_else(|e| e.hresult().0, |_| 0),
        }
    })
}

/// `int ClientVirtualDeviceSet::SignalAbort()`.
///
/// # Safety
/// `this` constructed.
#[export_name = "_ZN22ClientVirtualDeviceSet11SignalAbortEv"]
pub unsafe extern "C" fn set_signal_abort(this: *mut CppSet) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { state(this) }) else {
            return INVALID;
        };
        with_set(s, |set| {
            set.signal_abort().map_or_else(|e| e.hresult().0, |_| 0)
        })
    })
}

/// `int ClientVirtualDeviceSet::OpenInSecondary(char* setName)`.
///
/// # Safety
/// `this` constructed; `name` NUL-terminated.
#[export_name = "_ZN22ClientVirtualDeviceSet15OpenInSecondaryEPc"]
pub unsafe extern "C" fn set_open_in_secondary(this: *mut CppSet, name: *mut c_char) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { state(this) }) else {
            return INVALID;
        };
        let mut g = match s.set.lock() {
            Ok(g) => g,
            Err(_) => return UNEXPECTED,
        };
        if g.is_some() {
            return PROTOCOL;
        }
        // SAFETY: caller contract.
        let Some(name) = (unsafe { name_arg(name) }) else {
            return INVALID;
        };
        match ClientSet::open_in_secondary(name) {
            Ok(set) => {
                *g = Some(set);
                0
            }
            Err(e) => e.hresult().0,
        }
    })
}

/// `int ClientVirtualDeviceSet::GetBufferHandle(uint8_t* pBuffer, unsigned int* pHandle)`.
///
/// # Safety
/// `this` constructed; `out` valid for writing.
#[export_name = "_ZN22ClientVirtualDeviceSet15GetBufferHandleEPhPj"]
pub unsafe extern "C" fn set_get_buffer_handle(
    this: *mut CppSet,
    buffer: *mut u8,
    out: *mut u32,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { state(this) }) else {
            return INVALID;
        };
        with_set(s, |set| {
            if out.is_null() {
                return INVALID;
            }
            match set.get_buffer_handle(buffer) {
                Ok(h) => {
                    // SAFETY: checked non-null.
                    unsafe { out.write(h) };
                    0
                }
                Err(e) => e.hresult().0,
            }
        })
    })
}

/// `int ClientVirtualDeviceSet::MapBufferHandle(int dwBuffer, uint8_t** ppBuffer)`.
///
/// # Safety
/// `this` constructed; `out` valid for writing.
#[export_name = "_ZN22ClientVirtualDeviceSet15MapBufferHandleEiPPh"]
pub unsafe extern "C" fn set_map_buffer_handle(
    this: *mut CppSet,
    handle: c_int,
    out: *mut *mut u8,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { state(this) }) else {
            return INVALID;
        };
        with_set(s, |set| {
            if out.is_null() {
                return INVALID;
            }
            match set.map_buffer_handle(handle as u32) {
                Ok(m) => {
                    // SAFETY: checked non-null.
                    unsafe { out.write(m.ptr) };
                    0
                }
                Err(e) => e.hresult().0,
            }
        })
    })
}

/// `void ClientVirtualDeviceSet::RegisterDeviceClosed()`: public but undocumented in
/// Microsoft's header; openvdi tracks device closure itself, so this does nothing.
///
/// # Safety
/// `this` constructed.
#[export_name = "_ZN22ClientVirtualDeviceSet20RegisterDeviceClosedEv"]
pub unsafe extern "C" fn set_register_device_closed(_this: *mut CppSet) {}

/// `ClientVirtualDevice::ClientVirtualDevice()`: an unattached device (its methods
/// return VD_E_PROTOCOL); devices come from OpenDevice.
///
/// # Safety
/// `this` must point to writable storage for one pointer.
#[export_name = "_ZN19ClientVirtualDeviceC1Ev"]
pub unsafe extern "C" fn dev_ctor_c1(this: *mut CppDevice) {
    if !this.is_null() {
        // SAFETY: storage provided by the caller.
        unsafe { (*this).cvd = std::ptr::null() };
    }
}

/// Base-object constructor.
///
/// # Safety
/// As for C1.
#[export_name = "_ZN19ClientVirtualDeviceC2Ev"]
pub unsafe extern "C" fn dev_ctor_c2(this: *mut CppDevice) {
    // SAFETY: same contract.
    unsafe { dev_ctor_c1(this) }
}

/// `ClientVirtualDevice::~ClientVirtualDevice()`.
///
/// # Safety
/// `this` constructed, not used afterwards.
#[export_name = "_ZN19ClientVirtualDeviceD1Ev"]
pub unsafe extern "C" fn dev_dtor_d1(this: *mut CppDevice) {
    let _ = guard(|| {
        // SAFETY: caller contract.
        let Some(t) = (unsafe { this.as_mut() }) else {
            return 0;
        };
        if !t.cvd.is_null() {
            // SAFETY: made by Arc::into_raw in OpenDevice; released once here.
            let rec = unsafe { Arc::from_raw(t.cvd) };
            rec.deleted.store(true, Ordering::Release);
            t.cvd = std::ptr::null();
        }
        0
    });
}

/// Base-object destructor.
///
/// # Safety
/// As for D1.
#[export_name = "_ZN19ClientVirtualDeviceD2Ev"]
pub unsafe extern "C" fn dev_dtor_d2(this: *mut CppDevice) {
    // SAFETY: same contract.
    unsafe { dev_dtor_d1(this) }
}

/// `int ClientVirtualDevice::GetCommand(time_t timeOut, VDC_Command** ppCmd)`.
///
/// # Safety
/// `this` from OpenDevice; `pp` valid for writing.
#[export_name = "_ZN19ClientVirtualDevice10GetCommandElPP11VDC_Command"]
pub unsafe extern "C" fn dev_get_command(
    this: *mut CppDevice,
    timeout: libc::time_t,
    pp: *mut *mut openvdi_command,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(r) = (unsafe { record(this) }) else {
            return PROTOCOL;
        };
        if pp.is_null() {
            return INVALID;
        }
        match r.dev.get(timeout) {
            Ok(p) => {
                // SAFETY: checked non-null.
                unsafe { pp.write(p) };
                0
            }
            Err(c) => c,
        }
    })
}

/// `int ClientVirtualDevice::CompleteCommand(VDC_Command*, int, unsigned long, int64_t)`.
///
/// # Safety
/// `this` from OpenDevice.
#[export_name = "_ZN19ClientVirtualDevice15CompleteCommandEP11VDC_Commandiml"]
pub unsafe extern "C" fn dev_complete_command(
    this: *mut CppDevice,
    cmd: *mut openvdi_command,
    code: c_int,
    bytes: c_ulong,
    position: i64,
) -> c_int {
    guard(|| {
        // SAFETY: caller contract.
        let Some(r) = (unsafe { record(this) }) else {
            return PROTOCOL;
        };
        r.dev
            .complete(cmd, code as u32, bytes as u32, position as u64)
    })
}
