/* Atomic batches: many puts and deletes that become visible and durable together, or not at
 * all. The batch is one record of kind VD_KIND_BATCH whose value is its put and delete
 * records (docs/format.md, "Batches"); its CRC is stored last and covers them all, so a batch
 * cut short by a crash does not verify and recovery reads none of it, exactly as it ignores
 * any torn record. The index then points at the records inside the batch, which read like
 * any other record. One persist covers the batch (group commit under flag 's'), and readers
 * in other processes see it whole: it is published once, after its CRC. */
#include "core.h"

/* One put or delete of the batch, as the caller gave it. */
typedef struct {
    KeyArg key, value; /* value.p NULL: a delete */
    uint64_t hash;
    int skip; /* a delete of a key that is not there: nothing to write */
} BatchItem;

static void items_release(BatchItem *items, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        keyarg_release(&items[i].key);
        if (items[i].value.p) keyarg_release(&items[i].value);
    }
    PyMem_Free(items);
}

/* Parse the (key, value-or-None) pairs; -1 with an exception set. Keys are unique (the
 * caller collapses repeated ones): a delete of a key the index does not hold is skipped. */
static int items_get(Core *c, PyObject *seq, BatchItem **out, Py_ssize_t *count) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    BatchItem *items = PyMem_Calloc(n ? (size_t)n : 1, sizeof *items);
    if (!items) return PyErr_NoMemory(), -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            items_release(items, i);
            PyErr_SetString(PyExc_TypeError, "put_batch() takes (key, value or None) pairs");
            return -1;
        }
        BatchItem *it = &items[i];
        if (keyarg_get(PyTuple_GET_ITEM(pair, 0), &it->key, "keys") < 0) {
            items_release(items, i);
            return -1;
        }
        PyObject *value = PyTuple_GET_ITEM(pair, 1);
        if (value != Py_None && keyarg_get(value, &it->value, "values") < 0) {
            keyarg_release(&it->key);
            items_release(items, i);
            return -1;
        }
        it->hash = key_hash(it->key.p, (uint64_t)it->key.n);
        IndexRef at;
        if (!it->value.p) it->skip = !index_lookup(c, it->key.p, (uint64_t)it->key.n, it->hash, &at);
    }
    *out = items;
    *count = n;
    return 0;
}

/* Point the index at the batch's records, and account them to block b. Whether a block
 * became entirely dead. */
static int batch_index(Core *c, Py_ssize_t bi, uint64_t off, const BatchItem *items, Py_ssize_t n) {
    Rec batch, sub;
    rec_parse(c->base + off, &batch);
    c->blocks[bi].dead_bytes += batch.hlen; /* the batch's own header holds nothing */
    BatchWalk w;
    batch_walk_start(&w, off, &batch);
    int freeable = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const BatchItem *it = &items[i];
        if (it->skip) continue;
        uint64_t rec_at;
        (void)batch_walk_next(c->base, &w, &sub, &rec_at); /* (written just now: well formed) */
        uint64_t alen = align_up(sub.total, VD_RECORD_ALIGN);
        Block *b = &c->blocks[bi];
        IndexRef at; /* (batch_put made room for every put) */
        int found = index_lookup(c, it->key.p, (uint64_t)it->key.n, it->hash, &at);
        if (found) {
            uint64_t old = slot_off(c, *at.slot);
            Rec o;
            rec_parse(c->base + old, &o);
            freeable |= account_dead(c, old, align_up(o.total, VD_RECORD_ALIGN));
        }
        if (it->value.p) {
            b->live++;
            b->live_bytes += alen;
            if (found)
                *at.slot = slot_make(c, it->hash, rec_at);
            else
                index_insert(c, &at, slot_make(c, it->hash, rec_at));
        } else {
            b->tombstones++;
            b->dead_bytes += alen;
            if (found) index_remove(c, &at);
        }
    }
    return freeable;
}

/* Make room in the index for every put of the batch before anything is written: its
 * inserts then cannot fail. */
static int batch_reserve(Core *c, const BatchItem *items, Py_ssize_t n, uint64_t puts) {
    uint64_t *hashes = PyMem_Malloc((size_t)(puts ? puts : 1) * sizeof *hashes);
    if (!hashes) return PyErr_NoMemory(), -1;
    size_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!items[i].skip && items[i].value.p) hashes[k++] = items[i].hash;
    int rc = index_reserve_many(c, hashes, sizeof *hashes, k);
    PyMem_Free(hashes);
    return rc;
}

/* Write the batch at pos (room checked): its records, then its header and CRC. */
static void batch_write(Core *c, uint64_t pos, const BatchItem *items, Py_ssize_t n, uint64_t body) {
    uint64_t seq0 = c->next_seq, at = pos + VD_RECORD_HEADER_SIZE;
    for (Py_ssize_t i = 0; i < n; i++) {
        const BatchItem *it = &items[i];
        if (it->skip) continue;
        unsigned kind = (it->value.p ? VD_KIND_PUT : VD_KIND_DEL) | VD_KIND_IN_BATCH;
        uint64_t vlen = it->value.p ? (uint64_t)it->value.n : 0;
        write_record(c, at, kind, c->next_seq++, (const uint8_t *)it->key.p, (uint64_t)it->key.n,
                     (const uint8_t *)it->value.p, vlen);
        at += align_up(record_len_for((uint64_t)it->key.n, vlen), VD_RECORD_ALIGN);
    }
    uint8_t *r = pool_dest(c, pos);
    wr32(r + offsetof(VdRecordHeader, vlen), (uint32_t)body);
    wr64(r + offsetof(VdRecordHeader, meta), meta_make(seq0, VD_KIND_BATCH, 0));
    uint32_t crc = record_crc(r, VD_RECORD_HEADER_SIZE + body);
    crash_point("batch: records written, CRC not yet");
    __atomic_store_n((uint32_t *)(r + offsetof(VdRecordHeader, crc)), crc, __ATOMIC_RELEASE);
    crash_point("batch written");
}

/* The batch into the active block, or into the jumbo block at joff (jusable bytes): a write
 * code, or -1 with an exception set. Nothing is written unless all of it fits. */
static int batch_put(Core *c, const BatchItem *items, Py_ssize_t n, uint64_t joff, uint64_t jusable) {
    uint64_t body = 0, puts = 0, records = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const BatchItem *it = &items[i];
        if (it->skip) continue;
        uint64_t vlen = it->value.p ? (uint64_t)it->value.n : 0;
        if ((uint64_t)it->key.n > VD_MAX_KEY || vlen > VD_MAX_VALUE) return core_error(ERR_TOO_LARGE);
        body += align_up(record_len_for((uint64_t)it->key.n, vlen), VD_RECORD_ALIGN);
        puts += it->value.p != NULL;
        records++;
        if (body > VD_MAX_VALUE) return core_error(ERR_TOO_LARGE);
    }
    if (!records) return RC_DONE;
    if (puts && c->puts_refused) return RC_NEED_RESERVE;
    if (batch_reserve(c, items, n, puts) < 0) return -1;
    uint64_t len = VD_RECORD_HEADER_SIZE + body, pos, pad_at = 0, pad_len = 0;
    Py_ssize_t bi;
    if (joff) {
        Block b;
        if (block_from_header(c, joff, jusable, VD_TYPE_JUMBO_BLOCK, &b) < 0) return -1;
        if (b.log_start + len > b.off + b.size) return internal_error("jumbo block too small for the batch");
        if (block_insert(c, &b) < 0) return -1;
        pos = b.log_start;
        bi = block_find(c, pos);
    } else {
        if (len > VD_INLINE_MAX) {
            c->jumbo_need = VD_BLOCK_HEADER_SIZE + align_up(len, VD_RECORD_ALIGN);
            return RC_NEED_JUMBO;
        }
        if (c->active < 0) return RC_NEED_BLOCK;
        bi = c->active;
        pos = place_record(c, &c->blocks[bi], len, &pad_at, &pad_len);
        if (pos == 0) return RC_NEED_BLOCK;
    }
    uint64_t from = pad_len ? pad_at : pos;
    if (!joff) stage_begin(c, from, pos + len - from); /* a jumbo block's batch: the mapping */
    if (pad_len) write_pad(c, pad_at, pad_len);
    Block *b = &c->blocks[bi];
    if (!b->seq_min) b->seq_min = c->next_seq;
    batch_write(c, pos, items, n, body);
    stage_commit(c);
    persist_range(c, from, pos + len - from); /* the one persist of the batch */
    b->end = pos + align_up(len, VD_RECORD_ALIGN);
    b->seq_max = c->next_seq - 1;
    int freeable = batch_index(c, bi, pos, items, n);
    if (joff) shared_add(c, &c->blocks[bi]);
    shared_publish_end(c, &c->blocks[bi]); /* readers see the whole batch at once */
    if (joff) fault_ahead_start(c, &c->blocks[bi]);
    crash_point("batch: index updated");
    return after_write(c, freeable);
}

/* put_batch(items[, off, usable]) -> a write code: RC_DONE or what the batch needs first.
 * items: a list of (key, value or None) pairs, keys unique; with off and usable, the batch
 * goes into that freshly allocated jumbo block (after RC_NEED_JUMBO). */
PyObject *Core_put_batch(Core *c, PyObject *args) {
    PyObject *list;
    unsigned long long off = 0, usable = 0;
    if (!PyArg_ParseTuple(args, "O|KK", &list, &off, &usable)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    if (c->io_errno) return core_io_refuse(c, 0), NULL;
    if (off && check_block_bounds(c, off, usable) < 0) return NULL;
    if (c->compacting) return PyLong_FromLong(RC_NEED_WAIT);
    PyObject *seq = PySequence_Fast(list, "put_batch() takes a list of pairs");
    if (!seq) return NULL;
    BatchItem *items;
    Py_ssize_t n;
    int rc = items_get(c, seq, &items, &n);
    if (rc == 0) {
        rc = batch_put(c, items, n, off, usable);
        items_release(items, n);
    }
    Py_DECREF(seq);
    if (rc < 0) return NULL;
    if (c->io_errno) return core_io_refuse(c, 1), NULL;
    return PyLong_FromLong(rc);
}

/* batch_jumbo_size(pairs) -> the bytes of a jumbo block that holds the batch of these
 * (key, value or None) pairs (every delete counted: an upper bound) */
PyObject *Core_batch_jumbo_size(PyObject *mod, PyObject *list) {
    (void)mod;
    PyObject *seq = PySequence_Fast(list, "batch_jumbo_size() takes a list of pairs");
    if (!seq) return NULL;
    uint64_t body = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        KeyArg k, v = {0};
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "batch_jumbo_size() takes (key, value or None) pairs");
            return NULL;
        }
        if (keyarg_get(PyTuple_GET_ITEM(pair, 0), &k, "keys") < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        PyObject *value = PyTuple_GET_ITEM(pair, 1);
        if (value != Py_None && keyarg_get(value, &v, "values") < 0) {
            keyarg_release(&k);
            Py_DECREF(seq);
            return NULL;
        }
        body += align_up(record_len_for((uint64_t)k.n, (uint64_t)v.n), VD_RECORD_ALIGN);
        keyarg_release(&k);
        if (value != Py_None) keyarg_release(&v);
    }
    Py_DECREF(seq);
    return PyLong_FromUnsignedLongLong(VD_BLOCK_HEADER_SIZE + align_up(VD_RECORD_HEADER_SIZE + body, VD_RECORD_ALIGN));
}
