/* Live readers: the readers file (vipercore.h, VdReadersHeader), which the writer publishes
 * into and readers in other processes follow, so that readers and the writer run at the same
 * time (as LMDB's reader table and SQLite's wal-index let them).
 *
 * What the writer publishes, in this order (each a plain store, release ordered):
 *   - a new block: its entry's fields, then its stamp, then table_used and table_gen;
 *   - a record: its bytes and its checksum (log.c), then its block entry's end, then
 *     max_seq, then commit. A record is acknowledged only after that, so every acknowledged
 *     write is visible to a reader that loads commit afterwards;
 *   - a freed block: its entry's retired = the next commit, then commit. The block stays in
 *     the pool (and in the core's blocks, so that recovery and compaction see it as on the
 *     media) until every live reader's pin is at least that commit; then its entry is
 *     cleared and the engine frees it (viperdbm/_space.py, HeldBlocks).
 *
 * What a reader does before each operation (reader_sync in core.h): load commit; if it
 * changed, catch up: load max_seq (M) and table_gen; read every entry (or, if table_gen did
 * not change, only the active one) from where it last stopped up to the entry's end,
 * applying the records up to M in any order (the newest sequence number of a key wins;
 * deletes are kept as tombstones until the end of the catch-up, so an older put read later
 * loses to them); then store the commit it started from as its pin. Every record up to M
 * was published before M, so the reader sees all of them. It skips blocks retired at or
 * before that commit: whatever they held was superseded by records up to M. And the blocks
 * it read cannot be freed meanwhile: its pin is older than their retirement.
 *
 * Everything read from the file is bounds-checked before use, and every record is verified
 * (lengths, checksum) as recovery verifies it: a damaged or hostile readers file can make a
 * reader miss records, never read outside its mapping.
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOAD(field) __atomic_load_n(&(field), __ATOMIC_ACQUIRE)
#define STORE(field, value) __atomic_store_n(&(field), (value), __ATOMIC_RELEASE)

static inline VdReadersHeader *header_of(uint8_t *m) { return (VdReadersHeader *)m; }
static inline VdReaderSlot *slot_of(uint8_t *m, uint64_t i) {
    return (VdReaderSlot *)(m + VD_READERS_SLOTS_AT + i * sizeof(VdReaderSlot));
}
static inline VdReadersBlock *entry_of(uint8_t *m, uint64_t i) {
    return (VdReadersBlock *)(m + VD_READERS_BLOCKS_AT + i * sizeof(VdReadersBlock));
}
static inline uint64_t slot_file_offset(uint64_t i) { return VD_READERS_SLOTS_AT + i * sizeof(VdReaderSlot); }

/* ------------------------------------------------------------------ the file */

/* Grow the file to its full size (sparse: only the pages touched take space). */
static int readers_file_size(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    if ((uint64_t)st.st_size < VD_READERS_FILE_SIZE && ftruncate(fd, (off_t)VD_READERS_FILE_SIZE) != 0) return -1;
    return 0;
}

static uint8_t *readers_map(int fd) {
    if (readers_file_size(fd) != 0) return NULL;
    void *m = mmap(NULL, VD_READERS_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return m == MAP_FAILED ? NULL : (uint8_t *)m;
}

static int header_valid(const VdReadersHeader *h, uint64_t pool_id) {
    return memcmp(h->magic, VD_READERS_MAGIC, sizeof h->magic) == 0 && h->version == VD_READERS_VERSION &&
           h->reader_slots == VD_READER_SLOTS && h->block_entries == VD_READERS_BLOCKS &&
           (pool_id == 0 || h->pool_id == pool_id);
}

/* Entries the writer keeps allocated ahead of the table's use (a page's worth and more):
 * the blocks a delete on a full disk may need find theirs without asking for space. */
#define READY_AHEAD 128u

/* Have the file system allocate the readers file from its start to the end of block entry
 * `want` (its header and every slot included) before anything is stored there through the
 * mapping. The file is sparse, and a store into a hole needs a block at the page fault: on a
 * full disk that is a SIGBUS, where fallocate fails cleanly with ENOSPC. The page cache may
 * hold the file in large folios (ext4 since Linux 6.16, xfs), and a write fault on any page
 * of a folio takes space for every hole it spans, so the allocation is whole regions of the
 * largest folio (2 MiB: PMD order on x86-64): a store into an allocated page then never needs
 * a block. (A read() of the file, by a backup say, is what makes such folios.) If fallocate
 * fails, what the file has allocated may still cover the entries up to `need` (it is always
 * allocated from its start: an earlier reservation): then that is enough. -1 with errno set. */
#define LARGEST_FOLIO (2u << 20)
static uint64_t entries_end(uint64_t entries) {
    uint64_t end = align_up(VD_READERS_BLOCKS_AT + entries * sizeof(VdReadersBlock), LARGEST_FOLIO);
    return end > VD_READERS_FILE_SIZE ? VD_READERS_FILE_SIZE : end;
}

/* fallocate the readers file's first `end` bytes: 0, 1 where the file system cannot (then
 * stores take their chance, as before there was this), -1 with errno set */
static int allocate_start(int fd, uint64_t end) {
    if (fallocate(fd, 0, 0, (off_t)end) == 0) return 0;
    return errno == EOPNOTSUPP || errno == ENOSYS ? 1 : -1;
}

static int shared_reserve(Core *c, int fd, uint64_t want, uint64_t need) {
    if (want > VD_READERS_BLOCKS) want = VD_READERS_BLOCKS;
    if (need > want) need = want;
    if (c->shared_ready && want <= c->shared_ready) return 0;
    uint64_t end = entries_end(want);
    int done = allocate_start(fd, end);
    if (done >= 0) {
        c->shared_ready = done ? VD_READERS_BLOCKS : (end - VD_READERS_BLOCKS_AT) / sizeof(VdReadersBlock);
        return 0;
    }
    int saved = errno;
    struct stat st;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_blocks * 512 >= entries_end(need)) {
        uint64_t have = (uint64_t)st.st_blocks * 512;
        c->shared_ready = have > VD_READERS_BLOCKS_AT ? (have - VD_READERS_BLOCKS_AT) / sizeof(VdReadersBlock) : 0;
        if (c->shared_ready < need) c->shared_ready = need;
        return 0;
    }
    errno = saved;
    return -1;
}

/* readers_room(): before the engine allocates a block, make sure the entry it will take in
 * the readers file is allocated (OSError ENOSPC otherwise, and no block is allocated). It
 * reserves READY_AHEAD entries past the table's end when it can. */
PyObject *Core_readers_room(Core *c, PyObject *unused) {
    (void)unused;
    if (c->shared_role != SHARED_WRITER) Py_RETURN_NONE;
    uint64_t used = header_of(c->shared)->table_used;
    if (used + READY_AHEAD <= c->shared_ready) Py_RETURN_NONE;
    uint64_t need = c->nfree_entries ? 0 : used + 1; /* a free entry is below the table's end */
    if (shared_reserve(c, c->shared_fd, used + READY_AHEAD, need) == 0 || need <= c->shared_ready)
        Py_RETURN_NONE;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* An open-file-description lock on a slot's first byte: cmd F_OFD_SETLK (type F_WRLCK or
 * F_UNLCK) or F_OFD_GETLK. The kernel releases it when the last descriptor of that open
 * file goes, so a reader that dies frees its slot however it dies. */
static int slot_lock(int fd, uint64_t slot, int cmd, short type, struct flock *out) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)slot_file_offset(slot);
    fl.l_len = 1;
    int rc = fcntl(fd, cmd, &fl);
    if (out) *out = fl;
    return rc;
}

/* The header's barred_by, read and written with pread/pwrite: coherent with every mapping
 * of the file, and (unlike a store through one) never a SIGBUS on a full disk. */
static int barred_by_read(int fd, uint64_t *pid) {
    *pid = 0;
    ssize_t n = pread(fd, pid, sizeof *pid, (off_t)offsetof(VdReadersHeader, barred_by));
    return n < 0 ? -1 : 0; /* (a short read: a file no writer made yet, not barred) */
}
static int barred_by_write(int fd, uint64_t pid) {
    ssize_t n = pwrite(fd, &pid, sizeof pid, (off_t)offsetof(VdReadersHeader, barred_by));
    if (n == (ssize_t)sizeof pid) return 0;
    if (n >= 0) errno = EIO;
    return -1;
}

/* Does any live reader hold a slot? (one lock test over them all) 1, 0, or -1 */
static int any_reader_live(int fd) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)VD_READERS_SLOTS_AT;
    fl.l_len = (off_t)(VD_READER_SLOTS * sizeof(VdReaderSlot));
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return -1;
    return fl.l_type != F_UNLCK;
}

/* readers_claim(fd, stale_bar=0) -> slot: a free reader slot, locked by this open file; its pin
 * is 0 (it holds every block) until the reader's first catch-up. -1: every slot is taken. -2:
 * a writer bars new readers (barred_by, other than stale_bar: one the caller found dead),
 * because it is about to swap another store in at this store's path; the slot is given back.
 *
 * The bar against a reader that joins at the last moment (readers_bar): the reader locks and
 * writes its slot, then reads barred_by; the writer writes barred_by, then tests the slots'
 * locks. Each side's second step is a system call after a full fence, so at least one of them
 * sees the other: the writer does not swap, or the reader lets go and opens the path again. */
PyObject *mod_readers_claim(PyObject *mod, PyObject *args) {
    (void)mod;
    int fd;
    unsigned long long stale_bar = 0;
    if (!PyArg_ParseTuple(args, "i|K", &fd, &stale_bar)) return NULL;
    if (readers_file_size(fd) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    /* the slots' region, as the writer allocates it (shared_reserve): a reader stores its pin
     * through its mapping. A writer of this version has done so already (then this allocates
     * nothing); ENOSPC here makes the reader keep writers out instead (_readers.py). */
    struct stat st;
    if (fstat(fd, &st) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    if ((uint64_t)st.st_blocks * 512 < entries_end(0) && allocate_start(fd, entries_end(0)) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    for (uint64_t i = 0; i < VD_READER_SLOTS; i++) {
        if (slot_lock(fd, i, F_OFD_SETLK, F_WRLCK, NULL) != 0) {
            if (errno == EAGAIN || errno == EACCES) continue; /* a live reader's */
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        VdReaderSlot s;
        memset(&s, 0, sizeof s);
        s.pid = (uint64_t)getpid();
        /* pwrite is coherent with every mapping of the file, and a system call: the writer
         * sees the slot before this reader reads anything it could free */
        uint64_t bar = 0;
        int failed = pwrite(fd, &s, sizeof s, (off_t)slot_file_offset(i)) != (ssize_t)sizeof s;
        if (!failed) {
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            failed = barred_by_read(fd, &bar) != 0;
        }
        if (failed || (bar && bar != stale_bar)) {
            int saved = failed ? (errno ? errno : EIO) : 0;
            memset(&s, 0, sizeof s);
            (void)pwrite(fd, &s, sizeof s, (off_t)slot_file_offset(i));
            slot_lock(fd, i, F_OFD_SETLK, F_UNLCK, NULL);
            if (!failed) return PyLong_FromLong(-2);
            errno = saved;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return PyLong_FromUnsignedLongLong(i);
    }
    return PyLong_FromLong(-1); /* every slot is taken */
}

/* readers_barred_by(fd) -> the process id that bars new readers (0: none) */
PyObject *mod_readers_barred_by(PyObject *mod, PyObject *arg) {
    (void)mod;
    int fd;
    if (!PyArg_Parse(arg, "i", &fd)) return NULL;
    uint64_t pid;
    if (barred_by_read(fd, &pid) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromUnsignedLongLong(pid);
}

/* readers_bar(fd) -> bool: bar new readers from this store (this process's id in barred_by)
 * before another store is swapped in at its path; False, with the bar lifted again, if a
 * live reader holds a slot (see readers_claim for why neither side can miss the other). */
PyObject *mod_readers_bar(PyObject *mod, PyObject *arg) {
    (void)mod;
    int fd;
    if (!PyArg_Parse(arg, "i", &fd)) return NULL;
    if (readers_file_size(fd) != 0 || barred_by_write(fd, (uint64_t)getpid()) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int live = any_reader_live(fd);
    if (live != 0) {
        int saved = errno;
        (void)barred_by_write(fd, 0);
        if (live < 0) {
            errno = saved;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* readers_unbar(fd): lift the bar (the swap did not happen) */
PyObject *mod_readers_unbar(PyObject *mod, PyObject *arg) {
    (void)mod;
    int fd;
    if (!PyArg_Parse(arg, "i", &fd)) return NULL;
    if (barred_by_write(fd, 0) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* readers_release(fd, slot): free the slot (the caller then closes fd, which drops the lock) */
PyObject *mod_readers_release(PyObject *mod, PyObject *args) {
    (void)mod;
    int fd;
    unsigned long long slot;
    if (!PyArg_ParseTuple(args, "iK", &fd, &slot)) return NULL;
    if (slot >= VD_READER_SLOTS) return PyErr_Format(PyExc_ValueError, "no reader slot %llu", slot);
    VdReaderSlot s;
    memset(&s, 0, sizeof s);
    if (pwrite(fd, &s, sizeof s, (off_t)slot_file_offset(slot)) != (ssize_t)sizeof s)
        return PyErr_SetFromErrno(PyExc_OSError);
    slot_lock(fd, slot, F_OFD_SETLK, F_UNLCK, NULL);
    Py_RETURN_NONE;
}

/* readers_header(fd) -> None, or (pool_id, root_off, mapped, writer_pid, commit, table_gen) of
 * a valid header */
PyObject *mod_readers_header(PyObject *mod, PyObject *arg) {
    (void)mod;
    int fd;
    if (!PyArg_Parse(arg, "i", &fd)) return NULL;
    VdReadersHeader h;
    ssize_t n = pread(fd, &h, sizeof h, 0);
    if (n < 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (n != (ssize_t)sizeof h || !header_valid(&h, 0)) Py_RETURN_NONE;
    return Py_BuildValue("(KKKKKK)", (unsigned long long)h.pool_id, (unsigned long long)h.root_off,
                         (unsigned long long)h.mapped, (unsigned long long)h.writer_pid,
                         (unsigned long long)h.commit, (unsigned long long)h.table_gen);
}

/* readers_live(fd) -> bool: does any live reader hold a slot? */
PyObject *mod_readers_live(PyObject *mod, PyObject *arg) {
    (void)mod;
    int fd;
    if (!PyArg_Parse(arg, "i", &fd)) return NULL;
    int live = any_reader_live(fd);
    if (live < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(live);
}

/* ------------------------------------------------------------------ the writer */

static void bump(uint64_t *field) { STORE(*field, *field + 1); }

static int free_entry_push(Core *c, uint64_t e) {
    if (c->nfree_entries == c->free_entries_cap) {
        size_t ncap = c->free_entries_cap ? c->free_entries_cap * 2 : 256;
        uint64_t *n = PyMem_Realloc(c->free_entries, ncap * sizeof *n);
        if (!n) return -1;
        c->free_entries = n;
        c->free_entries_cap = ncap;
    }
    c->free_entries[c->nfree_entries++] = e;
    return 0;
}

/* Publish a block the core has just registered (its entry holds its current end). A table
 * that is full publishes nothing more: readers then miss the block's records, so the engine
 * never lets it fill (VD_READERS_BLOCKS is far above any pool's block count). */
void shared_add(Core *c, Block *b) {
    if (c->shared_role != SHARED_WRITER || b->entry_plus1) return;
    VdReadersHeader *h = header_of(c->shared);
    uint64_t e;
    if (c->nfree_entries)
        e = c->free_entries[--c->nfree_entries];
    else if (h->table_used < VD_READERS_BLOCKS)
        e = h->table_used;
    else
        return;
    VdReadersBlock *en = entry_of(c->shared, e);
    uint64_t stamp = h->commit + 1;
    STORE(en->stamp, 0);
    en->off = b->off;
    en->size = b->size;
    en->birth = b->birth;
    en->type = b->type;
    en->retired = 0;
    STORE(en->end, b->end);
    STORE(en->stamp, stamp);
    if (e >= h->table_used) STORE(h->table_used, e + 1);
    b->entry_plus1 = e + 1;
    bump(&h->table_gen);
    STORE(h->commit, stamp);
}

/* After a record was appended to b (and made as durable as the store promises). */
void shared_publish_end(Core *c, const Block *b) {
    if (c->shared_role != SHARED_WRITER || !b->entry_plus1) return;
    VdReadersHeader *h = header_of(c->shared);
    STORE(entry_of(c->shared, b->entry_plus1 - 1)->end, b->end);
    STORE(h->max_seq, c->next_seq - 1);
    bump(&h->commit);
}

/* The active block changed: a reader that only follows the active block must look again. */
void shared_set_active(Core *c) {
    if (c->shared_role != SHARED_WRITER) return;
    VdReadersHeader *h = header_of(c->shared);
    uint64_t e = c->active >= 0 && c->blocks[c->active].entry_plus1 ? c->blocks[c->active].entry_plus1 - 1
                                                                       : VD_NO_ENTRY;
    STORE(h->active_entry, e);
    bump(&h->table_gen);
    bump(&h->commit);
}

/* reorganize() moved the floor: every older record is dead, and the deletes among them are
 * not copied forward, so a reader must drop what it holds below the floor itself. Published
 * before the old blocks are retired. */
void shared_set_floor(Core *c) {
    if (c->shared_role != SHARED_WRITER) return;
    VdReadersHeader *h = header_of(c->shared);
    STORE(h->seq_floor, c->floor);
    bump(&h->commit);
}

void shared_set_mapped(Core *c) {
    if (c->shared_role != SHARED_WRITER) return;
    VdReadersHeader *h = header_of(c->shared);
    STORE(h->mapped, c->mapped);
    bump(&h->commit);
}

/* The block is about to be freed (every reader is past its retirement): clear its entry. */
void shared_clear(Core *c, Block *b) {
    if (c->shared_role != SHARED_WRITER || !b->entry_plus1) return;
    VdReadersHeader *h = header_of(c->shared);
    uint64_t e = b->entry_plus1 - 1;
    STORE(entry_of(c->shared, e)->stamp, 0);
    b->entry_plus1 = 0;
    if (free_entry_push(c, e) < 0) PyErr_Clear(); /* the entry is lost for reuse, nothing else */
    bump(&h->table_gen);
    bump(&h->commit);
}

void shared_detach(Core *c) {
    if (c->shared_role == SHARED_WRITER) STORE(header_of(c->shared)->writer_pid, 0);
    if (c->shared) munmap(c->shared, VD_READERS_FILE_SIZE);
    c->shared = NULL;
    c->shared_role = SHARED_NONE;
    c->shared_fd = -1;
    Py_CLEAR(c->remap);
    PyMem_Free(c->rblocks);
    c->rblocks = NULL;
    c->nrblocks = c->rblocks_cap = 0;
    PyMem_Free(c->free_entries);
    c->free_entries = NULL;
    c->nfree_entries = c->free_entries_cap = 0;
    c->shared_ready = 0;
}

/* attach_writer(fd, pool_id, root_off): publish into the readers file from now on. Called after the
 * recovery scan. A valid file (the previous writer's, whose readers may still be reading)
 * is adopted: entries of blocks the recovery found keep their place (a reader goes on from
 * where it stopped in them), the others are cleared, new blocks are added. Anything else is
 * made anew, its commit above every pin a reader could hold. */
PyObject *Core_attach_writer(Core *c, PyObject *args) {
    int fd;
    unsigned long long pool_id, root_off;
    if (!PyArg_ParseTuple(args, "iKK", &fd, &pool_id, &root_off)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    if (c->shared) return internal_error("the readers file is attached already"), NULL;
    uint8_t *m = readers_map(fd);
    if (!m) return PyErr_SetFromErrno(PyExc_OSError);
    c->shared_ready = 0;
    if (shared_reserve(c, fd, 0, 0) != 0) { /* the header and the slots, before any store */
        int saved = errno;
        munmap(m, VD_READERS_FILE_SIZE);
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    VdReadersHeader *h = header_of(m);
    if (!header_valid(h, pool_id)) {
        uint64_t top = 0;
        for (uint64_t i = 0; i < VD_READER_SLOTS; i++) {
            uint64_t pin = LOAD(slot_of(m, i)->pin);
            if (pin > top) top = pin;
        }
        memset(h->magic, 0, sizeof h->magic);
        /* zero the entries a reader could read (those below table_used, reset below; an
         * entry is written whole before it is used again) by stores, but only inside what
         * shared_reserve allocated: beyond it a store could meet a hole. What lies beyond goes
         * back to the file system as a hole (reading as zeros in every mapping at once). */
        uint64_t kept = VD_READERS_BLOCKS_AT + c->shared_ready * sizeof(VdReadersBlock);
        if (kept > VD_READERS_FILE_SIZE) kept = VD_READERS_FILE_SIZE;
        uint64_t used = h->table_used < VD_READERS_BLOCKS ? h->table_used : VD_READERS_BLOCKS;
        uint64_t used_end = VD_READERS_BLOCKS_AT + used * sizeof(VdReadersBlock);
        memset(m + VD_READERS_BLOCKS_AT, 0, (size_t)((used_end < kept ? used_end : kept) - VD_READERS_BLOCKS_AT));
        if (kept < VD_READERS_FILE_SIZE)
            (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)kept,
                            (off_t)(VD_READERS_FILE_SIZE - kept));
        h->version = VD_READERS_VERSION;
        h->reader_slots = VD_READER_SLOTS;
        h->block_entries = VD_READERS_BLOCKS;
        h->pool_id = pool_id;
        h->table_used = 0;
        h->max_seq = 0;
        h->table_gen = top + 1;
        STORE(h->commit, top + 1);
        memcpy(h->magic, VD_READERS_MAGIC, sizeof h->magic);
    }
    /* a bar left by a writer that died before its swap (this one holds the store's lock) */
    STORE(h->barred_by, 0);
    /* every entry this writer can take before its next readers_room(): those in use, and
     * one for each block the recovery found */
    uint64_t in_use = h->table_used < VD_READERS_BLOCKS ? h->table_used : VD_READERS_BLOCKS;
    if (shared_reserve(c, fd, in_use + c->nblocks + READY_AHEAD, in_use + c->nblocks) != 0) {
        int saved = errno;
        munmap(m, VD_READERS_FILE_SIZE);
        c->shared_ready = 0;
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    c->shared = m;
    c->shared_fd = fd;
    c->shared_role = SHARED_WRITER;
    /* what this writer's recovery found, before the first commit makes a reader look: the
     * last writer's may have been higher (records a power cut lost), and a reader takes
     * whatever it sees as read */
    STORE(h->max_seq, c->next_seq - 1);
    STORE(h->seq_floor, c->floor);
    /* adopt what still names a block the recovery found (by offset, birth and size) */
    uint64_t used = h->table_used < VD_READERS_BLOCKS ? h->table_used : VD_READERS_BLOCKS;
    for (uint64_t e = 0; e < used; e++) {
        VdReadersBlock *en = entry_of(m, e);
        Py_ssize_t bi = en->stamp ? block_find(c, en->off) : -1;
        Block *b = bi >= 0 ? &c->blocks[bi] : NULL;
        if (b && b->off == en->off && b->birth == en->birth && b->size == en->size && b->type == en->type &&
            !b->entry_plus1) {
            b->entry_plus1 = e + 1;
            /* as this writer found it: its end (a reader never reads past what it had been
             * published, and applies nothing twice), and live (the last writer may have
             * retired it, and this one may append to it now) */
            STORE(en->end, b->end);
            if (en->retired) STORE(en->retired, 0);
            continue;
        }
        if (en->stamp) STORE(en->stamp, 0);
        if (free_entry_push(c, e) < 0) {
            shared_detach(c);
            return PyErr_NoMemory();
        }
    }
    STORE(h->table_used, used);
    /* the free list is a stack: hand out the lowest entries first */
    for (size_t i = 0, j = c->nfree_entries; i < j / 2; i++) {
        uint64_t t = c->free_entries[i];
        c->free_entries[i] = c->free_entries[j - 1 - i];
        c->free_entries[j - 1 - i] = t;
    }
    for (size_t i = 0; i < c->nblocks; i++) shared_add(c, &c->blocks[i]);
    STORE(h->mapped, c->mapped);
    STORE(h->root_off, root_off);
    STORE(h->writer_pid, (uint64_t)getpid());
    shared_set_active(c);
    Py_RETURN_NONE;
}

/* retire_blocks([off, ...]) -> commit: the engine frees these blocks, together; readers
 * may still read them, so they stay on the media until readers_horizon() is at least the
 * returned commit. Compaction and recovery keep counting them (they are still there for
 * them), nothing appends to them. One commit for all: a reader never sees some of the
 * blocks of a reorganize() gone and others not (the deletes in one may hide puts in
 * another). */
PyObject *Core_retire_blocks(Core *c, PyObject *arg) {
    if (core_check_open(c) < 0) return NULL;
    PyObject *seq = PySequence_Fast(arg, "retire_blocks() takes a list of offsets");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t k = 0; k < n; k++) { /* check them all before retiring any */
        unsigned long long off = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, k));
        Py_ssize_t i = PyErr_Occurred() ? -1 : block_find(c, off);
        if (i < 0 || c->blocks[i].off != off || i == c->active || c->blocks[i].retired) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) internal_error("no block to retire there");
            return NULL;
        }
    }
    int shared = c->shared_role == SHARED_WRITER;
    VdReadersHeader *h = shared ? header_of(c->shared) : NULL;
    uint64_t commit = shared ? h->commit + 1 : 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        Block *b = &c->blocks[block_find(c, PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, k)))];
        b->retired = 1;
        if (shared && b->entry_plus1) STORE(entry_of(c->shared, b->entry_plus1 - 1)->retired, commit);
    }
    Py_DECREF(seq);
    if (shared) {
        bump(&h->table_gen);
        STORE(h->commit, commit);
    }
    /* the retirement before the look at the pins: a reader that registers meanwhile either
     * is seen here or sees the retirement (and then never reads the block) */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return PyLong_FromUnsignedLongLong(commit);
}

/* readers_horizon(check_gone) -> (horizon, readers): every block retired at a commit up to
 * horizon may be freed (None: no reader holds anything); readers: the live readers. With
 * check_gone, the slots of readers that died (no lock on them) are freed first (a system
 * call per reader). */
PyObject *Core_readers_horizon(Core *c, PyObject *arg) {
    int check_gone = PyObject_IsTrue(arg);
    if (check_gone < 0) return NULL;
    if (c->shared_role != SHARED_WRITER) return Py_BuildValue("(Oi)", Py_None, 0);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t horizon = UINT64_MAX;
    int live = 0;
    for (uint64_t i = 0; i < VD_READER_SLOTS; i++) {
        VdReaderSlot *s = slot_of(c->shared, i);
        if (!LOAD(s->pid)) continue;
        if (check_gone && slot_lock(c->shared_fd, i, F_OFD_SETLK, F_WRLCK, NULL) == 0) {
            /* nobody holds it: its reader is gone. Clear it under the lock, so that a reader
             * claiming it now waits for this one */
            STORE(s->pin, 0);
            STORE(s->pid, 0);
            slot_lock(c->shared_fd, i, F_OFD_SETLK, F_UNLCK, NULL);
            continue;
        }
        live++;
        uint64_t pin = LOAD(s->pin);
        if (pin < horizon) horizon = pin;
    }
    if (horizon == UINT64_MAX) return Py_BuildValue("(Oi)", Py_None, live);
    return Py_BuildValue("(Ki)", (unsigned long long)horizon, live);
}

/* ------------------------------------------------------------------ the reader */

/* A reader that opens from the readers file alone: size its index for the live blocks
 * published there at once (about one record per 128 bytes, as the scan at open assumes).
 * Only a hint, read while the writer writes, and never beyond what this reader maps. */
static int presize_for_readers_file(Core *c) {
    const VdReadersHeader *h = header_of(c->shared);
    if (!header_valid(h, 0)) return 0;
    uint64_t used = LOAD(h->table_used), bytes = 0;
    if (used > VD_READERS_BLOCKS) used = VD_READERS_BLOCKS;
    for (uint64_t e = 0; e < used && bytes < c->mapped; e++) {
        VdReadersBlock *en = entry_of(c->shared, e);
        uint64_t size = LOAD(en->size); /* (each term at most mapped: no overflow) */
        if (LOAD(en->stamp) && !LOAD(en->retired)) bytes += size < c->mapped ? size : c->mapped;
    }
    return index_presize(c, (bytes < c->mapped ? bytes : c->mapped) / 128);
}

/* attach_reader(fd, slot, remap, commit=0, table_gen=0): follow the readers file from now on,
 * from the blocks this core scanned at open (each read up to its end). remap(needed) must map
 * at least needed bytes of the pool and hand them over with set_base(). commit and
 * table_gen: the file's before this reader scanned the store without a writer (what a
 * writer that did not close left there is not the store's state after a power cut: only
 * what a later writer publishes is followed). */
PyObject *Core_attach_reader(Core *c, PyObject *args) {
    int fd;
    unsigned long long slot, seen_commit = 0, seen_gen = 0;
    PyObject *remap;
    if (!PyArg_ParseTuple(args, "iKO|KK", &fd, &slot, &remap, &seen_commit, &seen_gen)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    if (c->shared) return internal_error("the readers file is attached already"), NULL;
    if (slot >= VD_READER_SLOTS) return PyErr_Format(PyExc_ValueError, "no reader slot %llu", slot);
    ReaderBlock *rb = c->nblocks ? PyMem_Calloc(c->nblocks, sizeof *rb) : NULL;
    if (c->nblocks && !rb) return PyErr_NoMemory();
    uint8_t *m = readers_map(fd);
    if (!m) {
        PyMem_Free(rb);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (size_t i = 0; i < c->nblocks; i++) {
        const Block *b = &c->blocks[i];
        rb[i] = (ReaderBlock){.off = b->off, .size = b->size, .birth = b->birth, .pos = b->end, .type = b->type};
    }
    c->rblocks = rb;
    c->nrblocks = c->rblocks_cap = c->nblocks;
    c->shared = m;
    c->shared_fd = fd;
    c->reader_slot = slot;
    c->seen_commit = seen_commit;
    c->seen_gen = seen_gen;
    c->applied_seq = c->max_seq_seen; /* the scan at open applied everything it found */
    Py_INCREF(remap);
    c->remap = remap;
    c->shared_role = SHARED_READER;
    if (!c->count && presize_for_readers_file(c) < 0) return NULL;
    if (reader_sync(c) < 0) return NULL;
    Py_RETURN_NONE;
}

/* set_base(base, mapped): a reader's new mapping of the pool (the old one is the caller's
 * to unmap once this returns: nothing here points into it between two operations). */
PyObject *Core_set_base(Core *c, PyObject *args) {
    unsigned long long base, mapped;
    if (!PyArg_ParseTuple(args, "KK", &base, &mapped)) return NULL;
    if (core_check_open(c) < 0) return NULL;
    if (!base || base % os_page || mapped < c->mapped) return internal_error("a reader's mapping only grows"), NULL;
    /* (a writer that opened the pool after this reader did may grow it past the
     * reservation this reader assumed) */
    if (mapped > 4 && ((mapped - 1) >> 2) > c->off_mask && core_fit_offsets(c, mapped) < 0) return NULL;
    c->base = (uint8_t *)(uintptr_t)base;
    c->mapped = mapped;
    Py_RETURN_NONE;
}

/* hold_snapshot(on): while held (nested), a reader does not catch up: every read sees the
 * store as it was when the first hold began, and the writer keeps what that state needs. */
PyObject *Core_hold_snapshot(Core *c, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0 || core_check_open(c) < 0) return NULL;
    if (on) {
        if (reader_sync(c) < 0) return NULL; /* everything acknowledged before it began */
        c->snapshot_depth++;
    } else if (c->snapshot_depth > 0) {
        c->snapshot_depth--;
    }
    Py_RETURN_NONE;
}

/* catch_up(): what every operation of a reader does first, alone (an idle reader's pin moves) */
PyObject *Core_catch_up(Core *c, PyObject *unused) {
    (void)unused;
    if (core_check_open(c) < 0 || reader_sync(c) < 0) return NULL;
    Py_RETURN_NONE;
}

PyObject *Core_detach_shared(Core *c, PyObject *unused) {
    (void)unused;
    shared_detach(c);
    Py_RETURN_NONE;
}

/* The reader's block at exactly off, or NULL. */
static ReaderBlock *rblock_find(Core *c, uint64_t off) {
    size_t lo = 0, hi = c->nrblocks;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->rblocks[mid].off < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < c->nrblocks && c->rblocks[lo].off == off ? &c->rblocks[lo] : NULL;
}

/* A block new to this reader: every block it knew in that space is gone (its space was
 * freed, so every reader had passed its retirement). */
static ReaderBlock *rblock_new(Core *c, const ReaderBlock *nb) {
    size_t w = 0;
    for (size_t i = 0; i < c->nrblocks; i++) {
        ReaderBlock *b = &c->rblocks[i];
        if (b->off < nb->off + nb->size && nb->off < b->off + b->size) continue;
        c->rblocks[w++] = *b;
    }
    c->nrblocks = w;
    if (c->nrblocks == c->rblocks_cap) {
        size_t ncap = c->rblocks_cap ? c->rblocks_cap * 2 : 64;
        ReaderBlock *n = PyMem_Realloc(c->rblocks, ncap * sizeof *n);
        if (!n) return PyErr_NoMemory(), NULL;
        c->rblocks = n;
        c->rblocks_cap = ncap;
    }
    size_t i = 0;
    while (i < c->nrblocks && c->rblocks[i].off < nb->off) i++;
    memmove(&c->rblocks[i + 1], &c->rblocks[i], (c->nrblocks - i) * sizeof *nb);
    c->rblocks[i] = *nb;
    c->nrblocks++;
    return &c->rblocks[i];
}

/* how many records a catch-up prefetches the index slots of ahead of the one it applies */
#define SCAN_PREFETCH_DISTANCE 8

/* A catch-up's lookahead: walk up to n record headers from at (lengths only, bounds-checked,
 * no CRC) and prefetch the home slot of each key, so that the index's cache misses of the
 * records ahead overlap with the work on the current one. A hint only: it never changes
 * what the catch-up finds. Returns the position after the n-th record, or 0 where it met
 * anything but a record. (The scan at open instead makes its index entries in key-hash
 * order: recovery.c, recover_flush.) */
static uint64_t prefetch_records(Core *c, uint64_t at, uint64_t end, int n) {
    while (n > 0) {
        uint64_t room = VD_PAGE_SIZE - at % VD_PAGE_SIZE;
        if (room < VD_RECORD_HEADER_SIZE) at += room;
        if (at + VD_RECORD_HEADER_SIZE > end) return 0;
        const uint8_t *r = c->base + at;
        uint64_t meta = rec_meta(r);
        unsigned rk = meta_kind_raw(meta);
        if (!kind_is_top_level(rk)) return 0;
        if (at + meta_header_len(meta) > end) return 0;
        Rec rec;
        rec_parse(r, &rec);
        if (rec.total > end - at) return 0;
        if (rk != VD_KIND_PAD && rk != VD_KIND_BATCH) { /* (a batch's records: not looked ahead at) */
            index_prefetch(c, key_hash(r + rec.hlen, rec.klen));
            n--;
        }
        at += align_up(rec.total, VD_RECORD_ALIGN);
    }
    return at;
}

/* The deletes applied in one catch-up: removed from the index at its end. */
typedef struct {
    uint64_t *offs;
    size_t n, cap;
} Tombs;

/* Apply a verified record to the reader's index: the newest sequence number of a key wins. */
static int reader_apply(Core *c, uint64_t off, const Rec *r, Tombs *t) {
    const uint8_t *key = c->base + off + r->hlen;
    uint64_t h = key_hash(key, r->klen);
    if (index_reserve(c, h) < 0) return -1;
    IndexRef at;
    if (index_lookup(c, key, r->klen, h, &at)) {
        Rec o;
        rec_parse(c->base + slot_off(c, *at.slot), &o);
        if (o.seq >= r->seq) return 0;
        *at.slot = slot_make(c, h, off);
    } else {
        index_insert(c, &at, slot_make(c, h, off));
    }
    if (r->kind != VD_KIND_DEL) return 0;
    if (t->n == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 64;
        uint64_t *n = PyMem_Realloc(t->offs, ncap * sizeof *n);
        if (!n) return PyErr_NoMemory(), -1;
        t->offs = n;
        t->cap = ncap;
    }
    t->offs[t->n++] = off;
    return 0;
}

/* Read one entry's block from where this reader stopped up to its published end, applying
 * the records up to max_seq. */
static int reader_follow(Core *c, uint64_t e, uint64_t commit, uint64_t max_seq, uint64_t floor, Tombs *t) {
    VdReadersBlock *en = entry_of(c->shared, e);
    uint64_t stamp = LOAD(en->stamp);
    if (!stamp) return 0;
    uint64_t retired = LOAD(en->retired);
    if (retired && retired <= commit) return 0; /* superseded by what this catch-up reads */
    ReaderBlock nb = {.off = LOAD(en->off), .size = LOAD(en->size), .birth = LOAD(en->birth), .type = LOAD(en->type)};
    uint64_t end = LOAD(en->end);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (LOAD(en->stamp) != stamp) return 0; /* reused while read: a block every reader is past */
    if ((nb.type != VD_TYPE_STANDARD_BLOCK && nb.type != VD_TYPE_JUMBO_BLOCK) || !nb.off || nb.off % 8 ||
        nb.size < VD_BLOCK_HEADER_SIZE + VD_RECORD_HEADER_SIZE || nb.off > c->mapped || nb.size > c->mapped - nb.off ||
        end > nb.off + nb.size)
        return 0; /* not a block this reader can read */
    ReaderBlock *b = rblock_find(c, nb.off);
    if (!b || b->birth != nb.birth || b->size != nb.size || b->type != nb.type) {
        VdBlockHeader bh;
        if (!header_read(c->base + nb.off, &bh) || bh.version != VD_FORMAT_VERSION || bh.birth != nb.birth ||
            !header_fits(&bh, nb.size, nb.type))
            return 0;
        nb.size = bh.size < nb.size ? bh.size : nb.size;
        nb.pos = nb.off + bh.log_start;
        if (!(b = rblock_new(c, &nb))) return -1;
    }
    uint64_t pos = b->pos;
    uint64_t ahead = 0; /* the next record the lookahead prefetches for (0: stopped) */
    while (pos + VD_RECORD_HEADER_SIZE <= end) {
        uint64_t room = VD_PAGE_SIZE - pos % VD_PAGE_SIZE;
        if (b->type == VD_TYPE_STANDARD_BLOCK && room < VD_RECORD_HEADER_SIZE) {
            pos += room;
            continue;
        }
        const uint8_t *r = c->base + pos;
        if (rec_header_is_zero(r)) break;
        uint64_t meta = rec_meta(r);
        unsigned kind = meta_kind_raw(meta);
        if (!kind_is_top_level(kind) || pos + meta_header_len(meta) > end) break;
        Rec rec;
        rec_parse(r, &rec);
        if (rec.total > end - pos) break;
        if (kind != VD_KIND_PAD && (rec.seq == 0 || rec.seq > max_seq)) break; /* not published yet */
        if (record_crc(r, rec.total) != rec_crc(r)) break;
        if (kind == VD_KIND_BATCH) {
            /* published whole: its records, each applied as a record */
            uint64_t last;
            if (!batch_is_valid(c->base, pos, &rec, &last) || last > max_seq) break;
            BatchWalk w;
            batch_walk_start(&w, pos, &rec);
            Rec sub;
            uint64_t at;
            while (batch_walk_next(c->base, &w, &sub, &at) == 1)
                if (sub.seq > c->applied_seq && sub.seq >= floor && reader_apply(c, at, &sub, t) < 0) return -1;
            pos += align_up(rec.total, VD_RECORD_ALIGN);
            if (b->type == VD_TYPE_JUMBO_BLOCK) break;
            continue;
        }
        /* the index slots of the records ahead, as the scan at open does */
        if (kind != VD_KIND_PAD && b->type == VD_TYPE_STANDARD_BLOCK) {
            uint64_t next = pos + align_up(rec.total, VD_RECORD_ALIGN);
            ahead = ahead > next ? prefetch_records(c, ahead, end, 1)
                                 : prefetch_records(c, next, end, SCAN_PREFETCH_DISTANCE);
        }
        /* a record at or below applied_seq was applied, or superseded, by an earlier catch-up
         * (the writer publishes in sequence order): applying it again could bring back a key
         * deleted since (a block read anew after a writer's restart, say); one below the
         * floor is dead */
        if (kind != VD_KIND_PAD && rec.seq > c->applied_seq && rec.seq >= floor &&
            reader_apply(c, pos, &rec, t) < 0)
            return -1;
        pos += align_up(rec.total, VD_RECORD_ALIGN);
        if (b->type == VD_TYPE_JUMBO_BLOCK) break;
    }
    b->pos = pos;
    return 0;
}

/* Ask Python to map at least needed bytes of the pool (the writer grew it). */
static int reader_remap(Core *c, uint64_t needed) {
    PyObject *r = PyObject_CallFunction(c->remap, "K", (unsigned long long)needed);
    if (!r) return -1;
    Py_DECREF(r);
    if (c->mapped < needed) return internal_error("the pool could not be mapped far enough");
    return 0;
}

int reader_catch_up(Core *c) {
    VdReadersHeader *h = header_of(c->shared);
again:;
    uint64_t commit = LOAD(h->commit);
    if (!header_valid(h, 0)) return 0; /* no writer has published here yet */
    uint64_t max_seq = LOAD(h->max_seq), gen = LOAD(h->table_gen), mapped = LOAD(h->mapped);
    uint64_t floor = LOAD(h->seq_floor);
    if (mapped > c->mapped) {
        /* Python code runs in remap(), so another thread (the idle catch-up, or the user's)
         * may have caught this core up meanwhile: start again from what is published now */
        if (reader_remap(c, mapped) < 0) return -1;
        goto again;
    }
    uint64_t used = LOAD(h->table_used);
    if (used > VD_READERS_BLOCKS) used = VD_READERS_BLOCKS;
    Tombs t = {0};
    int rc = 0;
    if (gen != c->seen_gen) {
        for (uint64_t e = 0; e < used && rc == 0; e++) rc = reader_follow(c, e, commit, max_seq, floor, &t);
    } else {
        uint64_t active = LOAD(h->active_entry);
        if (active < used) rc = reader_follow(c, active, commit, max_seq, floor, &t);
    }
    /* the deletes have done their work (hiding older puts read in the same catch-up) */
    for (size_t i = 0; i < t.n; i++) {
        Rec r;
        const uint8_t *key = rec_key(c, t.offs[i], &r);
        IndexRef at;
        if (index_lookup(c, key, r.klen, key_hash(key, r.klen), &at) && slot_off(c, *at.slot) == t.offs[i])
            index_remove(c, &at);
    }
    PyMem_Free(t.offs);
    if (rc < 0) return -1;
    if (floor > c->floor) {
        /* a reorganize(): what is older than its floor is dead, deletes included (they were
         * not copied forward, so no newer record says so). Once per reorganize(). */
        IndexCursor cur = {0, 0};
        for (uint64_t *s; (s = index_walk(c, &cur));) {
            Rec r;
            rec_parse(c->base + slot_off(c, *s), &r);
            if (r.seq < floor) {
                IndexRef at = index_ref_at(c, &cur);
                index_remove(c, &at);
                continue; /* a later entry may have shifted into this slot */
            }
            cur.i++;
        }
        c->floor = floor;
    }
    c->seen_commit = commit;
    c->seen_gen = gen;
    /* every record up to max_seq was published before it: this catch-up applied it, or
     * skipped it in a retired block because a record it applied supersedes it */
    if (max_seq > c->applied_seq) c->applied_seq = max_seq;
    STORE(slot_of(c->shared, c->reader_slot)->pin, commit);
    return 0;
}
