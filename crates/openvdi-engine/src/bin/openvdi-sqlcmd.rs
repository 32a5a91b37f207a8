//! `openvdi-sqlcmd`: a `sqlcmd`-compatible front end that executes with the openvdi
//! engine in this process (see `openvdi_engine::sqlcmd`). Install it as `sqlcmd`
//! for VDI clients that shell out to sqlcmd.

use std::process::ExitCode;

use clap::Parser;
use openvdi_engine::sqlcmd::{run, SqlcmdArgs};
use openvdi_engine::{db, Engine, FaultPlan};

fn main() -> ExitCode {
    let args = SqlcmdArgs::parse();
    let dir = args.data_dir.clone().unwrap_or_else(db::default_data_dir);
    let plan = match args.fault.as_deref().map(FaultPlan::parse).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            eprintln!("Sqlcmd: Error: bad OPENVDI_FAULT: {e}");
            return ExitCode::from(1);
        }
    };
    let engine = match Engine::open(&dir) {
        Ok(e) => e.with_fault(plan),
        Err(e) => {
            eprintln!(
                "Sqlcmd: Error: cannot open data directory {}: {e}",
                dir.display()
            );
            return ExitCode::from(1);
        }
    };
    let mut out: Box<dyn std::io::Write> = match &args.output {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("Sqlcmd: '{}': {e}", p.display());
                return ExitCode::from(1);
            }
        },
        None => Box::new(std::io::stdout().lock()),
    };
    let mut err = std::io::stderr().lock();
    let mut stdin = std::io::stdin().lock();
    let code = run(&args, &engine, &mut out, &mut err, &mut stdin);
    let _ = out.flush();
    ExitCode::from(code.clamp(0, 255) as u8)
}
