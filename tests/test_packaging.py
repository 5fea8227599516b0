"""Packaging: the sdist and the wheel build, install into a clean virtual environment and
pass the tests there; a missing libpmemobj is an ImportError that names the packages.

The wheel test takes a minute or two and needs the package index (the build runs in an
isolated environment), so it runs only with ``VIPERDBM_TEST_WHEEL=1``::

    VIPERDBM_TEST_WHEEL=1 .venv/bin/python -m pytest -q tests/test_packaging.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEEL_TEST = os.environ.get("VIPERDBM_TEST_WHEEL") == "1"

# the test files that run against the installed wheel (with conftest.py, the helper modules
# they import and docs/)
INSTALLED_HELPERS = ["_vdbtools.py"]
INSTALLED_SUITE = [
    "test_dbm_contract.py",
    "test_cli.py",
    "test_dump.py",
    "test_cache.py",
    "test_cache_dogpile.py",
    "test_cache_django.py",
    "test_viper_api.py",
    "test_ecosystem.py",
]


def test_a_missing_libpmemobj_is_an_import_error_naming_the_packages(tmp_path: Path) -> None:
    # dlopen searches LD_LIBRARY_PATH first: broken files there hide the real libraries
    for name in ("libpmemobj.so.1", "libpmemobj.so", "libpmem.so.1", "libpmem.so"):
        (tmp_path / name).write_bytes(b"not a shared object")
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", "import viperdbm"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: cannot load libpmemobj"), result.stderr
    assert "apt-get install libpmemobj1 libpmem1" in last


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert result.returncode == 0, (
        f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


SMOKE = textwrap.dedent(
    """
    import os, sys, tempfile, viperdbm
    assert viperdbm.__file__.startswith(sys.prefix), viperdbm.__file__
    assert viperdbm.__version__ == "0.1.0"
    with tempfile.TemporaryDirectory() as scratch:  # (19 MiB: not left in /tmp)
        path = os.path.join(scratch, "smoke.vdb")
        with viperdbm.open(path, "c") as db:
            db[b"k"] = bytes(range(256))
            db[b"big"] = b"x" * (2 << 20)
        with viperdbm.open(path) as db:
            assert db[b"k"] == bytes(range(256)) and len(db[b"big"]) == 2 << 20
        assert viperdbm.check(path).ok
    print("smoke ok", viperdbm.__file__)
    """
)


@pytest.mark.skipif(not WHEEL_TEST, reason="set VIPERDBM_TEST_WHEEL=1 (builds and installs)")
def test_sdist_and_wheel_install_and_pass_the_tests(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dist = tmp_path / "dist"
    # sdist first, then the wheel built from the unpacked sdist: proves the sdist is complete
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=tmp_path)
    sdists = list(dist.glob("viperdbm-0.1.0.tar.gz"))
    wheels = list(dist.glob("viperdbm-0.1.0-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(dist.iterdir())

    with tarfile.open(sdists[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        *(f"native/{source.name}" for source in (ROOT / "native").glob("*.[ch]")),
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "docs/format.md",
        "docs/dump-format.md",
        "docs/tutorial.md",
        "tests/conftest.py",
        "tests/data/format-v2-store.tar.xz",
        "setup.py",
        "viperdbm/py.typed",
    ):
        assert needed in names, f"the sdist lacks {needed}"
    assert not [n for n in names if n.endswith(".so")], "the sdist carries a built library"

    with zipfile.ZipFile(wheels[0]) as whl:
        wnames = whl.namelist()
        entry_points = next(n for n in wnames if n.endswith("entry_points.txt"))
        declared = whl.read(entry_points).decode()
        assert "viperdbm = viperdbm._cli:main" in declared
        assert "viperdbm = viperdbm.cache.dogpile:ViperBackend" in declared
    assert any(n.startswith("viperdbm/_vipercore") and n.endswith(".so") for n in wnames)
    for needed in (
        "viperdbm/py.typed",
        "viperdbm/_vipercore.pyi",
        "viperdbm/cache/__init__.py",
        "viperdbm/cache/dogpile.py",
        "viperdbm/cache/django.py",
    ):
        assert needed in wnames

    # not under pytest's own temporary directory, which only root may enter: the installed
    # suite runs some probes as another user (setpriv), who must be able to import viperdbm
    shared = Path(tempfile.mkdtemp(prefix="viperdbm-wheel-", dir="/tmp"))
    shared.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    venv = shared / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = str(venv / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", f"{wheels[0]}[test]"], cwd=tmp_path)

    work = shared / "work"  # not the checkout: nothing can import the source tree
    work.mkdir()
    assert "smoke ok" in _run([py, "-c", SMOKE], cwd=work)
    version = _run([str(venv / "bin" / "viperdbm"), "--version"], cwd=work)
    assert version.strip() == "viperdbm 0.1.0"
    bench = subprocess.run(
        [str(venv / "bin" / "viperdbm"), "bench"], cwd=work, capture_output=True, text=True
    )
    assert bench.returncode == 1 and "benchmarks are not here" in bench.stderr

    suite = work / "tests"
    suite.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", suite)
    for name in INSTALLED_HELPERS + INSTALLED_SUITE:
        shutil.copy(ROOT / "tests" / name, suite)
    shutil.copytree(ROOT / "docs", work / "docs")
    shutil.copy(ROOT / "README.md", work)  # the docs link to it
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIPERDBM_")}
    env.pop("PYTHONPATH", None)
    out = _run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=work, env=env)
    assert " passed" in out and " failed" not in out
