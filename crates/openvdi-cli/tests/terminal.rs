//! The password prompt on a real terminal: `openvdi` runs on a pseudo-terminal that
//! tests/pty_drive.py (Python's `pty` module) opens, which waits for each prompt and
//! for the terminal's echo to go off before it types the answer. Every wait is
//! bounded: the driver kills the command at its deadline, and `util::run` kills the
//! driver at its own.

mod util;

use std::path::Path;
use std::process::Command;

use util::{Env, PASSWORD};

/// What the password typed at the prompts is (never `util::PASSWORD`, which the
/// harness puts in OPENVDI_PASSWORD and which is removed here).
const TYPED: &str = "typed-on-the-tty 8472 q";

struct Drive {
    exit: i64,
    output: String,
    answered: u64,
}

/// Runs `openvdi ARGS` of `e` on a pseudo-terminal with no OPENVDI_PASSWORD, answering
/// each `(prompt, text)` in turn.
fn on_terminal(e: &Env, args: &[&str], answers: &[(&str, &str)]) -> Drive {
    let c = e.cmd(args);
    let mut p = Command::new("python3");
    p.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pty_drive.py"))
        .args(["--deadline", "120"]);
    for (prompt, text) in answers {
        p.args(["--expect", prompt, "--send", text]);
    }
    p.arg("--").arg(c.get_program()).args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => p.env(k, v),
            None => p.env_remove(k),
        };
    }
    p.env_remove("OPENVDI_PASSWORD");
    let o = util::run(p);
    assert!(
        o.status.success(),
        "pty_drive.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v.get("timeout").is_none(),
        "openvdi {args:?} on a terminal passed its deadline: {v}"
    );
    Drive {
        exit: v["exit"].as_i64().unwrap(),
        output: v["output"].as_str().unwrap().to_string(),
        answered: v["answered"].as_u64().unwrap(),
    }
}

/// The typed secrets never show: the prompt hid them (no echo) and nothing printed them.
fn no_echo(d: &Drive, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !d.output.contains(s),
            "{s:?} shows on the terminal: {:?}",
            d.output
        );
    }
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn the_password_is_asked_on_the_terminal_twice_for_init_once_for_each_command_and_never_echoed() {
    let e = Env::uninitialised();
    let config = Path::new(&e.repo).join("openvdi-config.json");

    // init asks twice; two different answers are refused and create nothing.
    let d = on_terminal(
        &e,
        &["init"],
        &[
            ("new password: ", "first-answer-51"),
            ("new password again: ", "second-answer-93"),
        ],
    );
    assert_eq!(d.exit, 2, "{:?}", d.output);
    assert_eq!(d.answered, 2);
    assert!(
        d.output.contains("the two passwords differ"),
        "{:?}",
        d.output
    );
    no_echo(&d, &["first-answer-51", "second-answer-93"]);
    assert!(!config.exists(), "a refused init created the repository");

    // The same answer twice: an encrypted repository with that password.
    let d = on_terminal(
        &e,
        &["init"],
        &[("new password: ", TYPED), ("new password again: ", TYPED)],
    );
    assert_eq!(d.exit, 0, "{:?}", d.output);
    assert!(
        d.output
            .contains("created the encrypted openvdi repository"),
        "{:?}",
        d.output
    );
    no_echo(&d, &[TYPED]);
    assert!(config.is_file());
    // It is the typed password that opens it, not the harness's.
    let o = e.run(&["list"]);
    assert_eq!(o.status.code(), Some(12), "harness password opened it");
    let mut c = e.cmd(&["--json", "list"]);
    c.env("OPENVDI_PASSWORD", TYPED);
    let o = util::run(c);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // backup and list ask once each and work with the typed password.
    openvdi_engine::Engine::open(&e.data)
        .unwrap()
        .create_database("tty", 8 << 20)
        .unwrap();
    let d = on_terminal(
        &e,
        &["--json", "--quiet", "backup", "tty"],
        &[("repository password: ", TYPED)],
    );
    assert_eq!(d.exit, 0, "{:?}", d.output);
    assert_eq!(
        count(&d.output, "repository password: "),
        1,
        "{:?}",
        d.output
    );
    no_echo(&d, &[TYPED]);
    let id = d
        .output
        .split(['\r', '\n'])
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find_map(|v| v["id"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no backup id in {:?}", d.output));
    let d = on_terminal(&e, &["list"], &[("repository password: ", TYPED)]);
    assert_eq!(d.exit, 0, "{:?}", d.output);
    assert_eq!(
        count(&d.output, "repository password: "),
        1,
        "{:?}",
        d.output
    );
    assert!(d.output.contains(&id), "{id} not listed: {:?}", d.output);
    no_echo(&d, &[TYPED]);

    // `key add`: the repository's password, then the new one twice.
    let d = on_terminal(
        &e,
        &["key", "add"],
        &[
            ("repository password: ", TYPED),
            ("new password: ", "second-slot-on-the-tty"),
            ("new password again: ", "second-slot-on-the-tty"),
        ],
    );
    assert_eq!(d.exit, 0, "{:?}", d.output);
    no_echo(&d, &[TYPED, "second-slot-on-the-tty"]);
    let d = on_terminal(
        &e,
        &["list"],
        &[("repository password: ", "second-slot-on-the-tty")],
    );
    assert_eq!(d.exit, 0, "the added slot does not open it: {:?}", d.output);

    // A wrong answer: exit 12, named, not echoed, not printed.
    let d = on_terminal(
        &e,
        &["list"],
        &[("repository password: ", "wrong-answer-77")],
    );
    assert_eq!(d.exit, 12, "{:?}", d.output);
    assert!(d.output.contains("wrong password"), "{:?}", d.output);
    no_echo(&d, &["wrong-answer-77", TYPED, PASSWORD]);
}

#[test]
fn without_a_terminal_or_a_password_the_error_names_every_way_to_give_one() {
    let e = Env::new();
    let mut c = e.cmd(&["list"]);
    c.env_remove("OPENVDI_PASSWORD"); // stdin is /dev/null: no terminal to ask on
    let o = util::run(c);
    assert_eq!(o.status.code(), Some(12));
    let err = String::from_utf8_lossy(&o.stderr);
    for way in [
        "OPENVDI_PASSWORD",
        "--password-file",
        "terminal",
        "--key-file",
    ] {
        assert!(err.contains(way), "{way} not named: {err}");
    }
    // And `init` of a new repository with nothing to take a password from refuses,
    // pointing at --no-encryption rather than creating it in the clear.
    let u = Env::uninitialised();
    let mut c = u.cmd(&["init"]);
    c.env_remove("OPENVDI_PASSWORD");
    let o = util::run(c);
    assert_eq!(o.status.code(), Some(12));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--no-encryption"), "{err}");
    assert!(!Path::new(&u.repo).exists() || std::fs::read_dir(&u.repo).unwrap().count() == 0);
}
