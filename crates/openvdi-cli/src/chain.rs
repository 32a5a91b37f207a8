//! Backup chains from the backups' own facts, not from the order they reached the
//! repository.
//!
//! A backup belongs to one server's database: two servers' databases of one name
//! never chain, prune or resolve `latest` together. Within one, a differential's
//! parent is the full whose CheckpointLSN is its DatabaseBackupLSN (or whose
//! BackupSetGUID is its DifferentialBaseGUID); a log's parent is the log whose
//! LastLSN its FirstLSN continues, else (the first log after a full or diff) the
//! newest full or diff whose LastLSN lies inside the log's range. Only when a
//! backup carries no LSNs (an engine that reported none, a manifest of an older
//! openvdi) does time decide: the newest eligible backup taken before it.
//!
//! Parents are computed over the whole repository each time it is read, so a
//! backup imported late, or a full imported after its diffs, links where it
//! belongs; the parent stored in a manifest is only what was known when it was
//! written.

use chrono::{DateTime, Utc};

use crate::manifest::{Kind, Manifest};

/// An LSN as a number (SQL Server prints LSNs as decimal numerals).
pub fn lsn(s: &Option<String>) -> Option<u128> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
}

/// When the backup was taken: the backup's own start time when it recorded one,
/// else when the tool started storing it.
pub fn taken(m: &Manifest) -> DateTime<Utc> {
    m.backup_started.unwrap_or(m.timings.started)
}

/// The same server's same database (names compare as SQL Server's default
/// case-insensitive collation does).
pub fn same_database(a: &Manifest, b: &Manifest) -> bool {
    a.server.eq_ignore_ascii_case(&b.server) && a.database.eq_ignore_ascii_case(&b.database)
}

/// Orders backups by when they were taken; within one second (backup times are
/// recorded in seconds) by LastLSN (none first), then by id: a total order, stable
/// whatever order they were read in.
pub fn sort(all: &mut [Manifest]) {
    all.sort_by_cached_key(|m| (taken(m), lsn(&m.chain.last_lsn).unwrap_or(0), m.id.clone()));
}

/// How a parent was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// By LSN or GUID: the backups say so themselves.
    Lsn,
    /// By time, because a backup carries no LSNs.
    Time,
}

/// The parent of `m` among `all` (which may contain `m` itself), and how it was found.
pub fn parent<'a>(all: &'a [Manifest], m: &Manifest) -> Option<(&'a Manifest, Link)> {
    let peers = || {
        all.iter()
            .filter(move |c| c.id != m.id && same_database(c, m))
    };
    let newest = |it: &mut dyn Iterator<Item = &'a Manifest>| {
        it.max_by(|a, b| taken(a).cmp(&taken(b)).then_with(|| a.id.cmp(&b.id)))
    };
    let before = |c: &Manifest| (taken(c), &c.id) < (taken(m), &m.id);
    match m.kind {
        Kind::Full => None,
        Kind::Diff => {
            let guid = m.chain.differential_base_guid.as_deref();
            let base = lsn(&m.chain.database_backup_lsn);
            if guid.is_some() || base.is_some() {
                let by_facts = newest(&mut peers().filter(|c| {
                    c.kind == Kind::Full
                        && ((guid.is_some() && c.chain.backup_set_guid.as_deref() == guid)
                            || (base.is_some() && lsn(&c.chain.checkpoint_lsn) == base))
                }));
                return by_facts.map(|c| (c, Link::Lsn));
            }
            newest(&mut peers().filter(|c| c.kind == Kind::Full && before(c)))
                .map(|c| (c, Link::Time))
        }
        Kind::Log => {
            let (first, last) = (lsn(&m.chain.first_lsn), lsn(&m.chain.last_lsn));
            if let Some(first) = first {
                if let Some(prev) = newest(
                    &mut peers()
                        .filter(|c| c.kind == Kind::Log && lsn(&c.chain.last_lsn) == Some(first)),
                ) {
                    return Some((prev, Link::Lsn));
                }
                let last = last.unwrap_or(u128::MAX);
                let base = peers()
                    .filter(|c| c.kind != Kind::Log)
                    .filter_map(|c| lsn(&c.chain.last_lsn).map(|l| (l, c)))
                    .filter(|(l, _)| (first..=last).contains(l))
                    .max_by(|(a, x), (b, y)| a.cmp(b).then_with(|| taken(x).cmp(&taken(y))));
                return base.map(|(_, c)| (c, Link::Lsn));
            }
            newest(&mut peers().filter(|c| c.kind != Kind::Diff && before(c)))
                .map(|c| (c, Link::Time))
        }
    }
}

/// Sets every backup's `chain.parent` from the whole set (see the module docs).
pub fn link(all: &mut [Manifest]) {
    let parents: Vec<Option<String>> = all
        .iter()
        .map(|m| parent(all, m).map(|(p, _)| p.id.to_string()))
        .collect();
    for (m, p) in all.iter_mut().zip(parents) {
        m.chain.parent = p;
    }
}

/// What `list` warns about a backup (after [`link`]): a differential or log with no
/// parent. `orphan`: nothing it could follow exists (no full of that database
/// before it); `gap`: a log whose predecessor is missing (its chain has a hole, so
/// it cannot be restored from any full before it).
pub fn flag(all: &[Manifest], m: &Manifest) -> Option<&'static str> {
    if m.kind == Kind::Full || m.chain.parent.is_some() {
        return None;
    }
    let full_before = all
        .iter()
        .any(|c| c.kind == Kind::Full && same_database(c, m) && taken(c) <= taken(m));
    Some(if m.kind == Kind::Log && full_before {
        "gap"
    } else {
        "orphan"
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::Chain;

    pub fn backup(id: &str, server: &str, kind: Kind, at: i64, lsns: [u128; 4]) -> Manifest {
        let s = |v: u128| (v != 0).then(|| v.to_string());
        let chain = Chain {
            first_lsn: s(lsns[0]),
            last_lsn: s(lsns[1]),
            checkpoint_lsn: s(lsns[2]),
            database_backup_lsn: s(lsns[3]),
            ..Chain::default()
        };
        // Imported in an order of its own: the tool's time is not the backup's.
        crate::manifest::test_manifest(
            id,
            server,
            "db",
            kind,
            DateTime::from_timestamp(at, 0).unwrap(),
            DateTime::from_timestamp(2_000_000_000 - at, 0).unwrap(),
            chain,
        )
    }

    #[test]
    fn parents_follow_lsns_per_server_whatever_the_import_order() {
        // Server A: full 100..110 (ckpt 105), log 90..120, diff (base 105) 130..140,
        // log 120..150, full 200..210 (ckpt 205), log 150..230.
        // Server B: a database of the same name whose LSNs would fit A's chain.
        let mut all = vec![
            backup("a_log3", "A", Kind::Log, 60, [150, 230, 0, 0]),
            backup("a_diff", "A", Kind::Diff, 30, [130, 140, 135, 105]),
            backup("b_full", "B", Kind::Full, 15, [100, 120, 120, 0]),
            backup("a_log2", "A", Kind::Log, 40, [120, 150, 0, 0]),
            backup("a_full2", "A", Kind::Full, 50, [200, 210, 205, 105]),
            backup("a_log1", "A", Kind::Log, 20, [90, 120, 0, 0]),
            backup("a_full1", "A", Kind::Full, 10, [100, 110, 105, 0]),
            backup("b_log", "B", Kind::Log, 25, [120, 160, 0, 0]),
        ];
        sort(&mut all);
        link(&mut all);
        let p = |id: &str| {
            all.iter()
                .find(|m| m.id == id)
                .unwrap()
                .chain
                .parent
                .clone()
        };
        assert_eq!(p("a_full1"), None);
        assert_eq!(p("a_log1").as_deref(), Some("a_full1"));
        assert_eq!(p("a_diff").as_deref(), Some("a_full1"));
        assert_eq!(p("a_log2").as_deref(), Some("a_log1"));
        assert_eq!(p("a_log3").as_deref(), Some("a_log2"));
        assert_eq!(p("b_log").as_deref(), Some("b_full"));
        let order: Vec<&str> = all.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            order,
            ["a_full1", "b_full", "a_log1", "b_log", "a_diff", "a_log2", "a_full2", "a_log3"]
        );
        assert!(all.iter().all(|m| flag(&all, m).is_none()));
    }

    #[test]
    fn a_missing_link_is_flagged_and_time_decides_only_without_lsns() {
        let mut all = vec![
            backup("full", "A", Kind::Full, 10, [100, 110, 105, 0]),
            // log 120..150 with no log 110..120 in the repository: a gap.
            backup("log", "A", Kind::Log, 30, [120, 150, 0, 0]),
            // a diff of a full that is not there: an orphan.
            backup("diff", "A", Kind::Diff, 40, [160, 170, 165, 99]),
            // no LSNs at all: the newest eligible by time.
            backup("bare", "A", Kind::Log, 50, [0, 0, 0, 0]),
        ];
        link(&mut all);
        let get = |id: &str| all.iter().find(|m| m.id == id).unwrap();
        assert_eq!(flag(&all, get("log")), Some("gap"));
        assert_eq!(get("diff").chain.parent, None);
        assert_eq!(flag(&all, get("diff")), Some("orphan"));
        assert_eq!(get("bare").chain.parent.as_deref(), Some("log"));
    }
}
