//! Shared memory under attack. A BACKUP or RESTORE streams between two real
//! processes (`openvdi-peer` as server and as client) while this test process,
//! a third party, pulls the objects away under them: truncates, grows, unlinks or
//! replaces them, or scribbles over the completion ring. Other cases make one side
//! the liar (a client claiming more bytes than asked, a server with an impossible
//! configuration, a client that never configures) or another user.
//!
//! What must hold every time: the honest side never crashes (its exit status is a
//! normal exit, never SIGBUS), it fails with a clear error within a bounded time
//! (every wait here has a deadline), and no object of the set is left in /dev/shm.

mod common;
use common::*;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

fn obj_path(kind: &str, set: &str) -> String {
    format!("/dev/shm/openvdi-{kind}.{set}")
}

/// Wait (bounded) for an object to appear.
fn wait_for(path: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::fs::metadata(path).is_err() {
        assert!(Instant::now() < deadline, "{path} did not appear");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Attack {
    Truncate,
    Grow,
    Unlink,
    Replace,
    /// Bump the completion head and point the ring at a slot out of range.
    BadCompletion,
}

/// Whether a peer line reports an error outcome (any VD_E_* but success).
fn failed(lines: &[String]) -> bool {
    lines
        .iter()
        .any(|l| l.contains("VD_E_") || l.contains("completion=") || l.contains("mismatch=1"))
}

fn assert_clean_exit(p: &mut Peer, who: &str) {
    let st = p.wait_exit(60);
    assert!(
        st.signal().is_none(),
        "{who} was killed by signal {:?} (SIGBUS is 7); saw {:?}",
        st.signal(),
        p.seen
    );
}

fn run_attack(mode: &str, kind: &str, attack: Attack) {
    let name = uniq("atk");
    // A restore's stream ends where the client says end of data: 64 MiB in.
    let mut client = Peer::spawn(
        "client",
        &a(&[("set", name.clone()), ("eof_after", "1024".into())]),
    );
    client.expect("created=1", 30);
    let mut server = Peer::spawn(
        "server",
        &a(&[
            ("set", name.clone()),
            ("mode", mode.into()),
            ("total", (64u64 << 20).to_string()),
            ("xfer", "65536".into()),
            ("depth", "4".into()),
        ]),
    );
    server.expect("configured=1", 30);
    // Mid-stream: the client has taken a few dozen commands.
    client.expect("took=40 ", 60);
    let path = obj_path(kind, &name);
    wait_for(&path, 10);
    let replaced = attack == Attack::Replace;
    match attack {
        Attack::Truncate => {
            let f = OpenOptions::new().write(true).open(&path).expect("open");
            f.set_len(0).expect("truncate");
        }
        Attack::Grow => {
            let f = OpenOptions::new().write(true).open(&path).expect("open");
            let len = f.metadata().expect("meta").len();
            f.set_len(len * 4).expect("grow");
        }
        Attack::Unlink => {
            std::fs::remove_file(&path).expect("unlink");
        }
        Attack::Replace => {
            let len = std::fs::metadata(&path).expect("meta").len();
            std::fs::remove_file(&path).expect("unlink");
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .expect("replacement");
            f.set_len(len).expect("size");
        }
        Attack::BadCompletion => {
            // Device 0's block: cmp_ring at +5120, 64-byte entries, `turn` at +0 and
            // `slot` at +4 (docs/PROTOCOL.md §3). Publish completions in turn naming
            // slot 200.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .expect("open");
            let ring = 4096u64 + 5120;
            let mut last = 0u32;
            for k in 0..64u64 {
                let mut t = [0u8; 4];
                f.read_at(&mut t, ring + 64 * k).expect("turn");
                last = last.max(u32::from_le_bytes(t));
            }
            // Every position from the next one on, so the honest client, which keeps
            // publishing its own completions, cannot overwrite them all in time.
            for j in 0..64u32 {
                let p = last.wrapping_add(j);
                let entry = ring + 64 * (u64::from(p) % 64);
                f.write_at(&200u32.to_le_bytes(), entry + 4).expect("slot");
                f.write_at(&p.wrapping_add(1).to_le_bytes(), entry)
                    .expect("turn");
            }
        }
    }
    let s_lines = server.rest(120);
    let c_lines = client.rest(120);
    assert_clean_exit(&mut server, "server");
    assert_clean_exit(&mut client, "client");
    match attack {
        Attack::Truncate | Attack::BadCompletion => {
            // The server must have noticed (the client too, unless the server's abort
            // reached it first — either way an error, never a success).
            assert!(
                failed(&s_lines),
                "{mode} {kind} {attack:?}: the server reported success: {s_lines:?}"
            );
            assert!(
                s_lines.iter().any(|l| l.contains("VD_E_ABORT")
                    || l.contains("VD_E_UNEXPECTED")
                    || l.contains("aborted995=")),
                "{mode} {kind} {attack:?}: {s_lines:?}"
            );
        }
        Attack::Grow | Attack::Unlink | Attack::Replace => {
            // Harmless to the mapped objects: the stream either completes intact or
            // fails cleanly; it never delivers wrong data silently. (The restore
            // client here fills no data, so only a backup's bytes can be checked.)
            assert!(
                mode != "backup"
                    || !s_lines
                        .iter()
                        .any(|l| l.contains("mismatch=") && !l.contains("mismatch=0")),
                "{mode} {kind} {attack:?}: wrong data: {s_lines:?}"
            );
        }
    }
    let _ = c_lines;
    if replaced {
        // The replacement is the attacker's object, not the set's: the honest
        // sides must have left it alone (and the test removes it).
        assert!(
            std::fs::metadata(&path).is_ok(),
            "the replacement object was deleted by a side that did not own it"
        );
        let _ = std::fs::remove_file(&path);
    }
    assert!(
        shm_objects(&name).is_empty(),
        "{mode} {kind} {attack:?}: objects left: {:?}",
        shm_objects(&name)
    );
}

#[test]
fn truncating_the_buffer_segment_fails_the_set_without_sigbus() {
    run_attack("backup", "buf0", Attack::Truncate);
    run_attack("restore", "buf0", Attack::Truncate);
}

#[test]
fn truncating_the_control_object_fails_the_set_without_sigbus() {
    run_attack("backup", "ctl", Attack::Truncate);
    run_attack("restore", "ctl", Attack::Truncate);
}

#[test]
fn growing_unlinking_or_replacing_objects_crashes_nobody() {
    for kind in ["ctl", "buf0"] {
        for attack in [Attack::Grow, Attack::Unlink, Attack::Replace] {
            run_attack("backup", kind, attack);
        }
    }
    run_attack("restore", "buf0", Attack::Replace);
}

#[test]
fn a_completion_ring_naming_no_command_fails_the_set() {
    run_attack("backup", "ctl", Attack::BadCompletion);
    run_attack("restore", "ctl", Attack::BadCompletion);
}

/// A client that completes a VDC_Write or VDC_Read claiming more bytes than the
/// command asked for: the server does not take it (the BACKUP must not be
/// reported successful).
#[test]
fn more_bytes_than_requested_fails_the_set() {
    for (mode, bytes) in [("backup", u32::MAX), ("backup", 65537), ("restore", 65537)] {
        let name = uniq("lie");
        let mut client = Peer::spawn(
            "client",
            &a(&[
                ("set", name.clone()),
                ("lie_at", "5".into()),
                ("lie_bytes", bytes.to_string()),
                ("eof_after", "64".into()),
            ]),
        );
        client.expect("created=1", 30);
        let mut server = Peer::spawn(
            "server",
            &a(&[
                ("set", name.clone()),
                ("mode", mode.into()),
                ("total", (4u64 << 20).to_string()),
                ("xfer", "65536".into()),
            ]),
        );
        let lines = server.rest(60);
        client.rest(60);
        assert_clean_exit(&mut server, "server");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("wait=VD_E_UNEXPECTED") || l.contains("wait=VD_E_ABORT")),
            "{mode} {bytes}: {lines:?}"
        );
        assert!(shm_objects(&name).is_empty(), "{:?}", shm_objects(&name));
    }
}

/// A server whose final configuration breaks the rules (the test writes it into
/// the control object as a hostile server would): the client's GetConfiguration
/// refuses it with VD_E_UNEXPECTED instead of working with it.
#[test]
fn a_hostile_server_configuration_is_refused_by_the_client() {
    // server_cfg at header offset 240: 11 u32 in VDConfig order (deviceCount,
    // features, prefixZoneSize, alignment, softFileMarkBlockSize, EOMWarningSize,
    // serverTimeOut, blockSize, maxIODepth, maxTransferSize, bufferAreaSize).
    let cases: [(&str, [u32; 11]); 3] = [
        (
            "max transfer 0xFFFFFFFF",
            [1, 1, 0, 512, 0, 0, 0, 512, 4, u32::MAX, 0],
        ),
        ("block size 0", [1, 1, 0, 512, 0, 0, 0, 0, 4, 65536, 0]),
        ("alignment 3", [1, 1, 0, 3, 0, 0, 0, 512, 4, 65536, 0]),
    ];
    for (what, cfg) in cases {
        let name = uniq("hcfg");
        let mut client = Peer::spawn(
            "client",
            &a(&[("set", name.clone()), ("config_ms", "20000".into())]),
        );
        client.expect("created=1", 30);
        let path = obj_path("ctl", &name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        for (i, v) in cfg.iter().enumerate() {
            f.write_at(&v.to_le_bytes(), 240 + 4 * i as u64)
                .expect("cfg");
        }
        // state (offset 320) = CONFIGURED (4); the client's wait sees the change
        // within its health slice even without a futex wake.
        f.write_at(&4u32.to_le_bytes(), 320).expect("state");
        let line = client.expect("config=", 30);
        assert!(
            line.contains("config=VD_E_UNEXPECTED"),
            "{what}: the client accepted or misreported it: {line}"
        );
        client.rest(30);
        assert_clean_exit(&mut client, "client");
        assert!(shm_objects(&name).is_empty(), "{:?}", shm_objects(&name));
    }
}

/// A client that creates the set and then never configures nor opens its device:
/// the server gives up after its open timeout instead of waiting for ever.
#[test]
fn a_client_that_never_opens_its_device_is_dropped_after_the_open_timeout() {
    let name = uniq("noopen");
    let set = openvdi::ClientSet::create(
        &name,
        &openvdi::VdConfig {
            device_count: 1,
            ..Default::default()
        },
    )
    .expect("create");
    let mut server = Peer::spawn(
        "server",
        &a(&[
            ("set", name.clone()),
            ("total", "1000000".into()),
            ("open_ms", "1500".into()),
        ]),
    );
    let lines = server.rest(60);
    assert_clean_exit(&mut server, "server");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("wait=VD_E_TIMEOUT") || l.contains("wait=VD_E_ABORT")),
        "{lines:?}"
    );
    let _ = set.close();
    assert!(shm_objects(&name).is_empty(), "{:?}", shm_objects(&name));
}

/// A set created by another user: a server that does not serve that user refuses
/// it (VD_E_SECURITY) and never creates a buffer object; one configured to serve
/// the user creates its buffer objects owned by that user, mode 0600 — not with the
/// mode and group the header asks for.
#[test]
fn a_set_of_another_user_is_served_only_when_configured() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if openvdi_euid() != 0 {
        println!("skipped: needs root to run a client as another user");
        return;
    }
    // An unused uid/gid: no account is needed to own a process and its objects.
    let other: u32 = 54_321 + (std::process::id() % 1000);
    let spawn_client = |name: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_openvdi-peer"));
        cmd.arg("client")
            .arg(format!("set={name}"))
            .arg("config_ms=20000")
            .uid(other)
            .gid(other)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        Peer::from_command(cmd)
    };

    // 1. Not served: refused before any buffer exists.
    let name = uniq("ou");
    let mut client = spawn_client(&name);
    client.expect("created=1", 30);
    let m = std::fs::metadata(obj_path("ctl", &name)).expect("control object");
    assert_eq!(m.uid(), other);
    let mut server = Peer::spawn("server", &a(&[("set", name.clone())]));
    let l = server.expect("open=", 30);
    assert!(l.contains("open=VD_E_SECURITY"), "{l}");
    assert_clean_exit(&mut server, "server");
    assert!(std::fs::metadata(obj_path("buf0", &name)).is_err());
    let _ = client.child.kill();
    let _ = client.child.wait();
    openvdi::sweep_stale_sets();
    let _ = std::fs::remove_file(obj_path("ctl", &name));

    // 2. Served: the segment belongs to that user, 0600.
    let name = uniq("os");
    let mut client = spawn_client(&name);
    client.expect("created=1", 30);
    let mut server = Peer::spawn_env(
        "server",
        &a(&[
            ("set", name.clone()),
            ("total", "1000000".into()),
            ("stay", "1".into()),
        ]),
        &[("OPENVDI_SERVE_UIDS", other.to_string())],
    );
    server.expect("configured=1", 30);
    let seg = std::fs::metadata(obj_path("buf0", &name)).expect("segment");
    assert_eq!(seg.uid(), other, "segment owner");
    assert_eq!(seg.mode() & 0o777, 0o600, "segment mode");
    server.expect("waiting=1", 60);
    server.send("go");
    server.rest(60);
    client.rest(60);
    assert!(shm_objects(&name).is_empty(), "{:?}", shm_objects(&name));
}

fn openvdi_euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
}

/// 100 clients SIGKILLed at random points — right after Create with no server,
/// with a server that opened the set and died too, and mid-stream — leave nothing
/// in /dev/shm once the next openvdi call (a Create of an unrelated name) ran.
#[test]
fn killed_clients_leave_no_object_after_the_next_call() {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut names = Vec::new();
    for round in 0..100 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let name = uniq("k100");
        let mut client = Peer::spawn(
            "client",
            &a(&[("set", name.clone()), ("eof_after", "1000000".into())]),
        );
        client.expect("created=1", 30);
        match rng % 3 {
            0 => {
                client.kill9();
                client.wait_exit(30);
            }
            1 => {
                let mut server = Peer::spawn(
                    "server",
                    &a(&[("set", name.clone()), ("stop_at", "open".into())]),
                );
                server.expect("set_open=1", 30);
                client.kill9();
                client.wait_exit(30);
                server.kill9();
                server.wait_exit(30);
            }
            _ => {
                let mut server = Peer::spawn(
                    "server",
                    &a(&[("set", name.clone()), ("total", (1u64 << 30).to_string())]),
                );
                client.expect(&format!("took={} ", 1 + (rng >> 8) % 50), 60);
                client.kill9();
                client.wait_exit(30);
                // The server notices, aborts and removes the objects as it closes.
                server.rest(60);
            }
        }
        names.push((round, name));
    }
    let probe = uniq("probe");
    let set = openvdi::ClientSet::create(
        &probe,
        &openvdi::VdConfig {
            device_count: 1,
            ..Default::default()
        },
    )
    .expect("create");
    set.close().expect("close");
    let left: Vec<_> = names
        .iter()
        .filter(|(_, n)| !shm_objects(n).is_empty())
        .collect();
    assert!(left.is_empty(), "objects left by killed clients: {left:?}");
}

/// A peer speaking another layout version (1: the counter hand-off; 2: the head word,
/// index ring and shared slot that version 3's one-line ring entries replaced) is
/// refused at Open with VD_E_NOTSUPPORTED, never half-understood.
#[test]
fn a_peer_of_another_layout_version_is_refused() {
    for version in [1u32, 2] {
        let name = uniq("ver");
        let set = openvdi::ClientSet::create(
            &name,
            &openvdi::VdConfig {
                device_count: 1,
                ..Default::default()
            },
        )
        .expect("create");
        let f = OpenOptions::new()
            .write(true)
            .open(obj_path("ctl", &name))
            .expect("open");
        f.write_at(&version.to_le_bytes(), 8).expect("version");
        let mut server = Peer::spawn("server", &a(&[("set", name.clone())]));
        let l = server.expect("open=", 30);
        assert!(
            l.contains("open=VD_E_NOTSUPPORTED"),
            "version {version}: {l}"
        );
        assert_clean_exit(&mut server, "server");
        let _ = set.close();
        assert!(shm_objects(&name).is_empty(), "{:?}", shm_objects(&name));
    }
}
