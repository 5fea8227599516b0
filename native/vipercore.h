/*
 * The on-media format of viperdbm, as types: the structures a store holds, their constants,
 * and the numbering of its objects. This header is the one definition in code (as Viper's
 * viper.hpp and LMDB's mdb.c define theirs); docs/format.md describes it in prose.
 *
 * Python takes every number below from the core's FORMAT object (module.c), never from a
 * copy: viperdbm/_layout.py reads it at import, and tests/test_layout.py checks each
 * table of docs/format.md against it, row by row.
 *
 * All integers are little-endian; the core writes them in the host's order, so it builds
 * only for little-endian hosts (asserted below). The structures are never accessed in
 * place through a cast pointer (records start at any 4-byte boundary): fields are read and
 * written with memcpy at offsetof() (core.h), or a whole structure is copied.
 */
#ifndef VIPERCORE_H
#define VIPERCORE_H

#include <stddef.h>
#include <stdint.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the format is little-endian, and so must the host be");

/* Each structure below comes with VD_<NAME>_LAYOUT(X): X(type, field, offset) for each of its
 * fields, at the offset docs/format.md gives. The layouts are asserted at the end of this
 * header, and format.c lists the fields of the module's FORMAT from them. */

#define VD_FORMAT_VERSION 2u

/* A VPage: records of at most a page never straddle a page boundary (Viper's layout). 16 KiB,
 * four OS pages: records of about 1 KiB then waste at most a sixteenth of a page. */
#define VD_PAGE_SIZE 16384u

/* A standard VBlock: one libpmemobj allocation holding a header and a log of pages. */
#define VD_BLOCK_SIZE (4u << 20)
/* Records longer than this get a block of their own (a "jumbo" block). */
#define VD_INLINE_MAX (1u << 20)

/* ------------------------------------------------------------------ objects
 * The type number libpmemobj stores with every object viperdbm allocates. A block's header
 * carries its type number again (the field `type`), so that a damaged type number is
 * detected (and a block is never read as the reserve). */
typedef enum {
    VD_TYPE_STANDARD_BLOCK = 1, /* a block header, then a log of VPages */
    VD_TYPE_JUMBO_BLOCK = 2,    /* a block header, then one record longer than VD_INLINE_MAX */
    VD_TYPE_RESERVE = 3,        /* space held back for deletes on a full disk: no header */
} VdObjectType;

/* ------------------------------------------------------------------ the root object
 * At the start of the pmemobj_root object (VD_ROOT_OBJECT_SIZE bytes, the rest zero). Only
 * Python reads and writes it (viperdbm/_layout.py, Root); its layout is defined here with the
 * rest of the format. The three sealed fields hold a 48-bit value and, in bits 48-63, a
 * 16-bit check of it; each is updated in place with one aligned 8-byte store. */
#define VD_ROOT_OBJECT_SIZE 4096u
#define VD_ROOT_MAGIC "VIPERDBM"
typedef struct {
    char magic[8];                 /* VD_ROOT_MAGIC, no terminating zero */
    uint32_t format_version;       /* VD_FORMAT_VERSION */
    uint32_t flags;                /* 0 */
    uint64_t block_size;           /* VD_BLOCK_SIZE: the standard block size of the writer */
    uint64_t seq_floor;            /* sealed: every record with a smaller sequence number is dead */
    uint64_t durable_seq;          /* sealed: every record up to this one was made durable by sync() */
    uint64_t created_ns;           /* creation time, ns since the epoch */
    uint64_t directory_generation; /* sealed: the blocks file's generation while it is current */
} VdRoot;
#define VD_ROOT_LAYOUT(X)                                                                  \
    X(VdRoot, magic, 0) X(VdRoot, format_version, 8) X(VdRoot, flags, 12)                  \
    X(VdRoot, block_size, 16) X(VdRoot, seq_floor, 24) X(VdRoot, durable_seq, 32)          \
    X(VdRoot, created_ns, 40) X(VdRoot, directory_generation, 48)
_Static_assert(sizeof VD_ROOT_MAGIC - 1 == sizeof(((VdRoot *)0)->magic), "root magic");
/* the sealed fields are 8-byte aligned in the object: one store each */
_Static_assert(offsetof(VdRoot, seq_floor) % 8 == 0 && offsetof(VdRoot, durable_seq) % 8 == 0 &&
                   offsetof(VdRoot, directory_generation) % 8 == 0,
               "root layout");

/* ------------------------------------------------------------------ the block header
 * At the start of every block object, written by the block constructor (log.c) inside the
 * allocation. The CRC covers every byte after the crc field; the magic is stored last. */
#define VD_BLOCK_MAGIC 0x4b4c4256u /* "VBLK" little-endian */
typedef struct {
    uint32_t magic;     /* VD_BLOCK_MAGIC, stored last */
    uint32_t crc;       /* CRC-32C of the bytes from `version` to the end */
    uint32_t version;   /* VD_FORMAT_VERSION */
    uint32_t type;      /* VD_TYPE_STANDARD_BLOCK or VD_TYPE_JUMBO_BLOCK: the object's type number */
    uint64_t size;      /* bytes of the block (at most the object's usable size) */
    uint64_t log_start; /* where the log starts, relative to the block */
    /* The sequence number the next record would have taken when the block was made. Every
     * record in the block has a sequence number at least that, so nothing a previous life of
     * the space left there is read as a record. 0 (the zeros that writers before the birth
     * wrote there): no bound. */
    uint64_t birth;
    uint8_t zero[24];
} VdBlockHeader;
#define VD_BLOCK_HEADER_LAYOUT(X)                                                                       \
    X(VdBlockHeader, magic, 0) X(VdBlockHeader, crc, 4) X(VdBlockHeader, version, 8)                    \
    X(VdBlockHeader, type, 12) X(VdBlockHeader, size, 16) X(VdBlockHeader, log_start, 24)               \
    X(VdBlockHeader, birth, 32) X(VdBlockHeader, zero, 40)
#define VD_BLOCK_HEADER_SIZE sizeof(VdBlockHeader)
/* the bytes the header's CRC covers: from here to the end of the header */
#define VD_BLOCK_CRC_FROM offsetof(VdBlockHeader, version)
_Static_assert(VD_BLOCK_CRC_FROM == offsetof(VdBlockHeader, crc) + sizeof(uint32_t), "the CRC covers what follows it");

/* ------------------------------------------------------------------ records
 * A record: this header, then (only for a long key) a u32 key length, the key, the value. It
 * starts at a VD_RECORD_ALIGN boundary. The CRC covers every byte after the crc field and is
 * stored last. meta packs the sequence number (bits 0-47), the kind (48-51) and the key
 * length (52-63; VD_KLEN_LONG: the length follows the header). */
typedef struct {
    uint32_t crc;  /* CRC-32C of the rest of the record, stored last */
    uint32_t vlen; /* value length */
    uint64_t meta; /* seq:48 | kind:4 | klen:12 */
} VdRecordHeader;
#define VD_RECORD_HEADER_LAYOUT(X) X(VdRecordHeader, crc, 0) X(VdRecordHeader, vlen, 4) X(VdRecordHeader, meta, 8)
#define VD_RECORD_HEADER_SIZE sizeof(VdRecordHeader)
/* the bytes a record's CRC covers start here */
#define VD_RECORD_CRC_FROM offsetof(VdRecordHeader, vlen)
_Static_assert(VD_RECORD_CRC_FROM == offsetof(VdRecordHeader, crc) + sizeof(uint32_t), "the CRC covers what follows it");
/* A long key's u32 length, right after the header: the long header is this much longer. */
#define VD_RECORD_LONG_KLEN_SIZE sizeof(uint32_t)
#define VD_RECORD_LONG_HEADER_SIZE (VD_RECORD_HEADER_SIZE + VD_RECORD_LONG_KLEN_SIZE)
#define VD_RECORD_ALIGN 4u

#define VD_SEQ_BITS 48u
#define VD_SEQ_MASK ((UINT64_C(1) << VD_SEQ_BITS) - 1)
#define VD_KIND_SHIFT 48u
#define VD_KIND_MASK 0xFu
#define VD_KLEN_SHIFT 52u
#define VD_KLEN_LONG 4095u /* in the klen field: a u32 klen follows the header */
#define VD_KLEN_SHORT_MAX (VD_KLEN_LONG - 1)
_Static_assert(VD_KIND_SHIFT == VD_SEQ_BITS && VD_KLEN_SHIFT == VD_KIND_SHIFT + 4 && VD_KLEN_LONG == 0xFFFu,
               "meta: seq, kind and klen fill the 64 bits");

/* The kind of a record, in its meta field. */
typedef enum {
    VD_KIND_PUT = 1,
    VD_KIND_DEL = 2,
    VD_KIND_PAD = 3, /* fills the rest of a page; its value is zeros */
} VdRecordKind;

/* Largest key and value accepted (u32 fields on media). */
#define VD_MAX_KEY ((uint64_t)0xFFFFFFFFu - 64u)
#define VD_MAX_VALUE ((uint64_t)0xFFFFFFFFu - 64u)

/* ------------------------------------------------------------------ the layouts, asserted
 * Every field at its offset, and each structure of its size: no padding anywhere. */
#define VD_AT(type, field, offset) \
    _Static_assert(offsetof(type, field) == (offset), #type "." #field " is not at " #offset);
VD_ROOT_LAYOUT(VD_AT)
VD_BLOCK_HEADER_LAYOUT(VD_AT)
VD_RECORD_HEADER_LAYOUT(VD_AT)
_Static_assert(sizeof(VdRoot) == 56 && sizeof(VdRoot) <= VD_ROOT_OBJECT_SIZE, "root size");
_Static_assert(sizeof(VdBlockHeader) == 64, "block header size");
_Static_assert(sizeof(VdRecordHeader) == 16, "record header size");

/* ------------------------------------------------------------------ the block constructor
 * The argument of the block constructor that pmemobj_alloc runs on a new block or reserve
 * object (log.c, block_constructor): not on the media, but its layout is shared by
 * the core that fills it (Core.block_init) and the constructor that reads it. */
typedef struct {
    uint64_t persist; /* address of libpmemobj's pmemobj_persist(PMEMobjpool *, const void *, size_t) */
    uint64_t birth;   /* written into the header */
    uint64_t size;    /* bytes asked of the allocator: the block's size (at most VD_BLOCK_SIZE for a standard block) */
    uint32_t type;    /* VdObjectType: the reserve gets its first header-sized bytes zeroed, nothing else */
    uint32_t flags;   /* VD_INIT_* below */
} VdBlockInit;
#define VD_INIT_ZERO 1u        /* zero the whole object first, persisted (as pmemobj_zalloc) */
#define VD_INIT_PERSIST_LOG 2u /* persist the zeroed log too (real persistent memory) */

#endif
