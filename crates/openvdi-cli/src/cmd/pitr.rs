//! `openvdi restore DATABASE --at TIME | --at-lsn LSN`: point-in-time restore.
//!
//! The plan, from the backups' own facts (see `chain`): the newest full that
//! finished before the point, the newest differential of that full that did too
//! (when a log chain continues from it), and the logs from there up to the one that
//! holds the point. Each runs WITH NORECOVERY, the last log with `STOPAT = '…'` (or
//! `STOPBEFOREMARK = 'lsn:…'`), then `RESTORE DATABASE … WITH RECOVERY` (unless
//! `--norecovery`). Times are UTC, as openvdi records them.

use anyhow::Result;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::restore::{self, RestoreOptions};
use super::Ctx;
use crate::chain::{self, lsn};
use crate::cli::RestoreArgs;
use crate::engine::{self, ident};
use crate::exit::{err, Code};
use crate::manifest::{Kind, Manifest};
use crate::{output, progress};

/// Where to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    Time(DateTime<Utc>),
    Lsn(u128),
}

impl Point {
    fn text(&self) -> String {
        match self {
            Point::Time(t) => t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
            Point::Lsn(l) => format!("LSN {l}"),
        }
    }

    /// The RESTORE option, as SQL Server spells it.
    pub fn option(&self) -> String {
        match self {
            Point::Time(t) => format!("STOPAT = '{}'", t.format("%Y-%m-%d %H:%M:%S%.3f")),
            Point::Lsn(l) => format!("STOPBEFOREMARK = 'lsn:{l}'"),
        }
    }
}

/// `YYYY-MM-DD HH:MM[:SS[.fff]]` (or with a `T`), UTC.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim().trim_end_matches('Z').trim_end_matches(" UTC");
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, f) {
            return Ok(n.and_utc());
        }
    }
    Err(format!(
        "--at {s:?}: expected 'YYYY-MM-DD HH:MM:SS' (UTC), e.g. '2024-03-01 14:30:00'"
    ))
}

fn finished(m: &Manifest) -> DateTime<Utc> {
    m.backup_finished
        .or(m.backup_started)
        .unwrap_or(m.timings.finished)
}

/// Whether `m` (a full or diff) is wholly before the point.
fn before(m: &Manifest, p: Point) -> bool {
    match p {
        Point::Time(t) => finished(m) <= t,
        Point::Lsn(l) => lsn(&m.chain.last_lsn).is_some_and(|x| x <= l),
    }
}

/// Whether log `m` reaches the point (holds it, or ends at it).
fn reaches(m: &Manifest, p: Point) -> bool {
    match p {
        Point::Time(t) => finished(m) >= t,
        Point::Lsn(l) => lsn(&m.chain.last_lsn).is_some_and(|x| x >= l),
    }
}

/// The logs that restore `base` forward to the point: the first covers base's
/// LastLSN, each next continues the last; None when the chain ends first.
fn logs_from<'a>(group: &[&'a Manifest], base: &Manifest, p: Point) -> Option<Vec<&'a Manifest>> {
    let from = lsn(&base.chain.last_lsn)?;
    let mut out: Vec<&Manifest> = Vec::new();
    let mut at = from;
    loop {
        let next = group.iter().copied().find(|l| {
            l.kind == Kind::Log
                && match (lsn(&l.chain.first_lsn), lsn(&l.chain.last_lsn)) {
                    (Some(a), Some(b)) => {
                        if out.is_empty() {
                            a <= at && at < b
                        } else {
                            a == at && at < b
                        }
                    }
                    _ => false,
                }
        })?;
        out.push(next);
        if reaches(next, p) {
            return Some(out);
        }
        at = lsn(&next.chain.last_lsn)?;
    }
}

/// The restore sequence for the point, or why there is none (exit 10).
pub fn plan<'a>(group: &[&'a Manifest], p: Point, what: &str) -> Result<Vec<&'a Manifest>> {
    let missing = |m: String| err(Code::RepoMissing, m);
    let fulls: Vec<&Manifest> = group
        .iter()
        .rev()
        .copied()
        .filter(|m| m.kind == Kind::Full)
        .collect();
    let Some(first) = fulls.last() else {
        return Err(missing(format!(
            "no full backup of {what} in the repository"
        )));
    };
    let candidates: Vec<&&Manifest> = fulls.iter().filter(|f| before(f, p)).collect();
    if candidates.is_empty() {
        return Err(missing(format!(
            "{} is before the first full backup of {what} ({}, finished {}): nothing \
             restores to it",
            p.text(),
            first.id,
            finished(first).format("%Y-%m-%d %H:%M:%S UTC")
        )));
    }
    for full in candidates {
        let mut diffs: Vec<&Manifest> = group
            .iter()
            .rev()
            .copied()
            .filter(|d| {
                d.kind == Kind::Diff
                    && d.chain.parent.as_deref() == Some(full.id.as_str())
                    && before(d, p)
            })
            .collect();
        diffs.push(full);
        for base in diffs {
            if let Some(logs) = logs_from(group, base, p) {
                let mut seq = vec![*full];
                if base.kind == Kind::Diff {
                    seq.push(base);
                }
                seq.extend(logs);
                return Ok(seq);
            }
        }
    }
    let last_log = group.iter().rev().find(|m| m.kind == Kind::Log);
    match last_log {
        Some(l) if !reaches(l, p) => Err(missing(format!(
            "{} is after the last log backup of {what} ({}, {}): no backup holds it yet",
            p.text(),
            l.id,
            match p {
                Point::Time(_) =>
                    format!("finished {}", finished(l).format("%Y-%m-%d %H:%M:%S UTC")),
                Point::Lsn(_) =>
                    format!("ends at LSN {}", l.chain.last_lsn.as_deref().unwrap_or("?")),
            }
        ))),
        None => Err(missing(format!(
            "no log backup of {what}: a point in time needs the logs after a full"
        ))),
        _ => Err(missing(format!(
            "no unbroken log chain of {what} leads from a full backup before {} to it \
             (see the gap flags in `openvdi list`)",
            p.text()
        ))),
    }
}

pub fn run(ctx: &Ctx, a: RestoreArgs) -> Result<()> {
    let point = match (&a.at, &a.at_lsn) {
        (Some(t), _) => Point::Time(parse_time(t).map_err(|e| err(Code::Usage, e))?),
        (None, Some(l)) => Point::Lsn(lsn(&Some(l.clone())).ok_or_else(|| {
            err(
                Code::Usage,
                format!("--at-lsn {l:?}: expected a decimal LSN as SQL Server prints it"),
            )
        })?),
        (None, None) => unreachable!("called with --at or --at-lsn"),
    };
    let database = a.backup.clone();
    let repo = super::open_repo(ctx)?;
    let all = repo.backups()?;
    let group: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.database.eq_ignore_ascii_case(&database))
        .filter(|m| {
            a.from_server
                .as_deref()
                .is_none_or(|s| m.server.eq_ignore_ascii_case(s))
        })
        .collect();
    let mut servers: Vec<String> = group.iter().map(|m| m.server.to_lowercase()).collect();
    servers.sort();
    servers.dedup();
    if servers.len() > 1 {
        return Err(err(
            Code::Usage,
            format!(
                "backups of {database} come from {} servers ({}): say which with --from-server",
                servers.len(),
                servers.join(", ")
            ),
        ));
    }
    let what = format!("database {database}");
    if group.is_empty() {
        return Err(err(
            Code::RepoMissing,
            format!(
                "no backups of {what} in {} (see `openvdi list`; --at takes a database name)",
                repo.location()
            ),
        ));
    }
    let seq = plan(&group, point, &what)?;
    let target = a.as_name.clone().unwrap_or_else(|| seq[0].database.clone());
    // Options per step: MOVE and REPLACE go with the full; the last log stops.
    let mut first = RestoreOptions {
        as_name: a.as_name.clone(),
        moves: restore::absolute_moves(restore::parse_moves(&a.moves)?)?,
        norecovery: true,
        replace: a.replace,
        ..Default::default()
    };
    let mut checked = restore::Checked::default();
    if a.replace && !a.no_verify && !a.dry_run {
        for m in &seq {
            restore::verify_first(ctx, &repo, m, &mut checked)?;
        }
    }
    restore::relocate(ctx, &repo, seq[0], &mut first, &mut checked)?;
    let steps: Vec<(&Manifest, RestoreOptions)> = seq
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut o = if i == 0 {
                first.clone()
            } else {
                RestoreOptions {
                    as_name: a.as_name.clone(),
                    norecovery: true,
                    ..Default::default()
                }
            };
            if i == seq.len() - 1 && m.kind == Kind::Log {
                o.stop = Some(point.option());
            }
            (*m, o)
        })
        .collect();
    let recover =
        (!a.norecovery).then(|| format!("RESTORE DATABASE {} WITH RECOVERY", ident(&target)));
    let sql: Vec<String> = steps
        .iter()
        .map(|(m, o)| restore::statement_text(m, o))
        .chain(recover.clone())
        .collect();
    let plan_rows: Vec<serde_json::Value> = steps
        .iter()
        .map(|(m, _)| {
            serde_json::json!({
                "id": m.id, "type": m.kind, "taken": chain::taken(m), "finished": finished(m),
                "first_lsn": m.chain.first_lsn, "last_lsn": m.chain.last_lsn,
            })
        })
        .collect();
    if a.dry_run {
        if ctx.settings.json {
            output::json(&serde_json::json!({
                "ok": true, "dry_run": true, "database": target, "point": point.text(),
                "plan": plan_rows, "sql": sql,
            }));
        } else {
            let mut s = format!("restore {target} to {} from:\n", point.text());
            for (m, _) in &steps {
                s.push_str(&format!(
                    "  {:<4} {}  taken {}  LSN {}-{}\n",
                    m.kind.word(),
                    m.id,
                    chain::taken(m).format("%Y-%m-%d %H:%M:%S"),
                    m.chain.first_lsn.as_deref().unwrap_or("?"),
                    m.chain.last_lsn.as_deref().unwrap_or("?"),
                ));
            }
            s.push_str("T-SQL (<vdi-set> is a fresh virtual device set each run):\n");
            for q in &sql {
                s.push_str(&format!("  {q};\n"));
            }
            s.push_str("dry run: nothing was restored");
            output::text(&s);
        }
        return Ok(());
    }
    // Every step of an encrypted chain is authenticated before the first reaches the
    // engine: a tampered log found only at its own step would leave the database
    // RESTORING half-way through the chain.
    for (m, _) in &steps {
        checked.authenticate(&repo, m)?;
    }
    let t0 = std::time::Instant::now();
    let mut messages = Vec::new();
    let total = steps.len();
    for (i, (m, o)) in steps.iter().enumerate() {
        let out = restore::restore_through_engine(ctx, &repo, m, o, "restore", &mut checked)
            .map_err(|e| {
                e.context(format!(
                    "step {} of {total} ({}) of the point-in-time restore failed: {target} is \
                 left RESTORING; run the restore again (with --replace) to start over",
                    i + 1,
                    m.id
                ))
            })?;
        messages.extend(out.messages);
    }
    if let Some(q) = &recover {
        let eng = engine::open(&ctx.settings.engine, progress::Mode::Off, None)?;
        let out = eng.execute(q, &ctx.stop);
        if !out.ok {
            return Err(anyhow::anyhow!(
                "recovering {target}: {} ({target} is left RESTORING)",
                out.error_text()
            ));
        }
        messages.extend(out.messages);
    }
    let secs = t0.elapsed().as_secs_f64();
    if ctx.settings.json {
        output::json(&serde_json::json!({
            "ok": true, "database": target, "point": point.text(), "plan": plan_rows,
            "sql": sql, "recovered": recover.is_some(), "seconds": secs, "messages": messages,
        }));
    } else {
        let ids: Vec<&str> = steps.iter().map(|(m, _)| m.id.as_str()).collect();
        output::text(&format!(
            "restored {target} to {} in {secs:.1} s from {}{}",
            point.text(),
            ids.join(", "),
            if recover.is_some() {
                ""
            } else {
                " (left RESTORING: --norecovery)"
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tests::backup;

    #[test]
    fn plans_the_full_the_newest_usable_diff_and_the_logs() {
        let mut all = vec![
            backup("f1", "A", Kind::Full, 100, [100, 110, 105, 0]),
            backup("l1", "A", Kind::Log, 200, [90, 120, 0, 0]),
            backup("d1", "A", Kind::Diff, 300, [125, 130, 127, 105]),
            backup("l2", "A", Kind::Log, 400, [120, 140, 0, 0]),
            backup("l3", "A", Kind::Log, 500, [140, 150, 0, 0]),
        ];
        chain::link(&mut all);
        let g: Vec<&Manifest> = all.iter().collect();
        let ids = |p: Point| {
            plan(&g, p, "db")
                .map(|v| v.iter().map(|m| m.id.to_string()).collect::<Vec<_>>())
                .map_err(|e| (crate::exit::code_of(&e), format!("{e:#}")))
        };
        let t = |s: i64| Point::Time(DateTime::from_timestamp(s, 0).unwrap());
        assert_eq!(ids(t(150)).unwrap(), ["f1", "l1"]);
        assert_eq!(ids(t(350)).unwrap(), ["f1", "d1", "l2"]);
        assert_eq!(ids(t(450)).unwrap(), ["f1", "d1", "l2", "l3"]);
        assert_eq!(ids(Point::Lsn(145)).unwrap(), ["f1", "d1", "l2", "l3"]);
        let (code, e) = ids(t(50)).unwrap_err();
        assert_eq!(code, Code::RepoMissing);
        assert!(e.contains("before the first full"), "{e}");
        let (_, e) = ids(t(600)).unwrap_err();
        assert!(e.contains("after the last log backup"), "{e}");
    }

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(
            parse_time("2024-03-01 14:30:00").unwrap().timestamp(),
            1_709_303_400
        );
        assert_eq!(
            parse_time("2024-03-01T14:30:00.250Z")
                .unwrap()
                .timestamp_millis(),
            1_709_303_400_250
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(
            Point::Time(parse_time("2024-03-01 14:30").unwrap()).option(),
            "STOPAT = '2024-03-01 14:30:00.000'"
        );
    }
}
