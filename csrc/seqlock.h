/*
 * The hot path of a BufferAccess: its lock, the seqlock around changes, and
 * lock-free stable reads, as static inline functions so that get/set/write/
 * update keep them inlined. The cold paths they call (errors, recovery from a
 * dead owner, waiting for a busy lock, waking waiters) are in seqlock.c and
 * wait.c.
 */
#ifndef RUNTIME_SEQLOCK_H
#define RUNTIME_SEQLOCK_H

#include "segment.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#pragma GCC visibility push(hidden)  /* internal to the shared object (core.h) */

/* ---- cold paths (seqlock.c, wait.c) -------------------------------------- */

/* The previous owner died holding the lock (we hold it now): undo its
 * unfinished transaction; returns whether one was rolled back, and in
 * `*bumped` the blocks whose waiters need waking. */
int rt_recover_memory(rt_BufferAccess *acc, int *bumped);
/* Tell the Python layer (the handle's on_recover callback). */
void rt_report_recovery(rt_BufferAccess *acc, int rolled_back);
/* Both of the above, for the buffer's own operations. */
void rt_recover(rt_BufferAccess *acc);
/* Raise for a lock error (a timeout: DeviceBufferError; else SyncError); returns -1. */
int rt_lock_error(rt_BufferAccess *acc, int rc);
/* Raise "buffer is not valid" (why, when its producer died); returns -1. */
__attribute__((noinline)) int rt_invalid_error(rt_BufferAccess *acc);
/* The lock was busy: wait for it, the GIL released. */
__attribute__((noinline)) int rt_wait_for_lock(rt_BufferAccess *acc, double timeout, int *recovered);
/* wait.c: after the lock is released, wake whoever sleeps on the blocks in `pending`. */
__attribute__((noinline)) void rt_wake_waiters(rt_BufferAccess *acc, int pending);

/* ---- values --------------------------------------------------------------- */

/* Copy one parameter's value: a fixed-size move for the sizes of numbers
 * (inlined), the C library for the rest (raw parameters). */
static inline __attribute__((always_inline)) void
copy_value(void *dst, const void *src, size_t n)
{
    switch (n) {
    case 4:
        memcpy(dst, src, 4);
        break;
    case 8:
        memcpy(dst, src, 8);
        break;
    case 1:
        memcpy(dst, src, 1);
        break;
    case 2:
        memcpy(dst, src, 2);
        break;
    default:
        memcpy(dst, src, n);
    }
}

/* ---- the lock ------------------------------------------------------------ */

/* Whether the buffer is valid now: one load, and one more for a served buffer. */
static inline __attribute__((always_inline)) int
is_live(rt_BufferAccess *acc)
{
    uint32_t valid = __atomic_load_n(&acc->header->valid, __ATOMIC_ACQUIRE);
    return valid == RT_VALID || (valid == RT_SERVED && rt_mutex_held(acc->producer));
}

/* The seqlock around a change by the lock's owner: odd while it may change
 * the structure, so that lock-free readers retry (see read_stable). */
static inline void
seqlock_begin(rt_BufferAccess *acc)
{
    uint32_t *seqlock = &acc->notify->seqlock;
    __atomic_store_n(seqlock, __atomic_load_n(seqlock, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void
seqlock_end(rt_BufferAccess *acc)
{
    uint32_t *seqlock = &acc->notify->seqlock;
    __atomic_store_n(seqlock, __atomic_load_n(seqlock, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
}

/* Lock the buffer within `timeout` seconds, recover it if its last owner
 * died, and check it is open and valid. On failure the lock is not held and
 * an exception is set. */
static inline __attribute__((always_inline)) int
acquire_within(rt_BufferAccess *acc, int need_valid, double timeout)
{
    if (acc->closed) {
        rt_buffer_error(acc, "buffer is closed", NULL);
        return -1;
    }
    int recovered;
    int rc = rt_mutex_lock(acc->mutex, 0, &recovered);  /* one try: the GIL stays held */
    if (rc == EBUSY && timeout != 0 && (rc = rt_wait_for_lock(acc, timeout, &recovered)) < 0) {
        return -1;
    }
    if (rc != 0) {
        return rt_lock_error(acc, rc);
    }
    if (recovered) {
        rt_recover(acc);
    }
    if (need_valid && !is_live(acc)) {
        rt_mutex_unlock(acc->mutex);
        return rt_invalid_error(acc);
    }
    if (acc->header->txn_depth == 0) {  /* a transaction keeps it odd from its start to its end */
        seqlock_begin(acc);
    }
    return 0;
}

static inline __attribute__((always_inline)) int
acquire(rt_BufferAccess *acc, int need_valid)
{
    return acquire_within(acc, need_valid, acc->timeout);
}

/* ---- change notification ------------------------------------------------ */

static inline long
futex_wake_all(uint32_t *word)
{
    return syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* A block changed (the lock is held): bump its sequence word. */
static inline void
bump_sequence(rt_BufferAccess *acc, int block)
{
    uint32_t *word = &acc->notify->seq[block];
    __atomic_store_n(word, __atomic_load_n(word, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
}

/* ...and remember to wake its waiters once the lock is released. Inside a
 * transaction the change is only noted: the outermost end announces it when
 * it commits (end_transaction), so that a waiter never reports a change that
 * is then rolled back (its process killed before the end). */
static inline void
changed(rt_BufferAccess *acc, int block)
{
    if (acc->header->txn_depth != 0) {
        acc->notify->txn_changed |= 1u << block;
        return;
    }
    bump_sequence(acc, block);
    acc->wake_pending |= 1 << block;
}

static inline void
release(rt_BufferAccess *acc)
{
    if (acc->header->txn_depth == 0) {
        seqlock_end(acc);
    }
    rt_mutex_unlock(acc->mutex);
    int pending = acc->wake_pending;
    if (pending && acc->held == 0) {
        acc->wake_pending = 0;
#if !defined(__x86_64__) && !defined(__i386__)
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
        const uint32_t *waiters = acc->notify->waiters;
        if (__atomic_load_n(&waiters[0], __ATOMIC_RELAXED) | __atomic_load_n(&waiters[1], __ATOMIC_RELAXED)) {
            rt_wake_waiters(acc, pending);
        }
    }
}

/* Copy `n` bytes of the structure at `src` to `dst` without the lock: a
 * seqlock read, retried while a writer is at work; after RT_READ_ATTEMPTS
 * (a writer holding the lock long, or one that died mid-write, or our own
 * transaction) it takes the lock instead, which also recovers a dead owner's
 * state. Checks that the buffer is open and valid. */
#define RT_READ_ATTEMPTS 64

static inline __attribute__((always_inline)) int
read_stable(rt_BufferAccess *acc, void *dst, const void *src, size_t n)
{
    if (acc->closed) {
        rt_buffer_error(acc, "buffer is closed", NULL);
        return -1;
    }
    if (acc->held == 0) {
        const uint32_t *seqlock = &acc->notify->seqlock;
        for (int attempt = 0; attempt < RT_READ_ATTEMPTS; attempt++) {
            uint32_t before = __atomic_load_n(seqlock, __ATOMIC_ACQUIRE);
            if (!(before & 1)) {
                if (!is_live(acc)) {
                    return rt_invalid_error(acc);
                }
                copy_value(dst, src, n);
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                if (__atomic_load_n(seqlock, __ATOMIC_RELAXED) == before) {
                    return 0;
                }
            }
            rt_cpu_relax();
        }
    }
    if (acquire(acc, 1) < 0) {
        return -1;
    }
    memcpy(dst, src, n);
    release(acc);
    return 0;
}

/* ---- waiting on several words (wait.c's waits, feed.c's change feed, the pump's writer thread) ---- */

/* futex_waitv (Linux 5.16+) sleeps on several words at once: the sequence
 * words of the buffers watched, their producer locks (the kernel wakes a
 * waiter of a robust lock whose owner dies), and a process-local control word. */
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#define RT_FUTEX2_SIZE_U32 0x02
#define RT_FUTEX2_PRIVATE 128
#define RT_FUTEX_WAITV_MAX 128  /* words one futex_waitv call takes */
#define RT_MAX_WATCHED 63  /* two words each, plus the control word: futex_waitv takes 128 */
#define RT_FALLBACK_SLICE 0.05  /* seconds between looks where futex_waitv is missing */

struct rt_futex_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

/* Cleared at the first ENOSYS from futex_waitv (an old kernel: short sleeps instead). */
extern int rt_have_waitv;
/* Arrange to be woken if the producer of a served buffer dies (sets the
 * waiters bit of its robust lock): 1 with the value to sleep on, 0 when
 * there is nothing to watch. Touches no Python object. */
int rt_watch_producer(rt_BufferAccess *acc, uint32_t *value);

#pragma GCC visibility pop

#endif
