//! `openvdi inspect BACKUP|FILE.bak…`: the engine's `RESTORE HEADERONLY` and
//! `RESTORE FILELISTONLY`, fed through virtual devices from the repository (checked
//! on the way, like a restore; an encrypted backup authenticated whole before the
//! engine gets a byte, like a restore) or from plain `.bak` files (all stripes of one backup,
//! any order: they are put in media-family order first).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::restore::engine_session;
use super::Ctx;
use crate::cli::InspectArgs;
use crate::engine::Table;
use crate::exit::{err, Code};
use crate::manifest::{Chain, Kind};
use crate::pipeline::restore::Source;
use crate::repo::Repo;
use crate::storage::{LocalStore, Store};
use crate::{mtf, output};

/// What to read: a stored backup, or files.
pub struct Target {
    pub store: Arc<dyn Store>,
    pub keys: Option<Arc<crate::crypto::Keys>>,
    pub sources: Vec<Source>,
    pub block_size: Option<u32>,
    pub label: String,
}

/// A backup stored in the repository.
pub fn stored_target(repo: &Repo, m: &crate::manifest::Manifest) -> Target {
    Target {
        store: repo.store.clone(),
        keys: repo.keys.clone(),
        sources: m
            .stripes
            .iter()
            .map(|s| Source::Stored {
                key: s.key.clone(),
                raw_size: s.raw_size,
                blake3: s.blake3.clone(),
                backup_id: m.id.to_string(),
                index: s.index,
            })
            .collect(),
        block_size: m.block_size,
        label: m.id.to_string(),
    }
}

/// Plain `.bak` files, in media-family order (a mixed or incomplete set is refused).
pub fn file_target(files: &[PathBuf]) -> Result<Target> {
    for f in files {
        match std::fs::metadata(f) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(err(
                    Code::Usage,
                    format!(
                        "{}: not a file (give the .bak files themselves)",
                        f.display()
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(err(
                    Code::RepoMissing,
                    format!("no such file: {}", f.display()),
                ))
            }
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", f.display())),
        }
    }
    let ordered = mtf::order_stripes(files).map_err(|e| err(Code::Verify, e))?;
    Ok(Target {
        // File sources never touch the store; any store will do.
        store: Arc::new(LocalStore::new(PathBuf::from("."))),
        keys: None,
        sources: ordered.iter().cloned().map(Source::File).collect(),
        block_size: None,
        label: ordered
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

pub fn query(ctx: &Ctx, t: &Target, what: &str) -> Result<(Vec<Table>, Vec<String>)> {
    let o = engine_session(
        ctx,
        t.store.clone(),
        t.keys.clone(),
        t.sources.clone(),
        None,
        "inspect",
        |devs| {
            let from: Vec<String> = devs
                .iter()
                .map(|d| format!("VIRTUAL_DEVICE = '{}'", d.replace('\'', "''")))
                .collect();
            let mut with = crate::engine::password_options(&ctx.settings.engine);
            if let Some(b) = t.block_size {
                with.push(format!("BLOCKSIZE = {b}"));
            }
            let mut sql = format!("RESTORE {what} FROM {}", from.join(", "));
            if !with.is_empty() {
                sql.push_str(&format!(" WITH {}", with.join(", ")));
            }
            sql
        },
    )?;
    Ok((o.tables, o.messages))
}

/// HEADERONLY facts the repository records.
#[derive(Debug, Default, Clone)]
pub struct HeaderInfo {
    pub database: Option<String>,
    pub server: Option<String>,
    pub kind: Option<Kind>,
    pub chain: Chain,
    pub backup_start: Option<DateTime<Utc>>,
    pub backup_finish: Option<DateTime<Utc>>,
}

fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s.trim(), f) {
            return Some(t.and_utc());
        }
    }
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Reads HEADERONLY of `t` through the engine (first backup set on the media).
pub fn header(ctx: &Ctx, t: &Target) -> Result<HeaderInfo> {
    let (tables, _) = query(ctx, t, "HEADERONLY")?;
    let Some(tb) = tables.first().filter(|tb| !tb.rows.is_empty()) else {
        return Ok(HeaderInfo::default());
    };
    let get = |c: &str| -> Option<String> {
        let i = tb.columns.iter().position(|n| n.eq_ignore_ascii_case(c))?;
        tb.rows[0].get(i)?.clone().filter(|v| !v.is_empty())
    };
    let kind = get("BackupType").and_then(|v| match v.trim() {
        "1" => Some(Kind::Full),
        "5" => Some(Kind::Diff),
        "2" => Some(Kind::Log),
        _ => None,
    });
    Ok(HeaderInfo {
        database: get("DatabaseName"),
        server: get("ServerName"),
        kind,
        chain: Chain {
            first_lsn: get("FirstLSN"),
            last_lsn: get("LastLSN"),
            checkpoint_lsn: get("CheckpointLSN"),
            database_backup_lsn: get("DatabaseBackupLSN"),
            differential_base_lsn: get("DifferentialBaseLSN"),
            differential_base_guid: get("DifferentialBaseGUID"),
            backup_set_guid: get("BackupSetGUID"),
            parent: None,
        },
        backup_start: get("BackupStartDate").and_then(|d| parse_date(&d)),
        backup_finish: get("BackupFinishDate").and_then(|d| parse_date(&d)),
    })
}

fn table_json(t: &Table) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = t
        .rows
        .iter()
        .map(|r| {
            let m: serde_json::Map<String, serde_json::Value> = t
                .columns
                .iter()
                .zip(r)
                .map(|(c, v)| {
                    (
                        c.clone(),
                        v.clone().map_or(serde_json::Value::Null, Into::into),
                    )
                })
                .collect();
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::Value::Array(rows)
}

fn table_text(t: &Table, vertical: bool) -> String {
    let mut s = String::new();
    if vertical {
        let w = t.columns.iter().map(|c| c.len()).max().unwrap_or(0);
        for (i, r) in t.rows.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            for (c, v) in t.columns.iter().zip(r) {
                s.push_str(&format!("{c:<w$}  {}\n", v.as_deref().unwrap_or("NULL")));
            }
        }
        return s;
    }
    let cells = |r: &Vec<Option<String>>| -> Vec<String> {
        r.iter()
            .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
            .collect()
    };
    let mut widths: Vec<usize> = t.columns.iter().map(|c| c.len()).collect();
    for r in &t.rows {
        for (i, v) in cells(r).iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(v.len());
            }
        }
    }
    let line = |vals: &[String]| -> String {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    s.push_str(&line(&t.columns));
    s.push('\n');
    for r in &t.rows {
        s.push_str(&line(&cells(r)));
        s.push('\n');
    }
    s
}

pub fn run(ctx: &Ctx, a: InspectArgs) -> Result<()> {
    let files: Vec<PathBuf> = a.target.iter().map(PathBuf::from).collect();
    // A path (a separator, a .bak name, or something that exists) means files; a
    // missing one is "no such file", not "no such backup".
    let is_path = |t: &str| {
        t.contains(['/', '\\']) || t.to_ascii_lowercase().ends_with(".bak") || Path::new(t).exists()
    };
    let t = if a.target.iter().any(|t| is_path(t)) {
        file_target(&files)?
    } else if a.target.len() == 1 {
        let repo = super::open_repo(ctx)?;
        let m = repo.find(&a.target[0])?;
        // The engine would read only the head of each stripe, each frame of which the
        // reader authenticates as it goes; but a backup tampered further on must not
        // have its header shown as a good backup's, so an encrypted one is checked
        // whole first, as restore does (one read of the stored bytes).
        super::restore::Checked::default().authenticate(&repo, &m)?;
        stored_target(&repo, &m)
    } else {
        return Err(err(
            Code::Usage,
            "give one backup id, or .bak files that exist",
        ));
    };
    let (headers, hmsg) = query(ctx, &t, "HEADERONLY")?;
    let (files, fmsg) = query(ctx, &t, "FILELISTONLY")?;
    if ctx.settings.json {
        output::json(&serde_json::json!({
            "ok": true,
            "target": t.label,
            "header": headers.first().map(table_json).unwrap_or(serde_json::Value::Null),
            "files": files.first().map(table_json).unwrap_or(serde_json::Value::Null),
        }));
        return Ok(());
    }
    let mut s = format!("{}\n\n", t.label);
    match headers.first() {
        Some(h) => s.push_str(&table_text(h, true)),
        None => s.push_str(&hmsg.join("\n")), // an external engine prints text
    }
    s.push('\n');
    match files.first() {
        Some(f) => s.push_str(&table_text(f, false)),
        None => s.push_str(&fmsg.join("\n")),
    }
    output::text(&s);
    Ok(())
}
