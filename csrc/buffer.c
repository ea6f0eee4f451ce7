/*
 * The buffer accessor: every runtime.buffer operation that touches shared
 * memory, as one C call per operation (BufferAccess; the segment layout and
 * the structures are in segment.h, the lock in seqlock.h, value conversion in
 * convert.h, waits in wait.c).
 *
 * Validity. The header's `valid` word is RT_INVALID, RT_VALID (valid, served
 * by nobody in particular: a buffer used on its own) or RT_SERVED (valid for
 * as long as its producer lives). A producer (the bridge, for Smart Devices)
 * holds the producer lock, a robust mutex, for as long as it serves the
 * buffer; when it dies, however it dies, the kernel clears the owner from the
 * lock word, and every reader sees the buffer invalid at its next operation.
 */
#include "convert.h"
#include "seqlock.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static PyObject *BufferAccess_stop_serving(rt_BufferAccess *self, PyObject *unused);
static uint64_t end_commands_locked(rt_BufferAccess *self, int all, uint64_t who, uint64_t within);
static int commands_any(rt_BufferAccess *self);
static uint32_t current_tid(void);
static int unserve(rt_BufferAccess *self);

/* time.time() now: the precise realtime clock (the vDSO's, about 20 ns),
 * converted as time.time() converts it (nanoseconds, then one division), so
 * that a stamp taken after a time.time() is never smaller than it. */
static inline int64_t
wall_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline double
wall_seconds(int64_t ns)
{
    return (double)ns / 1e9;
}

static double
wall_clock(void)
{
    return wall_seconds(wall_clock_ns());
}

/* ---- commanders ---------------------------------------------------------- */

/* A process's start time in clock ticks since boot (/proc/PID/stat, field 22),
 * or -1 when there is no such process (or /proc cannot tell). */
static long long
start_time_of(long pid)
{
    char path[48], text[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) {
        return -1;
    }
    text[n] = '\0';
    const char *at = strrchr(text, ')');  /* the command name may hold spaces and ')' */
    if (at == NULL) {
        return -1;
    }
    at++;
    for (int field = 3; field <= 22; field++) {
        while (*at == ' ') {
            at++;
        }
        if (*at == '\0') {
            return -1;
        }
        if (field == 22) {
            return strtoll(at, NULL, 10);
        }
        while (*at != '\0' && *at != ' ') {
            at++;
        }
    }
    return -1;
}

static uint64_t
make_commander(long pid, long long start)
{
    return (uint64_t)(uint32_t)pid | ((uint64_t)(uint32_t)(start < 0 ? 0 : start) << 32);
}

/* This process as a commander: computed once per process (again in a child of fork). */
static uint64_t my_commander_word;
static unsigned long my_commander_generation;
static int my_commander_known;

static __attribute__((noinline)) uint64_t
find_my_commander(void)
{
    long pid = (long)getpid();
    my_commander_word = make_commander(pid, start_time_of(pid));
    my_commander_generation = rt_fork_generation;
    my_commander_known = 1;
    return my_commander_word;
}

static inline uint64_t
my_commander(void)
{
    if (__builtin_expect(my_commander_known && my_commander_generation == rt_fork_generation, 1)) {
        return my_commander_word;
    }
    return find_my_commander();
}

/* This process's pid (the low half of its commander word: no system call). */
static inline uint32_t
my_pid(void)
{
    return (uint32_t)my_commander();
}

/* Producer locks held by this thread (see RT_MAX_SERVED_PER_THREAD); counts
 * made before fork() are the parent's thread's. */
static __thread long served_by_thread;
static __thread unsigned long served_generation;

static long *
served_count(void)
{
    if (served_generation != rt_fork_generation) {
        served_generation = rt_fork_generation;
        served_by_thread = 0;
    }
    return &served_by_thread;
}

/* Whether thread `tid` is gone: no such thread, or one that has exited (a zombie). */
static int
thread_gone(uint32_t tid)
{
    char path[48], text[512];
    snprintf(path, sizeof path, "/proc/%u/stat", (unsigned)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno == ENOENT || errno == ESRCH;
    }
    ssize_t n = read(fd, text, sizeof text - 1);
    int saved = errno;
    close(fd);
    if (n <= 0) {
        return n == 0 || saved == ESRCH;
    }
    text[n] = '\0';
    const char *at = strrchr(text, ')');
    return at != NULL && at[1] == ' ' && (at[2] == 'Z' || at[2] == 'X');
}

/* Whether this object serves the buffer: it took the producer lock, in this
 * process (a child of fork() does not serve), and the thread that took it
 * still holds it (the role ends with that thread). */
static inline int
serving(rt_BufferAccess *acc)
{
    if (!acc->serving || acc->serve_generation != rt_fork_generation) {
        return 0;
    }
    if (rt_lockword_has_owner) {
        uint32_t word = __atomic_load_n((const uint32_t *)(const void *)&acc->producer->m.mutex, __ATOMIC_ACQUIRE);
        return (word & RT_FUTEX_TID_MASK) == acc->serve_tid;
    }
    return 1;
}

static __attribute__((noinline)) PyObject *
disabled_error(rt_BufferAccess *acc, PyObject *param)
{
    return rt_buffer_error(acc, "the robot is disabled: actuators keep their safe values until "
                             "'runtime enable' (BufferStore.enable())", param);
}

/* What the device reports (the update block, a DEV_DATA or SUB_RES digested)
 * of a buffer that a live producer serves belongs to that producer's process
 * (the bridge, whose frame pump applies DEV_DATA): anyone else would pass
 * their own values for the device's. Consumers write() (a request for the
 * device) instead. A buffer nobody serves is anyone's. One load more while the
 * lock is held; the pid is this process's, looked up once. */
static inline __attribute__((always_inline)) int
foreign_producer(rt_BufferAccess *acc)
{
    return __atomic_load_n(&acc->header->valid, __ATOMIC_RELAXED) == RT_SERVED
           && __atomic_load_n(&acc->header->producer_pid, __ATOMIC_RELAXED) != my_pid();
}

/* Raise for foreign_producer() (the lock is released first by the caller). */
static __attribute__((noinline)) PyObject *
foreign_producer_error(rt_BufferAccess *acc, PyObject *param)
{
    PyObject *pid = PyLong_FromUnsignedLong(acc->header->producer_pid);
    const char *message = "buffer is served by another process (its producer): only it changes what the "
                          "device reports; write() asks the device instead";
    if (param != NULL) {
        rt_raise(rt_DeviceBufferError, message, "buffer", acc->name, "param", param, "producer_pid", pid, NULL);
    }
    else {
        rt_raise(rt_DeviceBufferError, message, "buffer", acc->name, "producer_pid", pid, NULL);
    }
    Py_XDECREF(pid);
    return NULL;
}

/* ---- parameter lookup and conversion ------------------------------------ */

/* "no such parameter", with the closest names the library's did_you_mean
 * finds (an error path: it may run Python code). */
static __attribute__((noinline)) void
unknown_parameter(rt_BufferAccess *acc, PyObject *name)
{
    PyObject *hint = rt_did_you_mean && PyUnicode_Check(name)
                         ? PyObject_CallFunctionObjArgs(rt_did_you_mean, name, acc->spec->index, NULL)
                         : NULL;
    PyErr_Clear();
    const char *text = hint && PyUnicode_Check(hint) ? PyUnicode_AsUTF8(hint) : NULL;
    char message[200];
    snprintf(message, sizeof(message), "no such parameter%s", text ? text : "");
    PyErr_Clear();
    rt_buffer_error(acc, message, name);
    Py_XDECREF(hint);
}

/* The names last looked up, by the identity of the name object: a program
 * passes the same (interned) string constants to get/set/write over and
 * over, and comparing two pointers is cheaper than a dict lookup (which also
 * compares the characters when the spec's name is another object). An entry
 * keeps its name object and the spec's alive (a reference each), so that
 * neither address can mean another object while the entry holds it; it is
 * used only if the spec at that address still has that very name object at
 * that position, which holds for the spec it was found in and for any other
 * spec whose index gives the same answer. The GIL guards it. */
#define RT_LOOKUP_CACHE 256

static struct {
    PyObject *name;       /* the key as passed (an exact str) */
    PyObject *spec_name;  /* spec->params[position].name when it was found */
    rt_BufferSpec *spec;  /* not a reference: checked through spec_name */
    int position;
} lookup_cache[RT_LOOKUP_CACHE];

static inline size_t
lookup_slot(const rt_BufferSpec *spec, const PyObject *name)
{
    return (((uintptr_t)name >> 4) ^ ((uintptr_t)spec >> 6)) & (RT_LOOKUP_CACHE - 1);
}

static __attribute__((noinline)) rt_param *
lookup_slow(rt_BufferAccess *acc, PyObject *name)
{
    rt_BufferSpec *spec = acc->spec;
    PyObject *position = PyDict_GetItemWithError(spec->index, name);
    if (position == NULL) {
        if (!PyErr_Occurred()) {
            unknown_parameter(acc, name);
        }
        return NULL;
    }
    long at = PyLong_AsLong(position);
    if (PyUnicode_CheckExact(name) && at >= 0 && at < spec->count) {
        size_t slot = lookup_slot(spec, name);
        PyObject *old_name = lookup_cache[slot].name, *old_spec_name = lookup_cache[slot].spec_name;
        Py_INCREF(name);
        Py_INCREF(spec->params[at].name);
        lookup_cache[slot].name = name;
        lookup_cache[slot].spec_name = spec->params[at].name;
        lookup_cache[slot].spec = spec;
        lookup_cache[slot].position = (int)at;
        Py_XDECREF(old_name);  /* after the entry is whole: a deallocation may run other code */
        Py_XDECREF(old_spec_name);
    }
    return &spec->params[at];
}

static inline __attribute__((always_inline)) rt_param *
lookup(rt_BufferAccess *acc, PyObject *name)
{
    rt_BufferSpec *spec = acc->spec;
    size_t slot = lookup_slot(spec, name);
    if (__builtin_expect(lookup_cache[slot].name == name && lookup_cache[slot].spec == spec, 1)) {
        int at = lookup_cache[slot].position;
        if (__builtin_expect(at < spec->count && spec->params[at].name == lookup_cache[slot].spec_name, 1)) {
            return &spec->params[at];
        }
    }
    return lookup_slow(acc, name);
}

/* ---- BufferAccess: life cycle -------------------------------------------- */

static int
BufferAccess_init(rt_BufferAccess *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"spec", "memory", "name", "on_recover", "timeout", NULL};
    PyObject *spec, *memory, *name, *on_recover = Py_None;
    double timeout = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OU|Od:BufferAccess", kwlist, &rt_BufferSpecType, &spec,
                                     &memory, &name, &on_recover, &timeout)) {
        return -1;
    }
    if (self->has_view) {
        PyErr_SetString(PyExc_RuntimeError, "BufferAccess is already initialized");
        return -1;
    }
    if (PyObject_GetBuffer(memory, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    self->has_view = 1;
    rt_BufferSpec *s = (rt_BufferSpec *)spec;
    Py_ssize_t needed = undo_offset(s->struct_size) + s->struct_size;
    if (self->view.len < needed || ((uintptr_t)self->view.buf) % 64 != 0) {
        PyErr_Format(PyExc_ValueError, "memory must be 64-byte aligned and hold %zd bytes", needed);
        return -1;
    }
    uint8_t *base = (uint8_t *)self->view.buf;
    Py_INCREF(spec);
    self->spec = s;
    self->mutex = (rt_mutex_t *)(base + RT_MUTEX_OFFSET);
    self->producer = (rt_mutex_t *)(base + RT_PRODUCER_OFFSET);
    self->notify = (rt_notify *)(base + RT_NOTIFY_OFFSET);
    self->command = (rt_command *)(base + RT_COMMAND_OFFSET);
    self->seen[0] = __atomic_load_n(&self->notify->seq[0], __ATOMIC_ACQUIRE);
    self->seen[1] = __atomic_load_n(&self->notify->seq[1], __ATOMIC_ACQUIRE);
    self->header = (rt_header *)base;
    self->data = base + RT_DATA_OFFSET;
    self->undo = base + undo_offset(s->struct_size);
    self->update = base + RT_DATA_OFFSET + s->update_offset;
    self->write = base + RT_DATA_OFFSET + s->write_offset;
    self->meta = (rt_meta *)(base + RT_DATA_OFFSET + s->meta_offset);
    self->seen_live = is_live(self);
    Py_INCREF(name);
    self->name = name;
    Py_INCREF(on_recover);
    self->on_recover = on_recover;
    self->timeout = timeout;
    return 0;
}

static PyObject *
BufferAccess_close(rt_BufferAccess *self, PyObject *unused)
{
    /* Operations raise from now on. The memory stays until no transaction
     * entered through this object is open (one may be, in this or another
     * thread): its __exit__ must still unlock the mutex in that memory. */
    if (serving(self) && self->has_view) {  /* a producer that closes stops serving */
        PyObject *result = BufferAccess_stop_serving(self, NULL);
        if (result == NULL) {
            return NULL;
        }
        Py_DECREF(result);
    }
    if (!self->closed && self->has_view && commands_any(self)) {
        /* A commander that closes its handle ends its commands. If the lock cannot be had, its
         * process's end will do it (the bridge watches commanders): closing never raises for it. */
        if (acquire(self, 0) == 0) {
            end_commands_locked(self, 0, my_commander(), ~0ULL);
            release(self);
        }
        else {
            PyErr_Clear();
        }
    }
    self->closed = 1;
    rt_release_view_if_unused(self);
    Py_RETURN_NONE;
}

static int
BufferAccess_traverse(rt_BufferAccess *self, visitproc visit, void *arg)
{
    Py_VISIT(self->spec);
    Py_VISIT(self->on_recover);
    return 0;
}

static int
BufferAccess_clear(rt_BufferAccess *self)
{
    Py_CLEAR(self->spec);
    Py_CLEAR(self->on_recover);
    return 0;
}

static void
BufferAccess_dealloc(rt_BufferAccess *self)
{
    PyObject_GC_UnTrack(self);
    if (self->has_view) {
        if (serving(self)) {  /* dropped without close(): still stop serving */
            if (self->serve_tid == current_tid()) {
                unserve(self);
            }
            else {  /* another thread's lock: invalid now, the role ends with that thread */
                __atomic_store_n(&self->header->valid, RT_INVALID, __ATOMIC_RELEASE);
                rt_validity_changed(self);
            }
        }
        PyBuffer_Release(&self->view);
    }
    BufferAccess_clear(self);
    Py_CLEAR(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- BufferAccess: get / set / write ------------------------------------- */

static PyObject *
BufferAccess_get(rt_BufferAccess *self, PyObject *name)
{
    rt_param *p = lookup(self, name);
    if (p == NULL) {
        return NULL;
    }
    if (!(self->spec->readable & (1ULL << p->id))) {
        return rt_buffer_error(self, "parameter is not readable", name);
    }
    if (p->kind == K_RAW) {
        PyObject *raw = PyBytes_FromStringAndSize(NULL, p->size);
        if (raw == NULL || read_stable(self, PyBytes_AS_STRING(raw), self->update + p->offset, (size_t)p->size) < 0) {
            Py_XDECREF(raw);
            return NULL;
        }
        PyObject *value = PyObject_CallOneArg(p->to_python, raw);
        Py_DECREF(raw);
        return value;
    }
    uint8_t value[8];
    if (read_stable(self, value, self->update + p->offset, (size_t)p->size) < 0) {
        return NULL;
    }
    return rt_to_python(p, value);
}

static PyObject *
store(rt_BufferAccess *self, PyObject *const *args, Py_ssize_t nargs, int to_write_block)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (param, value)");
        return NULL;
    }
    /* last_write: time.time() of the request (the vDSO's CLOCK_REALTIME, about 20 ns, most of
     * a write). Read first, so that the lookup and the conversion run while it completes; kept
     * in nanoseconds (a register) across the lock and divided once the lock is held, so that
     * the lock's atomic instruction does not wait for the division. */
    int64_t requested_ns = to_write_block ? wall_clock_ns() : 0;
    rt_param *p = lookup(self, args[0]);
    if (p == NULL) {
        return NULL;
    }
    if (to_write_block && !(self->spec->writeable & (1ULL << p->id))) {
        return rt_buffer_error(self, "parameter is not writeable", args[0]);
    }
    uint8_t value[8];
    PyObject *raw = NULL;
    if (rt_from_python(self, p, args[1], value, &raw) < 0) {
        return NULL;
    }
    if (acquire(self, 1) < 0) {
        Py_XDECREF(raw);
        return NULL;
    }
    double requested_at = wall_seconds(requested_ns);
    const uint8_t *src = raw ? (const uint8_t *)PyBytes_AS_STRING(raw) : value;
    if (to_write_block) {
        if (self->spec->safe_mask & (1ULL << p->id)) {  /* a command: refused while disabled, else ours */
            if (__atomic_load_n(&self->command->disabled, __ATOMIC_RELAXED)) {
                release(self);
                Py_XDECREF(raw);
                return disabled_error(self, args[0]);
            }
            __atomic_store_n(&self->command->commander[p->id], my_commander(), __ATOMIC_RELAXED);
            self->command->last_command = requested_at;
        }
        copy_value(self->write + p->offset, src, (size_t)p->size);
        self->meta->written |= 1ULL << p->id;
        self->meta->last_write = requested_at;
        changed(self, RT_WRITE_BLOCK);
    }
    else {
        if (foreign_producer(self)) {
            release(self);
            Py_XDECREF(raw);
            return foreign_producer_error(self, args[0]);
        }
        copy_value(self->update + p->offset, src, (size_t)p->size);
        self->meta->updated |= 1ULL << p->id;
        changed(self, RT_UPDATE_BLOCK);
    }
    release(self);
    Py_XDECREF(raw);
    Py_RETURN_NONE;
}

static PyObject *
BufferAccess_set(rt_BufferAccess *self, PyObject *const *args, Py_ssize_t nargs)
{
    return store(self, args, nargs, 0);
}

static PyObject *
BufferAccess_write(rt_BufferAccess *self, PyObject *const *args, Py_ssize_t nargs)
{
    return store(self, args, nargs, 1);
}

/* ---- BufferAccess: transactions ----------------------------------------- */

/* The outermost transaction saves the structure to the undo area first, so
 * that if its process dies before the end, the next owner of the lock can
 * restore it: a transaction is all or nothing, even against SIGKILL. */
/* A transaction counted before fork() is the parent's: in the child it is
 * not held, and leaving it changes nothing shared. */
static inline void
forget_inherited_transactions(rt_BufferAccess *self)
{
    if (self->txn_generation != rt_fork_generation) {
        self->txn_generation = rt_fork_generation;
        self->held = 0;
    }
}

static PyObject *
BufferAccess_enter(rt_BufferAccess *self, PyObject *unused)
{
    forget_inherited_transactions(self);
    if (acquire(self, 1) < 0) {
        return NULL;
    }
    rt_header *header = self->header;
    if (header->txn_depth++ == 0) {
        memcpy(self->undo, self->data, (size_t)self->spec->struct_size);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* the copy is complete before it counts */
        header->undo_active = 1;
    }
    self->held++;
    Py_INCREF(self);
    return (PyObject *)self;
}

/* Leave one transaction level: commit when it is the outermost, unlock. */
static void
end_transaction(rt_BufferAccess *self)
{
    rt_header *header = self->header;
    if (header->txn_depth > 0 && --header->txn_depth == 0) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* every change is in place before the commit */
        header->undo_active = 0;
        uint32_t blocks = self->notify->txn_changed;  /* committed: announce its changes now */
        if (blocks) {
            self->notify->txn_changed = 0;
            for (int block = 0; block < 2; block++) {
                if (blocks & (1u << block)) {
                    bump_sequence(self, block);
                }
            }
            self->wake_pending |= (int)blocks;
        }
    }
    self->held--;
    release(self);
}

static PyObject *
BufferAccess_exit(rt_BufferAccess *self, PyObject *const *args, Py_ssize_t nargs)
{
    forget_inherited_transactions(self);
    if (self->held > 0) {
        end_transaction(self);
        rt_release_view_if_unused(self);  /* closed meanwhile: let go now */
    }
    Py_RETURN_FALSE;
}

static PyObject *
BufferAccess_transaction(rt_BufferAccess *self, PyObject *unused)
{
    Py_INCREF(self);
    return (PyObject *)self;
}

/* ---- BufferAccess: bulk reads ------------------------------------------- */

/* Copy a block under the lock, then convert the flagged values to a dict
 * outside it (converters may run Python code). */
static PyObject *
values_from_copy(rt_BufferAccess *self, const uint8_t *copy, uint64_t mask)
{
    PyObject *result = PyDict_New();
    if (result == NULL) {
        return NULL;
    }
    for (int i = 0; i < self->spec->count; i++) {
        rt_param *p = &self->spec->params[i];
        if (!(mask & (1ULL << p->id))) {
            continue;
        }
        PyObject *value = rt_to_python(p, copy + p->offset);
        if (value == NULL || PyDict_SetItem(result, p->name, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(value);
    }
    return result;
}

enum { TAKE_UPDATED = 1, TAKE_WRITTEN = 2, TAKE_READABLE = 3, PEEK_WRITTEN = 4 };

static PyObject *
take_values(rt_BufferAccess *self, int what)
{
    Py_ssize_t size = self->spec->block_size;
    uint8_t small[512];
    uint8_t *copy = size <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)size);
    if (copy == NULL) {
        return PyErr_NoMemory();
    }
    if (what == TAKE_READABLE) {  /* a reader: no lock */
        int rc = read_stable(self, copy, self->update, (size_t)size);
        PyObject *result = rc < 0 ? NULL : values_from_copy(self, copy, self->spec->readable);
        if (copy != small) {
            PyMem_Free(copy);
        }
        return result;
    }
    if (acquire(self, 1) < 0) {
        if (copy != small) {
            PyMem_Free(copy);
        }
        return NULL;
    }
    uint64_t mask;
    if (what == TAKE_UPDATED) {
        mask = self->meta->updated;
        self->meta->updated = 0;
        memcpy(copy, self->update, (size_t)size);
    }
    else if (what == TAKE_WRITTEN || what == PEEK_WRITTEN) {
        mask = self->meta->written;
        if (what == TAKE_WRITTEN) {
            self->meta->written = 0;
        }
        memcpy(copy, self->write, (size_t)size);
    }
    else {
        mask = self->spec->readable;
        memcpy(copy, self->update, (size_t)size);
    }
    release(self);
    PyObject *result = values_from_copy(self, copy, mask);
    if (copy != small) {
        PyMem_Free(copy);
    }
    return result;
}

static PyObject *
BufferAccess_snapshot(rt_BufferAccess *self, PyObject *unused)
{
    return take_values(self, TAKE_READABLE);
}

static PyObject *
BufferAccess_get_update(rt_BufferAccess *self, PyObject *unused)
{
    return take_values(self, TAKE_UPDATED);
}

static PyObject *
BufferAccess_get_write(rt_BufferAccess *self, PyObject *unused)
{
    return take_values(self, TAKE_WRITTEN);
}

static PyObject *
BufferAccess_pending_writes(rt_BufferAccess *self, PyObject *unused)
{
    return take_values(self, PEEK_WRITTEN);
}

static PyObject *
names_of(rt_BufferAccess *self, uint64_t mask)
{
    PyObject *result = PySet_New(NULL);
    for (int i = 0; result != NULL && i < self->spec->count; i++) {
        rt_param *p = &self->spec->params[i];
        if ((mask & (1ULL << p->id)) && PySet_Add(result, p->name) < 0) {
            Py_CLEAR(result);
        }
    }
    return result;
}

static PyObject *
BufferAccess_get_read(rt_BufferAccess *self, PyObject *unused)
{
    if (acquire(self, 1) < 0) {
        return NULL;
    }
    uint64_t mask = self->meta->read;
    self->meta->read = 0;
    release(self);
    return names_of(self, mask);
}

/* ---- BufferAccess: marking parameters ----------------------------------- */

/* Bitmap of the named parameters; each must have every flag in `required`
 * (1 = readable, 2 = writeable). None means every parameter with them. */
static int
mask_of(rt_BufferAccess *self, PyObject *names, int required, uint64_t *mask)
{
    uint64_t allowed = ~0ULL;
    if (required & 1) {
        allowed &= self->spec->readable;
    }
    if (required & 2) {
        allowed &= self->spec->writeable;
    }
    if (names == Py_None) {
        uint64_t all = 0;
        for (int i = 0; i < self->spec->count; i++) {
            all |= 1ULL << self->spec->params[i].id;
        }
        *mask = all & allowed;
        return 0;
    }
    if (PyUnicode_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "expected a collection of parameter names, not a str");
        return -1;
    }
    PyObject *iter = PyObject_GetIter(names);
    if (iter == NULL) {
        return -1;
    }
    uint64_t result = 0;
    PyObject *name;
    while ((name = PyIter_Next(iter)) != NULL) {
        rt_param *p = lookup(self, name);
        if (p == NULL) {
            Py_DECREF(name);
            Py_DECREF(iter);
            return -1;
        }
        if (!(allowed & (1ULL << p->id))) {
            rt_buffer_error(self, (required & 1) ? "parameter is not readable" : "parameter is not writeable", name);
            Py_DECREF(name);
            Py_DECREF(iter);
            return -1;
        }
        result |= 1ULL << p->id;
        Py_DECREF(name);
    }
    Py_DECREF(iter);
    if (PyErr_Occurred()) {
        return -1;
    }
    *mask = result;
    return 0;
}

static PyObject *
BufferAccess_read(rt_BufferAccess *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t mask;
    if (mask_of(self, nargs > 0 ? args[0] : Py_None, 1, &mask) < 0 || acquire(self, 1) < 0) {
        return NULL;
    }
    self->meta->read |= mask;
    changed(self, RT_WRITE_BLOCK);  /* a request for the device: its producer waits on this block */
    release(self);
    Py_RETURN_NONE;
}

static PyObject *
BufferAccess_mask(rt_BufferAccess *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "mask(names, required) takes 2 arguments");
        return NULL;
    }
    long required = PyLong_AsLong(args[1]);
    uint64_t mask;
    if ((required == -1 && PyErr_Occurred()) || mask_of(self, args[0], (int)required, &mask) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(mask);
}

static PyObject *
BufferAccess_names(rt_BufferAccess *self, PyObject *arg)
{
    unsigned long long mask = PyLong_AsUnsignedLongLong(arg);
    if (mask == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    return names_of(self, mask);
}

/* ---- BufferAccess: commands ---------------------------------------------- */

static PyObject *
commander_tuple(uint64_t word)
{
    return Py_BuildValue("(kk)", (unsigned long)(uint32_t)word, (unsigned long)(uint32_t)(word >> 32));
}

static int
commander_from(PyObject *obj, uint64_t *word)
{
    unsigned long pid, start;
    if (!PyArg_ParseTuple(obj, "kk:commander", &pid, &start)) {
        return -1;
    }
    if (pid == 0 || pid > UINT32_MAX || start > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a commander is (pid, start) with a nonzero pid, both 32-bit");
        return -1;
    }
    *word = (uint64_t)pid | ((uint64_t)start << 32);
    return 0;
}

/* commanders() -> {name: (pid, start)} of the commands in force (no lock: one load each). */
static PyObject *
BufferAccess_commanders(rt_BufferAccess *self, PyObject *unused)
{
    if (self->closed) {
        return rt_buffer_error(self, "buffer is closed", NULL);
    }
    PyObject *result = PyDict_New();
    uint64_t mask = self->spec->safe_mask;
    for (int id = 0; result != NULL && mask != 0 && id < RT_MAX_PARAMS; id++) {
        if (!(mask & (1ULL << id))) {
            continue;
        }
        uint64_t word = __atomic_load_n(&self->command->commander[id], __ATOMIC_ACQUIRE);
        if (word == 0) {
            continue;
        }
        PyObject *who = commander_tuple(word);
        if (who == NULL || PyDict_SetItem(result, self->spec->params[self->spec->by_id[id]].name, who) < 0) {
            Py_CLEAR(result);
        }
        Py_XDECREF(who);
    }
    return result;
}

/* Under the lock: put the safe value back, as a pending write by nobody, for
 * every safe-valued ID in `within` commanded by `who` (0: by anyone; with
 * `all`, commanded or not). */
static uint64_t
end_commands_locked(rt_BufferAccess *self, int all, uint64_t who, uint64_t within)
{
    rt_BufferSpec *spec = self->spec;
    uint64_t ended = 0;
    for (int id = 0; id < RT_MAX_PARAMS; id++) {
        uint64_t bit = 1ULL << id;
        if (!(spec->safe_mask & within & bit)) {
            continue;
        }
        uint64_t word = __atomic_load_n(&self->command->commander[id], __ATOMIC_RELAXED);
        if (all || (word != 0 && (who == 0 || word == who))) {
            const rt_param *p = &spec->params[spec->by_id[id]];
            memcpy(self->write + p->offset, spec->safe[id], (size_t)p->size);
            __atomic_store_n(&self->command->commander[id], 0, __ATOMIC_RELAXED);
            ended |= bit;
        }
    }
    if (ended) {
        self->meta->written |= ended;
        changed(self, RT_WRITE_BLOCK);
    }
    return ended;
}

/* End the commands of `who` (0: anyone; `everything`: all) among the named
 * parameters (None: all), under the lock; the set of names ended. */
static PyObject *
end_named_commands(rt_BufferAccess *self, int everything, uint64_t who, PyObject *params)
{
    uint64_t within = ~0ULL;
    if (params != Py_None && mask_of(self, params, 2, &within) < 0) {
        return NULL;
    }
    if (self->spec->safe_mask == 0) {
        return PySet_New(NULL);
    }
    if (acquire(self, 0) < 0) {
        return NULL;
    }
    uint64_t ended = end_commands_locked(self, everything, who, within);
    release(self);
    return names_of(self, ended);
}

/* end_commands(commander=None, params=None, everything=False) -> set of names put back to their
 * safe values: those `commander` commands, or anyone (None), or with `everything` all of them. */
static PyObject *
BufferAccess_end_commands(rt_BufferAccess *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"commander", "params", "everything", NULL};
    PyObject *commander = Py_None, *params = Py_None;
    int everything = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOp:end_commands", kwlist, &commander, &params,
                                     &everything)) {
        return NULL;
    }
    uint64_t who = 0;
    if (commander != Py_None && commander_from(commander, &who) < 0) {
        return NULL;
    }
    return end_named_commands(self, everything, who, params);
}

/* end_my_commands(params=None): this process's commands back to safe values. */
static PyObject *
BufferAccess_end_my_commands(rt_BufferAccess *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"params", NULL};
    PyObject *params = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:end_my_commands", kwlist, &params)) {
        return NULL;
    }
    return end_named_commands(self, 0, my_commander(), params);
}

/* Whether this process commands any parameter (no lock: a hint for close()). */
static int
commands_any(rt_BufferAccess *self)
{
    uint64_t mask = self->spec->safe_mask;
    if (mask == 0) {
        return 0;
    }
    uint64_t me = my_commander();
    for (int id = 0; id < RT_MAX_PARAMS; id++) {
        if ((mask & (1ULL << id)) && __atomic_load_n(&self->command->commander[id], __ATOMIC_RELAXED) == me) {
            return 1;
        }
    }
    return 0;
}

/* set_disabled(flag) -> set of names put back to their safe values. The flag
 * needs no lock (one word), so a disable takes effect at once even while a
 * stopped process holds the lock: writes check it under the lock, and the
 * producer (woken like on a validity change) stops the device. Then, under
 * the lock, every safe-valued parameter gets its safe value; if the lock
 * cannot be had, DeviceBufferError, and the producer does it (see bridge). */
static PyObject *
BufferAccess_set_disabled(rt_BufferAccess *self, PyObject *arg)
{
    int flag = PyObject_IsTrue(arg);
    if (flag < 0) {
        return NULL;
    }
    if (self->closed) {
        return rt_buffer_error(self, "buffer is closed", NULL);
    }
    uint32_t before = __atomic_exchange_n(&self->command->disabled, (uint32_t)flag, __ATOMIC_SEQ_CST);
    if ((uint32_t)flag != before) {
        rt_validity_changed(self);  /* wakes the producer, which waits on the write block */
    }
    if (!flag || self->spec->safe_mask == 0) {
        return PySet_New(NULL);
    }
    if (acquire(self, 0) < 0) {
        return NULL;
    }
    uint64_t ended = end_commands_locked(self, 1, 0, ~0ULL);
    release(self);
    return names_of(self, ended);
}

static PyObject *
BufferAccess_get_disabled(rt_BufferAccess *self, void *closure)
{
    if (self->closed) {
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(__atomic_load_n(&self->command->disabled, __ATOMIC_ACQUIRE) != 0);
}

static PyObject *
BufferAccess_get_last_command(rt_BufferAccess *self, void *closure)
{
    if (self->closed) {
        return PyFloat_FromDouble(0.0);
    }
    uint64_t bits = __atomic_load_n((const uint64_t *)(const void *)&self->command->last_command, __ATOMIC_ACQUIRE);
    double value;
    memcpy(&value, &bits, sizeof value);
    return PyFloat_FromDouble(value);
}

/* ---- BufferAccess: messages --------------------------------------------- */

static inline uint16_t
payload_u16(const rt_Message *msg, int at)
{
    return (uint16_t)(msg->payload[at] | (msg->payload[at + 1] << 8));
}

static int
require_device(rt_BufferAccess *self)
{
    if (!self->spec->is_device) {
        rt_buffer_error(self, "not a Smart Device buffer", NULL);
        return -1;
    }
    return 0;
}

static PyObject *
BufferAccess_update(rt_BufferAccess *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &rt_MessageType)) {
        PyErr_Format(PyExc_TypeError, "update() takes a Message, not %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    if (require_device(self) < 0) {
        return NULL;
    }
    rt_Message *msg = (rt_Message *)arg;
    const rt_layout *layout = &self->spec->layout;
    int params = 0;
    /* Validate everything before the lock: a bad message changes nothing. */
    switch (msg->type) {
    case RT_DEV_DATA:
    case RT_DEV_WRITE:
        if ((params = rt_check_values(msg, layout)) < 0) {
            return NULL;
        }
        break;
    case RT_DEV_READ:
        if (msg->length != 2) {
            return rt_raise_message_error(RT_GENERIC_ERROR, "DEV_READ payload must be 2 bytes", NULL);
        }
        break;
    case RT_SUB_REQ:
        if (msg->length != 4) {
            return rt_raise_message_error(RT_GENERIC_ERROR, "SUB_REQ payload must be 4 bytes", NULL);
        }
        break;
    case RT_SUB_RES:
        if (msg->length != 15) {
            return rt_raise_message_error(RT_GENERIC_ERROR, "SUB_RES payload must be 15 bytes", NULL);
        }
        break;
    default:
        /* Nothing to record, but like every operation it refuses an invalid buffer. */
        if (acquire(self, 1) < 0) {
            return NULL;
        }
        release(self);
        Py_RETURN_NONE;
    }
    int64_t now_ns = (msg->type == RT_DEV_DATA || msg->type == RT_DEV_WRITE) ? wall_clock_ns() : 0;
    if (acquire(self, 1) < 0) {
        return NULL;
    }
    double now = wall_seconds(now_ns);  /* divided with the lock held, as in store() */
    rt_meta *meta = self->meta;
    if ((msg->type == RT_DEV_DATA || msg->type == RT_SUB_RES) && foreign_producer(self)) {
        release(self);
        return foreign_producer_error(self, NULL);
    }
    switch (msg->type) {
    case RT_DEV_DATA:
        rt_copy_values(msg, layout, self->update);
        meta->updated |= (uint64_t)params;
        meta->last_update = now;
        changed(self, RT_UPDATE_BLOCK);
        break;
    case RT_DEV_WRITE: {
        uint64_t commands = (uint64_t)params & self->spec->safe_mask;
        if (commands) {
            if (__atomic_load_n(&self->command->disabled, __ATOMIC_RELAXED)) {
                release(self);
                return disabled_error(self, NULL);
            }
            uint64_t me = my_commander();
            for (int id = 0; id < RT_MAX_PARAMS; id++) {
                if (commands & (1ULL << id)) {
                    __atomic_store_n(&self->command->commander[id], me, __ATOMIC_RELAXED);
                }
            }
            self->command->last_command = now;
        }
        rt_copy_values(msg, layout, self->write);
        meta->written |= (uint64_t)params;
        meta->last_write = now;
        changed(self, RT_WRITE_BLOCK);
        break;
    }
    case RT_DEV_READ:
        meta->read |= payload_u16(msg, 0) & self->spec->readable;
        break;
    case RT_SUB_REQ: {
        uint16_t interval = payload_u16(msg, 2);
        if (interval != 0) {
            interval = interval < RT_MIN_INTERVAL_MS ? RT_MIN_INTERVAL_MS
                       : interval > RT_MAX_INTERVAL_MS ? RT_MAX_INTERVAL_MS : interval;
        }
        meta->subscription = (uint16_t)(payload_u16(msg, 0) & self->spec->readable);
        meta->interval_ms = interval;
        break;
    }
    case RT_SUB_RES: {
        meta->subscription = payload_u16(msg, 0);  /* exactly as the device reported it */
        meta->interval_ms = payload_u16(msg, 2);
        meta->device_id = payload_u16(msg, 4);
        meta->year = msg->payload[6];
        uint64_t random = 0;
        for (int i = 7; i >= 0; i--) {
            random = (random << 8) | msg->payload[7 + i];
        }
        meta->random = random;
        break;
    }
    }
    release(self);
    Py_RETURN_NONE;
}

/* Exact bin packing of `n` (<= 16) values of widths `w` into messages of
 * RT_MAX_PAYLOAD - 2 value bytes: dynamic programming over subsets, keeping
 * for each subset the fewest messages and, among those, the least-filled
 * last one. Stores each value's message index in `bin_of`; returns the
 * number of messages, or -1 when memory ran out. No GIL needed. */
static int
pack_exactly(const Py_ssize_t *w, int n, int *bin_of)
{
    const Py_ssize_t room = RT_MAX_PAYLOAD - 2;
    size_t states = (size_t)1 << n;
    uint8_t *count = malloc(states);
    uint16_t *fill = malloc(states * sizeof(uint16_t));
    int8_t *last = malloc(states);
    if (count == NULL || fill == NULL || last == NULL) {
        free(count);
        free(fill);
        free(last);
        return -1;
    }
    memset(count, 0xFF, states);
    count[0] = 1;
    fill[0] = 0;
    for (size_t s = 0; s < states; s++) {
        for (int i = 0; i < n; i++) {
            if (s & ((size_t)1 << i)) {
                continue;
            }
            uint8_t c = count[s];
            Py_ssize_t f = fill[s] + w[i];
            if (f > room) {
                c++;
                f = w[i];
            }
            size_t t = s | ((size_t)1 << i);
            if (c < count[t] || (c == count[t] && f < fill[t])) {
                count[t] = c;
                fill[t] = (uint16_t)f;
                last[t] = (int8_t)i;
            }
        }
    }
    int order[RT_MAX_PARAMS];
    int k = n;
    for (size_t s = states - 1; s != 0; s &= ~((size_t)1 << last[s])) {
        order[--k] = last[s];
    }
    int b = 0;
    Py_ssize_t f = 0;
    for (k = 0; k < n; k++) {
        int i = order[k];
        if (f + w[i] > room) {
            b++;
            f = 0;
        }
        f += w[i];
        bin_of[i] = b;
    }
    int result = count[states - 1];
    free(count);
    free(fill);
    free(last);
    return result;
}

/* Split `params` into as few DEV_DATA/DEV_WRITE messages as possible: the
 * params bitmap of each in `bins`. First-fit decreasing by width usually
 * reaches the lower bound; when it does not, pack exactly (remembered in
 * `cache`: a subscription packs the same set every time). No GIL needed, so
 * that the pump's writer thread packs DEV_WRITE as emit_dev_rw does. */
int
rt_pack_bins(const rt_layout *layout, uint16_t params, uint16_t bins[RT_MAX_PARAMS], rt_pack_cache *cache)
{
    if (params == 0) {
        return 0;
    }
    Py_ssize_t total = 2;
    for (int id = 0; id < RT_MAX_PARAMS; id++) {
        if (params & (1u << id)) {
            if (id >= layout->count || layout->widths[id] == 0 || layout->widths[id] > RT_MAX_PAYLOAD - 2) {
                return RT_PACK_UNFIT;
            }
            total += layout->widths[id];
        }
    }
    Py_ssize_t room[RT_MAX_PARAMS];
    int nbins = 0;
    if (total <= RT_MAX_PAYLOAD) {
        bins[nbins++] = params;
        return nbins;
    }
    int order[RT_MAX_PARAMS], n = 0;
    for (int id = 0; id < layout->count; id++) {
        if (params & (1u << id)) {
            int j = n++;
            while (j > 0 && layout->widths[order[j - 1]] < layout->widths[id]) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = id;
        }
    }
    for (int k = 0; k < n; k++) {
        int id = order[k], b = 0;
        while (b < nbins && room[b] < layout->widths[id]) {
            b++;
        }
        if (b == nbins) {
            bins[nbins] = 0;
            room[nbins++] = RT_MAX_PAYLOAD - 2;
        }
        bins[b] |= (uint16_t)(1u << id);
        room[b] -= layout->widths[id];
    }
    /* Lower bound: the bytes to send, and the values wider than half a message. */
    Py_ssize_t capacity = RT_MAX_PAYLOAD - 2;
    int bound = (int)((total - 2 + capacity - 1) / capacity), wide = 0;
    for (int k = 0; k < n; k++) {
        wide += 2 * layout->widths[order[k]] > capacity;
    }
    if (wide > bound) {
        bound = wide;
    }
    if (nbins > bound) {
        if (cache->params != params) {
            Py_ssize_t w[RT_MAX_PARAMS];
            int bin_of[RT_MAX_PARAMS];
            for (int k = 0; k < n; k++) {
                w[k] = layout->widths[order[k]];
            }
            int exact = pack_exactly(w, n, bin_of);
            if (exact < 0) {
                return RT_PACK_NOMEM;
            }
            memset(cache->bins, 0, sizeof(cache->bins));
            for (int k = 0; k < n; k++) {
                cache->bins[bin_of[k]] |= (uint16_t)(1u << order[k]);
            }
            cache->count = exact;
            cache->params = params;
        }
        nbins = cache->count;
        memcpy(bins, cache->bins, sizeof(cache->bins));
    }
    return nbins;
}

/* Append the messages of rt_pack_bins to `out`. The lock is held. */
static int
append_values(rt_BufferAccess *self, PyObject *out, uint8_t type, uint16_t params, const uint8_t *block)
{
    const rt_layout *layout = &self->spec->layout;
    rt_BufferSpec *spec = self->spec;
    rt_pack_cache cache = {spec->packed_params, spec->packed_count, {0}};
    memcpy(cache.bins, spec->packed_bins, sizeof(cache.bins));
    uint16_t bins[RT_MAX_PARAMS];
    int nbins = rt_pack_bins(layout, params, bins, &cache);
    if (nbins == RT_PACK_NOMEM) {
        PyErr_NoMemory();
        return -1;
    }
    if (nbins == RT_PACK_UNFIT) {  /* rt_make_values raises the exact MessageError */
        nbins = 1;
        bins[0] = params;
    }
    if (cache.params != spec->packed_params) {
        spec->packed_params = cache.params;
        spec->packed_count = cache.count;
        memcpy(spec->packed_bins, cache.bins, sizeof(cache.bins));
    }
    for (int b = 0; b < nbins; b++) {
        rt_Message *msg = rt_make_values(type, bins[b], layout, block);
        if (msg == NULL || PyList_Append(out, (PyObject *)msg) < 0) {
            Py_XDECREF(msg);
            return -1;
        }
        Py_DECREF(msg);
    }
    return 0;
}

/* The emitted messages as an iterator (the API yields them); steals `out`. */
static PyObject *
iterate(PyObject *out, int rc)
{
    PyObject *iterator = rc < 0 ? NULL : PyObject_GetIter(out);
    Py_DECREF(out);
    return iterator;
}

static PyObject *
BufferAccess_emit_dev_rw(rt_BufferAccess *self, PyObject *unused)
{
    if (require_device(self) < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL || acquire(self, 1) < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    uint16_t read = (uint16_t)self->meta->read, written = (uint16_t)self->meta->written;
    int rc = 0;
    if (read) {
        rt_Message *msg = rt_message_new(RT_DEV_READ, 2);
        if (msg == NULL || PyList_Append(out, (PyObject *)msg) < 0) {
            rc = -1;
        }
        else {
            msg->payload[0] = (uint8_t)read;
            msg->payload[1] = (uint8_t)(read >> 8);
        }
        Py_XDECREF(msg);
    }
    if (rc == 0) {
        rc = append_values(self, out, RT_DEV_WRITE, written, self->write);
    }
    if (rc == 0) {
        self->meta->read = 0;
        self->meta->written = 0;
    }
    release(self);
    return iterate(out, rc);
}

/* Take the pending reads and writes as emit_dev_rw does, without the GIL:
 * from the pump's writer thread. The lock is only tried, with a spin of
 * `spin` seconds (rt_mutex_trylock_spin); the caller looks again later when
 * this returns EBUSY. Copies the write block into `block` (the layout's
 * span), the IDs into `*read` and `*written`, and clears them: a change of
 * bits only, so nobody is woken. Nothing is taken while a commander of the
 * buffer is not among `known` (RT_COMMANDER_UNKNOWN). Returns 0, an errno
 * value, RT_COMMIT_REFUSED (closed, or not live: nothing is taken) or
 * RT_COMMANDER_UNKNOWN. */
int
rt_commanders_known(PyObject *obj, const uint64_t *known, int count)
{
    rt_BufferAccess *acc = (rt_BufferAccess *)obj;
    uint64_t mask = acc->spec->safe_mask;
    for (int id = 0; mask != 0; id++, mask >>= 1) {
        uint64_t who = (mask & 1) ? __atomic_load_n(&acc->command->commander[id], __ATOMIC_ACQUIRE) : 0;
        int found = who == 0;
        for (int k = 0; k < count && !found; k++) {
            found = known[k] == who;
        }
        if (!found) {
            return 0;
        }
    }
    return 1;
}

int
rt_access_take_rw(PyObject *obj, double spin, const uint64_t *known, int known_count, uint16_t *read,
                  uint16_t *written, uint8_t *block, int *recovered, int *rolled_back)
{
    rt_BufferAccess *acc = (rt_BufferAccess *)obj;
    *recovered = 0;
    *read = *written = 0;
    if (__atomic_load_n(&acc->closed, __ATOMIC_ACQUIRE)) {
        return RT_COMMIT_REFUSED;
    }
    int rc = rt_mutex_trylock_spin(acc->mutex, spin, recovered);
    if (rc != 0) {
        return rc;
    }
    int bumped = 0;
    if (*recovered) {
        *rolled_back = rt_recover_memory(acc, &bumped);
    }
    int refused = !is_live(acc) ? RT_COMMIT_REFUSED : 0;
    if (!refused && !rt_commanders_known(obj, known, known_count)) {
        refused = RT_COMMANDER_UNKNOWN;
    }
    if (!refused) {
        *read = (uint16_t)acc->meta->read;
        *written = (uint16_t)acc->meta->written;
        if (*read | *written) {
            seqlock_begin(acc);  /* we hold the lock outside any transaction: txn_depth is 0 */
            memcpy(block, acc->write, (size_t)acc->spec->layout.span);
            acc->meta->read = 0;
            acc->meta->written = 0;
            seqlock_end(acc);
        }
    }
    rt_mutex_unlock(acc->mutex);
    if (bumped) {
        rt_wake_waiters(acc, bumped);
    }
    return refused;
}

static PyObject *
emit_data(rt_BufferAccess *self, int updated_only)
{
    if (require_device(self) < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL || acquire(self, 1) < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    uint16_t params = updated_only ? (uint16_t)self->meta->updated : self->meta->subscription;
    int rc = append_values(self, out, RT_DEV_DATA, params & (uint16_t)self->spec->readable, self->update);
    if (rc == 0 && updated_only) {
        self->meta->updated = 0;
    }
    release(self);
    return iterate(out, rc);
}

static PyObject *
BufferAccess_emit_dev_data(rt_BufferAccess *self, PyObject *unused)
{
    return emit_data(self, 1);
}

static PyObject *
BufferAccess_emit_subscription(rt_BufferAccess *self, PyObject *unused)
{
    return emit_data(self, 0);
}

static PyObject *
BufferAccess_make_sub_res(rt_BufferAccess *self, PyObject *unused)
{
    if (require_device(self) < 0 || acquire(self, 1) < 0) {
        return NULL;
    }
    rt_meta m = *self->meta;
    release(self);
    rt_Message *msg = rt_message_new(RT_SUB_RES, 15);
    if (msg == NULL) {
        return NULL;
    }
    uint8_t *p = msg->payload;
    p[0] = (uint8_t)m.subscription;
    p[1] = (uint8_t)(m.subscription >> 8);
    p[2] = (uint8_t)m.interval_ms;
    p[3] = (uint8_t)(m.interval_ms >> 8);
    p[4] = (uint8_t)m.device_id;
    p[5] = (uint8_t)(m.device_id >> 8);
    p[6] = m.year;
    for (int i = 0; i < 8; i++) {
        p[7 + i] = (uint8_t)(m.random >> (8 * i));
    }
    return (PyObject *)msg;
}

/* ---- BufferAccess: metadata --------------------------------------------- */

enum { META_LAST_UPDATE, META_LAST_WRITE, META_SUBSCRIPTION, META_INTERVAL_MS, META_UID };

/* One metadata field, read without the lock like get(): as cheap as a get(). */
static PyObject *
BufferAccess_get_meta_field(rt_BufferAccess *self, void *closure)
{
    rt_meta m;
    if (read_stable(self, &m, self->meta, sizeof(m)) < 0) {
        return NULL;
    }
    switch ((int)(intptr_t)closure) {
    case META_LAST_UPDATE:
        return PyFloat_FromDouble(m.last_update);
    case META_LAST_WRITE:
        return PyFloat_FromDouble(m.last_write);
    case META_SUBSCRIPTION:
        return PyLong_FromUnsignedLong(m.subscription);
    case META_INTERVAL_MS:
        return PyLong_FromUnsignedLong(m.interval_ms);
    default: {
        PyObject *high = PyLong_FromUnsignedLong((unsigned long)m.device_id << 8 | m.year);
        PyObject *shift = PyLong_FromLong(64);
        PyObject *shifted = high && shift ? PyNumber_Lshift(high, shift) : NULL;
        PyObject *low = PyLong_FromUnsignedLongLong(m.random);
        PyObject *uid = shifted && low ? PyNumber_Or(shifted, low) : NULL;
        Py_XDECREF(high);
        Py_XDECREF(shift);
        Py_XDECREF(shifted);
        Py_XDECREF(low);
        return uid;
    }
    }
}

static PyObject *
BufferAccess_set_meta(rt_BufferAccess *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"subscription", "interval_ms", "uid", "check_valid", NULL};
    PyObject *subscription = Py_None, *interval = Py_None, *uid = Py_None;
    int check_valid = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOp:set_meta", kwlist, &subscription, &interval, &uid,
                                     &check_valid)) {
        return NULL;
    }
    unsigned long sub = 0, ivl = 0;
    unsigned short device_id = 0;
    unsigned char year = 0;
    unsigned long long random = 0;
    if ((subscription != Py_None && (sub = PyLong_AsUnsignedLong(subscription)) == (unsigned long)-1
         && PyErr_Occurred())
        || (interval != Py_None && (ivl = PyLong_AsUnsignedLong(interval)) == (unsigned long)-1 && PyErr_Occurred())
        || (uid != Py_None && !PyArg_ParseTuple(uid, "HbK", &device_id, &year, &random))) {
        return NULL;
    }
    if (sub > 0xFFFF || ivl > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "subscription and interval must fit in 16 bits");
        return NULL;
    }
    if (acquire(self, check_valid) < 0) {
        return NULL;
    }
    if (subscription != Py_None) {
        self->meta->subscription = (uint16_t)sub;
    }
    if (interval != Py_None) {
        self->meta->interval_ms = (uint16_t)ivl;
    }
    if (uid != Py_None) {
        self->meta->device_id = device_id;
        self->meta->year = year;
        self->meta->random = random;
    }
    release(self);
    Py_RETURN_NONE;
}

static PyObject *
BufferAccess_get_valid(rt_BufferAccess *self, void *closure)
{
    if (self->closed) {
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(is_live(self));
}

/* The producer lock names a thread that is gone, yet the kernel did not
 * release it: a thread that died holding more robust locks than the kernel
 * walks (2048; see RT_MAX_SERVED_PER_THREAD). Release it as the kernel would
 * (owner died), so that every reader sees the buffer invalid and a new
 * producer takes it over. Returns 1 when it did. A few microseconds (one look
 * in /proc): called where the producer is looked up, never on the hot path. */
static int
reap_dead_producer(rt_BufferAccess *acc)
{
    if (!rt_lockword_has_owner) {
        return 0;
    }
    uint32_t *word = (uint32_t *)(void *)&acc->producer->m.mutex;
    uint32_t old = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    uint32_t tid = old & RT_FUTEX_TID_MASK;
    if (tid == 0 || (old & FUTEX_OWNER_DIED) || !thread_gone(tid)) {
        return 0;
    }
    uint32_t died = (old & FUTEX_WAITERS) | FUTEX_OWNER_DIED;
    if (!__atomic_compare_exchange_n(word, &old, died, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE)) {
        return 0;  /* it changed meanwhile: whoever changed it knows better */
    }
    futex_wake_all(word);  /* a producer waiting to take over, and waiters watching the producer */
    rt_validity_changed(acc);
    return 1;
}

/* Whether a live thread holds the producer lock, a dead one's hold released first. */
static int
producer_alive(rt_BufferAccess *acc)
{
    if (!rt_mutex_held(acc->producer)) {
        return 0;
    }
    return !reap_dead_producer(acc);
}

static uint32_t
current_tid(void)
{
    return (uint32_t)syscall(SYS_gettid);
}

/* Setting validity needs no lock (one word, written atomically), so an
 * invalidation always happens at once, even while a stopped process holds
 * the buffer's lock. Only the live producer changes a buffer's validity,
 * from the thread that serves it: a consumer cannot make a dead producer's
 * last values pass for live ones, nor end a live producer's validity. */
static int
BufferAccess_set_valid(rt_BufferAccess *self, PyObject *value, void *closure)
{
    int truth = value ? PyObject_IsTrue(value) : 0;
    if (truth < 0) {
        return -1;
    }
    if (self->closed) {
        rt_buffer_error(self, "buffer is closed", NULL);
        return -1;
    }
    if (!serving(self) || self->serve_tid != current_tid()) {
        PyObject *pid = NULL;
        const char *message;
        if (serving(self)) {
            message = "set validity from the thread that serves the buffer (the producer role is a thread's)";
        }
        else if (producer_alive(self)) {
            pid = PyLong_FromUnsignedLong(self->header->producer_pid);
            message = "buffer is served by a producer; only it changes its validity";
        }
        else {
            message = "only a buffer's live producer changes its validity: serve() it first";
            if (self->header->producer_pid != 0) {
                pid = PyLong_FromUnsignedLong(self->header->producer_pid);
            }
        }
        if (pid != NULL) {
            rt_raise(rt_DeviceBufferError, message, "buffer", self->name, "producer_pid", pid, NULL);
            Py_DECREF(pid);
        }
        else {
            rt_buffer_error(self, message, NULL);
        }
        return -1;
    }
    __atomic_store_n(&self->header->valid, truth ? RT_SERVED : RT_INVALID, __ATOMIC_RELEASE);
    rt_validity_changed(self);
    return 0;
}

/* serve(): become the buffer's producer and mark it valid. Returns the pid of
 * a producer that died serving it (taken over), else None. */
static PyObject *
BufferAccess_serve(rt_BufferAccess *self, PyObject *unused)
{
    if (self->closed) {
        return rt_buffer_error(self, "buffer is closed", NULL);
    }
    uint32_t caller = current_tid();
    if (!serving(self) || self->serve_tid != caller) {  /* a role held by another thread is not ours */
        long *count = served_count();
        if (*count >= RT_MAX_SERVED_PER_THREAD) {
            PyObject *limit = PyLong_FromLong(RT_MAX_SERVED_PER_THREAD);
            rt_raise(rt_DeviceBufferError,
                     "this thread already serves as many buffers as a thread may (the kernel releases at most "
                     "2048 robust locks of a dying thread): serve more from another thread",
                     "buffer", self->name, "limit", limit, NULL);
            Py_XDECREF(limit);
            return NULL;
        }
        int recovered;
        int rc = rt_mutex_lock(self->producer, RT_SERVE_WAIT, &recovered);
        if ((rc == ETIMEDOUT || rc == EBUSY) && reap_dead_producer(self)) {
            rc = rt_mutex_lock(self->producer, RT_SERVE_WAIT, &recovered);  /* its owner was gone */
        }
        if (rc == ETIMEDOUT || rc == EBUSY || rc == EDEADLK) {
            PyObject *pid = PyLong_FromUnsignedLong(self->header->producer_pid);
            rt_raise(rt_DeviceBufferError,
                     rc == EDEADLK ? "buffer is already served by this thread (through another handle)"
                                   : "buffer is served by another producer",
                     "buffer", self->name, "producer_pid", pid, NULL);
            Py_XDECREF(pid);
            return NULL;
        }
        if (rc != 0) {
            return rt_raise_sync_error(rc, "cannot take the buffer's producer lock");
        }
        (*count)++;
        uint32_t previous = self->header->producer_pid;
        self->header->producer_pid = my_pid();
        uint32_t mine = my_pid();  /* our own claim is granted */
        __atomic_compare_exchange_n(&self->notify->claimant, &mine, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        self->serving = 1;
        self->serve_generation = rt_fork_generation;
        self->serve_tid = caller;
        __atomic_store_n(&self->header->valid, RT_SERVED, __ATOMIC_RELEASE);
        rt_validity_changed(self);
        if (recovered) {
            return PyLong_FromUnsignedLong(previous);
        }
        Py_RETURN_NONE;
    }
    __atomic_store_n(&self->header->valid, RT_SERVED, __ATOMIC_RELEASE);
    rt_validity_changed(self);
    Py_RETURN_NONE;
}

/* Give up the producer lock, the buffer marked invalid first (by its serving thread). */
static int
unserve(rt_BufferAccess *self)
{
    self->serving = 0;
    __atomic_store_n(&self->header->valid, RT_INVALID, __ATOMIC_RELEASE);
    rt_validity_changed(self);
    int rc = rt_mutex_unlock(self->producer);
    if (rc == 0) {
        (*served_count())--;
    }
    return rc;
}

/* stop_serving(): mark the buffer invalid and give up the producer lock.
 * Only from the thread that serves it: from another one it is refused and
 * nothing changes (that thread can still stop, serve again, close). In a
 * child of fork() it only forgets the parent's role. */
static PyObject *
BufferAccess_stop_serving(rt_BufferAccess *self, PyObject *unused)
{
    if (!serving(self)) {
        self->serving = 0;
        Py_RETURN_NONE;
    }
    if (self->serve_tid != current_tid()) {
        PyObject *tid = PyLong_FromUnsignedLong(self->serve_tid);
        rt_raise(rt_DeviceBufferError,
                 "stop serving from the thread that serves the buffer (nothing changed: it still serves it)",
                 "buffer", self->name, "serving_thread", tid, NULL);
        Py_XDECREF(tid);
        return NULL;
    }
    if (self->has_view && unserve(self) != 0) {
        return rt_buffer_error(self, "cannot give up the producer lock", NULL);
    }
    self->serving = 0;
    Py_RETURN_NONE;
}

/* claim(): ask the live producer to give the buffer up (for a bridge that
 * sees the buffer's device connected). One word, no lock: anyone with the
 * buffer open may claim; a producer that honours claims (runtime replay)
 * stops serving, one that ignores them keeps the buffer. */
static PyObject *
BufferAccess_claim(rt_BufferAccess *self, PyObject *unused)
{
    if (self->closed) {
        return rt_buffer_error(self, "buffer is closed", NULL);
    }
    __atomic_store_n(&self->notify->claimant, my_pid(), __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* The pid of a live process, other than the live producer, that claimed the
 * buffer, else None. One load while nobody claims it (the common case). */
static PyObject *
BufferAccess_get_claimed(rt_BufferAccess *self, void *closure)
{
    if (self->closed) {
        Py_RETURN_NONE;
    }
    uint32_t pid = __atomic_load_n(&self->notify->claimant, __ATOMIC_ACQUIRE);
    if (pid == 0 || pid > (uint32_t)INT_MAX) {
        Py_RETURN_NONE;
    }
    if (kill((pid_t)pid, 0) != 0 && errno != EPERM) {  /* the claimant is gone: its claim with it */
        Py_RETURN_NONE;
    }
    if (pid == __atomic_load_n(&self->header->producer_pid, __ATOMIC_ACQUIRE) && producer_alive(self)) {
        Py_RETURN_NONE;  /* granted: the claimant serves it */
    }
    return PyLong_FromUnsignedLong(pid);
}

static PyObject *
BufferAccess_get_serving(rt_BufferAccess *self, void *closure)
{
    return PyBool_FromLong(!self->closed && serving(self));
}

static PyObject *
BufferAccess_get_producer_pid(rt_BufferAccess *self, void *closure)
{
    if (self->closed || !producer_alive(self)) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong(self->header->producer_pid);
}

static PyObject *
BufferAccess_get_closed(rt_BufferAccess *self, void *closure)
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
BufferAccess_get_timeout(rt_BufferAccess *self, void *closure)
{
    return PyFloat_FromDouble(self->timeout);
}

static int
BufferAccess_set_timeout(rt_BufferAccess *self, PyObject *value, void *closure)
{
    double timeout;
    if (rt_parse_timeout(value, 0, NAN, &timeout) < 0) {  /* deleting it (value NULL) is refused too */
        return -1;
    }
    self->timeout = timeout;
    return 0;
}

static PyMethodDef BufferAccess_methods[] = {
    {"get", (PyCFunction)BufferAccess_get, METH_O, "get(param) -> value from the update block."},
    {"set", (PyCFunction)(void (*)(void))BufferAccess_set, METH_FASTCALL, "set(param, value) in the update block."},
    {"write", (PyCFunction)(void (*)(void))BufferAccess_write, METH_FASTCALL,
     "write(param, value) in the write block, pending for the device."},
    {"read", (PyCFunction)(void (*)(void))BufferAccess_read, METH_FASTCALL,
     "read(params=None): request reading these (readable) parameters."},
    {"transaction", (PyCFunction)BufferAccess_transaction, METH_NOARGS, "The reentrant lock context manager."},
    {"__enter__", (PyCFunction)BufferAccess_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))BufferAccess_exit, METH_FASTCALL, NULL},
    {"snapshot", (PyCFunction)BufferAccess_snapshot, METH_NOARGS, "Every readable value, in one lock."},
    {"get_update", (PyCFunction)BufferAccess_get_update, METH_NOARGS, "Updated values; clears the set."},
    {"get_write", (PyCFunction)BufferAccess_get_write, METH_NOARGS, "Written values; clears the set."},
    {"pending_writes", (PyCFunction)BufferAccess_pending_writes, METH_NOARGS,
     "Written values not yet sent; clears nothing."},
    {"get_read", (PyCFunction)BufferAccess_get_read, METH_NOARGS, "Names requested for reading; clears the set."},
    {"update", (PyCFunction)BufferAccess_update, METH_O, "Digest a Smart Device message."},
    {"emit_dev_rw", (PyCFunction)BufferAccess_emit_dev_rw, METH_NOARGS, "DEV_READ/DEV_WRITE for pending requests."},
    {"emit_dev_data", (PyCFunction)BufferAccess_emit_dev_data, METH_NOARGS, "DEV_DATA for updated values."},
    {"emit_subscription", (PyCFunction)BufferAccess_emit_subscription, METH_NOARGS,
     "DEV_DATA for subscribed values."},
    {"make_sub_res", (PyCFunction)BufferAccess_make_sub_res, METH_NOARGS, "SUB_RES from the recorded state."},
    {"set_meta", (PyCFunction)(void (*)(void))BufferAccess_set_meta, METH_VARARGS | METH_KEYWORDS,
     "set_meta(*, subscription=None, interval_ms=None, uid=None, check_valid=True)"},
    {"mask", (PyCFunction)(void (*)(void))BufferAccess_mask, METH_FASTCALL,
     "mask(names, required) -> bitmap of the named parameters (required: 1 readable, 2 writeable)."},
    {"names", (PyCFunction)BufferAccess_names, METH_O, "names(bitmap) -> set of parameter names."},
    {"close", (PyCFunction)BufferAccess_close, METH_NOARGS, "Stop using the memory; later calls raise."},
    {"wait", (PyCFunction)(void (*)(void))rt_BufferAccess_wait, METH_FASTCALL,
     "wait(block, timeout=None) -> bool: sleep until the block (0 update, 1 write) changes."},
    {"take_change", (PyCFunction)rt_BufferAccess_take_change, METH_O,
     "take_change(block) -> bool: whether the block changed since last seen (then seen now)."},
    {"see_now", (PyCFunction)rt_BufferAccess_see_now, METH_O,
     "see_now(block) -> bool: mark the block seen as it is now; whether it had changed."},
    {"commanders", (PyCFunction)BufferAccess_commanders, METH_NOARGS,
     "commanders() -> {name: (pid, start)} of the safe-valued parameters someone commands."},
    {"end_commands", (PyCFunction)(void (*)(void))BufferAccess_end_commands, METH_VARARGS | METH_KEYWORDS,
     "end_commands(commander=None, params=None, everything=False) -> names put back to their safe values "
     "(those `commander`, a (pid, start) pair, commands; anyone's if None; all with `everything`)."},
    {"end_my_commands", (PyCFunction)(void (*)(void))BufferAccess_end_my_commands, METH_VARARGS | METH_KEYWORDS,
     "end_my_commands(params=None) -> names of this process's commands put back to their safe values."},
    {"set_disabled", (PyCFunction)BufferAccess_set_disabled, METH_O,
     "set_disabled(flag) -> names put back to their safe values (disabling ends every command)."},
    {"serve", (PyCFunction)BufferAccess_serve, METH_NOARGS,
     "Become the producer and mark the buffer valid; returns the pid of a dead producer taken over, or None."},
    {"stop_serving", (PyCFunction)BufferAccess_stop_serving, METH_NOARGS,
     "Mark the buffer invalid and give up the producer role."},
    {"claim", (PyCFunction)BufferAccess_claim, METH_NOARGS,
     "Ask the live producer to give the buffer up (a producer that honours claims stops serving)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef BufferAccess_getset[] = {
    {"valid", (getter)BufferAccess_get_valid, (setter)BufferAccess_set_valid, "The segment's valid bit.", NULL},
    {"closed", (getter)BufferAccess_get_closed, NULL, "Whether close() was called.", NULL},
    {"serving", (getter)BufferAccess_get_serving, NULL, "Whether this object serves the buffer.", NULL},
    {"last_update", (getter)BufferAccess_get_meta_field, NULL, "time.time() of the last DEV_DATA.",
     (void *)(intptr_t)META_LAST_UPDATE},
    {"last_write", (getter)BufferAccess_get_meta_field, NULL, "time.time() of the last write.",
     (void *)(intptr_t)META_LAST_WRITE},
    {"subscription_mask", (getter)BufferAccess_get_meta_field, NULL, "The subscribed parameter IDs.",
     (void *)(intptr_t)META_SUBSCRIPTION},
    {"interval_ms", (getter)BufferAccess_get_meta_field, NULL, "The subscription interval.",
     (void *)(intptr_t)META_INTERVAL_MS},
    {"uid", (getter)BufferAccess_get_meta_field, NULL, "The 88-bit device UID.", (void *)(intptr_t)META_UID},
    {"producer_pid", (getter)BufferAccess_get_producer_pid, NULL,
     "The pid of the live producer serving the buffer, or None.", NULL},
    {"claimed", (getter)BufferAccess_get_claimed, NULL,
     "The pid of a live process that claimed the buffer and does not serve it, or None.", NULL},
    {"timeout", (getter)BufferAccess_get_timeout, (setter)BufferAccess_set_timeout, "Lock timeout in seconds.",
     NULL},
    {"disabled", (getter)BufferAccess_get_disabled, NULL, "Whether writes of safe-valued parameters are refused.",
     NULL},
    {"last_command", (getter)BufferAccess_get_last_command, NULL,
     "time.time() of the last write of a safe-valued parameter (0.0: none).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject rt_BufferAccessType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._core.BufferAccess",
    .tp_basicsize = sizeof(rt_BufferAccess),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "BufferAccess(spec, memory, name, on_recover=None, timeout=1.0)\n\n"
              "on_recover(name, rolled_back) runs when the lock is recovered from a dead owner.\n"
              "Locked access to one buffer segment (header, mutex, structure) in `memory`.",
    .tp_traverse = (traverseproc)BufferAccess_traverse,
    .tp_clear = (inquiry)BufferAccess_clear,
    .tp_dealloc = (destructor)BufferAccess_dealloc,
    .tp_methods = BufferAccess_methods,
    .tp_getset = BufferAccess_getset,
    .tp_init = (initproc)BufferAccess_init,
    .tp_new = PyType_GenericNew,
};

/* ---- the frame pump's path into a buffer (pump.c) ----------------------- */

int
rt_access_pin(PyObject *obj, const rt_layout **layout, const uint8_t **update)
{
    if (!PyObject_TypeCheck(obj, &rt_BufferAccessType)) {
        PyErr_Format(PyExc_TypeError, "expected a BufferAccess, not %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    rt_BufferAccess *acc = (rt_BufferAccess *)obj;
    if (require_device(acc) < 0) {
        return -1;
    }
    if (acc->closed || !acc->has_view) {
        rt_buffer_error(acc, "buffer is closed", NULL);
        return -1;
    }
    acc->users++;  /* close() keeps the memory until rt_access_unpin */
    *layout = &acc->spec->layout;
    *update = acc->update;
    return 0;
}

void
rt_access_unpin(PyObject *obj)
{
    rt_BufferAccess *acc = (rt_BufferAccess *)obj;
    acc->users--;
    rt_release_view_if_unused(acc);
}

void
rt_access_report_recovery(PyObject *obj, int rolled_back)
{
    rt_report_recovery((rt_BufferAccess *)obj, rolled_back);
}

/* Copy the parameters of `mask` from `stage` (laid out like the update
 * block) into the update block, as update() does for a DEV_DATA, without the
 * GIL: from the pump's reader thread. The lock is only tried, with a short
 * spin (another thread or process holds it for microseconds at a time); the
 * caller keeps the values and tries again later when this returns EBUSY. */
int
rt_access_commit(PyObject *obj, const uint8_t *stage, uint64_t mask, double spin, int *recovered, int *rolled_back)
{
    rt_BufferAccess *acc = (rt_BufferAccess *)obj;
    *recovered = 0;
    if (__atomic_load_n(&acc->closed, __ATOMIC_ACQUIRE)) {
        return RT_COMMIT_REFUSED;
    }
    double now = wall_clock();  /* read before the lock, as update() does */
    int rc = rt_mutex_lock(acc->mutex, 0, recovered);
    if (rc == EBUSY && spin > 0) {
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (unsigned tries = 1; rc == EBUSY; tries++) {
            rt_cpu_relax();
            if (tries % 64 == 0) {
                rc = rt_mutex_lock(acc->mutex, 0, recovered);
                clock_gettime(CLOCK_MONOTONIC, &now);
                if ((double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) * 1e-9 > spin) {
                    break;
                }
            }
        }
    }
    if (rc != 0) {
        return rc;
    }
    int bumped = 0;
    if (*recovered) {
        *rolled_back = rt_recover_memory(acc, &bumped);
    }
    if (!is_live(acc)) {
        rt_mutex_unlock(acc->mutex);
        if (bumped) {
            rt_wake_waiters(acc, bumped);
        }
        return RT_COMMIT_REFUSED;
    }
    seqlock_begin(acc);  /* we hold the lock outside any transaction: txn_depth is 0 */
    const rt_layout *layout = &acc->spec->layout;
    for (int i = 0; i < layout->count; i++) {
        if (mask & (1u << i)) {
            memcpy(acc->update + layout->offsets[i], stage + layout->offsets[i], (size_t)layout->widths[i]);
        }
    }
    acc->meta->updated |= mask;
    acc->meta->last_update = now;
    bump_sequence(acc, RT_UPDATE_BLOCK);  /* not changed(): wake_pending belongs to the handle's own thread */
    seqlock_end(acc);
    rt_mutex_unlock(acc->mutex);
#if !defined(__x86_64__) && !defined(__i386__)
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
    rt_wake_waiters(acc, (1 << RT_UPDATE_BLOCK) | bumped);
    return 0;
}

static PyObject *
core_my_commander(PyObject *module, PyObject *unused)
{
    return commander_tuple(my_commander());
}

static PyObject *
core_start_time(PyObject *module, PyObject *arg)
{
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (pid <= 0) {
        PyErr_SetString(PyExc_ValueError, "pid must be positive");
        return NULL;
    }
    long long start = start_time_of(pid);
    if (start < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong((unsigned long)(uint32_t)start);
}

static PyMethodDef buffer_functions[] = {
    {"my_commander", core_my_commander, METH_NOARGS, "This process as a commander: (pid, start)."},
    {"start_time", core_start_time, METH_O,
     "start_time(pid) -> the process's start time (clock ticks since boot, low 32 bits), or None if none."},
    {NULL, NULL, 0, NULL},
};

int
rt_buffer_module_init(PyObject *module)
{
    if (PyType_Ready(&rt_BufferAccessType) < 0
        || PyModule_AddIntConstant(module, "MAX_SERVED_PER_THREAD", RT_MAX_SERVED_PER_THREAD) < 0
        || PyModule_AddIntConstant(module, "MIN_INTERVAL_MS", RT_MIN_INTERVAL_MS) < 0
        || PyModule_AddIntConstant(module, "MAX_INTERVAL_MS", RT_MAX_INTERVAL_MS) < 0) {
        return -1;
    }
    Py_INCREF(&rt_BufferAccessType);
    if (PyModule_AddObject(module, "BufferAccess", (PyObject *)&rt_BufferAccessType) < 0) {
        Py_DECREF(&rt_BufferAccessType);
        return -1;
    }
    return PyModule_AddFunctions(module, buffer_functions);
}
