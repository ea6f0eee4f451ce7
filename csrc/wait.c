/*
 * Change notification and waits: waking the waiters of a buffer's blocks
 * after a change, BufferAccess.wait/take_change/see_now, and wait_any over
 * several buffers (futex_waitv), with WakeWord to interrupt it.
 */
#include "seqlock.h"

#include <time.h>

/* ---- waking ------------------------------------------------------------- */

/* After the lock is released: wake whoever sleeps on the words bumped. The
 * unlock was a full barrier on x86 (a locked exchange): the bump is visible
 * before `waiters` is read, so a waiter that registered too late for this
 * check sees the new sequence value instead of sleeping (see wait_changes). */
__attribute__((noinline)) void
rt_wake_waiters(rt_BufferAccess *acc, int pending)
{
    for (int block = 0; block < 2; block++) {
        if ((pending & (1 << block)) && __atomic_load_n(&acc->notify->waiters[block], __ATOMIC_RELAXED)) {
            futex_wake_all(&acc->notify->seq[block]);
        }
    }
}

/* Validity changed (no lock needed): wake every waiter of both blocks. */
void
rt_validity_changed(rt_BufferAccess *acc)
{
    for (int block = 0; block < 2; block++) {
        __atomic_fetch_add(&acc->notify->seq[block], 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&acc->notify->waiters[block], __ATOMIC_SEQ_CST)) {
            futex_wake_all(&acc->notify->seq[block]);
        }
    }
}


/* ---- waiting for changes ------------------------------------------------ */

/* futex_waitv and its constants: seqlock.h. */
typedef struct {
    rt_BufferAccess *acc;
    int block;
} rt_watch;

int rt_have_waitv = 1;  /* cleared at the first ENOSYS */

/* Arrange to be woken if the producer of a served buffer dies: set the
 * waiters bit of its robust lock (the kernel then wakes a sleeper when the
 * owner dies; glibc wakes one when it unlocks). Returns 1 with the value to
 * sleep on, 0 when there is nothing to watch (not served, no producer alive,
 * or a C library whose lock word cannot be read). */
int
rt_watch_producer(rt_BufferAccess *acc, uint32_t *value)
{
    if (!rt_lockword_has_owner || __atomic_load_n(&acc->header->valid, __ATOMIC_ACQUIRE) != RT_SERVED) {
        return 0;
    }
    uint32_t *word = (uint32_t *)(void *)&acc->producer->m.mutex;
    uint32_t old = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    for (int attempt = 0; attempt < 16; attempt++) {
        if ((old & RT_FUTEX_TID_MASK) == 0) {
            return 0;
        }
        if (old & FUTEX_WAITERS) {
            *value = old;
            return 1;
        }
        if (__atomic_compare_exchange_n(word, &old, old | FUTEX_WAITERS, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE)) {
            *value = old | FUTEX_WAITERS;
            return 1;
        }
    }
    return 0;
}

/* Whether a watched entry is ready: closed, changed since seen (validity
 * changes count), or invalid while it was live when the wait began (a dead
 * producer changes no sequence word). */
static inline int
entry_ready(const rt_watch *w)
{
    rt_BufferAccess *acc = w->acc;
    return acc->closed || __atomic_load_n(&acc->notify->seq[w->block], __ATOMIC_ACQUIRE) != acc->seen[w->block]
           || (acc->seen_live && !is_live(acc));
}

static int
past(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* Sleep until an entry is ready, the control word differs from
 * `control_value`, or `timeout` seconds pass (< 0: no limit). Returns 1 when
 * an entry is ready, 0 otherwise, -1 with an exception (a signal handler
 * raised). The GIL is released while sleeping; the memory of every entry
 * stays mapped meanwhile (counted in `users`, which close() respects). */
static int
wait_entries(rt_watch *watched, int n, uint32_t *control, uint32_t control_value, double timeout)
{
    struct timespec deadline;
    if (timeout >= 0) {
        rt_deadline_after(CLOCK_MONOTONIC, timeout, &deadline);
    }
    for (int i = 0; i < n; i++) {
        watched[i].acc->users++;
    }
    int result = 0;
    for (;;) {
        int ready = 0;
        for (int i = 0; i < n && !ready; i++) {
            ready = entry_ready(&watched[i]);
        }
        if (ready) {
            result = 1;
            break;
        }
        if (control != NULL && __atomic_load_n(control, __ATOMIC_ACQUIRE) != control_value) {
            break;
        }
        if (timeout >= 0 && past(&deadline)) {
            break;
        }
        /* Register, then look again: a writer that bumped the word before
         * seeing us registered is caught by this second look. */
        struct rt_futex_waitv waits[2 * RT_MAX_WATCHED + 1];
        int count = 0, producers_from = 0;
        for (int i = 0; i < n; i++) {
            rt_BufferAccess *acc = watched[i].acc;
            __atomic_fetch_add(&acc->notify->waiters[watched[i].block], 1, __ATOMIC_SEQ_CST);
            ready = ready || entry_ready(&watched[i]);
            waits[count++] = (struct rt_futex_waitv){acc->seen[watched[i].block],
                                                     (uint64_t)(uintptr_t)&acc->notify->seq[watched[i].block],
                                                     RT_FUTEX2_SIZE_U32, 0};
        }
        producers_from = count;
        for (int i = 0; i < n; i++) {
            uint32_t value;
            if (rt_watch_producer(watched[i].acc, &value)) {
                waits[count++] = (struct rt_futex_waitv){
                    value, (uint64_t)(uintptr_t)&watched[i].acc->producer->m.mutex, RT_FUTEX2_SIZE_U32, 0};
            }
        }
        if (control != NULL) {
            waits[count++] = (struct rt_futex_waitv){control_value, (uint64_t)(uintptr_t)control,
                                                     RT_FUTEX2_SIZE_U32 | RT_FUTEX2_PRIVATE, 0};
        }
        long rc = 0;
        int err = 0;
        if (!ready) {
            Py_BEGIN_ALLOW_THREADS
            if (rt_have_waitv) {
                rc = syscall(SYS_futex_waitv, waits, count, 0, timeout >= 0 ? &deadline : NULL, CLOCK_MONOTONIC);
                err = rc < 0 ? errno : 0;
                if (err == ENOSYS) {
                    rt_have_waitv = 0;
                }
            }
            if (!rt_have_waitv) {  /* an old kernel: sleep on the first word in short slices */
                struct timespec slice = {0, (long)(RT_FALLBACK_SLICE * 1e9)};
                rc = syscall(SYS_futex, (uint32_t *)(uintptr_t)waits[0].uaddr, FUTEX_WAIT, (uint32_t)waits[0].val,
                             &slice, NULL, 0);
                err = rc < 0 ? errno : 0;
                rc = -1;
            }
            Py_END_ALLOW_THREADS
        }
        for (int i = 0; i < n; i++) {
            __atomic_fetch_sub(&watched[i].acc->notify->waiters[watched[i].block], 1, __ATOMIC_SEQ_CST);
        }
        int producers_to = control != NULL ? count - 1 : count;
        if (rc >= producers_from && rc < producers_to) {
            /* Woken on a producer lock (its owner died or let go): the kernel or
             * glibc woke one sleeper; pass it on to the others. */
            futex_wake_all((uint32_t *)(uintptr_t)waits[rc].uaddr);
        }
        if (err == EINTR && PyErr_CheckSignals() < 0) {
            result = -1;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        rt_BufferAccess *acc = watched[i].acc;
        acc->users--;
        rt_release_view_if_unused(acc);
    }
    return result;
}

static int
parse_block(PyObject *obj, int *block)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value != RT_UPDATE_BLOCK && value != RT_WRITE_BLOCK) {
        PyErr_SetString(PyExc_ValueError, "block must be 0 (update) or 1 (write)");
        return -1;
    }
    *block = (int)value;
    return 0;
}

/* The outcome for one entry found ready: 1 changed (now seen), or -1 with
 * DeviceBufferError (closed or invalid). */
static int
take_change(rt_BufferAccess *acc, int block)
{
    if (acc->closed) {
        rt_buffer_error(acc, "buffer is closed", NULL);
        return -1;
    }
    if (!is_live(acc)) {
        acc->seen_live = 0;  /* this handle has now seen it invalid */
        return rt_invalid_error(acc);
    }
    acc->seen_live = 1;
    acc->seen[block] = __atomic_load_n(&acc->notify->seq[block], __ATOMIC_ACQUIRE);
    return 1;
}

/* wait(block, timeout=None) -> bool */
PyObject *
rt_BufferAccess_wait(rt_BufferAccess *self, PyObject *const *args, Py_ssize_t nargs)
{
    int block;
    double timeout;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "wait(block, timeout=None)");
        return NULL;
    }
    if (parse_block(args[0], &block) < 0
        || rt_parse_timeout(nargs > 1 ? args[1] : NULL, RT_TIMEOUT_NONE | RT_TIMEOUT_CLAMP, -1.0, &timeout) < 0) {
        return NULL;
    }
    if (self->closed) {
        return rt_buffer_error(self, "buffer is closed", NULL);
    }
    if (!is_live(self)) {
        self->seen_live = 0;
        rt_invalid_error(self);
        return NULL;
    }
    self->seen_live = 1;
    Py_INCREF(self);  /* kept alive across the sleep */
    rt_watch watched = {self, block};
    int rc = wait_entries(&watched, 1, NULL, 0, timeout);
    PyObject *result = NULL;
    if (rc == 1) {
        result = take_change(self, block) < 0 ? NULL : Py_NewRef(Py_True);
    }
    else if (rc == 0) {
        /* timed out: still refuse a buffer that turned invalid meanwhile */
        if (self->closed || !is_live(self)) {
            take_change(self, block);  /* raises */
        }
        else {
            result = Py_NewRef(Py_False);
        }
    }
    Py_DECREF(self);
    return result;
}

/* take_change(block) -> bool: whether the block changed since last seen (then seen now);
 * raises for a closed or invalid buffer. Never blocks. */
PyObject *
rt_BufferAccess_take_change(rt_BufferAccess *self, PyObject *arg)
{
    int block;
    if (parse_block(arg, &block) < 0) {
        return NULL;
    }
    rt_watch watched = {self, block};
    if (!entry_ready(&watched)) {
        Py_RETURN_FALSE;
    }
    return take_change(self, block) < 0 ? NULL : Py_NewRef(Py_True);
}

/* see_now(block) -> bool: mark the block's current state seen; whether it had
 * changed. Never raises for validity (wait_any's callers look at valid). */
PyObject *
rt_BufferAccess_see_now(rt_BufferAccess *self, PyObject *arg)
{
    int block;
    if (parse_block(arg, &block) < 0) {
        return NULL;
    }
    if (self->closed) {
        Py_RETURN_FALSE;
    }
    uint32_t now = __atomic_load_n(&self->notify->seq[block], __ATOMIC_ACQUIRE);
    int live = is_live(self);
    int differed = now != self->seen[block] || live != self->seen_live;
    self->seen[block] = now;
    self->seen_live = live;
    return PyBool_FromLong(differed);
}

/* ---- WakeWord: a process-local word to interrupt a wait_any ---------------- */

typedef struct {
    PyObject_HEAD
    uint32_t word;
} rt_WakeWord;

static PyObject *
WakeWord_wake(rt_WakeWord *self, PyObject *unused)
{
    __atomic_fetch_add(&self->word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &self->word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    Py_RETURN_NONE;
}

static PyObject *
WakeWord_get_value(rt_WakeWord *self, void *closure)
{
    return PyLong_FromUnsignedLong(__atomic_load_n(&self->word, __ATOMIC_ACQUIRE));
}

static PyMethodDef WakeWord_methods[] = {
    {"wake", (PyCFunction)WakeWord_wake, METH_NOARGS, "Interrupt the wait_any calls watching this word."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef WakeWord_getset[] = {
    {"value", (getter)WakeWord_get_value, NULL, "The word's current value.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject rt_WakeWordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._core.WakeWord",
    .tp_basicsize = sizeof(rt_WakeWord),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "WakeWord()\n\nA process-local word: wake() interrupts the wait_any calls given it as control.",
    .tp_methods = WakeWord_methods,
    .tp_getset = WakeWord_getset,
    .tp_new = PyType_GenericNew,
};

/* wait_any(entries, timeout=None, control=None, control_value=0) -> list[int]:
 * sleep until one of the (BufferAccess, block) entries changed or turned
 * invalid or closed, `control` (a WakeWord) no longer holds `control_value`,
 * or the timeout passes; return the indices of the ready entries ([] when
 * none). Changes are not taken: see take_change(). */
static PyObject *
core_wait_any(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"entries", "timeout", "control", "control_value", NULL};
    PyObject *entries, *timeout_obj = Py_None, *control = Py_None;
    unsigned int control_value = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOI:wait_any", kwlist, &entries, &timeout_obj, &control,
                                     &control_value)) {
        return NULL;
    }
    double timeout;
    if (rt_parse_timeout(timeout_obj, RT_TIMEOUT_NONE | RT_TIMEOUT_CLAMP, -1.0, &timeout) < 0) {
        return NULL;
    }
    if (control != Py_None && !PyObject_TypeCheck(control, &rt_WakeWordType)) {
        PyErr_SetString(PyExc_TypeError, "control must be a WakeWord or None");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(entries, "entries must be a sequence of (BufferAccess, block)");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > RT_MAX_WATCHED) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "wait_any watches at most %d entries at once, not %zd", RT_MAX_WATCHED, n);
        return NULL;
    }
    rt_watch watched[RT_MAX_WATCHED];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *acc;
        PyObject *block_obj;
        if (!PyArg_ParseTuple(entry, "O!O:wait_any entry", &rt_BufferAccessType, &acc, &block_obj)
            || parse_block(block_obj, &watched[i].block) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        watched[i].acc = (rt_BufferAccess *)acc;
        if (watched[i].acc->closed) {
            Py_DECREF(seq);
            return rt_buffer_error(watched[i].acc, "buffer is closed", NULL);
        }
    }
    Py_INCREF(control);
    int rc = wait_entries(watched, (int)n, control == Py_None ? NULL : &((rt_WakeWord *)control)->word,
                          control_value, timeout);
    Py_DECREF(control);
    PyObject *result = NULL;
    if (rc >= 0) {
        result = PyList_New(0);
        for (Py_ssize_t i = 0; result != NULL && rc == 1 && i < n; i++) {
            if (entry_ready(&watched[i])) {
                PyObject *index = PyLong_FromSsize_t(i);
                if (index == NULL || PyList_Append(result, index) < 0) {
                    Py_CLEAR(result);
                }
                Py_XDECREF(index);
            }
        }
    }
    Py_DECREF(seq);  /* the entries (and their BufferAccess objects) were alive throughout */
    return result;
}


static PyMethodDef wait_functions[] = {
    {"wait_any", (PyCFunction)(void (*)(void))core_wait_any, METH_VARARGS | METH_KEYWORDS,
     "wait_any(entries, timeout=None, control=None, control_value=0) -> list[int]: sleep until one of the "
     "(BufferAccess, block) entries changes, turns invalid or is closed; the indices of those ready."},
    {NULL, NULL, 0, NULL},
};

int
rt_wait_module_init(PyObject *module)
{
    if (PyType_Ready(&rt_WakeWordType) < 0 || PyModule_AddObjectRef(module, "WakeWord", (PyObject *)&rt_WakeWordType) < 0
        || PyModule_AddIntConstant(module, "MAX_WATCHED", RT_MAX_WATCHED) < 0
        || PyModule_AddFunctions(module, wait_functions) < 0) {
        return -1;
    }
    return 0;
}
