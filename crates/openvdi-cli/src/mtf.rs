//! The MTF the tool reads itself — media families of `.bak` files and the streaming
//! block walk of `verify` — comes from the `openvdi-mtf` crate; the backup set's
//! metadata at the head of a stream from the engine's reader. Headers and file lists
//! (HEADERONLY / FILELISTONLY) come from the engine.

pub use openvdi_mtf::{order_stripes, Walker};

use crate::manifest::{Chain, Kind};

/// What the head of a stream says about its backup.
#[derive(Debug, Clone, Default)]
pub struct HeadFacts {
    pub chain: Chain,
    /// BackupStartDate / BackupFinishDate, when the stream records them.
    pub started: Option<chrono::DateTime<chrono::Utc>>,
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
}

/// The chain facts and times a backup stream records about itself, from the first bytes of
/// its first stripe: what the manifest stores before the tool answers the engine's
/// VDC_Complete, so a backup is chained by LSN even if the tool dies before the
/// engine's messages arrive, and with engines whose messages carry no LSNs.
///
/// An error (with the reason) when the head cannot be read or describes another
/// database or another type of backup than was asked for: the facts of a stream
/// that disagrees with its own statement are not trusted.
pub fn facts_of_head(head: &[u8], database: &str, kind: Kind) -> Result<HeadFacts, String> {
    let m = openvdi_engine::stream::read_head(&mut &head[..]).map_err(|e| e.to_string())?;
    if !m.database_name.eq_ignore_ascii_case(database) {
        return Err(format!(
            "the stream is a backup of {:?}, not of {database:?}",
            m.database_name
        ));
    }
    let stream_kind = match m.kind {
        openvdi_engine::BackupKind::Full => Kind::Full,
        openvdi_engine::BackupKind::Differential => Kind::Diff,
        openvdi_engine::BackupKind::Log => Kind::Log,
    };
    if stream_kind != kind {
        return Err(format!(
            "the stream is a {} backup, not a {} one",
            stream_kind.word(),
            kind.word()
        ));
    }
    let some = |s: String| (!s.is_empty()).then_some(s);
    let time = |t: u64| {
        (t > 0)
            .then(|| chrono::DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            .flatten()
    };
    let (started, finished) = (time(m.start_unix), time(m.finish_unix));
    let chain = Chain {
        first_lsn: Some(m.first_lsn.to_string()),
        last_lsn: Some(m.last_lsn.to_string()),
        checkpoint_lsn: Some(m.checkpoint_lsn.to_string()),
        database_backup_lsn: Some(m.database_backup_lsn.to_string()),
        differential_base_lsn: None,
        differential_base_guid: m.differential_base_guid.and_then(some),
        backup_set_guid: some(m.backup_set_guid),
        parent: None,
    };
    Ok(HeadFacts {
        chain,
        started,
        finished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/mssql")
            .join(name);
        std::fs::read(p).unwrap()
    }

    #[test]
    fn a_real_log_backups_head_gives_its_lsns_and_a_damaged_head_an_error() {
        let b = fixture("sql2016-restoretimeclean2-log1.trn");
        let head = &b[..b.len().min(super::super::pipeline::backup::HEAD_MAX)];
        let m = openvdi_engine::stream::read_head(&mut &head[..]).unwrap();
        let c = facts_of_head(head, &m.database_name.to_uppercase(), Kind::Log)
            .unwrap()
            .chain;
        assert_eq!(c.first_lsn, Some(m.first_lsn.to_string()));
        assert_eq!(c.last_lsn, Some(m.last_lsn.to_string()));
        assert_ne!(c.first_lsn, c.last_lsn);
        // Another database or type: the facts are not taken.
        assert!(facts_of_head(head, "other", Kind::Log).is_err());
        assert!(facts_of_head(head, &m.database_name, Kind::Full).is_err());
        // Cut or scribbled heads: an error, never a panic.
        for cut in (0..8192).step_by(97) {
            let _ = facts_of_head(&head[..cut], &m.database_name, Kind::Log);
        }
        let mut bad = head[..16384].to_vec();
        for i in (0..bad.len()).step_by(61) {
            bad[i] ^= 0x5a;
            let _ = facts_of_head(&bad, &m.database_name, Kind::Log);
        }
    }
}
