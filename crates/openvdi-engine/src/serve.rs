//! The engine behind a TDS endpoint (`openvdi-engine serve`): the
//! [`openvdi_tds::Backend`] that runs each request with
//! [`Engine::execute_with_params`] under the connection's [`Cancel`] token, and
//! turns its outputs into TDS items — messages with their number, state, class
//! and line, result sets with their column types, and the database change a
//! `USE` makes (ENVCHANGE before its 5701, as SQL Server sends them).

use openvdi_tds::{Backend, ColType, Column, Item, Msg, Reply, Request, Table, Value};

use crate::{mtf_io, Cancel, ColumnType, Engine, Message, Output, Param};

/// The engine as a TDS backend.
#[derive(Clone, Debug)]
pub struct EngineBackend {
    engine: Engine,
}

impl EngineBackend {
    /// Serve `engine`'s data directory.
    pub fn new(engine: Engine) -> EngineBackend {
        EngineBackend { engine }
    }
}

fn col_type(t: ColumnType) -> ColType {
    match t {
        ColumnType::NVarChar => ColType::NVarChar,
        ColumnType::TinyInt => ColType::TinyInt,
        ColumnType::SmallInt => ColType::SmallInt,
        ColumnType::Int => ColType::Int,
        ColumnType::BigInt => ColType::BigInt,
        ColumnType::Bit => ColType::Bit,
        ColumnType::DateTime => ColType::DateTime,
        ColumnType::Numeric(p, s) => ColType::Numeric(p, s),
        ColumnType::UniqueIdentifier => ColType::UniqueIdentifier,
    }
}

fn msg(m: &Message) -> Msg {
    Msg {
        number: m.number,
        state: m.state,
        class: m.severity,
        line: m.line,
        text: m.text.clone(),
    }
}

/// The database a 5701 "Changed database context to 'X'." names.
fn changed_to(m: &Message) -> Option<String> {
    if m.number != 5701 {
        return None;
    }
    let rest = m.text.strip_prefix("Changed database context to '")?;
    Some(rest.strip_suffix("'.")?.to_string())
}

impl Backend for EngineBackend {
    type Token = Cancel;

    fn new_token(&self) -> Cancel {
        Cancel::new()
    }

    fn cancel(&self, token: &Cancel) {
        token.cancel();
    }

    fn reset(&self, token: &Cancel) {
        token.reset();
    }

    fn execute(&self, token: &Cancel, req: &Request) -> Reply {
        let params: Vec<(String, Param)> = req
            .params
            .iter()
            .map(|(n, v)| {
                let p = match v {
                    Value::Null => Param::Null,
                    Value::Int(i) => Param::Int(*i),
                    Value::Str(s) => Param::Str(s.clone()),
                };
                (n.clone(), p)
            })
            .collect();
        let engine = self.engine.clone().with_cancel(token.clone());
        let run = engine.execute_with_params(&req.sql, &params);
        let mut items = Vec::new();
        let push_msg = |items: &mut Vec<Item>, m: &Message| {
            if let Some(db) = changed_to(m) {
                items.push(Item::Database(db));
            }
            items.push(Item::Message(msg(m)));
        };
        for o in &run.outputs {
            match o {
                Output::Message(m) => push_msg(&mut items, m),
                Output::ResultSet(rs) => items.push(Item::Table(Table {
                    columns: rs
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, name)| Column {
                            name: name.clone(),
                            ty: col_type(rs.column_type(i)),
                        })
                        .collect(),
                    rows: rs.rows.clone(),
                })),
            }
        }
        if let Some(e) = &run.error {
            for m in e.info.iter().chain(&e.messages) {
                push_msg(&mut items, m);
            }
        }
        Reply {
            items,
            failed: run.error.is_some(),
        }
    }

    fn server_name(&self) -> String {
        self.engine.server_name().to_string()
    }

    fn version(&self) -> (u8, u8, u16) {
        (
            mtf_io::SOFTWARE_MAJOR as u8,
            mtf_io::SOFTWARE_MINOR as u8,
            mtf_io::SOFTWARE_BUILD as u16,
        )
    }

    fn database_exists(&self, name: &str) -> bool {
        ["master", "msdb", "model", "tempdb"]
            .iter()
            .any(|d| d.eq_ignore_ascii_case(name))
            || (crate::db::validate_name(name).is_ok() && self.engine.dir().exists(name))
    }
}
