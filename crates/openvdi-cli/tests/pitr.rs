//! Point-in-time restore through the real binary and the embedded engine.

mod util;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use util::{wait_for, Env};

fn engine(e: &Env) -> openvdi_engine::Engine {
    openvdi_engine::Engine::open(&e.data).unwrap()
}

fn files(e: &Env, db: &str) -> Vec<PathBuf> {
    let info = engine(e).database_info(db).unwrap();
    info.files.iter().map(|f| f.path.clone()).collect()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Waits (polling the clock, with a deadline) until the clock has reached `ms`.
fn wait_until(ms: u128) {
    wait_for("the clock", Duration::from_secs(5), || now_ms() >= ms);
}

fn text(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[test]
fn restore_at_a_time_inside_the_second_log_gives_the_files_as_they_were_then() {
    let e = Env::new();
    engine(&e).create_database("pt", 4 << 20).unwrap();
    let id = |v: serde_json::Value| v["id"].as_str().unwrap().to_string();
    let full = id(e.json(&["backup", "pt"]));
    // Round 1, then a log and a diff.
    engine(&e).modify("pt", 20).unwrap();
    let log1 = id(e.json(&["backup", "pt", "--type", "log"]));
    let diff = id(e.json(&["backup", "pt", "--type", "diff"]));
    // Round 2, first half; the point is the next whole second after it.
    engine(&e).modify("pt", 20).unwrap();
    let point = now_ms().div_ceil(1000) as i64;
    wait_until(point as u128 * 1000);
    let want: Vec<Vec<u8>> = files(&e, "pt")
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    // Round 2, second half, strictly after the point; then round 3.
    wait_until((point as u128 + 1) * 1000);
    engine(&e).modify("pt", 20).unwrap();
    let log2 = id(e.json(&["backup", "pt", "--type", "log"]));
    engine(&e).modify("pt", 20).unwrap();
    let log3 = id(e.json(&["backup", "pt", "--type", "log"]));
    let at = text(point);

    // The plan and the exact T-SQL, restoring nothing.
    let dry = e.ok(&["restore", "pt", "--at", &at, "--dry-run"]);
    for i in [&full, &diff, &log2] {
        assert!(dry.contains(i.as_str()), "{dry}");
    }
    assert!(
        !dry.contains(log1.as_str()) && !dry.contains(log3.as_str()),
        "{dry}"
    );
    assert!(
        dry.contains("WITH NORECOVERY") && dry.contains(&format!("STOPAT = '{at}.000'")),
        "{dry}"
    );
    assert!(dry.contains("RESTORE DATABASE [pt] WITH RECOVERY"), "{dry}");
    let j = e.json(&["restore", "pt", "--at", &at, "--dry-run"]);
    let plan: Vec<&str> = j["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(plan, [full.as_str(), diff.as_str(), log2.as_str()]);
    assert_eq!(j["sql"].as_array().unwrap().len(), 4);

    // Out of range: clear errors, exit 10.
    let o = e.run(&["restore", "pt", "--at", "2001-01-01 00:00:00"]);
    assert_eq!(o.status.code(), Some(10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("before the first full backup"), "{err}");
    let o = e.run(&["restore", "pt", "--at", &text(point + 3600)]);
    assert_eq!(o.status.code(), Some(10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("after the last log backup"), "{err}");
    e.expect(&["restore", "pt", "--at", "soon"], 2);

    // The restore itself, over the live database.
    let r = e.json(&["restore", "pt", "--at", &at, "--replace"]);
    assert_eq!(r["recovered"], true, "{r}");
    let got: Vec<Vec<u8>> = files(&e, "pt")
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(
        got[0] == want[0],
        "the data file differs from the copy at {at}"
    );
    assert!(
        got[1] == want[1],
        "the log file differs from the copy at {at}"
    );
    // It is online and takes changes and backups again.
    engine(&e).modify("pt", 5).unwrap();
    e.json(&["backup", "pt"]);
}
