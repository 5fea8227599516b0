/* pmem_msync for libpmemobj, so that an I/O error never aborts the process.
 *
 * On an ordinary (non-pmem) file libpmemobj 1.12.1 makes its writes durable through
 * libpmem's exported pmem_msync, and FATAL()s -- abort() -- when it fails (obj.c
 * obj_msync_nofail, util_persist). viperdbm/_pmemobj.py loads this extension with
 * RTLD_GLOBAL before it loads libpmemobj, so the dynamic linker binds libpmemobj's
 * reference pmem_msync@LIBPMEM_1.0 to the definition below (an unversioned definition
 * satisfies a versioned reference; tests/test_iofail.py checks that it is really the one
 * libpmemobj calls). viperdbm's own sync() still calls libpmem's pmem_msync, through its
 * ctypes handle of libpmem, and sees its -1.
 *
 * The definition does what libpmem's does on a non-pmem mapping (align the start down to
 * the page, msync MS_SYNC). A failure is recorded in the slot below and reported as a
 * success: libpmemobj carries on consistently in memory (the pages are still in the page
 * cache, so a crash of the process loses nothing), and _pmemobj._invoke, after every call
 * into libpmemobj, takes the slot and turns it into a viperdbm.error and a handle that
 * refuses writes (after a failed msync the kernel may have dropped the dirty pages: later
 * syncs would not make them durable). */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define EXPORTED __attribute__((visibility("default")))

/* errno of the first failed msync not yet taken (0: none), and the address it was for */
EXPORTED int viperdbm_pmemio_errno;
EXPORTED uintptr_t viperdbm_pmemio_addr;
/* how many times libpmemobj called the definition below (for the binding test) */
EXPORTED unsigned long viperdbm_pmemio_calls;

EXPORTED int pmem_msync(const void *addr, size_t len) {
    static uintptr_t page;
    if (!page) {
        long p = sysconf(_SC_PAGESIZE);
        page = p > 0 ? (uintptr_t)p : 4096u;
    }
    __atomic_add_fetch(&viperdbm_pmemio_calls, 1, __ATOMIC_RELAXED);
    uintptr_t start = (uintptr_t)addr & ~(page - 1);
    int saved = errno;
    if (msync((void *)start, len + ((uintptr_t)addr - start), MS_SYNC) != 0) {
        int e = errno ? errno : EIO;
        int none = 0;
        if (__atomic_compare_exchange_n(&viperdbm_pmemio_errno, &none, e, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            __atomic_store_n(&viperdbm_pmemio_addr, (uintptr_t)addr, __ATOMIC_SEQ_CST);
    }
    errno = saved;
    return 0;
}

/* Take the recorded failure: its errno (0 if none) and, through *addr, its address. */
EXPORTED int viperdbm_pmemio_take(uintptr_t *addr) {
    int e = __atomic_exchange_n(&viperdbm_pmemio_errno, 0, __ATOMIC_SEQ_CST);
    *addr = __atomic_load_n(&viperdbm_pmemio_addr, __ATOMIC_SEQ_CST);
    return e;
}
