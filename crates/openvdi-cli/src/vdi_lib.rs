//! `--vdi-library PATH`: a `libsqlvdi.so` loaded at run time, driven through one of
//! two ABIs (`--vdi-abi auto|c|cpp`, [`Abi`]):
//! * the plain C client API of `include/openvdi.h` (openvdi's own library, crate
//!   `openvdi-ffi`), here;
//! * the C++ classes of Microsoft's Linux `vdi.h` (what Microsoft's
//!   `/opt/mssql/lib/libsqlvdi.so` exports; openvdi's exports them too), in
//!   `vdi_cpp`.
//!
//! `auto` takes the C API when the library exports all of it, else the C++ classes
//! when it exports all of those, else fails naming what is missing of each. The
//! manifest's `transport` records the library and the ABI used.
//!
//! This file and `vdi_cpp` are the only files of the crate with unsafe code (the
//! crate root denies it): calling foreign functions and viewing the shared-memory
//! buffer a command points to. The contract relied on, from `openvdi.h`:
//! * every function returns 0 or a `VD_E_*` code; out-parameters are written only on
//!   success;
//! * set handles may be used from any thread;
//! * a command block returned by `openvdi_device_get_command` belongs to its slot and
//!   stays valid (and its buffer ours) until the command is completed; completion
//!   names the block by its address, so commands may complete out of order;
//! * the header asks that a device handle be used by one thread at a time. The
//!   pipelines complete commands on the stripe writer while the device thread waits
//!   for the next one (as openvdi's Rust API allows); openvdi's library serialises
//!   both internally (`crates/openvdi-ffi/src/lib.rs`: the blocks and ids behind
//!   mutexes, over the thread-safe core device), which is what this transport needs
//!   from a library. (Through the C++ ABI nothing of the kind is assumed: each
//!   device gets an owner thread, see `vdi_cpp`.)
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use openvdi::{HResult, VdConfig};

use crate::vdi::{Abi, Cmd, DevError, Device, DeviceCommand, DeviceSet, Native, Transport};
use crate::vdi_cpp::{CppApi, CppLibrary};

/// `openvdi_config` / `VDConfig`: the 44-byte layout.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct RawConfig {
    device_count: u32,
    features: u32,
    prefix_zone_size: u32,
    alignment: u32,
    soft_file_mark_block_size: u32,
    eom_warning_size: u32,
    server_time_out: u32,
    block_size: u32,
    max_io_depth: u32,
    max_transfer_size: u32,
    buffer_area_size: u32,
}
const _: () = assert!(std::mem::size_of::<RawConfig>() == 44);

impl RawConfig {
    pub(crate) fn from_config(cfg: &VdConfig) -> RawConfig {
        RawConfig {
            device_count: cfg.device_count,
            features: cfg.features,
            prefix_zone_size: cfg.prefix_zone_size,
            alignment: cfg.alignment,
            soft_file_mark_block_size: cfg.soft_file_mark_block_size,
            eom_warning_size: cfg.eom_warning_size,
            server_time_out: cfg.server_time_out,
            block_size: cfg.block_size,
            max_io_depth: cfg.max_io_depth,
            max_transfer_size: cfg.max_transfer_size,
            buffer_area_size: cfg.buffer_area_size,
        }
    }
    pub(crate) fn to_config(self) -> VdConfig {
        let c = self;
        VdConfig {
            device_count: c.device_count,
            features: c.features,
            prefix_zone_size: c.prefix_zone_size,
            alignment: c.alignment,
            soft_file_mark_block_size: c.soft_file_mark_block_size,
            eom_warning_size: c.eom_warning_size,
            server_time_out: c.server_time_out,
            block_size: c.block_size,
            max_io_depth: c.max_io_depth,
            max_transfer_size: c.max_transfer_size,
            buffer_area_size: c.buffer_area_size,
        }
    }
}

/// `openvdi_command` / `VDC_Command`: 24 bytes on LP64.
#[repr(C)]
pub(crate) struct RawCommand {
    command_code: i32,
    size: i32,
    position: i64,
    buffer: *mut u8,
}
const _: () = assert!(std::mem::size_of::<RawCommand>() == 24);

type CreateFn = unsafe extern "C" fn(*const c_char, *const RawConfig, *mut *mut c_void) -> c_int;
type GetConfigFn = unsafe extern "C" fn(*const c_void, i64, *mut RawConfig) -> c_int;
type OpenDeviceFn = unsafe extern "C" fn(*const c_void, *const c_char, *mut *mut c_void) -> c_int;
type SetFn = unsafe extern "C" fn(*const c_void) -> c_int;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type GetCommandFn = unsafe extern "C" fn(*const c_void, i64, *mut *mut RawCommand) -> c_int;
type CompleteFn = unsafe extern "C" fn(*const c_void, *const RawCommand, u32, u32, u64) -> c_int;

/// The resolved entry points; the library stays loaded as long as any handle lives.
struct Api {
    create: CreateFn,
    get_configuration: GetConfigFn,
    open_device: OpenDeviceFn,
    signal_abort: SetFn,
    close: SetFn,
    free: FreeFn,
    get_command: GetCommandFn,
    complete: CompleteFn,
    device_free: FreeFn,
    path: String,
    _lib: Arc<libloading::Library>,
}

/// The C API's functions, in the order of [`Api`]'s fields.
const C_SYMBOLS: [&str; 9] = [
    "openvdi_client_create",
    "openvdi_client_get_configuration",
    "openvdi_client_open_device",
    "openvdi_client_signal_abort",
    "openvdi_client_close",
    "openvdi_client_free",
    "openvdi_device_get_command",
    "openvdi_device_complete_command",
    "openvdi_device_free",
];

/// Which of [`C_SYMBOLS`] the library does not export.
fn c_missing(lib: &libloading::Library) -> Vec<&'static str> {
    C_SYMBOLS
        .iter()
        .copied()
        .filter(|n| {
            let c = CString::new(*n).expect("no NUL");
            // SAFETY: only looked up as an untyped address, never called here.
            unsafe { lib.get::<*mut c_void>(c.as_bytes_with_nul()) }.is_err()
        })
        .collect()
}

impl Api {
    /// Resolves the C API; the caller checked with [`c_missing`] that all of it is
    /// there.
    fn resolve(lib: Arc<libloading::Library>, path: &str) -> Result<Api> {
        macro_rules! sym {
            ($name:literal, $ty:ty) => {{
                // SAFETY: the symbol is declared in openvdi.h with exactly this
                // signature; the copied function pointer is used only while `lib`
                // (moved into the returned Api) keeps the library loaded.
                let s: libloading::Symbol<$ty> = unsafe { lib.get($name) }.with_context(|| {
                    format!(
                        "{path} does not export {}",
                        String::from_utf8_lossy(&$name[..$name.len() - 1])
                    )
                })?;
                *s
            }};
        }
        Ok(Api {
            create: sym!(b"openvdi_client_create\0", CreateFn),
            get_configuration: sym!(b"openvdi_client_get_configuration\0", GetConfigFn),
            open_device: sym!(b"openvdi_client_open_device\0", OpenDeviceFn),
            signal_abort: sym!(b"openvdi_client_signal_abort\0", SetFn),
            close: sym!(b"openvdi_client_close\0", SetFn),
            free: sym!(b"openvdi_client_free\0", FreeFn),
            get_command: sym!(b"openvdi_device_get_command\0", GetCommandFn),
            complete: sym!(b"openvdi_device_complete_command\0", CompleteFn),
            device_free: sym!(b"openvdi_device_free\0", FreeFn),
            path: path.to_string(),
            _lib: lib.clone(),
        })
    }
}

pub(crate) fn check(code: c_int, what: &str) -> Result<(), DevError> {
    match HResult(code) {
        HResult::NOERROR => Ok(()),
        HResult::VD_E_TIMEOUT => Err(DevError::Timeout),
        HResult::VD_E_CLOSE => Err(DevError::Close),
        HResult::VD_E_ABORT => Err(DevError::Abort),
        h => Err(DevError::Other(format!(
            "{what}: {h:?} (0x{:08X})",
            code as u32
        ))),
    }
}

struct LibSet {
    api: Arc<Api>,
    handle: *mut c_void,
}

// SAFETY: openvdi.h: "Set handles may be used from any thread".
unsafe impl Send for LibSet {}
// SAFETY: as above; every call takes the handle by const pointer.
unsafe impl Sync for LibSet {}

impl Drop for LibSet {
    fn drop(&mut self) {
        // SAFETY: a live handle from openvdi_client_create, freed exactly once here;
        // every device handle (holding its own Arc<Api>) is dropped before the set
        // by the pipelines' scoping.
        unsafe { (self.api.free)(self.handle) }
    }
}

struct LibDevice {
    api: Arc<Api>,
    handle: *mut c_void,
}

// SAFETY: see the module comment: the library serialises concurrent use of a device
// handle internally; the handle itself is just an address.
unsafe impl Send for LibDevice {}
// SAFETY: as above.
unsafe impl Sync for LibDevice {}

impl Drop for LibDevice {
    fn drop(&mut self) {
        // SAFETY: a live handle from openvdi_client_open_device, freed once.
        unsafe { (self.api.device_free)(self.handle) }
    }
}

pub(crate) struct LibCmd {
    block: *mut RawCommand,
    code: u32,
    size: u32,
    buffer: *mut u8,
}

// SAFETY: the block and its buffer are process memory that stays valid until the
// command is completed, whichever thread looks at it; only one owner (this value)
// touches it at a time.
unsafe impl Send for LibCmd {}

impl LibCmd {
    /// Copies a command block's fields.
    ///
    /// # Safety
    /// `p` is NULL or a command block a library's GetCommand just returned: readable,
    /// its buffer (if any) `size` bytes of the client's until the command completes.
    pub(crate) unsafe fn from_block(p: *mut RawCommand) -> Result<LibCmd, DevError> {
        if p.is_null() {
            return Err(DevError::Other("GetCommand returned no command".into()));
        }
        // SAFETY: caller contract: a readable block.
        let raw = unsafe { &*p };
        if raw.size < 0 {
            return Err(DevError::Other(format!("command with size {}", raw.size)));
        }
        Ok(LibCmd {
            block: p,
            code: raw.command_code as u32,
            size: raw.size as u32,
            buffer: raw.buffer,
        })
    }
}

impl DeviceCommand for LibCmd {
    fn code(&self) -> u32 {
        self.code
    }
    fn size(&self) -> u32 {
        self.size
    }
    fn data(&self) -> &[u8] {
        if self.buffer.is_null() {
            return &[];
        }
        // SAFETY: `buffer` points to `size` bytes of the shared buffer area that
        // belong to the client until this command is completed, and completion takes
        // this value's token after the last use of the slice.
        unsafe { std::slice::from_raw_parts(self.buffer, self.size as usize) }
    }
    fn data_mut(&mut self) -> &mut [u8] {
        if self.buffer.is_null() {
            return &mut [];
        }
        // SAFETY: as for `data`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.buffer, self.size as usize) }
    }
    fn token(&self) -> u64 {
        self.block as u64
    }
}

impl Device for LibDevice {
    fn get_command(&self, timeout_ms: u32) -> Result<Cmd, DevError> {
        let mut p: *mut RawCommand = std::ptr::null_mut();
        // SAFETY: live device handle; `p` is valid for writing a pointer.
        let rc = unsafe { (self.api.get_command)(self.handle, i64::from(timeout_ms), &mut p) };
        check(rc, "GetCommand")?;
        // SAFETY: on success `p` points to the command block of its slot, readable
        // until the command is completed.
        Ok(Box::new(unsafe { LibCmd::from_block(p) }?))
    }

    fn complete(&self, token: u64, code: u32, bytes: u32, position: u64) -> Result<(), DevError> {
        let block = token as usize as *const RawCommand;
        // SAFETY: live device handle; `block` is the address the library handed out
        // for this command (it checks unknown addresses and returns VD_E_INVALID).
        check(
            unsafe { (self.api.complete)(self.handle, block, code, bytes, position) },
            "CompleteCommand",
        )
    }
}

impl DeviceSet for LibSet {
    fn get_configuration(&self, timeout_ms: u32) -> Result<VdConfig, DevError> {
        let mut c = RawConfig::default();
        // SAFETY: live set handle; `c` is valid for writing a config.
        let rc =
            unsafe { (self.api.get_configuration)(self.handle, i64::from(timeout_ms), &mut c) };
        check(rc, "GetConfiguration")?;
        Ok(c.to_config())
    }

    fn open_device(&self, name: &str) -> Result<Box<dyn Device>, DevError> {
        let n = CString::new(name).map_err(|_| DevError::Other("NUL in device name".into()))?;
        let mut d: *mut c_void = std::ptr::null_mut();
        // SAFETY: live set handle, NUL-terminated name, `d` valid for writing.
        let rc = unsafe { (self.api.open_device)(self.handle, n.as_ptr(), &mut d) };
        check(rc, "OpenDevice")?;
        Ok(Box::new(LibDevice {
            api: self.api.clone(),
            handle: d,
        }))
    }

    fn signal_abort(&self) {
        // SAFETY: live set handle.
        let _ = unsafe { (self.api.signal_abort)(self.handle) };
    }

    fn close(&self) -> Result<(), DevError> {
        // SAFETY: live set handle.
        check(unsafe { (self.api.close)(self.handle) }, "Close")
    }
}

/// A loaded client library.
pub struct Library(Arc<Api>);

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Library").field(&self.0.path).finish()
    }
}

impl Transport for Library {
    fn create(&self, name: &str, cfg: &VdConfig) -> Result<Box<dyn DeviceSet>, DevError> {
        let n = CString::new(name).map_err(|_| DevError::Other("NUL in set name".into()))?;
        let c = RawConfig::from_config(cfg);
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: NUL-terminated name, a valid config, `h` valid for writing.
        check(unsafe { (self.0.create)(n.as_ptr(), &c, &mut h) }, "Create")?;
        Ok(Box::new(LibSet {
            api: self.0.clone(),
            handle: h,
        }))
    }

    fn describe(&self) -> String {
        format!("{} (C API)", self.0.path)
    }
}

/// The transport the settings ask for: openvdi's own client half, or `lib` through
/// the ABI `abi` names (see the module docs for `auto`).
pub fn transport(lib: Option<&Path>, abi: Abi) -> Result<Box<dyn Transport>> {
    let Some(path) = lib else {
        return Ok(Box::new(Native));
    };
    let shown = path.display().to_string();
    // SAFETY: loading runs the library's initialisers; the user named this library
    // as a VDI client library, which is what it is trusted to be.
    let lib = Arc::new(
        unsafe { libloading::Library::new(path) }.with_context(|| format!("loading {shown}"))?,
    );
    let c = c_missing(&lib);
    let cpp = crate::vdi_cpp::missing(&lib);
    let c_text = || format!("openvdi's C API (openvdi.h): missing {}", c.join(", "));
    let cpp_text = || {
        format!(
            "the C++ classes of Microsoft's vdi.h: missing {}",
            cpp.iter()
                .map(|s| format!("{} ({})", s.what, s.names[0]))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let use_c = match abi {
        Abi::C if !c.is_empty() => anyhow::bail!("{shown} does not export {}", c_text()),
        Abi::Cpp if !cpp.is_empty() => anyhow::bail!("{shown} does not export {}", cpp_text()),
        Abi::C => true,
        Abi::Cpp => false,
        Abi::Auto if c.is_empty() => true,
        Abi::Auto if cpp.is_empty() => false,
        Abi::Auto => anyhow::bail!(
            "{shown} is not a VDI client library: it exports neither {} nor {}",
            c_text(),
            cpp_text()
        ),
    };
    if use_c {
        Ok(Box::new(Library(Arc::new(Api::resolve(lib, &shown)?))))
    } else {
        let api = CppApi::resolve(lib, &shown)
            .map_err(|_| anyhow::anyhow!("{shown} does not export {}", cpp_text()))?;
        Ok(Box::new(CppLibrary::new(api)))
    }
}
