"""Build the native part: one small CPython extension, compiled when the package is installed.

libpmemobj itself is not linked here; it is bound through ctypes (viperdbm/_pmemobj.py).
The extension only touches the pool's mapped memory, handed to it as an address and a length,
and (native/pmemio.c) defines the pmem_msync that libpmemobj binds, so that a failed msync
becomes a viperdbm.error instead of an abort inside libpmemobj.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "viperdbm._vipercore",
            sources=["native/vipercore.c", "native/pmemio.c"],
            depends=["native/vipercore.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
    ]
)
