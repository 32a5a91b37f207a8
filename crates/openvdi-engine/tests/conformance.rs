//! The conformance kit (`openvdi-engine conformance`) run against openvdi's reference
//! client (`openvdi-vdiclient`): a conforming client passes every scenario, and each
//! deliberately broken variant (`--defect`) is caught by the scenario meant for it.
//! Everything runs as real processes: the kit, the client, the engine's statements.

use std::path::PathBuf;
use std::process::Command;

fn bin(name: &str) -> PathBuf {
    match name {
        "openvdi-engine" => PathBuf::from(env!("CARGO_BIN_EXE_openvdi-engine")),
        "openvdi-vdiclient" => PathBuf::from(env!("CARGO_BIN_EXE_openvdi-vdiclient")),
        other => panic!("unknown binary {other}"),
    }
}

/// Runs the kit on the reference client with `defect` (or none); returns the exit
/// status and the parsed `--json` report.
fn kit(defect: Option<&str>, args: &[&str]) -> (i32, serde_json::Value) {
    let work = tempfile::tempdir().unwrap();
    let mut client = format!(
        "{} {{op}} --set {{set}} --stripes {{stripes}} --dir {{file}}",
        bin("openvdi-vdiclient").display()
    );
    if let Some(d) = defect {
        client.push_str(&format!(" --defect {d}"));
    }
    let o = Command::new(bin("openvdi-engine"))
        .arg("--json")
        .arg("conformance")
        .arg("--client")
        .arg(&client)
        .arg("--stores")
        .arg("dev{i}.bin")
        .arg("--work-dir")
        .arg(work.path())
        .args(args)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

fn verdict<'a>(report: &'a serde_json::Value, scenario: &str) -> &'a str {
    report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scenario"] == scenario)
        .unwrap_or_else(|| panic!("{scenario} did not run: {report}"))["verdict"]
        .as_str()
        .unwrap()
}

#[test]
fn the_reference_client_passes_the_full_profile() {
    let (code, v) = kit(
        None,
        &["--profile", "full", "--keep-going", "--deadline", "30"],
    );
    let failed: Vec<&serde_json::Value> = v["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["verdict"] != "pass")
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(code, 0);
    assert!(v["scenarios"].as_array().unwrap().len() >= 30);
}

#[test]
fn each_broken_client_is_caught_by_its_scenario() {
    // (defect, the scenario meant for it, whether it is narrow enough to pass the
    // plain two-stripe backup and restore). A defect that breaks every backup or
    // every restore of this engine (it varies read sizes on every restore, it
    // sends VDC_Complete on every backup) cannot pass the plain case.
    let cases = [
        ("flush-before-write", "flush-durability", true),
        ("first-flush-only", "multi-flush", true),
        ("ignores-complete", "happy-2-stripes", false),
        ("read-size-assumed", "short-reads", false),
        ("rewind-ok", "rewind-clearerror", true),
        ("exit0-after-abort", "abort-first-command-backup", true),
        ("no-close", "crash-at-mid-backup", true),
        // Whether 50 ms pass between two commands of a plain run depends on the
        // machine's load: not asserted either way.
        ("timeout-fatal", "slow-server-150ms", false),
        ("corrupt-restore", "happy-2-stripes", false),
        ("hang-on-abort", "abort-first-command-backup", true),
    ];
    for (defect, scenario, narrow) in cases {
        let (code, v) = kit(
            Some(defect),
            &["--profile", "full", "--only", scenario, "--deadline", "8"],
        );
        assert_eq!(
            verdict(&v, scenario),
            "fail",
            "{defect} not caught by {scenario}: {v}"
        );
        assert_eq!(code, 1, "{defect}: the kit must exit 1");
        if narrow {
            let (code, v) = kit(
                Some(defect),
                &[
                    "--profile",
                    "full",
                    "--only",
                    "happy-2-stripes",
                    "--deadline",
                    "8",
                ],
            );
            assert_eq!(verdict(&v, "happy-2-stripes"), "pass", "{defect}: {v}");
            assert_eq!(code, 0);
        }
    }
}

#[test]
fn junit_has_one_test_case_per_scenario_and_parses() {
    let work = tempfile::tempdir().unwrap();
    let xml = work.path().join("report.xml");
    let client = format!(
        "{} {{op}} --set {{set}} --stripes {{stripes}} --dir {{file}} --defect rewind-ok",
        bin("openvdi-vdiclient").display()
    );
    let o = Command::new(bin("openvdi-engine"))
        .args(["conformance", "--keep-going", "--only", "r", "--client"])
        .arg(&client)
        .arg("--junit")
        .arg(&xml)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("rerun alone:"), "{text}");
    let doc = std::fs::read_to_string(&xml).unwrap();
    // Checked with a real JUnit parser when it is installed (test.sh installs it).
    let py = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, junitparser\n\
             x = junitparser.JUnitXml.fromfile(sys.argv[1])\n\
             cases = [c for s in x for c in s]\n\
             bad = [c.name for c in cases if c.result and any(isinstance(r, junitparser.Failure) for r in c.result)]\n\
             print(len(cases), ','.join(bad))",
        )
        .arg(&xml)
        .output()
        .unwrap();
    if !py.status.success() {
        eprintln!(
            "skipping the junitparser check (python3 -m pip install junitparser): {}",
            String::from_utf8_lossy(&py.stderr)
        );
    } else {
        let out = String::from_utf8_lossy(&py.stdout);
        let (n, bad) = out.trim().split_once(' ').unwrap_or((out.trim(), ""));
        assert_eq!(
            n.parse::<usize>().unwrap(),
            doc.matches("<testcase ").count()
        );
        assert_eq!(bad, "rewind-clearerror", "{doc}");
    }
    assert!(doc.matches("<testcase ").count() >= 3, "{doc}");
}
