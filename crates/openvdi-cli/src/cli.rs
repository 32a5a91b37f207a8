//! The command line (clap derive). Parsing only: `config` merges these with the
//! environment and the TOML file into a validated plan before any I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::codec::Codec;
use crate::manifest::Kind;

#[derive(Debug, Parser)]
#[command(
    name = "openvdi",
    version,
    about = "Back up and restore SQL Server databases through the Virtual Device Interface",
    long_about = "Back up and restore SQL Server databases through the Virtual Device Interface: \
striped, compressed, checksummed, to a local directory or object storage (S3, Azure, GCS).\n\n\
Exit codes: 0 ok, 1 failure, 2 usage, 3 verification failed, 10 repository or backup missing, \
11 repository locked, 12 wrong password or key (or none given), 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Repository: a directory, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix
    /// (credentials may be given as s3://KEY:SECRET@bucket or ?secret_access_key=…;
    /// they are never printed)
    /// [default: $XDG_DATA_HOME/openvdi-repo or ~/.local/share/openvdi-repo].
    #[arg(long, global = true, env = "OPENVDI_REPO")]
    pub repo: Option<String>,
    /// Optional TOML configuration file [default: ~/.config/openvdi/config.toml if present].
    #[arg(long, global = true, env = "OPENVDI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Machine-readable output: a JSON result on stdout, JSON-lines progress on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Password of an encrypted repository: the first line of FILE (or set
    /// OPENVDI_PASSWORD; on a terminal openvdi asks). Never given as a plain flag.
    #[arg(
        long,
        global = true,
        env = "OPENVDI_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// Key file of an encrypted repository (instead of a password).
    #[arg(long, global = true, env = "OPENVDI_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Which engine runs the T-SQL, and which VDI library moves the bytes.
#[derive(Debug, Args, Default)]
pub struct EngineArgs {
    /// Data directory of the embedded engine (the default engine) [default: $XDG_DATA_HOME/openvdi or ~/.local/share/openvdi].
    #[arg(long, global = true, env = "OPENVDI_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use an external sqlcmd-style command instead of the embedded engine; `{sql}` is
    /// replaced by the statement, e.g. 'openvdi-sqlcmd -S . -b -Q {sql}'.
    #[arg(long, global = true, env = "OPENVDI_ENGINE_CMD")]
    pub engine_cmd: Option<String>,
    /// Use a real SQL Server over TDS, e.g.
    /// 'server=tcp:127.0.0.1,1433;user=sa;TrustServerCertificate=true'. The password:
    /// OPENVDI_TDS_PASSWORD or --tds-password-file (safer), else `password=` in the
    /// string; it is never printed.
    #[arg(long, global = true, env = "OPENVDI_TDS")]
    pub tds: Option<String>,
    /// A file whose first line is the password of the --tds login.
    #[arg(long, global = true, env = "OPENVDI_TDS_PASSWORD_FILE")]
    pub tds_password_file: Option<PathBuf>,
    /// Load this libsqlvdi.so at run time instead of openvdi's own client half.
    #[arg(long, global = true, env = "OPENVDI_VDI_LIBRARY")]
    pub vdi_library: Option<PathBuf>,
    /// Which interface of --vdi-library to use: openvdi's C API (c), the C++ classes
    /// of Microsoft's vdi.h (cpp), or auto (c if exported, else cpp) [default: auto].
    #[arg(long, global = true, env = "OPENVDI_VDI_ABI", value_enum)]
    pub vdi_abi: Option<crate::vdi::Abi>,
    /// Server name used in object names [default: the engine's, else the host name].
    #[arg(long, global = true, env = "OPENVDI_SERVER")]
    pub server: Option<String>,
    /// Seconds to wait for the engine to open the virtual device set.
    #[arg(long, global = true, env = "OPENVDI_OPEN_TIMEOUT")]
    pub open_timeout: Option<u64>,
    /// Read the media set's password of backups made WITH MEDIAPASSWORD from this
    /// file (its first line), for inspect, import, restore and verify --engine. A
    /// file, not an argument, so it never shows in the process list.
    #[arg(
        long,
        global = true,
        env = "OPENVDI_MEDIA_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub media_password_file: Option<PathBuf>,
    /// Read the backup set's password of backups made WITH PASSWORD from this file
    /// (not the repository's password: that is --password-file).
    #[arg(
        long,
        global = true,
        env = "OPENVDI_BACKUP_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub backup_password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository (the default one is created by the first backup; any
    /// other location must be created on purpose).
    Init(InitArgs),
    /// Back up a database into the repository.
    Backup(BackupArgs),
    /// Restore a backup through the engine.
    Restore(RestoreArgs),
    /// List the backups in the repository.
    List(ListArgs),
    /// Verify a backup's checksums and MTF structure without restoring it.
    Verify(VerifyArgs),
    /// Show a backup's header and file list (also of plain .bak files).
    Inspect(InspectArgs),
    /// Write a backup's stripes as native .bak files.
    Export(ExportArgs),
    /// Take existing .bak files (the stripes of one backup) into the repository.
    Import(ImportArgs),
    /// Delete backups a retention policy does not keep (--keep-last, --keep-daily,
    /// --keep-weekly, --keep-monthly, --keep-within), whole chains at a time.
    Prune(PruneArgs),
    /// Delete one backup, unless other backups need it to restore.
    Forget(ForgetArgs),
    /// Remove every lock of an object-store repository (after a host crashed).
    Unlock,
    /// Manage the key slots of an encrypted repository (passwords, key files).
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a key slot: a new password (--new-password-file, OPENVDI_NEW_PASSWORD or a
    /// prompt) or a key file (--new-key-file; created with 32 random bytes if missing).
    Add(NewSecretArgs),
    /// Remove a key slot (never the last one).
    Remove {
        /// The slot's id (see `openvdi key list`).
        slot: u32,
    },
    /// List the key slots.
    List,
    /// Change the password that opened the repository: adds the new one, removes
    /// the slot that was used.
    Passwd(NewSecretArgs),
}

#[derive(Debug, Args)]
pub struct NewSecretArgs {
    /// The new password: the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "new_key_file")]
    pub new_password_file: Option<PathBuf>,
    /// A key file for the new slot (created with 32 random bytes, mode 0600, if
    /// it does not exist).
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  openvdi backup sales --stripes 4 --compress zstd:3 --checksum\n  \
openvdi backup sales --type log --name 'hourly log'\n  openvdi backup sales --copy-only --description 'before the upgrade'"
)]
pub struct BackupArgs {
    /// Database to back up.
    pub database: String,
    /// full, diff or log.
    #[arg(long = "type", value_name = "TYPE", default_value = "full")]
    pub kind: Kind,
    /// Number of stripes (virtual devices), 1..=64.
    #[arg(long, env = "OPENVDI_STRIPES")]
    pub stripes: Option<u32>,
    /// zstd[:LEVEL], lz4 or none.
    #[arg(long, env = "OPENVDI_COMPRESS")]
    pub compress: Option<Codec>,
    /// BUFFERCOUNT passed to BACKUP.
    #[arg(long, env = "OPENVDI_BUFFERCOUNT")]
    pub buffercount: Option<u32>,
    /// MAXTRANSFERSIZE passed to BACKUP (bytes, multiple of 64 KiB, ≤ 4 MiB).
    #[arg(long, env = "OPENVDI_MAXTRANSFERSIZE")]
    pub maxtransfersize: Option<u32>,
    /// BLOCKSIZE passed to BACKUP (512..=65536, power of two).
    #[arg(long, env = "OPENVDI_BLOCKSIZE")]
    pub blocksize: Option<u32>,
    /// Compression worker threads, ≥ 1 [default: number of CPUs].
    #[arg(long, env = "OPENVDI_WORKERS")]
    pub workers: Option<usize>,
    /// WITH CHECKSUM: the engine verifies page checksums as it reads and stores a
    /// checksum of the backup.
    #[arg(long)]
    pub checksum: bool,
    /// WITH COPY_ONLY: a backup outside the regular sequence (a copy-only full is no
    /// differential base; a copy-only log does not truncate the log).
    #[arg(long)]
    pub copy_only: bool,
    /// WITH NAME = '…': the backup set's name (≤ 128 characters).
    #[arg(long, value_name = "TEXT")]
    pub name: Option<String>,
    /// WITH DESCRIPTION = '…' (≤ 255 characters).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Create it even in a folder or prefix that already holds other objects.
    #[arg(long)]
    pub force: bool,
    /// Encrypt and authenticate everything stored (the default): a random master
    /// key in key slots opened by a password (argon2id) or a key file (--key-file,
    /// created if missing).
    #[arg(long, conflicts_with = "no_encryption")]
    pub encryption: bool,
    /// Store backups in the clear (anyone who can read the storage can read the
    /// databases).
    #[arg(long)]
    pub no_encryption: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  openvdi restore latest:sales --as sales_copy\n  \
openvdi restore sales --at '2024-03-01 14:30:00' --as sales_before --dry-run\n  \
openvdi restore sales --at-lsn 20000000123400001 --replace"
)]
pub struct RestoreArgs {
    /// Backup id, `latest` or `latest:DATABASE`; with --at / --at-lsn, the DATABASE.
    pub backup: String,
    /// Point in time (UTC): 'YYYY-MM-DD HH:MM:SS[.fff]'. Restores the newest full
    /// before it, the newest usable diff and the logs up to it, the last with STOPAT.
    #[arg(long, value_name = "TIME", conflicts_with = "at_lsn")]
    pub at: Option<String>,
    /// Restore to just before this LSN (STOPBEFOREMARK = 'lsn:LSN').
    #[arg(long, value_name = "LSN")]
    pub at_lsn: Option<String>,
    /// With --at/--at-lsn: the server whose database it is, when several servers'
    /// backups hold a database of that name.
    #[arg(long, value_name = "SERVER")]
    pub from_server: Option<String>,
    /// With --at/--at-lsn: print the plan and the T-SQL, restore nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Restore under another database name.
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// MOVE a logical file to a new path (repeatable): LOGICAL=PATH.
    #[arg(long = "move", value_name = "LOGICAL=PATH")]
    pub moves: Vec<String>,
    /// Leave the database restoring (NORECOVERY) so later diff/log backups can follow.
    #[arg(long)]
    pub norecovery: bool,
    /// Overwrite an existing database (REPLACE). The backup is verified end to end
    /// first (every chunk, the whole-stripe blake3, the MTF walk), so a damaged
    /// backup never replaces a live database; that costs one extra read of it.
    #[arg(long)]
    pub replace: bool,
    /// With --replace: skip the verification pass before the restore (the restore
    /// still checks every chunk as it goes, but a damage found half-way leaves the
    /// database RESTORING).
    #[arg(long)]
    pub no_verify: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this database.
    #[arg(long)]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id, `latest` or `latest:DATABASE`; omit with --all.
    pub backup: Option<String>,
    /// Verify every backup.
    #[arg(long)]
    pub all: bool,
    /// Also have the engine run RESTORE VERIFYONLY over VDI.
    #[arg(long)]
    pub engine: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A backup id, or .bak files (the stripes of one backup, in any order).
    #[arg(required = true)]
    pub target: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Backup id, `latest` or `latest:DATABASE`.
    pub backup: String,
    /// Directory for the .bak files (created if missing).
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The .bak files of one backup (one per stripe).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// zstd[:LEVEL], lz4 or none.
    #[arg(long, env = "OPENVDI_COMPRESS")]
    pub compress: Option<Codec>,
    /// Database name, when the files' metadata does not say (or to override it).
    #[arg(long)]
    pub database: Option<String>,
    /// Backup type (full, diff, log), overriding the files' metadata.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<Kind>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  openvdi prune --keep-daily 7 --keep-weekly 4 --keep-monthly 12\n  \
openvdi prune --keep-within 14d --database sales --json\n  openvdi prune --keep-last 2 --confirm"
)]
pub struct PruneArgs {
    /// Keep the newest N full backups (per server and database).
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep the newest full of each of the last D days (UTC) that have one.
    #[arg(long, value_name = "D")]
    pub keep_daily: Option<usize>,
    /// Keep the newest full of each of the last W ISO weeks that have one.
    #[arg(long, value_name = "W")]
    pub keep_weekly: Option<usize>,
    /// Keep the newest full of each of the last M months that have one.
    #[arg(long, value_name = "M")]
    pub keep_monthly: Option<usize>,
    /// Keep every full taken within DURATION of the database's newest backup, and
    /// the full that window restores from: 36h, 14d, 8w.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Only this database.
    #[arg(long)]
    pub database: Option<String>,
    /// Only this server's databases.
    #[arg(long = "for-server", value_name = "SERVER")]
    pub for_server: Option<String>,
    /// Really delete (otherwise only show what would go).
    #[arg(long)]
    pub confirm: bool,
    /// Unfinished uploads (S3 multipart uploads, local partial files) older than this
    /// are aborted: 90s, 30m, 24h, 7d [default: 24h, or `upload_grace` in the config].
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub upload_grace: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  openvdi forget srv_sales_LOG_20240301_120000")]
pub struct ForgetArgs {
    /// The backup id (see `openvdi list`).
    pub backup: String,
    /// Only say what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}
