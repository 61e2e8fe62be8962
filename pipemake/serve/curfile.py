"""Which curation file the build reads, and whether ``pipemake serve`` may write it.

The server writes the file the ``training_data_prep`` stage reads (its ``curation`` input),
never another one the build would ignore: and only inside the project, never through a
symlink, never a stage's output. Otherwise it says why and writes nothing.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT", "CurationFile", "curation_file"]

#: the file written when no prep stage names one
DEFAULT = "curation.yaml"


@dataclass(frozen=True)
class CurationFile:
    """The curation file: its ``path``, the name to show (relative to the project where it
    is inside), the stage that reads it (None: none does), and why the server may not write
    it (None: it may)."""

    path: Path
    shown: str
    read_by: str | None
    refused: str | None


def curation_file(root: Path, pipeline: Any) -> CurationFile:
    """The curation file of the project at ``root`` (whose loaded ``pipeline`` is given, or
    None when it does not load): the ``curation`` input of the first training_data_prep
    stage that has one, else ``curation.yaml`` at the root."""
    if pipeline is None:
        why = "the pipeline does not load (see the Dataset page): fix it first"
        return CurationFile(root / DEFAULT, DEFAULT, None, why)
    for sid, st in pipeline.stages.items():
        value = st.ports.inputs.get("curation") if st.type == "training_data_prep" else None
        if isinstance(value, str) and value:
            return _checked(root, pipeline, value, sid)
    return _checked(root, pipeline, DEFAULT, None)


def _checked(root: Path, pipeline: Any, value: str, reader: str | None) -> CurationFile:
    full = Path(os.path.normpath(root / value))
    what = f"stage {reader} reads {value}" if reader else value
    try:
        rel = full.relative_to(root)
    except ValueError:
        why = (
            f"{what}, outside the project: the server writes only inside it (edit that file "
            "by hand, or name one inside the project)"
        )
        return CurationFile(full, value, reader, why)
    shown = rel.as_posix()
    if not rel.parts:
        return CurationFile(full, value, reader, f"{what}: that is the project folder")
    here, mode = root, None
    for part in rel.parts:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            mode = None
            break  # not there yet: saving creates it (a missing folder is said then)
        if stat.S_ISLNK(mode):
            link = here.relative_to(root).as_posix()
            how = "is a symlink" if link == shown else f"goes through the symlink {link}"
            why = (
                f"{shown} {how}: the server never writes through a link (edit the file by "
                "hand, or put the file in place of the link)"
            )
            return CurationFile(full, shown, reader, why)
    if mode is not None and not stat.S_ISREG(mode):
        return CurationFile(full, shown, reader, f"{shown} is not a regular file")
    for sid, st in pipeline.stages.items():
        outs = st.ports.outputs.values()
        for out in (o for v in outs for o in (v if isinstance(v, list) else [v])):
            made = Path(os.path.normpath(root / out)) if isinstance(out, str) else None
            if made is not None and (made == full or made in full.parents):
                why = f"{shown} is an output of stage {sid}: the next build replaces it"
                return CurationFile(full, shown, reader, why)
    return CurationFile(full, shown, reader, None)
