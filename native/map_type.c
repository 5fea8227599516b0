/* The MapBase Python type: the C base of viperdbm's dbm object (_dbm._Database subclasses it
 * together with MutableMapping), so that db[k] = v, db[k], k in db, del db[k] and len(db) run
 * without a Python frame: the mapping slots call the core directly and fall back to the
 * engine's one entry point for the slow path, Engine.write_slow (viperdbm/_engine.py), only
 * when the write needs something (a block, a jumbo block, the end of a reorganize(), the
 * reserve back) or, done, raised the core's reclaim_due. */
#include "core.h"

typedef struct {
    PyObject_HEAD Core *core; /* NULL when the store is closed */
    PyObject *engine;         /* has write_slow(code, key, value or None) -> bool */
    PyObject *on_readonly;    /* called (no arguments) to raise ReadonlyError */
    int readonly;
} MapBase;

static PyObject *str_write_slow;

static Core *map_core(MapBase *m) {
    if (m->core == NULL) {
        core_error(ERR_CLOSED);
        return NULL;
    }
    return m->core;
}

static int map_refuse_readonly(MapBase *m) {
    PyObject *r = m->on_readonly ? PyObject_CallNoArgs(m->on_readonly) : NULL;
    if (r != NULL) { /* the callable was meant to raise */
        Py_DECREF(r);
        PyErr_SetString(PyExc_OSError, "the store was opened read-only");
    }
    return -1;
}

static int MapBase_traverse(MapBase *m, visitproc visit, void *arg) {
    Py_VISIT(m->core);
    Py_VISIT(m->engine);
    Py_VISIT(m->on_readonly);
    return 0;
}

static int MapBase_clear(MapBase *m) {
    Py_CLEAR(m->core);
    Py_CLEAR(m->engine);
    Py_CLEAR(m->on_readonly);
    return 0;
}

static void MapBase_dealloc(MapBase *m) {
    PyObject_GC_UnTrack(m);
    MapBase_clear(m);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

/* _attach(core, engine, readonly, on_readonly) */
static PyObject *MapBase_attach(MapBase *m, PyObject *args) {
    PyObject *core, *engine, *on_readonly;
    int readonly;
    if (!PyArg_ParseTuple(args, "O!OpO", &CoreType, &core, &engine, &readonly, &on_readonly)) return NULL;
    Py_INCREF(core);
    Py_INCREF(engine);
    Py_INCREF(on_readonly);
    MapBase_clear(m);
    m->core = (Core *)core;
    m->engine = engine;
    m->on_readonly = on_readonly;
    m->readonly = readonly;
    Py_RETURN_NONE;
}

static PyObject *MapBase_detach(MapBase *m, PyObject *unused) {
    (void)unused;
    MapBase_clear(m);
    Py_RETURN_NONE;
}

static Py_ssize_t MapBase_len(MapBase *m) {
    Core *c = map_core(m);
    return c ? Core_len(c) : -1;
}

static PyObject *MapBase_subscript(MapBase *m, PyObject *key) {
    Core *c = map_core(m);
    return c ? Core_getitem(c, key) : NULL;
}

/* The slow path of a write (value NULL: a delete) whose core call answered code: a need, or
 * RC_DONE with reclaim_due raised. Engine.write_slow meets the need, retries the write and
 * gives space back when that is due. 1 (written), 0 (a delete of a missing key) or -1 with
 * an exception set. */
static int map_write_slow(MapBase *m, int code, PyObject *key, PyObject *value) {
    PyObject *codeo = PyLong_FromLong(code);
    if (!codeo) return -1;
    PyObject *r = PyObject_CallMethodObjArgs(m->engine, str_write_slow, codeo, key, value ? value : Py_None, NULL);
    Py_DECREF(codeo);
    if (!r) return -1;
    int written = PyObject_IsTrue(r);
    Py_DECREF(r);
    return written;
}

static int map_put(MapBase *m, Core *c, PyObject *key, PyObject *value);

static int MapBase_ass_subscript(MapBase *m, PyObject *key, PyObject *value) {
    Core *c = map_core(m);
    if (!c) return -1;
    if (m->readonly) return map_refuse_readonly(m);
    if (value != NULL) return map_put(m, c, key, value);
    int rc = core_delete_obj(c, key, NULL);
    if (rc == RC_DONE && !c->reclaim_due) return 0;
    if (rc == -2) return -1;
    int found = rc == RC_MISSING ? 0 : map_write_slow(m, rc, key, NULL);
    if (found < 0) return -1;
    if (!found) {
        PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    return 0;
}


/* one put through the mapping, with the slow path: 0 or -1 with an exception set */
static int map_put(MapBase *m, Core *c, PyObject *key, PyObject *value) {
    int rc = core_put_obj(c, key, value);
    if (rc == RC_DONE && !c->reclaim_due) return 0;
    if (rc == -2) return -1;
    return map_write_slow(m, rc, key, value) < 0 ? -1 : 0;
}

/* get_many(keys, default=None) -> list: the value of each key (or default), in one call */
static PyObject *MapBase_get_many(MapBase *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get_many(keys, default=None)");
        return NULL;
    }
    Core *c = map_core(m);
    if (!c || core_check_open(c) < 0) return NULL;
    PyObject *dflt = nargs == 2 ? args[1] : Py_None;
    PyObject *seq = PySequence_Fast(args[0], "get_many() needs an iterable of keys");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    if (!out) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t j = find_arg(c, PySequence_Fast_GET_ITEM(seq, i));
        if (j == INT64_MIN) {
            Py_DECREF(out);
            Py_DECREF(seq);
            return NULL;
        }
        PyObject *v;
        if (j < 0) {
            Py_INCREF(dflt);
            v = dflt;
        } else if (!(v = value_of(c, (uint64_t)j))) {
            Py_DECREF(out);
            Py_DECREF(seq);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    Py_DECREF(seq);
    return out;
}

static PyObject *MapBase_items_list(MapBase *m, PyObject *unused) {
    (void)unused;
    Core *c = map_core(m);
    return c ? core_listing(c, LIST_ITEMS) : NULL;
}

static PyObject *MapBase_values_list(MapBase *m, PyObject *unused) {
    (void)unused;
    Core *c = map_core(m);
    return c ? core_listing(c, LIST_VALUES) : NULL;
}

static int MapBase_contains(MapBase *m, PyObject *key) {
    Core *c = map_core(m);
    if (!c) return -1;
    if (core_check_open(c) < 0) return -1;
    int64_t off = find_arg(c, key);
    if (off == INT64_MIN) return -1;
    return off >= 0;
}

static PyObject *MapBase_get(MapBase *m, PyObject *const *args, Py_ssize_t nargs) {
    Core *c = map_core(m);
    return c ? Core_get(c, args, nargs) : NULL;
}

static PyObject *MapBase_keys(MapBase *m, PyObject *unused) {
    Core *c = map_core(m);
    return c ? Core_keys(c, unused) : NULL;
}

static PyObject *MapBase_iter(MapBase *m) {
    /* a snapshot of the keys: the store may change while the caller iterates */
    PyObject *keys = MapBase_keys(m, NULL);
    if (!keys) return NULL;
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static PyObject *MapBase_firstkey(MapBase *m, PyObject *unused) {
    Core *c = map_core(m);
    return c ? Core_firstkey(c, unused) : NULL;
}

static PyObject *MapBase_nextkey(MapBase *m, PyObject *key) {
    Core *c = map_core(m);
    return c ? Core_nextkey(c, key) : NULL;
}

static PyMethodDef MapBase_methods[] = {
    {"_attach", (PyCFunction)MapBase_attach, METH_VARARGS, "_attach(core, engine, readonly, on_readonly)"},
    {"_detach", (PyCFunction)MapBase_detach, METH_NOARGS, "_detach(): the store is closed"},
    {"get", (PyCFunction)(void (*)(void))MapBase_get, METH_FASTCALL, "get(key, default=None): the value of key, or default"},
    {"keys", (PyCFunction)MapBase_keys, METH_NOARGS, "keys(): a list of every key (as every dbm module returns)"},
    {"get_many", (PyCFunction)(void (*)(void))MapBase_get_many, METH_FASTCALL,
     "get_many(keys, default=None): a list of the value of each key (or default), in one call"},
    {"_items_list", (PyCFunction)MapBase_items_list, METH_NOARGS, "every (key, value), in one call"},
    {"_values_list", (PyCFunction)MapBase_values_list, METH_NOARGS, "every value, in one call"},
    {"firstkey", (PyCFunction)MapBase_firstkey, METH_NOARGS,
     "firstkey(): the first key in the store's (hash) order, or None when it is empty (gdbm)"},
    {"nextkey", (PyCFunction)MapBase_nextkey, METH_O,
     "nextkey(key): the key after key in the order of firstkey(), or None at the end (gdbm)"},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods MapBase_as_mapping = {
    .mp_length = (lenfunc)MapBase_len,
    .mp_subscript = (binaryfunc)MapBase_subscript,
    .mp_ass_subscript = (objobjargproc)MapBase_ass_subscript,
};

static PySequenceMethods MapBase_as_sequence = {
    .sq_contains = (objobjproc)MapBase_contains,
};

static PyTypeObject MapBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "viperdbm._vipercore.MapBase",
    .tp_basicsize = sizeof(MapBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The native mapping slots of a viperdbm store object.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)MapBase_dealloc,
    .tp_traverse = (traverseproc)MapBase_traverse,
    .tp_clear = (inquiry)MapBase_clear,
    .tp_methods = MapBase_methods,
    .tp_as_mapping = &MapBase_as_mapping,
    .tp_as_sequence = &MapBase_as_sequence,
    .tp_iter = (getiterfunc)MapBase_iter,
};

int map_type_init(PyObject *module) {
    str_write_slow = PyUnicode_InternFromString("write_slow");
    if (!str_write_slow || PyType_Ready(&MapBaseType) < 0) return -1;
    Py_INCREF(&MapBaseType);
    if (PyModule_AddObject(module, "MapBase", (PyObject *)&MapBaseType) < 0) {
        Py_DECREF(&MapBaseType);
        return -1;
    }
    return 0;
}
