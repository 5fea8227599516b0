# The two commands of the README's quick start are `make demo` and `make test`.
# Both set everything up first (Debian packages, .venv, the build), so either works on a
# fresh machine.
PY := .venv/bin/python

.PHONY: setup demo test lint check bench clean

setup:
	./scripts/setup.sh

demo: setup
	$(PY) -m viperdbm demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check viperdbm tests compat benchmarks
	$(PY) -m mypy

check: test lint

clean:
	rm -rf build .venv *.egg-info viperdbm/*.so
