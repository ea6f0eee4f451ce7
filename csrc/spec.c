/*
 * BufferSpec: how one buffer type's parameters are laid out and converted,
 * computed once per type (segment.h has the structure).
 */
#include "convert.h"

#include <string.h>

/* ---- BufferSpec ---------------------------------------------------------- */

static int
BufferSpec_init(rt_BufferSpec *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"params", "update_offset", "write_offset", "meta_offset", "block_size",
                             "struct_size", "is_device", "safe", NULL};
    PyObject *params, *safe = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Onnnnnp|O!:BufferSpec", kwlist, &params, &self->update_offset,
                                     &self->write_offset, &self->meta_offset, &self->block_size,
                                     &self->struct_size, &self->is_device, &PyDict_Type, &safe)) {
        return -1;
    }
    PyObject *seq = PySequence_Fast(params, "params must be a sequence");
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int max_id = self->is_device ? RT_MAX_PARAMS : RT_MAX_BUFFER_PARAMS;
    if (n > max_id) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "too many parameters: %zd (at most %d)", n, max_id);
        return -1;
    }
    Py_XSETREF(self->index, PyDict_New());
    if (self->index == NULL) {
        Py_DECREF(seq);
        return -1;
    }
    for (int i = 0; i < RT_MAX_BUFFER_PARAMS; i++) {
        self->by_id[i] = -1;
    }
    memset(&self->layout, 0, sizeof(self->layout));
    self->readable = self->writeable = self->subscribed = 0;
    self->packed_params = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        rt_param *p = &self->params[i];
        const char *kind;
        int readable, writeable, subscribed;
        PyObject *name, *to_py = NULL, *from_py = NULL;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "Uisnnddppp|OO:BufferSpec param", &name, &p->id,
                              &kind, &p->offset, &p->size, &p->lower, &p->upper, &readable, &writeable,
                              &subscribed, &to_py, &from_py)) {
            Py_DECREF(seq);
            return -1;
        }
        p->kind = rt_kind_from_name(kind);
        if (p->kind < 0 || p->id < 0 || p->id >= max_id || self->by_id[p->id] >= 0 || p->offset < 0
            || p->size <= 0 || p->offset + p->size > self->block_size) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "bad parameter description for %R", name);
            return -1;
        }
        if (p->kind == K_RAW && (to_py == NULL || from_py == NULL)) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "raw parameter %R needs converters", name);
            return -1;
        }
        Py_INCREF(name);
        p->name = name;
        p->to_python = p->kind == K_RAW ? (Py_INCREF(to_py), to_py) : NULL;
        p->from_python = p->kind == K_RAW ? (Py_INCREF(from_py), from_py) : NULL;
        self->count = (int)i + 1;
        self->by_id[p->id] = (int)i;
        uint64_t bit = 1ULL << p->id;
        self->readable |= readable ? bit : 0;
        self->writeable |= writeable ? bit : 0;
        self->subscribed |= subscribed ? bit : 0;
        if (self->is_device) {
            self->layout.offsets[p->id] = p->offset;
            self->layout.widths[p->id] = p->size;
            if (p->id + 1 > self->layout.count) {
                self->layout.count = p->id + 1;
            }
            if (p->offset + p->size > self->layout.span) {
                self->layout.span = p->offset + p->size;
            }
        }
        PyObject *position = PyLong_FromSsize_t(i);
        if (position == NULL || PyDict_SetItem(self->index, name, position) < 0) {
            Py_XDECREF(position);
            Py_DECREF(seq);
            return -1;
        }
        Py_DECREF(position);
    }
    Py_DECREF(seq);
    self->safe_mask = 0;
    memset(self->safe, 0, sizeof(self->safe));
    if (safe != NULL) {  /* {id: bytes of the safe value as stored} */
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(safe, &pos, &key, &value)) {
            long id = PyLong_Check(key) ? PyLong_AsLong(key) : -1;
            int at = (id >= 0 && id < RT_MAX_PARAMS && self->is_device) ? self->by_id[id] : -1;
            if (at < 0 || !PyBytes_Check(value) || PyBytes_GET_SIZE(value) != self->params[at].size
                || self->params[at].size > 8 || !(self->writeable & (1ULL << id))) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "bad safe value for parameter id %R", key);
                return -1;
            }
            memcpy(self->safe[id], PyBytes_AS_STRING(value), (size_t)self->params[at].size);
            self->safe_mask |= 1ULL << id;
        }
    }
    return 0;
}

static int
BufferSpec_traverse(rt_BufferSpec *self, visitproc visit, void *arg)
{
    Py_VISIT(self->index);
    for (int i = 0; i < self->count; i++) {
        Py_VISIT(self->params[i].to_python);
        Py_VISIT(self->params[i].from_python);
    }
    return 0;
}

static int
BufferSpec_clear(rt_BufferSpec *self)
{
    Py_CLEAR(self->index);
    for (int i = 0; i < self->count; i++) {
        Py_CLEAR(self->params[i].name);
        Py_CLEAR(self->params[i].to_python);
        Py_CLEAR(self->params[i].from_python);
    }
    self->count = 0;
    return 0;
}

static void
BufferSpec_dealloc(rt_BufferSpec *self)
{
    PyObject_GC_UnTrack(self);
    BufferSpec_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
BufferSpec_get_masks(rt_BufferSpec *self, void *closure)
{
    return Py_BuildValue("(KKK)", (unsigned long long)self->readable, (unsigned long long)self->writeable,
                         (unsigned long long)self->subscribed);
}

static PyGetSetDef BufferSpec_getset[] = {
    {"masks", (getter)BufferSpec_get_masks, NULL, "(readable, writeable, subscribed) ID bitmaps.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject rt_BufferSpecType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._core.BufferSpec",
    .tp_basicsize = sizeof(rt_BufferSpec),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "How one buffer type's parameters are laid out and converted (computed once per type).",
    .tp_traverse = (traverseproc)BufferSpec_traverse,
    .tp_clear = (inquiry)BufferSpec_clear,
    .tp_dealloc = (destructor)BufferSpec_dealloc,
    .tp_getset = BufferSpec_getset,
    .tp_init = (initproc)BufferSpec_init,
    .tp_new = PyType_GenericNew,
};


int
rt_spec_module_init(PyObject *module)
{
    if (PyType_Ready(&rt_BufferSpecType) < 0) {
        return -1;
    }
    Py_INCREF(&rt_BufferSpecType);
    if (PyModule_AddObject(module, "BufferSpec", (PyObject *)&rt_BufferSpecType) < 0) {
        Py_DECREF(&rt_BufferSpecType);
        return -1;
    }
    return 0;
}
