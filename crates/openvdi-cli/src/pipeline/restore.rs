//! Restore data path: verified stripe readers → `VDC_Read` buffers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use openvdi::{vdc, vdf, win32};

use super::{abort_on_panic, wait_configuration, Counters, Stop, StopReason, POLL_MS};
use crate::chunk::{ChunkError, StripeCtx, StripeReader};
use crate::storage::Store;
use crate::vdi::{DevError, Device, DeviceSet};

/// Where one device's stream comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A stored stripe, checked against what its manifest says.
    Stored {
        key: String,
        raw_size: u64,
        blake3: String,
        /// The backup and stripe it belongs to (an encrypted stripe's key and
        /// associated data are bound to both).
        backup_id: String,
        index: u32,
    },
    /// A plain `.bak` file (inspect, import): sent as it is.
    File(std::path::PathBuf),
}

pub struct Plan<'a> {
    pub set: &'a dyn DeviceSet,
    pub device_names: Vec<String>,
    pub store: Arc<dyn Store>,
    pub sources: Vec<Source>,
    /// The repository's keys, when it is encrypted.
    pub keys: Option<Arc<crate::crypto::Keys>>,
    pub stop: Arc<Stop>,
    pub counters: Vec<Arc<Counters>>,
    pub open_timeout: Duration,
}

enum Msg {
    Data(Vec<u8>),
    /// The whole stripe verified (trailer, sizes, blake3 against the manifest).
    End,
    Bad(StopReason),
}

/// Sends one device's stream in chunks, then `End` only if everything checked out.
fn reader_loop(
    store: &dyn Store,
    keys: Option<&crate::crypto::Keys>,
    src: &Source,
    counters: &Counters,
    tx: Sender<Msg>,
    spare: Receiver<Vec<u8>>,
) {
    let r = match src {
        Source::Stored {
            key,
            raw_size,
            blake3,
            backup_id,
            index,
        } => {
            let ctx = keys.map(|keys| StripeCtx {
                keys,
                backup_id,
                index: *index,
            });
            read_stored(store, ctx, key, *raw_size, blake3, counters, &tx, &spare)
        }
        Source::File(path) => read_file(path, counters, &tx),
    };
    let _ = tx.send(match r {
        Ok(()) => Msg::End,
        Err(e) => Msg::Bad(e),
    });
}

fn read_file(path: &Path, counters: &Counters, tx: &Sender<Msg>) -> Result<(), StopReason> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| StopReason::Failed(format!("opening {}: {e}", path.display())))?;
    loop {
        let buf = crate::storage::read_chunk(&mut f, 1 << 20)
            .map_err(|e| StopReason::Failed(format!("reading {}: {e}", path.display())))?;
        if buf.is_empty() {
            return Ok(());
        }
        counters
            .stored
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if tx.send(Msg::Data(buf)).is_err() {
            return Ok(()); // the engine closed the device early (HEADERONLY)
        }
    }
}

/// Opens a stored stripe and checks it frame by frame. Chunks go out in buffers the
/// device thread hands back (`spare`) once it has copied them: a fresh megabyte per
/// chunk would cost a page fault per 4 KiB of the whole restore.
#[allow(clippy::too_many_arguments)]
fn read_stored(
    store: &dyn Store,
    ctx: Option<StripeCtx<'_>>,
    key: &str,
    raw_size: u64,
    blake3: &str,
    counters: &Counters,
    tx: &Sender<Msg>,
    spare: &Receiver<Vec<u8>>,
) -> Result<(), StopReason> {
    let input = store.open_read(key).map_err(|e| match e {
        crate::storage::StoreError::NotFound(_) => {
            StopReason::Verify(format!("stripe {key} is missing from the repository"))
        }
        e => StopReason::Failed(format!("opening a stripe: {e}")),
    })?;
    let cv = |e: ChunkError| match e {
        ChunkError::Corrupt(m) => StopReason::Verify(format!("{key}: {m}")),
        ChunkError::Io(e) => StopReason::Failed(format!("reading {key}: {e}")),
        e @ ChunkError::KeyNeeded => StopReason::Failed(format!("{key}: {e}")),
    };
    let mut rd = StripeReader::open(input, ctx, true).map_err(cv)?;
    let mut raw = 0u64;
    loop {
        let mut buf = spare.try_recv().unwrap_or_default();
        if !rd.next_chunk(&mut buf).map_err(cv)? {
            break;
        }
        raw += buf.len() as u64;
        counters
            .stored
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if tx.send(Msg::Data(buf)).is_err() {
            return Ok(()); // the engine closed the device early
        }
    }
    let sum = rd.summary().expect("verified end");
    if raw != raw_size || sum.blake3 != blake3 {
        return Err(StopReason::Verify(format!(
            "{key}: the stripe does not match its manifest (size {raw} vs {raw_size}, blake3 {} vs {blake3})",
            sum.blake3
        )));
    }
    Ok(())
}

/// Feeds `VDC_Read`s from `rx` until the engine closes the device.
fn device_loop(
    dev: &dyn Device,
    set: &dyn DeviceSet,
    stop: &Stop,
    counters: &Counters,
    rx: Receiver<Msg>,
    spare: Sender<Vec<u8>>,
) {
    let mut cur: Vec<u8> = Vec::new();
    let mut off = 0usize;
    let mut ended = false;
    let fail = |why: StopReason| {
        stop.stop(why);
        set.signal_abort();
    };
    loop {
        if stop.is_stopped() {
            set.signal_abort();
            return;
        }
        let mut cmd = match dev.get_command(POLL_MS) {
            Ok(c) => c,
            Err(DevError::Timeout) => continue,
            Err(DevError::Close) => return,
            Err(e) => return fail(StopReason::device("GetCommand", e)),
        };
        let (code, bytes) = match cmd.code() {
            vdc::VDC_Read => {
                let want = cmd.size() as usize;
                let buf = cmd.data_mut();
                if buf.len() < want {
                    return fail(StopReason::Failed("VDC_Read without a buffer".into()));
                }
                let mut filled = 0usize;
                while filled < want && !ended {
                    if off == cur.len() {
                        match rx.recv_timeout(Duration::from_millis(u64::from(POLL_MS))) {
                            Ok(Msg::Data(d)) => {
                                let done = std::mem::replace(&mut cur, d);
                                if done.capacity() != 0 {
                                    let _ = spare.try_send(done);
                                }
                                off = 0;
                                continue;
                            }
                            Ok(Msg::End) | Err(RecvTimeoutError::Disconnected) => {
                                ended = true;
                                break;
                            }
                            Ok(Msg::Bad(why)) => return fail(why),
                            Err(RecvTimeoutError::Timeout) => {
                                if stop.is_stopped() {
                                    set.signal_abort();
                                    return;
                                }
                                continue;
                            }
                        }
                    }
                    let n = (cur.len() - off).min(want - filled);
                    buf[filled..filled + n].copy_from_slice(&cur[off..off + n]);
                    filled += n;
                    off += n;
                }
                counters.raw.fetch_add(filled as u64, Ordering::Relaxed);
                if filled < want {
                    (win32::ERROR_HANDLE_EOF, filled as u32)
                } else {
                    (win32::ERROR_SUCCESS, filled as u32)
                }
            }
            vdc::VDC_Flush | vdc::VDC_ClearError | vdc::VDC_Complete => (win32::ERROR_SUCCESS, 0),
            _ => (win32::ERROR_NOT_SUPPORTED, 0),
        };
        if let Err(e) = dev.complete(cmd.token(), code, bytes, 0) {
            return fail(StopReason::device("CompleteCommand", e));
        }
    }
}

/// Streams every stripe to the engine until it closes the devices.
pub fn run(plan: Plan<'_>) -> Result<(), StopReason> {
    let cfg = wait_configuration(plan.set, &plan.stop, plan.open_timeout)?;
    if cfg.features & vdf::VDF_ReadMedia == 0 {
        plan.set.signal_abort();
        return Err(StopReason::Failed(
            "the engine opened the set for writing, not for a restore".into(),
        ));
    }
    let mut devices = Vec::new();
    for name in &plan.device_names {
        match plan.set.open_device(name) {
            Ok(d) => devices.push(d),
            Err(e) => {
                plan.set.signal_abort();
                return Err(StopReason::device(&format!("OpenDevice({name})"), e));
            }
        }
    }
    std::thread::scope(|s| {
        for (i, dev) in devices.iter().enumerate() {
            // A few chunks of read-ahead per stripe: decompression overlaps the engine.
            let (tx, rx) = bounded::<Msg>(4);
            let (spare_tx, spare_rx) = bounded::<Vec<u8>>(4);
            let store = plan.store.clone();
            let src = plan.sources[i].clone();
            let c = plan.counters[i].clone();
            let keys = plan.keys.clone();
            s.spawn(move || reader_loop(store.as_ref(), keys.as_deref(), &src, &c, tx, spare_rx));
            let dev: &dyn Device = dev.as_ref();
            let (set, stop, c) = (plan.set, &plan.stop, plan.counters[i].clone());
            s.spawn(move || {
                let what = format!("the thread serving device {i}");
                let _ = abort_on_panic(stop, set, &what, || {
                    device_loop(dev, set, stop, &c, rx, spare_tx)
                });
                // `done`: this stripe was sent whole (nothing stopped the restore).
                c.done.store(stop.reason().is_none(), Ordering::Release);
            });
        }
    });
    match plan.stop.reason() {
        Some(r) => Err(r),
        None => Ok(()),
    }
}
