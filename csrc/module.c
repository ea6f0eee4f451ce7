/*
 * runtime._core: module definition, error helpers, and POSIX shared memory.
 */
#include "core.h"

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

/* ---- SharedMapping: a mapped segment that unmaps itself when released ---- */

typedef struct {
    PyObject_HEAD
    void *address;
    Py_ssize_t size;
} SharedMapping;

static void
SharedMapping_dealloc(SharedMapping *self)
{
    if (self->address != NULL) {
        munmap(self->address, (size_t)self->size);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
SharedMapping_getbuffer(SharedMapping *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->address, self->size, 0, flags);
}

static Py_ssize_t
SharedMapping_len(SharedMapping *self)
{
    return self->size;
}

static PyBufferProcs SharedMapping_as_buffer = {
    .bf_getbuffer = (getbufferproc)SharedMapping_getbuffer,
};

static PySequenceMethods SharedMapping_as_sequence = {
    .sq_length = (lenfunc)SharedMapping_len,
};

static PyTypeObject SharedMappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._core.SharedMapping",
    .tp_basicsize = sizeof(SharedMapping),
    .tp_dealloc = (destructor)SharedMapping_dealloc,
    .tp_as_buffer = &SharedMapping_as_buffer,
    .tp_as_sequence = &SharedMapping_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writeable memory mapped from a segment (or anonymous); unmapped when the last reference goes.",
};

#define RT_SHM_DIR "/dev/shm"

/* Refuse to use a file as a segment unless it is a regular file owned by
 * this effective user and closed to everyone else: another user's planted
 * file would otherwise pass for live data and receive our writes. */
static PyObject *
refuse_foreign(const char *name, const struct stat *info)
{
    const char *kind = S_ISREG(info->st_mode) ? "regular file" : S_ISFIFO(info->st_mode) ? "FIFO"
                       : S_ISCHR(info->st_mode) ? "character device" : S_ISBLK(info->st_mode) ? "block device"
                       : S_ISSOCK(info->st_mode) ? "socket" : S_ISLNK(info->st_mode) ? "symlink" : S_ISDIR(info->st_mode) ? "directory" : "special file";
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", (unsigned)(info->st_mode & 07777));
    PyObject *name_obj = PyUnicode_FromString(name[0] == '/' ? name + 1 : name);
    PyObject *owner = PyLong_FromUnsignedLong((unsigned long)info->st_uid);
    PyObject *me = PyLong_FromUnsignedLong((unsigned long)geteuid());
    PyObject *mode_obj = PyUnicode_FromString(mode);
    PyObject *kind_obj = PyUnicode_FromString(kind);
    if (name_obj && owner && me && mode_obj && kind_obj) {
        rt_raise(rt_DeviceBufferError,
                 "refusing a segment that is not a regular file owned by this user with owner-only permissions",
                 "name", name_obj, "kind", kind_obj, "owner_uid", owner, "mode", mode_obj, "euid", me, NULL);
    }
    Py_XDECREF(name_obj);
    Py_XDECREF(owner);
    Py_XDECREF(me);
    Py_XDECREF(mode_obj);
    Py_XDECREF(kind_obj);
    return NULL;
}

static int
acceptable(const struct stat *info)
{
    return S_ISREG(info->st_mode) && info->st_uid == geteuid() && (info->st_mode & 077) == 0;
}

/* map_segment(name, size, create) -> (mapping | None, created, actual_size)
 *
 * name None: process-local anonymous memory. Otherwise open the shared memory
 * object /dev/shm/<name> (creating it exclusively when `create` and missing),
 * map `size` bytes and close the descriptor: one call, no resource tracker.
 * A new object gets its pages reserved (posix_fallocate), so a full /dev/shm
 * is an OSError (ENOSPC) here rather than SIGBUS later; a new object that
 * cannot be completed is removed. Symlinks are not followed, FIFOs and
 * devices never block, and an existing object is used only when it is a
 * regular file of this user with owner-only permissions (else
 * DeviceBufferError). When its size differs from `size`, the mapping is None
 * and actual_size says what was found (0: its creator has not sized it yet).
 * Raises FileNotFoundError when missing and not `create`. */
static PyObject *
core_map_segment(PyObject *self, PyObject *args)
{
    PyObject *name_obj;
    Py_ssize_t size;
    int create;
    if (!PyArg_ParseTuple(args, "Onp:map_segment", &name_obj, &size, &create)) {
        return NULL;
    }
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "size must be positive");
        return NULL;
    }
    const char *name = NULL;
    char path[sizeof(RT_SHM_DIR) + 256];
    if (name_obj != Py_None) {
        if ((name = PyUnicode_AsUTF8(name_obj)) == NULL) {
            return NULL;
        }
        if (name[0] != '/' || strchr(name + 1, '/') != NULL || strlen(name) > 255) {
            PyErr_Format(PyExc_ValueError, "bad segment name %R", name_obj);
            return NULL;
        }
        snprintf(path, sizeof(path), "%s%s", RT_SHM_DIR, name);
    }
    int created = 0, err = 0, foreign = 0;
    struct stat info;
    Py_ssize_t actual = size;
    void *address = MAP_FAILED;
    Py_BEGIN_ALLOW_THREADS
    if (name == NULL) {
        created = 1;
        address = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        err = address == MAP_FAILED ? errno : 0;
    }
    else {
        const int flags = O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
        int fd = -1;
        if (create) {
            fd = open(path, flags | O_CREAT | O_EXCL, 0600);
            if (fd >= 0) {
                created = 1;
                if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)size) < 0) {
                    err = errno;
                }
                else {
                    err = posix_fallocate(fd, 0, (off_t)size);
                }
            }
            else if (errno != EEXIST) {
                err = errno;
            }
        }
        if (fd < 0 && err == 0) {
            fd = open(path, flags);
            if (fd < 0) {
                err = errno;
                /* A symlink (ELOOP) or a file we may not open: say whose it is. */
                if ((err == ELOOP || err == EACCES || err == EPERM) && lstat(path, &info) == 0 && !acceptable(&info)) {
                    foreign = 1;
                    err = 0;
                }
            }
            else if (fstat(fd, &info) < 0) {
                err = errno;
            }
            else if (!acceptable(&info)) {
                foreign = 1;
            }
            else {
                actual = (Py_ssize_t)info.st_size;
            }
        }
        if (fd >= 0) {
            if (err == 0 && !foreign && actual == size) {
                address = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                err = address == MAP_FAILED ? errno : 0;
            }
            close(fd);
        }
        if (created && err != 0) {  /* never leave a half-made segment behind */
            unlink(path);
        }
    }
    Py_END_ALLOW_THREADS
    if (foreign) {
        return refuse_foreign(name, &info);
    }
    if (err != 0) {
        errno = err;
        return name ? PyErr_SetFromErrnoWithFilename(PyExc_OSError, name) : PyErr_SetFromErrno(PyExc_OSError);
    }
    if (address == MAP_FAILED) {
        return Py_BuildValue("(OOn)", Py_None, created ? Py_True : Py_False, actual);
    }
    SharedMapping *mapping = PyObject_New(SharedMapping, &SharedMappingType);
    if (mapping == NULL) {
        munmap(address, (size_t)size);
        return NULL;
    }
    mapping->address = address;
    mapping->size = size;
    PyObject *result = Py_BuildValue("(NOn)", mapping, created ? Py_True : Py_False, actual);
    return result;
}

static PyMethodDef core_methods[] = {
    {"map_segment", core_map_segment, METH_VARARGS,
     "map_segment(name, size, create) -> (mapping | None, created, actual_size): map a shared memory object."},
    {"_register", core_register, METH_VARARGS, "Register a Python-level class with the core."},
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
    if (PyType_Ready(&SharedMappingType) < 0
        || PyModule_AddObjectRef(module, "SharedMapping", (PyObject *)&SharedMappingType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (rt_mutex_module_init(module) < 0 || rt_message_module_init(module) < 0
        || rt_buffer_module_init(module) < 0 || rt_pump_module_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
