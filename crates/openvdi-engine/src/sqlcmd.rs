//! The `openvdi-sqlcmd` front end: `sqlcmd`'s command line and output, executing
//! with the engine in this process. Existing VDI clients that start
//! `sqlcmd -S . -U user -P pass -Q "BACKUP … TO VIRTUAL_DEVICE='…'"` run unchanged
//! when it is installed under the name `sqlcmd`.
//!
//! Connection options (-S, -U, -P, -E, -d, -C, -N, -l, -t) are accepted and ignored:
//! the engine is local. Output follows sqlcmd: informational messages as bare
//! lines, errors as `Msg N, Level L, State S, Server X, Line N` and the text, result
//! sets as padded columns with a dashed line under the headers and
//! `(N rows affected)`. One deviation: columns are as wide as their longest value
//! (sqlcmd uses the declared width of the column type); `-W` output is identical.
//!
//! Exit status: 0, or 1 with `-b` when a statement raised an error of severity
//! above 10 (sqlcmd's rule); 1 also when the command line or the input file is
//! unusable.

use std::io::{BufRead, Write};

use clap::Parser;

use crate::sql::lexer::split_batches;
use crate::{Engine, Execution, Message, Output, ResultSet};

/// sqlcmd's command line (the subset VDI clients use, plus a few harmless ones).
#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "sqlcmd",
    about = "openvdi's sqlcmd: runs T-SQL BACKUP/RESTORE with the openvdi engine",
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct SqlcmdArgs {
    /// Server (accepted, ignored: the engine is local).
    #[arg(short = 'S')]
    pub server: Option<String>,
    /// Login name (accepted, ignored).
    #[arg(short = 'U')]
    pub user: Option<String>,
    /// Password (accepted, ignored).
    #[arg(short = 'P')]
    pub password: Option<String>,
    /// Trusted connection (accepted, ignored).
    #[arg(short = 'E')]
    pub trusted: bool,
    /// Database context (accepted, ignored).
    #[arg(short = 'd')]
    pub database: Option<String>,
    /// Run this query and exit.
    #[arg(short = 'Q')]
    pub query_and_exit: Option<String>,
    /// Run this query, then read more from standard input.
    #[arg(short = 'q')]
    pub query: Option<String>,
    /// Input files, run in order.
    #[arg(short = 'i', num_args = 1..)]
    pub input: Vec<std::path::PathBuf>,
    /// Write output to this file.
    #[arg(short = 'o')]
    pub output: Option<std::path::PathBuf>,
    /// Exit with status 1 on an error.
    #[arg(short = 'b')]
    pub on_error_exit: bool,
    /// Rows between headers; -1: no headers.
    #[arg(short = 'h', allow_hyphen_values = true)]
    pub headers: Option<i64>,
    /// Remove trailing spaces (no column padding).
    #[arg(short = 'W')]
    pub trim: bool,
    /// Column separator.
    #[arg(short = 's')]
    pub separator: Option<String>,
    /// Screen width (accepted, ignored).
    #[arg(short = 'w')]
    pub width: Option<u32>,
    /// Messages to stderr: 0 errors only, 1 all.
    #[arg(short = 'r', num_args = 0..=1, default_missing_value = "0")]
    pub redirect: Option<u8>,
    /// Minimum severity that sets the exit status with -b (default 11).
    #[arg(short = 'V')]
    pub severity: Option<u8>,
    /// Query timeout in seconds (accepted, ignored).
    #[arg(short = 't')]
    pub query_timeout: Option<u32>,
    /// Login timeout in seconds (accepted, ignored).
    #[arg(short = 'l')]
    pub login_timeout: Option<u32>,
    /// Trust the server certificate (accepted, ignored).
    #[arg(short = 'C')]
    pub trust_cert: bool,
    /// Encrypt (accepted, ignored).
    #[arg(short = 'N', num_args = 0..=1, default_missing_value = "m")]
    pub encrypt: Option<String>,
    /// Disable commands (accepted, ignored).
    #[arg(short = 'X', num_args = 0..=1, default_missing_value = "0")]
    pub disable: Option<u8>,
    /// Print help.
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The engine's data directory (default: OPENVDI_DATA_DIR or the per-user one).
    #[arg(long = "data-dir", env = "OPENVDI_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Fault injection (as OPENVDI_FAULT).
    #[arg(long = "fault", env = "OPENVDI_FAULT")]
    pub fault: Option<String>,
}

/// Output options.
#[derive(Clone, Debug)]
pub struct Format {
    /// Server name for error headers.
    pub server: String,
    /// Header every N rows (None: once; Some(-1) via `headers: false`).
    pub headers: bool,
    /// -W.
    pub trim: bool,
    /// Column separator.
    pub separator: String,
}

impl Format {
    /// From the command line.
    pub fn from_args(a: &SqlcmdArgs, server: &str) -> Format {
        Format {
            server: a.server.clone().unwrap_or_else(|| server.to_string()),
            headers: a.headers != Some(-1),
            trim: a.trim,
            separator: a.separator.clone().unwrap_or_else(|| " ".into()),
        }
    }
}

/// A message as sqlcmd prints it.
pub fn format_message(m: &Message, f: &Format) -> String {
    if m.is_error() {
        format!(
            "Msg {}, Level {}, State {}, Server {}, Line {}\n{}\n",
            m.number, m.severity, m.state, f.server, m.line, m.text
        )
    } else {
        format!("{}\n", m.text)
    }
}

/// A result set as sqlcmd prints it.
pub fn format_result_set(rs: &ResultSet, f: &Format) -> String {
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
    let widths: Vec<usize> = rs
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rs.rows
                .iter()
                .map(|r| r.get(i).map_or(4, |v| cell(v).chars().count()))
                .chain(std::iter::once(c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| -> String {
        let parts: Vec<String> = vals
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                if f.trim {
                    v
                } else {
                    format!("{v:<w$}", w = widths[i])
                }
            })
            .collect();
        let s = parts.join(&f.separator);
        if f.trim {
            s.trim_end().to_string()
        } else {
            s
        }
    };
    let mut out = String::new();
    if f.headers {
        out += &line(rs.columns.clone());
        out += "\n";
        let dashes: Vec<String> = rs
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| "-".repeat(if f.trim { c.chars().count() } else { widths[i] }))
            .collect();
        out += &dashes.join(&f.separator);
        out += "\n";
    }
    for r in &rs.rows {
        out += &line(r.iter().map(cell).collect());
        out += "\n";
    }
    if !rs.nocount {
        out += &format!("\n({} rows affected)\n", rs.rows.len());
    }
    out
}

/// Print an execution's outputs and error; returns the highest error severity.
pub fn print_execution(
    run: &Execution,
    f: &Format,
    redirect: Option<u8>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let mut worst = 0u8;
    let emit = |m: &Message, out: &mut dyn Write, err: &mut dyn Write| -> std::io::Result<()> {
        let to_err = match redirect {
            Some(1) => true,
            Some(_) => m.is_error(),
            None => false,
        };
        let text = format_message(m, f);
        if to_err {
            err.write_all(text.as_bytes())
        } else {
            out.write_all(text.as_bytes())
        }
    };
    for o in &run.outputs {
        match o {
            Output::Message(m) => emit(m, out, err)?,
            Output::ResultSet(rs) => out.write_all(format_result_set(rs, f).as_bytes())?,
        }
    }
    if let Some(e) = &run.error {
        for m in &e.info {
            emit(m, out, err)?;
        }
        for m in &e.messages {
            worst = worst.max(m.severity);
            emit(m, out, err)?;
        }
    }
    Ok(worst)
}

/// Run sqlcmd: returns the exit status.
pub fn run(
    a: &SqlcmdArgs,
    engine: &Engine,
    out: &mut dyn Write,
    err: &mut dyn Write,
    stdin: &mut dyn BufRead,
) -> i32 {
    let f = Format::from_args(a, engine.server_name());
    let threshold = a.severity.unwrap_or(11).max(1);
    let mut scripts: Vec<String> = Vec::new();
    for p in &a.input {
        match std::fs::read_to_string(p) {
            Ok(s) => scripts.push(s),
            Err(e) => {
                let _ = writeln!(err, "Sqlcmd: '{}': Invalid filename. ({e})", p.display());
                return 1;
            }
        }
    }
    if let Some(q) = &a.query_and_exit {
        scripts.push(q.clone());
    } else {
        if let Some(q) = &a.query {
            scripts.push(q.clone());
        }
        if a.input.is_empty() {
            // Interactive / piped input up to EOF, `exit` or `quit`.
            let mut text = String::new();
            let mut line = String::new();
            loop {
                line.clear();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let t = line.trim();
                        if t.eq_ignore_ascii_case("exit") || t.eq_ignore_ascii_case("quit") {
                            break;
                        }
                        text.push_str(&line);
                    }
                }
            }
            scripts.push(text);
        }
    }
    for s in scripts {
        let batches = match split_batches(&s) {
            Ok(b) => b,
            Err(e) => {
                // Nothing of a script with a bad GO line runs (sqlcmd stops too).
                let run = Execution {
                    error: Some(e),
                    ..Execution::default()
                };
                let _ = print_execution(&run, &f, a.redirect, out, err);
                return 1;
            }
        };
        for batch in batches {
            for _ in 0..batch.count.max(1) {
                let mut run = Execution::default();
                engine.run_batch(&batch.text, &mut run);
                let worst = match print_execution(&run, &f, a.redirect, out, err) {
                    Ok(w) => w,
                    Err(_) => return 1,
                };
                let _ = out.flush();
                if worst >= threshold && a.on_error_exit {
                    return 1;
                }
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt() -> Format {
        Format {
            server: "srv".into(),
            headers: true,
            trim: false,
            separator: " ".into(),
        }
    }

    #[test]
    fn parses_what_vdi_clients_pass() {
        let a = SqlcmdArgs::try_parse_from([
            "sqlcmd",
            "-S",
            ".",
            "-U",
            "sa",
            "-P",
            "pw",
            "-b",
            "-Q",
            "BACKUP DATABASE x TO VIRTUAL_DEVICE='v'",
        ])
        .unwrap();
        assert_eq!(a.server.as_deref(), Some("."));
        assert!(a.on_error_exit);
        assert!(a.query_and_exit.unwrap().starts_with("BACKUP"));
        let a = SqlcmdArgs::try_parse_from([
            "sqlcmd", "-E", "-d", "master", "-h", "-1", "-W", "-i", "a.sql", "b.sql",
        ])
        .unwrap();
        assert!(a.trusted && a.trim);
        assert_eq!(a.headers, Some(-1));
        assert_eq!(a.input.len(), 2);
        let a = SqlcmdArgs::try_parse_from(["sqlcmd", "-q", "x", "-C", "-N", "-l", "30"]).unwrap();
        assert_eq!(a.query.as_deref(), Some("x"));
        assert!(SqlcmdArgs::try_parse_from(["sqlcmd", "-Z"]).is_err());
    }

    #[test]
    fn messages_like_sqlcmd() {
        let m = Message {
            number: 102,
            severity: 15,
            state: 1,
            line: 2,
            text: "Incorrect syntax near 'x'.".into(),
        };
        assert_eq!(
            format_message(&m, &fmt()),
            "Msg 102, Level 15, State 1, Server srv, Line 2\nIncorrect syntax near 'x'.\n"
        );
        assert_eq!(
            format_message(&Message::info(3014, "done"), &fmt()),
            "done\n"
        );
    }

    #[test]
    fn result_sets_like_sqlcmd() {
        let rs = ResultSet {
            columns: vec!["LogicalName".into(), "Type".into()],
            rows: vec![
                vec![Some("db".into()), Some("D".into())],
                vec![Some("db_log".into()), None],
            ],
            ..ResultSet::default()
        };
        assert_eq!(
            format_result_set(&rs, &fmt()),
            "LogicalName Type\n----------- ----\ndb          D   \ndb_log      NULL\n\n(2 rows affected)\n"
        );
        let mut f = fmt();
        f.trim = true;
        f.headers = false;
        assert_eq!(
            format_result_set(&rs, &f),
            "db D\ndb_log NULL\n\n(2 rows affected)\n"
        );
    }

    #[test]
    fn exit_status_with_b() {
        let d = tempfile::tempdir().unwrap();
        let e = Engine::open(d.path()).unwrap();
        let (mut o, mut er) = (Vec::new(), Vec::new());
        let a = SqlcmdArgs::try_parse_from(["sqlcmd", "-b", "-Q", "BACKUP DATABSE x"]).unwrap();
        assert_eq!(run(&a, &e, &mut o, &mut er, &mut std::io::empty()), 1);
        let text = String::from_utf8(o).unwrap();
        assert!(
            text.starts_with("Msg 102, Level 15, State 1, Server"),
            "{text}"
        );
        let a = SqlcmdArgs::try_parse_from(["sqlcmd", "-Q", "BACKUP DATABSE x"]).unwrap();
        let mut o = Vec::new();
        assert_eq!(run(&a, &e, &mut o, &mut er, &mut std::io::empty()), 0);
        // Piped input, GO-separated, `exit` ends it.
        let a = SqlcmdArgs::try_parse_from(["sqlcmd", "-b"]).unwrap();
        let mut input = std::io::Cursor::new("RESTORE DATABASE nosuch WITH RECOVERY\nGO\nexit\n");
        let mut o = Vec::new();
        assert_eq!(run(&a, &e, &mut o, &mut er, &mut input), 1);
        assert!(String::from_utf8(o).unwrap().contains("Msg "));
    }
}
