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
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Put a VDI client through what SQL Server may do to it, scenario by scenario
    /// (docs/CONFORMANCE.md). Exit 0 only when every scenario passed.
    Conformance(ConformanceArgs),
}

#[derive(clap::Args, Debug)]
struct ConformanceArgs {
    /// The client command, run through `sh -c`, with {op} (backup|restore), {set},
    /// {stripes}, {file} (a directory for the client's data), {db}, {datadir} and
    /// {sqlcmd} filled in, e.g.
    /// 'openvdi-vdiclient {op} --set {set} --stripes {stripes} --dir {file}'.
    #[arg(long)]
    client: String,
    /// A separate command for restores (default: --client).
    #[arg(long)]
    restore_client: Option<String>,
    /// A command run once per scenario before the client (same placeholders).
    #[arg(long)]
    setup: Option<String>,
    /// The client sends the T-SQL itself (through {sqlcmd}); the kit passes the
    /// scenario's fault in OPENVDI_FAULT.
    #[arg(long)]
    client_sends_sql: bool,
    /// Where the client keeps device {i}'s raw stream, relative to {file} (e.g.
    /// 'dev{i}.bin'): enables the durability scenario.
    #[arg(long)]
    stores: Option<String>,
    /// quick (for CI) or full.
    #[arg(long, default_value = "quick")]
    profile: String,
    /// Only scenarios whose name contains PATTERN.
    #[arg(long, value_name = "PATTERN")]
    only: Option<String>,
    /// Write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Run every scenario even after a failure.
    #[arg(long)]
    keep_going: bool,
    /// Seconds each step may take before it counts as a hang.
    #[arg(long, default_value_t = 60)]
    deadline: u64,
    /// Scratch directory (default: a new one under the system's temp dir; failed
    /// scenarios' directories are kept for inspection).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn conformance(a: ConformanceArgs, json: bool) -> anyhow::Result<ExitCode> {
    use openvdi_engine::conformance::{self as kit, Options, Profile, Verdict};
    let profile = match a.profile.as_str() {
        "quick" => Profile::Quick,
        "full" => Profile::Full,
        p => anyhow::bail!("--profile {p}: quick or full"),
    };
    let exe = std::env::current_exe().context("locating openvdi-engine")?;
    let sqlcmd = exe.with_file_name("openvdi-sqlcmd");
    let work = match a.work_dir.clone() {
        Some(w) => w,
        None => std::env::temp_dir().join(format!("openvdi-conformance-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let o = Options {
        client: a.client.clone(),
        restore_client: a.restore_client.clone(),
        setup: a.setup.clone(),
        client_sends: a.client_sends_sql,
        stores: a.stores.clone(),
        profile,
        only: a.only.clone(),
        keep_going: a.keep_going,
        deadline: std::time::Duration::from_secs(a.deadline.max(1)),
        work_dir: work.clone(),
        engine_exe: exe.clone(),
        sqlcmd_exe: sqlcmd,
    };
    let rerun = |name: &str| {
        let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let mut c = format!(
            "{} conformance --client {} --only {name} --profile full",
            exe.display(),
            q(&a.client)
        );
        if let Some(r) = &a.restore_client {
            c.push_str(&format!(" --restore-client {}", q(r)));
        }
        if let Some(r) = &a.setup {
            c.push_str(&format!(" --setup {}", q(r)));
        }
        if let Some(r) = &a.stores {
            c.push_str(&format!(" --stores {}", q(r)));
        }
        if a.client_sends_sql {
            c.push_str(" --client-sends-sql");
        }
        c
    };
    let mut err = std::io::stderr().lock();
    let outcomes = kit::run(&o, &mut |r| {
        if json {
            return;
        }
        let v = match &r.verdict {
            Verdict::Pass => "pass".to_string(),
            Verdict::Skip(w) => format!("skip ({w})"),
            Verdict::Fail(w) => format!("FAIL: {w}"),
        };
        let _ = writeln!(err, "{:<32} {:>6.2}s  {v}", r.name, r.seconds);
        if matches!(r.verdict, Verdict::Fail(_)) {
            let _ = writeln!(err, "{}", r.evidence.trim_end());
            let _ = writeln!(err, "  rerun alone: {}", rerun(&r.name));
            let _ = writeln!(
                err,
                "  kept for inspection: {}",
                work.join(&r.name).display()
            );
        }
    });
    if let Some(p) = &a.junit {
        std::fs::write(p, kit::junit(&outcomes))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", kit::json(&outcomes))?;
    } else {
        write!(out, "{}", kit::table(&outcomes))?;
    }
    let failed = outcomes
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Fail(_)))
        .count();
    if failed == 0 && a.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
    if let Cmd::Conformance(a) = cli.cmd {
        return conformance(a, cli.json);
    }
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
        tls,
    } = cli.cmd
    {
        return serve(engine, listen, logins, open_timeout, max_connections, tls);
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
        Cmd::Conformance(_) => unreachable!("handled before the data directory is opened"),
        Cmd::Serve { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `serve`'s TLS: a certificate from PEM files or a self-signed one made at start.
#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// The server certificate chain (PEM). Without --cert/--key a self-signed
    /// certificate for localhost, the listening address and the host name is
    /// generated at start (clients then need TrustServerCertificate=yes).
    #[arg(long, requires = "key", env = "OPENVDI_TDS_CERT")]
    cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "cert", env = "OPENVDI_TDS_KEY")]
    key: Option<PathBuf>,
    /// Encrypt every session, as SQL Server's "Force Encryption": a client that
    /// asks for login-only encryption gets it all, one that cannot encrypt is
    /// refused.
    #[arg(long, conflicts_with = "no_tls")]
    force_encryption: bool,
    /// No TLS at all: PRELOGIN answers ENCRYPT_NOT_SUP (clients that require
    /// encryption give up).
    #[arg(long)]
    no_tls: bool,
}

impl TlsArgs {
    fn build(&self, listen: std::net::SocketAddr) -> anyhow::Result<Option<openvdi_tds::tls::Tls>> {
        if self.no_tls {
            return Ok(None);
        }
        let t = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => openvdi_tds::tls::Tls::from_pem_files(c, k)?,
            _ => {
                let mut names = vec!["localhost".to_string(), listen.ip().to_string()];
                if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                    let h = h.trim().to_string();
                    if !h.is_empty() && !names.contains(&h) {
                        names.push(h);
                    }
                }
                openvdi_tds::tls::Tls::self_signed(&names)?
            }
        };
        Ok(Some(t.forced(self.force_encryption)))
    }
}

/// `serve`: bind, say where, and serve until killed.
fn serve(
    engine: Engine,
    listen: std::net::SocketAddr,
    logins: Vec<String>,
    open_timeout: u64,
    max_connections: usize,
    tls: TlsArgs,
) -> anyhow::Result<ExitCode> {
    let mut cfg = openvdi_tds::Config::new(listen);
    cfg.max_connections = max_connections;
    if let Some(t) = tls.build(listen)? {
        eprintln!(
            "openvdi-engine: TLS with {}{}",
            t.source,
            if t.force { ", encryption forced" } else { "" }
        );
        cfg = cfg.with_tls(t);
    }
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
