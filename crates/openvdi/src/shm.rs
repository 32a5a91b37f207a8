//! Typed views of the shared-memory objects. Together with `sys.rs` this is the only
//! file with `unsafe`: it turns a validated mapping into `&SetHeader` /
//! `&DeviceBlock` references and buffer slices.
//!
//! The references are sound because (1) every type in `layout` consists only of
//! atomics, so concurrent writes by the peer are not data races; (2) the mapping is
//! page-aligned and its length is checked against the layout before any reference is
//! made; (3) references borrow the [`Control`] that owns the mapping.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::layout::{self, DeviceBlock, SetHeader, NAME_BYTES};
use crate::sys::Mapping;

/// The mapped control object of a set.
#[derive(Debug)]
pub struct Control {
    map: Mapping,
    devices: usize,
}

impl Control {
    /// Wrap a mapping that holds a header and `devices` device blocks. Fails when the
    /// mapping is too small for them: the count usually comes from the peer.
    pub fn new(map: Mapping, devices: usize) -> Option<Control> {
        if devices > crate::MAX_DEVICES || map.len() < layout::region_size(devices) {
            return None;
        }
        Some(Control { map, devices })
    }

    /// Wrap a mapping for its header only (device count not yet trusted).
    pub fn header_only(map: Mapping) -> Option<Control> {
        Control::new(map, 0)
    }

    /// Re-wrap with a device count, after validating it.
    pub fn with_devices(self, devices: usize) -> Result<Control, Control> {
        if devices > crate::MAX_DEVICES || self.map.len() < layout::region_size(devices) {
            return Err(self);
        }
        Ok(Control {
            map: self.map,
            devices,
        })
    }

    /// The set header.
    pub fn header(&self) -> &SetHeader {
        // SAFETY: `new` checked that the mapping holds at least a header; mmap returns
        // page-aligned memory, which satisfies the header's 64-byte alignment; the type
        // is all atomics, so the peer's concurrent writes are not data races.
        unsafe { &*(self.map.as_ptr() as *const SetHeader) }
    }

    /// Device block `i`, if `i` is within the validated device count.
    pub fn device(&self, i: usize) -> Option<&DeviceBlock> {
        if i >= self.devices {
            return None;
        }
        // SAFETY: `i < devices` and the mapping holds `region_size(devices)` bytes, so the
        // block lies inside it; offsets are multiples of 4096, hence aligned; all atomics.
        Some(unsafe { &*(self.map.as_ptr().add(layout::device_offset(i)) as *const DeviceBlock) })
    }

    /// The validated device count.
    pub fn devices(&self) -> usize {
        self.devices
    }

    /// The mapping itself (for the SIGBUS guard's and the size checks).
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }
}

/// Read a name field: `len` is the peer's claim, clamped and checked here.
pub fn read_name(bytes: &[std::sync::atomic::AtomicU8; NAME_BYTES], len: u32) -> Option<String> {
    let len = len as usize;
    if len == 0 || len > NAME_BYTES {
        return None;
    }
    let v: Vec<u8> = bytes[..len]
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    String::from_utf8(v).ok()
}

/// Write a name field (the caller validated the name).
pub fn write_name(bytes: &[std::sync::atomic::AtomicU8; NAME_BYTES], name: &str) {
    for (i, b) in bytes.iter().enumerate() {
        b.store(
            name.as_bytes().get(i).copied().unwrap_or(0),
            Ordering::Relaxed,
        );
    }
}

/// A byte range of a buffer-area segment: a command's data buffer. It keeps the
/// segment mapped for as long as it lives.
///
/// Ownership follows the VDI rule (reference §1.2): while a command is outstanding
/// its buffer belongs to the client, otherwise to the server. The slices handed out
/// here rely on that rule. A peer that breaks it can only change data bytes, which
/// have no invalid values and never steer control flow in this library; the same
/// trade-off every shared-memory transport makes.
#[derive(Debug, Clone)]
pub struct SharedBuf {
    map: Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl SharedBuf {
    /// A range of `map`, if it lies inside it. (Inlined: returned through memory,
    /// the result was read back wider than it was written, a store-forwarding stall
    /// on every command.)
    #[inline]
    pub fn new(map: Arc<Mapping>, offset: u64, len: u64) -> Option<SharedBuf> {
        let end = offset.checked_add(len)?;
        if end > map.len() as u64 {
            return None;
        }
        Some(SharedBuf {
            map,
            offset: offset as usize,
            len: len as usize,
        })
    }

    /// An empty buffer (commands without data).
    pub fn len(&self) -> usize {
        self.len
    }

    /// The first byte, in this process's address space.
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: `new` checked offset + len <= mapping length, so this stays in bounds.
        unsafe { self.map.as_ptr().add(self.offset) }
    }

    /// The bytes, for reading.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: in bounds (checked in `new`), kept mapped by `self.map`, and owned by the
        // holder of this value under the protocol's ownership rule (see the type's docs).
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// The bytes, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; `&mut self` prevents overlapping slices through this value.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len) }
    }
}

impl crate::MappedBuffer {
    /// Copy the first `len` bytes (at most the buffer's length) out of the mapped
    /// buffer. For callers that hold a handle-mapped buffer and want no unsafe code.
    pub fn to_vec(&self, len: usize) -> Vec<u8> {
        let n = len.min(self.len);
        // SAFETY: `ptr`/`len` describe a range that `map_buffer_handle` checked to lie
        // inside a segment this process keeps mapped for the set's life; the bytes
        // belong to the caller while the command is outstanding.
        unsafe { std::slice::from_raw_parts(self.ptr, n) }.to_vec()
    }

    /// Copy `data` into the mapped buffer (truncated to its length); returns bytes copied.
    pub fn copy_from(&self, data: &[u8]) -> usize {
        let n = data.len().min(self.len);
        // SAFETY: as in `to_vec`; `data` is a separate allocation, so no overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr, n) };
        n
    }
}
