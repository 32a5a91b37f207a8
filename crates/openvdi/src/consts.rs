//! Every numeric constant of the Virtual Device Interface, with its exact value.
//!
//! Values come from the published headers (reference §5): command codes (`VDC_*`),
//! feature bits (`VDF_*`), the Win32 completion codes that travel in
//! `CompleteCommand`, and `VDWhence`. The names follow the C headers so that a
//! reader can grep from one to the other; the `VD_E_*` result codes live in
//! [`crate::HResult`].

#![allow(non_upper_case_globals)]

/// Command codes (`VDCommands`, reference §5.2). Carried in `VDC_Command.commandCode`.
pub mod vdc {
    /// Transfer `size` bytes from the device into the buffer (RESTORE).
    pub const VDC_Read: u32 = 1;
    /// Transfer `size` bytes from the buffer to the device (BACKUP).
    pub const VDC_Write: u32 = 2;
    /// Leave the IO-ERROR state (reference §6.0).
    pub const VDC_ClearError: u32 = 3;
    /// Tape: position to the beginning of the medium.
    pub const VDC_Rewind: u32 = 4;
    /// Tape: write a filemark.
    pub const VDC_WriteMark: u32 = 5;
    /// Tape: skip `size` filemarks.
    pub const VDC_SkipMarks: u32 = 6;
    /// Tape: skip `size` blocks.
    pub const VDC_SkipBlocks: u32 = 7;
    /// Removable media: load the next medium.
    pub const VDC_Load: u32 = 8;
    /// Report the device position.
    pub const VDC_GetPosition: u32 = 9;
    /// Move to a position.
    pub const VDC_SetPosition: u32 = 10;
    /// Optional; only sent with `VDF_Discard`.
    pub const VDC_Discard: u32 = 11;
    /// Make every completed write durable.
    pub const VDC_Flush: u32 = 12;
    /// Snapshot backup: take the snapshot now.
    pub const VDC_Snapshot: u32 = 13;
    /// Snapshot restore: mount the snapshot's files.
    pub const VDC_MountSnapshot: u32 = 14;
    /// Snapshot backup: the server is about to freeze (`VDF_SnapshotPrepare`).
    pub const VDC_PrepareToFreeze: u32 = 15;
    /// Undocumented (VSS writer path).
    pub const VDC_FileInfoBegin: u32 = 16;
    /// Undocumented (VSS writer path).
    pub const VDC_FileInfoEnd: u32 = 17;
    /// Undocumented.
    pub const VDC_GetError: u32 = 18;
    /// All data has been sent; finalise the media (`VDF_CompleteEnabled`).
    pub const VDC_Complete: u32 = 19;

    /// The largest command code this implementation knows.
    pub const MAX: u32 = VDC_Complete;

    /// The header name of a command code, for diagnostics.
    pub fn name(code: u32) -> &'static str {
        match code {
            VDC_Read => "VDC_Read",
            VDC_Write => "VDC_Write",
            VDC_ClearError => "VDC_ClearError",
            VDC_Rewind => "VDC_Rewind",
            VDC_WriteMark => "VDC_WriteMark",
            VDC_SkipMarks => "VDC_SkipMarks",
            VDC_SkipBlocks => "VDC_SkipBlocks",
            VDC_Load => "VDC_Load",
            VDC_GetPosition => "VDC_GetPosition",
            VDC_SetPosition => "VDC_SetPosition",
            VDC_Discard => "VDC_Discard",
            VDC_Flush => "VDC_Flush",
            VDC_Snapshot => "VDC_Snapshot",
            VDC_MountSnapshot => "VDC_MountSnapshot",
            VDC_PrepareToFreeze => "VDC_PrepareToFreeze",
            VDC_FileInfoBegin => "VDC_FileInfoBegin",
            VDC_FileInfoEnd => "VDC_FileInfoEnd",
            VDC_GetError => "VDC_GetError",
            VDC_Complete => "VDC_Complete",
            _ => "unknown",
        }
    }
}

/// Feature bits (`VDFeatures`, reference §5.1), the `features` field of `VDConfig`.
pub mod vdf {
    /// Removable media.
    pub const VDF_Removable: u32 = 0x1;
    /// Supports `VDC_Rewind`.
    pub const VDF_Rewind: u32 = 0x2;
    /// Supports Get/SetPosition.
    pub const VDF_Position: u32 = 0x10;
    /// Supports `VDC_SkipBlocks`.
    pub const VDF_SkipBlocks: u32 = 0x20;
    /// Can position backwards.
    pub const VDF_ReversePosition: u32 = 0x40;
    /// Supports `VDC_Discard`.
    pub const VDF_Discard: u32 = 0x80;
    /// Supports filemarks.
    pub const VDF_FileMarks: u32 = 0x100;
    /// Disk-like: Read and Write carry byte positions.
    pub const VDF_RandomAccess: u32 = 0x200;
    /// Ask for `VDC_PrepareToFreeze`.
    pub const VDF_SnapshotPrepare: u32 = 0x400;
    /// Undocumented.
    pub const VDF_EnumFrozenFiles: u32 = 0x800;
    /// Undocumented.
    pub const VDF_VSSWriter: u32 = 0x1000;
    /// The client asks for a final `VDC_Complete` (KB3188454).
    pub const VDF_RequestComplete: u32 = 0x2000;
    /// Set by the server: it will write (BACKUP).
    pub const VDF_WriteMedia: u32 = 0x10000;
    /// Set by the server: it will read (RESTORE).
    pub const VDF_ReadMedia: u32 = 0x20000;
    /// Set by the server: it will send `VDC_Complete`.
    pub const VDF_CompleteEnabled: u32 = 0x40000;
    /// Undocumented.
    pub const VDF_LatchStats: u32 = 0x8000_0000;
    /// Pipe-like device (no bits).
    pub const VDF_LikePipe: u32 = 0;
    /// Tape-like device.
    pub const VDF_LikeTape: u32 = VDF_FileMarks
        | VDF_Removable
        | VDF_Rewind
        | VDF_Position
        | VDF_SkipBlocks
        | VDF_ReversePosition;
    /// Disk-like device.
    pub const VDF_LikeDisk: u32 = VDF_RandomAccess;

    /// Every bit a client may request in `VDConfig.features` at Create.
    pub const CLIENT_BITS: u32 = VDF_Removable
        | VDF_Rewind
        | VDF_Position
        | VDF_SkipBlocks
        | VDF_ReversePosition
        | VDF_Discard
        | VDF_FileMarks
        | VDF_RandomAccess
        | VDF_SnapshotPrepare
        | VDF_EnumFrozenFiles
        | VDF_VSSWriter
        | VDF_RequestComplete
        | VDF_LatchStats;
    /// Every bit a server may return.
    pub const SERVER_BITS: u32 = CLIENT_BITS | VDF_WriteMedia | VDF_ReadMedia | VDF_CompleteEnabled;
}

/// Win32 completion codes used with `CompleteCommand` (reference §5.5). Any other
/// value passes through as a plain integer.
pub mod win32 {
    /// Success.
    pub const ERROR_SUCCESS: u32 = 0;
    /// Server side: SendCommand on a device that is not active.
    pub const ERROR_INVALID_HANDLE: u32 = 6;
    /// Defined by the Linux header; use undocumented.
    pub const ERROR_ARENA_TRASHED: u32 = 7;
    /// Seen in clients for their own failures.
    pub const ERROR_BAD_ENVIRONMENT: u32 = 10;
    /// Write fault.
    pub const ERROR_WRITE_FAULT: u32 = 29;
    /// Read fault.
    pub const ERROR_READ_FAULT: u32 = 30;
    /// Read: no more data.
    pub const ERROR_HANDLE_EOF: u32 = 38;
    /// Defined by the Linux header (disk full variant).
    pub const ERROR_HANDLE_DISK_FULL: u32 = 39;
    /// The client does not implement this command.
    pub const ERROR_NOT_SUPPORTED: u32 = 50;
    /// Write: the device is full.
    pub const ERROR_DISK_FULL: u32 = 112;
    /// Completion of every outstanding command after an abort.
    pub const ERROR_OPERATION_ABORTED: u32 = 995;
    /// Write: end-of-media warning zone reached.
    pub const ERROR_END_OF_MEDIA: u32 = 1100;
    /// Read: a filemark was reached.
    pub const ERROR_FILEMARK_DETECTED: u32 = 1101;
    /// Read: no more data (treated like `ERROR_HANDLE_EOF`).
    pub const ERROR_NO_DATA_DETECTED: u32 = 1104;
    /// Commands flushed or refused while the device is in IO-ERROR.
    pub const ERROR_IO_DEVICE: u32 = 1117;
    /// Write: the device cannot store more.
    pub const ERROR_EOM_OVERFLOW: u32 = 1129;
    /// SendCommand: the device queue is full.
    pub const ERROR_NO_SYSTEM_RESOURCES: u32 = 1450;
}

/// Origins for `VDC_SetPosition` in disk-like mode (`VDWhence`, reference §5.3).
pub mod whence {
    /// From the start of the file.
    pub const VDC_Beginning: u32 = 0;
    /// From the current position.
    pub const VDC_Current: u32 = 1;
    /// From the end of the file.
    pub const VDC_End: u32 = 2;
}
