/*
 * One buffer segment: its layout in shared memory, and the C-side view of it.
 *
 * A segment holds, in order: a 64-byte header (runtime/buffer.py describes it
 * with ctypes), the robust mutex that guards the data, the producer lock, the
 * change-notification line, the command lines, and the buffer's ctypes
 * structure: an update block and a write block with one field per parameter
 * (same layout in both), then the metadata block `rt_meta`, and last the undo
 * copy of the structure.
 *
 * BufferSpec (spec.c) is computed once per buffer type: where each parameter
 * lives, how to convert it (convert.h), and the bitmaps of readable/writeable/
 * subscribed IDs. BufferAccess (buffer.c) binds a spec to one segment's memory
 * and is what the Buffer methods call; its lock and seqlock are in seqlock.h,
 * its waits in wait.c. segment.c maps segments and writes/checks their header.
 */
#ifndef RUNTIME_SEGMENT_H
#define RUNTIME_SEGMENT_H

#include "core.h"

#include <stddef.h>

#pragma GCC visibility push(hidden)  /* internal to the shared object (core.h) */

#define RT_MAX_BUFFER_PARAMS 64
#define RT_HEADER_SIZE 64
#define RT_VALID_OFFSET 24
#define RT_MUTEX_OFFSET RT_HEADER_SIZE
#define RT_PRODUCER_OFFSET (RT_MUTEX_OFFSET + 64)
#define RT_NOTIFY_OFFSET (RT_PRODUCER_OFFSET + 64)
#define RT_COMMAND_OFFSET (RT_NOTIFY_OFFSET + 64)
#define RT_DATA_OFFSET (RT_COMMAND_OFFSET + 192)
#define RT_INVALID 0u
#define RT_VALID 1u
#define RT_SERVED 2u
#define RT_SERVE_WAIT 0.05  /* seconds serve() waits for the producer lock before calling it taken */
/* Producer locks one thread may hold. The kernel releases at most 2048 robust
 * locks (ROBUST_LIST_LIMIT) of a dying thread, newest first; the rest would
 * keep a dead owner's thread ID for ever (the buffer valid, with a dead
 * producer). Half of it is left for the thread's other robust locks (buffer
 * locks held in transactions, runtime.sync mutexes). */
#define RT_MAX_SERVED_PER_THREAD 1024
#define RT_MIN_INTERVAL_MS 40
#define RT_MAX_INTERVAL_MS 250

/* Mirrors runtime.buffer's ctypes `_Meta` (checked at import time). */
typedef struct {
    double last_update;
    double last_write;
    uint64_t updated;       /* IDs changed in the update block since get_update/emit_dev_data */
    uint64_t read;          /* IDs requested with read(), pending emit_dev_rw/get_read */
    uint64_t written;       /* IDs written, pending emit_dev_rw/get_write */
    uint16_t subscription;  /* subscribed IDs */
    uint16_t interval_ms;   /* subscription interval */
    uint32_t reserved;
    uint16_t device_id;     /* DeviceUID */
    uint8_t year;
    uint8_t uid_pad[5];
    uint64_t random;
} rt_meta;

/* Mirrors runtime.buffer's ctypes `_SegmentHeader` (checked at import time). */
typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t state;        /* RT_SEGMENT_READY once initialized */
    uint64_t size;         /* of the buffer structure */
    uint32_t valid;        /* RT_INVALID, RT_VALID or RT_SERVED */
    uint32_t creator_pid;
    uint8_t fingerprint[16];
    uint32_t txn_depth;    /* nesting of transaction() by the lock's owner */
    uint32_t undo_active;  /* the undo area holds the state before an unfinished transaction */
    uint32_t producer_pid; /* the process that last served the buffer */
    uint32_t namespace_length;  /* the name starts with a namespace this long, then '-' (0: none) */
} rt_header;

/* Change notification (the segment's fourth cache line). A writer bumps the
 * sequence word of the block it changed while it holds the lock; after
 * releasing the lock it makes the futex wake call only when someone sleeps
 * on that word (waiters != 0), so nobody pays a system call while nobody
 * waits. Validity changes bump both words. */
typedef struct {
    uint32_t seq[2];      /* RT_UPDATE_BLOCK, RT_WRITE_BLOCK */
    uint32_t waiters[2];  /* threads sleeping on each word (a hint for writers) */
    uint32_t seqlock;     /* odd while the lock's owner may be changing the structure */
    uint32_t txn_changed; /* blocks changed inside the open transaction: bumped when it commits */
    uint32_t claimant;    /* pid of a process that asked the producer to give the buffer up (0: none);
                           * a producer that honours claims stops serving; serve() by it clears it */
    uint32_t reserved[9];
} rt_notify;

#define RT_UPDATE_BLOCK 0
#define RT_WRITE_BLOCK 1
#define RT_BOTH_BLOCKS 3
_Static_assert(sizeof(rt_notify) == 64, "notify line size");

/* Commands (the segment's fifth to seventh cache lines). A *command* is the
 * value in force of a parameter that has a safe value (an actuator); its
 * *commander* is the process that wrote it, recorded as one 64-bit word per
 * parameter ID: its pid in the low half and its start time (clock ticks since
 * boot, low 32 bits, against pid reuse) in the high half; 0 means nobody
 * commands it (its safe value is in force, or it was never written). Every
 * write of such a parameter records the writer, under the lock. When the
 * commander ends, the bridge (or the commander itself, closing its handle)
 * puts the safe value back as a pending write by nobody: see end_commands.
 * While `disabled` is set, writes of those parameters are refused. */
typedef struct {
    uint32_t disabled;       /* nonzero: the robot is disabled */
    uint32_t reserved0;
    double last_command;     /* time.time() of the last write of a safe-valued parameter */
    uint32_t reserved[12];
    uint64_t commander[RT_MAX_PARAMS];
} rt_command;
_Static_assert(sizeof(rt_command) == 192, "command lines size");

#define RT_SEGMENT_READY 1u
#define RT_FINGERPRINT_SIZE 16

_Static_assert(offsetof(rt_header, valid) == RT_VALID_OFFSET, "valid word offset");
_Static_assert(sizeof(rt_header) == RT_HEADER_SIZE, "header size");

/* The undo area follows the structure, at the next 64-byte boundary. */
static inline Py_ssize_t
undo_offset(Py_ssize_t struct_size)
{
    return RT_DATA_OFFSET + (struct_size + 63) / 64 * 64;
}

enum rt_kind { K_BOOL, K_I8, K_U8, K_I16, K_U16, K_I32, K_U32, K_I64, K_U64, K_F32, K_F64, K_RAW };

typedef struct {
    PyObject *name;
    PyObject *to_python;    /* K_RAW: bytes -> value */
    PyObject *from_python;  /* K_RAW: value -> bytes of exactly `size` */
    int id;
    int kind;
    Py_ssize_t offset;
    Py_ssize_t size;
    double lower;
    double upper;
} rt_param;

typedef struct {
    PyObject_HEAD
    PyObject *index;        /* dict: name -> position in params */
    int count;
    int is_device;
    int by_id[RT_MAX_BUFFER_PARAMS];
    rt_param params[RT_MAX_BUFFER_PARAMS];
    rt_layout layout;       /* by ID, for messages (device types) */
    uint64_t readable;
    uint64_t writeable;
    uint64_t subscribed;
    uint64_t safe_mask;      /* IDs with a safe value (device types only) */
    uint8_t safe[RT_MAX_PARAMS][8];  /* each one's safe value, as stored */
    Py_ssize_t update_offset, write_offset, meta_offset, block_size, struct_size;
    uint16_t packed_params;  /* the last bitmap packed exactly (0: none), and its messages */
    int packed_count;
    uint16_t packed_bins[RT_MAX_PARAMS];
} rt_BufferSpec;

typedef struct {
    PyObject_HEAD
    rt_BufferSpec *spec;
    Py_buffer view;
    int has_view;
    int closed;
    rt_mutex_t *mutex;
    rt_mutex_t *producer;   /* held by the serving producer */
    rt_notify *notify;
    rt_command *command;
    rt_header *header;
    uint8_t *data;          /* the structure */
    uint8_t *undo;          /* its copy from the start of the outermost transaction */
    uint8_t *update;
    uint8_t *write;
    rt_meta *meta;
    PyObject *name;
    PyObject *on_recover;
    double timeout;
    long held;              /* transactions entered through this object and not yet exited */
    long users;             /* calls waiting for the lock (the GIL released): close() keeps the memory */
    unsigned long txn_generation;    /* rt_fork_generation when `held` was counted */
    int serving;                     /* this object holds the producer lock */
    unsigned long serve_generation;  /* rt_fork_generation when it took it */
    uint32_t serve_tid;              /* the thread that took it */
    uint32_t seen[2];                /* the sequence words when wait_* last returned (or at open) */
    int seen_live;                   /* whether the buffer was live when this handle last looked */
    int wake_pending;                /* blocks changed under the lock: wake their waiters after release */
} rt_BufferAccess;

extern PyTypeObject rt_BufferSpecType;
extern PyTypeObject rt_BufferAccessType;

/* ---- shared between the BufferAccess units ------------------------------- */

/* DeviceBufferError(message, buffer=<name>[, param=<param>]); returns NULL. */
PyObject *rt_buffer_error(rt_BufferAccess *acc, const char *message, PyObject *param);
/* Free the memory of a closed handle once no call uses it any more. */
void rt_release_view_if_unused(rt_BufferAccess *acc);

/* wait.c: validity changed (no lock needed): wake every waiter of both blocks. */
void rt_validity_changed(rt_BufferAccess *acc);
/* wait.c: wait(), take_change(), see_now() of BufferAccess. */
PyObject *rt_BufferAccess_wait(rt_BufferAccess *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *rt_BufferAccess_take_change(rt_BufferAccess *self, PyObject *arg);
PyObject *rt_BufferAccess_see_now(rt_BufferAccess *self, PyObject *arg);

/* feed.c: ChangeFeed, read_json, short_float32. */
int rt_feed_module_init(PyObject *module);

#pragma GCC visibility pop

#endif
