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
/* The root's format version once the store holds a batch (VD_KIND_BATCH): a viperdbm that
 * reads only version 2 refuses the store rather than take a batch for damage. Block headers
 * and the blocks file keep VD_FORMAT_VERSION: their layout did not change. */
#define VD_BATCH_FORMAT_VERSION 3u

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
    /* A batch (written whole or not at all): no key; its value is the batch's put and
     * delete records, back to back, each 4-byte aligned and flagged VD_KIND_IN_BATCH, with
     * consecutive sequence numbers from the batch's own. Its CRC covers them all. */
    VD_KIND_BATCH = 4,
} VdRecordKind;
/* Or'ed into the kind of a put or delete inside a batch: such a record is valid only there. */
#define VD_KIND_IN_BATCH 8u

/* Largest key and value accepted (u32 fields on media). */
#define VD_MAX_KEY ((uint64_t)0xFFFFFFFFu - 64u)
#define VD_MAX_VALUE ((uint64_t)0xFFFFFFFFu - 64u)

/* ------------------------------------------------------------------ the readers file
 * `readers` in the store directory: what the writer publishes to readers in other processes
 * (as SQLite's -shm and LMDB's lock.mdb). Mapped shared by the writer and every reader,
 * written with plain stores in a fixed order (shared.c says which), never fsynced, never
 * needed after a power cut: each writer rebuilds its block table at open. Unlike the pool's
 * structures these are accessed in place (the mapping is page-aligned and every field is
 * naturally aligned), with atomic loads and stores.
 *
 * The file: this header (VD_READERS_HEADER_SIZE bytes), VD_READER_SLOTS reader slots, then
 * VD_READERS_BLOCKS block entries. A reader owns its slot while it holds an open-file-
 * description lock (F_OFD_SETLK) on the slot's first byte: the kernel drops it when the
 * reader dies, which is how the writer tells a reader that is gone from one that is idle. */
#define VD_READERS_MAGIC "VDREADRS"
#define VD_READERS_VERSION 1u
#define VD_READERS_HEADER_SIZE 4096u
#define VD_READER_SLOTS 1024u
/* at least one entry per MiB of a 256 GiB pool (a jumbo block is over 1 MiB) */
#define VD_READERS_BLOCKS 262144u
typedef struct {
    char magic[8];           /* VD_READERS_MAGIC, stored last when a writer makes the file */
    uint32_t version;        /* VD_READERS_VERSION */
    uint32_t reader_slots;   /* VD_READER_SLOTS */
    uint64_t block_entries;  /* VD_READERS_BLOCKS */
    uint64_t pool_id;        /* the root's created_ns: the pool this file describes */
    uint64_t commit;         /* bumped by every change the writer publishes (never 0 once made) */
    uint64_t max_seq;        /* every record up to this sequence number is published */
    uint64_t table_gen;      /* bumped when an entry is added, retired or cleared, or the active block changes */
    uint64_t table_used;     /* entries [0, table_used) may be in use */
    uint64_t active_entry;   /* the entry of the block the writer appends to (VD_NO_ENTRY: none) */
    uint64_t mapped;         /* bytes of the pool the writer maps: the parts a reader must map */
    uint64_t writer_pid;     /* the writer's process id (0: no writer has the store open) */
    uint64_t root_off;       /* pool offset of the root object (readers check pool_id there) */
    uint64_t seq_floor;      /* the root's seq_floor: every older record is dead (reorganize() drops deletes) */
    uint64_t barred_by;      /* the process id of a writer about to swap another store in at this path
                              * (reorganize(), flag 'n'): no reader takes a slot here meanwhile (0: none) */
} VdReadersHeader;
#define VD_READERS_HEADER_LAYOUT(X)                                                                   \
    X(VdReadersHeader, magic, 0) X(VdReadersHeader, version, 8) X(VdReadersHeader, reader_slots, 12)  \
    X(VdReadersHeader, block_entries, 16) X(VdReadersHeader, pool_id, 24)                             \
    X(VdReadersHeader, commit, 32) X(VdReadersHeader, max_seq, 40) X(VdReadersHeader, table_gen, 48)  \
    X(VdReadersHeader, table_used, 56) X(VdReadersHeader, active_entry, 64)                           \
    X(VdReadersHeader, mapped, 72) X(VdReadersHeader, writer_pid, 80) X(VdReadersHeader, root_off, 88) \
    X(VdReadersHeader, seq_floor, 96) X(VdReadersHeader, barred_by, 104)
#define VD_NO_ENTRY UINT64_MAX

/* One reader: the commit it has caught up to. The writer frees a block it retired at commit
 * r only once every live reader's pin is at least r. */
typedef struct {
    uint64_t pin; /* 0: holds everything (a reader that has not caught up yet) */
    uint64_t pid; /* the reader's process id (0: a free slot) */
    uint8_t zero[48]; /* a slot a cache line: readers never write a line another reads */
} VdReaderSlot;
#define VD_READER_SLOT_LAYOUT(X) X(VdReaderSlot, pin, 0) X(VdReaderSlot, pid, 8) X(VdReaderSlot, zero, 16)

/* One block of the pool, as readers may read it. */
typedef struct {
    uint64_t stamp;   /* the commit that wrote this entry (0: a free entry); unchanged while it is in use */
    uint64_t off;     /* pool offset of the block object */
    uint64_t size;    /* bytes of the block object its log may use */
    uint64_t birth;   /* the block header's birth: (off, birth) names one life of the space */
    uint64_t end;     /* pool offset just past the last published record */
    uint64_t retired; /* the commit at which the writer freed it (0: live); it is held until readers pass it */
    uint32_t type;    /* VD_TYPE_STANDARD_BLOCK or VD_TYPE_JUMBO_BLOCK */
    uint32_t zero;
} VdReadersBlock;
#define VD_READERS_BLOCK_LAYOUT(X)                                                                 \
    X(VdReadersBlock, stamp, 0) X(VdReadersBlock, off, 8) X(VdReadersBlock, size, 16)              \
    X(VdReadersBlock, birth, 24) X(VdReadersBlock, end, 32) X(VdReadersBlock, retired, 40)         \
    X(VdReadersBlock, type, 48) X(VdReadersBlock, zero, 52)
#define VD_READERS_SLOTS_AT VD_READERS_HEADER_SIZE
#define VD_READERS_BLOCKS_AT (VD_READERS_SLOTS_AT + VD_READER_SLOTS * sizeof(VdReaderSlot))
#define VD_READERS_FILE_SIZE (VD_READERS_BLOCKS_AT + (uint64_t)VD_READERS_BLOCKS * sizeof(VdReadersBlock))

/* ------------------------------------------------------------------ the layouts, asserted
 * Every field at its offset, and each structure of its size: no padding anywhere. */
#define VD_AT(type, field, offset) \
    _Static_assert(offsetof(type, field) == (offset), #type "." #field " is not at " #offset);
VD_ROOT_LAYOUT(VD_AT)
VD_BLOCK_HEADER_LAYOUT(VD_AT)
VD_RECORD_HEADER_LAYOUT(VD_AT)
VD_READERS_HEADER_LAYOUT(VD_AT)
VD_READER_SLOT_LAYOUT(VD_AT)
VD_READERS_BLOCK_LAYOUT(VD_AT)
_Static_assert(sizeof(VdRoot) == 56 && sizeof(VdRoot) <= VD_ROOT_OBJECT_SIZE, "root size");
_Static_assert(sizeof(VdBlockHeader) == 64, "block header size");
_Static_assert(sizeof(VdRecordHeader) == 16, "record header size");
_Static_assert(sizeof(VdReadersHeader) == 112 && sizeof(VdReadersHeader) <= VD_READERS_HEADER_SIZE, "readers header size");
_Static_assert(sizeof(VdReaderSlot) == 64, "reader slot size");
_Static_assert(sizeof(VdReadersBlock) == 56, "readers block size");
_Static_assert(sizeof VD_READERS_MAGIC - 1 == sizeof(((VdReadersHeader *)0)->magic), "readers magic");

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
