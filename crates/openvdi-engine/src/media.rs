//! Where a statement's streams go: virtual devices (the point of the engine) or
//! `DISK = 'path'` files, so that a backup can also be written to or read from a
//! plain `.bak` without a VDI client (re-materialised backups, inspection).
//! Both carry the same MTF family streams; only the transport differs.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use crate::error::{msg, SqlError};
use crate::fault::FaultPlan;
use crate::sql::{Device, DeviceKind};
use crate::vdi::{DeviceReader, DeviceWriter, Direction, Session, TransferOptions};

/// The devices of one statement.
#[derive(Debug)]
pub enum Media {
    /// Virtual devices.
    Vdi(Session),
    /// Backup files, with BLOCKSIZE.
    Disk(Vec<PathBuf>, u32),
}

impl Media {
    /// Open the statement's devices: all VIRTUAL_DEVICE or all DISK. `overwrite`
    /// (BACKUP WITH INIT or FORMAT) allows replacing an existing backup file; one
    /// backup set per file is all the engine writes.
    pub fn open(
        devices: &[Device],
        dir: Direction,
        opts: &TransferOptions,
        plan: &FaultPlan,
        overwrite: bool,
    ) -> Result<Media, SqlError> {
        if devices.iter().all(|d| d.kind == DeviceKind::VirtualDevice) {
            return Session::open(devices, dir, opts, plan).map(Media::Vdi);
        }
        if !devices.iter().all(|d| d.kind == DeviceKind::Disk) {
            return Err(msg::not_supported(
                "Mixing device kinds, or a TAPE or URL backup device,",
            ));
        }
        let mut paths = Vec::new();
        for d in devices {
            let p = PathBuf::from(&d.name);
            let len = std::fs::metadata(&p).map(|m| m.len()).ok();
            match (dir, len) {
                (Direction::Read, None) => {
                    return Err(msg::cannot_open_device(
                        &d.name,
                        "2(The system cannot find the file specified.)",
                    ))
                }
                (Direction::Write, Some(n)) if n > 0 && !overwrite => {
                    return Err(msg::not_supported(&format!(
                        "Appending a backup set to the existing file '{}' (use WITH INIT or FORMAT)",
                        d.name
                    )))
                }
                _ => {}
            }
            paths.push(p);
        }
        Ok(Media::Disk(paths, opts.block_size))
    }

    /// How many devices.
    pub fn count(&self) -> usize {
        match self {
            Media::Vdi(s) => s.devices.len(),
            Media::Disk(p, _) => p.len(),
        }
    }

    /// Abort (VDI: the client sees VD_E_ABORT) and close.
    pub fn abort_and_close(&self) {
        if let Media::Vdi(s) = self {
            s.abort_and_close();
        }
    }

    /// Abort without closing (other device threads stop promptly).
    pub fn signal_abort(&self) {
        if let Media::Vdi(s) = self {
            let _ = s.shared.set.signal_abort();
        }
    }

    /// Close after success.
    pub fn close(&self) {
        if let Media::Vdi(s) = self {
            let _ = s.shared.set.close();
        }
    }

    /// Tell the fault counters how large the stream will be (`crash-at:mid`).
    pub fn set_total_hint(&self, bytes: u64) {
        if let Media::Vdi(s) = self {
            s.shared.state.total_hint.store(bytes, Ordering::Relaxed);
        }
    }

    /// Add one family's expected bytes to the hint (a restore learns them family
    /// by family, from each stream's metadata).
    pub fn add_total_hint(&self, bytes: u64) {
        if let Media::Vdi(s) = self {
            s.shared
                .state
                .total_hint
                .fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// A reader for device `i`.
    pub fn source(&self, i: usize) -> Result<Source<'_>, SqlError> {
        match self {
            Media::Vdi(s) => Ok(Source::Vdi(Box::new(DeviceReader::new(
                &s.shared,
                &s.devices[i],
            )))),
            Media::Disk(p, _) => {
                let f = File::open(&p[i]).map_err(|e| {
                    msg::cannot_open_device(&p[i].display().to_string(), &e.to_string())
                })?;
                Ok(Source::File {
                    r: BufReader::with_capacity(1 << 20, f),
                    bytes: 0,
                })
            }
        }
    }
}

/// Where a family stream is written: [`DeviceWriter`] or [`FileSink`].
pub trait StreamSink {
    /// Fill up to `n` bytes of the stream in place (see [`DeviceWriter::fill_with`]).
    fn fill_with(
        &mut self,
        n: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> Result<usize, SqlError>;
    /// The stream must end on a multiple of this.
    fn block_size(&self) -> usize;
}

impl StreamSink for DeviceWriter<'_> {
    fn fill_with(
        &mut self,
        n: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> Result<usize, SqlError> {
        DeviceWriter::fill_with(self, n, fill)
    }
    fn block_size(&self) -> usize {
        DeviceWriter::block_size(self)
    }
}

/// A backup file being written: into `NAME.partial`, renamed over `NAME` once
/// complete, so a failed backup never leaves a plausible-looking `.bak`.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    tmp: PathBuf,
    f: File,
    buf: Vec<u8>,
    len: usize,
    block: usize,
    /// Bytes written.
    pub bytes: u64,
}

impl FileSink {
    /// Create the file.
    pub fn create(path: PathBuf, block: u32) -> Result<FileSink, SqlError> {
        let mut tmp = path.clone().into_os_string();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let f = File::create(&tmp)
            .map_err(|e| msg::cannot_open_device(&path.display().to_string(), &e.to_string()))?;
        Ok(FileSink {
            path,
            tmp,
            f,
            buf: vec![0u8; 1 << 20],
            len: 0,
            block: block.max(512) as usize,
            bytes: 0,
        })
    }

    fn flush_buf(&mut self) -> Result<(), SqlError> {
        self.f
            .write_all(&self.buf[..self.len])
            .map_err(|e| msg::write_failed(&self.path.display().to_string(), &e.to_string()))?;
        self.len = 0;
        Ok(())
    }

    /// Write what is buffered, make it durable and put the file in place.
    pub fn finish(mut self) -> Result<u64, SqlError> {
        self.flush_buf()?;
        let name = self.path.display().to_string();
        self.f
            .sync_all()
            .map_err(|e| msg::write_failed(&name, &e.to_string()))?;
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| msg::write_failed(&name, &e.to_string()))?;
        Ok(self.bytes)
    }

    /// Remove the partial file after a failure.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl StreamSink for FileSink {
    fn fill_with(
        &mut self,
        n: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> Result<usize, SqlError> {
        if self.len == self.buf.len() {
            self.flush_buf()?;
        }
        let k = n.min(self.buf.len() - self.len);
        let got = fill(&mut self.buf[self.len..self.len + k])
            .map_err(|e| msg::read_failed(&self.path.display().to_string(), &e.to_string()))?
            .min(k);
        self.len += got;
        self.bytes += got as u64;
        Ok(got)
    }
    fn block_size(&self) -> usize {
        self.block
    }
}

/// Where a family stream is read from.
#[derive(Debug)]
pub enum Source<'s> {
    /// A virtual device (boxed: it is much larger than a file reader).
    Vdi(Box<DeviceReader<'s>>),
    /// A backup file.
    File {
        /// The file.
        r: BufReader<File>,
        /// Bytes read.
        bytes: u64,
    },
}

impl Source<'_> {
    /// The transport error behind a failed `read`, if any.
    pub fn take_error(&mut self) -> Option<SqlError> {
        match self {
            Source::Vdi(r) => r.take_error(),
            Source::File { .. } => None,
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        match self {
            Source::Vdi(r) => r.bytes,
            Source::File { bytes, .. } => *bytes,
        }
    }

    /// Stop reading (VDI: drain and close the device).
    pub fn finish(self) -> Result<u64, SqlError> {
        match self {
            Source::Vdi(r) => (*r).finish(),
            Source::File { bytes, .. } => Ok(bytes),
        }
    }
}

impl Read for Source<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Vdi(r) => r.read(out),
            Source::File { r, bytes } => {
                let n = r.read(out)?;
                *bytes += n as u64;
                Ok(n)
            }
        }
    }
}

impl BufRead for Source<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Source::Vdi(r) => r.fill_buf(),
            Source::File { r, .. } => r.fill_buf(),
        }
    }

    fn consume(&mut self, k: usize) {
        match self {
            Source::Vdi(r) => r.consume(k),
            Source::File { r, bytes } => {
                r.consume(k);
                *bytes += k as u64;
            }
        }
    }
}
