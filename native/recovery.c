/* Recovery (Viper's): the scan of every block at open rebuilds the index, bounds-checking
 * every length read from the media; then the power-fail rule, the active block, the damage. */
#include "core.h"

#include <pthread.h>
#include <stdlib.h>

/* a flush of fewer records makes its index entries in one thread */
#define RECOVER_TWO_SHARES_FROM 4096

/* Does the record at off (in the index) have the key of the record at *other? */
static int records_share_key(Core *c, uint64_t off, const void *other) {
    Rec a, b;
    const uint8_t *ka = rec_key(c, off, &a), *kb = rec_key(c, *(const uint64_t *)other, &b);
    return a.klen == b.klen && memcmp(ka, kb, a.klen) == 0;
}

/* The index entries of one share of a flush (recover_flush), made by one thread: what
 * they change outside the index's segments (the blocks' counts, the core's) is counted
 * here and added to the core once every share is done. */
typedef struct {
    Core *c;
    struct Scanned *run, *tmp; /* the share's records, in hash order once sorted; as much room */
    size_t n;
    int64_t *delta; /* per block: live, live_bytes, dead_bytes */
    int64_t count, tombs;
    int err; /* an ERR_ code, with err_seq, or 0 */
    uint64_t err_seq;
} IndexShare;

#define DELTA(w, bi, field) ((w)->delta[3 * (size_t)(bi) + (field)])
enum { D_LIVE, D_LIVE_BYTES, D_DEAD_BYTES };

/* Sort n records by their hash's top 33 bits (LSD radix, 11 a pass): the order of segments
 * and of homes in them (a segment has at most 2^17 slots, the directory far fewer than 2^16
 * entries). Where they end up: tmp (after an odd number of passes). */
static struct Scanned *sort_by_hash(struct Scanned *a, struct Scanned *tmp, size_t n) {
    for (unsigned shift = 31; shift < 64; shift += RADIX_BITS) {
        radix_pass(a, tmp, n, sizeof *a, offsetof(struct Scanned, h), shift);
        struct Scanned *t = a;
        a = tmp;
        tmp = t;
    }
    return a;
}

/* Sort the share's records, then make the index entry of each (a valid record of hash h that
 * the scan found): the newest version of each key wins. During recovery the index also holds
 * tombstones (a delete must beat an older put found later in the scan); count includes them
 * and tombs_in_index counts them. No Python API, and nothing shared is written but the
 * segments of the share's keys: this runs without the GIL, beside the other share
 * (index_reserve_many made the room first). */
static void *index_share(void *arg) {
    IndexShare *w = arg;
    Core *c = w->c;
    w->run = sort_by_hash(w->run, w->tmp, w->n);
    for (size_t i = 0; i < w->n; i++) {
        const struct Scanned *r = &w->run[i];
        uint64_t off = r->off, alen = r->alen;
        Py_ssize_t bi = block_find(c, off);
        if (bi < 0) {
            w->err = ERR_RECORD_OUTSIDE;
            return NULL;
        }
        IndexRef at;
        if (index_probe(c, r->h, &at, records_share_key, &off)) {
            uint64_t old = slot_off(c, *at.slot);
            Rec o;
            rec_parse(c->base + old, &o);
            if (o.seq == r->seq) {
                w->err = ERR_SEQ_TWICE;
                w->err_seq = r->seq;
                return NULL;
            }
            if (o.seq > r->seq) { /* ours is the older one */
                DELTA(w, bi, D_DEAD_BYTES) += (int64_t)alen;
                continue;
            }
            if (o.kind == VD_KIND_PUT) { /* (as account_dead does) */
                Py_ssize_t ob = block_find(c, old);
                if (ob >= 0) {
                    int64_t olen = (int64_t)align_up(o.total, VD_RECORD_ALIGN);
                    DELTA(w, ob, D_LIVE)--;
                    DELTA(w, ob, D_LIVE_BYTES) -= olen;
                    DELTA(w, ob, D_DEAD_BYTES) += olen;
                }
            } else {
                w->tombs--;
            }
            *at.slot = slot_make(c, r->h, off);
        } else {
            *at.slot = slot_make(c, r->h, off);
            at.seg->count++;
            w->count++;
        }
        if (r->kind == VD_KIND_PUT) {
            DELTA(w, bi, D_LIVE)++;
            DELTA(w, bi, D_LIVE_BYTES) += (int64_t)alen;
        } else {
            DELTA(w, bi, D_DEAD_BYTES) += (int64_t)alen;
            w->tombs++;
        }
    }
    return NULL;
}

static uint64_t plus_delta(uint64_t v, int64_t d) { return d < 0 && (uint64_t)-d > v ? 0 : v + (uint64_t)d; }

/* The index entries of the n records at a (b: as much room), in two shares at once when the
 * index splits by the hash's top bit (no segment holds keys of both halves): the records
 * are first split by that bit (stably), and each thread sorts its half and makes its
 * entries, in the segments of its half only. */
static int index_scanned(Core *c, struct Scanned *a, struct Scanned *b, size_t n) {
    if (index_reserve_many(c, &a[0].h, sizeof *a, n) < 0) return -1;
    size_t nb = c->nblocks ? c->nblocks : 1;
    int64_t *delta = PyMem_RawCalloc(2 * 3 * nb, sizeof *delta);
    if (!delta) return PyErr_NoMemory(), -1;
    IndexShare w[2] = {{c, a, b, n, delta, 0, 0, 0, 0}, {c, a + n, b + n, 0, delta + 3 * nb, 0, 0, 0, 0}};
    uint64_t half = c->dir_bits ? UINT64_C(1) << (c->dir_bits - 1) : 0;
    if (n >= RECOVER_TWO_SHARES_FROM && half && c->dir[half - 1] != c->dir[half]) {
        size_t low = 0;
        for (size_t i = 0; i < n; i++) low += !(a[i].h >> 63);
        size_t at[2] = {0, low};
        for (size_t i = 0; i < n; i++) b[at[a[i].h >> 63]++] = a[i];
        w[0] = (IndexShare){c, b, a, low, delta, 0, 0, 0, 0};
        w[1] = (IndexShare){c, b + low, a + low, n - low, delta + 3 * nb, 0, 0, 0, 0};
        pthread_t t;
        Py_BEGIN_ALLOW_THREADS
        int started = pthread_create(&t, NULL, index_share, &w[1]) == 0;
        index_share(&w[0]);
        if (started)
            pthread_join(t, NULL);
        else
            index_share(&w[1]);
        Py_END_ALLOW_THREADS
    } else {
        index_share(&w[0]);
    }
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        if (w[k].err == ERR_SEQ_TWICE)
            rc = core_error(ERR_SEQ_TWICE, (unsigned long long)w[k].err_seq);
        else if (w[k].err)
            rc = core_error(w[k].err);
    }
    /* the counts, after an error too: the entries made stay in the index */
    for (size_t bi = 0; bi < c->nblocks; bi++) {
        Block *blk = &c->blocks[bi];
        for (int k = 0; k < 2; k++) {
            blk->live = plus_delta(blk->live, DELTA(&w[k], bi, D_LIVE));
            blk->live_bytes = plus_delta(blk->live_bytes, DELTA(&w[k], bi, D_LIVE_BYTES));
            blk->dead_bytes = plus_delta(blk->dead_bytes, DELTA(&w[k], bi, D_DEAD_BYTES));
        }
    }
    for (int k = 0; k < 2; k++) {
        c->count += (uint64_t)w[k].count;
        c->tombs_in_index = plus_delta(c->tombs_in_index, w[k].tombs);
    }
    PyMem_RawFree(delta);
    return rc;
}

/* The index entries of the records scanned so far, made in key-hash order: a hash's
 * segment and its home there rise with it, so the inserts walk the index front to back
 * instead of touching a random slot each (at 10M records 83% of the scan waited on that
 * load, and prefetching it did not help). Which version of a key wins does not depend on
 * the order: the sequence numbers decide. */
static int recover_flush(Core *c) {
    size_t n = c->nscanned;
    if (!n) return 0;
    c->nscanned = 0;
    return index_scanned(c, c->scanned, c->scanned_sorting, n);
}

/* how many scanned records wait for their index entries at most (32 bytes each, and as
 * much again for the sort) */
#define SCANNED_MOST (UINT64_C(1) << 21)

static int recover_later(Core *c, uint64_t h, uint64_t off, uint64_t seq, unsigned kind, uint64_t alen) {
    if (c->nscanned == c->scanned_cap) {
        if (c->scanned_cap == SCANNED_MOST && recover_flush(c) < 0) return -1;
        if (c->nscanned == c->scanned_cap) {
            size_t ncap = c->scanned_cap ? c->scanned_cap * 2 : 4096;
            struct Scanned *m = PyMem_Realloc(c->scanned, ncap * sizeof *m);
            if (m) c->scanned = m;
            struct Scanned *t = m ? PyMem_Realloc(c->scanned_sorting, ncap * sizeof *t) : NULL;
            if (!t) return PyErr_NoMemory(), -1;
            c->scanned_sorting = t;
            c->scanned_cap = ncap;
        }
    }
    c->scanned[c->nscanned++] = (struct Scanned){h, off, seq, (uint32_t)alen, kind};
    return 0;
}

/* Apply one valid record found by the scan (applying: a pending record that the power-fail
 * rule keeps, at the end of the scan): records newer than the durable watermark wait for
 * that rule, the others get their index entries (index_share) in key-hash order. */
static int recover_record(Core *c, uint64_t off, const Rec *r, uint64_t alen, Block *b, int applying, uint64_t log_at) {
    const uint8_t *key = c->base + off + r->hlen;
    if (r->seq > c->max_seq_seen) c->max_seq_seen = r->seq;
    if (r->seq < c->floor) { /* superseded wholesale by a reorganize() */
        b->dead_bytes += alen;
        return 0;
    }
    if (!applying && r->seq > c->durable_seq) {
        if (c->npending == c->pending_cap) {
            size_t ncap = c->pending_cap ? c->pending_cap * 2 : 1024;
            struct Pending *n = PyMem_Realloc(c->pending, ncap * sizeof(struct Pending));
            if (!n) {
                PyErr_NoMemory();
                return -1;
            }
            c->pending = n;
            c->pending_cap = ncap;
        }
        c->pending[c->npending].seq = r->seq;
        c->pending[c->npending].off = off;
        c->pending[c->npending].alen = alen;
        c->pending[c->npending].at = log_at;
        c->npending++;
        return 0;
    }
    if (r->kind == VD_KIND_DEL) b->tombstones++;
    uint64_t h = key_hash(key, r->klen);
    return recover_later(c, h, off, r->seq, r->kind, alen);
}

static inline uint64_t seq_limit(Core *c) {
    uint64_t base = c->durable_seq > c->floor ? c->durable_seq : c->floor;
    return base + c->mapped / VD_RECORD_HEADER_SIZE + 1;
}

/* Is there a valid record at pos? 1: yes (a pad of this life, or a record newer than prev_seq,
 * which is at least the block's birth - 1), with
 * *rec filled; 0: zeros (the end of a log); -1: something else (rec->total is the length
 * its header claims, 0 if even that is impossible). Every length is checked against end
 * before a byte it covers is read. */
static int record_at(Core *c, uint64_t pos, uint64_t end, uint64_t prev_seq, uint64_t birth, Rec *rec) {
    const uint8_t *r = c->base + pos;
    rec->total = 0;
    if (rec_header_is_zero(r)) return 0;
    uint64_t meta = rec_meta(r);
    if (!kind_is_top_level(meta_kind_raw(meta))) return -1;
    if (pos + meta_header_len(meta) > end) return -1;
    rec_parse(r, rec);
    if (rec->total > end - pos) {
        rec->total = 0;
        return -1;
    }
    /* The sequence number is checked before the CRC (the cheap test first: the scan probes
     * many positions past a damaged record). Every record in the pool is newer than its
     * block's previous one, and no newer than the durable watermark plus the number of
     * records the pool could hold (unsynced records are never freed, see the engine). */
    if (rec->kind != VD_KIND_PAD && (rec->seq <= prev_seq || rec->seq == 0 || rec->seq > seq_limit(c))) return -1;
    if (rec->kind == VD_KIND_PAD && rec->seq < birth) return -1; /* a previous life's pad */
    if (record_crc(r, rec->total) != rec_crc(r)) return -1;
    uint64_t last;
    if (rec->kind == VD_KIND_BATCH && (!batch_is_valid(c->base, pos, rec, &last) || last > seq_limit(c))) return -1;
    return 1;
}

/* scan_block(off, usable, type) -> (status, records); type: the object's type number.
 * status 0: a valid block, scanned.
 * status 1: the header does not verify and no record follows it: the block was allocated
 *           but the process died before it was used. The caller frees it.
 * status 2: the header is damaged but records follow it: they were scanned (the header is
 *           redundant: where the log starts and ends follows from the object itself). */
PyObject *Core_scan_block(Core *c, PyObject *args) {
    unsigned long long off, usable;
    unsigned int type;
    if (!PyArg_ParseTuple(args, "KKI", &off, &usable, &type)) return NULL;
    if (core_check_open(c) < 0 || check_block_bounds(c, off, usable) < 0) return NULL;
    if (type != VD_TYPE_STANDARD_BLOCK && type != VD_TYPE_JUMBO_BLOCK) {
        core_error(ERR_BLOCK_KIND, off, type);
        return NULL;
    }
    VdBlockHeader h;
    uint64_t size, ls_rel, birth = 0;
    int header_ok = header_read(c->base + off, &h);
    if (header_ok) {
        if (h.version != VD_FORMAT_VERSION) {
            core_error(ERR_BLOCK_VERSION, off, h.version, VD_FORMAT_VERSION);
            return NULL;
        }
        if (!header_fits(&h, usable, type)) {
            core_error(ERR_BLOCK_HEADER, off);
            return NULL;
        }
        size = h.size;
        ls_rel = h.log_start;
        birth = h.birth;
    } else {
        size = type == VD_TYPE_STANDARD_BLOCK && usable > VD_BLOCK_SIZE ? VD_BLOCK_SIZE : usable;
        ls_rel = type == VD_TYPE_STANDARD_BLOCK ? align_up(off + VD_BLOCK_HEADER_SIZE, VD_PAGE_SIZE) - off
                                                : VD_BLOCK_HEADER_SIZE;
        if (ls_rel + VD_RECORD_HEADER_SIZE > size) return Py_BuildValue("(iii)", 1, 0, 0);
    }
    Block nb = {0};
    nb.off = off;
    nb.size = size;
    nb.type = type;
    nb.log_start = off + ls_rel;
    nb.end = nb.log_start;
    nb.birth = birth;
    /* register the block before scanning, so that a record superseded by a later one in
     * the same block is accounted to it (no other block is inserted during the scan) */
    Py_ssize_t bi = block_insert(c, &nb);
    if (bi < 0) return NULL;
    Block *b = &c->blocks[bi];
    /* every record of this block's life is at least its birth: start as if birth - 1 came before */
    uint64_t pos = b->log_start, end = off + size, prev_seq = birth ? birth - 1 : 0, nrec = 0, last_end = pos;
    uint64_t first_bad = 0; /* where the scan met bytes that are neither records nor the end */
    int midlog = 0;         /* valid records follow them: damage, not the torn last write */
    while (pos + VD_RECORD_HEADER_SIZE <= end) {
        uint64_t room = VD_PAGE_SIZE - pos % VD_PAGE_SIZE;
        if (type == VD_TYPE_STANDARD_BLOCK && room < VD_RECORD_HEADER_SIZE) {
            pos += room;
            continue;
        }
        Rec rec;
        int v = record_at(c, pos, end, prev_seq, b->birth, &rec);
        if (v == 1) {
            uint64_t alen = align_up(rec.total, VD_RECORD_ALIGN);
            if (first_bad) midlog = 1;
            pos += alen;
            if (rec.kind == VD_KIND_PAD) continue;
            if (!nrec) b->seq_min = rec.seq;
            prev_seq = rec.seq;
            if (rec.kind == VD_KIND_BATCH) {
                /* its records, each applied as a record of the block (record_at checked them) */
                BatchWalk w;
                batch_walk_start(&w, pos - alen, &rec);
                Rec sub;
                uint64_t at;
                while (batch_walk_next(c->base, &w, &sub, &at) == 1) {
                    if (recover_record(c, at, &sub, align_up(sub.total, VD_RECORD_ALIGN), b, 0, pos - alen) < 0)
                        return NULL;
                    prev_seq = sub.seq;
                    nrec++;
                }
                b->dead_bytes += rec.hlen;
            } else {
                if (recover_record(c, pos - alen, &rec, alen, b, 0, pos - alen) < 0) return NULL;
                nrec++;
            }
            last_end = pos;
            if (type == VD_TYPE_JUMBO_BLOCK) break; /* a jumbo block holds one record */
            continue;
        }
        if (type == VD_TYPE_JUMBO_BLOCK) {
            if (v < 0) first_bad = pos;
            break;
        }
        /* Zeros (the normal end of the log) or bytes that are not a valid record (the torn
         * last write, or damage). Look for valid records further on: right after the bad
         * record if its length is plausible, else at the following page boundaries (a
         * record never starts inside a page it does not fit in). Finding one means the
         * log goes on: only the bad record is lost, and the damage is reported. */
        uint64_t next = 0;
        Rec probe;
        /* After bytes that are not a record: every record alignment up to the end of the
         * block, the first valid record wins (the records after a damaged multi-page record
         * start anywhere in a later page; and the length in a damaged header may be wrong
         * yet land on a later record, skipping the intact ones in between). After zeros:
         * the page boundaries (a record never starts inside a page it does not fit in, so
         * a zeroed header hides at most the rest of its page). */
        if (v < 0) {
            for (uint64_t cand = pos + VD_RECORD_ALIGN; !next && cand + VD_RECORD_HEADER_SIZE <= end;
                 cand += VD_RECORD_ALIGN) {
                if (VD_PAGE_SIZE - cand % VD_PAGE_SIZE < VD_RECORD_HEADER_SIZE) continue;
                if (record_at(c, cand, end, prev_seq, b->birth, &probe) == 1) next = cand;
            }
        }
        for (uint64_t cand = align_up(pos + 1, VD_PAGE_SIZE); !next && cand + VD_RECORD_HEADER_SIZE <= end;
             cand += VD_PAGE_SIZE)
            if (record_at(c, cand, end, prev_seq, b->birth, &probe) == 1) next = cand;
        if (!next) {
            if (v < 0) first_bad = first_bad ? first_bad : pos;
            break;
        }
        if (!first_bad) first_bad = pos;
        pos = next;
    }
    pos = last_end;
    b->end = pos;
    b->seq_max = nrec ? prev_seq : 0;
    b->damaged_at = first_bad;
    b->midlog = midlog;
    if (!header_ok && nrec == 0) {
        /* nothing here: unregister it again, the caller frees the object */
        memmove(&c->blocks[bi], &c->blocks[bi + 1], (c->nblocks - (size_t)bi - 1) * sizeof(Block));
        c->nblocks--;
        return Py_BuildValue("(iii)", 1, 0, 0);
    }
    return Py_BuildValue("(iKK)", header_ok ? 0 : 2, (unsigned long long)nrec, (unsigned long long)first_bad);
}

/* finish_recovery(writable) -> list of offsets of blocks that hold nothing needed.
 * Removes the tombstones from the index, sets the next sequence number and, when the store
 * is writable, resumes appending in the newest standard block (zeroing its tail first, so
 * that bytes of a torn record can never be mistaken for records). */
static int pending_cmp(const void *a, const void *b) {
    uint64_t x = ((const struct Pending *)a)->seq, y = ((const struct Pending *)b)->seq;
    return x < y ? -1 : x > y;
}

/* Apply the records newer than durable_seq in sequence order, as far as the sequence has no
 * gap. After a crash of the process every acknowledged record is there, so this drops only
 * what was never acknowledged. After a power cut, pages written since the last sync() may
 * each be old or new: a record missing from the middle then cuts the run, and everything
 * after it is dropped too, so that the store holds a prefix of its history (a delete can
 * never be lost while a later write survives). A writable open then erases the dropped
 * records (zeroing the first one of each block ends that block's log there), so that they
 * cannot come back once new records fill the gap. */
static int apply_pending(Core *c, int writable) {
    if (!c->npending) return 0;
    qsort(c->pending, c->npending, sizeof(struct Pending), pending_cmp);
    uint64_t expected = c->durable_seq + 1;
    if (expected < c->floor) expected = c->floor;
    size_t i = 0;
    for (; i < c->npending; i++) {
        struct Pending *p = &c->pending[i];
        if (p->seq != expected) break;
        Py_ssize_t bi = block_find(c, p->off);
        if (bi < 0) {
            return core_error(ERR_RECORD_OUTSIDE);
        }
        Rec r;
        rec_parse(c->base + p->off, &r);
        if (recover_record(c, p->off, &r, p->alen, &c->blocks[bi], 1, p->at) < 0) return -1;
        expected++;
    }
    c->discarded = c->npending - i;
    c->max_seq_seen = expected - 1 > c->durable_seq ? expected - 1 : c->durable_seq;
    for (size_t j = i; j < c->npending; j++) {
        struct Pending *p = &c->pending[j];
        Py_ssize_t bi = block_find(c, p->off);
        if (bi < 0) continue;
        Block *b = &c->blocks[bi];
        /* the block's log now ends before this record (records after it in the block are
         * newer, so they are dropped too; a record of a batch: from the batch on) */
        if (p->at < b->end) {
            b->end = p->at;
            b->damaged_at = 0;
            b->seq_max = p->seq - 1; /* an upper bound of what the block still holds */
        }
    }
    for (size_t j = i; writable && j < c->npending; j++) {
        /* every one of them: the scan looks past zeros for records further on */
        struct Pending *p = &c->pending[j];
        memset(c->base + p->at, 0, VD_RECORD_HEADER_SIZE);
        persist_range(c, p->at, VD_RECORD_HEADER_SIZE);
        crash_point("apply_pending: dropped record erased");
    }
    PyMem_Free(c->pending);
    c->pending = NULL;
    c->npending = c->pending_cap = 0;
    return 0;
}

PyObject *Core_finish_recovery(Core *c, PyObject *arg) {
    int writable = PyObject_IsTrue(arg);
    if (writable < 0 || core_check_open(c) < 0) return NULL;
    /* the records the scan found, then those the power-fail rule keeps (apply_pending
     * hands them to the same buffer) */
    int flushed = recover_flush(c);
    if (flushed == 0) flushed = apply_pending(c, writable);
    if (flushed == 0) flushed = recover_flush(c);
    PyMem_Free(c->scanned); /* (up to 2 x 64 MiB at a large store) */
    PyMem_Free(c->scanned_sorting);
    c->scanned = c->scanned_sorting = NULL;
    c->scanned_cap = 0;
    if (flushed < 0) return NULL;
    if (c->tombs_in_index) {
        IndexCursor cur = {0, 0};
        for (uint64_t *s; (s = index_walk(c, &cur));) {
            Rec r;
            rec_parse(c->base + slot_off(c, *s), &r);
            if (r.kind == VD_KIND_DEL) {
                IndexRef at = index_ref_at(c, &cur);
                index_remove(c, &at);
                continue; /* a later entry may have shifted into this slot */
            }
            cur.i++;
        }
        c->tombs_in_index = 0;
    }
    /* the index was sized for the blocks' bytes, dead records and deletes included */
    index_fit(c);
    if (c->max_seq_seen + 1 > c->next_seq) c->next_seq = c->max_seq_seen + 1;
    if (c->next_seq < c->durable_seq + 1) c->next_seq = c->durable_seq + 1;
    if (c->next_seq < c->floor) c->next_seq = c->floor;
    c->active = -1;
    if (writable) {
        Py_ssize_t best = -1;
        for (size_t i = 0; i < c->nblocks; i++) {
            Block *b = &c->blocks[i];
            if (b->type != VD_TYPE_STANDARD_BLOCK) continue;
            if (b->end + VD_PAGE_SIZE > b->off + b->size) continue; /* (nearly) full */
            /* born after every record kept (those after it were lost to a power cut): the
             * next records would be below its birth. It holds nothing kept: freed. */
            if (b->birth > c->next_seq) continue;
            if (best < 0 || b->seq_max > c->blocks[best].seq_max) best = (Py_ssize_t)i;
        }
        if (best >= 0) {
            Block *b = &c->blocks[best];
            uint8_t *tail = c->base + b->end;
            uint64_t tail_len = b->off + b->size - b->end;
            int dirty = 0;
            for (uint64_t j = 0; j < tail_len; j += 8) {
                uint64_t w;
                memcpy(&w, tail + j, tail_len - j >= 8 ? 8 : tail_len - j);
                if (w) {
                    dirty = 1;
                    break;
                }
            }
            if (dirty) {
                memset(tail, 0, tail_len);
                persist_range(c, b->end, tail_len);
                crash_point("finish_recovery: tail zeroed");
            }
            b->damaged_at = 0;
            c->active = best;
        }
    }
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) {
        Block *b = &c->blocks[i];
        if ((Py_ssize_t)i == c->active || b->live || b->tombstones) continue;
        if (list_append_new(out, PyLong_FromUnsignedLongLong(b->off)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* damage() -> [(block offset, offset of the first unreadable byte)] for every block whose
 * log ends in bytes that are not a record, except the newest block: there that is the
 * expected remains of the write in flight when the process died. */
PyObject *Core_damage(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    /* the newest block: by its newest record, or by its birth (a block whose first record
     * was being written) */
    Py_ssize_t newest = -1;
    uint64_t newest_seq = 0;
    for (size_t i = 0; i < c->nblocks; i++) {
        uint64_t s = c->blocks[i].seq_max > c->blocks[i].birth ? c->blocks[i].seq_max : c->blocks[i].birth;
        if (newest < 0 || s > newest_seq) {
            newest = (Py_ssize_t)i;
            newest_seq = s;
        }
    }
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) {
        Block *b = &c->blocks[i];
        if (!b->damaged_at || ((Py_ssize_t)i == newest && !b->midlog)) continue;
        if (list_append_new(out, Py_BuildValue("(KK)", (unsigned long long)b->off, (unsigned long long)b->damaged_at)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}
