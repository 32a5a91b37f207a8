//! `openvdi list`: complete backups (those with a manifest), in the order they were
//! taken, with their server, LSN range and parent (from LSNs, see `chain`), and a
//! flag for a differential or log that has nothing to follow (`orphan`) or whose log
//! chain has a hole (`gap`).

use anyhow::Result;

use super::Ctx;
use crate::cli::ListArgs;
use crate::progress::human;
use crate::{chain, output};

pub fn run(ctx: &Ctx, a: ListArgs) -> Result<()> {
    let repo = super::open_repo(ctx)?;
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
    let flags: Vec<Option<&str>> = all.iter().map(|m| chain::flag(&all, m)).collect();
    if ctx.settings.json {
        let backups: Vec<serde_json::Value> = all
            .iter()
            .zip(&flags)
            .map(|(m, f)| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                v["taken"] = serde_json::json!(chain::taken(m));
                if let Some(f) = f {
                    v["flag"] = (*f).into();
                }
                v
            })
            .collect();
        output::json(&serde_json::json!({
            "ok": true, "repository": repo.location(), "backups": backups, "damaged": damaged,
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
        "{:<48} {:<5} {:<16} {:<16} {:<19} {:<37} {:>7} {:>10} {:>10} {:<7} {:<6} PARENT\n",
        "ID",
        "TYPE",
        "SERVER",
        "DATABASE",
        "TAKEN (UTC)",
        "LSN RANGE",
        "STRIPES",
        "RAW",
        "STORED",
        "CODEC",
        "FLAG"
    );
    for (m, f) in all.iter().zip(&flags) {
        let range = match (&m.chain.first_lsn, &m.chain.last_lsn) {
            (Some(a), Some(b)) => format!("{a}-{b}"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "{:<48} {:<5} {:<16} {:<16} {:<19} {:<37} {:>7} {:>10} {:>10} {:<7} {:<6} {}\n",
            m.id,
            m.kind.word(),
            m.server.escape_debug().to_string(),
            m.database.escape_debug().to_string(),
            chain::taken(m).format("%Y-%m-%d %H:%M:%S"),
            range,
            m.stripes.len(),
            human(m.raw_size as f64),
            human(m.stored_size as f64),
            m.codec.to_string(),
            f.unwrap_or("-"),
            m.chain.parent.as_deref().unwrap_or("-"),
        ));
    }
    s.push_str(&warn);
    output::text(&s);
    Ok(())
}
