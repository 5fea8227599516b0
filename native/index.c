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

/* make room for about expected entries at once (a reader's first catch-up, which would
 * otherwise double the table its way up to the store's size) */
int index_presize(Core *c, uint64_t expected) {
    uint64_t cap = c->cap;
    while (cap * 3 < expected * 4 + 4) cap *= 2;
    return cap > c->cap ? index_resize(c, cap) : 0;
}

/* make room for one more entry before anything is written */
int index_reserve(Core *c) {
    if ((c->count + 1) * 4 > c->cap * 3) return c->listing ? core_error(ERR_INDEX_HELD) : index_resize(c, c->cap * 2);
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
