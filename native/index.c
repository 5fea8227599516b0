/* The volatile DRAM hash index: key -> pool offset of the newest record. Open addressing,
 * linear probing, 8 bytes a slot (core.h: the slot layout, and the lookup, inline there). */
#include "core.h"

#include <sys/mman.h>

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

void slots_free(uint64_t *slots, uint64_t cap) {
    if (!slots) return;
    size_t bytes = (size_t)cap * sizeof(uint64_t);
    if (bytes < INDEX_MMAP_BYTES)
        PyMem_Free(slots);
    else
        munmap(slots, bytes);
}

int index_alloc(Core *c, uint64_t cap) {
    uint64_t *s = slots_alloc(cap);
    if (!s) {
        PyErr_NoMemory();
        return -1;
    }
    c->slots = s;
    c->cap = cap;
    return 0;
}

static uint64_t hash_of_slot(Core *c, uint64_t s) {
    Rec r;
    const uint8_t *k = rec_key(c, slot_off(c, s), &r);
    return key_hash(k, r.klen);
}

/* the home slot of an entry in a table of cap slots */
static inline uint64_t home_of(Core *c, uint64_t s, uint64_t cap) {
    unsigned bits = log2u64(cap);
    unsigned tag_bits = slot_tag_bits(c);
    if (bits <= tag_bits) return slot_tag(c, s) >> (tag_bits - bits);
    return hash_of_slot(c, s) >> (64 - bits);
}

/* Growth without a stop: when the table is 3/4 full, a table twice its size takes the new
 * entries, and the old one is drained into it a few slots at a time (MIGRATE_STEP per
 * insert, every insert: a batch's too; at 4 the old table is empty after a third of the
 * inserts that fill the new one to 3/4, and a put moves about 3 entries meanwhile). Meanwhile a lookup that misses
 * in the new table looks in the old one, and moves what it finds there, so that every
 * index a lookup returns is one of the new table. The whole table is walked (listing,
 * reorganize(), the end of recovery) only once the old one is drained (index_settle). */
#define MIGRATE_STEP 4

/* the slot an entry of the old table takes in the new one */
static void migrate_slot(Core *c, uint64_t s) {
    uint64_t mask = c->cap - 1, j = home_of(c, s, c->cap);
    while (c->slots[j]) j = (j + 1) & mask;
    c->slots[j] = s;
}

/* Drain up to n slots of the old table into the new one; free it once it is empty. */
static void migrate(Core *c, uint64_t n) {
    uint64_t *old = c->old_slots;
    uint64_t end = c->migrate_pos + n < c->old_cap ? c->migrate_pos + n : c->old_cap;
    for (uint64_t i = c->migrate_pos; i < end; i++) {
        uint64_t s = old[i];
        if (s && s != SLOT_MOVED) {
            migrate_slot(c, s);
            old[i] = SLOT_MOVED;
        }
    }
    c->migrate_pos = end;
    if (end == c->old_cap) {
        slots_free(old, c->old_cap);
        c->old_slots = NULL;
        c->old_cap = c->migrate_pos = 0;
    }
}

/* The slot of key in one table of the index (slots, cap), or -1: a moved slot is passed over
 * (not 0: a probe goes on past it). The probe of index_lookup_old and index_find_growing;
 * index_lookup (core.h) differs in returning where to insert. */
static int64_t slot_in(Core *c, const uint64_t *slots, uint64_t cap, const uint8_t *key, uint64_t klen, uint64_t h) {
    uint64_t mask = cap - 1, j = h >> (64 - log2u64(cap)), tag = h >> c->off_bits;
    for (;;) {
        uint64_t s = slots[j];
        if (s == 0) return -1;
        if (s != SLOT_MOVED && slot_tag(c, s) == tag) {
            Rec r;
            const uint8_t *k = rec_key(c, slot_off(c, s), &r);
            if (r.klen == klen && memcmp(k, key, klen) == 0) return (int64_t)j;
        }
        j = (j + 1) & mask;
    }
}

/* index_lookup() missed in the new table, at its insert position insert_at: look in the old
 * one; an entry found there moves to insert_at. */
int64_t index_lookup_old(Core *c, const uint8_t *key, uint64_t klen, uint64_t h, uint64_t insert_at) {
    int64_t j = slot_in(c, c->old_slots, c->old_cap, key, klen, h);
    if (j < 0) return -(int64_t)insert_at - 1;
    c->slots[insert_at] = c->old_slots[j];
    c->old_slots[j] = SLOT_MOVED;
    return (int64_t)insert_at;
}

/* The pool offset of key's record in one table of the index, or 0 */
static uint64_t find_in(Core *c, const uint64_t *slots, uint64_t cap, const uint8_t *key, uint64_t klen, uint64_t h) {
    int64_t j = slot_in(c, slots, cap, key, klen, h);
    return j < 0 ? 0 : slot_off(c, slots[j]);
}

/* index_find() while the index grows: each key is in exactly one of the two tables. Where
 * the drain has not reached its home in the old table, most keys are still there: look
 * there first (one random access for a hit, as without a growth), else in the new one. */
uint64_t index_find_growing(Core *c, const uint8_t *key, uint64_t klen, uint64_t h) {
    int old_first = (h >> (64 - log2u64(c->old_cap))) >= c->migrate_pos;
    const uint64_t *first = old_first ? c->old_slots : c->slots, *second = old_first ? c->slots : c->old_slots;
    uint64_t first_cap = old_first ? c->old_cap : c->cap, second_cap = old_first ? c->cap : c->old_cap;
    uint64_t off = find_in(c, first, first_cap, key, klen, h);
    return off ? off : find_in(c, second, second_cap, key, klen, h);
}

void index_settle(Core *c) {
    if (c->old_slots) migrate(c, c->old_cap);
}

void index_step(Core *c) {
    if (c->old_slots && !c->listing) migrate(c, MIGRATE_STEP);
}

/* Start moving to a table of ncap slots: -1 (no memory) leaves everything as it was. */
static int index_grow(Core *c, uint64_t ncap) {
    index_settle(c);
    uint64_t *fresh = slots_alloc(ncap);
    if (!fresh) {
        PyErr_NoMemory();
        return -1;
    }
    c->old_slots = c->slots;
    c->old_cap = c->cap;
    c->migrate_pos = 0;
    c->slots = fresh;
    c->cap = ncap;
    return 0;
}

/* make room for about expected entries (a reader's first catch-up, a batch): the growth
 * is a migration as any other, only to a larger table */
int index_presize(Core *c, uint64_t expected) {
    uint64_t cap = c->cap;
    while (cap * 3 < expected * 4 + 4) cap *= 2;
    if (cap <= c->cap) return 0;
    return c->listing ? core_error(ERR_INDEX_HELD) : index_grow(c, cap);
}

/* make room for one more entry before anything is written, and move a few of the old
 * table's entries on */
int index_reserve(Core *c) {
    if ((c->count + 1) * 4 > c->cap * 3) {
        if (c->listing) return core_error(ERR_INDEX_HELD);
        if (index_grow(c, c->cap * 2) < 0) return -1;
    }
    index_step(c);
    return 0;
}

void index_remove_at(Core *c, uint64_t i) {
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
