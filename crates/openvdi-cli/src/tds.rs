//! The engine is a real SQL Server, reached over TDS with `tiberius`. The statement
//! runs on its own connection, as VDI requires (the BACKUP blocks until the transfer
//! is over), while this process serves the devices.
//!
//! Only the outcome is available here: tiberius reports errors (with SQL Server's
//! message) but not informational messages, so the manifest's completion message is
//! a fixed text; the chain facts (LSNs, GUIDs) come from the stream's own head
//! (`mtf::facts_of_head`), as for any engine.
//!
//! The login's password, in the order looked at: `--tds-password-file` (first line),
//! `OPENVDI_TDS_PASSWORD`, `password=`/`pwd=` in the connection string. The first
//! two keep it out of the process list and shell history; the string is the least
//! safe. Whichever it is, it is registered with `redact` so no message shows it.

use anyhow::Result;
use tiberius::{AuthMethod, ColumnData, Config};
use tokio_util::compat::TokioAsyncWriteCompatExt;

use crate::engine::{Engine, Outcome, Table};
use crate::exit::{err, Code};
use crate::pipeline::Stop;

#[derive(Debug)]
pub struct Tds {
    config: Config,
    server: Option<String>,
}

impl Tds {
    /// From an ADO.NET connection string and the password's other sources (see the
    /// module docs).
    pub fn new(ado: &str, password: Option<String>, server: Option<String>) -> Result<Tds> {
        if let Some(p) = string_password(ado) {
            crate::redact::register_secret(&p);
        }
        let mut config = Config::from_ado_string(ado)
            .map_err(|e| err(Code::Usage, crate::redact::scrub(&format!("--tds: {e}"))))?;
        if let Some(p) = password {
            crate::redact::register_secret(&p);
            // Set on the Config, not spliced into the string: tiberius' parser takes
            // ASCII only, a password from a file or the environment may be anything.
            let user =
                string_value(ado, &["uid", "username", "user", "user id"]).ok_or_else(|| {
                    err(
                        Code::Usage,
                        "--tds: the connection string names no user (user=…)",
                    )
                })?;
            config.authentication(AuthMethod::sql_server(user, p));
        }
        Ok(Tds { config, server })
    }
}

/// The password a connection string carries, for `redact`.
fn string_password(ado: &str) -> Option<String> {
    string_value(ado, &["password", "pwd"])
}

/// The value of the last of `keys` in a connection string (best effort: quoted
/// values containing `;` are not split correctly; used for the user name and for
/// finding the password to mask, tiberius parses the string itself).
fn string_value(ado: &str, keys: &[&str]) -> Option<String> {
    ado.split(';')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| keys.contains(&k.trim().to_lowercase().as_str()))
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v)
                .to_string()
        })
        .next_back()
}

/// The password from `--tds-password-file` or `OPENVDI_TDS_PASSWORD`, if given.
pub fn password(file: Option<&std::path::Path>) -> Result<Option<String>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| {
            err(
                Code::Usage,
                format!("--tds-password-file {}: {e}", f.display()),
            )
        })?;
        let line = text.lines().next().unwrap_or("").to_string();
        return Ok(Some(line));
    }
    Ok(std::env::var("OPENVDI_TDS_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty()))
}

fn text(c: ColumnData<'_>) -> Option<String> {
    match c {
        ColumnData::U8(v) => v.map(|v| v.to_string()),
        ColumnData::I16(v) => v.map(|v| v.to_string()),
        ColumnData::I32(v) => v.map(|v| v.to_string()),
        ColumnData::I64(v) => v.map(|v| v.to_string()),
        ColumnData::F32(v) => v.map(|v| v.to_string()),
        ColumnData::F64(v) => v.map(|v| v.to_string()),
        ColumnData::Bit(v) => v.map(|v| u8::from(v).to_string()),
        ColumnData::String(v) => v.map(|v| v.into_owned()),
        ColumnData::Guid(v) => v.map(|v| v.to_string().to_uppercase()),
        ColumnData::Numeric(v) => v.map(|v| v.to_string()),
        ColumnData::Binary(v) => v.map(|v| v.iter().map(|b| format!("{b:02X}")).collect()),
        other => Some(format!("{other:?}")),
    }
}

impl Engine for Tds {
    fn execute(&self, sql: &str, _stop: &Stop) -> Outcome {
        let config = self.config.clone();
        let r = crate::storage::object::runtime().block_on(async move {
            let tcp = tokio::net::TcpStream::connect(config.get_addr()).await?;
            tcp.set_nodelay(true)?;
            let mut client = tiberius::Client::connect(config, tcp.compat_write()).await?;
            let results = client.simple_query(sql).await?.into_results().await?;
            Ok::<_, anyhow::Error>(results)
        });
        match r {
            Ok(sets) => Outcome {
                ok: true,
                messages: vec![format!("{} completed on the SQL Server", first_word(sql))],
                tables: sets
                    .into_iter()
                    .map(|rows| Table {
                        columns: rows
                            .first()
                            .map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
                            .unwrap_or_default(),
                        rows: rows
                            .into_iter()
                            .map(|r| r.into_iter().map(text).collect())
                            .collect(),
                    })
                    .collect(),
                chain: None,
            },
            Err(e) => Outcome {
                ok: false,
                messages: vec![format!("{e:#}")],
                ..Default::default()
            },
        }
    }

    fn kind(&self) -> &'static str {
        "tds"
    }

    fn server_name(&self) -> Option<String> {
        self.server.clone()
    }
}

fn first_word(sql: &str) -> &str {
    sql.split_whitespace().next().unwrap_or("statement")
}
