//! The shared-memory layout, version 3. `docs/PROTOCOL.md` describes the same bytes
//! in prose; the `const` asserts at the bottom pin every offset it names.
//!
//! Every field is an atomic, including padding, because the peer may write any byte
//! at any time: with atomics a hostile or buggy peer can make us read garbage (which
//! we then validate) but never cause a data race in the Rust sense. Nothing here is a
//! pointer; buffers are named by (segment, offset).
//!
//! All atomics of the protocol live in this module's types (house style: one place
//! to audit every Release/Acquire pair; the pairs are marked `SYNC POINT` where used).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

/// "OPENVDI\x01" little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"OPENVDI\x01");
/// Layout version; bumped on any incompatible change.
/// Version 2: the `*_waiting` words are announcements the waker clears (swap to 0)
/// as it wakes, no longer counters the sleepers decrement.
/// Version 3: a command and a completion each travel in one 64-byte ring entry whose
/// `turn` word publishes it (one cache line per hand-off instead of a head word, a
/// ring word and a slot); the event words are bumped only to wake a sleeper; the
/// publisher's StoreLoad fence is replaced by the sleeper's membarrier(2).
pub const VERSION: u32 = 3;
/// Commands a device can have queued or outstanding at once.
pub const SLOTS: usize = 64;
/// Buffer-area segments a set can have.
pub const MAX_SEGMENTS: usize = 16;
/// Bytes of a name field.
pub const NAME_BYTES: usize = 128;

/// `SetHeader.state` values (the set's life, server-driven).
pub mod set_state {
    /// The client is still writing the header (the zero a fresh object starts with).
    #[allow(dead_code)]
    pub const INIT: u32 = 0;
    /// Created by the client; no server yet (spec: Configurable).
    pub const CREATED: u32 = 1;
    /// A server opened the set (spec: server Connected).
    pub const SERVER_OPEN: u32 = 2;
    /// BeginConfiguration done; buffers being requested.
    pub const CONFIGURING: u32 = 3;
    /// EndConfiguration done: the server configuration is valid, buffers exist,
    /// devices may be opened (spec: Initializing/Active).
    pub const CONFIGURED: u32 = 4;
    /// The server closed the set.
    pub const SERVER_CLOSED: u32 = 5;
}

/// `DeviceBlock.state` bits.
pub mod dev_state {
    /// A client process opened the device.
    pub const CLIENT_OPEN: u32 = 1;
    /// The server opened the device.
    pub const SERVER_OPEN: u32 = 2;
    /// The server closed the device (CloseDevice); the client gets VD_E_CLOSE once
    /// the queue is drained.
    pub const SERVER_CLOSED: u32 = 4;
    /// A command completed with an error (spec §6.0 IO-ERROR).
    pub const IO_ERROR: u32 = 8;
}

/// `Slot.state` values.
pub mod slot_state {
    /// No command delivered in the slot.
    pub const FREE: u32 = 0;
    /// Taken by a client process with GetCommand; the buffer belongs to the client.
    pub const DELIVERED: u32 = 2;
}

/// One hot 32-bit word alone on a 64-byte cache line, so that the two processes'
/// counters do not false-share.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Line {
    /// The word.
    pub v: AtomicU32,
    _pad: [AtomicU32; 15],
}

/// One buffer-area segment, published by the server.
#[repr(C)]
#[derive(Debug)]
pub struct SegmentEntry {
    /// Size in bytes of `openvdi-buf<N>.<set>`.
    pub size: AtomicU64,
    _reserved: AtomicU64,
}

/// The set header at offset 0 of the control object (4096 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct SetHeader {
    /// [`MAGIC`]; written last by the creator (SYNC POINT with the opener's check).
    pub magic: AtomicU64,
    /// [`VERSION`].
    pub version: AtomicU32,
    /// `size_of::<SetHeader>()`.
    pub header_size: AtomicU32,
    /// Size of the whole control object.
    pub region_size: AtomicU64,
    /// Devices in the set (1..=64).
    pub device_count: AtomicU32,
    /// [`SLOTS`].
    pub slots_per_device: AtomicU32,
    /// `size_of::<DeviceBlock>()`.
    pub device_block_size: AtomicU32,
    /// Process id of the primary client.
    pub creator_pid: AtomicU32,
    /// Mode bits of the objects (0600 or 0660).
    pub mode: AtomicU32,
    /// Group of the objects, or `u32::MAX` for the creator's default.
    pub gid: AtomicU32,
    /// Length of `name`.
    pub name_len: AtomicU32,
    _pad0: [AtomicU32; 3],
    /// The set name (UTF-8, not NUL-terminated).
    pub name: [AtomicU8; NAME_BYTES],
    /// The client's VDConfig (11 words), written before `state` becomes CREATED.
    pub client_cfg: [AtomicU32; 11],
    _pad1: AtomicU32,
    /// The server's final VDConfig, written before `state` becomes CONFIGURED.
    pub server_cfg: [AtomicU32; 11],
    _pad2: [AtomicU32; 9],
    /// [`set_state`]; futex word.
    pub state: Line,
    /// 0, or the [`crate::AbortReason`] of the abort; futex word.
    pub abort: Line,
    /// Robust word of the primary client's sentinel thread.
    pub client_live: Line,
    /// Robust word of the server's sentinel thread.
    pub server_live: Line,
    /// Number of published entries in `segments`.
    pub segment_count: Line,
    /// 1 once the primary client called Close.
    pub client_closed: Line,
    _pad3: [AtomicU64; 32],
    /// The buffer-area segments.
    pub segments: [SegmentEntry; MAX_SEGMENTS],
    _pad4: [AtomicU64; 360],
}

/// One submission ring entry (64 bytes, one cache line): a command as the server
/// sent it. The server writes every field, then Release-stores `turn`; the client
/// reads the entry once `turn` says it is the one it expects.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SubEntry {
    /// Ring position + 1 (wrapping) of the command this entry holds; 0 = never used.
    pub turn: AtomicU32,
    /// VDC_* command code.
    pub code: AtomicU32,
    /// `size` of the command.
    pub size: AtomicU32,
    /// The slot the command occupies until it is completed (< [`SLOTS`]).
    pub slot: AtomicU32,
    /// `position` of the command.
    pub position: AtomicU64,
    /// Segment of the buffer, or `u32::MAX` for none.
    pub segment: AtomicU32,
    /// Usable bytes of the buffer at `offset`.
    pub buf_len: AtomicU32,
    /// Offset of the buffer's data zone in its segment.
    pub offset: AtomicU64,
    /// Sequence number of the command instance (nonzero), for handles and stale-id checks.
    pub seq: AtomicU32,
    _pad: [AtomicU32; 5],
}

/// One completion ring entry (64 bytes): the client writes every field, then
/// Release-stores `turn`.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct CmpEntry {
    /// Ring position + 1 (wrapping) of the completion this entry holds; 0 = never used.
    pub turn: AtomicU32,
    /// The slot of the completed command.
    pub slot: AtomicU32,
    /// Its sequence number.
    pub seq: AtomicU32,
    /// Win32 completion code.
    pub completion_code: AtomicU32,
    /// Bytes transferred.
    pub bytes: AtomicU32,
    _pad0: AtomicU32,
    /// Completion position.
    pub out_position: AtomicU64,
    _pad: [AtomicU64; 4],
}

/// One command slot (64 bytes) of the client side's table of delivered commands:
/// written by the client process that took the command, read by every client
/// process of the set for buffer handles (GetBufferHandle / MapBufferHandle). The
/// server never reads it.
#[repr(C)]
#[derive(Debug)]
pub struct Slot {
    /// VDC_* command code.
    pub code: AtomicU32,
    /// `size` of the command.
    pub size: AtomicU32,
    /// `position` of the command.
    pub position: AtomicU64,
    /// Segment of the buffer, or `u32::MAX` for none.
    pub segment: AtomicU32,
    /// Usable bytes of the buffer at `offset`.
    pub buf_len: AtomicU32,
    /// Offset of the buffer's data zone in its segment.
    pub offset: AtomicU64,
    /// Sequence number of the command instance.
    pub seq: AtomicU32,
    /// [`slot_state`].
    pub state: AtomicU32,
    _pad: [AtomicU64; 3],
}

/// The per-device block (8192 bytes), after the header.
#[repr(C)]
#[derive(Debug)]
pub struct DeviceBlock {
    /// Length of `name`.
    pub name_len: AtomicU32,
    _pad0: [AtomicU32; 15],
    /// Device name, written by the server at BeginConfiguration.
    pub name: [AtomicU8; NAME_BYTES],
    _pad1: [AtomicU32; 16],
    /// [`dev_state`] bits.
    pub state: Line,
    /// The client's futex word: bumped by the server only to wake a client thread
    /// that announced it sleeps (and by CloseDevice and aborts).
    pub sub_event: Line,
    /// Nonzero: a client thread may be asleep on `sub_event`; the server swaps it to
    /// 0, bumps `sub_event` and wakes.
    pub client_waiting: Line,
    /// The server's futex word, bumped by the client only to wake.
    pub cmp_event: Line,
    /// Nonzero: a server thread may be asleep on `cmp_event`; the client swaps it to
    /// 0, bumps `cmp_event` and wakes.
    pub server_waiting: Line,
    _pad2: [AtomicU64; 56],
    /// Submission ring: command k (wrapping count from 0) in `sub_ring[k mod 64]`.
    pub sub_ring: [SubEntry; SLOTS],
    /// Completion ring, likewise.
    pub cmp_ring: [CmpEntry; SLOTS],
    /// The command slots.
    pub slots: [Slot; SLOTS],
    _pad3: [AtomicU64; 384],
}

/// Offset of device `i`'s block in the control object.
pub const fn device_offset(i: usize) -> usize {
    std::mem::size_of::<SetHeader>() + i * std::mem::size_of::<DeviceBlock>()
}

/// Size of the control object for `devices` devices.
pub const fn region_size(devices: usize) -> usize {
    device_offset(devices)
}

// Pinned layout: docs/PROTOCOL.md names these offsets.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Line>() == 64);
    assert!(size_of::<SegmentEntry>() == 16);
    assert!(offset_of!(SetHeader, magic) == 0);
    assert!(offset_of!(SetHeader, version) == 8);
    assert!(offset_of!(SetHeader, header_size) == 12);
    assert!(offset_of!(SetHeader, region_size) == 16);
    assert!(offset_of!(SetHeader, device_count) == 24);
    assert!(offset_of!(SetHeader, slots_per_device) == 28);
    assert!(offset_of!(SetHeader, device_block_size) == 32);
    assert!(offset_of!(SetHeader, creator_pid) == 36);
    assert!(offset_of!(SetHeader, mode) == 40);
    assert!(offset_of!(SetHeader, gid) == 44);
    assert!(offset_of!(SetHeader, name_len) == 48);
    assert!(offset_of!(SetHeader, name) == 64);
    assert!(offset_of!(SetHeader, client_cfg) == 192);
    assert!(offset_of!(SetHeader, server_cfg) == 240);
    assert!(offset_of!(SetHeader, state) == 320);
    assert!(offset_of!(SetHeader, abort) == 384);
    assert!(offset_of!(SetHeader, client_live) == 448);
    assert!(offset_of!(SetHeader, server_live) == 512);
    assert!(offset_of!(SetHeader, segment_count) == 576);
    assert!(offset_of!(SetHeader, client_closed) == 640);
    assert!(offset_of!(SetHeader, segments) == 960);
    assert!(size_of::<SetHeader>() == 4096);

    assert!(size_of::<SubEntry>() == 64);
    assert!(offset_of!(SubEntry, turn) == 0);
    assert!(offset_of!(SubEntry, code) == 4);
    assert!(offset_of!(SubEntry, size) == 8);
    assert!(offset_of!(SubEntry, slot) == 12);
    assert!(offset_of!(SubEntry, position) == 16);
    assert!(offset_of!(SubEntry, segment) == 24);
    assert!(offset_of!(SubEntry, buf_len) == 28);
    assert!(offset_of!(SubEntry, offset) == 32);
    assert!(offset_of!(SubEntry, seq) == 40);

    assert!(size_of::<CmpEntry>() == 64);
    assert!(offset_of!(CmpEntry, turn) == 0);
    assert!(offset_of!(CmpEntry, slot) == 4);
    assert!(offset_of!(CmpEntry, seq) == 8);
    assert!(offset_of!(CmpEntry, completion_code) == 12);
    assert!(offset_of!(CmpEntry, bytes) == 16);
    assert!(offset_of!(CmpEntry, out_position) == 24);

    assert!(size_of::<Slot>() == 64);
    assert!(offset_of!(Slot, code) == 0);
    assert!(offset_of!(Slot, size) == 4);
    assert!(offset_of!(Slot, position) == 8);
    assert!(offset_of!(Slot, segment) == 16);
    assert!(offset_of!(Slot, buf_len) == 20);
    assert!(offset_of!(Slot, offset) == 24);
    assert!(offset_of!(Slot, seq) == 32);
    assert!(offset_of!(Slot, state) == 36);

    assert!(offset_of!(DeviceBlock, name_len) == 0);
    assert!(offset_of!(DeviceBlock, name) == 64);
    assert!(offset_of!(DeviceBlock, state) == 256);
    assert!(offset_of!(DeviceBlock, sub_event) == 320);
    assert!(offset_of!(DeviceBlock, client_waiting) == 384);
    assert!(offset_of!(DeviceBlock, cmp_event) == 448);
    assert!(offset_of!(DeviceBlock, server_waiting) == 512);
    assert!(offset_of!(DeviceBlock, sub_ring) == 1024);
    assert!(offset_of!(DeviceBlock, cmp_ring) == 5120);
    assert!(offset_of!(DeviceBlock, slots) == 9216);
    assert!(size_of::<DeviceBlock>() == 16384);
};
