/*
 * runtime._core: module definition, the exceptions the core raises, and the
 * helpers that raise them.
 */
#include "core.h"
#include "segment.h"  /* rt_feed_module_init */

#include <stdarg.h>

/* ---- the exceptions ------------------------------------------------------ */
/* Created at import on runtime.exception.RuntimeBaseException (the pure-Python
 * root of the library's exceptions, at the bottom of the module graph);
 * runtime.buffer, runtime.messaging and runtime.sync re-export them under the
 * names their __module__ gives. */
PyObject *rt_SyncError = NULL;
PyObject *rt_MessageError = NULL;
PyObject *rt_DeviceBufferError = NULL;
PyObject *rt_did_you_mean = NULL;

/* ---- MessageType and ErrorCode members ----------------------------------- */
/* The IntEnums live in runtime.messaging, which imports this module: they are
 * looked up the first time a member is needed, and their members cached by value. */
static PyObject *message_types[256];
static PyObject *error_codes[256];
static PyObject *error_code_class;
static int enums_loaded;

static int
cache_members(PyObject *messaging, const char *name, PyObject **table, PyObject **cls_out)
{
    PyObject *cls = PyObject_GetAttrString(messaging, name);
    if (cls == NULL) {
        return -1;
    }
    PyObject *iter = PyObject_GetIter(cls);
    if (iter == NULL) {
        Py_DECREF(cls);
        return -1;
    }
    PyObject *member;
    while ((member = PyIter_Next(iter)) != NULL) {
        long value = PyLong_AsLong(member);
        if (value < 0 || value > 255) {
            Py_DECREF(member);
            Py_DECREF(iter);
            Py_DECREF(cls);
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_ValueError, "%s value out of byte range", name);
            }
            return -1;
        }
        Py_XSETREF(table[value], member);
    }
    Py_DECREF(iter);
    if (PyErr_Occurred()) {
        Py_DECREF(cls);
        return -1;
    }
    if (cls_out != NULL) {
        Py_XSETREF(*cls_out, cls);
    }
    else {
        Py_DECREF(cls);
    }
    return 0;
}

static __attribute__((noinline)) int
load_enums(void)
{
    PyObject *messaging = PyImport_ImportModule("runtime.messaging");
    if (messaging == NULL) {
        return -1;
    }
    int rc = 0;
    if (cache_members(messaging, "MessageType", message_types, NULL) < 0
        || cache_members(messaging, "ErrorCode", error_codes, &error_code_class) < 0) {
        rc = -1;
    }
    Py_DECREF(messaging);
    enums_loaded = rc == 0;
    return rc;
}

PyObject *
rt_message_type(int value)
{
    if (__builtin_expect(!enums_loaded, 0) && load_enums() < 0) {
        return NULL;
    }
    return message_types[value & 0xFF];
}

PyObject *
rt_error_code(int value)
{
    if (__builtin_expect(!enums_loaded, 0) && load_enums() < 0) {
        return NULL;
    }
    return error_codes[value & 0xFF];
}

/* ---- Python-level behaviour of the exception classes --------------------- */

static PyObject *
context_of(PyObject *exc)
{
    return PyObject_GetAttrString(exc, "context");
}

/* MessageError.error_code: ErrorCode(self.context.get("error_code", ErrorCode.GENERIC_ERROR)) */
static PyObject *
MessageError_get_error_code(PyObject *self, void *closure)
{
    PyObject *generic = rt_error_code(RT_GENERIC_ERROR);
    if (generic == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "runtime.messaging.ErrorCode has no GENERIC_ERROR");
        }
        return NULL;
    }
    PyObject *context = context_of(self);
    if (context == NULL) {
        return NULL;
    }
    PyObject *code = PyObject_CallMethod(context, "get", "sO", "error_code", generic);
    Py_DECREF(context);
    if (code == NULL) {
        return NULL;
    }
    PyObject *member = PyObject_CallOneArg(error_code_class, code);
    Py_DECREF(code);
    return member;
}

static PyGetSetDef MessageError_getset[] = {
    {"error_code", MessageError_get_error_code, NULL,
     "The protocol error code of this failure (GENERIC_ERROR when none).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* SyncError(message, errno, /, **context): RuntimeBaseException.__init__(self, message, errno=errno, **context) */
static PyObject *
SyncError_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *message, *err;
    if (!PyArg_ParseTuple(args, "OO:SyncError", &message, &err)) {
        return NULL;
    }
    if (kwargs != NULL && PyDict_GetItemString(kwargs, "errno") != NULL) {
        PyErr_SetString(PyExc_TypeError, "SyncError() got multiple values for keyword argument 'errno'");
        return NULL;
    }
    PyObject *context = PyDict_New();
    if (context == NULL || PyDict_SetItemString(context, "errno", err) < 0
        || (kwargs != NULL && PyDict_Update(context, kwargs) < 0)) {
        Py_XDECREF(context);
        return NULL;
    }
    PyObject *base = PyTuple_GET_ITEM(((PyTypeObject *)rt_SyncError)->tp_bases, 0);
    PyObject *init = PyObject_GetAttrString(base, "__init__");
    PyObject *call_args = init ? PyTuple_Pack(2, self, message) : NULL;
    PyObject *result = call_args ? PyObject_Call(init, call_args, context) : NULL;
    Py_XDECREF(call_args);
    Py_XDECREF(init);
    Py_DECREF(context);
    if (result == NULL) {
        return NULL;
    }
    Py_DECREF(result);
    Py_RETURN_NONE;
}

/* int(self.context["errno"]) */
static PyObject *
SyncError_get_errno(PyObject *self, void *closure)
{
    PyObject *context = context_of(self);
    if (context == NULL) {
        return NULL;
    }
    PyObject *key = PyUnicode_FromString("errno");
    PyObject *value = key ? PyObject_GetItem(context, key) : NULL;
    Py_XDECREF(key);
    Py_DECREF(context);
    if (value == NULL) {
        return NULL;
    }
    PyObject *number = PyNumber_Long(value);
    Py_DECREF(value);
    return number;
}

/* errno.errorcode.get(self.errno, str(self.errno)) */
static PyObject *
SyncError_get_errno_name(PyObject *self, void *closure)
{
    PyObject *number = SyncError_get_errno(self, NULL);
    if (number == NULL) {
        return NULL;
    }
    PyObject *fallback = PyObject_Str(number);
    PyObject *errno_module = fallback ? PyImport_ImportModule("errno") : NULL;
    PyObject *table = errno_module ? PyObject_GetAttrString(errno_module, "errorcode") : NULL;
    PyObject *name = table ? PyObject_CallMethod(table, "get", "OO", number, fallback) : NULL;
    Py_XDECREF(table);
    Py_XDECREF(errno_module);
    Py_XDECREF(fallback);
    Py_DECREF(number);
    return name;
}

static PyMethodDef SyncError_init_def = {
    "__init__", (PyCFunction)(void (*)(void))SyncError_init, METH_VARARGS | METH_KEYWORDS,
    "__init__(message, errno, /, **context)"};

static PyGetSetDef SyncError_getset[] = {
    {"errno", SyncError_get_errno, NULL, "The ``errno`` value that explains the failure.", NULL},
    {"errno_name", SyncError_get_errno_name, NULL, "The symbolic name of :attr:`errno`, such as ``'ETIMEDOUT'``.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* Make the class `name` (dotted: its public module) on `base`, with
 * `getset` properties and an optional `init`. */
static PyObject *
new_exception(const char *name, const char *doc, PyObject *base, PyGetSetDef *getset, PyMethodDef *init)
{
    PyObject *cls = PyErr_NewExceptionWithDoc(name, doc, base, NULL);
    if (cls == NULL) {
        return NULL;
    }
    for (PyGetSetDef *def = getset; def != NULL && def->name != NULL; def++) {
        PyObject *descr = PyDescr_NewGetSet((PyTypeObject *)cls, def);
        if (descr == NULL || PyObject_SetAttrString(cls, def->name, descr) < 0) {
            Py_XDECREF(descr);
            Py_DECREF(cls);
            return NULL;
        }
        Py_DECREF(descr);
    }
    if (init != NULL) {
        PyObject *descr = PyDescr_NewMethod((PyTypeObject *)cls, init);
        if (descr == NULL || PyObject_SetAttrString(cls, init->ml_name, descr) < 0) {
            Py_XDECREF(descr);
            Py_DECREF(cls);
            return NULL;
        }
        Py_DECREF(descr);
    }
    return cls;
}

static int
add_exception(PyObject *module, PyObject **slot, const char *name, const char *doc, PyObject *base,
              PyGetSetDef *getset, PyMethodDef *init)
{
    PyObject *cls = new_exception(name, doc, base, getset, init);
    if (cls == NULL) {
        return -1;
    }
    Py_XSETREF(*slot, cls);
    return PyModule_AddObjectRef(module, strrchr(name, '.') + 1, cls);
}

static int
exceptions_init(PyObject *module)
{
    PyObject *exception = PyImport_ImportModule("runtime.exception");
    if (exception == NULL) {
        return -1;
    }
    PyObject *base = PyObject_GetAttrString(exception, "RuntimeBaseException");
    PyObject *did_you_mean = PyObject_GetAttrString(exception, "did_you_mean");
    Py_DECREF(exception);
    int rc = -1;
    if (base != NULL && did_you_mean != NULL) {
        Py_XSETREF(rt_did_you_mean, Py_NewRef(did_you_mean));
        if (add_exception(module, &rt_DeviceBufferError, "runtime.buffer.DeviceBufferError",
                          "Error when interfacing with a buffer (``context`` names the buffer and parameter).", base,
                          NULL, NULL) == 0
            && add_exception(module, &rt_MessageError, "runtime.messaging.MessageError",
                             "A message could not be decoded, built or read.\n\n"
                             "``context['error_code']`` holds the :class:`ErrorCode` to answer the peer\n"
                             "with, where the failure has one (a bad checksum, an undecodable frame).",
                             base, MessageError_getset, NULL) == 0
            && add_exception(module, &rt_SyncError, "runtime.sync.SyncError",
                             "A synchronization primitive failed; ``context['errno']`` says why.\n\n"
                             "Typical values: ``ETIMEDOUT`` (the wait expired), ``EBUSY`` (a try-lock\n"
                             "found it held), ``EDEADLK`` (a non-recursive mutex re-acquired by its\n"
                             "owner), ``EPERM`` (released by a non-owner), ``EINVAL`` (never initialized).",
                             base, SyncError_getset, &SyncError_init_def) == 0) {
            rc = 0;
        }
    }
    Py_XDECREF(base);
    Py_XDECREF(did_you_mean);
    return rc;
}

/* ---- raising ------------------------------------------------------------- */

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
    PyObject *args_tuple = Py_BuildValue("(s)", message);
    if (args_tuple == NULL) {
        Py_DECREF(context);
        return NULL;
    }
    PyObject *exc = PyObject_Call(cls, args_tuple, context);
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
    PyObject *member = rt_error_code(error_code);
    if (member == NULL && PyErr_Occurred()) {
        return NULL;
    }
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

/* ---- timeouts ------------------------------------------------------------ */

int
rt_parse_timeout(PyObject *obj, int flags, double missing, double *timeout)
{
    if (obj == NULL && !isnan(missing)) {
        *timeout = missing;
        return 0;
    }
    if (obj == Py_None && (flags & RT_TIMEOUT_NONE)) {
        *timeout = -1.0;
        return 0;
    }
    double value = obj != NULL ? PyFloat_AsDouble(obj) : missing;
    if (value == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!(value >= 0)) {  /* negative, or NaN */
        PyErr_SetString(PyExc_ValueError, (flags & RT_TIMEOUT_NONE)
                                              ? "timeout must be None or a nonnegative number of seconds"
                                              : "timeout must be a nonnegative number of seconds");
        return -1;
    }
    /* An infinite (or absurdly long) wait would overflow a deadline's time_t
     * (pthread_mutex_timedlock would fail with EINVAL): no limit instead. */
    *timeout = (flags & RT_TIMEOUT_CLAMP) && value > RT_MAX_TIMEOUT ? -1.0 : value;
    return 0;
}

/* ---- the module ---------------------------------------------------------- */

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "runtime._core",
    .m_doc = "Compiled hot paths of the runtime library (mutex, messages, buffers).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    PyObject *module = PyModule_Create(&core_module);
    if (module == NULL) {
        return NULL;
    }
    if (exceptions_init(module) < 0 || rt_segment_module_init(module) < 0 || rt_mutex_module_init(module) < 0
        || rt_message_module_init(module) < 0 || rt_spec_module_init(module) < 0
        || rt_buffer_module_init(module) < 0 || rt_wait_module_init(module) < 0 || rt_feed_module_init(module) < 0
        || rt_pump_module_init(module) < 0 || rt_relay_module_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
