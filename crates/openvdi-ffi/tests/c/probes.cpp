// Source-compatibility probes: things code written against Microsoft's Linux
// vdi.h relies on, compiled with -Wall -Wextra -Werror (tests/c_programs.rs).
#include "vdi.h"
#include "vdi.h" // a second include is harmless (include guards)
#include <algorithm>
#include <type_traits>

#ifndef __vdi_h__
#error "Microsoft's include guard __vdi_h__ is not defined by vdi.h"
#endif

// The ERROR_* completion codes are long constants.
static_assert(std::is_same<decltype(ERROR_HANDLE_EOF), long>::value, "ERROR_HANDLE_EOF is long");
static_assert(std::is_same<decltype(ERROR_SUCCESS), long>::value, "ERROR_SUCCESS is long");
static_assert(std::is_same<decltype(ERROR_OPERATION_ABORTED), long>::value, "long");
// VDF_LatchStats keeps its value when widened (not sign-extended).
static_assert(static_cast<long>(VDF_LatchStats) == 0x80000000L, "VDF_LatchStats widens to 0x80000000");
static_assert(static_cast<unsigned long>(VDF_LatchStats) == 0x80000000UL, "unsigned too");

int main() {
    long transferred = 12;
    // Compiles only when ERROR_HANDLE_EOF is a long, as with Microsoft's header.
    long m = std::max(transferred, ERROR_HANDLE_EOF);
    long features = VDF_LatchStats;
    return (m == 38 && features == 0x80000000L) ? 0 : 1;
}
