//! Bounded fuzz of what the engine reads from a backup file: damaged and foreign
//! files — the real fixtures and one of the engine's own backups with flipped
//! bytes, truncations, spliced and repeated blocks, huge or random size and length
//! fields (block and stream headers re-checksummed, so the damage gets past the
//! XOR checks to the code behind them), metadata records with hostile lengths and
//! sizes, password fields, and random files — fed through RESTORE HEADERONLY,
//! VERIFYONLY WITH CHECKSUM and RESTORE (from `DISK =`).
//!
//! Every case must end, within its own deadline, in success or in SQL Server
//! messages (a number, severity 16, and 3013 last), never in a panic (a device
//! thread's panic would surface as "a device thread panicked": that fails too);
//! whatever a RESTORE creates lies inside the case's own data directory, and
//! nothing appears in or changes in the crate directory or the fixtures.
//!
//! Knobs (environment):
//! * `OPENVDI_FILE_FUZZ_SEED`: the seed (default: from the clock; always printed).
//! * `OPENVDI_FILE_FUZZ_CASES`: at most this many cases (default 60).
//! * `OPENVDI_FILE_FUZZ_SECS`: stop starting cases after this long (default 25).
//! * `OPENVDI_FILE_FUZZ_CASE`: run only this case number (replay one failure).
//! * `OPENVDI_FILE_FUZZ_CASE_SECS`: the per-case deadline (default 120).
//!
//! Case `n` of seed `s` depends on `s` and `n` only, so a failure printed as
//! `seed S case N` replays with `OPENVDI_FILE_FUZZ_SEED=S OPENVDI_FILE_FUZZ_CASE=N`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use openvdi_engine::{Engine, SqlError};

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, case: u64) -> Rng {
        let mut r = Rng(seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
        for _ in 0..4 {
            r.next();
        }
        r
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A source file: its bytes and where its block and stream headers are.
struct Source {
    name: String,
    bytes: Vec<u8>,
    blocks: Vec<usize>,
    streams: Vec<usize>,
    is_log: bool,
    /// Restored first (unchanged, WITH NORECOVERY), so a differential or log
    /// reaches the code that applies it instead of stopping at 3117.
    base: Vec<String>,
    /// The other stripe of a striped backup, fed unchanged beside this one.
    partner: Option<String>,
}

fn xor16(b: &[u8]) -> u16 {
    b.chunks(2).fold(0, |a, w| {
        a ^ u16::from_le_bytes([w[0], *w.get(1).unwrap_or(&0)])
    })
}

fn is_tag(t: &[u8]) -> bool {
    t.iter()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn fix_block_checksum(b: &mut [u8], at: usize) {
    if at + 52 <= b.len() {
        let c = xor16(&b[at..at + 50]);
        b[at + 50..at + 52].copy_from_slice(&c.to_le_bytes());
    }
}

fn fix_stream_checksum(b: &mut [u8], at: usize) {
    if at + 22 <= b.len() {
        let c = xor16(&b[at..at + 20]);
        b[at + 20..at + 22].copy_from_slice(&c.to_le_bytes());
    }
}

impl Source {
    fn new(name: &str, bytes: Vec<u8>) -> Source {
        let mut blocks = Vec::new();
        let mut streams = Vec::new();
        let mut at = 0;
        while at + 52 <= bytes.len() {
            let h = &bytes[at..at + 52];
            if is_tag(&h[..4]) && xor16(&h[..50]) == u16::from_le_bytes([h[50], h[51]]) {
                blocks.push(at);
            }
            at += 512;
        }
        let mut at = 0;
        while at + 22 <= bytes.len() {
            let h = &bytes[at..at + 22];
            if h[0].is_ascii_uppercase()
                && is_tag(&h[..4])
                && xor16(&h[..20]) == u16::from_le_bytes([h[20], h[21]])
            {
                streams.push(at);
            }
            at += 4;
        }
        let is_log = openvdi_engine::stream::read_head(&mut &bytes[..])
            .map(|m| m.kind == openvdi_engine::BackupKind::Log)
            .unwrap_or(false);
        Source {
            name: name.to_string(),
            bytes,
            blocks,
            streams,
            is_log,
            base: Vec::new(),
            partner: None,
        }
    }
}

/// A value for a size or length field: huge, just off, random, zero.
fn hostile_u64(r: &mut Rng, old: u64) -> u64 {
    match r.below(8) {
        0 => u64::MAX,
        1 => u64::MAX / 2 + r.next() % 4096,
        2 => 1 << (20 + r.below(44)),
        3 => old.wrapping_add(1 + r.next() % 16),
        4 => old.saturating_sub(1 + r.next() % 16),
        5 => 0,
        6 => old ^ (1 << r.below(64)),
        _ => r.next(),
    }
}

/// One mutation of `b`, described for the failure message.
fn mutate(r: &mut Rng, src: &Source, other: &Source, b: &mut Vec<u8>) -> String {
    if b.is_empty() {
        return "empty".into();
    }
    // Earlier mutations may have cut or moved things: only headers still inside.
    let blocks: Vec<usize> = src
        .blocks
        .iter()
        .copied()
        .filter(|&a| a + 64 <= b.len())
        .collect();
    let streams: Vec<usize> = src
        .streams
        .iter()
        .copied()
        .filter(|&a| a + 22 <= b.len())
        .collect();
    match r.below(13) {
        0 => {
            // Flipped bytes, mostly in the first 16 KiB (headers and metadata).
            let n = 1 + r.below(8);
            let span = if r.chance(3) {
                b.len()
            } else {
                b.len().min(16384)
            };
            for _ in 0..n {
                let i = r.below(span);
                b[i] ^= 1 << r.below(8);
            }
            format!("{n} bit flips in the first {span} bytes")
        }
        1 => {
            let cut = r.below(b.len());
            b.truncate(cut);
            format!("truncated at {cut}")
        }
        2 => {
            // Truncated at a block boundary: structurally clean up to there.
            let at = *blocks.get(r.below(blocks.len())).unwrap_or(&0);
            b.truncate(at.min(b.len()));
            format!("truncated at the block at {at}")
        }
        3 | 4 => {
            // A block header field changed, checksum repaired.
            let Some(&at) = blocks.get(r.below(blocks.len())) else {
                return "no blocks".into();
            };
            let what = match r.below(4) {
                0 => {
                    let v = hostile_u64(r, 0) as u16;
                    b[at + 8..at + 10].copy_from_slice(&v.to_le_bytes());
                    format!("first-stream offset {v}")
                }
                1 => {
                    let old = u64::from_le_bytes(b[at + 20..at + 28].try_into().unwrap());
                    let v = hostile_u64(r, old);
                    b[at + 20..at + 28].copy_from_slice(&v.to_le_bytes());
                    format!("format logical address {v}")
                }
                2 => {
                    let tags: [&[u8; 4]; 8] = [
                        b"SFMB", b"ESET", b"TAPE", b"SSET", b"MSDA", b"MSTL", b"MSCI", b"ZZZZ",
                    ];
                    let t = tags[r.below(tags.len())];
                    b[at..at + 4].copy_from_slice(t);
                    format!("block type {}", String::from_utf8_lossy(t))
                }
                _ => {
                    let i = at + 4 + r.below(46);
                    b[i] = r.next() as u8;
                    format!("header byte {i}")
                }
            };
            fix_block_checksum(b, at);
            format!("block at {at}: {what} (checksum repaired)")
        }
        5 | 6 => {
            // A stream's length changed, checksum repaired.
            let Some(&at) = streams.get(r.below(streams.len())) else {
                return "no streams".into();
            };
            let old = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap());
            let v = hostile_u64(r, old);
            b[at + 8..at + 16].copy_from_slice(&v.to_le_bytes());
            fix_stream_checksum(b, at);
            format!(
                "{} stream at {at}: length {old} -> {v} (checksum repaired)",
                String::from_utf8_lossy(&b[at..at + 4])
            )
        }
        7 => {
            // Block-specific bytes (after the common header, outside its checksum):
            // SFMB sizes, TAPE/SSET fields, MSTL log ranges, password fields.
            let Some(&at) = blocks.get(r.below(blocks.len())) else {
                return "no blocks".into();
            };
            let off = 52 + 4 * r.below(12);
            if at + off + 8 <= b.len() {
                let old = u64::from_le_bytes(b[at + off..at + off + 8].try_into().unwrap());
                let v = hostile_u64(r, old);
                b[at + off..at + off + 8].copy_from_slice(&v.to_le_bytes());
                format!("block at {at} +{off}: {old} -> {v}")
            } else {
                "block field past the end".into()
            }
        }
        8 => {
            // A metadata record (MQCI) with a hostile length or file size.
            let recs: Vec<usize> = [&b"SFIN"[..], b"SCIN", b"SFGI"]
                .iter()
                .flat_map(|t| {
                    b.windows(4)
                        .take(65536)
                        .enumerate()
                        .filter(|(_, w)| w == t)
                        .map(|(i, _)| i)
                        .collect::<Vec<_>>()
                })
                .collect();
            let Some(&at) = recs.get(r.below(recs.len())) else {
                return "no metadata records".into();
            };
            let off = [4usize, 0x18, 0x28, 0x30, 0x34, 0x60, 0x68][r.below(7)];
            if at + off + 8 <= b.len() {
                let old = u64::from_le_bytes(b[at + off..at + off + 8].try_into().unwrap());
                let v = if off == 4 || off >= 0x30 && off != 0x60 {
                    // u32 length / (u16 len, u16 offset) string pair.
                    (old & !0xffff_ffff) | (hostile_u64(r, old) & 0xffff_ffff)
                } else {
                    hostile_u64(r, old)
                };
                b[at + off..at + off + 8].copy_from_slice(&v.to_le_bytes());
                format!(
                    "{} record at {at} +{off:#x}: {old:#x} -> {v:#x}",
                    String::from_utf8_lossy(&b[at..at + 4])
                )
            } else {
                "metadata field past the end".into()
            }
        }
        9 => {
            // Spliced: blocks of another file over this one.
            let Some(&from) = other.blocks.get(r.below(other.blocks.len())) else {
                return "no donor blocks".into();
            };
            let len = (512 * (1 + r.below(64))).min(other.bytes.len() - from);
            let to = *blocks.get(r.below(blocks.len())).unwrap_or(&0);
            let end = (to + len).min(b.len());
            b.splice(to..end, other.bytes[from..from + len].iter().copied());
            format!("{len} bytes of {} at {from} spliced in at {to}", other.name)
        }
        10 => {
            // A run of blocks repeated, or removed.
            let i = r.below(blocks.len());
            let (Some(&a), Some(&z)) = (blocks.get(i), blocks.get(i + 1 + r.below(3))) else {
                return "no block run".into();
            };
            let z = z.min(b.len());
            if r.chance(2) {
                let run: Vec<u8> = b[a..z].to_vec();
                b.splice(z..z, run);
                format!("blocks {a}..{z} repeated")
            } else {
                b.drain(a..z);
                format!("blocks {a}..{z} removed")
            }
        }
        11 => {
            // Password fields set on a real-style TAPE or SSET block.
            let (alg, addr) = if r.chance(2) {
                (62, 76)
            } else {
                (1536 + 56, 1536 + 72)
            };
            if addr + 4 <= b.len() {
                let v = r.next();
                b[alg..alg + 2].copy_from_slice(&(v as u16).to_le_bytes());
                b[addr..addr + 4].copy_from_slice(&((v >> 16) as u32).to_le_bytes());
            }
            format!("password field at {alg}")
        }
        _ => {
            // Page data scribbled (checksums, page headers).
            let n = 1 + r.below(4);
            for _ in 0..n {
                let i = r.below(b.len());
                b[i] = r.next() as u8;
            }
            format!("{n} random bytes anywhere")
        }
    }
}

/// A foreign file: random bytes, or a real TAPE block followed by garbage.
fn foreign(r: &mut Rng, srcs: &[Source]) -> (Vec<u8>, String) {
    let cap = if r.chance(4) { 1 << 20 } else { 8192 };
    let n = r.below(cap);
    let mut v: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
    match r.below(4) {
        0 => (v, format!("{n} random bytes")),
        1 => {
            let s = &srcs[r.below(srcs.len())];
            let keep = (512 * (1 + r.below(8))).min(s.bytes.len());
            let mut head = s.bytes[..keep].to_vec();
            head.append(&mut v);
            (head, format!("{keep} bytes of {} then {n} random", s.name))
        }
        2 => {
            v.splice(0..0, b"MSSQLBAK".iter().copied());
            (v, "MSSQLBAK then random".into())
        }
        _ => {
            v.splice(0..0, b"TAPE".iter().copied());
            (v, "TAPE then random".into())
        }
    }
}

/// Files under `dir` (recursively) with their sizes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut m = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                _ => {
                    m.insert(p.clone(), e.metadata().map_or(0, |x| x.len()));
                }
            }
        }
    }
    m
}

/// What a statement ended in: "ok" or its first message number (and the text).
fn outcome(stmt: &str, r: Result<(), SqlError>) -> Result<(String, String), String> {
    match r {
        Ok(()) => Ok(("ok".into(), String::new())),
        Err(e) => {
            let text = e.to_string();
            if e.messages.is_empty() || e.number() == 0 {
                return Err(format!("{stmt}: an error without a message number: {text}"));
            }
            if text.contains("panicked") {
                return Err(format!("{stmt}: a panic behind the messages: {text}"));
            }
            if e.messages
                .iter()
                .any(|m| m.text.chars().any(char::is_control))
            {
                return Err(format!("{stmt}: control characters in a message: {text:?}"));
            }
            if e.messages.iter().any(|m| m.severity < 11) || !e.has(3013) {
                return Err(format!(
                    "{stmt}: not SQL Server's shape of a failure: {text}"
                ));
            }
            Ok((e.number().to_string(), text))
        }
    }
}

/// One case: the damaged file, what restores before it, what goes beside it.
struct Case {
    bytes: Vec<u8>,
    is_log: bool,
    /// Unchanged files restored first, WITH NORECOVERY.
    base: Vec<PathBuf>,
    /// An unchanged stripe fed beside the damaged one.
    partner: Option<PathBuf>,
}

/// Run one case's statements on a fresh data directory; Err names what broke.
fn run_case(root: &Path, n: u64, c: &Case, verbose: bool) -> Result<Vec<String>, String> {
    let dir = root.join(format!("case-{n}"));
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let file = dir.join("in.bak");
    std::fs::write(&file, &c.bytes).map_err(|e| e.to_string())?;
    let e = Engine::open(&data).map_err(|e| e.to_string())?;
    let mut from = format!("DISK = '{}'", file.display());
    if let Some(p) = &c.partner {
        from.push_str(&format!(", DISK = '{}'", p.display()));
    }
    let mut outs = Vec::new();
    let mut run = |stmt: String| -> Result<(), String> {
        let r = e.execute(&stmt).map(|_| ());
        let (o, text) = outcome(&stmt, r)?;
        if verbose {
            eprintln!("  case {n}: {o} {text}");
        }
        outs.push(o);
        Ok(())
    };
    run(format!("RESTORE HEADERONLY FROM {from}"))?;
    run(format!("RESTORE FILELISTONLY FROM {from}"))?;
    run(format!("RESTORE VERIFYONLY FROM {from} WITH CHECKSUM"))?;
    for b in &c.base {
        let stmt = if b.extension().is_some_and(|x| x == "trn") {
            format!(
                "RESTORE LOG fz FROM DISK = '{}' WITH NORECOVERY",
                b.display()
            )
        } else {
            format!(
                "RESTORE DATABASE fz FROM DISK = '{}' WITH NORECOVERY, REPLACE",
                b.display()
            )
        };
        // An unchanged base that does not restore is the test's fault.
        e.execute(&stmt)
            .map_err(|err| format!("the base {stmt}: {err}"))?;
    }
    run(if c.is_log {
        format!("RESTORE LOG fz FROM {from} WITH CHECKSUM")
    } else {
        format!("RESTORE DATABASE fz FROM {from} WITH REPLACE, CHECKSUM")
    })?;
    // Whatever the restore created is inside the case's data directory.
    for db in e.list_databases().map_err(|e| e.to_string())? {
        for f in &db.files {
            if !f.path.starts_with(&data) {
                return Err(format!(
                    "a restored file outside the data directory: {}",
                    f.path.display()
                ));
            }
        }
    }
    let _ = openvdi_engine::stream::read_head(&mut &c.bytes[..]);
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(outs)
}

#[test]
fn damaged_and_foreign_files_end_in_messages() {
    let seed = env_u64("OPENVDI_FILE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let max_cases = env_u64("OPENVDI_FILE_FUZZ_CASES").unwrap_or(60);
    let budget = Duration::from_secs(env_u64("OPENVDI_FILE_FUZZ_SECS").unwrap_or(25));
    let case_deadline = Duration::from_secs(env_u64("OPENVDI_FILE_FUZZ_CASE_SECS").unwrap_or(120));
    let only = env_u64("OPENVDI_FILE_FUZZ_CASE");
    eprintln!(
        "file fuzz: seed {seed} (OPENVDI_FILE_FUZZ_SEED={seed} replays it), up to {max_cases} cases in {budget:?}"
    );

    let root = data_dir();
    // The engine's own format too: a full, a differential and a log backup of a
    // small database (kept as files: the differential and the log restore on top
    // of the full).
    let own_dir = root.path().join("own-backups");
    std::fs::create_dir_all(&own_dir).unwrap();
    let mut srcs = Vec::new();
    {
        let e = Engine::open(root.path().join("own")).unwrap();
        e.create_database("own", 1 << 20).unwrap();
        e.modify("own", 5).unwrap();
        for (name, stmt) in [
            (
                "openvdi-full.bak",
                "BACKUP DATABASE own TO DISK = '{}' WITH INIT, CHECKSUM",
            ),
            (
                "openvdi-diff.bak",
                "BACKUP DATABASE own TO DISK = '{}' WITH INIT, DIFFERENTIAL",
            ),
            (
                "openvdi-log.trn",
                "BACKUP LOG own TO DISK = '{}' WITH INIT, CHECKSUM",
            ),
        ] {
            e.modify("own", 3).unwrap();
            let f = own_dir.join(name);
            e.execute(&stmt.replace("{}", &f.display().to_string()))
                .unwrap();
            srcs.push((name.to_string(), f));
        }
        std::fs::remove_dir_all(root.path().join("own")).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bak") || n.ends_with(".trn"))
        .collect();
    names.sort();
    for n in names {
        let p = fixtures().join(&n);
        srcs.push((n, p));
    }
    let path_of: BTreeMap<String, PathBuf> = srcs.iter().cloned().collect();
    let mut srcs: Vec<Source> = srcs
        .iter()
        .map(|(n, p)| Source::new(n, std::fs::read(p).unwrap()))
        .collect();
    // What each differential or log needs restored first (the fixtures' README).
    let chains: &[(&str, &[&str])] = &[
        ("openvdi-diff.bak", &["openvdi-full.bak"]),
        ("openvdi-log.trn", &["openvdi-full.bak"]),
        ("sql2008r2-db2-diff.bak", &["sql2008r2-db2-full.bak"]),
        (
            "sql2008r2-dbareports-log1.trn",
            &["sql2008r2-dbareports-full.bak"],
        ),
        (
            "sql2008r2-simplebacktest-diff1.bak",
            &["sql2008r2-simplebacktest-full.bak"],
        ),
        (
            "sql2008r2-simplebacktest-diff2.bak",
            &["sql2008r2-simplebacktest-full.bak"],
        ),
        (
            "sql2016-restoretimeclean2-full.bak",
            &["sql2016-restoretimeclean-full.bak"],
        ),
        (
            "sql2016-restoretimeclean2-log1.trn",
            &[
                "sql2016-restoretimeclean-full.bak",
                "sql2016-restoretimeclean2-full.bak",
            ],
        ),
        (
            "sql2016-restoretimeclean2-log2.trn",
            &[
                "sql2016-restoretimeclean-full.bak",
                "sql2016-restoretimeclean2-full.bak",
                "sql2016-restoretimeclean2-log1.trn",
            ],
        ),
        (
            "sql2008r2-dbareports-log2.trn",
            &[
                "sql2008r2-dbareports-full.bak",
                "sql2008r2-dbareports-log1.trn",
            ],
        ),
    ];
    for s in &mut srcs {
        if let Some((_, base)) = chains.iter().find(|(n, _)| *n == s.name) {
            s.base = base.iter().map(|b| b.to_string()).collect();
        }
        s.partner = match s.name.as_str() {
            "sql2008r2-stripe-1of2.bak" => Some("sql2008r2-stripe-2of2.bak".into()),
            "sql2008r2-stripe-2of2.bak" => Some("sql2008r2-stripe-1of2.bak".into()),
            _ => None,
        };
    }
    let verbose = std::env::var_os("OPENVDI_FILE_FUZZ_VERBOSE").is_some();
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let watched = [crate_dir.to_path_buf(), fixtures()];
    let before: Vec<_> = watched.iter().map(|d| tree(d)).collect();

    let start = Instant::now();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut ran = 0u64;
    let cases: Box<dyn Iterator<Item = u64>> = match only {
        Some(n) => Box::new(std::iter::once(n)),
        None => Box::new(0..max_cases),
    };
    for case in cases {
        if only.is_none() && start.elapsed() > budget {
            break;
        }
        let mut r = Rng::new(seed, case);
        // Small files more often: most cases should be quick.
        let pick = |r: &mut Rng| {
            if r.chance(2) {
                let small: Vec<usize> = (0..srcs.len())
                    .filter(|&i| srcs[i].bytes.len() < 400_000)
                    .collect();
                small[r.below(small.len())]
            } else {
                r.below(srcs.len())
            }
        };
        let (c, what) = if r.chance(8) {
            let (bytes, w) = foreign(&mut r, &srcs);
            let c = Case {
                bytes,
                is_log: false,
                base: Vec::new(),
                partner: None,
            };
            (c, w)
        } else {
            let s = &srcs[pick(&mut r)];
            let o = &srcs[pick(&mut r)];
            let mut bytes = s.bytes.clone();
            let mut w = vec![s.name.clone()];
            for _ in 0..1 + r.below(3) {
                w.push(mutate(&mut r, s, o, &mut bytes));
            }
            let c = Case {
                bytes,
                is_log: s.is_log,
                base: s.base.iter().map(|b| path_of[b].clone()).collect(),
                partner: s.partner.as_ref().map(|p| path_of[p].clone()),
            };
            (c, w.join("; "))
        };
        if verbose {
            eprintln!("case {case}: {what}");
        }
        let (tx, rx) = mpsc::channel();
        let rootp = root.path().to_path_buf();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| run_case(&rootp, case, &c, verbose));
            let _ = tx.send(r);
        });
        let got = match rx.recv_timeout(case_deadline) {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("a panic (see the output above)".into()),
            Err(_) => Err(format!(
                "no end within the case deadline of {case_deadline:?}"
            )),
        };
        match got {
            Ok(outs) => {
                for o in outs {
                    *counts.entry(o).or_default() += 1;
                }
            }
            Err(why) => panic!(
                "file fuzz: seed {seed} case {case} ({what}): {why}\n\
                 replay: OPENVDI_FILE_FUZZ_SEED={seed} OPENVDI_FILE_FUZZ_CASE={case}"
            ),
        }
        ran += 1;
    }
    let after: Vec<_> = watched.iter().map(|d| tree(d)).collect();
    for ((d, b), a) in watched.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "{} changed during the fuzz", d.display());
    }
    eprintln!(
        "file fuzz: seed {seed}: {ran} cases in {:.1?}; outcomes (statements): {counts:?}",
        start.elapsed()
    );
    assert!(ran > 0);
}
