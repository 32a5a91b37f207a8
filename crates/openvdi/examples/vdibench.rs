//! The core protocol's benchmark: real separate processes (this program re-executes
//! itself as the server), one line per case. Run it with `bench/core.sh`, which also
//! runs the C baseline in the same run so that ratios, not absolute figures, are
//! compared.
//!
//! ```text
//! cargo run --release -p openvdi --example vdibench [-- GIB]
//! ```
//!
//! Cases:
//! * `throughput devices=N`: 1 MiB VDC_Write transfers, 8 buffers in flight in all,
//!   the server fills every byte of each buffer, the client reads every byte;
//! * `pipe`: the same work through a pipe with a 1 MiB pipe buffer;
//! * `round-trip`: one 4 KiB command at a time, both sides busy;
//! * `commands`: zero-size commands (VDC_Flush without a buffer), queue kept full;
//! * `local`: the four calls of a round trip (SendCommand, GetCommand,
//!   CompleteCommand, GetCompletion) in one thread of one process: what the library's
//!   own code costs per round trip, with no cache line crossing cores.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use openvdi::*;

const MIB: usize = 1 << 20;

fn server_config(devices: usize, name: &str) -> ServerConfig {
    ServerConfig {
        features: vdf::VDF_WriteMedia,
        block_size: 65536,
        alignment: 0,
        max_transfer_size: MIB as u32,
        timeout: Timeout::INFINITE,
        device_names: (0..devices)
            .map(|i| {
                if i == 0 {
                    name.to_string()
                } else {
                    format!("{name}{i}")
                }
            })
            .collect(),
    }
}

fn sum_words(b: &[u8]) -> u64 {
    let mut s = 0u64;
    for c in b.chunks_exact(8) {
        s = s.wrapping_add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
    }
    s
}

/// The server side of every case, in the child process.
fn server(case: &str, name: &str, devices: usize, total: u64) {
    let s = ServerSet::open(name, Timeout::from_millis(10_000)).expect("open");
    s.begin_configuration(&server_config(devices, name))
        .expect("begin");
    let (size, count) = match case {
        "throughput" => (MIB as u32, 8u32),
        "round-trip" => (4096, 1),
        _ => (4096, 1),
    };
    s.request_buffers(size, 0, count).expect("request");
    s.end_configuration().expect("end");
    let mut bufs: Vec<ServerBuffer> = (0..count)
        .map(|_| s.allocate_buffer(size, 0).expect("alloc"))
        .collect();
    let devs: Vec<ServerDevice> = (0..devices)
        .map(|i| {
            s.open_device(&if i == 0 {
                name.to_string()
            } else {
                format!("{name}{i}")
            })
            .expect("open device")
        })
        .collect();
    let out;
    match case {
        "throughput" => {
            // Buffers are dealt round-robin to devices; each device thread keeps its
            // buffers in flight.
            let per_dev = total / devices as u64;
            let mut groups: Vec<Vec<ServerBuffer>> = (0..devices).map(|_| Vec::new()).collect();
            for (i, b) in bufs.drain(..).enumerate() {
                groups[i % devices].push(b);
            }
            std::thread::scope(|sc| {
                for (d, mut mine) in devs.iter().zip(groups) {
                    sc.spawn(move || {
                        let n = (per_dev / MIB as u64) as usize;
                        let mut sent = 0usize;
                        let mut done = 0usize;
                        let mut fill = 1u8;
                        // Buffers are reused oldest-completed first, as the C ring
                        // reuses its slots: the client read that one longest ago.
                        let mut free: std::collections::VecDeque<usize> = (0..mine.len()).collect();
                        while done < n {
                            while sent < n {
                                let Some(i) = free.pop_front() else { break };
                                mine[i].as_mut_slice().fill(fill);
                                fill = fill.wrapping_add(1);
                                d.send_command(&ServerCommand {
                                    code: vdc::VDC_Write,
                                    size: MIB as u32,
                                    position: 0,
                                    buffer: Some(&mine[i]),
                                    tag: i as u64,
                                })
                                .expect("send");
                                sent += 1;
                            }
                            let c = d
                                .wait_completion(Timeout::from_millis(30_000))
                                .expect("completion");
                            assert_eq!(c.completion_code, 0);
                            free.push_back(c.tag as usize);
                            done += 1;
                        }
                        d.close().expect("close device");
                    });
                }
            });
            let (wakes, waits) = openvdi::futex_calls();
            out = format!("server_sleeps={waits} server_wakes={wakes}");
        }
        "round-trip" => {
            let d = &devs[0];
            let n = total as usize;
            let mut lat = Vec::with_capacity(n);
            for i in 0..n + 1000 {
                let t = Instant::now();
                d.send_command(&ServerCommand {
                    code: vdc::VDC_Write,
                    size: 4096,
                    position: 0,
                    buffer: Some(&bufs[0]),
                    tag: 0,
                })
                .expect("send");
                // Looked at in place: moving the completion out of the `Result` is a
                // copy the C pingpong does not make.
                if let Err(e) = d.wait_completion(Timeout::from_millis(30_000)) {
                    panic!("completion: {e}");
                }
                if i >= 1000 {
                    lat.push(t.elapsed());
                }
            }
            lat.sort();
            let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_nanos();
            out = format!("p50_ns={} p99_ns={} n={}", p(0.50), p(0.99), lat.len());
            d.close().expect("close device");
        }
        "commands" | "commands-busy" => {
            let d = &devs[0];
            let n = total as usize;
            let mut sent = 0usize;
            let mut done = 0usize;
            let t = Instant::now();
            while done < n {
                while sent < n && sent - done < MAX_OUTSTANDING {
                    match d.send_command(&ServerCommand {
                        code: vdc::VDC_Flush,
                        size: 0,
                        position: 0,
                        buffer: None,
                        tag: 0,
                    }) {
                        Ok(()) => sent += 1,
                        Err(Error::QueueFull) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                d.wait_completion(Timeout::from_millis(30_000))
                    .expect("completion");
                done += 1;
            }
            let secs = t.elapsed().as_secs_f64();
            let (wakes, waits) = openvdi::futex_calls();
            out = format!(
                "commands_per_s={:.0} n={n} server_wakes_per_cmd={:.4} server_sleeps_per_cmd={:.4}",
                n as f64 / secs,
                wakes as f64 / n as f64,
                waits as f64 / n as f64
            );
            d.close().expect("close device");
        }
        _ => panic!("unknown case {case}"),
    }
    s.close().expect("close");
    println!("{out}");
}

/// Run the client side of a case against a server child; returns the child's line.
fn client(case: &str, devices: usize, total: u64) -> (Duration, u64, String) {
    let name = format!("vdibench-{}-{case}-{devices}", std::process::id());
    let set = ClientSet::create(
        &name,
        &VdConfig {
            device_count: devices as u32,
            ..Default::default()
        },
    )
    .expect("create");
    let me = std::env::current_exe().expect("exe");
    // VDIBENCH_SERVER_CPU=N runs the server on CPU N (bench/core.sh pins this process
    // to another with taskset): the placement of the C pingpong's `split` case, for a
    // round trip measured like for like.
    let mut cmd = match std::env::var("VDIBENCH_SERVER_CPU") {
        Ok(cpu) => {
            let mut c = Proc::new("taskset");
            c.args(["-c", &cpu]).arg(me);
            c
        }
        Err(_) => Proc::new(me),
    };
    let mut child = cmd
        .args([
            "server",
            case,
            &name,
            &devices.to_string(),
            &total.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    set.get_configuration(Timeout::from_millis(10_000))
        .expect("configuration");
    let devs: Vec<ClientDevice> = (0..devices)
        .map(|i| {
            set.open_device(&if i == 0 {
                name.clone()
            } else {
                format!("{name}{i}")
            })
            .expect("open device")
        })
        .collect();
    // One competing busy process for the "-busy" cases: a CPU hog on this 2-core
    // machine, so sleeps and wake-ups are what the hand-off costs.
    let mut hog = case.ends_with("-busy").then(|| {
        Proc::new(std::env::current_exe().expect("exe"))
            .arg("busy")
            .spawn()
            .expect("spawn busy process")
    });
    let (wakes0, waits0) = openvdi::futex_calls();
    let sum = case == "throughput";
    let t = Instant::now();
    let sums: Vec<u64> = std::thread::scope(|sc| {
        let hs: Vec<_> = devs
            .iter()
            .map(|d| {
                sc.spawn(move || {
                    let mut s = 0u64;
                    loop {
                        // Looked at in place, not moved out of the `Result`.
                        match &d.get_command(Timeout::from_millis(30_000)) {
                            Ok(cmd) => {
                                if sum && cmd.code() == vdc::VDC_Write {
                                    s = s.wrapping_add(sum_words(cmd.buffer()));
                                }
                                d.complete_command(cmd, 0, cmd.size(), 0).expect("complete");
                            }
                            Err(Error::Close) => break,
                            Err(e) => panic!("get_command: {e}"),
                        }
                    }
                    s
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("device thread"))
            .collect()
    });
    let elapsed = t.elapsed();
    let (wakes1, waits1) = openvdi::futex_calls();
    if let Some(h) = hog.as_mut() {
        let _ = h.kill();
        let _ = h.wait();
    }
    set.close().expect("close");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server line");
    assert!(child.wait().expect("wait").success(), "server failed");
    let mut line = line.trim().to_string();
    if case == "throughput" {
        line.push_str(&format!(
            " client_sleeps={} client_wakes={}",
            waits1 - waits0,
            wakes1 - wakes0
        ));
    }
    if case.starts_with("commands") {
        line.push_str(&format!(
            " client_wakes_per_cmd={:.4} client_sleeps_per_cmd={:.4}",
            (wakes1 - wakes0) as f64 / total as f64,
            (waits1 - waits0) as f64 / total as f64
        ));
    }
    (
        elapsed,
        sums.iter().fold(0u64, |a, b| a.wrapping_add(*b)),
        line,
    )
}

/// The `local` case: both halves in this thread, one 4 KiB command at a time.
fn local_case(n: usize) -> f64 {
    let name = format!("vdibench-{}-local", std::process::id());
    let set = ClientSet::create(
        &name,
        &VdConfig {
            device_count: 1,
            ..Default::default()
        },
    )
    .expect("create");
    let s = std::thread::scope(|sc| {
        // The server's Open waits for the client's GetConfiguration: open it on a
        // helper thread, then run every call of the measured loop on this one.
        let h = sc.spawn(|| {
            let s = ServerSet::open(&name, Timeout::from_millis(10_000)).expect("open");
            s.begin_configuration(&server_config(1, &name))
                .expect("begin");
            s.request_buffers(4096, 0, 1).expect("request");
            s.end_configuration().expect("end");
            s
        });
        set.get_configuration(Timeout::from_millis(10_000))
            .expect("configuration");
        h.join().expect("server open")
    });
    let buf = s.allocate_buffer(4096, 0).expect("alloc");
    let sd = s.open_device(&name).expect("server device");
    let cd = set.open_device(&name).expect("client device");
    let run = |n: usize| {
        let t = Instant::now();
        for _ in 0..n {
            sd.send_command(&ServerCommand {
                code: vdc::VDC_Write,
                size: 4096,
                position: 0,
                buffer: Some(&buf),
                tag: 0,
            })
            .expect("send");
            let c = cd.get_command(Timeout::from_millis(1000)).expect("get");
            cd.complete_command(&c, 0, c.size(), 0).expect("complete");
            sd.wait_completion(Timeout::from_millis(1000))
                .expect("completion");
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    run(n / 10);
    let ns = run(n);
    sd.close().expect("close device");
    assert!(matches!(
        cd.get_command(Timeout::from_millis(1000)),
        Err(Error::Close)
    ));
    s.close().expect("close");
    set.close().expect("close");
    ns
}

fn pipe_case(total: u64) -> Duration {
    let me = std::env::current_exe().expect("exe");
    let mut child = Proc::new(me)
        .args(["pipe-producer", &total.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    set_pipe_size(out.as_raw_fd());
    let mut buf = vec![0u8; MIB];
    let mut got = 0u64;
    let mut s = 0u64;
    let t = Instant::now();
    while got < total {
        out.read_exact(&mut buf).expect("read");
        s = s.wrapping_add(sum_words(&buf));
        got += MIB as u64;
    }
    let e = t.elapsed();
    std::hint::black_box(s);
    child.wait().expect("wait");
    e
}

fn set_pipe_size(fd: i32) {
    // F_SETPIPE_SZ = 1031.
    let r = fcntl_int(fd, 1031, MIB as i32);
    if r < 0 {
        eprintln!("F_SETPIPE_SZ failed; using the default pipe size");
    }
}

fn fcntl_int(fd: i32, cmd: i32, arg: i32) -> i32 {
    // std has no fcntl; this benchmark-only call is the one unsafe block outside the
    // library's shm/sys files.
    // SAFETY: fcntl on a descriptor this process owns, with an integer argument.
    unsafe { libc::fcntl(fd, cmd, arg) }
}

fn pipe_producer(total: u64) {
    // The pipe itself, not `std::io::stdout()`: that is line-buffered, and its search
    // for the last newline of every megabyte (memrchr) would slow the baseline down.
    let mut stdout = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/fd/1")
        .expect("stdout");
    set_pipe_size(stdout.as_raw_fd());
    let mut buf = vec![0u8; MIB];
    let mut sent = 0u64;
    let mut fill = 1u8;
    while sent < total {
        buf.fill(fill);
        fill = fill.wrapping_add(1);
        stdout.write_all(&buf).expect("write");
        sent += MIB as u64;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() > 1 && args[1] == "server" {
        server(
            &args[2],
            &args[3],
            args[4].parse().expect("devices"),
            args[5].parse().expect("total"),
        );
        return;
    }
    if args.len() > 1 && args[1] == "busy" {
        // The competing process: spin until killed (bounded by the bench killing it,
        // and by a 10-minute cap should the bench die first).
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_secs(600) {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        return;
    }
    if args.len() > 1 && args[1] == "pipe-producer" {
        pipe_producer(args[2].parse().expect("total"));
        return;
    }
    let gib: f64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(2.0);
    // Optional second argument: run only the cases whose name contains it.
    let only = args.get(2).cloned().unwrap_or_default();
    let run = |case: &str| case.contains(only.as_str());
    let total = (gib * (1u64 << 30) as f64) as u64 / MIB as u64 * MIB as u64;
    let gbps = |d: Duration| total as f64 / d.as_secs_f64() / 1e9;
    let mut pipe = Duration::ZERO;
    if run("pipe throughput") {
        pipe = pipe_case(total);
        println!(
            "pipe              1 MiB chunks, 1 MiB pipe buffer, memset -> sum: {:>7.2} GB/s",
            gbps(pipe)
        );
    }
    for devices in [1usize, 4] {
        if !run(&format!("vdi throughput {devices}")) {
            continue;
        }
        let (d, sum, calls) = client("throughput", devices, total);
        // Every byte crossed: the client's sum of the buffers matches the fills the
        // server made (each device thread fills with 1, 2, 3, ... wrapping).
        let per_dev = total / devices as u64 / MIB as u64;
        let expect = (0..per_dev).fold(0u64, |a, k| {
            let b = u64::from((1 + k as u8 as u32) as u8) * 0x0101_0101_0101_0101;
            a.wrapping_add(b.wrapping_mul((MIB / 8) as u64))
        });
        assert_eq!(
            sum,
            expect.wrapping_mul(devices as u64),
            "the data read differs from the data written"
        );
        println!("vdi throughput    devices={devices} 1 MiB x 8 buffers, memset -> sum: {:>7.2} GB/s  ({:.1}x pipe) {calls}", gbps(d), pipe.as_secs_f64() / d.as_secs_f64());
    }
    if run("round-trip") {
        let (_, _, rt) = client("round-trip", 1, 200_000);
        println!("vdi round trip    4 KiB, one in flight: {rt}");
    }
    if run("local") {
        println!(
            "vdi local        the four calls of a round trip in one thread: ns_per_round_trip={:.1}",
            local_case(2_000_000)
        );
    }
    if run("commands") {
        let (_, _, cm) = client("commands", 1, 4_000_000);
        println!("vdi commands      zero-size, queue full, 1 device: {cm}");
        let (_, _, cm) = client("commands-busy", 1, 2_000_000);
        println!("vdi commands busy zero-size, one competing busy process: {cm}");
    }
}
