/*
 * The cold parts of value conversion (convert.h has the per-kind fast paths).
 */
#include "convert.h"

static const char *const kind_names[] = {"bool", "int8", "uint8", "int16", "uint16", "int32",
                                         "uint32", "int64", "uint64", "float32", "float64", "raw"};

int
rt_kind_from_name(const char *name)
{
    for (int k = 0; k <= K_RAW; k++) {
        if (strcmp(kind_names[k], name) == 0) {
            return k;
        }
    }
    return -1;
}

int
rt_warn_clamped(const rt_param *p, PyObject *value, double lo, double hi, double bound)
{
    PyObject *lower = PyFloat_FromDouble(lo);
    PyObject *upper = PyFloat_FromDouble(hi);
    PyObject *clamped = PyFloat_FromDouble(bound);
    int rc = -1;
    if (lower && upper && clamped) {
        rc = PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "parameter %U: %R is out of bounds [%R, %R]; clamped to %R",
                              p->name, value, lower, upper, clamped);
    }
    Py_XDECREF(lower);
    Py_XDECREF(upper);
    Py_XDECREF(clamped);
    return rc;
}

const struct rt_int_range rt_int_ranges[K_U32 + 1] = {
    [K_I8] = {-128.0, 127.0},
    [K_U8] = {0.0, 255.0},
    [K_I16] = {-32768.0, 32767.0},
    [K_U16] = {0.0, 65535.0},
    [K_I32] = {-2147483648.0, 2147483647.0},
    [K_U32] = {0.0, 4294967295.0},
};
