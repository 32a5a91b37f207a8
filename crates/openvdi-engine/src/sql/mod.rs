//! T-SQL: the subset of BACKUP and RESTORE that names virtual devices, with a
//! hand-written lexer ([`lexer`]) and recursive-descent parser ([`parse_batch`]).
//!
//! Grammar (keywords case-insensitive; `name` is a plain, `[bracketed]` or
//! `"quoted"` identifier; `str` is `'…'` or `N'…'`):
//!
//! ```text
//! batch     := { stmt [';'] }
//! stmt      := BACKUP (DATABASE|LOG) name TO devices [WITH boptions]
//!            | RESTORE (DATABASE|LOG) name [FROM devices] [WITH roptions]
//!            | RESTORE (HEADERONLY|FILELISTONLY|VERIFYONLY|LABELONLY) FROM devices [WITH roptions]
//! devices   := device { ',' device }
//! device    := (VIRTUAL_DEVICE|DISK|TAPE|URL) '=' str
//! boptions  := FORMAT | NOFORMAT | INIT | NOINIT | SKIP | NOSKIP | COPY_ONLY | DIFFERENTIAL
//!            | CHECKSUM | NO_CHECKSUM | COMPRESSION | NO_COMPRESSION | NORECOVERY | NO_TRUNCATE
//!            | REWIND | NOREWIND | UNLOAD | NOUNLOAD | CONTINUE_AFTER_ERROR | STOP_ON_ERROR
//!            | BLOCKSIZE '=' n | BUFFERCOUNT '=' n | MAXTRANSFERSIZE '=' n
//!            | NAME '=' str | DESCRIPTION '=' str | MEDIANAME '=' str | MEDIADESCRIPTION '=' str
//!            | PASSWORD '=' str | MEDIAPASSWORD '=' str
//!            | STATS ['=' n]   (comma-separated)
//! roptions  := REPLACE | RECOVERY | NORECOVERY | MOVE str TO str | CHECKSUM | NO_CHECKSUM
//!            | STOPAT '=' str | STOPATMARK '=' str [AFTER str] | STOPBEFOREMARK '=' str [AFTER str]
//!            | STATS ['=' n] | FILE '=' n | BLOCKSIZE '=' n | BUFFERCOUNT '=' n
//!            | MAXTRANSFERSIZE '=' n | REWIND | NOREWIND | UNLOAD | NOUNLOAD
//!            | CONTINUE_AFTER_ERROR | STOP_ON_ERROR | PASSWORD '=' str | MEDIAPASSWORD '=' str
//!            | MEDIANAME '=' str   (comma-separated)
//! ```
//!
//! Errors are SQL Server's: 102 "Incorrect syntax near '…'", 156 for a keyword in
//! the wrong place, 105 for an unclosed quote, 155 for an unknown option, 3031 for
//! conflicting options, 3217 for an out-of-range value.

pub mod lexer;

use crate::error::{msg, SqlError};
use crate::password::Secret;
use lexer::{Tok, Token};

/// Where a backup device points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// `VIRTUAL_DEVICE = '…'`: a VDI device (the only kind the engine executes).
    VirtualDevice,
    /// `DISK = '…'`.
    Disk,
    /// `TAPE = '…'`.
    Tape,
    /// `URL = '…'`.
    Url,
}

/// One `KIND = 'name'` clause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The kind.
    pub kind: DeviceKind,
    /// The name (for VDI: the set name, then device names).
    pub name: String,
}

/// BACKUP DATABASE or BACKUP LOG / RESTORE DATABASE or RESTORE LOG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `DATABASE`.
    Database,
    /// `LOG`.
    Log,
}

/// The options of a BACKUP statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupOptions {
    /// FORMAT.
    pub format: bool,
    /// INIT.
    pub init: bool,
    /// COPY_ONLY.
    pub copy_only: bool,
    /// DIFFERENTIAL.
    pub differential: bool,
    /// CHECKSUM (`Some(true)`) / NO_CHECKSUM (`Some(false)`).
    pub checksum: Option<bool>,
    /// COMPRESSION / NO_COMPRESSION.
    pub compression: Option<bool>,
    /// BLOCKSIZE.
    pub block_size: Option<u32>,
    /// BUFFERCOUNT.
    pub buffer_count: Option<u32>,
    /// MAXTRANSFERSIZE.
    pub max_transfer_size: Option<u32>,
    /// NAME.
    pub name: Option<String>,
    /// DESCRIPTION.
    pub description: Option<String>,
    /// MEDIANAME.
    pub media_name: Option<String>,
    /// MEDIADESCRIPTION.
    pub media_description: Option<String>,
    /// PASSWORD: protects the backup set (`crate::password`).
    pub password: Option<Secret>,
    /// MEDIAPASSWORD: protects the media set.
    pub media_password: Option<Secret>,
    /// STATS: `Some(10)` for a bare STATS (SQL Server's default).
    pub stats: Option<u32>,
    /// NORECOVERY (tail-log backup).
    pub norecovery: bool,
    /// NO_TRUNCATE.
    pub no_truncate: bool,
    /// CONTINUE_AFTER_ERROR.
    pub continue_after_error: bool,
}

/// The options of a RESTORE statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// REPLACE.
    pub replace: bool,
    /// RECOVERY (`Some(true)`) / NORECOVERY (`Some(false)`); default RECOVERY.
    pub recovery: Option<bool>,
    /// MOVE 'logical' TO 'path', in order.
    pub moves: Vec<(String, String)>,
    /// CHECKSUM / NO_CHECKSUM.
    pub checksum: Option<bool>,
    /// STATS.
    pub stats: Option<u32>,
    /// FILE = n (backup set position; only 1 exists on a VDI stream).
    pub file: Option<u32>,
    /// BLOCKSIZE.
    pub block_size: Option<u32>,
    /// BUFFERCOUNT.
    pub buffer_count: Option<u32>,
    /// MAXTRANSFERSIZE.
    pub max_transfer_size: Option<u32>,
    /// CONTINUE_AFTER_ERROR.
    pub continue_after_error: bool,
    /// STOPAT / STOPATMARK / STOPBEFOREMARK: where redo stops.
    pub stop: Option<StopPoint>,
    /// PASSWORD: the backup set's password, if it has one.
    pub password: Option<Secret>,
    /// MEDIAPASSWORD: the media set's password, if it has one.
    pub media_password: Option<Secret>,
}

/// Where a point-in-time restore stops redo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopPoint {
    /// `STOPAT = 'YYYY-MM-DD HH:MM:SS[.fff]'` (UTC): records written at or before it
    /// are redone; milliseconds since the Unix epoch.
    At(u64),
    /// `STOPATMARK = 'lsn:N'`: redo up to and including the record at LSN N.
    AtMark(u128),
    /// `STOPBEFOREMARK = 'lsn:N'`: redo up to the record at LSN N, without it.
    BeforeMark(u128),
}

/// Milliseconds since the Unix epoch of `YYYY-MM-DD[ HH:MM[:SS[.fff]]]` (or with a
/// `T`), read as UTC; None if it is not such a date.
pub fn parse_datetime(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = match s.find([' ', 'T']) {
        Some(i) => (&s[..i], s[i + 1..].trim()),
        None => (s, ""),
    };
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if d.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&day) || y < 1970 {
        return None;
    }
    let (mut h, mut mi, mut sec, mut ms) = (0i64, 0i64, 0i64, 0i64);
    if !time.is_empty() {
        let time = time.strip_suffix('Z').unwrap_or(time);
        let (hms, frac) = match time.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (time, None),
        };
        let mut t = hms.split(':');
        h = t.next()?.parse().ok()?;
        mi = t.next()?.parse().ok()?;
        sec = match t.next() {
            Some(x) => x.parse().ok()?,
            None => 0,
        };
        if t.next().is_some() || h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        if let Some(f) = frac {
            if f.is_empty() || f.len() > 7 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            ms = format!("{f:0<3}")[..3].parse().ok()?;
        }
    }
    // Days since the epoch from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs * 1000 + ms).ok()
}

impl RestoreOptions {
    /// Whether the restore recovers the database (RECOVERY is the default).
    pub fn recovers(&self) -> bool {
        self.recovery != Some(false)
    }
}

/// RESTORE HEADERONLY | FILELISTONLY | VERIFYONLY | LABELONLY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoKind {
    /// HEADERONLY: one row per backup set.
    HeaderOnly,
    /// FILELISTONLY: one row per database file.
    FileListOnly,
    /// VERIFYONLY: read and validate.
    VerifyOnly,
    /// LABELONLY: the media header.
    LabelOnly,
}

impl InfoKind {
    /// The keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            InfoKind::HeaderOnly => "HEADERONLY",
            InfoKind::FileListOnly => "FILELISTONLY",
            InfoKind::VerifyOnly => "VERIFYONLY",
            InfoKind::LabelOnly => "LABELONLY",
        }
    }
}

/// A parsed statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// BACKUP DATABASE | LOG.
    Backup {
        /// DATABASE or LOG.
        target: Target,
        /// Database name.
        database: String,
        /// TO devices.
        devices: Vec<Device>,
        /// WITH options.
        options: BackupOptions,
    },
    /// RESTORE DATABASE | LOG (devices empty for `RESTORE DATABASE x WITH RECOVERY`).
    Restore {
        /// DATABASE or LOG.
        target: Target,
        /// Database name.
        database: String,
        /// FROM devices.
        devices: Vec<Device>,
        /// WITH options.
        options: RestoreOptions,
    },
    /// RESTORE HEADERONLY | FILELISTONLY | VERIFYONLY | LABELONLY.
    RestoreInfo {
        /// Which.
        kind: InfoKind,
        /// FROM devices.
        devices: Vec<Device>,
        /// WITH options.
        options: RestoreOptions,
    },
    /// What scripts and drivers send around their BACKUP/RESTORE: SET options, USE,
    /// PRINT, and SELECTs of the server's identity.
    Session(Session),
}

/// A session statement ([`Statement::Session`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Session {
    /// `SET option value`: accepted, changes nothing the engine does.
    Set(String),
    /// `SET NOCOUNT ON|OFF`: whether result sets are followed by their row count.
    NoCount(bool),
    /// `USE database`.
    Use(String),
    /// `PRINT 'text'` (or a number).
    Print(String),
    /// `SELECT item [AS alias], …` of constants and server properties.
    Select(Vec<(SelectItem, Option<String>)>),
}

/// One column of a session SELECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectItem {
    /// `@@VERSION`, `@@SERVERNAME`, … (upper case, without the `@@`).
    Global(String),
    /// `SERVERPROPERTY('name')`.
    ServerProperty(String),
    /// An integer literal.
    Number(u64),
    /// A string literal.
    Str(String),
}

/// SET options SQL Server knows that take ON / OFF (the ones scripts and drivers send).
const SET_ON_OFF: &[&str] = &[
    "ANSI_DEFAULTS",
    "ANSI_NULL_DFLT_OFF",
    "ANSI_NULL_DFLT_ON",
    "ANSI_NULLS",
    "ANSI_PADDING",
    "ANSI_WARNINGS",
    "ARITHABORT",
    "ARITHIGNORE",
    "CONCAT_NULL_YIELDS_NULL",
    "CURSOR_CLOSE_ON_COMMIT",
    "FMTONLY",
    "FORCEPLAN",
    "IMPLICIT_TRANSACTIONS",
    "NOCOUNT",
    "NOEXEC",
    "NUMERIC_ROUNDABORT",
    "PARSEONLY",
    "QUOTED_IDENTIFIER",
    "REMOTE_PROC_TRANSACTIONS",
    "SHOWPLAN_ALL",
    "SHOWPLAN_TEXT",
    "SHOWPLAN_XML",
    "STATISTICS",
    "XACT_ABORT",
];
/// SET options that take a value (a number or a word).
const SET_VALUED: &[&str] = &[
    "DATEFIRST",
    "DATEFORMAT",
    "DEADLOCK_PRIORITY",
    "LANGUAGE",
    "LOCK_TIMEOUT",
    "QUERY_GOVERNOR_COST_LIMIT",
    "ROWCOUNT",
    "TEXTSIZE",
];

impl Statement {
    /// The statement's name in SQL Server's messages ("BACKUP DATABASE", "RESTORE LOG",
    /// "VERIFY DATABASE" …).
    pub fn verb(&self) -> &'static str {
        match self {
            Statement::Backup {
                target: Target::Database,
                ..
            } => "BACKUP DATABASE",
            Statement::Backup {
                target: Target::Log,
                ..
            } => "BACKUP LOG",
            Statement::Restore {
                target: Target::Database,
                ..
            } => "RESTORE DATABASE",
            Statement::Restore {
                target: Target::Log,
                ..
            } => "RESTORE LOG",
            Statement::RestoreInfo {
                kind: InfoKind::VerifyOnly,
                ..
            } => "VERIFY DATABASE",
            Statement::RestoreInfo {
                kind: InfoKind::HeaderOnly,
                ..
            } => "RESTORE HEADERONLY",
            Statement::RestoreInfo {
                kind: InfoKind::FileListOnly,
                ..
            } => "RESTORE FILELISTONLY",
            Statement::RestoreInfo {
                kind: InfoKind::LabelOnly,
                ..
            } => "RESTORE LABELONLY",
            Statement::Session(Session::Set(_) | Session::NoCount(_)) => "SET",
            Statement::Session(Session::Use(_)) => "USE",
            Statement::Session(Session::Print(_)) => "PRINT",
            Statement::Session(Session::Select(_)) => "SELECT",
        }
    }

    /// The devices the statement names.
    pub fn devices(&self) -> &[Device] {
        match self {
            Statement::Backup { devices, .. }
            | Statement::Restore { devices, .. }
            | Statement::RestoreInfo { devices, .. } => devices,
            Statement::Session(_) => &[],
        }
    }
}

/// A statement and the batch line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The statement.
    pub stmt: Statement,
    /// 1-based line within the batch.
    pub line: u32,
}

/// Words SQL Server reserves: a syntax error at one of these is message 156.
const RESERVED: &[&str] = &[
    "ADD",
    "ALL",
    "ALTER",
    "AND",
    "AS",
    "BACKUP",
    "BEGIN",
    "BY",
    "CHECKPOINT",
    "CREATE",
    "DATABASE",
    "DECLARE",
    "DELETE",
    "DISK",
    "DROP",
    "ELSE",
    "END",
    "EXEC",
    "EXECUTE",
    "FILE",
    "FROM",
    "GO",
    "IF",
    "INSERT",
    "INTO",
    "LOAD",
    "NOT",
    "NULL",
    "OR",
    "PRINT",
    "RESTORE",
    "SELECT",
    "SET",
    "TABLE",
    "TAPE",
    "TO",
    "UPDATE",
    "USE",
    "WHERE",
    "WITH",
];

fn is_reserved(w: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(w))
}

/// A parameter value bound to a batch (what a driver sends with `sp_executesql`).
///
/// Parameters are bound after lexing: each `@name` token of the batch that names
/// a parameter becomes the literal token of its value (a string literal or a
/// number), so a value is never re-read as T-SQL text and cannot inject anything.
/// A parameter may stand wherever the grammar takes a literal (a device name, an
/// option's value) and for the database name, as SQL Server allows
/// (`BACKUP DATABASE @db`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    /// SQL NULL.
    Null,
    /// An integer (INT, BIGINT, SMALLINT, TINYINT, BIT).
    Int(i64),
    /// A string (NVARCHAR, VARCHAR, NCHAR, CHAR).
    Str(String),
}

/// Parse one batch (the text between GO lines) into statements.
pub fn parse_batch(src: &str) -> Result<Vec<Located>, SqlError> {
    parse_batch_with(src, &[])
}

/// [`parse_batch`] with parameters bound to their `@name`s (names compared
/// without case, as SQL Server does under a case-insensitive collation; the `@`
/// is optional in `params`). A NULL parameter stays a variable, so using it is
/// SQL Server's 137 ("Must declare the scalar variable").
pub fn parse_batch_with(src: &str, params: &[(String, Param)]) -> Result<Vec<Located>, SqlError> {
    let mut toks = lexer::lex(src)?;
    if !params.is_empty() {
        toks = bind_params(toks, params);
    }
    let mut p = Parser { toks, pos: 0 };
    let mut out = Vec::new();
    loop {
        while p.eat(&Tok::Semi) {}
        if p.at_end() {
            break;
        }
        let line = p.peek().map_or(1, |t| t.line);
        let stmt = p.statement().map_err(|e| {
            // Syntax errors carry their own line; others get the statement's.
            if e.messages.iter().all(|m| m.line == 0) {
                e.at_line(line)
            } else {
                e
            }
        })?;
        out.push(Located { stmt, line });
    }
    Ok(out)
}

fn bind_params(toks: Vec<Token>, params: &[(String, Param)]) -> Vec<Token> {
    let find = |v: &str| {
        params.iter().find_map(|(n, p)| {
            let n = n.strip_prefix('@').unwrap_or(n);
            (v.len() == n.len() + 1 && v[1..].eq_ignore_ascii_case(n)).then_some(p)
        })
    };
    let mut out = Vec::with_capacity(toks.len());
    for t in toks {
        let bound = match &t.tok {
            Tok::Variable(v) if !v.starts_with("@@") => find(v),
            _ => None,
        };
        match bound {
            Some(Param::Str(s)) => out.push(Token {
                tok: Tok::Str {
                    value: s.clone(),
                    unicode: true,
                },
                ..t
            }),
            Some(Param::Int(n)) => {
                if *n < 0 {
                    out.push(Token {
                        tok: Tok::Other('-'),
                        line: t.line,
                        text: "-".into(),
                    });
                }
                out.push(Token {
                    tok: Tok::Number(n.unsigned_abs()),
                    ..t
                });
            }
            Some(Param::Null) | None => out.push(t),
        }
    }
    out
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

type PResult<T> = Result<T, SqlError>;

impl Parser {
    fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
    }

    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek().is_some_and(|x| &x.tok == t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn peek_word(&self) -> Option<String> {
        match self.peek() {
            Some(Token {
                tok: Tok::Word(w), ..
            }) => Some(w.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if self.peek_word().as_deref() == Some(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A syntax error at the current token (or, at the end, the last one), with
    /// SQL Server's message 102 / 156 choice.
    fn error_here(&self) -> SqlError {
        let t = self.peek().or_else(|| self.toks.last());
        match t {
            None => msg::syntax("").at_line(1),
            Some(t) => {
                let e = match &t.tok {
                    Tok::Word(w) if is_reserved(w) => msg::syntax_keyword(w),
                    Tok::Str { value, .. } => msg::syntax(value),
                    Tok::Quoted(v) => msg::syntax(v),
                    _ => msg::syntax(&t.text),
                };
                e.at_line(t.line)
            }
        }
    }

    fn expect(&mut self, t: &Tok) -> PResult<()> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.error_here())
        }
    }

    fn expect_word(&mut self, w: &str) -> PResult<()> {
        if self.eat_word(w) {
            Ok(())
        } else {
            Err(self.error_here())
        }
    }

    fn statement(&mut self) -> PResult<Statement> {
        match self.peek_word().as_deref() {
            Some("BACKUP") => {
                self.pos += 1;
                self.backup()
            }
            Some("RESTORE") => {
                self.pos += 1;
                self.restore()
            }
            Some("SET") => {
                self.pos += 1;
                self.set_option().map(Statement::Session)
            }
            Some("USE") => {
                self.pos += 1;
                Ok(Statement::Session(Session::Use(self.name()?)))
            }
            Some("PRINT") => {
                self.pos += 1;
                let text = match self.next().map(|t| t.tok) {
                    Some(Tok::Str { value, .. }) => value,
                    Some(Tok::Number(n)) => n.to_string(),
                    _ => {
                        self.pos = self.pos.saturating_sub(1);
                        return Err(self.error_here());
                    }
                };
                Ok(Statement::Session(Session::Print(text)))
            }
            Some("SELECT") => {
                self.pos += 1;
                self.select().map(Statement::Session)
            }
            _ => Err(self.error_here()),
        }
    }

    /// `SET option …` (the option names SQL Server has; anything else is Msg 195).
    fn set_option(&mut self) -> PResult<Session> {
        let Some(opt) = self.peek_word() else {
            return Err(self.error_here());
        };
        self.pos += 1;
        if SET_ON_OFF.contains(&opt.as_str()) {
            if opt == "STATISTICS" {
                // SET STATISTICS IO | TIME | PROFILE | XML ON|OFF
                let Some(w) = self.peek_word() else {
                    return Err(self.error_here());
                };
                self.pos += 1;
                if !matches!(w.as_str(), "IO" | "TIME" | "PROFILE" | "XML") {
                    return Err(msg::not_a_set_option(&w));
                }
            }
            let on = if self.eat_word("ON") {
                true
            } else if self.eat_word("OFF") {
                false
            } else {
                return Err(self.error_here());
            };
            if opt == "NOCOUNT" {
                return Ok(Session::NoCount(on));
            }
            return Ok(Session::Set(opt));
        }
        if SET_VALUED.contains(&opt.as_str()) {
            let neg = self.peek().is_some_and(|t| t.text == "-");
            if neg {
                self.pos += 1;
            }
            match self.next().map(|t| t.tok) {
                Some(Tok::Number(_)) | Some(Tok::Word(_)) | Some(Tok::Str { .. }) => {}
                _ => {
                    self.pos = self.pos.saturating_sub(1);
                    return Err(self.error_here());
                }
            }
            return Ok(Session::Set(opt));
        }
        if opt == "TRANSACTION" {
            // SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED | READ COMMITTED |
            // REPEATABLE READ | SNAPSHOT | SERIALIZABLE
            self.expect_word("ISOLATION")?;
            self.expect_word("LEVEL")?;
            let ok = if self.eat_word("READ") {
                self.eat_word("UNCOMMITTED") || self.eat_word("COMMITTED")
            } else if self.eat_word("REPEATABLE") {
                self.eat_word("READ")
            } else {
                self.eat_word("SNAPSHOT") || self.eat_word("SERIALIZABLE")
            };
            if !ok {
                return Err(self.error_here());
            }
            return Ok(Session::Set(opt));
        }
        Err(msg::not_a_set_option(&opt))
    }

    /// `SELECT item [[AS] alias], …` where an item is a constant, `@@GLOBAL` or
    /// `SERVERPROPERTY('name')`. Anything else (FROM, WHERE, …) is a syntax error.
    fn select(&mut self) -> PResult<Session> {
        let mut items = Vec::new();
        loop {
            let item = match self.next().map(|t| t.tok) {
                Some(Tok::Number(n)) => SelectItem::Number(n),
                Some(Tok::Str { value, .. }) => SelectItem::Str(value),
                Some(Tok::Variable(v)) if v.starts_with("@@") => {
                    SelectItem::Global(v.trim_start_matches('@').to_ascii_uppercase())
                }
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("SERVERPROPERTY") => {
                    self.expect(&Tok::LParen)?;
                    let name = self.string()?;
                    self.expect(&Tok::RParen)?;
                    SelectItem::ServerProperty(name)
                }
                _ => {
                    self.pos = self.pos.saturating_sub(1);
                    return Err(self.error_here());
                }
            };
            let alias = if self.eat_word("AS") {
                Some(self.name()?)
            } else if let Some(Tok::Quoted(q)) = self.peek().map(|t| t.tok.clone()) {
                self.pos += 1;
                Some(q)
            } else {
                match self.peek_word() {
                    Some(w) if !is_reserved(&w) => Some(self.name()?),
                    _ => None,
                }
            };
            items.push((item, alias));
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        Ok(Session::Select(items))
    }

    fn name(&mut self) -> PResult<String> {
        match self.peek().map(|t| t.tok.clone()) {
            Some(Tok::Word(w)) if !is_reserved(&w) => {
                self.pos += 1;
                Ok(w)
            }
            Some(Tok::Quoted(q)) => {
                self.pos += 1;
                Ok(q)
            }
            // A string parameter bound to `@name` (its token keeps the `@name` text):
            // SQL Server takes a variable for a database name.
            Some(Tok::Str { value, .. })
                if self.peek().is_some_and(|t| t.text.starts_with('@')) =>
            {
                self.pos += 1;
                Ok(value)
            }
            Some(Tok::Variable(v)) => {
                Err(msg::undeclared_variable(&v).at_line(self.peek().map_or(1, |t| t.line)))
            }
            _ => Err(self.error_here()),
        }
    }

    fn string(&mut self) -> PResult<String> {
        match self.peek().map(|t| t.tok.clone()) {
            Some(Tok::Str { value, .. }) => {
                self.pos += 1;
                Ok(value)
            }
            Some(Tok::Variable(v)) => {
                Err(msg::undeclared_variable(&v).at_line(self.peek().map_or(1, |t| t.line)))
            }
            _ => Err(self.error_here()),
        }
    }

    fn number(&mut self) -> PResult<u64> {
        match self.peek().map(|t| t.tok.clone()) {
            Some(Tok::Number(n)) => {
                self.pos += 1;
                Ok(n)
            }
            Some(Tok::Variable(v)) => {
                Err(msg::undeclared_variable(&v).at_line(self.peek().map_or(1, |t| t.line)))
            }
            _ => Err(self.error_here()),
        }
    }

    fn target(&mut self) -> PResult<Target> {
        if self.eat_word("DATABASE") {
            Ok(Target::Database)
        } else if self.eat_word("LOG") {
            Ok(Target::Log)
        } else {
            Err(self.error_here())
        }
    }

    fn devices(&mut self) -> PResult<Vec<Device>> {
        let mut out = Vec::new();
        loop {
            let kind = match self.peek_word().as_deref() {
                Some("VIRTUAL_DEVICE") => DeviceKind::VirtualDevice,
                Some("DISK") => DeviceKind::Disk,
                Some("TAPE") => DeviceKind::Tape,
                Some("URL") => DeviceKind::Url,
                _ => return Err(self.error_here()),
            };
            self.pos += 1;
            self.expect(&Tok::Eq)?;
            let name = self.string()?;
            out.push(Device { kind, name });
            if !self.eat(&Tok::Comma) {
                return Ok(out);
            }
        }
    }

    /// `= n` after an option name.
    fn eq_number(&mut self, param: &str, lo: u64, hi: u64) -> PResult<u32> {
        self.expect(&Tok::Eq)?;
        let line = self.peek().map_or(1, |t| t.line);
        let n = self.number()?;
        if n < lo || n > hi {
            return Err(msg::invalid_value(param).at_line(line));
        }
        Ok(n as u32)
    }

    fn eq_string(&mut self) -> PResult<String> {
        self.expect(&Tok::Eq)?;
        self.string()
    }

    fn optional_stats(&mut self) -> PResult<u32> {
        if self.peek().is_some_and(|t| t.tok == Tok::Eq) {
            self.eq_number("STATS", 1, 100)
        } else {
            Ok(10)
        }
    }

    /// The option keyword at the current position, or a syntax error.
    fn option_word(&mut self) -> PResult<(String, u32)> {
        match self.next() {
            Some(Token {
                tok: Tok::Word(w),
                line,
                ..
            }) => Ok((w.to_ascii_uppercase(), line)),
            Some(_) => {
                self.pos -= 1;
                Err(self.error_here())
            }
            None => Err(self.error_here()),
        }
    }

    fn backup(&mut self) -> PResult<Statement> {
        let target = self.target()?;
        let database = self.name()?;
        self.expect_word("TO")?;
        let devices = self.devices()?;
        let mut o = BackupOptions::default();
        if self.eat_word("WITH") {
            loop {
                let (w, line) = self.option_word()?;
                match w.as_str() {
                    "FORMAT" => o.format = true,
                    "NOFORMAT" => o.format = false,
                    "INIT" => o.init = true,
                    "NOINIT" => o.init = false,
                    "SKIP" | "NOSKIP" | "REWIND" | "NOREWIND" | "UNLOAD" | "NOUNLOAD"
                    | "STOP_ON_ERROR" => {}
                    "CONTINUE_AFTER_ERROR" => o.continue_after_error = true,
                    "COPY_ONLY" => o.copy_only = true,
                    "DIFFERENTIAL" => o.differential = true,
                    "CHECKSUM" => o.checksum = Some(true),
                    "NO_CHECKSUM" => o.checksum = Some(false),
                    "COMPRESSION" => o.compression = Some(true),
                    "NO_COMPRESSION" => o.compression = Some(false),
                    "NORECOVERY" => o.norecovery = true,
                    "NO_TRUNCATE" => o.no_truncate = true,
                    "BLOCKSIZE" => {
                        let v = self.eq_number("BLOCKSIZE", 512, 65536)?;
                        if !v.is_power_of_two() {
                            return Err(msg::invalid_value("BLOCKSIZE").at_line(line));
                        }
                        o.block_size = Some(v);
                    }
                    "BUFFERCOUNT" => {
                        o.buffer_count = Some(self.eq_number("BUFFERCOUNT", 1, 4096)?)
                    }
                    "MAXTRANSFERSIZE" => {
                        let v = self.eq_number("MAXTRANSFERSIZE", 65536, 4 << 20)?;
                        if v % 65536 != 0 {
                            return Err(msg::invalid_value("MAXTRANSFERSIZE").at_line(line));
                        }
                        o.max_transfer_size = Some(v);
                    }
                    "NAME" => o.name = Some(self.eq_string()?),
                    "DESCRIPTION" => o.description = Some(self.eq_string()?),
                    "MEDIANAME" => o.media_name = Some(self.eq_string()?),
                    "MEDIADESCRIPTION" => o.media_description = Some(self.eq_string()?),
                    "PASSWORD" => o.password = Some(Secret(self.eq_string()?)),
                    "MEDIAPASSWORD" => o.media_password = Some(Secret(self.eq_string()?)),
                    "STATS" => o.stats = Some(self.optional_stats()?),
                    _ => return Err(msg::unknown_option(&w, "BACKUP").at_line(line)),
                }
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        if o.differential && target == Target::Log {
            return Err(msg::unknown_option("DIFFERENTIAL", "BACKUP LOG"));
        }
        if o.differential && o.copy_only {
            return Err(msg::conflict("DIFFERENTIAL", "COPY_ONLY"));
        }
        if o.norecovery && target == Target::Database {
            return Err(msg::unknown_option("NORECOVERY", "BACKUP DATABASE"));
        }
        Ok(Statement::Backup {
            target,
            database,
            devices,
            options: o,
        })
    }

    fn restore(&mut self) -> PResult<Statement> {
        let info = match self.peek_word().as_deref() {
            Some("HEADERONLY") => Some(InfoKind::HeaderOnly),
            Some("FILELISTONLY") => Some(InfoKind::FileListOnly),
            Some("VERIFYONLY") => Some(InfoKind::VerifyOnly),
            Some("LABELONLY") => Some(InfoKind::LabelOnly),
            _ => None,
        };
        if let Some(kind) = info {
            self.pos += 1;
            self.expect_word("FROM")?;
            let devices = self.devices()?;
            let options = self.restore_options()?;
            if options.replace || options.recovery.is_some() {
                let w = if options.replace {
                    "REPLACE"
                } else {
                    "RECOVERY"
                };
                return Err(msg::unknown_option(w, kind.keyword()));
            }
            return Ok(Statement::RestoreInfo {
                kind,
                devices,
                options,
            });
        }
        let target = self.target()?;
        let database = self.name()?;
        let devices = if self.eat_word("FROM") {
            self.devices()?
        } else {
            Vec::new()
        };
        let options = self.restore_options()?;
        if devices.is_empty() && options.recovery.is_none() {
            // `RESTORE DATABASE x` alone means nothing.
            return Err(self.error_here());
        }
        Ok(Statement::Restore {
            target,
            database,
            devices,
            options,
        })
    }

    fn restore_options(&mut self) -> PResult<RestoreOptions> {
        let mut o = RestoreOptions::default();
        if !self.eat_word("WITH") {
            return Ok(o);
        }
        loop {
            let (w, line) = self.option_word()?;
            match w.as_str() {
                "REPLACE" => o.replace = true,
                "RECOVERY" | "NORECOVERY" => {
                    let v = w == "RECOVERY";
                    if o.recovery.is_some_and(|x| x != v) {
                        return Err(msg::conflict(&w, if v { "NORECOVERY" } else { "RECOVERY" })
                            .at_line(line));
                    }
                    o.recovery = Some(v);
                }
                "MOVE" => {
                    let from = self.string()?;
                    self.expect_word("TO")?;
                    let to = self.string()?;
                    o.moves.push((from, to));
                }
                "CHECKSUM" => o.checksum = Some(true),
                "NO_CHECKSUM" => o.checksum = Some(false),
                "STATS" => o.stats = Some(self.optional_stats()?),
                "FILE" => o.file = Some(self.eq_number("FILE", 1, u64::from(u32::MAX))?),
                "BLOCKSIZE" => {
                    let v = self.eq_number("BLOCKSIZE", 512, 65536)?;
                    if !v.is_power_of_two() {
                        return Err(msg::invalid_value("BLOCKSIZE").at_line(line));
                    }
                    o.block_size = Some(v);
                }
                "BUFFERCOUNT" => o.buffer_count = Some(self.eq_number("BUFFERCOUNT", 1, 4096)?),
                "MAXTRANSFERSIZE" => {
                    let v = self.eq_number("MAXTRANSFERSIZE", 65536, 4 << 20)?;
                    if v % 65536 != 0 {
                        return Err(msg::invalid_value("MAXTRANSFERSIZE").at_line(line));
                    }
                    o.max_transfer_size = Some(v);
                }
                "REWIND" | "NOREWIND" | "UNLOAD" | "NOUNLOAD" | "STOP_ON_ERROR" => {}
                "CONTINUE_AFTER_ERROR" => o.continue_after_error = true,
                "PASSWORD" => o.password = Some(Secret(self.eq_string()?)),
                "MEDIAPASSWORD" => o.media_password = Some(Secret(self.eq_string()?)),
                // Accepted as SQL Server does; one media set per stream, so nothing
                // to select by name.
                "MEDIANAME" => {
                    self.eq_string()?;
                }
                "STOPAT" => {
                    let t = self.eq_string()?;
                    let ms = parse_datetime(&t).ok_or_else(|| {
                        SqlError::msg(
                            241,
                            "Conversion failed when converting date and/or time from character string.",
                        )
                        .at_line(line)
                    })?;
                    o.stop = Some(StopPoint::At(ms));
                }
                "STOPATMARK" | "STOPBEFOREMARK" => {
                    let mark = self.eq_string()?;
                    if self.eat_word("AFTER") {
                        self.string()?;
                    }
                    let lsn = mark
                        .strip_prefix("lsn:")
                        .or_else(|| mark.strip_prefix("LSN:"))
                        .and_then(|n| n.trim().parse::<u128>().ok())
                        .ok_or_else(|| {
                            SqlError::msg(
                                4308,
                                format!(
                                    "The mark '{mark}' cannot be used: openvdi-engine records no \
                                     named transaction marks; give an LSN as 'lsn:N'."
                                ),
                            )
                            .at_line(line)
                        })?;
                    o.stop = Some(if w == "STOPATMARK" {
                        StopPoint::AtMark(lsn)
                    } else {
                        StopPoint::BeforeMark(lsn)
                    });
                }
                _ => return Err(msg::unknown_option(&w, "RESTORE").at_line(line)),
            }
            if !self.eat(&Tok::Comma) {
                return Ok(o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Statement {
        let v = parse_batch(s).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.into_iter().next().unwrap().stmt
    }

    fn err(s: &str) -> SqlError {
        parse_batch(s).unwrap_err()
    }

    #[test]
    fn backup_full_options() {
        let s = one(
            "backup database [My DB] to virtual_device = N'{A-B}', VIRTUAL_DEVICE='{A-B}1' \
             with FORMAT, INIT, CHECKSUM, BLOCKSIZE = 65536, BUFFERCOUNT=20, \
             MAXTRANSFERSIZE=1048576, NAME = N'n', DESCRIPTION='d', STATS = 5, COPY_ONLY",
        );
        let Statement::Backup {
            target,
            database,
            devices,
            options,
        } = s
        else {
            panic!()
        };
        assert_eq!(target, Target::Database);
        assert_eq!(database, "My DB");
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[1].name, "{A-B}1");
        assert_eq!(devices[0].kind, DeviceKind::VirtualDevice);
        assert!(options.format && options.init && options.copy_only);
        assert_eq!(options.checksum, Some(true));
        assert_eq!(options.block_size, Some(65536));
        assert_eq!(options.buffer_count, Some(20));
        assert_eq!(options.max_transfer_size, Some(1 << 20));
        assert_eq!(options.name.as_deref(), Some("n"));
        assert_eq!(options.description.as_deref(), Some("d"));
        assert_eq!(options.stats, Some(5));
    }

    #[test]
    fn backup_log_and_diff() {
        let s = one("BACKUP LOG \"db\" TO VIRTUAL_DEVICE='x' WITH NO_CHECKSUM, STATS");
        let Statement::Backup {
            target, options, ..
        } = s
        else {
            panic!()
        };
        assert_eq!(target, Target::Log);
        assert_eq!(options.checksum, Some(false));
        assert_eq!(options.stats, Some(10));
        let s = one("BACKUP DATABASE db TO VIRTUAL_DEVICE='x' WITH DIFFERENTIAL;");
        assert!(matches!(s, Statement::Backup { options, .. } if options.differential));
        assert_eq!(
            err("BACKUP LOG db TO VIRTUAL_DEVICE='x' WITH DIFFERENTIAL").number(),
            155
        );
        assert_eq!(
            err("BACKUP DATABASE db TO VIRTUAL_DEVICE='x' WITH DIFFERENTIAL, COPY_ONLY").number(),
            3031
        );
    }

    #[test]
    fn stop_points() {
        assert_eq!(parse_datetime("1970-01-01 00:00:01"), Some(1000));
        assert_eq!(
            parse_datetime("2024-03-01T12:34:56.789"),
            Some(1_709_296_496_789)
        );
        assert_eq!(
            parse_datetime("2024-03-01 12:34:56.7"),
            Some(1_709_296_496_700)
        );
        assert_eq!(parse_datetime("2024-03-01"), Some(1_709_251_200_000));
        for bad in [
            "2024-13-01",
            "yesterday",
            "2024-03-01 25:00:00",
            "2024-03-01 1:2:3:4",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
        let stop = |sql: &str| match one(sql) {
            Statement::Restore { options, .. } => options.stop,
            s => panic!("{s:?}"),
        };
        assert_eq!(
            stop("RESTORE LOG db FROM VIRTUAL_DEVICE='a' WITH NORECOVERY, STOPAT = '2024-03-01 00:00:00'"),
            Some(StopPoint::At(1_709_251_200_000))
        );
        assert_eq!(
            stop("RESTORE LOG db FROM VIRTUAL_DEVICE='a' WITH STOPBEFOREMARK = 'lsn:20000000001600001'"),
            Some(StopPoint::BeforeMark(20000000001600001))
        );
        assert_eq!(
            stop("RESTORE LOG db FROM VIRTUAL_DEVICE='a' WITH STOPATMARK = 'lsn:5' AFTER '2024-01-01'"),
            Some(StopPoint::AtMark(5))
        );
        assert_eq!(
            err("RESTORE LOG db FROM VIRTUAL_DEVICE='a' WITH STOPAT = 'x'").number(),
            241
        );
        assert_eq!(
            err("RESTORE LOG db FROM VIRTUAL_DEVICE='a' WITH STOPATMARK = 'mymark'").number(),
            4308
        );
    }

    #[test]
    fn restore_forms() {
        let s = one(
            "RESTORE DATABASE db2 FROM VIRTUAL_DEVICE='a' WITH REPLACE, NORECOVERY, \
             MOVE N'db' TO N'/x/db2.mdf', MOVE 'db_log' TO '/x/db2_log.ldf', STATS=10, CHECKSUM",
        );
        let Statement::Restore {
            target,
            database,
            devices,
            options,
        } = s
        else {
            panic!()
        };
        assert_eq!(target, Target::Database);
        assert_eq!(database, "db2");
        assert_eq!(devices.len(), 1);
        assert!(options.replace);
        assert!(!options.recovers());
        assert_eq!(options.moves.len(), 2);
        assert_eq!(options.moves[1], ("db_log".into(), "/x/db2_log.ldf".into()));
        let s = one("RESTORE LOG db FROM VIRTUAL_DEVICE='a'");
        assert!(
            matches!(s, Statement::Restore { target: Target::Log, options, .. } if options.recovers())
        );
        let s = one("RESTORE DATABASE db WITH RECOVERY");
        assert!(matches!(s, Statement::Restore { devices, .. } if devices.is_empty()));
        for (sql, kind) in [
            (
                "RESTORE HEADERONLY FROM VIRTUAL_DEVICE='a'",
                InfoKind::HeaderOnly,
            ),
            (
                "restore filelistonly from virtual_device='a'",
                InfoKind::FileListOnly,
            ),
            (
                "RESTORE VERIFYONLY FROM VIRTUAL_DEVICE='a' WITH CHECKSUM",
                InfoKind::VerifyOnly,
            ),
        ] {
            assert!(matches!(one(sql), Statement::RestoreInfo { kind: k, .. } if k == kind));
        }
        assert_eq!(
            err("RESTORE DATABASE db FROM VIRTUAL_DEVICE='a' WITH RECOVERY, NORECOVERY").number(),
            3031
        );
        assert_eq!(
            err("RESTORE HEADERONLY FROM VIRTUAL_DEVICE='a' WITH REPLACE").number(),
            155
        );
    }

    #[test]
    fn several_statements() {
        let v = parse_batch(
            "BACKUP DATABASE a TO VIRTUAL_DEVICE='x'\nRESTORE VERIFYONLY FROM VIRTUAL_DEVICE='y';;\n\nBACKUP LOG a TO VIRTUAL_DEVICE='z';",
        )
        .unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v.iter().map(|l| l.line).collect::<Vec<_>>(), vec![1, 2, 4]);
    }

    #[test]
    fn syntax_errors_like_sql_server() {
        let e = err("SELEC 1");
        assert_eq!(
            e.to_string(),
            "Msg 102, Level 15, State 1, Line 1\nIncorrect syntax near 'SELEC'."
        );
        let e = err("BACKUP DATABASE db\nTO VIRTUAL_DEVICE 'x'");
        assert_eq!(
            e.to_string(),
            "Msg 102, Level 15, State 1, Line 2\nIncorrect syntax near 'x'."
        );
        let e = err("BACKUP DATABASE db TO VIRTUAL_DEVICE='x' WITH");
        assert_eq!(e.number(), 156);
        assert_eq!(
            e.messages[0].text,
            "Incorrect syntax near the keyword 'WITH'."
        );
        let e = err("BACKUP DATABASE FROM");
        assert_eq!(e.number(), 156);
        let e = err("BACKUP DATABASE db TO VIRTUAL_DEVICE='x' WITH FOO");
        assert_eq!(
            e.to_string(),
            "Msg 155, Level 15, State 1, Line 1\n'FOO' is not a recognized BACKUP option."
        );
        let e = err("BACKUP DATABASE db TO VIRTUAL_DEVICE='x' WITH BLOCKSIZE=1000");
        assert_eq!(e.number(), 3217);
        let e = err("BACKUP DATABASE db TO VIRTUAL_DEVICE='x' WITH MAXTRANSFERSIZE=100000");
        assert_eq!(e.number(), 3217);
        let e = err("BACKUP DATABASE @db TO VIRTUAL_DEVICE='x'");
        assert_eq!(e.number(), 137);
        let e = err("BACKUP DATABASE db TO VIRTUAL_DEVICE='x' extra");
        assert_eq!(e.number(), 102);
        let e = err("RESTORE DATABASE db");
        assert_eq!(e.number(), 102);
        // SELECT of constants is a session statement now; anything with FROM is not.
        let e = err("SELECT 1 FROM t");
        assert_eq!(e.number(), 156);
    }

    #[test]
    fn session_statements() {
        assert_eq!(
            one("set nocount on"),
            Statement::Session(Session::NoCount(true))
        );
        assert_eq!(
            one("SET NOCOUNT OFF"),
            Statement::Session(Session::NoCount(false))
        );
        assert_eq!(
            one("USE [My DB]"),
            Statement::Session(Session::Use("My DB".into()))
        );
        assert_eq!(
            one("PRINT N'hello'"),
            Statement::Session(Session::Print("hello".into()))
        );
        assert_eq!(
            one("SELECT @@version, SERVERPROPERTY('ProductVersion') AS v, 1 one"),
            Statement::Session(Session::Select(vec![
                (SelectItem::Global("VERSION".into()), None),
                (
                    SelectItem::ServerProperty("ProductVersion".into()),
                    Some("v".into())
                ),
                (SelectItem::Number(1), Some("one".into())),
            ]))
        );
        assert_eq!(err("SET BOGUS ON").number(), 195);
        assert_eq!(err("SET NOCOUNT").number(), 102);
        assert_eq!(
            parse_batch("SET NOCOUNT ON; USE demo; PRINT 'x'")
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn parameters_bind_as_literals_never_as_text() {
        let p = |n: &str, v: Param| (n.to_string(), v);
        let params = vec![
            p("@device", Param::Str("dev'; SHUTDOWN --".into())),
            p("DB", Param::Str("sales".into())),
            p("@stats", Param::Int(10)),
        ];
        let s = parse_batch_with(
            "BACKUP DATABASE @db TO VIRTUAL_DEVICE = @Device WITH STATS = @stats",
            &params,
        )
        .unwrap();
        let Statement::Backup {
            database,
            devices,
            options,
            ..
        } = &s[0].stmt
        else {
            panic!("{s:?}")
        };
        assert_eq!(database, "sales");
        assert_eq!(devices[0].name, "dev'; SHUTDOWN --");
        assert_eq!(options.stats, Some(10));
        // An unbound (or NULL) variable is still SQL Server's 137.
        let e = parse_batch_with(
            "BACKUP DATABASE x TO VIRTUAL_DEVICE = @other",
            &[p("@x", Param::Null)],
        )
        .unwrap_err();
        assert_eq!(e.number(), 137);
    }
}
