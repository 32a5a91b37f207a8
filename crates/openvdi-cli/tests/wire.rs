//! A VDI library through Microsoft's C++ ABI, and a SQL Server reached over TDS:
//! `--vdi-library` with `--vdi-abi cpp` on openvdi's libsqlvdi.so (which exports
//! both ABIs), a library that exports neither, and `--tds` against a real
//! `openvdi-engine serve` process — the engine behind the endpoint opens the set
//! this process creates, as SQL Server on Linux would.

#[path = "../../openvdi-engine/tests/common/endpoint.rs"]
mod endpoint;
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use endpoint::Endpoint;
use util::Env;

const USER: &str = "backup_operator";
const PASSWORD: &str = "Wire-S3cret-pässword";
/// tiberius' connection-string parser takes ASCII only: the login whose password
/// travels in the string.
const ASCII_USER: &str = "ascii_operator";
const ASCII_PASSWORD: &str = "Ascii-0nly-Secret";

fn engine(dir: &Path) -> openvdi_engine::Engine {
    openvdi_engine::Engine::open(dir).unwrap()
}

fn data_file(dir: &Path, db: &str) -> PathBuf {
    engine(dir).database_info(db).unwrap().files[0].path.clone()
}

#[test]
fn cpp_abi_round_trip_with_openvdis_libsqlvdi() {
    let e = Env::new();
    engine(&e.data).create_database("cpp", 16 << 20).unwrap();
    let mdf = data_file(&e.data, "cpp");
    let before = std::fs::read(&mdf).unwrap();
    let lib = util::libsqlvdi();
    let l = lib.to_str().unwrap();
    let b = e.json(&[
        "--vdi-library",
        l,
        "--vdi-abi",
        "cpp",
        "backup",
        "cpp",
        "--stripes",
        "4",
        "--compress",
        "zstd:1",
    ]);
    let t = b["transport"].as_str().unwrap();
    assert!(t.contains("libsqlvdi.so") && t.contains("C++ ABI"), "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let stored = e.json(&["list"])["backups"][0]["transport"].clone();
    assert_eq!(stored, b["transport"], "the manifest records the ABI");
    engine(&e.data).modify("cpp", 32).unwrap();
    e.json(&[
        "--vdi-library",
        l,
        "--vdi-abi",
        "cpp",
        "restore",
        &id,
        "--replace",
    ]);
    assert!(std::fs::read(&mdf).unwrap() == before);
    // auto picks the C API of a library that exports both; `c` forces it.
    for abi in ["auto", "c"] {
        let b = e.json(&["--vdi-library", l, "--vdi-abi", abi, "backup", "cpp"]);
        assert!(b["transport"].as_str().unwrap().contains("(C API)"), "{b}");
    }
}

#[test]
fn a_library_exporting_neither_abi_is_refused_naming_what_is_missing() {
    let e = Env::new();
    engine(&e.data).create_database("none", 4 << 20).unwrap();
    let src = e.dir.path().join("notvdi.c");
    std::fs::write(&src, "int not_a_vdi_function(void) { return 42; }\n").unwrap();
    let so = e.dir.path().join("libnotvdi.so");
    let o = util::run({
        let mut c = Command::new("gcc");
        c.args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src);
        c
    });
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = so.to_str().unwrap();
    for abi in ["auto", "c", "cpp"] {
        let o = e.run(&["--vdi-library", s, "--vdi-abi", abi, "backup", "none"]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "{abi}: {err}");
        assert!(err.contains("libnotvdi.so"), "{abi}: {err}");
        if abi != "cpp" {
            assert!(err.contains("openvdi_client_create"), "{abi}: {err}");
        }
        if abi != "c" {
            assert!(
                err.contains("ClientVirtualDeviceSet::Create(char*, VDConfig*)")
                    && err.contains("_ZN22ClientVirtualDeviceSet6CreateEPcP8VDConfig")
                    && err.contains("ClientVirtualDevice::GetCommand"),
                "{abi}: {err}"
            );
        }
        if abi == "auto" {
            assert!(err.contains("neither"), "{err}");
        }
    }
    assert!(e.backups().is_empty());
}

/// `openvdi-engine serve` with this file's two logins.
fn start_endpoint(dir: &Path) -> Endpoint {
    Endpoint::start(
        &util::engine_bin(),
        dir,
        &[(USER, PASSWORD), (ASCII_USER, ASCII_PASSWORD)],
        &["--open-timeout", "30"],
    )
}

/// The connection string, without the password (it travels in
/// OPENVDI_TDS_PASSWORD).
fn ado(ep: &Endpoint, extra: &str) -> String {
    format!("server=tcp:127.0.0.1,{};user={USER};{extra}", ep.port)
}

/// `openvdi --tds … --vdi-library … --vdi-abi cpp ARGS`, password from the
/// environment, `--json`; asserts success and that the password was never printed.
fn tds_json(
    e: &Env,
    ep: &Endpoint,
    ado_extra: &str,
    lib: &Path,
    args: &[&str],
) -> serde_json::Value {
    let ado = ado(ep, ado_extra);
    let mut all = vec![
        "--json",
        "--quiet",
        "--tds",
        &ado,
        "--vdi-library",
        lib.to_str().unwrap(),
        "--vdi-abi",
        "cpp",
    ];
    all.extend_from_slice(args);
    let mut c = e.cmd(&all);
    c.env("OPENVDI_TDS_PASSWORD", PASSWORD);
    let o = util::run(c);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "openvdi {args:?}\n{out}\n{err}");
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "the password was printed"
    );
    serde_json::from_str(&out).unwrap()
}

fn tds_round_trip(stripes: &str, ado_extra: &str) {
    let e = Env::new();
    let db = "wire";
    engine(&e.data).create_database(db, 16 << 20).unwrap();
    let ep = start_endpoint(&e.data);
    let lib = util::libsqlvdi();
    let mdf = data_file(&e.data, db);
    let mut ids = Vec::new();
    let mut states = Vec::new();
    for kind in ["full", "diff", "log"] {
        engine(&e.data).modify(db, 8).unwrap();
        states.push(std::fs::read(&mdf).unwrap());
        let b = tds_json(
            &e,
            &ep,
            ado_extra,
            &lib,
            &["backup", db, "--type", kind, "--stripes", stripes],
        );
        assert_eq!(b["engine"]["kind"], "tds", "{b}");
        // SQL Server's own messages (tiberius' INFO events): 3014 and 4035.
        assert!(
            b["engine"]["message"]
                .as_str()
                .unwrap()
                .contains("successfully processed"),
            "{b}"
        );
        assert!(
            b["engine"]["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m.as_str().unwrap().starts_with("Processed ")),
            "{b}"
        );
        assert!(b["transport"].as_str().unwrap().contains("C++ ABI"), "{b}");
        let id = b["id"].as_str().unwrap().to_string();
        // The chain facts come from the stream and agree with HEADERONLY.
        util::assert_chain_matches_headeronly(&e, &b, kind);
        ids.push(id);
    }
    let parent = |id: &str| util::parent_of(&e, id);
    assert_eq!(parent(&ids[1]).as_deref(), Some(ids[0].as_str()));
    assert_eq!(parent(&ids[2]).as_deref(), Some(ids[1].as_str()));
    // The full alone, over what is there now: the data file as it was backed up.
    engine(&e.data).modify(db, 16).unwrap();
    tds_json(&e, &ep, ado_extra, &lib, &["restore", &ids[0], "--replace"]);
    assert!(std::fs::read(&mdf).unwrap() == states[0], "full restore");
    // The whole chain: full and diff WITH NORECOVERY, then the log.
    engine(&e.data).modify(db, 16).unwrap();
    tds_json(
        &e,
        &ep,
        ado_extra,
        &lib,
        &["restore", &ids[0], "--replace", "--norecovery"],
    );
    tds_json(
        &e,
        &ep,
        ado_extra,
        &lib,
        &["restore", &ids[1], "--norecovery"],
    );
    tds_json(&e, &ep, ado_extra, &lib, &["restore", &ids[2]]);
    assert!(std::fs::read(&mdf).unwrap() == states[2], "chain restore");
    // No shared-memory object of any of these backups' sets is left.
    let shm: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .collect();
    for m in &e.backups() {
        let set = m["vdi_set"].as_str().unwrap();
        assert!(!set.is_empty(), "{m}");
        assert!(
            !shm.iter().any(|n| n.contains(set)),
            "{set} left in /dev/shm"
        );
    }
}

#[test]
fn tds_backup_and_restore_through_serve_with_the_cpp_abi() {
    tds_round_trip("1", "encrypt=DANGER_PLAINTEXT");
}

#[test]
fn tds_backup_and_restore_through_serve_with_4_stripes() {
    tds_round_trip("4", "encrypt=DANGER_PLAINTEXT");
}

#[test]
fn tds_round_trip_with_tls_for_the_whole_session() {
    tds_round_trip("2", "encrypt=true;TrustServerCertificate=true");
}

#[test]
fn tds_round_trip_with_login_only_tls() {
    tds_round_trip("1", "encrypt=false;TrustServerCertificate=true");
}

/// TDS 8.0: tiberius (feature `tds80`) opens TLS before PRELOGIN.
#[test]
fn tds_round_trip_with_tds8_strict_tls() {
    tds_round_trip("1", "encrypt=strict;TrustServerCertificate=true");
}

#[test]
fn tds_password_from_a_file_or_the_string_and_a_wrong_one_is_18456() {
    let e = Env::new();
    engine(&e.data).create_database("pw", 4 << 20).unwrap();
    let ep = start_endpoint(&e.data);
    let pwfile = e.dir.path().join("tds-password");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let base = ado(&ep, "encrypt=DANGER_PLAINTEXT");
    let with_pw = format!(
        "server=tcp:127.0.0.1,{};user={ASCII_USER};password={ASCII_PASSWORD};encrypt=DANGER_PLAINTEXT",
        ep.port
    );
    for args in [
        vec![
            "--tds",
            &base,
            "--tds-password-file",
            pwfile.to_str().unwrap(),
        ],
        vec!["--tds", &with_pw],
    ] {
        let mut a = vec!["--json", "--quiet"];
        a.extend(args.iter().copied());
        a.extend(["backup", "pw"]);
        let o = e.run(&a);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));
        assert!(!out.contains(ASCII_PASSWORD) && !err.contains(ASCII_PASSWORD));
    }
    // Over TLS (the whole session) this time.
    let wrong = format!(
        "server=tcp:127.0.0.1,{};user={ASCII_USER};password=not-{ASCII_PASSWORD};encrypt=true;TrustServerCertificate=true",
        ep.port
    );
    let o = e.run(&["--tds", &wrong, "backup", "pw"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("18456") || err.contains("Login failed"),
        "{err}"
    );
    assert!(!err.contains(ASCII_PASSWORD), "{err}");
    // A failed BACKUP over TLS: SQL Server's errors, the first and the 3013 after
    // it (tiberius returns only the first; the CLI reads the rest from its tracing
    // events), exit 1, no backup recorded.
    let tls = ado(&ep, "encrypt=true;TrustServerCertificate=true");
    let mut c = e.cmd(&["--tds", &tls, "backup", "nosuch", "--open-timeout", "10"]);
    c.env("OPENVDI_TDS_PASSWORD", PASSWORD);
    let o = util::run(c);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Msg 911: Database 'nosuch' does not exist")
            && err.contains("Msg 3013: BACKUP DATABASE is terminating abnormally"),
        "{err}"
    );
    assert_eq!(e.backups().len(), 2);
}
