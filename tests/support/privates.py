"""Find where a txschannel module reads another module's private names.

A private name is one that starts with a single underscore. A module may
use its own (``self._buffer``, ``store._verdicts`` of a class it defines);
it should not read another module's: ``credentials._sni``, or ``._feed`` of
an object whose class another module defines. ``txschannel/_openssl.py`` is
the one module allowed to reach into pyOpenSSL's internals, so it is not
scanned.

This is a static reading of the source (the standard library's ``ast``), so
for ``obj._name`` it decides by the name: private names that a class in the
same module defines are the module's own; names that only classes of other
txschannel modules define are another module's; names that no txschannel
module defines belong to a library (Twisted, pyOpenSSL). It imports
nothing it scans.

Run ``python -m tests.support.privates`` for the listing.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Read", "PACKAGE", "EXEMPT", "private_reads", "main"]

#: The package scanned.
PACKAGE = Path(__file__).resolve().parents[2] / "txschannel"
#: The module that confines pyOpenSSL's internals (relative to PACKAGE).
EXEMPT = frozenset({"_openssl.py"})


@dataclass(frozen=True)
class Read:
    """One read of a private name outside the module that defines it.

    :ivar where: ``path:line`` of the read.
    :ivar text: the expression, e.g. ``credentials._sni``.
    :ivar owner: the txschannel module that defines the name (dotted), or
        ``None`` for a library's private name.
    """

    where: str
    text: str
    owner: str | None

    def __str__(self) -> str:
        owner = self.owner or "a library"
        return f"{self.where}: {self.text} (private to {owner})"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _class_names(tree: ast.Module) -> set[str]:
    """The private names that the classes of *tree* define: methods, class
    attributes and ``self._name`` assignments."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(inner.name)
            elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                names.add(inner.id)
            elif isinstance(inner, ast.AnnAssign) and isinstance(inner.target, ast.Name):
                names.add(inner.target.id)
            elif (
                isinstance(inner, ast.Attribute)
                and isinstance(inner.ctx, ast.Store)
                and isinstance(inner.value, ast.Name)
                and inner.value.id in ("self", "cls")
            ):
                names.add(inner.attr)
    return {name for name in names if _private(name)}


def _imported_modules(tree: ast.Module, package: set[str]) -> dict[str, str | None]:
    """Names bound to modules by the imports of *tree*: the txschannel module
    each names, or ``None`` for a library's module."""
    bound: dict[str, str | None] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name if alias.asname else alias.name.partition(".")[0]
                bound[alias.asname or target] = target if target in package else None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if dotted in package:
                    bound[alias.asname or alias.name] = dotted
                elif not node.module.startswith("txschannel") and alias.name[:1].isupper():
                    # ``from OpenSSL import SSL``: a module, by its name.
                    bound[alias.asname or alias.name] = None
    return bound


def _accesses(tree: ast.Module) -> Iterator[tuple[int, ast.expr, str]]:
    """Each ``x._name`` read and ``getattr(x, "_name"...)`` call: line, x, name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            yield node.lineno, node.value, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            yield node.lineno, node.args[0], node.args[1].value


def private_reads(package: Path = PACKAGE) -> list[Read]:
    """Every read in *package* of a private name another module defines.

    :raises SyntaxError: a module does not parse.
    """
    paths = sorted(package.rglob("*.py"))
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in paths}
    modules = {path: _module_name(path, package) for path in paths}
    defined = {modules[path]: _class_names(tree) for path, tree in trees.items()}
    package_names = set(modules.values())
    reads: list[Read] = []
    for path, tree in trees.items():
        if str(path.relative_to(package)) in EXEMPT:
            continue
        here = modules[path]
        imported = _imported_modules(tree, package_names)
        for line, value, name in _accesses(tree):
            if isinstance(value, ast.Name) and value.id in imported:
                owner = imported[value.id]
            elif name in defined[here]:
                continue  # the module's own class
            else:
                owners = sorted(m for m, names in defined.items() if name in names)
                owner = owners[0] if owners else None
            where = f"{path.relative_to(package.parent)}:{line}"
            reads.append(Read(where, f"{ast.unparse(value)}.{name}", owner))
        reads += _private_imports(tree, path, package, package_names)
    return reads


def _private_imports(
    tree: ast.Module, path: Path, package: Path, package_names: set[str]
) -> list[Read]:
    """``from module import _name`` of another txschannel module, and imports
    from a library's private module (``twisted.protocols._tls_legacy``).
    txschannel's own private modules (``_openssl``) are the package's, so
    importing them is not counted."""
    reads: list[Read] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
            continue
        where = f"{path.relative_to(package.parent)}:{node.lineno}"
        ours = node.module in package_names
        for alias in node.names:
            dotted = f"{node.module}.{alias.name}"
            if ours and _private(alias.name) and dotted not in package_names:
                reads.append(Read(where, f"from {node.module} import {alias.name}", node.module))
            elif not node.module.startswith("txschannel") and (
                _private(alias.name) or any(_private(p) for p in node.module.split("."))
            ):
                reads.append(Read(where, f"from {node.module} import {alias.name}", None))
    return reads


def main() -> int:
    """Print the reads, those of txschannel modules first; the count of those."""
    reads = private_reads()
    ours = [read for read in reads if read.owner is not None]
    theirs = [read for read in reads if read.owner is None]
    print(f"txschannel modules' private names read by another module: {len(ours)}")
    for read in ours:
        print(f"  {read}")
    print(f"libraries' private names read outside {', '.join(sorted(EXEMPT))}: {len(theirs)}")
    for read in theirs:
        print(f"  {read}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
