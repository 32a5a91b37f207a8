//! Pipeline tests against openvdi's real server half, driven in-process as a
//! stand-in for the engine (the end-to-end tests with separate processes are in
//! tests/cli.rs).

use std::sync::Arc;
use std::time::Duration;

use openvdi::{vdc, vdf, ServerCommand, ServerConfig, ServerSet, Timeout, VdConfig};

use super::{backup, restore, Counters, Stop, StopReason};
use crate::codec::Codec;
use crate::storage::{self, Store};
use crate::vdi::{self, Native, Transport};

#[allow(non_snake_case)]
fn T() -> Timeout {
    Timeout::from_millis(10_000)
}
/// MAXTRANSFERSIZE of the stand-in engine (`mts()` env var to profile other sizes).
fn mts() -> u32 {
    std::env::var("MTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 * 1024)
}

fn data(len: usize, seed: u32) -> Vec<u8> {
    // Compressible but not trivial: runs of a few distinct values.
    (0..len as u32)
        .map(|i| ((i / 7 + seed) % 11) as u8)
        .collect()
}

/// The engine side of a BACKUP: writes `streams[i]` to device i, `depth` buffers deep.
fn server_backup(name: String, streams: Vec<Vec<u8>>, depth: usize, complete: bool) {
    let s = ServerSet::open(&name, T()).unwrap();
    let c = s.get_configuration().unwrap();
    let mut features = vdf::VDF_WriteMedia;
    if complete && c.features & vdf::VDF_RequestComplete != 0 {
        features |= vdf::VDF_CompleteEnabled;
    }
    s.begin_configuration(&ServerConfig {
        features,
        block_size: 512,
        alignment: 0,
        max_transfer_size: mts(),
        timeout: Timeout::INFINITE,
        device_names: vdi::device_names(&name, streams.len() as u32),
    })
    .unwrap();
    s.request_buffers(mts(), 0, (depth * streams.len()) as u32)
        .unwrap();
    s.end_configuration().unwrap();
    let s = Arc::new(s);
    let names = vdi::device_names(&name, streams.len() as u32);
    std::thread::scope(|sc| {
        for (i, stream) in streams.iter().enumerate() {
            let s = s.clone();
            let dname = names[i].clone();
            sc.spawn(move || {
                let d = s.open_device(&dname).unwrap();
                let mut bufs: Vec<_> = (0..depth)
                    .map(|_| s.allocate_buffer(mts(), 0).unwrap())
                    .collect();
                let mut free: Vec<usize> = (0..depth).collect();
                let mut off = 0usize;
                let mut outstanding = 0;
                while off < stream.len() || outstanding > 0 {
                    if off < stream.len() && !free.is_empty() {
                        let b = free.pop().unwrap();
                        // Vary sizes: any multiple of the block size up to MAXTRANSFERSIZE.
                        let n = (stream.len() - off).min(mts() as usize - 512 * (off % 3));
                        bufs[b].as_mut_slice()[..n].copy_from_slice(&stream[off..off + n]);
                        d.send_command(&ServerCommand {
                            code: vdc::VDC_Write,
                            size: n as u32,
                            position: 0,
                            buffer: Some(&bufs[b]),
                            tag: b as u64,
                        })
                        .unwrap();
                        off += n;
                        outstanding += 1;
                        continue;
                    }
                    let c = d.wait_completion(T()).unwrap();
                    assert_eq!(c.completion_code, 0);
                    free.push(c.tag as usize);
                    outstanding -= 1;
                }
                let mut codes = vec![vdc::VDC_Flush];
                if features & vdf::VDF_CompleteEnabled != 0 {
                    codes.push(vdc::VDC_Complete);
                }
                for code in codes {
                    d.send_command(&ServerCommand {
                        code,
                        size: 0,
                        position: 0,
                        buffer: None,
                        tag: 99,
                    })
                    .unwrap();
                    let c = d.wait_completion(T()).unwrap();
                    assert_eq!((c.tag, c.completion_code), (99, 0));
                }
                d.close().unwrap();
            });
        }
    });
    s.close().unwrap();
}

/// The engine side of a RESTORE: reads each device to EOF with varying read sizes.
fn server_restore(name: String, devices: u32) -> Result<Vec<Vec<u8>>, String> {
    let s = ServerSet::open(&name, T()).unwrap();
    s.begin_configuration(&ServerConfig {
        features: vdf::VDF_ReadMedia,
        block_size: 512,
        alignment: 0,
        max_transfer_size: mts(),
        timeout: Timeout::INFINITE,
        device_names: vdi::device_names(&name, devices),
    })
    .unwrap();
    s.request_buffers(mts(), 0, devices).unwrap();
    s.end_configuration().unwrap();
    let s = Arc::new(s);
    let names = vdi::device_names(&name, devices);
    let out = std::thread::scope(|sc| {
        let hs: Vec<_> = names
            .iter()
            .map(|dname| {
                let s = s.clone();
                sc.spawn(move || -> Result<Vec<u8>, String> {
                    // The client may abort the set at any point (that is what the
                    // corruption test provokes): every step reports instead of panicking.
                    let d = s.open_device(dname).map_err(|e| e.to_string())?;
                    let buf = s.allocate_buffer(mts(), 0).map_err(|e| e.to_string())?;
                    let mut got = Vec::new();
                    for k in 0.. {
                        let size = mts() - 512 * (k % 5);
                        d.send_command(&ServerCommand {
                            code: vdc::VDC_Read,
                            size,
                            position: 0,
                            buffer: Some(&buf),
                            tag: 1,
                        })
                        .map_err(|e| e.to_string())?;
                        let c = d.wait_completion(T()).map_err(|e| e.to_string())?;
                        got.extend_from_slice(&buf.as_slice()[..c.bytes_transferred as usize]);
                        match c.completion_code {
                            0 => {}
                            38 => break,
                            other => return Err(format!("read failed: {other}")),
                        }
                    }
                    d.close().map_err(|e| e.to_string())?;
                    Ok(got)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Result<Vec<_>, _>>()
    });
    let _ = s.close();
    out
}

fn counters(n: usize) -> Vec<Arc<Counters>> {
    (0..n).map(|_| Arc::default()).collect()
}

fn backup_into(
    store: &Arc<dyn Store>,
    streams: &[Vec<u8>],
    codec: Codec,
    complete: bool,
) -> Result<Vec<backup::StripeResult>, StopReason> {
    let n = streams.len() as u32;
    let name = vdi::unique_set_name();
    let set = Native
        .create(
            &name,
            &VdConfig {
                device_count: n,
                features: vdf::VDF_RequestComplete,
                ..Default::default()
            },
        )
        .unwrap();
    let server = {
        let (name, streams) = (name.clone(), streams.to_vec());
        std::thread::spawn(move || server_backup(name, streams, 3, complete))
    };
    let r = backup::run(backup::Plan {
        set: set.as_ref(),
        device_names: vdi::device_names(&name, n),
        store: store.clone(),
        keys: (1..=n).map(|i| format!("b/stripe{i}")).collect(),
        codec,
        workers: 2,
        stop: Stop::new(),
        counters: counters(n as usize),
        open_timeout: Duration::from_secs(10),
        on_sealed: None,
        encryption: Vec::new(),
    });
    server.join().unwrap();
    set.close().unwrap();
    r
}

type Restored = (Result<(), StopReason>, Result<Vec<Vec<u8>>, String>);

fn restore_from(store: &Arc<dyn Store>, results: &[backup::StripeResult]) -> Restored {
    let n = results.len() as u32;
    let name = vdi::unique_set_name();
    let set = Native
        .create(
            &name,
            &VdConfig {
                device_count: n,
                ..Default::default()
            },
        )
        .unwrap();
    let server = {
        let name = name.clone();
        std::thread::spawn(move || server_restore(name, n))
    };
    let r = restore::run(restore::Plan {
        set: set.as_ref(),
        device_names: vdi::device_names(&name, n),
        store: store.clone(),
        sources: results
            .iter()
            .enumerate()
            .map(|(i, r)| restore::Source::Stored {
                key: format!("b/stripe{}", i + 1),
                raw_size: r.raw_size,
                blake3: r.blake3.clone(),
                backup_id: "b".into(),
                index: i as u32 + 1,
            })
            .collect(),
        keys: None,
        stop: Stop::new(),
        counters: counters(n as usize),
        open_timeout: Duration::from_secs(10),
    });
    let got = server.join().unwrap();
    let _ = set.close();
    (r, got)
}

#[test]
fn round_trip_every_codec_and_stripe_count() {
    for (stripes, codec, complete) in [
        (1, Codec::None, true),
        (2, Codec::Zstd { level: 1 }, true),
        (3, Codec::Lz4, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = storage::open(dir.path().to_str().unwrap()).unwrap();
        let streams: Vec<Vec<u8>> = (0..stripes)
            .map(|i| data(300_000 + 4096 * i, i as u32))
            .collect();
        let res = backup_into(&store, &streams, codec, complete).unwrap();
        for (i, (r, s)) in res.iter().zip(&streams).enumerate() {
            assert_eq!(r.raw_size, s.len() as u64);
            let obj = std::fs::read(dir.path().join(format!("b/stripe{}", i + 1))).unwrap();
            assert_eq!(r.stored_size, obj.len() as u64);
            let end = obj.len() - crate::chunk::FRAME_LEN - crate::chunk::TRAILER_LEN;
            assert_eq!(r.blake3, blake3::hash(&obj[..end]).to_hex().to_string());
        }
        let (r, got) = restore_from(&store, &res);
        r.unwrap();
        assert_eq!(got.unwrap(), streams, "{stripes} stripes, {codec}");
    }
}

#[test]
fn restore_aborts_on_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = storage::open(dir.path().to_str().unwrap()).unwrap();
    let streams = vec![data(200_000, 1), data(200_000, 2)];
    let res = backup_into(&store, &streams, Codec::Zstd { level: 1 }, true).unwrap();
    let path = dir.path().join("b/stripe2");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (r, got) = restore_from(&store, &res);
    assert!(matches!(r, Err(StopReason::Verify(_))), "{r:?}");
    assert!(got.is_err(), "the engine side must see the abort");
}

/// Throughput of the backup pipeline alone (engine side: memcpy from memory), for
/// profiling: `cargo test --release -p openvdi-cli -- --ignored --nocapture pipeline_throughput`.
#[test]
#[ignore]
fn pipeline_throughput() {
    let mb: usize = std::env::var("MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let streams: Vec<Vec<u8>> = (0..2)
        .map(|s| {
            // Database-like: 8 KiB pages, half of each page a pattern, half zeros.
            let mut v = vec![0u8; mb << 20];
            for (i, page) in v.chunks_mut(8192).enumerate() {
                for (j, b) in page[..4096].iter_mut().enumerate() {
                    *b = ((i * 31 + j * 7 + s) % 251) as u8;
                }
            }
            v
        })
        .collect();
    for codec in [Codec::None, Codec::Zstd { level: 1 }, Codec::Lz4] {
        let dir = tempfile::tempdir().unwrap();
        let store = storage::open(dir.path().to_str().unwrap()).unwrap();
        let t = std::time::Instant::now();
        let r = backup_into(&store, &streams, codec, true).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let raw: u64 = r.iter().map(|s| s.raw_size).sum();
        let stored: u64 = r.iter().map(|s| s.stored_size).sum();
        eprintln!(
            "{codec}: {:.0} MiB/s raw, ratio {:.2}",
            raw as f64 / secs / 1048576.0,
            raw as f64 / stored as f64
        );
    }
}

/// Speed of the per-byte work, for profiling (`-- --ignored --nocapture hash_speed`).
#[test]
#[ignore]
fn hash_speed() {
    let v: Vec<u8> = (0..256u32 << 20).map(|i| (i % 251) as u8).collect();
    let t = std::time::Instant::now();
    let h = blake3::hash(&v);
    let b = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let c = crc32c::crc32c(&v);
    let cr = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let copy = v.clone();
    let m = t.elapsed().as_secs_f64();
    eprintln!(
        "blake3 {:.0} MiB/s, crc32c {:.0} MiB/s, memcpy {:.0} MiB/s ({h} {c} {})",
        256.0 / b,
        256.0 / cr,
        256.0 / m,
        copy.len()
    );
}

#[test]
fn the_cause_outranks_the_symptoms_whatever_order_they_arrive_in() {
    let cause = StopReason::Failed("storing the manifest: disk full".into());
    let engine = StopReason::Engine("Msg 3013, BACKUP DATABASE is terminating abnormally".into());
    for order in [
        [StopReason::Aborted, engine.clone(), cause.clone()],
        [engine.clone(), StopReason::Aborted, cause.clone()],
        [cause.clone(), StopReason::Aborted, engine.clone()],
        [StopReason::Aborted, cause.clone(), engine.clone()],
    ] {
        let s = Stop::new();
        for r in order {
            s.stop(r);
        }
        assert_eq!(s.reason(), Some(cause.clone()));
    }
    // The engine's message beats the bare abort; among equals the first stays.
    let s = Stop::new();
    s.stop(StopReason::Aborted);
    s.stop(engine.clone());
    s.stop(StopReason::Aborted);
    assert_eq!(s.reason(), Some(engine));
    let s = Stop::new();
    s.stop(StopReason::Interrupted);
    s.stop(cause);
    assert_eq!(s.reason(), Some(StopReason::Interrupted));
}

/// A set that only counts aborts, for [`super::abort_on_panic`].
#[derive(Default)]
struct AbortCounter(std::sync::atomic::AtomicU32);

impl crate::vdi::DeviceSet for AbortCounter {
    fn get_configuration(&self, _: u32) -> Result<openvdi::VdConfig, crate::vdi::DevError> {
        Err(crate::vdi::DevError::Timeout)
    }
    fn open_device(&self, _: &str) -> Result<Box<dyn crate::vdi::Device>, crate::vdi::DevError> {
        Err(crate::vdi::DevError::Timeout)
    }
    fn signal_abort(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn close(&self) -> Result<(), crate::vdi::DevError> {
        Ok(())
    }
}

#[test]
fn a_panicking_pipeline_thread_stops_the_run_and_aborts_the_set() {
    let (set, stop) = (AbortCounter::default(), super::Stop::new());
    assert_eq!(super::abort_on_panic(&stop, &set, "quiet", || 7), Ok(7));
    assert!(!stop.is_stopped());
    let e = super::abort_on_panic(&stop, &set, "the thread serving device 1", || -> u32 {
        panic!("boom {}", 2)
    })
    .unwrap_err();
    assert_eq!(e, "the thread serving device 1 panicked: boom 2");
    assert_eq!(set.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(matches!(stop.reason(), Some(super::StopReason::Failed(m)) if m == e));
}
