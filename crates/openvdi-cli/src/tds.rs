//! The engine is a real SQL Server, reached over TDS with `tiberius` (cargo feature
//! `tds`). The statement runs on its own connection, as VDI requires (the BACKUP
//! blocks until the transfer is over), while this process serves the devices.
//!
//! Only the outcome is available here: tiberius reports errors (with SQL Server's
//! message) but not informational messages, so the manifest's completion message is
//! a fixed text and the chain is read from `msdb` afterwards by the DBA if needed.

use anyhow::Result;
use tiberius::{ColumnData, Config};
use tokio_util::compat::TokioAsyncWriteCompatExt;

use crate::engine::{Engine, Outcome, Table};
use crate::exit::{err, Code};
use crate::pipeline::Stop;

#[derive(Debug)]
pub struct Tds {
    config: Config,
    server: Option<String>,
}

impl Tds {
    /// From an ADO.NET connection string.
    pub fn new(ado: &str, server: Option<String>) -> Result<Tds> {
        let config =
            Config::from_ado_string(ado).map_err(|e| err(Code::Usage, format!("--tds: {e}")))?;
        Ok(Tds { config, server })
    }
}

fn text(c: ColumnData<'_>) -> Option<String> {
    match c {
        ColumnData::U8(v) => v.map(|v| v.to_string()),
        ColumnData::I16(v) => v.map(|v| v.to_string()),
        ColumnData::I32(v) => v.map(|v| v.to_string()),
        ColumnData::I64(v) => v.map(|v| v.to_string()),
        ColumnData::F32(v) => v.map(|v| v.to_string()),
        ColumnData::F64(v) => v.map(|v| v.to_string()),
        ColumnData::Bit(v) => v.map(|v| u8::from(v).to_string()),
        ColumnData::String(v) => v.map(|v| v.into_owned()),
        ColumnData::Guid(v) => v.map(|v| v.to_string().to_uppercase()),
        ColumnData::Numeric(v) => v.map(|v| v.to_string()),
        ColumnData::Binary(v) => v.map(|v| v.iter().map(|b| format!("{b:02X}")).collect()),
        other => Some(format!("{other:?}")),
    }
}

impl Engine for Tds {
    fn execute(&self, sql: &str, _stop: &Stop) -> Outcome {
        let config = self.config.clone();
        let r = crate::storage::object::runtime().block_on(async move {
            let tcp = tokio::net::TcpStream::connect(config.get_addr()).await?;
            tcp.set_nodelay(true)?;
            let mut client = tiberius::Client::connect(config, tcp.compat_write()).await?;
            let results = client.simple_query(sql).await?.into_results().await?;
            Ok::<_, anyhow::Error>(results)
        });
        match r {
            Ok(sets) => Outcome {
                ok: true,
                messages: vec![format!("{} completed on the SQL Server", first_word(sql))],
                tables: sets
                    .into_iter()
                    .map(|rows| Table {
                        columns: rows
                            .first()
                            .map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
                            .unwrap_or_default(),
                        rows: rows
                            .into_iter()
                            .map(|r| r.into_iter().map(text).collect())
                            .collect(),
                    })
                    .collect(),
                chain: None,
            },
            Err(e) => Outcome {
                ok: false,
                messages: vec![format!("{e:#}")],
                ..Default::default()
            },
        }
    }

    fn kind(&self) -> &'static str {
        "tds"
    }

    fn server_name(&self) -> Option<String> {
        self.server.clone()
    }
}

fn first_word(sql: &str) -> &str {
    sql.split_whitespace().next().unwrap_or("statement")
}
