// A VDI client written the way existing Linux VDI clients are (Microsoft's
// vdipipesample and friends): new ClientVirtualDeviceSet, Create, start the server,
// GetConfiguration, OpenDevice, a GetCommand/CompleteCommand loop per device, Close.
// It compiles unmodified against any vdi.h of the Linux SDK.
//
//   client backup|restore SET DEVICES DIR SERVER_EXE TOTAL SEED [mp]
//
// backup stores each device's stream in DIR/devN.bin; restore serves it back.
// "mp": one device, the data moved by a secondary process (OpenInSecondary +
// MapBufferHandle) while this primary does GetCommand, GetBufferHandle and
// CompleteCommand.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include "vdi.h"
#include "vdierror.h"

static bool g_restore;
static std::string g_dir;
// GetCommand's timeout (ms): VDI_GETCOMMAND_MS, default 60 s. Microsoft's Linux
// sample waits 90 ms and, like every timeout here, takes it as fatal.
static unsigned long g_command_ms = 60000;
// VDI_GAPS=1: print the longest wait in GetCommand (ms) per device on stderr.
static bool g_gaps;
static long g_longest_at;

// Returns 0 when the server closed the device, 3 on a failure (the caller aborts
// and closes the set: a client must Close even after a failure, or a dead
// server leaves the set's objects behind).
static int handle_command(ClientVirtualDevice *dev, FILE *f, int idx, long *count) {
    double longest = 0;
    for (;;) {
        VDC_Command *cmd = NULL;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int hr = dev->GetCommand(g_command_ms, &cmd);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (ms > longest && hr == 0) { longest = ms; g_longest_at = *count; }
        if (hr == VD_E_CLOSE) {
            if (g_gaps) fprintf(stderr, "dev %d: longest GetCommand wait %.1f ms (before command %ld) over %ld commands\n", idx, longest, g_longest_at + 1, *count);
            return 0;
        }
        if (hr != 0) { fprintf(stderr, "dev %d: GetCommand 0x%x after %ld commands\n", idx, (unsigned)hr, *count); return 3; }
        int completion = ERROR_SUCCESS;
        unsigned long bytes = 0;
        switch (cmd->commandCode) {
        case VDC_Read:
            bytes = fread(cmd->buffer, 1, (size_t)cmd->size, f);
            if (bytes < (unsigned long)cmd->size) completion = ERROR_HANDLE_EOF;
            break;
        case VDC_Write:
            bytes = fwrite(cmd->buffer, 1, (size_t)cmd->size, f);
            if (bytes < (unsigned long)cmd->size) completion = ERROR_DISK_FULL;
            break;
        case VDC_Flush:
            fflush(f);
            break;
        case VDC_ClearError:
            break;
        default:
            completion = ERROR_NOT_SUPPORTED;
        }
        hr = dev->CompleteCommand(cmd, completion, bytes, 0);
        if (hr != 0) { fprintf(stderr, "dev %d: CompleteCommand 0x%x\n", idx, (unsigned)hr); return 3; }
        // Like Microsoft's sample: read the command block after completing it.
        if (cmd->commandCode < VDC_Read || cmd->commandCode > VDC_Complete) { fprintf(stderr, "command block changed\n"); return 3; }
        (*count)++;
    }
}

// A failure after Create: abort the set (the server's statement fails) and Close
// it, so nothing is left in /dev/shm whatever state the server is in.
static int give_up(ClientVirtualDeviceSet *vds, const char *what, int hr) {
    fprintf(stderr, "%s 0x%x\n", what, (unsigned)hr);
    vds->SignalAbort();
    vds->Close();
    delete vds;
    return 3;
}

static pid_t start(const char *exe, std::vector<std::string> args) {
    pid_t pid = fork();
    if (pid == 0) {
        std::vector<char *> argv;
        argv.push_back(const_cast<char *>(exe));
        for (auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
        argv.push_back(NULL);
        execv(exe, argv.data());
        _exit(127);
    }
    return pid;
}

// The secondary process: joins the set and moves the data of each buffer handle the
// primary sends on stdin ("HANDLE SIZE"), answering the byte count on stdout.
static int secondary(const char *set_name, const char *path) {
    ClientVirtualDeviceSet *vds = new ClientVirtualDeviceSet();
    int hr = vds->OpenInSecondary(const_cast<char *>(set_name));
    if (hr != 0) { fprintf(stderr, "OpenInSecondary 0x%x\n", (unsigned)hr); return 3; }
    VDConfig cfg;
    hr = vds->GetConfiguration(1000, &cfg);
    if (hr != 0) { fprintf(stderr, "secondary GetConfiguration 0x%x\n", (unsigned)hr); return 3; }
    bool writing = cfg.features & VDF_WriteMedia;
    FILE *f = fopen(path, writing ? "wb" : "rb");
    if (!f) { perror(path); return 3; }
    unsigned handle; int size;
    while (scanf("%u %d", &handle, &size) == 2) {
        uint8_t *p = NULL;
        hr = vds->MapBufferHandle((int)handle, &p);
        if (hr != 0) { printf("-1\n"); fflush(stdout); continue; }
        size_t n = writing ? fwrite(p, 1, (size_t)size, f) : fread(p, 1, (size_t)size, f);
        printf("%zu\n", n);
        fflush(stdout);
    }
    fclose(f);
    vds->Close();
    delete vds;
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "secondary") == 0) return secondary(argv[2], argv[3]);
    if (argc < 8) { fprintf(stderr, "usage: client backup|restore SET DEVICES DIR SERVER TOTAL SEED [mp]\n"); return 2; }
    g_restore = strcmp(argv[1], "restore") == 0;
    if (const char *ms = getenv("VDI_GETCOMMAND_MS")) g_command_ms = strtoul(ms, NULL, 10);
    g_gaps = getenv("VDI_GAPS") != NULL;
    char *set_name = argv[2];
    int devices = atoi(argv[3]);
    g_dir = argv[4];
    bool mp = argc > 8 && strcmp(argv[8], "mp") == 0;

    ClientVirtualDeviceSet *vds = new ClientVirtualDeviceSet();
    VDConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deviceCount = (uint32_t)devices;
    int hr = vds->Create(set_name, &cfg);
    if (hr != 0) { fprintf(stderr, "Create 0x%x\n", (unsigned)hr); return 3; }
    if (vds->Create(set_name, &cfg) != VD_E_PROTOCOL) return give_up(vds, "second Create not refused", 0);

    pid_t server = start(argv[5], {set_name, g_restore ? "restore" : "backup", argv[6], argv[3], argv[7]});
    hr = vds->GetConfiguration(10000, &cfg);
    if (hr != 0) return give_up(vds, "GetConfiguration", hr);
    if (!!(cfg.features & VDF_ReadMedia) != g_restore) return give_up(vds, "wrong direction", (int)cfg.features);

    char bogus[] = "no-such-device";
    ClientVirtualDevice *extra = NULL;
    if (vds->OpenDevice(bogus, &extra) != VD_E_INVALID || extra != NULL) return give_up(vds, "unknown device accepted", 0);
    std::vector<ClientVirtualDevice *> devs((size_t)devices);
    for (int i = 0; i < devices; i++) {
        std::string name = i == 0 ? std::string(set_name) : std::string(set_name) + std::to_string(i);
        hr = vds->OpenDevice(const_cast<char *>(name.c_str()), &devs[(size_t)i]);
        if (hr != 0) return give_up(vds, name.c_str(), hr);
    }
    if (vds->OpenDevice(set_name, &extra) != VD_E_OPEN || extra != NULL) return give_up(vds, "VD_E_OPEN expected", 0);
    long total_commands = 0;

    if (!mp) {
        std::vector<std::thread> threads;
        std::vector<long> counts((size_t)devices, 0);
        std::vector<int> results((size_t)devices, 0);
        for (int i = 0; i < devices; i++) {
            threads.emplace_back([i, &devs, &counts, &results]() {
                std::string path = g_dir + "/dev" + std::to_string(i) + ".bin";
                FILE *f = fopen(path.c_str(), g_restore ? "rb" : "wb");
                if (!f) { perror(path.c_str()); results[(size_t)i] = 3; return; }
                results[(size_t)i] = handle_command(devs[(size_t)i], f, i, &counts[(size_t)i]);
                fclose(f);
            });
        }
        for (auto &t : threads) t.join();
        for (long c : counts) total_commands += c;
        for (int r : results) {
            if (r != 0) {
                int st = 0;
                waitpid(server, &st, 0);
                return give_up(vds, "a device failed", r);
            }
        }
    } else {
        // Multi-process: a secondary moves the bytes through MapBufferHandle.
        int to_child[2], from_child[2];
        if (pipe(to_child) || pipe(from_child)) return 3;
        std::string path = g_dir + "/dev0.bin";
        pid_t child = fork();
        if (child == 0) {
            dup2(to_child[0], 0); dup2(from_child[1], 1);
            close(to_child[1]); close(from_child[0]);
            execl(argv[0], argv[0], "secondary", set_name, path.c_str(), (char *)NULL);
            _exit(127);
        }
        close(to_child[0]); close(from_child[1]);
        FILE *to = fdopen(to_child[1], "w");
        FILE *from = fdopen(from_child[0], "r");
        ClientVirtualDevice *dev = devs[0];
        for (;;) {
            VDC_Command *cmd = NULL;
            hr = dev->GetCommand(g_command_ms, &cmd);
            if (hr == VD_E_CLOSE) break;
            if (hr != 0) return give_up(vds, "GetCommand", hr);
            int completion = ERROR_SUCCESS;
            unsigned long bytes = 0;
            if (cmd->commandCode == VDC_Read || cmd->commandCode == VDC_Write) {
                unsigned int handle = 0;
                hr = vds->GetBufferHandle(cmd->buffer, &handle);
                if (hr != 0) return give_up(vds, "GetBufferHandle", hr);
                fprintf(to, "%u %d\n", handle, cmd->size);
                fflush(to);
                long n = -1;
                if (fscanf(from, "%ld", &n) != 1 || n < 0) { fprintf(stderr, "secondary failed\n"); return 3; }
                bytes = (unsigned long)n;
                if (bytes < (unsigned long)cmd->size) completion = cmd->commandCode == VDC_Read ? ERROR_HANDLE_EOF : ERROR_DISK_FULL;
            } else if (cmd->commandCode != VDC_Flush && cmd->commandCode != VDC_ClearError) {
                completion = ERROR_NOT_SUPPORTED;
            }
            hr = dev->CompleteCommand(cmd, completion, bytes, 0);
            if (hr != 0) return give_up(vds, "CompleteCommand", hr);
            total_commands++;
        }
        uint8_t *p = NULL;
        if (vds->MapBufferHandle(12345, &p) != VD_E_INVALID) { fprintf(stderr, "bad handle accepted\n"); return 3; }
        fclose(to);
        int st = 0;
        waitpid(child, &st, 0);
        fclose(from);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { fprintf(stderr, "secondary exit %d\n", st); return 3; }
    }
    hr = vds->Close();
    if (hr != 0) { fprintf(stderr, "Close 0x%x\n", (unsigned)hr); return 3; }
    if (vds->Close() != VD_E_PROTOCOL) { fprintf(stderr, "second Close not refused\n"); return 3; }
    int st = 0;
    waitpid(server, &st, 0);
    delete devs[0]; // clients may delete devices; the rest are deleted with the set
    delete vds;
    printf("client=%s commands=%ld\n", WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "OK" : "SERVER-FAILED", total_commands);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
