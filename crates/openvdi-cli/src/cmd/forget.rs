//! `openvdi forget ID`: deletes one backup, refusing (exit 1) when a backup that can
//! be restored now could not be without it (a differential's full, a log in the
//! middle of a chain); the tail of a chain, or a full nothing follows, can go.

use anyhow::Result;

use super::Ctx;
use crate::cli::ForgetArgs;
use crate::exit::{err, Code};
use crate::{lock, output, retention};

pub fn run(ctx: &Ctx, a: ForgetArgs) -> Result<()> {
    let repo = super::open_repo(ctx)?;
    let _lock = lock::acquire(
        &repo.store,
        lock::Mode::Exclusive,
        "forget",
        repo.keys.as_deref(),
    )?;
    if a.backup == "latest" || a.backup.starts_with("latest:") {
        return Err(err(
            Code::Usage,
            "forget takes a backup id, not `latest` (see `openvdi list`)",
        ));
    }
    let m = repo.find(&a.backup)?;
    let all = repo.backups()?;
    let deps = retention::dependents(&all, &m.id);
    if !deps.is_empty() {
        let names: Vec<&str> = deps.iter().map(|d| d.id.as_str()).collect();
        return Err(anyhow::anyhow!(
            "refusing to forget {}: {} backup(s) could no longer be restored without it: {}; \
             forget those first (newest first), or let `openvdi prune` remove whole chains",
            m.id,
            deps.len(),
            names.join(", ")
        ));
    }
    let objects = if a.dry_run {
        0
    } else {
        super::prune::delete_backup(&repo, &m)?
    };
    if ctx.settings.json {
        output::json(&serde_json::json!({
            "ok": true, "dry_run": a.dry_run, "forgotten": m.id, "deleted_objects": objects,
        }));
    } else if a.dry_run {
        output::text(&format!("would forget {} (nothing needs it)", m.id));
    } else {
        output::text(&format!("forgot {} ({objects} object(s) deleted)", m.id));
    }
    Ok(())
}
