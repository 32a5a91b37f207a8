//! Benchmark: the engine's RESTORE through VDI from a client whose source costs
//! nothing (the backup stream held in memory), against the engine's files written
//! alone — the same bytes `pwrite` from memory in 1 MiB pieces and fsynced — in the
//! same run.
//!
//! ```sh
//! cargo run --release -p openvdi-engine --example restore_bench            # 1 GiB, 2 devices
//! cargo run --release -p openvdi-engine --example restore_bench -- 256M 4  # size, devices
//! ```
//!
//! The restore's time is the whole `RESTORE … WITH REPLACE` statement: opening the
//! set, reading the stream, writing and fsyncing the files, recovery, the catalog.
//! The client copies the stream into each `VDC_Read` buffer (a source can do no less)
//! and completes; nothing else. The baseline writes the database's files (the bytes
//! the restore puts there) to new files and fsyncs them, which is what the restore
//! must at least do. Both run five times, alternating, each after a `sync` so one's
//! write-back does not land on the other; the best of each is reported.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openvdi::{vdc, win32, ClientSet, Error, Timeout, VdConfig};
use openvdi_engine::{db, Engine};

fn device_names(name: &str, devices: usize) -> Vec<String> {
    (0..devices)
        .map(|i| {
            if i == 0 {
                name.to_string()
            } else {
                format!("{name}{i}")
            }
        })
        .collect()
}

/// Run `sql` (naming the set's devices) while a client thread per device runs
/// `serve`; returns what each device's `serve` returned.
fn with_client<T: Send>(
    engine: &Engine,
    name: &str,
    devices: usize,
    sql: &str,
    serve: impl Fn(usize, &openvdi::ClientDevice) -> T + Sync,
) -> (Vec<T>, Duration) {
    let cfg = VdConfig {
        device_count: devices as u32,
        ..Default::default()
    };
    let set = Arc::new(ClientSet::create(name, &cfg).expect("create set"));
    let names = device_names(name, devices);
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            set.get_configuration(Timeout::from_millis(60_000))
                .expect("configuration");
            std::thread::scope(|s| {
                let hs: Vec<_> = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let (set, serve) = (&set, &serve);
                        s.spawn(move || serve(i, &set.open_device(n).expect("open device")))
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("device thread"))
                    .collect::<Vec<T>>()
            })
        });
        let start = Instant::now();
        let r = engine.execute(sql);
        let t = start.elapsed();
        if let Err(e) = r {
            panic!("{sql}: {e}");
        }
        let out = client.join().expect("client");
        let _ = set.close();
        (out, t)
    })
}

fn clause(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("VIRTUAL_DEVICE='{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// BACKUP to a client that keeps each device's stream in memory.
fn capture(engine: &Engine, devices: usize) -> Vec<Vec<u8>> {
    let name = format!("rbench-{}-b", std::process::id());
    let sql = format!(
        "BACKUP DATABASE bench TO {}",
        clause(&device_names(&name, devices))
    );
    with_client(engine, &name, devices, &sql, |_, dev| {
        let mut kept = Vec::new();
        loop {
            match dev.get_command(Timeout::from_millis(60_000)) {
                Ok(cmd) => {
                    let code = match cmd.code() {
                        vdc::VDC_Write => {
                            kept.extend_from_slice(cmd.buffer());
                            win32::ERROR_SUCCESS
                        }
                        vdc::VDC_Flush | vdc::VDC_ClearError => win32::ERROR_SUCCESS,
                        _ => win32::ERROR_NOT_SUPPORTED,
                    };
                    dev.complete_command(&cmd, code, cmd.size(), 0)
                        .expect("complete");
                }
                Err(Error::Close) => return kept,
                Err(e) => panic!("backup client: {e}"),
            }
        }
    })
    .0
}

/// RESTORE … WITH REPLACE from the streams in memory; returns the statement's time.
fn restore(engine: &Engine, streams: &[Vec<u8>], tag: usize) -> Duration {
    let name = format!("rbench-{}-r{tag}", std::process::id());
    let sql = format!(
        "RESTORE DATABASE bench FROM {} WITH REPLACE",
        clause(&device_names(&name, streams.len()))
    );
    with_client(engine, &name, streams.len(), &sql, |i, dev| {
        let src = &streams[i];
        let mut at = 0usize;
        loop {
            match dev.get_command(Timeout::from_millis(60_000)) {
                Ok(mut cmd) => {
                    let (code, n) = match cmd.code() {
                        vdc::VDC_Read => {
                            let want = cmd.size() as usize;
                            let n = want.min(src.len() - at);
                            cmd.buffer_mut()[..n].copy_from_slice(&src[at..at + n]);
                            at += n;
                            let code = if n < want {
                                win32::ERROR_HANDLE_EOF
                            } else {
                                win32::ERROR_SUCCESS
                            };
                            (code, n as u32)
                        }
                        vdc::VDC_Flush | vdc::VDC_ClearError | vdc::VDC_Complete => {
                            (win32::ERROR_SUCCESS, 0)
                        }
                        _ => (win32::ERROR_NOT_SUPPORTED, 0),
                    };
                    dev.complete_command(&cmd, code, n, 0).expect("complete");
                }
                Err(Error::Close) => return,
                Err(e) => panic!("restore client: {e}"),
            }
        }
    })
    .1
}

/// The baseline: the files' bytes written from memory to new files, 1 MiB per
/// `pwrite`, then fsynced.
fn write_alone(images: &[Vec<u8>], dir: &Path) -> Duration {
    let start = Instant::now();
    let paths: Vec<PathBuf> = (0..images.len())
        .map(|i| dir.join(format!("alone-{i}")))
        .collect();
    for (img, p) in images.iter().zip(&paths) {
        let f = File::create(p).expect("create");
        for (k, piece) in img.chunks(1 << 20).enumerate() {
            f.write_all_at(piece, (k << 20) as u64).expect("write");
        }
        f.sync_all().expect("fsync");
    }
    let t = start.elapsed();
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    t
}

fn sync() {
    // sync(2) through the shell's sync(1): std has no binding, and this example needs
    // no unsafe for it.
    let _ = std::process::Command::new("sync").status();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size = args
        .next()
        .map(|s| db::parse_size(&s).expect("size"))
        .unwrap_or(1 << 30);
    let devices: usize = args
        .next()
        .map(|d| d.parse().expect("devices"))
        .unwrap_or(2);
    let root = tempfile::tempdir().expect("temp dir");
    let (data, scratch) = (root.path().join("data"), root.path().join("scratch"));
    std::fs::create_dir(&data).expect("data dir");
    std::fs::create_dir(&scratch).expect("scratch dir");
    let engine = Engine::open(&data).expect("engine");
    eprintln!("creating a {} MiB database …", size >> 20);
    let info = engine.create_database("bench", size).expect("create");
    let streams = capture(&engine, devices);
    let images: Vec<Vec<u8>> = info
        .files
        .iter()
        .map(|f| std::fs::read(&f.path).expect("read file"))
        .collect();
    let bytes: u64 = images.iter().map(|i| i.len() as u64).sum();
    let stream: u64 = streams.iter().map(|s| s.len() as u64).sum();
    let mut best_restore = Duration::MAX;
    let mut best_alone = Duration::MAX;
    let mut runs = Vec::new();
    for round in 0..5 {
        sync();
        let a = write_alone(&images, &scratch);
        sync();
        let r = restore(&engine, &streams, round);
        runs.push(format!("{:.3}/{:.3}", r.as_secs_f64(), a.as_secs_f64()));
        best_alone = best_alone.min(a);
        best_restore = best_restore.min(r);
    }
    // The restored files are the database's files, byte for byte.
    for (f, img) in info.files.iter().zip(&images) {
        assert!(
            std::fs::read(&f.path).expect("read restored") == *img,
            "{} differs after the restore",
            f.path.display()
        );
    }
    let mbs = |d: Duration| bytes as f64 / 1_048_576.0 / d.as_secs_f64();
    println!(
        "database: {} MiB in {} files; backup stream {} MiB on {devices} device(s)",
        bytes >> 20,
        images.len(),
        stream >> 20
    );
    println!("runs (restore/alone, s): {}", runs.join(" "));
    println!(
        "files written alone, fsynced : {:8.1} MiB/s ({:.3} s)",
        mbs(best_alone),
        best_alone.as_secs_f64()
    );
    println!(
        "RESTORE through VDI, {devices} device(s) : {:8.1} MiB/s ({:.3} s)  ratio {:.2}",
        mbs(best_restore),
        best_restore.as_secs_f64(),
        best_alone.as_secs_f64() / best_restore.as_secs_f64()
    );
}
