//! One test per fault-injection mode: the client side gets the documented result
//! and nothing hangs (every client wait has a deadline, see `common`). Crash tests
//! run the engine as its own process, since it kills itself.

mod common;

use common::*;
use openvdi::{vdc, win32, HResult, Timeout};
use openvdi_engine::{Engine, Execution, FaultPlan};

fn engine(d: &tempfile::TempDir, fault: &str) -> Engine {
    let e = Engine::open(d.path()).unwrap();
    if e.database_info("f").is_err() {
        e.create_database("f", 4 << 20).unwrap();
    }
    e.with_fault(FaultPlan::parse(fault).unwrap())
}

fn backup_with(e: &Engine, n: usize, opts: ClientOpts) -> (Execution, Vec<DeviceLog>) {
    let c = Client::start("ft", n, opts, vec![]);
    let r = e.execute_detailed(&format!(
        "BACKUP DATABASE f TO {} WITH BUFFERCOUNT = 8",
        device_clause(&c.devices)
    ));
    let (cfg, logs) = c.finish();
    match cfg {
        Ok(_) => (r, logs),
        // An abort can beat the client's GetConfiguration: it then sees VD_E_ABORT
        // there, and never opens a device.
        Err(h) => {
            assert_eq!(h, HResult::VD_E_ABORT, "GetConfiguration failed otherwise");
            let log = DeviceLog {
                end: Some(Err(h)),
                ..Default::default()
            };
            (r, vec![log; n])
        }
    }
}

fn aborted(logs: &[DeviceLog]) -> bool {
    logs.iter().any(|l| l.end == Some(Err(HResult::VD_E_ABORT)))
}

#[test]
fn abort_after_bytes_gives_the_client_vd_e_abort() {
    let d = data_dir();
    let e = engine(&d, "abort-after-bytes:1048576");
    let (r, logs) = backup_with(&e, 2, ClientOpts::default());
    let err = r.error.expect("the backup fails");
    assert!(err.has(3013), "{err}");
    assert!(err.to_string().contains("995"), "{err}");
    assert!(aborted(&logs), "{logs:?}");
    // The chain did not move: no differential without a completed full.
    let err = e
        .with_fault(FaultPlan::none())
        .execute("BACKUP DATABASE f TO VIRTUAL_DEVICE='x' WITH DIFFERENTIAL")
        .unwrap_err();
    assert_eq!(err.number(), 3035);
}

#[test]
fn abort_after_commands_gives_the_client_vd_e_abort() {
    let d = data_dir();
    let e = engine(&d, "abort-after-commands:3");
    let (r, logs) = backup_with(&e, 1, ClientOpts::default());
    assert!(r.error.expect("fails").has(3013));
    assert!(aborted(&logs));
    assert!(logs[0].commands.len() <= 3, "{:?}", logs[0].commands);
}

#[test]
fn delay_makes_short_get_command_timeouts_fire_but_the_backup_succeeds() {
    let d = data_dir();
    let e = engine(&d, "delay:60");
    let opts = ClientOpts {
        get_command_timeout: Timeout::from_millis(15),
        ..Default::default()
    };
    let (r, logs) = backup_with(&e, 1, opts);
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(
        logs[0].timeouts > 0,
        "the client saw VD_E_TIMEOUT and retried"
    );
    assert_eq!(logs[0].end, Some(Ok(())));
}

#[test]
fn multi_flush_sends_several_flushes_then_complete() {
    let d = data_dir();
    let e = engine(&d, "multi-flush:3");
    let opts = ClientOpts {
        features: wants_complete(),
        ..Default::default()
    };
    let (r, logs) = backup_with(&e, 2, opts);
    assert!(r.error.is_none(), "{:?}", r.error);
    for l in &logs {
        let tail: Vec<u32> = l.commands.iter().rev().take(4).rev().copied().collect();
        assert_eq!(
            tail,
            vec![
                vdc::VDC_Flush,
                vdc::VDC_Flush,
                vdc::VDC_Flush,
                vdc::VDC_Complete
            ]
        );
    }
}

#[test]
fn stall_makes_the_client_time_out_and_give_up() {
    let d = data_dir();
    let e = engine(&d, "stall:30000");
    let opts = ClientOpts {
        get_command_timeout: Timeout::from_millis(100),
        abort_on_timeout: Some(3),
        ..Default::default()
    };
    let (r, logs) = backup_with(&e, 1, opts);
    assert!(logs[0].timeouts >= 3, "{:?}", logs[0]);
    assert_eq!(logs[0].end, Some(Err(HResult::VD_E_TIMEOUT)));
    let err = r.error.expect("the backup fails once the client aborts");
    assert!(err.has(3013));
    // The engine ended its stall because it saw the client's abort: a stall that ran
    // its 30 s out fails as timed out instead (1460).
    assert!(
        err.to_string().contains("the client signalled an abort"),
        "the engine noticed the client's abort: {err}"
    );
}

#[test]
fn fail_command_expects_not_supported_then_clear_error() {
    let d = data_dir();
    let e = engine(&d, "fail-command:2");
    let (r, logs) = backup_with(&e, 1, ClientOpts::default());
    assert!(r.error.is_none(), "{:?}", r.error);
    let c = &logs[0].commands;
    let k = c
        .iter()
        .position(|&x| x == vdc::VDC_Rewind)
        .expect("the unsupported command came");
    assert_eq!(c[k + 1], vdc::VDC_ClearError);
    assert_eq!(logs[0].end, Some(Ok(())));
    // A client that claims to support it makes the statement fail.
    let opts = ClientOpts {
        unsupported_code: win32::ERROR_SUCCESS,
        ..Default::default()
    };
    let (r, _) = backup_with(&e, 1, opts);
    let err = r.error.expect("fails");
    assert!(err.to_string().contains("fail-command"), "{err}");
}

#[test]
fn short_reads_vary_the_sizes_and_the_restore_succeeds() {
    let d = data_dir();
    let e = engine(&d, "");
    let (r, logs) = backup_with(&e, 1, ClientOpts::default());
    assert!(r.error.is_none());
    let stream = logs[0].data.clone();
    let e = e.with_fault(FaultPlan::parse("short-reads").unwrap());
    let c = Client::start("sr", 1, ClientOpts::default(), vec![stream]);
    let dp = d.path().join("g.mdf");
    let lp = d.path().join("g_log.ldf");
    let r = e.execute_detailed(&format!(
        "RESTORE DATABASE g FROM {} WITH MOVE 'f' TO '{}', MOVE 'f_log' TO '{}'",
        device_clause(&c.devices),
        dp.display(),
        lp.display()
    ));
    let (_, logs) = c.finish();
    assert!(r.error.is_none(), "{:?}", r.error);
    let sizes = &logs[0].sizes;
    assert!(sizes.iter().all(|&s| s <= 8 * 512 && s % 512 == 0));
    assert!(sizes.iter().collect::<std::collections::HashSet<_>>().len() > 3);
    assert_eq!(
        std::fs::read(&dp).unwrap(),
        std::fs::read(d.path().join("f.mdf")).unwrap()
    );
}

#[test]
fn server_time_out_fires_when_the_client_stops_completing() {
    let d = data_dir();
    let e = engine(&d, "");
    let opts = ClientOpts {
        server_time_out: 100,
        stall_after: Some(2),
        ..Default::default()
    };
    let (r, logs) = backup_with(&e, 1, opts);
    let err = r.error.expect("the engine gives up");
    assert!(err.has(3013));
    assert!(err.to_string().contains("serverTimeOut"), "{err}");
    assert_eq!(logs[0].end, Some(Err(HResult::VD_E_ABORT)));
}

#[test]
fn a_failed_vdc_complete_fails_the_backup() {
    let d = data_dir();
    let e = engine(&d, "");
    let opts = ClientOpts {
        features: wants_complete(),
        complete_code: win32::ERROR_DISK_FULL,
        ..Default::default()
    };
    let (r, _) = backup_with(&e, 1, opts);
    let err = r.error.expect("fails");
    assert!(err.to_string().contains("VDC_Complete"), "{err}");
    let err = e.execute("BACKUP LOG f TO VIRTUAL_DEVICE='x'").unwrap_err();
    assert_eq!(err.number(), 4214, "the chain did not start");
}

#[test]
fn every_end_of_stream_style_is_accepted() {
    let d = data_dir();
    let e = engine(&d, "");
    let (r, logs) = backup_with(&e, 1, ClientOpts::default());
    assert!(r.error.is_none());
    for style in [
        EofStyle::HandleEof,
        EofStyle::NoData,
        EofStyle::ShortSuccess,
    ] {
        let opts = ClientOpts {
            eof: style,
            ..Default::default()
        };
        let c = Client::start("eof", 1, opts, vec![logs[0].data.clone()]);
        let r = e.execute_detailed(&format!(
            "RESTORE VERIFYONLY FROM {}",
            device_clause(&c.devices)
        ));
        let _ = c.finish();
        assert!(r.error.is_none(), "{style:?}: {:?}", r.error);
    }
}

/// crash-at: the engine process kills itself; the client in this process sees
/// VD_E_ABORT promptly.
#[test]
fn crash_at_each_point_aborts_the_client() {
    let d = data_dir();
    Engine::open(d.path())
        .unwrap()
        .create_database("f", 4 << 20)
        .unwrap();
    for point in ["configured", "first-transfer", "mid", "flush"] {
        let c = Client::start("cr", 2, ClientOpts::default(), vec![]);
        let sql = format!("BACKUP DATABASE f TO {}", device_clause(&c.devices));
        let child = ChildGuard::engine_exec(
            d.path(),
            &sql,
            &[("OPENVDI_FAULT", &format!("crash-at:{point}"))],
        );
        let (code, _out, err) = child.wait();
        assert_eq!(code, None, "{point}: killed by a signal; stderr: {err}");
        let (cfg, logs) = c.finish();
        match cfg {
            // Right after configuring, the crash may be seen by GetConfiguration.
            Err(h) => assert_eq!(h, HResult::VD_E_ABORT, "{point}"),
            Ok(_) => assert!(aborted(&logs), "{point}: {logs:?}"),
        }
    }
}
