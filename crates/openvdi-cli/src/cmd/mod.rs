//! One module per subcommand; each validates its arguments into a plan, then acts.

mod backup;
mod export;
mod forget;
mod import;
mod init;
mod inspect;
mod key;
mod list;
mod pitr;
mod prune;
mod restore;
mod verify;

use std::sync::Arc;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::Settings;
use crate::exit::{err, Code};
use crate::pipeline::{Stop, StopReason};
use crate::progress;

/// What every command gets.
pub struct Ctx {
    pub settings: Settings,
    pub stop: Arc<Stop>,
    pub progress: progress::Mode,
}

pub fn run(cli: Cli, stop: Arc<Stop>) -> Result<()> {
    let settings = Settings::resolve(&cli.global)?;
    let ctx = Ctx {
        progress: progress::Mode::pick(settings.json, settings.quiet),
        settings,
        stop,
    };
    match cli.command {
        Command::Init(a) => init::run(&ctx, a),
        Command::Backup(a) => backup::run(&ctx, a),
        Command::Restore(a) => restore::run(&ctx, a),
        Command::List(a) => list::run(&ctx, a),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Export(a) => export::run(&ctx, a),
        Command::Import(a) => import::run(&ctx, a),
        Command::Prune(a) => prune::run(&ctx, a),
        Command::Forget(a) => forget::run(&ctx, a),
        Command::Key(k) => key::run(&ctx, k),
        Command::Unlock => {
            let mut repo = crate::repo::Repo::open(&ctx.settings.repo)?;
            repo.require()?;
            let n = crate::lock::force_unlock(&repo.store)?;
            if ctx.settings.json {
                crate::output::json(&serde_json::json!({"ok": true, "locks_removed": n}));
            } else {
                crate::output::text(&format!("removed {n} lock(s)"));
            }
            Ok(())
        }
    }
}

/// Opens the repository for a command that reads it: exit 10 if there is none; an
/// encrypted one is unlocked with the command's credentials (exit 12 if they do not
/// open it).
pub fn open_repo(ctx: &Ctx) -> Result<crate::repo::Repo> {
    let mut repo = crate::repo::Repo::open(&ctx.settings.repo)?;
    repo.unlock(&crate::secret::Credentials::from_settings(&ctx.settings))?;
    Ok(repo)
}

/// Turns a pipeline's stop reason into an error with the right exit code.
pub fn stop_error(r: StopReason) -> anyhow::Error {
    match r {
        StopReason::Interrupted => err(
            Code::Interrupted,
            "interrupted: the virtual device set was aborted; nothing was published",
        ),
        StopReason::Verify(m) => err(Code::Verify, format!("verification failed: {m}")),
        StopReason::Engine(m) if m.contains("Msg 3279") => anyhow::anyhow!(
            "the engine failed: {m}\nthe backup is password-protected (or its password is \
             wrong): give its passwords with --media-password-file FILE (BACKUP … WITH \
             MEDIAPASSWORD) and --backup-password-file FILE (WITH PASSWORD)"
        ),
        StopReason::Engine(m) => anyhow::anyhow!("the engine failed: {m}"),
        StopReason::Failed(m) => anyhow::anyhow!(m),
        StopReason::Aborted => anyhow::anyhow!(
            "the virtual device set was aborted by the engine, which gave no reason"
        ),
    }
}

/// Fails with 130 if Ctrl-C arrived (checked between steps that have no pipeline).
pub fn check_interrupted(stop: &Stop) -> Result<()> {
    if stop.reason() == Some(StopReason::Interrupted) {
        return Err(stop_error(StopReason::Interrupted));
    }
    Ok(())
}

/// Compression workers: all CPUs by default.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
