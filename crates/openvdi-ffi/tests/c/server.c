/* The server half through openvdi.h: plays SQL Server for the C/C++ client tests.
 *
 *   server SET backup|restore TOTAL DEVICES SEED
 *
 * backup: each device receives TOTAL bytes of a deterministic stream in 64 KiB
 * VDC_Writes (4 in flight), then VDC_Flush, then CloseDevice.
 * restore: each device is read with VDC_Read (varying multiples of 512 up to
 * 64 KiB) until a short read or ERROR_HANDLE_EOF; every byte is checked.
 * Prints one "dev=N bytes=B bad=K" line per device; exits 0 only if all is well. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "openvdi.h"
#include "vdierror.h"

#define XFER 65536u
#define DEPTH 4

static const char *set_name;
static int restore_mode;
static unsigned long long total;
static unsigned seed;
static openvdi_server_set *set;

static unsigned char stream_byte(unsigned dev, unsigned long long i) {
    unsigned long long x = i * 0x9E3779B97F4A7C15ull ^ (seed + dev * 0x12345678ull);
    return (unsigned char)((x >> 29) ^ i);
}

struct job { unsigned idx; char name[160]; int ok; };

static void *run(void *arg) {
    struct job *j = arg;
    openvdi_server_device *d = NULL;
    openvdi_server_buffer *b[DEPTH];
    int rc = openvdi_server_open_device(set, j->name, &d);
    if (rc) { fprintf(stderr, "open_device %s: %s\n", j->name, openvdi_result_name(rc)); return NULL; }
    for (int i = 0; i < DEPTH; i++) {
        rc = openvdi_server_allocate_buffer(set, XFER, 0, &b[i]);
        if (rc) { fprintf(stderr, "allocate: %s\n", openvdi_result_name(rc)); return NULL; }
    }
    unsigned long long sent = 0, done = 0, bad = 0;
    int inflight = 0, eof = 0, n = 0;
    unsigned long long offs[DEPTH];
    int free_list[DEPTH], nfree = DEPTH;
    for (int i = 0; i < DEPTH; i++) free_list[i] = i;
    for (;;) {
        while (nfree > 0 && !eof && (restore_mode ? 1 : sent < total)) {
            int i = free_list[--nfree];
            unsigned len;
            if (restore_mode) {
                len = 512u * (1u + (unsigned)(n++ % 128)); /* 512 .. 64 KiB */
            } else {
                unsigned long long left = total - sent;
                len = left < XFER ? (unsigned)left : XFER;
                unsigned char *p = openvdi_server_buffer_data(b[i]);
                for (unsigned k = 0; k < len; k++) p[k] = stream_byte(j->idx, sent + k);
            }
            rc = openvdi_server_send_command(d, restore_mode ? 1 : 2, len, 0, b[i], (uint64_t)i);
            if (rc) { fprintf(stderr, "send: %s\n", openvdi_result_name(rc)); return NULL; }
            offs[i] = sent;
            sent += len;
            inflight++;
            if (restore_mode) break; /* reads one at a time: the stream order is the read order */
        }
        if (inflight == 0) break;
        openvdi_completion c;
        rc = openvdi_server_wait_completion(d, 60000, &c);
        if (rc) { fprintf(stderr, "wait: %s\n", openvdi_result_name(rc)); return NULL; }
        inflight--;
        int i = (int)c.tag;
        free_list[nfree++] = i;
        if (restore_mode) {
            unsigned char *p = openvdi_server_buffer_data(b[i]);
            for (unsigned k = 0; k < c.bytes_transferred; k++)
                if (p[k] != stream_byte(j->idx, done + k)) bad++;
            done += c.bytes_transferred;
            (void)offs;
            if (c.completion_code == 38 || c.completion_code == 1104) eof = 1;
            else if (c.completion_code != 0) { fprintf(stderr, "read failed: %u\n", c.completion_code); return NULL; }
            else if (c.bytes_transferred < 512u * (1u + (unsigned)((n - 1) % 128))) eof = 1;
        } else {
            if (c.completion_code != 0) { fprintf(stderr, "write failed: %u\n", c.completion_code); return NULL; }
            done += c.bytes_transferred;
        }
    }
    if (!restore_mode) {
        /* A backup ends with a flush. (After a restore's end-of-data completion the
         * device is in IO-ERROR, reference 6.0; it is simply closed.) */
        openvdi_completion c;
        rc = openvdi_server_send_command(d, 12, 0, 0, NULL, 99);
        if (!rc) rc = openvdi_server_wait_completion(d, 60000, &c);
        if (rc || c.completion_code) { fprintf(stderr, "flush failed\n"); return NULL; }
    }
    rc = openvdi_server_close_device(d);
    for (int i = 0; i < DEPTH; i++) openvdi_server_free_buffer(set, b[i]);
    openvdi_server_device_free(d);
    printf("dev=%u bytes=%llu bad=%llu\n", j->idx, done, bad);
    j->ok = rc == 0 && bad == 0 && done == total;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: server SET backup|restore TOTAL DEVICES SEED\n"); return 2; }
    set_name = argv[1];
    restore_mode = strcmp(argv[2], "restore") == 0;
    total = strtoull(argv[3], NULL, 10);
    unsigned devices = (unsigned)atoi(argv[4]);
    seed = (unsigned)atoi(argv[5]);
    int rc = openvdi_server_open(set_name, 20000, &set);
    if (rc) { fprintf(stderr, "open: %s\n", openvdi_result_name(rc)); return 1; }
    openvdi_config cfg;
    rc = openvdi_server_get_configuration(set, &cfg);
    if (rc || cfg.device_count != devices) { fprintf(stderr, "configuration: %s\n", openvdi_result_name(rc)); return 1; }
    /* Bad calls are refused with the right codes. */
    if (openvdi_server_end_configuration(set) != VD_E_PROTOCOL) { fprintf(stderr, "End before Begin accepted\n"); return 1; }
    if (openvdi_server_get_configuration(set, NULL) != VD_E_INVALID) { fprintf(stderr, "NULL accepted\n"); return 1; }
    char names[64][160];
    const char *ptrs[64];
    for (unsigned i = 0; i < devices; i++) {
        if (i == 0) snprintf(names[i], sizeof names[i], "%s", set_name);
        else snprintf(names[i], sizeof names[i], "%s%u", set_name, i);
        ptrs[i] = names[i];
    }
    uint32_t features = restore_mode ? 0x20000 : 0x10000;
    rc = openvdi_server_begin_configuration(set, features, 512, 0, XFER, 20000, ptrs, devices);
    if (!rc) rc = openvdi_server_request_buffers(set, XFER, 0, DEPTH * devices);
    if (!rc) rc = openvdi_server_end_configuration(set);
    if (rc) { fprintf(stderr, "configure: %s\n", openvdi_result_name(rc)); return 1; }
    pthread_t t[64];
    struct job jobs[64];
    for (unsigned i = 0; i < devices; i++) {
        jobs[i].idx = i; jobs[i].ok = 0;
        snprintf(jobs[i].name, sizeof jobs[i].name, "%s", names[i]);
        pthread_create(&t[i], NULL, run, &jobs[i]);
    }
    int ok = 1;
    for (unsigned i = 0; i < devices; i++) { pthread_join(t[i], NULL); ok &= jobs[i].ok; }
    rc = openvdi_server_close(set);
    openvdi_server_free(set);
    printf("server=%s\n", ok && rc == 0 ? "OK" : "FAIL");
    return ok && rc == 0 ? 0 : 1;
}
