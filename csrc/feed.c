/*
 * The change feed: it sleeps on the sequence words (and producer locks) of
 * every buffer a consumer follows, outside the interpreter, and wakes the
 * consumer once for a batch of changes: wait() sleeps in the caller's thread
 * (the GIL released), or, once fileno() was asked for, a thread of its own
 * signals an eventfd (for asyncio's add_reader); take() then hands over
 * each changed buffer's values as plain JSON data, converted here
 * (read_json), not in Python.
 *
 * Also read_json() and short_float32(): a buffer's readable values read
 * consistently (the seqlock read of seqlock.h, the lock when that fails) and
 * converted as runtime.values.json_values converts them.
 */
#include "convert.h"
#include "seqlock.h"

#include <float.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>

/* ---- values as JSON data -------------------------------------------------- */

/* The shortest decimal (at most 9 significant digits) that reads back as the
 * same float32, as a Python float; None for NaN and infinities; a value that
 * is no float32 (a double) is returned as it is. "Reads back" is Python's
 * way: the decimal parsed as a double, then rounded to a float32. */
/* The shortest decimals found last, by the float32's bits: a parameter that keeps its
 * value (a gain, a limit, a sensor at rest) costs a lookup instead of up to four
 * snprintf/strtod rounds at every read. Used with the GIL held. */
#define SHORT_CACHE_SIZE 1024
static struct {
    uint32_t bits;
    PyObject *value;  /* NULL: empty */
} short_cache[SHORT_CACHE_SIZE];

static PyObject *
short_float32(double value)
{
    if (!isfinite(value)) {
        Py_RETURN_NONE;
    }
    float single = (float)value;
    if ((double)single != value) {  /* no float32: no shorter decimal reads back as it */
        return PyFloat_FromDouble(value);
    }
    uint32_t bits;
    memcpy(&bits, &single, sizeof(bits));
    size_t slot = (size_t)((bits * 2654435761u) >> 22) % SHORT_CACHE_SIZE;
    if (short_cache[slot].value != NULL && short_cache[slot].bits == bits) {
        return Py_NewRef(short_cache[slot].value);
    }
    char text[40];
    double shortest = value;
    /* Six digits (%g drops trailing zeros) give the shortest decimal whenever six or fewer
     * suffice for a normal float32; a subnormal, with fewer significant bits, may need fewer. */
    for (int digits = fabs(value) < FLT_MIN ? 1 : 6; digits <= 9; digits++) {
        snprintf(text, sizeof(text), "%.*g", digits, value);
        double candidate = strtod(text, NULL);
        if ((double)(float)candidate == value) {
            shortest = candidate;
            break;
        }
    }
    PyObject *result = PyFloat_FromDouble(shortest);
    if (result != NULL) {
        Py_XSETREF(short_cache[slot].value, Py_NewRef(result));
        short_cache[slot].bits = bits;
    }
    return result;
}

static PyObject *jsonable_fallback;  /* runtime.values.jsonable, for arrays and characters */

static PyObject *
json_value(const rt_param *p, const uint8_t *src)
{
    if (p->kind == K_F32) {
        float v;
        memcpy(&v, src, 4);
        return short_float32(v);
    }
    if (p->kind == K_F64) {
        double v;
        memcpy(&v, src, 8);
        return short_float32(v);
    }
    PyObject *value = rt_to_python(p, src);
    if (value == NULL || p->kind != K_RAW) {
        return value;
    }
    if (jsonable_fallback == NULL) {
        PyObject *values = PyImport_ImportModule("runtime.values");
        if (values != NULL) {
            jsonable_fallback = PyObject_GetAttrString(values, "jsonable");
            Py_DECREF(values);
        }
        if (jsonable_fallback == NULL) {
            Py_DECREF(value);
            return NULL;
        }
    }
    PyObject *converted = PyObject_CallOneArg(jsonable_fallback, value);
    Py_DECREF(value);
    return converted;
}

static double
wall_clock(void)
{
    struct timespec clock;
    clock_gettime(CLOCK_REALTIME, &clock);
    return (double)clock.tv_sec + (double)clock.tv_nsec * 1e-9;
}

/* The buffer's state as runtime.values.read_state gives it: (valid, values,
 * time), values None when it is invalid. One consistent copy of the structure
 * (values and last_update together). Raises for a closed buffer or a lock
 * error; an invalid buffer is a state, not an error. */
static PyObject *
read_json_state(rt_BufferAccess *acc, double previous)
{
    double now = wall_clock();
    double later = now > previous ? now : previous;
    if (acc->closed) {
        return rt_buffer_error(acc, "buffer is closed", NULL);
    }
    rt_BufferSpec *spec = acc->spec;
    Py_ssize_t size = spec->struct_size;
    uint8_t small[1024];
    uint8_t *copy = size <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)size);
    if (copy == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    if (read_stable(acc, copy, acc->data, (size_t)size) < 0) {
        if (!acc->closed && !is_live(acc) && PyErr_ExceptionMatches(rt_DeviceBufferError)) {
            PyErr_Clear();
            result = Py_BuildValue("OOd", Py_False, Py_None, later);
        }
        goto done;
    }
    PyObject *values = PyDict_New();
    if (values == NULL) {
        goto done;
    }
    const uint8_t *update = copy + (acc->update - acc->data);
    for (int i = 0; i < spec->count; i++) {
        rt_param *p = &spec->params[i];
        if (!(spec->readable & (1ULL << p->id))) {
            continue;
        }
        PyObject *value = json_value(p, update + p->offset);
        if (value == NULL || PyDict_SetItem(values, p->name, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(values);
            goto done;
        }
        Py_DECREF(value);
    }
    double stamp = now;
    if (spec->is_device) {
        rt_meta meta;
        memcpy(&meta, copy + ((uint8_t *)acc->meta - acc->data), sizeof(meta));
        stamp = meta.last_update > previous ? meta.last_update : later;
    }
    result = Py_BuildValue("ONd", Py_True, values, stamp);
done:
    if (copy != small) {
        PyMem_Free(copy);
    }
    return result;
}

/* read_json(access, previous=0.0) -> (valid, values | None, time) */
static PyObject *
core_read_json(PyObject *module, PyObject *args)
{
    PyObject *acc;
    double previous = 0.0;
    if (!PyArg_ParseTuple(args, "O!|d:read_json", &rt_BufferAccessType, &acc, &previous)) {
        return NULL;
    }
    return read_json_state((rt_BufferAccess *)acc, previous);
}

/* short_float32(value) -> float | None */
static PyObject *
core_short_float32(PyObject *module, PyObject *arg)
{
    double value = PyFloat_AsDouble(arg);
    if (value == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    return short_float32(value);
}

/* ---- ChangeFeed ----------------------------------------------------------- */

typedef struct {
    PyObject *key;
    rt_BufferAccess *acc;  /* a reference, and one of its `users`: its memory stays mapped */
    int blocks;            /* bit 0: the update block, bit 1: the write block */
    int wanted;            /* whether its value changes are wanted (else validity only) */
    int force;             /* deliver at the next take() */
    int seen_live;
    uint32_t seen[2];
} feed_entry;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;  /* entries, armed, stopping; never held across a Python call */
    feed_entry *entries;
    int count, capacity;
    uint32_t control;      /* bumped (and futex-woken) to make the thread look again */
    int armed;             /* the consumer took the last batch: the next change is signalled */
    int waiting_take;      /* the thread sleeps until the consumer takes the batch signalled */
    int stopping;
    int started;
    int closed;
    int woken;             /* wake() was called: the next (or current) wait() returns */
    pthread_t thread;
    int efd;
    long batch_ns;         /* pace: at least this long between two batches handed to the consumer */
    long last_batch_ns;    /* CLOCK_MONOTONIC when the consumer was last handed a batch */
    unsigned long wakeups; /* times the consumer was signalled */
} rt_ChangeFeed;

static void
poke(rt_ChangeFeed *self)
{
    __atomic_fetch_add(&self->control, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &self->control, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Which of its blocks changed since seen (bit mask), and whether it is live. */
static int
entry_changes(const feed_entry *e, int *live)
{
    rt_BufferAccess *acc = e->acc;
    int changed = 0;
    for (int block = 0; block < 2; block++) {
        if ((e->blocks & (1 << block))
            && __atomic_load_n(&acc->notify->seq[block], __ATOMIC_ACQUIRE) != e->seen[block]) {
            changed |= 1 << block;
        }
    }
    *live = !acc->closed && is_live(acc);
    return changed;
}

static int
entry_ready(const feed_entry *e)
{
    int live;
    int changed = entry_changes(e, &live);
    return e->force || e->acc->closed || live != e->seen_live || (e->wanted && changed);
}

/* The words to sleep on (the lock held): each followed block's sequence word (a
 * change differs from the value slept on; an entry whose changes are not wanted
 * sleeps on the current value: woken, it is looked at again for a validity change
 * only), the producer locks from `*producers_from` to `*producers_to`, and last
 * the control word. `*left_out`: more words than one call takes. */
static int
build_waits(rt_ChangeFeed *self, struct rt_futex_waitv *waits, uint32_t control, int *producers_from,
            int *producers_to, int *left_out)
{
    int count = 0;
    *left_out = 0;
    for (int i = 0; i < self->count; i++) {
        feed_entry *e = &self->entries[i];
        for (int block = 0; block < 2; block++) {
            if (!(e->blocks & (1 << block))) {
                continue;
            }
            if (count >= RT_FUTEX_WAITV_MAX - 1) {
                *left_out = 1;
                continue;
            }
            uint32_t *word = &e->acc->notify->seq[block];
            uint32_t value = e->wanted ? e->seen[block] : __atomic_load_n(word, __ATOMIC_ACQUIRE);
            waits[count++] = (struct rt_futex_waitv){value, (uint64_t)(uintptr_t)word, RT_FUTEX2_SIZE_U32, 0};
        }
    }
    *producers_from = count;
    for (int i = 0; i < self->count; i++) {
        uint32_t value;
        if (count >= RT_FUTEX_WAITV_MAX - 1) {
            *left_out = 1;
            break;
        }
        if (rt_watch_producer(self->entries[i].acc, &value)) {
            waits[count++] = (struct rt_futex_waitv){
                value, (uint64_t)(uintptr_t)&self->entries[i].acc->producer->m.mutex, RT_FUTEX2_SIZE_U32, 0};
        }
    }
    *producers_to = count;
    waits[count++] = (struct rt_futex_waitv){control, (uint64_t)(uintptr_t)&self->control,
                                             RT_FUTEX2_SIZE_U32 | RT_FUTEX2_PRIVATE, 0};
    return count;
}

/* Sleep on the words (the lock not held) until one differs, `deadline` (NULL: none;
 * a short slice when words were left out or futex_waitv is missing). Returns
 * futex_waitv's result: the index of the word that woke it, or -1 (errno set). */
static long
sleep_on(rt_ChangeFeed *self, struct rt_futex_waitv *waits, int count, uint32_t control, int left_out,
         const struct timespec *deadline)
{
    struct timespec slice_end;
    if (left_out || !rt_have_waitv) {
        clock_gettime(CLOCK_MONOTONIC, &slice_end);
        slice_end.tv_nsec += (long)(RT_FALLBACK_SLICE * 1e9);
        if (slice_end.tv_nsec >= 1000000000L) {
            slice_end.tv_sec += 1;
            slice_end.tv_nsec -= 1000000000L;
        }
        if (deadline == NULL || slice_end.tv_sec < deadline->tv_sec
            || (slice_end.tv_sec == deadline->tv_sec && slice_end.tv_nsec < deadline->tv_nsec)) {
            deadline = &slice_end;
        }
    }
    long rc = -1;
    if (rt_have_waitv) {
        rc = syscall(SYS_futex_waitv, waits, count, 0, deadline, CLOCK_MONOTONIC);
        if (rc < 0 && errno == ENOSYS) {
            rt_have_waitv = 0;
        }
    }
    if (!rt_have_waitv) {  /* an old kernel: the control word alone, in short slices */
        struct timespec slice = {0, (long)(RT_FALLBACK_SLICE * 1e9)};
        syscall(SYS_futex, &self->control, FUTEX_WAIT_PRIVATE, control, &slice, NULL, 0);
        errno = EAGAIN;
    }
    return rc;
}

/* Woken on a producer lock (its owner died or let go): the kernel or glibc woke one
 * sleeper; pass it on to the others. */
static void
pass_on(const struct rt_futex_waitv *waits, long rc, int producers_from, int producers_to)
{
    if (rc >= producers_from && rc < producers_to) {
        futex_wake_all((uint32_t *)(uintptr_t)waits[rc].uaddr);
    }
}

static int
any_ready(rt_ChangeFeed *self)
{
    for (int i = 0; i < self->count; i++) {
        if (entry_ready(&self->entries[i])) {
            return 1;
        }
    }
    return 0;
}

static long
monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000000000L + now.tv_nsec;
}

/* The pace (the lock held): the nanoseconds until the next batch may be handed
 * over, 0 when it may be now. Until then the feed does not even sleep on the
 * buffers' words, but until that moment, then looks once: changes that keep coming
 * cost one wake-up per `batch_ns` for all of them, and a change after a quiet
 * moment (the feed asleep on the words) goes at once. */
static long
paced(rt_ChangeFeed *self)
{
    if (self->batch_ns == 0) {
        return 0;
    }
    long wait = self->last_batch_ns + self->batch_ns - monotonic_ns();
    return wait > 0 ? wait : 0;
}

/* A batch is handed over now (the lock held): the pace counts from here. */
static void
handed_over(rt_ChangeFeed *self)
{
    self->wakeups++;
    if (self->batch_ns != 0) {
        self->last_batch_ns = monotonic_ns();
    }
}

/* Let the changes of the next `ns` gather (the lock not held): sleep on the
 * control word alone (close, wake and add/remove still end it). */
static void
gather(rt_ChangeFeed *self, uint32_t control, long ns)
{
    struct timespec window = {ns / 1000000000L, ns % 1000000000L};
    syscall(SYS_futex, &self->control, FUTEX_WAIT_PRIVATE, control, &window, NULL, 0);
}

/* The thread of a feed whose consumer watches its eventfd (fileno() was asked for):
 * it signals the eventfd once per batch, then sleeps out the pace, or (no pace) on the
 * control word alone until the consumer takes the batch. */
static void *
feed_thread(void *arg)
{
    rt_ChangeFeed *self = arg;
    pthread_mutex_lock(&self->lock);
    while (!self->stopping) {
        uint32_t control = __atomic_load_n(&self->control, __ATOMIC_ACQUIRE);
        struct rt_futex_waitv waits[RT_FUTEX_WAITV_MAX];
        int count, producers_from = 0, producers_to = 0, left_out = 0;
        long early = paced(self);
        if (early > 0) {
            /* Too soon for the next batch: sleep out the pace. A take() meanwhile need not wake
             * this thread: until then there is nothing to do anyway. */
            pthread_mutex_unlock(&self->lock);
            gather(self, control, early);
            pthread_mutex_lock(&self->lock);
            continue;
        }
        if (self->armed) {
            if (any_ready(self)) {
                self->armed = 0;
                handed_over(self);
                uint64_t one = 1;
                ssize_t written = write(self->efd, &one, sizeof(one));
                (void)written;  /* the counter cannot overflow: the consumer reads it at every take */
                continue;
            }
            count = build_waits(self, waits, control, &producers_from, &producers_to, &left_out);
        }
        else {
            self->waiting_take = 1;  /* take() wakes it */
            count = 0;
            waits[count++] = (struct rt_futex_waitv){control, (uint64_t)(uintptr_t)&self->control,
                                                     RT_FUTEX2_SIZE_U32 | RT_FUTEX2_PRIVATE, 0};
        }
        pthread_mutex_unlock(&self->lock);
        long rc = sleep_on(self, waits, count, control, left_out, NULL);
        pthread_mutex_lock(&self->lock);
        self->waiting_take = 0;
        /* The entry is still there: removing one pokes the control word, and its
         * memory stays mapped while the feed holds it. */
        pass_on(waits, rc, producers_from, producers_to);
    }
    pthread_mutex_unlock(&self->lock);
    return NULL;
}

/* wait() without the thread (nobody asked for the eventfd): the caller's thread
 * sleeps on the words itself, the GIL released. 1: a batch is ready; 0: the
 * timeout passed, or wake() or close(); -1 with an exception (a signal handler). */
static int
wait_inline(rt_ChangeFeed *self, double timeout)
{
    struct timespec deadline;
    if (timeout >= 0) {
        rt_deadline_after(CLOCK_MONOTONIC, timeout, &deadline);
    }
    for (;;) {
        struct rt_futex_waitv waits[RT_FUTEX_WAITV_MAX];
        int producers_from, producers_to, left_out;
        pthread_mutex_lock(&self->lock);
        uint32_t control = __atomic_load_n(&self->control, __ATOMIC_ACQUIRE);
        if (self->closed || self->woken) {
            self->woken = 0;
            pthread_mutex_unlock(&self->lock);
            return 0;
        }
        long early = paced(self);
        int ready = early == 0 && any_ready(self);
        if (ready) {
            handed_over(self);
            pthread_mutex_unlock(&self->lock);
            return 1;
        }
        int count = early > 0 ? 0 : build_waits(self, waits, control, &producers_from, &producers_to, &left_out);
        pthread_mutex_unlock(&self->lock);
        long rc = -1;
        int err = 0;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (timeout >= 0 && (now.tv_sec > deadline.tv_sec
                             || (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec))) {
            return 0;
        }
        if (early > 0) {  /* too soon after the last batch: let the next one gather until it may go */
            if (timeout >= 0) {
                long left = (deadline.tv_sec - now.tv_sec) * 1000000000L + (deadline.tv_nsec - now.tv_nsec);
                early = early < left ? early : left;
            }
            Py_BEGIN_ALLOW_THREADS
            gather(self, control, early);
            Py_END_ALLOW_THREADS
            continue;
        }
        Py_BEGIN_ALLOW_THREADS
        rc = sleep_on(self, waits, count, control, left_out, timeout >= 0 ? &deadline : NULL);
        err = rc < 0 ? errno : 0;
        Py_END_ALLOW_THREADS
        if (rc >= 0) {
            /* The words of entries removed meanwhile may be gone: pass on only under the lock. */
            pthread_mutex_lock(&self->lock);
            if (!self->closed && __atomic_load_n(&self->control, __ATOMIC_ACQUIRE) == control) {
                pass_on(waits, rc, producers_from, producers_to);
            }
            pthread_mutex_unlock(&self->lock);
        }
        if (err == EINTR && PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

static void
release_entry(feed_entry *e)
{
    for (int block = 0; block < 2; block++) {
        if (e->blocks & (1 << block)) {
            __atomic_fetch_sub(&e->acc->notify->waiters[block], 1, __ATOMIC_SEQ_CST);
        }
    }
    e->acc->users--;
    rt_release_view_if_unused(e->acc);
    Py_DECREF(e->acc);
    Py_DECREF(e->key);
}

static int
feed_find(rt_ChangeFeed *self, PyObject *key)
{
    for (int i = 0; i < self->count; i++) {
        int equal = self->entries[i].key == key ? 1 : PyObject_RichCompareBool(self->entries[i].key, key, Py_EQ);
        if (equal != 0) {
            return equal < 0 ? -2 : i;
        }
    }
    return -1;
}

static int
check_open(rt_ChangeFeed *self)
{
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "the change feed is closed");
        return -1;
    }
    return 0;
}

/* add(key, access, blocks=1, wanted=True) */
static PyObject *
ChangeFeed_add(rt_ChangeFeed *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"key", "access", "blocks", "wanted", NULL};
    PyObject *key, *access;
    int blocks = 1, wanted = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!|ip:add", kwlist, &key, &rt_BufferAccessType, &access,
                                     &blocks, &wanted)
        || check_open(self) < 0) {
        return NULL;
    }
    if (blocks < 1 || blocks > 3) {
        PyErr_SetString(PyExc_ValueError, "blocks must be 1 (update), 2 (write) or 3 (both)");
        return NULL;
    }
    rt_BufferAccess *acc = (rt_BufferAccess *)access;
    if (acc->closed || !acc->has_view) {
        return rt_buffer_error(acc, "buffer is closed", NULL);
    }
    int found = feed_find(self, key);
    if (found == -2) {
        return NULL;
    }
    if (found >= 0) {
        PyErr_Format(PyExc_KeyError, "%R is in the feed already", key);
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    if (self->count == self->capacity) {
        int capacity = self->capacity ? self->capacity * 2 : 16;
        feed_entry *grown = PyMem_RawRealloc(self->entries, sizeof(feed_entry) * (size_t)capacity);
        if (grown == NULL) {
            pthread_mutex_unlock(&self->lock);
            return PyErr_NoMemory();
        }
        self->entries = grown;
        self->capacity = capacity;
    }
    feed_entry *e = &self->entries[self->count++];
    *e = (feed_entry){Py_NewRef(key), (rt_BufferAccess *)Py_NewRef(access), blocks, wanted, 1, 0, {0, 0}};
    acc->users++;
    for (int block = 0; block < 2; block++) {
        if (blocks & (1 << block)) {
            __atomic_fetch_add(&acc->notify->waiters[block], 1, __ATOMIC_SEQ_CST);
            e->seen[block] = __atomic_load_n(&acc->notify->seq[block], __ATOMIC_ACQUIRE);
        }
    }
    e->seen_live = is_live(acc);
    pthread_mutex_unlock(&self->lock);
    poke(self);
    Py_RETURN_NONE;
}

/* remove(key) -> bool: whether it was there */
static PyObject *
ChangeFeed_remove(rt_ChangeFeed *self, PyObject *key)
{
    pthread_mutex_lock(&self->lock);
    int found = feed_find(self, key);
    if (found < 0) {
        pthread_mutex_unlock(&self->lock);
        if (found == -2) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    feed_entry gone = self->entries[found];
    self->entries[found] = self->entries[--self->count];
    pthread_mutex_unlock(&self->lock);
    poke(self);  /* the thread sleeps on its words no more */
    release_entry(&gone);
    Py_RETURN_TRUE;
}

/* want(key, wanted) */
static PyObject *
ChangeFeed_want(rt_ChangeFeed *self, PyObject *args)
{
    PyObject *key;
    int wanted;
    if (!PyArg_ParseTuple(args, "Op:want", &key, &wanted)) {
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    int found = feed_find(self, key);
    if (found >= 0) {
        feed_entry *e = &self->entries[found];
        if (wanted && !e->wanted) {
            e->force = 1;  /* its state now, at the next take */
        }
        e->wanted = wanted;
    }
    pthread_mutex_unlock(&self->lock);
    if (found == -2) {
        return NULL;
    }
    if (found == -1) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    poke(self);
    Py_RETURN_NONE;
}

/* refresh(key): hand its state over at the next take(), changed or not */
static PyObject *
ChangeFeed_refresh(rt_ChangeFeed *self, PyObject *key)
{
    pthread_mutex_lock(&self->lock);
    int found = feed_find(self, key);
    if (found >= 0) {
        self->entries[found].force = 1;
    }
    pthread_mutex_unlock(&self->lock);
    if (found == -2) {
        return NULL;
    }
    poke(self);
    return PyBool_FromLong(found >= 0);
}

typedef struct {
    PyObject *key;
    rt_BufferAccess *acc;
    int changed;
    int live;
    int read;
} taken;

/* take() -> list of (key, changed, valid, values, time): every buffer that changed
 * since the last take (or turned valid or invalid, or was asked for). `changed`:
 * the blocks that changed (bit 0 update, bit 1 write); `values` (None when invalid,
 * or when only the write block is followed) and `time` as read_json(access) gives
 * them (a device's last_update; now when it has none; the consumer applies
 * read_state's `previous` rule, as only it knows which states it used). Never
 * blocks on the feed. */
static PyObject *
ChangeFeed_take(rt_ChangeFeed *self, PyObject *unused)
{
    if (check_open(self) < 0) {
        return NULL;
    }
    uint64_t counter;
    ssize_t drained = read(self->efd, &counter, sizeof(counter));
    (void)drained;
    pthread_mutex_lock(&self->lock);
    taken *batch = self->count ? PyMem_RawMalloc(sizeof(taken) * (size_t)self->count) : NULL;
    int n = 0;
    for (int i = 0; batch != NULL && i < self->count; i++) {
        feed_entry *e = &self->entries[i];
        int live;
        int changed = entry_changes(e, &live);
        int validity = live != e->seen_live || e->acc->closed;
        if (!(e->force || validity || (e->wanted && changed))) {
            continue;
        }
        for (int block = 0; block < 2; block++) {
            if (e->blocks & (1 << block)) {
                e->seen[block] = __atomic_load_n(&e->acc->notify->seq[block], __ATOMIC_ACQUIRE);
            }
        }
        int read = (e->blocks & 1) && ((e->wanted && (changed & 1)) || e->force || validity);
        batch[n++] = (taken){Py_NewRef(e->key), (rt_BufferAccess *)Py_NewRef(e->acc), changed, live, read};
        e->acc->users++;
        e->seen_live = live;
        e->force = 0;
    }
    self->armed = 1;
    int waiting = self->started && self->waiting_take;
    pthread_mutex_unlock(&self->lock);
    if (waiting) {
        poke(self);  /* the thread: watch the words again (a thread sleeping out the pace looks then) */
    }
    if (batch == NULL && self->count) {
        return PyErr_NoMemory();
    }
    PyObject *result = PyList_New(0);
    for (int i = 0; i < n; i++) {
        taken *t = &batch[i];
        PyObject *state = NULL;
        if (result != NULL) {
            if (t->read && t->live && !t->acc->closed) {
                state = read_json_state(t->acc, 0.0);
                if (state == NULL && PyErr_ExceptionMatches(rt_DeviceBufferError)) {
                    PyErr_Clear();  /* closed, or its lock stuck: invalid for now, looked at again */
                    state = Py_BuildValue("OOd", Py_False, Py_None, wall_clock());
                }
            }
            else {  /* invalid, or the write block only: its validity */
                state = Py_BuildValue("OOd", t->live ? Py_True : Py_False, Py_None, wall_clock());
            }
        }
        if (state != NULL) {
            PyObject *item = Py_BuildValue("(OiOOO)", t->key, t->changed, PyTuple_GET_ITEM(state, 0),
                                           PyTuple_GET_ITEM(state, 1), PyTuple_GET_ITEM(state, 2));
            Py_DECREF(state);
            if (item == NULL || PyList_Append(result, item) < 0) {
                Py_CLEAR(result);
            }
            Py_XDECREF(item);
        }
        else {
            Py_CLEAR(result);
        }
        t->acc->users--;
        rt_release_view_if_unused(t->acc);
        Py_DECREF(t->acc);
        Py_DECREF(t->key);
    }
    PyMem_RawFree(batch);
    return result;
}

/* wait(timeout=None) -> bool: sleep (the GIL released) until a batch is ready */
static PyObject *
ChangeFeed_wait(rt_ChangeFeed *self, PyObject *const *args, Py_ssize_t nargs)
{
    double timeout;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "wait(timeout=None)");
        return NULL;
    }
    if (check_open(self) < 0
        || rt_parse_timeout(nargs ? args[0] : NULL, RT_TIMEOUT_NONE | RT_TIMEOUT_CLAMP, -1.0, &timeout) < 0) {
        return NULL;
    }
    if (!self->started) {
        int ready = wait_inline(self, timeout);
        return ready < 0 ? NULL : PyBool_FromLong(ready);
    }
    struct pollfd fd = {self->efd, POLLIN, 0};
    int rc;
    for (;;) {
        int ms = timeout < 0 ? -1 : (int)ceil(timeout * 1000.0);
        Py_BEGIN_ALLOW_THREADS
        rc = poll(&fd, 1, ms);
        Py_END_ALLOW_THREADS
        if (rc >= 0 || errno != EINTR) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    if (rc < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(rc > 0 && !self->closed);
}

static void
feed_stop(rt_ChangeFeed *self)
{
    if (self->started) {
        pthread_mutex_lock(&self->lock);
        self->stopping = 1;
        pthread_mutex_unlock(&self->lock);
        poke(self);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->thread, NULL);
        Py_END_ALLOW_THREADS
        self->started = 0;
    }
    while (self->count > 0) {
        feed_entry gone = self->entries[--self->count];
        release_entry(&gone);
    }
}

/* close(): stop the thread, let go of every buffer, and wake the wait() calls (they
 * return False). The eventfd stays open until the feed is freed: a thread still in
 * poll() on it sees it readable, never a number reused by another file. */
static PyObject *
ChangeFeed_close(rt_ChangeFeed *self, PyObject *unused)
{
    if (!self->closed) {
        self->closed = 1;
        feed_stop(self);
        poke(self);  /* a wait() sleeping on the words itself */
        uint64_t one = 1;
        ssize_t written = write(self->efd, &one, sizeof(one));
        (void)written;
    }
    Py_RETURN_NONE;
}

/* wake(): make a wait() (or the eventfd) return, batch or not */
static PyObject *
ChangeFeed_wake(rt_ChangeFeed *self, PyObject *unused)
{
    if (check_open(self) < 0) {
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    self->woken = 1;
    pthread_mutex_unlock(&self->lock);
    poke(self);
    uint64_t one = 1;
    ssize_t written = write(self->efd, &one, sizeof(one));
    (void)written;
    Py_RETURN_NONE;
}

/* fileno(): the eventfd, readable while a batch is ready. The first call starts the
 * feed's thread, which sleeps on the buffers from then on (wait() then polls it). */
static PyObject *
ChangeFeed_fileno(rt_ChangeFeed *self, PyObject *unused)
{
    if (check_open(self) < 0) {
        return NULL;
    }
    if (!self->started) {
        int rc = pthread_create(&self->thread, NULL, feed_thread, self);
        if (rc != 0) {
            errno = rc;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        pthread_setname_np(self->thread, "runtime-feed");  /* as top and /proc show it, from now on */
        self->started = 1;
    }
    return PyLong_FromLong(self->efd);
}

/* ChangeFeed(batch=0.0) */
static PyObject *
ChangeFeed_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"batch", NULL};
    double batch = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|d:ChangeFeed", kwlist, &batch)) {
        return NULL;
    }
    if (!(batch >= 0.0 && batch <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "batch must be 0 to 1 seconds");
        return NULL;
    }
    rt_ChangeFeed *self = (rt_ChangeFeed *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->efd < 0) {
        Py_DECREF(self);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_mutex_init(&self->lock, NULL);
    self->armed = 1;
    self->batch_ns = (long)(batch * 1e9);
    return (PyObject *)self;
}

static void
ChangeFeed_dealloc(rt_ChangeFeed *self)
{
    if (!self->closed) {
        self->closed = 1;
        feed_stop(self);
    }
    if (self->efd >= 0) {
        close(self->efd);
    }
    PyMem_RawFree(self->entries);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
ChangeFeed_len(rt_ChangeFeed *self, void *closure)
{
    return PyLong_FromLong(self->count);
}

static PyObject *
ChangeFeed_wakeups(rt_ChangeFeed *self, void *closure)
{
    pthread_mutex_lock(&self->lock);
    unsigned long wakeups = self->wakeups;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromUnsignedLong(wakeups);
}

static PyObject *
ChangeFeed_running(rt_ChangeFeed *self, void *closure)
{
    return PyBool_FromLong(self->started);
}

static PyMethodDef ChangeFeed_methods[] = {
    {"add", (PyCFunction)(void (*)(void))ChangeFeed_add, METH_VARARGS | METH_KEYWORDS,
     "add(key, access, blocks=1, wanted=True): follow a buffer (its state is handed over at the next take)."},
    {"remove", (PyCFunction)ChangeFeed_remove, METH_O, "remove(key) -> bool: follow it no more."},
    {"want", (PyCFunction)ChangeFeed_want, METH_VARARGS,
     "want(key, wanted): whether its value changes are wanted (else only its validity changes)."},
    {"refresh", (PyCFunction)ChangeFeed_refresh, METH_O, "refresh(key) -> bool: hand its state over at the next take."},
    {"take", (PyCFunction)ChangeFeed_take, METH_NOARGS,
     "take() -> list of (key, changed blocks, valid, values, time) of the buffers that changed."},
    {"wait", (PyCFunction)(void (*)(void))ChangeFeed_wait, METH_FASTCALL,
     "wait(timeout=None) -> bool: sleep until a batch of changes is ready to take."},
    {"wake", (PyCFunction)ChangeFeed_wake, METH_NOARGS,
     "wake(): make wait() return (False; True with the eventfd, whose take() may be empty)."},
    {"fileno", (PyCFunction)ChangeFeed_fileno, METH_NOARGS, "The eventfd readable while a batch is ready."},
    {"close", (PyCFunction)ChangeFeed_close, METH_NOARGS, "Stop the thread and let go of every buffer."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ChangeFeed_getset[] = {
    {"count", (getter)ChangeFeed_len, NULL, "Buffers followed.", NULL},
    {"wakeups", (getter)ChangeFeed_wakeups, NULL, "Times the consumer was signalled so far.", NULL},
    {"running", (getter)ChangeFeed_running, NULL, "Whether its thread runs (once fileno() was asked for).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject rt_ChangeFeedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._core.ChangeFeed",
    .tp_basicsize = sizeof(rt_ChangeFeed),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ChangeFeed(batch=0.0)\n\nOne thread sleeping on many buffers; the consumer is woken once per batch "
              "(at most one batch per `batch` seconds: a change after a quiet moment at once).",
    .tp_methods = ChangeFeed_methods,
    .tp_getset = ChangeFeed_getset,
    .tp_new = ChangeFeed_new,
    .tp_dealloc = (destructor)ChangeFeed_dealloc,
};

static PyMethodDef feed_functions[] = {
    {"read_json", (PyCFunction)core_read_json, METH_VARARGS,
     "read_json(access, previous=0.0) -> (valid, values | None, time): the readable values as JSON data."},
    {"short_float32", (PyCFunction)core_short_float32, METH_O,
     "short_float32(value) -> float | None: the shortest decimal that reads back as the same float32."},
    {NULL, NULL, 0, NULL},
};

int
rt_feed_module_init(PyObject *module)
{
    if (PyType_Ready(&rt_ChangeFeedType) < 0
        || PyModule_AddObjectRef(module, "ChangeFeed", (PyObject *)&rt_ChangeFeedType) < 0
        || PyModule_AddFunctions(module, feed_functions) < 0) {
        return -1;
    }
    return 0;
}
