//! Credentials in a repository URL (user-info or query) or in the config file never
//! appear in any output: failing commands are run with a secret in the URL and their
//! stdout and stderr searched for it.

mod util;

use util::Env;

const SECRET: &str = "Zq9SuperSecretValue";
const KEY_ID: &str = "AKIAREDACTEDKEYID";

fn assert_clean(what: &str, o: &std::process::Output) {
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: expected a failure");
    for s in [SECRET, KEY_ID, "Zq9Super%2F"] {
        assert!(
            !out.contains(s) && !err.contains(s),
            "{what}: {s:?} leaked\nstdout: {out}\nstderr: {err}"
        );
    }
    assert!(!err.is_empty() || !out.is_empty(), "{what}: says something");
}

#[test]
fn secrets_in_repository_urls_are_never_printed() {
    let e = Env::new();
    let urls = [
        // No bucket after the user-info.
        format!("s3://{KEY_ID}:{SECRET}@/prefix"),
        // An unknown option next to a secret one.
        format!("s3://bucket/p?secret_access_key={SECRET}&no_such_option=1"),
        // Unknown scheme.
        format!("ftp://{KEY_ID}:{SECRET}@host/x"),
        // A repository that does not exist (exit 10, message names the location).
        format!("memory://{KEY_ID}:{SECRET}@b/p"),
        format!("memory://b/p?access_key_id={KEY_ID}&secret_access_key={SECRET}"),
    ];
    for url in &urls {
        for json in [false, true] {
            let mut args = vec!["list"];
            if json {
                args.insert(0, "--json");
            }
            let mut c = e.cmd(&args);
            c.arg("--repo").arg(url);
            let o = util::run(c);
            assert_clean(&format!("list --repo {json}"), &o);
            let mut c = e.cmd(&["verify", "latest"]);
            c.arg("--repo").arg(url);
            assert_clean("verify", &util::run(c));
        }
    }
    // The masked form is what is shown.
    let mut c = e.cmd(&["list"]);
    c.arg("--repo")
        .arg(format!("memory://{KEY_ID}:{SECRET}@b/p"));
    let o = util::run(c);
    assert_eq!(o.status.code(), Some(10));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("memory://***@b/p"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_secret_in_the_config_file_is_not_quoted_by_its_parse_error() {
    let e = Env::new();
    let cfg = e.dir.path().join("bad.toml");
    // A TOML error on the line of the URL: the parser quotes that line.
    std::fs::write(
        &cfg,
        format!("repo = \"s3://{KEY_ID}:{SECRET}@bucket/p\" stripes = 2\n"),
    )
    .unwrap();
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_openvdi"));
    c.env("HOME", e.dir.path())
        .env_remove("OPENVDI_REPO")
        .arg("--config")
        .arg(&cfg)
        .arg("list");
    let o = util::run(c);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_clean("config parse error", &o);
    // A valid file whose repository cannot be opened.
    std::fs::write(&cfg, format!("repo = \"s3://{KEY_ID}:{SECRET}@/p\"\n")).unwrap();
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_openvdi"));
    c.env("HOME", e.dir.path())
        .env_remove("OPENVDI_REPO")
        .arg("--json")
        .arg("--config")
        .arg(&cfg)
        .arg("list");
    assert_clean("config repo", &util::run(c));
}
