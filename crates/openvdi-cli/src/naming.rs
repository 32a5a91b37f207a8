//! DBA-friendly object names, in the style of the widely used SQL Server
//! maintenance scripts: `SERVER/DATABASE/FULL/SERVER_DATABASE_FULL_YYYYMMDD_HHMMSS/`.

use chrono::{DateTime, Utc};

use crate::manifest::Kind;

/// Makes a name safe as one path segment: `\` (SERVER\INSTANCE) becomes `$`, as the
/// maintenance scripts do; anything but letters, digits, `_ - . $` becomes `_`.
pub fn segment(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| match c {
            '\\' => '$',
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$') => c,
            _ => '_',
        })
        .collect();
    match out.trim_start_matches('.') {
        "" => "_".to_string(),
        t => t.to_string(),
    }
}

/// The backup id (also its folder name).
pub fn backup_id(server: &str, database: &str, kind: Kind, at: DateTime<Utc>) -> String {
    format!(
        "{}_{}_{}_{}",
        segment(server),
        segment(database),
        kind.word(),
        at.format("%Y%m%d_%H%M%S")
    )
}

/// The folder (key prefix) holding a backup's objects.
pub fn backup_dir(server: &str, database: &str, kind: Kind, id: &str) -> String {
    format!(
        "{}/{}/{}/{}",
        segment(server),
        segment(database),
        kind.word(),
        id
    )
}

/// A stripe's object name inside the backup folder.
pub fn stripe_name(index: u32, suffix: &str) -> String {
    format!("stripe{index}.bak{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names() {
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 1, 2, 3).unwrap();
        let id = backup_id("SQL1\\PROD", "Sales DB", Kind::Full, at);
        assert_eq!(id, "SQL1$PROD_Sales_DB_FULL_20261125_010203");
        assert_eq!(
            backup_dir("SQL1\\PROD", "Sales DB", Kind::Full, &id),
            "SQL1$PROD/Sales_DB/FULL/SQL1$PROD_Sales_DB_FULL_20261125_010203"
        );
        assert_eq!(segment("../x"), "_x");
        assert_eq!(stripe_name(2, ".zst"), "stripe2.bak.zst");
    }
}
