/* Read-only mapping of a store's part files, for readers that share a store without
 * libpmemobj's exclusive lock. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

/* The total size of a list of (path, size) parts, each checked; 0 with an error set. */
static uint64_t parts_total(PyObject *seq) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        unsigned long long size;
        PyObject *path;
        if (!PyArg_ParseTuple(item, "O&K", PyUnicode_FSConverter, &path, &size)) return 0;
        Py_DECREF(path);
        if (size == 0 || size % os_page) {
            core_error(ERR_PART_SIZE, PyTuple_GET_ITEM(item, 0), size, (unsigned long long)os_page);
            return 0;
        }
        total += size;
    }
    if (total == 0) core_error(ERR_NO_PARTS);
    return total;
}

/* Address space for a mapping of reserved bytes, nothing accessible yet. */
static uint8_t *reserve_space(uint64_t reserved) {
    void *p = mmap(NULL, (size_t)reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Map the parts back to back from base + at, over address space reserved for them. On an
 * error, what this call mapped is reserved space again and -1 is returned. */
static int map_list(uint8_t *base, uint64_t at, PyObject *seq) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint64_t start = at;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i), *path;
        unsigned long long size;
        if (!PyArg_ParseTuple(item, "O&K", PyUnicode_FSConverter, &path, &size)) goto fail;
        int fd = open(PyBytes_AS_STRING(path), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
            Py_DECREF(path);
            goto fail;
        }
        void *p = mmap(base + at, (size_t)size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
        int saved = errno;
        close(fd);
        if (p == MAP_FAILED) {
            errno = saved;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
            Py_DECREF(path);
            goto fail;
        }
        Py_DECREF(path);
        at += size;
    }
    return 0;
fail:
    if (at > start)
        mmap(base + start, (size_t)(at - start), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    return -1;
}

/* map_parts([(path, size), ...], reserve=0) -> (base, total): map the part files of a pool
 * read-only, back to back, as libpmemobj maps them (a SINGLEHDR poolset has no per-part
 * headers), for readers that share a store without libpmemobj's exclusive lock. With
 * reserve larger than total, that much address space is taken, so that parts the writer
 * adds later can be mapped after these (map_parts_at) without mapping these again; the
 * caller unmaps max(total, reserve) bytes. */
PyObject *mod_map_parts(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *list;
    unsigned long long reserve = 0;
    if (!PyArg_ParseTuple(args, "O|K", &list, &reserve)) return NULL;
    PyObject *seq = PySequence_Fast(list, "map_parts() takes a list of (path, size)");
    if (!seq) return NULL;
    uint64_t total = parts_total(seq);
    uint64_t reserved = reserve > total ? reserve : total;
    uint8_t *base = total ? reserve_space(reserved) : NULL;
    if (total && !base) PyErr_SetFromErrno(PyExc_OSError);
    if (!base || map_list(base, 0, seq) < 0) {
        if (base) munmap(base, (size_t)reserved);
        Py_DECREF(seq);
        return NULL;
    }
    Py_DECREF(seq);
    return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)base, (unsigned long long)total);
}

/* map_parts_at(base, at, reserved, [(path, size), ...]) -> total: map more parts after the
 * at bytes mapped so far by map_parts(..., reserve=reserved); the new total */
PyObject *mod_map_parts_at(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned long long base, at, reserved;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "KKKO", &base, &at, &reserved, &list)) return NULL;
    PyObject *seq = PySequence_Fast(list, "map_parts_at() takes a list of (path, size)");
    if (!seq) return NULL;
    uint64_t more = parts_total(seq);
    if (more && (!base || base % os_page || at % os_page || at > reserved || more > reserved - at)) {
        Py_DECREF(seq);
        return internal_error("the parts do not fit the reserved address space"), NULL;
    }
    if (!more || map_list((uint8_t *)(uintptr_t)base, at, seq) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_DECREF(seq);
    return PyLong_FromUnsignedLongLong(at + more);
}

/* peek(base, total, off, n) -> bytes: read from a mapping made by map_parts(), bounds-checked */
PyObject *mod_peek(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned long long base, total, off, n;
    if (!PyArg_ParseTuple(args, "KKKK", &base, &total, &off, &n)) return NULL;
    if (off > total || n > total - off) {
        core_error(ERR_PEEK_OUTSIDE);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)(uintptr_t)(base + off), (Py_ssize_t)n);
}

/* unmap_parts(base, total) */
PyObject *mod_unmap_parts(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned long long base, total;
    if (!PyArg_ParseTuple(args, "KK", &base, &total)) return NULL;
    if (munmap((void *)(uintptr_t)base, (size_t)total) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}
