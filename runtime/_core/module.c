/*
 * runtime._core: module definition, error helpers, and POSIX shared memory.
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

PyObject *rt_SyncError = NULL;
PyObject *rt_MessageError = NULL;
PyObject *rt_DeviceBufferError = NULL;
PyObject *rt_message_types[256];
PyObject *rt_error_codes[256];

static PyObject *
raise_with_context(PyObject *cls, const char *message, va_list args)
{
    PyObject *context = PyDict_New();
    if (context == NULL) {
        return NULL;
    }
    const char *key;
    while ((key = va_arg(args, const char *)) != NULL) {
        PyObject *value = va_arg(args, PyObject *);
        if (value == NULL) {
            value = Py_None;
        }
        if (PyDict_SetItemString(context, key, value) < 0) {
            Py_DECREF(context);
            return NULL;
        }
    }
    if (cls == NULL) {
        cls = PyExc_RuntimeError;
    }
    PyObject *args_tuple = Py_BuildValue("(s)", message);
    if (args_tuple == NULL) {
        Py_DECREF(context);
        return NULL;
    }
    PyObject *exc = PyObject_Call(cls, args_tuple, cls == PyExc_RuntimeError ? NULL : context);
    Py_DECREF(args_tuple);
    Py_DECREF(context);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

PyObject *
rt_raise(PyObject *cls, const char *message, ...)
{
    va_list args;
    va_start(args, message);
    raise_with_context(cls, message, args);
    va_end(args);
    return NULL;
}

PyObject *
rt_raise_message_error(int error_code, const char *message, ...)
{
    /* Prepend error_code to the caller's context. */
    PyObject *context = PyDict_New();
    if (context == NULL) {
        return NULL;
    }
    PyObject *code = rt_error_codes[error_code & 0xFF];
    PyObject *code_obj = code ? (Py_INCREF(code), code) : PyLong_FromLong(error_code);
    if (code_obj == NULL || PyDict_SetItemString(context, "error_code", code_obj) < 0) {
        Py_XDECREF(code_obj);
        Py_DECREF(context);
        return NULL;
    }
    Py_DECREF(code_obj);
    va_list args;
    va_start(args, message);
    const char *key;
    while ((key = va_arg(args, const char *)) != NULL) {
        PyObject *value = va_arg(args, PyObject *);
        if (PyDict_SetItemString(context, key, value ? value : Py_None) < 0) {
            va_end(args);
            Py_DECREF(context);
            return NULL;
        }
    }
    va_end(args);
    PyObject *cls = rt_MessageError ? rt_MessageError : PyExc_RuntimeError;
    PyObject *args_tuple = Py_BuildValue("(s)", message);
    PyObject *exc = NULL;
    if (args_tuple != NULL) {
        exc = PyObject_Call(cls, args_tuple, rt_MessageError ? context : NULL);
        Py_DECREF(args_tuple);
    }
    Py_DECREF(context);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* _register(kind, obj): called by the Python modules at import time. */
static PyObject *
core_register(PyObject *self, PyObject *args)
{
    const char *kind;
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "sO:_register", &kind, &obj)) {
        return NULL;
    }
    PyObject **slot = NULL;
    if (strcmp(kind, "SyncError") == 0) {
        slot = &rt_SyncError;
    }
    else if (strcmp(kind, "MessageError") == 0) {
        slot = &rt_MessageError;
    }
    else if (strcmp(kind, "DeviceBufferError") == 0) {
        slot = &rt_DeviceBufferError;
    }
    else if (strcmp(kind, "MessageType") == 0 || strcmp(kind, "ErrorCode") == 0) {
        /* An IntEnum class: cache its members by value. */
        PyObject **table = kind[0] == 'M' ? rt_message_types : rt_error_codes;
        PyObject *iter = PyObject_GetIter(obj);
        if (iter == NULL) {
            return NULL;
        }
        PyObject *member;
        while ((member = PyIter_Next(iter)) != NULL) {
            long value = PyLong_AsLong(member);
            if (value < 0 || value > 255) {
                Py_DECREF(member);
                Py_DECREF(iter);
                if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_ValueError, "enum value out of byte range");
                }
                return NULL;
            }
            Py_XSETREF(table[value], member);
        }
        Py_DECREF(iter);
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    else {
        PyErr_Format(PyExc_ValueError, "unknown registration %s", kind);
        return NULL;
    }
    Py_INCREF(obj);
    Py_XSETREF(*slot, obj);
    Py_RETURN_NONE;
}

/* shm_open(name, create, size) -> fd.  create: 0 attach, 1 create exclusively.
 * Unlike multiprocessing.shared_memory this never involves the resource
 * tracker, so attaching and exiting leaves the segment alone. */
static PyObject *
core_shm_open(PyObject *self, PyObject *args)
{
    const char *name;
    int create;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "spn:shm_open", &name, &create, &size)) {
        return NULL;
    }
    int flags = create ? (O_CREAT | O_EXCL | O_RDWR) : O_RDWR;
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = shm_open(name, flags, 0600);
    if (fd >= 0 && create && ftruncate(fd, (off_t)size) < 0) {
        int saved = errno;
        close(fd);
        shm_unlink(name);
        errno = saved;
        fd = -1;
    }
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    }
    return PyLong_FromLong(fd);
}

static PyObject *
core_shm_unlink(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s:shm_unlink", &name)) {
        return NULL;
    }
    if (shm_unlink(name) < 0) {
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    }
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"_register", core_register, METH_VARARGS, "Register a Python-level class with the core."},
    {"shm_open", core_shm_open, METH_VARARGS,
     "shm_open(name, create, size) -> fd: open (or exclusively create) a POSIX shared memory object."},
    {"shm_unlink", core_shm_unlink, METH_VARARGS, "shm_unlink(name): remove a POSIX shared memory object."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "runtime._core",
    .m_doc = "Compiled hot paths of the runtime library (mutex, messages, buffers).",
    .m_size = -1,
    .m_methods = core_methods,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    PyObject *module = PyModule_Create(&core_module);
    if (module == NULL) {
        return NULL;
    }
    if (rt_mutex_module_init(module) < 0 || rt_message_module_init(module) < 0
        || rt_buffer_module_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
