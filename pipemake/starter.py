"""``pipemake init``: a commented starter pipeline, or a copy of an example, in a folder.

Nothing is ever overwritten: an existing pipeline file (pipemake's or the original
system's) or any file an example would bring is a :class:`~pipemake.errors.UsageError`
naming it. ``.pipemake/`` (the store and pipemake's own files) is added to the folder's
``.gitignore``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import UsageError
from .model import DEFAULT_FILE

__all__ = ["EXAMPLES", "STARTER", "examples_dir", "init"]

#: the examples ``init --example`` copies (shipped beside the package in a source checkout)
EXAMPLES = ("quickstart", "character_dataset")
#: the original system's pipeline file, which pipemake reads when there is no pipemake.yaml
_ORIGINAL = "pipeline.yaml"
_IGNORE = ".pipemake/"

STARTER = """\
# A starter pipeline: `pipemake build` builds it, `pipemake dry-run` says what would run
# and why, `pipemake graph` shows the stages. Every path is relative to this folder.
name: {name}
version: 1

# Variables, used as {{vars.NAME}}. Change one for a single build:
#   pipemake build --set vars.who=you
vars:
  who: world

# A params file (as DVC's params.yaml): its keys are {{params.KEY}} or
# {{params.SECTION.KEY}}, and a stage reruns only when a key it uses changes.
# params: params.yaml

stages:
  # A shell command. It writes to {{outputs.NAME}} (a staging path: pipemake moves the
  # result into place once the command succeeded) and reads {{inputs.NAME}}.
  - id: hello
    type: shell
    config:
      cmd: "echo 'hello, {{vars.who}}' > {{outputs.greeting}}"
      outputs: {{greeting: build/hello.txt}}

  # Referring to another stage's output ({{hello.greeting}}) makes this stage depend on it.
  - id: shout
    type: shell
    config:
      cmd: "tr a-z A-Z < {{inputs.text}} > {{outputs.loud}}"
      inputs: {{text: "{{hello.greeting}}"}}
      outputs: {{loud: build/HELLO.txt}}

  # One run per file of a folder: only the files that changed run again.
  # - id: thumbs
  #   type: shell
  #   foreach: images
  #   config:
  #     cmd: "convert {{inputs.images}} -resize 64x64 {{outputs.thumbs}}/{{item.name}}"
  #     inputs: {{images: data/images}}
  #     outputs: {{thumbs: build/thumbs}}

  # A Python function (steps/prepare.py: `def run(ctx): ...`, writing ctx.outputs["out"]).
  # - id: prepare
  #   type: python
  #   config:
  #     function: "steps.prepare:run"
  #     inputs: {{text: "{{shout.loud}}"}}
  #     outputs: {{out: build/prepared.txt}}
  #     params: {{lines: 10}}
"""


def examples_dir() -> Path:
    """Where the examples are: the ``examples`` folder beside the package's source."""
    return Path(__file__).resolve().parent.parent / "examples"


def init(folder: Path, file: Path | None = None, example: str | None = None) -> list[str]:
    """Write a starter pipeline (or copy the example ``example``) into ``folder`` (the
    pipeline file ``file`` when given); return what was written, relative to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if example is not None:
        written = _copy_example(folder, example)
    else:
        target = file if file is not None else folder / DEFAULT_FILE
        _refuse_existing(folder, target, original=file is None)
        name = json.dumps(folder.resolve().name or "pipeline")
        try:
            with open(target, "x", encoding="utf-8") as fh:
                fh.write(STARTER.format(name=name))
        except FileExistsError:
            _refuse_existing(folder, target, original=False)
            raise
        written = [os.path.relpath(target, folder)]
    if _ignore(folder):
        written.append(".gitignore")
    return written


def _refuse_existing(folder: Path, target: Path, original: bool) -> None:
    """Refuse a pipeline file that exists, and (``original``: no file was named) a new
    ``pipemake.yaml`` that would hide the original system's ``pipeline.yaml``."""
    if os.path.lexists(target):
        raise UsageError(
            f"{_shown(target)} already exists: pipemake init never overwrites a file. Edit it, "
            "remove it first, or start elsewhere (pipemake -C NEW_FOLDER init)"
        )
    old = folder / _ORIGINAL
    if original and old.exists():
        raise UsageError(
            f"{_shown(old)} is there: pipemake reads the original system's pipeline file as it "
            f"is (pipemake validate checks it), and a new {DEFAULT_FILE} would take its place. "
            f"To start anew anyway, pass -f {DEFAULT_FILE} explicitly"
        )


def _copy_example(folder: Path, example: str) -> list[str]:
    if example not in EXAMPLES:
        raise UsageError(f"unknown example {example!r} (examples: {', '.join(EXAMPLES)})")
    source = examples_dir() / example
    if not (source / DEFAULT_FILE).is_file():
        raise UsageError(
            f"the examples are not installed here (looked in {source}): they come with a "
            "source checkout of pipemake (git clone, then pip install -e .)"
        )
    files = sorted(
        p.relative_to(source)
        for p in source.rglob("*")
        if p.is_file() and not _skipped(p.relative_to(source))
    )
    clash = [str(rel) for rel in files if os.path.lexists(folder / rel)]
    if clash:
        more = f" and {len(clash) - 3} more" if len(clash) > 3 else ""
        raise UsageError(
            f"{_shown(folder / clash[0])} already exists ({', '.join(clash[:3])}{more} would be "
            "overwritten): pipemake init never overwrites a file; choose an empty folder "
            "(pipemake -C NEW_FOLDER init --example " + example + ")"
        )
    for rel in files:
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, dest)
    return [str(rel) for rel in files]


def _shown(path: Path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _skipped(rel: Path) -> bool:
    """What an example folder may hold that is not the example: a build of it."""
    return rel.parts[0] in (".pipemake", "build") or "__pycache__" in rel.parts


def _ignore(folder: Path) -> bool:
    """Add ``.pipemake/`` to the folder's ``.gitignore`` unless it is there; whether the
    file changed."""
    path = folder / ".gitignore"
    if path.is_symlink():
        return False  # pipemake writes no file through a link
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError):
        return False  # not ours to repair
    have = {line.strip().lstrip("/").rstrip("/") for line in text.splitlines()}
    if ".pipemake" in have:
        return False
    sep = "" if not text or text.endswith("\n") else "\n"
    note = "# pipemake's store and own files (pipemake init)\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{sep}{note}{_IGNORE}\n")
    return True
