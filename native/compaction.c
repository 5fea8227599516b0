/* Compaction: reorganize() (copy every live record into new blocks) and the compaction of
 * single blocks that puts and deletes ask for once dead space passes its threshold. */
#include "core.h"

/* The standard block (not the active one) with the most dead bytes, if at least the policy's
 * fraction of it is dead, when dead space is at least the policy's fraction of all block
 * space and its minimum; -1 otherwise (and without a policy). The numbers and their reasons
 * are in viperdbm/_space.py (RECLAIM), handed over by set_reclaim_policy(). */
Py_ssize_t compaction_victim(Core *c, int urgent) {
    uint64_t dead = 0, total = 0, best_dead = 0, live = 0, tombs = 0, oldest_seq = UINT64_MAX, min_seq = UINT64_MAX;
    Py_ssize_t best = -1, oldest = -1;
    if (!c->auto_compact) return -1;
    for (size_t i = 0; i < c->nblocks; i++) {
        Block *b = &c->blocks[i];
        total += b->size;
        dead += b->dead_bytes;
        live += b->live;
        tombs += b->tombstones;
        /* (an empty block waiting for a sync to be freed, or one held for readers, goes
         * away by itself) */
        if (b->seq_min && (b->live || b->tombstones) && !b->retired && !b->old && b->seq_min < min_seq)
            min_seq = b->seq_min;
        if ((Py_ssize_t)i == c->active || b->type != VD_TYPE_STANDARD_BLOCK || b->old || b->retired) continue;
        if (!b->live && !b->tombstones) continue; /* already empty: waiting to be freed */
        if (b->seq_min && b->seq_min < oldest_seq) {
            oldest_seq = b->seq_min;
            oldest = (Py_ssize_t)i;
        }
        if (b->dead_bytes * c->block_dead_den < b->size * c->block_dead_num) continue;
        if (b->dead_bytes > best_dead) {
            best_dead = b->dead_bytes;
            best = (Py_ssize_t)i;
        }
    }
    /* More deletes than live records: compaction copies a delete forward while any block
     * older than it remains (compact_block), so a store whose oldest blocks stay live (a
     * base that is never rewritten, beside keys that come and go) keeps every delete it
     * ever made, and compacting them over and over slowed writes tenfold at 5.5M deletes
     * over 1M records. Rewriting the oldest block lets the deletes older than what is left
     * go at their block's next compaction; a pass over the store per as many deletes as
     * there are live records. Only while the oldest block that holds anything is one
     * compaction can rewrite (an older jumbo block would hold the deletes anyway: rewriting
     * the others again and again would free nothing). */
    if (!urgent && tombs > live && tombs >= c->compact_min_tombs && oldest >= 0 && oldest_seq == min_seq)
        return oldest;
    /* urgent (a full disk): any block dead enough is worth copying out, whatever the total */
    if (!urgent && (dead < c->compact_min_dead || dead * c->store_dead_den < total * c->store_dead_num)) return -1;
    return best;
}

/* ------------------------------------------------------------------ reorganize */

/* compact_begin() -> floor: every block existing now is "old"; the next writes go to new
 * blocks. After compact_step() has copied every live record, the caller persists floor in
 * the root: from then on recovery ignores every record older than floor. */
PyObject *Core_compact_begin(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) c->blocks[i].old = 1;
    c->compact_prev_active = c->active >= 0 ? c->blocks[c->active].off : 0;
    c->active = -1;
    shared_set_active(c);
    c->compact_cursor = (IndexCursor){0, 0}; /* (no write moves the index until compact_end) */
    c->compacting = 1;
    return PyLong_FromUnsignedLongLong(c->next_seq);
}

/* compact_step([joff, jsize]) -> RC_DONE (every live record copied), RC_NEED_BLOCK, or
 * RC_NEED_JUMBO (call again with a jumbo block of jumbo_need bytes) */
PyObject *Core_compact_step(Core *c, PyObject *args) {
    unsigned long long joff = 0, jsize = 0;
    if (!PyArg_ParseTuple(args, "|KK", &joff, &jsize)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    if (joff && check_block_bounds(c, joff, jsize) < 0) return NULL;
    for (uint64_t *slot; (slot = index_walk(c, &c->compact_cursor)); c->compact_cursor.i++) {
        uint64_t s = *slot, old = slot_off(c, s);
        Py_ssize_t bi = block_find(c, old);
        if (bi < 0 || !c->blocks[bi].old) continue;
        Rec r;
        const uint8_t *k = rec_key(c, old, &r);
        uint64_t len = record_len_for(r.klen, r.vlen), off;
        if (len > VD_INLINE_MAX) {
            if (!joff) {
                c->jumbo_need = VD_BLOCK_HEADER_SIZE + align_up(len, VD_RECORD_ALIGN);
                return PyLong_FromLong(RC_NEED_JUMBO);
            }
            /* (block_insert moves blocks[], never the pool: k stays valid) */
            if (write_jumbo(c, VD_KIND_PUT, joff, jsize, k, r.klen, k + r.klen, r.vlen, &off) < 0) return NULL;
            joff = 0;
        } else {
            int rc = append_record(c, VD_KIND_PUT, k, r.klen, k + r.klen, r.vlen, &off);
            if (rc != RC_DONE) return PyLong_FromLong(rc);
        }
        uint64_t alen = align_up(len, VD_RECORD_ALIGN);
        Py_ssize_t nb = block_find(c, off);
        c->blocks[nb].live++;
        c->blocks[nb].live_bytes += alen;
        account_dead(c, old, alen);
        *slot = slot_moved(c, s, off);
        crash_point("compact_step: index updated");
    }
    return PyLong_FromLong(RC_DONE);
}

/* compact_end(aborted=False): mutators may run again. After a reorganize() that failed
 * before it had a new block (a full disk), the block that was active before takes the
 * appends again: without it, every put and delete would need a new block, which a full
 * disk cannot give. (After a completed one that block is freed: nothing to give back.) */
PyObject *Core_compact_end(Core *c, PyObject *args) {
    int aborted = 0;
    if (!PyArg_ParseTuple(args, "|p", &aborted)) return NULL;
    c->compacting = 0;
    for (size_t i = 0; i < c->nblocks; i++) c->blocks[i].old = 0;
    if (aborted && c->active < 0 && c->compact_prev_active) {
        Py_ssize_t i = block_find(c, c->compact_prev_active);
        if (i >= 0 && c->blocks[i].off == c->compact_prev_active && c->blocks[i].type == VD_TYPE_STANDARD_BLOCK) {
            c->active = i;
            shared_set_active(c);
        }
    }
    c->compact_prev_active = 0;
    Py_RETURN_NONE;
}


/* compaction_victim(urgent=False) -> offset of the block to compact now, or None */
PyObject *Core_compaction_victim(Core *c, PyObject *args) {
    int urgent = 0;
    if (!PyArg_ParseTuple(args, "|p", &urgent)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    Py_ssize_t v = compaction_victim(c, urgent);
    if (v < 0) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(c->blocks[v].off);
}

/* compact_block(off) -> RC_DONE (the block now holds nothing needed and can be freed), or
 * RC_NEED_BLOCK (call again after add_block). Copies the block's live records to the
 * active block, and its deletes whose key has no newer record, unless no block holds an
 * older record (then the delete has nothing left to hide). Crash-safe as every write: the
 * copies are newer, so until the block is freed recovery simply prefers them. */
PyObject *Core_compact_block(Core *c, PyObject *arg) {
    unsigned long long off = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred() || core_check_open(c) < 0) return NULL;
    Py_ssize_t vi = block_find(c, off);
    if (vi < 0 || c->blocks[vi].off != off) { /* freed meanwhile: nothing was left in it */
        c->block_cursor_off = c->block_cursor_pos = 0;
        return PyLong_FromLong(RC_DONE);
    }
    if (vi == c->active || c->blocks[vi].type != VD_TYPE_STANDARD_BLOCK) {
        internal_error("compact_block() needs a standard block that is not active");
        return NULL;
    }
    uint64_t oldest_elsewhere = UINT64_MAX;
    for (size_t i = 0; i < c->nblocks; i++)
        if ((Py_ssize_t)i != vi && c->blocks[i].seq_min && c->blocks[i].seq_min < oldest_elsewhere)
            oldest_elsewhere = c->blocks[i].seq_min;
    uint64_t pos = c->block_cursor_off == off ? c->block_cursor_pos : c->blocks[vi].log_start;
    /* inside a batch: where it ends (its records are back to back, not placed in pages) */
    uint64_t batch_end = c->block_cursor_off == off ? c->block_cursor_batch_end : 0;
    for (;;) {
        Block *v = &c->blocks[vi];
        if (batch_end && pos >= batch_end) batch_end = 0;
        if (!batch_end) {
            if (pos + VD_RECORD_HEADER_SIZE > v->end) break;
            uint64_t room = VD_PAGE_SIZE - pos % VD_PAGE_SIZE;
            if (room < VD_RECORD_HEADER_SIZE) {
                pos += room;
                continue;
            }
        }
        Rec r;
        const uint8_t *k = rec_key(c, pos, &r);
        uint64_t alen = align_up(r.total, VD_RECORD_ALIGN), noff;
        if (r.kind == VD_KIND_BATCH) { /* its records are copied one by one, as any record */
            batch_end = pos + alen;
            pos += r.hlen;
            continue;
        }
        if (r.kind == VD_KIND_PUT) {
            uint64_t h = key_hash(k, r.klen);
            IndexRef at;
            if (index_lookup(c, k, r.klen, h, &at) && slot_off(c, *at.slot) == pos) {
                int rc = append_record(c, VD_KIND_PUT, k, r.klen, k + r.klen, r.vlen, &noff);
                if (rc != RC_DONE) {
                    c->block_cursor_off = off;
                    c->block_cursor_pos = pos;
                    c->block_cursor_batch_end = batch_end;
                    return PyLong_FromLong(rc);
                }
                vi = block_find(c, off); /* (blocks[] does not move here, but stay exact) */
                c->blocks[c->active].live++;
                c->blocks[c->active].live_bytes += alen;
                account_dead(c, pos, alen);
                *at.slot = slot_make(c, h, noff);
                crash_point("compact_block: index updated");
            }
        } else if (r.kind == VD_KIND_DEL && r.seq > oldest_elsewhere) {
            uint64_t h = key_hash(k, r.klen);
            IndexRef at;
            if (!index_lookup(c, k, r.klen, h, &at)) {
                int rc = append_record(c, VD_KIND_DEL, k, r.klen, NULL, 0, &noff);
                if (rc != RC_DONE) {
                    c->block_cursor_off = off;
                    c->block_cursor_pos = pos;
                    c->block_cursor_batch_end = batch_end;
                    return PyLong_FromLong(rc);
                }
                c->blocks[c->active].tombstones++;
                c->blocks[c->active].dead_bytes += alen;
                crash_point("compact_block: delete copied");
            }
        }
        pos += alen;
    }
    c->blocks[vi].tombstones = 0; /* every delete that still mattered has a newer copy */
    c->block_cursor_off = c->block_cursor_pos = c->block_cursor_batch_end = 0;
    return PyLong_FromLong(RC_DONE);
}

/* old_blocks() -> offsets of the blocks that compact_begin() marked */
PyObject *Core_old_blocks(Core *c, PyObject *unused) {
    (void)unused;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) {
        if (!c->blocks[i].old || c->blocks[i].retired) continue; /* (a retired one is freed already) */
        if (list_append_new(out, PyLong_FromUnsignedLongLong(c->blocks[i].off)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}
