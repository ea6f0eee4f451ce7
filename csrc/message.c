/*
 * Smart Device messages: the Message type, its factories and readers, and
 * the parameter layouts that let DEV_DATA / DEV_WRITE values move straight
 * between a message and memory.
 */
#include "core.h"

#include <string.h>

/* ---- helpers ------------------------------------------------------------ */

static inline uint16_t
load_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline void
store_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static int
as_uint(PyObject *obj, unsigned long long max, const char *what, unsigned long long *out)
{
    if (!PyLong_Check(obj)) {
        PyObject *index = PyNumber_Index(obj);
        if (index == NULL) {
            return -1;
        }
        int rc = as_uint(index, max, what, out);
        Py_DECREF(index);
        return rc;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        value = max + 1ULL;  /* negative or too big: report as out of range */
        if (max == UINT64_MAX) {
            PyErr_Format(PyExc_ValueError, "%s must be in 0..%llu, not %R", what, max, obj);
            return -1;
        }
    }
    if (value > max) {
        PyErr_Format(PyExc_ValueError, "%s must be in 0..%llu, not %R", what, max, obj);
        return -1;
    }
    *out = value;
    return 0;
}

rt_Message *
rt_message_new(uint8_t type, uint8_t length)
{
    rt_Message *msg = PyObject_New(rt_Message, &rt_MessageType);
    if (msg != NULL) {
        msg->type = type;
        msg->length = length;
    }
    return msg;
}

static int
is_known_type(uint8_t type)
{
    return (type >= RT_PING && type <= RT_HB_RES) || type == RT_ERROR;
}

static int
is_known_error(uint8_t code)
{
    return code == RT_OK || code >= RT_BACKOFF;
}

static const char *
type_name(uint8_t type)
{
    static const char *names[] = {"PING", "SUB_REQ", "SUB_RES", "DEV_READ", "DEV_WRITE",
                                  "DEV_DATA", "DEV_DISABLE", "HB_REQ", "HB_RES"};
    if (type >= RT_PING && type <= RT_HB_RES) {
        return names[type - RT_PING];
    }
    return type == RT_ERROR ? "ERROR" : "UNKNOWN";
}

/* ---- encoding / decoding ------------------------------------------------ */

/* The XOR of `n` bytes: eight at a time, then folded (the message checksum). */
static inline uint8_t
xor_bytes(const uint8_t *p, Py_ssize_t n)
{
    uint64_t words = 0;
    Py_ssize_t i = 0;
    for (; n - i >= 8; i += 8) {
        uint64_t word;
        memcpy(&word, p + i, 8);
        words ^= word;
    }
    words ^= words >> 32;
    words ^= words >> 16;
    words ^= words >> 8;
    uint8_t result = (uint8_t)words;
    for (; i < n; i++) {
        result ^= p[i];
    }
    return result;
}

/* Copy a payload (n < 256): whole words, then the last word again,
 * overlapping (GCC would otherwise inline a `rep movs`, slow to start for a
 * few dozen bytes). */
static inline void
copy_payload(uint8_t *dst, const uint8_t *src, Py_ssize_t n)
{
    if (n < 8) {
        for (Py_ssize_t i = 0; i < n; i++) {
            dst[i] = src[i];
        }
        return;
    }
    uint64_t word;
    for (Py_ssize_t i = 0; i < n - 8; i += 8) {
        memcpy(&word, src + i, 8);
        memcpy(dst + i, &word, 8);
    }
    memcpy(&word, src + n - 8, 8);
    memcpy(dst + n - 8, &word, 8);
}

/* COBS of type, length, payload and checksum: in place in `out` when the
 * message is shorter than a full block (all but the longest), else byte by
 * byte straight from the message. */
static Py_ssize_t
message_encode(const rt_Message *msg, uint8_t *out)
{
    Py_ssize_t n = msg->length;
    uint8_t checksum = (uint8_t)(msg->type ^ msg->length ^ xor_bytes(msg->payload, n));
    if (n + 3 < 254) {
        out[1] = msg->type;
        out[2] = msg->length;
        copy_payload(out + 3, msg->payload, n);
        out[n + 3] = checksum;
        return rt_cobs_link(out, n + 3);
    }
    rt_cobs_writer w;
    rt_cobs_writer_init(&w, out);
    rt_cobs_put(&w, msg->type);
    rt_cobs_put(&w, msg->length);
    for (Py_ssize_t i = 0; i < n; i++) {
        rt_cobs_put(&w, msg->payload[i]);
    }
    rt_cobs_put(&w, checksum);
    return rt_cobs_finish(&w);
}

static PyObject *
Message_encode(rt_Message *self, PyObject *unused)
{
    if (self->length + 3 < 254) {  /* the encoding is one byte longer: straight into the bytes object */
        PyObject *bytes = PyBytes_FromStringAndSize(NULL, self->length + 4);
        if (bytes != NULL) {
            message_encode(self, (uint8_t *)PyBytes_AS_STRING(bytes));
        }
        return bytes;
    }
    uint8_t out[RT_MAX_ENCODING];
    Py_ssize_t n = message_encode(self, out);
    return PyBytes_FromStringAndSize((const char *)out, n);
}

static PyObject *
Message_encode_into(rt_Message *self, PyObject *buffer)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    uint8_t out[RT_MAX_ENCODING];
    Py_ssize_t n = message_encode(self, out);
    if (view.len < n) {
        PyBuffer_Release(&view);
        PyObject *need = PyLong_FromSsize_t(n);
        rt_raise_message_error(RT_BUFFER_OVERFLOW, "buffer too small for the encoded message", "needed", need, NULL);
        Py_XDECREF(need);
        return NULL;
    }
    memcpy(view.buf, out, (size_t)n);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);
}

static PyObject *
Message_decode(PyObject *cls, PyObject *data)
{
    uint8_t raw[RT_MAX_MESSAGE];
    Py_ssize_t n = -2, frame_size;
    if (PyBytes_CheckExact(data)) {  /* what a reader hands over: no buffer protocol needed */
        frame_size = PyBytes_GET_SIZE(data);
        if (frame_size <= RT_MAX_ENCODING) {
            n = rt_cobs_decode((const uint8_t *)PyBytes_AS_STRING(data), frame_size, raw, sizeof(raw));
        }
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        if (view.len <= RT_MAX_ENCODING) {
            n = rt_cobs_decode((const uint8_t *)view.buf, view.len, raw, sizeof(raw));
        }
        frame_size = view.len;
        PyBuffer_Release(&view);
    }
    if (n == -2) {
        PyObject *size = PyLong_FromSsize_t(frame_size);
        rt_raise_message_error(RT_BUFFER_OVERFLOW, "frame is longer than any message", "size", size, NULL);
        Py_XDECREF(size);
        return NULL;
    }
    if (n < 0) {
        return rt_raise_message_error(RT_UNEXPECTED_DELIMITER, "frame is not valid COBS", NULL);
    }
    if (n < 3) {
        return rt_raise_message_error(RT_UNEXPECTED_DELIMITER, "frame is shorter than a message", NULL);
    }
    if ((Py_ssize_t)raw[1] + 3 != n) {
        PyObject *declared = PyLong_FromLong(raw[1]);
        PyObject *actual = PyLong_FromSsize_t(n - 3);
        rt_raise_message_error(RT_UNEXPECTED_DELIMITER, "payload length field disagrees with the frame size",
                               "declared", declared, "actual", actual, NULL);
        Py_XDECREF(declared);
        Py_XDECREF(actual);
        return NULL;
    }
    if (xor_bytes(raw, n) != 0) {  /* the checksum byte is the XOR of those before it */
        return rt_raise_message_error(RT_BAD_CHECKSUM, "message checksum does not match", NULL);
    }
    if (!is_known_type(raw[0])) {
        PyObject *type = PyLong_FromLong(raw[0]);
        rt_raise_message_error(RT_INVALID_TYPE, "unknown message type", "type", type, NULL);
        Py_XDECREF(type);
        return NULL;
    }
    rt_Message *msg = rt_message_new(raw[0], raw[1]);
    if (msg != NULL) {
        memcpy(msg->payload, raw + 2, raw[1]);
    }
    return (PyObject *)msg;
}

/* ---- parameter values --------------------------------------------------- */

Py_ssize_t
rt_values_size(const rt_layout *layout, uint16_t params)
{
    Py_ssize_t size = 2;
    for (unsigned bits = params; bits != 0; bits &= bits - 1) {  /* the flagged IDs, lowest first */
        int i = __builtin_ctz(bits);
        if (i >= layout->count || layout->widths[i] == 0) {
            PyObject *param = PyLong_FromLong(i);
            rt_raise_message_error(RT_GENERIC_ERROR, "parameter not in this layout", "param", param, NULL);
            Py_XDECREF(param);
            return -1;
        }
        size += layout->widths[i];
    }
    return size;
}

rt_Message *
rt_make_values(uint8_t type, uint16_t params, const rt_layout *layout, const uint8_t *base)
{
    Py_ssize_t size = rt_values_size(layout, params);
    if (size < 0) {
        return NULL;
    }
    if (size > RT_MAX_PAYLOAD) {
        PyObject *size_obj = PyLong_FromSsize_t(size);
        rt_raise_message_error(RT_BUFFER_OVERFLOW, "values do not fit in one message; split the parameters",
                               "size", size_obj, NULL);
        Py_XDECREF(size_obj);
        return NULL;
    }
    rt_Message *msg = rt_message_new(type, (uint8_t)size);
    if (msg == NULL) {
        return NULL;
    }
    store_u16(msg->payload, params);
    uint8_t *out = msg->payload + 2;
    for (int i = 0; i < layout->count; i++) {
        if (params & (1u << i)) {
            memcpy(out, base + layout->offsets[i], (size_t)layout->widths[i]);
            out += layout->widths[i];
        }
    }
    return msg;
}

int
rt_check_values(const rt_Message *msg, const rt_layout *layout)
{
    if (msg->length < 2) {
        PyObject *size = PyLong_FromLong(msg->length);
        rt_raise_message_error(RT_GENERIC_ERROR, "payload too short for a parameter bitmap", "size", size, NULL);
        Py_XDECREF(size);
        return -1;
    }
    uint16_t params = load_u16(msg->payload);
    Py_ssize_t expected = rt_values_size(layout, params);
    if (expected < 0) {
        return -1;
    }
    if (expected != msg->length) {
        PyObject *exp = PyLong_FromSsize_t(expected);
        PyObject *act = PyLong_FromLong(msg->length);
        rt_raise_message_error(RT_GENERIC_ERROR, "payload length does not match the flagged parameters",
                               "expected", exp, "actual", act, NULL);
        Py_XDECREF(exp);
        Py_XDECREF(act);
        return -1;
    }
    return params;
}

void
rt_copy_values(const rt_Message *msg, const rt_layout *layout, uint8_t *base)
{
    unsigned params = load_u16(msg->payload);
    if (layout->count < RT_MAX_PARAMS) {
        params &= (1u << layout->count) - 1;
    }
    const uint8_t *in = msg->payload + 2;
    for (; params != 0; params &= params - 1) {
        int i = __builtin_ctz(params);
        Py_ssize_t width = layout->widths[i];
        uint8_t *to = base + layout->offsets[i];
        if (width == 4) {  /* the usual float or int32: one load and one store */
            memcpy(to, in, 4);
        }
        else {
            memcpy(to, in, (size_t)width);
        }
        in += width;
    }
}

/* ---- ParamLayout -------------------------------------------------------- */

static int
ParamLayout_init(rt_ParamLayout *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"entries", NULL};
    PyObject *entries;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:ParamLayout", kwlist, &entries)) {
        return -1;
    }
    PyObject *seq = PySequence_Fast(entries, "entries must be a sequence of (offset, width) pairs");
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count > RT_MAX_PARAMS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "a layout has at most %d parameters, not %zd", RT_MAX_PARAMS, count);
        return -1;
    }
    memset(&self->layout, 0, sizeof(self->layout));
    self->layout.count = (int)count;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t offset, width;
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(item)) {  /* PyArg_ParseTuple would raise SystemError */
            Py_DECREF(seq);
            PyErr_Format(PyExc_TypeError, "layout entry for parameter %zd must be an (offset, width) tuple, not %.100s",
                         i, Py_TYPE(item)->tp_name);
            return -1;
        }
        if (!PyArg_ParseTuple(item, "nn:ParamLayout entry", &offset, &width)) {
            Py_DECREF(seq);
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {  /* out of range, like a negative offset */
                PyErr_Format(PyExc_ValueError, "bad layout entry for parameter %zd: offset or width out of range", i);
            }
            return -1;
        }
        if (offset < 0 || width < 0 || width > RT_MAX_PAYLOAD - 2 || offset > PY_SSIZE_T_MAX - width) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "bad layout entry for parameter %zd: offset %zd, width %zd", i, offset,
                         width);
            return -1;
        }
        self->layout.offsets[i] = offset;
        self->layout.widths[i] = width;
        if (offset + width > self->layout.span) {
            self->layout.span = offset + width;
        }
    }
    Py_DECREF(seq);
    return 0;
}

static PyObject *
ParamLayout_size(rt_ParamLayout *self, PyObject *arg)
{
    unsigned long long params;
    if (as_uint(arg, 0xFFFF, "params", &params) < 0) {
        return NULL;
    }
    Py_ssize_t size = rt_values_size(&self->layout, (uint16_t)params);
    return size < 0 ? NULL : PyLong_FromSsize_t(size);
}

static PyObject *
ParamLayout_get_count(rt_ParamLayout *self, void *closure)
{
    return PyLong_FromLong(self->layout.count);
}

static PyObject *
ParamLayout_get_span(rt_ParamLayout *self, void *closure)
{
    return PyLong_FromSsize_t(self->layout.span);
}

static PyObject *
ParamLayout_get_entries(rt_ParamLayout *self, void *closure)
{
    PyObject *result = PyTuple_New(self->layout.count);
    for (int i = 0; result != NULL && i < self->layout.count; i++) {
        PyObject *entry = Py_BuildValue("(nn)", self->layout.offsets[i], self->layout.widths[i]);
        if (entry == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(result, i, entry);
    }
    return result;
}

static PyMethodDef ParamLayout_methods[] = {
    {"size", (PyCFunction)ParamLayout_size, METH_O,
     "size(params) -> int: payload bytes of a DEV_DATA/DEV_WRITE carrying these parameters."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ParamLayout_getset[] = {
    {"count", (getter)ParamLayout_get_count, NULL, "Number of parameter IDs covered.", NULL},
    {"span", (getter)ParamLayout_get_span, NULL, "Bytes of memory the layout reaches.", NULL},
    {"entries", (getter)ParamLayout_get_entries, NULL, "(offset, width) per parameter ID.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject rt_ParamLayoutType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime.messaging.ParamLayout",
    .tp_basicsize = sizeof(rt_ParamLayout),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ParamLayout(entries)\n\n"
              "Where parameter values live in memory: entries[i] = (offset, width) for\n"
              "parameter ID i; width 0 means the ID is unused.",
    .tp_methods = ParamLayout_methods,
    .tp_getset = ParamLayout_getset,
    .tp_init = (initproc)ParamLayout_init,
    .tp_new = PyType_GenericNew,
};

/* ---- Message: factories ------------------------------------------------- */

static int
parse_uints(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected, const char *fname,
            const char *const *names, const unsigned long long *maxima, unsigned long long *out)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd positional arguments (%zd given)", fname, expected, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < expected; i++) {
        if (as_uint(args[i], maxima[i], names[i], &out[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
make_empty(uint8_t type)
{
    return (PyObject *)rt_message_new(type, 0);
}

static PyObject *
Message_make_ping(PyObject *unused, PyObject *noargs)
{
    return make_empty(RT_PING);
}

static PyObject *
Message_make_dev_disable(PyObject *unused, PyObject *noargs)
{
    return make_empty(RT_DEV_DISABLE);
}

static PyObject *
Message_make_unsubscribe(PyObject *unused, PyObject *noargs)
{
    rt_Message *msg = rt_message_new(RT_SUB_REQ, 4);
    if (msg != NULL) {
        memset(msg->payload, 0, 4);
    }
    return (PyObject *)msg;
}

static PyObject *
Message_make_sub_req(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    static const char *const names[] = {"params", "interval_ms"};
    static const unsigned long long maxima[] = {0xFFFF, 0xFFFF};
    unsigned long long v[2];
    if (parse_uints(args, nargs, 2, "make_sub_req", names, maxima, v) < 0) {
        return NULL;
    }
    rt_Message *msg = rt_message_new(RT_SUB_REQ, 4);
    if (msg != NULL) {
        store_u16(msg->payload, (uint16_t)v[0]);
        store_u16(msg->payload + 2, (uint16_t)v[1]);
    }
    return (PyObject *)msg;
}

static PyObject *
Message_make_sub_res(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    static const char *const names[] = {"params", "interval_ms", "device_id", "year", "random"};
    static const unsigned long long maxima[] = {0xFFFF, 0xFFFF, 0xFFFF, 0xFF, UINT64_MAX};
    unsigned long long v[5];
    if (parse_uints(args, nargs, 5, "make_sub_res", names, maxima, v) < 0) {
        return NULL;
    }
    rt_Message *msg = rt_message_new(RT_SUB_RES, 15);
    if (msg != NULL) {
        store_u16(msg->payload, (uint16_t)v[0]);
        store_u16(msg->payload + 2, (uint16_t)v[1]);
        store_u16(msg->payload + 4, (uint16_t)v[2]);
        msg->payload[6] = (uint8_t)v[3];
        for (int i = 0; i < 8; i++) {
            msg->payload[7 + i] = (uint8_t)(v[4] >> (8 * i));
        }
    }
    return (PyObject *)msg;
}

static PyObject *
Message_make_dev_read(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    static const char *const names[] = {"params"};
    static const unsigned long long maxima[] = {0xFFFF};
    unsigned long long v[1];
    if (parse_uints(args, nargs, 1, "make_dev_read", names, maxima, v) < 0) {
        return NULL;
    }
    rt_Message *msg = rt_message_new(RT_DEV_READ, 2);
    if (msg != NULL) {
        store_u16(msg->payload, (uint16_t)v[0]);
    }
    return (PyObject *)msg;
}

static PyObject *
make_byte(PyObject *const *args, Py_ssize_t nargs, uint8_t type, const char *fname, const char *what)
{
    const char *const names[] = {what};
    static const unsigned long long maxima[] = {0xFF};
    unsigned long long v[1];
    if (parse_uints(args, nargs, 1, fname, names, maxima, v) < 0) {
        return NULL;
    }
    rt_Message *msg = rt_message_new(type, 1);
    if (msg != NULL) {
        msg->payload[0] = (uint8_t)v[0];
    }
    return (PyObject *)msg;
}

static PyObject *
Message_make_hb_req(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    return make_byte(args, nargs, RT_HB_REQ, "make_hb_req", "heartbeat id");
}

static PyObject *
Message_make_hb_res(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    return make_byte(args, nargs, RT_HB_RES, "make_hb_res", "heartbeat id");
}

static PyObject *
Message_make_error(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *msg = make_byte(args, nargs, RT_ERROR, "make_error", "error code");
    if (msg != NULL && !is_known_error(((rt_Message *)msg)->payload[0])) {
        PyErr_Format(PyExc_ValueError, "unknown error code %R", args[0]);
        Py_CLEAR(msg);
    }
    return msg;
}

static PyObject *
make_values(PyObject *const *args, Py_ssize_t nargs, uint8_t type, const char *fname)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s(params, layout, memory) takes 3 arguments (%zd given)", fname, nargs);
        return NULL;
    }
    unsigned long long params;
    if (as_uint(args[0], 0xFFFF, "params", &params) < 0) {
        return NULL;
    }
    if (!PyObject_TypeCheck(args[1], &rt_ParamLayoutType)) {
        PyErr_Format(PyExc_TypeError, "layout must be a ParamLayout, not %.100s", Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    const rt_layout *layout = &((rt_ParamLayout *)args[1])->layout;
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (view.len < layout->span) {
        PyErr_Format(PyExc_ValueError, "memory is %zd bytes; the layout needs %zd", view.len, layout->span);
    }
    else {
        result = (PyObject *)rt_make_values(type, (uint16_t)params, layout, (const uint8_t *)view.buf);
    }
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
Message_make_dev_data(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    return make_values(args, nargs, RT_DEV_DATA, "make_dev_data");
}

static PyObject *
Message_make_dev_write(PyObject *unused, PyObject *const *args, Py_ssize_t nargs)
{
    return make_values(args, nargs, RT_DEV_WRITE, "make_dev_write");
}

/* ---- Message: readers --------------------------------------------------- */

static int
expect(const rt_Message *msg, uint8_t type, int length)
{
    if (msg->type != type) {
        PyObject *expected = rt_message_type(type);
        PyObject *actual = expected || !PyErr_Occurred() ? rt_message_type(msg->type) : NULL;
        if (PyErr_Occurred()) {
            return -1;
        }
        expected = expected ? expected : Py_None;
        actual = actual ? actual : Py_None;
        rt_raise(rt_MessageError, "wrong message type for this reader", "expected", expected, "actual", actual,
                 NULL);
        return -1;
    }
    if (length >= 0 && msg->length != length) {
        PyObject *exp = PyLong_FromLong(length);
        PyObject *act = PyLong_FromLong(msg->length);
        PyObject *member = rt_message_type(type);
        if (member != NULL || !PyErr_Occurred()) {
            rt_raise_message_error(RT_GENERIC_ERROR, "payload has the wrong length for its type", "type", member,
                                   "expected", exp, "actual", act, NULL);
        }
        Py_XDECREF(exp);
        Py_XDECREF(act);
        return -1;
    }
    return 0;
}

static PyObject *
Message_read_sub_req(rt_Message *self, PyObject *unused)
{
    if (expect(self, RT_SUB_REQ, 4) < 0) {
        return NULL;
    }
    return Py_BuildValue("(HH)", load_u16(self->payload), load_u16(self->payload + 2));
}

static PyObject *
Message_read_sub_res(rt_Message *self, PyObject *unused)
{
    if (expect(self, RT_SUB_RES, 15) < 0) {
        return NULL;
    }
    unsigned long long random = 0;
    for (int i = 7; i >= 0; i--) {
        random = (random << 8) | self->payload[7 + i];
    }
    return Py_BuildValue("(HH(HBK))", load_u16(self->payload), load_u16(self->payload + 2),
                         load_u16(self->payload + 4), self->payload[6], random);
}

static PyObject *
Message_read_dev_read(rt_Message *self, PyObject *unused)
{
    if (expect(self, RT_DEV_READ, 2) < 0) {
        return NULL;
    }
    return PyLong_FromLong(load_u16(self->payload));
}

static PyObject *
Message_read_hb_req(rt_Message *self, PyObject *unused)
{
    if (expect(self, RT_HB_REQ, 1) < 0) {
        return NULL;
    }
    return PyLong_FromLong(self->payload[0]);
}

static PyObject *
Message_read_hb_res(rt_Message *self, PyObject *unused)
{
    if (expect(self, RT_HB_RES, 1) < 0) {
        return NULL;
    }
    return PyLong_FromLong(self->payload[0]);
}

static PyObject *
Message_read_error(rt_Message *self, PyObject *unused)
{
    if (expect(self, RT_ERROR, 1) < 0) {
        return NULL;
    }
    uint8_t code = self->payload[0];
    PyObject *member = is_known_error(code) ? rt_error_code(code) : NULL;
    if (member == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        PyObject *code_obj = PyLong_FromLong(code);
        rt_raise(rt_MessageError, "unknown error code", "code", code_obj, NULL);
        Py_XDECREF(code_obj);
        return NULL;
    }
    return Py_NewRef(member);
}

static PyObject *
read_values(rt_Message *self, PyObject *const *args, Py_ssize_t nargs, uint8_t type, const char *fname)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s(layout, memory) takes 2 arguments (%zd given)", fname, nargs);
        return NULL;
    }
    if (!PyObject_TypeCheck(args[0], &rt_ParamLayoutType)) {
        PyErr_Format(PyExc_TypeError, "layout must be a ParamLayout, not %.100s", Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    if (expect(self, type, -1) < 0) {
        return NULL;
    }
    const rt_layout *layout = &((rt_ParamLayout *)args[0])->layout;
    int params = rt_check_values(self, layout);
    if (params < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (view.len < layout->span) {
        PyErr_Format(PyExc_ValueError, "memory is %zd bytes; the layout needs %zd", view.len, layout->span);
        PyBuffer_Release(&view);
        return NULL;
    }
    rt_copy_values(self, layout, (uint8_t *)view.buf);
    PyBuffer_Release(&view);
    return PyLong_FromLong(params);
}

static PyObject *
Message_read_dev_data(rt_Message *self, PyObject *const *args, Py_ssize_t nargs)
{
    return read_values(self, args, nargs, RT_DEV_DATA, "read_dev_data");
}

static PyObject *
Message_read_dev_write(rt_Message *self, PyObject *const *args, Py_ssize_t nargs)
{
    return read_values(self, args, nargs, RT_DEV_WRITE, "read_dev_write");
}

/* ---- Message: object protocol ------------------------------------------- */

static PyObject *
Message_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"type", "payload", NULL};
    PyObject *type_obj;
    Py_buffer payload = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|y*:Message", kwlist, &type_obj, &payload)) {
        return NULL;
    }
    unsigned long long type_value;
    rt_Message *msg = NULL;
    if (as_uint(type_obj, 0xFF, "type", &type_value) == 0) {
        if (!is_known_type((uint8_t)type_value)) {
            PyErr_Format(PyExc_ValueError, "unknown message type %R", type_obj);
        }
        else if (payload.len > RT_MAX_PAYLOAD) {
            PyErr_Format(PyExc_ValueError, "payload is %zd bytes; at most %d fit", payload.len, RT_MAX_PAYLOAD);
        }
        else if ((msg = rt_message_new((uint8_t)type_value, (uint8_t)payload.len)) != NULL && payload.len) {
            memcpy(msg->payload, payload.buf, (size_t)payload.len);
        }
    }
    if (payload.obj != NULL) {
        PyBuffer_Release(&payload);
    }
    return (PyObject *)msg;
}

static Py_ssize_t
Message_len(rt_Message *self)
{
    return 3 + (Py_ssize_t)self->length;
}

static PyObject *
Message_get_type(rt_Message *self, void *closure)
{
    PyObject *member = rt_message_type(self->type);
    if (member == NULL) {
        return PyErr_Occurred() ? NULL : PyLong_FromLong(self->type);
    }
    Py_INCREF(member);
    return member;
}

static PyObject *
Message_get_payload(rt_Message *self, void *closure)
{
    return PyBytes_FromStringAndSize((const char *)self->payload, self->length);
}

static PyObject *
Message_repr(rt_Message *self)
{
    PyObject *payload = Message_get_payload(self, NULL);
    if (payload == NULL) {
        return NULL;
    }
    PyObject *repr = PyUnicode_FromFormat("Message(MessageType.%s, %R)", type_name(self->type), payload);
    Py_DECREF(payload);
    return repr;
}

static PyObject *
Message_richcompare(PyObject *a, PyObject *b, int op)
{
    if (!PyObject_TypeCheck(b, &rt_MessageType) || (op != Py_EQ && op != Py_NE)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    rt_Message *x = (rt_Message *)a, *y = (rt_Message *)b;
    int equal = x->type == y->type && x->length == y->length && memcmp(x->payload, y->payload, x->length) == 0;
    return PyBool_FromLong(op == Py_EQ ? equal : !equal);
}

static PyMethodDef Message_methods[] = {
    {"decode", (PyCFunction)Message_decode, METH_O | METH_CLASS,
     "decode(data) -> Message: decode one COBS frame (without the 0x00 delimiter).\n"
     "Raises MessageError when the frame is malformed."},
    {"encode", (PyCFunction)Message_encode, METH_NOARGS, "encode() -> bytes: the COBS frame, without delimiter."},
    {"encode_into", (PyCFunction)Message_encode_into, METH_O,
     "encode_into(buffer) -> int: write the COBS frame into a writeable buffer; return its size."},
    {"make_ping", (PyCFunction)Message_make_ping, METH_NOARGS | METH_STATIC, "make_ping() -> PING message."},
    {"make_sub_req", (PyCFunction)(void (*)(void))Message_make_sub_req, METH_FASTCALL | METH_STATIC,
     "make_sub_req(params, interval_ms) -> SUB_REQ message."},
    {"make_sub_res", (PyCFunction)(void (*)(void))Message_make_sub_res, METH_FASTCALL | METH_STATIC,
     "make_sub_res(params, interval_ms, device_id, year, random) -> SUB_RES message."},
    {"make_dev_read", (PyCFunction)(void (*)(void))Message_make_dev_read, METH_FASTCALL | METH_STATIC,
     "make_dev_read(params) -> DEV_READ message."},
    {"make_dev_write", (PyCFunction)(void (*)(void))Message_make_dev_write, METH_FASTCALL | METH_STATIC,
     "make_dev_write(params, layout, memory) -> DEV_WRITE carrying the flagged values read from memory."},
    {"make_dev_data", (PyCFunction)(void (*)(void))Message_make_dev_data, METH_FASTCALL | METH_STATIC,
     "make_dev_data(params, layout, memory) -> DEV_DATA carrying the flagged values read from memory."},
    {"make_dev_disable", (PyCFunction)Message_make_dev_disable, METH_NOARGS | METH_STATIC,
     "make_dev_disable() -> DEV_DISABLE message."},
    {"make_hb_req", (PyCFunction)(void (*)(void))Message_make_hb_req, METH_FASTCALL | METH_STATIC,
     "make_hb_req(id) -> HB_REQ message."},
    {"make_hb_res", (PyCFunction)(void (*)(void))Message_make_hb_res, METH_FASTCALL | METH_STATIC,
     "make_hb_res(id) -> HB_RES message."},
    {"make_error", (PyCFunction)(void (*)(void))Message_make_error, METH_FASTCALL | METH_STATIC,
     "make_error(code) -> ERROR message."},
    {"make_unsubscribe", (PyCFunction)Message_make_unsubscribe, METH_NOARGS | METH_STATIC,
     "make_unsubscribe() -> SUB_REQ for no parameters with interval 0."},
    {"read_sub_req", (PyCFunction)Message_read_sub_req, METH_NOARGS, "read_sub_req() -> (params, interval_ms)"},
    {"read_sub_res", (PyCFunction)Message_read_sub_res, METH_NOARGS,
     "read_sub_res() -> (params, interval_ms, (device_id, year, random))"},
    {"read_dev_read", (PyCFunction)Message_read_dev_read, METH_NOARGS, "read_dev_read() -> params"},
    {"read_dev_write", (PyCFunction)(void (*)(void))Message_read_dev_write, METH_FASTCALL,
     "read_dev_write(layout, memory) -> params: copy the values into memory."},
    {"read_dev_data", (PyCFunction)(void (*)(void))Message_read_dev_data, METH_FASTCALL,
     "read_dev_data(layout, memory) -> params: copy the values into memory."},
    {"read_hb_req", (PyCFunction)Message_read_hb_req, METH_NOARGS, "read_hb_req() -> heartbeat id"},
    {"read_hb_res", (PyCFunction)Message_read_hb_res, METH_NOARGS, "read_hb_res() -> heartbeat id"},
    {"read_error", (PyCFunction)Message_read_error, METH_NOARGS, "read_error() -> ErrorCode"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Message_getset[] = {
    {"type", (getter)Message_get_type, NULL, "The MessageType.", NULL},
    {"payload", (getter)Message_get_payload, NULL, "The payload bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Message_as_sequence = {
    .sq_length = (lenfunc)Message_len,
};

PyTypeObject rt_MessageType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime.messaging.Message",
    .tp_basicsize = sizeof(rt_Message),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Message(type, payload=b'')\n\n"
              "One Smart Device message: type, payload and (computed) checksum.\n"
              "len(message) is its unframed size, 3 + payload length.",
    .tp_repr = (reprfunc)Message_repr,
    .tp_as_sequence = &Message_as_sequence,
    .tp_richcompare = Message_richcompare,
    .tp_methods = Message_methods,
    .tp_getset = Message_getset,
    .tp_new = Message_new,
};

int
rt_message_module_init(PyObject *module)
{
    if (PyType_Ready(&rt_MessageType) < 0 || PyType_Ready(&rt_ParamLayoutType) < 0) {
        return -1;
    }
    Py_INCREF(&rt_MessageType);
    if (PyModule_AddObject(module, "Message", (PyObject *)&rt_MessageType) < 0) {
        return -1;
    }
    Py_INCREF(&rt_ParamLayoutType);
    if (PyModule_AddObject(module, "ParamLayout", (PyObject *)&rt_ParamLayoutType) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "MAX_PARAMS", RT_MAX_PARAMS) < 0
        || PyModule_AddIntConstant(module, "MAX_PAYLOAD", RT_MAX_PAYLOAD) < 0
        || PyModule_AddIntConstant(module, "MAX_MESSAGE", RT_MAX_MESSAGE) < 0
        || PyModule_AddIntConstant(module, "MAX_ENCODING_SIZE", RT_MAX_ENCODING) < 0
        || PyModule_AddIntConstant(module, "ALL_PARAMS", RT_ALL_PARAMS) < 0) {
        return -1;
    }
    return 0;
}
