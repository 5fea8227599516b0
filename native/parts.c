/* Read-only mapping of a store's part files, for readers that share a store without
 * libpmemobj's exclusive lock. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

/* map_parts([(path, size), ...]) -> base: map the part files of a pool read-only, back to
 * back, as libpmemobj maps them (a SINGLEHDR poolset has no per-part headers), for readers
 * that share a store without libpmemobj's exclusive lock. */
PyObject *mod_map_parts(PyObject *mod, PyObject *arg) {
    (void)mod;
    PyObject *seq = PySequence_Fast(arg, "map_parts() takes a list of (path, size)");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        unsigned long long size;
        PyObject *path;
        if (!PyArg_ParseTuple(item, "O&K", PyUnicode_FSConverter, &path, &size)) {
            Py_DECREF(seq);
            return NULL;
        }
        Py_DECREF(path);
        if (size == 0 || size % os_page) {
            core_error(ERR_PART_SIZE, PyTuple_GET_ITEM(item, 0), size,
                       (unsigned long long)os_page);
            Py_DECREF(seq);
            return NULL;
        }
        total += size;
    }
    if (total == 0) {
        Py_DECREF(seq);
        core_error(ERR_NO_PARTS);
        return NULL;
    }
    uint8_t *base = mmap(NULL, (size_t)total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        Py_DECREF(seq);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    uint64_t at = 0;
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
    Py_DECREF(seq);
    return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)base, (unsigned long long)total);
fail:
    munmap(base, (size_t)total);
    Py_DECREF(seq);
    return NULL;
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
