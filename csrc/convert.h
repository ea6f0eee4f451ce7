/*
 * Parameter values between Python objects and their bytes in a segment
 * (the ctypes kinds of segment.h). The per-kind conversions run on every
 * get/set/write, so they are static inline here; the cold parts (kind names,
 * clamping warnings) are in convert.c.
 */
#ifndef RUNTIME_CONVERT_H
#define RUNTIME_CONVERT_H

#include "segment.h"

#include <math.h>
#include <string.h>

#pragma GCC visibility push(hidden)  /* internal to the shared object (core.h) */

/* The kind named `name` ("bool", "int8", ..., "raw"), or -1. */
int rt_kind_from_name(const char *name);
/* RuntimeWarning: `value` for `p` is out of [lo, hi], clamped to `bound`. Returns 0, or -1 when raised. */
int rt_warn_clamped(const rt_param *p, PyObject *value, double lo, double hi, double bound);
/* The range of each integer kind up to K_U32. */
struct rt_int_range {
    double lo, hi;
};
extern const struct rt_int_range rt_int_ranges[K_U32 + 1];

/* The value of parameter `p` stored at `src`, as a Python object. */
static inline PyObject *
rt_to_python(const rt_param *p, const uint8_t *src)
{
    switch (p->kind) {
    case K_BOOL:
        return PyBool_FromLong(*src != 0);
    case K_I8:
        return PyLong_FromLong(*(const int8_t *)src);
    case K_U8:
        return PyLong_FromLong(*src);
    case K_I16: {
        int16_t v;
        memcpy(&v, src, 2);
        return PyLong_FromLong(v);
    }
    case K_U16: {
        uint16_t v;
        memcpy(&v, src, 2);
        return PyLong_FromLong(v);
    }
    case K_I32: {
        int32_t v;
        memcpy(&v, src, 4);
        return PyLong_FromLong(v);
    }
    case K_U32: {
        uint32_t v;
        memcpy(&v, src, 4);
        return PyLong_FromUnsignedLong(v);
    }
    case K_I64: {
        int64_t v;
        memcpy(&v, src, 8);
        return PyLong_FromLongLong(v);
    }
    case K_U64: {
        uint64_t v;
        memcpy(&v, src, 8);
        return PyLong_FromUnsignedLongLong(v);
    }
    case K_F32: {
        float v;
        memcpy(&v, src, 4);
        return PyFloat_FromDouble(v);
    }
    case K_F64: {
        double v;
        memcpy(&v, src, 8);
        return PyFloat_FromDouble(v);
    }
    default: {
        PyObject *raw = PyBytes_FromStringAndSize((const char *)src, p->size);
        if (raw == NULL) {
            return NULL;
        }
        PyObject *value = PyObject_CallOneArg(p->to_python, raw);
        Py_DECREF(raw);
        return value;
    }
    }
}

/* Convert `value` for parameter `p` of buffer `acc` into `out` (p->size
 * bytes), clamping to the bounds with a warning; a NaN or an infinity for a
 * parameter with a finite bound is refused (no clamp makes it a safe value).
 * Runs before the lock is taken. */
static inline __attribute__((always_inline)) int
rt_from_python(rt_BufferAccess *acc, const rt_param *p, PyObject *value, uint8_t *out, PyObject **raw_holder)
{
    if (p->kind == K_F32 || p->kind == K_F64) {
        double v;
        if (PyFloat_CheckExact(value)) {  /* the usual case: no conversion, no error to look for */
            v = PyFloat_AS_DOUBLE(value);
            goto real;
        }
        if (!PyFloat_Check(value) && !PyLong_Check(value)) {
            if (PyUnicode_Check(value) || PyBytes_Check(value) || !Py_TYPE(value)->tp_as_number
                || !Py_TYPE(value)->tp_as_number->nb_float) {
                PyErr_Format(PyExc_TypeError, "parameter %U takes a real number, not %.100s", p->name,
                             Py_TYPE(value)->tp_name);
                return -1;
            }
        }
        v = PyFloat_AsDouble(value);
        if (v == -1.0 && PyErr_Occurred()) {
            if (!PyLong_Check(value) || !PyErr_ExceptionMatches(PyExc_OverflowError)) {
                return -1;
            }
            PyErr_Clear();  /* an int beyond any double: infinitely far, so clamped below */
            int overflow;
            PyLong_AsLongLongAndOverflow(value, &overflow);
            v = overflow < 0 ? -HUGE_VAL : HUGE_VAL;
        }
    real:
        if (!isfinite(v) && (isfinite(p->lower) || isfinite(p->upper)) && !PyLong_Check(value)) {
            rt_raise(rt_DeviceBufferError, "parameter has finite bounds and takes only finite numbers", "buffer",
                     acc->name, "param", p->name, "value", value, NULL);
            return -1;
        }
        if (v < p->lower || v > p->upper) {
            double bound = v < p->lower ? p->lower : p->upper;
            if (rt_warn_clamped(p, value, p->lower, p->upper, bound) < 0) {
                return -1;
            }
            v = bound;
        }
        if (p->kind == K_F32) {
            float f = (float)v;
            memcpy(out, &f, 4);
        }
        else {
            memcpy(out, &v, 8);
        }
        return 0;
    }
    if (p->kind == K_BOOL) {
        if (!PyBool_Check(value) && !PyLong_Check(value)) {
            PyErr_Format(PyExc_TypeError, "parameter %U takes a bool, not %.100s", p->name, Py_TYPE(value)->tp_name);
            return -1;
        }
        int truth = PyObject_IsTrue(value);
        if (truth < 0) {
            return -1;
        }
        *out = (uint8_t)truth;
        return 0;
    }
    if (p->kind == K_RAW) {
        PyObject *raw = PyObject_CallOneArg(p->from_python, value);
        if (raw == NULL) {
            return -1;
        }
        if (!PyBytes_Check(raw) || PyBytes_GET_SIZE(raw) != p->size) {
            Py_DECREF(raw);
            PyErr_Format(PyExc_TypeError, "parameter %U: converter returned the wrong size", p->name);
            return -1;
        }
        *raw_holder = raw;  /* copied from the bytes object under the lock */
        return 0;
    }
    /* integers */
    if (!PyLong_Check(value)) {
        if (PyFloat_Check(value) || !Py_TYPE(value)->tp_as_number || !Py_TYPE(value)->tp_as_number->nb_index) {
            PyErr_Format(PyExc_TypeError, "parameter %U takes an integer, not %.100s", p->name,
                         Py_TYPE(value)->tp_name);
            return -1;
        }
    }
    PyObject *index = PyNumber_Index(value);
    if (index == NULL) {
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(index, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        Py_DECREF(index);
        return -1;
    }
    if (p->kind == K_U64 && overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(index);
        Py_DECREF(index);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            u = UINT64_MAX;
            if (rt_warn_clamped(p, value, 0.0, (double)u, (double)u) < 0) {
                return -1;
            }
        }
        memcpy(out, &u, 8);
        return 0;
    }
    Py_DECREF(index);
    double lo = p->lower, hi = p->upper;
    if (p->kind <= K_U32) {
        lo = fmax(lo, rt_int_ranges[p->kind].lo);
        hi = fmin(hi, rt_int_ranges[p->kind].hi);
    }
    else if (p->kind == K_U64) {
        lo = fmax(lo, 0.0);
    }
    if (overflow != 0 || (double)v < lo || (double)v > hi) {
        double bound = (overflow < 0 || (overflow == 0 && (double)v < lo)) ? lo : hi;
        if (rt_warn_clamped(p, value, lo, hi, bound) < 0) {
            return -1;
        }
        v = (bound >= 9.2233720368547758e18) ? INT64_MAX : (bound <= -9.2233720368547758e18) ? INT64_MIN : (long long)bound;
    }
    switch (p->kind) {
    case K_I8:
    case K_U8:
        *out = (uint8_t)v;
        break;
    case K_I16:
    case K_U16: {
        uint16_t x = (uint16_t)v;
        memcpy(out, &x, 2);
        break;
    }
    case K_I32:
    case K_U32: {
        uint32_t x = (uint32_t)v;
        memcpy(out, &x, 4);
        break;
    }
    default: {
        int64_t x = (int64_t)v;
        memcpy(out, &x, 8);
    }
    }
    return 0;
}

#pragma GCC visibility pop

#endif
