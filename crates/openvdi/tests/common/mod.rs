//! Test harness: spawn `openvdi-peer` as a real separate process, read its
//! `key=value` lines with deadlines, and kill it if the test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub struct Peer {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Peer {
    pub fn spawn(role: &str, args: &[String]) -> Peer {
        Peer::spawn_env(role, args, &[])
    }

    /// [`Peer::spawn`] with extra environment variables.
    pub fn spawn_env(role: &str, args: &[String], env: &[(&str, String)]) -> Peer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_openvdi-peer"));
        cmd.arg(role)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        Peer::from_command(cmd)
    }

    /// Spawn a prepared command (stdin and stdout piped).
    pub fn from_command(mut cmd: Command) -> Peer {
        let mut child = cmd.spawn().expect("spawn openvdi-peer");
        let out = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Peer {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The next line starting with `prefix`, within `secs` seconds.
    pub fn expect(&mut self, prefix: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "peer: no line {prefix:?} within {secs} s; saw {:?}",
                    self.seen
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("peer exited before {prefix:?}; saw {:?}", self.seen)
                }
            }
        }
    }

    /// All remaining lines until the peer exits (bounded).
    pub fn rest(&mut self, secs: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut v = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    v.push(l)
                }
                Err(RecvTimeoutError::Disconnected) => return v,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("peer did not exit within {secs} s; saw {:?}", self.seen)
                }
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }

    pub fn kill9(&mut self) -> u64 {
        let t = openvdi::monotonic_ns();
        let _ = self.child.kill();
        t
    }

    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "peer did not exit within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn uniq(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn kv(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|p| p.strip_prefix(&format!("{key}=")).map(str::to_string))
}

pub fn stream_byte(seed: u64, dev: usize, i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_add(dev as u64 * 0x1234_5678);
    (x >> 29) as u8 ^ (i as u8)
}

pub fn shm_objects(set: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(&format!(".{set}")))
                .collect()
        })
        .unwrap_or_default()
}

pub fn a(kvs: &[(&str, String)]) -> Vec<String> {
    kvs.iter().map(|(k, v)| format!("{k}={v}")).collect()
}
