"""The same two-stage work written for each tool of the scale benchmark.

Stage 1 maps every file of ``data/`` to an upper-cased copy with a tag appended (the tag is
the parameter the "param changed" scenarios flip); stage 2 counts the bytes of all copies.
Each adapter writes its project files, says how to reset to a cold state, which command
builds / does a no-op check / dry-runs, and how many items a build re-did (from its log).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["COUNT", "TOOLS", "Tool", "WORK_MODULE"]

# The per-file work as Python: the DVC stage, the pipemake ``python`` rule and the bare loop
# all use this module, so the Python-side work is identical everywhere.
WORK_MODULE = '''\
"""Benchmark work: upper-case each file and append a tag."""
import os
import sys


def work_one(src, dst, tag):
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data.upper() + tag.encode())


def upper(ctx):
    """pipemake ``python`` rule, called once per foreach item."""
    src = ctx.inputs["src"]
    work_one(src, os.path.join(ctx.outputs["out"], src.name), ctx.params["tag"])


def loop(src_dir, dst_dir, tag):
    """The whole directory in one process (DVC's directory stage, the bare loop)."""
    os.makedirs(dst_dir, exist_ok=True)
    names = sorted(e.name for e in os.scandir(src_dir) if e.is_file())
    for name in names:
        work_one(os.path.join(src_dir, name), os.path.join(dst_dir, name), tag)
    return len(names)


if __name__ == "__main__":
    loop(*sys.argv[1:4])
'''

SHELL_WORK = '{{ tr a-z A-Z < {src}; printf %s "$TAG"; }} > {dst}'
COUNT = "find build/upper -type f -exec cat {} + | wc -c > build/count.txt"

_PM_SHELL = """\
name: bench
stages:
  - id: upper
    type: shell
    foreach: src
    config:
      cmd: 'WORK'
      inputs: {{src: data}}
      outputs: {{out: build/upper}}
      env: {{TAG: "{tag}"}}
  - id: count
    type: shell
    config:
      cmd: "find {{inputs.u}} -type f -exec cat {{{{}}}} + | wc -c > {{outputs.o}}"
      inputs: {{u: "{{upper.out}}"}}
      outputs: {{o: build/count.txt}}
"""

_PM_SHELL = _PM_SHELL.replace(
    "WORK",
    '{{{{ tr a-z A-Z < {{inputs.src}}; printf %s "$TAG"; }}}} > {{outputs.out}}/{{item.name}}',
)

_PM_PYTHON = """\
name: bench
stages:
  - id: upper
    type: python
    foreach: src
    config:
      function: "benchwork:upper"
      inputs: {{src: data}}
      outputs: {{out: build/upper}}
      params: {{tag: "{tag}"}}
  - id: count
    type: shell
    config:
      cmd: "find {{inputs.u}} -type f -exec cat {{{{}}}} + | wc -c > {{outputs.o}}"
      inputs: {{u: "{{upper.out}}"}}
      outputs: {{o: build/count.txt}}
"""

_PM_BIG = """\
name: big
stages:
  - id: hashbig
    type: shell
    config:
      cmd: "ls -l {inputs.b} > {outputs.o}"
      inputs: {b: big}
      outputs: {o: build/big.txt}
"""

_MAKEFILE = """\
# no built-in implicit rules: their search per target costs seconds at 10,000 targets
MAKEFLAGS += --no-builtin-rules --no-builtin-variables
.SUFFIXES:
include params.mk
SRC := $(sort $(wildcard data/*.txt))
OUT := $(patsubst data/%,build/upper/%,$(SRC))
export TAG

all: build/count.txt

build/count.txt: $(OUT)
\t{count}

$(OUT): build/upper/%.txt: data/%.txt params.mk | build/upper
\t{work}

build/upper:
\tmkdir -p $@
""".format(count=COUNT, work=SHELL_WORK.format(src="$<", dst="$@").replace('"$TAG"', '"$$TAG"'))

_SNAKEFILE = """\
import os
configfile: "config.yaml"
NAMES = sorted(f[:-4] for f in os.listdir("data") if f.endswith(".txt"))

rule all:
    input: "build/count.txt"

rule count:
    input: expand("build/upper/{{n}}.txt", n=NAMES)
    output: "build/count.txt"
    shell: "find build/upper -type f -exec cat {{{{}}}} + | wc -c > {{output}}"

rule upper:
    input: "data/{{n}}.txt"
    output: "build/upper/{{n}}.txt"
    params: tag=config["tag"]
    shell: "{work}"
""".format(work="{{ tr a-z A-Z < {input}; printf %s {params.tag:q}; }} > {output}")

_DVC_YAML = """\
stages:
  upper:
    cmd: python3 benchwork.py data build/upper ${tag}
    deps: [data, benchwork.py]
    params: [tag]
    outs: [build/upper]
  count:
    cmd: COUNT
    deps: [build/upper]
    outs: [build/count.txt]
""".replace("COUNT", COUNT)

_DVC_BIG = """\
stages:
  hashbig:
    cmd: ls -l big > big.txt
    deps: [big]
    outs: [big.txt]
"""


@dataclass
class Tool:
    """One tool's way of doing the benchmark work in a project directory."""

    name: str
    exe: str  # the executable the harness must find (on PATH or in the peer venv)
    build: list[str]
    noop: list[str]
    dry: list[str]
    state: list[str]  # paths holding the tool's state, removed for a cold build
    hashes: bool = True  # whether it content-hashes inputs (the big-file scenario)
    extra_env: dict[str, str] = field(default_factory=dict)

    def write(self, root: Path, tag: str) -> None:
        """Write the project files for the small-file pipeline with the given param."""
        raise NotImplementedError

    def set_param(self, root: Path, tag: str) -> None:
        self.write(root, tag)

    def setup(self, root: Path, run: object) -> None:
        """One-time project initialisation (``dvc init``); ``run`` runs a command there."""

    def write_big(self, root: Path) -> bool:
        """Write the big-file hashing project; False when the tool does not hash."""
        return False

    def items_run(self, log: str, total: int) -> str:
        """How many items a build re-did, as read from its log ('?' when not observable)."""
        return "?"


def _count(pattern: str, log: str) -> int:
    return len(re.findall(pattern, log, flags=re.M))


class Pipemake(Tool):
    """``python_rule``: the ``python`` rule instead of ``shell``; ``link``: every build with
    ``--link`` (outputs hard-linked to the store's objects instead of copied)."""

    def __init__(
        self, name: str = "pipemake", python_rule: bool = False, jobs: int = 2, link: bool = False
    ) -> None:
        build = ["build", "-j", str(jobs), "--no-progress", *(["--link"] if link else [])]
        super().__init__(name, "pipemake", build, list(build), ["dry-run"], [".pipemake", "build"])
        self.python_rule = python_rule

    def write(self, root: Path, tag: str) -> None:
        text = (_PM_PYTHON if self.python_rule else _PM_SHELL).format(tag=tag)
        (root / "pipemake.yaml").write_text(text)
        (root / "benchwork.py").write_text(WORK_MODULE)

    def write_big(self, root: Path) -> bool:
        (root / "pipemake.yaml").write_text(_PM_BIG)
        return True

    def items_run(self, log: str, total: int) -> str:
        m = re.search(r"^.*upper: running \(.*?([\d,]+) of ([\d,]+) items changed", log, re.M)
        if m:
            return m.group(1).replace(",", "")
        if re.search(r"upper: restored", log):
            return "restored"
        if re.search(r"upper: up to date", log):
            return "0"
        if re.search(r"upper: running", log):
            return str(total)
        return "?"


class Make(Tool):
    def __init__(self, jobs: int = 2) -> None:
        super().__init__(
            "make",
            "make",
            ["make", "-j", str(jobs)],
            ["make", "-j", str(jobs)],
            ["make", "-n"],
            ["build"],
            hashes=False,
        )

    def write(self, root: Path, tag: str) -> None:
        (root / "Makefile").write_text(_MAKEFILE)
        (root / "params.mk").write_text(f"TAG := {tag}\n")

    def items_run(self, log: str, total: int) -> str:
        return str(_count(r"^\{ tr a-z A-Z", log))


class Snakemake(Tool):
    def __init__(self, jobs: int = 2) -> None:
        super().__init__(
            "snakemake",
            "snakemake",
            ["snakemake", "-c", str(jobs)],
            ["snakemake", "-c", str(jobs)],
            ["snakemake", "-n", "-c", "1"],
            [".snakemake", "build"],
            hashes=False,
        )

    def write(self, root: Path, tag: str) -> None:
        (root / "Snakefile").write_text(_SNAKEFILE)
        (root / "config.yaml").write_text(f"tag: {tag}\n")

    def items_run(self, log: str, total: int) -> str:
        return str(_count(r"^\s*(?:local)?rule upper:", log))


class Dvc(Tool):
    def __init__(self) -> None:
        super().__init__(
            "dvc",
            "dvc",
            ["dvc", "repro", "-q"],
            ["dvc", "repro", "-q"],
            ["dvc", "status", "-q"],
            [".dvc/cache", ".dvc/site", "dvc.lock", "build", "big.txt"],
            extra_env={"DVC_NO_ANALYTICS": "1"},
        )
        self.build = ["dvc", "repro"]
        self.noop = ["dvc", "repro"]

    def write(self, root: Path, tag: str) -> None:
        (root / "dvc.yaml").write_text(_DVC_YAML)
        (root / "params.yaml").write_text(f"tag: {tag}\n")
        (root / "benchwork.py").write_text(WORK_MODULE)

    def setup(self, root: Path, run: object) -> None:
        if not (root / ".dvc").exists():
            run(["dvc", "init", "--no-scm", "-q"])  # type: ignore[operator]
            run(["dvc", "config", "core.analytics", "false"])  # type: ignore[operator]
            run(["dvc", "config", "core.site_cache_dir", str(root / ".dvc" / "site")])  # type: ignore[operator]

    def write_big(self, root: Path) -> bool:
        (root / "dvc.yaml").write_text(_DVC_BIG)
        return True

    def items_run(self, log: str, total: int) -> str:
        if re.search(r"Running stage 'upper'", log):
            return str(total)
        if re.search(r"Stage 'upper' is cached|Restored stage 'upper'", log):
            return "restored"
        if re.search(r"'upper' didn't change|Data and pipelines are up to date", log):
            return "0"
        return "?"


def TOOLS(jobs: int) -> dict[str, Tool]:  # noqa: N802 - a table, built per -j
    """Every tool the harness knows, by name."""
    return {
        "pipemake": Pipemake(jobs=jobs),
        "pipemake-py": Pipemake("pipemake-py", python_rule=True, jobs=jobs),
        "pipemake-link": Pipemake("pipemake-link", python_rule=True, jobs=jobs, link=True),
        "make": Make(jobs),
        "dvc": Dvc(),
        "snakemake": Snakemake(jobs),
    }


def reset(root: Path, tool: Tool) -> None:
    """Remove a tool's state and outputs, for a cold build."""
    for rel in tool.state:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
