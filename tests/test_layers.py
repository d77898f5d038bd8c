"""Imports flow one way: the layers written in docs/architecture.md ("## Layers"), read from
there so the document and this test cannot drift.

Every ``attnkit/**/*.py`` is parsed with ``ast`` (nothing is imported); each import of an
attnkit module, at the top of a file or inside a function, must go to the same layer or a
lower one, and no name with a leading underscore may be imported from another module or
read off one (``module._name``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "attnkit"
DOC = ROOT / "docs" / "architecture.md"

#: (importing module, imported module) -> why it is allowed for now. Keep this short: each
#: entry is a debt with a reason, not a second layer map.
ALLOWED: dict[tuple[str, str], str] = {}


def layers() -> list[list[str]]:
    """The fenced block under ``## Layers`` in docs/architecture.md: one layer a line, lowest
    first, top-level module names separated by spaces (``#`` starts a comment)."""
    text = DOC.read_text(encoding="utf-8")
    section = re.search(r"^## Layers\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, f"{DOC} has no '## Layers' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, f"the '## Layers' section of {DOC} has no fenced block"
    out = [line.split("#")[0].split() for line in block.group(1).splitlines()]
    return [names for names in out if names]


def module_name(path: Path) -> str:
    """``attnkit/interop/hf.py`` -> ``attnkit.interop.hf``; a package's ``__init__`` is the
    package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    """Whether ``attnkit.x.y`` names a module or package of the source tree."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def top(name: str) -> str | None:
    """The layer unit of an attnkit module: its first part below ``attnkit`` (None for the
    package root, whose lazy table imports nothing until a name is used)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def imports(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` for each attnkit import in ``path``: ``name`` is what a
    ``from module import name`` takes (None for ``import module``). ``from attnkit.x import
    y``, where ``y`` is a module, counts as an import of ``attnkit.x.y``."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this file's package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub, None) if is_module(sub) else
                           (node.lineno, base, a.name))
    return [(line, m, n) for line, m, n in out if m == "attnkit" or m.startswith("attnkit.")]


def private_reads(path: Path) -> list[tuple[int, str]]:
    """``(line, 'alias._name')`` where a module bound by an import is read for a private
    name (``from attnkit.nn import ffn`` ... ``ffn._ACTIVATIONS``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name.startswith("attnkit.") and a.asname}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("attnkit"):
            aliases |= {a.asname or a.name for a in node.names
                        if is_module(f"{node.module}.{a.name}")}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in aliases and private(node.attr):
            out.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return out


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_layers_name_every_module_once():
    names = [n for layer in layers() for n in layer]
    assert len(names) == len(set(names)), f"a module is listed twice in {DOC}"
    units = {top(module_name(p)) for p in sources()} - {None}
    assert units - set(names) == set(), f"modules missing from '## Layers' in {DOC}"
    assert set(names) - units == set(), f"'## Layers' in {DOC} names modules that do not exist"


def test_no_lower_layer_imports_a_higher_one():
    rank = {name: i for i, layer in enumerate(layers()) for name in layer}
    found = []
    for path in sources():
        here = module_name(path)
        for line, module, _ in imports(path):
            a, b = top(here), top(module)
            if a is None or b is None or a == b or (here, module) in ALLOWED:
                continue
            if rank[b] > rank[a]:
                found.append(f"{path.relative_to(ROOT)}:{line}: {a} imports {module} "
                             f"(a higher layer)")
    assert not found, "\n".join(found)


def test_no_private_name_crosses_modules():
    found = []
    for path in sources():
        rel = path.relative_to(ROOT)
        for line, module, name in imports(path):
            if name is not None and private(name) and (module_name(path), module) not in ALLOWED:
                found.append(f"{rel}:{line}: imports {name} from {module}")
            if any(private(part) for part in module.split(".")):
                found.append(f"{rel}:{line}: imports the private module {module}")
        found += [f"{rel}:{line}: reads {what}" for line, what in private_reads(path)]
    assert not found, "\n".join(found)


def test_no_import_at_the_bottom_of_a_file():
    """An import after the first function or class at the top level of a file is how a
    cycle is dodged; the layers forbid the cycle instead."""
    found = []
    for path in sources():
        body = ast.parse(path.read_text(encoding="utf-8"), str(path)).body
        seen_def = False
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                seen_def = True
            elif seen_def and isinstance(node, ast.Import | ast.ImportFrom):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: import after the code")
    assert not found, "\n".join(found)


def test_the_checker_sees_what_it_should(tmp_path):
    """The parser above on a sample: a function-level import, a relative one, a module taken
    by ``from ... import``, and a private read through it."""
    sample = PACKAGE / "interop" / "hf.py"  # any real file gives imports() a place to resolve
    got = {m for _, m, _ in imports(sample)}
    assert "attnkit.interop.bart" in got and "attnkit.weights" in got
    assert "attnkit.tokenizers.hf" in got  # imported inside to_hf
    fake = tmp_path / "x.py"
    fake.write_text("from attnkit.nn import ffn\ndef f():\n    return ffn._ACTIVATIONS\n")
    assert private_reads(fake) == [(3, "ffn._ACTIVATIONS")]
