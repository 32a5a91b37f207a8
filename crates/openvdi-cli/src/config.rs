//! Settings: command-line flags, then `OPENVDI_*` environment variables (clap reads
//! both), then the optional TOML file, then defaults. Resolved and validated here,
//! before any I/O happens.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::cli::Global;
use crate::codec::Codec;
use crate::exit::{err, Code};
use openvdi_engine::password::Secret;

/// The TOML file. Every key is optional; unknown keys are an error (a typo should
/// not silently change where backups go).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub repo: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub engine_cmd: Option<String>,
    pub tds: Option<String>,
    pub tds_password_file: Option<PathBuf>,
    pub vdi_library: Option<PathBuf>,
    pub vdi_abi: Option<crate::vdi::Abi>,
    pub server: Option<String>,
    pub open_timeout: Option<u64>,
    pub stripes: Option<u32>,
    pub compress: Option<String>,
    pub buffercount: Option<u32>,
    pub maxtransfersize: Option<u32>,
    pub blocksize: Option<u32>,
    pub workers: Option<usize>,
    /// `prune`: unfinished uploads younger than this are left alone (e.g. "24h").
    pub upload_grace: Option<String>,
    /// `prune`'s policy when no --keep-* flag is given (see [`RetentionFile`]).
    pub retention: Option<RetentionFile>,
}

/// `[retention]`: keep_last, keep_daily, keep_weekly, keep_monthly, keep_within
/// ("14d"), and `[retention.databases."NAME"]` (or `"SERVER/NAME"`) tables that
/// replace the default for one database.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    pub keep_last: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_within: Option<String>,
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, PolicyFile>,
}

/// One policy as the file spells it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub keep_last: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_within: Option<String>,
}

impl PolicyFile {
    fn resolve(&self, what: &str) -> Result<crate::retention::Policy> {
        let keep_within = match &self.keep_within {
            Some(d) => Some(parse_duration(d).map_err(|e| {
                err(
                    Code::Usage,
                    format!("config file: {what}: keep_within: {e}"),
                )
            })?),
            None => None,
        };
        let p = crate::retention::Policy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_within,
        };
        p.validate()
            .map_err(|e| err(Code::Usage, format!("config file: {what}: {e}")))?;
        Ok(p)
    }
}

/// The configured retention: a default and per-database policies.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub default: crate::retention::Policy,
    /// (server or None, database, policy).
    pub databases: Vec<(Option<String>, String, crate::retention::Policy)>,
}

impl Retention {
    /// The policy for one server's database: `SERVER/NAME`, else `NAME`, else the default.
    pub fn policy_for(&self, server: &str, database: &str) -> crate::retention::Policy {
        let exact = self.databases.iter().find(|(s, d, _)| {
            s.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(server))
                && d.eq_ignore_ascii_case(database)
        });
        let by_name = || {
            self.databases
                .iter()
                .find(|(s, d, _)| s.is_none() && d.eq_ignore_ascii_case(database))
        };
        exact
            .or_else(by_name)
            .map(|(_, _, p)| p.clone())
            .unwrap_or_else(|| self.default.clone())
    }
}

/// `90s`, `30m`, `24h`, `7d`, `2w` (or plain seconds).
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d (e.g. 24h)"))?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use s, m, h, d or w)")),
    };
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn data_home() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"))
}

impl FileConfig {
    /// Reads `path`, or the default location if it exists.
    pub fn load(path: Option<&Path>) -> Result<FileConfig> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (
                std::env::var_os("XDG_CONFIG_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| home().join(".config"))
                    .join("openvdi/config.toml"),
                false,
            ),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(FileConfig::default())
            }
            // A configuration that cannot be read is a usage error (exit 2).
            Err(e) => {
                return Err(err(
                    Code::Usage,
                    format!("reading the config file {}: {e}", path.display()),
                ))
            }
        };
        // A parse error quotes the offending line, which may hold a repository URL
        // with credentials: register them before the message can be printed.
        // The file may not parse, so look at every quoted string that holds a URL.
        for quote in ['"', '\''] {
            for (i, part) in text.split(quote).enumerate() {
                if i % 2 == 1 && part.contains("://") {
                    crate::redact::register_url(part);
                }
            }
        }
        toml::from_str(&text).map_err(|e| {
            err(
                Code::Usage,
                crate::redact::scrub(&format!("{}: {e}", path.display())),
            )
        })
    }
}

/// Engine and transport choice, resolved.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub data_dir: PathBuf,
    pub engine_cmd: Option<String>,
    pub tds: Option<String>,
    pub tds_password_file: Option<PathBuf>,
    pub vdi_library: Option<PathBuf>,
    pub vdi_abi: crate::vdi::Abi,
    pub server: Option<String>,
    pub open_timeout: std::time::Duration,
    /// MEDIAPASSWORD / PASSWORD for reading protected backups (kept out of `Debug`).
    pub media_password: Option<Secret>,
    pub password: Option<Secret>,
}

/// A password read from a file: its first line (without the line end). Registered
/// with `redact`, so it is masked in anything the tool prints.
fn password_from(file: Option<&Path>, what: &str) -> Result<Option<Secret>> {
    let Some(f) = file else { return Ok(None) };
    let text = std::fs::read_to_string(f)
        .map_err(|e| err(Code::Usage, format!("--{what}-file {}: {e}", f.display())))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(err(
            Code::Usage,
            format!("--{what}-file {}: the file holds no password", f.display()),
        ));
    }
    crate::redact::register_secret(&line);
    Ok(Some(Secret(line)))
}

/// Everything a command needs from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub repo: String,
    /// No `--repo`, `OPENVDI_REPO` or config file named one: the default repository,
    /// which the first backup may create (any other location must be `init`ed).
    pub repo_is_default: bool,
    pub json: bool,
    pub quiet: bool,
    pub engine: EngineSettings,
    pub file: FileDefaults,
    /// `--password-file` / `OPENVDI_PASSWORD_FILE`.
    pub password_file: Option<std::path::PathBuf>,
    /// `--key-file` / `OPENVDI_KEY_FILE`.
    pub key_file: Option<std::path::PathBuf>,
}

/// Backup knobs whose fallback comes from the file.
#[derive(Debug, Clone, Default)]
pub struct FileDefaults {
    pub stripes: Option<u32>,
    pub compress: Option<Codec>,
    pub buffercount: Option<u32>,
    pub maxtransfersize: Option<u32>,
    pub blocksize: Option<u32>,
    pub workers: Option<usize>,
    pub upload_grace: Option<std::time::Duration>,
    pub retention: Retention,
}

impl Settings {
    pub fn resolve(g: &Global) -> Result<Settings> {
        let f = FileConfig::load(g.config.as_deref())?;
        let compress = match &f.compress {
            Some(c) => Some(
                c.parse::<Codec>()
                    .map_err(|e| err(Code::Usage, format!("config file: compress: {e}")))?,
            ),
            None => None,
        };
        let upload_grace = match &f.upload_grace {
            Some(d) => Some(
                parse_duration(d)
                    .map_err(|e| err(Code::Usage, format!("config file: upload_grace: {e}")))?,
            ),
            None => None,
        };
        let mut retention = Retention::default();
        if let Some(r) = &f.retention {
            let default = PolicyFile {
                keep_last: r.keep_last,
                keep_daily: r.keep_daily,
                keep_weekly: r.keep_weekly,
                keep_monthly: r.keep_monthly,
                keep_within: r.keep_within.clone(),
            };
            retention.default = default.resolve("retention")?;
            for (k, p) in &r.databases {
                let (server, db) = match k.split_once('/') {
                    Some((s, d)) => (Some(s.to_string()), d.to_string()),
                    None => (None, k.clone()),
                };
                let p = p.resolve(&format!("retention.databases.{k:?}"))?;
                retention.databases.push((server, db, p));
            }
        }
        let e = &g.engine;
        let repo_is_default = g.repo.is_none() && f.repo.is_none();
        let repo = g
            .repo
            .clone()
            .or(f.repo)
            .unwrap_or_else(|| data_home().join("openvdi-repo").display().to_string());
        // Before anything can print it (see `redact`).
        crate::redact::register_url(&repo);
        Ok(Settings {
            password_file: g.password_file.clone(),
            key_file: g.key_file.clone(),
            repo,
            repo_is_default,
            json: g.json,
            quiet: g.quiet,
            engine: EngineSettings {
                data_dir: e
                    .data_dir
                    .clone()
                    .or(f.data_dir)
                    // The engine's own default, so `openvdi-sqlcmd` and `openvdi`
                    // see the same databases.
                    .unwrap_or_else(openvdi_engine::db::default_data_dir),
                engine_cmd: e.engine_cmd.clone().or(f.engine_cmd),
                tds: e.tds.clone().or(f.tds),
                tds_password_file: e.tds_password_file.clone().or(f.tds_password_file),
                vdi_library: e.vdi_library.clone().or(f.vdi_library),
                vdi_abi: e.vdi_abi.or(f.vdi_abi).unwrap_or_default(),
                server: e.server.clone().or(f.server),
                open_timeout: std::time::Duration::from_secs(
                    e.open_timeout.or(f.open_timeout).unwrap_or(60),
                ),
                media_password: password_from(e.media_password_file.as_deref(), "media-password")?,
                password: password_from(e.backup_password_file.as_deref(), "backup-password")?,
            },
            file: FileDefaults {
                stripes: f.stripes,
                compress,
                buffercount: f.buffercount,
                maxtransfersize: f.maxtransfersize,
                blocksize: f.blocksize,
                workers: f.workers,
                upload_grace,
                retention,
            },
        })
    }
}
