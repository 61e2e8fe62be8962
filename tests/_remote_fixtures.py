"""What the remote-store tests (``tests/test_remote*.py``) share: the foreach pipeline
they push and pull, its input files, the environment naming a remote, and a look at the
outputs a build placed."""

from __future__ import annotations

from pathlib import Path

from conftest import Proj

#: one ``shell`` foreach stage ``upper``: each item of ``data`` upper-cased into
#: ``build/upper``, noting its name in ``runs/items.log`` (outside every output), so a test
#: sees which items ran
EACH = """
name: items
stages:
  - id: upper
    type: shell
    foreach: src
    config:
      cmd: "echo {item.name} >> runs/items.log; tr a-z A-Z < {inputs.src} > {outputs.out}/{item.name}"
      inputs: {src: data}
      outputs: {out: build/upper}
"""
#: :data:`EACH` and a whole-stage ``total`` below it, reading every item's output
EACH_TOTAL = (
    EACH
    + """  - id: total
    type: shell
    config:
      cmd: "echo x >> runs/total.count; cat $(find {inputs.u} -type f | sort) > {outputs.o}"
      inputs: {u: "{upper.out}"}
      outputs: {o: build/total.txt}
"""
)


def each_files(n: int) -> dict[str, str]:
    """``n`` small input files for :data:`EACH`: ``data/f0000.txt`` holds ``file 0``, …"""
    return {f"data/f{i:04}.txt": f"file {i}\n" for i in range(n)}


def remote_env(url: str, key: str | None = None, **more: str) -> dict[str, str]:
    """The environment of a command using the remote ``url``, signing with ``key`` (none:
    unsigned, whatever the caller's environment holds), plus ``more``."""
    return {"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": key or "", **more}


def outputs(proj: Proj) -> dict[str, bytes]:
    """Every file under the project's ``build/`` (path relative to it → bytes)."""
    build = proj.path("build")
    return {
        str(p.relative_to(build)): p.read_bytes() for p in sorted(build.rglob("*")) if p.is_file()
    }


def items_run(proj: Proj) -> list[str]:
    """The items of :data:`EACH` that ran in ``proj``, in the order they ran."""
    log = proj.path("runs/items.log")
    return log.read_text().split() if log.exists() else []


def local_objects(store: Path) -> list[Path]:
    """The object files of a local store folder (``.pipemake/store``)."""
    return sorted(p for p in (store / "objects").glob("*/*") if p.is_file())
