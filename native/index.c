/* The volatile DRAM hash index: key -> pool offset of the newest record, 8 bytes a slot
 * (core.h: the slot layout, the segments, and the lookup, inline there).
 *
 * Why segments. One table that doubles when full pays for the whole store at once: at 100M
 * keys a growth allocated and filled 2 GiB (a put of 2 s when it rehashed at once, puts of
 * tens of ms while it drained; 32 bytes a key while both tables lived), and after it the
 * table was 3/8 full (21 bytes a key). Here the index is a directory of segments, each a
 * small table that grows on its own: by 1/8 of its size when it is 0.77 to 0.83 full (a
 * fraction of its own, so that segments do not all grow at once: seg_limit), and, past
 * SEG_MAX_SLOTS, by splitting into two segments by the next bit of the tag (extendible
 * hashing: the directory doubles when a segment as deep as it splits). No growth touches
 * more than one segment, about 512 KiB, and the index stays between 0.68 and 0.83 full: 9.6
 * to 11.7 bytes a key. An insert pays about 8 moves, amortized, within one segment. */
#include "core.h"

#include <sys/mman.h>

#define SEG_MAX_SLOTS (UINT64_C(1) << 16)
/* below this a segment doubles: the index of a small store is small however full it is, and
 * it gets to its working size in a few steps */
#define SEG_DOUBLE_BELOW 4096
#define SEG_MIN_SLOTS 16
/* a segment's size is a multiple of this many slots: one cache line */
#define SEG_SLOTS_ALIGN 8
/* the tag bits kept below a prefix, at least: what a home is computed from */
#define SEG_HOME_BITS_MIN 12

/* Slot arrays of 64 KiB and more are mapped on their own, so that a segment given back
 * returns its memory at once (from the heap, a freed array would stay in the process), and
 * offered transparent huge pages: the kernel merges neighbouring mappings into one, whose
 * 2 MiB-aligned stretches then fault in as huge pages, and a lookup touches one random slot
 * of a table of millions of keys (10M keys reopened, 2M random gets: 1.22M/s with 4 KiB
 * pages, 1.47M/s with 108 of the 112 MB in huge pages). */
#define SLOTS_MMAP_BYTES (64u << 10)

static uint64_t *slots_alloc(uint64_t cap) {
    size_t bytes = (size_t)cap * sizeof(uint64_t);
    if (bytes < SLOTS_MMAP_BYTES) return PyMem_RawCalloc(cap, sizeof(uint64_t));
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    (void)madvise(p, bytes, MADV_HUGEPAGE);
    return p; /* anonymous memory is zero */
}

static void slots_free(uint64_t *slots, uint64_t cap) {
    if (!slots) return;
    size_t bytes = (size_t)cap * sizeof(uint64_t);
    if (bytes < SLOTS_MMAP_BYTES)
        PyMem_RawFree(slots);
    else
        munmap(slots, bytes);
}

/* the capacity at which n entries fill a segment to 3/4 (a fresh or refitted one) */
static uint64_t cap_for(uint64_t n) {
    uint64_t cap = align_up(n + n / 3 + 1, SEG_SLOTS_ALIGN);
    return cap < SEG_MIN_SLOTS ? SEG_MIN_SLOTS : cap;
}

/* the capacity of a segment that n entries fill as far as a growth leaves it (0.71) */
static uint64_t cap_after_growth(uint64_t n) {
    uint64_t cap = align_up(n + n / 4 + n / 8 + n / 32 + 8, SEG_SLOTS_ALIGN); /* n * 45/32 = n * 5/4 * 9/8 */
    return cap < SEG_MIN_SLOTS ? SEG_MIN_SLOTS : cap;
}

/* How full g may get before it grows: 0.77 to 0.83 of its size, a fraction of its own
 * (from its prefix). With one fraction for all, segments that keys fill at the same rate
 * grow at the same time: building 30M records in update() batches of 100,000, the most
 * slots one batch added went from 607k to 195k with this. */
static uint64_t seg_fill_permille(const Segment *g) {
    return 770 + (((g->prefix + 1) * UINT64_C(0x9E3779B97F4A7C15) + g->depth) >> 58); /* + 0..63 */
}

static uint64_t seg_limit(const Segment *g) { return g->cap * seg_fill_permille(g) / 1000; }

static Segment *seg_new(Core *c, uint64_t cap, unsigned depth, uint64_t prefix) {
    Segment *g = PyMem_RawCalloc(1, sizeof *g);
    uint64_t *slots = slots_alloc(cap);
    if (!g || !slots) {
        PyMem_RawFree(g);
        slots_free(slots, cap);
        return NULL;
    }
    g->slots = slots;
    g->cap = cap;
    g->depth = depth;
    g->prefix = prefix;
    g->limit = seg_limit(g);
    g->home_bits = slot_tag_bits(c) - depth;
    g->home_mask = (UINT64_C(1) << g->home_bits) - 1;
    return g;
}

static void seg_free(Segment *g) {
    slots_free(g->slots, g->cap);
    PyMem_RawFree(g);
}

/* put s into g at its home or the first free slot after it */
static void seg_place(Core *c, Segment *g, uint64_t s) {
    uint64_t i = seg_home(g, slot_tag(c, s));
    while (g->slots[i])
        if (++i == g->cap) i = 0;
    g->slots[i] = s;
    g->count++;
}

/* the directory entries of segment g: [first, first + n) */
static uint64_t dir_first(const Core *c, const Segment *g) { return g->prefix << (c->dir_bits - g->depth); }
static uint64_t dir_span(const Core *c, const Segment *g) { return UINT64_C(1) << (c->dir_bits - g->depth); }

/* A directory of 2^bits entries with one segment for every prefix of that length, each of
 * cap slots; -1 (no memory) leaves the index as it was. */
static int index_build(Core *c, unsigned bits, uint64_t cap) {
    uint64_t n = UINT64_C(1) << bits;
    Segment **dir = PyMem_RawCalloc(n, sizeof *dir);
    if (!dir) return PyErr_NoMemory(), -1;
    for (uint64_t d = 0; d < n; d++) {
        if (!(dir[d] = seg_new(c, cap, bits, d))) {
            while (d > 0) seg_free(dir[--d]);
            PyMem_RawFree(dir);
            PyErr_NoMemory();
            return -1;
        }
    }
    index_free(c);
    c->dir = dir;
    c->dir_bits = bits;
    c->dir_shift = slot_tag_bits(c) - bits;
    c->cap = n * cap;
    c->nsegs = n;
    c->count = 0;
    return 0;
}

/* directory bits and segment size for about expected keys */
int index_alloc(Core *c, uint64_t expected) {
    unsigned bits = 0, most = slot_tag_bits(c) - SEG_HOME_BITS_MIN;
    while (bits < most && cap_for(expected >> bits) > SEG_MAX_SLOTS * 3 / 4) bits++;
    return index_build(c, bits, cap_for(expected >> bits));
}

int index_presize(Core *c, uint64_t expected) {
    if (c->count || cap_for(expected) <= c->cap) return 0;
    if (c->listing) return core_error(ERR_INDEX_HELD);
    return index_alloc(c, expected);
}

void index_free(Core *c) {
    if (!c->dir) return;
    uint64_t n = UINT64_C(1) << c->dir_bits;
    for (uint64_t d = 0; d < n;) {
        Segment *g = c->dir[d];
        d += dir_span(c, g);
        seg_free(g);
    }
    PyMem_RawFree(c->dir);
    c->dir = NULL;
    c->cap = c->nsegs = 0;
}

/* g's entries into a fresh array of cap slots */
static int seg_resize(Core *c, Segment *g, uint64_t cap) {
    uint64_t *fresh = slots_alloc(cap);
    if (!fresh) return PyErr_NoMemory(), -1;
    uint64_t *old = g->slots, old_cap = g->cap;
    g->slots = fresh;
    g->cap = cap;
    g->limit = seg_limit(g);
    g->count = 0;
    for (uint64_t i = 0; i < old_cap; i++)
        if (old[i]) seg_place(c, g, old[i]);
    slots_free(old, old_cap);
    c->cap += cap - old_cap;
    return 0;
}

/* the directory twice as long, each entry's segment in both of its halves */
static int dir_double(Core *c) {
    uint64_t n = UINT64_C(1) << c->dir_bits;
    Segment **dir = PyMem_RawMalloc(2 * n * sizeof *dir);
    if (!dir) return PyErr_NoMemory(), -1;
    for (uint64_t d = 0; d < 2 * n; d++) dir[d] = c->dir[d >> 1];
    PyMem_RawFree(c->dir);
    c->dir = dir;
    c->dir_bits++;
    c->dir_shift--;
    return 0;
}

/* g's entries into two segments, by the tag bit below its prefix. The halves are sized
 * by what each takes: keys need not come in random order (reorganize() copies a store in
 * its index's order, that is by hash, and then every key of a segment that splits is on
 * one side). */
static int seg_split(Core *c, Segment *g) {
    unsigned bit = slot_tag_bits(c) - g->depth - 1; /* the tag's bit just below g's prefix */
    uint64_t high = 0;
    for (uint64_t i = 0; i < g->cap; i++)
        high += g->slots[i] && (slot_tag(c, g->slots[i]) >> bit) & 1;
    if (g->depth == c->dir_bits && dir_double(c) < 0) return -1;
    Segment *lo = seg_new(c, cap_after_growth(g->count - high), g->depth + 1, g->prefix << 1);
    Segment *hi = lo ? seg_new(c, cap_after_growth(high), g->depth + 1, (g->prefix << 1) | 1) : NULL;
    if (!hi) {
        if (lo) seg_free(lo);
        return PyErr_NoMemory(), -1;
    }
    for (uint64_t i = 0; i < g->cap; i++) {
        uint64_t s = g->slots[i];
        if (s) seg_place(c, (slot_tag(c, s) >> bit) & 1 ? hi : lo, s);
    }
    uint64_t first = dir_first(c, g), half = dir_span(c, g) / 2;
    for (uint64_t d = first; d < first + half; d++) c->dir[d] = lo;
    for (uint64_t d = first + half; d < first + 2 * half; d++) c->dir[d] = hi;
    c->cap += lo->cap + hi->cap - g->cap;
    c->nsegs++;
    seg_free(g);
    return 0;
}

/* Make g take n more entries: 0 (g has room now), 1 (g was split: look up the key's
 * segment again) or -1 with an exception set (nothing changed). */
static int seg_grow(Core *c, Segment *g, uint64_t n) {
    if (c->listing) return core_error(ERR_INDEX_HELD);
    uint64_t cap = g->cap < SEG_DOUBLE_BELOW ? 2 * g->cap : align_up(g->cap + g->cap / 8, SEG_SLOTS_ALIGN);
    uint64_t need = g->count + n, permille = seg_fill_permille(g);
    while (cap * permille / 1000 < need) cap = align_up(cap + cap / 8, SEG_SLOTS_ALIGN);
    if (cap > SEG_MAX_SLOTS && g->home_bits > SEG_HOME_BITS_MIN) return seg_split(c, g) < 0 ? -1 : 1;
    return seg_resize(c, g, cap);
}

int index_reserve(Core *c, uint64_t h) {
    uint64_t tag = h >> c->off_bits;
    for (;;) {
        Segment *g = seg_of(c, tag);
        if (g->count < g->limit) return 0;
        int rc = seg_grow(c, g, 1);
        if (rc <= 0) return rc;
    }
}

int index_reserve_many(Core *c, const void *hashes, size_t stride, size_t n) {
    const uint8_t *at = hashes;
#define HASH_AT(i) (*(const uint64_t *)(const void *)(at + (i) * stride))
again:
    for (size_t i = 0; i < n; i++) seg_of(c, HASH_AT(i) >> c->off_bits)->pending = 0;
    for (size_t i = 0; i < n; i++) seg_of(c, HASH_AT(i) >> c->off_bits)->pending++;
    for (size_t i = 0; i < n; i++) {
        Segment *g = seg_of(c, HASH_AT(i) >> c->off_bits);
        if (g->pending && g->count + g->pending > g->limit) {
            int rc = seg_grow(c, g, g->pending);
            if (rc < 0) return -1;
            if (rc > 0) goto again; /* (g is gone) */
        }
        g->pending = 0; /* (counted once) */
    }
    return 0;
#undef HASH_AT
}

int index_widen(Core *c, unsigned off_bits) {
    if (off_bits <= c->off_bits) return 0;
    if (c->listing) return core_error(ERR_INDEX_HELD);
    Segment **old_dir = c->dir;
    unsigned old_dir_bits = c->dir_bits, old_dir_shift = c->dir_shift, old_off_bits = c->off_bits;
    uint64_t old_mask = c->off_mask, old_cap = c->cap, old_nsegs = c->nsegs, count = c->count;
    c->dir = NULL;
    c->off_bits = off_bits;
    c->off_mask = (UINT64_C(1) << off_bits) - 1;
    int rc = index_alloc(c, count);
    uint64_t n = UINT64_C(1) << old_dir_bits;
    for (uint64_t d = 0; rc == 0 && d < n;) {
        Segment *g = old_dir[d];
        d += UINT64_C(1) << (old_dir_bits - g->depth);
        for (uint64_t i = 0; rc == 0 && i < g->cap; i++) {
            uint64_t s = g->slots[i];
            if (!s) continue;
            s = (s & ~c->off_mask) | (s & old_mask); /* the offset, and the hash bits left above it */
            rc = index_reserve(c, s);
            if (rc == 0) {
                seg_place(c, seg_of(c, s >> c->off_bits), s);
                c->count++;
            }
        }
    }
    Segment **new_dir = c->dir;
    if (rc < 0) { /* no memory: the index as it was */
        index_free(c);
        c->dir = old_dir;
        c->dir_bits = old_dir_bits;
        c->dir_shift = old_dir_shift;
        c->off_bits = old_off_bits;
        c->off_mask = old_mask;
        c->cap = old_cap;
        c->nsegs = old_nsegs;
        c->count = count;
        return -1;
    }
    c->dir = old_dir; /* free the old directory and its segments, then put the new one back */
    unsigned new_bits = c->dir_bits;
    c->dir_bits = old_dir_bits;
    uint64_t new_cap = c->cap, new_nsegs = c->nsegs;
    index_free(c);
    c->dir = new_dir;
    c->dir_bits = new_bits;
    c->cap = new_cap;
    c->nsegs = new_nsegs;
    return 0;
}

int core_fit_offsets(Core *c, uint64_t mapped) {
    unsigned need = 64u - (unsigned)__builtin_clzll((mapped - 1) >> 2) + 1; /* room for twice as much */
    if (index_widen(c, need > SLOT_OFF_BITS_MAX ? SLOT_OFF_BITS_MAX : need) < 0) return -1;
    if (((mapped - 1) >> 2) > c->off_mask) return internal_error("the pool is larger than any index can address");
    return 0;
}

void index_fit(Core *c) {
    uint64_t n = UINT64_C(1) << c->dir_bits;
    for (uint64_t d = 0; d < n;) {
        Segment *g = c->dir[d];
        d += dir_span(c, g);
        uint64_t cap = cap_for(g->count);
        if (cap + cap / 8 < g->cap && seg_resize(c, g, cap) < 0) {
            PyErr_Clear(); /* (no memory: a larger segment serves as well) */
            return;
        }
    }
}

void index_remove(Core *c, const IndexRef *ref) {
    /* backward-shift deletion keeps linear probing correct without tombstones */
    Segment *g = ref->seg;
    uint64_t i = (uint64_t)(ref->slot - g->slots), j = i;
    g->slots[i] = 0;
    for (;;) {
        if (++j == g->cap) j = 0;
        uint64_t s = g->slots[j];
        if (!s) break;
        uint64_t home = seg_home(g, slot_tag(c, s));
        /* move s into the hole at i if its home is not in the cyclic range (i, j] */
        int in_range = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!in_range) {
            g->slots[i] = s;
            g->slots[j] = 0;
            i = j;
        }
    }
    g->count--;
    c->count--;
}

uint64_t *index_walk(Core *c, IndexCursor *cur) {
    uint64_t n = UINT64_C(1) << c->dir_bits;
    while (cur->d < n) {
        Segment *g = c->dir[cur->d];
        for (; cur->i < g->cap; cur->i++)
            if (g->slots[cur->i]) return &g->slots[cur->i];
        cur->d = dir_first(c, g) + dir_span(c, g);
        cur->i = 0;
    }
    return NULL;
}

IndexRef index_ref_at(Core *c, const IndexCursor *cur) {
    Segment *g = c->dir[cur->d];
    return (IndexRef){g, &g->slots[cur->i]};
}

IndexCursor index_cursor_of(Core *c, const IndexRef *ref) {
    return (IndexCursor){dir_first(c, ref->seg), (uint64_t)(ref->slot - ref->seg->slots)};
}
