/*
 * The cold paths of a BufferAccess's lock (seqlock.h has the hot ones):
 * errors, recovery from an owner that died holding the lock, and waiting
 * for a busy lock with the GIL released.
 */
#include "seqlock.h"

/* ---- errors ------------------------------------------------------------- */

PyObject *
rt_buffer_error(rt_BufferAccess *acc, const char *message, PyObject *param)
{
    if (param != NULL) {
        return rt_raise(rt_DeviceBufferError, message, "buffer", acc->name, "param", param, NULL);
    }
    return rt_raise(rt_DeviceBufferError, message, "buffer", acc->name, NULL);
}

/* ---- locking ------------------------------------------------------------ */

/* The previous owner died holding the lock (we hold it now). Undo its
 * unfinished transaction, if any, then tell the Python layer so it can log.
 * A rolled-back transaction changed nothing: its changes were never announced
 * to waiters (see changed()), and are not now. An owner that died outside a
 * transaction, or after its commit and before announcing it, may have changed
 * either block, and that stays: both sequence words are bumped (the caller
 * wakes their waiters, `*bumped`). */
int
rt_recover_memory(rt_BufferAccess *acc, int *bumped)
{
    rt_header *header = acc->header;
    int rolled_back = 0;
    if (header->undo_active) {
        memcpy(acc->data, acc->undo, (size_t)acc->spec->struct_size);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        header->undo_active = 0;
        rolled_back = 1;
    }
    acc->notify->txn_changed = 0;
    *bumped = 0;
    if (!rolled_back) {
        for (int block = 0; block < 2; block++) {
            __atomic_fetch_add(&acc->notify->seq[block], 1, __ATOMIC_RELEASE);
        }
        *bumped = (1 << RT_UPDATE_BLOCK) | (1 << RT_WRITE_BLOCK);
    }
    header->txn_depth = 0;
    uint32_t seqlock = __atomic_load_n(&acc->notify->seqlock, __ATOMIC_RELAXED);
    if (seqlock & 1) {  /* it died between its two bumps: readers may look again */
        __atomic_store_n(&acc->notify->seqlock, seqlock + 1, __ATOMIC_RELEASE);
    }
    return rolled_back;
}

void
rt_report_recovery(rt_BufferAccess *acc, int rolled_back)
{
    if (acc->on_recover != NULL && acc->on_recover != Py_None) {
        PyObject *result =
            PyObject_CallFunctionObjArgs(acc->on_recover, acc->name, rolled_back ? Py_True : Py_False, NULL);
        if (result == NULL) {
            PyErr_WriteUnraisable(acc->on_recover);
        }
        Py_XDECREF(result);
    }
}

void
rt_recover(rt_BufferAccess *acc)
{
    int bumped;
    rt_report_recovery(acc, rt_recover_memory(acc, &bumped));
    acc->wake_pending |= bumped;
}

int
rt_lock_error(rt_BufferAccess *acc, int rc)
{
    if (rc == ETIMEDOUT || rc == EBUSY) {
        PyObject *timeout = PyFloat_FromDouble(acc->timeout);
        PyObject *err = PyLong_FromLong(rc);
        rt_raise(rt_DeviceBufferError, "timed out waiting for the buffer's lock", "buffer", acc->name, "timeout",
                 timeout, "errno", err, NULL);
        Py_XDECREF(timeout);
        Py_XDECREF(err);
        return -1;
    }
    rt_raise_sync_error(rc, "cannot lock buffer");
    return -1;
}

void
rt_release_view_if_unused(rt_BufferAccess *acc)
{
    if (acc->closed && acc->held == 0 && acc->users == 0 && acc->has_view) {
        PyBuffer_Release(&acc->view);
        acc->has_view = 0;
    }
}

__attribute__((noinline)) int
rt_invalid_error(rt_BufferAccess *acc)
{
    if (__atomic_load_n(&acc->header->valid, __ATOMIC_ACQUIRE) == RT_SERVED) {
        PyObject *pid = PyLong_FromUnsignedLong(acc->header->producer_pid);
        rt_raise(rt_DeviceBufferError, "buffer is not valid: its producer died", "buffer", acc->name,
                 "producer_pid", pid, NULL);
        Py_XDECREF(pid);
    }
    else {
        rt_buffer_error(acc, "buffer is not valid (its device is not connected)", NULL);
    }
    return -1;
}

/* The lock was busy: wait for it (letting other threads run). Returns the
 * lock's result, or -1 with an exception set when the buffer was closed by
 * another thread meanwhile (its memory may go once we leave). */
__attribute__((noinline)) int
rt_wait_for_lock(rt_BufferAccess *acc, double timeout, int *recovered)
{
    acc->users++;
    int rc = rt_mutex_lock(acc->mutex, timeout, recovered);
    acc->users--;
    if (acc->closed) {
        if (rc == 0) {
            rt_mutex_unlock(acc->mutex);
        }
        rt_release_view_if_unused(acc);
        rt_buffer_error(acc, "buffer was closed while waiting for its lock", NULL);
        return -1;
    }
    return rc;
}

