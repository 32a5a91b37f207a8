//! Real third-party SQL Server drivers against `openvdi-engine serve`: python-tds
//! (pytds, pure Python) and pymssql (FreeTDS, C), from PyPI. Each test starts the
//! endpoint on a free loopback port, runs `tests/tds/driver_client.py` with the
//! driver, and serves the virtual devices itself with the test VDI client.
//!
//! A driver that is not installed skips its test with the reason printed, unless
//! `OPENVDI_REQUIRE_TDS_DRIVERS=1` (test.sh sets it after installing them), which
//! turns the skip into a failure.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::endpoint::{no_set_left, Endpoint};
use common::*;
use openvdi::HResult;
use openvdi_engine::Engine;
use serde_json::{json, Value};

const USER: &str = "backup_operator";
const PASSWORD: &str = "S3cret-pässword";

/// The endpoint with this file's login.
fn endpoint(dir: &Path) -> Endpoint {
    Endpoint::start(
        &engine_bin(),
        dir,
        &[(USER, PASSWORD)],
        &["--open-timeout", "10"],
    )
}

/// Whether `module` imports; else why not (printed as the skip reason).
fn driver(module: &str, package: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let why = format!(
            "the Python module {module} is not installed (python3 -m pip install {package}; test.sh does)"
        );
        if std::env::var_os("OPENVDI_REQUIRE_TDS_DRIVERS").is_some_and(|v| v == "1") {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    ok
}

/// Run the driver script with `spec`; bounded by `deadline`.
fn client(spec: &Value, deadline: Duration) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tds/driver_client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(spec.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let start = Instant::now();
    loop {
        if let Some(_st) = child.try_wait().expect("wait") {
            break;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the driver script ran past {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "driver output is not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn spec(driver: &str, port: u16, steps: Value) -> Value {
    json!({"driver": driver, "port": port, "user": USER, "password": PASSWORD, "steps": steps})
}

fn numbers(step: &Value) -> Vec<u64> {
    step["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m[0].as_u64()).collect())
        .unwrap_or_default()
}

fn texts(step: &Value) -> String {
    step["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m[1].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The (type, text) of column `col` in the first row of the first set.
fn cell<'a>(step: &'a Value, col: &str) -> (&'a str, Option<&'a str>) {
    let set = &step["sets"][0];
    let i = set["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .position(|c| c == col)
        .unwrap_or_else(|| panic!("no column {col}"));
    let v = &set["rows"][0][i];
    (v[0].as_str().expect("type"), v[1].as_str())
}

#[test]
fn pytds_login_version_backup_headeronly() {
    if !driver("pytds", "python-tds") {
        return;
    }
    let dir = data_dir();
    Engine::open(dir.path())
        .unwrap()
        .create_database("sales", 2 << 20)
        .unwrap();
    let ep = endpoint(dir.path());

    // A wrong password: 18456, and the connection is closed.
    let r = client(
        &json!({"driver": "pytds", "port": ep.port, "user": USER, "password": "Not-The-Pässword", "steps": []}),
        Duration::from_secs(30),
    );
    assert_eq!(r["login_error"]["number"], 18456, "{r}");
    assert!(r["login_error"]["text"]
        .as_str()
        .unwrap()
        .contains(&format!("Login failed for user '{USER}'.")));
    let log = ep.log();
    assert!(log.contains("login refused"), "{log}");
    assert!(
        !log.contains("Not-The") && !log.contains(PASSWORD),
        "the password is never logged: {log}"
    );

    // A backup through a virtual device named by a parameter (pytds sends it as
    // sp_executesql with @device), then HEADERONLY of the stream.
    let c = Client::start("tdsbk", 1, ClientOpts::default(), vec![]);
    let r = client(
        &spec(
            "pytds",
            ep.port,
            json!([
                {"sql": "SELECT @@VERSION AS v, 7 AS n, SERVERPROPERTY('ProductVersion') AS pv"},
                {"sql": "USE sales"},
                {"sql": "BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = %(device)s WITH STATS = 50",
                 "params": {"device": c.devices[0]}},
                {"sql": "BACKUP DATABASE [nosuch] TO VIRTUAL_DEVICE = %(device)s",
                 "params": {"device": "nobody-serves-this"}},
            ]),
        ),
        Duration::from_secs(60),
    );
    let (cfg, logs) = c.finish();
    assert!(cfg.is_ok());
    assert_eq!(logs[0].end, Some(Ok(())));
    let stream = logs[0].data.clone();
    assert!(!stream.is_empty());
    let steps = r["steps"].as_array().unwrap_or_else(|| panic!("{r}"));
    let (ty, v) = cell(&steps[0], "v");
    assert_eq!(ty, "str");
    assert!(v.unwrap().contains("openvdi-engine"));
    assert_eq!(cell(&steps[0], "n"), ("int", Some("7")));
    assert_eq!(numbers(&steps[1]), vec![5701], "{}", steps[1]);
    let bk = &steps[2];
    assert!(bk["error"].is_null(), "{bk}");
    let nums = numbers(bk);
    assert!(
        nums.contains(&3211) && nums.contains(&4035) && nums.contains(&3014),
        "{bk}"
    );
    assert!(texts(bk).contains("BACKUP DATABASE successfully processed"));
    // A failed BACKUP: the driver raises with 3013, the last error SQL Server sends.
    assert_eq!(steps[3]["error"]["number"], 3013, "{}", steps[3]);
    assert!(steps[3]["error"]["text"]
        .as_str()
        .unwrap()
        .contains("Database 'nosuch' does not exist"));

    // HEADERONLY and FILELISTONLY: typed values.
    for (what, check) in [("HEADERONLY", true), ("FILELISTONLY", false)] {
        let c = Client::start("tdsho", 1, ClientOpts::default(), vec![stream.clone()]);
        let r = client(
            &spec(
                "pytds",
                ep.port,
                json!([{"sql": format!("RESTORE {what} FROM VIRTUAL_DEVICE = %(d)s"),
                        "params": {"d": c.devices[0]}}]),
            ),
            Duration::from_secs(60),
        );
        let _ = c.finish();
        let st = &r["steps"][0];
        assert!(st["error"].is_null(), "{st}");
        if check {
            assert_eq!(cell(st, "DatabaseName"), ("str", Some("sales")));
            assert_eq!(cell(st, "BackupType"), ("int", Some("1")));
            let (t, lsn) = cell(st, "FirstLSN");
            assert_eq!(t, "Decimal", "an LSN arrives as numeric(25,0)");
            assert!(lsn.unwrap().parse::<u128>().unwrap() > 0);
            assert_eq!(cell(st, "LastLSN").0, "Decimal");
            assert_eq!(cell(st, "BackupStartDate").0, "datetime");
            assert_eq!(cell(st, "IsCopyOnly"), ("bool", Some("False")));
            assert_eq!(cell(st, "BackupSetGUID").0, "UUID");
            assert_eq!(cell(st, "CompressedBackupSize").0, "int");
            assert_eq!(cell(st, "ExpirationDate"), ("NoneType", None));
        } else {
            let rows = st["sets"][0]["rows"].as_array().unwrap();
            assert_eq!(rows.len(), 2, "a data file and a log file");
            assert_eq!(cell(st, "LogicalName").0, "str");
            assert_eq!(cell(st, "FileId").0, "int");
            assert_eq!(cell(st, "Size").0, "Decimal");
        }
    }
}

#[test]
fn pytds_cancel_and_drop_abort_a_backup() {
    if !driver("pytds", "python-tds") {
        return;
    }
    let dir = data_dir();
    Engine::open(dir.path())
        .unwrap()
        .create_database("big", 8 << 20)
        .unwrap();
    let ep = endpoint(dir.path());
    let stall = ClientOpts {
        stall_after: Some(3),
        ..ClientOpts::default()
    };

    // The query timeout makes pytds send ATTENTION; the next statement on the same
    // connection first reads the DONE_ATTN, then runs.
    let c = Client::start("tdscancel", 1, stall.clone(), vec![]);
    let name = c.name.clone();
    let mut s = spec(
        "pytds",
        ep.port,
        json!([
            {"sql": "BACKUP DATABASE [big] TO VIRTUAL_DEVICE = %(device)s", "params": {"device": c.devices[0]}},
            {"sql": "SELECT 1 AS still_here"},
        ]),
    );
    s["timeout"] = json!(2);
    let r = client(&s, Duration::from_secs(40));
    // The driver's own 2 s query timeout cancelled the statement (bounded above by
    // `client`'s 40 s): the steps and the client's log say so.
    let (_, logs) = c.finish();
    assert_eq!(r["steps"][0]["timeout"], true, "{r}");
    assert_eq!(
        cell(&r["steps"][1], "still_here"),
        ("int", Some("1")),
        "{r}"
    );
    assert_eq!(
        logs[0].end,
        Some(Err(HResult::VD_E_ABORT)),
        "the cancel aborted the set"
    );
    no_set_left(&name);

    // A client that drops mid-BACKUP aborts it too.
    let c = Client::start("tdsdrop", 1, stall, vec![]);
    let name = c.name.clone();
    let mut s = spec(
        "pytds",
        ep.port,
        json!([{"sql": "BACKUP DATABASE [big] TO VIRTUAL_DEVICE = %(device)s",
                "params": {"device": c.devices[0]}, "drop": true}]),
    );
    s["timeout"] = json!(2);
    let r = client(&s, Duration::from_secs(40));
    assert_eq!(r["steps"][0]["timeout"], true, "{r}");
    let (_, logs) = c.finish();
    assert_eq!(logs[0].end, Some(Err(HResult::VD_E_ABORT)));
    no_set_left(&name);

    // The database is not left busy: a new backup over a new connection works.
    let c = Client::start("tdsafter", 1, ClientOpts::default(), vec![]);
    let r = client(
        &spec(
            "pytds",
            ep.port,
            json!([{"sql": "BACKUP DATABASE [big] TO VIRTUAL_DEVICE = %(device)s",
                    "params": {"device": c.devices[0]}}]),
        ),
        Duration::from_secs(60),
    );
    let (_, logs) = c.finish();
    assert!(r["steps"][0]["error"].is_null(), "{r}");
    assert_eq!(logs[0].end, Some(Ok(())));
}

#[test]
fn pymssql_login_version_backup() {
    if !driver("pymssql", "pymssql") {
        return;
    }
    let dir = data_dir();
    Engine::open(dir.path())
        .unwrap()
        .create_database("sales", 2 << 20)
        .unwrap();
    let ep = endpoint(dir.path());
    let r = client(
        &json!({"driver": "pymssql", "port": ep.port, "user": USER, "password": "wrong", "steps": []}),
        Duration::from_secs(30),
    );
    assert_eq!(r["login_error"]["number"], 18456, "{r}");

    let c = Client::start("tdspym", 1, ClientOpts::default(), vec![]);
    let r = client(
        &spec(
            "pymssql",
            ep.port,
            json!([
                {"sql": "SELECT @@VERSION AS v, 7 AS n"},
                {"sql": "BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = %(device)s",
                 "params": {"device": c.devices[0]}},
            ]),
        ),
        Duration::from_secs(60),
    );
    let (_, logs) = c.finish();
    let steps = r["steps"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(cell(&steps[0], "v").1.unwrap().contains("openvdi-engine"));
    assert_eq!(cell(&steps[0], "n"), ("int", Some("7")));
    assert!(steps[1]["error"].is_null(), "{}", steps[1]);
    assert!(
        texts(&steps[1]).contains("BACKUP DATABASE successfully processed"),
        "{}",
        steps[1]
    );
    assert_eq!(logs[0].end, Some(Ok(())));
    let stream = logs[0].data.clone();

    let c = Client::start("tdspymho", 1, ClientOpts::default(), vec![stream]);
    let r = client(
        &spec(
            "pymssql",
            ep.port,
            json!([{"sql": "RESTORE HEADERONLY FROM VIRTUAL_DEVICE = %(d)s", "params": {"d": c.devices[0]}}]),
        ),
        Duration::from_secs(60),
    );
    let _ = c.finish();
    let st = &r["steps"][0];
    assert!(st["error"].is_null(), "{st}");
    assert_eq!(cell(st, "FirstLSN").0, "Decimal");
    assert_eq!(cell(st, "BackupFinishDate").0, "datetime");
    assert_eq!(cell(st, "HasBackupChecksums").0, "bool");
    assert_eq!(cell(st, "BackupSetGUID").0, "UUID");
}

/// The engine half of a cancel, without a driver: a `Cancel` fired mid-BACKUP
/// aborts the set and the statement fails with SQL Server's messages; fired while
/// the statement waits for its client to create the set, it stops the wait.
#[test]
fn cancel_token_aborts_a_running_backup() {
    let dir = data_dir();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_database("big", 8 << 20).unwrap();
    let (stalled_tx, stalled) = std::sync::mpsc::sync_channel(1);
    let stall = ClientOpts {
        stall_after: Some(3),
        stalled: Some(stalled_tx),
        ..ClientOpts::default()
    };
    let c = Client::start("cancel", 1, stall, vec![]);
    let cancel = openvdi_engine::Cancel::new();
    let e2 = engine.clone().with_cancel(cancel.clone());
    let sql = format!("BACKUP DATABASE [big] TO {}", device_clause(&c.devices));
    let t = std::thread::spawn(move || e2.execute_detailed(&sql));
    // Mid-transfer: the client has taken three commands and stopped completing, so
    // only the cancel can end the statement (the client never gives up first).
    stalled
        .recv_timeout(Duration::from_secs(60))
        .expect("the client reached its stall");
    cancel.cancel();
    let run = t.join().unwrap();
    assert!(run.cancelled);
    let err = run.error.expect("the cancelled BACKUP failed");
    assert!(err.has(3013), "{err}");
    let (_, logs) = c.finish();
    assert_eq!(logs[0].end, Some(Err(HResult::VD_E_ABORT)));

    // Waiting for a set nobody creates: the cancel ends the wait, not the timeout.
    let cancel = openvdi_engine::Cancel::new();
    let e3 = engine
        .clone()
        .with_cancel(cancel.clone())
        .with_open_timeout(Duration::from_secs(60));
    let t = std::thread::spawn(move || {
        e3.execute_detailed("BACKUP DATABASE [big] TO VIRTUAL_DEVICE = 'nobody-creates-this'")
    });
    // Cancel once the statement is in its wait (a cancel before the statement starts
    // stops the batch instead, with no error).
    let until = Instant::now() + Duration::from_secs(60);
    while !cancel.is_waiting_for_set() {
        assert!(
            Instant::now() < until,
            "the statement never waited for its set"
        );
        std::thread::sleep(Duration::from_millis(1)); // a poll interval
    }
    cancel.cancel();
    let run = t.join().unwrap();
    assert!(run.cancelled);
    let err = run.error.expect("the cancelled BACKUP failed");
    assert!(err.has(3013), "{err}");
    assert!(
        !err.to_string().contains("timeout period expired"),
        "ended by the open timeout: {err}"
    );
}

/// Microsoft's mssql-python (ODBC Driver 18) over TLS: the whole session
/// (Encrypt=yes) and the login only (Encrypt=no), TrustServerCertificate for the
/// endpoint's self-signed certificate. Its parameterised statements arrive as
/// sp_prepexec. TDS 8.0 (Encrypt=strict) is `mssql_python_tds8_strict`.
#[test]
fn mssql_python_tls_login_backup_headeronly_cancel() {
    if !driver("mssql_python", "mssql-python") {
        return;
    }
    let dir = data_dir();
    Engine::open(dir.path())
        .unwrap()
        .create_database("sales", 4 << 20)
        .unwrap();
    let ep = endpoint(dir.path());
    let ms = |encrypt: &str, steps: Value| {
        let mut s = spec("mssql_python", ep.port, steps);
        s["encrypt"] = json!(encrypt);
        s
    };

    let mut wrong = ms("yes", json!([]));
    wrong["password"] = json!("Not-The-Pässword");
    let r = client(&wrong, Duration::from_secs(60));
    assert_eq!(r["login_error"]["number"], 18456, "{r}");
    assert!(r["login_error"]["text"]
        .as_str()
        .unwrap()
        .contains(&format!("Login failed for user '{USER}'.")));
    assert!(
        !ep.log().contains("Not-The"),
        "the password is never logged"
    );

    let mut stream = Vec::new();
    for encrypt in ["yes", "no"] {
        // A parameterised BACKUP goes out as sp_prepexec, a plain one as a batch.
        // Through sp_prepexec mssql-python shows no INFO messages (see
        // `odbc18_prepexec_info_and_all_errors` below: its ODBC Driver 18 has them,
        // mssql-python loses them), so 4035/3014 are checked on the batch here.
        let a = Client::start("tdsmsp", 1, ClientOpts::default(), vec![]);
        let b = Client::start("tdsmspb", 1, ClientOpts::default(), vec![]);
        let r = client(
            &ms(
                encrypt,
                json!([
                    {"sql": "SELECT @@VERSION AS v, 7 AS n"},
                    {"sql": "BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = ? WITH STATS = 50",
                     "params": [a.devices[0]]},
                    {"sql": format!("BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = '{}'", b.devices[0])},
                    {"sql": "BACKUP DATABASE [nosuch] TO VIRTUAL_DEVICE = ?",
                     "params": ["nobody-serves-this"]},
                ]),
            ),
            Duration::from_secs(60),
        );
        let (_, logs) = a.finish();
        let (_, logs_b) = b.finish();
        let steps = r["steps"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert!(cell(&steps[0], "v").1.unwrap().contains("openvdi-engine"));
        assert_eq!(cell(&steps[0], "n"), ("int", Some("7")));
        assert!(
            steps[1]["error"].is_null(),
            "Encrypt={encrypt}: {}",
            steps[1]
        );
        assert_eq!(logs[0].end, Some(Ok(())));
        let bk = &steps[2];
        assert!(bk["error"].is_null(), "Encrypt={encrypt}: {bk}");
        let nums = numbers(bk);
        assert!(nums.contains(&4035) && nums.contains(&3014), "{bk}");
        assert_eq!(logs_b[0].end, Some(Ok(())));
        stream = logs[0].data.clone();
        // mssql-python raises with the first error of a failed statement; the
        // 3013 after it is the statement handle's second diagnostic record
        // (driver_client.py reads them all before mssql-python raises).
        let err = &steps[3]["error"];
        assert!(
            err["text"]
                .as_str()
                .unwrap()
                .contains("Database 'nosuch' does not exist"),
            "{}",
            steps[3]
        );
        let diag: Vec<u64> = err["diagnostics"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d[0].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(diag, vec![911, 3013], "{}", steps[3]);
    }

    let c = Client::start("tdsmspho", 1, ClientOpts::default(), vec![stream]);
    let r = client(
        &ms(
            "yes",
            json!([{"sql": "RESTORE HEADERONLY FROM VIRTUAL_DEVICE = ?", "params": [c.devices[0]]}]),
        ),
        Duration::from_secs(60),
    );
    let _ = c.finish();
    let st = &r["steps"][0];
    assert!(st["error"].is_null(), "{st}");
    assert_eq!(cell(st, "DatabaseName"), ("str", Some("sales")));
    assert_eq!(cell(st, "FirstLSN").0, "Decimal");
    assert_eq!(cell(st, "BackupStartDate").0, "datetime");
    assert_eq!(cell(st, "IsCopyOnly"), ("bool", Some("False")));
    assert_eq!(cell(st, "BackupSetGUID").0, "UUID");

    // A query timeout: the driver sends ATTENTION mid-BACKUP; the set is aborted
    // and nothing is left in /dev/shm.
    let stall = ClientOpts {
        stall_after: Some(3),
        ..ClientOpts::default()
    };
    let c = Client::start("tdsmspcancel", 1, stall, vec![]);
    let name = c.name.clone();
    let mut s = ms(
        "yes",
        json!([
            {"sql": "BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = ?", "params": [c.devices[0]]},
            {"sql": "SELECT 1 AS still_here"},
        ]),
    );
    s["timeout"] = json!(2);
    let r = client(&s, Duration::from_secs(60));
    let (_, logs) = c.finish();
    assert_eq!(r["steps"][0]["timeout"], true, "{r}");
    assert_eq!(
        cell(&r["steps"][1], "still_here"),
        ("int", Some("1")),
        "{r}"
    );
    assert_eq!(logs[0].end, Some(Err(HResult::VD_E_ABORT)));
    no_set_left(&name);
}

/// TDS 8.0 with ODBC Driver 18 (mssql-python, `Encrypt=strict`): TLS before
/// PRELOGIN on the endpoint's usual port. The driver ignores
/// TrustServerCertificate in strict mode (it fails with "self-signed
/// certificate"); `ServerCertificate=PATH` pins the endpoint's certificate
/// instead, so the endpoint runs with a certificate this test made (--cert/--key).
#[test]
fn mssql_python_tds8_strict() {
    if !driver("mssql_python", "mssql-python") {
        return;
    }
    let dir = data_dir();
    Engine::open(dir.path())
        .unwrap()
        .create_database("sales", 2 << 20)
        .unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("tds-cert.pem");
    let key = dir.path().join("tds-key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let ep = Endpoint::start(
        &engine_bin(),
        dir.path(),
        &[(USER, PASSWORD)],
        &[
            OsStr::new("--open-timeout"),
            OsStr::new("10"),
            OsStr::new("--cert"),
            cert.as_os_str(),
            OsStr::new("--key"),
            key.as_os_str(),
        ],
    );
    let strict = |steps: Value| {
        let mut s = spec("mssql_python", ep.port, steps);
        s["encrypt"] = json!("strict");
        s["trust"] = json!(format!("ServerCertificate={}", cert.display()));
        s
    };
    let mut wrong = strict(json!([]));
    wrong["password"] = json!("Not-The-Pässword");
    let r = client(&wrong, Duration::from_secs(60));
    assert_eq!(r["login_error"]["number"], 18456, "{r}");

    let a = Client::start("tdsmsstrict", 1, ClientOpts::default(), vec![]);
    let b = Client::start("tdsmsstrictb", 1, ClientOpts::default(), vec![]);
    let r = client(
        &strict(json!([
            {"sql": "SELECT @@VERSION AS v"},
            {"sql": "BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = ?", "params": [a.devices[0]]},
            {"sql": format!("BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = '{}'", b.devices[0])},
        ])),
        Duration::from_secs(60),
    );
    let (_, logs) = a.finish();
    let (_, logs_b) = b.finish();
    let steps = r["steps"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(cell(&steps[0], "v").1.unwrap().contains("openvdi-engine"));
    assert!(steps[1]["error"].is_null(), "{}", steps[1]);
    assert_eq!(logs[0].end, Some(Ok(())));
    let nums = numbers(&steps[2]);
    assert!(nums.contains(&4035) && nums.contains(&3014), "{}", steps[2]);
    assert_eq!(logs_b[0].end, Some(Ok(())));

    // Strict is the client's choice; the same port still serves TDS 7.x.
    let r = client(
        &spec("mssql_python", ep.port, json!([{"sql": "SELECT 1 AS n"}])),
        Duration::from_secs(60),
    );
    assert_eq!(cell(&r["steps"][0], "n"), ("int", Some("1")), "{r}");
}

/// mssql-python shows no INFO message of a parameterised statement, and only the
/// first error of a failed one. Is that the endpoint's token stream or the driver?
/// ODBC Driver 18 itself (the libmsodbcsql-18 mssql-python ships and loads), called
/// through ctypes exactly as mssql-python's DDBCSQLExecute calls it (SQLPrepare,
/// SQLBindParameter, SQLExecute: sp_prepexec on the wire), returns
/// SQL_SUCCESS_WITH_INFO with 3211/4035/3014 as the statement's diagnostic records,
/// and 911 then 3013 for a failed BACKUP. mssql-python's DDBCSQLExecute returns
/// SQL_SUCCESS_WITH_INFO too, but hands Python a statement handle whose records are
/// already gone (`DDBCSQLGetAllDiagRecords` returns []): the loss is in
/// mssql-python's C++ layer, after the driver (see `run_odbc18` in
/// tests/tds/driver_client.py). The errors it keeps: `run_mssql_python` reads them
/// all before mssql-python raises, and the test above asserts 911 and 3013.
#[test]
fn odbc18_prepexec_info_and_all_errors() {
    if !driver("mssql_python_odbc", "mssql-python") {
        return;
    }
    let dir = data_dir();
    Engine::open(dir.path())
        .unwrap()
        .create_database("sales", 2 << 20)
        .unwrap();
    let ep = endpoint(dir.path());
    let mut wrong = spec("odbc18", ep.port, json!([]));
    wrong["password"] = json!("Not-The-Pässword");
    let r = client(&wrong, Duration::from_secs(60));
    assert_eq!(r["login_error"]["number"], 18456, "{r}");
    for encrypt in ["yes", "no"] {
        let c = Client::start("tdsodbc", 1, ClientOpts::default(), vec![]);
        let mut s = spec(
            "odbc18",
            ep.port,
            json!([
                {"sql": "BACKUP DATABASE [sales] TO VIRTUAL_DEVICE = ? WITH STATS = 50",
                 "params": [c.devices[0]]},
                {"sql": "BACKUP DATABASE [nosuch] TO VIRTUAL_DEVICE = ?",
                 "params": ["nobody-serves-this"]},
            ]),
        );
        s["encrypt"] = json!(encrypt);
        let r = client(&s, Duration::from_secs(60));
        let (_, logs) = c.finish();
        let steps = r["steps"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert!(steps[0]["error"].is_null(), "{}", steps[0]);
        assert_eq!(logs[0].end, Some(Ok(())));
        let nums = numbers(&steps[0]);
        assert!(
            nums.contains(&3211) && nums.contains(&4035) && nums.contains(&3014),
            "Encrypt={encrypt}: {}",
            steps[0]
        );
        assert!(texts(&steps[0]).contains("BACKUP DATABASE successfully processed"));
        let err = &steps[1]["error"];
        assert_eq!(err["number"], 911, "{}", steps[1]);
        let diag: Vec<u64> = err["diagnostics"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d[0].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(diag, vec![911, 3013], "{}", steps[1]);
    }
}
