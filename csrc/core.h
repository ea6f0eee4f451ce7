/*
 * Shared declarations of the compiled core (runtime._core).
 *
 * The core holds the hot paths of the library: the robust process-shared
 * mutex, COBS framing, Smart Device message encoding/decoding, and the
 * buffer accessor that moves parameter values between messages and shared
 * memory.  The Python modules runtime.sync, runtime.messaging and
 * runtime.buffer wrap it with a typed API.
 */
#ifndef RUNTIME_CORE_H
#define RUNTIME_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Everything declared from here on is internal to the shared object (only
 * PyInit__core, marked by PyMODINIT_FUNC, is exported): calls between units
 * are direct, not through the PLT. */
#pragma GCC visibility push(hidden)

/* ---- protocol constants (smart-device-protocol.md) ---------------------- */
#define RT_MAX_PARAMS 16
#define RT_MAX_PAYLOAD 255
#define RT_MAX_MESSAGE (3 + RT_MAX_PAYLOAD)      /* type, length, payload, checksum */
#define RT_MAX_ENCODING (RT_MAX_MESSAGE + 2)     /* plus COBS overhead */
#define RT_ALL_PARAMS 0xFFFF

enum rt_message_type {
    RT_PING = 0x10,
    RT_SUB_REQ = 0x11,
    RT_SUB_RES = 0x12,
    RT_DEV_READ = 0x13,
    RT_DEV_WRITE = 0x14,
    RT_DEV_DATA = 0x15,
    RT_DEV_DISABLE = 0x16,
    RT_HB_REQ = 0x17,
    RT_HB_RES = 0x18,
    RT_ERROR = 0xFF,
};

enum rt_error_code {
    RT_OK = 0x00,
    RT_BACKOFF = 0xFA,
    RT_INVALID_TYPE = 0xFB,
    RT_BUFFER_OVERFLOW = 0xFC,
    RT_UNEXPECTED_DELIMITER = 0xFD,
    RT_BAD_CHECKSUM = 0xFE,
    RT_GENERIC_ERROR = 0xFF,
};

/* ---- errors (module.c) ---------------------------------------------------- */
/* The exception classes the core raises, created at import (module.c) on
 * runtime.exception.RuntimeBaseException and re-exported by runtime.sync,
 * runtime.messaging and runtime.buffer. */
extern PyObject *rt_SyncError;
extern PyObject *rt_MessageError;
extern PyObject *rt_DeviceBufferError;
extern PyObject *rt_did_you_mean;  /* runtime.exception.did_you_mean(word, choices) -> str, for error messages */
/* The runtime.messaging.MessageType / ErrorCode member of `value` (borrowed),
 * or NULL: none of that value, or (with an exception set) the enums could not
 * be loaded. The enums are imported the first time a member is needed. */
PyObject *rt_message_type(int value);
PyObject *rt_error_code(int value);

/* Raise `cls(message, **context)`; `context` is a NULL-terminated list of
 * (const char *key, PyObject *value) pairs; values are borrowed. */
PyObject *rt_raise(PyObject *cls, const char *message, ...);
/* MessageError with context error_code=<ErrorCode member> plus extras. */
PyObject *rt_raise_message_error(int error_code, const char *message, ...);

/* ---- timeouts (module.c) ------------------------------------------------ */
/* Every timeout argument, in seconds: a real number >= 0 (negative or NaN:
 * ValueError); with RT_TIMEOUT_NONE, None means no limit (-1) and the error
 * message says None is allowed; with RT_TIMEOUT_CLAMP, more than
 * RT_MAX_TIMEOUT means no limit too. `obj` NULL (not given) yields `missing`,
 * unless `missing` is NaN (required: a ValueError). Returns 0, or -1 with an
 * exception set. */
#define RT_TIMEOUT_NONE 1
#define RT_TIMEOUT_CLAMP 2
#define RT_MAX_TIMEOUT 1e9  /* seconds (about 31 years) */
int rt_parse_timeout(PyObject *obj, int flags, double missing, double *timeout);

/* ---- COBS (cobs.c) ----------------------------------------------------- */
/* Encode `n` bytes; `out` must hold n + n / 254 + 1 bytes. Returns length. */
Py_ssize_t rt_cobs_encode(const uint8_t *in, Py_ssize_t n, uint8_t *out);
/* The same in place, for n < 254 (no block reaches 254 data bytes): the n
 * bytes are at buf[1..n]; buf[0] becomes the first code byte and each zero
 * among them the next. Returns n + 1. */
Py_ssize_t rt_cobs_link(uint8_t *buf, Py_ssize_t n);
/* Encoding, a byte at a time, for bytes that are not in one piece (a
 * message's header, payload and checksum): start with rt_cobs_writer_init,
 * rt_cobs_put each byte, and rt_cobs_finish gives the length. No branch
 * depends on the data (but the rare 254-byte block limit): the open block's
 * code byte is rewritten with every byte, and a zero moves it. */
typedef struct {
    uint8_t *out;
    Py_ssize_t o;        /* the next output byte */
    Py_ssize_t code_at;  /* the open block's code byte; its code is o - code_at */
} rt_cobs_writer;

static inline void
rt_cobs_writer_init(rt_cobs_writer *w, uint8_t *out)
{
    w->out = out;
    w->o = 1;
    w->code_at = 0;
}

static inline __attribute__((always_inline)) void
rt_cobs_put(rt_cobs_writer *w, uint8_t byte)
{
    uint8_t *out = w->out;
    Py_ssize_t o = w->o, at = w->code_at;
    out[o] = byte;                   /* a zero's place becomes the next block's code byte */
    out[at] = (uint8_t)(o - at);     /* final if `byte` is zero, else rewritten later */
    at = byte == 0 ? o : at;
    o++;
    if (__builtin_expect(o - at == 0xFF, 0)) {  /* 254 data bytes: the block ends without a zero */
        out[at] = 0xFF;
        at = o++;
    }
    w->o = o;
    w->code_at = at;
}

static inline Py_ssize_t
rt_cobs_finish(rt_cobs_writer *w)
{
    w->out[w->code_at] = (uint8_t)(w->o - w->code_at);
    return w->o;
}
/* Decode into `out` (capacity `cap`); returns length or -1 when malformed,
 * -2 when the output would exceed `cap`. Never reads past `n`. */
Py_ssize_t rt_cobs_decode(const uint8_t *in, Py_ssize_t n, uint8_t *out, Py_ssize_t cap);

/* ---- mutex (mutex.c) ---------------------------------------------------- */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define rt_cpu_relax() _mm_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define rt_cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define rt_cpu_relax() ((void)0)
#endif

/* `timeout` seconds from now on `clock` (CLOCK_MONOTONIC for futex waits,
 * CLOCK_REALTIME for pthread_mutex_timedlock), as an absolute time. */
static inline void
rt_deadline_after(clockid_t clock, double timeout, struct timespec *deadline)
{
    clock_gettime(clock, deadline);
    double whole = (double)(time_t)timeout;
    deadline->tv_sec += (time_t)timeout;
    deadline->tv_nsec += (long)((timeout - whole) * 1e9);
    if (deadline->tv_nsec >= 1000000000L) {
        deadline->tv_sec += 1;
        deadline->tv_nsec -= 1000000000L;
    }
}

#define RT_MUTEX_MAGIC 0x52544d58u  /* "RTMX": set once initialized */

typedef struct {
    pthread_mutex_t mutex;
    uint32_t magic;
    uint32_t flags;
} rt_mutex_inner;

/* One cache line, so neighbouring data does not share it. */
typedef union {
    rt_mutex_inner m;
    uint8_t pad[64];
} rt_mutex_t;

#define RT_MUTEX_SIZE ((Py_ssize_t)sizeof(rt_mutex_t))

/* Returns 0 or an errno value. */
int rt_mutex_init(rt_mutex_t *m, int shared, int recursive);
int rt_mutex_destroy(rt_mutex_t *m);
/* Acquire with `timeout` seconds (< 0 blocks, 0 tries once). Returns 0 on
 * success, or an errno value (ETIMEDOUT, EBUSY, EINVAL, EDEADLK, ...).
 * `*recovered` is set to 1 when the previous owner died holding the lock
 * (the mutex is made consistent again and is held by the caller).
 * The uncontended path neither reads the clock nor releases the GIL. */
int rt_mutex_lock_slow(rt_mutex_t *m, double timeout, int *recovered, int rc);
static inline __attribute__((always_inline)) int
rt_mutex_lock(rt_mutex_t *m, double timeout, int *recovered)
{
    *recovered = 0;
    if (__atomic_load_n(&m->m.magic, __ATOMIC_ACQUIRE) != RT_MUTEX_MAGIC) {
        return EINVAL;
    }
    int rc = pthread_mutex_trylock(&m->m.mutex);  /* inline: the free lock costs one call into libc */
    return __builtin_expect(rc == 0, 1) ? 0 : rt_mutex_lock_slow(m, timeout, recovered, rc);
}
static inline __attribute__((always_inline)) int
rt_mutex_unlock(rt_mutex_t *m)
{
    if (__atomic_load_n(&m->m.magic, __ATOMIC_ACQUIRE) != RT_MUTEX_MAGIC) {
        return EINVAL;
    }
    return pthread_mutex_unlock(&m->m.mutex);
}
/* Whether a live thread holds the mutex. One relaxed load of the lock word
 * where the C library keeps the owner's thread ID there (glibc; checked once
 * at import): the kernel clears those bits when the owner dies, whatever
 * killed it. Elsewhere a try-lock tells the same, more slowly. */
int rt_mutex_held_slow(rt_mutex_t *m);
extern int rt_lockword_has_owner;
#define RT_FUTEX_TID_MASK 0x3fffffffu
static inline int
rt_mutex_held(rt_mutex_t *m)
{
    if (rt_lockword_has_owner) {
        return (__atomic_load_n((const uint32_t *)(const void *)&m->m.mutex, __ATOMIC_ACQUIRE) & RT_FUTEX_TID_MASK) != 0;
    }
    return rt_mutex_held_slow(m);
}
/* Incremented in every child right after fork(): state recorded under an
 * older value belongs to the parent (its locks, transactions, producer role). */
extern unsigned long rt_fork_generation;
/* Try the lock, spinning up to `spin` seconds while it is taken (another
 * thread or process holds it for microseconds at a time): for threads that
 * must never wait for it (the frame pump's). 0, EBUSY, or another errno. */
static inline int
rt_mutex_trylock_spin(rt_mutex_t *m, double spin, int *recovered)
{
    int rc = rt_mutex_lock(m, 0, recovered);
    if (rc != EBUSY || spin <= 0) {
        return rc;
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (unsigned tries = 1; rc == EBUSY; tries++) {
        rt_cpu_relax();
        if (tries % 64 == 0) {
            rc = rt_mutex_lock(m, 0, recovered);
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) * 1e-9 > spin) {
                break;
            }
        }
    }
    return rc;
}
/* Raise SyncError for an errno returned by the functions above. */
PyObject *rt_raise_sync_error(int err, const char *action);

extern PyTypeObject rt_MutexType;

/* ---- messages (message.c) ----------------------------------------------- */
typedef struct {
    PyObject_HEAD
    uint8_t type;
    uint8_t length;
    uint8_t payload[RT_MAX_PAYLOAD];
} rt_Message;

extern PyTypeObject rt_MessageType;
extern PyTypeObject rt_ParamLayoutType;

/* Where each parameter's value lives relative to a block of memory and how
 * wide it is on the wire; width 0 means "no such parameter". */
typedef struct {
    int count;
    Py_ssize_t offsets[RT_MAX_PARAMS];
    Py_ssize_t widths[RT_MAX_PARAMS];
    Py_ssize_t span;  /* bytes of memory the layout touches */
} rt_layout;

typedef struct {
    PyObject_HEAD
    rt_layout layout;
} rt_ParamLayout;

rt_Message *rt_message_new(uint8_t type, uint8_t length);
/* Payload bytes for `params` under `layout`, or -1 with MessageError set. */
Py_ssize_t rt_values_size(const rt_layout *layout, uint16_t params);
/* Build DEV_DATA/DEV_WRITE from memory; MessageError if it does not fit. */
rt_Message *rt_make_values(uint8_t type, uint16_t params, const rt_layout *layout, const uint8_t *base);
/* Check a DEV_DATA/DEV_WRITE payload against `layout`; returns the params
 * bitmap, or -1 with MessageError set. Nothing is copied. */
int rt_check_values(const rt_Message *msg, const rt_layout *layout);
/* Copy the values of an already checked message into memory. */
void rt_copy_values(const rt_Message *msg, const rt_layout *layout, uint8_t *base);

/* ---- the frame pump's path into a buffer (buffer.c, for pump.c) -------- */
/* With the GIL: check `access` is an open Smart Device BufferAccess and keep
 * its memory mapped until rt_access_unpin (even if it is closed meanwhile);
 * `*layout` is its parameter layout (by ID) and `*update` its update block. */
int rt_access_pin(PyObject *access, const rt_layout **layout, const uint8_t **update);
void rt_access_unpin(PyObject *access);
/* With the GIL: what the buffer's own operations do after recovering a lock
 * whose owner died (its on_recover callback). */
void rt_access_report_recovery(PyObject *access, int rolled_back);
/* Without the GIL: apply the staged values of the IDs in `mask` to the update
 * block as a DEV_DATA would. Returns 0, an errno value (EBUSY: the lock stayed
 * taken for `spin` seconds), or RT_COMMIT_REFUSED (closed, or not live). */
#define RT_COMMIT_REFUSED (-1)
int rt_access_commit(PyObject *access, const uint8_t *stage, uint64_t mask, double spin, int *recovered,
                     int *rolled_back);
/* Without the GIL: take the pending reads and writes (IDs, and the write
 * block into `block`) as emit_dev_rw does, and clear them, unless a commander
 * of the buffer is not among the `known_count` words of `known`: then nothing
 * is taken and RT_COMMANDER_UNKNOWN is returned (checked under the lock, so
 * that a write is never taken ahead of the check of its commander). Returns
 * 0, an errno value (EBUSY: the lock stayed taken for `spin` seconds),
 * RT_COMMIT_REFUSED (closed, or not live) or RT_COMMANDER_UNKNOWN. */
#define RT_COMMANDER_UNKNOWN (-2)
int rt_access_take_rw(PyObject *access, double spin, const uint64_t *known, int known_count, uint16_t *read,
                      uint16_t *written, uint8_t *block, int *recovered, int *rolled_back);
/* Whether every commander recorded in the buffer (a nonzero word of a
 * parameter with a safe value) is among the `count` words of `known`. */
int rt_commanders_known(PyObject *access, const uint64_t *known, int count);

/* ---- packing values into messages (buffer.c) ---------------------------- */
typedef struct {
    uint16_t params;  /* the last bitmap packed exactly (0: none), and its messages */
    int count;
    uint16_t bins[RT_MAX_PARAMS];
} rt_pack_cache;
#define RT_PACK_NOMEM (-1)  /* memory ran out */
#define RT_PACK_UNFIT (-2)  /* an ID is not in the layout (or wider than a message) */
/* Without the GIL: split `params` into as few DEV_DATA/DEV_WRITE messages as
 * possible; the params bitmap of each in `bins`. Returns their number, or
 * RT_PACK_NOMEM / RT_PACK_UNFIT. */
int rt_pack_bins(const rt_layout *layout, uint16_t params, uint16_t bins[RT_MAX_PARAMS], rt_pack_cache *cache);
int rt_pump_module_init(PyObject *module);
int rt_relay_module_init(PyObject *module);

int rt_message_module_init(PyObject *module);
int rt_mutex_module_init(PyObject *module);
int rt_buffer_module_init(PyObject *module);
int rt_segment_module_init(PyObject *module);
int rt_spec_module_init(PyObject *module);
int rt_wait_module_init(PyObject *module);

#pragma GCC visibility pop

#endif
