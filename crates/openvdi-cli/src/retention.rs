//! Retention policies (`prune --keep-*`) and what a backup is needed for
//! (`forget`).
//!
//! Policies choose *full* backups, per server and database, as restic's
//! `forget --keep-*` chooses snapshots: walking the fulls newest first,
//! `keep_last N` keeps the N newest; `keep_daily D` keeps the newest full of each of
//! the D newest calendar days (UTC) that have one, `keep_weekly` of ISO weeks,
//! `keep_monthly` of months; `keep_within DURATION` keeps every full taken within
//! DURATION of the group's newest backup, and the full before the oldest of them
//! (the full the window's first diffs and logs restore from, so every point of the
//! window stays restorable). A full is kept if any rule keeps it.
//!
//! Then chains: a differential or log belongs to the newest full taken before it
//! (its *segment*) and is kept with that full. Closure adds what a kept backup
//! needs: a kept differential's base full, a kept log's predecessors back to a log
//! that covers a kept full or differential (no hole back to a kept full). Backups
//! taken before a group's first full are kept as long as no full of the group is
//! deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::Datelike;

use crate::chain::{self, lsn, taken};
use crate::manifest::{Kind, Manifest};

/// One retention policy (every rule optional; at least one must be set to prune).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_within: Option<Duration>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// `keep-last 2, keep-daily 7`, as the flags are spelled.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        let mut n = |name: &str, x: Option<usize>| {
            if let Some(x) = x {
                v.push(format!("keep-{name} {x}"));
            }
        };
        n("last", self.keep_last);
        n("daily", self.keep_daily);
        n("weekly", self.keep_weekly);
        n("monthly", self.keep_monthly);
        if let Some(d) = self.keep_within {
            v.push(format!("keep-within {}", duration_text(d)));
        }
        v.join(", ")
    }

    /// Every count must be at least 1 (0 would say nothing a missing rule does not).
    pub fn validate(&self) -> Result<(), String> {
        for (name, x) in [
            ("--keep-last", self.keep_last),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
        ] {
            if x == Some(0) {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.keep_within == Some(Duration::ZERO) {
            return Err("--keep-within must be longer than 0s".into());
        }
        Ok(())
    }
}

/// `7d`, `36h`, `90s`: the largest unit that divides the duration.
pub fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    for (u, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s > 0 && s.is_multiple_of(n) {
            return format!("{}{u}", s / n);
        }
    }
    format!("{s}s")
}

/// What the plan says of one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Index into the slice given to [`plan`].
    pub index: usize,
    pub keep: bool,
    /// Why it is kept (empty when it goes).
    pub reasons: Vec<String>,
}

fn group_key(m: &Manifest) -> (String, String) {
    (
        m.server.to_ascii_lowercase(),
        m.database.to_ascii_lowercase(),
    )
}

/// The plan for every backup of `all` (sorted by [`chain::sort`], in any case the
/// whole repository, so chains are judged whole) that `in_scope` selects, in the
/// order of `all`. `policy_of` gives each group's policy (called with the group's
/// first backup); an empty policy keeps the whole group.
pub fn plan(
    all: &[Manifest],
    in_scope: impl Fn(&Manifest) -> bool,
    policy_of: impl Fn(&Manifest) -> Policy,
) -> Vec<Decision> {
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, m) in all.iter().enumerate() {
        if in_scope(m) {
            groups.entry(group_key(m)).or_default().push(i);
        }
    }
    let mut reasons: HashMap<usize, Vec<String>> = HashMap::new();
    let mut scope = Vec::new();
    for idx in groups.values() {
        scope.extend(idx.iter().copied());
        let policy = policy_of(&all[idx[0]]);
        if policy.is_empty() {
            for &i in idx {
                reasons
                    .entry(i)
                    .or_default()
                    .push("no retention policy for this database".into());
            }
            continue;
        }
        plan_group(all, idx, &policy, &mut reasons);
    }
    scope.sort_unstable();
    scope
        .into_iter()
        .map(|i| {
            let r = reasons.remove(&i).unwrap_or_default();
            Decision {
                index: i,
                keep: !r.is_empty(),
                reasons: r,
            }
        })
        .collect()
}

/// One server's database: `idx` in backup-time order.
fn plan_group(
    all: &[Manifest],
    idx: &[usize],
    p: &Policy,
    reasons: &mut HashMap<usize, Vec<String>>,
) {
    let keep = |reasons: &mut HashMap<usize, Vec<String>>, i: usize, why: String| {
        let r = reasons.entry(i).or_default();
        if !r.contains(&why) {
            r.push(why);
        }
    };
    // Fulls, newest first.
    let fulls: Vec<usize> = idx
        .iter()
        .rev()
        .copied()
        .filter(|&i| all[i].kind == Kind::Full)
        .collect();
    if let Some(n) = p.keep_last {
        for (k, &i) in fulls.iter().take(n).enumerate() {
            keep(reasons, i, format!("keep-last {}/{n}", k + 1));
        }
    }
    let mut bucketed = |n: Option<usize>, rule: &str, bucket: &dyn Fn(&Manifest) -> String| {
        let Some(mut n) = n else { return };
        let mut last: Option<String> = None;
        for &i in &fulls {
            if n == 0 {
                break;
            }
            let b = bucket(&all[i]);
            if last.as_ref() != Some(&b) {
                keep(reasons, i, format!("keep-{rule} {b}"));
                last = Some(b);
                n -= 1;
            }
        }
    };
    bucketed(p.keep_daily, "daily", &|m| {
        taken(m).date_naive().format("%Y-%m-%d").to_string()
    });
    bucketed(p.keep_weekly, "weekly", &|m| {
        let w = taken(m).iso_week();
        format!("{}-W{:02}", w.year(), w.week())
    });
    bucketed(p.keep_monthly, "monthly", &|m| {
        taken(m).format("%Y-%m").to_string()
    });
    if let Some(d) = p.keep_within {
        let newest = idx.iter().map(|&i| taken(&all[i])).max();
        if let (Some(newest), Ok(d)) = (newest, chrono::Duration::from_std(d)) {
            let from = newest - d;
            let txt = duration_text(d.to_std().unwrap_or_default());
            let mut before = None;
            for &i in &fulls {
                if taken(&all[i]) >= from {
                    keep(reasons, i, format!("keep-within {txt}"));
                } else {
                    before = Some(i);
                    break;
                }
            }
            if let Some(i) = before {
                keep(
                    reasons,
                    i,
                    format!("keep-within {txt}: the full the window restores from"),
                );
            }
        }
    }
    // Segments: each diff and log goes with the newest full before it.
    let any_full_deleted = fulls.iter().any(|i| !reasons.contains_key(i));
    let mut anchor: Option<usize> = None;
    for &i in idx {
        let m = &all[i];
        if m.kind == Kind::Full {
            anchor = Some(i);
            continue;
        }
        match anchor {
            Some(a) if reasons.contains_key(&a) && !is_closure_only(reasons, a) => {
                keep(reasons, i, format!("chain of {}", all[a].id));
            }
            None if !any_full_deleted => keep(
                reasons,
                i,
                "before the first full; kept while every full is".into(),
            ),
            _ => {}
        }
    }
    // Closure, to a fixed point: what kept backups need.
    loop {
        let mut added = Vec::new();
        for &i in idx {
            if !reasons.contains_key(&i) {
                continue;
            }
            let m = &all[i];
            match m.kind {
                Kind::Full => {}
                Kind::Diff => {
                    if let Some((p, _)) = chain::parent(all, m) {
                        let pi = index_of(all, p);
                        if !reasons.contains_key(&pi) {
                            added.push((pi, format!("base of diff {}", m.id)));
                        }
                    }
                }
                Kind::Log => {
                    let mut cur = m;
                    while !covers_kept_base(all, idx, reasons, cur) {
                        let Some((p, _)) = chain::parent(all, cur) else {
                            break;
                        };
                        let pi = index_of(all, p);
                        if !reasons.contains_key(&pi) {
                            added.push((pi, format!("log chain of {}", m.id)));
                        }
                        if p.kind != Kind::Log {
                            break;
                        }
                        cur = p;
                    }
                }
            }
        }
        if added.is_empty() {
            break;
        }
        for (i, why) in added {
            keep(reasons, i, why);
        }
    }
}

/// Kept only because something needs it (its own segment is not kept with it).
fn is_closure_only(reasons: &HashMap<usize, Vec<String>>, i: usize) -> bool {
    reasons.get(&i).is_some_and(|r| {
        r.iter()
            .all(|w| w.starts_with("base of") || w.starts_with("log chain of"))
    })
}

fn index_of(all: &[Manifest], m: &Manifest) -> usize {
    all.iter()
        .position(|c| c.id == m.id)
        .expect("a parent is one of the backups")
}

/// A log whose LSN range holds the LastLSN of a kept full or differential of its
/// group: restoring that backup then this log needs nothing before it.
fn covers_kept_base(
    all: &[Manifest],
    idx: &[usize],
    reasons: &HashMap<usize, Vec<String>>,
    log: &Manifest,
) -> bool {
    let (Some(first), Some(last)) = (lsn(&log.chain.first_lsn), lsn(&log.chain.last_lsn)) else {
        return false;
    };
    idx.iter().any(|&i| {
        all[i].kind != Kind::Log
            && reasons.contains_key(&i)
            && lsn(&all[i].chain.last_lsn).is_some_and(|l| (first..=last).contains(&l))
    })
}

/// The ids of the backups of `set` that can be restored from what `set` holds: a
/// full; a differential whose base full is there; a log that follows a restorable
/// log or covers a restorable full's or differential's LastLSN (without LSNs: whose
/// parent by time is restorable).
pub fn restorable(set: &[Manifest]) -> HashSet<String> {
    let mut ok: HashSet<String> = HashSet::new();
    loop {
        let before = ok.len();
        for m in set {
            if ok.contains(m.id.as_str()) {
                continue;
            }
            let yes = match m.kind {
                Kind::Full => true,
                Kind::Diff => chain::parent(set, m).is_some_and(|(p, _)| p.kind == Kind::Full),
                Kind::Log => match (lsn(&m.chain.first_lsn), lsn(&m.chain.last_lsn)) {
                    (Some(first), last) => {
                        let last = last.unwrap_or(u128::MAX);
                        set.iter().any(|c| {
                            c.id != m.id
                                && chain::same_database(c, m)
                                && ok.contains(c.id.as_str())
                                && match c.kind {
                                    Kind::Log => lsn(&c.chain.last_lsn) == Some(first),
                                    _ => lsn(&c.chain.last_lsn)
                                        .is_some_and(|l| (first..=last).contains(&l)),
                                }
                        })
                    }
                    (None, _) => {
                        chain::parent(set, m).is_some_and(|(p, _)| ok.contains(p.id.as_str()))
                    }
                },
            };
            if yes {
                ok.insert(m.id.to_string());
            }
        }
        if ok.len() == before {
            return ok;
        }
    }
}

/// The backups that can no longer be restored once `id` is gone (of those that
/// could be before), in backup-time order.
pub fn dependents<'a>(all: &'a [Manifest], id: &str) -> Vec<&'a Manifest> {
    let Some(m) = all.iter().find(|m| m.id == id) else {
        return Vec::new();
    };
    let group: Vec<Manifest> = all
        .iter()
        .filter(|c| chain::same_database(c, m))
        .cloned()
        .collect();
    let with = restorable(&group);
    let without: Vec<Manifest> = group.iter().filter(|c| c.id != id).cloned().collect();
    let after = restorable(&without);
    all.iter()
        .filter(|c| {
            c.id != id
                && chain::same_database(c, m)
                && with.contains(c.id.as_str())
                && !after.contains(c.id.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tests::backup;
    use chrono::{DateTime, Utc};

    const DAY: i64 = 86_400;
    /// 2024-01-01T00:00:00Z, a Monday.
    const T0: i64 = 1_704_067_200;

    /// 90 days: a full at 01:00 (none on days ≡ 3 mod 5, two — 01:00 and 13:00 —
    /// on days ≡ 0 mod 7), diffs at 07:00 and 19:00 on the newest full, a log every
    /// two hours in one continuous LSN chain. Two servers' databases of one name.
    fn history(server: &str) -> Vec<Manifest> {
        let mut out = Vec::new();
        let mut lsn: u128 = 1000;
        let mut last_log: u128 = 1000;
        let mut base_ckpt: Option<u128> = None;
        for day in 0..90i64 {
            for hour in 0..24i64 {
                let at = T0 + day * DAY + hour * 3600;
                let t = DateTime::<Utc>::from_timestamp(at, 0).unwrap();
                let id = |k: &str| format!("{server}_{k}_{}", t.format("%Y%m%d_%H%M"));
                let full = (hour == 1 && day % 5 != 3) || (hour == 13 && day % 7 == 0);
                if full {
                    let m = backup(
                        &id("FULL"),
                        server,
                        Kind::Full,
                        at,
                        [lsn, lsn + 5, lsn + 2, 0],
                    );
                    base_ckpt = Some(lsn + 2);
                    lsn += 10;
                    out.push(m);
                }
                if let Some(b) = base_ckpt.filter(|_| hour == 7 || hour == 19) {
                    out.push(backup(
                        &id("DIFF"),
                        server,
                        Kind::Diff,
                        at,
                        [lsn, lsn + 5, lsn + 2, b],
                    ));
                    lsn += 10;
                }
                if hour % 2 == 0 && base_ckpt.is_some() {
                    lsn += 3;
                    out.push(backup(
                        &id("LOG"),
                        server,
                        Kind::Log,
                        at,
                        [last_log, lsn, 0, 0],
                    ));
                    last_log = lsn;
                }
            }
        }
        out
    }

    /// The expected kept set, computed another way: buckets first, then for each
    /// chosen bucket its newest full; then every diff and log whose newest full
    /// before it was chosen.
    fn expected(all: &[Manifest], server: &str, p: &Policy) -> HashSet<String> {
        let mine: Vec<&Manifest> = all.iter().filter(|m| m.server == server).collect();
        let fulls: Vec<&Manifest> = mine
            .iter()
            .copied()
            .filter(|m| m.kind == Kind::Full)
            .collect();
        let mut chosen: HashSet<String> = HashSet::new();
        let mut by_bucket = |n: Option<usize>, f: &dyn Fn(&Manifest) -> String| {
            let Some(n) = n else { return };
            let mut buckets: BTreeMap<String, &Manifest> = BTreeMap::new();
            for m in &fulls {
                let e = buckets.entry(f(m)).or_insert(m);
                if taken(m) > taken(e) {
                    *e = m;
                }
            }
            for (_, m) in buckets.iter().rev().take(n) {
                chosen.insert(m.id.to_string());
            }
        };
        by_bucket(p.keep_daily, &|m| taken(m).format("%F").to_string());
        by_bucket(p.keep_weekly, &|m| {
            let w = taken(m).iso_week();
            format!("{:04}{:02}", w.year(), w.week())
        });
        by_bucket(p.keep_monthly, &|m| taken(m).format("%Y%m").to_string());
        if let Some(n) = p.keep_last {
            let mut f = fulls.clone();
            f.sort_by_key(|m| std::cmp::Reverse(taken(m)));
            chosen.extend(f.iter().take(n).map(|m| m.id.to_string()));
        }
        if let Some(d) = p.keep_within {
            let newest = mine.iter().map(|m| taken(m)).max().unwrap();
            let from = newest - chrono::Duration::from_std(d).unwrap();
            chosen.extend(
                fulls
                    .iter()
                    .filter(|m| taken(m) >= from)
                    .map(|m| m.id.to_string()),
            );
            if let Some(m) = fulls
                .iter()
                .filter(|m| taken(m) < from)
                .max_by_key(|m| taken(m))
            {
                chosen.insert(m.id.to_string());
            }
        }
        let mut kept = chosen.clone();
        for m in &mine {
            if m.kind != Kind::Full {
                let base = fulls
                    .iter()
                    .filter(|f| taken(f) <= taken(m))
                    .max_by_key(|f| taken(f));
                if base.is_some_and(|b| chosen.contains(b.id.as_str())) {
                    kept.insert(m.id.to_string());
                }
            }
        }
        kept
    }

    fn check(all: &[Manifest], p: &Policy) {
        let plan = plan(all, |_| true, |_| p.clone());
        assert_eq!(plan.len(), all.len());
        let kept: Vec<Manifest> = plan
            .iter()
            .filter(|d| d.keep)
            .map(|d| all[d.index].clone())
            .collect();
        for server in ["A", "B"] {
            let got: HashSet<String> = kept
                .iter()
                .filter(|m| m.server == server)
                .map(|m| m.id.to_string())
                .collect();
            let want = expected(all, server, p);
            let mut missing: Vec<_> = want.difference(&got).collect();
            let mut extra: Vec<_> = got.difference(&want).collect();
            missing.sort();
            extra.sort();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{}: missing {missing:?}, extra {extra:?}",
                p.describe()
            );
        }
        // Nothing kept loses its chain: whatever was restorable still is.
        let before = restorable(all);
        let after = restorable(&kept);
        for m in &kept {
            assert!(
                !before.contains(m.id.as_str()) || after.contains(m.id.as_str()),
                "{}: {} kept but no longer restorable",
                p.describe(),
                m.id
            );
        }
        // Every kept backup says why.
        assert!(plan.iter().all(|d| d.keep != d.reasons.is_empty()));
    }

    #[test]
    fn policies_over_90_days_keep_exactly_the_expected_set_and_every_chain() {
        let mut all = history("A");
        all.extend(
            history("B")
                .into_iter()
                .filter(|m| chain::taken(m).timestamp() < T0 + 60 * DAY),
        );
        chain::sort(&mut all);
        chain::link(&mut all);
        assert!(all.len() > 2000);
        let d = |days: u64| Some(Duration::from_secs(days * 86_400));
        for p in [
            Policy {
                keep_last: Some(1),
                ..Default::default()
            },
            Policy {
                keep_last: Some(3),
                ..Default::default()
            },
            Policy {
                keep_daily: Some(7),
                ..Default::default()
            },
            Policy {
                keep_weekly: Some(4),
                ..Default::default()
            },
            Policy {
                keep_monthly: Some(6),
                ..Default::default()
            },
            Policy {
                keep_within: d(10),
                ..Default::default()
            },
            Policy {
                keep_daily: Some(7),
                keep_weekly: Some(4),
                keep_monthly: Some(3),
                ..Default::default()
            },
            Policy {
                keep_last: Some(2),
                keep_weekly: Some(8),
                keep_within: Some(Duration::from_secs(36 * 3600)),
                ..Default::default()
            },
        ] {
            check(&all, &p);
        }
    }

    #[test]
    fn closure_keeps_what_kept_backups_need() {
        // Full f1, log l1 (covers f1), full f2 (kept), diff d2 whose base is f1
        // (a copy-only f2 would do that), log l2 continuing l1.
        let mut all = vec![
            backup("f1", "A", Kind::Full, 10, [100, 110, 105, 0]),
            backup("l1", "A", Kind::Log, 20, [90, 120, 0, 0]),
            backup("f2", "A", Kind::Full, 30, [130, 140, 135, 0]),
            backup("d2", "A", Kind::Diff, 40, [150, 160, 155, 105]),
            backup("l2", "A", Kind::Log, 50, [120, 170, 0, 0]),
        ];
        chain::link(&mut all);
        let p = Policy {
            keep_last: Some(1),
            ..Default::default()
        };
        let plan = plan(&all, |_| true, |_| p.clone());
        let r = |id: &str| plan.iter().find(|d| all[d.index].id == id).unwrap().clone();
        assert_eq!(r("f2").reasons, ["keep-last 1/1"]);
        assert_eq!(r("d2").reasons, ["chain of f2"]);
        assert_eq!(r("f1").reasons, ["base of diff d2"]);
        // l2 covers f2's LastLSN 140: it needs no l1.
        assert_eq!(r("l2").reasons, ["chain of f2"]);
        assert!(!r("l1").keep);
        // forget: f1 has dependents (l1 follows it, d2 is based on it); l2 is the
        // tail; f2 has none (l2 follows l1, which follows f1).
        let ids = |v: Vec<&Manifest>| v.iter().map(|m| m.id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(dependents(&all, "f1")), ["l1", "d2"]);
        assert!(dependents(&all, "l2").is_empty());
        assert!(dependents(&all, "f2").is_empty());
        assert!(dependents(&all, "l1").is_empty());
    }
}
