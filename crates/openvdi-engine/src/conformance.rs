//! The conformance kit: puts a VDI client through what SQL Server may do to it and
//! judges, scenario by scenario, from what happened — the statement's outcome, the
//! client's exit status, the bytes it stored (restored and compared with the
//! source), objects left in `/dev/shm`, a deadline — never from what the client
//! prints. Every scenario and the SQL Server behaviour it stands for is described in
//! `docs/CONFORMANCE.md`.
//!
//! Every statement runs in a child `openvdi-engine exec` process (with the
//! scenario's `OPENVDI_FAULT`), so a server crash is a real dead process and a hung
//! scenario can be killed at its deadline. The client is a command template run
//! through `sh -c`, its placeholders filled in per scenario.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::Engine;

/// Quick (a few minutes of CI) or full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// The scenarios marked quick.
    Quick,
    /// Every scenario.
    Full,
}

/// How the kit was asked to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The client command template (`{op}`, `{set}`, `{stripes}`, `{file}`, `{db}`,
    /// `{datadir}`, `{sqlcmd}`).
    pub client: String,
    /// Another template for restores (default: `client`).
    pub restore_client: Option<String>,
    /// Run once per scenario before the first client (e.g. a repository's `init`).
    pub setup: Option<String>,
    /// The client sends the T-SQL itself (through `{sqlcmd}`); the kit only sets the
    /// fault in the environment and judges.
    pub client_sends: bool,
    /// Where a client that keeps raw streams stores device `{i}`, relative to
    /// `{file}` (e.g. `dev{i}.bin`); enables the durability scenario.
    pub stores: Option<String>,
    /// Which scenarios.
    pub profile: Profile,
    /// Only scenarios whose name contains this.
    pub only: Option<String>,
    /// Go on after a failure (default: stop at the first).
    pub keep_going: bool,
    /// Per scenario phase.
    pub deadline: Duration,
    /// Scratch space (a fresh directory per scenario is made inside).
    pub work_dir: PathBuf,
    /// `openvdi-engine` (this program).
    pub engine_exe: PathBuf,
    /// `openvdi-sqlcmd` (for clients that send the T-SQL).
    pub sqlcmd_exe: PathBuf,
}

/// Which operation a fault is applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Backup,
    Restore,
}

/// What a conforming client achieves in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Backup and restore succeed; the restored data file equals the source.
    Success,
    /// The operation under the fault fails; the client exits non-zero.
    Failure,
}

/// Special shapes of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Plain,
    /// Full, diff and log backups, restored as a chain.
    Chain,
    /// A failed run first, then the same set name again.
    ReuseAfterFailure,
    /// A second client creates the same set name while the first one waits.
    SameNameTwice,
    /// The engine starts waiting for the set before the client creates it.
    EngineFirst,
    /// The durability probe watches the files at each VDC_Flush/VDC_Complete.
    Durability,
}

/// One scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name (stable: used by `--only` and in reports).
    pub name: &'static str,
    /// What it stands for, in a line.
    pub what: &'static str,
    phase: Phase,
    fault: &'static str,
    stripes: u32,
    size_mib: u64,
    with: &'static str,
    expect: Expect,
    shape: Shape,
    quick: bool,
}

#[allow(clippy::too_many_arguments)]
const fn sc(
    name: &'static str,
    what: &'static str,
    phase: Phase,
    fault: &'static str,
    stripes: u32,
    with: &'static str,
    expect: Expect,
    shape: Shape,
    quick: bool,
) -> Scenario {
    Scenario {
        name,
        what,
        phase,
        fault,
        stripes,
        size_mib: 8,
        with,
        expect,
        shape,
        quick,
    }
}

/// Every scenario, in the order they run.
pub fn scenarios() -> Vec<Scenario> {
    use Expect::*;
    use Phase::*;
    use Shape::*;
    let mut v = vec![
        sc(
            "happy-1-stripe",
            "BACKUP and RESTORE, one device",
            Backup,
            "",
            1,
            "",
            Success,
            Plain,
            true,
        ),
        sc(
            "happy-2-stripes",
            "two devices",
            Backup,
            "",
            2,
            "",
            Success,
            Plain,
            true,
        ),
        sc(
            "happy-4-stripes",
            "four devices",
            Backup,
            "",
            4,
            "",
            Success,
            Plain,
            true,
        ),
        sc(
            "happy-16-stripes",
            "sixteen devices",
            Backup,
            "",
            16,
            "",
            Success,
            Plain,
            false,
        ),
        sc(
            "buffercount-minimum",
            "BUFFERCOUNT = 2 over two devices: one buffer each",
            Backup,
            "",
            2,
            "BUFFERCOUNT = 2",
            Success,
            Plain,
            false,
        ),
        sc(
            "buffercount-64",
            "BUFFERCOUNT = 64: many commands outstanding, completed in any order",
            Backup,
            "",
            2,
            "BUFFERCOUNT = 64",
            Success,
            Plain,
            true,
        ),
        sc(
            "maxtransfer-64k",
            "MAXTRANSFERSIZE = 64 KiB",
            Backup,
            "",
            1,
            "MAXTRANSFERSIZE = 65536",
            Success,
            Plain,
            false,
        ),
        sc(
            "maxtransfer-4m",
            "MAXTRANSFERSIZE = 4 MiB",
            Backup,
            "",
            1,
            "MAXTRANSFERSIZE = 4194304",
            Success,
            Plain,
            true,
        ),
        sc(
            "blocksize-512",
            "BLOCKSIZE = 512",
            Backup,
            "",
            1,
            "BLOCKSIZE = 512",
            Success,
            Plain,
            false,
        ),
        sc(
            "blocksize-64k",
            "BLOCKSIZE = 65536",
            Backup,
            "",
            1,
            "BLOCKSIZE = 65536",
            Success,
            Plain,
            false,
        ),
        sc(
            "chain-full-diff-log",
            "a full, a differential and a log backup restored as a chain",
            Backup,
            "",
            1,
            "",
            Success,
            Chain,
            true,
        ),
        sc(
            "no-vdc-complete",
            "a server that sends no VDC_Complete (before KB 3188454)",
            Backup,
            "no-complete",
            1,
            "",
            Success,
            Plain,
            true,
        ),
        sc(
            "multi-flush",
            "several VDC_Flush at the end of a backup (FILESTREAM, KB 3188454)",
            Backup,
            "multi-flush:3",
            2,
            "",
            Success,
            Plain,
            true,
        ),
        sc(
            "short-reads",
            "RESTORE reads of other sizes than the backup wrote",
            Restore,
            "short-reads",
            1,
            "",
            Success,
            Plain,
            true,
        ),
        sc(
            "rewind-clearerror",
            "VDC_Rewind on a pipe-like device, then VDC_ClearError",
            Backup,
            "fail-command:3",
            1,
            "",
            Success,
            Plain,
            true,
        ),
        sc(
            "slow-server-20ms",
            "20 ms between commands",
            Backup,
            "delay:20",
            1,
            "",
            Success,
            Plain,
            false,
        ),
        sc(
            "slow-server-150ms",
            "150 ms between commands: longer than short GetCommand timeouts",
            Backup,
            "delay:150",
            1,
            "MAXTRANSFERSIZE = 4194304",
            Success,
            Plain,
            true,
        ),
        sc(
            "flush-durability",
            "the data is on the medium when VDC_Flush and VDC_Complete are answered",
            Backup,
            "",
            2,
            "",
            Success,
            Durability,
            true,
        ),
        sc(
            "abort-first-command-backup",
            "SignalAbort after the first command of a backup",
            Backup,
            "abort-after-commands:1",
            1,
            "",
            Failure,
            Plain,
            true,
        ),
        sc(
            "abort-mid-backup",
            "SignalAbort half-way through a backup",
            Backup,
            "abort-at:mid",
            2,
            "",
            Failure,
            Plain,
            false,
        ),
        sc(
            "abort-at-flush",
            "SignalAbort instead of the last VDC_Flush",
            Backup,
            "abort-at:flush",
            1,
            "",
            Failure,
            Plain,
            true,
        ),
        sc(
            "abort-at-complete",
            "SignalAbort instead of VDC_Complete",
            Backup,
            "abort-at:complete",
            1,
            "",
            Failure,
            Plain,
            true,
        ),
        sc(
            "abort-first-command-restore",
            "SignalAbort after the first read of a restore",
            Restore,
            "abort-after-commands:1",
            1,
            "",
            Failure,
            Plain,
            false,
        ),
        sc(
            "abort-mid-restore",
            "SignalAbort half-way through a restore",
            Restore,
            "abort-at:mid",
            1,
            "",
            Failure,
            Plain,
            true,
        ),
        sc(
            "stall",
            "the server stops sending and stops waiting, then aborts",
            Backup,
            "stall:2000",
            1,
            "",
            Failure,
            Plain,
            false,
        ),
        sc(
            "reuse-set-name-after-failure",
            "the set name reused right after a failed run",
            Backup,
            "",
            1,
            "",
            Success,
            ReuseAfterFailure,
            true,
        ),
        sc(
            "same-set-name-twice",
            "a second client creating a set name that is in use",
            Backup,
            "",
            1,
            "",
            Success,
            SameNameTwice,
            false,
        ),
        sc(
            "engine-before-client",
            "the server waits for the set before the client creates it",
            Backup,
            "",
            1,
            "",
            Success,
            EngineFirst,
            false,
        ),
    ];
    for (name, what, fault, quick) in [
        (
            "crash-at-open-backup",
            "the server process dies right after opening the set",
            "crash-at:open",
            false,
        ),
        (
            "crash-at-configured-backup",
            "the server process dies after configuring the set",
            "crash-at:configured",
            false,
        ),
        (
            "crash-at-first-transfer-backup",
            "the server process dies after the first command",
            "crash-at:first-transfer",
            false,
        ),
        (
            "crash-at-mid-backup",
            "the server process dies half-way through a backup",
            "crash-at:mid",
            true,
        ),
        (
            "crash-at-flush-backup",
            "the server process dies before VDC_Flush",
            "crash-at:flush",
            false,
        ),
        (
            "crash-at-complete-backup",
            "the server process dies before VDC_Complete",
            "crash-at:complete",
            false,
        ),
    ] {
        v.push(sc(name, what, Backup, fault, 1, "", Failure, Plain, quick));
    }
    v.push(sc(
        "crash-at-mid-restore",
        "the server process dies half-way through a restore",
        Restore,
        "crash-at:mid",
        1,
        "",
        Failure,
        Plain,
        false,
    ));
    let mut large = sc(
        "large-database",
        "a 64 MiB database over four devices",
        Backup,
        "",
        4,
        "",
        Success,
        Plain,
        false,
    );
    large.size_mib = 64;
    v.push(large);
    v
}

/// A scenario's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// As a conforming client does.
    Pass,
    /// The first thing that went wrong.
    Fail(String),
    /// Not applicable to this client (why).
    Skip(String),
}

/// What happened in one scenario.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The scenario.
    pub name: String,
    /// What it stands for.
    pub what: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Seconds it took.
    pub seconds: f64,
    /// Evidence: the engine's messages and the client's output of the failing step.
    pub evidence: String,
    /// The operation the scenario's fault is applied to: "backup" or "restore".
    pub phase: &'static str,
    /// The engine's fault modes in that operation ("" for none).
    pub fault: &'static str,
    /// The backup's WITH options beyond the defaults ("" for none).
    pub options: &'static str,
    /// Whether a conforming client succeeds (backup, restore, identical files) or
    /// must fail.
    pub expect_success: bool,
}

/// A finished child process: its status (None: killed at the deadline) and output.
struct Ran {
    status: Option<ExitStatus>,
    out: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    fn describe(&self) -> String {
        match self.status {
            None => "was still running at the deadline (killed)".into(),
            Some(s) => match s.code() {
                Some(c) => format!("exited {c}"),
                None => "was killed by a signal".into(),
            },
        }
    }
}

/// Values the placeholders get.
struct Fill<'a> {
    op: &'a str,
    set: &'a str,
    stripes: u32,
    file: &'a Path,
    db: &'a str,
    datadir: &'a Path,
    sqlcmd: &'a Path,
}

/// A value as one shell word: plain when it is only safe characters.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn expand(template: &str, f: &Fill<'_>) -> String {
    template
        .replace("{op}", f.op)
        .replace("{set}", &shell_word(f.set))
        .replace("{stripes}", &f.stripes.to_string())
        .replace("{file}", &shell_word(&f.file.display().to_string()))
        .replace("{db}", &shell_word(f.db))
        .replace("{datadir}", &shell_word(&f.datadir.display().to_string()))
        .replace("{sqlcmd}", &shell_word(&f.sqlcmd.display().to_string()))
}

/// Starts `sh -c CMD` in its own process group.
fn spawn_shell(cmd: &str, env: &[(&str, String)]) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn()
}

/// Waits for `child` until `deadline`; kills its whole process group then.
fn finish(mut child: Child, deadline: Instant) -> Ran {
    let pid = child.id() as i32;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let readers = [out.map(read_all), err.map(read_all)];
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                kill_group(pid);
                let _ = child.wait();
                break None;
            }
        }
    };
    // A client that left children behind holding the pipes: end them too.
    kill_group(pid);
    let mut text = String::new();
    for r in readers.into_iter().flatten() {
        text.push_str(&r.join().unwrap_or_default());
    }
    Ran { status, out: text }
}

fn read_all<R: std::io::Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

fn kill_group(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

/// Objects of `set` still in /dev/shm.
fn leftovers(set: &str) -> Vec<String> {
    let suffix = format!(".{set}");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("openvdi-") && n.ends_with(&suffix))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the client has created the set's control object.
fn set_exists(set: &str) -> bool {
    Path::new("/dev/shm")
        .join(format!("openvdi-ctl.{set}"))
        .exists()
}

fn devices_clause(set: &str, n: u32) -> String {
    (0..n)
        .map(|i| {
            let name = if i == 0 {
                set.to_string()
            } else {
                format!("{set}{i}")
            };
            format!("VIRTUAL_DEVICE = '{name}'")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One scenario's scratch state.
struct Run<'a> {
    o: &'a Options,
    sc: &'a Scenario,
    dir: PathBuf,
    data: PathBuf,
    engine: Engine,
    db: String,
    set: String,
    evidence: String,
}

/// What one backup or restore step did.
struct Step {
    client: Ran,
    statement: Option<Ran>,
    leftovers: Vec<String>,
    /// What the kit itself saw go wrong beyond the processes' outcomes (a second
    /// client that should have been refused succeeded).
    wrong: Option<String>,
}

impl Run<'_> {
    fn note(&mut self, what: &str, r: &Ran) {
        let tail: String = {
            let lines: Vec<&str> = r.out.lines().collect();
            lines[lines.len().saturating_sub(12)..].join("\n")
        };
        let _ = writeln!(self.evidence, "--- {what} ({}):\n{tail}", r.describe());
    }

    /// Runs one backup or restore: the client, and (unless the client sends it) the
    /// statement, under `fault`.
    fn step(&mut self, op: &str, file: &Path, sql: &str, fault: &str, probe: bool) -> Step {
        let deadline = Instant::now() + self.o.deadline;
        let template = if op == "restore" {
            self.o.restore_client.as_deref().unwrap_or(&self.o.client)
        } else {
            &self.o.client
        };
        let fill = Fill {
            op,
            set: &self.set,
            stripes: self.sc.stripes,
            file,
            db: &self.db,
            datadir: &self.data,
            sqlcmd: &self.o.sqlcmd_exe,
        };
        let cmd = expand(template, &fill);
        // Each scenario isolates one behaviour: read sizes vary only in the one about
        // read sizes (the engine's default varies every fourth read).
        let fixed;
        let fault = if op == "restore" && !fault.contains("short-reads") {
            fixed = if fault.is_empty() {
                "fixed-reads".to_string()
            } else {
                format!("{fault},fixed-reads")
            };
            fixed.as_str()
        } else {
            fault
        };
        let mut env: Vec<(&str, String)> = Vec::new();
        if probe {
            if let Some(p) = &self.o.stores {
                env.push(("OPENVDI_PROBE_DURABLE", file.join(p).display().to_string()));
            }
        }
        if self.o.client_sends {
            env.push(("OPENVDI_FAULT", fault.to_string()));
            let client = match spawn_shell(&cmd, &env) {
                Ok(c) => finish(c, deadline),
                Err(e) => Ran {
                    status: None,
                    out: format!("cannot start the client: {e}"),
                },
            };
            self.note(&format!("client ({op})"), &client);
            let left = self.sweep();
            return Step {
                client,
                statement: None,
                leftovers: left,
                wrong: None,
            };
        }
        let start_statement = |env: &[(&str, String)]| {
            let mut c = Command::new(&self.o.engine_exe);
            c.arg("--data-dir")
                .arg(&self.data)
                .arg("exec")
                .arg("--open-timeout")
                .arg(self.o.deadline.as_secs().max(1).to_string())
                .arg("-Q")
                .arg(sql)
                .env("OPENVDI_FAULT", fault)
                .env_remove("OPENVDI_PROBE_DURABLE")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in env {
                c.env(k, v);
            }
            {
                use std::os::unix::process::CommandExt;
                c.process_group(0);
            }
            c.spawn()
        };
        let engine_first = self.sc.shape == Shape::EngineFirst;
        let mut statement = None;
        if engine_first {
            // The order is the experiment: the engine waits before the set exists.
            // The client starts once the engine says it is waiting (its probe file).
            let marker = self.dir.join("engine-waiting");
            let _ = std::fs::remove_file(&marker);
            let mut with = env.clone();
            with.push(("OPENVDI_PROBE_WAITING", marker.display().to_string()));
            statement = Some(start_statement(&with));
            while !marker.exists() && Instant::now() < deadline {
                // An engine that ended (or never started) will not wait: go on.
                let ended = match statement.as_mut() {
                    Some(Ok(c)) => !matches!(c.try_wait(), Ok(None)),
                    _ => true,
                };
                if ended {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let client = spawn_shell(&cmd, &[]);
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                return Step {
                    client: Ran {
                        status: None,
                        out: format!("cannot start the client: {e}"),
                    },
                    statement: None,
                    leftovers: vec![],
                    wrong: None,
                }
            }
        };
        let mut second: Option<Ran> = None;
        if self.sc.shape == Shape::SameNameTwice && op == "backup" {
            // Wait for the first client's set, then a second client with its name.
            while !set_exists(&self.set) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let other = self.dir.join("second-client");
            let fill2 = Fill {
                file: &other,
                ..fill
            };
            if let Ok(c) = spawn_shell(&expand(template, &fill2), &[]) {
                second = Some(finish(c, deadline));
            }
        }
        if statement.is_none() {
            statement = Some(start_statement(&env));
        }
        let statement = match statement.expect("started") {
            Ok(c) => finish(c, deadline),
            Err(e) => Ran {
                status: None,
                out: format!("cannot start openvdi-engine: {e}"),
            },
        };
        let client = finish(client, deadline);
        self.note(&format!("engine ({op})"), &statement);
        self.note(&format!("client ({op})"), &client);
        if let Some(s) = &second {
            self.note("second client with the same set name", s);
            if s.ok() {
                let _ = writeln!(
                    self.evidence,
                    "the second client succeeded with a set name already in use"
                );
                return Step {
                    client,
                    statement: Some(statement),
                    leftovers: vec![],
                    wrong: Some(
                        "a second client creating the set name in use exited 0: its Create \
                         must have been refused"
                            .into(),
                    ),
                };
            }
        }
        let left = self.sweep();
        Step {
            client,
            statement: Some(statement),
            leftovers: left,
            wrong: None,
        }
    }

    /// The set's objects still in /dev/shm once everyone has exited — recorded as
    /// evidence, then removed, so the next step (and the machine) starts clean.
    fn sweep(&self) -> Vec<String> {
        let left = leftovers(&self.set);
        for n in &left {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(n));
        }
        left
    }

    fn backup_sql(&self, kind: &str) -> String {
        let mut with: Vec<&str> = Vec::new();
        if kind == "diff" {
            with.push("DIFFERENTIAL");
        }
        if !self.sc.with.is_empty() {
            with.push(self.sc.with);
        }
        let verb = if kind == "log" { "LOG" } else { "DATABASE" };
        let mut s = format!(
            "BACKUP {verb} [{}] TO {}",
            self.db,
            devices_clause(&self.set, self.sc.stripes)
        );
        if !with.is_empty() {
            s.push_str(" WITH ");
            s.push_str(&with.join(", "));
        }
        s
    }

    fn restore_sql(&self, log: bool, recovery: bool) -> String {
        let from = devices_clause(&self.set, self.sc.stripes);
        let recovery = if recovery { "RECOVERY" } else { "NORECOVERY" };
        if log {
            // RESTORE LOG takes no MOVE or REPLACE.
            return format!("RESTORE LOG [{}_copy] FROM {from} WITH {recovery}", self.db);
        }
        let copy = self.data.join("restored");
        format!(
            "RESTORE DATABASE [{db}_copy] FROM {from} WITH MOVE N'{db}' TO N'{}', \
             MOVE N'{db}_log' TO N'{}', REPLACE, {recovery}",
            copy.join(format!("{}_copy.mdf", self.db)).display(),
            copy.join(format!("{}_copy_log.ldf", self.db)).display(),
            db = self.db,
        )
    }

    fn data_file(&self, db: &str) -> Result<PathBuf, String> {
        self.engine
            .database_info(db)
            .map_err(|e| format!("database {db}: {e}"))?
            .files
            .first()
            .map(|f| f.path.clone())
            .ok_or_else(|| format!("database {db} has no files"))
    }

    /// Judges a step that must succeed.
    fn must_succeed(&self, what: &str, s: &Step) -> Result<(), String> {
        if let Some(w) = &s.wrong {
            return Err(format!("{what}: {w}"));
        }
        if let Some(st) = &s.statement {
            if st.status.is_none() {
                return Err(format!(
                    "{what}: the statement was still waiting at the deadline: the client \
                     stopped answering commands (the client {})",
                    s.client.describe()
                ));
            }
            if !st.ok() {
                return Err(format!(
                    "{what}: the statement failed ({})",
                    first_msg(&st.out)
                ));
            }
        }
        if !s.client.ok() {
            return Err(format!("{what}: the client {}", s.client.describe()));
        }
        if !s.leftovers.is_empty() {
            return Err(format!(
                "{what}: the client left {} in /dev/shm (it did not Close the set)",
                s.leftovers.join(", ")
            ));
        }
        Ok(())
    }

    /// Judges a step whose operation must fail.
    fn must_fail(&self, what: &str, s: &Step) -> Result<(), String> {
        if s.client.status.is_none() {
            return Err(format!(
                "{what}: the client was still running at the deadline (it hangs after the failure)"
            ));
        }
        if s.statement.as_ref().is_some_and(Ran::ok) {
            return Err(format!(
                "{what}: the statement succeeded although the fault should have failed it"
            ));
        }
        if s.client.ok() {
            return Err(format!(
                "{what}: the client exited 0 after a failed operation (a caller would take the \
                 backup for good)"
            ));
        }
        if !s.leftovers.is_empty() {
            return Err(format!(
                "{what}: the client left {} in /dev/shm",
                s.leftovers.join(", ")
            ));
        }
        Ok(())
    }

    fn setup(&mut self, file: &Path) -> Result<(), String> {
        let Some(t) = &self.o.setup else {
            return Ok(());
        };
        let fill = Fill {
            op: "setup",
            set: &self.set,
            stripes: self.sc.stripes,
            file,
            db: &self.db,
            datadir: &self.data,
            sqlcmd: &self.o.sqlcmd_exe,
        };
        let c = spawn_shell(&expand(t, &fill), &[]).map_err(|e| format!("setup: {e}"))?;
        let r = finish(c, Instant::now() + self.o.deadline);
        self.note("setup", &r);
        if r.ok() {
            Ok(())
        } else {
            Err(format!("the setup command {}", r.describe()))
        }
    }

    fn go(&mut self) -> Result<Verdict, String> {
        let sc = self.sc;
        let file = self.dir.join("store");
        std::fs::create_dir_all(&file).map_err(|e| e.to_string())?;
        // Where the kit restores its copies (MOVE targets must exist, as in SQL Server).
        std::fs::create_dir_all(self.data.join("restored")).map_err(|e| e.to_string())?;
        self.setup(&file)?;
        self.engine
            .create_database(&self.db, sc.size_mib << 20)
            .map_err(|e| e.to_string())?;
        self.engine
            .modify(&self.db, 16)
            .map_err(|e| e.to_string())?;
        if sc.shape == Shape::Chain {
            return self.chain(&file);
        }
        if self.o.client_sends && matches!(sc.shape, Shape::SameNameTwice | Shape::EngineFirst) {
            return Ok(Verdict::Skip(
                "the client starts its own statement, so the kit cannot order it".into(),
            ));
        }
        if sc.shape == Shape::ReuseAfterFailure {
            let sql = self.backup_sql("full");
            let s = self.step("backup", &file, &sql, "abort-after-commands:1", false);
            self.must_fail("the failed run before the reuse", &s)?;
        }
        let source = std::fs::read(self.data_file(&self.db)?).map_err(|e| e.to_string())?;
        let bfault = if sc.phase == Phase::Backup {
            sc.fault
        } else {
            ""
        };
        let probe = sc.shape == Shape::Durability;
        let sql = self.backup_sql("full");
        let b = self.step("backup", &file, &sql, bfault, probe);
        if sc.phase == Phase::Backup && sc.expect == Expect::Failure {
            self.must_fail("backup", &b)?;
            return Ok(Verdict::Pass);
        }
        self.must_succeed("backup", &b)?;
        // Restore what the client kept, into a copy (or, when the client sends the
        // statement, over the database after changing it).
        let rfault = if sc.phase == Phase::Restore {
            sc.fault
        } else {
            ""
        };
        let (sql, target) = if self.o.client_sends {
            self.engine.modify(&self.db, 8).map_err(|e| e.to_string())?;
            (String::new(), self.db.clone())
        } else {
            (self.restore_sql(false, true), format!("{}_copy", self.db))
        };
        let r = self.step("restore", &file, &sql, rfault, false);
        if sc.phase == Phase::Restore && sc.expect == Expect::Failure {
            self.must_fail("restore", &r)?;
            return Ok(Verdict::Pass);
        }
        self.must_succeed("restore", &r)?;
        let restored = std::fs::read(self.data_file(&target)?).map_err(|e| e.to_string())?;
        if restored != source {
            return Err(format!(
                "the restored data file differs from the source ({} of {} bytes differ): the \
                 client returned other bytes than it was given",
                restored.iter().zip(&source).filter(|(a, b)| a != b).count()
                    + restored.len().abs_diff(source.len()),
                source.len()
            ));
        }
        Ok(Verdict::Pass)
    }

    fn chain(&mut self, file: &Path) -> Result<Verdict, String> {
        if self.o.client_sends {
            return Ok(Verdict::Skip(
                "the chain scenario needs the kit to send the statements".into(),
            ));
        }
        let mut stores = Vec::new();
        for (i, kind) in ["full", "diff", "log"].into_iter().enumerate() {
            if i > 0 {
                self.engine
                    .modify(&self.db, 12)
                    .map_err(|e| e.to_string())?;
            }
            let dir = file.join(kind);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let sql = self.backup_sql(kind);
            let s = self.step("backup", &dir, &sql, "", false);
            self.must_succeed(&format!("{kind} backup"), &s)?;
            stores.push(dir);
        }
        let source = std::fs::read(self.data_file(&self.db)?).map_err(|e| e.to_string())?;
        for (i, dir) in stores.iter().enumerate() {
            let last = i == stores.len() - 1;
            let sql = if i == 2 {
                self.restore_sql(true, last)
            } else {
                self.restore_sql(false, last)
            };
            let s = self.step("restore", dir, &sql, "", false);
            self.must_succeed(&format!("restore {}", ["full", "diff", "log"][i]), &s)?;
        }
        let restored = std::fs::read(self.data_file(&format!("{}_copy", self.db))?)
            .map_err(|e| e.to_string())?;
        if restored != source {
            return Err("the chain restored other bytes than the source holds".into());
        }
        Ok(Verdict::Pass)
    }
}

/// The first SQL Server message of a statement's output, for the table.
fn first_msg(out: &str) -> String {
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        if l.starts_with("Msg ") {
            return match lines.next() {
                Some(t) => format!("{}: {}", l.trim(), t.trim()),
                None => l.trim().to_string(),
            };
        }
    }
    out.lines().last().unwrap_or("no output").trim().to_string()
}

/// Runs the selected scenarios, calling `each` as every one finishes.
pub fn run(o: &Options, each: &mut dyn FnMut(&Outcome)) -> Vec<Outcome> {
    let mut out = Vec::new();
    let selected: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| o.profile == Profile::Full || s.quick)
        .filter(|s| o.only.as_deref().is_none_or(|p| s.name.contains(p)))
        .collect();
    for (n, sc) in selected.iter().enumerate() {
        let t0 = Instant::now();
        let dir = o.work_dir.join(sc.name);
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        let verdict;
        let mut evidence = String::new();
        if sc.shape == Shape::Durability && o.stores.is_none() {
            verdict = Verdict::Skip(
                "needs --stores (where the client keeps each device's raw stream)".into(),
            );
        } else {
            match std::fs::create_dir_all(&data)
                .map_err(|e| e.to_string())
                .and_then(|()| Engine::open(&data).map_err(|e| e.to_string()))
            {
                Err(e) => verdict = Verdict::Fail(format!("scratch space: {e}")),
                Ok(engine) => {
                    let mut r = Run {
                        o,
                        sc,
                        dir: dir.clone(),
                        data,
                        engine,
                        db: "conf".into(),
                        set: format!("ovdi-conf-{}-{n}-{}", std::process::id(), sc.name),
                        evidence: String::new(),
                    };
                    verdict = match r.go() {
                        Ok(v) => v,
                        Err(why) => Verdict::Fail(why),
                    };
                    evidence = r.evidence;
                }
            }
        }
        if verdict == Verdict::Pass {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let res = Outcome {
            name: sc.name.into(),
            what: sc.what.into(),
            verdict,
            seconds: t0.elapsed().as_secs_f64(),
            evidence,
            phase: match sc.phase {
                Phase::Backup => "backup",
                Phase::Restore => "restore",
            },
            fault: sc.fault,
            options: sc.with,
            expect_success: sc.expect == Expect::Success,
        };
        each(&res);
        let failed = matches!(res.verdict, Verdict::Fail(_));
        out.push(res);
        if failed && !o.keep_going {
            break;
        }
    }
    out
}

/// The terminal table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = format!(
        "{:<32} {:<7} {:>7}  {}\n",
        "SCENARIO", "VERDICT", "SECONDS", "WHAT WENT WRONG"
    );
    for o in outcomes {
        let (v, why) = match &o.verdict {
            Verdict::Pass => ("pass", String::new()),
            Verdict::Fail(w) => ("FAIL", w.clone()),
            Verdict::Skip(w) => ("skip", w.clone()),
        };
        let _ = writeln!(s, "{:<32} {:<7} {:>7.2}  {}", o.name, v, o.seconds, why);
    }
    s
}

/// The report as JSON.
pub fn json(outcomes: &[Outcome]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            let (v, why) = match &o.verdict {
                Verdict::Pass => ("pass", None),
                Verdict::Fail(w) => ("fail", Some(w.clone())),
                Verdict::Skip(w) => ("skip", Some(w.clone())),
            };
            serde_json::json!({
                "scenario": o.name, "what": o.what, "verdict": v, "reason": why,
                "seconds": o.seconds, "evidence": o.evidence, "phase": o.phase,
                "fault": o.fault, "options": o.options,
                "expect": if o.expect_success { "success" } else { "failure" },
            })
        })
        .collect();
    let passed = outcomes
        .iter()
        .all(|o| !matches!(o.verdict, Verdict::Fail(_)));
    serde_json::json!({"ok": passed, "scenarios": rows})
}

fn xml(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JUnit XML: one test case per scenario.
pub fn junit(outcomes: &[Outcome]) -> String {
    let fails = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Fail(_)))
        .count();
    let skips = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Skip(_)))
        .count();
    let total: f64 = outcomes.iter().map(|o| o.seconds).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites><testsuite name=\"openvdi-conformance\" tests=\"{}\" failures=\"{fails}\" skipped=\"{skips}\" time=\"{total:.3}\">",
        outcomes.len()
    );
    for o in outcomes {
        let _ = write!(
            s,
            "<testcase classname=\"openvdi.conformance\" name=\"{}\" time=\"{:.3}\">",
            xml(&o.name),
            o.seconds
        );
        match &o.verdict {
            Verdict::Pass => {}
            Verdict::Fail(w) => {
                let _ = write!(
                    s,
                    "<failure message=\"{}\">{}</failure>",
                    xml(w),
                    xml(&o.evidence)
                );
            }
            Verdict::Skip(w) => {
                let _ = write!(s, "<skipped message=\"{}\"/>", xml(w));
            }
        }
        s.push_str("</testcase>\n");
    }
    s.push_str("</testsuite></testsuites>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_placeholders_expand_as_shell_words() {
        let all = scenarios();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let f = Fill {
            op: "backup",
            set: "s1",
            stripes: 2,
            file: Path::new("/tmp/a b"),
            db: "d",
            datadir: Path::new("/data"),
            sqlcmd: Path::new("/bin/sqlcmd"),
        };
        assert_eq!(
            expand(
                "c {op} {set} {stripes} {file} {db} {datadir} {sqlcmd} {sql}",
                &f
            ),
            "c backup s1 2 '/tmp/a b' d /data /bin/sqlcmd {sql}"
        );
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        let j = junit(&[Outcome {
            name: "x".into(),
            what: "y".into(),
            verdict: Verdict::Fail("a <b> & \"c\"".into()),
            seconds: 0.5,
            evidence: "e".into(),
            phase: "backup",
            fault: "",
            options: "",
            expect_success: true,
        }]);
        assert!(j.contains("failures=\"1\""));
        assert!(j.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
    }
}
