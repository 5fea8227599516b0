#!/usr/bin/env python3
"""Render the public API's docstrings to docs/api.md.

    python docs/gen_api.py          # rewrite docs/api.md
    python docs/gen_api.py --check  # exit 1 if docs/api.md is out of date (tests run this)

The page lists every name in ``viperdbm.__all__`` and the public names of the submodules
``viperdbm.cache`` (and its framework backends ``viperdbm.cache.dogpile`` and
``viperdbm.cache.django``), ``viperdbm.compat``, ``viperdbm.shelve`` and ``viperdbm.viper``, with
their signatures and docstrings. Doctest examples in the docstrings become ``pycon`` code
blocks; the test suite runs them (tests/test_ecosystem.py).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET = HERE / "api.md"
MODULES = (
    "viperdbm",
    "viperdbm.cache",
    "viperdbm.cache.dogpile",
    "viperdbm.cache.django",
    "viperdbm.compat",
    "viperdbm.shelve",
    "viperdbm.viper",
)
# names that the top-level section already covers, listed once
SKIP_IN_SUBMODULES = {"viperdbm.viper": {"Viper", "ViperClient", "ViperReadOnlyClient"}}


def _docstring_to_md(doc: str) -> str:
    """Docstring text with doctest and ``::`` blocks turned into fenced code."""
    out: list[str] = []
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["```pycon", *block, "```"]
            continue
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            out.append(line.rstrip()[:-1])
            i += 2
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["```", *block, "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip()


def _annotation(ann: Any) -> str:
    if isinstance(ann, str):
        return ann
    return getattr(ann, "__name__", repr(ann))


def _default(name: str, value: Any, owner: Any) -> str:
    if name == "mode" and isinstance(value, int):
        return oct(value)
    if isinstance(value, type):
        return value.__name__
    if type(value) is object:  # a sentinel (Django's DEFAULT_TIMEOUT): its name, not its address
        scope = getattr(inspect.unwrap(owner), "__globals__", {})
        return next((k for k, v in scope.items() if v is value), "<sentinel>")
    return repr(value)


def _signature(obj: Any) -> str:
    """``(a: int, *, b: str = 'x') -> bool``, without ``self``/``cls`` and string quotes."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parts: list[str] = []
    star_done = False
    params = list(sig.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, star_done = "*" + text, True
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + text
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {_default(p.name, p.default, obj)}"
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (
            p is params[-1] or params[params.index(p) + 1].kind is not p.POSITIONAL_ONLY
        ):
            parts.append("/")
    result = f"({', '.join(parts)})"
    if sig.return_annotation is not sig.empty and not inspect.isclass(obj):
        result += f" -> {_annotation(sig.return_annotation)}"
    return result


def _members(cls: type) -> list[tuple[str, Any]]:
    found = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in ("__init__",):
            continue
        if isinstance(member, classmethod | staticmethod):
            member = member.__func__
        if isinstance(member, property):
            if member.__doc__:
                found.append((name, member))
            continue
        if callable(member) and member.__doc__:
            found.append((name, member))
    return found


def _render(qualname: str, obj: Any, out: list[str]) -> None:
    if inspect.isclass(obj):
        bases = [b.__name__ for b in obj.__bases__ if b is not object]
        kind = "exception" if issubclass(obj, BaseException) else "class"
        out.append(f"### {kind} `{qualname}`" + (f" ({', '.join(bases)})" if bases else ""))
        out.append("")
        if not issubclass(obj, BaseException):
            out.append(f"```python\n{qualname}{_signature(obj)}\n```")
            out.append("")
        out.append(_docstring_to_md(inspect.getdoc(obj) or ""))
        out.append("")
        if issubclass(obj, BaseException):
            return
        for name, member in _members(obj):
            if isinstance(member, property):
                out.append(f"#### `{qualname}.{name}` (property)")
            else:
                out.append(f"#### `{qualname}.{name}{_signature(member)}`")
            out.append("")
            out.append(_docstring_to_md(inspect.getdoc(member) or ""))
            out.append("")
    elif callable(obj):
        out.append(f"### `{qualname}{_signature(obj)}`")
        out.append("")
        out.append(_docstring_to_md(inspect.getdoc(obj) or ""))
        out.append("")
    else:
        out.append(f"### `{qualname}`")
        out.append("")
        out.append(f"`{obj!r}`")
        out.append("")


def _public(module: ModuleType) -> list[str]:
    names: list[str] = list(getattr(module, "__all__", []))
    return sorted(n for n in names if not n.startswith("__"))


def render() -> str:
    out = [
        "# API reference",
        "",
        "Generated from the docstrings by `docs/gen_api.py`; do not edit by hand "
        "(`python docs/gen_api.py` rewrites it, and the tests fail when it is stale).",
        "The tutorial is [tutorial.md](tutorial.md); the command line is [cli.md](cli.md).",
        "",
    ]
    for modname in MODULES:
        module = importlib.import_module(modname)
        out.append(f"## `{modname}`")
        out.append("")
        out.append(_docstring_to_md(inspect.getdoc(module) or ""))
        out.append("")
        skip = SKIP_IN_SUBMODULES.get(modname, set())
        for name in _public(module):
            if name in skip:
                continue
            obj = getattr(module, name)
            if modname == "viperdbm" and name == "Database":
                out.append("### `viperdbm.Database`")
                out.append("")
                out.append(
                    "The type of the objects `open()` returns (for annotations); "
                    "its methods are below."
                )
                out.append("")
                _render("Database", obj, out)
                continue
            _render(f"{modname}.{name}" if modname != "viperdbm" else name, obj, out)
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
