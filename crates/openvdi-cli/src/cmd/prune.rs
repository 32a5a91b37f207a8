//! `openvdi prune --keep-*`: keeps what the retention policy (flags, else the config
//! file's `[retention]`) keeps per server and database, with whole chains (see
//! `retention`); deletes the rest, plus objects no manifest refers to (left by crashed runs), plus unfinished
//! uploads older than `--upload-grace` (S3 multipart uploads whose writer was killed
//! or lost the server before its abort got through; local partial files). A dry run
//! unless `--confirm`. Takes the repository lock exclusively, so no backup is
//! mid-flight; the grace period still protects uploads of writers that hold no lock
//! here (another tool in the same bucket, a host whose lock was removed by `unlock`).

use std::collections::HashSet;

use anyhow::Result;

use super::Ctx;
use crate::cli::PruneArgs;
use crate::exit::{err, Code};
use crate::manifest::Manifest;
use crate::repo::{Repo, MARKER, RESERVATION};
use crate::retention::{self, Decision, Policy};
use crate::{lock, output};

/// The policy from the flags, if any was given (it then applies to every database).
pub fn flag_policy(a: &PruneArgs) -> Option<Policy> {
    let p = Policy {
        keep_last: a.keep_last,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_within: a.keep_within,
    };
    (!p.is_empty()).then_some(p)
}

/// The plan over the whole repository (`all` as `Repo::scan` gives it) for the
/// databases the filters select.
pub fn select(
    all: &[Manifest],
    flags: Option<&Policy>,
    config: &crate::config::Retention,
    database: Option<&str>,
    server: Option<&str>,
) -> Vec<Decision> {
    retention::plan(
        all,
        |m| {
            database.is_none_or(|d| m.database.eq_ignore_ascii_case(d))
                && server.is_none_or(|s| m.server.eq_ignore_ascii_case(s))
        },
        |m| match flags {
            Some(p) => p.clone(),
            None => config.policy_for(&m.server, &m.database),
        },
    )
}

/// Deletes one backup's objects: the manifest first (from then on it is no longer
/// listed, and a crash half-way leaves only orphans for the next prune), then its
/// stripes and whatever else is in its folder. Returns the objects deleted.
pub fn delete_backup(repo: &Repo, m: &Manifest) -> Result<usize> {
    let dir = Repo::dir_of(m);
    repo.store.delete(&Repo::manifest_key(&dir))?;
    let mut n = 1;
    for s in &m.stripes {
        repo.store.delete(&s.key)?;
        n += 1;
    }
    for e in repo.store.list(&dir)? {
        repo.store.delete(&e.key)?;
        n += 1;
    }
    Ok(n)
}

/// Unfinished uploads younger than this are left alone unless told otherwise.
pub const DEFAULT_UPLOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub fn run(ctx: &Ctx, a: PruneArgs) -> Result<()> {
    let flags = flag_policy(&a);
    if let Some(p) = &flags {
        p.validate().map_err(|e| err(Code::Usage, e))?;
    } else {
        let r = &ctx.settings.file.retention;
        if r.default.is_empty() && r.databases.iter().all(|(_, _, p)| p.is_empty()) {
            return Err(err(
                Code::Usage,
                "prune needs a retention policy: give --keep-last, --keep-daily, \
                 --keep-weekly, --keep-monthly or --keep-within, or set them under \
                 [retention] in the config file",
            ));
        }
    }
    let grace = a
        .upload_grace
        .or(ctx.settings.file.upload_grace)
        .unwrap_or(DEFAULT_UPLOAD_GRACE);
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(grace)
            .map_err(|_| err(Code::Usage, "--upload-grace: too long"))?;
    let repo = super::open_repo(ctx)?;
    let _lock = lock::acquire(
        &repo.store,
        lock::Mode::Exclusive,
        "prune",
        repo.keys.as_deref(),
    )?;
    let scan = repo.scan()?;
    let all = scan.backups;
    // The folders of damaged manifests are never touched: their objects are not
    // orphans (a damaged manifest may be repairable, its stripes are still the
    // backup), and their keys are not trusted for deletion either.
    let protected: Vec<String> = scan
        .damaged
        .iter()
        .map(|d| {
            let dir = d
                .key
                .strip_suffix(crate::manifest::FILE_NAME)
                .unwrap_or(&d.key);
            dir.to_string()
        })
        .collect();
    let plan = select(
        &all,
        flags.as_ref(),
        &ctx.settings.file.retention,
        a.database.as_deref(),
        a.for_server.as_deref(),
    );
    let doomed: Vec<Manifest> = plan
        .iter()
        .filter(|d| !d.keep)
        .map(|d| all[d.index].clone())
        .collect();
    let doomed_ids: HashSet<&str> = doomed.iter().map(|m| m.id.as_str()).collect();
    // Objects referenced by kept manifests; everything else under a backup folder is
    // garbage from a crashed run (no backup can be running: we hold the lock).
    let mut referenced: HashSet<String> = HashSet::new();
    for m in all.iter().filter(|m| !doomed_ids.contains(m.id.as_str())) {
        referenced.insert(Repo::manifest_key(&Repo::dir_of(m)));
        referenced.insert(format!("{}/{RESERVATION}", Repo::dir_of(m)));
        referenced.extend(m.stripes.iter().map(|s| s.key.clone()));
    }
    let mut orphans: Vec<String> = Vec::new();
    let mut uploads = Vec::new();
    let mut in_grace = 0usize;
    if a.database.is_none() && a.for_server.is_none() {
        for e in repo.store.list("")? {
            // The repository's own objects: the marker, the config object (its key
            // slots: deleting it would make every backup unreadable), the locks.
            if e.key == MARKER
                || e.key == crate::crypto::CONFIG
                || e.key.starts_with(lock::PREFIX)
                || e.key == lock::LOCAL_FILE
            {
                continue;
            }
            let in_doomed = doomed
                .iter()
                .any(|m| e.key.starts_with(&format!("{}/", Repo::dir_of(m))));
            let in_damaged = protected.iter().any(|p| e.key.starts_with(p.as_str()));
            if !referenced.contains(&e.key) && !in_doomed && !in_damaged {
                orphans.push(e.key);
            }
        }
        for u in repo.store.incomplete()? {
            if u.started <= cutoff {
                uploads.push(u);
            } else {
                in_grace += 1;
            }
        }
    }
    let mut deleted_objects = 0usize;
    if a.confirm {
        for m in &doomed {
            deleted_objects += delete_backup(&repo, m)?;
        }
        for k in &orphans {
            repo.store.delete(k)?;
            deleted_objects += 1;
        }
        for u in &uploads {
            repo.store.discard_incomplete(u)?;
        }
    }
    let kept = all.len() - doomed.len();
    if ctx.settings.json {
        let rows: Vec<serde_json::Value> = plan
            .iter()
            .map(|d| {
                let m = &all[d.index];
                serde_json::json!({
                    "id": m.id, "server": m.server, "database": m.database, "type": m.kind,
                    "taken": crate::chain::taken(m), "keep": d.keep, "reasons": d.reasons,
                })
            })
            .collect();
        output::json(&serde_json::json!({
            "ok": true, "dry_run": !a.confirm,
            "policy": flags.as_ref().map(|p| p.describe()).unwrap_or_else(|| "config file".into()),
            "plan": rows,
            "delete": doomed.iter().map(|m| &m.id).collect::<Vec<_>>(),
            "orphans": orphans, "kept": kept, "deleted_objects": deleted_objects,
            "unfinished_uploads": uploads, "unfinished_uploads_in_grace": in_grace,
            "upload_grace_seconds": grace.as_secs(),
            "damaged": scan.damaged,
        }));
    } else {
        let verb = if a.confirm { "deleted" } else { "would delete" };
        let mut s = String::new();
        for d in &plan {
            let m = &all[d.index];
            if d.keep {
                s.push_str(&format!("keep {} ({})\n", m.id, d.reasons.join("; ")));
            } else {
                s.push_str(&format!("{verb} {}\n", m.id));
            }
        }
        for o in &orphans {
            s.push_str(&format!("{verb} orphan object {o}\n"));
        }
        let abort = if a.confirm { "aborted" } else { "would abort" };
        for u in &uploads {
            s.push_str(&format!(
                "{abort} unfinished upload {} (started {})\n",
                u.key,
                u.started.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        if in_grace > 0 {
            s.push_str(&format!(
                "left {in_grace} unfinished upload(s) younger than --upload-grace {}s\n",
                grace.as_secs()
            ));
        }
        for d in &scan.damaged {
            s.push_str(&format!(
                "kept damaged backup {} untouched ({}): {}\n",
                d.folder, d.key, d.error
            ));
        }
        s.push_str(&format!(
            "{} backup(s) {verb}, {kept} kept{}",
            doomed.len(),
            if a.confirm {
                ""
            } else {
                " (dry run: add --confirm)"
            }
        ));
        output::text(&s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Chain, Kind};
    use chrono::{TimeZone, Utc};

    fn m(id: &str, db: &str, kind: Kind, t: i64) -> Manifest {
        on("s", id, db, kind, t)
    }

    fn on(server: &str, id: &str, db: &str, kind: Kind, t: i64) -> Manifest {
        // Imported in reverse: the tool's clock says nothing about the backups.
        crate::manifest::test_manifest(
            id,
            server,
            db,
            kind,
            Utc.timestamp_opt(1_700_000_000 + t, 0).unwrap(),
            Utc.timestamp_opt(1_800_000_000 - t, 0).unwrap(),
            Chain::default(),
        )
    }

    fn ids(all: &[Manifest], plan: Vec<Decision>) -> Vec<String> {
        plan.into_iter()
            .filter(|d| !d.keep)
            .map(|d| all[d.index].id.to_string())
            .collect()
    }

    fn last(n: usize) -> Policy {
        Policy {
            keep_last: Some(n),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_whole_chains() {
        let all = vec![
            m("f1", "a", Kind::Full, 1),
            m("l1", "a", Kind::Log, 2),
            m("f2", "a", Kind::Full, 3),
            m("d2", "a", Kind::Diff, 4),
            m("f3", "a", Kind::Full, 5),
            m("l3", "a", Kind::Log, 6),
            m("g1", "b", Kind::Full, 1),
        ];
        let none = crate::config::Retention::default();
        let sel = |n, db| ids(&all, select(&all, Some(&last(n)), &none, db, None));
        assert_eq!(sel(2, None), vec!["f1", "l1"]);
        assert_eq!(sel(1, None), vec!["f1", "l1", "f2", "d2"]);
        assert!(sel(3, None).is_empty());
        assert!(sel(1, Some("b")).is_empty());
    }

    #[test]
    fn another_servers_database_of_the_same_name_is_its_own_chain() {
        let mut all = vec![
            on("s1", "s1_f1", "a", Kind::Full, 1),
            on("s2", "s2_f1", "a", Kind::Full, 2),
            on("s1", "s1_f2", "a", Kind::Full, 3),
        ];
        crate::chain::sort(&mut all);
        let none = crate::config::Retention::default();
        // s2's only full is kept; s1 keeps its newer one (by backup time, not import).
        assert_eq!(
            ids(&all, select(&all, Some(&last(1)), &none, None, None)),
            vec!["s1_f1"]
        );
        // The config's per-database policies: SERVER/NAME beats NAME beats the default.
        let cfg = crate::config::Retention {
            default: last(5),
            databases: vec![(Some("S1".into()), "A".into(), last(1))],
        };
        assert_eq!(
            ids(&all, select(&all, None, &cfg, None, None)),
            vec!["s1_f1"]
        );
        assert!(ids(&all, select(&all, None, &cfg, None, Some("s2"))).is_empty());
    }
}
