#!/usr/bin/env bash
# Set up everything viperdbm needs on a fresh Debian 12 machine (run as root, or with sudo):
# the PMDK libraries from Debian, a virtual environment in .venv, and the package built
# from this checkout (which compiles the native part). Safe to run again.
# The test suite needs strace too: the power-fail and fault-injection tests run the store
# under it (they would be skipped without it, and a green run would prove nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libpmemobj1 libpmemobj-dev libpmem1 gcc strace; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# strict: the package is importable through a static path entry (build/__editable__.*, links
# to this checkout's files), which costs a Python start nothing; the default mode's import
# hook costs every start (the test suite's thousands of child processes included) about as
# much as the interpreter itself. A new module file needs this script again (make test runs it).
.venv/bin/python -m pip install -q -e ".[test,lint]" --config-settings editable_mode=strict
# An editable install compiles nothing, and with PYTHONDONTWRITEBYTECODE set no run writes the
# bytecode either: every start would compile viperdbm from source. (A stale file is only
# recompiled in memory, never used.)
.venv/bin/python -m compileall -q viperdbm tests build/__editable__.viperdbm-*
echo "setup: ready (.venv/bin/python -c 'import viperdbm')"
