//! The engine is a real SQL Server, reached over TDS with `tiberius`. The statement
//! runs on its own connection, as VDI requires (the BACKUP blocks until the transfer
//! is over), while this process serves the devices.
//!
//! SQL Server's messages: tiberius returns the first error of a failed statement
//! and no informational messages, but it emits every INFO token (its text, at DEBUG)
//! and every ERROR token (text and number, at ERROR) as a `tracing` event from its
//! token reader. [`Messages`], a subscriber scoped to the statement's future (not
//! the login: its 5701/5703 are not the statement's), collects them, so the user
//! sees 4035/3014, or 911 and the 3013 after it, as from sqlcmd. Nothing depends on
//! them: the chain facts (LSNs, GUIDs) come from the stream's own head
//! (`mtf::facts_of_head`), as for any engine; without any (another tiberius
//! version), the outcome falls back to a fixed text or tiberius' error.
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

/// SQL Server's messages as tiberius' token reader logs them (tiberius 0.13,
/// `tds/stream/token.rs`: `get_info` → DEBUG "{text}", `get_error` → ERROR with
/// `message` and `code`), in order. Only tiberius' token reader is listened to.
#[derive(Clone, Default)]
struct Messages(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

/// The fields of one event.
#[derive(Default)]
struct Fields {
    message: String,
    code: Option<u64>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            // Both `%text` and format arguments print as their Display.
            self.message = format!("{v:?}");
        }
    }
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        if f.name() == "code" {
            self.code = Some(v);
        }
    }
}

/// The module tiberius' INFO/ERROR events come from.
const TOKEN_READER: &str = "tiberius::tds::stream::token";

impl tracing::Subscriber for Messages {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        m.is_event()
            && m.module_path() == Some(TOKEN_READER)
            && (*m.level() == tracing::Level::DEBUG || *m.level() == tracing::Level::ERROR)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut f = Fields::default();
        e.record(&mut f);
        let line = match (*e.metadata().level() == tracing::Level::ERROR, f.code) {
            (true, Some(code)) => format!("Msg {code}: {}", f.message),
            _ => f.message,
        };
        // The token reader's DEBUG events are INFO tokens, ENVCHANGEs ("…
        // change from … to …") and the LOGINACK; the statements run here change
        // nothing, and the login is not listened to.
        if !line.is_empty() {
            if let Ok(mut v) = self.0.lock() {
                v.push(crate::redact::scrub(&line));
            }
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Messages {
    fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

impl Engine for Tds {
    fn execute(&self, sql: &str, _stop: &Stop) -> Outcome {
        use tracing::instrument::WithSubscriber;
        let config = self.config.clone();
        let messages = Messages::default();
        let listen = messages.clone();
        let r = crate::storage::object::runtime().block_on(async move {
            let tcp = tokio::net::TcpStream::connect(config.get_addr()).await?;
            tcp.set_nodelay(true)?;
            let mut client = tiberius::Client::connect(config, tcp.compat_write()).await?;
            // The subscriber is the default only while this future is polled.
            let results = async { client.simple_query(sql).await?.into_results().await }
                .with_subscriber(listen)
                .await?;
            Ok::<_, anyhow::Error>(results)
        });
        let said = messages.take();
        match r {
            Ok(sets) => Outcome {
                ok: true,
                messages: if said.is_empty() {
                    vec![format!("{} completed on the SQL Server", first_word(sql))]
                } else {
                    said
                },
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
                // SQL Server's own messages when the statement ran (every error,
                // numbered); tiberius' error when it did not get that far.
                messages: if said.iter().any(|m| m.starts_with("Msg ")) {
                    said
                } else {
                    vec![format!("{e:#}")]
                },
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
