/* The Core Python type: one open store's log, index and recovery scan. Its methods table, and
 * the entries of put, delete and get from Python objects. */
#include "core.h"

#include <errno.h>

/* Append item to list, taking over the reference to item (which may be NULL after a
 * failed constructor): 0, or -1 with an exception set. */
int list_append_new(PyObject *list, PyObject *item) {
    int rc = item ? PyList_Append(list, item) : -1;
    Py_XDECREF(item);
    return rc;
}

/* ------------------------------------------------------------------ Core methods */
static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"base", "mapped", "capacity_hint", "reserved", NULL};
    unsigned long long base = 0, mapped = 0, hint = 0, reserved = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KK|KK", kwlist, &base, &mapped, &hint, &reserved)) return NULL;
    if (base == 0 || (base % os_page) != 0) {
        internal_error("the pool is not mapped at a page boundary");
        return NULL;
    }
    Core *c = (Core *)type->tp_alloc(type, 0);
    if (!c) return NULL;
    c->base = (uint8_t *)(uintptr_t)base;
    c->mapped = mapped;
    /* reserved: the address space the pool can never outgrow (0: unknown, the most) */
    unsigned off_bits = SLOT_OFF_BITS_MAX;
    if (reserved && reserved >= mapped) {
        off_bits = reserved > 4 ? 64u - (unsigned)__builtin_clzll((reserved - 1) >> 2) : 1;
        if (off_bits < 20) off_bits = 20;
        if (off_bits > SLOT_OFF_BITS_MAX) off_bits = SLOT_OFF_BITS_MAX;
    }
    c->off_bits = off_bits;
    c->off_mask = (UINT64_C(1) << off_bits) - 1;
    c->active = -1;
    c->next_seq = 1;
    if (index_alloc(c, hint) < 0) {
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static void Core_dealloc(Core *c) {
    if (c->weakrefs) PyObject_ClearWeakRefs((PyObject *)c);
    if (c->forked) c->shared_role = SHARED_NONE; /* the parent's: publish nothing from here */
    shared_detach(c);
    PyMem_Free(c->pending);
    PyMem_Free(c->deleted);
    PyMem_Free(c->scanned);
    index_free(c);
    PyMem_Free(c->blocks);
    PyMem_Free(c->parts);
    free(c->stage_buf);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *Core_invalidate(Core *c, PyObject *args) {
    int forked = 0;
    if (!PyArg_ParseTuple(args, "|p", &forked)) return NULL;
    c->base = NULL; /* after this no method touches the mapping */
    c->forked = forked;
    if (forked) c->shared_role = SHARED_NONE; /* the parent's: publish nothing from here */
    shared_detach(c);
    Py_RETURN_NONE;
}

static PyObject *Core_set_mapped(Core *c, PyObject *arg) {
    unsigned long long m = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (m < c->mapped) {
        internal_error("the mapped size of a pool never shrinks");
        return NULL;
    }
    if (m > 4 && ((m - 1) >> 2) > c->off_mask && core_fit_offsets(c, m) < 0) return NULL;
    c->mapped = m;
    shared_set_mapped(c);
    Py_RETURN_NONE;
}

static PyObject *Core_set_persist(Core *c, PyObject *args) {
    int mode;
    unsigned long long fn = 0;
    if (!PyArg_ParseTuple(args, "i|K", &mode, &fn)) return NULL;
    if (mode < PERSIST_NONE || mode > PERSIST_FUNC || (mode == PERSIST_FUNC && fn == 0)) {
        internal_error("unknown persist mode, or no persist function");
        return NULL;
    }
    c->persist_mode = mode;
    c->persist_fn = (void (*)(const void *, size_t))(uintptr_t)fn;
    Py_RETURN_NONE;
}


/* Put from Python objects: a write code (RC_DONE or one need), or -2 with an exception set. */
int core_put_obj(Core *c, PyObject *key, PyObject *value) {
    if (core_check_open(c) < 0) return -2;
    if (c->io_errno) return core_io_refuse(c, 0) - 1;
    if (c->compacting) return RC_NEED_WAIT;
    if (c->puts_refused) return RC_NEED_RESERVE;
    KeyArg k, v;
    if (keyarg_get(key, &k, "keys") < 0) return -2;
    if (keyarg_get(value, &v, "values") < 0) {
        keyarg_release(&k);
        return -2;
    }
    int rc = do_put(c, k.p, (uint64_t)k.n, v.p, (uint64_t)v.n, 0, 0);
    keyarg_release(&k);
    keyarg_release(&v);
    if (rc >= 0 && c->io_errno) return core_io_refuse(c, 1) - 1;
    return rc < 0 ? -2 : rc;
}

/* put(key, value) -> a write code: RC_DONE, or what the put needs first */
static PyObject *Core_put(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(key, value)");
        return NULL;
    }
    int rc = core_put_obj(c, args[0], args[1]);
    return rc == -2 ? NULL : PyLong_FromLong(rc);
}

/* jumbo_size(klen, vlen) -> bytes to allocate for a jumbo block holding that record */
PyObject *Core_jumbo_size(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned long long klen, vlen;
    if (!PyArg_ParseTuple(args, "KK", &klen, &vlen)) return NULL;
    return PyLong_FromUnsignedLongLong(VD_BLOCK_HEADER_SIZE + align_up(record_len_for(klen, vlen), VD_RECORD_ALIGN));
}

/* put_jumbo(off, usable, key, value) -> RC_DONE: write a record into its own freshly
 * allocated block (of jumbo_need bytes or more) */
static PyObject *Core_put_jumbo(Core *c, PyObject *args) {
    unsigned long long off, usable;
    PyObject *ko, *vo;
    if (!PyArg_ParseTuple(args, "KKOO", &off, &usable, &ko, &vo)) return NULL;
    if (core_check_open(c) < 0 || check_block_bounds(c, off, usable) < 0) return NULL;
    if (c->io_errno) return core_io_refuse(c, 0), NULL;
    KeyArg k, v;
    if (keyarg_get(ko, &k, "keys") < 0) return NULL;
    if (keyarg_get(vo, &v, "values") < 0) {
        keyarg_release(&k);
        return NULL;
    }
    int rc = do_put(c, k.p, (uint64_t)k.n, v.p, (uint64_t)v.n, off, usable);
    keyarg_release(&k);
    keyarg_release(&v);
    if (rc < 0) return NULL;
    return PyLong_FromLong(rc);
}

/* A delete has superseded the record the index entry at points to: the entry goes, the
 * record is dead. Whether its block became freeable. */
static int index_drop_deleted(Core *c, const IndexRef *at) {
    uint64_t old = slot_off(c, *at->slot);
    Rec r;
    rec_parse(c->base + old, &r);
    int freeable = account_dead(c, old, align_up(r.total, VD_RECORD_ALIGN));
    index_remove(c, at);
    return freeable;
}

/* Does the record the index entry at points to hold a value other than expected (bytes, or
 * NULL: no condition)? 1, 0, or -1 with an exception set (expected is not bytes). */
static int value_differs(Core *c, const IndexRef *at, PyObject *expected) {
    if (!expected) return 0;
    if (!PyBytes_Check(expected)) {
        PyErr_SetString(PyExc_TypeError, "the expected value must be bytes");
        return -1;
    }
    Rec r;
    const uint8_t *k = rec_key(c, slot_off(c, *at->slot), &r);
    /* (an entry of the index is a put: a delete takes the key out of it) */
    return r.vlen != (uint64_t)PyBytes_GET_SIZE(expected) || memcmp(k + r.klen, PyBytes_AS_STRING(expected), r.vlen) != 0;
}

/* Delete from a Python object: a write code (RC_MISSING, RC_DONE or one need), or -2 with an
 * exception set. With expected (bytes), only while the key holds that value (RC_MISSING
 * otherwise): the compare and the delete are one step, under the GIL, so a put of the key
 * by another thread comes before both or after both. */
int core_delete_obj(Core *c, PyObject *key, PyObject *expected) {
    if (core_check_open(c) < 0) return -2;
    if (c->io_errno) return core_io_refuse(c, 0) - 1;
    if (c->compacting) return RC_NEED_WAIT;
    KeyArg k;
    if (keyarg_get(key, &k, "keys") < 0) return -2;
    uint64_t h = key_hash(k.p, (uint64_t)k.n);
    IndexRef at;
    int found = index_lookup(c, k.p, (uint64_t)k.n, h, &at);
    int differs = !found ? 0 : value_differs(c, &at, expected);
    if (!found || differs) {
        keyarg_release(&k);
        return differs < 0 ? -2 : RC_MISSING;
    }
    uint64_t off, klen = (uint64_t)k.n;
    int rc = append_record(c, VD_KIND_DEL, k.p, klen, NULL, 0, &off);
    keyarg_release(&k);
    if (rc != RC_DONE) return rc;
    Block *b = &c->blocks[c->active];
    b->tombstones++;
    b->dead_bytes += align_up(record_len_for(klen, 0), VD_RECORD_ALIGN);
    int freeable = index_drop_deleted(c, &at);
    crash_point("delete: index updated");
    if (c->io_errno) return core_io_refuse(c, 1) - 1;
    return after_write(c, freeable);
}

/* delete(key, expected=None) -> a write code: RC_MISSING (also: the key holds another value
 * than expected), RC_DONE, or what the delete needs first */
static PyObject *Core_delete(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 && nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "delete(key, expected=None)");
        return NULL;
    }
    int rc = core_delete_obj(c, args[0], nargs == 2 && args[1] != Py_None ? args[1] : NULL);
    return rc == -2 ? NULL : PyLong_FromLong(rc);
}

/* delete_jumbo(off, usable, key) -> RC_DONE, or RC_MISSING (the key went meanwhile: the
 * block was not used): a tombstone too large for a standard block */
static PyObject *Core_delete_jumbo(Core *c, PyObject *args) {
    unsigned long long off, usable;
    PyObject *ko, *expected = Py_None;
    if (!PyArg_ParseTuple(args, "KKO|O", &off, &usable, &ko, &expected)) return NULL;
    if (core_check_open(c) < 0 || check_block_bounds(c, off, usable) < 0) return NULL;
    if (c->io_errno) return core_io_refuse(c, 0), NULL;
    KeyArg k;
    if (keyarg_get(ko, &k, "keys") < 0) return NULL;
    uint64_t h = key_hash(k.p, (uint64_t)k.n);
    IndexRef at;
    int found = index_lookup(c, k.p, (uint64_t)k.n, h, &at);
    int differs = !found ? 0 : value_differs(c, &at, expected == Py_None ? NULL : expected);
    if (!found || differs) {
        keyarg_release(&k);
        return differs < 0 ? NULL : PyLong_FromLong(RC_MISSING);
    }
    uint64_t roff;
    Py_ssize_t bi = write_jumbo(c, VD_KIND_DEL, off, usable, k.p, (uint64_t)k.n, NULL, 0, &roff);
    uint64_t alen = align_up(record_len_for((uint64_t)k.n, 0), VD_RECORD_ALIGN);
    keyarg_release(&k);
    if (bi < 0) return NULL;
    c->blocks[bi].tombstones = 1;
    c->blocks[bi].dead_bytes = alen;
    if (index_drop_deleted(c, &at)) c->reclaim_due = 1;
    c->writes++;
    crash_point("delete_jumbo: index updated");
    return PyLong_FromLong(RC_DONE);
}


/* The pool offset of key's record (> 0), -1 if absent, or INT64_MIN with an exception set:
 * a read's lookup, which changes nothing in the index */
int64_t find_arg(Core *c, PyObject *key) {
    if (reader_sync(c) < 0) return INT64_MIN;
    KeyArg k;
    if (keyarg_get(key, &k, "keys") < 0) return INT64_MIN;
    uint64_t off = index_find(c, k.p, (uint64_t)k.n, key_hash(k.p, (uint64_t)k.n));
    keyarg_release(&k);
    return off ? (int64_t)off : -1;
}

PyObject *value_of(Core *c, uint64_t off) {
    Rec r;
    const uint8_t *k = rec_key(c, off, &r);
    return PyBytes_FromStringAndSize((const char *)k + r.klen, (Py_ssize_t)r.vlen);
}

/* get(key, default=None) */
PyObject *Core_get(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    if (core_check_open(c) < 0) return NULL;
    int64_t off = find_arg(c, args[0]);
    if (off == INT64_MIN) return NULL;
    if (off < 0) {
        PyObject *d = nargs == 2 ? args[1] : Py_None;
        Py_INCREF(d);
        return d;
    }
    return value_of(c, (uint64_t)off);
}

/* getitem(key): the value, or KeyError */
PyObject *Core_getitem(Core *c, PyObject *key) {
    if (core_check_open(c) < 0) return NULL;
    int64_t off = find_arg(c, key);
    if (off == INT64_MIN) return NULL;
    if (off < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return value_of(c, (uint64_t)off);
}

static PyObject *Core_contains(Core *c, PyObject *key) {
    if (core_check_open(c) < 0) return NULL;
    int64_t off = find_arg(c, key);
    if (off == INT64_MIN) return NULL;
    return PyBool_FromLong(off >= 0);
}

Py_ssize_t Core_len(Core *c) {
    if (core_check_open(c) < 0 || reader_sync(c) < 0) return -1;
    return (Py_ssize_t)c->count;
}

static PyObject *key_of_slot(Core *c, uint64_t s) {
    Rec r;
    const uint8_t *k = rec_key(c, slot_off(c, s), &r);
    return PyBytes_FromStringAndSize((const char *)k, (Py_ssize_t)r.klen);
}

/* ------------------------------------------------------------------ listings
 * keys(), values() and items() are lists made in one call, in the order the records lie in
 * the pool: the index is read in slot order, its offsets sorted, and the records then read
 * front to back. Read in slot order, each record was a random access into the pool: at 1M
 * records items() took 0.57-0.77 s, now 0.36-0.40 s, keys() 0.25-0.35 s, now 0.10-0.15 s. */

/* The offsets of every live record, sorted (LSD radix sort on offset >> 2, 11 bits a
 * pass): a PyMem array of *n, or NULL with an exception set. */
static uint64_t *live_offsets_sorted(Core *c, Py_ssize_t *n) {
    uint64_t count = c->count, k = 0, top = 0;
    uint64_t *a = PyMem_Malloc((size_t)(count ? count : 1) * sizeof *a);
    uint64_t *b = PyMem_Malloc((size_t)(count ? count : 1) * sizeof *b);
    if (!a || !b) {
        PyMem_Free(a);
        PyMem_Free(b);
        PyErr_NoMemory();
        return NULL;
    }
    IndexCursor cur = {0, 0};
    for (uint64_t *s; k < count && (s = index_walk(c, &cur)); cur.i++) {
        uint64_t off = slot_off(c, *s) >> 2;
        a[k++] = off;
        top |= off;
    }
    for (unsigned shift = 0; shift < 64 && (top >> shift); shift += RADIX_BITS) {
        radix_pass(a, b, k, sizeof *a, 0, shift);
        uint64_t *t = a;
        a = b;
        b = t;
    }
    PyMem_Free(b);
    for (uint64_t i = 0; i < k; i++) a[i] <<= 2;
    *n = (Py_ssize_t)k;
    return a;
}

/* The key, the value or the (key, value) of the record at off (what: LIST_*) */
static PyObject *item_at(Core *c, uint64_t off, int what) {
    if (core_check_open(c) < 0) return NULL; /* (a finalizer the allocations ran may close it) */
    Rec r;
    const uint8_t *k = rec_key(c, off, &r);
    if (what == LIST_KEYS) return PyBytes_FromStringAndSize((const char *)k, (Py_ssize_t)r.klen);
    PyObject *value = PyBytes_FromStringAndSize((const char *)k + r.klen, (Py_ssize_t)r.vlen);
    if (what == LIST_VALUES || !value) return value;
    PyObject *key = PyBytes_FromStringAndSize((const char *)k, (Py_ssize_t)r.klen);
    PyObject *item = key ? PyTuple_Pack(2, key, value) : NULL;
    Py_XDECREF(key);
    Py_DECREF(value);
    return item;
}

/* The listing from the records at the sorted offsets: a list, NULL with an exception set,
 * or Py_None (a new reference) if the store changed while it was made (a finalizer that
 * the allocations ran may write, and a write may free a block): the caller then lists in
 * slot order, which reads each slot as it is at that instant. */
static PyObject *list_at(Core *c, const uint64_t *offs, Py_ssize_t n, int what) {
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    uint64_t seq = c->next_seq;
    size_t nblocks = c->nblocks;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (c->next_seq != seq || c->nblocks != nblocks) {
            Py_DECREF(list);
            Py_RETURN_NONE;
        }
        PyObject *item = item_at(c, offs[i], what);
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *list_in_slot_order(Core *c, int what) {
    Py_ssize_t size = (Py_ssize_t)c->count;
    PyObject *list = PyList_New(size);
    if (!list) return NULL;
    Py_ssize_t n = 0;
    IndexCursor cur = {0, 0};
    for (uint64_t *s; n < size && (s = index_walk(c, &cur)); cur.i++) {
        PyObject *item = item_at(c, slot_off(c, *s), what);
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, n++, item);
    }
    if (n < size) Py_SET_SIZE(list, n); /* deleted meanwhile (the slots past n are NULL) */
    return list;
}

PyObject *core_listing(Core *c, int what) {
    if (core_check_open(c) < 0 || reader_sync(c) < 0) return NULL;
    index_hold(c, 1);
    Py_ssize_t n;
    PyObject *list = NULL;
    uint64_t *offs = live_offsets_sorted(c, &n);
    if (offs) {
        list = list_at(c, offs, n, what);
        PyMem_Free(offs);
        if (list == Py_None) {
            Py_DECREF(list);
            list = list_in_slot_order(c, what);
        }
    }
    index_hold(c, 0);
    return list;
}

PyObject *Core_keys(Core *c, PyObject *unused) {
    (void)unused;
    return core_listing(c, LIST_KEYS);
}

static PyObject *next_key_from(Core *c, IndexCursor cur) {
    uint64_t *s = index_walk(c, &cur);
    if (s) return key_of_slot(c, *s);
    Py_RETURN_NONE;
}

PyObject *Core_firstkey(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0 || reader_sync(c) < 0) return NULL;
    return next_key_from(c, (IndexCursor){0, 0});
}

PyObject *Core_nextkey(Core *c, PyObject *key) {
    if (core_check_open(c) < 0 || reader_sync(c) < 0) return NULL;
    KeyArg k;
    if (keyarg_get(key, &k, "keys") < 0) return NULL;
    IndexRef at;
    int found = index_lookup(c, k.p, (uint64_t)k.n, key_hash(k.p, (uint64_t)k.n), &at);
    keyarg_release(&k);
    if (!found) Py_RETURN_NONE; /* as gdbm: a key that is not there has no successor */
    IndexCursor cur = index_cursor_of(c, &at);
    cur.i++;
    return next_key_from(c, cur);
}

/* ------------------------------------------------------------------ setters
 * The engine's switches and watermarks, one METH_O method each (set_floor(n), ...), all
 * through the two readers below. */

/* arg as a sequence number: 0, or -1 with an exception set */
static int seq_arg(PyObject *arg, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

/* arg's truth into *field: None, or NULL with an exception set */
static PyObject *set_switch(int *field, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    *field = on;
    Py_RETURN_NONE;
}

/* set_floor(seq): records older than seq are dead (superseded by a reorganize()) */
static PyObject *Core_set_floor(Core *c, PyObject *arg) {
    if (seq_arg(arg, &c->floor) < 0) return NULL;
    if (c->next_seq < c->floor) c->next_seq = c->floor;
    shared_set_floor(c);
    Py_RETURN_NONE;
}

/* set_durable(seq): every record up to seq was made durable by sync() */
static PyObject *Core_set_durable(Core *c, PyObject *arg) {
    if (seq_arg(arg, &c->durable_seq) < 0) return NULL;
    Py_RETURN_NONE;
}

/* set_io_error(errno): an msync failed; the first errno is kept, and writes refused */
static PyObject *Core_set_io_error(Core *c, PyObject *arg) {
    int e = PyLong_AsLong(arg);
    if (e == -1 && PyErr_Occurred()) return NULL;
    if (!c->io_errno) c->io_errno = e ? e : EIO;
    Py_RETURN_NONE;
}

static PyObject *Core_set_puts_refused(Core *c, PyObject *arg) { return set_switch(&c->puts_refused, arg); }

/* set_reclaim_policy(check_every, min_dead, store_dead_num, store_dead_den, block_dead_num,
 * block_dead_den, min_tombstones): the numbers of the reclamation policy (viperdbm/_space.py defines and
 * explains them) and, from now on, the check of the dead space every check_every writes */
static PyObject *Core_set_reclaim_policy(Core *c, PyObject *args) {
    unsigned long long every, min_dead, snum, sden, bnum, bden, min_tombs;
    if (!PyArg_ParseTuple(args, "KKKKKKK", &every, &min_dead, &snum, &sden, &bnum, &bden, &min_tombs)) return NULL;
    if (every == 0 || (every & (every - 1)) || sden == 0 || bden == 0 || snum > sden || bnum > bden) {
        internal_error("a reclamation policy needs a power-of-two check interval and fractions up to 1");
        return NULL;
    }
    c->reclaim_check_mask = every - 1;
    c->compact_min_dead = min_dead;
    c->store_dead_num = snum;
    c->store_dead_den = sden;
    c->block_dead_num = bnum;
    c->block_dead_den = bden;
    c->compact_min_tombs = min_tombs;
    c->auto_compact = 1;
    Py_RETURN_NONE;
}

static PyObject *Core_get_reclaim_due(Core *c, void *closure) {
    (void)closure;
    return PyBool_FromLong(c->reclaim_due);
}

static int Core_set_reclaim_due(Core *c, PyObject *value, void *closure) {
    (void)closure;
    int on = value ? PyObject_IsTrue(value) : 0;
    if (on < 0) return -1;
    c->reclaim_due = on;
    return 0;
}

static PyObject *Core_get_jumbo_need(Core *c, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(c->jumbo_need);
}

/* audit() -> [problem, ...]: recount from the index what each block's counters claim.
 * Every indexed record must lie inside a known block, below that block's end, and be
 * counted in its block's live records; a block whose counter says fewer live records than
 * the index points into would be freed with live records in it. For tests. */
static PyObject *Core_audit(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    uint64_t *counted = PyMem_Calloc(c->nblocks ? c->nblocks : 1, sizeof(uint64_t));
    if (!counted) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    uint64_t outside = 0, past_end = 0;
    IndexCursor cur = {0, 0};
    for (uint64_t *s; (s = index_walk(c, &cur)); cur.i++) {
        uint64_t off = slot_off(c, *s);
        Py_ssize_t bi = block_find(c, off);
        if (bi < 0) {
            outside++;
            continue;
        }
        if (off >= c->blocks[bi].end) past_end++;
        counted[bi]++;
    }
    int rc = 0;
    if (outside) rc |= list_append_new(out, PyUnicode_FromFormat("%llu indexed records lie outside every block", (unsigned long long)outside));
    if (past_end) rc |= list_append_new(out, PyUnicode_FromFormat("%llu indexed records lie past their block's end", (unsigned long long)past_end));
    for (size_t i = 0; i < c->nblocks && rc == 0; i++)
        if (counted[i] != c->blocks[i].live)
            rc |= list_append_new(out, PyUnicode_FromFormat("block at %llu: %llu live records counted, the index points to %llu%s",
                                                            (unsigned long long)c->blocks[i].off, (unsigned long long)c->blocks[i].live,
                                                            (unsigned long long)counted[i], (Py_ssize_t)i == c->active ? " (active)" : ""));
    PyMem_Free(counted);
    if (rc < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* blocks() -> [(off, size, type)] of every block the core knows */
static PyObject *Core_blocks(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    PyObject *out = PyList_New((Py_ssize_t)c->nblocks);
    if (!out) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) {
        PyObject *t = Py_BuildValue("(KKI)", (unsigned long long)c->blocks[i].off,
                                    (unsigned long long)c->blocks[i].size, c->blocks[i].type);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, t);
    }
    return out;
}

/* ------------------------------------------------------------------ stats */
static PyObject *Core_stats(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    uint64_t live = 0, dead = 0, used = 0, jumbo = 0, tombs = 0;
    for (size_t i = 0; i < c->nblocks; i++) {
        Block *b = &c->blocks[i];
        live += b->live_bytes;
        dead += b->dead_bytes;
        used += b->size;
        tombs += b->tombstones;
        jumbo += b->type == VD_TYPE_JUMBO_BLOCK;
    }
    uint64_t index_bytes = c->cap * sizeof(uint64_t) + c->nsegs * sizeof(Segment) + (sizeof(Segment *) << c->dir_bits);
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsKsK}", "records", (unsigned long long)c->count, "live_bytes",
                         (unsigned long long)live, "dead_bytes", (unsigned long long)dead, "block_bytes",
                         (unsigned long long)used, "blocks", (unsigned long long)c->nblocks, "jumbo_blocks",
                         (unsigned long long)jumbo, "tombstones", (unsigned long long)tombs, "index_slots",
                         (unsigned long long)c->cap, "index_segments", (unsigned long long)c->nsegs, "index_bytes",
                         (unsigned long long)index_bytes,
                         "next_seq", (unsigned long long)c->next_seq);
}

static PyObject *Core_get_next_seq(Core *c, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(c->next_seq);
}

static PyObject *Core_get_discarded(Core *c, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(c->discarded);
}

static PyObject *Core_get_has_active(Core *c, void *closure) {
    (void)closure;
    return PyBool_FromLong(c->active >= 0);
}

static PyObject *Core_get_io_errno(Core *c, void *closure) {
    (void)closure;
    return PyLong_FromLong(c->io_errno);
}

static PyObject *Core_get_is_open(Core *c, void *closure) {
    (void)closure;
    return PyBool_FromLong(c->base != NULL);
}

/* ------------------------------------------------------------------ module */
static PyMethodDef Core_methods[] = {
    {"invalidate", (PyCFunction)Core_invalidate, METH_VARARGS,
     "invalidate(forked=False): forget the mapping; every later call raises."},
    {"set_mapped", (PyCFunction)Core_set_mapped, METH_O, "Raise the bound that every pool offset is checked against."},
    {"set_persist", (PyCFunction)Core_set_persist, METH_VARARGS, "set_persist(mode, fn_address=0)"},
    {"set_part_files", (PyCFunction)Core_set_part_files, METH_O,
     "set_part_files([(fd, size), ...]): the part files flag 's' writes records with."},
    {"set_floor", (PyCFunction)Core_set_floor, METH_O, "Records older than this sequence number are dead."},
    {"set_durable", (PyCFunction)Core_set_durable, METH_O, "Every record up to this sequence number is durable."},
    {"add_block", (PyCFunction)Core_add_block, METH_VARARGS, "add_block(off, usable) -> write code"},
    {"block_init", (PyCFunction)Core_block_init, METH_VARARGS,
     "block_init(type, size, persist_address, zero=False) -> the block constructor's argument"},
    {"block_header", (PyCFunction)Core_block_header, METH_VARARGS,
     "block_header(off, usable) -> (type, birth), or None without a valid block header"},
    {"put", (PyCFunction)(void (*)(void))Core_put, METH_FASTCALL, "put(key, value) -> write code"},
    {"put_jumbo", (PyCFunction)Core_put_jumbo, METH_VARARGS, "put_jumbo(off, usable, key, value) -> write code"},
    {"put_batch", (PyCFunction)Core_put_batch, METH_VARARGS,
     "put_batch(pairs[, off, usable]) -> write code: (key, value or None) pairs, written atomically"},
    {"delete", (PyCFunction)(void (*)(void))Core_delete, METH_FASTCALL,
     "delete(key, expected=None) -> write code (RC_MISSING where the key holds another value)"},
    {"delete_jumbo", (PyCFunction)Core_delete_jumbo, METH_VARARGS,
     "delete_jumbo(off, usable, key, expected=None) -> write code"},
    {"get", (PyCFunction)(void (*)(void))Core_get, METH_FASTCALL, "get(key, default=None)"},
    {"getitem", (PyCFunction)Core_getitem, METH_O, "getitem(key) -> value or KeyError"},
    {"contains", (PyCFunction)Core_contains, METH_O, "contains(key) -> bool"},
    {"keys", (PyCFunction)Core_keys, METH_NOARGS, "keys() -> list of bytes, in the order of the records in the pool"},
    {"firstkey", (PyCFunction)Core_firstkey, METH_NOARGS, "firstkey() -> bytes or None"},
    {"nextkey", (PyCFunction)Core_nextkey, METH_O, "nextkey(key) -> bytes or None"},
    {"scan_block", (PyCFunction)Core_scan_block, METH_VARARGS, "scan_block(off, usable, type) -> (status, records, damaged_at)"},
    {"scan_blocks", (PyCFunction)Core_scan_blocks, METH_O,
     "scan_blocks([(off, usable, type), ...]) -> [(status, records, damaged_at), ...]"},
    {"finish_recovery", (PyCFunction)Core_finish_recovery, METH_O, "finish_recovery(writable) -> freeable offsets"},
    {"damage", (PyCFunction)Core_damage, METH_NOARGS, "damage() -> [(block, offset)] of unreadable log tails"},
    {"freeable", (PyCFunction)Core_freeable, METH_NOARGS, "freeable() -> [(off, seq_max, size)] of dead blocks"},
    {"drop_block", (PyCFunction)Core_drop_block, METH_O, "drop_block(off)"},
    {"compact_begin", (PyCFunction)Core_compact_begin, METH_NOARGS, "compact_begin() -> floor"},
    {"compact_step", (PyCFunction)Core_compact_step, METH_VARARGS, "compact_step([joff, jsize]) -> write code"},
    {"compact_end", (PyCFunction)Core_compact_end, METH_VARARGS, "compact_end(aborted=False): mutators may run again"},
    {"compaction_victim", (PyCFunction)Core_compaction_victim, METH_VARARGS, "compaction_victim(urgent=False) -> off or None"},
    {"set_puts_refused", (PyCFunction)Core_set_puts_refused, METH_O, "set_puts_refused(on): puts answer RC_NEED_RESERVE"},
    {"compact_block", (PyCFunction)Core_compact_block, METH_O, "compact_block(off) -> write code"},
    {"set_reclaim_policy", (PyCFunction)Core_set_reclaim_policy, METH_VARARGS,
     "set_reclaim_policy(check_every, min_dead, store_dead_num, store_dead_den, block_dead_num, block_dead_den, "
     "min_tombstones)"},
    {"set_io_error", (PyCFunction)Core_set_io_error, METH_O, "set_io_error(errno): refuse writes from now on"},
    {"old_blocks", (PyCFunction)Core_old_blocks, METH_NOARGS, "old_blocks() -> offsets"},
    {"stats", (PyCFunction)Core_stats, METH_NOARGS, "stats() -> dict"},
    {"blocks", (PyCFunction)Core_blocks, METH_NOARGS, "blocks() -> [(off, size, type)]"},
    {"readers_room", (PyCFunction)Core_readers_room, METH_NOARGS,
     "readers_room(): the readers file has the page of the entry the next block takes (OSError ENOSPC: it cannot)"},
    {"attach_writer", (PyCFunction)Core_attach_writer, METH_VARARGS,
     "attach_writer(fd, pool_id, root_off): publish every write to the readers file from now on"},
    {"attach_reader", (PyCFunction)Core_attach_reader, METH_VARARGS,
     "attach_reader(fd, slot, remap, commit=0, table_gen=0): follow the writer through the readers file"},
    {"detach_shared", (PyCFunction)Core_detach_shared, METH_NOARGS, "detach_shared(): stop publishing or following"},
    {"catch_up", (PyCFunction)Core_catch_up, METH_NOARGS, "catch_up(): a reader catches up with the writer now"},
    {"hold_snapshot", (PyCFunction)Core_hold_snapshot, METH_O, "hold_snapshot(on): a reader stops (or resumes) catching up"},
    {"set_base", (PyCFunction)Core_set_base, METH_VARARGS, "set_base(base, mapped): a reader's larger mapping"},
    {"retire_blocks", (PyCFunction)Core_retire_blocks, METH_O,
     "retire_blocks([off]) -> commit: freed, but held for readers until readers_horizon() reaches commit"},
    {"readers_horizon", (PyCFunction)Core_readers_horizon, METH_O,
     "readers_horizon(check_gone) -> (commit or None, live readers)"},
    {"audit", (PyCFunction)Core_audit, METH_NOARGS, "audit() -> [problem]: block counters against the index"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"next_seq", (getter)Core_get_next_seq, NULL, "the sequence number of the next record", NULL},
    {"discarded", (getter)Core_get_discarded, NULL, "records dropped by the power-fail rule at open", NULL},
    {"has_active", (getter)Core_get_has_active, NULL, "whether a block is open for appends", NULL},
    {"is_open", (getter)Core_get_is_open, NULL, "whether the core still has its mapping", NULL},
    {"io_errno", (getter)Core_get_io_errno, NULL, "errno of the failed msync that stopped writes, or 0", NULL},
    {"reclaim_due", (getter)Core_get_reclaim_due, (setter)Core_set_reclaim_due,
     "a done write made a block entirely dead, or passed the compaction threshold: the engine's "
     "reclaim() is due (it clears this)",
     NULL},
    {"jumbo_need", (getter)Core_get_jumbo_need, NULL, "bytes of the jumbo block the last RC_NEED_JUMBO asked for",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Core_as_sequence = {
    .sq_length = (lenfunc)Core_len,
};

PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "viperdbm._vipercore.Core",
    .tp_basicsize = sizeof(Core),
    .tp_weaklistoffset = offsetof(Core, weakrefs),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The record log, the DRAM index and the recovery scan of one open store.",
    .tp_new = Core_new,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
    .tp_as_sequence = &Core_as_sequence,
};

int core_type_init(PyObject *module) {
    if (PyType_Ready(&CoreType) < 0) return -1;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(module, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        return -1;
    }
    return 0;
}
