//! The embedded engine: openvdi-engine running in this process, on its own thread,
//! against a data directory. The default, so one command runs a real backup on a
//! fresh machine: a backup of `demo` on a data directory that holds no database
//! creates the sample database `demo` first (nothing else ever does).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use openvdi_engine::{Output, Report};

use crate::engine::{Engine, Outcome, Table};
use crate::manifest::Chain;
use crate::pipeline::Stop;

/// Size of the sample database `demo`.
pub const DEMO_SIZE: u64 = 64 << 20;
pub const DEMO_NAME: &str = "demo";

#[derive(Debug)]
pub struct Embedded {
    engine: openvdi_engine::Engine,
}

pub fn open(
    data_dir: &Path,
    server: Option<String>,
    mode: crate::progress::Mode,
    backing_up: Option<&str>,
) -> Result<Arc<dyn Engine>> {
    let mut engine = openvdi_engine::Engine::open(data_dir)?;
    if let Some(s) = server {
        engine = engine.with_server_name(s);
    }
    let wants_demo = backing_up.is_some_and(|d| d.eq_ignore_ascii_case(DEMO_NAME));
    if wants_demo && engine.list_databases()?.is_empty() {
        engine
            .create_database(DEMO_NAME, DEMO_SIZE)
            .with_context(|| format!("creating the sample database {DEMO_NAME}"))?;
        match mode {
            crate::progress::Mode::Off => {}
            crate::progress::Mode::Json => eprintln!(
                "{}",
                serde_json::json!({"event": "created_database", "database": DEMO_NAME,
                    "bytes": DEMO_SIZE, "data_dir": data_dir})
            ),
            _ => eprintln!(
                "openvdi: created the sample database `{DEMO_NAME}` ({} MiB) in {}",
                DEMO_SIZE >> 20,
                data_dir.display()
            ),
        }
    }
    Ok(Arc::new(Embedded { engine }))
}

impl Engine for Embedded {
    fn execute(&self, sql: &str, _stop: &Stop) -> Outcome {
        // An abort of the set (Ctrl-C, a storage failure) reaches the engine's device
        // threads through VDI itself, so the statement ends on its own.
        let run = self.engine.execute_detailed(sql);
        let mut messages = Vec::new();
        let mut tables = Vec::new();
        for o in &run.outputs {
            match o {
                Output::Message(m) => messages.push(m.to_string()),
                Output::ResultSet(rs) => tables.push(Table {
                    columns: rs.columns.clone(),
                    rows: rs.rows.clone(),
                }),
            }
        }
        if let Some(e) = &run.error {
            messages.push(e.to_string());
        }
        let chain = run.reports.iter().find_map(|r| match r {
            Report::Backup(b) => Some(Chain {
                first_lsn: Some(b.first_lsn.to_string()),
                last_lsn: Some(b.last_lsn.to_string()),
                checkpoint_lsn: Some(b.checkpoint_lsn.to_string()),
                database_backup_lsn: Some(b.database_backup_lsn.to_string()),
                differential_base_lsn: None,
                differential_base_guid: b.differential_base_guid.clone(),
                backup_set_guid: Some(b.backup_set_guid.clone()),
                parent: None,
            }),
            Report::Restore(_) => None,
        });
        Outcome {
            ok: run.error.is_none(),
            messages,
            tables,
            chain,
        }
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn server_name(&self) -> Option<String> {
        Some(self.engine.server_name().to_string())
    }

    fn size_hint(&self, database: &str) -> Option<u64> {
        let i = self.engine.database_info(database).ok()?;
        Some((i.data_pages + i.log_pages) * 8192)
    }
}
