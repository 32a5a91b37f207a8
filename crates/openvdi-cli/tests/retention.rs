//! Retention through the real binary: real engine backups whose backup times are
//! rewritten (manifests resealed with valid checksums) to span three days.

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use util::Env;

fn engine(e: &Env) -> openvdi_engine::Engine {
    openvdi_engine::Engine::open(&e.data).unwrap()
}

fn manifests(root: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "manifest.json") {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(root, &mut v);
    v
}

/// Sets a stored backup's own start/finish time, resealing its manifest as openvdi
/// does (format 2: blake3 of the exact body).
fn retime(repo: &Path, id: &str, at: &str) {
    for p in manifests(repo) {
        let text = fs::read_to_string(&p).unwrap();
        let (_, rest) = text.split_once('\n').unwrap();
        let (_, rest) = rest.split_once('\n').unwrap();
        let mut v: Value = serde_json::from_str(&format!("{{\n{rest}")).unwrap();
        if v["id"] != id {
            continue;
        }
        v["backup_started"] = at.into();
        v["backup_finished"] = at.into();
        let mut body = serde_json::to_vec_pretty(&v).unwrap();
        body.push(b'\n');
        let sum = blake3::hash(&body).to_hex().to_string();
        let mut out = format!("{{\n  \"checksum\": \"blake3:{sum}\",\n").into_bytes();
        out.extend_from_slice(&body[2..]);
        fs::write(&p, out).unwrap();
        return;
    }
    panic!("no manifest for {id}");
}

/// Full, log on day 1; full, diff, log on day 2; full, log on day 3.
fn history(e: &Env) -> Vec<(String, &'static str)> {
    engine(e).create_database("r", 2 << 20).unwrap();
    let steps = [
        ("full", "2024-01-01T01:00:00Z"),
        ("log", "2024-01-01T02:00:00Z"),
        ("full", "2024-01-02T01:00:00Z"),
        ("diff", "2024-01-02T07:00:00Z"),
        ("log", "2024-01-02T08:00:00Z"),
        ("full", "2024-01-03T01:00:00Z"),
        ("log", "2024-01-03T02:00:00Z"),
    ];
    let mut ids = Vec::new();
    for (kind, at) in steps {
        engine(e).modify("r", 5).unwrap();
        let b = e.json(&["backup", "r", "--type", kind, "--compress", "none"]);
        let id = b["id"].as_str().unwrap().to_string();
        retime(Path::new(&e.repo), &id, at);
        ids.push((id, kind));
    }
    ids
}

fn plan_of(v: &Value) -> Vec<(String, bool, Vec<String>)> {
    v["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["keep"].as_bool().unwrap(),
                r["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn keep_daily_keeps_whole_chains_forget_refuses_dependencies_and_the_rest_restores() {
    // Unencrypted: `retime` reseals manifests by hand.
    let e = Env::plain();
    let h = history(&e);
    let id = |i: usize| h[i].0.clone();
    // Listed by the rewritten backup times.
    let listed: Vec<String> = e
        .backups()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, (0..7).map(id).collect::<Vec<_>>());

    // A dry run by default: the plan with the reasons.
    let v = e.json(&["prune", "--keep-daily", "2"]);
    assert_eq!(v["dry_run"], true);
    let plan = plan_of(&v);
    let keep: Vec<bool> = plan.iter().map(|p| p.1).collect();
    assert_eq!(keep, [false, false, true, true, true, true, true], "{v}");
    assert_eq!(plan[2].2, ["keep-daily 2024-01-02"]);
    assert_eq!(plan[3].2, [format!("chain of {}", id(2))]);
    assert_eq!(plan[5].2, ["keep-daily 2024-01-03"]);
    assert_eq!(e.backups().len(), 7, "a dry run deletes nothing");
    let text = e.ok(&["prune", "--keep-daily", "2"]);
    assert!(text.contains(&format!("would delete {}", id(0))), "{text}");
    assert!(text.contains("dry run"), "{text}");

    // forget refuses what others need, names them, and deletes nothing.
    let o = e.run(&["forget", &id(2)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refusing to forget") && err.contains(&id(3)),
        "{err}"
    );
    let j = e.run(&["--json", "forget", &id(2)]);
    let j: Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["exit_code"], 1);
    assert_eq!(e.backups().len(), 7);
    // The tail of the chain can go.
    let f = e.json(&["forget", &id(6)]);
    assert_eq!(f["forgotten"], id(6).as_str());
    assert_eq!(e.backups().len(), 6);
    e.expect(&["forget", "no_such_backup"], 10);

    e.json(&["prune", "--keep-daily", "2", "--confirm"]);
    let left: Vec<String> = e
        .backups()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [id(2), id(3), id(4), id(5)]);
    // The kept chain restores: full, diff, log.
    e.json(&["restore", &id(2), "--as", "r2", "--norecovery"]);
    e.json(&["restore", &id(3), "--as", "r2", "--norecovery"]);
    e.json(&["restore", &id(4), "--as", "r2"]);
}

#[test]
fn the_config_files_retention_applies_per_database_and_a_policy_is_required() {
    // Unencrypted: `retime` reseals manifests by hand.
    let e = Env::plain();
    let h = history(&e);
    e.expect(&["prune"], 2);
    e.expect(&["prune", "--keep-last", "0"], 2);
    let cfg = e.dir.path().join("openvdi.toml");
    fs::write(
        &cfg,
        "[retention]\nkeep_last = 3\n\n[retention.databases.\"R\"]\nkeep_within = \"1d\"\n",
    )
    .unwrap();
    let c = cfg.display().to_string();
    let v = e.json(&["--config", &c, "prune"]);
    assert_eq!(v["policy"], "config file");
    let keep: Vec<bool> = plan_of(&v).iter().map(|p| p.1).collect();
    // Within a day of the newest backup (day 3, 02:00): the day-3 full, and the
    // day-2 full the window restores from, with their chains.
    assert_eq!(keep, [false, false, true, true, true, true, true], "{v}");
    assert!(plan_of(&v)[2].2[0].starts_with("keep-within 1d"), "{v}");
    // Flags beat the file.
    let v = e.json(&["--config", &c, "prune", "--keep-last", "1"]);
    let keep: Vec<bool> = plan_of(&v).iter().map(|p| p.1).collect();
    assert_eq!(keep, [false, false, false, false, false, true, true], "{v}");
    assert_eq!(h.len(), 7);
    fs::write(&cfg, "[retention]\nkeep_daily = 0\n").unwrap();
    e.expect(&["--config", &c, "prune"], 2);
}
