//! The manifest: everything known about one backup, written last.
//!
//! A backup exists for `list`, `restore` and `prune` only once its manifest exists;
//! the stripes are published before it, so a crash at any point leaves at worst
//! unreferenced stripe objects (`prune` removes them), never a listed partial backup.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::Codec;

pub const FILE_NAME: &str = "manifest.json";
pub const FORMAT: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Diff,
    Log,
}

impl Kind {
    /// The upper-case word used in object names, as DBA maintenance scripts do.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Full => "FULL",
            Kind::Diff => "DIFF",
            Kind::Log => "LOG",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Kind::Full),
            "diff" | "differential" => Ok(Kind::Diff),
            "log" => Ok(Kind::Log),
            _ => Err(format!("unknown backup type {s:?}: use full, diff or log")),
        }
    }
}

/// One stored stripe (one virtual device of the set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe {
    /// 1-based, in device order (device 1 is the set name).
    pub index: u32,
    /// Object key relative to the repository root.
    pub key: String,
    /// Bytes the engine wrote (the native `.bak` stripe).
    pub raw_size: u64,
    /// Bytes stored (framing and compression included).
    pub stored_size: u64,
    pub chunks: u64,
    /// blake3 of the stored object up to its end frame, hex (also in the stripe's
    /// trailer; every chunk carries crc32c of its stored and of its raw bytes).
    pub blake3: String,
}

/// Log-chain facts, as the engine reported them or as read from the backup's
/// MTF metadata. LSNs are decimal strings, as SQL Server prints them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_backup_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differential_base_lsn: Option<String>,
    /// BackupSetGUID of the full backup a differential is based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differential_base_guid: Option<String>,
    /// This backup's BackupSetGUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_set_guid: Option<String>,
    /// The backup this one depends on (diff: its full; log: the previous log or full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// "embedded", "external", or "import".
    pub kind: String,
    /// The engine's completion message (e.g. "BACKUP DATABASE successfully processed …").
    pub message: String,
    #[serde(default)]
    pub messages: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub seconds: f64,
    /// Raw bytes per second over the whole run.
    pub raw_bytes_per_second: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `SERVER_DATABASE_TYPE_YYYYMMDD_HHMMSS`, unique in the repository.
    pub id: String,
    pub server: String,
    pub database: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub codec: Codec,
    pub block_size: Option<u32>,
    pub max_transfer_size: Option<u32>,
    pub buffer_count: Option<u32>,
    pub stripes: Vec<Stripe>,
    pub raw_size: u64,
    pub stored_size: u64,
    pub chain: Chain,
    pub engine: EngineInfo,
    pub timings: Timings,
    /// The virtual device set name used (empty for imports).
    pub vdi_set: String,
    /// Which VDI client library moved the bytes (empty for imports).
    #[serde(default)]
    pub transport: String,
    pub tool_version: String,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        v.push(b'\n');
        v
    }
}
