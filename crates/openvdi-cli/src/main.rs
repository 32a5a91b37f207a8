//! `openvdi`, the backup tool: backs up and restores SQL Server databases through the
//! Virtual Device Interface — striped, compressed off the device threads, checksummed
//! per chunk and per stripe — to a local directory or object storage.
//!
//! The binary is glue: `cli` parses, `config` resolves flags, `OPENVDI_*` variables and
//! the TOML file into settings, `cmd::*` runs one subcommand each, `pipeline` moves
//! bytes between virtual devices and `storage`, `repo` names and lists backups, and
//! `exit` maps every failure to the documented exit-code table.
//!
//! ```text
//! openvdi backup demo --stripes 2 --compress zstd:3
//! openvdi list
//! openvdi restore latest:demo --as demo_copy
//! ```

// Unsafe code is denied everywhere but `vdi_lib`, which calls a C library loaded at
// run time (its module comment states the contract it relies on).
#![deny(unsafe_code)]

mod chain;
mod chunk;
mod cli;
mod cmd;
mod codec;
mod config;
mod crypto;
mod embedded;
mod engine;
mod exit;
mod lock;
mod manifest;
mod mtf;
mod naming;
mod output;
mod pipeline;
mod progress;
mod redact;
mod repo;
mod retention;
mod secret;
mod storage;
mod tds;
mod vdi;
mod vdi_cpp;
mod vdi_lib;

use clap::Parser;

use crate::exit::Code;
use crate::pipeline::{Stop, StopReason};

fn main() {
    // An empty OPENVDI_* variable means "not set" (as in most tools); clap would take
    // it as an empty value. Still single-threaded here, so changing the environment
    // cannot race with a reader.
    for (k, v) in std::env::vars_os() {
        if v.is_empty() && k.to_string_lossy().starts_with("OPENVDI_") {
            std::env::remove_var(&k);
        }
    }
    redact::register_env();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Under --json a bad command line is a JSON failure like any other.
            let json = std::env::args_os()
                .skip(1)
                .take_while(|a| a != "--")
                .any(|a| a == "--json");
            if json && e.use_stderr() {
                // The message: its first paragraph (clap adds usage and a hint after).
                let text = e.render().to_string();
                let message: Vec<&str> = text
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect();
                let message = message.join(" ");
                output::json(&serde_json::json!({
                    "ok": false,
                    "exit_code": Code::Usage.as_i32(),
                    "error_kind": Code::Usage.name(),
                    "error": message.strip_prefix("error: ").unwrap_or(&message),
                }));
            }
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                Code::Usage.as_i32()
            } else {
                Code::Ok.as_i32()
            });
        }
    };
    let json = cli.global.json;
    let stop = Stop::new();
    {
        let stop = stop.clone();
        // SIGINT and SIGTERM (ctrlc's "termination" feature): the pipelines see the flag
        // within one poll period and abort the set, so nothing partial is published.
        let _ = ctrlc::set_handler(move || stop.stop(StopReason::Interrupted));
    }
    let code = match cmd::run(cli, stop) {
        Ok(()) => Code::Ok,
        Err(e) => {
            let code = exit::code_of(&e);
            if json && !output::printed() {
                output::json(&serde_json::json!({
                    "ok": false,
                    "exit_code": code.as_i32(),
                    "error_kind": code.name(),
                    "error": format!("{e:#}"),
                }));
            }
            // Scrubbed: an error may quote a config line or a server's reply.
            eprintln!("openvdi: error: {}", redact::scrub(&format!("{e:#}")));
            code
        }
    };
    std::process::exit(code.as_i32());
}
