/*
 * Segments: POSIX shared memory objects mapped (SharedMapping), and the
 * header of a buffer segment written when it is created and checked when it
 * is attached (segment.h has the layout).
 */
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* ---- the segment header -------------------------------------------------- */

/* segment_init(memory, magic, version, fingerprint, size, shared, pid, valid,
 *              namespace_length, initial=None, offsets=()):
 * write the header of a new segment, copy `initial` (a values block) to each
 * of `offsets` in the structure, initialize the mutex, and publish the
 * segment (state READY, with release ordering) so attachers can use it. */
static PyObject *
core_segment_init(PyObject *self, PyObject *args)
{
    Py_buffer view, magic, fingerprint, initial = {0};
    unsigned int version, pid, namespace_length;
    unsigned long long size;
    int shared, valid;
    PyObject *offsets = NULL;
    if (!PyArg_ParseTuple(args, "w*y*Iy*KpIpI|z*O!:segment_init", &view, &magic, &version, &fingerprint, &size,
                          &shared, &pid, &valid, &namespace_length, &initial, &PyTuple_Type, &offsets)) {
        return NULL;
    }
    PyObject *result = NULL;
    int bad = view.len < RT_DATA_OFFSET || magic.len != 8 || fingerprint.len != RT_FINGERPRINT_SIZE
              || ((uintptr_t)view.buf) % 64;
    for (Py_ssize_t i = 0; !bad && initial.buf != NULL && offsets != NULL && i < PyTuple_GET_SIZE(offsets); i++) {
        Py_ssize_t offset = PyLong_AsSsize_t(PyTuple_GET_ITEM(offsets, i));
        if (offset < 0 || RT_DATA_OFFSET + offset + initial.len > view.len) {
            bad = 1;
            break;
        }
        memcpy((uint8_t *)view.buf + RT_DATA_OFFSET + offset, initial.buf, (size_t)initial.len);
    }
    if (bad) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "bad segment_init arguments");
        }
    }
    else {
        rt_header *header = (rt_header *)view.buf;
        memcpy(header->magic, magic.buf, 8);
        header->version = version;
        header->size = size;
        header->creator_pid = pid;
        memcpy(header->fingerprint, fingerprint.buf, RT_FINGERPRINT_SIZE);
        header->valid = valid ? RT_VALID : RT_INVALID;
        header->namespace_length = namespace_length;
        int rc = rt_mutex_init((rt_mutex_t *)((uint8_t *)view.buf + RT_MUTEX_OFFSET), shared, 1);
        if (rc == 0) {
            rc = rt_mutex_init((rt_mutex_t *)((uint8_t *)view.buf + RT_PRODUCER_OFFSET), shared, 0);
        }
        if (rc != 0) {
            rt_raise_sync_error(rc, "cannot initialize the buffer's mutex");
        }
        else {
            __atomic_store_n(&header->state, RT_SEGMENT_READY, __ATOMIC_RELEASE);
            result = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&magic);
    PyBuffer_Release(&fingerprint);
    if (initial.obj != NULL) {
        PyBuffer_Release(&initial);
    }
    return result;
}

/* segment_check(memory, magic, version, fingerprint, size) -> str | None:
 * None when the segment is ready and matches; otherwise why not
 * ("not ready", "format", "layout"). */
static PyObject *
core_segment_check(PyObject *self, PyObject *args)
{
    Py_buffer view, magic, fingerprint;
    unsigned int version;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "y*y*Iy*K:segment_check", &view, &magic, &version, &fingerprint, &size)) {
        return NULL;
    }
    const char *problem = NULL;
    if (view.len < RT_DATA_OFFSET || magic.len != 8 || fingerprint.len != RT_FINGERPRINT_SIZE) {
        problem = "format";
    }
    else {
        rt_header *header = (rt_header *)view.buf;
        if (__atomic_load_n(&header->state, __ATOMIC_ACQUIRE) != RT_SEGMENT_READY) {
            problem = "not ready";
        }
        else if (memcmp(header->magic, magic.buf, 8) != 0 || header->version != version) {
            problem = "format";
        }
        else if (header->size != size || memcmp(header->fingerprint, fingerprint.buf, RT_FINGERPRINT_SIZE) != 0) {
            problem = "layout";
        }
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&magic);
    PyBuffer_Release(&fingerprint);
    if (problem == NULL) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromString(problem);
}

static PyObject *
core_segment_size(PyObject *self, PyObject *arg)
{
    Py_ssize_t struct_size = PyLong_AsSsize_t(arg);
    if (struct_size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (struct_size < 0) {
        PyErr_SetString(PyExc_ValueError, "structure size must be nonnegative");
        return NULL;
    }
    return PyLong_FromSsize_t(undo_offset(struct_size) + struct_size);
}


static PyMethodDef segment_functions[] = {
    {"map_segment", core_map_segment, METH_VARARGS,
     "map_segment(name, size, create) -> (mapping | None, created, actual_size): map a shared memory object."},
    {"shm_unlink", core_shm_unlink, METH_VARARGS, "shm_unlink(name): remove a POSIX shared memory object."},
    {"segment_size", core_segment_size, METH_O,
     "segment_size(struct_size) -> bytes of a segment: header, mutex, structure and its undo copy."},
    {"segment_init", core_segment_init, METH_VARARGS,
     "segment_init(memory, magic, version, fingerprint, size, shared, pid, valid, namespace_length, "
     "initial=None, offsets=()): "
     "set up a new segment."},
    {"segment_check", core_segment_check, METH_VARARGS,
     "segment_check(memory, magic, version, fingerprint, size) -> None or the reason it cannot be used."},
    {NULL, NULL, 0, NULL},
};

int
rt_segment_module_init(PyObject *module)
{
    if (PyType_Ready(&SharedMappingType) < 0
        || PyModule_AddObjectRef(module, "SharedMapping", (PyObject *)&SharedMappingType) < 0
        || PyModule_AddFunctions(module, segment_functions) < 0) {
        return -1;
    }
    PyObject *meta = Py_BuildValue(
        "{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}", "last_update", (Py_ssize_t)offsetof(rt_meta, last_update),
        "last_write", (Py_ssize_t)offsetof(rt_meta, last_write), "updated", (Py_ssize_t)offsetof(rt_meta, updated),
        "read", (Py_ssize_t)offsetof(rt_meta, read), "written", (Py_ssize_t)offsetof(rt_meta, written),
        "subscription", (Py_ssize_t)offsetof(rt_meta, subscription), "interval_ms",
        (Py_ssize_t)offsetof(rt_meta, interval_ms), "uid", (Py_ssize_t)offsetof(rt_meta, device_id), "size",
        (Py_ssize_t)sizeof(rt_meta));
    if (meta == NULL || PyModule_AddObject(module, "META_LAYOUT", meta) < 0) {
        Py_XDECREF(meta);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "HEADER_SIZE", RT_HEADER_SIZE) < 0
        || PyModule_AddIntConstant(module, "VALID_OFFSET", RT_VALID_OFFSET) < 0
        || PyModule_AddIntConstant(module, "STATE_OFFSET", (long)offsetof(rt_header, state)) < 0
        || PyModule_AddIntConstant(module, "MUTEX_OFFSET", RT_MUTEX_OFFSET) < 0
        || PyModule_AddIntConstant(module, "PRODUCER_OFFSET", RT_PRODUCER_OFFSET) < 0
        || PyModule_AddIntConstant(module, "NOTIFY_OFFSET", RT_NOTIFY_OFFSET) < 0
        || PyModule_AddIntConstant(module, "DATA_OFFSET", RT_DATA_OFFSET) < 0) {
        return -1;
    }
    return 0;
}
