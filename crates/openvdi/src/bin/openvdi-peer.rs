//! A scripted peer for the multi-process tests of `openvdi` (tests/processes.rs):
//! it plays the server (what SQL Server does), a client, or a secondary client, in
//! its own process, driven by `key=value` arguments, and reports on stdout as
//! `key=value` lines. It is a test tool, not part of the library's interface.
//!
//! Stream content is deterministic: byte `i` of device `d` is [`stream_byte`].

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Duration;

use openvdi::*;

fn stream_byte(seed: u64, dev: usize, i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_add(dev as u64 * 0x1234_5678);
    (x >> 29) as u8 ^ (i as u8)
}

fn say(line: impl AsRef<str>) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{}", line.as_ref());
    let _ = o.flush();
}

fn code(r: &Result<impl Sized>) -> String {
    match r {
        Ok(_) => "OK".into(),
        Err(e) => e.hresult().name().to_string(),
    }
}

fn dev_name(set: &str, i: usize) -> String {
    if i == 0 {
        set.to_string()
    } else {
        format!("{set}{i}")
    }
}

/// Touch `mib` MiB so the process is big when killed.
fn hold(mib: usize) -> Vec<u8> {
    let mut v = vec![0u8; mib << 20];
    for p in v.chunks_mut(4096) {
        p[0] = 1;
    }
    v
}

fn wait_stdin_line() -> String {
    let mut s = String::new();
    let _ = std::io::stdin().lock().read_line(&mut s);
    s.trim().to_string()
}

struct Args(HashMap<String, String>);
impl Args {
    fn s(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_string())
    }
    fn n(&self, k: &str, d: u64) -> u64 {
        self.0
            .get(k)
            .map(|v| v.parse().expect("number"))
            .unwrap_or(d)
    }
}

fn server(a: &Args) {
    let name = a.s("set", "");
    let mode = a.s("mode", "backup");
    let total = a.n("total", 1 << 20);
    let xfer = a.n("xfer", 65536) as u32;
    let depth = a.n("depth", 4) as usize;
    let seed = a.n("seed", 1);
    let abort_after = a.n("abort_after", u64::MAX);
    // Send at most this many commands per device, then wait (kill tests).
    let stall_after = a.n("stall_after", u64::MAX);
    let _mem = hold(a.n("hold_mib", 0) as usize);
    let s = match ServerSet::open(&name, Timeout::from_millis(a.n("open_ms", 10_000) as i64)) {
        Ok(s) => s,
        Err(e) => {
            say(format!("open={}", e.hresult().name()));
            return;
        }
    };
    if a.s("stop_at", "") == "open" {
        // Die (the test kills us) before configuring: the client is in GetConfiguration.
        say("set_open=1");
        let _ = wait_stdin_line();
        return;
    }
    let client = s.get_configuration().expect("client config");
    let n = client.device_count as usize;
    let mut features = if mode == "backup" {
        vdf::VDF_WriteMedia
    } else {
        vdf::VDF_ReadMedia
    };
    if client.features & vdf::VDF_RequestComplete != 0 {
        features |= vdf::VDF_CompleteEnabled;
    }
    s.begin_configuration(&ServerConfig {
        features,
        block_size: 512,
        alignment: 0,
        max_transfer_size: xfer.div_ceil(65536) * 65536,
        timeout: Timeout::INFINITE,
        device_names: (0..n).map(|i| dev_name(&name, i)).collect(),
    })
    .expect("begin");
    s.request_buffers(xfer, 0, (depth * n) as u32)
        .expect("request");
    s.end_configuration().expect("end");
    say("configured=1");
    if a.s("close_early", "0") == "1" {
        // §10 "Server Close with devices open": open every device, wait for the
        // test's go, then Close without CloseDevice.
        let devs: Vec<_> = (0..n)
            .map(|i| s.open_device(&dev_name(&name, i)).expect("open device"))
            .collect();
        say("opened=1");
        let _ = wait_stdin_line();
        say(format!("server_close={}", code(&s.close())));
        drop(devs);
        return;
    }
    let results: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..n)
            .map(|di| {
                let s = &s;
                let name = &name;
                let mode = &mode;
                sc.spawn(move || -> String {
                    let d = s.open_device(&dev_name(name, di)).expect("open device");
                    let mut bufs: Vec<ServerBuffer> = (0..depth).map(|_| s.allocate_buffer(xfer, 0).expect("alloc")).collect();
                    let mut free: Vec<usize> = (0..depth).collect();
                    let mut pos_sent = 0u64; // stream bytes asked for / sent
                    let mut done_bytes = 0u64;
                    let mut completions = 0u64;
                    let mut sent_cmds = 0u64;
                    let mut send_err = "OK";
                    let mut aborted_995 = 0u64;
                    let mut mismatch = 0u64;
                    let mut eof = false;
                    let mut offsets: HashMap<usize, u64> = HashMap::new();
                    loop {
                        // Keep up to `depth` commands in flight.
                        while !eof && !free.is_empty() && (mode == "restore" || pos_sent < total) && sent_cmds < stall_after {
                            let i = free.pop().expect("free buffer");
                            let len = if mode == "backup" { (total - pos_sent).min(u64::from(xfer)) as u32 } else { xfer };
                            if mode == "backup" {
                                for (k, b) in bufs[i].as_mut_slice()[..len as usize].iter_mut().enumerate() {
                                    *b = stream_byte(seed, di, pos_sent + k as u64);
                                }
                            }
                            let c = if mode == "backup" { vdc::VDC_Write } else { vdc::VDC_Read };
                            match d.send_command(&ServerCommand { code: c, size: len, position: 0, buffer: Some(&bufs[i]), tag: i as u64 }) {
                                Ok(()) => {}
                                Err(e) => {
                                    // Stop sending; still reap what is outstanding.
                                    send_err = e.hresult().name();
                                    free.push(i);
                                    eof = true;
                                    break;
                                }
                            }
                            sent_cmds += 1;
                            offsets.insert(i, pos_sent);
                            pos_sent += u64::from(len);
                            if mode == "restore" {
                                // Reads are issued speculatively; only completions move the stream.
                            }
                        }
                        if d.outstanding() == 0 {
                            break;
                        }
                        let c = match d.wait_completion(Timeout::from_millis(60_000)) {
                            Ok(c) => c,
                            Err(e) => {
                                return format!("dev={di} wait={} send={send_err} completions={completions} aborted995={aborted_995}", e.hresult().name());
                            }
                        };
                        completions += 1;
                        if completions == abort_after && di == 0 {
                            s.signal_abort().expect("abort");
                            say("signalled=1");
                        }
                        let i = c.tag as usize;
                        if c.completion_code == win32::ERROR_OPERATION_ABORTED {
                            aborted_995 += 1;
                            continue;
                        }
                        if mode == "restore" {
                            let off = done_bytes;
                            let got = c.bytes_transferred.min(xfer) as usize;
                            for (k, b) in bufs[i].as_slice()[..got].iter().enumerate() {
                                if *b != stream_byte(seed, di, off + k as u64) {
                                    mismatch += 1;
                                }
                            }
                            done_bytes += got as u64;
                            if c.completion_code == win32::ERROR_HANDLE_EOF || c.completion_code == win32::ERROR_NO_DATA_DETECTED || (got as u32) < xfer {
                                eof = true;
                            } else if c.completion_code != 0 {
                                return format!("dev={di} completion={}", c.completion_code);
                            }
                        } else {
                            if c.completion_code != 0 {
                                return format!("dev={di} completion={}", c.completion_code);
                            }
                            done_bytes += u64::from(c.bytes_transferred);
                        }
                        let _ = offsets.remove(&i);
                        free.push(i);
                    }
                    if sent_cmds >= stall_after {
                        // Stalled after sending `stall_after` commands, all completed:
                        // block until the test kills us or says to go on.
                        let _ = wait_stdin_line();
                        return format!("dev={di} stalled");
                    }
                    let flush = d.send_command(&ServerCommand { code: vdc::VDC_Flush, size: 0, position: 0, buffer: None, tag: 999 });
                    let fl = flush.and_then(|_| d.wait_completion(Timeout::from_millis(60_000)));
                    let mut complete = String::new();
                    if features & vdf::VDF_CompleteEnabled != 0 {
                        let r = d.send_command(&ServerCommand { code: vdc::VDC_Complete, size: 0, position: 0, buffer: None, tag: 1000 }).and_then(|_| d.wait_completion(Timeout::from_millis(60_000)));
                        complete = format!(" complete={}", r.map(|c| c.completion_code.to_string()).unwrap_or_else(|e| e.hresult().name().into()));
                    }
                    let cl = d.close();
                    for b in bufs.drain(..) {
                        let _ = s.free_buffer(b);
                    }
                    format!(
                        "dev={di} bytes={done_bytes} mismatch={mismatch} aborted995={aborted_995} send={send_err} flush={} close={}{complete}",
                        fl.map(|c| c.completion_code.to_string()).unwrap_or_else(|e| e.hresult().name().into()),
                        code(&cl)
                    )
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| "panic".into()))
            .collect()
    });
    for r in results {
        say(r);
    }
    if a.s("stay", "0") == "1" {
        say("waiting=1");
        let _ = wait_stdin_line();
    }
    say(format!("server_close={}", code(&s.close())));
}

/// A client: creates the set, takes commands and prints `took=N code=C` lines;
/// stops completing after `take` commands (the test kills it or the server), fails
/// the `fail_at`-th command with ERROR_WRITE_FAULT (IO-ERROR tests), and with
/// `wait_go=1` opens its device, says `opened=1` and waits for a line on stdin
/// before taking anything (so the test can queue commands first).
fn client(a: &Args) {
    let name = a.s("set", "");
    let devices = a.n("devices", 1) as u32;
    let take = a.n("take", u64::MAX);
    let fail_at = a.n("fail_at", u64::MAX);
    let _mem = hold(a.n("hold_mib", 0) as usize);
    let set = match ClientSet::create(
        &name,
        &VdConfig {
            device_count: devices,
            server_time_out: a.n("sto", 0) as u32,
            ..Default::default()
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            say(format!("create={}", e.hresult().name()));
            return;
        }
    };
    say("created=1");
    if a.s("then", "") == "exit-without-close" {
        // Die holding the set, as a crash would (the test kills us).
        say("holding=1");
        let _ = wait_stdin_line();
        std::process::abort();
    }
    let cfg = match set.get_configuration(Timeout::from_millis(a.n("config_ms", 10_000) as i64)) {
        Ok(c) => c,
        Err(e) => {
            say(format!(
                "config={} why={}",
                e.hresult().name(),
                e.to_string().replace(' ', "_")
            ));
            say(format!("close={}", code(&set.close())));
            return;
        }
    };
    say(format!("features={}", cfg.features));
    let d = set.open_device(&name).expect("open device");
    // A hostile client: completes command `lie_at` claiming this many bytes.
    let lie_at = a.n("lie_at", u64::MAX);
    let lie_bytes = a.n("lie_bytes", u64::from(u32::MAX)) as u32;
    // Restore streams end here: reads from this command on return end of data.
    let eof_after = a.n("eof_after", u64::MAX);
    if a.s("wait_go", "0") == "1" {
        say("opened=1");
        let _ = wait_stdin_line();
    }
    let mut n = 0u64;
    loop {
        match d.get_command(Timeout::from_millis(60_000)) {
            Ok(cmd) => {
                n += 1;
                say(format!("took={n} code={}", cmd.code()));
                if n >= take {
                    // Keep the command outstanding and block in GetCommand: the test
                    // kills the server (or us) while we are blocked here.
                    let t0 = now_ns();
                    let r = d.get_command(Timeout::from_millis(60_000));
                    say(format!(
                        "blocked_result={} at_ns={} blocked_ns={}",
                        code(&r),
                        now_ns(),
                        now_ns() - t0
                    ));
                    let _ = set.close();
                    say(format!("shm_left={}", shm_left(&name)));
                    return;
                }
                let (rc, bytes) = if n == fail_at {
                    (win32::ERROR_WRITE_FAULT, 0)
                } else if n == lie_at {
                    (win32::ERROR_SUCCESS, lie_bytes)
                } else if n >= eof_after && cmd.code() == vdc::VDC_Read {
                    (win32::ERROR_HANDLE_EOF, 0)
                } else {
                    (win32::ERROR_SUCCESS, cmd.size())
                };
                if let Err(e) = d.complete_command(&cmd, rc, bytes, 0) {
                    say(format!("end={}", e.hresult().name()));
                    break;
                }
            }
            Err(e) => {
                say(format!("end={}", e.hresult().name()));
                break;
            }
        }
    }
    let _ = set.close();
}

/// A secondary process: joins the set, maps a buffer handle, and either reads the
/// buffer (hashing it) or fills it with the stream.
fn secondary(a: &Args) {
    let name = a.s("set", "");
    let set = match ClientSet::open_in_secondary(&name) {
        Ok(s) => s,
        Err(e) => {
            say(format!("secondary={}", e.hresult().name()));
            return;
        }
    };
    let cfg = set
        .get_configuration(Timeout::from_millis(1000))
        .expect("configuration");
    // Every field, so the test can check a secondary sees the primary's configuration.
    say(format!(
        "secondary=OK config={}",
        format!("{cfg:?}").replace(' ', "")
    ));
    loop {
        let line = wait_stdin_line();
        if line.is_empty() || line == "exit" {
            break;
        }
        let mut it = line.split_whitespace();
        let op = it.next().unwrap_or("");
        let handle: u32 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let len: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let off: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match set.map_buffer_handle(handle) {
            Ok(m) => {
                if m.len < len {
                    say("map=SHORT");
                    continue;
                }
                // Copy through the library's bounds-checked accessors: this tool has no unsafe.
                let bytes = m.to_vec(len);
                match op {
                    "read" => {
                        let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
                            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
                        });
                        say(format!("map=OK hash={h}"));
                    }
                    "fill" => {
                        let data: Vec<u8> = (0..len as u64)
                            .map(|i| stream_byte(7, 0, off + i))
                            .collect();
                        m.copy_from(&data);
                        say("map=OK filled=1");
                    }
                    _ => say("map=BADOP"),
                }
            }
            Err(e) => say(format!("map={}", e.hresult().name())),
        }
    }
    say(format!("secondary_close={}", code(&set.close())));
}

fn now_ns() -> u64 {
    openvdi::monotonic_ns()
}

fn shm_left(set: &str) -> usize {
    std::fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .ends_with(&format!(".{set}"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().cloned().unwrap_or_default();
    let map = Args(
        args.iter()
            .skip(1)
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect(),
    );
    match role.as_str() {
        "server" => server(&map),
        "client" => client(&map),
        "secondary" => secondary(&map),
        _ => {
            eprintln!("usage: openvdi-peer server|client|secondary key=value…");
            std::process::exit(2);
        }
    }
    let _ = Duration::ZERO;
}
