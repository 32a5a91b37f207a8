//! Errors and messages, shaped like SQL Server's.
//!
//! Policy: everything a T-SQL statement can fail with is a [`SqlError`]: one or more
//! SQL Server messages (number, severity, state, line, text), the way `sqlcmd` shows
//! them (`Msg 3013, Level 16, State 1, Line 1`). A failing BACKUP or RESTORE carries
//! the specific reason first and the generic "… is terminating abnormally." (3013)
//! last, as SQL Server does. Failures of the database layer outside T-SQL (create,
//! modify) are [`EngineError`]. Message numbers and texts follow SQL Server's
//! `sys.messages`; where the engine has a reason SQL Server would not (a corrupt
//! catalog file), it reuses the closest message and says so in the text.

use std::fmt;

/// An error's text with control characters escaped (`\u{1b}`): error texts quote
/// what a backup stream holds (block types, names), and a damaged or hostile stream
/// must not put terminal escapes or forged lines into a client's output.
fn printable(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One SQL Server message: informational (severity ≤ 10) or an error.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// The message number (`sys.messages.message_id`), e.g. 3014 or 102.
    pub number: u32,
    /// Severity: 0–10 informational, 11–16 user errors, higher is worse.
    pub severity: u8,
    /// State.
    pub state: u8,
    /// Line within the batch (1-based) of the statement that raised it.
    pub line: u32,
    /// The text.
    pub text: String,
}

impl Message {
    /// An informational message (severity 0, printed by sqlcmd without a header).
    pub fn info(number: u32, text: impl Into<String>) -> Message {
        Message {
            number,
            severity: 0,
            state: 1,
            line: 1,
            text: text.into(),
        }
    }

    /// An error message of severity 16 (the usual for BACKUP/RESTORE failures).
    pub fn error(number: u32, text: impl Into<String>) -> Message {
        Message {
            number,
            severity: 16,
            state: 1,
            line: 1,
            text: printable(text.into()),
        }
    }

    /// Whether this message is an error (severity above 10).
    pub fn is_error(&self) -> bool {
        self.severity > 10
    }

    /// The `Msg N, Level L, State S, Line X` header sqlcmd prints before an error.
    pub fn header(&self) -> String {
        format!(
            "Msg {}, Level {}, State {}, Line {}",
            self.number, self.severity, self.state, self.line
        )
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_error() {
            write!(f, "{}\n{}", self.header(), self.text)
        } else {
            f.write_str(&self.text)
        }
    }
}

/// A failed statement: the messages SQL Server would send, the last one usually the
/// generic 3013. `messages` is never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SqlError {
    /// The error messages, in the order SQL Server sends them.
    pub messages: Vec<Message>,
    /// Informational messages sent before the failure (e.g. "Processed N pages …" of
    /// a restore that then failed its chain check), for printing in order.
    pub info: Vec<Message>,
}

impl SqlError {
    /// An error with one message.
    pub fn new(number: u32, severity: u8, text: impl Into<String>) -> SqlError {
        SqlError {
            messages: vec![Message {
                number,
                severity,
                state: 1,
                line: 1,
                text: printable(text.into()),
            }],
            info: Vec::new(),
        }
    }

    /// A severity-16 error with one message.
    pub fn msg(number: u32, text: impl Into<String>) -> SqlError {
        SqlError::new(number, 16, text)
    }

    /// Append SQL Server's "`what` is terminating abnormally." (3013), unless present.
    pub fn terminating(mut self, what: &str) -> SqlError {
        if !self.messages.iter().any(|m| m.number == 3013) {
            self.messages.push(Message::error(
                3013,
                format!("{what} is terminating abnormally."),
            ));
        }
        self
    }

    /// Set the line number of every message.
    pub fn at_line(mut self, line: u32) -> SqlError {
        for m in &mut self.messages {
            m.line = line;
        }
        for m in &mut self.info {
            m.line = line;
        }
        self
    }

    /// The first (most specific) message number.
    pub fn number(&self) -> u32 {
        self.messages.first().map_or(0, |m| m.number)
    }

    /// Whether any message has this number.
    pub fn has(&self, number: u32) -> bool {
        self.messages.iter().any(|m| m.number == number)
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

/// Errors of the database layer (create, modify, list) outside T-SQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database exists already.
    #[error("database '{0}' already exists")]
    Exists(String),
    /// The database does not exist.
    #[error("database '{0}' does not exist")]
    NotFound(String),
    /// A bad argument (name, size, page count).
    #[error("{0}")]
    Invalid(String),
    /// A catalog file could not be parsed.
    #[error("the catalog of database '{name}' is unreadable: {reason}")]
    Catalog {
        /// The database.
        name: String,
        /// Why.
        reason: String,
    },
    /// Another process holds the exclusive lock on a database file (flock, see
    /// `db::lock`): an engine has the database open and is working on it.
    #[error("the file '{}' is in use by another engine process (it holds the file's lock)", .0.display())]
    Locked(std::path::PathBuf),
    /// A database file's path is a symbolic link: the engine never follows one, so a
    /// link planted at a file's name cannot redirect a write (or a delete) elsewhere.
    #[error("the file '{}' is a symbolic link; the engine does not follow links to database files", .0.display())]
    Symlink(std::path::PathBuf),
    /// A new database file would replace a file that already exists.
    #[error("the file '{}' already exists", .0.display())]
    FileExists(std::path::PathBuf),
    /// A T-SQL statement failed.
    #[error("{0}")]
    Sql(#[from] SqlError),
}

impl EngineError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> EngineError {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }
}

/// SQL Server's messages used by the engine, by number. Keeping them in one place
/// makes the texts consistent and greppable.
pub mod msg {
    use super::SqlError;

    /// 102: a syntax error.
    pub fn syntax(near: &str) -> SqlError {
        SqlError::new(102, 15, format!("Incorrect syntax near '{near}'."))
    }
    /// 156: a syntax error at a reserved keyword.
    pub fn syntax_keyword(kw: &str) -> SqlError {
        SqlError::new(
            156,
            15,
            format!("Incorrect syntax near the keyword '{}'.", kw.to_uppercase()),
        )
    }
    /// 105: an unterminated string or quoted identifier.
    pub fn unclosed_quote(rest: &str) -> SqlError {
        SqlError::new(
            105,
            15,
            format!("Unclosed quotation mark after the character string '{rest}'."),
        )
    }
    /// 155: an option the statement does not know.
    pub fn unknown_option(opt: &str, stmt: &str) -> SqlError {
        SqlError::new(
            155,
            15,
            format!("'{opt}' is not a recognized {stmt} option."),
        )
    }
    /// 137: a variable was used.
    pub fn undeclared_variable(v: &str) -> SqlError {
        SqlError::new(
            137,
            15,
            format!("Must declare the scalar variable \"{v}\"."),
        )
    }
    /// 3031: two options that exclude each other.
    pub fn conflict(a: &str, b: &str) -> SqlError {
        SqlError::msg(3031, format!("Option '{a}' conflicts with option(s) '{b}'. Remove the conflicting option and reissue the statement."))
    }
    /// 3217: an option value out of range.
    pub fn invalid_value(param: &str) -> SqlError {
        SqlError::msg(
            3217,
            format!("Invalid value specified for {param} parameter."),
        )
    }
    /// 911: unknown database.
    pub fn no_database(name: &str) -> SqlError {
        SqlError::msg(
            911,
            format!(
                "Database '{name}' does not exist. Make sure that the name is entered correctly."
            ),
        )
    }
    /// 927: the database is being restored.
    pub fn restoring(name: &str) -> SqlError {
        SqlError::new(
            927,
            14,
            format!("Database '{name}' cannot be opened. It is in the middle of a restore."),
        )
    }
    /// 4214: BACKUP LOG without a full backup.
    pub fn no_full_for_log() -> SqlError {
        SqlError::msg(
            4214,
            "BACKUP LOG cannot be performed because there is no current database backup.",
        )
    }
    /// 3035: differential without a (non copy-only) full backup.
    pub fn no_full_for_diff(db: &str) -> SqlError {
        SqlError::msg(3035, format!("Cannot perform a differential backup for database \"{db}\", because a current database backup does not exist. Perform a full database backup by reissuing BACKUP DATABASE, omitting the WITH DIFFERENTIAL option."))
    }
    /// 3201: a backup device could not be opened.
    pub fn cannot_open_device(dev: &str, why: &str) -> SqlError {
        SqlError::msg(
            3201,
            format!("Cannot open backup device '{dev}'. Operating system error {why}."),
        )
    }
    /// 18210: a VDI failure on a device, with the VDI function that failed.
    pub fn vdi_failure(func: &str, dev: &str, os_error: &str) -> SqlError {
        SqlError::msg(
            18210,
            format!("BackupVirtualDeviceFile::{func}: failure on backup device '{dev}'. Operating system error {os_error}."),
        )
    }
    /// 3117: log or differential restore onto a database that is not restoring.
    pub fn nothing_to_rollforward() -> SqlError {
        SqlError::msg(3117, "The log or differential backup cannot be restored because no files are ready to rollforward.")
    }
    /// 3136: differential on the wrong base.
    pub fn diff_wrong_base() -> SqlError {
        SqlError::msg(3136, "This differential backup cannot be restored because the database has not been restored to the correct earlier state.")
    }
    /// 4305: the log begins after the database's redo point.
    pub fn log_too_recent(first: &str, need: &str) -> SqlError {
        SqlError::msg(4305, format!("The log in this backup set begins at LSN {first}, which is too recent to apply to the database. An earlier log backup that includes LSN {need} can be restored."))
    }
    /// 4326: the log ends before the database's redo point.
    pub fn log_too_early(last: &str, need: &str) -> SqlError {
        SqlError::msg(4326, format!("The log in this backup set terminates at LSN {last}, which is too early to apply to the database. A more recent log backup that includes LSN {need} can be restored."))
    }
    /// 3159: restoring over an existing database without REPLACE.
    pub fn tail_not_backed_up(db: &str) -> SqlError {
        SqlError::msg(3159, format!("The tail of the log for the database \"{db}\" has not been backed up. Use BACKUP LOG WITH NORECOVERY to backup the log if it contains work you do not want to lose. Use the WITH REPLACE or WITH STOPAT clause of the RESTORE statement to just overwrite the contents of the log."))
    }
    /// 3154: the backup is of another database than the existing one.
    pub fn other_database(db: &str) -> SqlError {
        SqlError::msg(
            3154,
            format!("The backup set holds a backup of a database other than the existing '{db}' database."),
        )
    }
    /// 1834: a restore target file belongs to another database.
    pub fn file_in_use(path: &str, db: &str) -> SqlError {
        SqlError::msg(
            1834,
            format!(
                "The file '{path}' cannot be overwritten.  It is being used by database '{db}'."
            ),
        )
    }
    /// 3156: a file cannot be restored to its path.
    pub fn cannot_restore_file(logical: &str, path: &str) -> SqlError {
        SqlError::msg(3156, format!("File '{logical}' cannot be restored to '{path}'. Use WITH MOVE to identify a valid location for the file."))
    }
    /// 5120: a database file is locked by another engine process. SQL Server gives
    /// 5120 with operating system error 32 when another process holds a file open.
    pub fn file_locked(path: &str) -> SqlError {
        SqlError::msg(5120, format!("Unable to open the physical file \"{path}\". Operating system error 32: \"{}\" (another openvdi engine process holds the file's lock).", super::os_error_text(32)))
    }
    /// 5120 again for a symbolic link at a database file's path: SQL Server has no
    /// such case; the closest is a physical file it cannot open.
    pub fn file_is_symlink(path: &str) -> SqlError {
        SqlError::msg(5120, format!("Unable to open the physical file \"{path}\". It is a symbolic link, and the openvdi engine never follows a link to a database file."))
    }
    /// 3142: a restore would overwrite a file that belongs to no database of this
    /// engine.
    pub fn file_exists(logical: &str, path: &str) -> SqlError {
        SqlError::msg(3142, format!("File \"{logical}\" cannot be restored over the existing \"{path}\". Reissue the RESTORE statement using WITH REPLACE to overwrite pre-existing files, or WITH MOVE to identify an alternate location."))
    }
    /// 5105: a MOVE target that is not an absolute path (SQL Server's message for a
    /// physical file name it cannot use; it too rejects relative paths).
    pub fn bad_physical_name(path: &str, why: &str) -> SqlError {
        SqlError::msg(5105, format!("A file activation error occurred. The physical file name '{path}' may be incorrect. Diagnose and correct additional errors, and retry the operation. ({why})"))
    }
    /// 3176: two files of the backup would go to the same path.
    pub fn file_claimed_twice(path: &str, a: &str, b: &str) -> SqlError {
        SqlError::msg(3176, format!("File '{path}' is claimed by '{a}' and '{b}'. The WITH MOVE clause can be used to relocate one or more files."))
    }
    /// 3202 with operating system error 112 (ERROR_DISK_FULL's neighbour, "not
    /// enough space"), as SQL Server reports a full disk while writing; the POSIX
    /// wording follows so that the cause is plain on Linux.
    pub fn disk_full(path: &str) -> SqlError {
        SqlError::msg(
            3202,
            format!(
                "Write on \"{path}\" failed: {} (no space left on device)",
                super::os_error_text(112)
            ),
        )
    }
    /// 3234: MOVE names a logical file the backup does not have.
    pub fn not_a_logical_file(logical: &str, db: &str) -> SqlError {
        SqlError::msg(3234, format!("Logical file '{logical}' is not part of database '{db}'. Use RESTORE FILELISTONLY to list the logical file names."))
    }
    /// 3132: stripes missing.
    pub fn families_missing(have: usize, need: usize) -> SqlError {
        SqlError::msg(3132, format!("The media set has {need} media families but only {have} are provided. All members must be provided."))
    }
    /// 3231: media family count disagrees with the device list.
    pub fn family_count(dev: &str, fmt: usize, expected: usize) -> SqlError {
        SqlError::msg(3231, format!("The media loaded on \"{dev}\" is formatted to support {fmt} media families, but {expected} media families are expected according to the backup device specification."))
    }
    /// 3227: a device of another media set.
    pub fn other_media_set(dev: &str) -> SqlError {
        SqlError::msg(3227, format!("The volume on device '{dev}' is a duplicate of stripe set sequence number 1 or belongs to a different media set. Use a different volume or a device of the same media set."))
    }
    /// 3241: a malformed media family.
    pub fn bad_family(dev: &str, why: &str) -> SqlError {
        SqlError::msg(3241, format!("The media family on device '{dev}' is incorrectly formed. SQL Server cannot process this media family. ({why})"))
    }
    /// Msg 3257: the files a restore must create do not fit on the volume (SQL
    /// Server checks the recorded file sizes against free space before it creates
    /// anything).
    pub fn insufficient_space(volume: &str, need: u64, avail: u64) -> SqlError {
        SqlError::msg(
            3257,
            format!(
                "There is insufficient free space on disk volume '{volume}' to create the \
                 database. The database requires {need} additional free bytes, while only \
                 {avail} bytes are available."
            ),
        )
    }
    /// Msg 195: an unknown SET option.
    pub fn not_a_set_option(name: &str) -> SqlError {
        SqlError::new(195, 15, format!("'{name}' is not a recognized SET option."))
    }

    /// Msg 911: USE of a database that does not exist.
    pub fn use_no_database(name: &str) -> SqlError {
        SqlError::new(
            911,
            16,
            format!(
                "Database '{name}' does not exist. Make sure that the name is entered correctly."
            ),
        )
    }

    /// 3183: a page read from the backup set fails its checks (names its place
    /// as `file:page`).
    pub fn page_damaged(file_id: u16, page_id: u32, db: &str) -> SqlError {
        SqlError::msg(
            3183,
            format!("RESTORE detected an error on page ({file_id}:{page_id}) in database \"{db}\" as read from the backup set."),
        )
    }

    /// 3189: damage to the backup set, with what was found.
    pub fn damaged(why: &str) -> SqlError {
        SqlError::msg(
            3189,
            format!("Damage to the backup set was detected. ({why})"),
        )
    }
    /// 3203: a read on a device failed.
    pub fn read_failed(dev: &str, os_error: &str) -> SqlError {
        SqlError::msg(3203, format!("Read on \"{dev}\" failed: {os_error}"))
    }
    /// 3202: a write on a device failed.
    pub fn write_failed(dev: &str, os_error: &str) -> SqlError {
        SqlError::msg(3202, format!("Write on \"{dev}\" failed: {os_error}"))
    }
    /// 50000 (the number SQL Server gives messages that are not its own): a feature
    /// the engine does not have (COMPRESSION, DISK devices …).
    pub fn not_supported(what: &str) -> SqlError {
        SqlError::msg(
            50000,
            format!("{what} is not supported by the openvdi engine."),
        )
    }
    /// 3013: the generic terminator.
    pub fn terminating(what: &str) -> SqlError {
        SqlError::msg(3013, format!("{what} is terminating abnormally."))
    }
}

/// The text SQL Server appends for an operating-system error code, e.g.
/// `995(The I/O operation has been aborted because of either a thread exit or an application request.)`.
pub fn os_error_text(code: u32) -> String {
    let text = match code {
        0 => "The operation completed successfully.",
        6 => "The handle is invalid.",
        29 => "The system cannot write to the specified device.",
        32 => "The process cannot access the file because it is being used by another process.",
        30 => "The system cannot read from the specified device.",
        38 => "Reached the end of the file.",
        39 => "The disk is full.",
        50 => "The request is not supported.",
        112 => "There is not enough space on the disk.",
        995 => "The I/O operation has been aborted because of either a thread exit or an application request.",
        1104 => "No more data is on the tape.",
        1117 => "The request could not be performed because of an I/O device error.",
        1450 => "Insufficient system resources exist to complete the requested service.",
        1460 => "This operation returned because the timeout period expired.",
        _ => "failed to retrieve text for this error. Reason: 15105",
    };
    format!("{code}({text})")
}

/// The text for a VDI result code, e.g. `0x80770003(failed to retrieve text for this error. Reason: 15105)`,
/// which is what SQL Server prints for VDI errors.
pub fn hresult_text(h: openvdi::HResult) -> String {
    format!(
        "0x{:08x}({} - failed to retrieve text for this error. Reason: 15105)",
        h.as_u32(),
        h.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_carry_no_control_characters() {
        let e = msg::damaged("the \u{1b}[2J\0 block\nMsg 0");
        assert_eq!(
            e.messages[0].text,
            "Damage to the backup set was detected. (the \\u{1b}[2J\\u{0} block\\nMsg 0)"
        );
        assert_eq!(
            Message::info(0, "a\tb").text,
            "a\tb",
            "PRINT's text is its own"
        );
    }

    #[test]
    fn display_like_sqlcmd() {
        let e = msg::syntax("FOO").at_line(3);
        assert_eq!(
            e.to_string(),
            "Msg 102, Level 15, State 1, Line 3\nIncorrect syntax near 'FOO'."
        );
        let e = msg::diff_wrong_base().terminating("RESTORE DATABASE");
        assert_eq!(e.messages.len(), 2);
        assert_eq!(e.messages[1].number, 3013);
        assert_eq!(
            e.messages[1].text,
            "RESTORE DATABASE is terminating abnormally."
        );
        // terminating() does not add a second 3013.
        let e = e.terminating("X");
        assert_eq!(e.messages.len(), 2);
        assert!(e.has(3136));
        assert_eq!(e.number(), 3136);
    }

    #[test]
    fn info_messages_print_bare() {
        let m = Message::info(
            4035,
            "Processed 8 pages for database 'a', file 'a' on file 1.",
        );
        assert!(!m.is_error());
        assert_eq!(
            m.to_string(),
            "Processed 8 pages for database 'a', file 'a' on file 1."
        );
    }

    #[test]
    fn os_errors() {
        assert!(os_error_text(995).starts_with("995(The I/O operation has been aborted"));
        assert_eq!(os_error_text(38), "38(Reached the end of the file.)");
    }
}
