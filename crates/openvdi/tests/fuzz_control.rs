//! Hostile-peer fuzzing: random bytes written into the shared control region between
//! calls of both halves. Every call must return Ok or an error: no panic, no hang
//! (all timeouts are short), no out-of-bounds access. The short run is part of
//! `cargo test`; `./test.sh` runs the long one (`--ignored`, OPENVDI_FUZZ_SECS).

mod common;
use common::uniq;
use openvdi::*;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn corrupt(set: &ClientSet, rng: &mut Rng, n: usize) {
    let (base, len) = control_bytes_for_tests(set);
    for _ in 0..n {
        let off = rng.below(len as u64) as usize & !3;
        let v = match rng.below(4) {
            0 => 0u32,
            1 => u32::MAX,
            2 => rng.below(70) as u32,
            _ => rng.next() as u32,
        };
        // SAFETY: `off + 4 <= len` (offsets are 4-aligned below `len`, a multiple of
        // 4096) inside the set's live control mapping; every field there is an atomic
        // word that the library only accesses atomically, so a racing aligned 32-bit
        // store is exactly what a hostile peer can do.
        unsafe {
            let p = base.add(off) as *const std::sync::atomic::AtomicU32;
            (*p).store(v, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn one_round(rng: &mut Rng) {
    let name = uniq("fz");
    let devices = 1 + rng.below(3) as u32;
    let set = ClientSet::create(
        &name,
        &VdConfig {
            device_count: devices,
            ..Default::default()
        },
    )
    .expect("create");
    let server = ServerSet::open(&name, Timeout::POLL).expect("server open");
    let short = Timeout::from_duration(Duration::from_millis(2));
    let _ = server.begin_configuration(&ServerConfig {
        features: vdf::VDF_WriteMedia,
        block_size: 512,
        alignment: 0,
        max_transfer_size: 65536,
        timeout: short,
        device_names: vec![],
    });
    let _ = server.request_buffers(4096, 0, 8);
    if rng.below(3) == 0 {
        let n = 1 + rng.below(4) as usize;
        corrupt(&set, rng, n);
    }
    let _ = server.end_configuration();
    let _ = set.get_configuration(short);
    let names: Vec<String> = (0..devices)
        .map(|i| {
            if i == 0 {
                name.clone()
            } else {
                format!("{name}{i}")
            }
        })
        .collect();
    let sdevs: Vec<ServerDevice> = names
        .iter()
        .filter_map(|n| server.open_device(n).ok())
        .collect();
    let cdevs: Vec<ClientDevice> = names
        .iter()
        .filter_map(|n| set.open_device(n).ok())
        .collect();
    let bufs: Vec<ServerBuffer> = (0..4)
        .filter_map(|_| server.allocate_buffer(4096, 0).ok())
        .collect();
    let mut held: Vec<(usize, Command)> = Vec::new();
    for _ in 0..60 {
        if rng.below(4) == 0 {
            let n = 1 + rng.below(3) as usize;
            corrupt(&set, rng, n);
        }
        match rng.below(7) {
            0 | 1 if !sdevs.is_empty() => {
                let d = &sdevs[rng.below(sdevs.len() as u64) as usize];
                let b = if bufs.is_empty() {
                    None
                } else {
                    Some(&bufs[rng.below(bufs.len() as u64) as usize])
                };
                let code = [vdc::VDC_Write, vdc::VDC_Flush, vdc::VDC_ClearError, 42]
                    [rng.below(4) as usize];
                let _ = d.send_command(&ServerCommand {
                    code,
                    size: if b.is_some() { 4096 } else { 0 },
                    position: rng.next(),
                    buffer: b,
                    tag: 0,
                });
            }
            2 if !sdevs.is_empty() => {
                let d = &sdevs[rng.below(sdevs.len() as u64) as usize];
                let _ = d.wait_completion(short);
            }
            3 if !cdevs.is_empty() => {
                let i = rng.below(cdevs.len() as u64) as usize;
                if let Ok(c) = cdevs[i].get_command(short) {
                    // Touch the buffer: it must be in bounds whatever the peer wrote.
                    let s: u64 = c.buffer().iter().map(|&b| u64::from(b)).sum();
                    std::hint::black_box(s);
                    held.push((i, c));
                }
            }
            4 if !held.is_empty() => {
                let (i, c) = held.swap_remove(rng.below(held.len() as u64) as usize);
                let _ = cdevs[i].complete_command(
                    &c,
                    [0, 0, 38, 29][rng.below(4) as usize],
                    c.size(),
                    0,
                );
            }
            5 => {
                if let Some((_, c)) = held.first() {
                    if let Ok(h) = set.get_buffer_handle(c.buffer_ptr()) {
                        if let Ok(m) = set.map_buffer_handle(h) {
                            std::hint::black_box(m.to_vec(16));
                        }
                    }
                }
                let _ = set.map_buffer_handle(rng.next() as u32);
            }
            _ => {
                let _ = set.get_configuration(Timeout::POLL);
                let _ = server.get_configuration();
            }
        }
    }
    for d in &sdevs {
        let _ = d.close();
    }
    drop(held);
    let _ = set.close();
    let _ = server.close();
}

fn fuzz_for(secs: u64, seed: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let mut rng = Rng(seed | 1);
    let end = Instant::now() + Duration::from_secs(secs);
    // Watchdog: a round is a few milliseconds of calls with 2 ms timeouts, so one
    // that makes no progress for 10 s is a hang. Fail loudly (abort the test
    // process) instead of hanging the test run.
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let dog = std::thread::spawn(move || {
        let mut last = (u64::MAX, Instant::now());
        while !st.load(Ordering::Relaxed) {
            let now = p.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(10) {
                eprintln!("fuzz round {now} made no progress for 10 s (seed {seed}): a call hangs");
                std::process::abort();
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
    });
    let mut rounds = 0;
    while Instant::now() < end {
        one_round(&mut rng);
        rounds += 1;
        progress.store(rounds, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    dog.thread().unpark();
    dog.join().expect("watchdog");
    rounds
}

#[test]
fn random_writes_to_the_control_region_short() {
    let n = fuzz_for(2, 0x9E37_79B9);
    assert!(n > 0);
}

#[test]
#[ignore = "long run; ./test.sh runs it with OPENVDI_FUZZ_SECS"]
fn random_writes_to_the_control_region_long() {
    let secs = std::env::var("OPENVDI_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("OPENVDI_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64);
    eprintln!("fuzz seed {seed}");
    let n = fuzz_for(secs, seed);
    eprintln!("{n} rounds");
}
