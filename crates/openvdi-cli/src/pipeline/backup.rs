//! Backup data path: devices → compression workers → ordered stripe writers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use openvdi::{vdc, vdf, win32};

use super::{abort_on_panic, wait_configuration, Counters, Stop, StopReason, POLL_MS};
use crate::chunk::{self, Sink};
use crate::codec::Codec;
use crate::storage::Store;
use crate::vdi::{Cmd, DevError, Device, DeviceSet};

pub use crate::chunk::Sealed as StripeResult;

pub struct Plan<'a> {
    pub set: &'a dyn DeviceSet,
    pub device_names: Vec<String>,
    pub store: Arc<dyn Store>,
    /// Object key per stripe, in device order.
    pub keys: Vec<String>,
    pub codec: Codec,
    pub workers: usize,
    pub stop: Arc<Stop>,
    pub counters: Vec<Arc<Counters>>,
    /// How long to wait for the engine to open the set.
    pub open_timeout: Duration,
    /// Called once, when the last stripe is sealed and before its `VDC_Complete` is
    /// completed — so before the engine can declare the BACKUP successful. The
    /// backup command stores the manifest here: a backup is durable in the
    /// repository before the engine hears that it is. An Err completes that
    /// `VDC_Complete` with ERROR_WRITE_FAULT and aborts the set: the BACKUP fails.
    /// It also gets the first bytes of stripe 1 (at most [`HEAD_MAX`]): the media
    /// header and the backup set's metadata, from which the manifest takes the
    /// backup's own facts (LSNs, GUIDs) before any engine message arrives.
    pub on_sealed: Option<&'a OnSealed<'a>>,
    /// Per stripe, in device order: its key and salt (encrypted repositories), or
    /// None (every stripe alike).
    pub encryption: Vec<Option<chunk::Encryption>>,
}

/// See [`Plan::on_sealed`].
pub type OnSealed<'a> = dyn Fn(&[StripeResult], &[u8]) -> Result<(), String> + Sync + 'a;

/// How much of the head of stripe 1 is kept for [`Plan::on_sealed`]: the media
/// header, the set's blocks and the metadata stream of a backup of several hundred
/// files fit with room to spare; a longer head is simply cut (the facts are then
/// taken from the engine's messages alone).
pub const HEAD_MAX: usize = 4 << 20;

/// The sealed stripes so far; the writer that seals the last one runs the hook.
struct Sealing<'a> {
    done: std::sync::Mutex<(Vec<Option<StripeResult>>, Vec<u8>)>,
    hook: Option<&'a OnSealed<'a>>,
}

impl Sealing<'_> {
    /// Records stripe `i` (and, for the first, the head of its stream); runs the
    /// hook if it was the last one.
    fn sealed(&self, i: usize, r: &StripeResult, head: &mut Vec<u8>) -> Result<(), String> {
        let mut done = self.done.lock().map_err(|_| "a stripe writer panicked")?;
        done.0[i] = Some(r.clone());
        if i == 0 {
            done.1 = std::mem::take(head);
        }
        if done.0.iter().all(Option::is_some) {
            if let Some(hook) = self.hook {
                let all: Vec<StripeResult> = done.0.iter().flatten().cloned().collect();
                return hook(&all, &done.1);
            }
        }
        Ok(())
    }
}

struct Job {
    seq: u64,
    cmd: Cmd,
    reply: Sender<Item>,
    /// The stripe's key and this chunk's frame index (encrypted stripes).
    enc: Option<(Arc<chunk::Encryption>, u64)>,
}

enum Item {
    Frame {
        seq: u64,
        cmd: Cmd,
        frame: std::io::Result<chunk::Frame>,
    },
    /// VDC_Flush / VDC_Complete: completes once everything before it is durable.
    Barrier { seq: u64, cmd: Cmd },
}

impl Item {
    fn seq(&self) -> u64 {
        match self {
            Item::Frame { seq, .. } | Item::Barrier { seq, .. } => *seq,
        }
    }
}

/// Runs the data side of a backup until every device is closed. The caller runs the
/// engine's BACKUP statement concurrently and raises `stop` if it fails.
pub fn run(plan: Plan<'_>) -> Result<Vec<StripeResult>, StopReason> {
    let cfg = wait_configuration(plan.set, &plan.stop, plan.open_timeout)?;
    if cfg.features & vdf::VDF_WriteMedia == 0 {
        plan.set.signal_abort();
        return Err(StopReason::Failed(
            "the engine opened the set for reading, not for a backup".into(),
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
    let (job_tx, job_rx) = unbounded::<Job>();
    let codec = plan.codec;
    let sealing = Sealing {
        done: std::sync::Mutex::new((vec![None; devices.len()], Vec::new())),
        hook: plan.on_sealed,
    };
    let sealing = &sealing;
    let results = std::thread::scope(|s| {
        for _ in 0..plan.workers.max(1) {
            let rx = job_rx.clone();
            s.spawn(move || worker(codec, rx));
        }
        drop(job_rx);
        let mut handles = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            let dev: &dyn Device = dev.as_ref();
            let enc: Option<Arc<chunk::Encryption>> =
                plan.encryption.get(i).cloned().flatten().map(Arc::new);
            let enc_w = enc.clone();
            let (item_tx, item_rx) = unbounded::<Item>();
            let job_tx = job_tx.clone();
            let stop = &plan.stop;
            let set = plan.set;
            let counters = plan.counters[i].clone();
            s.spawn(move || {
                let what = format!("the thread serving device {i}");
                let _ = abort_on_panic(stop, set, &what, || {
                    device_loop(dev, set, stop, codec, enc, job_tx, item_tx)
                });
            });
            let store = plan.store.clone();
            let key = plan.keys[i].clone();
            handles.push(s.spawn(move || {
                // A panic in the storage layer (an object store's client, say) must
                // fail the backup with its cause, not leave the device loop waiting
                // for a writer that is gone while the engine waits for completions.
                let what = format!("storing stripe {key} failed: the storage task");
                let r = abort_on_panic(stop, set, &what, || {
                    writer_loop(
                        dev,
                        set,
                        store.as_ref(),
                        &key,
                        codec,
                        stop,
                        &counters,
                        enc_w,
                        item_rx,
                        (sealing, i),
                    )
                })
                .and_then(|r| r);
                // `done`: this stripe was stored whole (progress reports say so).
                counters.done.store(r.is_ok(), Ordering::Release);
                r
            }));
        }
        drop(job_tx);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a stripe writer panicked".into()))
            })
            .collect::<Vec<_>>()
    });
    if let Some(r) = plan.stop.reason() {
        return Err(r);
    }
    results
        .into_iter()
        .map(|r| r.map_err(StopReason::Failed))
        .collect()
}

fn worker(codec: Codec, rx: Receiver<Job>) {
    for job in rx {
        let frame = match &job.enc {
            Some((e, n)) => chunk::encode_sealed(codec, job.cmd.data(), &e.key, *n),
            None => chunk::encode(codec, job.cmd.data()),
        };
        // The writer may have gone after a failure; the command dies with the set.
        let _ = job.reply.send(Item::Frame {
            seq: job.seq,
            cmd: job.cmd,
            frame,
        });
    }
}

fn device_loop(
    dev: &dyn Device,
    set: &dyn DeviceSet,
    stop: &Stop,
    codec: Codec,
    enc: Option<Arc<chunk::Encryption>>,
    jobs: Sender<Job>,
    items: Sender<Item>,
) {
    let mut seq = 0u64;
    // Frame index of the next VDC_Write (the nonce counter of an encrypted stripe).
    let mut frame_no = 0u64;
    loop {
        if stop.is_stopped() {
            set.signal_abort();
            return;
        }
        let cmd = match dev.get_command(POLL_MS) {
            Ok(c) => c,
            Err(DevError::Timeout) => continue,
            Err(DevError::Close) => return,
            Err(e) => {
                stop.stop(StopReason::device("GetCommand", e));
                set.signal_abort();
                return;
            }
        };
        let code = cmd.code();
        let r = match code {
            // Uncompressed: only a crc32c to compute (hardware speed), so skip the two
            // thread hand-offs of the worker pool; the writer stores from shared memory.
            vdc::VDC_Write if codec == Codec::None && enc.is_none() => {
                let frame = chunk::encode(codec, cmd.data());
                let r = items.send(Item::Frame { seq, cmd, frame });
                seq += 1;
                r.map_err(|_| StopReason::Failed("the stripe writer is gone".into()))
            }
            vdc::VDC_Write => {
                let r = jobs.send(Job {
                    seq,
                    cmd,
                    reply: items.clone(),
                    enc: enc.clone().map(|e| (e, frame_no)),
                });
                seq += 1;
                frame_no += 1;
                r.map_err(|_| StopReason::Failed("the compression workers are gone".into()))
            }
            vdc::VDC_Flush | vdc::VDC_Complete => {
                let r = items.send(Item::Barrier { seq, cmd });
                seq += 1;
                r.map_err(|_| StopReason::Failed("the stripe writer is gone".into()))
            }
            vdc::VDC_ClearError => dev
                .complete(cmd.token(), win32::ERROR_SUCCESS, 0, 0)
                .map_err(|e| StopReason::device("CompleteCommand", e)),
            // A pipe-like device (features 0) supports nothing else (reference §6.1).
            _ => dev
                .complete(cmd.token(), win32::ERROR_NOT_SUPPORTED, 0, 0)
                .map_err(|e| StopReason::device("CompleteCommand", e)),
        };
        if let Err(e) = r {
            stop.stop(e);
            set.signal_abort();
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn writer_loop(
    dev: &dyn Device,
    set: &dyn DeviceSet,
    store: &dyn Store,
    key: &str,
    codec: Codec,
    stop: &Stop,
    counters: &Counters,
    enc: Option<Arc<chunk::Encryption>>,
    items: Receiver<Item>,
    (sealing, index): (&Sealing<'_>, usize),
) -> Result<StripeResult, String> {
    // The object is created on the first item, so a set aborted before any byte
    // arrives leaves nothing behind.
    let mut sink: Option<Sink> = None;
    let mut result: Option<StripeResult> = None;
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Item> = BTreeMap::new();
    let mut head: Vec<u8> = Vec::new();
    let fail = |why: StopReason| {
        let msg = why.to_string();
        stop.stop(why);
        set.signal_abort();
        msg
    };
    let failed = |e: String| StopReason::Failed(e);
    let open = |sink: &mut Option<Sink>| -> Result<(), StopReason> {
        if sink.is_none() {
            let w = store.create(key).map_err(|e| failed(e.to_string()))?;
            let e = enc.as_deref().cloned();
            *sink = Some(Sink::new(w, codec, e).map_err(|e| failed(e.to_string()))?);
        }
        Ok(())
    };
    let mut outcome: Result<(), String> = Ok(());
    'recv: for item in items.iter() {
        if outcome.is_err() || stop.is_stopped() {
            continue; // drain so the workers never block; the set is being aborted
        }
        pending.insert(item.seq(), item);
        while let Some(item) = pending.remove(&next) {
            next += 1;
            let step: Result<(), StopReason> = (|| match item {
                Item::Frame { cmd, frame, .. } => {
                    let frame = frame.map_err(|e| failed(format!("compressing: {e}")))?;
                    if result.is_some() {
                        return Err(failed("VDC_Write after VDC_Complete".into()));
                    }
                    open(&mut sink)?;
                    let s = sink.as_mut().expect("opened");
                    if index == 0 && head.len() < HEAD_MAX {
                        let d = cmd.data();
                        head.extend_from_slice(&d[..d.len().min(HEAD_MAX - head.len())]);
                    }
                    s.append(frame, cmd.data())
                        .map_err(|e| failed(e.to_string()))?;
                    counters.raw.store(s.raw(), Ordering::Relaxed);
                    counters.stored.store(s.stored(), Ordering::Relaxed);
                    // The buffer goes back to the engine only now: its bytes are out.
                    dev.complete(cmd.token(), win32::ERROR_SUCCESS, cmd.size(), 0)
                        .map_err(|e| StopReason::device("CompleteCommand", e))
                }
                Item::Barrier { cmd, .. } => {
                    if cmd.code() == vdc::VDC_Complete {
                        // The engine declares success only after this completion:
                        // publish the stripe first.
                        if result.is_none() {
                            open(&mut sink)?;
                            let s = sink.take().expect("opened");
                            let r = s.seal().map_err(|e| failed(e.to_string()))?;
                            if let Err(e) = sealing.sealed(index, &r, &mut head) {
                                // Fail this VDC_Complete: the engine fails the BACKUP
                                // (its differential base and log chain stay put).
                                let _ = dev.complete(cmd.token(), win32::ERROR_WRITE_FAULT, 0, 0);
                                return Err(failed(format!("storing the manifest: {e}")));
                            }
                            result = Some(r);
                        }
                    } else if let Some(s) = sink.as_mut() {
                        s.flush().map_err(|e| failed(e.to_string()))?;
                    }
                    dev.complete(cmd.token(), win32::ERROR_SUCCESS, 0, 0)
                        .map_err(|e| StopReason::device("CompleteCommand", e))
                }
            })();
            if let Err(e) = step {
                outcome = Err(fail(e));
                continue 'recv;
            }
        }
    }
    if let Err(e) = outcome {
        if let Some(s) = sink {
            s.abort();
        }
        return Err(e);
    }
    if stop.is_stopped() {
        if let Some(s) = sink {
            s.abort();
        }
        if result.is_some() {
            let _ = store.delete(key);
        }
        return Err("stopped".into());
    }
    match result {
        Some(r) => Ok(r),
        None => {
            // No VDC_Complete was negotiated: seal at the normal close.
            open(&mut sink).map_err(|e| e.to_string())?;
            sink.take()
                .expect("opened")
                .seal()
                .map_err(|e| e.to_string())
        }
    }
}
