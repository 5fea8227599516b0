/* The log: blocks (their headers, the constructor pmemobj_alloc runs on each, the registry of
 * the blocks the core knows) and the records appended to them (placing, writing, persisting). */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------------ blocks registry */
Py_ssize_t block_find(Core *c, uint64_t off) {
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

Py_ssize_t block_insert(Core *c, const Block *nb) {
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
        return core_error(ERR_BLOCKS_OVERLAP);
    }
    memmove(&c->blocks[i + 1], &c->blocks[i], (c->nblocks - i) * sizeof(Block));
    c->blocks[i] = *nb;
    c->nblocks++;
    if (c->active >= (Py_ssize_t)i) c->active++;
    return (Py_ssize_t)i;
}

/* account a record (at pool offset off, aligned length len) as dead in its block */
int account_dead(Core *c, uint64_t off, uint64_t len) {
    Py_ssize_t bi = block_find(c, off);
    if (bi < 0) return 0;
    Block *b = &c->blocks[bi];
    if (b->live) b->live--;
    b->live_bytes = b->live_bytes >= len ? b->live_bytes - len : 0;
    b->dead_bytes += len;
    return b->live == 0 && b->tombstones == 0 && bi != c->active;
}

/* ------------------------------------------------------------------ writing records */
/* -1 if the msync failed: its errno is kept in c->io_errno, and the mutator that called this
 * raises once its record is complete (the record is in the page cache and readable, but not
 * known to be durable), and every later write is refused: after a failed msync the kernel
 * may have dropped the dirty pages, so a later msync that succeeds proves nothing. */
int persist_range(Core *c, uint64_t off, uint64_t len) {
    if (c->persist_mode == PERSIST_FUNC && c->persist_fn) {
        c->persist_fn(c->base + off, (size_t)len);
    } else if (c->persist_mode == PERSIST_MSYNC) {
        uint64_t start = off & ~(uint64_t)(os_page - 1);
        uint64_t stop = align_up(off + len, os_page);
        if (msync(c->base + start, (size_t)(stop - start), MS_SYNC) != 0) {
            if (!c->io_errno) c->io_errno = errno ? errno : EIO;
            return -1;
        }
    }
    return 0;
}

/* Raise the viperdbm.error (errno set) for c->io_errno: -1. written: the write that saw the
 * failure is complete in the open store (readable) but not known to be durable. */
int core_io_refuse(Core *c, int written) {
    return core_error_errno(written ? ERR_IO_UNDURABLE : ERR_IO_REFUSED, c->io_errno);
}

/* Write one record at pool offset off. The CRC word goes last: until it is stored the
 * header does not verify, so a crash mid-copy leaves a record that recovery ignores. */
void write_record(Core *c, uint64_t off, unsigned kind, uint64_t seq, const uint8_t *key,
                         uint64_t klen, const uint8_t *val, uint64_t vlen) {
    uint8_t *r = pool_dest(c, off);
    uint64_t hlen = header_len_for(klen);
    wr32(r + offsetof(VdRecordHeader, vlen), (uint32_t)vlen);
    wr64(r + offsetof(VdRecordHeader, meta), meta_make(seq, kind, klen));
    if (hlen > VD_RECORD_HEADER_SIZE) wr32(r + VD_RECORD_HEADER_SIZE, (uint32_t)klen);
    if (klen) memcpy(r + hlen, key, klen);
    if (vlen && val)
        memcpy(r + hlen + klen, val, vlen);
    else if (vlen)
        memset(r + hlen + klen, 0, vlen); /* a pad record */
    uint32_t crc = record_crc(r, hlen + klen + vlen);
    crash_point("record body written, CRC not yet");
    __atomic_store_n((uint32_t *)(r + offsetof(VdRecordHeader, crc)), crc, __ATOMIC_RELEASE);
    crash_point("record written");
}

/* ------------------------------------------------------------------ staged writes (flag 's')
 * Under flag 's' on an ordinary file a record (or a batch) is built in a buffer and put into
 * its part file with one pwrite, not stored through the mapping, and then msynced as before.
 * Why: ext4 caches a file in folios of up to 2 MiB, and a store through a shared mapping
 * marks its whole folio dirty (page_mkwrite), so the msync of one record wrote the whole
 * folio: 2,048 KiB for each 100-byte put once read-ahead had cached the block's space in
 * large folios (benchmarks/results/scale-2026-12-07-analysis.md). A write() marks dirty only
 * the file system blocks it touches, and ext4 writes back only those. The page cache is the
 * mapping's, so what pwrite wrote is at once what the mapping reads. */

/* Stage the len bytes at pool offset off (the caller writes them through pool_dest, then
 * calls stage_commit), unless they go to the mapping as usual: no part files, a range they
 * do not cover, or no memory for the buffer. */
void stage_begin(Core *c, uint64_t off, uint64_t len) {
    c->stage_len = 0;
    if (!c->nparts || c->persist_mode != PERSIST_MSYNC || len == 0) return;
    const struct PartFile *last = &c->parts[c->nparts - 1];
    if (off + len > last->start + last->size || off + len > c->mapped) return;
    if (len > c->stage_cap) {
        uint64_t cap = align_up(len, 64 << 10);
        uint8_t *buf = realloc(c->stage_buf, (size_t)cap);
        if (!buf) return; /* the mapping, as without part files */
        c->stage_buf = buf;
        c->stage_cap = cap;
    }
    memset(c->stage_buf, 0, (size_t)len); /* what no record covers (alignment) reads as zeros */
    c->stage_off = off;
    c->stage_len = len;
}

/* pwrite the n bytes at buf to pool offset off, across as many parts as the range spans: 0,
 * or -1 (errno set) with some of them perhaps written. */
static int pwrite_pool(Core *c, uint64_t off, const uint8_t *buf, uint64_t n) {
    size_t i = 0;
    while (i < c->nparts && c->parts[i].start + c->parts[i].size <= off) i++;
    while (n) {
        if (i == c->nparts) return errno = EFAULT, -1; /* stage_begin checked: cannot happen */
        const struct PartFile *p = &c->parts[i];
        uint64_t in_part = p->start + p->size - off, chunk = n < in_part ? n : in_part;
        ssize_t w = pwrite(p->fd, buf, (size_t)chunk, (off_t)(off - p->start));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO;
            return -1;
        }
        off += (uint64_t)w;
        buf += w;
        n -= (uint64_t)w;
        if (off == p->start + p->size) i++;
    }
    return 0;
}

/* Put what was staged into the pool. Should the pwrite fail (a full disk, an I/O error),
 * the bytes are stored through the mapping instead, exactly as without staging: the msync
 * that follows then says whether they are durable, as for every write. */
void stage_commit(Core *c) {
    uint64_t off = c->stage_off, len = c->stage_len;
    if (!len) return;
    c->stage_len = 0; /* pool_dest is the mapping again */
    if (pwrite_pool(c, off, c->stage_buf, len) == 0) return;
    crash_point("staged write failed, storing through the mapping");
    memcpy(c->base + off, c->stage_buf, (size_t)len);
}

/* set_part_files([(fd, size), ...]): the pool's part files in mapping order, opened for
 * writing, for flag 's' (an empty list: store through the mapping). The descriptors stay
 * Python's. */
PyObject *Core_set_part_files(Core *c, PyObject *list) {
    PyObject *seq = PySequence_Fast(list, "set_part_files() takes a list of (fd, size)");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    struct PartFile *parts = n ? PyMem_Calloc((size_t)n, sizeof *parts) : NULL;
    if (n && !parts) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    uint64_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int fd;
        unsigned long long size;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iK", &fd, &size)) {
            PyMem_Free(parts);
            Py_DECREF(seq);
            return NULL;
        }
        parts[i] = (struct PartFile){.start = start, .size = size, .fd = fd};
        start += size;
    }
    Py_DECREF(seq);
    PyMem_Free(c->parts);
    c->parts = parts;
    c->nparts = (size_t)n;
    Py_RETURN_NONE;
}

/* Where in the active block a record of len bytes goes (padding to the next page when it
 * does not fit in the rest of this one); 0 if the block has no room. */
uint64_t place_record(Core *c, Block *b, uint64_t len, uint64_t *pad_at, uint64_t *pad_len) {
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
void write_pad(Core *c, uint64_t at, uint64_t len) {
    if (len < VD_RECORD_HEADER_SIZE) return; /* recovery skips a page tail shorter than a header */
    write_record(c, at, VD_KIND_PAD, c->next_seq, NULL, 0, NULL, len - VD_RECORD_HEADER_SIZE);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* A new block's constructor zeroes its 4 MiB log: a first store into each page of space the
 * file system has not written yet is a page fault (ext4 allocates or converts the block), and
 * 1,024 of them made the one put that added a block take 5-30 ms. While the pool grows,
 * libpmemobj's allocator puts the next block right after the last one (the heap is filled
 * from the front), so that space is faulted in ahead of need: a step each time the active
 * block's end passes one (fault_ahead, from the appends), or at once after a jumbo block (a
 * batch of update(), which a standard block often follows). MADV_POPULATE_WRITE faults pages
 * in writable without changing a byte, so a wrong guess (the space is another object's, or
 * is never taken) costs a write-back of the same bytes, never data. Where the kernel refuses
 * (older than 5.14, or no space to back the pages) the faulting stops until the next block,
 * and the constructor's zeroing faults the pages in as before. */
#define AHEAD_STEP (64u << 10)
/* libpmemobj gives a large object whole chunks of 256 KiB: the next object starts at the
 * next chunk, up to this much after a jumbo block's end (a standard block fills its chunks) */
#define PMEMOBJ_CHUNK (256u << 10)

/* Fault [from, to) in, as far as the pool is mapped: how far it got, or 0 if refused.
 * MADV_WILLNEED first reads exactly the range into the page cache (space never written
 * reads as zeros, without I/O): a fault on a page that is not cached reads around it, a
 * whole read-ahead window (8 MiB here), and at 100M records, with the page cache full,
 * that took 18 ms of one put every two blocks. */
static uint64_t populate(Core *c, uint64_t from, uint64_t to) {
    uint64_t mapped = c->mapped & ~(uint64_t)(VD_PAGE_SIZE - 1);
    if (to > mapped) to = mapped;
    if (to <= from) return from;
    (void)madvise(c->base + from, (size_t)(to - from), MADV_WILLNEED);
    return madvise(c->base + from, (size_t)(to - from), MADV_POPULATE_WRITE) == 0 ? to : 0;
}

void fault_ahead_start(Core *c, const Block *b) {
    c->ahead_from = c->ahead_done = c->ahead_end = 0;
    /* only after the last block: elsewhere the space after it is most likely another
     * block's, whose pages a fault-in would only make dirty again */
    if (b != &c->blocks[c->nblocks - 1]) return;
    uint64_t from = (b->off + b->size) & ~(uint64_t)(VD_PAGE_SIZE - 1);
    c->ahead_from = c->ahead_done = from;
    c->ahead_end = from + VD_BLOCK_SIZE + VD_PAGE_SIZE;
    if (b->type == VD_TYPE_JUMBO_BLOCK) {
        c->ahead_end += PMEMOBJ_CHUNK;
        (void)populate(c, from, c->ahead_end);
        c->ahead_done = c->ahead_end; /* no appends follow to go on with it */
    }
}

static void fault_ahead(Core *c, const Block *b) {
    /* as far into the next block as the appends are into this one, a step ahead */
    uint64_t want = (c->ahead_from + (b->end - b->off) + AHEAD_STEP) & ~(uint64_t)(VD_PAGE_SIZE - 1);
    if (want > c->ahead_end) want = c->ahead_end;
    if (want < c->ahead_done + AHEAD_STEP && want < c->ahead_end) return;
    uint64_t got = populate(c, c->ahead_done, want);
    /* refused: stop until the next block; short of want: the pool ends there for now */
    c->ahead_done = got ? got : c->ahead_end;
}

/* Append a record to the active block and point the index at it. */
int append_record(Core *c, unsigned kind, const uint8_t *key, uint64_t klen, const uint8_t *val,
                         uint64_t vlen, uint64_t *out_off) {
    uint64_t len = record_len_for(klen, vlen);
    if (len > VD_INLINE_MAX) {
        c->jumbo_need = VD_BLOCK_HEADER_SIZE + align_up(len, VD_RECORD_ALIGN);
        return RC_NEED_JUMBO;
    }
    if (c->active < 0) return RC_NEED_BLOCK;
    Block *b = &c->blocks[c->active];
    uint64_t pad_at = 0, pad_len = 0;
    uint64_t alen = align_up(len, VD_RECORD_ALIGN);
    uint64_t pos = place_record(c, b, alen, &pad_at, &pad_len);
    if (pos == 0) return RC_NEED_BLOCK;
    uint64_t from = pad_len ? pad_at : pos;
    stage_begin(c, from, pos + len - from);
    if (pad_len) write_pad(c, pad_at, pad_len);
    if (!b->seq_min) b->seq_min = c->next_seq;
    write_record(c, pos, kind, c->next_seq++, key, klen, val, vlen);
    stage_commit(c);
    persist_range(c, from, pos + len - from);
    b->end = pos + alen;
    b->seq_max = c->next_seq - 1;
    shared_publish_end(c, b);
    if (c->ahead_done < c->ahead_end) fault_ahead(c, b);
    *out_off = pos;
    return RC_DONE;
}

int check_block_bounds(Core *c, uint64_t off, uint64_t usable) {
    if (off == 0 || off % 8 || usable < VD_BLOCK_HEADER_SIZE + VD_RECORD_HEADER_SIZE || off > c->mapped ||
        usable > c->mapped - off) {
        return core_error(ERR_BLOCK_OUTSIDE, (unsigned long long)off, (unsigned long long)usable,
                          (unsigned long long)c->mapped);
    }
    return 0;
}

/* ------------------------------------------------------------------ block headers */

/* 1 and *h filled if the bytes at p are a block header that verifies (magic and CRC), else 0.
 * The fields may still be impossible for the object: the callers check them. */
int header_read(const uint8_t *p, VdBlockHeader *h) {
    memcpy(h, p, sizeof *h);
    return h->magic == VD_BLOCK_MAGIC && h->crc == block_header_crc(p);
}

/* Is a verified header possible for an object of usable bytes (of the expected type, if
 * type is not 0)? */
int header_fits(const VdBlockHeader *h, uint64_t usable, unsigned type) {
    return (h->type == VD_TYPE_STANDARD_BLOCK || h->type == VD_TYPE_JUMBO_BLOCK) && (!type || h->type == type) &&
           h->size <= usable && h->log_start >= VD_BLOCK_HEADER_SIZE && h->log_start <= h->size &&
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
int block_constructor(void *pop, void *ptr, void *arg) {
    VdBlockInit a;
    memcpy(&a, arg, sizeof a);
    pmemobj_persist_fn persist = (pmemobj_persist_fn)(uintptr_t)a.persist;
    uint8_t *p = ptr;
    if (a.flags & VD_INIT_ZERO) {
        memset(p, 0, a.size);
        persist(pop, p, a.size);
    }
    if (a.type == VD_TYPE_RESERVE) {
        memset(p, 0, VD_BLOCK_HEADER_SIZE);
        persist(pop, p, VD_BLOCK_HEADER_SIZE);
        crash_point("reserve header zeroed");
        return 0;
    }
    uint64_t off = (uint64_t)(p - (uint8_t *)pop);
    int standard = a.type == VD_TYPE_STANDARD_BLOCK;
    uint64_t size = standard && a.size > VD_BLOCK_SIZE ? VD_BLOCK_SIZE : a.size;
    uint64_t ls = standard ? align_up(off + VD_BLOCK_HEADER_SIZE, VD_PAGE_SIZE) : off + VD_BLOCK_HEADER_SIZE;
    uint64_t zero_len = 0;
    if (ls < off + size) zero_len = standard ? off + size - ls : VD_RECORD_HEADER_SIZE;
    if (zero_len > off + size - ls) zero_len = off + size - ls;
    memset(p + (ls - off), 0, zero_len);
    if ((a.flags & VD_INIT_PERSIST_LOG) && zero_len) persist(pop, p + (ls - off), zero_len);
    crash_point(standard ? "standard block log zeroed" : "jumbo block first record header zeroed");
    /* the magic last: until it is stored, whatever the rest holds is not a block header */
    VdBlockHeader h = {
        .version = VD_FORMAT_VERSION, .type = a.type, .size = size, .log_start = ls - off, .birth = a.birth};
    h.crc = block_header_crc((const uint8_t *)&h);
    memset(p, 0, VD_BLOCK_HEADER_SIZE);
    memcpy(p + offsetof(VdBlockHeader, crc), &h.crc, sizeof h - offsetof(VdBlockHeader, crc));
    __atomic_store_n((uint32_t *)(p + offsetof(VdBlockHeader, magic)), VD_BLOCK_MAGIC, __ATOMIC_RELEASE);
    persist(pop, p, VD_BLOCK_HEADER_SIZE);
    crash_point(standard ? "standard block header written" : "jumbo block header written");
    return 0;
}

/* block_init(type, size, persist_address, zero=False) -> bytes: the constructor's argument
 * for a new object of type (TYPE_* of FORMAT) and size bytes, born now. */
PyObject *Core_block_init(Core *c, PyObject *args) {
    unsigned int type;
    unsigned long long size, persist;
    int zero = 0;
    if (!PyArg_ParseTuple(args, "IKK|p", &type, &size, &persist, &zero)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    if ((type != VD_TYPE_STANDARD_BLOCK && type != VD_TYPE_JUMBO_BLOCK && type != VD_TYPE_RESERVE) || persist == 0 ||
        size < VD_BLOCK_HEADER_SIZE + VD_RECORD_HEADER_SIZE) {
        internal_error("block_init(): unknown type, a size below a header, or no persist function");
        return NULL;
    }
    VdBlockInit a = {0};
    a.persist = persist;
    a.birth = c->next_seq;
    a.size = size;
    a.type = type;
    a.flags = (zero ? VD_INIT_ZERO : 0) | (c->persist_mode == PERSIST_FUNC ? VD_INIT_PERSIST_LOG : 0);
    return PyBytes_FromStringAndSize((const char *)&a, sizeof a);
}

/* The block that the constructor has just made at off, from its header: 0, or -1 with an
 * exception set if there is none (the object was not made by block_constructor). */
int block_from_header(Core *c, uint64_t off, uint64_t usable, unsigned type, Block *b) {
    VdBlockHeader h;
    if (!header_read(c->base + off, &h) || h.version != VD_FORMAT_VERSION || !header_fits(&h, usable, type) ||
        h.birth == 0 || h.birth > c->next_seq) {
        return core_error(ERR_BLOCK_NOT_NEW, (unsigned long long)off);
    }
    memset(b, 0, sizeof *b);
    b->off = off;
    b->size = h.size;
    b->type = type;
    b->log_start = off + h.log_start;
    b->end = b->log_start;
    b->birth = h.birth;
    return 0;
}

/* block_header(off, usable) -> (type, birth), or None if the object holds no valid block
 * header (the engine asks this of an object typed as the reserve). */
PyObject *Core_block_header(Core *c, PyObject *args) {
    unsigned long long off, usable;
    if (!PyArg_ParseTuple(args, "KK", &off, &usable)) return NULL;
    if (core_check_open(c) < 0 || check_block_bounds(c, off, usable) < 0) return NULL;
    VdBlockHeader h;
    if (!header_read(c->base + off, &h) || h.version != VD_FORMAT_VERSION || !header_fits(&h, usable, 0))
        Py_RETURN_NONE;
    return Py_BuildValue("(IK)", h.type, (unsigned long long)h.birth);
}


/* add_block(off, usable_size) -> RC_DONE: a new standard block (made by block_constructor)
 * becomes the active block; reclaim_due is raised if the block it replaces is entirely dead */
PyObject *Core_add_block(Core *c, PyObject *args) {
    unsigned long long off, usable;
    if (!PyArg_ParseTuple(args, "KK", &off, &usable)) return NULL;
    if (core_check_open(c) < 0 || check_block_bounds(c, off, usable) < 0) return NULL;
    if (c->io_errno) return core_io_refuse(c, 0), NULL;
    /* its header and zeroed log were written by block_constructor inside the allocation */
    Block b;
    if (block_from_header(c, off, usable, VD_TYPE_STANDARD_BLOCK, &b) < 0) return NULL;
    Py_ssize_t prev = c->active;
    uint64_t prev_off = prev >= 0 ? c->blocks[prev].off : 0;
    Py_ssize_t i = block_insert(c, &b);
    if (i < 0) return NULL;
    c->active = i;
    fault_ahead_start(c, &c->blocks[i]);
    shared_add(c, &c->blocks[i]);
    shared_set_active(c);
    /* the block we leave may already be entirely dead */
    if (prev >= 0) {
        Py_ssize_t pi = block_find(c, prev_off);
        if (pi >= 0 && c->blocks[pi].live == 0 && c->blocks[pi].tombstones == 0) c->reclaim_due = 1;
    }
    return PyLong_FromLong(RC_DONE);
}

/* Write the one record of a new jumbo block (made by block_constructor at joff, jsize
 * usable bytes) and register the block: its index in blocks[] (*out_off: the record), or -1
 * with an exception set, nothing written. */
Py_ssize_t write_jumbo(Core *c, unsigned kind, uint64_t joff, uint64_t jsize, const uint8_t *key, uint64_t klen,
                       const uint8_t *val, uint64_t vlen, uint64_t *out_off) {
    uint64_t len = record_len_for(klen, vlen);
    Block b;
    if (block_from_header(c, joff, jsize, VD_TYPE_JUMBO_BLOCK, &b) < 0) return -1;
    if (b.log_start + len > b.off + b.size) return internal_error("jumbo block too small for the record");
    if (block_insert(c, &b) < 0) return -1;
    uint64_t off = b.log_start;
    write_record(c, off, kind, c->next_seq++, key, klen, val, vlen);
    persist_range(c, off, len);
    Py_ssize_t bi = block_find(c, off);
    c->blocks[bi].end = off + align_up(len, VD_RECORD_ALIGN);
    c->blocks[bi].seq_max = c->blocks[bi].seq_min = c->next_seq - 1;
    /* published whole, once its record is complete */
    shared_add(c, &c->blocks[bi]);
    shared_publish_end(c, &c->blocks[bi]);
    fault_ahead_start(c, &c->blocks[bi]);
    *out_off = off;
    return bi;
}

int do_put(Core *c, const uint8_t *key, uint64_t klen, const uint8_t *val, uint64_t vlen, uint64_t jumbo_off,
                  uint64_t jumbo_size) {
    if (klen > VD_MAX_KEY || vlen > VD_MAX_VALUE) {
        return core_error(ERR_TOO_LARGE);
    }
    uint64_t h = key_hash(key, klen);
    if (index_reserve(c, h) < 0) return -1;
    uint64_t off;
    if (jumbo_off) {
        if (write_jumbo(c, VD_KIND_PUT, jumbo_off, jumbo_size, key, klen, val, vlen, &off) < 0) return -1;
    } else {
        int rc = append_record(c, VD_KIND_PUT, key, klen, val, vlen, &off);
        if (rc != RC_DONE) return rc;
    }
    uint64_t alen = align_up(record_len_for(klen, vlen), VD_RECORD_ALIGN);
    Py_ssize_t bi = jumbo_off ? block_find(c, off) : c->active;
    c->blocks[bi].live++;
    c->blocks[bi].live_bytes += alen;
    IndexRef at;
    int freeable = 0;
    if (index_lookup(c, key, klen, h, &at)) {
        uint64_t old = slot_off(c, *at.slot);
        Rec r;
        rec_parse(c->base + old, &r);
        freeable = account_dead(c, old, align_up(r.total, VD_RECORD_ALIGN));
        *at.slot = slot_make(c, h, off);
    } else {
        index_insert(c, &at, slot_make(c, h, off));
    }
    crash_point("put: index updated");
    return after_write(c, freeable);
}

/* freeable() -> [(offset, seq_max, size)] of the blocks that hold no live record and no tombstone */
PyObject *Core_freeable(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0) return NULL;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (size_t i = 0; i < c->nblocks; i++) {
        Block *b = &c->blocks[i];
        if ((Py_ssize_t)i == c->active || b->live || b->tombstones || b->retired) continue;
        if (list_append_new(out, Py_BuildValue("(KKK)", (unsigned long long)b->off, (unsigned long long)b->seq_max,
                                    (unsigned long long)b->size)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* drop_block(off): forget a block that Python has just freed in the pool */
PyObject *Core_drop_block(Core *c, PyObject *arg) {
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
    shared_clear(c, &c->blocks[i]);
    memmove(&c->blocks[i], &c->blocks[i + 1], (c->nblocks - (size_t)i - 1) * sizeof(Block));
    c->nblocks--;
    if (c->active > i) c->active--;
    Py_RETURN_NONE;
}
