//! The client state table (reference §2.1, §10), IO-ERROR/ClearError (§6.0),
//! VDC_Complete and name validation. The server runs on a thread here: these cells
//! are about one side's answers; tests/processes.rs covers the cross-process paths.

mod common;
use common::uniq;
use openvdi::*;
use std::sync::mpsc;

const T: i64 = 20_000;

fn cfg(n: u32) -> VdConfig {
    VdConfig {
        device_count: n,
        ..Default::default()
    }
}

fn server_cfg(features: u32) -> ServerConfig {
    ServerConfig {
        features,
        block_size: 512,
        alignment: 0,
        max_transfer_size: 65536,
        timeout: Timeout::INFINITE,
        device_names: vec![],
    }
}

fn code<T>(r: Result<T>) -> HResult {
    match r {
        Ok(_) => HResult::NOERROR,
        Err(e) => e.hresult(),
    }
}

/// Open the server side on a thread and configure it; returns the set.
fn configured_server(name: &str, features: u32) -> ServerSet {
    let s = ServerSet::open(name, Timeout::from_millis(T)).expect("server open");
    s.begin_configuration(&server_cfg(features)).expect("begin");
    s.request_buffers(65536, 0, 8).expect("request");
    s.end_configuration().expect("end");
    s
}

#[test]
fn configuration_cells() {
    let name = uniq("cfg");
    let set = ClientSet::create(&name, &cfg(2)).expect("create");
    // Configurable: OpenDevice → PROTOCOL; GetConfiguration times out, repeatably, state unchanged.
    assert_eq!(code(set.open_device(&name)), HResult::VD_E_PROTOCOL);
    assert_eq!(
        code(set.get_configuration(Timeout::POLL)),
        HResult::VD_E_TIMEOUT
    );
    assert_eq!(
        code(set.get_configuration(Timeout::from_millis(20))),
        HResult::VD_E_TIMEOUT
    );
    assert_eq!(code(set.open_device(&name)), HResult::VD_E_PROTOCOL);
    let n2 = name.clone();
    let (tx, rx) = mpsc::channel();
    let srv = std::thread::spawn(move || {
        let s = configured_server(&n2, vdf::VDF_WriteMedia);
        let d0 = s.open_device(&n2).expect("d0");
        let d1 = s.open_device(&format!("{n2}1")).expect("d1");
        assert_eq!(code(s.open_device(&n2)), HResult::VD_E_OPEN);
        rx.recv().expect("go");
        d0.close().expect("close d0");
        assert_eq!(code(d0.close()), HResult::VD_E_CLOSE);
        rx.recv().expect("go");
        // The client's Close with d1 open aborted the set.
        assert_eq!(code(d1.close()), HResult::VD_E_ABORT);
        s.close().expect("server close");
    });
    let c1 = set
        .get_configuration(Timeout::from_millis(T))
        .expect("configuration");
    // Again, from another thread, same data.
    let s2 = set.clone();
    let c2 = std::thread::spawn(move || s2.get_configuration(Timeout::POLL).expect("again"))
        .join()
        .unwrap();
    assert_eq!(c1, c2);
    assert_eq!(c1.features, vdf::VDF_WriteMedia);
    assert_eq!(c1.block_size, 512);
    // OpenDevice: unknown → INVALID; same twice → PROTOCOL; all open → OPEN.
    assert_eq!(code(set.open_device("nope")), HResult::VD_E_INVALID);
    let d0 = set.open_device(&name).expect("open d0");
    assert_eq!(code(set.open_device(&name)), HResult::VD_E_PROTOCOL);
    let d1 = set.open_device(&format!("{name}1")).expect("open d1");
    assert_eq!(code(set.open_device(&name)), HResult::VD_E_OPEN);
    assert_eq!(code(set.open_device("nope")), HResult::VD_E_OPEN);
    // Active: GetCommand polls → TIMEOUT; VD_E_CLOSE once closed; then PROTOCOL.
    assert_eq!(code(d0.get_command(Timeout::POLL)), HResult::VD_E_TIMEOUT);
    tx.send(()).unwrap();
    assert_eq!(
        code(d0.get_command(Timeout::from_millis(T))),
        HResult::VD_E_CLOSE
    );
    assert_eq!(code(d0.get_command(Timeout::POLL)), HResult::VD_E_PROTOCOL);
    // Close with a device still open (d1): VD_E_OPEN and an abort.
    assert_eq!(code(set.close()), HResult::VD_E_OPEN);
    assert_eq!(
        code(d1.get_command(Timeout::POLL)),
        HResult::VD_E_PROTOCOL,
        "closed set"
    );
    assert_eq!(code(set.close()), HResult::VD_E_PROTOCOL, "Close twice");
    tx.send(()).unwrap();
    srv.join().unwrap();
}

#[test]
fn abort_cells() {
    let name = uniq("ab");
    let set = ClientSet::create(&name, &cfg(1)).expect("create");
    let n2 = name.clone();
    let srv = std::thread::spawn(move || {
        let s = configured_server(&n2, vdf::VDF_WriteMedia);
        let d = s.open_device(&n2).expect("d");
        let b = s.allocate_buffer(4096, 0).expect("buf");
        d.send_command(&ServerCommand {
            code: vdc::VDC_Write,
            size: 4096,
            position: 0,
            buffer: Some(&b),
            tag: 1,
        })
        .expect("send");
        d.send_command(&ServerCommand {
            code: vdc::VDC_Flush,
            size: 0,
            position: 0,
            buffer: None,
            tag: 2,
        })
        .expect("send");
        let mut got = Vec::new();
        loop {
            match d.wait_completion(Timeout::from_millis(T)) {
                Ok(c) => got.push((c.tag, c.completion_code)),
                Err(e) => {
                    assert_eq!(e.hresult(), HResult::VD_E_ABORT);
                    break;
                }
            }
        }
        got.sort();
        assert_eq!(
            got,
            vec![(1, 995), (2, 995)],
            "outstanding commands complete with ERROR_OPERATION_ABORTED"
        );
        assert_eq!(
            code(d.send_command(&ServerCommand {
                code: vdc::VDC_Flush,
                size: 0,
                position: 0,
                buffer: None,
                tag: 3
            })),
            HResult::VD_E_ABORT
        );
        let _ = s.close();
    });
    set.get_configuration(Timeout::from_millis(T))
        .expect("configuration");
    let d = set.open_device(&name).expect("open");
    let c = d.get_command(Timeout::from_millis(T)).expect("command");
    // Take the Flush too, then block in GetCommand on another thread: our
    // SignalAbort must release it with VD_E_ABORT.
    let f = d.get_command(Timeout::from_millis(T)).expect("flush");
    assert_eq!(f.code(), vdc::VDC_Flush);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| d.get_command(Timeout::from_millis(T)));
        set.signal_abort().expect("abort");
        assert_eq!(code(h.join().unwrap()), HResult::VD_E_ABORT);
    });
    assert_eq!(code(d.get_command(Timeout::POLL)), HResult::VD_E_ABORT);
    assert_eq!(
        code(d.complete_command(&c, 0, 4096, 0)),
        HResult::VD_E_ABORT
    );
    assert_eq!(
        code(set.get_configuration(Timeout::POLL)),
        HResult::VD_E_ABORT
    );
    assert_eq!(code(set.open_device(&name)), HResult::VD_E_ABORT);
    assert_eq!(
        code(set.signal_abort()),
        HResult::NOERROR,
        "SignalAbort in Abort is OK"
    );
    assert_eq!(code(set.close()), HResult::NOERROR, "Close in Abort is OK");
    srv.join().unwrap();
}

#[test]
fn completion_cells_and_io_error_then_clear_error() {
    let name = uniq("io");
    let set = ClientSet::create(&name, &cfg(1)).expect("create");
    let n2 = name.clone();
    let (tx, rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let srv = std::thread::spawn(move || {
        let s = configured_server(&n2, vdf::VDF_WriteMedia);
        let d = s.open_device(&n2).expect("d");
        let bufs: Vec<_> = (0..4)
            .map(|_| s.allocate_buffer(4096, 0).expect("buf"))
            .collect();
        for (i, b) in bufs.iter().enumerate() {
            d.send_command(&ServerCommand {
                code: vdc::VDC_Write,
                size: 4096,
                position: 0,
                buffer: Some(b),
                tag: i as u64,
            })
            .expect("send");
        }
        sent_tx.send(()).expect("sent");
        let mut got = Vec::new();
        for _ in 0..4 {
            let c = d
                .wait_completion(Timeout::from_millis(T))
                .expect("completion");
            got.push((c.tag, c.completion_code));
        }
        got.sort();
        // #0 ok, #1 failed by the client, #2 outstanding when it failed → completed
        // by the client with success, #3 queued behind → 1117 without reaching it.
        assert_eq!(got, vec![(0, 0), (1, 29), (2, 0), (3, 1117)]);
        assert!(d.is_io_error());
        assert_eq!(
            code(d.send_command(&ServerCommand {
                code: vdc::VDC_Write,
                size: 4096,
                position: 0,
                buffer: Some(&bufs[0]),
                tag: 9
            })),
            HResult::VD_E_IO_ERROR
        );
        d.send_command(&ServerCommand {
            code: vdc::VDC_ClearError,
            size: 0,
            position: 0,
            buffer: None,
            tag: 10,
        })
        .expect("clear");
        let c = d
            .wait_completion(Timeout::from_millis(T))
            .expect("clear completion");
        assert_eq!((c.tag, c.completion_code), (10, 0));
        assert!(!d.is_io_error());
        d.send_command(&ServerCommand {
            code: vdc::VDC_Write,
            size: 4096,
            position: 0,
            buffer: Some(&bufs[0]),
            tag: 11,
        })
        .expect("active again");
        assert_eq!(
            d.wait_completion(Timeout::from_millis(T))
                .expect("c")
                .completion_code,
            0
        );
        rx.recv().unwrap();
        d.close().expect("close");
        s.close().expect("server close");
    });
    set.get_configuration(Timeout::from_millis(T))
        .expect("configuration");
    let d = set.open_device(&name).expect("open");
    let c0 = d.get_command(Timeout::from_millis(T)).expect("c0");
    d.complete_command(&c0, 0, 4096, 0).expect("complete c0");
    assert_eq!(
        code(d.complete_command(&c0, 0, 4096, 0)),
        HResult::VD_E_INVALID,
        "double completion"
    );
    let c1 = d.get_command(Timeout::from_millis(T)).expect("c1");
    let c2 = d.get_command(Timeout::from_millis(T)).expect("c2");
    // Wait until #3 is queued too: a send after the failure would be refused.
    sent_rx
        .recv_timeout(std::time::Duration::from_millis(T as u64))
        .expect("all four sent");
    d.complete_command(&c1, win32::ERROR_WRITE_FAULT, 0, 0)
        .expect("fail c1");
    // ClearError must not be delivered while c2 is outstanding.
    assert_eq!(
        code(d.get_command(Timeout::from_millis(50))),
        HResult::VD_E_TIMEOUT
    );
    d.complete_command(&c2, 0, 4096, 0).expect("complete c2");
    let ce = d.get_command(Timeout::from_millis(T)).expect("clear error");
    assert_eq!(
        ce.code(),
        vdc::VDC_ClearError,
        "#3 never reached the client"
    );
    d.complete_command(&ce, 0, 0, 0)
        .expect("complete ClearError");
    let c4 = d.get_command(Timeout::from_millis(T)).expect("after clear");
    assert_eq!(c4.code(), vdc::VDC_Write);
    d.complete_command(&c4, 0, 4096, 0).expect("complete");
    // A command of another device or a forged id → INVALID.
    assert_eq!(
        code(d.complete_id(
            CommandId {
                slot: 63,
                seq: 12345
            },
            0,
            0,
            0
        )),
        HResult::VD_E_INVALID
    );
    assert_eq!(
        code(d.complete_id(CommandId { slot: 9999, seq: 1 }, 0, 0, 0)),
        HResult::VD_E_INVALID
    );
    tx.send(()).unwrap();
    assert_eq!(
        code(d.get_command(Timeout::from_millis(T))),
        HResult::VD_E_CLOSE
    );
    assert_eq!(
        code(d.complete_command(&c4, 0, 0, 0)),
        HResult::VD_E_PROTOCOL,
        "device closed"
    );
    set.close().expect("close");
    srv.join().unwrap();
}

#[test]
fn request_complete_negotiates_a_final_vdc_complete() {
    let name = uniq("cp");
    let set = ClientSet::create(
        &name,
        &VdConfig {
            device_count: 1,
            features: vdf::VDF_RequestComplete,
            ..Default::default()
        },
    )
    .expect("create");
    let n2 = name.clone();
    let srv = std::thread::spawn(move || {
        let s = ServerSet::open(&n2, Timeout::from_millis(T)).expect("open");
        let client = s.get_configuration().expect("client cfg");
        assert!(client.features & vdf::VDF_RequestComplete != 0);
        s.begin_configuration(&server_cfg(vdf::VDF_WriteMedia | vdf::VDF_CompleteEnabled))
            .expect("begin");
        s.end_configuration().expect("end");
        let d = s.open_device(&n2).expect("d");
        d.send_command(&ServerCommand {
            code: vdc::VDC_Flush,
            size: 0,
            position: 0,
            buffer: None,
            tag: 1,
        })
        .expect("flush");
        d.send_command(&ServerCommand {
            code: vdc::VDC_Complete,
            size: 0,
            position: 0,
            buffer: None,
            tag: 2,
        })
        .expect("complete");
        let a = d.wait_completion(Timeout::from_millis(T)).expect("c");
        let b = d.wait_completion(Timeout::from_millis(T)).expect("c");
        assert_eq!((a.tag, b.tag, b.completion_code), (1, 2, 0));
        d.close().expect("close");
        s.close().expect("close");
    });
    let c = set
        .get_configuration(Timeout::from_millis(T))
        .expect("configuration");
    assert!(c.features & vdf::VDF_CompleteEnabled != 0);
    let d = set.open_device(&name).expect("open");
    let mut codes = Vec::new();
    while let Ok(cmd) = d.get_command(Timeout::from_millis(T)) {
        codes.push(cmd.code());
        d.complete_command(&cmd, 0, 0, 0).expect("complete");
    }
    assert_eq!(codes, vec![vdc::VDC_Flush, vdc::VDC_Complete]);
    set.close().expect("close");
    srv.join().unwrap();
    // Without the request, the server may not enable it.
    let n3 = uniq("cq");
    let set = ClientSet::create(&n3, &cfg(1)).expect("create");
    let s = ServerSet::open(&n3, Timeout::from_millis(T)).expect("open");
    assert_eq!(
        code(s.begin_configuration(&server_cfg(vdf::VDF_WriteMedia | vdf::VDF_CompleteEnabled))),
        HResult::VD_E_INVALID
    );
    s.close().expect("close");
    set.close().expect("close");
}

#[test]
fn names_and_configurations_are_validated() {
    for bad in ["", "a/b", "a\\b", "a\0b"] {
        assert_eq!(
            code(ClientSet::create(bad, &cfg(1))),
            HResult::VD_E_INVALID,
            "{bad:?}"
        );
        assert_eq!(
            code(ServerSet::open(bad, Timeout::POLL)),
            HResult::VD_E_INVALID,
            "{bad:?}"
        );
    }
    let long = "x".repeat(MAX_NAME_LEN + 1);
    assert_eq!(
        code(ClientSet::create(&long, &cfg(1))),
        HResult::VD_E_INVALID
    );
    let ok_long = format!("{}{}", uniq("l"), "y".repeat(60));
    ClientSet::create(&ok_long, &cfg(1))
        .expect("a long valid name")
        .close()
        .expect("close");
    assert_eq!(
        code(ClientSet::create(&uniq("z"), &cfg(0))),
        HResult::VD_E_NOTSUPPORTED
    );
    assert_eq!(
        code(ClientSet::create(&uniq("z"), &cfg(65))),
        HResult::VD_E_NOTSUPPORTED
    );
    assert_eq!(
        code(ClientSet::create(
            &uniq("z"),
            &VdConfig {
                device_count: 1,
                features: vdf::VDF_WriteMedia,
                ..Default::default()
            }
        )),
        HResult::VD_E_NOTSUPPORTED
    );
    assert_eq!(
        code(ClientSet::create(
            &uniq("z"),
            &VdConfig {
                device_count: 1,
                alignment: 3,
                ..Default::default()
            }
        )),
        HResult::VD_E_NOTSUPPORTED
    );
    // Server: nobody created the set → times out; a second server → BUSY.
    assert_eq!(
        code(ServerSet::open(&uniq("none"), Timeout::from_millis(30))),
        HResult::VD_E_TIMEOUT
    );
    let name = uniq("dup");
    let set = ClientSet::create(&name, &cfg(1)).expect("create");
    assert_eq!(
        code(ClientSet::create(&name, &cfg(1))),
        HResult::VD_E_BUSY,
        "a live owner holds the name"
    );
    let s = ServerSet::open(&name, Timeout::POLL).expect("open");
    assert_eq!(
        code(ServerSet::open(&name, Timeout::POLL)),
        HResult::VD_E_BUSY
    );
    // Server-side validation of BeginConfiguration.
    let mut bad = server_cfg(0);
    assert_eq!(
        code(s.begin_configuration(&bad)),
        HResult::VD_E_INVALID,
        "no direction"
    );
    bad = server_cfg(vdf::VDF_WriteMedia);
    bad.block_size = 1000;
    assert_eq!(code(s.begin_configuration(&bad)), HResult::VD_E_INVALID);
    bad = server_cfg(vdf::VDF_WriteMedia);
    bad.max_transfer_size = 1000;
    assert_eq!(code(s.begin_configuration(&bad)), HResult::VD_E_INVALID);
    bad = server_cfg(vdf::VDF_WriteMedia);
    bad.device_names = vec!["other".into()];
    assert_eq!(code(s.begin_configuration(&bad)), HResult::VD_E_INVALID);
    assert_eq!(
        code(s.end_configuration()),
        HResult::VD_E_PROTOCOL,
        "End before Begin"
    );
    s.begin_configuration(&server_cfg(vdf::VDF_WriteMedia))
        .expect("begin");
    assert_eq!(
        code(s.begin_configuration(&server_cfg(vdf::VDF_WriteMedia))),
        HResult::VD_E_PROTOCOL
    );
    s.end_configuration().expect("end");
    assert_eq!(
        code(s.allocate_buffer(4096, 0)),
        HResult::VD_E_MEMORY,
        "no buffers were requested"
    );
    s.request_buffers(4096, 0, 2)
        .expect("more buffers after configuration");
    let b1 = s.allocate_buffer(4096, 0).expect("b1");
    let b2 = s.allocate_buffer(4096, 0).expect("b2");
    assert_eq!(b1.as_ptr() as usize % 512, 0, "aligned to the block size");
    assert!(s.is_shared_buffer(b2.as_ptr()));
    s.free_buffer(b1).expect("free");
    s.allocate_buffer(4096, 0).expect("reuse");
    assert_eq!(code(s.close()), HResult::NOERROR);
    set.close().expect("close");
}

/// §2.1: SignalAbort is legal in Configurable (→ Abort); then GetConfiguration and
/// OpenDevice return VD_E_ABORT, SignalAbort again is OK, Close is OK and removes
/// the objects; a server arriving afterwards cannot use the set.
#[test]
fn signal_abort_before_configuration() {
    let name = uniq("sb");
    let set = ClientSet::create(&name, &cfg(1)).expect("create");
    set.signal_abort().expect("SignalAbort in Configurable");
    assert_eq!(
        code(set.get_configuration(Timeout::from_millis(T))),
        HResult::VD_E_ABORT,
        "returns at once, not after the timeout"
    );
    assert_eq!(code(set.open_device(&name)), HResult::VD_E_ABORT);
    assert_eq!(code(set.signal_abort()), HResult::NOERROR);
    if let Ok(s) = ServerSet::open(&name, Timeout::POLL) {
        assert_eq!(
            code(s.begin_configuration(&server_cfg(vdf::VDF_WriteMedia))),
            HResult::VD_E_ABORT
        );
        let _ = s.close();
    }
    set.close().expect("Close in Abort");
    assert!(
        std::fs::metadata(format!("/dev/shm/openvdi-ctl.{name}")).is_err(),
        "the control object is gone"
    );
}

/// §1.8: timeouts are milliseconds; 0 polls; a negative value and 0xFFFFFFFF wait
/// forever; a poll of an unconfigured set returns VD_E_TIMEOUT at once.
#[test]
fn timeout_values() {
    assert_eq!(Timeout::from_millis(0), Timeout::POLL);
    assert_eq!(Timeout::from_millis(-1), Timeout::INFINITE);
    assert_eq!(Timeout::from_millis(i64::from(i32::MIN)), Timeout::INFINITE);
    assert_eq!(Timeout::from_millis(0xFFFF_FFFF), Timeout::INFINITE);
    assert_eq!(
        Timeout::from_millis(0xFFFF_FFFE).duration(),
        Some(std::time::Duration::from_millis(0xFFFF_FFFE))
    );
    let name = uniq("tv");
    let set = ClientSet::create(&name, &cfg(1)).expect("create");
    assert_eq!(
        code(set.get_configuration(Timeout::from_millis(0))),
        HResult::VD_E_TIMEOUT
    );
    set.close().expect("close");
}
