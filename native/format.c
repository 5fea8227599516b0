/* The on-media format of vipercore.h, exported to Python as the module's FORMAT:
 *
 *   {"structures": {"VdRecordHeader": {"size": 16, "fields": {"crc": (0, 4), ...}}, ...},
 *    "constants": {"FORMAT_VERSION": 2, ...},
 *    "root_magic": b"VIPERDBM"}
 *
 * Sizes and offsets come from sizeof and offsetof, constant names from the VD_ macros less
 * their prefix: viperdbm/_layout.py takes its numbers from here, and tests/test_layout.py
 * checks docs/format.md against it. */
#include "core.h"

typedef struct {
    const char *name;
    size_t offset, size;
} FieldDesc;

#define FIELD(type, field, offset) {#field, offsetof(type, field), sizeof(((type *)0)->field)},

static const FieldDesc root_fields[] = {VD_ROOT_LAYOUT(FIELD){NULL, 0, 0}};
static const FieldDesc block_header_fields[] = {VD_BLOCK_HEADER_LAYOUT(FIELD){NULL, 0, 0}};
static const FieldDesc record_header_fields[] = {VD_RECORD_HEADER_LAYOUT(FIELD){NULL, 0, 0}};
static const FieldDesc readers_header_fields[] = {VD_READERS_HEADER_LAYOUT(FIELD){NULL, 0, 0}};
static const FieldDesc reader_slot_fields[] = {VD_READER_SLOT_LAYOUT(FIELD){NULL, 0, 0}};
static const FieldDesc readers_block_fields[] = {VD_READERS_BLOCK_LAYOUT(FIELD){NULL, 0, 0}};

static const struct {
    const char *name;
    size_t size;
    const FieldDesc *fields;
} structures[] = {
    {"VdRoot", sizeof(VdRoot), root_fields},
    {"VdBlockHeader", sizeof(VdBlockHeader), block_header_fields},
    {"VdRecordHeader", sizeof(VdRecordHeader), record_header_fields},
    {"VdReadersHeader", sizeof(VdReadersHeader), readers_header_fields},
    {"VdReaderSlot", sizeof(VdReaderSlot), reader_slot_fields},
    {"VdReadersBlock", sizeof(VdReadersBlock), readers_block_fields},
};

#define CONSTANT(name) {#name, (unsigned long long)(VD_##name)}
static const struct {
    const char *name;
    unsigned long long value;
} constants[] = {
    CONSTANT(FORMAT_VERSION),
    CONSTANT(BATCH_FORMAT_VERSION),
    CONSTANT(PAGE_SIZE),
    CONSTANT(BLOCK_SIZE),
    CONSTANT(INLINE_MAX),
    CONSTANT(TYPE_STANDARD_BLOCK),
    CONSTANT(TYPE_JUMBO_BLOCK),
    CONSTANT(TYPE_RESERVE),
    CONSTANT(ROOT_OBJECT_SIZE),
    CONSTANT(BLOCK_MAGIC),
    CONSTANT(RECORD_ALIGN),
    CONSTANT(RECORD_LONG_HEADER_SIZE),
    CONSTANT(SEQ_BITS),
    CONSTANT(KIND_SHIFT),
    CONSTANT(KLEN_SHIFT),
    CONSTANT(KLEN_LONG),
    CONSTANT(KIND_PUT),
    CONSTANT(KIND_DEL),
    CONSTANT(KIND_PAD),
    CONSTANT(KIND_BATCH),
    CONSTANT(KIND_IN_BATCH),
    CONSTANT(MAX_KEY),
    CONSTANT(MAX_VALUE),
    CONSTANT(READERS_VERSION),
    CONSTANT(READERS_HEADER_SIZE),
    CONSTANT(READER_SLOTS),
    CONSTANT(READERS_BLOCKS),
    CONSTANT(READERS_SLOTS_AT),
    CONSTANT(READERS_BLOCKS_AT),
    CONSTANT(READERS_FILE_SIZE),
};

/* Set d[key] = value, consuming the reference to value (NULL: the error is already set). */
static int set_new(PyObject *d, const char *key, PyObject *value) {
    if (value == NULL) return -1;
    int rc = PyDict_SetItemString(d, key, value);
    Py_DECREF(value);
    return rc;
}

static PyObject *structure_desc(size_t size, const FieldDesc *fields) {
    PyObject *desc = PyDict_New(), *by_name = PyDict_New();
    if (!desc || !by_name) goto fail;
    for (const FieldDesc *f = fields; f->name; f++)
        if (set_new(by_name, f->name, Py_BuildValue("(nn)", (Py_ssize_t)f->offset, (Py_ssize_t)f->size)) < 0)
            goto fail;
    if (set_new(desc, "size", PyLong_FromSize_t(size)) < 0) goto fail;
    if (PyDict_SetItemString(desc, "fields", by_name) < 0) goto fail;
    Py_DECREF(by_name);
    return desc;
fail:
    Py_XDECREF(desc);
    Py_XDECREF(by_name);
    return NULL;
}

PyObject *format_export(void) {
    PyObject *format = PyDict_New(), *structs = PyDict_New(), *consts = PyDict_New();
    if (!format || !structs || !consts) goto fail;
    for (size_t i = 0; i < sizeof structures / sizeof structures[0]; i++)
        if (set_new(structs, structures[i].name, structure_desc(structures[i].size, structures[i].fields)) < 0)
            goto fail;
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (set_new(consts, constants[i].name, PyLong_FromUnsignedLongLong(constants[i].value)) < 0) goto fail;
    if (PyDict_SetItemString(format, "structures", structs) < 0 ||
        PyDict_SetItemString(format, "constants", consts) < 0 ||
        set_new(format, "root_magic", PyBytes_FromStringAndSize(VD_ROOT_MAGIC, sizeof VD_ROOT_MAGIC - 1)) < 0 ||
        set_new(format, "readers_magic", PyBytes_FromStringAndSize(VD_READERS_MAGIC, sizeof VD_READERS_MAGIC - 1)) < 0)
        goto fail;
    Py_DECREF(structs);
    Py_DECREF(consts);
    return format;
fail:
    Py_XDECREF(format);
    Py_XDECREF(structs);
    Py_XDECREF(consts);
    return NULL;
}
