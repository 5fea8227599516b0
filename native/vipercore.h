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
