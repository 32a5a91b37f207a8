//! A reference VDI client, the kind a backup application is: it creates the virtual
//! device set, lets the server (SQL Server, or openvdi's engine) open it, and keeps
//! each device's stream in a plain file — `DIR/dev0.bin`, `DIR/dev1.bin`, … — on
//! backup, serving them back on restore. It exists to show what a conforming client
//! does and to be run through `openvdi-engine conformance`.
//!
//! ```text
//! openvdi-vdiclient backup|restore --set NAME [--stripes N] --dir DIR
//!                   [--timeout-ms MS] [--no-request-complete] [--defect DEFECT]
//! ```
//!
//! `--defect` makes it misbehave in one of the ways real clients do, so the
//! conformance kit's tests can show that each is caught (see docs/CONFORMANCE.md):
//! `flush-before-write`, `first-flush-only`, `ignores-complete`, `read-size-assumed`,
//! `rewind-ok`, `exit0-after-abort`, `no-close`, `timeout-fatal`, `corrupt-restore`,
//! `hang-on-abort`.
//!
//! Exit status: 0 when the server closed every device after a complete operation, 1
//! when the operation failed (aborted, a device error), 2 for a bad command line.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openvdi::{vdc, vdf, win32, ClientDevice, ClientSet, Error, Timeout, VdConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    None,
    FlushBeforeWrite,
    FirstFlushOnly,
    IgnoresComplete,
    ReadSizeAssumed,
    RewindOk,
    Exit0AfterAbort,
    NoClose,
    TimeoutFatal,
    CorruptRestore,
    HangOnAbort,
}

impl Defect {
    fn parse(s: &str) -> Option<Defect> {
        Some(match s {
            "flush-before-write" => Defect::FlushBeforeWrite,
            "first-flush-only" => Defect::FirstFlushOnly,
            "ignores-complete" => Defect::IgnoresComplete,
            "read-size-assumed" => Defect::ReadSizeAssumed,
            "rewind-ok" => Defect::RewindOk,
            "exit0-after-abort" => Defect::Exit0AfterAbort,
            "no-close" => Defect::NoClose,
            "timeout-fatal" => Defect::TimeoutFatal,
            "corrupt-restore" => Defect::CorruptRestore,
            "hang-on-abort" => Defect::HangOnAbort,
            _ => return None,
        })
    }
}

struct Opts {
    restore: bool,
    set: String,
    stripes: u32,
    dir: PathBuf,
    timeout: Duration,
    request_complete: bool,
    defect: Defect,
}

fn usage(why: &str) -> ! {
    eprintln!("openvdi-vdiclient: {why}");
    eprintln!(
        "usage: openvdi-vdiclient backup|restore --set NAME [--stripes N] --dir DIR \
         [--timeout-ms MS] [--no-request-complete] [--defect DEFECT]"
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut args = std::env::args().skip(1);
    let restore = match args.next().as_deref() {
        Some("backup") => false,
        Some("restore") => true,
        _ => usage("the first argument is backup or restore"),
    };
    let mut o = Opts {
        restore,
        set: String::new(),
        stripes: 1,
        dir: PathBuf::new(),
        timeout: Duration::from_secs(60),
        request_complete: true,
        defect: Defect::None,
    };
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--set" => o.set = val(),
            "--stripes" => {
                o.stripes = val()
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .unwrap_or_else(|| usage("--stripes is 1..=64"))
            }
            "--dir" => o.dir = PathBuf::from(val()),
            "--timeout-ms" => {
                o.timeout = Duration::from_millis(
                    val()
                        .parse()
                        .unwrap_or_else(|_| usage("--timeout-ms is a number")),
                )
            }
            "--no-request-complete" => o.request_complete = false,
            "--defect" => {
                let d = val();
                o.defect =
                    Defect::parse(&d).unwrap_or_else(|| usage(&format!("unknown defect {d}")))
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if o.set.is_empty() || o.dir.as_os_str().is_empty() {
        usage("--set and --dir are required");
    }
    if o.defect == Defect::TimeoutFatal {
        o.timeout = Duration::from_millis(50);
    }
    o
}

fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_string()
    } else {
        format!("{set}{i}")
    }
}

/// How one device's command loop ended.
enum End {
    /// The server closed the device: the operation is over on this device.
    Closed,
    /// The set was aborted or a device call failed.
    Failed(String),
}

/// The storage of one device's stream.
struct Store {
    file: File,
    /// `flush-before-write`: bytes held back until the device closes.
    held: Vec<u8>,
    /// `read-size-assumed`: the sizes of the writes, replayed as the read sizes.
    sizes: Vec<u32>,
    sizes_path: PathBuf,
}

fn run_device(o: &Opts, dev: &ClientDevice, path: &Path) -> End {
    let file = if o.restore {
        File::open(path)
    } else {
        File::create(path)
    };
    let file = match file {
        Ok(f) => f,
        Err(e) => return End::Failed(format!("{}: {e}", path.display())),
    };
    let sizes_path = path.with_extension("sizes");
    let sizes = if o.restore && o.defect == Defect::ReadSizeAssumed {
        std::fs::read_to_string(&sizes_path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    let mut st = Store {
        file,
        held: Vec::new(),
        sizes,
        sizes_path,
    };
    let mut flushes = 0u32;
    let mut reads = 0u64;
    loop {
        let mut cmd = match dev.get_command(Timeout::from_duration(o.timeout)) {
            Ok(c) => c,
            Err(Error::Timeout) if o.defect == Defect::TimeoutFatal => {
                return End::Failed("GetCommand timed out (treated as fatal)".into())
            }
            Err(Error::Timeout) => continue,
            Err(Error::Close) => {
                if !st.held.is_empty() {
                    let held = std::mem::take(&mut st.held);
                    if let Err(e) = st.file.write_all(&held) {
                        return End::Failed(format!("{}: {e}", path.display()));
                    }
                }
                if o.defect == Defect::ReadSizeAssumed && !o.restore {
                    let text: Vec<String> = st.sizes.iter().map(u32::to_string).collect();
                    let _ = std::fs::write(&st.sizes_path, text.join(" "));
                }
                let _ = st.file.sync_all();
                return End::Closed;
            }
            Err(e) => return End::Failed(format!("GetCommand on {}: {e}", dev.name())),
        };
        let size = cmd.size() as usize;
        let (code, bytes) = match cmd.code() {
            vdc::VDC_Write => {
                st.sizes.push(cmd.size());
                let data = &cmd.buffer()[..size];
                let r = if o.defect == Defect::FlushBeforeWrite {
                    st.held.extend_from_slice(data);
                    Ok(())
                } else {
                    st.file.write_all(data)
                };
                match r {
                    Ok(()) => (win32::ERROR_SUCCESS, size as u32),
                    Err(_) => (win32::ERROR_DISK_FULL, 0),
                }
            }
            vdc::VDC_Read => {
                reads += 1;
                let want = if o.defect == Defect::ReadSizeAssumed && !st.sizes.is_empty() {
                    st.sizes.remove(0) as usize
                } else {
                    size
                };
                let mut tmp = vec![0u8; want];
                let mut got = 0;
                while got < want {
                    match st.file.read(&mut tmp[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) => return End::Failed(format!("{}: {e}", path.display())),
                    }
                }
                // `read-size-assumed` drops what does not fit the server's buffer.
                let n = got.min(size);
                let buf = cmd.buffer_mut();
                buf[..n].copy_from_slice(&tmp[..n]);
                if o.defect == Defect::CorruptRestore && reads == 3 && n > 0 {
                    buf[n / 2] ^= 0x40;
                }
                if n < size {
                    (win32::ERROR_HANDLE_EOF, n as u32)
                } else {
                    (win32::ERROR_SUCCESS, n as u32)
                }
            }
            vdc::VDC_Flush => {
                flushes += 1;
                if o.defect == Defect::FirstFlushOnly && flushes > 1 {
                    // Never answered: the client thinks the backup ended at the first.
                    continue;
                }
                match st.file.sync_data() {
                    Ok(()) => (win32::ERROR_SUCCESS, 0),
                    Err(_) => (win32::ERROR_WRITE_FAULT, 0),
                }
            }
            vdc::VDC_Complete if o.defect == Defect::IgnoresComplete => {
                (win32::ERROR_NOT_SUPPORTED, 0)
            }
            vdc::VDC_Complete => match st.file.sync_all() {
                Ok(()) => (win32::ERROR_SUCCESS, 0),
                Err(_) => (win32::ERROR_WRITE_FAULT, 0),
            },
            vdc::VDC_ClearError => (win32::ERROR_SUCCESS, 0),
            vdc::VDC_Rewind if o.defect == Defect::RewindOk => (win32::ERROR_SUCCESS, 0),
            // A pipe-like device supports nothing else (reference §6.1).
            _ => (win32::ERROR_NOT_SUPPORTED, 0),
        };
        if let Err(e) = dev.complete_command(&cmd, code, bytes, 0) {
            return End::Failed(format!("CompleteCommand on {}: {e}", dev.name()));
        }
    }
}

fn main() {
    let o = parse();
    if !o.restore {
        if let Err(e) = std::fs::create_dir_all(&o.dir) {
            eprintln!("openvdi-vdiclient: {}: {e}", o.dir.display());
            std::process::exit(1);
        }
    }
    let cfg = VdConfig {
        device_count: o.stripes,
        features: if o.request_complete {
            vdf::VDF_RequestComplete
        } else {
            0
        },
        ..Default::default()
    };
    let set = match ClientSet::create(&o.set, &cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("openvdi-vdiclient: Create({}): {e}", o.set);
            std::process::exit(1);
        }
    };
    // The server has its own open timeout; ours is a minute, retried per slice.
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        match set.get_configuration(Timeout::from_millis(200)) {
            Err(Error::Timeout) if Instant::now() < deadline => continue,
            r => break r,
        }
    };
    let outcome: Result<(), String> = match got {
        Err(e) => Err(format!("GetConfiguration: {e}")),
        Ok(c) if (c.features & vdf::VDF_ReadMedia != 0) != o.restore => {
            Err("the server opened the set in the other direction".into())
        }
        Ok(_) => {
            let devices: Result<Vec<ClientDevice>, String> = (0..o.stripes)
                .map(|i| {
                    let n = device_name(&o.set, i);
                    set.open_device(&n)
                        .map_err(|e| format!("OpenDevice({n}): {e}"))
                })
                .collect();
            match devices {
                Err(e) => Err(e),
                Ok(devices) => {
                    let ends: Vec<End> = std::thread::scope(|s| {
                        let hs: Vec<_> = devices
                            .iter()
                            .enumerate()
                            .map(|(i, d)| {
                                let path = o.dir.join(format!("dev{i}.bin"));
                                let o = &o;
                                s.spawn(move || run_device(o, d, &path))
                            })
                            .collect();
                        hs.into_iter()
                            .map(|h| {
                                h.join()
                                    .unwrap_or(End::Failed("device thread panicked".into()))
                            })
                            .collect()
                    });
                    match ends.into_iter().find_map(|e| match e {
                        End::Failed(why) => Some(why),
                        End::Closed => None,
                    }) {
                        Some(why) => Err(why),
                        None => Ok(()),
                    }
                }
            }
        }
    };
    let code = match &outcome {
        Ok(()) => 0,
        Err(why) => {
            eprintln!("openvdi-vdiclient: {why}");
            let _ = set.signal_abort();
            match o.defect {
                Defect::HangOnAbort => loop {
                    std::thread::sleep(Duration::from_secs(1));
                },
                Defect::Exit0AfterAbort => 0,
                _ => 1,
            }
        }
    };
    if o.defect == Defect::NoClose {
        // Exits with the set's objects still in place: a leak the kit must notice.
        std::process::exit(code);
    }
    if let Err(e) = set.close() {
        eprintln!("openvdi-vdiclient: Close: {e}");
        std::process::exit(1);
    }
    if code == 0 {
        println!("{} done", if o.restore { "restore" } else { "backup" });
    }
    std::process::exit(code)
}
