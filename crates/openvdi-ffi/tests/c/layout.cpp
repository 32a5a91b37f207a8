// Compiled-only layout test: vdi.h and openvdi.h agree with Microsoft's Linux SDK
// layout (reference §4, §9.2) and with each other.
#include <cstddef>
#include <cstdint>
#include "vdi.h"
#include "vdierror.h"
#include "openvdi.h"

static_assert(sizeof(VDConfig) == 44, "VDConfig is 44 bytes");
static_assert(offsetof(VDConfig, deviceCount) == 0, "");
static_assert(offsetof(VDConfig, features) == 4, "");
static_assert(offsetof(VDConfig, serverTimeOut) == 24, "");
static_assert(offsetof(VDConfig, blockSize) == 28, "");
static_assert(offsetof(VDConfig, bufferAreaSize) == 40, "");
static_assert(sizeof(VDC_Command) == 24, "VDC_Command is 24 bytes on x86-64");
static_assert(offsetof(VDC_Command, commandCode) == 0, "");
static_assert(offsetof(VDC_Command, size) == 4, "");
static_assert(offsetof(VDC_Command, position) == 8, "");
static_assert(offsetof(VDC_Command, buffer) == 16, "");
static_assert(sizeof(VDS_Command) == 56, "VDS_Command is 56 bytes on x86-64");
static_assert(offsetof(VDS_Command, outPosition) == 16, "");
static_assert(offsetof(VDS_Command, buffer) == 24, "");
static_assert(offsetof(VDS_Command, completionRoutine) == 32, "");
static_assert(offsetof(VDS_Command, completionContext) == 40, "");
static_assert(offsetof(VDS_Command, completionCode) == 48, "");
static_assert(offsetof(VDS_Command, bytesTransferred) == 52, "");
static_assert(sizeof(ClientVirtualDeviceSet) == sizeof(void *), "one private pointer");
static_assert(sizeof(ClientVirtualDevice) == sizeof(void *), "one private pointer");
static_assert(sizeof(openvdi_config) == sizeof(VDConfig), "");
static_assert(sizeof(openvdi_command) == sizeof(VDC_Command), "");
static_assert(offsetof(openvdi_command, buffer) == offsetof(VDC_Command, buffer), "");

static_assert(VD_E_NOTOPEN == (int)0x80770002, "");
static_assert(VD_E_TIMEOUT == (int)0x80770003, "");
static_assert(VD_E_ABORT == (int)0x80770004, "");
static_assert(VD_E_SECURITY == (int)0x80770005, "");
static_assert(VD_E_INVALID == (int)0x80770006, "");
static_assert(VD_E_INSTANCE_NAME == (int)0x80770007, "");
static_assert(VD_E_NOTSUPPORTED == (int)0x80770009, "");
static_assert(VD_E_MEMORY == (int)0x8077000A, "");
static_assert(VD_E_UNEXPECTED == (int)0x8077000B, "");
static_assert(VD_E_PROTOCOL == (int)0x8077000C, "");
static_assert(VD_E_OPEN == (int)0x8077000D, "");
static_assert(VD_E_CLOSE == (int)0x8077000E, "");
static_assert(VD_E_BUSY == (int)0x8077000F, "");
static_assert(VD_E_TIMEOUT < 0, "negative as int");

static_assert(VDF_WriteMedia == 0x10000 && VDF_ReadMedia == 0x20000, "");
static_assert(VDF_RequestComplete == 0x2000 && VDF_CompleteEnabled == 0x40000, "");
static_assert(VDF_LikeTape == 0x173 && VDF_LikeDisk == 0x200, "");
static_assert(VDC_Read == 1 && VDC_Write == 2 && VDC_ClearError == 3 && VDC_Flush == 12, "");
static_assert(VDC_Snapshot == 13 && VDC_PrepareToFreeze == 15 && VDC_Complete == 19, "");
static_assert(VDC_Beginning == 0 && VDC_Current == 1 && VDC_End == 2, "");
static_assert(ERROR_SUCCESS == 0 && ERROR_ARENA_TRASHED == 7 && ERROR_HANDLE_EOF == 38, "");
static_assert(ERROR_HANDLE_DISK_FULL == 39 && ERROR_NOT_SUPPORTED == 50, "");
static_assert(ERROR_DISK_FULL == 112 && ERROR_OPERATION_ABORTED == 995, "");

int main() { return 0; }
