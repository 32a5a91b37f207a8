//! `openvdi-engine serve` for the TDS tests, in its own process: started on a free
//! loopback port, killed (by its process id) when dropped. Shared by the engine's
//! driver tests (`tds_drivers.rs`, `tds_tiberius.rs`) and the CLI's `wire.rs`, which
//! includes this file with `#[path]` (it needs nothing but std for that reason).

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running endpoint.
pub struct Endpoint {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    stderr: PathBuf,
}

impl Endpoint {
    /// `bin --data-dir DIR serve --listen 127.0.0.1:0 --login U:P… ARGS…`; waits
    /// (at most 30 s) for its first line, "listening on ADDR". Its stderr goes to
    /// `DIR/serve.stderr` ([`Endpoint::log`]).
    pub fn start<S: AsRef<OsStr>>(
        bin: &Path,
        dir: &Path,
        logins: &[(&str, &str)],
        args: &[S],
    ) -> Endpoint {
        let stderr = dir.join("serve.stderr");
        let mut cmd = Command::new(bin);
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["serve", "--listen", "127.0.0.1:0"]);
        for (user, password) in logins {
            cmd.arg("--login").arg(format!("{user}:{password}"));
        }
        let mut child = cmd
            .args(args)
            .env_remove("OPENVDI_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn openvdi-engine serve");
        let out = child.stdout.take().expect("stdout");
        // From here on the child is killed if anything below panics.
        let mut ep = Endpoint {
            child,
            port: 0,
            stderr,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("serve did not say where it listens: {}", ep.log()));
        ep.port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}: {}", ep.log()));
        ep
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts no shared-memory object whose name contains `set` is left in /dev/shm
/// (an aborted set is removed by both sides).
pub fn no_set_left(set: &str) {
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(set))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}
