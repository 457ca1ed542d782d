/*
 * demo.c - a small C99 library used by the dllpool examples and tests.
 *
 * It is built twice by `dllpool setup` (broker/demolibs.py): as a 32-bit
 * library (hosted by the 32-bit worker processes) and as a 64-bit library
 * (loaded directly by the tests, to check the functions themselves).
 *
 * Builds on Linux/macOS (gcc/clang) and on Windows (MSVC or MinGW) as a DLL.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 199309L /* nanosleep */
#endif

#include <limits.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#define DEMO_EXPORT __declspec(dllexport)
#else
#include <errno.h>
#include <time.h>
#include <unistd.h>
#define DEMO_EXPORT __attribute__((visibility("default")))
#endif

/* Library version encoded as major*10000 + minor*100 + patch: 10203 = 1.2.3. */
#define DEMO_VERSION 10203

/* Per-process call counter (each worker process has its own copy). */
static int demo_call_count = 0;

DEMO_EXPORT int add(int a, int b) { return a + b; }

/* Returns major*10000 + minor*100 + patch, e.g. 10203 means version 1.2.3. */
DEMO_EXPORT int version(void) { return DEMO_VERSION; }

/* 4 in a 32-bit process, 8 in a 64-bit process. */
DEMO_EXPORT int pointer_size(void) { return (int)sizeof(void *); }

/* Really blocks the calling thread for `ms` milliseconds (no busy wait). */
DEMO_EXPORT void sleep_ms(int ms) {
    if (ms <= 0) {
        return;
    }
#ifdef _WIN32
    Sleep((DWORD)ms);
#else
    struct timespec req, rem;
    req.tv_sec = ms / 1000;
    req.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&req, &rem) == -1 && errno == EINTR) {
        req = rem;
    }
#endif
}

/* Returns factor * (values[0] + ... + values[n-1]); 0 if n <= 0 or values is NULL. */
DEMO_EXPORT double scale_sum(const double *values, int n, double factor) {
    double total = 0.0;
    int i;
    if (values == NULL) {
        return 0.0;
    }
    for (i = 0; i < n; ++i) {
        total += values[i];
    }
    return factor * total;
}

/* Multiplies x[0..n-1] by k in place (msl-loadlib's scalar_multiply example does the same). */
DEMO_EXPORT void scale(double *x, int n, double k) {
    int i;
    if (x == NULL) {
        return;
    }
    for (i = 0; i < n; ++i) {
        x[i] *= k;
    }
}

/* A stateful "driver": a device opened, read and closed through a pointer the caller never sees inside (a
 * handle, declared in config/pool.toml). Each read returns the device's id * 1000 plus its read count, so a
 * caller can tell that its reads reached its own device. */
struct Device {
    int id;
    int reads;
};

static int demo_devices_open = 0;

DEMO_EXPORT struct Device *device_open(int id) {
    struct Device *device = (struct Device *)malloc(sizeof *device);
    if (device != NULL) {
        device->id = id;
        device->reads = 0;
        ++demo_devices_open;
    }
    return device;
}

DEMO_EXPORT int device_read(struct Device *device) { return device->id * 1000 + ++device->reads; }

DEMO_EXPORT void device_close(struct Device *device) {
    free(device);
    --demo_devices_open;
}

/* How many devices this process has open: shows that dropped handles were closed. */
DEMO_EXPORT int devices_open(void) { return demo_devices_open; }

/* msl-loadlib's Cpp32 example with its very signature: xout[i] = a * xin[i] (what bench/arrays.py times). */
DEMO_EXPORT void scalar_multiply(double a, const double *xin, int n, double *xout) {
    int i;
    if (xin == NULL || xout == NULL) {
        return;
    }
    for (i = 0; i < n; ++i) {
        xout[i] = a * xin[i];
    }
}

/* An output array: out[i] = i * i for i in 0..n-1. */
DEMO_EXPORT void fill_squares(double *out, int n) {
    int i;
    if (out == NULL) {
        return;
    }
    for (i = 0; i < n; ++i) {
        out[i] = (double)i * i;
    }
}

/* Out-parameters: *q = a / b and *r = a % b (truncated toward zero, as C does).
 * Returns 0, or -1 (q and r untouched) when b is 0 or the quotient overflows (INT_MIN / -1). */
DEMO_EXPORT int divmod(int a, int b, int *q, int *r) {
    if (q == NULL || r == NULL || b == 0 || (a == INT_MIN && b == -1)) {
        return -1;
    }
    *q = a / b;
    *r = a % b;
    return 0;
}

/* Text into the caller's buffer: the ASCII upper-case copy of s, cut to size - 1
 * characters and NUL-terminated. Returns the length written (0 when out cannot hold even the NUL). */
DEMO_EXPORT int upper(const char *s, char *out, int size) {
    int i = 0;
    if (out == NULL || size <= 0) {
        return 0;
    }
    for (; s != NULL && s[i] != '\0' && i < size - 1; ++i) {
        out[i] = (s[i] >= 'a' && s[i] <= 'z') ? (char)(s[i] - 'a' + 'A') : s[i];
    }
    out[i] = '\0';
    return i;
}

/* Deliberately crashes the process (segmentation fault / access violation),
 * so tests can prove that a crashing library only takes down its worker. */
DEMO_EXPORT int crash(void) {
    volatile int *volatile p = NULL;
    *p = 42;
    return *p;
}

DEMO_EXPORT int64_t add_i64(int64_t a, int64_t b) { return a + b; }

DEMO_EXPORT unsigned char echo_u8(unsigned char value) { return value; }

DEMO_EXPORT float half(float value) { return value / 2.0f; }

/* C99 _Bool argument: returns 1 for true, 0 for false. */
DEMO_EXPORT int is_true(bool value) { return value ? 1 : 0; }

/* strlen of a NUL-terminated string; -1 for NULL. */
DEMO_EXPORT int str_len(const char *s) {
    if (s == NULL) {
        return -1;
    }
    return (int)strlen(s);
}

/* Returns a pointer to a static string; the caller must not free it. */
DEMO_EXPORT const char *greet(void) {
    return sizeof(void *) == 4 ? "hello from 32-bit C" : "hello from 64-bit C";
}

/* Increments and returns the per-process counter: 1 on the first call in a
 * process, 2 on the second... Tests use it to prove a request never ran. */
DEMO_EXPORT int count_calls(void) { return ++demo_call_count; }

/* The id of the process the library is loaded in: tests use it to tie an
 * answer to the worker process that computed it. */
DEMO_EXPORT int worker_pid(void) {
#ifdef _WIN32
    return (int)GetCurrentProcessId();
#else
    return (int)getpid();
#endif
}

/* A leaking vendor call, for worker recycling: keeps `mib` MiB allocated for
 * good, written to (resident memory) when `touch` is non-zero, else only
 * reserved (address space alone). Returns the MiB leaked so far in this
 * process, or -1 when the allocation failed. */
static void *demo_leaked = NULL; /* the blocks, chained: reachable, so no compiler drops them */

DEMO_EXPORT int leak(int mib, int touch) {
    static int leaked = 0;
    size_t size = (size_t)mib << 20;
    char *block = malloc(size < sizeof(void *) ? sizeof(void *) : size);
    if (block == NULL) return -1;
    if (touch) memset(block, 1, size);
    *(void **)block = demo_leaked;
    demo_leaked = block;
    leaked += mib;
    return leaked;
}
