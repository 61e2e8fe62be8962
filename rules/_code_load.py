"""A stage's own code (``python`` and ``custom`` stages): which project files it is, and
loading it so that the code that runs is the code the stage's key holds.

Python imports a module once per process, and a process runs many tasks: a worker, or the
build process itself under the inline executor (``api.build`` twice in a notebook). The
key holds the digests of the stage's code files (:meth:`pipemake.rule.Rule.code_hash`)
and the task carries them; a module is used as it is loaded only while the source it was
imported from has those digests. Otherwise the project's modules are imported again from
disk, and if the disk no longer has the key's code either (edited after the build
computed the key) the task fails, saying so, rather than storing what other code made
under that key. Without digests (a stage that sets ``version:``, a check at load time)
the source on disk now is what is wanted.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from types import ModuleType

from pipemake.hashing import hash_file
from pipemake.rule import project_on_path

__all__ = ["class_files", "digests", "find_in", "in_project", "load", "mismatched", "real"]

_LOCK = threading.RLock()
#: a source file of the project's code (realpath) → (its stat, its digest) when this
#: process imported it; the digest is "" when it changed during the import
_SOURCES: dict[str, tuple[tuple[int, int, int] | None, str]] = {}
#: (path, stat) → the parsed file, for reading class statements
_TREES: dict[str, tuple[tuple[int, int, int] | None, ast.Module]] = {}
#: modules never taken for the project's own, wherever their files are
_KEEP = ("__main__", "__mp_main__")


@cache
def real(path: str) -> str:
    """``path`` with symlinks resolved: the name a code file is known by here."""
    return os.path.realpath(path)


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _digest(path: str) -> str:
    try:
        return hash_file(path)
    except OSError:
        return ""


@cache
def _installed() -> tuple[str, ...]:
    """The folders of installed code: the interpreter's prefixes and site-packages."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    for where in ("getsitepackages", "getusersitepackages"):
        found = getattr(site, where, None)  # an old virtualenv's site lacks them
        if found is not None:
            got = found()
            dirs.update([got] if isinstance(got, str) else got)
    dirs.update(p for k, p in sysconfig.get_paths().items() if k.endswith(("lib", "stdlib")))
    return tuple(sorted(os.path.join(real(d), "") for d in dirs if d))


def in_project(path: str, root: str) -> bool:
    """Whether ``path`` (real) is a ``.py`` file of the project at ``root`` (real), not one
    of an environment installed inside it (``.venv``)."""
    if not path.endswith(".py") or not path.startswith(os.path.join(root, "")):
        return False
    return not any(path.startswith(d) for d in _installed() if not root.startswith(d))


def _project_modules(root: str | None) -> dict[str, str]:
    """The loaded modules of the project at ``root`` (real): name → real file."""
    found: dict[str, str] = {}
    if root is None:
        return found
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or name in _KEEP or name.partition(".")[0] == "pipemake":
            continue
        path = real(file)
        if in_project(path, root):
            found[name] = path
    return found


def _on_disk(path: str) -> bool:
    """Whether the code loaded from ``path`` was imported from the bytes there now."""
    known = _SOURCES.get(path)
    if known is None or not known[1]:
        return False
    now = _stat(path)
    if now == known[0]:
        return True
    if _digest(path) != known[1]:
        return False
    _SOURCES[path] = (now, known[1])
    return True


def digests(files: Iterable[str], hashes: Iterable[str], root: str) -> dict[str, str]:
    """What a task carries of its key's code: each file (relative to the project root when
    inside it, so a worker that sees the project by another path agrees) → its digest."""
    base = os.path.join(real(root), "")
    out = {}
    for f, h in zip(files, hashes, strict=True):
        path = real(f)
        out[path[len(base) :] if path.startswith(base) else path] = h
    return out


def _wanted(want: Mapping[str, str], root: str) -> dict[str, str]:
    """``want`` (of :func:`digests`) with each file's real path here."""
    return {real(os.path.join(real(root), f)): d for f, d in want.items()}


def _current(files: Iterable[str], want: Mapping[str, str] | None) -> bool:
    if want is not None:
        return not _differ(want)
    return all(_on_disk(f) for f in files)


def _differ(want: Mapping[str, str]) -> list[str]:
    return [f for f, d in want.items() if (_SOURCES.get(f) or (None, None))[1] != d]


def mismatched(want: Mapping[str, str], root: str) -> list[str]:
    """The files of ``want`` (of :func:`digests`) whose code loaded here has another
    digest (or was not loaded here): real paths."""
    return _differ(_wanted(want, root))


def _drop_old_bytecode(path: str) -> None:
    """Remove ``path``'s cached bytecode when it was written before the source's last
    change: Python trusts a ``.pyc`` whose recorded mtime (whole seconds) and size match,
    so an edit within the same second to a source of the same size would go unseen."""
    try:
        cached = importlib.util.cache_from_source(path)
        if os.stat(cached).st_mtime_ns < os.stat(path).st_mtime_ns:
            os.remove(cached)
    except (OSError, ValueError, NotImplementedError):
        pass


def load(
    module: str,
    root: str,
    want: Mapping[str, str] | None = None,
    files: Iterable[str] = (),
    expected: Callable[[], str | None] | None = None,
) -> ModuleType:
    """``module`` of the project at ``root``, as loaded in this process while the code
    loaded from its files is still what is wanted: the digests ``want`` (real path →
    digest, the key's), or else the source on disk now of ``files`` (by default the
    module's own file). Otherwise the project's modules are imported again (every one of
    them, so that none keeps a class or function of the old code), and ``module``'s
    package too when it was loaded from elsewhere than ``expected()`` says or than the
    file ``want`` holds (another project's module of that name). What the import raises
    is raised; the caller checks :func:`mismatched` against ``want`` after."""
    want = _wanted(want, root) if want is not None else None
    with _LOCK:
        project_on_path(root)
        loaded = sys.modules.get(module)
        where = getattr(loaded, "__file__", None)
        files = [real(f) for f in files] or ([real(where)] if where else [])
        mine = want is None or not where or real(where) in want  # not another project's
        if loaded is not None and mine and _current(files, want):
            return loaded
        base = real(root) if root else None
        local = _project_modules(base)
        purge = [n for n, f in local.items() if not _on_disk(f)]
        if purge:
            purge = list(local)  # a module importing a stale one holds its old objects
        should = expected() if expected is not None and loaded is not None else None
        if (should and (not where or real(where) != real(should))) or not mine:
            top = module.partition(".")[0]
            purge += [n for n in sys.modules if n == top or n.startswith(top + ".")]
        for name in dict.fromkeys(purge):
            gone = sys.modules.pop(name, None)
            path = getattr(gone, "__file__", None)
            if path:
                _SOURCES.pop(real(path), None)
        kept = set(_project_modules(base))
        wanted = {*files, *(want or {})}
        before = {f: (_stat(f), _digest(f)) for f in wanted}
        for f in {*wanted, *(local[n] for n in purge if n in local)}:
            _drop_old_bytecode(f)
        importlib.invalidate_caches()
        mod = importlib.import_module(module)
        for f, (stat, digest) in before.items():
            _SOURCES[f] = (stat, digest if _stat(f) == stat else "")
        for name, f in _project_modules(base).items():
            if name not in kept and f not in before:
                _SOURCES[f] = (_stat(f), _digest(f))
        if not files and getattr(mod, "__file__", None):
            f = real(mod.__file__)  # type: ignore[arg-type]
            _SOURCES.setdefault(f, (_stat(f), _digest(f)))
        return mod


# which files ---------------------------------------------------------------------------


def find_in(module: str, where: list[str]) -> str | None:
    """The file of the dotted ``module`` found under the folders ``where`` the way the
    import system would (in each folder a package, then a module, and folders without an
    ``__init__`` as namespace packages), without importing anything: a namespace package's
    parent need not be imported, and no user code runs."""
    from importlib.machinery import EXTENSION_SUFFIXES, SOURCE_SUFFIXES

    suffixes = [*SOURCE_SUFFIXES, *EXTENSION_SUFFIXES]
    parts = module.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        portions: list[str] = []
        found: str | None = None
        for folder in where:
            base = os.path.join(folder, part)
            init = next(
                (base + "/__init__" + s for s in suffixes if os.path.isfile(f"{base}/__init__{s}")),
                None,
            )
            if init is not None:
                found, where = init, [base]
                break
            single = next((base + s for s in suffixes if os.path.isfile(base + s)), None)
            if single is not None:
                if not last:
                    return None  # a module has no submodules
                return single
            if os.path.isdir(base):
                portions.append(base)
        if found is not None:
            if last:
                return found
            continue
        if not portions or last:
            return None  # a namespace package has no file of its own
        where = portions
    return None


def _tree(path: str) -> ast.Module | None:
    stat = _stat(path)
    known = _TREES.get(path)
    if known is not None and known[0] == stat:
        return known[1]
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return None
    _TREES[path] = (stat, tree)
    return tree


def _binding(tree: ast.Module, name: str) -> ast.AST | None:
    """The last top-level statement that binds ``name``: a class statement or an import
    (anything else binding it: None, not followed)."""
    found: ast.AST | None = None
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name == name:
                found = node if isinstance(node, ast.ClassDef) else None
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                bound = alias.asname or alias.name.partition(".")[0]
                if bound == name:
                    found = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found = None
    return found


def _dotted(expr: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    return [expr.id, *reversed(parts)]


def _from_module(node: ast.ImportFrom, module: str, path: str) -> str | None:
    if not node.level:
        return node.module
    package = module.split(".")
    if os.path.basename(path) != "__init__.py":
        package = package[:-1]
    if node.level - 1 > len(package):
        return None
    package = package[: len(package) - (node.level - 1)]
    parts = [*package, *([node.module] if node.module else [])]
    return ".".join(parts) or None


def _target(tree: ast.Module, expr: ast.expr, module: str, path: str) -> tuple[str, str] | None:
    """The module and the name in it that a base class expression names."""
    parts = _dotted(expr)
    if parts is None:
        return None
    node = _binding(tree, parts[0])
    if isinstance(node, ast.ClassDef):
        return (module, parts[0]) if len(parts) == 1 else None
    if isinstance(node, ast.ImportFrom):
        alias = next(a for a in node.names if (a.asname or a.name) == parts[0])
        source = _from_module(node, module, path)
        if source is None:
            return None
        if len(parts) == 1:
            return source, alias.name
        return ".".join([source, alias.name, *parts[1:-1]]), parts[-1]
    if isinstance(node, ast.Import) and len(parts) > 1:
        alias = next(a for a in node.names if (a.asname or a.name.partition(".")[0]) == parts[0])
        dotted = [alias.name, *parts[1:-1]] if alias.asname else parts[:-1]
        return ".".join(dotted), parts[-1]
    return None


def class_files(path: str, module: str, name: str, find: Callable[[str], str | None]) -> list[str]:
    """The files holding class ``name`` of ``module`` (whose file is ``path``) and the
    classes it derives from that ``find`` (a module name → its file in the project, or
    None) places in the project, read, not imported: ``class Ex(Base)`` with ``from
    steps.base import Base`` brings ``steps/base.py``. A name the module imports from
    another is followed there; bases bound any other way are not."""
    out: list[str] = []
    todo = [(path, module, name)]
    seen: set[tuple[str, str]] = set()
    while todo and len(seen) < 200:
        path, module, name = todo.pop(0)
        if (path, name) in seen:
            continue
        seen.add((path, name))
        tree = _tree(path)
        node = _binding(tree, name) if tree is not None else None
        if tree is None or node is None:
            continue
        if isinstance(node, ast.ClassDef):
            out.append(path)
            bases = [_target(tree, b, module, path) for b in node.bases]
        else:  # imported here from another module of the project
            bases = [_target(tree, ast.Name(id=name), module, path)]
        for found in bases:
            if found is None:
                continue
            where = path if found[0] == module else find(found[0])
            if where is not None:
                todo.append((where, found[0], found[1]))
    return list(dict.fromkeys(out))
