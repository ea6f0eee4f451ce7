/*
 * The relay: one thread outside the interpreter copies bytes both ways
 * between pairs of connected sockets (runtime.live.gate's connections, once
 * their handshake was let through, to the Foxglove server). A message costs
 * an epoll wake, a recv and a send here, and nothing of Python.
 *
 * Each pair has a buffer per direction (RELAY_BUFFER bytes): a side that does
 * not read makes the other side's bytes wait in the kernel (backpressure, not
 * memory). A pair ends when either side ends (end of file, reset, an error)
 * once the bytes it sent before are passed on (or cannot be): both sockets are
 * closed. The relay owns the descriptors given to add() from then on.
 */
#include "core.h"

#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define RELAY_BUFFER 65536
#define RELAY_EVENTS 64

typedef struct relay_pair {
    int fd[2];
    char *buf[2];       /* buf[d]: bytes read from fd[d], to write to fd[1 - d] */
    size_t start[2], end[2];
    int eof[2];         /* fd[d] ended (nothing more to read from it) */
    uint32_t mask[2];   /* the epoll interest registered for fd[d] */
    long tag;
    int done;
    struct relay_pair *next;
} relay_pair;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;  /* the pairs; never held across a Python call */
    relay_pair *pairs;
    int count;
    int epfd, efd;
    int stopping;
    int started;
    int closed;
    pthread_t thread;
} rt_Relay;

static void
pair_free(relay_pair *p)
{
    for (int d = 0; d < 2; d++) {
        if (p->fd[d] >= 0) {
            close(p->fd[d]);
        }
        free(p->buf[d]);
    }
    free(p);
}

/* The interest fd[i] needs: readable while its buffer has room, writable while the other's bytes wait. */
static uint32_t
wanted_mask(const relay_pair *p, int i)
{
    uint32_t mask = 0;
    if (!p->eof[i] && p->end[i] < RELAY_BUFFER) {
        mask |= EPOLLIN;
    }
    if (p->start[1 - i] < p->end[1 - i]) {
        mask |= EPOLLOUT;
    }
    return mask;
}

/* Pass bytes along in both directions as far as the sockets allow (the lock held). */
static void
pair_step(rt_Relay *self, relay_pair *p, int hangup)
{
    for (int d = 0; d < 2 && !p->done; d++) {
        for (;;) {
            while (p->start[d] < p->end[d]) {
                ssize_t n = send(p->fd[1 - d], p->buf[d] + p->start[d], p->end[d] - p->start[d],
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n > 0) {
                    p->start[d] += (size_t)n;
                } else if (n < 0 && errno == EINTR) {
                    continue;
                } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                    break;
                } else {
                    p->done = 1; /* the receiving side is gone */
                    return;
                }
            }
            if (p->start[d] < p->end[d] || p->eof[d]) {
                break; /* the receiver is full, or nothing more comes */
            }
            p->start[d] = p->end[d] = 0;
            ssize_t n = recv(p->fd[d], p->buf[d] + p->end[d], RELAY_BUFFER - p->end[d], MSG_DONTWAIT);
            if (n > 0) {
                p->end[d] += (size_t)n;
            } else if (n == 0) {
                p->eof[d] = 1;
            } else if (errno == EINTR) {
                continue;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            } else {
                p->eof[d] = 1; /* reset: what it sent before is still passed on */
            }
        }
    }
    for (int d = 0; d < 2; d++) {
        if (p->eof[d] && p->start[d] == p->end[d]) {
            p->done = 1; /* one side ended and its bytes are passed on: the pair is over */
        }
    }
    if (hangup) {
        p->done = 1; /* reset or shut both ways: what could be passed on was, just now */
    }
    if (p->done) {
        return;
    }
    for (int i = 0; i < 2; i++) {
        uint32_t mask = wanted_mask(p, i);
        if (mask != p->mask[i]) {
            struct epoll_event event = {.events = mask, .data.ptr = p};
            if (epoll_ctl(self->epfd, EPOLL_CTL_MOD, p->fd[i], &event) < 0) {
                p->done = 1;
                return;
            }
            p->mask[i] = mask;
        }
    }
}

/* Close and free the pairs that ended (the lock held). */
static void
sweep(rt_Relay *self)
{
    relay_pair **link = &self->pairs;
    while (*link != NULL) {
        relay_pair *p = *link;
        if (p->done) {
            *link = p->next;
            self->count--;
            pair_free(p); /* closing a descriptor takes it out of the epoll set */
        } else {
            link = &p->next;
        }
    }
}

static void *
relay_thread(void *arg)
{
    rt_Relay *self = arg;
    struct epoll_event events[RELAY_EVENTS];
    for (;;) {
        int n = epoll_wait(self->epfd, events, RELAY_EVENTS, -1);
        if (n < 0 && errno != EINTR) {
            break;
        }
        pthread_mutex_lock(&self->lock);
        if (self->stopping) {
            pthread_mutex_unlock(&self->lock);
            break;
        }
        for (int i = 0; i < n; i++) {
            relay_pair *p = events[i].data.ptr;
            if (p == NULL) {
                uint64_t ignored;
                (void)!read(self->efd, &ignored, sizeof(ignored));
                continue;
            }
            if (!p->done) {
                pair_step(self, p, (events[i].events & (EPOLLHUP | EPOLLERR)) != 0);
            }
        }
        sweep(self); /* after the batch: a later event of it may name a pair that ended */
        pthread_mutex_unlock(&self->lock);
    }
    return NULL;
}

static int
check_open(rt_Relay *self)
{
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "the relay is closed");
        return -1;
    }
    return 0;
}

/* add(a, b, tag): relay between the connected sockets a and b (the relay's from now on, even if this raises). */
static PyObject *
Relay_add(rt_Relay *self, PyObject *args)
{
    int a, b;
    long tag;
    if (!PyArg_ParseTuple(args, "iil:add", &a, &b, &tag)) {
        return NULL;
    }
    relay_pair *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        close(a);
        close(b);
        return PyErr_NoMemory();
    }
    p->fd[0] = a;
    p->fd[1] = b;
    p->tag = tag;
    p->buf[0] = malloc(RELAY_BUFFER);
    p->buf[1] = malloc(RELAY_BUFFER);
    if (p->buf[0] == NULL || p->buf[1] == NULL) {
        pair_free(p);
        return PyErr_NoMemory();
    }
    if (check_open(self) < 0) {
        pair_free(p);
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    int failed = 0;
    for (int i = 0; i < 2 && !failed; i++) {
        p->mask[i] = EPOLLIN;
        struct epoll_event event = {.events = EPOLLIN, .data.ptr = p};
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, p->fd[i], &event) < 0) {
            failed = errno;
            if (i == 1) {
                epoll_ctl(self->epfd, EPOLL_CTL_DEL, p->fd[0], NULL);
            }
        }
    }
    if (!failed) {
        p->next = self->pairs;
        self->pairs = p;
        self->count++;
        if (!self->started) {
            failed = pthread_create(&self->thread, NULL, relay_thread, self);
            if (failed) {
                self->pairs = p->next;
                self->count--;
                epoll_ctl(self->epfd, EPOLL_CTL_DEL, p->fd[0], NULL);
                epoll_ctl(self->epfd, EPOLL_CTL_DEL, p->fd[1], NULL);
            } else {
                self->started = 1;
                pthread_setname_np(self->thread, "runtime-relay");  /* as top and /proc show it */
            }
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (failed) {
        pair_free(p);
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* active() -> list of the tags of the pairs still relaying */
static PyObject *
Relay_active(rt_Relay *self, PyObject *unused)
{
    pthread_mutex_lock(&self->lock);
    long *found = malloc(sizeof(long) * (size_t)(self->count + 1));
    int count = 0;
    for (relay_pair *p = self->pairs; found != NULL && p != NULL; p = p->next) {
        if (!p->done) {
            found[count++] = p->tag;
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (found == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *tags = PyList_New(count);
    for (int i = 0; tags != NULL && i < count; i++) {
        PyObject *tag = PyLong_FromLong(found[i]);
        if (tag == NULL) {
            Py_CLEAR(tags);
            break;
        }
        PyList_SET_ITEM(tags, i, tag);
    }
    free(found);
    return tags;
}

static void
relay_stop(rt_Relay *self)
{
    pthread_mutex_lock(&self->lock);
    self->stopping = 1;
    int started = self->started;
    pthread_mutex_unlock(&self->lock);
    if (started) {
        uint64_t one = 1;
        (void)!write(self->efd, &one, sizeof(one));
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->thread, NULL);
        Py_END_ALLOW_THREADS
        self->started = 0;
    }
    while (self->pairs != NULL) {
        relay_pair *p = self->pairs;
        self->pairs = p->next;
        pair_free(p);
    }
    self->count = 0;
}

static PyObject *
Relay_close(rt_Relay *self, PyObject *unused)
{
    if (!self->closed) {
        self->closed = 1;
        relay_stop(self);
    }
    Py_RETURN_NONE;
}

static PyObject *
Relay_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":Relay", keywords)) {
        return NULL;
    }
    rt_Relay *self = (rt_Relay *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    pthread_mutex_init(&self->lock, NULL);
    self->epfd = self->efd = -1;
    self->closed = 1; /* until both descriptors exist: dealloc then stops nothing */
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};
    if (self->epfd < 0 || self->efd < 0 || epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->efd, &event) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    self->closed = 0;
    return (PyObject *)self;
}

static void
Relay_dealloc(rt_Relay *self)
{
    if (!self->closed) {
        self->closed = 1;
        relay_stop(self);
    }
    if (self->efd >= 0) {
        close(self->efd);
    }
    if (self->epfd >= 0) {
        close(self->epfd);
    }
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Relay_count(rt_Relay *self, void *closure)
{
    pthread_mutex_lock(&self->lock);
    int count = 0;
    for (relay_pair *p = self->pairs; p != NULL; p = p->next) {
        count += !p->done;
    }
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromLong(count);
}

static PyMethodDef Relay_methods[] = {
    {"add", (PyCFunction)Relay_add, METH_VARARGS,
     "add(a, b, tag): relay between two connected sockets (descriptors the relay owns from now on)."},
    {"active", (PyCFunction)Relay_active, METH_NOARGS, "active() -> list: the tags of the pairs still relaying."},
    {"close", (PyCFunction)Relay_close, METH_NOARGS, "Stop the thread and close every pair's sockets."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Relay_getset[] = {
    {"count", (getter)Relay_count, NULL, "Pairs still relaying.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject rt_RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._core.Relay",
    .tp_basicsize = sizeof(rt_Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Relay()\n\nOne thread outside the interpreter copying bytes both ways between pairs of sockets.",
    .tp_methods = Relay_methods,
    .tp_getset = Relay_getset,
    .tp_new = Relay_new,
    .tp_dealloc = (destructor)Relay_dealloc,
};

int
rt_relay_module_init(PyObject *module)
{
    if (PyType_Ready(&rt_RelayType) < 0 || PyModule_AddObjectRef(module, "Relay", (PyObject *)&rt_RelayType) < 0) {
        return -1;
    }
    return 0;
}
