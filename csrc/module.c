/*
 * runtime._core: module definition and error helpers.
 */
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

PyObject *rt_SyncError = NULL;
PyObject *rt_MessageError = NULL;
PyObject *rt_DeviceBufferError = NULL;
PyObject *rt_did_you_mean = NULL;
PyObject *rt_message_types[256];
PyObject *rt_error_codes[256];

/* Raise `cls(message, **context)`: `context` starts as `first_key`=`first`
 * (when given) and goes on with the (key, value) pairs in `args`. */
static PyObject *
raise_with_context(PyObject *cls, const char *message, const char *first_key, PyObject *first, va_list args)
{
    PyObject *context = PyDict_New();
    if (context == NULL) {
        return NULL;
    }
    if (first_key != NULL && PyDict_SetItemString(context, first_key, first) < 0) {
        Py_DECREF(context);
        return NULL;
    }
    const char *key;
    while ((key = va_arg(args, const char *)) != NULL) {
        PyObject *value = va_arg(args, PyObject *);
        if (PyDict_SetItemString(context, key, value ? value : Py_None) < 0) {
            Py_DECREF(context);
            return NULL;
        }
    }
    if (cls == NULL) {  /* the Python layer has not registered its class yet */
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
    raise_with_context(cls, message, NULL, NULL, args);
    va_end(args);
    return NULL;
}

PyObject *
rt_raise_message_error(int error_code, const char *message, ...)
{
    PyObject *member = rt_error_codes[error_code & 0xFF];
    PyObject *code = member ? Py_NewRef(member) : PyLong_FromLong(error_code);
    if (code == NULL) {
        return NULL;
    }
    va_list args;
    va_start(args, message);
    raise_with_context(rt_MessageError, message, "error_code", code, args);
    va_end(args);
    Py_DECREF(code);
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
    else if (strcmp(kind, "did_you_mean") == 0) {
        slot = &rt_did_you_mean;
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

static PyMethodDef core_methods[] = {
    {"_register", core_register, METH_VARARGS, "Register a Python-level class with the core."},
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
    if (rt_segment_module_init(module) < 0 || rt_mutex_module_init(module) < 0
        || rt_message_module_init(module) < 0 || rt_spec_module_init(module) < 0
        || rt_buffer_module_init(module) < 0 || rt_wait_module_init(module) < 0 || rt_pump_module_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
