"""Walking a directory and its stat signature: shared by the hasher and the no-op check
(:mod:`pipemake.noop`), which must compute the very same signature and stay light. Also
what a walk would meet without hashing it: the symlinks under a folder (the loader refuses
one into an output) and the entries it leaves out as holding no file (a build says so)."""

from __future__ import annotations

import errno
import marshal
import os
import stat
import uuid
from collections.abc import Callable, Iterator

import xxhash

__all__ = [
    "BadPath",
    "LinkView",
    "NotRegular",
    "Row",
    "left_out",
    "links_under",
    "signature",
    "walk",
]

#: relpath, dev, ino, size, mtime_ns, ctime_ns, mode & 0o111 (ctime: no tool can set it, so a
#: rewrite that restores size and mtime still shows)
Row = tuple[str, int, int, int, int, int, int]


class BadPath(ValueError):
    """Something under a walked tree that pipemake cannot take as files (a symlink loop, a
    name that is not text): the message says which, and what to do."""


def walk(base: str, left: list[tuple[str, str]] | None = None) -> list[Row]:
    """Every file under ``base`` (recursively, following symlinks to files and directories)
    with its stat, in directory order (stable while a directory is unchanged; sort for a
    manifest); dangling symlinks, FIFOs, sockets and devices hold no file and are left out
    (noted in ``left``, when given, as :func:`left_out` says them: met on the way, they cost
    nothing more). A symlink to a directory that holds it (a loop) raises
    :class:`BadPath`."""
    rows: list[Row] = []
    stack = [""]
    while stack:
        sub = stack.pop()
        try:
            it = os.scandir(os.path.join(base, sub) if sub else base)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            _too_deep(base, sub, exc)
            where = os.path.join(base, sub) if sub else base
            raise BadPath(
                f"cannot list the directory {where}: {exc.strerror}; make it readable"
            ) from None
        with it:
            for de in it:
                name = f"{sub}/{de.name}" if sub else de.name
                try:
                    is_dir = de.is_dir()
                except OSError as exc:  # symlinks within symlinks, past what the OS follows
                    _too_deep(base, name, exc)
                    raise
                if is_dir:
                    if de.is_symlink():
                        _no_loop(base, name, de.path)
                    stack.append(name)
                    continue
                try:
                    s = de.stat()
                except FileNotFoundError:
                    if left is not None and de.is_symlink():  # else: removed meanwhile
                        left.append((name, "a symlink that leads nowhere"))
                    continue
                if not stat.S_ISREG(s.st_mode):
                    # a FIFO, socket or device holds no file's bytes (and a FIFO would wait
                    # for a writer for ever)
                    if left is not None:
                        kind = _KINDS.get(stat.S_IFMT(s.st_mode), "no file")
                        left.append((name, f"a symlink to {kind}" if de.is_symlink() else kind))
                    continue
                rows.append(
                    (name, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns,
                     s.st_mode & 0o111)
                )  # fmt: skip
    return rows


def _names(base: str) -> Iterator[tuple[str, os.DirEntry[str], str | None]]:
    """Every entry under the directory ``base`` but its plain folders, as :func:`walk`
    meets them (symlinked directories followed, each real folder listed once):
    ``(relpath, entry, real path a symlink leads to, or None for any other entry)``. Only
    names are listed, nothing is stat'ed but the links, so a tree of files costs one
    ``scandir`` per folder; a folder that cannot be listed is left to the walk to report."""
    seen = {os.path.realpath(base)}
    stack = [("", base)]
    while stack:
        sub, where = stack.pop()
        try:
            it = os.scandir(where)
        except OSError:
            continue
        with it:
            for de in it:
                name = f"{sub}/{de.name}" if sub else de.name
                if de.is_symlink():
                    target = os.path.realpath(de.path)
                    yield name, de, target
                    if target not in seen and os.path.isdir(target):
                        seen.add(target)
                        stack.append((name, de.path))
                elif de.is_dir(follow_symlinks=False):
                    stack.append((name, de.path))
                else:
                    yield name, de, None


def links_under(base: str) -> list[tuple[str, str]]:
    """Every symlink under the directory ``base`` (see :func:`_names`): ``(relpath, real
    path it leads to)``."""
    return [(name, target) for name, _, target in _names(base) if target is not None]


def left_out(base: str) -> list[tuple[str, str]]:
    """What :func:`walk` leaves out under the directory ``base`` as holding no file:
    ``(relpath, what it is)`` for each symlink that leads nowhere, FIFO, socket or device
    (or symlink to one). Names only (see :func:`_names`): nothing is stat'ed but links and
    those entries."""
    found: list[tuple[str, str]] = []
    for name, de, target in _names(base):
        link = target is not None
        if not link and de.is_file(follow_symlinks=False):
            continue
        try:
            mode = (os.stat if link else os.lstat)(de.path).st_mode
        except OSError:
            found.append((name, "a symlink that leads nowhere"))
            continue
        if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "no file")
            found.append((name, f"a symlink to {kind}" if link else kind))
    return found


def remove_stale(folder: str, matches: Callable[[str], bool], before: float) -> int:
    """Remove from ``folder`` the regular files (never a link, nor anything else) whose
    name ``matches`` and which were last written before ``before``: what a killed pipemake
    left behind there under a name of its own. How many were removed."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not matches(name):
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < before:
                os.unlink(path)
                removed += 1
        except OSError:
            continue
    return removed


class NotRegular(BadPath):
    """A path that is a device, FIFO or socket where a file or folder must be (``path``
    absolute, ``kind`` in words): an input's message; an output's caller says its own."""

    def __init__(self, path: str, kind: str) -> None:
        self.path, self.kind = path, kind
        super().__init__(
            f"{path} is not a regular file or a folder (a device, FIFO or socket): an input "
            "must be a file or a folder; point it at one"
        )


#: what a walk leaves out, in words
_KINDS = {
    stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}  # fmt: skip


def _no_loop(base: str, name: str, path: str) -> None:
    """Raise :class:`BadPath` when the symlinked directory ``path`` holds itself (it is
    the directory it sits in, or one above): walking it would never end."""
    target = os.path.realpath(path)
    here = os.path.realpath(os.path.dirname(path))
    if here == target or here.startswith(os.path.join(target, "")):
        shown = (
            os.path.join(base, name)
            .encode("utf-8", "surrogateescape")
            .decode("utf-8", "backslashreplace")
        )
        raise BadPath(
            f"{shown} is a symlink to a directory that holds it ({target}): a loop; remove "
            "it, or point it elsewhere"
        )


def _too_deep(base: str, name: str, exc: OSError) -> None:
    """Raise :class:`BadPath` for a symlink loop the OS gave up on (symlinked directories
    leading to each other): the path named up to where it starts repeating."""
    if exc.errno != errno.ELOOP:
        return
    parts = name.split("/")
    short = next(("/".join(parts[: i + 1]) for i, p in enumerate(parts) if p in parts[:i]), name)
    raise BadPath(
        f"{os.path.join(base, short)}: symlinked directories that lead back to each other (a "
        "loop); remove one of the links"
    ) from None


def signature(rows: list[Row], left: list[tuple[str, str]] | None = None) -> str:
    """The stat signature of a walked tree: a hash of every file's relpath, device, inode,
    size, mtime, ctime and executable bits, in walk order, and of the entries the walk
    ``left`` out (a dangling symlink added changes it: the build that meets it says so). An
    unchanged tree walks in the same order, so an equal signature means an unchanged tree; a
    reordered one merely differs (and is checked file by file). ``marshal`` only serializes
    the tuples to be hashed (it is never loaded); its format 4 is fixed. A tree that leaves
    nothing out has the signature it always had."""
    if left:
        return xxhash.xxh3_128_hexdigest(marshal.dumps((rows, sorted(left)), 4))
    return xxhash.xxh3_128_hexdigest(marshal.dumps(rows, 4))


#: how many symlinks one path may pass through before it is taken for a loop (Linux's limit)
_MAX_HOPS = 40


def _shown(path: str) -> str:
    """A path for a message, its bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class LinkView:
    """A stage's staged outputs as seen from their final paths, for hashing what it wrote.

    A stage writes into staging (``.pipemake/tmp/…``), but a symlink it makes there means
    what it will mean at the output's final path: ``ln -s ../../data/a.txt
    {outputs.d}/a.txt`` leads to ``data/a.txt`` from ``build/d``, and nowhere from staging.
    So every link met under a staged output is resolved here by hand, one name at a time,
    in *final* coordinates: a path at or under an output's final path stands for the same
    path under its staging path, any other for itself. A link that leads nowhere even so is
    a :class:`BadPath` naming it.

    Files reached through a link are read through a link of pipemake's own (a *handle* in a
    scratch folder beside the staged outputs, pointing at the resolved file or folder), so
    whoever stores them sees a link and copies, never hard-links or changes a file that is
    not the stage's (a user's source file a link leads to). :meth:`close` removes the
    handles.
    """

    def __init__(self, places: list[tuple[str, str]], root: str):
        """``places``: (staged path, final path) of each output, absolute; ``root``: the
        project root, for messages."""
        self.root = root
        self.staged = {os.path.normpath(s): _final(f) for s, f in places}
        self._pairs = [(f, s) for s, f in self.staged.items()]
        self.finals = {f for f, _ in self._pairs}
        self._scratch = os.path.join(
            os.path.dirname(next(iter(self.staged), root)),
            f".pipemake-links-{uuid.uuid4().hex[:12]}",
        )
        self._handles = 0

    def to_phys(self, vpath: str) -> str:
        """Where the path ``vpath`` (in final coordinates) is on disk now."""
        for final, staged in self._pairs:
            if vpath == final or vpath.startswith(final + "/"):
                return staged + vpath[len(final) :]
        return vpath

    def virtual(self, path: str) -> str:
        """The final-coordinates path of a staged output (any other path: itself)."""
        return self.staged.get(os.path.normpath(path), path)

    def resolve(self, vpath: str) -> str | None:
        """The path (final coordinates, no link left in it) that ``vpath`` leads to, whose
        parent has no link in it; None when it leads nowhere. :class:`BadPath` for a loop
        or a folder that cannot be read."""
        resolved, todo, hops = os.path.dirname(vpath), [os.path.basename(vpath)], 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                resolved = os.path.dirname(resolved)
                continue
            nxt = os.path.join(resolved, part)
            phys = self.to_phys(nxt)
            try:
                st = os.lstat(phys)
            except (FileNotFoundError, NotADirectoryError):
                if not self._holds_output(nxt):
                    return None
                resolved = nxt  # a folder placing the outputs will make (``build``)
                continue
            except OSError as exc:
                raise BadPath(f"cannot look at {_shown(phys)}: {exc.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_HOPS:
                    raise BadPath(
                        f"{self.shown(vpath)}: symlinks that lead back to each other (a loop); "
                        "remove one of the links"
                    )
                target = os.readlink(phys)
                if target.startswith("/"):
                    resolved = "/"
                todo.extend(reversed(target.split("/")))
            elif todo and any(p not in ("", ".") for p in todo) and not stat.S_ISDIR(st.st_mode):
                return None
            else:
                resolved = nxt
        return resolved

    def follow(self, vlink: str) -> tuple[str, str, os.stat_result]:
        """Resolve the link at ``vlink`` (final coordinates): its target's final path, a
        handle to read it through, and its stat; :class:`BadPath` when it leads nowhere."""
        target = self.resolve(vlink)
        st = None
        if target is not None:
            try:
                st = os.stat(self.to_phys(target))
            except OSError:
                st = None
        if target is not None and target != vlink and (vlink + "/").startswith(target + "/"):
            raise BadPath(
                f"{self.shown(vlink)} is a symlink to a folder that leads back to it (a loop); "
                "remove it, or point it elsewhere"
            )
        if target is None or st is None:
            phys = self.to_phys(vlink)
            try:
                said = os.readlink(phys)
            except OSError:
                said = "?"
            raise BadPath(
                f"{self.shown(vlink)} is a symlink to {_shown(said)}, which leads nowhere from "
                "where the output goes (a relative link counts from the output's own path, "
                "not from staging): point it at a file or folder that exists, or copy the "
                "file in instead of linking it"
            )
        return target, self._handle(self.to_phys(target)), st

    def _holds_output(self, vpath: str) -> bool:
        """Whether ``vpath`` is a folder an output's final path lies in."""
        top = os.path.join(vpath, "")
        return any(f.startswith(top) for f in self.finals)

    def _handle(self, phys: str) -> str:
        """A link of pipemake's own to ``phys``, to read it through."""
        if not self._handles:
            os.makedirs(self._scratch, exist_ok=True)
        self._handles += 1
        handle = os.path.join(self._scratch, str(self._handles))
        os.symlink(os.path.abspath(phys), handle)
        return handle

    def close(self) -> None:
        """Remove the handles (never what they point to)."""
        if self._handles:
            for name in os.listdir(self._scratch):
                os.unlink(os.path.join(self._scratch, name))
            os.rmdir(self._scratch)
            self._handles = 0

    def shown(self, vpath: str) -> str:
        """``vpath`` for a message: relative to the project root when inside it."""
        rel = os.path.relpath(vpath, os.path.realpath(self.root))
        return _shown(vpath if rel.startswith("..") else rel)

    def walk(self, vbase: str, read: str) -> tuple[list[Row], dict[str, str]]:
        """:func:`walk` of the folder at ``vbase`` (final coordinates), listed through
        ``read``, with links resolved as :class:`LinkView` says; also the path to read each
        file at where it is not ``read/relpath`` (reached through a link)."""
        rows: list[Row] = []
        sources: dict[str, str] = {}
        # each folder with the folders it was reached through (final coordinates, resolved):
        # a link to one of them, or above one, would be walked for ever
        stack: list[tuple[str, str, str, tuple[str, ...]]] = [("", vbase, read, (vbase,))]
        while stack:
            sub, vdir, rdir, chain = stack.pop()
            try:
                it = os.scandir(rdir)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise BadPath(f"cannot list the directory {_shown(rdir)}: {exc.strerror}; "
                              "make it readable") from None  # fmt: skip
            with it:
                for de in it:
                    name = f"{sub}/{de.name}" if sub else de.name
                    vchild = os.path.join(vdir, de.name)
                    if de.is_symlink() or vchild in self.finals:
                        target, path, s = self.follow(vchild)
                        if stat.S_ISDIR(s.st_mode):
                            top = os.path.join(target, "")
                            if any(c == target or c.startswith(top) for c in chain):
                                raise BadPath(
                                    f"{self.shown(vchild)} is a symlink to a folder that leads "
                                    "back to it (a loop); remove it, or point it elsewhere"
                                )
                            stack.append((name, target, path, (*chain, target)))
                            continue
                    elif de.is_dir(follow_symlinks=False):
                        stack.append((name, vchild, de.path, (*chain, vchild)))
                        continue
                    else:
                        path = de.path
                        try:
                            s = de.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                    if not stat.S_ISREG(s.st_mode):  # the store could not bring it back
                        raise NotRegular(de.path, _KINDS.get(stat.S_IFMT(s.st_mode), "no file"))
                    if path != f"{read}/{name}":
                        sources[name] = path
                    rows.append(
                        (name, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns,
                         s.st_mode & 0o111)
                    )  # fmt: skip
        return rows, sources


def _final(path: str) -> str:
    """An output's final path with its parent resolved (the user's own layout, followed as
    the system follows it) and its own name kept."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
