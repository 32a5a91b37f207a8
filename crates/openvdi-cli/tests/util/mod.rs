//! Test harness: runs the real `openvdi` binary in a scratch environment, with a
//! deadline on every run (the child is killed if it passes it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(240);

/// The password every test repository is created with (`Env::cmd` sets
/// `OPENVDI_PASSWORD`, so `init` makes an encrypted repository unless told not to).
pub const PASSWORD: &str = "correct horse battery staple";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mssql")
}

/// A scratch home, repository and engine data directory.
#[derive(Debug)]
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: String,
    pub data: PathBuf,
}

impl Env {
    /// A scratch environment whose repository has been created (`openvdi init`).
    pub fn new() -> Env {
        let e = Env::uninitialised();
        e.ok(&["--quiet", "init"]);
        e
    }

    /// A scratch environment whose repository stores backups in the clear
    /// (`init --no-encryption`): for tests that read or edit stored objects by hand.
    pub fn plain() -> Env {
        let e = Env::uninitialised();
        e.ok(&["--quiet", "init", "--no-encryption"]);
        e
    }

    /// A scratch environment with no repository yet (`--repo` names a location
    /// that does not exist).
    pub fn uninitialised() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo").display().to_string();
        let data = dir.path().join("engine");
        Env { dir, repo, data }
    }

    /// A scratch environment for the repository at `repo` (not created: an object
    /// store must be running first; run `init` through it).
    pub fn with_repo(repo: &str) -> Env {
        let mut e = Env::uninitialised();
        e.repo = repo.to_string();
        e
    }

    /// `openvdi --repo … --data-dir …` with a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_openvdi"));
        for (k, _) in std::env::vars() {
            if k.starts_with("OPENVDI_") {
                c.env_remove(k);
            }
        }
        c.env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("OPENVDI_PASSWORD", PASSWORD)
            // argon2id at 8 MiB, 1 pass: a test runs hundreds of commands.
            .env("OPENVDI_KDF_MEMORY_MIB", "8")
            .env("OPENVDI_KDF_ITERATIONS", "1")
            .arg("--repo")
            .arg(&self.repo)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd(args))
    }

    /// Runs and asserts the exit code; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.expect(args, 0)
    }

    pub fn expect(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "openvdi {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `--json` output parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json", "--quiet"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn backups(&self) -> Vec<serde_json::Value> {
        self.json(&["list"])["backups"].as_array().unwrap().clone()
    }
}

/// Kills the child when dropped (a failing test never leaves processes behind).
#[derive(Debug)]
pub struct Guard(pub Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `c` to exit, killing it at the deadline.
pub fn wait(mut g: Guard, deadline: Duration) -> Output {
    let child = g.0.take().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("process {pid} passed its deadline of {deadline:?}");
        }
    }
}

pub fn run(mut c: Command) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let g = Guard(Some(c.spawn().unwrap()));
    wait(g, DEADLINE)
}

/// Polls `cond` until true or the deadline passes.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sha(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

/// openvdi's own libsqlvdi.so, built on demand (another package's cdylib).
pub fn libsqlvdi() -> PathBuf {
    built_beside("openvdi-ffi", &["--lib"], "libsqlvdi.so")
}

/// openvdi-engine (for `serve`), built on demand.
pub fn engine_bin() -> PathBuf {
    built_beside(
        "openvdi-engine",
        &["--bin", "openvdi-engine"],
        "openvdi-engine",
    )
}

/// openvdi-sqlcmd, built on demand (it belongs to another package, so cargo does not
/// build it for this crate's tests).
pub fn sqlcmd() -> PathBuf {
    built_beside(
        "openvdi-engine",
        &["--bin", "openvdi-sqlcmd"],
        "openvdi-sqlcmd",
    )
}

/// Builds `what` of another package of the workspace and returns `file`, which cargo
/// puts beside this crate's `openvdi` binary.
fn built_beside(package: &str, what: &[&str], file: &str) -> PathBuf {
    let o = run({
        let mut c = std::process::Command::new(env!("CARGO"));
        c.args(["build", "-q", "-p", package])
            .args(what)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        c
    });
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = PathBuf::from(env!("CARGO_BIN_EXE_openvdi")).with_file_name(file);
    assert!(p.is_file(), "{} missing", p.display());
    p
}

/// A backup's chain facts (`openvdi backup --json`) are those HEADERONLY reads from
/// its stored stream (`openvdi inspect`).
pub fn assert_chain_matches_headeronly(e: &Env, b: &serde_json::Value, kind: &str) {
    let id = b["id"].as_str().unwrap();
    let h = &e.json(&["inspect", id])["header"][0];
    for (ours, theirs) in [
        ("first_lsn", "FirstLSN"),
        ("last_lsn", "LastLSN"),
        ("checkpoint_lsn", "CheckpointLSN"),
        ("database_backup_lsn", "DatabaseBackupLSN"),
        ("backup_set_guid", "BackupSetGUID"),
    ] {
        assert!(b["chain"][ours].is_string(), "{kind}: no {ours} in {b}");
        assert_eq!(b["chain"][ours], h[theirs], "{kind}: {ours}");
    }
}

/// The chain parent `list` gives backup `id`.
pub fn parent_of(e: &Env, id: &str) -> Option<String> {
    e.backups().iter().find(|m| m["id"] == id).unwrap()["chain"]["parent"]
        .as_str()
        .map(String::from)
}
