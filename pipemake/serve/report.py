"""``pipemake report``: one run's History and the Dataset views as one self-contained HTML
file (styles inline, thumbnails inlined as downscaled JPEG data), for a CI artifact: it opens
offline, with no server and nothing fetched.

It shows what the run logs and stage outputs hold, which a shared store may have written:
besides the escaping of :mod:`.pages`, the file carries a Content-Security-Policy that lets
no script run at all, its one ``<style>`` only by hash, and images only as inline data.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path

from .. import history
from ..errors import PipemakeError, UsageError
from . import pages
from .data import DATASET_RULES, Forbidden, NotFound, Site, TooLarge, thumbnail

__all__ = ["REPORT_THUMB", "report_policy", "write_report"]

#: thumbnail side in the report: small enough to keep a dataset's report a few MB
REPORT_THUMB = 96


def report_policy(style: str) -> str:
    """The report's CSP: no script, no request to anywhere, images only as ``data:`` URIs,
    and no style but the ``<style>`` element whose text is ``style`` (by its hash)."""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; "
        "base-uri 'none'; form-action 'none'"
    )


def _data_uri(site: Site, stage: str, rel: str) -> str:
    if not isinstance(rel, str):  # a manifest row naming no file
        return ""
    try:
        path = site.output_file(stage, rel)
    except (NotFound, Forbidden):
        return ""
    try:
        data = thumbnail(path, REPORT_THUMB, "JPEG")
    except TooLarge:
        data = None
    if data is None:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def render_report(site: Site, run: str | None = None) -> str:
    """The report's HTML for ``run`` (an id, a prefix, ``-2``…; default the last run)."""
    summary, _ = history.read_run(site.runs_dir, run)
    folded = site.run(summary["id"])
    style = resources.files("pipemake.serve").joinpath("static", "app.css").read_text()
    csp = f'<meta http-equiv=Content-Security-Policy content="{pages.e(report_policy(style))}">'

    parts = [
        f"<p class=note>pipemake report of {pages.e(str(site.root.name))}, run "
        f"{pages.e(summary['id'])}</p>",
        pages.run_page(folded),
        pages.history_page(site.runs(), lambda rid: "#top" if rid == summary["id"] else "#"),
    ]
    for stage, rule in site.stages():
        if rule in DATASET_RULES:
            view = site.dataset(stage)
            parts.append(pages.dataset_page(view, lambda s, r: _data_uri(site, s, r), edit=False))
    body = "<a id=top></a>" + "".join(parts)
    css = f"<style>{style}</style>"
    return pages.layout(f"report {summary['id']}", "", body, css, nav=False, head=csp)


def write_report(pipeline_file: Path, out: Path, run: str | None = None) -> Path:
    """Write the report of ``run`` to ``out`` (atomically); returns the path written."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"-o {out} is a folder: give a file name, e.g. {out / 'report.html'}")
    site = Site(pipeline_file)
    if not site.runs():
        raise UsageError("no runs recorded yet (run `pipemake build` first)")
    try:
        text = render_report(site, run)
    except NotFound as exc:
        raise UsageError(str(exc)) from None
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        # a path whose name is not UTF-8 (a Latin-1 project folder) shown as \xNN
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
        # a file to share (a CI artifact): readable as any file the user writes, not 0600
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise PipemakeError(f"cannot write the report {out}: {exc.strerror or exc}") from None
    return out
