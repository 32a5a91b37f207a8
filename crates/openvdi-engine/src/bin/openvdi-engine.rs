//! `openvdi-engine`: the engine as its own process. Subcommands manage databases in
//! the data directory and execute T-SQL (the same code a client can call in its own
//! process through the library).
//!
//! Exit status: 0 success; 1 a statement failed (its SQL Server messages are on
//! stdout, as sqlcmd prints them); 2 bad usage or a database-layer failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use openvdi_engine::sqlcmd::{print_execution, Format};
use openvdi_engine::{db, Engine, FaultPlan};

#[derive(Parser, Debug)]
#[command(
    name = "openvdi-engine",
    version,
    about = "A SQL Server-shaped VDI server: databases, T-SQL BACKUP/RESTORE over virtual devices"
)]
struct Cli {
    /// Data directory (default: $OPENVDI_DATA_DIR, $XDG_DATA_HOME/openvdi or ~/.local/share/openvdi).
    #[arg(long, global = true, env = "OPENVDI_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Fault injection, `mode[:arg][,…]` (see the crate README).
    #[arg(long, global = true, env = "OPENVDI_FAULT")]
    fault: Option<String>,
    /// Print JSON instead of text (list, create-database, modify, exec reports).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a database with deterministic content.
    CreateDatabase {
        /// Name.
        name: String,
        /// Data size: bytes or with K/M/G (binary) or p (pages).
        #[arg(long, default_value = "8M")]
        size: String,
    },
    /// Change N data pages and log each change.
    Modify {
        /// Database.
        name: String,
        /// Pages to change.
        #[arg(long)]
        pages: u32,
    },
    /// List the databases.
    List,
    /// Remove a database and its files.
    Drop {
        /// Database.
        name: String,
    },
    /// Execute T-SQL (argument, -Q, or standard input).
    Exec {
        /// The T-SQL.
        sql: Option<String>,
        /// The T-SQL (sqlcmd-style).
        #[arg(short = 'Q')]
        query: Option<String>,
        /// Seconds to wait for the client to create the virtual device set.
        #[arg(long, default_value_t = 30)]
        open_timeout: u64,
    },
    /// Serve T-SQL over TDS: SQL Server drivers connect here (see the README,
    /// "The TDS endpoint").
    Serve {
        /// Address to listen on (loopback by default; port 0 picks a free one,
        /// printed on stdout as `listening on ADDR`).
        #[arg(long, default_value = "127.0.0.1:14330", env = "OPENVDI_TDS_LISTEN")]
        listen: std::net::SocketAddr,
        /// A SQL login, `USER:PASSWORD` (repeatable). Without one, the login is
        /// `sa` with the password in OPENVDI_TDS_PASSWORD; with neither, serve
        /// refuses to start. Prefer the variable: arguments are visible to every
        /// user in the process list.
        #[arg(long = "login", value_name = "USER:PASSWORD")]
        logins: Vec<String>,
        /// Seconds a statement waits for the client to create the virtual device set.
        #[arg(long, default_value_t = 30)]
        open_timeout: u64,
        /// Most connections at once.
        #[arg(long, default_value_t = 256)]
        max_connections: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("openvdi-engine: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = cli.data_dir.clone().unwrap_or_else(db::default_data_dir);
    let plan = match &cli.fault {
        Some(f) => FaultPlan::parse(f).map_err(anyhow::Error::msg)?,
        None => FaultPlan::none(),
    };
    let engine = Engine::open(&dir)
        .with_context(|| format!("opening data directory {}", dir.display()))?
        .with_fault(plan);
    if let Cmd::Serve {
        listen,
        logins,
        open_timeout,
        max_connections,
    } = cli.cmd
    {
        return serve(engine, listen, logins, open_timeout, max_connections);
    }
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::CreateDatabase { name, size } => {
            let bytes = db::parse_size(&size)?;
            let info = engine.create_database(&name, bytes)?;
            if cli.json {
                writeln!(out, "{}", serde_json::to_string(&info)?)?;
            } else {
                writeln!(
                    out,
                    "created database '{}': {} data pages, {} log pages in {}",
                    info.name,
                    info.data_pages,
                    info.log_pages,
                    engine.data_dir().display()
                )?;
            }
        }
        Cmd::Modify { name, pages } => {
            let changed = engine.modify(&name, pages)?;
            let info = engine.database_info(&name)?;
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"database": name, "pages": changed, "end_lsn": info.end_lsn})
                )?;
            } else {
                writeln!(
                    out,
                    "modified {} pages of '{}'; end of log {}",
                    changed.len(),
                    name,
                    info.end_lsn
                )?;
            }
        }
        Cmd::List => {
            let list = engine.list_databases()?;
            if cli.json {
                writeln!(out, "{}", serde_json::to_string(&list)?)?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:<10} {:>10} {:>9} {:>20} {:>8}",
                    "name", "state", "data_pages", "log_pages", "end_lsn", "changed"
                )?;
                for d in list {
                    writeln!(
                        out,
                        "{:<24} {:<10} {:>10} {:>9} {:>20} {:>8}",
                        d.name,
                        format!("{:?}", d.state).to_uppercase(),
                        d.data_pages,
                        d.log_pages,
                        d.end_lsn.to_string(),
                        d.changed_pages
                    )?;
                }
            }
        }
        Cmd::Drop { name } => {
            engine.drop_database(&name)?;
            writeln!(out, "dropped database '{name}'")?;
        }
        Cmd::Exec {
            sql,
            query,
            open_timeout,
        } => {
            let text = match sql.or(query) {
                Some(s) => s,
                None => std::io::read_to_string(std::io::stdin())
                    .context("reading T-SQL from standard input")?,
            };
            let engine = engine.with_open_timeout(std::time::Duration::from_secs(open_timeout));
            let run = engine.execute_detailed(&text);
            let f = Format {
                server: engine.server_name().to_string(),
                headers: true,
                trim: false,
                separator: " ".into(),
            };
            let mut err = std::io::stderr().lock();
            print_execution(&run, &f, None, &mut out, &mut err)?;
            if cli.json {
                writeln!(out, "{}", serde_json::to_string(&run.reports)?)?;
            }
            out.flush()?;
            if run.error.is_some() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Serve { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `serve`: bind, say where, and serve until killed.
fn serve(
    engine: Engine,
    listen: std::net::SocketAddr,
    logins: Vec<String>,
    open_timeout: u64,
    max_connections: usize,
) -> anyhow::Result<ExitCode> {
    let mut cfg = openvdi_tds::Config::new(listen);
    cfg.max_connections = max_connections;
    for l in &logins {
        let (user, password) = l
            .split_once(':')
            .filter(|(u, _)| !u.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--login takes USER:PASSWORD"))?;
        cfg = cfg.with_login(user, password);
    }
    if logins.is_empty() {
        match std::env::var("OPENVDI_TDS_PASSWORD") {
            Ok(p) if !p.is_empty() => cfg = cfg.with_login("sa", p),
            _ => anyhow::bail!(
                "no login: give --login USER:PASSWORD or set OPENVDI_TDS_PASSWORD (the password of 'sa')"
            ),
        }
    }
    let engine = engine.with_open_timeout(std::time::Duration::from_secs(open_timeout));
    let server = openvdi_tds::Server::bind(cfg, openvdi_engine::serve::EngineBackend::new(engine))
        .with_context(|| format!("listening on {listen}"))?;
    let addr = server.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    server.serve();
    Ok(ExitCode::SUCCESS)
}
