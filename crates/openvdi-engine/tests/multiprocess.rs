//! The engine as its own process: `openvdi-engine exec` and `openvdi-sqlcmd` serve
//! a client in this process (separate processes sharing only the VDI objects).

mod common;

use std::process::{Command, Stdio};

use common::*;
use openvdi_engine::Engine;

fn sqlcmd_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_openvdi-sqlcmd"))
}

#[test]
fn engine_process_backs_up_and_restores_byte_identical() {
    let d = data_dir();
    let e = Engine::open(d.path()).unwrap();
    e.create_database("mp", 3 << 20).unwrap();
    e.modify("mp", 9).unwrap();

    let c = Client::start("mp", 4, ClientOpts::default(), vec![]);
    let sql = format!(
        "BACKUP DATABASE mp TO {} WITH CHECKSUM",
        device_clause(&c.devices)
    );
    let (code, out, err) = ChildGuard::engine_exec(d.path(), &sql, &[]).wait();
    let (_, logs) = c.finish();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("BACKUP DATABASE successfully processed"),
        "{out}"
    );
    assert!(
        out.contains("Processed 384 pages for database 'mp', file 'mp' on file 1."),
        "{out}"
    );
    let streams: Vec<Vec<u8>> = logs.into_iter().map(|l| l.data).collect();

    let c = Client::start("mp", 4, ClientOpts::default(), streams);
    let sql = format!(
        "RESTORE DATABASE mq FROM {} WITH MOVE 'mp' TO '{}', MOVE 'mp_log' TO '{}'",
        device_clause(&c.devices),
        d.path().join("mq.mdf").display(),
        d.path().join("mq_log.ldf").display()
    );
    let (code, out, err) = ChildGuard::engine_exec(d.path(), &sql, &[]).wait();
    let _ = c.finish();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("RESTORE DATABASE successfully processed"),
        "{out}"
    );
    for (a, b) in [("mp.mdf", "mq.mdf"), ("mp_log.ldf", "mq_log.ldf")] {
        assert_eq!(
            std::fs::read(d.path().join(a)).unwrap(),
            std::fs::read(d.path().join(b)).unwrap(),
            "{a} vs {b}"
        );
    }
}

#[test]
fn engine_process_reports_errors_with_exit_status_1() {
    let d = data_dir();
    let (code, out, _) =
        ChildGuard::engine_exec(d.path(), "BACKUP DATABASE nope TO VIRTUAL_DEVICE='x'", &[]).wait();
    assert_eq!(code, Some(1));
    assert!(out.contains("Msg 911, Level 16, State 1"), "{out}");
    assert!(
        out.contains("BACKUP DATABASE is terminating abnormally."),
        "{out}"
    );
}

#[test]
fn sqlcmd_runs_a_backup_the_way_vdi_clients_call_it() {
    let d = data_dir();
    Engine::open(d.path())
        .unwrap()
        .create_database("sq", 1 << 20)
        .unwrap();
    let c = Client::start("sq", 1, ClientOpts::default(), vec![]);
    let sql = format!(
        "BACKUP DATABASE [sq] TO VIRTUAL_DEVICE='{}' WITH STATS = 25",
        c.name
    );
    let child = Command::new(sqlcmd_bin())
        .args(["-S", ".", "-U", "sa", "-P", "secret", "-b", "-Q", &sql])
        .env("OPENVDI_DATA_DIR", d.path())
        .env_remove("OPENVDI_FAULT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out, err) = ChildGuard(Some(child)).wait();
    let (_, logs) = c.finish();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("25 percent processed."), "{out}");
    assert!(
        out.contains("BACKUP DATABASE successfully processed"),
        "{out}"
    );
    assert!(!logs[0].data.is_empty());

    // -b: an error gives exit status 1, sqlcmd's message format.
    let child = Command::new(sqlcmd_bin())
        .args(["-S", ".", "-E", "-b", "-Q", "RESTORE FOO"])
        .env("OPENVDI_DATA_DIR", d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out, _) = ChildGuard(Some(child)).wait();
    assert_eq!(code, Some(1));
    assert!(out.contains("Msg 102, Level 15, State 1, Server"), "{out}");
    assert!(out.contains("Incorrect syntax near 'FOO'."), "{out}");
}
