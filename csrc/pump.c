/*
 * The frame pump: the bridge's per-frame path, in a reader thread and a
 * writer thread that never take the GIL.
 *
 * The bridge adds each serial port's descriptor to a FramePump. The pump's
 * thread waits for all of them with epoll, reads what arrives, cuts it into
 * frames at the 0x00 delimiters and handles the frames that make up nearly
 * all the traffic itself:
 *
 *   DEV_DATA  decoded, checked against the device's layout and copied into
 *             its buffer (as DeviceBuffer.update does), once Python attached
 *             the buffer to the port;
 *   HB_REQ    answered with HB_RES;
 *   HB_RES    noted (the device is alive).
 *
 * Every other frame (SUB_RES, ERROR, a frame that does not decode or does not
 * fit the device) is queued for Python whole, and the pump's event descriptor
 * becomes readable: the bridge handles those frames exactly as before,
 * through Message.decode. With `forward_all` (the bridge's --verbose) Python also gets a copy of every
 * frame the thread handled or sent, to log it.
 *
 * Each port has its own share of the queue for Python (`port_events` frames,
 * PUMP_PORT_EVENT_LIMIT unless told, and room of its own for the copies and
 * for the pump's own reports): a port that floods frames for Python fills
 * only its share, and its surplus is dropped and counted on that port alone,
 * so that no other port's frame is dropped, or waits behind more than the
 * other ports' shares (a few milliseconds of Python).
 *
 * A second thread, the writer, sends what the buffers' writers ask without
 * Python either (serve_writes): it sleeps with futex_waitv on the write-block
 * sequence words, takes the pending reads and writes with the lock only
 * tried, and sends DEV_READ/DEV_WRITE as emit_dev_rw packs them, at most one
 * batch per write_interval (see "the writer thread" below).
 *
 * Writes the bridge wants confirmed are watched here too (the writer's own,
 * or watch_writes for frames Python sent): a DEV_DATA reporting the value
 * written settles a write, and so does one reporting a value the device
 * could not have reported without seeing it. The writer resends the others
 * at their deadline and reports those it gave up on; Python may also collect
 * the settled ones itself (settled).
 *
 * The bridge never waits for a buffer's lock: values that find it taken
 * (after a spin of a few microseconds) are staged, the newest per parameter,
 * and applied as soon as it frees; the stall is reported to Python, which
 * logs it. Writes to a port go through the pump too (send), so the replies
 * of the thread and the frames of Python never interleave: what a full port
 * does not take is queued and flushed when epoll says it is writable.
 *
 * One mutex guards the pump's state; Python's calls take it briefly, with the
 * GIL held. The threads never need the GIL, so none of them deadlock.
 */
#include "seqlock.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PUMP_READ_SIZE 4096
#define PUMP_MAX_EVENTS 64
#define PUMP_PORT_EVENT_LIMIT 64      /* default share: frames (FRAME, OVERFLOW) a port has queued for
                                         Python before its new ones are dropped (counted on that port) */
#define PUMP_PORT_EVENT_MAX 65536     /* the largest share one may ask for */
#define PUMP_PORT_COPY_FACTOR 4       /* forward_all copies (SEEN, SENT) a port may have queued: 4 shares */
#define PUMP_PORT_REPORT_LIMIT 64     /* the pump's own reports per port (LOST, STALL, UNSTALL, RECOVERED):
                                         at most one LOST, the others a few per stall */
#define PUMP_EVENT_INITIAL 1024       /* the queue's first capacity; it grows as the ports' shares need */
#define PUMP_OUTBOX_LIMIT (64 * 1024) /* bytes queued per port before new frames are dropped */
#define PUMP_EMPTY_READS_LIMIT 100    /* readable events in a row with no bytes before a port counts as gone */
#define PUMP_STALL_RETRY 0.005        /* seconds between attempts to apply staged values */
#define PUMP_STALL_REPORT 1.0         /* seconds between two reports of one stall */
#define PUMP_LOCK_SPIN 20e-6          /* seconds the thread spins on a taken buffer lock before staging */
#define PUMP_CONTROL_ID UINT64_MAX    /* epoll tag of the control eventfd */
#define PUMP_WRITE_POLL 0.002         /* seconds between looks at write blocks futex_waitv cannot watch
                                         (more ports than it takes, or a kernel without it) */
#define PUMP_RETRIES_MAX 255          /* the most resends of one write one may ask for */
#define PUMP_KNOWN_COMMANDERS 64      /* commanders Python may name as checked, per port */

enum pump_event_kind {
    PUMP_FRAME = 1,    /* a frame for Python (bytes) */
    PUMP_OVERFLOW = 2, /* bytes too long for any frame were dropped (None) */
    PUMP_LOST = 3,     /* the port failed: read error, hang-up, write error (str) */
    PUMP_STALL = 4,    /* the buffer's lock was taken: values staged (float: seconds so far) */
    PUMP_UNSTALL = 5,  /* the staged values were applied (float: seconds the stall lasted) */
    PUMP_RECOVERED = 6, /* internal: the lock's owner had died (reported through the buffer, not returned) */
    PUMP_SEEN = 7,      /* forward_all: a copy of a frame handled here (bytes) */
    PUMP_SENT = 8,      /* forward_all: a copy of a frame sent from here (bytes) */
    PUMP_COMMANDER = 9, /* the buffer has a commander Python has not checked: writes wait (None) */
    PUMP_DISABLED = 10, /* the buffer's disabled flag changed (float: the flag) */
    PUMP_GAVE_UP = 11,  /* writes no DEV_DATA confirmed after the last resend (bytes: a DEV_WRITE frame
                           of their values; float: the resends) */
    PUMP_PACK_ERROR = 12 /* pending writes could not be packed into DEV_WRITE (str) */
};

#define PUMP_STALE_VALUES 4  /* values remembered per watched write that do not confirm it */
#define PUMP_VALUE_SIZE 8    /* widest scalar parameter */

typedef struct {
    uint32_t port;
    uint8_t kind;
    uint16_t length;
    double value;
    uint8_t data[RT_MAX_ENCODING];
} pump_event;

typedef struct {
    int fd;                  /* -1: slot free */
    uint32_t generation;     /* bumped when the slot is freed: stale epoll events are ignored */
    int failed;              /* lost: no more reading or writing */
    /* input */
    uint8_t tail[RT_MAX_ENCODING];
    Py_ssize_t tail_length;
    int discarding;          /* inside a frame too long for any message */
    int empty_reads;
    /* output */
    uint8_t *outbox;
    size_t out_length, out_capacity;
    int watching_out;
    /* the buffer (NULL until attached) */
    PyObject *access;
    const rt_layout *layout;
    uint8_t *stage;          /* staged values, at the layout's offsets */
    uint64_t staged;         /* IDs staged and not yet applied (the stage always holds the newest values) */
    /* writes to confirm */
    uint32_t watching;       /* IDs whose write waits for a DEV_DATA to settle it */
    uint32_t settled;        /* IDs settled since Python last asked */
    uint8_t written[RT_MAX_PARAMS][PUMP_VALUE_SIZE];
    uint8_t stale[RT_MAX_PARAMS][PUMP_STALE_VALUES][PUMP_VALUE_SIZE];
    uint8_t stale_count[RT_MAX_PARAMS];
    double stalled_since;    /* monotonic; 0: not stalled */
    double stall_reported;
    /* this port's events queued for Python (see PUMP_PORT_EVENT_LIMIT) */
    uint32_t queued_frames, queued_copies, queued_reports;
    /* counters */
    uint64_t messages_in, messages_out, lock_stalls, events_dropped, writes_resent;
    double last_rx;          /* monotonic time of the last message handled here */
    /* the writer thread's side (serve_writes; the rest of this block is 0 until then) */
    int serving_writes;
    int registered;          /* counted in the buffer's waiters[RT_WRITE_BLOCK]: the writer thread sleeps
                                on its word (writers then make the wake call; not while held back) */
    rt_BufferAccess *acc;    /* the attached access, for its words */
    double write_interval;   /* seconds between two batches */
    uint32_t write_seen;     /* the write block's sequence word when last looked at */
    int write_due;           /* a change of the write block not taken yet */
    int urgent;              /* send_writes_now: the next batch goes regardless of write_interval */
    int recheck;             /* look at the command words again (commanders_checked) */
    int write_busy;          /* the buffer's lock was taken at the last attempt (counted once a streak) */
    double next_batch;       /* monotonic: no batch before (write_interval) */
    double retry_at;         /* monotonic: when to try a taken lock again */
    uint8_t *wblock;         /* the write block as last taken (layout span) */
    uint8_t *rblock;         /* the values being confirmed, at the layout's offsets (resends) */
    rt_pack_cache packing;
    uint32_t confirm;        /* IDs whose writes a DEV_DATA confirms */
    int sub_confirmed;       /* resends count only while the subscription is confirmed */
    int retries;
    double confirm_timeout;
    double deadline[RT_MAX_PARAMS];
    uint8_t resends[RT_MAX_PARAMS];
    uint32_t disabled_seen;  /* the disabled flag as last reported */
    int commander_waiting;   /* a new commander was reported: no batch until commanders_checked */
    uint64_t known[PUMP_KNOWN_COMMANDERS];  /* commanders Python checked (commanders_checked) */
    int known_count;
} pump_port;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_t thread;
    int thread_started;
    pthread_t writer;
    int writer_started;
    uint32_t writer_word;    /* process-private futex word: bumped to wake the writer thread */
    int stopping;
    int epoll_fd, control_fd, event_fd;
    int forward_all;
    uint32_t port_events;    /* each port's share of frames queued for Python */
    pump_port *ports;
    Py_ssize_t port_count;
    pump_event *events;
    Py_ssize_t event_count, event_capacity;
    int notified;            /* event_fd was signalled and events not yet taken */
} FramePump;

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t
port_tag(Py_ssize_t index, uint32_t generation)
{
    return ((uint64_t)generation << 32) | (uint64_t)index;
}

/* ---- events for Python (the lock is held) -------------------------------- */

static void
post(FramePump *pump, Py_ssize_t index, int kind, const uint8_t *data, Py_ssize_t length, double value)
{
    pump_port *port = &pump->ports[index];
    uint32_t *queued, limit;
    if (kind == PUMP_FRAME || kind == PUMP_OVERFLOW) {
        queued = &port->queued_frames;
        limit = pump->port_events;
    }
    else if (kind == PUMP_SEEN || kind == PUMP_SENT) {
        queued = &port->queued_copies;
        limit = PUMP_PORT_COPY_FACTOR * pump->port_events;
    }
    else {
        queued = &port->queued_reports;
        limit = PUMP_PORT_REPORT_LIMIT;
    }
    if (*queued >= limit) {
        port->events_dropped++;  /* this port's surplus: no other port's share is touched */
        return;
    }
    if (pump->event_count == pump->event_capacity) {
        Py_ssize_t capacity = pump->event_capacity * 2;
        pump_event *grown = PyMem_RawRealloc(pump->events, (size_t)capacity * sizeof(pump_event));
        if (grown == NULL) {
            port->events_dropped++;
            return;
        }
        pump->events = grown;
        pump->event_capacity = capacity;
    }
    (*queued)++;
    pump_event *event = &pump->events[pump->event_count++];
    event->port = (uint32_t)index;
    event->kind = (uint8_t)kind;
    event->value = value;
    if (length > RT_MAX_ENCODING) {
        length = RT_MAX_ENCODING;
    }
    event->length = (uint16_t)length;
    if (length > 0) {
        memcpy(event->data, data, (size_t)length);
    }
    if (!pump->notified) {
        pump->notified = 1;
        uint64_t one = 1;
        ssize_t ignored = write(pump->event_fd, &one, sizeof(one));
        (void)ignored;
    }
}

static void
post_text(FramePump *pump, Py_ssize_t index, int kind, const char *text)
{
    post(pump, index, kind, (const uint8_t *)text, (Py_ssize_t)strlen(text), 0.0);
}

/* ---- output (the lock is held) ------------------------------------------- */

static void
set_watch(FramePump *pump, Py_ssize_t index, int out)
{
    pump_port *port = &pump->ports[index];
    if (port->watching_out == out || port->fd < 0) {
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u64 = port_tag(index, port->generation)};
    if (epoll_ctl(pump->epoll_fd, EPOLL_CTL_MOD, port->fd, &ev) == 0) {
        port->watching_out = out;
    }
}

static void
lose(FramePump *pump, Py_ssize_t index, const char *reason)
{
    pump_port *port = &pump->ports[index];
    if (port->failed) {
        return;
    }
    port->failed = 1;
    port->out_length = 0;
    epoll_ctl(pump->epoll_fd, EPOLL_CTL_DEL, port->fd, NULL);
    port->watching_out = 0;
    post_text(pump, index, PUMP_LOST, reason);
}

/* Lose the port for a failed system call: "read error: <what errno says>". */
static void
lose_errno(FramePump *pump, Py_ssize_t index, const char *what, int err)
{
    char reason[128];
    snprintf(reason, sizeof(reason), "%s: %s", what, strerror(err));
    lose(pump, index, reason);
}

/* Write what the port takes now, queue the rest. Returns 1 sent or queued,
 * 0 dropped (queue full, or the port failed), -errno on a write error. */
static int
send_bytes(FramePump *pump, Py_ssize_t index, const uint8_t *data, size_t length)
{
    pump_port *port = &pump->ports[index];
    if (port->failed) {
        return 0;
    }
    size_t written = 0;
    if (port->out_length == 0) {
        while (written < length) {
            ssize_t n = write(port->fd, data + written, length - written);
            if (n >= 0) {
                written += (size_t)n;
                continue;
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                break;
            }
            return -errno;
        }
        if (written == length) {
            return 1;
        }
    }
    else if (port->out_length + length > PUMP_OUTBOX_LIMIT) {
        return 0;
    }
    size_t rest = length - written;
    if (port->out_length + rest > port->out_capacity) {
        size_t capacity = port->out_capacity ? port->out_capacity : 1024;
        while (capacity < port->out_length + rest) {
            capacity *= 2;
        }
        uint8_t *grown = realloc(port->outbox, capacity);
        if (grown == NULL) {
            return 0;
        }
        port->outbox = grown;
        port->out_capacity = capacity;
    }
    memcpy(port->outbox + port->out_length, data + written, rest);
    port->out_length += rest;
    set_watch(pump, index, 1);
    return 1;
}

static void
flush(FramePump *pump, Py_ssize_t index)
{
    pump_port *port = &pump->ports[index];
    size_t written = 0;
    while (written < port->out_length) {
        ssize_t n = write(port->fd, port->outbox + written, port->out_length - written);
        if (n >= 0) {
            written += (size_t)n;
            continue;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN) {
            break;
        }
        lose_errno(pump, index, "write error", errno);
        return;
    }
    memmove(port->outbox, port->outbox + written, port->out_length - written);
    port->out_length -= written;
    if (port->out_length == 0) {
        set_watch(pump, index, 0);
    }
}

/* ---- frames (the lock is held) ------------------------------------------- */

/* Decode a COBS frame into `raw` as Message.decode would accept it; returns
 * the message length (type, length, payload, checksum) or -1 when Python must
 * look at it (it will find the exact problem). */
static Py_ssize_t
decode(const uint8_t *frame, Py_ssize_t length, uint8_t *raw)
{
    if (length > RT_MAX_ENCODING) {
        return -1;
    }
    Py_ssize_t n = rt_cobs_decode(frame, length, raw, RT_MAX_MESSAGE);
    if (n < 3 || (Py_ssize_t)raw[1] + 3 != n) {
        return -1;
    }
    uint8_t checksum = 0;
    for (Py_ssize_t i = 0; i < n - 1; i++) {
        checksum ^= raw[i];
    }
    return checksum == raw[n - 1] ? n : -1;
}

/* The params bitmap of a DEV_DATA payload that fits `layout` exactly, or -1. */
static int
fitting_params(const uint8_t *payload, int length, const rt_layout *layout)
{
    if (length < 2) {
        return -1;
    }
    uint16_t params = (uint16_t)(payload[0] | (payload[1] << 8));
    int size = 2;
    for (int i = 0; i < RT_MAX_PARAMS; i++) {
        if (params & (1u << i)) {
            if (i >= layout->count || layout->widths[i] == 0) {
                return -1;
            }
            size += (int)layout->widths[i];
        }
    }
    return size == length ? params : -1;
}

/* A DEV_DATA reports `value` for watched parameter `id`: the write is
 * settled unless the value is one the device may report without having seen
 * it (what it reported before, or a write this one replaced). */
static void
settle(pump_port *port, int id, const uint8_t *value, size_t width)
{
    if (memcmp(value, port->written[id], width) != 0) {
        for (int k = 0; k < port->stale_count[id]; k++) {
            if (memcmp(value, port->stale[id][k], width) == 0) {
                return;
            }
        }
    }
    port->watching &= ~(1u << id);
    port->settled |= 1u << id;
}

/* Watch the write of `value` to parameter `id` just sent: a DEV_DATA settles
 * it (settle). The lock is held. */
static void
watch_value(pump_port *port, int id, const uint8_t *value)
{
    size_t width = (size_t)port->layout->widths[id];
    if (width > PUMP_VALUE_SIZE) {
        return;
    }
    /* What the device may still report without having seen this write: the write it replaces (if
     * that one is still unsettled, with its own stale values), or else the value reported last. */
    uint8_t (*stale)[PUMP_VALUE_SIZE] = port->stale[id];
    uint8_t *count = &port->stale_count[id];
    if (!(port->watching & (1u << id))) {
        *count = 0;
    }
    const uint8_t *previous = (port->watching & (1u << id)) ? port->written[id] : port->stage + port->layout->offsets[id];
    if (*count == PUMP_STALE_VALUES) {
        memmove(stale[0], stale[1], (PUMP_STALE_VALUES - 1) * PUMP_VALUE_SIZE);
        (*count)--;
    }
    memcpy(stale[*count], previous, width);
    (*count)++;
    memcpy(port->written[id], value, width);
    port->watching |= 1u << id;
    port->settled &= ~(1u << id);
}

/* Apply the staged values if the lock can be had; report stalls. */
static void
commit(FramePump *pump, Py_ssize_t index, double now)
{
    pump_port *port = &pump->ports[index];
    int recovered = 0, rolled_back = 0;
    int rc = rt_access_commit(port->access, port->stage, port->staged, PUMP_LOCK_SPIN, &recovered, &rolled_back);
    if (recovered) {
        post(pump, index, PUMP_RECOVERED, NULL, 0, rolled_back);
    }
    if (rc == EBUSY || rc == ETIMEDOUT) {
        if (port->stalled_since == 0) {
            port->stalled_since = now;
            port->stall_reported = now;
            port->lock_stalls++;
            post(pump, index, PUMP_STALL, NULL, 0, 0.0);
        }
        else if (now - port->stall_reported >= PUMP_STALL_REPORT) {
            port->stall_reported = now;
            post(pump, index, PUMP_STALL, NULL, 0, now - port->stalled_since);
        }
        return;
    }
    /* Applied, or refused (the buffer stopped being served or broke): either way the values go. */
    port->staged = 0;
    if (port->stalled_since != 0) {
        post(pump, index, PUMP_UNSTALL, NULL, 0, now - port->stalled_since);
        port->stalled_since = 0;
    }
}

static int send_message(FramePump *pump, Py_ssize_t index, uint8_t *raw, int payload_length);

static void
handle_frame(FramePump *pump, Py_ssize_t index, const uint8_t *frame, Py_ssize_t length, double now)
{
    pump_port *port = &pump->ports[index];
    uint8_t raw[RT_MAX_MESSAGE];
    Py_ssize_t n = decode(frame, length, raw);
    if (n < 0) {
        post(pump, index, PUMP_FRAME, frame, length, 0.0);
        return;
    }
    uint8_t type = raw[0];
    uint8_t *payload = raw + 2;
    int payload_length = raw[1];
    if (type == RT_DEV_DATA && port->access != NULL) {
        int params = fitting_params(payload, payload_length, port->layout);
        if (params < 0) {
            post(pump, index, PUMP_FRAME, frame, length, 0.0);
            return;
        }
        const uint8_t *in = payload + 2;
        for (int i = 0; i < port->layout->count; i++) {
            if (params & (1 << i)) {
                size_t width = (size_t)port->layout->widths[i];
                if (port->watching & (1u << i)) {
                    settle(port, i, in, width);
                }
                memcpy(port->stage + port->layout->offsets[i], in, width);
                in += width;
            }
        }
        port->staged |= (uint64_t)params;
        port->messages_in++;
        if (pump->forward_all) {
            post(pump, index, PUMP_SEEN, frame, length, 0.0);
        }
        port->last_rx = now;
        if (port->stalled_since == 0) {  /* while stalled, the retry timer applies them */
            commit(pump, index, now);
        }
        return;
    }
    if (type == RT_HB_RES && payload_length == 1) {
        port->messages_in++;
        port->last_rx = now;
        if (pump->forward_all) {
            post(pump, index, PUMP_SEEN, frame, length, 0.0);
        }
        return;
    }
    if (type == RT_HB_REQ && payload_length == 1) {
        port->messages_in++;
        port->last_rx = now;
        if (pump->forward_all) {
            post(pump, index, PUMP_SEEN, frame, length, 0.0);
        }
        uint8_t reply[4] = {RT_HB_RES, 1, payload[0], 0};
        send_message(pump, index, reply, 1);
        return;
    }
    post(pump, index, PUMP_FRAME, frame, length, 0.0);
}

/* Split newly read bytes into frames, as runtime.messaging.FrameSplitter does. */
static void
feed(FramePump *pump, Py_ssize_t index, const uint8_t *data, Py_ssize_t length, double now)
{
    pump_port *port = &pump->ports[index];
    Py_ssize_t start = 0;
    while (start <= length && !port->failed) {
        const uint8_t *end = memchr(data + start, 0, (size_t)(length - start));
        Py_ssize_t piece = end ? (Py_ssize_t)(end - (data + start)) : length - start;
        int last = end == NULL;
        if (port->discarding) {
            if (!last) {
                port->discarding = 0;
            }
        }
        else if (port->tail_length + piece > RT_MAX_ENCODING) {
            port->tail_length = 0;
            port->discarding = last;
            post(pump, index, PUMP_OVERFLOW, NULL, 0, 0.0);
        }
        else if (last) {
            memcpy(port->tail + port->tail_length, data + start, (size_t)piece);
            port->tail_length += piece;
        }
        else if (port->tail_length) {
            memcpy(port->tail + port->tail_length, data + start, (size_t)piece);
            Py_ssize_t total = port->tail_length + piece;
            port->tail_length = 0;
            handle_frame(pump, index, port->tail, total, now);
        }
        else if (piece) {
            handle_frame(pump, index, data + start, piece, now);
        }
        if (last) {
            break;
        }
        start += piece + 1;
    }
}

static void
readable(FramePump *pump, Py_ssize_t index, uint32_t events)
{
    pump_port *port = &pump->ports[index];
    uint8_t data[PUMP_READ_SIZE];
    ssize_t n = read(port->fd, data, sizeof(data));
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            return;
        }
        lose_errno(pump, index, "read error", errno);
        return;
    }
    if (n == 0) {
        /* Ports are non-blocking (VMIN=0, VTIME=0): no bytes is not a disconnect by itself. */
        if ((events & (EPOLLHUP | EPOLLERR)) || ++port->empty_reads >= PUMP_EMPTY_READS_LIMIT) {
            lose(pump, index, "end of stream");
        }
        return;
    }
    port->empty_reads = 0;
    feed(pump, index, data, n, monotonic());
}

/* ---- the reader thread --------------------------------------------------- */

static void *
pump_thread(void *arg)
{
    FramePump *pump = arg;
    struct epoll_event events[PUMP_MAX_EVENTS];
    int timeout = -1;
    for (;;) {
        int n = epoll_wait(pump->epoll_fd, events, PUMP_MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) {
            break;
        }
        pthread_mutex_lock(&pump->lock);
        if (pump->stopping) {
            pthread_mutex_unlock(&pump->lock);
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == PUMP_CONTROL_ID) {
                uint64_t ignored;
                ssize_t r = read(pump->control_fd, &ignored, sizeof(ignored));
                (void)r;
                continue;
            }
            Py_ssize_t index = (Py_ssize_t)(tag & 0xffffffffu);
            if (index >= pump->port_count) {
                continue;
            }
            pump_port *port = &pump->ports[index];
            if (port->fd < 0 || port->failed || port->generation != (uint32_t)(tag >> 32)) {
                continue;  /* removed since epoll_wait returned */
            }
            if (events[i].events & EPOLLOUT) {
                flush(pump, index);
            }
            if (!port->failed && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                readable(pump, index, events[i].events);
            }
        }
        timeout = -1;
        double now = monotonic();
        for (Py_ssize_t index = 0; index < pump->port_count; index++) {
            pump_port *port = &pump->ports[index];
            if (port->fd >= 0 && port->access != NULL && port->staged) {
                commit(pump, index, now);
                if (port->staged) {
                    timeout = (int)(PUMP_STALL_RETRY * 1000);
                }
            }
        }
        pthread_mutex_unlock(&pump->lock);
    }
    return NULL;
}

/* ---- the writer thread ---------------------------------------------------- */
/*
 * A write() reaches the device without Python: the writer thread sleeps with
 * futex_waitv on the write-block sequence word of every port that serves
 * writes (serve_writes) and on the process-private `writer_word`, which the
 * pump bumps to wake it (attach, remove, close, send_writes_now, a change of
 * what to confirm). It counts itself in a buffer's waiters[RT_WRITE_BLOCK]
 * while it sleeps on that word, so that writers make the wake call then (and
 * only then: not while the port's batch is held back by write_interval).
 * Ports beyond what one futex_waitv takes, or every port on a kernel without
 * futex_waitv (ENOSYS), are looked at every PUMP_WRITE_POLL seconds instead.
 *
 * When a port's word changed it looks at the command words (a commander
 * Python has not checked, a change of the disabled flag: an event for
 * Python; a new commander holds the port's writes until commanders_checked,
 * so that a write of a commander that is gone is never sent), then takes the
 * pending reads and writes (rt_access_take_rw: the lock only tried) and sends
 * DEV_READ/DEV_WRITE as emit_dev_rw packs them, at most one batch per
 * write_interval unless send_writes_now asked (the pending bits stay in the
 * buffer meanwhile, so a newer write replaces a pending one). It watches the
 * confirmable writes it sent (the reader thread settles them on DEV_DATA),
 * resends an unconfirmed one at its deadline while the subscription is
 * confirmed, and after the last resend reports it to Python (PUMP_GAVE_UP).
 */

static void
wake_writer(FramePump *pump)
{
    __atomic_fetch_add(&pump->writer_word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &pump->writer_word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* A message as a COBS frame without its delimiter: `raw` holds the type and the
 * payload, with room for the length and checksum filled in here. Its size. */
static Py_ssize_t
frame_message(uint8_t *raw, int payload_length, uint8_t *frame)
{
    raw[1] = (uint8_t)payload_length;
    uint8_t checksum = 0;
    for (int i = 0; i < payload_length + 2; i++) {
        checksum ^= raw[i];
    }
    raw[payload_length + 2] = checksum;
    return rt_cobs_encode(raw, payload_length + 3, frame);
}

/* Frame and send one message (the lock is held), as frame_message frames it.
 * Counted, copied for Python with forward_all; a write error loses the port.
 * 1: sent or queued. */
static int
send_message(FramePump *pump, Py_ssize_t index, uint8_t *raw, int payload_length)
{
    pump_port *port = &pump->ports[index];
    uint8_t frame[RT_MAX_ENCODING + 1];
    Py_ssize_t size = frame_message(raw, payload_length, frame);
    frame[size++] = 0;
    int rc = send_bytes(pump, index, frame, (size_t)size);
    if (rc > 0) {
        port->messages_out++;
        if (pump->forward_all) {
            post(pump, index, PUMP_SENT, frame, size - 1, 0.0);
        }
    }
    else if (rc < 0) {
        lose_errno(pump, index, "write error", -rc);
    }
    return rc > 0;
}

/* The raw message (type, length, payload) of the values of `params` in `block`; its payload length. */
static int
values_message(const rt_layout *layout, uint8_t type, uint16_t params, const uint8_t *block, uint8_t *raw)
{
    raw[0] = type;
    raw[2] = (uint8_t)params;
    raw[3] = (uint8_t)(params >> 8);
    int length = 2;
    for (int i = 0; i < layout->count; i++) {
        if (params & (1u << i)) {
            memcpy(raw + 2 + length, block + layout->offsets[i], (size_t)layout->widths[i]);
            length += (int)layout->widths[i];
        }
    }
    return length;
}

/* Send the values of `params` in `block` as DEV_WRITE, packed as emit_dev_rw packs them; the IDs
 * sent in `*sent`. Returns 0, or -1 when they could not be packed (reported to Python). */
static int
send_values(FramePump *pump, Py_ssize_t index, uint16_t params, const uint8_t *block, uint16_t *sent)
{
    pump_port *port = &pump->ports[index];
    uint16_t bins[RT_MAX_PARAMS];
    *sent = 0;
    int count = rt_pack_bins(port->layout, params, bins, &port->packing);
    if (count < 0) {
        post_text(pump, index, PUMP_PACK_ERROR,
                  count == RT_PACK_NOMEM ? "out of memory packing DEV_WRITE"
                                         : "a written parameter does not fit DEV_WRITE");
        return -1;
    }
    for (int b = 0; b < count && !port->failed; b++) {
        uint8_t raw[RT_MAX_MESSAGE];
        int length = values_message(port->layout, RT_DEV_WRITE, bins[b], block, raw);
        if (send_message(pump, index, raw, length)) {
            *sent |= bins[b];
        }
    }
    return 0;
}

/* A commander Python has not checked: the port's writes wait for commanders_checked. */
static void
commander_unknown(FramePump *pump, Py_ssize_t index)
{
    pump->ports[index].commander_waiting = 1;
    post(pump, index, PUMP_COMMANDER, NULL, 0, 0.0);
}

/* Look at the command words (the lock is held): report a change of the disabled flag, and a
 * commander Python has not checked (the port's writes then wait for commanders_checked). */
static void
look_at_commands(FramePump *pump, Py_ssize_t index)
{
    pump_port *port = &pump->ports[index];
    rt_BufferAccess *acc = port->acc;
    uint32_t disabled = __atomic_load_n(&acc->command->disabled, __ATOMIC_ACQUIRE) != 0;
    if (disabled != port->disabled_seen) {
        port->disabled_seen = disabled;
        post(pump, index, PUMP_DISABLED, NULL, 0, (double)disabled);
    }
    if (!port->commander_waiting && !rt_commanders_known(port->access, port->known, port->known_count)) {
        commander_unknown(pump, index);
    }
}

/* Resend the confirmable writes whose deadline passed, give up on those resent `retries` times;
 * returns when to look again (INFINITY: nothing to wait for). The lock is held. */
static double
resend_overdue(FramePump *pump, Py_ssize_t index, double now)
{
    pump_port *port = &pump->ports[index];
    uint32_t pending = port->watching & port->confirm;
    if (pending == 0 || !port->sub_confirmed) {
        return INFINITY;  /* before the subscription is confirmed no DEV_DATA could confirm them */
    }
    uint16_t resend = 0, gave_up = 0;
    double next = INFINITY;
    for (int id = 0; id < port->layout->count; id++) {
        if (!(pending & (1u << id))) {
            continue;
        }
        if (now >= port->deadline[id]) {
            if (port->resends[id] >= port->retries) {
                gave_up |= (uint16_t)(1u << id);
                continue;
            }
            port->resends[id]++;
            port->deadline[id] = now + port->confirm_timeout;
            resend |= (uint16_t)(1u << id);
        }
        if (port->deadline[id] < next) {
            next = port->deadline[id];
        }
    }
    if (gave_up) {
        port->watching &= ~(uint32_t)gave_up;
        uint8_t raw[RT_MAX_MESSAGE], frame[RT_MAX_ENCODING];
        uint16_t bins[RT_MAX_PARAMS];
        int count = rt_pack_bins(port->layout, gave_up, bins, &port->packing);
        for (int b = 0; b < count; b++) {  /* one event per DEV_WRITE-sized group of values */
            int length = values_message(port->layout, RT_DEV_WRITE, bins[b], port->rblock, raw);
            Py_ssize_t size = frame_message(raw, length, frame);
            post(pump, index, PUMP_GAVE_UP, frame, size, (double)port->retries);
        }
    }
    if (resend) {
        uint16_t sent;
        send_values(pump, index, resend, port->rblock, &sent);
        port->writes_resent += (uint64_t)__builtin_popcount(resend);
    }
    return next;
}

/* Watch the confirmable writes just sent (the lock is held). */
static void
watch_sent(pump_port *port, uint16_t sent, double now)
{
    uint32_t ids = sent & port->confirm;
    for (int id = 0; ids && id < port->layout->count; id++) {
        if (ids & (1u << id)) {
            watch_value(port, id, port->wblock + port->layout->offsets[id]);
            memcpy(port->rblock + port->layout->offsets[id], port->wblock + port->layout->offsets[id],
                   (size_t)port->layout->widths[id]);
            port->deadline[id] = now + port->confirm_timeout;
            port->resends[id] = 0;
        }
    }
}

/* The writer's work on one port (the lock is held); returns when to look again. */
static double
serve_port(FramePump *pump, Py_ssize_t index, double now)
{
    pump_port *port = &pump->ports[index];
    uint32_t seq = __atomic_load_n(&port->acc->notify->seq[RT_WRITE_BLOCK], __ATOMIC_ACQUIRE);
    if (seq != port->write_seen || port->recheck) {
        port->write_seen = seq;
        port->write_due = 1;
        port->recheck = 0;
        look_at_commands(pump, index);
    }
    double next = resend_overdue(pump, index, now);
    if (!port->write_due || port->commander_waiting || port->failed) {
        return next;
    }
    double at = port->urgent ? port->retry_at : fmax(port->next_batch, port->retry_at);
    if (now < at) {
        return fmin(next, at);
    }
    uint16_t read, written;
    int recovered = 0, rolled_back = 0;
    int rc = rt_access_take_rw(port->access, PUMP_LOCK_SPIN, port->known, port->known_count, &read, &written,
                               port->wblock, &recovered, &rolled_back);
    if (recovered) {
        post(pump, index, PUMP_RECOVERED, NULL, 0, rolled_back);
    }
    if (rc == RT_COMMANDER_UNKNOWN) {  /* a write came after the look at the commands: its commander first */
        commander_unknown(pump, index);
        return next;
    }
    if (rc == EBUSY || rc == ETIMEDOUT) {  /* never wait for the lock: the bits stay, try again soon */
        if (!port->write_busy) {
            port->write_busy = 1;
            port->lock_stalls++;
        }
        port->retry_at = now + PUMP_STALL_RETRY;
        return fmin(next, port->retry_at);
    }
    port->write_busy = 0;
    port->retry_at = 0;
    port->write_due = 0;
    if (rc != 0 || (read | written) == 0) {
        return next;  /* not live, or nothing pending: the next change looks again */
    }
    if (read) {
        uint8_t raw[RT_MAX_MESSAGE] = {RT_DEV_READ, 2, (uint8_t)read, (uint8_t)(read >> 8)};
        send_message(pump, index, raw, 2);
    }
    uint16_t sent = 0;
    if (written) {
        send_values(pump, index, written, port->wblock, &sent);
    }
    watch_sent(port, sent, now);
    port->urgent = 0;
    port->next_batch = now + port->write_interval;
    if (port->watching & port->confirm) {
        next = fmin(next, resend_overdue(pump, index, now));
    }
    return next;
}

static void *
writer_thread(void *arg)
{
    FramePump *pump = arg;
    struct rt_futex_waitv waits[RT_FUTEX_WAITV_MAX];
    int have_waitv = 1;
    for (;;) {
        pthread_mutex_lock(&pump->lock);
        if (pump->stopping) {
            pthread_mutex_unlock(&pump->lock);
            break;
        }
        uint32_t control = __atomic_load_n(&pump->writer_word, __ATOMIC_ACQUIRE);
        waits[0] = (struct rt_futex_waitv){control, (uint64_t)(uintptr_t)&pump->writer_word,
                                           RT_FUTEX2_SIZE_U32 | RT_FUTEX2_PRIVATE, 0};
        int count = 1, polled = 0;
        double now = monotonic(), wake = INFINITY;
        for (Py_ssize_t index = 0; index < pump->port_count; index++) {
            pump_port *port = &pump->ports[index];
            if (!port->serving_writes || port->fd < 0 || port->failed) {
                continue;
            }
            wake = fmin(wake, serve_port(pump, index, now));
            int held = port->write_due && !port->urgent && now < port->next_batch && !port->commander_waiting;
            /* A batch held back by write_interval: its timer looks again (as the bridge did before), and
             * newer writes of the interval neither wake the thread nor make the wake call. */
            int sleeps_on = !held && count < RT_FUTEX_WAITV_MAX;
            polled |= !held && !sleeps_on;
            /* Registered before sleeping (a writer bumps, then reads waiters; futex_waitv compares the
             * word when it sleeps): no write is missed, and no write pays a wake call for nobody. */
            if (sleeps_on != port->registered) {
                __atomic_fetch_add(&port->acc->notify->waiters[RT_WRITE_BLOCK], sleeps_on ? 1 : -1,
                                   __ATOMIC_SEQ_CST);
                port->registered = sleeps_on;
            }
            if (sleeps_on) {
                waits[count++] = (struct rt_futex_waitv){
                    port->write_seen, (uint64_t)(uintptr_t)&port->acc->notify->seq[RT_WRITE_BLOCK],
                    RT_FUTEX2_SIZE_U32, 0};
            }
        }
        pthread_mutex_unlock(&pump->lock);
        if (polled || !have_waitv) {
            wake = fmin(wake, now + PUMP_WRITE_POLL);
        }
        struct timespec deadline;
        if (isfinite(wake)) {
            double whole = floor(wake);
            deadline.tv_sec = (time_t)whole;
            deadline.tv_nsec = (long)((wake - whole) * 1e9);
        }
        if (have_waitv) {
            long rc = syscall(SYS_futex_waitv, waits, count, 0, isfinite(wake) ? &deadline : NULL, CLOCK_MONOTONIC);
            if (rc < 0 && errno == ENOSYS) {
                have_waitv = 0;
            }
        }
        else {  /* a kernel without futex_waitv: sleep on the control word, look at the ports in slices */
            double rest = fmax(0.0, wake - monotonic());
            struct timespec slice = {(time_t)rest, (long)((rest - floor(rest)) * 1e9)};
            syscall(SYS_futex, &pump->writer_word, FUTEX_WAIT_PRIVATE, control, &slice, NULL, 0);
        }
    }
    return NULL;
}

/* ---- FramePump: life cycle ----------------------------------------------- */

static void
wake_thread(FramePump *pump)
{
    uint64_t one = 1;
    ssize_t ignored = write(pump->control_fd, &one, sizeof(one));
    (void)ignored;
}

static void
release_port(FramePump *pump, Py_ssize_t index)
{
    /* The lock is held; the caller holds the GIL (for the access). */
    pump_port *port = &pump->ports[index];
    if (port->fd >= 0 && !port->failed) {
        epoll_ctl(pump->epoll_fd, EPOLL_CTL_DEL, port->fd, NULL);
    }
    free(port->outbox);
    free(port->stage);
    free(port->wblock);
    free(port->rblock);
    if (port->registered) {
        __atomic_fetch_sub(&port->acc->notify->waiters[RT_WRITE_BLOCK], 1, __ATOMIC_SEQ_CST);
    }
    int woke_writer = port->serving_writes;
    Py_ssize_t kept = 0;  /* its events not taken yet must not reach whoever gets the slot next */
    for (Py_ssize_t i = 0; i < pump->event_count; i++) {
        if (pump->events[i].port != (uint32_t)index) {
            if (kept != i) {
                pump->events[kept] = pump->events[i];
            }
            kept++;
        }
    }
    pump->event_count = kept;
    PyObject *access = port->access;
    uint32_t generation = port->generation + 1;
    memset(port, 0, sizeof(*port));
    port->fd = -1;
    port->generation = generation;
    if (access != NULL) {
        rt_access_unpin(access);
        Py_DECREF(access);
    }
    if (woke_writer) {
        wake_writer(pump);  /* it must stop sleeping on the word of this buffer */
    }
}

static void
stop_thread(FramePump *pump)
{
    if (pump->thread_started) {
        pthread_mutex_lock(&pump->lock);
        pump->stopping = 1;
        pthread_mutex_unlock(&pump->lock);
        wake_thread(pump);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(pump->thread, NULL);
        Py_END_ALLOW_THREADS
        pump->thread_started = 0;
    }
    if (pump->writer_started) {
        pthread_mutex_lock(&pump->lock);
        pump->stopping = 1;
        pthread_mutex_unlock(&pump->lock);
        wake_writer(pump);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(pump->writer, NULL);
        Py_END_ALLOW_THREADS
        pump->writer_started = 0;
    }
}

static PyObject *
FramePump_close(FramePump *self, PyObject *unused)
{
    stop_thread(self);
    for (Py_ssize_t index = 0; index < self->port_count; index++) {
        release_port(self, index);
    }
    int *fds[] = {&self->epoll_fd, &self->control_fd, &self->event_fd};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
    }
    Py_RETURN_NONE;
}

static int
FramePump_init(FramePump *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"forward_all", "port_events", NULL};
    int forward_all = 0;
    long port_events = PUMP_PORT_EVENT_LIMIT;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p$l:FramePump", kwlist, &forward_all, &port_events)) {
        return -1;
    }
    if (port_events < 1 || port_events > PUMP_PORT_EVENT_MAX) {
        PyErr_Format(PyExc_ValueError, "port_events must be 1 to %d, not %ld", PUMP_PORT_EVENT_MAX, port_events);
        return -1;
    }
    if (self->epoll_fd >= 0 || self->thread_started) {
        PyErr_SetString(PyExc_RuntimeError, "FramePump is already initialized");
        return -1;
    }
    self->forward_all = forward_all;
    self->port_events = (uint32_t)port_events;
    self->events = PyMem_RawCalloc(PUMP_EVENT_INITIAL, sizeof(pump_event));
    if (self->events == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->event_capacity = PUMP_EVENT_INITIAL;
    self->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    self->control_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->epoll_fd < 0 || self->control_fd < 0 || self->event_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = PUMP_CONTROL_ID};
    if (epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, self->control_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    /* The thread blocks every signal (it inherits the mask): they go to the interpreter's threads. */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    int rc = pthread_create(&self->thread, NULL, pump_thread, self);
    if (rc == 0) {
        self->thread_started = 1;
        pthread_setname_np(self->thread, "runtime-pump");  /* as top and /proc show them */
        rc = pthread_create(&self->writer, NULL, writer_thread, self);
        self->writer_started = rc == 0;
        if (rc == 0) {
            pthread_setname_np(self->writer, "runtime-writer");
        }
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *
FramePump_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    FramePump *self = (FramePump *)type->tp_alloc(type, 0);
    if (self != NULL) {
        pthread_mutex_init(&self->lock, NULL);
        self->epoll_fd = self->control_fd = self->event_fd = -1;
    }
    return (PyObject *)self;
}

static void
FramePump_dealloc(FramePump *self)
{
    PyObject_GC_UnTrack(self);
    PyObject *result = FramePump_close(self, NULL);
    Py_XDECREF(result);
    PyMem_Free(self->ports);
    PyMem_RawFree(self->events);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
FramePump_traverse(FramePump *self, visitproc visit, void *arg)
{
    for (Py_ssize_t index = 0; index < self->port_count; index++) {
        Py_VISIT(self->ports[index].access);
    }
    return 0;
}

/* ---- FramePump: ports ---------------------------------------------------- */

static int
check_open(FramePump *self)
{
    if (self->epoll_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "the pump is closed");
        return -1;
    }
    return 0;
}

/* The port of an id from Python (the lock is held), or NULL with ValueError. */
static pump_port *
lookup(FramePump *self, PyObject *arg, Py_ssize_t *index)
{
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "no such port in this pump");
        }
        return NULL;
    }
    if (i < 0 || i >= self->port_count || self->ports[i].fd < 0) {
        PyErr_Format(PyExc_ValueError, "no port %zd in this pump", i);
        return NULL;
    }
    *index = i;
    return &self->ports[i];
}

static PyObject *
FramePump_add(FramePump *self, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0 || check_open(self) < 0) {
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index = 0;
    while (index < self->port_count && self->ports[index].fd >= 0) {
        index++;
    }
    if (index == self->port_count) {
        pump_port *grown = PyMem_Realloc(self->ports, (size_t)(self->port_count + 1) * sizeof(pump_port));
        if (grown == NULL) {
            pthread_mutex_unlock(&self->lock);
            return PyErr_NoMemory();
        }
        self->ports = grown;
        memset(&self->ports[index], 0, sizeof(pump_port));
        self->ports[index].fd = -1;
        self->port_count++;
    }
    pump_port *port = &self->ports[index];
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = port_tag(index, port->generation)};
    if (epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        pthread_mutex_unlock(&self->lock);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    port->fd = fd;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromSsize_t(index);
}

static PyObject *
FramePump_remove(FramePump *self, PyObject *arg)
{
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    if (lookup(self, arg, &index) == NULL) {
        pthread_mutex_unlock(&self->lock);
        return NULL;
    }
    release_port(self, index);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *
FramePump_attach(FramePump *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "attach(port, access) takes 2 arguments");
        return NULL;
    }
    const rt_layout *layout;
    const uint8_t *update;
    if (rt_access_pin(args[1], &layout, &update) < 0) {
        return NULL;
    }
    uint8_t *stage = calloc(1, (size_t)(layout->span > 0 ? layout->span : 1));
    if (stage == NULL) {
        rt_access_unpin(args[1]);
        return PyErr_NoMemory();
    }
    memcpy(stage, update, (size_t)layout->span);  /* what a write replaces, until the device reports */
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, args[0], &index);
    if (port == NULL || port->access != NULL) {
        pthread_mutex_unlock(&self->lock);
        free(stage);
        rt_access_unpin(args[1]);
        if (port != NULL) {
            PyErr_SetString(PyExc_ValueError, "a buffer is already attached to this port");
        }
        return NULL;
    }
    Py_INCREF(args[1]);
    port->access = args[1];
    port->layout = layout;
    port->stage = stage;
    port->acc = (rt_BufferAccess *)args[1];
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *
FramePump_send(FramePump *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(port, data) takes 2 arguments");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    int rc = -1;
    if (lookup(self, args[0], &index) != NULL) {
        rc = send_bytes(self, index, view.buf, (size_t)view.len);
        if (rc < 0) {
            lose_errno(self, index, "write error", -rc);
            rc = 0;
        }
    }
    pthread_mutex_unlock(&self->lock);
    PyBuffer_Release(&view);
    if (rc < 0) {
        return NULL;
    }
    return PyBool_FromLong(rc);
}

static PyObject *
FramePump_take_events(FramePump *self, PyObject *unused)
{
    if (check_open(self) < 0) {
        return NULL;
    }
    uint64_t ignored;
    ssize_t r = read(self->event_fd, &ignored, sizeof(ignored));
    (void)r;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    Py_ssize_t count = self->event_count;
    pump_event *copy = count ? PyMem_RawMalloc((size_t)count * sizeof(pump_event)) : NULL;
    if (copy != NULL) {
        memcpy(copy, self->events, (size_t)count * sizeof(pump_event));
    }
    self->event_count = 0;
    self->notified = 0;
    for (Py_ssize_t index = 0; index < self->port_count; index++) {  /* every port has its share again */
        pump_port *port = &self->ports[index];
        port->queued_frames = port->queued_copies = port->queued_reports = 0;
    }
    /* Accesses of recovered buffers, kept alive until reported (below, without the pump's lock). */
    PyObject *recovered = NULL;
    for (Py_ssize_t i = 0; copy != NULL && i < count; i++) {
        if (copy[i].kind == PUMP_RECOVERED && self->ports[copy[i].port].access != NULL) {
            if (recovered == NULL && (recovered = PyList_New(0)) == NULL) {
                break;
            }
            PyObject *pair = Py_BuildValue("(Oi)", self->ports[copy[i].port].access, (int)copy[i].value);
            if (pair == NULL || PyList_Append(recovered, pair) < 0) {
                Py_XDECREF(pair);
                break;
            }
            Py_DECREF(pair);
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (count && copy == NULL) {
        Py_XDECREF(recovered);
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; recovered != NULL && i < PyList_GET_SIZE(recovered); i++) {
        PyObject *pair = PyList_GET_ITEM(recovered, i);
        rt_access_report_recovery(PyTuple_GET_ITEM(pair, 0), (int)PyLong_AsLong(PyTuple_GET_ITEM(pair, 1)));
    }
    Py_XDECREF(recovered);
    for (Py_ssize_t i = 0; i < count; i++) {
        pump_event *event = &copy[i];
        PyObject *data;
        switch (event->kind) {
        case PUMP_FRAME:
        case PUMP_SEEN:
        case PUMP_SENT:
        case PUMP_GAVE_UP:
            data = PyBytes_FromStringAndSize((const char *)event->data, event->length);
            break;
        case PUMP_LOST:
        case PUMP_PACK_ERROR:
            data = PyUnicode_DecodeUTF8((const char *)event->data, event->length, "replace");
            break;
        case PUMP_STALL:
        case PUMP_UNSTALL:
        case PUMP_DISABLED:
            data = PyFloat_FromDouble(event->value);
            break;
        case PUMP_RECOVERED:
            continue;
        default:
            data = Py_NewRef(Py_None);
        }
        PyObject *item = data ? Py_BuildValue("(IiN)", event->port, (int)event->kind, data) : NULL;
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            PyMem_RawFree(copy);
            return NULL;
        }
        Py_DECREF(item);
    }
    PyMem_RawFree(copy);
    return out;
}

static PyObject *
FramePump_watch_writes(FramePump *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "watch_writes(port, message, ids) takes 3 arguments");
        return NULL;
    }
    if (!PyObject_TypeCheck(args[1], &rt_MessageType) || ((rt_Message *)args[1])->type != RT_DEV_WRITE) {
        PyErr_SetString(PyExc_TypeError, "watch_writes() takes a DEV_WRITE Message");
        return NULL;
    }
    unsigned long ids = PyLong_AsUnsignedLongMask(args[2]);
    if (ids == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    const rt_Message *msg = (const rt_Message *)args[1];
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, args[0], &index);
    int params = -1;
    if (port != NULL && port->access != NULL) {
        params = fitting_params(msg->payload, msg->length, port->layout);
    }
    if (params >= 0) {
        const uint8_t *in = msg->payload + 2;
        for (int i = 0; i < port->layout->count; i++) {
            if (!(params & (1 << i))) {
                continue;
            }
            size_t width = (size_t)port->layout->widths[i];
            if (ids & (1ul << i)) {
                watch_value(port, i, in);
            }
            in += width;
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (port == NULL) {
        return NULL;
    }
    if (params < 0) {
        PyErr_SetString(PyExc_ValueError, "the DEV_WRITE does not fit the attached buffer (or none is attached)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
FramePump_settled(FramePump *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "settled(port, forget=0) takes 1 or 2 arguments");
        return NULL;
    }
    unsigned long forget = 0;
    if (nargs == 2 && (forget = PyLong_AsUnsignedLongMask(args[1])) == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, args[0], &index);
    uint32_t settled = 0;
    if (port != NULL) {
        settled = port->settled;
        port->settled = 0;
        port->watching &= ~(uint32_t)forget;
    }
    pthread_mutex_unlock(&self->lock);
    return port ? PyLong_FromUnsignedLong(settled) : NULL;
}

static PyObject *
FramePump_serve_writes(FramePump *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "serve_writes(port, write_interval) takes 2 arguments");
        return NULL;
    }
    double interval = PyFloat_AsDouble(args[1]);
    if (interval == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!(interval >= 0 && interval <= 3600)) {
        PyErr_Format(PyExc_ValueError, "write_interval must be 0 to 3600 seconds, not %g", interval);
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, args[0], &index);
    const char *problem = NULL;
    if (port != NULL && port->access == NULL) {
        problem = "attach a buffer to the port before serve_writes()";
    }
    else if (port != NULL && port->serving_writes) {
        problem = "the port already serves writes";
    }
    else if (port != NULL) {
        size_t span = (size_t)(port->layout->span > 0 ? port->layout->span : 1);
        port->wblock = calloc(1, span);
        port->rblock = calloc(1, span);
        if (port->wblock == NULL || port->rblock == NULL) {
            free(port->wblock);
            free(port->rblock);
            port->wblock = port->rblock = NULL;
            problem = "";
        }
        else {
            port->write_interval = interval;
            port->serving_writes = 1;
            port->write_due = 1;  /* a write may be waiting from before the device came */
            port->recheck = 1;    /* and so may a commander, or the disabled flag */
            port->write_seen = __atomic_load_n(&port->acc->notify->seq[RT_WRITE_BLOCK], __ATOMIC_ACQUIRE);
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (port == NULL) {
        return NULL;
    }
    if (problem != NULL) {
        return *problem ? (PyErr_SetString(PyExc_ValueError, problem), NULL) : PyErr_NoMemory();
    }
    wake_writer(self);
    Py_RETURN_NONE;
}

static PyObject *
FramePump_confirm_writes(FramePump *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "confirm_writes(port, ids, timeout, retries, subscribed) takes 5 arguments");
        return NULL;
    }
    unsigned long ids = PyLong_AsUnsignedLongMask(args[1]);
    if (ids == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    double timeout = PyFloat_AsDouble(args[2]);
    if (timeout == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    long retries = PyLong_AsLong(args[3]);
    if (retries == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int subscribed = PyObject_IsTrue(args[4]);
    if (subscribed < 0) {
        return NULL;
    }
    if (!(timeout > 0 && timeout <= 3600) || retries < 0 || retries > PUMP_RETRIES_MAX) {
        PyErr_Format(PyExc_ValueError, "timeout must be in (0, 3600] seconds and retries 0 to %d", PUMP_RETRIES_MAX);
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, args[0], &index);
    if (port != NULL) {
        uint32_t confirm = (uint32_t)ids & ((1u << RT_MAX_PARAMS) - 1);
        port->watching &= confirm | ~port->confirm;  /* writes no longer confirmed are no longer watched */
        port->confirm = confirm;
        port->confirm_timeout = timeout;
        port->retries = (int)retries;
        port->sub_confirmed = subscribed;
    }
    pthread_mutex_unlock(&self->lock);
    if (port == NULL) {
        return NULL;
    }
    wake_writer(self);
    Py_RETURN_NONE;
}

static PyObject *
FramePump_send_writes_now(FramePump *self, PyObject *arg)
{
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, arg, &index);
    if (port != NULL) {
        port->urgent = 1;
        port->write_due = 1;
    }
    pthread_mutex_unlock(&self->lock);
    if (port == NULL) {
        return NULL;
    }
    wake_writer(self);
    Py_RETURN_NONE;
}

static PyObject *
FramePump_commanders_checked(FramePump *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "commanders_checked(port, commanders) takes 2 arguments");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[1], "commanders_checked() takes a sequence of commander words");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > PUMP_KNOWN_COMMANDERS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d commanders, not %zd", PUMP_KNOWN_COMMANDERS, n);
        return NULL;
    }
    uint64_t words[PUMP_KNOWN_COMMANDERS];
    for (Py_ssize_t i = 0; i < n; i++) {
        words[i] = PyLong_AsUnsignedLongLongMask(PySequence_Fast_GET_ITEM(seq, i));
        if (words[i] == (uint64_t)-1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, args[0], &index);
    int changed = 0;
    if (port != NULL) {
        /* The bridge confirms its list every heartbeat: wake the writer only when there is news. */
        changed = port->commander_waiting || port->known_count != (int)n
                  || memcmp(port->known, words, (size_t)n * sizeof(uint64_t)) != 0;
        memcpy(port->known, words, (size_t)n * sizeof(uint64_t));
        port->known_count = (int)n;
        port->commander_waiting = 0;
        port->recheck |= changed;
    }
    pthread_mutex_unlock(&self->lock);
    if (port == NULL) {
        return NULL;
    }
    if (changed) {
        wake_writer(self);
    }
    Py_RETURN_NONE;
}

static PyObject *
FramePump_counters(FramePump *self, PyObject *arg)
{
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, arg, &index);
    PyObject *result = NULL;
    if (port != NULL) {
        result = Py_BuildValue("(KKKKK)", (unsigned long long)port->messages_in, (unsigned long long)port->messages_out,
                               (unsigned long long)port->lock_stalls, (unsigned long long)port->events_dropped,
                               (unsigned long long)port->writes_resent);
    }
    pthread_mutex_unlock(&self->lock);
    return result;
}

static PyObject *
FramePump_last_rx(FramePump *self, PyObject *arg)
{
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, arg, &index);
    double last_rx = port ? port->last_rx : 0.0;
    pthread_mutex_unlock(&self->lock);
    return port ? PyFloat_FromDouble(last_rx) : NULL;
}

static PyObject *
FramePump_pending(FramePump *self, PyObject *arg)
{
    pthread_mutex_lock(&self->lock);
    Py_ssize_t index;
    pump_port *port = lookup(self, arg, &index);
    Py_ssize_t pending = port ? (Py_ssize_t)port->out_length : 0;
    pthread_mutex_unlock(&self->lock);
    return port ? PyLong_FromSsize_t(pending) : NULL;
}

static PyObject *
FramePump_fileno(FramePump *self, PyObject *unused)
{
    if (check_open(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(self->event_fd);
}

static PyObject *
FramePump_get_forward_all(FramePump *self, void *closure)
{
    return PyBool_FromLong(self->forward_all);
}

static PyMethodDef FramePump_methods[] = {
    {"add", (PyCFunction)FramePump_add, METH_O,
     "add(fd) -> port: read and write this non-blocking descriptor from the pump's thread (it is not closed)."},
    {"remove", (PyCFunction)FramePump_remove, METH_O,
     "remove(port): stop using the port's descriptor (queued output is dropped) and detach its buffer."},
    {"attach", (PyCFunction)(void (*)(void))FramePump_attach, METH_FASTCALL,
     "attach(port, access): apply the port's DEV_DATA to this Smart Device buffer from now on."},
    {"send", (PyCFunction)(void (*)(void))FramePump_send, METH_FASTCALL,
     "send(port, data) -> bool: write now or queue (False: dropped, the queue is full or the port lost)."},
    {"take_events", (PyCFunction)FramePump_take_events, METH_NOARGS,
     "take_events() -> list of (port, kind, data): what the thread left for Python since the last call."},
    {"watch_writes", (PyCFunction)(void (*)(void))FramePump_watch_writes, METH_FASTCALL,
     "watch_writes(port, message, ids): settle the writes of these IDs in a DEV_WRITE just sent by the "
     "DEV_DATA that follow."},
    {"settled", (PyCFunction)(void (*)(void))FramePump_settled, METH_FASTCALL,
     "settled(port, forget=0) -> int: the IDs whose watched write a DEV_DATA settled since the last call "
     "(no longer watched); stop watching the IDs in `forget`."},
    {"serve_writes", (PyCFunction)(void (*)(void))FramePump_serve_writes, METH_FASTCALL,
     "serve_writes(port, write_interval): send the attached buffer's pending reads and writes from the "
     "writer thread, at most one batch per write_interval seconds."},
    {"confirm_writes", (PyCFunction)(void (*)(void))FramePump_confirm_writes, METH_FASTCALL,
     "confirm_writes(port, ids, timeout, retries, subscribed): writes of these IDs are resent every timeout "
     "seconds until a DEV_DATA confirms them (only while subscribed), at most retries times, then reported."},
    {"send_writes_now", (PyCFunction)FramePump_send_writes_now, METH_O,
     "send_writes_now(port): send the pending batch at once, regardless of write_interval."},
    {"commanders_checked", (PyCFunction)(void (*)(void))FramePump_commanders_checked, METH_FASTCALL,
     "commanders_checked(port, commanders): Python checked these commander words (pid | start << 32); "
     "the port's writes go on."},
    {"counters", (PyCFunction)FramePump_counters, METH_O,
     "counters(port) -> (messages_in, messages_out, lock_stalls, events_dropped, writes_resent) handled by "
     "the pump."},
    {"last_rx", (PyCFunction)FramePump_last_rx, METH_O,
     "last_rx(port) -> float: time.monotonic() of the last message the pump handled (0.0: none)."},
    {"pending", (PyCFunction)FramePump_pending, METH_O, "pending(port) -> int: bytes queued for the port."},
    {"fileno", (PyCFunction)FramePump_fileno, METH_NOARGS,
     "fileno() -> int: a descriptor readable while events wait for take_events()."},
    {"close", (PyCFunction)FramePump_close, METH_NOARGS, "close(): stop the thread and forget every port."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef FramePump_getset[] = {
    {"forward_all", (getter)FramePump_get_forward_all, NULL,
     "Python also gets a copy of every frame handled or sent here (to log it).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FramePumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._core.FramePump",
    .tp_basicsize = sizeof(FramePump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "FramePump(forward_all=False, *, port_events=PUMP_PORT_EVENT_LIMIT): serve Smart Device ports "
              "from one reader thread without the GIL; each port may have port_events frames waiting for Python.",
    .tp_new = FramePump_new,
    .tp_init = (initproc)FramePump_init,
    .tp_dealloc = (destructor)FramePump_dealloc,
    .tp_traverse = (traverseproc)FramePump_traverse,
    .tp_methods = FramePump_methods,
    .tp_getset = FramePump_getset,
};

int
rt_pump_module_init(PyObject *module)
{
    if (PyType_Ready(&FramePumpType) < 0 || PyModule_AddObjectRef(module, "FramePump", (PyObject *)&FramePumpType) < 0
        || PyModule_AddIntConstant(module, "PUMP_FRAME", PUMP_FRAME) < 0
        || PyModule_AddIntConstant(module, "PUMP_OVERFLOW", PUMP_OVERFLOW) < 0
        || PyModule_AddIntConstant(module, "PUMP_LOST", PUMP_LOST) < 0
        || PyModule_AddIntConstant(module, "PUMP_STALL", PUMP_STALL) < 0
        || PyModule_AddIntConstant(module, "PUMP_UNSTALL", PUMP_UNSTALL) < 0
        || PyModule_AddIntConstant(module, "PUMP_SEEN", PUMP_SEEN) < 0
        || PyModule_AddIntConstant(module, "PUMP_SENT", PUMP_SENT) < 0
        || PyModule_AddIntConstant(module, "PUMP_COMMANDER", PUMP_COMMANDER) < 0
        || PyModule_AddIntConstant(module, "PUMP_DISABLED", PUMP_DISABLED) < 0
        || PyModule_AddIntConstant(module, "PUMP_GAVE_UP", PUMP_GAVE_UP) < 0
        || PyModule_AddIntConstant(module, "PUMP_PACK_ERROR", PUMP_PACK_ERROR) < 0
        || PyModule_AddIntConstant(module, "PUMP_PORT_EVENT_LIMIT", PUMP_PORT_EVENT_LIMIT) < 0
        || PyModule_AddIntConstant(module, "PUMP_KNOWN_COMMANDERS", PUMP_KNOWN_COMMANDERS) < 0
        || PyModule_AddIntConstant(module, "PUMP_OUTBOX_LIMIT", PUMP_OUTBOX_LIMIT) < 0) {
        return -1;
    }
    return 0;
}
