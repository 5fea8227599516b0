/*
 * The on-media constants of viperdbm, as the native core sees them.
 *
 * docs/format.md is the description of the format and viperdbm/_layout.py holds the
 * same numbers for Python; tests/test_layout.py checks that all three agree.
 */
#ifndef VIPERCORE_H
#define VIPERCORE_H

#include <stdint.h>

#define VD_FORMAT_VERSION 2u

/* A VPage: records of at most a page never straddle a page boundary (Viper's layout). 16 KiB,
 * four OS pages: records of about 1 KiB then waste at most a sixteenth of a page. */
#define VD_PAGE_SIZE 16384u

/* A standard VBlock: one libpmemobj allocation holding a header and a log of pages. */
#define VD_BLOCK_SIZE (4u << 20)
/* Records longer than this get a block of their own (a "jumbo" block). */
#define VD_INLINE_MAX (1u << 20)

/* Block header, at the start of every block object. */
#define VD_BLOCK_MAGIC 0x4b4c4256u /* "VBLK" little-endian */
#define VD_BLOCK_HEADER_SIZE 64u
#define VD_BLOCK_KIND_STANDARD 1u
#define VD_BLOCK_KIND_JUMBO 2u
/* Bytes 32..39 of the block header: the block's birth, the sequence number the next record
 * would have taken when the block was made. Every record in the block has a sequence number
 * at least that, so nothing a previous life of the space left there is read as a record.
 * 0 (the zeros that writers before the birth wrote there): no bound. */
#define VD_BLOCK_BIRTH_OFFSET 32u

/* The argument of the block constructor that pmemobj_alloc runs on a new block or reserve
 * object (log.c, block_constructor): not on the media, but its layout is shared by
 * the core that fills it (Core.block_init) and the constructor that reads it. */
typedef struct {
    uint64_t persist; /* address of libpmemobj's pmemobj_persist(PMEMobjpool *, const void *, size_t) */
    uint64_t birth;   /* written into the header */
    uint64_t size;    /* bytes asked of the allocator: the block's size (at most VD_BLOCK_SIZE for a standard block) */
    uint32_t kind;    /* VD_BLOCK_KIND_*, or VD_INIT_RESERVE */
    uint32_t flags;   /* VD_INIT_* below */
} VdBlockInit;
#define VD_INIT_RESERVE 3u        /* the reserve: zero its first header-sized bytes, nothing else */
#define VD_INIT_ZERO 1u           /* zero the whole object first, persisted (as pmemobj_zalloc) */
#define VD_INIT_PERSIST_LOG 2u    /* persist the zeroed log too (real persistent memory) */

/* Record header: u32 crc32c, u32 vlen, u64 meta (seq:48 | kind:4 | klen:12). */
#define VD_RECORD_HEADER_SIZE 16u
#define VD_RECORD_ALIGN 4u
#define VD_SEQ_BITS 48u
#define VD_SEQ_MASK ((UINT64_C(1) << VD_SEQ_BITS) - 1)
#define VD_KIND_SHIFT 48u
#define VD_KLEN_SHIFT 52u
#define VD_KLEN_SHORT_MAX 4094u  /* 4095 in the klen field means: a u32 klen follows */
#define VD_KLEN_EXTENDED 4095u
#define VD_KIND_PUT 1u
#define VD_KIND_DEL 2u
#define VD_KIND_PAD 3u

/* Largest key and value accepted (u32 fields on media). */
#define VD_MAX_KEY ((uint64_t)0xFFFFFFFFu - 64u)
#define VD_MAX_VALUE ((uint64_t)0xFFFFFFFFu - 64u)

#endif
