//! The engine that runs the T-SQL: the embedded openvdi engine (default) or an
//! external sqlcmd-style command.
//!
//! VDI only moves bytes; whether a BACKUP or RESTORE succeeded is decided by the
//! statement's outcome (reference §1.5 step 11), so every engine returns one.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::EngineSettings;
use crate::manifest::Chain;
use crate::pipeline::Stop;

/// What a statement did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub ok: bool,
    /// Informational messages and errors, in order.
    pub messages: Vec<String>,
    /// Result sets (HEADERONLY, FILELISTONLY), when the engine returns them as data.
    pub tables: Vec<Table>,
    /// The chain facts of a BACKUP, when the engine reports them.
    pub chain: Option<Chain>,
}

/// One result set: column names and rows (`None` is NULL).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Outcome {
    /// The completion message ("… successfully processed …"), else the last message.
    pub fn completion_message(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m.contains("successfully processed"))
            .or(self.messages.last())
            .cloned()
            .unwrap_or_default()
    }
    /// The error to show when `!ok`.
    pub fn error_text(&self) -> String {
        if self.messages.is_empty() {
            "the engine reported a failure without a message".into()
        } else {
            self.messages.join("\n")
        }
    }
}

pub trait Engine: Send + Sync {
    /// Runs one statement to completion. `stop` tells it the run is being abandoned
    /// (the virtual device set has been aborted): finish or give up promptly.
    fn execute(&self, sql: &str, stop: &Stop) -> Outcome;
    /// "embedded" or "external".
    fn kind(&self) -> &'static str;
    /// The server name for object names.
    fn server_name(&self) -> Option<String>;
    /// Roughly how many bytes a full backup of `database` streams, for progress ETA.
    fn size_hint(&self, _database: &str) -> Option<u64> {
        None
    }
}

/// Quotes an identifier for T-SQL: `[name]` with `]` doubled.
pub fn ident(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// Quotes a string literal for T-SQL: `N'…'` with `'` doubled.
pub fn literal(s: &str) -> String {
    format!("N'{}'", s.replace('\'', "''"))
}

/// `MEDIAPASSWORD = N'…'` and `PASSWORD = N'…'` for the passwords the tool was
/// given (RESTORE and its HEADERONLY / FILELISTONLY / VERIFYONLY take both).
pub fn password_options(e: &crate::config::EngineSettings) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(p) = &e.media_password {
        v.push(format!("MEDIAPASSWORD = {}", literal(&p.0)));
    }
    if let Some(p) = &e.password {
        v.push(format!("PASSWORD = {}", literal(&p.0)));
    }
    v
}

/// Splits a command template into words: whitespace separates, '…' and "…" group.
pub fn split_words(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        anyhow::bail!("unbalanced quote in engine command {s:?}");
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// An external command given as a template, `{sql}` replaced by the statement (as
/// one argument, never through a shell).
#[derive(Debug)]
pub struct External {
    words: Vec<String>,
    server: Option<String>,
}

impl External {
    pub fn new(template: &str, server: Option<String>) -> Result<External> {
        let words = split_words(template)?;
        if words.is_empty() || !words.iter().any(|w| w.contains("{sql}")) {
            return Err(crate::exit::err(
                crate::exit::Code::Usage,
                format!("--engine-cmd {template:?} must contain {{sql}}"),
            ));
        }
        Ok(External { words, server })
    }
}

/// How long an external engine may take to notice an aborted set before it is killed.
const EXTERNAL_GRACE: Duration = Duration::from_secs(20);

impl Engine for External {
    fn execute(&self, sql: &str, stop: &Stop) -> Outcome {
        let args: Vec<String> = self.words.iter().map(|w| w.replace("{sql}", sql)).collect();
        let mut child = match Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return Outcome {
                    ok: false,
                    messages: vec![format!("cannot run {:?}: {e}", args[0])],
                    ..Default::default()
                }
            }
        };
        let pid = child.id();
        let mut out = child.stdout.take().expect("piped");
        let mut errs = child.stderr.take().expect("piped");
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let err_reader = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = errs.read_to_string(&mut s);
                s
            });
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            let e = err_reader.join().unwrap_or_default();
            let status = child.wait();
            let _ = tx.send((status, s, e));
        });
        let mut stopped_at: Option<Instant> = None;
        let (status, stdout, stderr) = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => break r,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Outcome {
                        ok: false,
                        messages: vec!["lost the engine command".into()],
                        ..Default::default()
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if stop.is_stopped() {
                        let t = *stopped_at.get_or_insert_with(Instant::now);
                        if t.elapsed() > EXTERNAL_GRACE {
                            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                                let _ =
                                    rustix::process::kill_process(p, rustix::process::Signal::KILL);
                            }
                        }
                    }
                }
            }
        };
        let mut messages: Vec<String> = stdout
            .lines()
            .chain(stderr.lines())
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let ok = matches!(&status, Ok(s) if s.success());
        if let Err(e) = status {
            messages.push(format!("waiting for the engine command: {e}"));
        }
        Outcome {
            ok,
            messages,
            ..Default::default()
        }
    }

    fn kind(&self) -> &'static str {
        "external"
    }

    fn server_name(&self) -> Option<String> {
        self.server.clone()
    }
}

/// Picks the engine the settings ask for; `mode` says how to announce what it does
/// on its own. `backing_up` names the database a backup is about to read: only a
/// backup of `demo` on an empty data directory creates the sample database (a
/// restore, inspect or import never does: a disaster-recovery restore of a database
/// called `demo` must find the directory as it is).
pub fn open(
    s: &EngineSettings,
    mode: crate::progress::Mode,
    backing_up: Option<&str>,
) -> Result<Arc<dyn Engine>> {
    if let Some(ado) = &s.tds {
        if s.engine_cmd.is_some() {
            return Err(crate::exit::err(
                crate::exit::Code::Usage,
                "--tds and --engine-cmd exclude each other",
            ));
        }
        let password = crate::tds::password(s.tds_password_file.as_deref())?;
        return Ok(Arc::new(crate::tds::Tds::new(
            ado,
            password,
            s.server.clone(),
        )?));
    }
    match &s.engine_cmd {
        Some(t) => Ok(Arc::new(External::new(t, s.server.clone())?)),
        None => crate::embedded::open(&s.data_dir, s.server.clone(), mode, backing_up)
            .with_context(|| format!("opening the embedded engine in {}", s.data_dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_quoting() {
        assert_eq!(
            split_words(r#"sqlcmd -S "my server" -Q {sql} -b"#).unwrap(),
            vec!["sqlcmd", "-S", "my server", "-Q", "{sql}", "-b"]
        );
        assert_eq!(split_words("a ''").unwrap(), vec!["a", ""]);
        assert!(split_words("a 'b").is_err());
        assert_eq!(ident("we]ird"), "[we]]ird]");
        assert_eq!(literal("it's"), "N'it''s'");
    }

    #[test]
    fn external_outcome() {
        let stop = Stop::new();
        let e = External::new("sh -c {sql}", None).unwrap();
        let o = e.execute(
            "echo BACKUP DATABASE successfully processed; echo warn >&2",
            &stop,
        );
        assert!(o.ok);
        assert_eq!(
            o.completion_message(),
            "BACKUP DATABASE successfully processed"
        );
        assert_eq!(o.messages.len(), 2);
        let o = e.execute("echo Msg 3201 >&2; exit 1", &stop);
        assert!(!o.ok);
        assert!(o.error_text().contains("3201"));
        assert!(External::new("sqlcmd -Q x", None).is_err());
    }
}
