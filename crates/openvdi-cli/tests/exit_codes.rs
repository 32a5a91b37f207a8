//! Every row of the README's exit-code table, produced by the real binary, in text
//! and under `--json`; and the backup options that reach the engine.

mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use util::{wait_for, Env, Guard};

fn engine(e: &Env) -> openvdi_engine::Engine {
    openvdi_engine::Engine::open(&e.data).unwrap()
}

/// Runs with `--json`: the exit code, the JSON on stdout, and stderr.
fn json_fail(e: &Env, args: &[&str], code: i32) -> (Value, String) {
    let mut a = vec!["--json", "--quiet"];
    a.extend_from_slice(args);
    let o = e.run(&a);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(code), "{args:?}\n{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|x| panic!("{args:?}: stdout is not one JSON object ({x}): {out}"));
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["exit_code"], code, "{v}");
    assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    (v, err)
}

fn stderr_of(e: &Env, args: &[&str], code: i32) -> String {
    let o = e.run(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(code), "{args:?}\n{err}");
    err
}

fn stripes(root: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("stripe"))
            {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(root, &mut v);
    v.sort();
    v
}

#[test]
fn codes_0_1_2_3_and_10_in_text_and_json() {
    let e = Env::new();
    engine(&e).create_database("x", 2 << 20).unwrap();
    // 0
    let b = e.json(&["backup", "x", "--compress", "none"]);
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(e.json(&["list"])["ok"], true);

    // 1: the engine's statement failed; its Msg is the error.
    let err = stderr_of(&e, &["--quiet", "backup", "nosuch"], 1);
    assert!(err.contains("Msg 911"), "{err}");
    let (v, _) = json_fail(&e, &["backup", "nosuch"], 1);
    assert_eq!(v["error_kind"], "failure");
    assert!(v["error"].as_str().unwrap().contains("Msg 911"), "{v}");

    // 2: usage — clap's own errors, values clap cannot judge, the config file.
    let err = stderr_of(&e, &["list", "--bogus"], 2);
    assert!(err.contains("--bogus"), "{err}");
    let (v, _) = json_fail(&e, &["list", "--bogus"], 2);
    assert_eq!(v["error_kind"], "usage");
    assert!(v["error"].as_str().unwrap().contains("--bogus"), "{v}");
    let (v, _) = json_fail(&e, &["backup"], 2);
    assert!(v["error"].as_str().unwrap().contains("<DATABASE>"), "{v}");
    let err = stderr_of(&e, &["backup", "x", "--workers", "0"], 2);
    assert!(err.contains("--workers"), "{err}");
    json_fail(&e, &["backup", "x", "--workers", "0"], 2);
    let err = stderr_of(&e, &["--config", "/nonexistent/openvdi.toml", "list"], 2);
    assert!(err.contains("/nonexistent/openvdi.toml"), "{err}");
    json_fail(&e, &["--config", "/nonexistent/openvdi.toml", "list"], 2);
    json_fail(&e, &["restore", "x", "--at", "tomorrow"], 2);
    json_fail(&e, &["backup", "x", "--type", "diff", "--copy-only"], 2);
    // --help and --version are not failures.
    e.ok(&["--help"]);
    e.ok(&["--json", "--version"]);

    // 10: no such repository, backup, or file.
    let missing = Env::uninitialised();
    let err = stderr_of(&missing, &["backup", "x"], 10);
    assert!(err.contains("openvdi init"), "{err}");
    json_fail(&missing, &["list"], 10);
    json_fail(&e, &["restore", "no_such_backup"], 10);
    let err = stderr_of(&e, &["import", "/nonexistent/x.bak"], 10);
    assert!(err.contains("no such file: /nonexistent/x.bak"), "{err}");
    json_fail(&e, &["import", "/nonexistent/x.bak"], 10);
    let err = stderr_of(&e, &["inspect", "/nonexistent/x.bak"], 10);
    assert!(err.contains("no such file"), "{err}");
    json_fail(&e, &["inspect", "/nonexistent/x.bak"], 10);
    let err = stderr_of(&e, &["inspect", "no_such_backup"], 10);
    assert!(err.contains("no backup"), "{err}");

    // An OS error is printed once.
    let file = e.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under = file.join("sub").display().to_string();
    let err = stderr_of(&e, &["export", &id, &under], 1);
    assert_eq!(err.matches("Not a directory").count(), 1, "{err}");

    // 3: a missing stripe, a damaged one.
    let s = stripes(Path::new(&e.repo));
    assert_eq!(s.len(), 1);
    let aside = s[0].with_extension("aside");
    std::fs::rename(&s[0], &aside).unwrap();
    let err = stderr_of(&e, &["verify", &id], 3);
    assert!(err.contains("missing"), "{err}");
    assert_eq!(
        err.matches(s[0].file_name().unwrap().to_str().unwrap())
            .count(),
        1,
        "{err}"
    );
    json_fail(&e, &["verify", &id], 3);
    json_fail(&e, &["restore", &id, "--as", "y"], 3);
    std::fs::rename(&aside, &s[0]).unwrap();
    let mut bytes = std::fs::read(&s[0]).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&s[0], bytes).unwrap();
    let (v, _) = json_fail(&e, &["verify", &id], 3);
    assert_eq!(v["error_kind"], "verification_failed");
}

#[test]
fn code_12_for_a_wrong_password_or_key_file_in_text_and_json() {
    let e = Env::new();
    engine(&e).create_database("k12", 8 << 20).unwrap();
    e.json(&["backup", "k12"]);
    for args in [
        vec!["--key-file", "/nonexistent/key", "list"],
        vec![
            "--password-file",
            "/nonexistent/pw",
            "restore",
            "latest",
            "--as",
            "k12b",
        ],
    ] {
        let (v, err) = json_fail(&e, &args, 12);
        assert_eq!(v["error_kind"], "wrong_password", "{v}");
        assert!(err.contains("/nonexistent/"), "{err}");
    }
    let pw = e.dir.path().join("wrong");
    std::fs::write(&pw, "not the password\n").unwrap();
    let err = stderr_of(&e, &["--password-file", pw.to_str().unwrap(), "list"], 12);
    assert!(err.contains("wrong password"), "{err}");
    assert!(engine(&e).database_info("k12b").is_err());
}

#[test]
fn code_11_when_another_process_holds_the_lock() {
    let e = Env::new();
    let lockfile = Path::new(&e.repo).join(".openvdi.lock");
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&lockfile)
        .arg("-c")
        .arg("echo locked; exec cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let _g = Guard(Some(holder));
    stderr_of(&e, &["prune", "--keep-last", "1"], 11);
    let (v, _) = json_fail(&e, &["forget", "some_backup"], 11);
    assert_eq!(v["error_kind"], "lock_held");
}

/// The children of process `pid`.
fn children(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .map(|c| c.split_whitespace().count())
        .sum()
}

#[test]
fn code_130_on_sigint_with_json_saying_interrupted() {
    let e = Env::new();
    // An external engine that takes its time: the tool waits for it to open the set.
    let mut c = e.cmd(&[
        "--json",
        "--quiet",
        "--engine-cmd",
        "sh -c 'sleep 3' {sql}",
        "backup",
        "x",
    ]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut g = Guard(Some(c.spawn().unwrap()));
    let pid = g.0.as_ref().unwrap().id();
    // The engine command running means the tool is past its setup (its signal
    // handler is installed before any command runs).
    wait_for(
        "the engine command to start",
        Duration::from_secs(30),
        || children(pid) > 0,
    );
    assert!(Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let out = util::wait(Guard(g.0.take()), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 130);
    assert_eq!(v["error_kind"], "interrupted");
    assert!(e.backups().is_empty());
}

#[test]
fn backup_options_reach_the_engine_and_the_manifest() {
    let e = Env::new();
    engine(&e).create_database("o", 2 << 20).unwrap();
    e.json(&["backup", "o"]);
    let b = e.json(&[
        "backup",
        "o",
        "--checksum",
        "--copy-only",
        "--name",
        "before the upgrade",
        "--description",
        "it's a copy",
    ]);
    assert_eq!(b["options"]["copy_only"], true, "{b}");
    assert_eq!(b["options"]["checksum"], true, "{b}");
    assert_eq!(b["options"]["name"], "before the upgrade");
    assert_eq!(b["options"]["description"], "it's a copy");
    let listed = e.backups();
    assert_eq!(listed[1]["options"], b["options"]);
    // The engine wrote them into the backup set's header.
    let h = e.json(&["inspect", b["id"].as_str().unwrap()]);
    let row = &h["header"][0];
    assert_eq!(row["BackupName"], "before the upgrade", "{h}");
    assert_eq!(row["BackupDescription"], "it's a copy");
    assert_eq!(row["IsCopyOnly"], "1");
    assert_eq!(row["HasBackupChecksums"], "1");
    // A plain backup records none.
    let p = e.json(&["backup", "o", "--type", "log"]);
    assert!(p.get("options").is_none(), "{p}");
    let long = "n".repeat(129);
    e.expect(&["backup", "o", "--name", &long], 2);
}
