"""Build the native part: one small CPython extension, compiled when the package is installed.

libpmemobj itself is not linked here; it is bound through ctypes (viperdbm/_pmemobj.py).
The extension only touches the pool's mapped memory, handed to it as an address and a length,
and (native/pmemio.c) defines the pmem_msync that libpmemobj binds, so that a failed msync
becomes a viperdbm.error instead of an abort inside libpmemobj.
"""

from setuptools import Extension, setup

NATIVE_SOURCES = [
    "module",
    "core_type",
    "map_type",
    "log",
    "batch",
    "index",
    "recovery",
    "shared",
    "compaction",
    "format",
    "parts",
    "crc32c",
    "signals",
    "pmemio",
]
C_FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]

setup(
    ext_modules=[
        Extension(
            "viperdbm._vipercore",
            sources=[f"native/{name}.c" for name in NATIVE_SOURCES],
            depends=["native/core.h", "native/vipercore.h"],
            # -flto: the core is split one concern a file (native/core.h), and a put or a get
            # crosses several of them; link-time optimisation inlines across the files as a
            # single translation unit would, so the split costs the hot paths nothing.
            extra_compile_args=[*C_FLAGS, "-flto"],
            extra_link_args=[*C_FLAGS, "-flto=auto"],
        )
    ]
)
