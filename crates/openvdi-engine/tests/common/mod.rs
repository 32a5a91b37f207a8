//! A VDI client for the engine's tests, built on the core crate's client half: it
//! creates a set, answers the engine's commands on one thread per device and
//! records what it saw. Every wait has a deadline; a client that runs past its
//! deadline aborts the set, so no test can hang.

#![allow(dead_code)]

pub mod endpoint;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openvdi::{vdc, vdf, win32, ClientSet, Error, HResult, Timeout, VdConfig};

/// How long any client waits for anything before giving up.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A unique set name for this test process.
pub fn set_name(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "ovt-{tag}-{}-{}-{t}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Device names as Microsoft's samples make them: the set name, then `{set}1`, …
pub fn device_names(set: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == 0 {
                set.to_string()
            } else {
                format!("{set}{i}")
            }
        })
        .collect()
}

/// `VIRTUAL_DEVICE='a', VIRTUAL_DEVICE='b' …`
pub fn device_clause(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("VIRTUAL_DEVICE='{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a restore client ends its streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EofStyle {
    /// ERROR_HANDLE_EOF with the partial count (MS samples).
    HandleEof,
    /// ERROR_NO_DATA_DETECTED.
    NoData,
    /// ERROR_SUCCESS with a short count (Bareos, mssqlPipe).
    ShortSuccess,
}

/// Client behaviour.
#[derive(Clone, Debug)]
pub struct ClientOpts {
    /// VDConfig.features.
    pub features: u32,
    /// VDConfig.serverTimeOut (ms).
    pub server_time_out: u32,
    /// GetCommand timeout; on VD_E_TIMEOUT the client counts it and retries (or gives
    /// up, see `abort_on_timeout`).
    pub get_command_timeout: Timeout,
    /// After this many VD_E_TIMEOUTs in a row, SignalAbort and stop.
    pub abort_on_timeout: Option<u32>,
    /// Completion code for commands the client does not support.
    pub unsupported_code: u32,
    /// Stop completing after this many commands (on device 0): wait for the abort.
    pub stall_after: Option<usize>,
    /// Told once, when device 0 starts to stall (so a test can act mid-transfer on
    /// that condition rather than after a guessed delay).
    pub stalled: Option<std::sync::mpsc::SyncSender<()>>,
    /// Restore streams end like this.
    pub eof: EofStyle,
    /// Complete VDC_Complete with this code.
    pub complete_code: u32,
}

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            features: 0,
            server_time_out: 0,
            get_command_timeout: Timeout::from_millis(DEADLINE.as_millis() as i64),
            abort_on_timeout: None,
            unsupported_code: win32::ERROR_NOT_SUPPORTED,
            stall_after: None,
            stalled: None,
            eof: EofStyle::HandleEof,
            complete_code: 0,
        }
    }
}

/// What one device saw.
#[derive(Debug, Default, Clone)]
pub struct DeviceLog {
    /// Data written (backup).
    pub data: Vec<u8>,
    /// Command codes in order.
    pub commands: Vec<u32>,
    /// Sizes of data commands.
    pub sizes: Vec<u32>,
    /// VD_E_TIMEOUTs seen.
    pub timeouts: u32,
    /// How the device loop ended: Ok (VD_E_CLOSE) or the error's HRESULT.
    pub end: Option<Result<(), HResult>>,
}

/// The configuration the client got (or why not) and what each device saw.
pub type ClientResult = (Result<VdConfig, HResult>, Vec<DeviceLog>);

/// A running client.
pub struct Client {
    pub set: Arc<ClientSet>,
    pub name: String,
    pub devices: Vec<String>,
    handle: Option<JoinHandle<ClientResult>>,
}

impl Client {
    /// Create a set of `n` devices and serve it. `streams`: for a restore, the bytes
    /// to feed each device; empty for a backup.
    pub fn start(tag: &str, n: usize, opts: ClientOpts, streams: Vec<Vec<u8>>) -> Client {
        let name = set_name(tag);
        Client::start_named(&name, n, opts, streams)
    }

    /// As [`Client::start`] with a given set name.
    pub fn start_named(name: &str, n: usize, opts: ClientOpts, streams: Vec<Vec<u8>>) -> Client {
        let cfg = VdConfig {
            device_count: n as u32,
            features: opts.features,
            server_time_out: opts.server_time_out,
            ..Default::default()
        };
        let set = Arc::new(ClientSet::create(name, &cfg).expect("create the virtual device set"));
        let devices = device_names(name, n);
        let s2 = set.clone();
        let names = devices.clone();
        let handle = std::thread::spawn(move || serve(s2, names, opts, streams));
        Client {
            set,
            name: name.to_string(),
            devices,
            handle: Some(handle),
        }
    }

    /// Wait for the client to finish (bounded by its own deadline) and close the set.
    pub fn finish(mut self) -> ClientResult {
        let r = self
            .handle
            .take()
            .expect("joined once")
            .join()
            .expect("client thread panicked");
        let _ = self.set.close();
        r
    }
}

fn serve(
    set: Arc<ClientSet>,
    names: Vec<String>,
    opts: ClientOpts,
    streams: Vec<Vec<u8>>,
) -> ClientResult {
    let start = Instant::now();
    let cfg = loop {
        match set.get_configuration(Timeout::from_millis(1000)) {
            Ok(c) => break c,
            Err(Error::Timeout) if start.elapsed() < DEADLINE => continue,
            Err(e) => {
                let _ = set.signal_abort();
                return (Err(e.hresult()), Vec::new());
            }
        }
    };
    let logs: Vec<Mutex<DeviceLog>> = names
        .iter()
        .map(|_| Mutex::new(DeviceLog::default()))
        .collect();
    std::thread::scope(|s| {
        for (i, n) in names.iter().enumerate() {
            let set = &set;
            let opts = &opts;
            let log = &logs[i];
            let stream = streams.get(i).cloned().unwrap_or_default();
            s.spawn(move || {
                let end = device_loop(set, n, i, opts, &stream, log, start);
                log.lock().unwrap().end = Some(end);
            });
        }
    });
    (
        Ok(cfg),
        logs.into_iter().map(|m| m.into_inner().unwrap()).collect(),
    )
}

fn device_loop(
    set: &ClientSet,
    name: &str,
    index: usize,
    opts: &ClientOpts,
    stream: &[u8],
    log: &Mutex<DeviceLog>,
    start: Instant,
) -> Result<(), HResult> {
    let dev = set.open_device(name).map_err(|e| e.hresult())?;
    let mut pos = 0usize;
    let mut handled = 0usize;
    let mut timeouts_in_row = 0;
    loop {
        if start.elapsed() > DEADLINE {
            let _ = set.signal_abort();
            return Err(HResult::VD_E_TIMEOUT);
        }
        let cmd = match dev.get_command(opts.get_command_timeout) {
            Ok(c) => c,
            Err(Error::Close) => return Ok(()),
            Err(Error::Timeout) => {
                log.lock().unwrap().timeouts += 1;
                timeouts_in_row += 1;
                if opts.abort_on_timeout.is_some_and(|n| timeouts_in_row >= n) {
                    let _ = set.signal_abort();
                    return Err(HResult::VD_E_TIMEOUT);
                }
                continue;
            }
            Err(e) => return Err(e.hresult()),
        };
        timeouts_in_row = 0;
        if index == 0 && opts.stall_after.is_some_and(|n| handled >= n) {
            // Never complete: wait (bounded) for the server to give up.
            if let Some(tx) = &opts.stalled {
                let _ = tx.try_send(());
            }
            loop {
                match dev.get_command(Timeout::from_millis(200)) {
                    Err(Error::Timeout) if start.elapsed() < DEADLINE => continue,
                    Err(e) => return Err(e.hresult()),
                    Ok(_) => continue,
                }
            }
        }
        handled += 1;
        let mut cmd = cmd;
        let code = cmd.code();
        {
            let mut l = log.lock().unwrap();
            l.commands.push(code);
            if code == vdc::VDC_Write || code == vdc::VDC_Read {
                l.sizes.push(cmd.size());
            }
        }
        let (cc, bytes) = match code {
            vdc::VDC_Write => {
                log.lock().unwrap().data.extend_from_slice(cmd.buffer());
                (win32::ERROR_SUCCESS, cmd.size())
            }
            vdc::VDC_Read => {
                let want = cmd.size() as usize;
                let k = want.min(stream.len() - pos);
                cmd.buffer_mut()[..k].copy_from_slice(&stream[pos..pos + k]);
                pos += k;
                if k < want {
                    let c = match opts.eof {
                        EofStyle::HandleEof => win32::ERROR_HANDLE_EOF,
                        EofStyle::NoData => win32::ERROR_NO_DATA_DETECTED,
                        EofStyle::ShortSuccess => win32::ERROR_SUCCESS,
                    };
                    (c, k as u32)
                } else {
                    (win32::ERROR_SUCCESS, k as u32)
                }
            }
            vdc::VDC_Flush | vdc::VDC_ClearError => (win32::ERROR_SUCCESS, 0),
            vdc::VDC_Complete => (opts.complete_code, 0),
            _ => (opts.unsupported_code, 0),
        };
        match dev.complete_command(&cmd, cc, bytes, 0) {
            Ok(()) => {}
            Err(e) => return Err(e.hresult()),
        }
    }
}

/// A fresh data directory.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mssql")
}

/// The engine binary.
pub fn engine_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_openvdi-engine"))
}

/// A child process killed when dropped (so a failing test leaves nothing behind).
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Start `openvdi-engine exec SQL` on `dir` with extra environment.
    pub fn engine_exec(dir: &Path, sql: &str, env: &[(&str, &str)]) -> ChildGuard {
        let mut c = Command::new(engine_bin());
        c.arg("--data-dir")
            .arg(dir)
            .arg("exec")
            .arg(sql)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.env_remove("OPENVDI_FAULT");
        for (k, v) in env {
            c.env(k, v);
        }
        ChildGuard(Some(c.spawn().expect("spawn openvdi-engine")))
    }

    /// Wait (bounded) for the child: exit status and stdout.
    pub fn wait(mut self) -> (Option<i32>, String, String) {
        let mut child = self.0.take().expect("child");
        let start = Instant::now();
        loop {
            match child.try_wait().expect("try_wait") {
                Some(_) => break,
                None if start.elapsed() > DEADLINE => {
                    let _ = child.kill();
                    panic!("openvdi-engine did not finish within {DEADLINE:?}");
                }
                None => {
                    // Polling a child's exit has no blocking-with-timeout API in std.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let out = child.wait_with_output().expect("output");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The messages of an outcome as text, for assertions.
pub fn texts(outs: &[openvdi_engine::Output]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            openvdi_engine::Output::Message(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

/// Whether features request VDC_Complete.
pub fn wants_complete() -> u32 {
    vdf::VDF_RequestComplete
}

/// Run `openvdi-engine --data-dir DIR ARGS…` to completion (bounded by the
/// harness's deadline): exit status and stdout + stderr.
#[allow(dead_code)]
pub fn run_engine(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new(engine_bin());
    c.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("OPENVDI_FAULT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (code, out, err) = ChildGuard(Some(c.spawn().expect("spawn openvdi-engine"))).wait();
    (code, format!("{out}{err}"))
}
