/*
 * The internal header of viperdbm._vipercore, the hot paths of viperdbm in C.
 *
 * This extension never calls libpmemobj (that binding is viperdbm/_pmemobj.py, ctypes).
 * Python hands it the address and mapped length of a pool, and the blocks that Python
 * allocated there; the core then
 *   - appends records to the active block (Viper's sequential VPage writes),
 *   - keeps the volatile DRAM hash index: key -> pool offset of the newest record,
 *     8 bytes a slot, no copy of keys or values (keys are compared in the pool),
 *   - scans blocks at open to rebuild the index (Viper's recovery), bounds-checking
 *     every length read from the media before touching memory,
 *   - copies live records during reorganize().
 * The record and block formats are described in docs/format.md and defined, as types, in
 * vipercore.h.
 *
 * One concern a file, all of them behind this header (as SQLite keeps its sources):
 *   crc32c.c     CRC-32C of records and block headers (the key hash is inline below)
 *   index.c      the DRAM hash index: segments, growth one segment at a time, deletion,
 *                walks (the lookup is inline below)
 *   log.c        blocks and records: placing, writing and persisting a record, the block
 *                constructor, block headers, the blocks registry, put
 *   batch.c      atomic batches: many puts and deletes written as one record
 *   recovery.c   the scan of the blocks at open, the power-fail rule, damage
 *   compaction.c reorganize() and the compaction of single blocks
 *   parts.c      read-only mapping of a store's part files for shared readers
 *   core_type.c  the Core Python type: its methods table and the get/put/delete entries
 *   map_type.c   the MapBase Python type: the dbm object's native mapping slots
 *   signals.c    deferral of asynchronous signals over the engine's multi-step changes
 *   format.c     the format of vipercore.h exported to Python (the module's FORMAT)
 *   module.c     module init, the error table, crash points
 * The hot helpers (key hash, index lookup, record parsing, key arguments) are static inline
 * here, and the extension is built with -flto (setup.py), so that a put or a get crosses
 * no call a single translation unit would not have had.
 *
 * Concurrency: every method runs with the GIL held and never releases it, so each call is
 * atomic with respect to other Python threads. Slow paths (allocating a block) are done by
 * Python under its own lock, signalled by the NEED_* write codes below.
 */
#ifndef VIPERDBM_CORE_H
#define VIPERDBM_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "vipercore.h"

/* Nothing below is seen outside the extension (only PyInit__vipercore, and pmemio.c's
 * own exports): calls between the files bind directly and may be inlined at link time. */
#pragma GCC visibility push(hidden)

/* ------------------------------------------------------------------ write codes
 * What each write call of the core (put, delete, put_jumbo, delete_jumbo, add_block,
 * compact_block, compact_step) answers: done, or exactly one thing it needs before it is
 * called again. Python meets the needs in one place (viperdbm/_writepath.py, meet_needs),
 * holding the engine's lock. The module exports this table as the IntEnum WriteCode.
 * "Done, and space is due to be given back" is no code: the write raises reclaim_due in
 * the Core (see after_write), which the native fast path checks after a done write. */
#define WRITE_CODES(X)                                                                           \
    X(MISSING, -1)     /* a delete of a key that is not there: nothing was written */            \
    X(DONE, 0)         /* the write is done */                                                   \
    X(NEED_BLOCK, 1)   /* the active block is full (or there is none): add a block */            \
    X(NEED_JUMBO, 2)   /* the record is over VD_INLINE_MAX: a jumbo block of jumbo_need bytes */ \
    X(NEED_WAIT, 3)    /* reorganize() is running: wait for it (take the store lock) */          \
    X(NEED_RESERVE, 4) /* a put while the space kept for deletes is gone: set it aside again */
#define WRITE_CODE_ENUM(name, value) RC_##name = (value),
typedef enum { WRITE_CODES(WRITE_CODE_ENUM) } WriteCode;
#undef WRITE_CODE_ENUM

#define PERSIST_NONE 0  /* ordinary file or tmpfs: the page cache survives kill -9 */
#define PERSIST_MSYNC 1 /* flag 's': msync each record before acknowledging it */
#define PERSIST_FUNC 2  /* real PMem (DAX): pmem_persist each record, as Viper does */

/* msync and mmap granularity (a VPage is several of them): sysconf(_SC_PAGESIZE), read at
 * module init. Nothing on the media depends on it (docs/format.md). */
extern uint64_t os_page;

/* ------------------------------------------------------------------ errors (module.c)
 * Every store problem the core raises, with its exception class and message, is one row of
 * the table in module.c: C raises errors one way, core_error(kind, format arguments...). */
typedef enum {
    ERR_CLOSED,          /* ClosedError */
    ERR_FORKED,          /* ClosedError */
    ERR_INTERNAL,        /* viperdbm.error: a broken invariant (%s: what) */
    ERR_IO_REFUSED,      /* viperdbm.error, errno set: an earlier msync failed */
    ERR_IO_UNDURABLE,    /* viperdbm.error, errno set: this write's msync failed */
    ERR_BLOCKS_OVERLAP,  /* CorruptedError */
    ERR_BLOCK_OUTSIDE,   /* CorruptedError (off, size, mapped) */
    ERR_BLOCK_NOT_NEW,   /* CorruptedError (off) */
    ERR_BLOCK_VERSION,   /* CorruptedError (off, version, expected) */
    ERR_BLOCK_HEADER,    /* CorruptedError (off) */
    ERR_BLOCK_KIND,      /* CorruptedError (off, type) */
    ERR_SEQ_TWICE,       /* CorruptedError (seq) */
    ERR_RECORD_OUTSIDE,  /* CorruptedError */
    ERR_PART_SIZE,       /* CorruptedError (path object, size, page) */
    ERR_NO_PARTS,        /* CorruptedError */
    ERR_PEEK_OUTSIDE,    /* CorruptedError */
    ERR_TOO_LARGE,       /* ValueError: the caller's key or value is over the limit */
    ERR_INDEX_HELD,      /* viperdbm.error: a write needs the index to grow during keys()/items() */
} ErrKind;

/* Raise the exception of kind, its message formatted (PyUnicode_FromFormat) with the
 * arguments its row names: always -1. */
int core_error(ErrKind kind, ...);
/* The same with errno set on the exception (rows without format arguments). */
int core_error_errno(ErrKind kind, int err);
/* An internal invariant failed: a viperdbm.error, never a bare ValueError. */
#define internal_error(what) core_error(ERR_INTERNAL, (what))

/* ------------------------------------------------------------------ crash points (module.c)
 * A test hook: crash_point(name) marks each internal step after which a crash leaves a
 * different state on the media; module.c says how it is configured. Unset (the normal
 * case) a crash point costs one predictable branch on a global int. */
extern int crash_armed;
void crash_point_hit(const char *name) __attribute__((noinline, cold));
static inline void crash_point(const char *name) {
    if (__builtin_expect(crash_armed, 0)) crash_point_hit(name);
}

/* ------------------------------------------------------------------ CRC-32C (crc32c.c) */
void crc_init(void);
uint32_t crc32c_update(uint32_t crc, const void *data, size_t n);

/* ------------------------------------------------------------------ hashing */
static inline uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t mix64(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* A wyhash-style 64-bit hash; the index is volatile, so it never reaches the media. */
static inline uint64_t key_hash(const uint8_t *p, size_t n) {
    const uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull, k2 = 0x8ebc6af09c88c6e3ull;
    uint64_t h = k0 ^ mix64((uint64_t)n ^ k1, k2);
    size_t i = n;
    while (i >= 16) {
        h = mix64(rd64(p) ^ k1, rd64(p + 8) ^ h);
        p += 16;
        i -= 16;
    }
    uint64_t a = 0, b = 0;
    if (i >= 8) {
        a = rd64(p);
        memcpy(&b, p + 8, i - 8);
    } else {
        memcpy(&a, p, i);
    }
    return mix64(a ^ k1 ^ h, b ^ k2 ^ (uint64_t)n);
}

/* ------------------------------------------------------------------ media helpers
 * Fields of the structures of vipercore.h are read and written with memcpy at their offsetof
 * (records start at any 4-byte boundary), never through a cast pointer. */
static inline uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

/* One pass of an LSD radix sort, RADIX_BITS bits a pass: the n elements of size bytes at in
 * go to out, stably ordered by the digit at shift of the uint64_t at key_off in each (the
 * listings sort offsets, recovery its scanned records by hash). Inline: each caller gets
 * it compiled for its element. */
#define RADIX_BITS 11
static inline void radix_pass(const void *in, void *out, size_t n, size_t size, size_t key_off, unsigned shift) {
    size_t counts[1u << RADIX_BITS] = {0}; /* 16 KiB */
    const uint64_t mask = (1u << RADIX_BITS) - 1;
    const uint8_t *src = in;
    uint8_t *dst = out;
    uint64_t key;
    for (size_t i = 0; i < n; i++) {
        memcpy(&key, src + i * size + key_off, sizeof key);
        counts[(key >> shift) & mask]++;
    }
    size_t sum = 0;
    for (size_t d = 0; d <= mask; d++) {
        size_t t = counts[d];
        counts[d] = sum;
        sum += t;
    }
    for (size_t i = 0; i < n; i++) {
        memcpy(&key, src + i * size + key_off, sizeof key);
        memcpy(dst + counts[(key >> shift) & mask]++ * size, src + i * size, size);
    }
}

/* The CRC-32C of n bytes, as the format stores it. */
static inline uint32_t crc32c(const void *data, size_t n) { return crc32c_update(0xFFFFFFFFu, data, n) ^ 0xFFFFFFFFu; }

/* The checksum a block header at p must carry (of its bytes after the crc field). */
static inline uint32_t block_header_crc(const uint8_t *p) {
    return crc32c(p + VD_BLOCK_CRC_FROM, VD_BLOCK_HEADER_SIZE - VD_BLOCK_CRC_FROM);
}

static inline uint32_t rec_crc(const uint8_t *r) { return rd32(r + offsetof(VdRecordHeader, crc)); }
static inline uint32_t rec_vlen(const uint8_t *r) { return rd32(r + offsetof(VdRecordHeader, vlen)); }
static inline uint64_t rec_meta(const uint8_t *r) { return rd64(r + offsetof(VdRecordHeader, meta)); }
/* The checksum a record of total bytes at r must carry (of its bytes after the crc field). */
static inline uint32_t record_crc(const uint8_t *r, uint64_t total) {
    return crc32c(r + VD_RECORD_CRC_FROM, total - VD_RECORD_CRC_FROM);
}
/* The 16 zero bytes where the next record header would be: the end of a log. */
static inline int rec_header_is_zero(const uint8_t *r) {
    static const uint8_t zeros[VD_RECORD_HEADER_SIZE];
    return memcmp(r, zeros, sizeof zeros) == 0;
}

static inline uint64_t meta_make(uint64_t seq, unsigned kind, uint64_t klen) {
    uint64_t kfield = klen > VD_KLEN_SHORT_MAX ? VD_KLEN_LONG : klen;
    return (seq & VD_SEQ_MASK) | ((uint64_t)kind << VD_KIND_SHIFT) | (kfield << VD_KLEN_SHIFT);
}
/* The kind field as stored (a put or delete in a batch has VD_KIND_IN_BATCH set) */
static inline unsigned meta_kind_raw(uint64_t meta) { return (unsigned)((meta >> VD_KIND_SHIFT) & VD_KIND_MASK); }
/* The kind, without the in-batch flag: what a record does */
static inline unsigned meta_kind(uint64_t meta) { return meta_kind_raw(meta) & ~VD_KIND_IN_BATCH; }
/* Can a record of this stored kind stand in a log by itself (not inside a batch)? */
static inline int kind_is_top_level(unsigned raw) { return raw >= VD_KIND_PUT && raw <= VD_KIND_BATCH; }
static inline int meta_long_key(uint64_t meta) { return (meta >> VD_KLEN_SHIFT) == VD_KLEN_LONG; }
/* The length of a record's header: a long key's u32 length follows the fixed part. */
static inline uint64_t meta_header_len(uint64_t meta) {
    return meta_long_key(meta) ? VD_RECORD_LONG_HEADER_SIZE : VD_RECORD_HEADER_SIZE;
}

static inline uint64_t header_len_for(uint64_t klen) {
    return klen > VD_KLEN_SHORT_MAX ? VD_RECORD_LONG_HEADER_SIZE : VD_RECORD_HEADER_SIZE;
}

static inline uint64_t record_len_for(uint64_t klen, uint64_t vlen) {
    return header_len_for(klen) + klen + vlen;
}

/* A record as parsed from the media (only ever from validated or self-written bytes). */
typedef struct {
    uint64_t seq, klen, vlen, hlen, total; /* total = header + key + value, unaligned */
    unsigned kind;
} Rec;

static inline void rec_parse(const uint8_t *r, Rec *out) {
    uint64_t meta = rec_meta(r);
    out->vlen = rec_vlen(r);
    out->seq = meta & VD_SEQ_MASK;
    out->kind = meta_kind(meta);
    out->hlen = meta_header_len(meta);
    out->klen = meta_long_key(meta) ? rd32(r + VD_RECORD_HEADER_SIZE) : meta >> VD_KLEN_SHIFT;
    out->total = out->hlen + out->klen + out->vlen;
}

/* ------------------------------------------------------------------ batches
 * The records inside a batch record (VD_KIND_BATCH; vipercore.h, docs/format.md). A walk
 * over a batch whose CRC verified, checking every length against the batch's end before a
 * byte it covers is read: a hostile file can make a batch unreadable, never make a walk
 * read outside it. */
typedef struct {
    uint64_t pos, end, seq; /* the next record, the batch's end, the next record's seq */
} BatchWalk;

static inline void batch_walk_start(BatchWalk *w, uint64_t off, const Rec *batch) {
    w->pos = off + batch->hlen + batch->klen;
    w->end = off + batch->total;
    w->seq = batch->seq;
}

/* 1: *sub is the next record of the batch, at *at; 0: the batch is done; -1: malformed */
static inline int batch_walk_next(const uint8_t *base, BatchWalk *w, Rec *sub, uint64_t *at) {
    if (w->pos == w->end) return 0;
    if (w->pos > w->end || w->end - w->pos < VD_RECORD_HEADER_SIZE) return -1;
    const uint8_t *r = base + w->pos;
    uint64_t meta = rec_meta(r);
    unsigned raw = meta_kind_raw(meta);
    if (raw != (VD_KIND_PUT | VD_KIND_IN_BATCH) && raw != (VD_KIND_DEL | VD_KIND_IN_BATCH)) return -1;
    if (meta_header_len(meta) > w->end - w->pos) return -1;
    rec_parse(r, sub);
    if (sub->total > w->end - w->pos || sub->seq != w->seq || (sub->kind == VD_KIND_DEL && sub->vlen)) return -1;
    *at = w->pos;
    w->pos += align_up(sub->total, VD_RECORD_ALIGN);
    w->seq++;
    return 1;
}

/* 1 if every record of the batch (at off, its CRC verified) is well formed and there is at
 * least one; *last: the sequence number of the last */
static inline int batch_is_valid(const uint8_t *base, uint64_t off, const Rec *batch, uint64_t *last) {
    if (batch->klen || batch->seq == 0) return 0;
    BatchWalk w;
    batch_walk_start(&w, off, batch);
    Rec sub;
    uint64_t at;
    int v, n = 0;
    while ((v = batch_walk_next(base, &w, &sub, &at)) == 1) n++;
    *last = w.seq - 1;
    return v == 0 && n > 0;
}

/* ------------------------------------------------------------------ the Core object */
typedef struct {
    uint64_t off;       /* pool offset of the block object */
    uint64_t size;      /* bytes of the block that the log may use (from its header) */
    uint64_t log_start; /* pool offset of the first record */
    uint64_t end;       /* pool offset just past the last valid record */
    uint64_t live, live_bytes, dead_bytes, tombstones;
    uint64_t seq_min, seq_max; /* of the records in the block (0: none yet) */
    uint64_t damaged_at; /* where the scan met bytes that are neither a record nor zeros */
    int midlog;          /* ... and valid records followed them: damage, not a torn write */
    uint64_t birth;      /* from the header: every record in the block is at least this (0: no bound) */
    unsigned type; /* VD_TYPE_STANDARD_BLOCK or VD_TYPE_JUMBO_BLOCK */
    int old; /* being compacted away by reorganize() */
    int retired; /* freed by the engine, but held for readers (see shared.c): still on the media */
    uint64_t entry_plus1; /* its entry in the readers file, plus one (0: none) */
} Block;

/* A block as a reader knows it (shared.c): how far its log has been read. */
typedef struct {
    uint64_t off, size, birth, pos;
    unsigned type;
} ReaderBlock;

#define SHARED_NONE 0
#define SHARED_WRITER 1 /* publishes to the readers file */
#define SHARED_READER 2 /* follows the readers file */

typedef struct {
    PyObject_HEAD uint8_t *base; /* NULL once closed */
    uint64_t mapped;             /* bytes of the pool that are mapped: bound for every offset */
    /* index (index.c): a directory of segments, each a table of slots = tag | (offset >> 2),
     * 0 = empty (see Segment below) */
    struct Segment **dir; /* 2^dir_bits entries */
    unsigned dir_bits;
    unsigned dir_shift;   /* tag >> dir_shift is a key's directory entry */
    unsigned off_bits;    /* bits of (offset >> 2) in a slot; the tag takes the rest */
    uint64_t off_mask;    /* (1 << off_bits) - 1 */
    uint64_t cap;         /* slots of every segment */
    uint64_t nsegs;
    uint64_t count;
    Block *blocks; /* sorted by off */
    size_t nblocks, blocks_cap;
    /* the writer: where the next block will likely go (right after the last one), and how
     * much of it has been faulted in ahead of need so far (log.c, fault_ahead_start) */
    uint64_t ahead_from, ahead_done, ahead_end;
    Py_ssize_t active; /* index in blocks[] of the block being appended to, or -1 */
    uint64_t next_seq, floor, max_seq_seen;
    uint64_t durable_seq; /* every record up to this one was made durable by sync() */
    /* during recovery: records newer than durable_seq, applied in sequence order by
     * finish_recovery() only as far as they form a gap-free run (the power-fail rule) */
    struct Pending {
        uint64_t seq, off, alen;
        uint64_t at; /* where it starts in its block's log: off, or its batch's offset */
    } *pending;
    size_t npending, pending_cap;
    /* during recovery: the deletes whose records the scan put in the index (a delete must
     * beat an older put found later in the scan), each removed by finish_recovery() if it
     * is still there then; count includes them */
    struct Deleted {
        uint64_t h, off;
    } *deleted;
    size_t ndeleted, deleted_cap;
    /* during the scan: the buffer a flush of scanned records is put in key-hash order in,
     * before their index entries are made (recovery.c, index_scanned) */
    struct Scanned {
        uint64_t h, off, seq;
        uint32_t alen;
        uint32_t kind : 4;
        uint32_t block : 28; /* its index in blocks[] (no block is added during a flush) */
    } *scanned;
    size_t scanned_cap;
    uint64_t discarded; /* records dropped by the power-fail rule at the last recovery */
    int persist_mode;
    void (*persist_fn)(const void *, size_t);
    /* Flag 's' on an ordinary file: the pool's part files, opened for writing (descriptors
     * owned by Python: Pool in viperdbm/_pmemobj.py), and the buffer a record is staged in
     * before one pwrite puts it there (log.c, stage_begin). */
    struct PartFile {
        uint64_t start, size; /* where the part is in the pool, and its length */
        int fd;
    } *parts;
    size_t nparts;
    uint8_t *stage_buf;
    uint64_t stage_cap, stage_off, stage_len; /* stage_len 0: nothing staged, writes go to the mapping */
    int recovering;
    struct IndexCursor {
        uint64_t d, i; /* a directory entry (the first of its segment's) and a slot there */
    } compact_cursor;
    int compacting; /* between compact_begin() and compact_end(): mutators get RC_NEED_WAIT */
    /* Reclamation: the policy's numbers come from Python at open (set_reclaim_policy; they
     * are defined and explained once, in viperdbm/_space.py); the core only counts writes
     * and dead bytes, and raises reclaim_due when a block became entirely dead or, checked
     * every reclaim_check_mask + 1 writes, a block is worth compacting. */
    int auto_compact;   /* set_reclaim_policy() was called: check the dead space */
    int reclaim_due;    /* the engine's reclaim() is due after this write (it clears this) */
    uint64_t reclaim_check_mask;
    uint64_t compact_min_dead;            /* bytes: never compact for less dead space */
    uint64_t store_dead_num, store_dead_den; /* ... nor before this fraction of all block space is dead */
    uint64_t block_dead_num, block_dead_den; /* a victim has at least this fraction of its bytes dead */
    uint64_t compact_min_tombs; /* deletes in blocks, and more than live records: rewrite the oldest */
    uint64_t jumbo_need; /* bytes of the jumbo block that the last RC_NEED_JUMBO asked for */
    int forked;       /* invalidated in a child process after fork() */
    uint64_t block_cursor_off, block_cursor_pos; /* where compact_block() resumes */
    uint64_t block_cursor_batch_end;             /* ... inside a batch that ends here (0: none) */
    uint64_t compact_prev_active; /* offset of the active block when compact_begin() ran (0: none) */
    int puts_refused; /* the reserve is gone: puts answer RC_NEED_RESERVE (see Space.new_block in viperdbm/_space.py) */
    int io_errno;     /* an msync of this store failed: writes are refused (see core_io_refuse) */
    uint64_t writes; /* mutation counter, for stats */
    /* Live readers (shared.c): the readers file, mapped; the writer publishes into it, a
     * reader follows it. */
    int shared_role;         /* SHARED_NONE, SHARED_WRITER or SHARED_READER */
    uint8_t *shared;         /* the mapping of the readers file (NULL: none) */
    int shared_fd;           /* its descriptor (owned by Python): the slot locks */
    uint64_t reader_slot;    /* a reader's slot */
    uint64_t seen_commit, seen_gen; /* a reader: the commit and table generation it caught up to */
    uint64_t applied_seq;    /* a reader: every record up to this one is applied or superseded */
    int snapshot_depth;      /* a reader inside Database.snapshot(): no catch-up */
    int listing;             /* a list is being made from the index: it must not grow (index_hold) */
    ReaderBlock *rblocks;    /* a reader: the blocks it has read, sorted by off */
    size_t nrblocks, rblocks_cap;
    PyObject *remap;         /* a reader: remap(needed_bytes) maps more of the pool (Python) */
    uint64_t *free_entries;  /* the writer: entries of the readers file free for reuse */
    size_t nfree_entries, free_entries_cap;
    uint64_t shared_ready;   /* the writer: block entries whose pages the file system has given (shared_reserve) */
    PyObject *weakrefs; /* a reader's core is held weakly by the idle catch-up (_readers.py) */
} Core;

/* A slot is the top bits of the key's hash (its tag) above the record's offset >> 2, which
 * takes off_bits bits: as few as the pool's offsets need (set at the core's creation, from
 * the address space reserved for the pool, which no offset reaches), so that the tag is as
 * long as it can be (30 bits under a 64 GiB reservation, at least 24). Where a key's entry
 * lies (its segment, its home slot there) follows from its tag alone, so growing a segment,
 * splitting it and deleting (backward shift) never read keys from the pool, and two keys
 * whose tags differ are never compared. A used slot is never 0: no record is at pool
 * offset 0. */
#define SLOT_OFF_BITS_MAX 40 /* a reservation of 4 TiB */

static inline unsigned slot_tag_bits(const Core *c) { return 64u - c->off_bits; }
static inline uint64_t slot_make(const Core *c, uint64_t h, uint64_t off) {
    return (h & ~c->off_mask) | (off >> 2);
}
static inline uint64_t slot_off(const Core *c, uint64_t s) { return (s & c->off_mask) << 2; }
static inline uint64_t slot_tag(const Core *c, uint64_t s) { return s >> c->off_bits; }
/* the same entry, pointing at a copy of its record at off */
static inline uint64_t slot_moved(const Core *c, uint64_t s, uint64_t off) {
    return (s & ~c->off_mask) | (off >> 2);
}

static inline int core_check_open(Core *c) {
    if (__builtin_expect(c->base != NULL, 1)) return 0;
    return core_error(c->forked ? ERR_FORKED : ERR_CLOSED);
}

/* Get the key bytes of a Python key: bytes, str (UTF-8) or another bytes-like object. */
typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    Py_buffer view;
    int has_view;
} KeyArg;

static inline int keyarg_get(PyObject *o, KeyArg *k, const char *what) {
    k->has_view = 0;
    if (PyBytes_CheckExact(o)) {
        k->p = (const uint8_t *)PyBytes_AS_STRING(o);
        k->n = PyBytes_GET_SIZE(o);
        return 0;
    }
    if (PyUnicode_Check(o)) {
        const char *s = PyUnicode_AsUTF8AndSize(o, &k->n);
        if (s == NULL) return -1;
        k->p = (const uint8_t *)s;
        return 0;
    }
    if (PyObject_CheckBuffer(o)) {
        if (PyObject_GetBuffer(o, &k->view, PyBUF_SIMPLE) < 0) return -1;
        k->p = (const uint8_t *)k->view.buf;
        k->n = k->view.len;
        k->has_view = 1;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s must be bytes or str, not %.100s", what, Py_TYPE(o)->tp_name);
    return -1;
}

static inline void keyarg_release(KeyArg *k) {
    if (k->has_view) PyBuffer_Release(&k->view);
}

static inline const uint8_t *rec_key(Core *c, uint64_t off, Rec *r) {
    const uint8_t *p = c->base + off;
    rec_parse(p, r);
    return p + r->hlen;
}

/* ------------------------------------------------------------------ the index
 * Extendible hashing over segments (index.c says why): the directory's entry for a key is
 * the top dir_bits bits of its tag, and a segment of depth d is the entry of the
 * 2^(dir_bits - d) directory entries that share its prefix, the top d bits of the tags it
 * holds. A segment is a table of any size (a multiple of 8 slots), open addressing with
 * linear probing that wraps at its end; a key's home there is the fraction that the tag's
 * bits below the prefix make of the segment's size. */
typedef struct Segment {
    uint64_t *slots;
    uint64_t cap;       /* slots */
    uint64_t count;     /* entries */
    uint64_t limit;     /* the most entries it takes before it grows (0.77 to 0.83 of cap) */
    uint64_t home_mask; /* (1 << home_bits) - 1 */
    unsigned home_bits; /* the tag's bits below the prefix */
    unsigned depth;     /* the prefix's length in bits */
    uint64_t prefix;
    uint64_t pending; /* index_reserve_many(): inserts ahead that may land here */
} Segment;

static inline Segment *seg_of(const Core *c, uint64_t tag) { return c->dir[tag >> c->dir_shift]; }

static inline uint64_t seg_home(const Segment *g, uint64_t tag) {
    return (uint64_t)(((unsigned __int128)(tag & g->home_mask) * g->cap) >> g->home_bits);
}

/* A place in the index: the slot a lookup found its key in, or the free slot where the key
 * goes (index_insert), and that slot's segment. Valid until the index next grows. */
typedef struct {
    Segment *seg;
    uint64_t *slot;
} IndexRef;

/* The probe of a lookup: 1 (ref is the slot whose record same() says holds the key) or 0
 * (ref is where the key would go). same() is asked only where the tag matches. */
static inline int index_probe(Core *c, uint64_t h, IndexRef *ref, int (*same)(Core *, uint64_t, const void *),
                              const void *key) {
    uint64_t tag = h >> c->off_bits;
    Segment *g = seg_of(c, tag);
    uint64_t *slots = g->slots, cap = g->cap, i = seg_home(g, tag);
    ref->seg = g;
    for (;;) {
        uint64_t s = slots[i];
        if (s == 0 || (slot_tag(c, s) == tag && same(c, slot_off(c, s), key))) {
            ref->slot = &slots[i];
            return s != 0;
        }
        if (++i == cap) i = 0;
    }
}

typedef struct {
    const uint8_t *p;
    uint64_t n;
} KeyBytes;

static inline int record_has_key(Core *c, uint64_t off, const void *key) {
    const KeyBytes *kb = key;
    Rec r;
    const uint8_t *k = rec_key(c, off, &r);
    return r.klen == kb->n && memcmp(k, kb->p, kb->n) == 0;
}

/* Find key: 1 (ref is its slot) or 0 (ref is where it would go). */
static inline int index_lookup(Core *c, const uint8_t *key, uint64_t klen, uint64_t h, IndexRef *ref) {
    KeyBytes kb = {key, klen};
    return index_probe(c, h, ref, record_has_key, &kb);
}

/* Find key for a read: the pool offset of its record, or 0. */
static inline uint64_t index_find(Core *c, const uint8_t *key, uint64_t klen, uint64_t h) {
    IndexRef ref;
    return index_lookup(c, key, klen, h, &ref) ? slot_off(c, *ref.slot) : 0;
}

/* Put slot s where a lookup that missed said (after index_reserve made room for it). */
static inline void index_insert(Core *c, const IndexRef *ref, uint64_t s) {
    *ref->slot = s;
    ref->seg->count++;
    c->count++;
}

/* Bring the cache line of key hash h's home slot in (a scan's lookahead). */
static inline void index_prefetch(const Core *c, uint64_t h) {
    uint64_t tag = h >> c->off_bits;
    const Segment *g = seg_of(c, tag);
    __builtin_prefetch(&g->slots[seg_home(g, tag)]);
}

typedef struct IndexCursor IndexCursor;

/* ------------------------------------------------------------------ index.c */
/* the index at the core's creation, sized for about expected keys */
int index_alloc(Core *c, uint64_t expected);
void index_free(Core *c);
/* make room for one more key of hash h (before anything is written: the insert that
 * follows cannot fail) */
int index_reserve(Core *c, uint64_t h);
/* ... for n more keys at once (a batch, a chunk of recovery): their hashes are the uint64_t
 * at hashes, hashes + stride, ... (bytes) */
int index_reserve_many(Core *c, const void *hashes, size_t stride, size_t n);
/* an empty index: sized again for about expected keys (a hint) */
int index_presize(Core *c, uint64_t expected);
/* every entry again, for pool offsets up to 2^(off_bits + 2): a reader whose pool grew past
 * what its index was made for (-1 with an exception set: nothing changed) */
int index_widen(Core *c, unsigned off_bits);
/* a pool of mapped bytes outgrew the offsets the index was made for (its reservation): the
 * index made again for twice as much (-1 with an exception set: nothing changed) */
int core_fit_offsets(Core *c, uint64_t mapped);
/* give back what the index holds beyond what its keys need (after recovery; without the
 * memory to do it the index stays as it is) */
void index_fit(Core *c);
void index_remove(Core *c, const IndexRef *ref);
/* walks: the first used slot at or after cur (cur moved there), or NULL at the end; a
 * caller moves on with cur->i++ */
uint64_t *index_walk(Core *c, IndexCursor *cur);
IndexRef index_ref_at(Core *c, const IndexCursor *cur);
IndexCursor index_cursor_of(Core *c, const IndexRef *ref);

/* ------------------------------------------------------------------ log.c */
Py_ssize_t block_find(Core *c, uint64_t off);
/* a block was added: fault in the space after it, where the next block will likely go */
void fault_ahead_start(Core *c, const Block *b);
Py_ssize_t block_insert(Core *c, const Block *nb);
int account_dead(Core *c, uint64_t off, uint64_t len);
int check_block_bounds(Core *c, uint64_t off, uint64_t usable);
int header_read(const uint8_t *p, VdBlockHeader *h);
int header_fits(const VdBlockHeader *h, uint64_t usable, unsigned type);
int block_from_header(Core *c, uint64_t off, uint64_t usable, unsigned type, Block *b);
int block_constructor(void *pop, void *ptr, void *arg);
int persist_range(Core *c, uint64_t off, uint64_t len);
int core_io_refuse(Core *c, int written);
void write_record(Core *c, uint64_t off, unsigned kind, uint64_t seq, const uint8_t *key, uint64_t klen,
                  const uint8_t *val, uint64_t vlen);
int append_record(Core *c, unsigned kind, const uint8_t *key, uint64_t klen, const uint8_t *val, uint64_t vlen,
                  uint64_t *out_off);
Py_ssize_t write_jumbo(Core *c, unsigned kind, uint64_t joff, uint64_t jsize, const uint8_t *key, uint64_t klen,
                       const uint8_t *val, uint64_t vlen, uint64_t *out_off);
int do_put(Core *c, const uint8_t *key, uint64_t klen, const uint8_t *val, uint64_t vlen, uint64_t jumbo_off,
           uint64_t jumbo_size);
uint64_t place_record(Core *c, Block *b, uint64_t len, uint64_t *pad_at, uint64_t *pad_len);
void write_pad(Core *c, uint64_t at, uint64_t len);
void stage_begin(Core *c, uint64_t off, uint64_t len);
void stage_commit(Core *c);
PyObject *Core_set_part_files(Core *c, PyObject *list);
/* Where the bytes for pool offset off are written: the staged range's buffer, or the mapping. */
static inline uint8_t *pool_dest(Core *c, uint64_t off) {
    if (c->stage_len && off - c->stage_off < c->stage_len) return c->stage_buf + (off - c->stage_off);
    return c->base + off;
}

/* ------------------------------------------------------------------ batch.c */
PyObject *Core_put_batch(Core *c, PyObject *args);
PyObject *Core_batch_jumbo_size(PyObject *mod, PyObject *list);

/* ------------------------------------------------------------------ compaction.c */
Py_ssize_t compaction_victim(Core *c, int urgent);

/* The end of every done write (but the jumbo ones, which count themselves): raise
 * reclaim_due when the write made a block entirely dead, or at a check of the dead space
 * that found a block worth compacting. The check walks the blocks: hence only every
 * reclaim_check_mask + 1 writes. */
static inline int after_write(Core *c, int freeable) {
    if (freeable)
        c->reclaim_due = 1;
    else if ((++c->writes & c->reclaim_check_mask) == 0 && c->auto_compact && compaction_victim(c, 0) >= 0)
        c->reclaim_due = 1;
    return RC_DONE;
}

/* ------------------------------------------------------------------ shared.c (live readers) */
int reader_catch_up(Core *c);
/* A reader's every operation starts here: one load when the writer published nothing new. */
static inline int reader_sync(Core *c) {
    if (__builtin_expect(c->shared_role != SHARED_READER || c->snapshot_depth, 1)) return 0;
    const VdReadersHeader *h = (const VdReadersHeader *)c->shared;
    if (__atomic_load_n(&h->commit, __ATOMIC_ACQUIRE) == c->seen_commit) return 0;
    return reader_catch_up(c);
}
/* The index must not move while a list is made from it: an allocation there may run
 * Python code (a collection's finalizers), and that code or another thread (the idle
 * catch-up, the user's) may then use the store. Held, a reader does not catch up (until
 * its next operation) and the index does not grow (a write that needs it to fails). */
static inline void index_hold(Core *c, int on) {
    if (on) {
        c->snapshot_depth++;
        c->listing++;
    } else {
        if (c->snapshot_depth > 0) c->snapshot_depth--;
        if (c->listing > 0) c->listing--;
    }
}
void shared_add(Core *c, Block *b);
void shared_publish_end(Core *c, const Block *b);
void shared_set_active(Core *c);
void shared_set_mapped(Core *c);
void shared_set_floor(Core *c);
void shared_clear(Core *c, Block *b);
void shared_detach(Core *c);
PyObject *Core_attach_writer(Core *c, PyObject *args);
PyObject *Core_readers_room(Core *c, PyObject *unused);
PyObject *Core_attach_reader(Core *c, PyObject *args);
PyObject *Core_set_base(Core *c, PyObject *args);
PyObject *Core_retire_blocks(Core *c, PyObject *arg);
PyObject *Core_readers_horizon(Core *c, PyObject *arg);
PyObject *Core_detach_shared(Core *c, PyObject *unused);
PyObject *Core_hold_snapshot(Core *c, PyObject *arg);
PyObject *Core_catch_up(Core *c, PyObject *unused);
PyObject *mod_readers_claim(PyObject *mod, PyObject *arg);
PyObject *mod_readers_release(PyObject *mod, PyObject *args);
PyObject *mod_readers_header(PyObject *mod, PyObject *arg);
PyObject *mod_readers_live(PyObject *mod, PyObject *arg);
PyObject *mod_readers_barred_by(PyObject *mod, PyObject *arg);
PyObject *mod_readers_bar(PyObject *mod, PyObject *arg);
PyObject *mod_readers_unbar(PyObject *mod, PyObject *arg);

/* ------------------------------------------------------------------ core_type.c */
extern PyTypeObject CoreType;
int core_type_init(PyObject *module);
int list_append_new(PyObject *list, PyObject *item);
int core_put_obj(Core *c, PyObject *key, PyObject *value);
/* keys(), values(), items(): lists made in one call, in pool order (core_type.c) */
enum { LIST_ITEMS = 0, LIST_VALUES = 1, LIST_KEYS = 2 };
PyObject *core_listing(Core *c, int what);
int core_delete_obj(Core *c, PyObject *key, PyObject *expected);
int64_t find_arg(Core *c, PyObject *key);
PyObject *value_of(Core *c, uint64_t off);
Py_ssize_t Core_len(Core *c);
PyObject *Core_get(Core *c, PyObject *const *args, Py_ssize_t nargs);
PyObject *Core_getitem(Core *c, PyObject *key);
PyObject *Core_keys(Core *c, PyObject *unused);
PyObject *Core_firstkey(Core *c, PyObject *unused);
PyObject *Core_nextkey(Core *c, PyObject *key);
PyObject *Core_jumbo_size(PyObject *mod, PyObject *args);

/* The Core methods that live with their concern, listed in core_type.c's table. */
PyObject *Core_block_init(Core *c, PyObject *args);
PyObject *Core_block_header(Core *c, PyObject *args);
PyObject *Core_add_block(Core *c, PyObject *args);
PyObject *Core_freeable(Core *c, PyObject *unused);
PyObject *Core_drop_block(Core *c, PyObject *arg);
PyObject *Core_scan_block(Core *c, PyObject *args);
PyObject *Core_scan_blocks(Core *c, PyObject *arg);
PyObject *Core_finish_recovery(Core *c, PyObject *arg);
PyObject *Core_damage(Core *c, PyObject *unused);
PyObject *Core_compact_begin(Core *c, PyObject *unused);
PyObject *Core_compact_step(Core *c, PyObject *args);
PyObject *Core_compact_end(Core *c, PyObject *args);
PyObject *Core_compaction_victim(Core *c, PyObject *args);
PyObject *Core_compact_block(Core *c, PyObject *arg);
PyObject *Core_old_blocks(Core *c, PyObject *unused);

/* ------------------------------------------------------------------ map_type.c */
int map_type_init(PyObject *module);

/* ------------------------------------------------------------------ format.c */
/* The module's FORMAT: the structures and constants of vipercore.h, for Python. */
PyObject *format_export(void);

/* ------------------------------------------------------------------ module functions */
PyObject *mod_crc32c(PyObject *mod, PyObject *args);
PyObject *mod_map_parts(PyObject *mod, PyObject *args);
PyObject *mod_map_parts_at(PyObject *mod, PyObject *args);
PyObject *mod_peek(PyObject *mod, PyObject *args);
PyObject *mod_unmap_parts(PyObject *mod, PyObject *args);
PyObject *mod_sigblock(PyObject *mod, PyObject *unused);
PyObject *mod_sigunblock(PyObject *mod, PyObject *arg);
PyObject *mod_sigpoll(PyObject *mod, PyObject *arg);

#pragma GCC visibility pop

#endif
