/* Module init of viperdbm._vipercore, the table of the errors the core raises, and the crash
 * points. */
#include "core.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

uint64_t os_page = 4096; /* sysconf(_SC_PAGESIZE) once the module is initialised */

/* ------------------------------------------------------------------ errors
 * viperdbm's exception classes, handed over by set_error_classes() when viperdbm/_native.py
 * imports the module. Until then (only a test importing the extension bare) the rows fall
 * back to the built-in class the viperdbm one derives from. */
static PyObject *ClosedError, *CorruptedError, *StoreError;

typedef enum { CLS_CLOSED, CLS_CORRUPTED, CLS_STORE, CLS_VALUE } ErrClass;

#define IO_ERROR_TEXT                                                                          \
    "the disk reported an I/O error while writing the store; nothing written since the last " \
    "successful sync() is known to be durable; close the store, check the disk, and reopen"

/* One row per ErrKind (core.h), in its order: the class, and the message in the user's
 * terms, a PyUnicode_FromFormat format of the arguments core.h lists for the kind. */
static const struct {
    ErrClass cls;
    const char *format;
} error_table[] = {
    [ERR_CLOSED] = {CLS_CLOSED, "DBM object has already been closed"},
    [ERR_FORKED] = {CLS_CLOSED, "the store was opened before fork(): this process must open it again"},
    [ERR_INTERNAL] = {CLS_STORE, "internal inconsistency of the open store: %s"},
    [ERR_IO_REFUSED] = {CLS_STORE, "the store refuses writes: " IO_ERROR_TEXT},
    [ERR_IO_UNDURABLE] = {CLS_STORE, "written but not known to be durable: " IO_ERROR_TEXT},
    [ERR_BLOCKS_OVERLAP] = {CLS_CORRUPTED, "overlapping blocks in the pool"},
    [ERR_BLOCK_OUTSIDE] = {CLS_CORRUPTED, "block at offset %llu (size %llu) lies outside the pool (%llu bytes)"},
    [ERR_BLOCK_NOT_NEW] = {CLS_CORRUPTED,
                           "the object at offset %llu has no header of a new block (allocate blocks with the "
                           "block constructor)"},
    [ERR_BLOCK_VERSION] = {CLS_CORRUPTED, "block at offset %llu has format version %u, expected %u"},
    [ERR_BLOCK_HEADER] = {CLS_CORRUPTED, "block at offset %llu has an impossible header"},
    [ERR_BLOCK_KIND] = {CLS_CORRUPTED, "block at offset %llu is of an unknown kind (%u)"},
    [ERR_SEQ_TWICE] = {CLS_CORRUPTED, "two records carry sequence number %llu"},
    [ERR_RECORD_OUTSIDE] = {CLS_CORRUPTED, "a record lies outside every block"},
    [ERR_PART_SIZE] = {CLS_CORRUPTED,
                       "the store's part file %S maps to %llu bytes, not a non-zero multiple of the "
                       "page size (%llu): it was truncated or copied incompletely"},
    [ERR_NO_PARTS] = {CLS_CORRUPTED, "the store has no part files to map"},
    [ERR_PEEK_OUTSIDE] = {CLS_CORRUPTED, "offset outside the pool"},
    [ERR_TOO_LARGE] = {CLS_VALUE, "key or value too large for viperdbm (limit 4 GiB)"},
    [ERR_INDEX_HELD] = {CLS_STORE,
                        "the store cannot take this write while keys() or items() of it is being "
                        "listed (from a finalizer or another thread): write it again afterwards"},
};

static PyObject *error_class(ErrKind kind) {
    switch (error_table[kind].cls) {
    case CLS_CLOSED:
        return ClosedError ? ClosedError : PyExc_ValueError;
    case CLS_CORRUPTED:
        return CorruptedError ? CorruptedError : PyExc_OSError;
    case CLS_STORE:
        return StoreError ? StoreError : PyExc_OSError;
    default:
        return PyExc_ValueError;
    }
}

int core_error(ErrKind kind, ...) {
    va_list ap;
    va_start(ap, kind);
    PyObject *message = PyUnicode_FromFormatV(error_table[kind].format, ap);
    va_end(ap);
    if (message) {
        PyErr_SetObject(error_class(kind), message);
        Py_DECREF(message);
    }
    return -1;
}

int core_error_errno(ErrKind kind, int err) {
    PyObject *cls = error_class(kind), *exc;
    if (cls == PyExc_OSError) { /* the fallback: OSError(errno, message) */
        exc = PyObject_CallFunction(cls, "is", err, error_table[kind].format);
    } else { /* a viperdbm.error takes errno as a keyword */
        PyObject *args = Py_BuildValue("(s)", error_table[kind].format);
        PyObject *kw = args ? Py_BuildValue("{s:i}", "errno", err) : NULL;
        exc = kw ? PyObject_Call(cls, args, kw) : NULL;
        Py_XDECREF(args);
        Py_XDECREF(kw);
    }
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return -1;
}

/* ------------------------------------------------------------------ crash points
 * A test hook: crash_point(name) marks each internal step after which a crash leaves a
 * different state on the media (a header written, a record's body before its CRC, an
 * index update after a media write, ...), so that a test can kill the process at each of
 * them in turn instead of at random instants. Configured once, at import:
 *   VIPERDBM_CRASH_AT=N    the N-th crash point (counted from 1) sends SIGKILL to the process;
 *   VIPERDBM_CRASH_LOG=path  every crash point appends "<n> <name>" to path.
 * Unset (the normal case) a crash point costs one predictable branch on crash_armed. */
int crash_armed;
static unsigned long long crash_at, crash_count;
static int crash_log_fd = -1;

void crash_point_hit(const char *name) {
    /* atomic: a block constructor runs inside pmemobj_alloc, without the GIL */
    unsigned long long n = __atomic_add_fetch(&crash_count, 1, __ATOMIC_SEQ_CST);
    if (crash_log_fd >= 0) {
        char line[160];
        int len = snprintf(line, sizeof line, "%llu %s\n", n, name);
        if (len >= (int)sizeof line) {
            len = (int)sizeof line - 1;
            line[len - 1] = '\n';
        }
        if (len > 0 && write(crash_log_fd, line, (size_t)len) < 0) {
            /* a log that cannot be written only makes the count short: the test sees that */
        }
    }
    if (n == crash_at) {
        kill(getpid(), SIGKILL);
        for (;;) pause(); /* SIGKILL cannot be caught: never returns */
    }
}

static void crash_points_init(void) {
    const char *at = getenv("VIPERDBM_CRASH_AT"), *logpath = getenv("VIPERDBM_CRASH_LOG");
    if (at && *at) crash_at = strtoull(at, NULL, 10);
    if (logpath && *logpath) crash_log_fd = open(logpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    crash_armed = crash_at != 0 || crash_log_fd >= 0;
}

static PyObject *mod_set_error_classes(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *closed, *corrupted, *base = NULL;
    if (!PyArg_ParseTuple(args, "OO|O", &closed, &corrupted, &base)) return NULL;
    Py_XSETREF(ClosedError, Py_NewRef(closed));
    Py_XSETREF(CorruptedError, Py_NewRef(corrupted));
    Py_XSETREF(StoreError, Py_XNewRef(base));
    Py_RETURN_NONE;
}

/* crash_point(name): a crash point of a Python step, counted with the native ones */
static PyObject *mod_crash_point(PyObject *mod, PyObject *arg) {
    (void)mod;
    if (crash_armed) {
        const char *name = PyUnicode_AsUTF8(arg);
        if (!name) return NULL;
        crash_point_hit(name);
    } else if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "crash_point() takes a str");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"crash_point", mod_crash_point, METH_O, "crash_point(name): a crash point (VIPERDBM_CRASH_AT/_LOG)"},
    {"set_error_classes", mod_set_error_classes, METH_VARARGS, "set_error_classes(ClosedError, CorruptedError)"},
    {"crc32c", mod_crc32c, METH_VARARGS, "crc32c(data, crc=0) -> int (Castagnoli)"},
    {"sigblock", mod_sigblock, METH_NOARGS, "sigblock() -> token: defer asynchronous signals in this thread"},
    {"sigunblock", mod_sigunblock, METH_O, "sigunblock(token): deliver the deferred signals"},
    {"sigpoll", mod_sigpoll, METH_O, "sigpoll(token): deliver pending signals, then defer again"},
    {"readers_claim", mod_readers_claim, METH_VARARGS,
     "readers_claim(fd, stale_bar=0) -> slot; -1 if every slot is taken, -2 if new readers are barred"},
    {"readers_release", mod_readers_release, METH_VARARGS, "readers_release(fd, slot)"},
    {"readers_header", mod_readers_header, METH_O,
     "readers_header(fd) -> None or (pool_id, root_off, mapped, writer_pid, commit, table_gen)"},
    {"readers_live", mod_readers_live, METH_O, "readers_live(fd) -> whether a live reader holds a slot"},
    {"readers_barred_by", mod_readers_barred_by, METH_O, "readers_barred_by(fd) -> pid barring new readers, or 0"},
    {"readers_bar", mod_readers_bar, METH_O, "readers_bar(fd) -> False if a live reader holds a slot"},
    {"readers_unbar", mod_readers_unbar, METH_O, "readers_unbar(fd)"},
    {"map_parts", mod_map_parts, METH_VARARGS,
     "map_parts([(path, size)], reserve=0) -> (base, total), read-only"},
    {"map_parts_at", mod_map_parts_at, METH_VARARGS,
     "map_parts_at(base, at, reserved, [(path, size)]) -> total: more parts after at"},
    {"unmap_parts", mod_unmap_parts, METH_VARARGS, "unmap_parts(base, total)"},
    {"peek", mod_peek, METH_VARARGS, "peek(base, total, off, n) -> bytes"},
    {"jumbo_size", Core_jumbo_size, METH_VARARGS, "jumbo_size(klen, vlen) -> bytes to allocate"},
    {"batch_jumbo_size", Core_batch_jumbo_size, METH_O,
     "batch_jumbo_size(pairs) -> bytes to allocate for a batch of (key, value or None) pairs"},
    {NULL, NULL, 0, NULL},
};

/* WriteCode: the write codes of core.h (WRITE_CODES) as an IntEnum, so that Python names
 * them from the same table. */
static int add_write_codes(PyObject *m) {
#define WRITE_CODE_PAIR(name, value) "(si)"
#define WRITE_CODE_ARGS(name, value) , #name, (int)(value)
    PyObject *members = Py_BuildValue("[" WRITE_CODES(WRITE_CODE_PAIR) "]" WRITE_CODES(WRITE_CODE_ARGS));
#undef WRITE_CODE_PAIR
#undef WRITE_CODE_ARGS
    if (!members) return -1;
    PyObject *enum_mod = PyImport_ImportModule("enum");
    PyObject *int_enum = enum_mod ? PyObject_GetAttrString(enum_mod, "IntEnum") : NULL;
    Py_XDECREF(enum_mod);
    PyObject *cls = NULL;
    if (int_enum) {
        PyObject *kw = Py_BuildValue("{ss}", "module", "viperdbm._vipercore");
        PyObject *args = kw ? Py_BuildValue("(sO)", "WriteCode", members) : NULL;
        if (args) cls = PyObject_Call(int_enum, args, kw);
        Py_XDECREF(args);
        Py_XDECREF(kw);
        Py_DECREF(int_enum);
    }
    Py_DECREF(members);
    if (!cls) return -1;
    if (PyModule_AddObject(m, "WriteCode", cls) < 0) {
        Py_DECREF(cls);
        return -1;
    }
    return 0;
}

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "viperdbm._vipercore", "The native hot paths of viperdbm.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__vipercore(void) {
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0) os_page = (uint64_t)page;
    crc_init();
    crash_points_init();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (core_type_init(m) < 0 || map_type_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#define ADD(name, value) PyModule_AddObject(m, name, PyLong_FromUnsignedLongLong((unsigned long long)(value)))
    if (PyModule_AddObject(m, "FORMAT", format_export()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    ADD("BLOCK_CONSTRUCTOR", (uintptr_t)&block_constructor);
    ADD("PERSIST_NONE", PERSIST_NONE);
    ADD("PERSIST_MSYNC", PERSIST_MSYNC);
    ADD("PERSIST_FUNC", PERSIST_FUNC);
#undef ADD
    if (add_write_codes(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
