"""The no-op snapshot: a build that found every stage up to date answers the same command
again from ``stat`` alone, the way Make and ninja do, without loading the plan or the store.

When a ``pipemake build`` ends with every selected stage up to date, it writes
``.pipemake/uptodate.json``: the command line, working directory, ``PIPEMAKE_*`` variables,
Python and ``sys.path`` directories it ran with, and the stat signature of everything its
decision rested on — every file and directory tree the hasher looked at (inputs, outputs,
foreach trees; a path found missing must stay missing), the pipeline file, pipemake's own
modules, each rule's module and each ``python`` stage's module, and the workspace state and
store databases. The next identical command takes the build lock, re-stats those paths and,
when every signature is unchanged, replays the no-op's events (the same view lines, run log
and history) without importing the engine. Anything different — one byte of the pipeline
file, an input's inode, size or mtime, a store written by another workspace, another
command line — means the full build runs, as it would have anyway.

Snapshots are written only when nothing on the list changed less than a second before the
build began (the stat cache's racy-write rule), never for forced builds or pipelines with
hooks, and never by a build that ran or restored anything: only a build that found
everything up to date may vouch that it still is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .finding import PIPELINE_FILES, find_above, using
from .fingerprint import environment
from .hashing import digest, hash_bytes
from .walk import signature, walk

__all__ = ["FILE", "answer", "context", "discard", "record", "write"]

FILE = "uptodate.json"
FORMAT = 2
_RACY_NS = 1_000_000_000
#: below this many files in all, a fork to walk half the trees costs more than it saves
_PARALLEL_FILES = 4000
_GLOBAL_OPTS = ("-C", "-f", "--cache-dir")


def context(argv: list[str], cwd: str) -> str:
    """What the command depends on besides files: its words, where and how it runs."""
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("PIPEMAKE_"))
    return digest([FORMAT, argv, cwd, env, environment()])


def _stat(path: str) -> list[Any] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def record(
    root: Path,
    seen: dict[str, tuple[Any, ...]],
    files: list[str],
    started_ns: int,
    databases: list[Path],
) -> dict[str, Any] | None:
    """The paths of a no-op build and their signatures, or None when one of them changed
    too recently (within a second of the build's start) to be trusted by stat alone. The
    databases (closed, under the build lock) are stat-ed as they are now, recent or not:
    any later write changes them."""
    limit = started_ns - _RACY_NS
    trees, singles, missing = [], [], []
    for rel, obs in seen.items():
        if obs[0] == "d":
            if obs[2] >= limit:
                return None
            trees.append([rel, obs[1], obs[3]])
        elif obs[0] == "f":
            if obs[4] >= limit:
                return None
            singles.append([rel, *obs[1:]])
        else:
            missing.append(rel)
    for path in files:
        sig = _stat(path)
        if sig is None:
            missing.append(path)
            continue
        if sig[3] >= limit:
            return None
        singles.append([path, *sig])
    dbs = [[path, _stat(path)] for db in databases for path in (str(db), f"{db}-wal")]
    return {"root": str(root), "trees": trees, "files": singles, "missing": missing,
            "databases": dbs}  # fmt: skip


def write(dot: Path, ctx: str, snap: dict[str, Any], run: dict[str, Any]) -> None:
    """Write the snapshot of a no-op build (:func:`record`): a first line with the hash of
    the second, the document, so a damaged file is never taken for one."""
    body = json.dumps({"format": FORMAT, "context": ctx, **snap, "run": run},
                      separators=(",", ":"))  # fmt: skip
    tmp = dot / f".{FILE}.{os.getpid()}"
    tmp.write_text(f"{hash_bytes(body.encode())}\n{body}")
    os.replace(tmp, dot / FILE)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        digest_, _, body = path.read_bytes().partition(b"\n")
        if hash_bytes(body) != digest_.decode("ascii", "replace"):
            return None
        doc = json.loads(body)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def discard(dot: Path) -> None:
    """Remove a snapshot that this build cannot vouch for."""
    try:
        os.unlink(dot / FILE)
    except FileNotFoundError:
        pass


def _unchanged(doc: dict[str, Any]) -> bool:
    root = doc["root"]
    for path, *sig in doc["files"]:
        if _stat(os.path.join(root, path)) != sig:
            return False
    for path in doc["missing"]:
        if os.path.lexists(os.path.join(root, path)):
            return False
    for path, sig in doc["databases"]:
        if _stat(path) != sig:
            return False
    return _trees_unchanged(root, doc["trees"])


def _tree_unchanged(root: str, path: str, sig: str) -> bool:
    full = os.path.join(root, path)
    left: list[tuple[str, str]] = []
    return os.path.isdir(full) and signature(walk(full, left), left) == sig


def _trees_unchanged(root: str, trees: list[list[Any]]) -> bool:
    """Whether every tree still has its signature: big ones split between this process
    and a forked child, so that the two halves walk on two cores at once (a no-op at
    100,000 files: 0.38 s instead of 0.69 s, see docs/benchmarks.md). This runs before
    the command starts any thread, so the fork copies nothing another thread holds."""
    if (
        len(trees) < 2
        or sum(int(t[2]) for t in trees) < _PARALLEL_FILES
        or not hasattr(os, "fork")
        or (os.cpu_count() or 1) < 2
    ):
        return all(_tree_unchanged(root, path, sig) for path, sig, _ in trees)
    mine: list[list[Any]] = []
    theirs: list[list[Any]] = []
    load = [0, 0]
    for tree in sorted(trees, key=lambda t: -int(t[2])):
        half = 0 if load[0] <= load[1] else 1
        (mine, theirs)[half].append(tree)
        load[half] += int(tree[2])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its half, one byte of answer, and gone without any clean-up
        try:
            ok = all(_tree_unchanged(root, path, sig) for path, sig, _ in theirs)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        ok = all(_tree_unchanged(root, path, sig) for path, sig, _ in mine)
        return ok and os.read(r, 1) == b"1"  # nothing read (the child failed): not unchanged
    finally:
        os.close(r)
        os.waitpid(pid, 0)


_STARTED = {"stages": list, "targets": list, "expected": dict, "deps": dict, "budget": dict,
            "jobs": int, "per_item": dict}  # fmt: skip


def _replayable(run: Any) -> bool:
    """Whether the recorded run has exactly the shape the replay needs."""
    if not isinstance(run, dict) or not isinstance(run.get("pipeline"), str):
        return False
    started = run.get("started")
    if not isinstance(started, dict) or set(started) != set(_STARTED):
        return False
    if not all(type(started[k]) is t for k, t in _STARTED.items()):
        return False
    return all(isinstance(x, str) for x in started["stages"] + started["targets"])


def _dot(argv: list[str]) -> tuple[Path, list[str]] | None:
    """The ``.pipemake`` directory and the build command's own words, when ``argv`` is a
    plain ``build`` that a snapshot may answer; None otherwise."""
    found = build_file(argv)
    return None if found is None else (found[0].parent / ".pipemake", found[1])


def build_file(argv: list[str]) -> tuple[Path, list[str]] | None:
    """The pipeline file a plain ``build`` command names (``-C``/``-f``, else
    ``pipemake.yaml``) and the command's own words; None for any other command, and where
    the file lies relative to a current folder that was removed (the CLI says so)."""
    base, file = None, Path("pipemake.yaml")
    i = 0
    while i < len(argv) and argv[i] in _GLOBAL_OPTS and i + 1 < len(argv):
        if argv[i] == "-C":
            base = Path(argv[i + 1])
        elif argv[i] == "-f":
            file = Path(argv[i + 1])
        i += 2
    if i >= len(argv) or argv[i] != "build":
        return None
    words = argv[i + 1 :]
    if any(w in ("-h", "--help", "--log-json") or w.startswith("--log-json=") for w in words):
        return None
    if file.is_absolute():
        return file, words
    if base is None:
        try:
            base = Path.cwd()
        except OSError:  # the current folder was removed
            return None
        if "-f" not in argv[:i] and not any((base / n).is_file() for n in PIPELINE_FILES):
            above = find_above(base, PIPELINE_FILES)  # typed in a subfolder of the project
            return None if above is None else (above, words)
    return base / file, words


def answer(argv: list[str], replay: Callable[[Path, dict[str, Any], bool], None]) -> int | None:
    """Answer ``pipemake build`` from the snapshot: 0 when every stage is still up to date
    (``replay(dot, run, no_progress)`` then emits the no-op's events), None when the full
    build must run."""
    found = _dot(argv)
    if found is None:
        return None
    dot, words = found
    doc = _read(dot / FILE)
    try:
        here = os.getcwd()
    except OSError:  # the current folder was removed: no snapshot holds for it
        return None
    if doc is None or doc.get("context") != context(argv, here):
        return None
    from .errors import LockTimeout
    from .lock import BuildLock

    lock = BuildLock(dot / "lock", timeout=0)
    try:
        lock.acquire()
    except LockTimeout:
        return None  # another build is running: wait for it the usual way
    try:
        try:
            if not _replayable(doc.get("run")) or not _unchanged(doc):
                return None
        except (KeyError, TypeError, ValueError, OSError, OverflowError):
            return None  # a document of the wrong shape, or a path that cannot be read
        _say_which_file(argv, dot.parent, here)
        replay(dot, doc["run"], "--no-progress" in words)
    finally:
        lock.release()
    return 0


def _say_which_file(argv: list[str], root: Path, here: str) -> None:
    """Say, as the full build does, which pipeline file a command that names none used: one
    found above the current folder, or the original system's ``pipeline.yaml`` where there
    is no ``pipemake.yaml`` (the snapshot held, so the file it rested on is there)."""
    before = argv[: argv.index("build")]
    if "-f" in before:
        return
    above = "-C" not in before and str(root) != here
    if not above and (root / PIPELINE_FILES[0]).exists():
        return
    name = next(n for n in PIPELINE_FILES if (root / n).is_file())
    import sys

    sys.stderr.write(using(root / name, above) + "\n")
