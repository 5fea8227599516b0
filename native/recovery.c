/* Recovery (Viper's): the scan of every block at open rebuilds the index, bounds-checking
 * every length read from the media; then the power-fail rule, the active block, the damage. */
#include "core.h"

#include <pthread.h>
#include <stdlib.h>

/* a flush of fewer records makes its index entries in one thread */
#define RECOVER_TWO_SHARES_FROM 4096

/* The index entries are made in key-hash order, a flush at a time, ordered by the hash's
 * top ORDER_BITS bits: a hash's segment and its home there rise with it, so that the
 * inserts walk the index front to back, each within a window of 2^-11 of the index (about
 * 0.5 MiB at 100M keys: it stays in the cache), instead of touching a random slot each (at
 * 10M records 83% of the scan waited on that load, and prefetching it did not help). One
 * such pass, made by the threads that gathered the records, beat three passes sorting by
 * the top 33 bits: a reopen of 100M records took 6.5-7.8 s against 8.8-10.4 s. Which
 * version of a key wins does not depend on the order: the sequence numbers decide. */
#define ORDER_BITS 11
#define ORDER_OF(h) ((h) >> (64 - ORDER_BITS))

/* Does the record at off (in the index) have the key of the record at *other? */
static int records_share_key(Core *c, uint64_t off, const void *other) {
    Rec a, b;
    const uint8_t *ka = rec_key(c, off, &a), *kb = rec_key(c, *(const uint64_t *)other, &b);
    return a.klen == b.klen && memcmp(ka, kb, a.klen) == 0;
}

/* The index entries of one share of a flush (index_scanned), made by one thread: what
 * they change outside the index's segments (the blocks' counts, the core's) is counted
 * here and added to the core once every share is done. */
typedef struct {
    Core *c;
    const struct Scanned *run; /* the share's records, in hash order (by their top bits) */
    size_t n;
    int64_t *delta; /* per block: live, live_bytes, dead_bytes */
    int64_t count;
    struct Deleted *deleted; /* the deletes it put in the index (the core's list, later) */
    size_t ndeleted, deleted_cap;
    int err; /* an ERR_ code (ERR_SEQ_TWICE with err_seq), -1: no memory, or 0 */
    uint64_t err_seq;
} IndexShare;

#define DELTA(w, bi, field) ((w)->delta[3 * (size_t)(bi) + (field)])
enum { D_LIVE, D_LIVE_BYTES, D_DEAD_BYTES };

/* Make the index entry of each of the share's records (a valid record of hash h that the
 * scan found): the newest version of each key wins. During recovery the index also holds
 * deletes (a delete must beat an older put found later in the scan), listed to be removed
 * at the end (Core.deleted). No Python API, and nothing shared is written but the
 * segments of the share's keys: this runs without the GIL, beside the other share
 * (index_reserve_many made the room first). */
static void *index_share(void *arg) {
    IndexShare *w = arg;
    Core *c = w->c;
    for (size_t i = 0; i < w->n; i++) {
        const struct Scanned *r = &w->run[i];
        uint64_t off = r->off, alen = r->alen;
        size_t bi = r->block;
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
            } /* (a delete it replaces stays listed: its removal finds another record) */
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
            if (w->ndeleted == w->deleted_cap) {
                size_t ncap = w->deleted_cap ? w->deleted_cap * 2 : 1024;
                struct Deleted *m = PyMem_RawRealloc(w->deleted, ncap * sizeof *m);
                if (!m) {
                    w->err = -1;
                    return NULL;
                }
                w->deleted = m;
                w->deleted_cap = ncap;
            }
            w->deleted[w->ndeleted++] = (struct Deleted){r->h, off};
        }
    }
    return NULL;
}

static uint64_t plus_delta(uint64_t v, int64_t d) { return d < 0 && (uint64_t)-d > v ? 0 : v + (uint64_t)d; }

/* One thread's share of the scan (scan_blocks): the records found since the last flush, in
 * scan order, and the records newer than the durable watermark (the power-fail rule's, at
 * the end). Grown with the raw allocator: it runs without the GIL. */
typedef struct {
    Core *c;
    struct Scanned *found;
    size_t nfound, found_cap;
    struct Pending *pending;
    size_t npending, pending_cap;
    size_t by_top[1u << ORDER_BITS]; /* how many of the records found have each top bits */
    uint64_t max_seq_seen;
    int nomem; /* an allocation failed: PyErr_NoMemory() once the GIL is back */
} Scan;

static void scan_free(Scan *s) {
    PyMem_RawFree(s->found);
    PyMem_RawFree(s->pending);
    s->found = NULL;
    s->pending = NULL;
    s->nfound = s->found_cap = s->npending = s->pending_cap = 0;
}

/* room for n records in the core's flush buffer (with the GIL) */
static int scanned_room(Core *c, size_t n) {
    if (n <= c->scanned_cap) return 0;
    PyMem_Free(c->scanned);
    c->scanned = PyMem_Malloc(n * sizeof *c->scanned);
    c->scanned_cap = c->scanned ? n : 0;
    return c->scanned ? 0 : (PyErr_NoMemory(), -1);
}

/* One scan's records, moved to their places in the flush's order (a radix pass whose counts
 * the scan kept): no Python API, beside the other scan's */
typedef struct {
    Scan *s;
    struct Scanned *out;
    size_t at[1u << ORDER_BITS]; /* where the next record of each top bits goes */
} Placing;

static void *place_scanned(void *arg) {
    Placing *p = arg;
    for (size_t i = 0; i < p->s->nfound; i++) {
        const struct Scanned *r = &p->s->found[i];
        p->out[p->at[ORDER_OF(r->h)]++] = *r;
    }
    return NULL;
}

/* Run f on each of the n (at most 2) arguments, the second in a thread of its own when
 * there are two, without the GIL (f: no Python API) */
static void run_beside(void *(*f)(void *), void *args, size_t size, size_t n) {
    Py_BEGIN_ALLOW_THREADS
    pthread_t t;
    int started = n > 1 && pthread_create(&t, NULL, f, (char *)args + size) == 0;
    f(args);
    if (started)
        pthread_join(t, NULL);
    else if (n > 1)
        f((char *)args + size);
    Py_END_ALLOW_THREADS
}

/* The index entries of the records the scans found (each scan's list emptied), made in the
 * order of their hash's top bits, in two shares at once when the index splits by the top
 * bit (no segment holds keys of both halves): each thread makes the entries of one half, in
 * the segments of that half only. */
static int index_scanned(Core *c, Scan *scans, size_t nscans) {
    size_t n = 0, low = 0;
    for (size_t k = 0; k < nscans; k++) n += scans[k].nfound;
    if (!n) return 0;
    if (scanned_room(c, n) < 0) return -1;
    Placing *placing = PyMem_RawCalloc(nscans, sizeof *placing);
    if (!placing) return PyErr_NoMemory(), -1;
    size_t sum = 0;
    for (size_t top = 0; top < (1u << ORDER_BITS); top++) {
        if (top == 1u << (ORDER_BITS - 1)) low = sum;
        for (size_t k = 0; k < nscans; k++) {
            placing[k].at[top] = sum;
            sum += scans[k].by_top[top];
        }
    }
    for (size_t k = 0; k < nscans; k++) {
        placing[k].s = &scans[k];
        placing[k].out = c->scanned;
    }
    run_beside(place_scanned, placing, sizeof *placing, nscans);
    PyMem_RawFree(placing);
    for (size_t k = 0; k < nscans; k++) {
        scans[k].nfound = 0;
        memset(scans[k].by_top, 0, sizeof scans[k].by_top);
    }
    const struct Scanned *ordered = c->scanned;
    if (index_reserve_many(c, &ordered[0].h, sizeof *ordered, n) < 0) return -1;
    size_t nb = c->nblocks ? c->nblocks : 1;
    int64_t *delta = PyMem_RawCalloc(2 * 3 * nb, sizeof *delta);
    if (!delta) return PyErr_NoMemory(), -1;
    IndexShare w[2] = {{.c = c, .run = ordered, .n = n, .delta = delta}, {.c = c, .run = ordered + n, .delta = delta + 3 * nb}};
    uint64_t half = c->dir_bits ? UINT64_C(1) << (c->dir_bits - 1) : 0;
    if (n >= RECOVER_TWO_SHARES_FROM && half && c->dir[half - 1] != c->dir[half]) {
        w[0].n = low;
        w[1].run = ordered + low;
        w[1].n = n - low;
        run_beside(index_share, w, sizeof *w, 2);
    } else {
        index_share(&w[0]);
    }
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        if (w[k].err == ERR_SEQ_TWICE)
            rc = core_error(ERR_SEQ_TWICE, (unsigned long long)w[k].err_seq);
        else if (w[k].err < 0)
            rc = (PyErr_NoMemory(), -1);
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
        if (w[k].ndeleted && c->ndeleted + w[k].ndeleted > c->deleted_cap) {
            size_t ncap = (c->ndeleted + w[k].ndeleted) * 2;
            struct Deleted *m = PyMem_Realloc(c->deleted, ncap * sizeof *m);
            if (m) {
                c->deleted = m;
                c->deleted_cap = ncap;
            } else if (rc == 0) {
                rc = (PyErr_NoMemory(), -1);
            }
        }
        if (c->ndeleted + w[k].ndeleted <= c->deleted_cap) {
            memcpy(c->deleted + c->ndeleted, w[k].deleted, w[k].ndeleted * sizeof *w[k].deleted);
            c->ndeleted += w[k].ndeleted;
        }
        PyMem_RawFree(w[k].deleted);
    }
    PyMem_RawFree(delta);
    return rc;
}

/* A scanning thread flushes after this many records (32 bytes each, as much again in the
 * core's buffer they are ordered into) */
#define SCANNED_MOST_PER_THREAD (UINT64_C(1) << 20)

static int scan_later(Scan *s, uint64_t h, uint64_t off, uint64_t seq, unsigned kind, uint64_t alen, const Block *b) {
    if (s->nfound == s->found_cap) {
        size_t ncap = s->found_cap ? s->found_cap * 2 : 4096;
        struct Scanned *m = PyMem_RawRealloc(s->found, ncap * sizeof *m);
        if (!m) return s->nomem = 1, -1;
        s->found = m;
        s->found_cap = ncap;
    }
    s->found[s->nfound++] = (struct Scanned){h, off, seq, (uint32_t)alen, kind, (uint32_t)(b - s->c->blocks)};
    s->by_top[ORDER_OF(h)]++;
    return 0;
}

/* Apply one valid record found by the scan (applying: a pending record that the power-fail
 * rule keeps, at the end of the scan): records newer than the durable watermark wait for
 * that rule, the others wait in s for their index entries (index_scanned). No Python API:
 * this runs without the GIL. */
static int recover_record(Scan *s, uint64_t off, const Rec *r, uint64_t alen, Block *b, int applying, uint64_t log_at) {
    Core *c = s->c;
    const uint8_t *key = c->base + off + r->hlen;
    if (r->seq > s->max_seq_seen) s->max_seq_seen = r->seq;
    if (r->seq < c->floor) { /* superseded wholesale by a reorganize() */
        b->dead_bytes += alen;
        return 0;
    }
    if (!applying && r->seq > c->durable_seq) {
        if (s->npending == s->pending_cap) {
            size_t ncap = s->pending_cap ? s->pending_cap * 2 : 1024;
            struct Pending *n = PyMem_RawRealloc(s->pending, ncap * sizeof(struct Pending));
            if (!n) return s->nomem = 1, -1;
            s->pending = n;
            s->pending_cap = ncap;
        }
        s->pending[s->npending++] = (struct Pending){r->seq, off, alen, log_at};
        return 0;
    }
    if (r->kind == VD_KIND_DEL) b->tombstones++;
    return scan_later(s, key_hash(key, r->klen), off, r->seq, r->kind, alen, b);
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

/* A block to scan (scan_blocks): where it is, what its header says, and what its scan found */
typedef struct {
    uint64_t off, usable;
    unsigned type;
    size_t position; /* in the caller's list */
    int header_ok;
    Py_ssize_t bi; /* in blocks[] once registered; -1: nothing to scan (status 1) */
    int status;
    uint64_t nrec, first_bad;
} ScanJob;

/* Check a block's header and register it (with the GIL); blocks without a valid header
 * are registered with the bounds their object implies (status 1 if no record fits). */
static int scan_register(Core *c, ScanJob *j) {
    if (check_block_bounds(c, j->off, j->usable) < 0) return -1;
    if (j->type != VD_TYPE_STANDARD_BLOCK && j->type != VD_TYPE_JUMBO_BLOCK)
        return core_error(ERR_BLOCK_KIND, (unsigned long long)j->off, j->type);
    VdBlockHeader h;
    uint64_t size, ls_rel, birth = 0;
    j->header_ok = header_read(c->base + j->off, &h);
    j->bi = -1;
    j->status = j->header_ok ? 0 : 2;
    if (j->header_ok) {
        if (h.version != VD_FORMAT_VERSION)
            return core_error(ERR_BLOCK_VERSION, (unsigned long long)j->off, h.version, VD_FORMAT_VERSION);
        if (!header_fits(&h, j->usable, j->type)) return core_error(ERR_BLOCK_HEADER, (unsigned long long)j->off);
        size = h.size;
        ls_rel = h.log_start;
        birth = h.birth;
    } else {
        size = j->type == VD_TYPE_STANDARD_BLOCK && j->usable > VD_BLOCK_SIZE ? VD_BLOCK_SIZE : j->usable;
        ls_rel = j->type == VD_TYPE_STANDARD_BLOCK ? align_up(j->off + VD_BLOCK_HEADER_SIZE, VD_PAGE_SIZE) - j->off
                                                   : VD_BLOCK_HEADER_SIZE;
        if (ls_rel + VD_RECORD_HEADER_SIZE > size) {
            j->status = 1;
            return 0;
        }
    }
    if (c->nblocks >= (UINT64_C(1) << 28)) return internal_error("more blocks than a scanned record can name");
    Block nb = {0};
    nb.off = j->off;
    nb.size = size;
    nb.type = j->type;
    nb.log_start = j->off + ls_rel;
    nb.end = nb.log_start;
    nb.birth = birth;
    /* registered before any is scanned, so that a record superseded by a later one
     * anywhere is accounted to its block */
    return block_insert(c, &nb) < 0 ? -1 : 0;
}

/* Scan one registered block's log (s: the scanning thread's share): every valid record is
 * applied to the index (recover_record); the log's end, damage and sequence bounds are
 * noted in its Block, which no other thread touches meanwhile. No Python API. */
static int scan_job(Scan *s, ScanJob *j) {
    Core *c = s->c;
    Block *b = &c->blocks[j->bi];
    unsigned type = j->type;
    /* every record of this block's life is at least its birth: start as if birth - 1 came before */
    uint64_t pos = b->log_start, end = b->off + b->size, prev_seq = b->birth ? b->birth - 1 : 0, nrec = 0,
             last_end = pos;
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
                    if (recover_record(s, at, &sub, align_up(sub.total, VD_RECORD_ALIGN), b, 0, pos - alen) < 0)
                        return -1;
                    prev_seq = sub.seq;
                    nrec++;
                }
                b->dead_bytes += rec.hlen;
            } else {
                if (recover_record(s, pos - alen, &rec, alen, b, 0, pos - alen) < 0) return -1;
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
         * last write, or damage). Look for valid records further on. Finding one means the
         * log goes on: only the bad record is lost, and the damage is reported.
         * After bytes that are not a record: every record alignment up to the end of the
         * block, the first valid record wins (the records after a damaged multi-page record
         * start anywhere in a later page; and the length in a damaged header may be wrong
         * yet land on a later record, skipping the intact ones in between). After zeros:
         * the page boundaries (a record never starts inside a page it does not fit in, so
         * a zeroed header hides at most the rest of its page). */
        uint64_t next = 0;
        Rec probe;
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
    b->end = last_end;
    b->seq_max = nrec ? prev_seq : 0;
    b->damaged_at = first_bad;
    b->midlog = midlog;
    j->nrec = nrec;
    j->first_bad = first_bad;
    if (!j->header_ok && nrec == 0) j->status = 1; /* nothing here: unregistered after the scan */
    return 0;
}

/* The blocks waiting to be scanned, handed out one at a time to whichever thread asks */
typedef struct {
    ScanJob *jobs;
    size_t njobs;
    size_t next; /* (atomic) */
} ScanQueue;

typedef struct {
    Scan *s;
    ScanQueue *q;
} ScanWorker;

/* Scan blocks until this thread's share holds SCANNED_MOST_PER_THREAD records or none is
 * left (no Python API: without the GIL, beside the other worker) */
static void *scan_worker(void *arg) {
    ScanWorker *w = arg;
    while (w->s->nfound < SCANNED_MOST_PER_THREAD) {
        size_t i = __atomic_fetch_add(&w->q->next, 1, __ATOMIC_RELAXED);
        if (i >= w->q->njobs) break;
        if (scan_job(w->s, &w->q->jobs[i]) < 0) break;
    }
    return NULL;
}

/* What a round of scanning left in s beside its records: the newest sequence number seen,
 * and the records waiting for the power-fail rule (with the GIL) */
static int scan_merge(Core *c, Scan *s) {
    if (s->max_seq_seen > c->max_seq_seen) c->max_seq_seen = s->max_seq_seen;
    if (s->nomem) return PyErr_NoMemory(), -1;
    if (!s->npending) return 0;
    if (c->npending + s->npending > c->pending_cap) {
        size_t ncap = c->npending + s->npending;
        struct Pending *n = PyMem_Realloc(c->pending, ncap * sizeof(struct Pending));
        if (!n) return PyErr_NoMemory(), -1;
        c->pending = n;
        c->pending_cap = ncap;
    }
    memcpy(c->pending + c->npending, s->pending, s->npending * sizeof(struct Pending));
    c->npending += s->npending;
    s->npending = 0;
    return 0;
}

static int job_by_offset(const void *a, const void *b) {
    uint64_t x = ((const ScanJob *)a)->off, y = ((const ScanJob *)b)->off;
    return x < y ? -1 : x > y;
}

static int job_by_position(const void *a, const void *b) {
    size_t x = ((const ScanJob *)a)->position, y = ((const ScanJob *)b)->position;
    return x < y ? -1 : x > y;
}

/* Scan the jobs' blocks: every block is registered first, then two threads (without the
 * GIL) take blocks one at a time, each gathering its records apart, and whenever a thread
 * holds SCANNED_MOST_PER_THREAD records both stop and their records get their index entries
 * (index_scanned, in two threads too). Blocks with nothing in them are unregistered again
 * at the end (the caller frees their objects). */
static int scan_jobs(Core *c, ScanJob *jobs, size_t njobs) {
    qsort(jobs, njobs, sizeof *jobs, job_by_offset); /* (block_insert appends) */
    for (size_t i = 0; i < njobs; i++)
        if (scan_register(c, &jobs[i]) < 0) return -1;
    ScanQueue q = {PyMem_Malloc((njobs ? njobs : 1) * sizeof *jobs), 0, 0};
    if (!q.jobs) return PyErr_NoMemory(), -1;
    for (size_t i = 0; i < njobs; i++) {
        if (jobs[i].status == 1) continue;
        jobs[i].bi = block_find(c, jobs[i].off);
        q.jobs[q.njobs++] = jobs[i];
    }
    Scan scans[2] = {{.c = c}, {.c = c}};
    ScanWorker w[2] = {{&scans[0], &q}, {&scans[1], &q}};
    int rc = 0;
    while (rc == 0 && q.next < q.njobs) {
        Py_BEGIN_ALLOW_THREADS
        pthread_t t;
        int started = q.njobs - q.next > 1 && pthread_create(&t, NULL, scan_worker, &w[1]) == 0;
        scan_worker(&w[0]);
        if (started) pthread_join(t, NULL);
        Py_END_ALLOW_THREADS
        if (q.next > q.njobs) q.next = q.njobs;
        for (int k = 0; k < 2; k++)
            if (scan_merge(c, &scans[k]) < 0) rc = -1;
        if (rc == 0) rc = index_scanned(c, scans, 2);
    }
    scan_free(&scans[0]);
    scan_free(&scans[1]);
    /* the results, and the empty blocks unregistered (from the last, so that the indexes of
     * the others stay right) */
    for (size_t i = 0; i < q.njobs; i++) {
        ScanJob *done = bsearch(&q.jobs[i], jobs, njobs, sizeof *jobs, job_by_offset);
        *done = q.jobs[i];
    }
    PyMem_Free(q.jobs);
    if (rc < 0) return -1;
    for (size_t i = njobs; i-- > 0;) {
        if (jobs[i].status != 1 || jobs[i].bi < 0) continue;
        size_t bi = (size_t)jobs[i].bi;
        memmove(&c->blocks[bi], &c->blocks[bi + 1], (c->nblocks - bi - 1) * sizeof(Block));
        c->nblocks--;
    }
    qsort(jobs, njobs, sizeof *jobs, job_by_position);
    return 0;
}

/* scan_blocks([(off, usable, type), ...]) -> [(status, records, damaged_at), ...]
 * type: the object's type number.
 * status 0: a valid block, scanned.
 * status 1: the header does not verify and no record follows it: the block was allocated
 *           but the process died before it was used. The caller frees it.
 * status 2: the header is damaged but records follow it: they were scanned (the header is
 *           redundant: where the log starts and ends follows from the object itself). */
PyObject *Core_scan_blocks(Core *c, PyObject *arg) {
    if (core_check_open(c) < 0) return NULL;
    PyObject *seq = PySequence_Fast(arg, "scan_blocks() takes a list of (offset, usable, type)");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    ScanJob *jobs = PyMem_Calloc(n ? (size_t)n : 1, sizeof *jobs);
    PyObject *out = NULL;
    if (!jobs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long off, usable;
        unsigned int type;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KKI", &off, &usable, &type)) goto done;
        jobs[i] = (ScanJob){.off = off, .usable = usable, .type = type, .position = (size_t)i, .bi = -1};
    }
    if (scan_jobs(c, jobs, (size_t)n) < 0) goto done;
    out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *t = Py_BuildValue("(iKK)", jobs[i].status, (unsigned long long)jobs[i].nrec,
                                    (unsigned long long)jobs[i].first_bad);
        if (!t) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, t);
    }
done:
    PyMem_Free(jobs);
    Py_DECREF(seq);
    return out;
}

/* scan_block(off, usable, type) -> (status, records, damaged_at): scan_blocks of one block */
PyObject *Core_scan_block(Core *c, PyObject *args) {
    unsigned long long off, usable;
    unsigned int type;
    if (!PyArg_ParseTuple(args, "KKI", &off, &usable, &type)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    ScanJob job = {.off = off, .usable = usable, .type = type, .bi = -1};
    if (scan_jobs(c, &job, 1) < 0) return NULL;
    return Py_BuildValue("(iKK)", job.status, (unsigned long long)job.nrec, (unsigned long long)job.first_bad);
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
    Scan kept = {.c = c};
    size_t i = 0;
    for (; i < c->npending; i++) {
        struct Pending *p = &c->pending[i];
        if (p->seq != expected) break;
        Py_ssize_t bi = block_find(c, p->off);
        if (bi < 0) {
            scan_free(&kept);
            return core_error(ERR_RECORD_OUTSIDE);
        }
        Rec r;
        rec_parse(c->base + p->off, &r);
        if (recover_record(&kept, p->off, &r, p->alen, &c->blocks[bi], 1, p->at) < 0) {
            scan_free(&kept);
            return PyErr_NoMemory(), -1;
        }
        expected++;
    }
    /* (their entries are made like the scan's, in key-hash order) */
    int rc = index_scanned(c, &kept, 1);
    scan_free(&kept);
    if (rc < 0) return -1;
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
    /* the records the power-fail rule keeps (the scan's have their entries already) */
    int flushed = apply_pending(c, writable);
    PyMem_Free(c->scanned); /* (up to 64 MiB at a large store) */
    c->scanned = NULL;
    c->scanned_cap = 0;
    if (flushed < 0) return NULL;
    /* the deletes out of the index, where a later put has not replaced them (a probe each:
     * at 100M records a walk of the index reading every entry's record took 31% of a
     * reopen) */
    for (size_t i = 0; i < c->ndeleted; i++) {
        IndexRef at;
        uint64_t off = c->deleted[i].off;
        if (index_probe(c, c->deleted[i].h, &at, records_share_key, &off) && slot_off(c, *at.slot) == off)
            index_remove(c, &at);
    }
    PyMem_Free(c->deleted);
    c->deleted = NULL;
    c->ndeleted = c->deleted_cap = 0;
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
