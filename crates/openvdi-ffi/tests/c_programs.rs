//! The C and C++ programs of tests/c, compiled against include/ and linked with
//! -lsqlvdi, run against real separate processes. `OPENVDI_C_MODE=asan` builds them
//! with AddressSanitizer; `OPENVDI_C_MODE=valgrind` runs them under valgrind
//! (run-c-tests.sh does both).

use std::process::Command;

use openvdi::*;

mod common;
use common::*;

fn round_trip(devices: &str, total: u64, mp: bool) {
    let client = compile("client.cpp", "client", true);
    let server = compile("server.c", "server", false);
    let dir = out_dir().join(format!("data-{devices}-{mp}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let t = total.to_string();
    let mut extra = vec![];
    if mp {
        extra.push("mp");
    }
    let set = uniq("bk");
    let mut args = vec![
        "backup",
        set.as_str(),
        devices,
        dir.to_str().expect("utf-8"),
        server.to_str().expect("utf-8"),
        t.as_str(),
        "7",
    ];
    args.extend(&extra);
    let (ok, out) = run(&client, &args, secs());
    assert!(ok && out.contains("client=OK"), "backup: {out}");
    let n: usize = devices.parse().expect("devices");
    for i in 0..n {
        let data = std::fs::read(dir.join(format!("dev{i}.bin"))).expect("stored stream");
        assert_eq!(data.len() as u64, total, "device {i} stored every byte");
        for (k, b) in data.iter().enumerate() {
            assert_eq!(
                *b,
                stream_byte(7, i as u64, k as u64),
                "device {i} byte {k}"
            );
        }
    }
    let set = uniq("rs");
    args[0] = "restore";
    args[1] = set.as_str();
    let (ok, out) = run(&client, &args, secs());
    // The server checks every restored byte against the stream ("bad=0").
    assert!(
        ok && out.contains("client=OK") && out.contains("server=OK"),
        "restore: {out}"
    );
    assert!(
        !out.contains("bad=")
            || out
                .lines()
                .filter(|l| l.contains("bad="))
                .all(|l| l.ends_with("bad=0")),
        "{out}"
    );
}

fn stream_byte(seed: u64, dev: u64, i: u64) -> u8 {
    let x =
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_add(dev.wrapping_mul(0x1234_5678));
    ((x >> 29) as u8) ^ (i as u8)
}

/// Source compatibility with Microsoft's vdi.h: long ERROR_* codes, the value of
/// VDF_LatchStats once widened, both include guards (compiled -Wall -Wextra -Werror).
#[test]
fn vdi_h_probes_compile_and_run() {
    let exe = compile("probes.cpp", "probes", true);
    let (ok, out) = run(&exe, &[], 60);
    assert!(ok, "{out}");
}

#[test]
fn layout_of_the_headers_is_microsofts() {
    let exe = compile("layout.cpp", "layout", true);
    let (ok, out) = run(&exe, &[], 60);
    assert!(ok, "{out}");
}

#[test]
fn cpp_client_one_device_backup_then_restore() {
    round_trip("1", 1_000_000, false);
}

#[test]
fn cpp_client_four_devices_one_thread_each() {
    round_trip("4", 300_000, false);
}

#[test]
fn cpp_client_secondary_process_moves_data_through_buffer_handles() {
    round_trip("1", 400_000, true);
}

/// The C server (openvdi.h's server half) against the Rust client half.
#[test]
fn c_server_against_the_rust_client() {
    let server = compile("server.c", "server", false);
    let name = uniq("rc");
    let total = 333_333u64;
    let set = ClientSet::create(
        &name,
        &VdConfig {
            device_count: 2,
            ..Default::default()
        },
    )
    .expect("create");
    let srv = std::thread::spawn({
        let server = server.clone();
        let name = name.clone();
        move || {
            run(
                &server,
                &[&name, "backup", &total.to_string(), "2", "3"],
                secs(),
            )
        }
    });
    set.get_configuration(Timeout::from_millis(60_000))
        .expect("configuration");
    for i in 0..2u64 {
        let dn = if i == 0 {
            name.clone()
        } else {
            format!("{name}{i}")
        };
        let d = set.open_device(&dn).expect("open");
        let mut pos = 0u64;
        loop {
            match d.get_command(Timeout::from_millis(60_000)) {
                Ok(c) => {
                    if c.code() == vdc::VDC_Write {
                        for (k, b) in c.buffer().iter().enumerate() {
                            assert_eq!(*b, stream_byte(3, i, pos + k as u64));
                        }
                        pos += c.buffer().len() as u64;
                    }
                    d.complete_command(&c, 0, c.size(), 0).expect("complete");
                }
                Err(Error::Close) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(pos, total);
    }
    let (ok, out) = srv.join().expect("server thread");
    assert!(ok && out.contains("server=OK"), "{out}");
    set.close().expect("close");
}

/// The C++ client (written the way existing Linux VDI clients are) through the whole
/// conformance kit, as a client author would run it: every scenario passes.
#[test]
fn cpp_client_passes_the_conformance_kit() {
    if !mode().is_empty() {
        eprintln!(
            "skipped under {}: the kit's own run covers it in plain mode",
            mode()
        );
        return;
    }
    let client = compile("client.cpp", "client", true);
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "openvdi-engine",
            "--bin",
            "openvdi-engine",
        ])
        .current_dir(root())
        .status()
        .expect("cargo");
    assert!(built.success());
    let kit = lib_dir().join("openvdi-engine");
    let work = tempfile::tempdir().expect("tempdir");
    // SERVER is /bin/true: the kit, not the client, starts the statement.
    let template = format!(
        "LD_LIBRARY_PATH={} {} {{op}} {{set}} {{stripes}} {{file}} /bin/true 0 0",
        lib_dir().display(),
        client.display()
    );
    let o = Command::new(&kit)
        .args(["--json", "conformance", "--profile", "full", "--keep-going"])
        .args(["--stores", "dev{i}.bin", "--deadline", "60", "--client"])
        .arg(&template)
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .expect("run the kit");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&o.stderr));
    });
    let failed: Vec<&serde_json::Value> = v["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter(|s| s["verdict"] != "pass")
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(o.status.code(), Some(0));
}
