# The two commands of the README's quick start are `make demo` and `make test`.
# Both set everything up first (Debian packages, .venv, the build), so either works on a
# fresh machine.
PY := .venv/bin/python
# The suite in two worker processes (pytest-xdist): each test makes its own temporary
# directories, and most of the time is spent waiting on child processes. Serially:
# make test PYTEST_ARGS=
PYTEST_ARGS ?= -n 2

.PHONY: setup demo test lint check bench bench-readers bench-cache bench-scale clean

setup:
	./scripts/setup.sh

demo: setup
	$(PY) -m viperdbm demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# stubtest: the stub of the C extension lists exactly what the extension has.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .  # Python, and the Python in the docs
	$(PY) -m mypy
	$(PY) -m mypy.stubtest viperdbm._vipercore

check: test lint

clean:
	rm -rf build .venv *.egg-info viperdbm/*.so

# The benchmark suite (benchmarks/README.md): viperdbm against dict, dbm.dumb/gnu/ndbm/sqlite3,
# semidbm, lmdb, sqlitedict, diskcache and rocksdict; ~20 min; writes benchmarks/results/.
# dbm.gnu and dbm.ndbm run under Debian's Python, which needs python3-gdbm.
bench: setup
	@dpkg-query -W -f='$${Status}' python3-gdbm 2>/dev/null | grep -q "install ok installed" || { \
	    S=""; [ "$$(id -u)" -eq 0 ] || S=sudo; \
	    $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq python3-gdbm >/dev/null; }
	.venv/bin/pip install -q -e ".[bench]" --config-settings editable_mode=strict
	$(PY) benchmarks/run.py --full --fs both --out benchmarks/results

# Readers alongside a writer (issue 12; benchmarks/live_readers.py): a reader's get rate and
# open time under a live writer, the writer's insert rate with three readers following, each
# reader's memory; N = 1M on /dev/shm, ~1 min; writes benchmarks/results/live-readers-<date>.*
# make bench-readers READERS_ARGS="--n 100000" for a smaller run.
READERS_ARGS ?=
bench-readers: setup
	$(PY) benchmarks/live_readers.py $(READERS_ARGS)

# viperdbm.cache.Cache against diskcache.Cache (benchmarks/cache.py): per-op latency of
# get/set/delete, 1 and 8 threads, expiry on, 1 KiB pickled values; tmpfs, then /tmp (ext4
# here); ~4 min; writes benchmarks/results/cache-<date>.* and cache-<date>-ext4.*
# make bench-cache CACHE_ARGS=--quick for a smoke run.
CACHE_ARGS ?=
bench-cache: setup
	.venv/bin/pip install -q -e ".[bench]" --config-settings editable_mode=strict
	$(PY) benchmarks/cache.py $(CACHE_ARGS)
	$(PY) benchmarks/cache.py --dir /tmp $(CACHE_ARGS)

# viperdbm at 100M records beside 1M (issue 13; benchmarks/scale.py): batched and single
# inserts with per-put latency, gets, misses, updates, deletes, reopen (cores used), index
# bytes per key, RssAnon, and durable writes against lmdb (sync=True) and SQLite (WAL, FULL);
# stores on /tmp (ext4 here; needs ~17 GiB free disk and ~4 GiB RAM, checked first);
# ~7-30 min; writes benchmarks/results/scale-<date>.*
# make bench-scale SCALE_ARGS="--n 10000000" for a smaller run, SCALE_ARGS=--quick to smoke-test.
SCALE_ARGS ?=
bench-scale: setup
	.venv/bin/pip install -q -e ".[bench]" --config-settings editable_mode=strict
	$(PY) benchmarks/scale.py $(SCALE_ARGS)
