//! `openvdi` itself through the engine's conformance kit, as a VDI client that sends
//! its own T-SQL (through `openvdi-sqlcmd`, which runs each statement with the
//! scenario's fault): every scenario that applies to such a client passes.

mod util;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn openvdi_passes_the_conformance_kit() {
    let sqlcmd = util::sqlcmd();
    let built = util::run({
        let mut c = Command::new(env!("CARGO"));
        c.args([
            "build",
            "-q",
            "-p",
            "openvdi-engine",
            "--bin",
            "openvdi-engine",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        c
    });
    assert!(built.status.success(), "{built:?}");
    let kit = sqlcmd.with_file_name("openvdi-engine");
    let openvdi = PathBuf::from(env!("CARGO_BIN_EXE_openvdi"));
    let home = tempfile::tempdir().unwrap();
    let base = format!(
        "{} --repo {{file}}/repo --data-dir {{datadir}} --quiet --engine-cmd \
         '{{sqlcmd}} -S . -b --data-dir {{datadir}} -Q {{sql}}'",
        openvdi.display()
    );
    let mut c = Command::new(&kit);
    for (k, _) in std::env::vars() {
        if k.starts_with("OPENVDI_") {
            c.env_remove(k);
        }
    }
    // The repository the kit's setup creates is encrypted (the default of `init`).
    c.env("OPENVDI_PASSWORD", "conformance password")
        .env("OPENVDI_KDF_MEMORY_MIB", "8")
        .env("OPENVDI_KDF_ITERATIONS", "1");
    c.env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .args([
            "--json",
            "conformance",
            "--client-sends-sql",
            "--profile",
            "full",
        ])
        .args(["--keep-going", "--deadline", "60", "--client"])
        .arg(format!("{base} backup {{db}} --stripes {{stripes}}"))
        .arg("--restore-client")
        .arg(format!(
            "{base} restore latest:{{db}} --replace --no-verify"
        ))
        .arg("--setup")
        .arg(format!(
            "{} --repo {{file}}/repo --quiet init",
            openvdi.display()
        ))
        .arg("--work-dir")
        .arg(home.path().join("work"));
    let o = util::run(c);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    let rows = v["scenarios"].as_array().unwrap();
    let failed: Vec<&serde_json::Value> = rows.iter().filter(|s| s["verdict"] == "fail").collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(o.status.code(), Some(0));
    let passed = rows.iter().filter(|s| s["verdict"] == "pass").count();
    assert!(passed >= 25, "only {passed} scenarios applied: {v}");
}
