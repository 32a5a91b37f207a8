//! The session statements scripts written for Microsoft's sqlcmd send around their
//! BACKUP/RESTORE (SET options, USE, PRINT, SELECT @@VERSION …), through the real
//! `openvdi-sqlcmd` binary: answered as SQL Server answers them, and anything else
//! still refused with SQL Server's message.

mod common;

use std::process::Command;

fn sqlcmd(data: &std::path::Path, q: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_openvdi-sqlcmd"))
        .args(["-b", "-Q", q])
        .env("OPENVDI_DATA_DIR", data)
        .output()
        .expect("run openvdi-sqlcmd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_script_of_session_statements_and_a_backup_runs() {
    let d = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_openvdi-engine"))
        .args(["create-database", "demo"])
        .env("OPENVDI_DATA_DIR", d.path())
        .output()
        .unwrap();
    assert!(st.status.success());
    let bak = d.path().join("demo.bak");
    let (rc, out) = sqlcmd(
        d.path(),
        &format!(
            "SET NOCOUNT ON; SET ANSI_NULLS ON; SET QUOTED_IDENTIFIER ON; \
             SET TRANSACTION ISOLATION LEVEL READ COMMITTED; SET LOCK_TIMEOUT -1; \
             USE demo; PRINT 'starting the backup'; SELECT @@VERSION; \
             SELECT @@SERVERNAME AS server, SERVERPROPERTY('ProductVersion') AS version, 1; \
             BACKUP DATABASE demo TO DISK = '{}'",
            bak.display()
        ),
    );
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("Changed database context to 'demo'."), "{out}");
    assert!(out.contains("starting the backup"), "{out}");
    assert!(out.contains("Microsoft SQL Server"), "{out}");
    assert!(out.contains("10.50.1600.0"), "{out}");
    assert!(
        out.contains("BACKUP DATABASE successfully processed"),
        "{out}"
    );
    assert!(bak.metadata().unwrap().len() > 0);
    // SET NOCOUNT ON: the result sets above came without their row counts.
    assert!(!out.contains("rows affected"), "{out}");
}

#[test]
fn nocount_on_drops_the_row_counts_and_off_brings_them_back() {
    let d = tempfile::tempdir().unwrap();
    let (rc, out) = sqlcmd(
        d.path(),
        "SELECT 1 AS a; SET NOCOUNT ON; SELECT 2 AS b; SET NOCOUNT OFF; SELECT 3 AS c",
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out.matches("(1 rows affected)").count(), 2, "{out}");
    let b = out.find("\nb").expect("result set b");
    let c = out.find("\nc").expect("result set c");
    assert!(!out[b..c].contains("rows affected"), "{out}");
}

#[test]
fn unknown_session_statements_get_sql_servers_messages() {
    let d = tempfile::tempdir().unwrap();
    for (q, msg) in [
        ("SET NO_SUCH_OPTION ON", "Msg 195,"),
        ("USE no_such_db", "Msg 911,"),
        ("SELECT * FROM sys.databases", "Msg 102,"),
        ("SELECT @@NO_SUCH_GLOBAL", "Msg 137,"),
        ("SET NOCOUNT MAYBE", "Msg 102,"),
    ] {
        let (rc, out) = sqlcmd(d.path(), q);
        assert_eq!(rc, 1, "{q}: {out}");
        assert!(out.contains(msg), "{q}: expected {msg} in {out}");
    }
}

#[test]
fn a_go_repeat_count_is_bounded_and_nothing_of_the_script_runs() {
    let d = tempfile::tempdir().unwrap();
    // The script goes in on standard input, as a script file would.
    for (script, ok) in [
        ("PRINT 'once'\nGO 3\n", true),
        ("PRINT 'once'\nGO\nPRINT 'never'\nGO 10001\n", false),
        ("PRINT 'once'\nGO 0\n", false),
        ("PRINT 'once'\nGO 4294967296\n", false),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_openvdi-sqlcmd"))
            .arg("-b")
            .env("OPENVDI_DATA_DIR", d.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let (code, stdout, stderr) = common::ChildGuard(Some(child)).wait();
        let text = format!("{stdout}{stderr}");
        if ok {
            assert_eq!(code, Some(0), "{script:?}: {text}");
            assert_eq!(text.matches("once").count(), 3, "{text}");
        } else {
            assert_eq!(code, Some(1), "{script:?}: {text}");
            assert!(text.contains("near command 'GO'"), "{script:?}: {text}");
            assert!(!text.contains("once") && !text.contains("never"), "{text}");
        }
    }
    // The library refuses it the same way.
    let e = openvdi_engine::Engine::open(d.path()).unwrap();
    let err = e.execute("PRINT 'x'\nGO 20000\n").unwrap_err();
    assert!(err.to_string().contains("between 1 and 10000"), "{err}");
}
