/*
 * viperdbm._vipercore: the hot paths of viperdbm in C.
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
 * The record and block formats are described in docs/format.md.
 *
 * Concurrency: every method runs with the GIL held and never releases it, so each call is
 * atomic with respect to other Python threads. Slow paths (allocating a block) are done by
 * Python under its own lock, signalled by the NEED_* return codes below.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vipercore.h"

/* ------------------------------------------------------------------ return codes */
#define RC_OK 0
#define RC_NEED_BLOCK 1 /* the active block is full (or there is none): add a block */
#define RC_NEED_JUMBO 2 /* the record is too large for a standard block */
#define OS_PAGE 4096u /* msync and mmap granularity (a VPage is several of them) */
#define RC_FREEABLE 3   /* done; some block became entirely dead: free it */
#define RC_BUSY 4       /* reorganize() is running: wait for it (take the store lock), retry */
#define RC_COMPACT 5    /* done; dead space passed the threshold: compact a block or two */
#define RC_NO_RESERVE 6 /* a put, while the space kept for deletes is gone: take it back first */

#define PERSIST_NONE 0  /* ordinary file or tmpfs: the page cache survives kill -9 */
#define PERSIST_MSYNC 1 /* flag 's': msync each record before acknowledging it */
#define PERSIST_FUNC 2  /* real PMem (DAX): pmem_persist each record, as Viper does */

static PyObject *ClosedError; /* set by set_error_classes() */
static PyObject *CorruptedError;
static PyObject *StoreError; /* viperdbm.error: for broken internal invariants */

/* An internal invariant failed: a viperdbm.error, never a bare ValueError. */
static void internal_error(const char *what) {
    PyErr_Format(StoreError ? StoreError : PyExc_RuntimeError, "internal inconsistency of the open store: %s", what);
}

/* ------------------------------------------------------------------ crash points
 * A test hook: crash_point(name) marks each internal step after which a crash leaves a
 * different state on the media (a header written, a record's body before its CRC, an
 * index update after a media write, ...), so that a test can kill the process at each of
 * them in turn instead of at random instants. Configured once, at import:
 *   VIPERDBM_CRASH_AT=N    the N-th crash point (counted from 1) sends SIGKILL to the process;
 *   VIPERDBM_CRASH_LOG=path  every crash point appends "<n> <name>" to path.
 * Unset (the normal case) a crash point costs one predictable branch on a static int. */
static int crash_armed;
static unsigned long long crash_at, crash_count;
static int crash_log_fd = -1;

static void crash_point_hit(const char *name) __attribute__((noinline, cold));
static void crash_point_hit(const char *name) {
    /* atomic: a block constructor runs inside pmemobj_alloc, without the GIL */
    unsigned long long n = __atomic_add_fetch(&crash_count, 1, __ATOMIC_SEQ_CST);
    if (crash_log_fd >= 0) {
        char line[160];
        int len = snprintf(line, sizeof line, "%llu %s\n", n, name);
        if (len >= (int)sizeof line) {
            len = (int)sizeof line - 1;
            line[len - 1] = '\n';
        }
        if (len > 0 && write(crash_log_fd, line, (size_t)len) < 0) {
            /* a log that cannot be written only makes the count short: the test sees that */
        }
    }
    if (n == crash_at) {
        kill(getpid(), SIGKILL);
        for (;;) pause(); /* SIGKILL cannot be caught: never returns */
    }
}

static inline void crash_point(const char *name) {
    if (__builtin_expect(crash_armed, 0)) crash_point_hit(name);
}

static void crash_points_init(void) {
    const char *at = getenv("VIPERDBM_CRASH_AT"), *logpath = getenv("VIPERDBM_CRASH_LOG");
    if (at && *at) crash_at = strtoull(at, NULL, 10);
    if (logpath && *logpath) crash_log_fd = open(logpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    crash_armed = crash_at != 0 || crash_log_fd >= 0;
}

/* ------------------------------------------------------------------ crc32c */
static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t n) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xFF] ^ crc_table[6][(w >> 8) & 0xFF] ^
              crc_table[5][(w >> 16) & 0xFF] ^ crc_table[4][(w >> 24) & 0xFF] ^
              crc_table[3][(w >> 32) & 0xFF] ^ crc_table[2][(w >> 40) & 0xFF] ^
              crc_table[1][(w >> 48) & 0xFF] ^ crc_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

static int have_hw_crc = 0;

static uint32_t crc32c_update(uint32_t crc, const void *data, size_t n) {
#if defined(__x86_64__)
    if (have_hw_crc) return crc_hw(crc, (const uint8_t *)data, n);
#endif
    return crc_sw(crc, (const uint8_t *)data, n);
}

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
static uint64_t key_hash(const uint8_t *p, size_t n) {
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

/* ------------------------------------------------------------------ media helpers */
static inline uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

static inline uint64_t header_len_for(uint64_t klen) {
    return klen > VD_KLEN_SHORT_MAX ? VD_RECORD_HEADER_SIZE + 4 : VD_RECORD_HEADER_SIZE;
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
    uint64_t meta = rd64(r + 8);
    out->vlen = rd32(r + 4);
    out->seq = meta & VD_SEQ_MASK;
    out->kind = (unsigned)((meta >> VD_KIND_SHIFT) & 0xF);
    uint64_t kshort = meta >> VD_KLEN_SHIFT;
    if (kshort == VD_KLEN_EXTENDED) {
        out->klen = rd32(r + 16);
        out->hlen = VD_RECORD_HEADER_SIZE + 4;
    } else {
        out->klen = kshort;
        out->hlen = VD_RECORD_HEADER_SIZE;
    }
    out->total = out->hlen + out->klen + out->vlen;
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
    unsigned kind;
    int old; /* being compacted away by reorganize() */
} Block;

typedef struct {
    PyObject_HEAD uint8_t *base; /* NULL once closed */
    uint64_t mapped;             /* bytes of the pool that are mapped: bound for every offset */
    /* index: open addressing, linear probing, slot = tag:24 | (offset >> 2):40, 0 = empty */
    uint64_t *slots;
    uint64_t cap, count, tombs_in_index;
    Block *blocks; /* sorted by off */
    size_t nblocks, blocks_cap;
    Py_ssize_t active; /* index in blocks[] of the block being appended to, or -1 */
    uint64_t next_seq, floor, max_seq_seen;
    uint64_t durable_seq; /* every record up to this one was made durable by sync() */
    /* during recovery: records newer than durable_seq, applied in sequence order by
     * finish_recovery() only as far as they form a gap-free run (the power-fail rule) */
    struct Pending {
        uint64_t seq, off, alen;
    } *pending;
    size_t npending, pending_cap;
    uint64_t discarded; /* records dropped by the power-fail rule at the last recovery */
    int persist_mode;
    void (*persist_fn)(const void *, size_t);
    int recovering;
    uint64_t compact_cursor;
    int compacting; /* between compact_begin() and compact_end(): mutators get RC_BUSY */
    int auto_compact; /* signal RC_COMPACT when dead space passes the threshold */
    int forked;       /* invalidated in a child process after fork() */
    uint64_t block_cursor_off, block_cursor_pos; /* where compact_block() resumes */
    uint64_t compact_prev_active; /* offset of the active block when compact_begin() ran (0: none) */
    int puts_refused; /* the reserve is gone: puts answer RC_NO_RESERVE (see Engine._new_block) */
    int io_errno;     /* an msync of this store failed: writes are refused (see core_io_refuse) */
    uint64_t writes; /* mutation counter, for stats */
} Core;

#define SLOT_OFF_BITS 40
#define SLOT_OFF_MASK ((UINT64_C(1) << SLOT_OFF_BITS) - 1)
/* The tag is the hash's top 24 bits, and a key's home slot is the top log2(cap) bits: up to
 * 2^24 slots the home of an entry follows from its tag, so growing the table and deleting
 * (backward shift) never read keys from the pool. A used slot is never 0: no record is at
 * pool offset 0. */
#define SLOT_TAG(h) ((h) >> 40)

static inline unsigned log2u64(uint64_t v) { return 63u - (unsigned)__builtin_clzll(v); }

static inline uint64_t slot_make(uint64_t h, uint64_t off) {
    return ((uint64_t)SLOT_TAG(h) << SLOT_OFF_BITS) | (off >> 2);
}
static inline uint64_t slot_off(uint64_t s) { return (s & SLOT_OFF_MASK) << 2; }
static inline uint64_t slot_tag(uint64_t s) { return s >> SLOT_OFF_BITS; }

static int core_check_open(Core *c) {
    if (c->base == NULL) {
        PyErr_SetString(ClosedError ? ClosedError : PyExc_ValueError,
                        c->forked ? "the store was opened before fork(): this process must open it again"
                                  : "DBM object has already been closed");
        return -1;
    }
    return 0;
}

/* Get the key bytes of a Python key: bytes, str (UTF-8) or another bytes-like object. */
typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    Py_buffer view;
    int has_view;
} KeyArg;

static int keyarg_get(PyObject *o, KeyArg *k, const char *what) {
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

static void keyarg_release(KeyArg *k) {
    if (k->has_view) PyBuffer_Release(&k->view);
}

/* Append item to list, taking over the reference to item (which may be NULL after a
 * failed constructor): 0, or -1 with an exception set. */
static int list_append_new(PyObject *list, PyObject *item) {
    int rc = item ? PyList_Append(list, item) : -1;
    Py_XDECREF(item);
    return rc;
}

/* ------------------------------------------------------------------ blocks registry */
static Py_ssize_t block_find(Core *c, uint64_t off) {
    /* the block containing pool offset off, or -1 */
    size_t lo = 0, hi = c->nblocks;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->blocks[mid].off <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0) return -1;
    Block *b = &c->blocks[lo - 1];
    if (off < b->off + b->size) return (Py_ssize_t)(lo - 1);
    return -1;
}

static Py_ssize_t block_insert(Core *c, const Block *nb) {
    if (c->nblocks == c->blocks_cap) {
        size_t ncap = c->blocks_cap ? c->blocks_cap * 2 : 64;
        Block *n = PyMem_Realloc(c->blocks, ncap * sizeof(Block));
        if (!n) {
            PyErr_NoMemory();
            return -1;
        }
        c->blocks = n;
        c->blocks_cap = ncap;
    }
    size_t i = 0;
    while (i < c->nblocks && c->blocks[i].off < nb->off) i++;
    if (i < c->nblocks && c->blocks[i].off == nb->off) {
        internal_error("block registered twice");
        return -1;
    }
    /* blocks must not overlap */
    if ((i > 0 && c->blocks[i - 1].off + c->blocks[i - 1].size > nb->off) ||
        (i < c->nblocks && nb->off + nb->size > c->blocks[i].off)) {
        PyErr_SetString(CorruptedError ? CorruptedError : PyExc_ValueError, "overlapping blocks in the pool");
        return -1;
    }
    memmove(&c->blocks[i + 1], &c->blocks[i], (c->nblocks - i) * sizeof(Block));
    c->blocks[i] = *nb;
    c->nblocks++;
    if (c->active >= (Py_ssize_t)i) c->active++;
    return (Py_ssize_t)i;
}

/* account a record (at pool offset off, aligned length len) as dead in its block */
static int account_dead(Core *c, uint64_t off, uint64_t len) {
    Py_ssize_t bi = block_find(c, off);
    if (bi < 0) return 0;
    Block *b = &c->blocks[bi];
    if (b->live) b->live--;
    b->live_bytes = b->live_bytes >= len ? b->live_bytes - len : 0;
    b->dead_bytes += len;
    return b->live == 0 && b->tombstones == 0 && bi != c->active;
}

/* ------------------------------------------------------------------ index */
/* Tables of 2 MiB and more are mapped on their own and offered transparent huge pages: a
 * lookup touches one random slot, and with 4 KiB pages a table of millions of keys misses
 * the TLB on nearly every one. Smaller tables come from the Python allocator. */
#define INDEX_MMAP_BYTES (2u << 20)

static uint64_t *slots_alloc(uint64_t cap) {
    size_t bytes = (size_t)cap * sizeof(uint64_t);
    if (bytes < INDEX_MMAP_BYTES) return PyMem_Calloc(cap, sizeof(uint64_t));
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: ignored where THP is off */
#endif
    return p; /* anonymous memory is zero */
}

static void slots_free(uint64_t *slots, uint64_t cap) {
    if (!slots) return;
    size_t bytes = (size_t)cap * sizeof(uint64_t);
    if (bytes < INDEX_MMAP_BYTES)
        PyMem_Free(slots);
    else
        munmap(slots, bytes);
}

static int index_alloc(Core *c, uint64_t cap) {
    uint64_t *s = slots_alloc(cap);
    if (!s) {
        PyErr_NoMemory();
        return -1;
    }
    c->slots = s;
    c->cap = cap;
    return 0;
}

static const uint8_t *rec_key(Core *c, uint64_t off, Rec *r) {
    const uint8_t *p = c->base + off;
    rec_parse(p, r);
    return p + r->hlen;
}

/* Find key; returns slot index if found, else -(insert position) - 1. */
static int64_t index_lookup(Core *c, const uint8_t *key, uint64_t klen, uint64_t h) {
    uint64_t mask = c->cap - 1, i = h >> (64 - log2u64(c->cap)), tag = SLOT_TAG(h);
    for (;;) {
        uint64_t s = c->slots[i];
        if (s == 0) return -(int64_t)i - 1;
        if (slot_tag(s) == tag) {
            Rec r;
            const uint8_t *k = rec_key(c, slot_off(s), &r);
            if (r.klen == klen && memcmp(k, key, klen) == 0) return (int64_t)i;
        }
        i = (i + 1) & mask;
    }
}

static uint64_t hash_of_slot(Core *c, uint64_t s) {
    Rec r;
    const uint8_t *k = rec_key(c, slot_off(s), &r);
    return key_hash(k, r.klen);
}

/* the home slot of an entry in a table of cap slots */
static inline uint64_t home_of(Core *c, uint64_t s, uint64_t cap) {
    unsigned bits = log2u64(cap);
    if (bits <= 24) return slot_tag(s) >> (24 - bits);
    return hash_of_slot(c, s) >> (64 - bits);
}

static int index_resize(Core *c, uint64_t ncap) {
    uint64_t *old = c->slots, ocap = c->cap;
    if (index_alloc(c, ncap) < 0) {
        c->slots = old;
        c->cap = ocap;
        return -1;
    }
    uint64_t mask = ncap - 1;
    for (uint64_t i = 0; i < ocap; i++) {
        uint64_t s = old[i];
        if (!s) continue;
        uint64_t j = home_of(c, s, ncap);
        while (c->slots[j]) j = (j + 1) & mask;
        c->slots[j] = s;
    }
    slots_free(old, ocap);
    return 0;
}

/* make room for one more entry before anything is written */
static int index_reserve(Core *c) {
    if ((c->count + 1) * 4 > c->cap * 3) return index_resize(c, c->cap * 2);
    return 0;
}

static void index_remove_at(Core *c, uint64_t i) {
    /* backward-shift deletion keeps linear probing correct without tombstones */
    uint64_t mask = c->cap - 1, j = i;
    c->slots[i] = 0;
    for (;;) {
        j = (j + 1) & mask;
        uint64_t s = c->slots[j];
        if (!s) break;
        uint64_t home = home_of(c, s, c->cap);
        /* move s into the hole at i if its home is not in the cyclic range (i, j] */
        int in_range = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!in_range) {
            c->slots[i] = s;
            c->slots[j] = 0;
            i = j;
        }
    }
}

/* ------------------------------------------------------------------ writing records */
/* -1 if the msync failed: its errno is kept in c->io_errno, and the mutator that called this
 * raises once its record is complete (the record is in the page cache and readable, but not
 * known to be durable), and every later write is refused: after a failed msync the kernel
 * may have dropped the dirty pages, so a later msync that succeeds proves nothing. */
static int persist_range(Core *c, uint64_t off, uint64_t len) {
    if (c->persist_mode == PERSIST_FUNC && c->persist_fn) {
        c->persist_fn(c->base + off, (size_t)len);
    } else if (c->persist_mode == PERSIST_MSYNC) {
        uint64_t start = off & ~(uint64_t)(OS_PAGE - 1);
        uint64_t stop = align_up(off + len, OS_PAGE);
        if (msync(c->base + start, (size_t)(stop - start), MS_SYNC) != 0) {
            if (!c->io_errno) c->io_errno = errno ? errno : EIO;
            return -1;
        }
    }
    return 0;
}

#define IO_ERROR_TEXT                                                                                 \
    "the disk reported an I/O error while writing the store; nothing written since the last "        \
    "successful sync() is known to be durable; close the store, check the disk, and reopen"

/* Raise the viperdbm.error (errno set) for c->io_errno: -1. written: the write that saw the
 * failure is complete in the open store (readable) but not known to be durable. */
static int core_io_refuse(Core *c, int written) {
    const char *text = written ? "written but not known to be durable: " IO_ERROR_TEXT
                               : "the store refuses writes: " IO_ERROR_TEXT;
    PyObject *cls = StoreError ? StoreError : PyExc_OSError;
    PyObject *args = Py_BuildValue("(s)", text);
    PyObject *kw = StoreError ? Py_BuildValue("{s:i}", "errno", c->io_errno) : NULL;
    if (args && (kw || !StoreError)) {
        PyObject *exc = PyObject_Call(cls, args, kw);
        if (exc) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
    }
    Py_XDECREF(args);
    Py_XDECREF(kw);
    return -1;
}

/* Write one record at pool offset off. The CRC word goes last: until it is stored the
 * header does not verify, so a crash mid-copy leaves a record that recovery ignores. */
static void write_record(Core *c, uint64_t off, unsigned kind, uint64_t seq, const uint8_t *key,
                         uint64_t klen, const uint8_t *val, uint64_t vlen) {
    uint8_t *r = c->base + off;
    uint64_t hlen = header_len_for(klen);
    uint64_t kfield = klen > VD_KLEN_SHORT_MAX ? VD_KLEN_EXTENDED : klen;
    wr32(r + 4, (uint32_t)vlen);
    wr64(r + 8, (seq & VD_SEQ_MASK) | ((uint64_t)kind << VD_KIND_SHIFT) | (kfield << VD_KLEN_SHIFT));
    if (hlen > VD_RECORD_HEADER_SIZE) wr32(r + 16, (uint32_t)klen);
    if (klen) memcpy(r + hlen, key, klen);
    if (vlen && val)
        memcpy(r + hlen + klen, val, vlen);
    else if (vlen)
        memset(r + hlen + klen, 0, vlen); /* a pad record */
    uint32_t crc = crc32c_update(0xFFFFFFFFu, r + 4, hlen - 4 + klen + vlen) ^ 0xFFFFFFFFu;
    crash_point("record body written, CRC not yet");
    __atomic_store_n((uint32_t *)r, crc, __ATOMIC_RELEASE);
    crash_point("record written");
}

/* Where in the active block a record of len bytes goes (padding to the next page when it
 * does not fit in the rest of this one); 0 if the block has no room. */
static uint64_t place_record(Core *c, Block *b, uint64_t len, uint64_t *pad_at, uint64_t *pad_len) {
    uint64_t pos = b->end, block_end = b->off + b->size;
    *pad_len = 0;
    uint64_t in_page = pos % VD_PAGE_SIZE, room = VD_PAGE_SIZE - in_page;
    if (in_page != 0 && len > room) {
        *pad_at = pos;
        *pad_len = room;
        pos += room;
    }
    if (pos + len > block_end) return 0;
    (void)c;
    return pos;
}

/* A pad carries the sequence number of the record that follows it: not unique, but at least
 * the block's birth, so that a pad a previous life of the space left is not taken for one. */
static void write_pad(Core *c, uint64_t at, uint64_t len) {
    if (len < VD_RECORD_HEADER_SIZE) return; /* recovery skips a page tail shorter than a header */
    write_record(c, at, VD_KIND_PAD, c->next_seq, NULL, 0, NULL, len - VD_RECORD_HEADER_SIZE);
}

/* Append a record to the active block and point the index at it. */
static int append_record(Core *c, unsigned kind, const uint8_t *key, uint64_t klen, const uint8_t *val,
                         uint64_t vlen, uint64_t *out_off) {
    uint64_t len = record_len_for(klen, vlen);
    if (len > VD_INLINE_MAX) return RC_NEED_JUMBO;
    if (c->active < 0) return RC_NEED_BLOCK;
    Block *b = &c->blocks[c->active];
    uint64_t pad_at = 0, pad_len = 0;
    uint64_t alen = align_up(len, VD_RECORD_ALIGN);
    uint64_t pos = place_record(c, b, alen, &pad_at, &pad_len);
    if (pos == 0) return RC_NEED_BLOCK;
    if (pad_len) write_pad(c, pad_at, pad_len);
    if (!b->seq_min) b->seq_min = c->next_seq;
    write_record(c, pos, kind, c->next_seq++, key, klen, val, vlen);
    persist_range(c, pad_len ? pad_at : pos, (pos - (pad_len ? pad_at : pos)) + len);
    b->end = pos + alen;
    b->seq_max = c->next_seq - 1;
    *out_off = pos;
    return RC_OK;
}


#define COMPACT_MIN_DEAD (8u << 20) /* never compact for less dead space than two blocks */

/* The standard block (not the active one) with the most dead bytes, if at least half of it
 * is dead, when dead space is over two thirds of all block space (the store at most three
 * times its live data) and at least COMPACT_MIN_DEAD; -1 otherwise. Compacting earlier made
 * a workload that deletes half the keys pay for copying the other half, at every trigger. */
static Py_ssize_t compaction_victim(Core *c, int urgent) {
    uint64_t dead = 0, total = 0, best_dead = 0;
    Py_ssize_t best = -1;
    for (size_t i = 0; i < c->nblocks; i++) {
        Block *b = &c->blocks[i];
        total += b->size;
        dead += b->dead_bytes;
        if ((Py_ssize_t)i == c->active || b->kind != VD_BLOCK_KIND_STANDARD || b->old) continue;
        if (!b->live && !b->tombstones) continue; /* already empty: waiting to be freed */
        if (b->dead_bytes * 2 < b->size) continue; /* copying would cost more than it frees */
        if (b->dead_bytes > best_dead) {
            best_dead = b->dead_bytes;
            best = (Py_ssize_t)i;
        }
    }
    /* urgent (a full disk): any block at least half dead is worth copying out */
    if (!urgent && (dead < COMPACT_MIN_DEAD || dead * 3 < total * 2)) return -1;
    return best;
}

static inline int after_write(Core *c, int freeable) {
    if (freeable) return RC_FREEABLE;
    if ((++c->writes & 4095) == 0 && c->auto_compact && compaction_victim(c, 0) >= 0) return RC_COMPACT;
    return RC_OK;
}

/* ------------------------------------------------------------------ Core methods */
static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"base", "mapped", "capacity_hint", NULL};
    unsigned long long base = 0, mapped = 0, hint = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KK|K", kwlist, &base, &mapped, &hint)) return NULL;
    if (base == 0 || (base % OS_PAGE) != 0) {
        PyErr_SetString(PyExc_ValueError, "pool base must be a non-null page-aligned address");
        return NULL;
    }
    Core *c = (Core *)type->tp_alloc(type, 0);
    if (!c) return NULL;
    c->base = (uint8_t *)(uintptr_t)base;
    c->mapped = mapped;
    c->active = -1;
    c->next_seq = 1;
    uint64_t cap = 1024;
    while (cap * 3 < hint * 4 + 4) cap *= 2;
    if (index_alloc(c, cap) < 0) {
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static void Core_dealloc(Core *c) {
    PyMem_Free(c->pending);
    slots_free(c->slots, c->cap);
    PyMem_Free(c->blocks);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *Core_invalidate(Core *c, PyObject *args) {
    int forked = 0;
    if (!PyArg_ParseTuple(args, "|p", &forked)) return NULL;
    c->base = NULL; /* after this no method touches the mapping */
    c->forked = forked;
    Py_RETURN_NONE;
}

static PyObject *Core_set_mapped(Core *c, PyObject *arg) {
    unsigned long long m = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (m < c->mapped) {
        internal_error("the mapped size of a pool never shrinks");
        return NULL;
    }
    c->mapped = m;
    Py_RETURN_NONE;
}

static PyObject *Core_set_persist(Core *c, PyObject *args) {
    int mode;
    unsigned long long fn = 0;
    if (!PyArg_ParseTuple(args, "i|K", &mode, &fn)) return NULL;
    if (mode < PERSIST_NONE || mode > PERSIST_FUNC || (mode == PERSIST_FUNC && fn == 0)) {
        PyErr_SetString(PyExc_ValueError, "bad persist mode");
        return NULL;
    }
    c->persist_mode = mode;
    c->persist_fn = (void (*)(const void *, size_t))(uintptr_t)fn;
    Py_RETURN_NONE;
}

static PyObject *Core_set_floor(Core *c, PyObject *arg) {
    unsigned long long f = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    c->floor = f;
    if (c->next_seq < f) c->next_seq = f;
    Py_RETURN_NONE;
}

static PyObject *Core_set_durable(Core *c, PyObject *arg) {
    unsigned long long d = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    c->durable_seq = d;
    Py_RETURN_NONE;
}

static int check_block_bounds(Core *c, uint64_t off, uint64_t usable) {
    if (off == 0 || off % 8 || usable < VD_BLOCK_HEADER_SIZE + VD_RECORD_HEADER_SIZE || off > c->mapped ||
        usable > c->mapped - off) {
        PyErr_Format(CorruptedError, "block at offset %llu (size %llu) lies outside the pool (%llu bytes)",
                     (unsigned long long)off, (unsigned long long)usable, (unsigned long long)c->mapped);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ block headers */
typedef struct {
    uint32_t version, kind;
    uint64_t size, ls_rel, birth;
} Header;

/* 1 and *h filled if the bytes at p are a block header that verifies (magic and CRC), else 0.
 * The fields may still be impossible for the object: the callers check them. */
static int header_read(const uint8_t *p, Header *h) {
    uint32_t want = crc32c_update(0xFFFFFFFFu, p + 8, VD_BLOCK_HEADER_SIZE - 8) ^ 0xFFFFFFFFu;
    if (rd32(p) != VD_BLOCK_MAGIC || rd32(p + 4) != want) return 0;
    h->version = rd32(p + 8);
    h->kind = rd32(p + 12);
    h->size = rd64(p + 16);
    h->ls_rel = rd64(p + 24);
    h->birth = rd64(p + VD_BLOCK_BIRTH_OFFSET);
    return 1;
}

/* Is a verified header possible for an object of usable bytes (of the expected kind, if
 * kind is not 0)? */
static int header_fits(const Header *h, uint64_t usable, unsigned kind) {
    return (h->kind == VD_BLOCK_KIND_STANDARD || h->kind == VD_BLOCK_KIND_JUMBO) && (!kind || h->kind == kind) &&
           h->size <= usable && h->ls_rel >= VD_BLOCK_HEADER_SIZE && h->ls_rel <= h->size &&
           h->birth <= VD_SEQ_MASK;
}

typedef void (*pmemobj_persist_fn)(void *pop, const void *addr, size_t len);

/* The constructor pmemobj_alloc runs on every new block and reserve object (its address is
 * the module's BLOCK_CONSTRUCTOR; the argument a VdBlockInit made by Core.block_init).
 * libpmemobj publishes an allocation only after its constructor returned 0, so a crash at
 * any instant leaves either no object or one whose header is this life's, with its birth:
 * never the valid header and records of whatever the space held before. A standard block's
 * log is zeroed here too (in the page cache; persisted only on real persistent memory,
 * where that is cheap: should a power cut undo it, the records that reappear are older than
 * the birth and are not read), a jumbo block's first record header, so that a block made
 * just before a crash reads as empty, not damaged. A reserve only loses its first
 * header-sized bytes: it never holds a valid block header. Runs inside pmemobj_alloc,
 * called through ctypes without the GIL: no Python API here. */
static int block_constructor(void *pop, void *ptr, void *arg) {
    VdBlockInit a;
    memcpy(&a, arg, sizeof a);
    pmemobj_persist_fn persist = (pmemobj_persist_fn)(uintptr_t)a.persist;
    uint8_t *p = ptr;
    if (a.flags & VD_INIT_ZERO) {
        memset(p, 0, a.size);
        persist(pop, p, a.size);
    }
    if (a.kind == VD_INIT_RESERVE) {
        memset(p, 0, VD_BLOCK_HEADER_SIZE);
        persist(pop, p, VD_BLOCK_HEADER_SIZE);
        crash_point("reserve header zeroed");
        return 0;
    }
    uint64_t off = (uint64_t)(p - (uint8_t *)pop);
    int standard = a.kind == VD_BLOCK_KIND_STANDARD;
    uint64_t size = standard && a.size > VD_BLOCK_SIZE ? VD_BLOCK_SIZE : a.size;
    uint64_t ls = standard ? align_up(off + VD_BLOCK_HEADER_SIZE, VD_PAGE_SIZE) : off + VD_BLOCK_HEADER_SIZE;
    uint64_t zero_len = 0;
    if (ls < off + size) zero_len = standard ? off + size - ls : VD_RECORD_HEADER_SIZE;
    if (zero_len > off + size - ls) zero_len = off + size - ls;
    memset(p + (ls - off), 0, zero_len);
    if ((a.flags & VD_INIT_PERSIST_LOG) && zero_len) persist(pop, p + (ls - off), zero_len);
    crash_point(standard ? "standard block log zeroed" : "jumbo block first record header zeroed");
    memset(p, 0, VD_BLOCK_HEADER_SIZE);
    wr32(p + 8, VD_FORMAT_VERSION);
    wr32(p + 12, a.kind);
    wr64(p + 16, size);
    wr64(p + 24, ls - off);
    wr64(p + VD_BLOCK_BIRTH_OFFSET, a.birth);
    wr32(p + 4, crc32c_update(0xFFFFFFFFu, p + 8, VD_BLOCK_HEADER_SIZE - 8) ^ 0xFFFFFFFFu);
    __atomic_store_n((uint32_t *)p, VD_BLOCK_MAGIC, __ATOMIC_RELEASE);
    persist(pop, p, VD_BLOCK_HEADER_SIZE);
    crash_point(standard ? "standard block header written" : "jumbo block header written");
    return 0;
}

/* block_init(kind, size, persist_address, zero=False) -> bytes: the constructor's argument
 * for a new object of size bytes (kind: BLOCK_KIND_* or INIT_RESERVE), born now. */
static PyObject *Core_block_init(Core *c, PyObject *args) {
    unsigned int kind;
    unsigned long long size, persist;
    int zero = 0;
    if (!PyArg_ParseTuple(args, "IKK|p", &kind, &size, &persist, &zero)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    if ((kind != VD_BLOCK_KIND_STANDARD && kind != VD_BLOCK_KIND_JUMBO && kind != VD_INIT_RESERVE) || persist == 0 ||
        size < VD_BLOCK_HEADER_SIZE + VD_RECORD_HEADER_SIZE) {
        PyErr_SetString(PyExc_ValueError, "block_init(): bad kind, size or persist address");
        return NULL;
    }
    VdBlockInit a = {0};
    a.persist = persist;
    a.birth = c->next_seq;
    a.size = size;
    a.kind = kind;
    a.flags = (zero ? VD_INIT_ZERO : 0) | (c->persist_mode == PERSIST_FUNC ? VD_INIT_PERSIST_LOG : 0);
    return PyBytes_FromStringAndSize((const char *)&a, sizeof a);
}

/* The block that the constructor has just made at off, from its header: 0, or -1 with an
 * exception set if there is none (the object was not made by block_constructor). */
static int block_from_header(Core *c, uint64_t off, uint64_t usable, unsigned kind, Block *b) {
    Header h;
    if (!header_read(c->base + off, &h) || h.version != VD_FORMAT_VERSION || !header_fits(&h, usable, kind) ||
        h.birth == 0 || h.birth > c->next_seq) {
        PyErr_Format(CorruptedError,
                     "the object at offset %llu has no header of a new block (allocate blocks with the "
                     "block constructor)",
                     (unsigned long long)off);
        return -1;
    }
    memset(b, 0, sizeof *b);
    b->off = off;
    b->size = h.size;
    b->kind = kind;
    b->log_start = off + h.ls_rel;
    b->end = b->log_start;
    b->birth = h.birth;
    return 0;
}

/* block_header(off, usable) -> (kind, birth), or None if the object holds no valid block
 * header (the engine asks this of an object typed as the reserve). */
static PyObject *Core_block_header(Core *c, PyObject *args) {
    unsigned long long off, usable;
    if (!PyArg_ParseTuple(args, "KK", &off, &usable)) return NULL;
    if (core_check_open(c) < 0 || check_block_bounds(c, off, usable) < 0) return NULL;
    Header h;
    if (!header_read(c->base + off, &h) || h.version != VD_FORMAT_VERSION || !header_fits(&h, usable, 0))
        Py_RETURN_NONE;
    return Py_BuildValue("(IK)", h.kind, (unsigned long long)h.birth);
}


/* add_block(off, usable_size): a new standard block (made by block_constructor) becomes the
 * active block */
static PyObject *Core_add_block(Core *c, PyObject *args) {
    unsigned long long off, usable;
    if (!PyArg_ParseTuple(args, "KK", &off, &usable)) return NULL;
    if (core_check_open(c) < 0 || check_block_bounds(c, off, usable) < 0) return NULL;
    if (c->io_errno) return core_io_refuse(c, 0), NULL;
    /* its header and zeroed log were written by block_constructor inside the allocation */
    Block b;
    if (block_from_header(c, off, usable, VD_BLOCK_KIND_STANDARD, &b) < 0) return NULL;
    Py_ssize_t prev = c->active;
    uint64_t prev_off = prev >= 0 ? c->blocks[prev].off : 0;
    Py_ssize_t i = block_insert(c, &b);
    if (i < 0) return NULL;
    c->active = i;
    /* the block we leave may already be entirely dead */
    if (prev >= 0) {
        Py_ssize_t pi = block_find(c, prev_off);
        if (pi >= 0 && c->blocks[pi].live == 0 && c->blocks[pi].tombstones == 0) return PyLong_FromLong(RC_FREEABLE);
    }
    return PyLong_FromLong(RC_OK);
}

static int do_put(Core *c, const uint8_t *key, uint64_t klen, const uint8_t *val, uint64_t vlen, uint64_t jumbo_off,
                  uint64_t jumbo_size) {
    if (klen > VD_MAX_KEY || vlen > VD_MAX_VALUE) {
        PyErr_SetString(PyExc_ValueError, "key or value too large for viperdbm (limit 4 GiB)");
        return -1;
    }
    uint64_t h = key_hash(key, klen);
    if (index_reserve(c) < 0) return -1;
    uint64_t off;
    if (jumbo_off) {
        uint64_t len = record_len_for(klen, vlen);
        Block b;
        if (block_from_header(c, jumbo_off, jumbo_size, VD_BLOCK_KIND_JUMBO, &b) < 0) return -1;
        if (b.log_start + len > b.off + b.size) {
            internal_error("jumbo block too small for the record");
            return -1;
        }
        if (block_insert(c, &b) < 0) return -1;
        off = b.log_start;
        write_record(c, off, VD_KIND_PUT, c->next_seq++, key, klen, val, vlen);
        persist_range(c, off, len);
        Py_ssize_t bi = block_find(c, off);
        c->blocks[bi].end = off + align_up(len, VD_RECORD_ALIGN);
        c->blocks[bi].seq_max = c->blocks[bi].seq_min = c->next_seq - 1;
    } else {
        int rc = append_record(c, VD_KIND_PUT, key, klen, val, vlen, &off);
        if (rc != RC_OK) return rc;
    }
    uint64_t alen = align_up(record_len_for(klen, vlen), VD_RECORD_ALIGN);
    Py_ssize_t bi = jumbo_off ? block_find(c, off) : c->active;
    c->blocks[bi].live++;
    c->blocks[bi].live_bytes += alen;
    int64_t i = index_lookup(c, key, klen, h);
    int freeable = 0;
    if (i >= 0) {
        uint64_t old = slot_off(c->slots[i]);
        Rec r;
        rec_parse(c->base + old, &r);
        freeable = account_dead(c, old, align_up(r.total, VD_RECORD_ALIGN));
        c->slots[i] = slot_make(h, off);
    } else {
        c->slots[-i - 1] = slot_make(h, off);
        c->count++;
    }
    crash_point("put: index updated");
    return after_write(c, freeable);
}

/* Put from Python objects: rc >= 0 (RC_*), or -2 with an exception set. */
static int core_put_obj(Core *c, PyObject *key, PyObject *value) {
    if (core_check_open(c) < 0) return -2;
    if (c->io_errno) return core_io_refuse(c, 0) - 1;
    if (c->compacting) return RC_BUSY;
    if (c->puts_refused) return RC_NO_RESERVE;
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

/* put(key, value) -> 0 ok, 1 need block, 2 need jumbo block, 3 ok and a block is freeable */
static PyObject *Core_put(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(key, value)");
        return NULL;
    }
    int rc = core_put_obj(c, args[0], args[1]);
    return rc == -2 ? NULL : PyLong_FromLong(rc);
}

/* jumbo_size(klen, vlen) -> bytes to allocate for a jumbo block holding that record */
static PyObject *Core_jumbo_size(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned long long klen, vlen;
    if (!PyArg_ParseTuple(args, "KK", &klen, &vlen)) return NULL;
    return PyLong_FromUnsignedLongLong(VD_BLOCK_HEADER_SIZE + align_up(record_len_for(klen, vlen), VD_RECORD_ALIGN));
}

/* put_jumbo(off, usable, key, value): write a record into its own freshly allocated block */
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

/* Delete from a Python object: -1 missing, rc >= 0 (RC_*), or -2 with an exception set. */
static int core_delete_obj(Core *c, PyObject *key) {
    if (core_check_open(c) < 0) return -2;
    if (c->io_errno) return core_io_refuse(c, 0) - 1;
    if (c->compacting) return RC_BUSY;
    KeyArg k;
    if (keyarg_get(key, &k, "keys") < 0) return -2;
    uint64_t h = key_hash(k.p, (uint64_t)k.n);
    int64_t i = index_lookup(c, k.p, (uint64_t)k.n, h);
    if (i < 0) {
        keyarg_release(&k);
        return -1;
    }
    uint64_t off, klen = (uint64_t)k.n;
    int rc = append_record(c, VD_KIND_DEL, k.p, klen, NULL, 0, &off);
    keyarg_release(&k);
    if (rc != RC_OK) return rc;
    Block *b = &c->blocks[c->active];
    b->tombstones++;
    b->dead_bytes += align_up(record_len_for(klen, 0), VD_RECORD_ALIGN);
    uint64_t old = slot_off(c->slots[i]);
    Rec r;
    rec_parse(c->base + old, &r);
    int freeable = account_dead(c, old, align_up(r.total, VD_RECORD_ALIGN));
    index_remove_at(c, (uint64_t)i);
    c->count--;
    crash_point("delete: index updated");
    if (c->io_errno) return core_io_refuse(c, 1) - 1;
    return after_write(c, freeable);
}

/* delete(key) -> -1 missing, 0 ok, 1 need block, 2 need jumbo, 3 ok and freeable */
static PyObject *Core_delete(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "delete(key)");
        return NULL;
    }
    int rc = core_delete_obj(c, args[0]);
    return rc == -2 ? NULL : PyLong_FromLong(rc);
}

/* delete_jumbo(off, usable, key): a tombstone too large for a standard block */
static PyObject *Core_delete_jumbo(Core *c, PyObject *args) {
    unsigned long long off, usable;
    PyObject *ko;
    if (!PyArg_ParseTuple(args, "KKO", &off, &usable, &ko)) return NULL;
    if (core_check_open(c) < 0 || check_block_bounds(c, off, usable) < 0) return NULL;
    if (c->io_errno) return core_io_refuse(c, 0), NULL;
    KeyArg k;
    if (keyarg_get(ko, &k, "keys") < 0) return NULL;
    uint64_t h = key_hash(k.p, (uint64_t)k.n);
    int64_t i = index_lookup(c, k.p, (uint64_t)k.n, h);
    if (i < 0) {
        keyarg_release(&k);
        return PyLong_FromLong(-1);
    }
    uint64_t len = record_len_for((uint64_t)k.n, 0);
    Block b;
    if (block_from_header(c, off, usable, VD_BLOCK_KIND_JUMBO, &b) < 0) {
        keyarg_release(&k);
        return NULL;
    }
    if (b.log_start + len > b.off + b.size) {
        keyarg_release(&k);
        internal_error("jumbo block too small for the record");
        return NULL;
    }
    b.end = b.log_start + align_up(len, VD_RECORD_ALIGN);
    b.tombstones = 1;
    b.dead_bytes = align_up(len, VD_RECORD_ALIGN);
    write_record(c, b.log_start, VD_KIND_DEL, c->next_seq++, k.p, (uint64_t)k.n, NULL, 0);
    persist_range(c, b.log_start, len);
    b.seq_max = b.seq_min = c->next_seq - 1;
    keyarg_release(&k);
    if (block_insert(c, &b) < 0) return NULL;
    uint64_t old = slot_off(c->slots[i]);
    Rec r;
    rec_parse(c->base + old, &r);
    int freeable = account_dead(c, old, align_up(r.total, VD_RECORD_ALIGN));
    index_remove_at(c, (uint64_t)i);
    c->count--;
    c->writes++;
    crash_point("delete_jumbo: index updated");
    return PyLong_FromLong(freeable ? RC_FREEABLE : RC_OK);
}

static int64_t lookup_arg(Core *c, PyObject *key) {
    KeyArg k;
    if (keyarg_get(key, &k, "keys") < 0) return INT64_MIN;
    int64_t i = index_lookup(c, k.p, (uint64_t)k.n, key_hash(k.p, (uint64_t)k.n));
    keyarg_release(&k);
    return i;
}

static PyObject *value_at(Core *c, int64_t i) {
    Rec r;
    const uint8_t *k = rec_key(c, slot_off(c->slots[i]), &r);
    return PyBytes_FromStringAndSize((const char *)k + r.klen, (Py_ssize_t)r.vlen);
}

/* get(key, default=None) */
static PyObject *Core_get(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    if (core_check_open(c) < 0) return NULL;
    int64_t i = lookup_arg(c, args[0]);
    if (i == INT64_MIN) return NULL;
    if (i < 0) {
        PyObject *d = nargs == 2 ? args[1] : Py_None;
        Py_INCREF(d);
        return d;
    }
    return value_at(c, i);
}

/* getitem(key): the value, or KeyError */
static PyObject *Core_getitem(Core *c, PyObject *key) {
    if (core_check_open(c) < 0) return NULL;
    int64_t i = lookup_arg(c, key);
    if (i == INT64_MIN) return NULL;
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return value_at(c, i);
}

static PyObject *Core_contains(Core *c, PyObject *key) {
    if (core_check_open(c) < 0) return NULL;
    int64_t i = lookup_arg(c, key);
    if (i == INT64_MIN) return NULL;
    return PyBool_FromLong(i >= 0);
}

static Py_ssize_t Core_len(Core *c) {
    if (core_check_open(c) < 0) return -1;
    return (Py_ssize_t)c->count;
}

static PyObject *key_of_slot(Core *c, uint64_t s) {
    Rec r;
    const uint8_t *k = rec_key(c, slot_off(s), &r);
    return PyBytes_FromStringAndSize((const char *)k, (Py_ssize_t)r.klen);
}

static PyObject *Core_keys(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    PyObject *list = PyList_New((Py_ssize_t)c->count);
    if (!list) return NULL;
    Py_ssize_t n = 0;
    for (uint64_t i = 0; i < c->cap && n < (Py_ssize_t)c->count; i++) {
        if (!c->slots[i]) continue;
        PyObject *k = key_of_slot(c, c->slots[i]);
        if (!k) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, n++, k);
    }
    return list;
}

static PyObject *next_key_from(Core *c, uint64_t i) {
    for (; i < c->cap; i++)
        if (c->slots[i]) return key_of_slot(c, c->slots[i]);
    Py_RETURN_NONE;
}

static PyObject *Core_firstkey(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    return next_key_from(c, 0);
}

static PyObject *Core_nextkey(Core *c, PyObject *key) {
    if (core_check_open(c) < 0) return NULL;
    int64_t i = lookup_arg(c, key);
    if (i == INT64_MIN) return NULL;
    if (i < 0) Py_RETURN_NONE; /* as gdbm: a key that is not there has no successor */
    return next_key_from(c, (uint64_t)i + 1);
}

/* ------------------------------------------------------------------ recovery */

/* Apply one valid record found by the scan: the newest version of each key wins.
 * During recovery the index also holds tombstones (a delete must beat an older put found
 * later in the scan); count includes them and tombs_in_index counts them. */
static int recover_record(Core *c, uint64_t off, const Rec *r, uint64_t alen, Block *b, int deferred) {
    const uint8_t *key = c->base + off + r->hlen;
    if (r->seq > c->max_seq_seen) c->max_seq_seen = r->seq;
    if (r->seq < c->floor) { /* superseded wholesale by a reorganize() */
        b->dead_bytes += alen;
        return 0;
    }
    if (!deferred && r->seq > c->durable_seq) {
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
        c->npending++;
        return 0;
    }
    if (r->kind == VD_KIND_DEL) b->tombstones++;
    uint64_t h = key_hash(key, r->klen);
    if (index_reserve(c) < 0) return -1;
    int64_t i = index_lookup(c, key, r->klen, h);
    if (i >= 0) {
        uint64_t old = slot_off(c->slots[i]);
        Rec o;
        rec_parse(c->base + old, &o);
        if (o.seq == r->seq) {
            PyErr_Format(CorruptedError, "two records carry sequence number %llu", (unsigned long long)r->seq);
            return -1;
        }
        if (o.seq > r->seq) { /* ours is the older one */
            b->dead_bytes += alen;
            return 0;
        }
        if (o.kind == VD_KIND_PUT)
            account_dead(c, old, align_up(o.total, VD_RECORD_ALIGN));
        else
            c->tombs_in_index--;
        c->slots[i] = slot_make(h, off);
    } else {
        c->slots[-i - 1] = slot_make(h, off);
        c->count++;
    }
    if (r->kind == VD_KIND_PUT) {
        b->live++;
        b->live_bytes += alen;
    } else {
        b->dead_bytes += alen;
        c->tombs_in_index++;
    }
    return 0;
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
    if (rd64(r) == 0 && rd64(r + 8) == 0) return 0;
    uint64_t meta = rd64(r + 8);
    unsigned rk = (unsigned)((meta >> VD_KIND_SHIFT) & 0xF);
    if (rk < VD_KIND_PUT || rk > VD_KIND_PAD) return -1;
    uint64_t hlen = (meta >> VD_KLEN_SHIFT) == VD_KLEN_EXTENDED ? VD_RECORD_HEADER_SIZE + 4 : VD_RECORD_HEADER_SIZE;
    if (pos + hlen > end) return -1;
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
    uint32_t crc = crc32c_update(0xFFFFFFFFu, r + 4, rec->total - 4) ^ 0xFFFFFFFFu;
    if (crc != rd32(r)) return -1;
    return 1;
}

/* The scan's lookahead: walk up to n record headers from at (lengths only, bounds-checked,
 * no CRC) and prefetch the home slot of each key, so that the index's cache misses of the
 * records ahead overlap with the work on the current one (at millions of keys the index is
 * far larger than the caches). A hint only: it never changes what the scan finds. Returns
 * the position after the n-th record, or 0 where it met anything but a record. */
#define SCAN_PREFETCH_DISTANCE 8
static uint64_t prefetch_records(Core *c, uint64_t at, uint64_t end, int n) {
    unsigned bits = log2u64(c->cap);
    while (n > 0) {
        uint64_t room = VD_PAGE_SIZE - at % VD_PAGE_SIZE;
        if (room < VD_RECORD_HEADER_SIZE) at += room;
        if (at + VD_RECORD_HEADER_SIZE > end) return 0;
        const uint8_t *r = c->base + at;
        uint64_t meta = rd64(r + 8);
        unsigned rk = (unsigned)((meta >> VD_KIND_SHIFT) & 0xF);
        if (rk < VD_KIND_PUT || rk > VD_KIND_PAD) return 0;
        uint64_t hlen = (meta >> VD_KLEN_SHIFT) == VD_KLEN_EXTENDED ? VD_RECORD_HEADER_SIZE + 4 : VD_RECORD_HEADER_SIZE;
        if (at + hlen > end) return 0;
        Rec rec;
        rec_parse(r, &rec);
        if (rec.total > end - at) return 0;
        if (rk != VD_KIND_PAD) {
            uint64_t h = key_hash(r + rec.hlen, rec.klen);
            __builtin_prefetch(&c->slots[h >> (64 - bits)]);
            n--;
        }
        at += align_up(rec.total, VD_RECORD_ALIGN);
    }
    return at;
}

/* scan_block(off, usable, kind) -> (status, records); kind comes from the object's type.
 * status 0: a valid block, scanned.
 * status 1: the header does not verify and no record follows it: the block was allocated
 *           but the process died before it was used. The caller frees it.
 * status 2: the header is damaged but records follow it: they were scanned (the header is
 *           redundant: where the log starts and ends follows from the object itself). */
static PyObject *Core_scan_block(Core *c, PyObject *args) {
    unsigned long long off, usable;
    unsigned int kind;
    if (!PyArg_ParseTuple(args, "KKI", &off, &usable, &kind)) return NULL;
    if (core_check_open(c) < 0 || check_block_bounds(c, off, usable) < 0) return NULL;
    if (kind != VD_BLOCK_KIND_STANDARD && kind != VD_BLOCK_KIND_JUMBO) {
        PyErr_SetString(PyExc_ValueError, "unknown block kind");
        return NULL;
    }
    Header h;
    uint64_t size, ls_rel, birth = 0;
    int header_ok = header_read(c->base + off, &h);
    if (header_ok) {
        if (h.version != VD_FORMAT_VERSION) {
            PyErr_Format(CorruptedError, "block at offset %llu has format version %u, expected %u",
                         (unsigned long long)off, h.version, VD_FORMAT_VERSION);
            return NULL;
        }
        if (!header_fits(&h, usable, kind)) {
            PyErr_Format(CorruptedError, "block at offset %llu has an impossible header", (unsigned long long)off);
            return NULL;
        }
        size = h.size;
        ls_rel = h.ls_rel;
        birth = h.birth;
    } else {
        size = kind == VD_BLOCK_KIND_STANDARD && usable > VD_BLOCK_SIZE ? VD_BLOCK_SIZE : usable;
        ls_rel = kind == VD_BLOCK_KIND_STANDARD ? align_up(off + VD_BLOCK_HEADER_SIZE, VD_PAGE_SIZE) - off
                                                : VD_BLOCK_HEADER_SIZE;
        if (ls_rel + VD_RECORD_HEADER_SIZE > size) return Py_BuildValue("(iii)", 1, 0, 0);
    }
    Block nb = {0};
    nb.off = off;
    nb.size = size;
    nb.kind = kind;
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
    uint64_t ahead = 0;     /* the next record the lookahead prefetches for (0: stopped) */
    while (pos + VD_RECORD_HEADER_SIZE <= end) {
        uint64_t room = VD_PAGE_SIZE - pos % VD_PAGE_SIZE;
        if (kind == VD_BLOCK_KIND_STANDARD && room < VD_RECORD_HEADER_SIZE) {
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
            if (kind == VD_BLOCK_KIND_STANDARD)
                ahead = ahead > pos ? prefetch_records(c, ahead, end, 1)
                                    : prefetch_records(c, pos, end, SCAN_PREFETCH_DISTANCE);
            if (recover_record(c, pos - alen, &rec, alen, b, 0) < 0) return NULL;
            nrec++;
            last_end = pos;
            if (kind == VD_BLOCK_KIND_JUMBO) break; /* a jumbo block holds one record */
            continue;
        }
        if (kind == VD_BLOCK_KIND_JUMBO) {
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
            PyErr_SetString(CorruptedError, "a record lies outside every block");
            return -1;
        }
        Rec r;
        rec_parse(c->base + p->off, &r);
        if (recover_record(c, p->off, &r, p->alen, &c->blocks[bi], 1) < 0) return -1;
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
         * newer, so they are dropped too) */
        if (p->off < b->end) {
            b->end = p->off;
            b->damaged_at = 0;
            b->seq_max = p->seq - 1; /* an upper bound of what the block still holds */
        }
    }
    for (size_t j = i; writable && j < c->npending; j++) {
        /* every one of them: the scan looks past zeros for records further on */
        struct Pending *p = &c->pending[j];
        memset(c->base + p->off, 0, VD_RECORD_HEADER_SIZE);
        persist_range(c, p->off, VD_RECORD_HEADER_SIZE);
        crash_point("apply_pending: dropped record erased");
    }
    PyMem_Free(c->pending);
    c->pending = NULL;
    c->npending = c->pending_cap = 0;
    return 0;
}

static PyObject *Core_finish_recovery(Core *c, PyObject *arg) {
    int writable = PyObject_IsTrue(arg);
    if (writable < 0 || core_check_open(c) < 0) return NULL;
    if (apply_pending(c, writable) < 0) return NULL;
    if (c->tombs_in_index) {
        for (uint64_t i = 0; i < c->cap;) {
            uint64_t s = c->slots[i];
            if (s) {
                Rec r;
                rec_parse(c->base + slot_off(s), &r);
                if (r.kind == VD_KIND_DEL) {
                    index_remove_at(c, i);
                    c->count--;
                    continue; /* a later entry may have shifted into slot i */
                }
            }
            i++;
        }
        c->tombs_in_index = 0;
    }
    if (c->max_seq_seen + 1 > c->next_seq) c->next_seq = c->max_seq_seen + 1;
    if (c->next_seq < c->durable_seq + 1) c->next_seq = c->durable_seq + 1;
    if (c->next_seq < c->floor) c->next_seq = c->floor;
    c->active = -1;
    if (writable) {
        Py_ssize_t best = -1;
        for (size_t i = 0; i < c->nblocks; i++) {
            Block *b = &c->blocks[i];
            if (b->kind != VD_BLOCK_KIND_STANDARD) continue;
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
static PyObject *Core_damage(Core *c, PyObject *unused) {
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

/* freeable() -> [(offset, seq_max, size)] of the blocks that hold no live record and no tombstone */
static PyObject *Core_freeable(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) {
        Block *b = &c->blocks[i];
        if ((Py_ssize_t)i == c->active || b->live || b->tombstones) continue;
        if (list_append_new(out, Py_BuildValue("(KKK)", (unsigned long long)b->off, (unsigned long long)b->seq_max,
                                    (unsigned long long)b->size)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* drop_block(off): forget a block that Python has just freed in the pool */
static PyObject *Core_drop_block(Core *c, PyObject *arg) {
    unsigned long long off = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t i = block_find(c, off);
    if (i < 0 || c->blocks[i].off != off) {
        internal_error("no block at that offset");
        return NULL;
    }
    if (i == c->active) {
        internal_error("the active block cannot be dropped");
        return NULL;
    }
    memmove(&c->blocks[i], &c->blocks[i + 1], (c->nblocks - (size_t)i - 1) * sizeof(Block));
    c->nblocks--;
    if (c->active > i) c->active--;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ reorganize */

/* compact_begin() -> floor: every block existing now is "old"; the next writes go to new
 * blocks. After compact_step() has copied every live record, the caller persists floor in
 * the root: from then on recovery ignores every record older than floor. */
static PyObject *Core_compact_begin(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) c->blocks[i].old = 1;
    c->compact_prev_active = c->active >= 0 ? c->blocks[c->active].off : 0;
    c->active = -1;
    c->compact_cursor = 0;
    c->compacting = 1;
    return PyLong_FromUnsignedLongLong(c->next_seq);
}

/* compact_step() -> (0, 0) done | (1, 0) need block | (2, size) need a jumbo block of size */
static PyObject *Core_compact_step(Core *c, PyObject *args) {
    unsigned long long joff = 0, jsize = 0;
    if (!PyArg_ParseTuple(args, "|KK", &joff, &jsize)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    if (joff && check_block_bounds(c, joff, jsize) < 0) return NULL;
    for (; c->compact_cursor < c->cap; c->compact_cursor++) {
        uint64_t s = c->slots[c->compact_cursor];
        if (!s) continue;
        uint64_t old = slot_off(s);
        Py_ssize_t bi = block_find(c, old);
        if (bi < 0 || !c->blocks[bi].old) continue;
        Rec r;
        const uint8_t *k = rec_key(c, old, &r);
        uint64_t len = record_len_for(r.klen, r.vlen), off;
        if (len > VD_INLINE_MAX) {
            if (!joff) return Py_BuildValue("(iK)", RC_NEED_JUMBO, (unsigned long long)(VD_BLOCK_HEADER_SIZE + align_up(len, VD_RECORD_ALIGN)));
            Block b;
            if (block_from_header(c, joff, jsize, VD_BLOCK_KIND_JUMBO, &b) < 0) return NULL;
            if (b.log_start + len > b.off + b.size) {
                internal_error("jumbo block too small for the record");
                return NULL;
            }
            if (block_insert(c, &b) < 0) return NULL;
            off = b.log_start;
            k = c->base + old + r.hlen; /* block_insert may not move the pool, only blocks[] */
            write_record(c, off, VD_KIND_PUT, c->next_seq++, k, r.klen, k + r.klen, r.vlen);
            persist_range(c, off, len);
            Py_ssize_t nb = block_find(c, off);
            c->blocks[nb].end = off + align_up(len, VD_RECORD_ALIGN);
            c->blocks[nb].seq_max = c->blocks[nb].seq_min = c->next_seq - 1;
            joff = 0;
        } else {
            int rc = append_record(c, VD_KIND_PUT, k, r.klen, k + r.klen, r.vlen, &off);
            if (rc != RC_OK) return Py_BuildValue("(iK)", rc, 0ULL);
        }
        uint64_t alen = align_up(len, VD_RECORD_ALIGN);
        Py_ssize_t nb = block_find(c, off);
        c->blocks[nb].live++;
        c->blocks[nb].live_bytes += alen;
        account_dead(c, old, alen);
        c->slots[c->compact_cursor] = (s & ~SLOT_OFF_MASK) | (off >> 2);
        crash_point("compact_step: index updated");
    }
    return Py_BuildValue("(iK)", RC_OK, 0ULL);
}

/* compact_end(aborted=False): mutators may run again. After a reorganize() that failed
 * before it had a new block (a full disk), the block that was active before takes the
 * appends again: without it, every put and delete would need a new block, which a full
 * disk cannot give. (After a completed one that block is freed: nothing to give back.) */
static PyObject *Core_compact_end(Core *c, PyObject *args) {
    int aborted = 0;
    if (!PyArg_ParseTuple(args, "|p", &aborted)) return NULL;
    c->compacting = 0;
    for (size_t i = 0; i < c->nblocks; i++) c->blocks[i].old = 0;
    if (aborted && c->active < 0 && c->compact_prev_active) {
        Py_ssize_t i = block_find(c, c->compact_prev_active);
        if (i >= 0 && c->blocks[i].off == c->compact_prev_active && c->blocks[i].kind == VD_BLOCK_KIND_STANDARD)
            c->active = i;
    }
    c->compact_prev_active = 0;
    Py_RETURN_NONE;
}


/* compaction_victim(urgent=False) -> offset of the block to compact now, or None */
static PyObject *Core_compaction_victim(Core *c, PyObject *args) {
    int urgent = 0;
    if (!PyArg_ParseTuple(args, "|p", &urgent)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    Py_ssize_t v = compaction_victim(c, urgent);
    if (v < 0) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(c->blocks[v].off);
}

/* compact_block(off) -> rc: 0 done (the block now holds nothing needed and can be freed),
 * 1 need a block (call again after add_block). Copies the block's live records to the
 * active block, and its deletes whose key has no newer record, unless no block holds an
 * older record (then the delete has nothing left to hide). Crash-safe as every write: the
 * copies are newer, so until the block is freed recovery simply prefers them. */
static PyObject *Core_compact_block(Core *c, PyObject *arg) {
    unsigned long long off = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred() || core_check_open(c) < 0) return NULL;
    Py_ssize_t vi = block_find(c, off);
    if (vi < 0 || c->blocks[vi].off != off) { /* freed meanwhile: nothing was left in it */
        c->block_cursor_off = c->block_cursor_pos = 0;
        return PyLong_FromLong(RC_OK);
    }
    if (vi == c->active || c->blocks[vi].kind != VD_BLOCK_KIND_STANDARD) {
        internal_error("compact_block() needs a standard block that is not active");
        return NULL;
    }
    uint64_t oldest_elsewhere = UINT64_MAX;
    for (size_t i = 0; i < c->nblocks; i++)
        if ((Py_ssize_t)i != vi && c->blocks[i].seq_min && c->blocks[i].seq_min < oldest_elsewhere)
            oldest_elsewhere = c->blocks[i].seq_min;
    uint64_t pos = c->block_cursor_off == off ? c->block_cursor_pos : c->blocks[vi].log_start;
    for (;;) {
        Block *v = &c->blocks[vi];
        if (pos + VD_RECORD_HEADER_SIZE > v->end) break;
        uint64_t room = VD_PAGE_SIZE - pos % VD_PAGE_SIZE;
        if (room < VD_RECORD_HEADER_SIZE) {
            pos += room;
            continue;
        }
        Rec r;
        const uint8_t *k = rec_key(c, pos, &r);
        uint64_t alen = align_up(r.total, VD_RECORD_ALIGN), noff;
        if (r.kind == VD_KIND_PUT) {
            uint64_t h = key_hash(k, r.klen);
            int64_t i = index_lookup(c, k, r.klen, h);
            if (i >= 0 && slot_off(c->slots[i]) == pos) {
                int rc = append_record(c, VD_KIND_PUT, k, r.klen, k + r.klen, r.vlen, &noff);
                if (rc != RC_OK) {
                    c->block_cursor_off = off;
                    c->block_cursor_pos = pos;
                    return PyLong_FromLong(rc);
                }
                vi = block_find(c, off); /* (blocks[] does not move here, but stay exact) */
                c->blocks[c->active].live++;
                c->blocks[c->active].live_bytes += alen;
                account_dead(c, pos, alen);
                c->slots[i] = slot_make(h, noff);
                crash_point("compact_block: index updated");
            }
        } else if (r.kind == VD_KIND_DEL && r.seq > oldest_elsewhere) {
            uint64_t h = key_hash(k, r.klen);
            if (index_lookup(c, k, r.klen, h) < 0) {
                int rc = append_record(c, VD_KIND_DEL, k, r.klen, NULL, 0, &noff);
                if (rc != RC_OK) {
                    c->block_cursor_off = off;
                    c->block_cursor_pos = pos;
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
    c->block_cursor_off = c->block_cursor_pos = 0;
    return PyLong_FromLong(RC_OK);
}

static PyObject *Core_set_puts_refused(Core *c, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    c->puts_refused = on;
    Py_RETURN_NONE;
}

static PyObject *Core_set_io_error(Core *c, PyObject *arg) {
    int e = PyLong_AsLong(arg);
    if (e == -1 && PyErr_Occurred()) return NULL;
    if (!c->io_errno) c->io_errno = e ? e : EIO;
    Py_RETURN_NONE;
}

static PyObject *Core_set_auto_compact(Core *c, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    c->auto_compact = on;
    Py_RETURN_NONE;
}

/* old_blocks() -> offsets of the blocks that compact_begin() marked */
static PyObject *Core_old_blocks(Core *c, PyObject *unused) {
    (void)unused;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) {
        if (!c->blocks[i].old) continue;
        if (list_append_new(out, PyLong_FromUnsignedLongLong(c->blocks[i].off)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* map_parts([(path, size), ...]) -> base: map the part files of a pool read-only, back to
 * back, as libpmemobj maps them (a SINGLEHDR poolset has no per-part headers), for readers
 * that share a store without libpmemobj's exclusive lock. */
static PyObject *mod_map_parts(PyObject *mod, PyObject *arg) {
    (void)mod;
    PyObject *seq = PySequence_Fast(arg, "map_parts() takes a list of (path, size)");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        unsigned long long size;
        PyObject *path;
        if (!PyArg_ParseTuple(item, "O&K", PyUnicode_FSConverter, &path, &size)) {
            Py_DECREF(seq);
            return NULL;
        }
        Py_DECREF(path);
        if (size == 0 || size % OS_PAGE) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "part sizes must be non-zero multiples of the page size");
            return NULL;
        }
        total += size;
    }
    if (total == 0) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "no parts to map");
        return NULL;
    }
    uint8_t *base = mmap(NULL, (size_t)total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        Py_DECREF(seq);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    uint64_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i), *path;
        unsigned long long size;
        if (!PyArg_ParseTuple(item, "O&K", PyUnicode_FSConverter, &path, &size)) goto fail;
        int fd = open(PyBytes_AS_STRING(path), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
            Py_DECREF(path);
            goto fail;
        }
        void *p = mmap(base + at, (size_t)size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
        int saved = errno;
        close(fd);
        if (p == MAP_FAILED) {
            errno = saved;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
            Py_DECREF(path);
            goto fail;
        }
        Py_DECREF(path);
        at += size;
    }
    Py_DECREF(seq);
    return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)base, (unsigned long long)total);
fail:
    munmap(base, (size_t)total);
    Py_DECREF(seq);
    return NULL;
}


/* peek(base, total, off, n) -> bytes: read from a mapping made by map_parts(), bounds-checked */
static PyObject *mod_peek(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned long long base, total, off, n;
    if (!PyArg_ParseTuple(args, "KKKK", &base, &total, &off, &n)) return NULL;
    if (off > total || n > total - off) {
        PyErr_SetString(CorruptedError ? CorruptedError : PyExc_ValueError, "offset outside the pool");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)(uintptr_t)(base + off), (Py_ssize_t)n);
}

/* unmap_parts(base, total) */
static PyObject *mod_unmap_parts(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned long long base, total;
    if (!PyArg_ParseTuple(args, "KK", &base, &total)) return NULL;
    if (munmap((void *)(uintptr_t)base, (size_t)total) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
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
    for (uint64_t i = 0; i < c->cap; i++) {
        if (!c->slots[i]) continue;
        uint64_t off = slot_off(c->slots[i]);
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

/* blocks() -> [(off, size, kind)] of every block the core knows */
static PyObject *Core_blocks(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    PyObject *out = PyList_New((Py_ssize_t)c->nblocks);
    if (!out) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) {
        PyObject *t = Py_BuildValue("(KKI)", (unsigned long long)c->blocks[i].off,
                                    (unsigned long long)c->blocks[i].size, c->blocks[i].kind);
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
        jumbo += b->kind == VD_BLOCK_KIND_JUMBO;
    }
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsK}", "records", (unsigned long long)c->count, "live_bytes",
                         (unsigned long long)live, "dead_bytes", (unsigned long long)dead, "block_bytes",
                         (unsigned long long)used, "blocks", (unsigned long long)c->nblocks, "jumbo_blocks",
                         (unsigned long long)jumbo, "tombstones", (unsigned long long)tombs, "index_slots",
                         (unsigned long long)c->cap, "index_bytes", (unsigned long long)(c->cap * sizeof(uint64_t)),
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
    {"set_floor", (PyCFunction)Core_set_floor, METH_O, "Records older than this sequence number are dead."},
    {"set_durable", (PyCFunction)Core_set_durable, METH_O, "Every record up to this sequence number is durable."},
    {"add_block", (PyCFunction)Core_add_block, METH_VARARGS, "add_block(off, usable) -> rc"},
    {"block_init", (PyCFunction)Core_block_init, METH_VARARGS,
     "block_init(kind, size, persist_address, zero=False) -> the block constructor's argument"},
    {"block_header", (PyCFunction)Core_block_header, METH_VARARGS,
     "block_header(off, usable) -> (kind, birth), or None without a valid block header"},
    {"put", (PyCFunction)(void (*)(void))Core_put, METH_FASTCALL, "put(key, value) -> rc"},
    {"put_jumbo", (PyCFunction)Core_put_jumbo, METH_VARARGS, "put_jumbo(off, usable, key, value) -> rc"},
    {"delete", (PyCFunction)(void (*)(void))Core_delete, METH_FASTCALL, "delete(key) -> rc (-1: missing)"},
    {"delete_jumbo", (PyCFunction)Core_delete_jumbo, METH_VARARGS, "delete_jumbo(off, usable, key) -> rc"},
    {"get", (PyCFunction)(void (*)(void))Core_get, METH_FASTCALL, "get(key, default=None)"},
    {"getitem", (PyCFunction)Core_getitem, METH_O, "getitem(key) -> value or KeyError"},
    {"contains", (PyCFunction)Core_contains, METH_O, "contains(key) -> bool"},
    {"keys", (PyCFunction)Core_keys, METH_NOARGS, "keys() -> list of bytes, in index order"},
    {"firstkey", (PyCFunction)Core_firstkey, METH_NOARGS, "firstkey() -> bytes or None"},
    {"nextkey", (PyCFunction)Core_nextkey, METH_O, "nextkey(key) -> bytes or None"},
    {"scan_block", (PyCFunction)Core_scan_block, METH_VARARGS, "scan_block(off, usable, kind) -> (status, records, damaged_at)"},
    {"finish_recovery", (PyCFunction)Core_finish_recovery, METH_O, "finish_recovery(writable) -> freeable offsets"},
    {"damage", (PyCFunction)Core_damage, METH_NOARGS, "damage() -> [(block, offset)] of unreadable log tails"},
    {"freeable", (PyCFunction)Core_freeable, METH_NOARGS, "freeable() -> [(off, seq_max, size)] of dead blocks"},
    {"drop_block", (PyCFunction)Core_drop_block, METH_O, "drop_block(off)"},
    {"compact_begin", (PyCFunction)Core_compact_begin, METH_NOARGS, "compact_begin() -> floor"},
    {"compact_step", (PyCFunction)Core_compact_step, METH_VARARGS, "compact_step([joff, jsize]) -> (rc, size)"},
    {"compact_end", (PyCFunction)Core_compact_end, METH_VARARGS, "compact_end(aborted=False): mutators may run again"},
    {"compaction_victim", (PyCFunction)Core_compaction_victim, METH_VARARGS, "compaction_victim(urgent=False) -> off or None"},
    {"set_puts_refused", (PyCFunction)Core_set_puts_refused, METH_O, "set_puts_refused(on): puts answer RC_NO_RESERVE"},
    {"compact_block", (PyCFunction)Core_compact_block, METH_O, "compact_block(off) -> rc"},
    {"set_auto_compact", (PyCFunction)Core_set_auto_compact, METH_O, "set_auto_compact(on)"},
    {"set_io_error", (PyCFunction)Core_set_io_error, METH_O, "set_io_error(errno): refuse writes from now on"},
    {"old_blocks", (PyCFunction)Core_old_blocks, METH_NOARGS, "old_blocks() -> offsets"},
    {"stats", (PyCFunction)Core_stats, METH_NOARGS, "stats() -> dict"},
    {"blocks", (PyCFunction)Core_blocks, METH_NOARGS, "blocks() -> [(off, size, kind)]"},
    {"audit", (PyCFunction)Core_audit, METH_NOARGS, "audit() -> [problem]: block counters against the index"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"next_seq", (getter)Core_get_next_seq, NULL, "the sequence number of the next record", NULL},
    {"discarded", (getter)Core_get_discarded, NULL, "records dropped by the power-fail rule at open", NULL},
    {"has_active", (getter)Core_get_has_active, NULL, "whether a block is open for appends", NULL},
    {"is_open", (getter)Core_get_is_open, NULL, "whether the core still has its mapping", NULL},
    {"io_errno", (getter)Core_get_io_errno, NULL, "errno of the failed msync that stopped writes, or 0", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Core_as_sequence = {
    .sq_length = (lenfunc)Core_len,
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "viperdbm._vipercore.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The record log, the DRAM index and the recovery scan of one open store.",
    .tp_new = Core_new,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
    .tp_as_sequence = &Core_as_sequence,
};



/* ------------------------------------------------------------------ MapBase
 * The C base of viperdbm's dbm object (_dbm._Database subclasses it together with
 * MutableMapping), so that db[k] = v, db[k], k in db, del db[k] and len(db) run without a
 * Python frame: the mapping slots call the core directly and fall back to the engine's
 * Python slow paths (put_slow / delete_slow) only when a block must be allocated or freed. */
typedef struct {
    PyObject_HEAD Core *core; /* NULL when the store is closed */
    PyObject *engine;         /* has put_slow(rc, key, value) and delete_slow(rc, key) -> bool */
    PyObject *on_readonly;    /* called (no arguments) to raise ReadonlyError */
    int readonly;
} MapBase;

static PyObject *str_put_slow, *str_delete_slow;

static Core *map_core(MapBase *m) {
    if (m->core == NULL) {
        PyErr_SetString(ClosedError ? ClosedError : PyExc_ValueError, "DBM object has already been closed");
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

static int map_put(MapBase *m, Core *c, PyObject *key, PyObject *value);

static int MapBase_ass_subscript(MapBase *m, PyObject *key, PyObject *value) {
    Core *c = map_core(m);
    if (!c) return -1;
    if (m->readonly) return map_refuse_readonly(m);
    if (value != NULL) return map_put(m, c, key, value);
    int rc = core_delete_obj(c, key);
    if (rc == RC_OK) return 0;
    if (rc == -2) return -1;
    if (rc == -1) {
        PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    PyObject *rco = PyLong_FromLong(rc);
    if (!rco) return -1;
    PyObject *r = PyObject_CallMethodObjArgs(m->engine, str_delete_slow, rco, key, NULL);
    Py_DECREF(rco);
    if (!r) return -1;
    int found = PyObject_IsTrue(r);
    Py_DECREF(r);
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
    if (rc == RC_OK) return 0;
    if (rc == -2) return -1;
    PyObject *rco = PyLong_FromLong(rc);
    if (!rco) return -1;
    PyObject *r = PyObject_CallMethodObjArgs(m->engine, str_put_slow, rco, key, value, NULL);
    Py_DECREF(rco);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* update([other], **kw): every pair in one call (a mapping, or an iterable of pairs) */
static PyObject *MapBase_update(MapBase *m, PyObject *args, PyObject *kw) {
    PyObject *other = NULL;
    if (!PyArg_UnpackTuple(args, "update", 0, 1, &other)) return NULL;
    Core *c = map_core(m);
    if (!c) return NULL;
    if (m->readonly) {
        map_refuse_readonly(m);
        return NULL;
    }
    PyObject *sources[2] = {other, kw};
    for (int s = 0; s < 2; s++) {
        PyObject *src = sources[s];
        if (!src) continue;
        PyObject *it;
        int is_map = PyDict_Check(src) || PyObject_HasAttrString(src, "keys");
        if (PyDict_Check(src)) {
            PyObject *k, *v;
            Py_ssize_t pos = 0;
            /* iterate a snapshot: a put may call Python (slow path) */
            PyObject *items = PyDict_Items(src);
            if (!items) return NULL;
            Py_ssize_t n = PyList_GET_SIZE(items);
            for (pos = 0; pos < n; pos++) {
                PyObject *pair = PyList_GET_ITEM(items, pos);
                k = PyTuple_GET_ITEM(pair, 0);
                v = PyTuple_GET_ITEM(pair, 1);
                if (map_put(m, c, k, v) < 0) {
                    Py_DECREF(items);
                    return NULL;
                }
            }
            Py_DECREF(items);
            continue;
        }
        if (is_map) {
            PyObject *keys = PyObject_CallMethod(src, "keys", NULL);
            if (!keys) return NULL;
            it = PyObject_GetIter(keys);
            Py_DECREF(keys);
            if (!it) return NULL;
            PyObject *k;
            while ((k = PyIter_Next(it))) {
                PyObject *v = PyObject_GetItem(src, k);
                int r = v ? map_put(m, c, k, v) : -1;
                Py_XDECREF(v);
                Py_DECREF(k);
                if (r < 0) {
                    Py_DECREF(it);
                    return NULL;
                }
            }
            Py_DECREF(it);
            if (PyErr_Occurred()) return NULL;
            continue;
        }
        it = PyObject_GetIter(src);
        if (!it) return NULL;
        PyObject *pair;
        while ((pair = PyIter_Next(it))) {
            PyObject *seq = PySequence_Fast(pair, "update() needs pairs of key and value");
            Py_DECREF(pair);
            if (!seq) {
                Py_DECREF(it);
                return NULL;
            }
            if (PySequence_Fast_GET_SIZE(seq) != 2) {
                Py_DECREF(seq);
                Py_DECREF(it);
                PyErr_SetString(PyExc_ValueError, "update() needs pairs of key and value");
                return NULL;
            }
            int r = map_put(m, c, PySequence_Fast_GET_ITEM(seq, 0), PySequence_Fast_GET_ITEM(seq, 1));
            Py_DECREF(seq);
            if (r < 0) {
                Py_DECREF(it);
                return NULL;
            }
        }
        Py_DECREF(it);
        if (PyErr_Occurred()) return NULL;
    }
    Py_RETURN_NONE;
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
        int64_t j = lookup_arg(c, PySequence_Fast_GET_ITEM(seq, i));
        if (j == INT64_MIN) {
            Py_DECREF(out);
            Py_DECREF(seq);
            return NULL;
        }
        PyObject *v;
        if (j < 0) {
            Py_INCREF(dflt);
            v = dflt;
        } else if (!(v = value_at(c, j))) {
            Py_DECREF(out);
            Py_DECREF(seq);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    Py_DECREF(seq);
    return out;
}

/* _items() / _values(): snapshots in one call, for items() and values() */
static PyObject *map_snapshot(MapBase *m, int what) {
    Core *c = map_core(m);
    if (!c || core_check_open(c) < 0) return NULL;
    PyObject *list = PyList_New((Py_ssize_t)c->count);
    if (!list) return NULL;
    Py_ssize_t n = 0;
    for (uint64_t i = 0; i < c->cap && n < (Py_ssize_t)c->count; i++) {
        if (!c->slots[i]) continue;
        Rec r;
        const uint8_t *k = rec_key(c, slot_off(c->slots[i]), &r);
        PyObject *v = PyBytes_FromStringAndSize((const char *)k + r.klen, (Py_ssize_t)r.vlen), *item;
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        if (what) {
            item = v;
        } else {
            PyObject *key = PyBytes_FromStringAndSize((const char *)k, (Py_ssize_t)r.klen);
            item = key ? PyTuple_Pack(2, key, v) : NULL;
            Py_XDECREF(key);
            Py_DECREF(v);
            if (!item) {
                Py_DECREF(list);
                return NULL;
            }
        }
        PyList_SET_ITEM(list, n++, item);
    }
    return list;
}

static PyObject *MapBase_items_list(MapBase *m, PyObject *unused) {
    (void)unused;
    return map_snapshot(m, 0);
}

static PyObject *MapBase_values_list(MapBase *m, PyObject *unused) {
    (void)unused;
    return map_snapshot(m, 1);
}

static int MapBase_contains(MapBase *m, PyObject *key) {
    Core *c = map_core(m);
    if (!c) return -1;
    if (core_check_open(c) < 0) return -1;
    int64_t i = lookup_arg(c, key);
    if (i == INT64_MIN) return -1;
    return i >= 0;
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
    {"update", (PyCFunction)(void (*)(void))MapBase_update, METH_VARARGS | METH_KEYWORDS,
     "update([other], **kw): store every pair of a mapping or an iterable of pairs, in one call"},
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

static PyObject *mod_set_error_classes(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *closed, *corrupted, *base = NULL;
    if (!PyArg_ParseTuple(args, "OO|O", &closed, &corrupted, &base)) return NULL;
    Py_XDECREF(ClosedError);
    Py_XDECREF(CorruptedError);
    Py_XDECREF(StoreError);
    Py_INCREF(closed);
    Py_INCREF(corrupted);
    Py_XINCREF(base);
    ClosedError = closed;
    CorruptedError = corrupted;
    StoreError = base;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ signal deferral
 * The engine's multi-step changes (a new block, the reserve, freeing, compaction, the end
 * of reorganize()) must not be torn by a KeyboardInterrupt between two of their Python
 * steps. Python runs a signal's handler between bytecodes of the main thread, soon after
 * the C-level handler has flagged it; a signal blocked in this thread is not flagged but
 * stays pending in the kernel, and is delivered (its handler run) once it is unblocked.
 * These calls block every asynchronous signal for a section and deliver what arrived at
 * its end. (A signal that another thread receives, one that has it unblocked, still
 * reaches the main thread's bytecodes: programs with threads that take signals get the
 * ordering guarantees of the engine, not this deferral.) */
typedef struct {
    sigset_t old;
} SigToken;

static void deferred_set(sigset_t *set) {
    sigfillset(set);
    /* synchronous faults cannot wait (a blocked one kills the process), nor these two */
    static const int keep[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS, SIGKILL, SIGSTOP};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) sigdelset(set, keep[i]);
}

/* Run the handlers of signals already flagged, after an exception (t, v, tb) that was
 * already fetched (or none: NULLs). If handlers raise, the last exception is set with the
 * earlier ones as its context. 0, or -1 with an exception set. */
static int run_flagged_handlers_after(PyObject *t, PyObject *v, PyObject *tb) {
    if (t) PyErr_NormalizeException(&t, &v, &tb);
    for (;;) {
        if (PyErr_CheckSignals() == 0) { /* every flagged handler ran (blocked: no new flags) */
            if (!t) return 0;
            PyErr_Restore(t, v, tb);
            return -1;
        }
        PyObject *t2, *v2, *tb2;
        PyErr_Fetch(&t2, &v2, &tb2);
        PyErr_NormalizeException(&t2, &v2, &tb2);
        if (t) {
            if (v2 && v)
                PyException_SetContext(v2, v); /* steals v */
            else
                Py_XDECREF(v);
            Py_XDECREF(t);
            Py_XDECREF(tb);
        }
        t = t2;
        v = v2;
        tb = tb2;
    }
}

/* sigblock() -> token: block asynchronous signals in this thread. Handlers of signals that
 * were flagged before the block run first: if one raises, the mask is restored and the
 * exception propagates, so the section never starts. */
static PyObject *mod_sigblock(PyObject *mod, PyObject *unused) {
    (void)mod;
    (void)unused;
    SigToken tok;
    sigset_t set;
    deferred_set(&set);
    int err = pthread_sigmask(SIG_BLOCK, &set, &tok.old);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (run_flagged_handlers_after(NULL, NULL, NULL) < 0) {
        pthread_sigmask(SIG_SETMASK, &tok.old, NULL);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)&tok, sizeof tok);
}

static int token_get(PyObject *arg, SigToken *tok) {
    if (!PyBytes_Check(arg) || PyBytes_GET_SIZE(arg) != (Py_ssize_t)sizeof *tok) {
        PyErr_SetString(PyExc_TypeError, "expected a token from sigblock()");
        return -1;
    }
    memcpy(tok, PyBytes_AS_STRING(arg), sizeof *tok);
    return 0;
}

/* sigunblock(token): restore the mask of sigblock(); the handlers of the signals that
 * arrived meanwhile run now (and may raise: the section is over by then). */
static PyObject *mod_sigunblock(PyObject *mod, PyObject *arg) {
    (void)mod;
    SigToken tok;
    if (token_get(arg, &tok) < 0) return NULL;
    pthread_sigmask(SIG_SETMASK, &tok.old, NULL);
    if (PyErr_CheckSignals() < 0) return NULL;
    Py_RETURN_NONE;
}

/* sigpoll(token): between two whole steps of a long section: deliver what is pending (run
 * the handlers) and block again. Always returns with the signals blocked, so the caller
 * can wind its section down in order when a handler raised. */
static PyObject *mod_sigpoll(PyObject *mod, PyObject *arg) {
    (void)mod;
    SigToken tok;
    if (token_get(arg, &tok) < 0) return NULL;
    sigset_t set, pending;
    deferred_set(&set);
    if (sigpending(&pending) == 0) {
        int any = 0;
        for (int s = 1; s < NSIG && !any; s++)
            any = sigismember(&pending, s) == 1 && sigismember(&set, s) == 1 && sigismember(&tok.old, s) == 0;
        if (!any) Py_RETURN_NONE;
    }
    pthread_sigmask(SIG_SETMASK, &tok.old, NULL);
    PyObject *t = NULL, *v = NULL, *tb = NULL;
    if (PyErr_CheckSignals() < 0) PyErr_Fetch(&t, &v, &tb);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    /* a signal flagged between the two masks: its handler runs now, not in the caller */
    if (run_flagged_handlers_after(t, v, tb) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *mod_crc32c(PyObject *mod, PyObject *args) {
    (void)mod;
    Py_buffer b;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &b, &crc)) return NULL;
    uint32_t r = crc32c_update(crc ^ 0xFFFFFFFFu, b.buf, (size_t)b.len) ^ 0xFFFFFFFFu;
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(r);
}

/* crash_point(name): a crash point of a Python step, counted with the native ones */
static PyObject *mod_crash_point(PyObject *mod, PyObject *arg) {
    (void)mod;
    if (crash_armed) {
        const char *name = PyUnicode_AsUTF8(arg);
        if (!name) return NULL;
        crash_point_hit(name);
    } else if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "crash_point() takes a str");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"crash_point", mod_crash_point, METH_O, "crash_point(name): a crash point (VIPERDBM_CRASH_AT/_LOG)"},
    {"set_error_classes", mod_set_error_classes, METH_VARARGS, "set_error_classes(ClosedError, CorruptedError)"},
    {"crc32c", mod_crc32c, METH_VARARGS, "crc32c(data, crc=0) -> int (Castagnoli)"},
    {"sigblock", mod_sigblock, METH_NOARGS, "sigblock() -> token: defer asynchronous signals in this thread"},
    {"sigunblock", mod_sigunblock, METH_O, "sigunblock(token): deliver the deferred signals"},
    {"sigpoll", mod_sigpoll, METH_O, "sigpoll(token): deliver pending signals, then defer again"},
    {"map_parts", mod_map_parts, METH_O, "map_parts([(path, size)]) -> (base, total), read-only"},
    {"unmap_parts", mod_unmap_parts, METH_VARARGS, "unmap_parts(base, total)"},
    {"peek", mod_peek, METH_VARARGS, "peek(base, total, off, n) -> bytes"},
    {"jumbo_size", Core_jumbo_size, METH_VARARGS, "jumbo_size(klen, vlen) -> bytes to allocate"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "viperdbm._vipercore", "The native hot paths of viperdbm.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__vipercore(void) {
    crc_init();
    crash_points_init();
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_hw_crc = __builtin_cpu_supports("sse4.2");
#endif
    if (PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) return NULL;
    if (PyType_Ready(&MapBaseType) < 0) return NULL;
    Py_INCREF(&MapBaseType);
    if (PyModule_AddObject(m, "MapBase", (PyObject *)&MapBaseType) < 0) return NULL;
    str_put_slow = PyUnicode_InternFromString("put_slow");
    str_delete_slow = PyUnicode_InternFromString("delete_slow");
    if (!str_put_slow || !str_delete_slow) return NULL;
#define ADD(name, value) PyModule_AddObject(m, name, PyLong_FromUnsignedLongLong((unsigned long long)(value)))
    ADD("FORMAT_VERSION", VD_FORMAT_VERSION);
    ADD("PAGE_SIZE", VD_PAGE_SIZE);
    ADD("BLOCK_SIZE", VD_BLOCK_SIZE);
    ADD("INLINE_MAX", VD_INLINE_MAX);
    ADD("BLOCK_MAGIC", VD_BLOCK_MAGIC);
    ADD("BLOCK_HEADER_SIZE", VD_BLOCK_HEADER_SIZE);
    ADD("BLOCK_KIND_STANDARD", VD_BLOCK_KIND_STANDARD);
    ADD("BLOCK_KIND_JUMBO", VD_BLOCK_KIND_JUMBO);
    ADD("BLOCK_BIRTH_OFFSET", VD_BLOCK_BIRTH_OFFSET);
    ADD("INIT_RESERVE", VD_INIT_RESERVE);
    ADD("BLOCK_CONSTRUCTOR", (uintptr_t)&block_constructor);
    ADD("RECORD_HEADER_SIZE", VD_RECORD_HEADER_SIZE);
    ADD("RECORD_ALIGN", VD_RECORD_ALIGN);
    ADD("KIND_PUT", VD_KIND_PUT);
    ADD("KIND_DEL", VD_KIND_DEL);
    ADD("KIND_PAD", VD_KIND_PAD);
    ADD("MAX_KEY", VD_MAX_KEY);
    ADD("MAX_VALUE", VD_MAX_VALUE);
    ADD("RC_OK", RC_OK);
    ADD("RC_NEED_BLOCK", RC_NEED_BLOCK);
    ADD("RC_NEED_JUMBO", RC_NEED_JUMBO);
    ADD("RC_FREEABLE", RC_FREEABLE);
    ADD("RC_BUSY", RC_BUSY);
    ADD("RC_COMPACT", RC_COMPACT);
    ADD("RC_NO_RESERVE", RC_NO_RESERVE);
    ADD("PERSIST_NONE", PERSIST_NONE);
    ADD("PERSIST_MSYNC", PERSIST_MSYNC);
    ADD("PERSIST_FUNC", PERSIST_FUNC);
#undef ADD
    return m;
}
