/*
 * vdi.h - the client side of the SQL Server Virtual Device Interface (VDI) for
 * Linux, as provided by openvdi's libsqlvdi.so.
 *
 * Source- and layout-compatible with the vdi.h of Microsoft's Linux VDI SDK, so
 * that existing C++ clients compile unmodified and link with -lsqlvdi: the same
 * structures with the same layout, the same constants, and the classes
 * ClientVirtualDeviceSet and ClientVirtualDevice with the same public methods, each
 * holding a single private pointer. Timeouts are milliseconds; a negative value
 * waits forever, 0 polls. Methods return 0 or a VD_E_* code (vdierror.h).
 *
 * Written for openvdi from the published description of the interface; see
 * crates/openvdi-ffi/README.md for linking and openvdi.h for a plain C API.
 */
/* Both guards: openvdi's own, and the one Microsoft's vdi.h uses, so that code
 * which tests for (or defines, to keep a header out) __vdi_h__ behaves the same. */
#ifndef VDI_H_
#define VDI_H_
#ifndef __vdi_h__
#define __vdi_h__

#include <stdint.h>
#include <time.h>
#include "vdierror.h"

#pragma pack(push, 8)

/* Configuration of a virtual device set: 11 x 32-bit fields, 44 bytes. */
struct VDConfig {
    uint32_t deviceCount;           /* client: 1..64 devices */
    uint32_t features;              /* client requests / server returns (VDFeatures) */
    uint32_t prefixZoneSize;        /* client: bytes reserved before each buffer */
    uint32_t alignment;             /* client minimum / server final buffer alignment */
    uint32_t softFileMarkBlockSize; /* client */
    uint32_t EOMWarningSize;        /* client */
    uint32_t serverTimeOut;         /* client: ms; 0 = no limit */
    uint32_t blockSize;             /* server: BLOCKSIZE */
    uint32_t maxIODepth;            /* server: deprecated */
    uint32_t maxTransferSize;       /* server: MAXTRANSFERSIZE */
    uint32_t bufferAreaSize;        /* server */
};

/* Feature bits of VDConfig.features. */
enum VDFeatures {
    VDF_Removable       = 0x1,
    VDF_Rewind          = 0x02,
    VDF_Position        = 0x10,
    VDF_SkipBlocks      = 0x20,
    VDF_ReversePosition = 0x40,
    VDF_Discard         = 0x80,
    VDF_FileMarks       = 0x100,
    VDF_RandomAccess    = 0x200,
    VDF_SnapshotPrepare = 0x400,
    VDF_EnumFrozenFiles = 0x800,
    VDF_VSSWriter       = 0x1000,
    VDF_RequestComplete = 0x2000,
    VDF_WriteMedia      = 0x10000,
    VDF_ReadMedia       = 0x20000,
    VDF_CompleteEnabled = 0x40000,
    VDF_LatchStats      = 0x80000000,
    VDF_LikePipe        = 0,
    VDF_LikeTape        = VDF_FileMarks | VDF_Removable | VDF_Rewind | VDF_Position |
                          VDF_SkipBlocks | VDF_ReversePosition,
    VDF_LikeDisk        = VDF_RandomAccess
};

/* Command codes of VDC_Command.commandCode. */
enum VDCommands {
    VDC_Read = 1,
    VDC_Write = VDC_Read + 1,
    VDC_ClearError = VDC_Write + 1,
    VDC_Rewind = VDC_ClearError + 1,
    VDC_WriteMark = VDC_Rewind + 1,
    VDC_SkipMarks = VDC_WriteMark + 1,
    VDC_SkipBlocks = VDC_SkipMarks + 1,
    VDC_Load = VDC_SkipBlocks + 1,
    VDC_GetPosition = VDC_Load + 1,
    VDC_SetPosition = VDC_GetPosition + 1,
    VDC_Discard = VDC_SetPosition + 1,
    VDC_Flush = VDC_Discard + 1,
    VDC_Snapshot = VDC_Flush + 1,
    VDC_MountSnapshot = VDC_Snapshot + 1,
    VDC_PrepareToFreeze = VDC_MountSnapshot + 1,
    VDC_FileInfoBegin = VDC_PrepareToFreeze + 1,
    VDC_FileInfoEnd = VDC_FileInfoBegin + 1,
    VDC_GetError = VDC_FileInfoEnd + 1,
    VDC_Complete = VDC_GetError + 1
};

/* Origins for VDC_SetPosition on random-access devices. */
enum VDWhence {
    VDC_Beginning = 0,
    VDC_Current,
    VDC_End
};

/* A command as the client sees it: 24 bytes on x86-64. */
struct VDC_Command {
    int32_t  commandCode;
    int32_t  size;
    int64_t  position;
    uint8_t *buffer;
};

/* A command as the server sees it: 56 bytes on x86-64. */
struct VDS_Command {
    int32_t  commandCode;
    int32_t  size;
    int64_t  inPosition;
    int64_t  outPosition;
    uint8_t *buffer;
    uint8_t *completionRoutine;
    uint8_t *completionContext;
    int32_t  completionCode;
    int32_t  bytesTransferred;
};

/* Win32 completion codes for CompleteCommand: long constants, as in Microsoft's
 * header (code like std::max(long, ERROR_HANDLE_EOF) depends on the type). */
#define ERROR_SUCCESS           0L
#define ERROR_ARENA_TRASHED     7L
#define ERROR_HANDLE_EOF        38L
#define ERROR_HANDLE_DISK_FULL  39L
#define ERROR_NOT_SUPPORTED     50L
#define ERROR_DISK_FULL         112L
#define ERROR_OPERATION_ABORTED 995L

#pragma pack(pop)

#ifdef __cplusplus
extern "C" {

class CVD;
class CVDS;

/* One device of a set, returned by ClientVirtualDeviceSet::OpenDevice. */
class ClientVirtualDevice {
public:
    ClientVirtualDevice();
    ~ClientVirtualDevice();

    /* Wait up to timeOut ms (negative: forever) for the next command. The command
     * block stays readable until the next GetCommand on this device. */
    int GetCommand(time_t timeOut, VDC_Command **ppCmd);

    /* Report a command's completion (a Win32 code, bytes moved, position). */
    int CompleteCommand(VDC_Command *pCmd, int completionCode,
                        unsigned long bytesTransferred, int64_t position);

private:
    CVD *cvd;
    friend class ClientVirtualDeviceSet;
};

/* A virtual device set, client side. */
class ClientVirtualDeviceSet {
public:
    int Create(char *name, VDConfig *cfg);
    int GetConfiguration(time_t timeout, VDConfig *cfg);
    int OpenDevice(char *name, ClientVirtualDevice **ppVirtualDevice);
    int Close();
    int SignalAbort();
    int OpenInSecondary(char *setName);
    int GetBufferHandle(uint8_t *pBuffer, unsigned int *pBufferHandle);
    int MapBufferHandle(int dwBuffer, uint8_t **ppBuffer);
    void RegisterDeviceClosed();

    ClientVirtualDeviceSet();
    ~ClientVirtualDeviceSet();

private:
    CVDS *cvds;
};

} /* extern "C" */
#endif /* __cplusplus */

#endif /* __vdi_h__ */
#endif /* VDI_H_ */
