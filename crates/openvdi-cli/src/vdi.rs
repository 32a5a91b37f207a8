//! The VDI transport the pipelines drive: openvdi's own client half, or a
//! `libsqlvdi.so` loaded at run time (`--vdi-library`, see `vdi_lib`).
//!
//! Both are seen through the same two traits so the backup and restore pipelines do
//! not care which library moves the bytes.

use openvdi::{Error, Timeout, VdConfig};

/// Which ABI of a `--vdi-library` to drive (`--vdi-abi`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Abi {
    /// openvdi's C API if the library exports it, else Microsoft's C++ classes.
    #[default]
    Auto,
    /// openvdi's plain C API (`include/openvdi.h`).
    C,
    /// The C++ classes of Microsoft's Linux `vdi.h`.
    Cpp,
}

/// Why `get_command` returned no command.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Nothing arrived within the timeout; ask again.
    #[error("timed out")]
    Timeout,
    /// The server closed the device (VD_E_CLOSE): the normal end.
    #[error("device closed")]
    Close,
    /// The set was aborted (VD_E_ABORT), by either side.
    #[error("the virtual device set was aborted")]
    Abort,
    #[error("{0}")]
    Other(String),
}

impl From<Error> for DevError {
    fn from(e: Error) -> DevError {
        match e {
            Error::Timeout => DevError::Timeout,
            Error::Close => DevError::Close,
            Error::Abort(_) => DevError::Abort,
            e => DevError::Other(e.to_string()),
        }
    }
}

/// A command as the pipelines see it.
pub trait DeviceCommand: Send {
    fn code(&self) -> u32;
    fn size(&self) -> u32;
    /// VDC_Write: the bytes to store.
    fn data(&self) -> &[u8];
    /// VDC_Read: the buffer to fill (`size` bytes).
    fn data_mut(&mut self) -> &mut [u8];
    /// Identifies the command to `Device::complete`.
    fn token(&self) -> u64;
}

pub type Cmd = Box<dyn DeviceCommand>;

/// One virtual device, client side. Shared by the device thread (which takes
/// commands) and the thread that completes them, as the VDI allows.
pub trait Device: Send + Sync {
    fn get_command(&self, timeout_ms: u32) -> Result<Cmd, DevError>;
    fn complete(&self, token: u64, code: u32, bytes: u32, position: u64) -> Result<(), DevError>;
}

/// A virtual device set, client side.
pub trait DeviceSet: Send + Sync {
    fn get_configuration(&self, timeout_ms: u32) -> Result<VdConfig, DevError>;
    fn open_device(&self, name: &str) -> Result<Box<dyn Device>, DevError>;
    fn signal_abort(&self);
    fn close(&self) -> Result<(), DevError>;
}

/// Creates sets: the seam between the two transports.
pub trait Transport: Send + Sync {
    fn create(&self, name: &str, cfg: &VdConfig) -> Result<Box<dyn DeviceSet>, DevError>;
    fn describe(&self) -> String;
}

/// openvdi's own client half (`openvdi::ClientSet`).
#[derive(Debug)]
pub struct Native;

struct NativeSet(openvdi::ClientSet);
struct NativeDevice(openvdi::ClientDevice);
struct NativeCmd(openvdi::Command);

impl DeviceCommand for NativeCmd {
    fn code(&self) -> u32 {
        self.0.code()
    }
    fn size(&self) -> u32 {
        self.0.size()
    }
    fn data(&self) -> &[u8] {
        self.0.buffer()
    }
    fn data_mut(&mut self) -> &mut [u8] {
        self.0.buffer_mut()
    }
    fn token(&self) -> u64 {
        let id = self.0.id();
        (u64::from(id.slot) << 32) | u64::from(id.seq)
    }
}

impl Device for NativeDevice {
    fn get_command(&self, timeout_ms: u32) -> Result<Cmd, DevError> {
        Ok(Box::new(NativeCmd(self.0.get_command(
            Timeout::from_millis(i64::from(timeout_ms)),
        )?)))
    }
    fn complete(&self, token: u64, code: u32, bytes: u32, position: u64) -> Result<(), DevError> {
        let id = openvdi::CommandId {
            slot: (token >> 32) as u32,
            seq: token as u32,
        };
        Ok(self.0.complete_id(id, code, bytes, position)?)
    }
}

impl DeviceSet for NativeSet {
    fn get_configuration(&self, timeout_ms: u32) -> Result<VdConfig, DevError> {
        Ok(self
            .0
            .get_configuration(Timeout::from_millis(i64::from(timeout_ms)))?)
    }
    fn open_device(&self, name: &str) -> Result<Box<dyn Device>, DevError> {
        Ok(Box::new(NativeDevice(self.0.open_device(name)?)))
    }
    fn signal_abort(&self) {
        let _ = self.0.signal_abort();
    }
    fn close(&self) -> Result<(), DevError> {
        Ok(self.0.close()?)
    }
}

impl Transport for Native {
    fn create(&self, name: &str, cfg: &VdConfig) -> Result<Box<dyn DeviceSet>, DevError> {
        Ok(Box::new(NativeSet(openvdi::ClientSet::create(name, cfg)?)))
    }
    fn describe(&self) -> String {
        "openvdi client half".into()
    }
}

/// Device names of a set: the first is the set name, then `{set}1`, `{set}2`, …
/// (Microsoft's samples' convention; the engine is told the same names).
pub fn device_names(set: &str, count: u32) -> Vec<String> {
    (0..count)
        .map(|i| {
            if i == 0 {
                set.to_string()
            } else {
                format!("{set}{i}")
            }
        })
        .collect()
}

/// A set name unique on this host: pid, time and a counter.
pub fn unique_set_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "openvdi-{}-{:x}-{}",
        std::process::id(),
        t & 0xffff_ffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the shared-memory objects of sets this tool created in processes that no
/// longer exist (a `kill -9` cannot unlink them). Set names carry the creator's pid
/// (`openvdi-PID-…`); a pid that is alive counts as live whatever it now runs, so a
/// reused pid at worst delays the cleanup. Returns how many objects were removed.
pub fn remove_stale_sets() -> usize {
    let Ok(rd) = std::fs::read_dir("/dev/shm") else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // openvdi-ctl.openvdi-PID-… / openvdi-bufN.openvdi-PID-…
        let Some((kind, set)) = name.split_once('.') else {
            continue;
        };
        if !kind.starts_with(openvdi::SHM_PREFIX) {
            continue;
        }
        let Some(pid) = set
            .strip_prefix("openvdi-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}
