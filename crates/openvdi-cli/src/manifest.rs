//! The manifest: everything known about one backup, written last.
//!
//! A backup exists for `list`, `restore` and `prune` only once its manifest exists;
//! the stripes are published before it, so a crash at any point leaves at worst
//! unreferenced stripe objects (`prune` removes them), never a listed partial backup.
//!
//! A manifest is *data read from storage*, never trusted: it decides which objects
//! are read (verify, restore, inspect, export) and deleted (prune). [`Manifest::parse`]
//! is the only way in: it checks the envelope checksum, then [`Manifest::validate`]
//! checks that the id is a [`BackupId`], the names are plain, and every stripe key is
//! exactly `<the backup's own folder>/<plain name>` — the folder the manifest itself
//! was found in. Anything else is a *damaged* manifest: that backup fails with exit 3,
//! every other backup is still served.
//!
//! File format 2: the pretty JSON body, with a first member
//! `"checksum": "blake3:HEX"` whose HEX is the blake3 of the exact bytes of the body
//! without that line (`{` + newline + everything after the checksum line). Format 1
//! (no checksum, written by earlier versions) is still read, with the same path and
//! name checks; a format-2 (or later) manifest without a valid checksum is damaged.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::Codec;

pub const FILE_NAME: &str = "manifest.json";
pub const FORMAT: u32 = 2;
/// Manifests older than this carry no checksum (read, path-checked, not summed).
pub const FIRST_CHECKSUMMED_FORMAT: u32 = 2;
/// Longest object key a manifest may name (bytes).
pub const MAX_KEY: usize = 1024;
/// Longest path segment (a typical file-system name limit).
pub const MAX_SEGMENT: usize = 255;
/// Longest database or server name (SQL Server's sysname is 128 characters).
pub const MAX_NAME: usize = 128;
/// Most stripes a backup can have (one device per stripe).
pub const MAX_STRIPES: usize = 64;

const CHECKSUM_HEAD: &str = "{\n  \"checksum\": \"blake3:";

/// A backup id: one plain path segment (`[A-Za-z0-9_.$-]`, not starting with `.`,
/// 1..=200 bytes). Parsing is validation: a manifest whose id is anything else does
/// not deserialise, so an id can always be used as a folder or file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    pub const MAX_LEN: usize = 200;

    pub fn new(s: impl Into<String>) -> Result<BackupId, String> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!(
                "backup id of {} bytes (must be 1..={})",
                s.len(),
                Self::MAX_LEN
            ));
        }
        if s.starts_with('.') {
            return Err(format!("backup id {s:?} starts with '.'"));
        }
        if let Some(c) = s
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$')))
        {
            return Err(format!("backup id {s:?} contains {c:?}"));
        }
        Ok(BackupId(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BackupId {
    type Error = String;
    fn try_from(s: String) -> Result<BackupId, String> {
        BackupId::new(s)
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl std::ops::Deref for BackupId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BackupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for BackupId {
    fn eq(&self, o: &str) -> bool {
        self.0 == o
    }
}

impl PartialEq<&str> for BackupId {
    fn eq(&self, o: &&str) -> bool {
        self.0 == *o
    }
}

/// Checks a database or server name: 1..=128 characters, no control characters
/// (NUL included). Path safety does not depend on it (`naming::segment` maps every
/// name to a plain segment); it keeps names printable and usable in T-SQL.
pub fn check_name(what: &str, s: &str) -> Result<(), String> {
    let n = s.chars().count();
    if n == 0 || n > MAX_NAME {
        return Err(format!(
            "{what} name of {n} characters (must be 1..={MAX_NAME})"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} name {s:?} contains a control character"));
    }
    Ok(())
}

/// Checks an object key: relative, `/`-separated, no empty, `.` or `..` segment, no
/// backslash or control character, at most [`MAX_KEY`] bytes and [`MAX_SEGMENT`] per
/// segment.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(format!(
            "key of {} bytes (must be 1..={MAX_KEY})",
            key.len()
        ));
    }
    if key.starts_with('/') {
        return Err(format!("key {key:?} is absolute"));
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!("key {key:?} contains a control character or '\\'"));
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("key {key:?} has an empty, '.' or '..' segment"));
        }
        if seg.len() > MAX_SEGMENT {
            return Err(format!(
                "key {key:?} has a segment over {MAX_SEGMENT} bytes"
            ));
        }
    }
    Ok(())
}

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

/// BACKUP options the backup was taken with (absent in older manifests: none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// COPY_ONLY: outside the regular sequence (not a differential base; a log does
    /// not truncate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy_only: bool,
    /// CHECKSUM: the engine checked and stored page checksums.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checksum: bool,
    /// NAME (the backup set's name, ≤ 128 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// DESCRIPTION (≤ 255 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Options {
    pub fn is_default(&self) -> bool {
        *self == Options::default()
    }

    /// NAME ≤ 128 and DESCRIPTION ≤ 255 characters (SQL Server's limits), no control
    /// characters.
    pub fn check(&self) -> Result<(), String> {
        for (what, v, max) in [
            ("name", &self.name, 128),
            ("description", &self.description, 255),
        ] {
            if let Some(v) = v {
                let n = v.chars().count();
                if n > max {
                    return Err(format!("backup {what} of {n} characters (at most {max})"));
                }
                if v.chars().any(char::is_control) {
                    return Err(format!("backup {what} {v:?} contains a control character"));
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `SERVER_DATABASE_TYPE_YYYYMMDD_HHMMSS`, unique in the repository.
    pub id: BackupId,
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
    /// When the backup itself started and finished, as its own metadata records
    /// them (BackupStartDate / BackupFinishDate); absent in manifests of older
    /// openvdi versions and for streams whose head could not be read. `timings`
    /// is the tool's own run (for an import: when it was imported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_finished: Option<DateTime<Utc>>,
    /// BACKUP options (COPY_ONLY, CHECKSUM, NAME, DESCRIPTION).
    #[serde(default, skip_serializing_if = "Options::is_default")]
    pub options: Options,
    /// The virtual device set name used (empty for imports).
    pub vdi_set: String,
    /// Which VDI client library moved the bytes (empty for imports).
    #[serde(default)]
    pub transport: String,
    pub tool_version: String,
}

impl Manifest {
    /// The pretty JSON body, without the checksum.
    fn body(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        v.push(b'\n');
        v
    }

    /// The stored file: the body with its checksum as first member (format 2).
    pub fn to_json(&self) -> Vec<u8> {
        let body = self.body();
        debug_assert!(body.starts_with(b"{\n"));
        let sum = blake3::hash(&body).to_hex();
        let mut v = Vec::with_capacity(body.len() + 100);
        v.extend_from_slice(CHECKSUM_HEAD.as_bytes());
        v.extend_from_slice(sum.as_bytes());
        v.extend_from_slice(b"\",\n");
        v.extend_from_slice(&body[2..]);
        v
    }

    /// The folder (key prefix) this manifest's objects must live in.
    pub fn dir(&self) -> String {
        crate::naming::backup_dir(&self.server, &self.database, self.kind, &self.id)
    }

    /// Parses and validates the manifest stored at `key`. Err: why it is damaged.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, String> {
        let checked = if let Some(rest) = bytes.strip_prefix(CHECKSUM_HEAD.as_bytes()) {
            let hex = rest
                .get(..64)
                .and_then(|h| std::str::from_utf8(h).ok())
                .ok_or("malformed checksum")?;
            let rest = rest[64..]
                .strip_prefix(b"\",\n")
                .ok_or("malformed checksum")?;
            let mut body = Vec::with_capacity(rest.len() + 2);
            body.extend_from_slice(b"{\n");
            body.extend_from_slice(rest);
            if blake3::hash(&body).to_hex().as_str() != hex {
                return Err("the manifest does not match its checksum (edited or damaged)".into());
            }
            Some(body)
        } else {
            None
        };
        let m: Manifest = serde_json::from_slice(checked.as_deref().unwrap_or(bytes))
            .map_err(|e| format!("unreadable manifest: {e}"))?;
        match (&checked, m.format) {
            (_, f) if f == 0 || f > FORMAT => {
                return Err(format!(
                    "manifest format {f} (this openvdi reads 1..={FORMAT})"
                ))
            }
            (None, f) if f >= FIRST_CHECKSUMMED_FORMAT => {
                return Err(format!("manifest format {f} without its checksum"))
            }
            (Some(_), f) if f < FIRST_CHECKSUMMED_FORMAT => {
                return Err(format!("manifest format {f} with a checksum"))
            }
            _ => {}
        }
        m.validate(key)?;
        Ok(m)
    }

    /// Checks everything the tool will use as a path or a name. `key` is where the
    /// manifest was found: it must be `<m.dir()>/manifest.json`, and every stripe key
    /// `<m.dir()>/<plain name>`.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        check_name("server", &self.server)?;
        check_name("database", &self.database)?;
        self.options.check()?;
        if let Some(p) = &self.chain.parent {
            BackupId::new(p.clone()).map_err(|e| format!("parent: {e}"))?;
        }
        let dir = self.dir();
        check_key(key)?;
        if key != format!("{dir}/{FILE_NAME}") {
            return Err(format!(
                "manifest found at {key:?} but its id, server, database and type place it in {dir:?}"
            ));
        }
        if self.stripes.is_empty() || self.stripes.len() > MAX_STRIPES {
            return Err(format!(
                "{} stripes (must be 1..={MAX_STRIPES})",
                self.stripes.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.stripes.iter().enumerate() {
            if s.index as usize != i + 1 {
                return Err(format!("stripe {} listed at position {}", s.index, i + 1));
            }
            check_key(&s.key).map_err(|e| format!("stripe {}: {e}", s.index))?;
            let name = s
                .key
                .strip_prefix(&dir)
                .and_then(|r| r.strip_prefix('/'))
                .ok_or_else(|| {
                    format!(
                        "stripe {}: key {:?} is outside the backup's folder {dir:?}",
                        s.index, s.key
                    )
                })?;
            if name.contains('/') || name.starts_with('.') || name == FILE_NAME {
                return Err(format!(
                    "stripe {}: key {:?} is not a plain stripe name in {dir:?}",
                    s.index, s.key
                ));
            }
            if !seen.insert(name) {
                return Err(format!("stripe key {:?} listed twice", s.key));
            }
        }
        Ok(())
    }
}

/// Test helper: the manifest of a backup with no stripes, taken at `taken` and
/// recorded by the tool at `recorded` (tests give the two different orders: the
/// tool's clock must say nothing about the backups). Shared by the chain, prune,
/// retention and point-in-time tests.
#[cfg(test)]
pub(crate) fn test_manifest(
    id: &str,
    server: &str,
    database: &str,
    kind: Kind,
    taken: DateTime<Utc>,
    recorded: DateTime<Utc>,
    chain: Chain,
) -> Manifest {
    Manifest {
        format: FORMAT,
        id: BackupId::new(id).unwrap(),
        server: server.into(),
        database: database.into(),
        kind,
        codec: Codec::None,
        block_size: None,
        max_transfer_size: None,
        buffer_count: None,
        stripes: vec![],
        raw_size: 0,
        stored_size: 0,
        chain,
        engine: EngineInfo {
            kind: "import".into(),
            message: String::new(),
            messages: vec![],
        },
        timings: Timings {
            started: recorded,
            finished: recorded,
            seconds: 0.0,
            raw_bytes_per_second: 0.0,
        },
        backup_started: Some(taken),
        backup_finished: Some(taken),
        options: Default::default(),
        vdi_set: String::new(),
        transport: String::new(),
        tool_version: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> Manifest {
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 1, 2, 3).unwrap();
        let id = BackupId::new("S_db_FULL_20261125_010203").unwrap();
        let dir = "S/db/FULL/S_db_FULL_20261125_010203";
        Manifest {
            format: FORMAT,
            id,
            server: "S".into(),
            database: "db".into(),
            kind: Kind::Full,
            codec: Codec::None,
            block_size: None,
            max_transfer_size: None,
            buffer_count: None,
            stripes: (1..=2)
                .map(|i| Stripe {
                    index: i,
                    key: format!("{dir}/stripe{i}.bak"),
                    raw_size: 1,
                    stored_size: 2,
                    chunks: 1,
                    blake3: "00".into(),
                })
                .collect(),
            raw_size: 2,
            stored_size: 4,
            chain: Chain::default(),
            engine: EngineInfo {
                kind: "embedded".into(),
                message: String::new(),
                messages: vec![],
            },
            timings: Timings {
                started: at,
                finished: at,
                seconds: 0.1,
                raw_bytes_per_second: 1.0 / 3.0,
            },
            backup_started: None,
            backup_finished: None,
            options: Default::default(),
            vdi_set: String::new(),
            transport: String::new(),
            tool_version: String::new(),
        }
    }

    const KEY: &str = "S/db/FULL/S_db_FULL_20261125_010203/manifest.json";

    #[test]
    fn round_trip_and_every_flipped_byte_is_caught() {
        let m = sample();
        let bytes = m.to_json();
        assert_eq!(Manifest::parse(KEY, &bytes).unwrap(), m);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(Manifest::parse(KEY, &b).is_err(), "byte {i} flipped");
        }
        // Found anywhere but its own folder: damaged.
        assert!(Manifest::parse("S/db/FULL/other/manifest.json", &bytes).is_err());
    }

    #[test]
    fn keys_outside_the_own_folder_are_refused() {
        let dir = "S/db/FULL/S_db_FULL_20261125_010203";
        for bad in [
            "/etc/passwd".to_string(),
            "../x".to_string(),
            format!("{dir}/../../x"),
            format!("{dir}/a/../b"),
            format!("{dir}//x"),
            format!("{dir}/./x"),
            format!("{dir}/.hidden"),
            format!("{dir}/manifest.json"),
            format!("{dir}/x\0y"),
            format!("{dir}/x\\y"),
            format!("{dir}/sub/x"),
            format!("{dir}/{}", "a".repeat(300)),
            format!("{dir}/stripe2.bak"), // duplicate of stripe 2
            "S/db/FULL/S_db_FULL_20261125_010204/stripe1.bak".to_string(),
            format!("{dir}x/stripe1.bak"),
        ] {
            let mut m = sample();
            m.stripes[0].key = bad.clone();
            assert!(m.validate(KEY).is_err(), "{bad:?} accepted");
        }
        let mut m = sample();
        m.stripes.swap(0, 1);
        assert!(m.validate(KEY).is_err());
        m.stripes.clear();
        assert!(m.validate(KEY).is_err());
    }

    #[test]
    fn ids_and_names() {
        for bad in [
            "",
            ".x",
            "a/b",
            "..",
            "a\0b",
            "a b",
            "a\\b",
            &"x".repeat(201),
        ] {
            assert!(BackupId::new(bad).is_err(), "{bad:?}");
        }
        assert!(BackupId::new("SQL1$PROD_Sales_DB_FULL_20261125_010203_2").is_ok());
        let j = r#""../x""#;
        assert!(serde_json::from_str::<BackupId>(j).is_err());
        assert!(check_name("database", "Sales DB/..").is_ok());
        assert!(check_name("database", "").is_err());
        assert!(check_name("database", "a\0b").is_err());
        assert!(check_name("database", &"x".repeat(129)).is_err());
    }

    #[test]
    fn format_1_without_checksum_is_read_format_2_without_is_damaged() {
        let mut m = sample();
        m.format = 1;
        let v1 = serde_json::to_vec_pretty(&m).unwrap();
        assert_eq!(Manifest::parse(KEY, &v1).unwrap(), m);
        m.format = 2;
        let v2 = serde_json::to_vec_pretty(&m).unwrap();
        assert!(Manifest::parse(KEY, &v2).is_err());
    }
}
