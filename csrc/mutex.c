/*
 * A robust, optionally process-shared and recursive pthread mutex that can
 * live in any writeable memory, such as a shared-memory segment.
 *
 * Robust means that when the owner dies while holding the lock, the next
 * acquirer gets it (EOWNERDEAD) instead of waiting forever; we make it
 * consistent again and report the recovery to the caller.
 */
#include "core.h"

#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define cpu_relax() rt_cpu_relax()

/* Trylock attempts before sleeping in the kernel: a contended critical
 * section here is tens of nanoseconds, far shorter than a futex round trip. */
#define RT_SPIN_ATTEMPTS 256

int
rt_mutex_init(rt_mutex_t *m, int shared, int recursive)
{
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc != 0) {
        return rc;
    }
    if ((rc = pthread_mutexattr_setpshared(&attr, shared ? PTHREAD_PROCESS_SHARED : PTHREAD_PROCESS_PRIVATE)) != 0
        || (rc = pthread_mutexattr_settype(&attr, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK)) != 0
        || (rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)) != 0) {
        pthread_mutexattr_destroy(&attr);
        return rc;
    }
    memset(m, 0, sizeof(*m));
    rc = pthread_mutex_init(&m->m.mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc == 0) {
        m->m.flags = (shared ? 1u : 0u) | (recursive ? 2u : 0u);
        __atomic_store_n(&m->m.magic, RT_MUTEX_MAGIC, __ATOMIC_RELEASE);
    }
    return rc;
}

int
rt_mutex_destroy(rt_mutex_t *m)
{
    if (__atomic_load_n(&m->m.magic, __ATOMIC_ACQUIRE) != RT_MUTEX_MAGIC) {
        return EINVAL;
    }
    int rc = pthread_mutex_destroy(&m->m.mutex);
    if (rc == 0) {
        __atomic_store_n(&m->m.magic, 0, __ATOMIC_RELEASE);
    }
    return rc;
}

static int
lock_contended(rt_mutex_t *m, double timeout)
{
    int rc = EBUSY;
    for (int i = 0; i < RT_SPIN_ATTEMPTS && rc == EBUSY; i++) {
        cpu_relax();
        rc = pthread_mutex_trylock(&m->m.mutex);
    }
    if (rc != EBUSY) {
        return rc;
    }
    if (timeout < 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_lock(&m->m.mutex);
        Py_END_ALLOW_THREADS
        return rc;
    }
    /* Only a contended acquire with a deadline reads the clock. */
    struct timespec deadline;
    rt_deadline_after(CLOCK_REALTIME, timeout, &deadline);
    Py_BEGIN_ALLOW_THREADS
    rc = pthread_mutex_timedlock(&m->m.mutex, &deadline);
    Py_END_ALLOW_THREADS
    return rc;
}

/* rt_mutex_lock (core.h) after a try that did not simply take the lock: `rc`
 * is what the try returned. */
int
rt_mutex_lock_slow(rt_mutex_t *m, double timeout, int *recovered, int rc)
{
    if (rc == EBUSY && timeout != 0) {
        rc = lock_contended(m, timeout);
    }
    if (rc == EOWNERDEAD) {
        /* The owner died holding the lock: we own it now. */
        rc = pthread_mutex_consistent(&m->m.mutex);
        *recovered = 1;
    }
    return rc;
}

int rt_lockword_has_owner = 0;
unsigned long rt_fork_generation = 0;

int
rt_mutex_held_slow(rt_mutex_t *m)
{
    if (__atomic_load_n(&m->m.magic, __ATOMIC_ACQUIRE) != RT_MUTEX_MAGIC) {
        return 0;
    }
    int rc = pthread_mutex_trylock(&m->m.mutex);
    if (rc == 0 || rc == EOWNERDEAD) {
        if (rc == EOWNERDEAD) {
            pthread_mutex_consistent(&m->m.mutex);
        }
        pthread_mutex_unlock(&m->m.mutex);
        return 0;
    }
    return rc != ENOTRECOVERABLE && rc != EINVAL;  /* EBUSY or EDEADLK: someone (maybe us) holds it */
}

/* Does the C library keep the owner's thread ID in the first word of a
 * robust mutex, and clear it on unlock? Checked on a private mutex. */
static int
check_lockword(void)
{
    rt_mutex_t probe;
    if (rt_mutex_init(&probe, 0, 0) != 0) {
        return 0;
    }
    uint32_t tid = (uint32_t)syscall(SYS_gettid);
    int ok = 0;
    if (pthread_mutex_lock(&probe.m.mutex) == 0) {
        uint32_t word = *(volatile uint32_t *)(void *)&probe.m.mutex;
        ok = (word & RT_FUTEX_TID_MASK) == tid;
        pthread_mutex_unlock(&probe.m.mutex);
        ok = ok && (*(volatile uint32_t *)(void *)&probe.m.mutex & RT_FUTEX_TID_MASK) == 0;
    }
    rt_mutex_destroy(&probe);
    return ok;
}

static void
after_fork_child(void)
{
    rt_fork_generation++;
}

PyObject *
rt_raise_sync_error(int err, const char *action)
{
    const char *reason;
    switch (err) {
    case ETIMEDOUT:
        reason = "timed out waiting for the mutex";
        break;
    case EBUSY:
        reason = "mutex is held by another owner";
        break;
    case EDEADLK:
        reason = "mutex is already held by this thread (not recursive)";
        break;
    case EPERM:
        reason = "mutex is not held by this thread";
        break;
    case EINVAL:
        reason = "mutex is not initialized";
        break;
    case ENOTRECOVERABLE:
        reason = "mutex is not recoverable";
        break;
    default:
        reason = strerror(err);
    }
    char message[160];
    snprintf(message, sizeof(message), "%s: %s", action, reason);
    PyObject *errno_obj = PyLong_FromLong(err);
    if (errno_obj == NULL) {
        return NULL;
    }
    PyObject *exc = PyObject_CallFunction(rt_SyncError, "sO", message, errno_obj);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    Py_DECREF(errno_obj);
    return NULL;
}

/* ---- Python type: runtime.sync.Mutex ------------------------------------ */

typedef struct {
    PyObject_HEAD
    rt_mutex_t *mutex;
    Py_buffer view;      /* the caller's memory, when given */
    int has_view;
    int shared;
    int recursive;
    int last_recovered;
    rt_mutex_t own;      /* used when no memory was given */
} MutexObject;

#define DEFAULT_TIMEOUT 1.0

static int
Mutex_init(MutexObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"", "shared", "recursive", NULL};
    PyObject *buf = Py_None;
    int shared = 1, recursive = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O$pp:Mutex", kwlist, &buf, &shared, &recursive)) {
        return -1;
    }
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    if (buf == Py_None) {
        self->mutex = &self->own;
    }
    else {
        if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            return -1;
        }
        self->has_view = 1;
        if (self->view.len < RT_MUTEX_SIZE) {
            PyErr_Format(PyExc_ValueError, "buffer too small for a mutex: %zd bytes, need %zd",
                         self->view.len, RT_MUTEX_SIZE);
            return -1;
        }
        if (((uintptr_t)self->view.buf) % 8 != 0) {
            PyErr_SetString(PyExc_ValueError, "mutex memory must be 8-byte aligned");
            return -1;
        }
        self->mutex = (rt_mutex_t *)self->view.buf;
    }
    self->shared = shared;
    self->recursive = recursive;
    return 0;
}

static void
Mutex_dealloc(MutexObject *self)
{
    if (self->has_view) {
        PyBuffer_Release(&self->view);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Mutex_initialize(MutexObject *self, PyObject *unused)
{
    int rc = rt_mutex_init(self->mutex, self->shared, self->recursive);
    if (rc != 0) {
        return rt_raise_sync_error(rc, "cannot initialize mutex");
    }
    Py_RETURN_NONE;
}

static PyObject *
Mutex_destroy(MutexObject *self, PyObject *unused)
{
    int rc = rt_mutex_destroy(self->mutex);
    if (rc != 0) {
        return rt_raise_sync_error(rc, "cannot destroy mutex");
    }
    Py_RETURN_NONE;
}

static PyObject *
Mutex_acquire(MutexObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout_obj = NULL;
    if (nargs != 0) {
        PyErr_SetString(PyExc_TypeError, "acquire() takes only the keyword argument 'timeout'");
        return NULL;
    }
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i);
            if (!PyUnicode_Check(key) || PyUnicode_CompareWithASCIIString(key, "timeout") != 0) {
                PyErr_Format(PyExc_TypeError, "acquire() got an unexpected keyword argument %R", key);
                return NULL;
            }
            timeout_obj = args[i];
        }
    }
    double timeout;
    if (rt_parse_timeout(timeout_obj, RT_TIMEOUT_NONE | RT_TIMEOUT_CLAMP, DEFAULT_TIMEOUT, &timeout) < 0) {
        return NULL;
    }
    int recovered;
    int rc = rt_mutex_lock(self->mutex, timeout, &recovered);
    if (rc != 0) {
        return rt_raise_sync_error(rc, "cannot acquire mutex");
    }
    self->last_recovered = recovered;
    return PyBool_FromLong(recovered);
}

static PyObject *
Mutex_release(MutexObject *self, PyObject *unused)
{
    int rc = rt_mutex_unlock(self->mutex);
    if (rc != 0) {
        return rt_raise_sync_error(rc, "cannot release mutex");
    }
    Py_RETURN_NONE;
}

static PyObject *
Mutex_enter(MutexObject *self, PyObject *unused)
{
    int recovered;
    int rc = rt_mutex_lock(self->mutex, DEFAULT_TIMEOUT, &recovered);
    if (rc != 0) {
        return rt_raise_sync_error(rc, "cannot acquire mutex");
    }
    self->last_recovered = recovered;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *
Mutex_exit(MutexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return Mutex_release(self, NULL);
}

static PyObject *
Mutex_get_recovered(MutexObject *self, void *closure)
{
    return PyBool_FromLong(self->last_recovered);
}

static PyObject *
Mutex_get_shared(MutexObject *self, void *closure)
{
    return PyBool_FromLong(self->shared);
}

static PyObject *
Mutex_get_recursive(MutexObject *self, void *closure)
{
    return PyBool_FromLong(self->recursive);
}

static PyObject *
Mutex_get_initialized(MutexObject *self, void *closure)
{
    return PyBool_FromLong(__atomic_load_n(&self->mutex->m.magic, __ATOMIC_ACQUIRE) == RT_MUTEX_MAGIC);
}

static PyMethodDef Mutex_methods[] = {
    {"initialize", (PyCFunction)Mutex_initialize, METH_NOARGS,
     "Initialize the mutex in its memory. Call once, by the memory's creator."},
    {"destroy", (PyCFunction)Mutex_destroy, METH_NOARGS, "Destroy the mutex; it must not be held."},
    {"acquire", (PyCFunction)(void (*)(void))Mutex_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(*, timeout=1.0) -> bool\n\n"
     "Acquire the mutex. timeout=None blocks, 0 tries once, > 0 waits at most that many\n"
     "seconds. Returns True when the previous owner died holding the mutex and it was\n"
     "recovered. Raises SyncError on timeout or misuse."},
    {"release", (PyCFunction)Mutex_release, METH_NOARGS, "Release the mutex."},
    {"__enter__", (PyCFunction)Mutex_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Mutex_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Mutex_getset[] = {
    {"recovered", (getter)Mutex_get_recovered, NULL,
     "Whether the last acquire through this object recovered the mutex from a dead owner.", NULL},
    {"shared", (getter)Mutex_get_shared, NULL, "Whether the mutex is process-shared.", NULL},
    {"recursive", (getter)Mutex_get_recursive, NULL, "Whether the owner may re-acquire the mutex.", NULL},
    {"initialized", (getter)Mutex_get_initialized, NULL, "Whether the memory holds an initialized mutex.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject rt_MutexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime.sync.Mutex",
    .tp_basicsize = sizeof(MutexObject),
    .tp_dealloc = (destructor)Mutex_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Mutex(buf=None, /, *, shared=True, recursive=True)\n\n"
              "A robust pthread mutex stored in `buf` (any writeable buffer of at least\n"
              "Mutex.SIZE bytes), or in the object itself when `buf` is None.",
    .tp_methods = Mutex_methods,
    .tp_getset = Mutex_getset,
    .tp_init = (initproc)Mutex_init,
    .tp_new = PyType_GenericNew,
};

int
rt_mutex_module_init(PyObject *module)
{
    if (PyType_Ready(&rt_MutexType) < 0) {
        return -1;
    }
    rt_lockword_has_owner = check_lockword();
    if (pthread_atfork(NULL, NULL, after_fork_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot register the fork handler");
        return -1;
    }
    if (PyModule_AddIntConstant(module, "FAST_LIVENESS", rt_lockword_has_owner) < 0) {
        return -1;
    }
    PyObject *size = PyLong_FromSsize_t(RT_MUTEX_SIZE);
    if (size == NULL || PyDict_SetItemString(rt_MutexType.tp_dict, "SIZE", size) < 0) {
        Py_XDECREF(size);
        return -1;
    }
    Py_DECREF(size);
    PyObject *timeout = PyFloat_FromDouble(DEFAULT_TIMEOUT);
    if (timeout == NULL || PyDict_SetItemString(rt_MutexType.tp_dict, "DEFAULT_TIMEOUT", timeout) < 0) {
        Py_XDECREF(timeout);
        return -1;
    }
    Py_DECREF(timeout);
    PyType_Modified(&rt_MutexType);
    Py_INCREF(&rt_MutexType);
    return PyModule_AddObject(module, "Mutex", (PyObject *)&rt_MutexType);
}
