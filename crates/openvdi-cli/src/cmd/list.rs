//! `openvdi list`: complete backups (those with a manifest), oldest first.

use anyhow::Result;

use super::Ctx;
use crate::cli::ListArgs;
use crate::output;
use crate::progress::human;
use crate::repo::Repo;

pub fn run(ctx: &Ctx, a: ListArgs) -> Result<()> {
    let repo = Repo::open(&ctx.settings.repo)?;
    repo.require()?;
    let scan = repo.scan()?;
    let damaged = scan.damaged;
    let all: Vec<_> = scan
        .backups
        .into_iter()
        .filter(|m| {
            a.database
                .as_deref()
                .is_none_or(|d| m.database.eq_ignore_ascii_case(d))
        })
        .collect();
    if ctx.settings.json {
        output::json(&serde_json::json!({
            "ok": true, "repository": repo.location(), "backups": all, "damaged": damaged,
        }));
        return Ok(());
    }
    let mut warn = String::new();
    for d in &damaged {
        // Names from the listing are printed escaped: a file name is not trusted either.
        warn.push_str(&format!(
            "DAMAGED {} ({}): {}\n",
            d.folder.escape_debug(),
            d.key.escape_debug(),
            d.error.escape_debug()
        ));
    }
    if all.is_empty() {
        output::text(&format!("{warn}no backups in {}", repo.location()));
        return Ok(());
    }
    let mut s = format!(
        "{:<48} {:<5} {:<16} {:<20} {:>7} {:>11} {:>11} {:<8} PARENT\n",
        "ID", "TYPE", "DATABASE", "STARTED (UTC)", "STRIPES", "RAW", "STORED", "CODEC"
    );
    for m in &all {
        s.push_str(&format!(
            "{:<48} {:<5} {:<16} {:<20} {:>7} {:>11} {:>11} {:<8} {}\n",
            m.id,
            m.kind.word(),
            m.database,
            m.timings.started.format("%Y-%m-%d %H:%M:%S"),
            m.stripes.len(),
            human(m.raw_size as f64),
            human(m.stored_size as f64),
            m.codec.to_string(),
            m.chain.parent.as_deref().unwrap_or("-"),
        ));
    }
    s.push_str(&warn);
    output::text(&s);
    Ok(())
}
