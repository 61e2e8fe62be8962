"""The ``training_data_prep`` rule: turn clustered cut-outs into a captioned training set.

Reads cluster directories (``input_dirs``, e.g. ``{cluster.cluster_dirs}``; the original
pipeline system's ``character_dirs`` and ``cluster_dirs`` are the same key) or a whole
clustering output (``input_dir``, also ``character_dir``), selects clusters, fits every
image to the training resolution on a background, drops near-duplicates, splits
train/validation deterministically, writes captions and lays the set out for kohya
sd-scripts or the Hugging Face ``imagefolder`` loader, with ``manifest.jsonl`` and
``stats.json``. With ``curation`` (a ``curation.yaml``, see docs/curation.md) a person's
corrections apply: named clusters, moved and rejected cut-outs, captions, matched by each
cut-out's content id so they survive a rebuild of the clustering.
See docs/training_data_prep.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pipemake import curation as cur_mod
from pipemake.rule import Context, Input, Output, Param, Ports, Rule, RuleError

from ._prep_images import HASH_BITS
from ._ranges import Range, in_order, range_problems

__all__ = ["RANGES", "TrainingDataPrepRule", "input_problems", "unknown_clusters"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SKIP_DIRS = ("contact_sheets", "noise")  # parts of a clustering output that are not characters
CAPTION_FIELDS = ("trigger", "name", "cluster")
#: what an empty list of cluster folders (a clustering that found no character) means
NO_CLUSTERS = (
    "no clusters: the list of cluster folders is empty, so the clustering produced 0 "
    "character folders (all cut-outs in noise?). Lower its min_cluster_size (or "
    "min_samples), or set algorithm: kmeans with n_clusters, and build again; its "
    "clusters.json and overview.png show where the cut-outs went"
)

#: the valid values of the numeric params, checked before anything runs
RANGES: Mapping[str, Range] = {
    "min_size": Range(1, None, "clusters with fewer images are skipped"),
    "resolution": Range(8, 8192, "side of the training images in pixels", step=8),
    "dedup_threshold": Range(0, HASH_BITS, f"differing bits of {HASH_BITS} that make a duplicate"),
    "val_fraction": Range(
        0, 1, "the share of each character held out for validation", high_open=True
    ),
    "repeats": Range(1, None, "kohya: how often each training image is seen per epoch"),
}


class TrainingDataPrepRule(Rule):
    """Prepare clustered character cut-outs as a captioned training dataset."""

    name = "training_data_prep"
    #: its params are checked at validate even while input_dir is an upstream's value
    checks_pending = True
    version = "2"
    #: the whole set is one task: dedup and the split look at every image at once
    default_foreach: ClassVar[str | None] = None
    #: every cluster folder is read together (captions, dedup, the split): never per item
    foreach_inputs: ClassVar[Sequence[str]] = ()
    aliases: ClassVar[Mapping[str, str]] = {
        "character_dirs": "input_dirs",
        "cluster_dirs": "input_dirs",
        "character_dir": "input_dir",
    }
    requires: ClassVar[Mapping[str, str]] = {"numpy": "pipemake[prep]", "PIL": "pipemake[prep]"}
    inputs: ClassVar[Mapping[str, Input]] = {
        "input_dirs": Input(kind="dir", required=False, many=True, help="cluster directories"),
        "input_dir": Input(kind="dir", required=False, help="a whole clustering output"),
        "curation": Input(
            kind="file", required=False, help="curation.yaml: names, moves, rejects, captions"
        ),
    }
    outputs: ClassVar[Mapping[str, Output]] = {
        "output_dir": Output(kind="dir", help="the training set, manifest.jsonl, stats.json"),
    }
    params: ClassVar[Mapping[str, Param]] = {
        "clusters": Param(("str", "list"), "all", help='"all" or a list of cluster names'),
        "min_size": Param("int", 1, help="skip clusters with fewer images"),
        "names": Param("dict", {}, help="cluster → character name"),
        "resolution": Param("int", 512, help="side in pixels, a multiple of 8"),
        "fit": Param("str", "pad", ("pad", "crop", "stretch"), "how images meet the size"),
        "buckets": Param("bool", False, help="aspect-ratio buckets of ~resolution² pixels"),
        "crop_to_content": Param("bool", True, help="crop to the opaque part first"),
        "background": Param("str", "white", help="white, black, gray, #rrggbb or transparent"),
        "dedup": Param("bool", True, help="drop near-duplicates (perceptual hash)"),
        "dedup_threshold": Param("int", 12, help="max differing bits (of 256) of a duplicate"),
        "val_fraction": Param("float", 0.1, help="share of each character for validation"),
        "seed": Param("int", 0, help="seed of the train/validation split"),
        "caption": Param("str", "{trigger}, {name}", help="caption template"),
        "trigger": Param("str", "", help="trigger word for the caption"),
        "layout": Param("str", "kohya", ("kohya", "imagefolder")),
        "repeats": Param("int", 10, help="kohya: repeats in the folder name"),
    }
    values: ClassVar[Sequence[str]] = ("characters", "n_train", "n_validation")

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        """Everything knowable before running: inputs, every param's range, names, clusters,
        background and caption template (again at build time for a value an upstream stage
        computes, such as ``{cluster.cluster_dirs}``)."""
        from pipemake.rules._prep_images import parse_background

        p = ports.params
        problems = input_problems(ports.inputs)
        problems += range_problems(p, self.params, RANGES)
        clusters = p["clusters"]
        if isinstance(clusters, str) and clusters != "all":
            problems.append(
                (
                    "clusters",
                    f"param 'clusters' is {clusters!r} but must be \"all\" or a list of cluster "
                    "names: write clusters: all, or e.g. [cluster_000, cluster_002]",
                )
            )
        elif isinstance(clusters, list) and not clusters:
            problems.append(("clusters", 'empty cluster selection: list clusters or use "all"'))
        elif isinstance(clusters, list) and not all(isinstance(c, str) for c in clusters):
            problems.append(
                (
                    "clusters",
                    f"param 'clusters' is {clusters!r} but must list cluster folder names: "
                    "write e.g. [cluster_000, cluster_002], or all",
                )
            )
        for key, value in p["names"].items():
            if not isinstance(value, str) or not value.strip():
                problems.append(
                    (
                        "names",
                        f"param 'names' maps {key!r} to {value!r} but must map each cluster to "
                        f"a non-empty name: write e.g. {key}: alice, or leave the cluster out",
                    )
                )
        dirs = ports.inputs.get("input_dirs")
        if (
            isinstance(dirs, list)
            and dirs
            and all(isinstance(d, str) and "{" not in d for d in dirs)
        ):
            problems += unknown_clusters(p, {Path(d).name for d in dirs})  # else: at build time
        try:
            parse_background(p["background"])
        except ValueError as exc:
            problems.append(("background", str(exc)))
        problems += _check_caption(p["caption"])
        return in_order(problems, {**self.inputs, **self.params})

    def run(self, ctx: Context) -> dict[str, Any]:
        """Select, process, dedup, split, caption and lay out the training set."""
        from pipemake.rules._prep_images import parse_background

        p = ctx.params
        found = _discover(ctx)
        selected, skipped = _select(found, p, skip_noise=not ctx.inputs.get("input_dirs"))
        out = Path(ctx.outputs["output_dir"])
        tmp = out / ".prep-tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        background = parse_background(p["background"])
        records: list[dict] = []
        by_char, dropped = _place(ctx, selected, found)
        total, done = sum(len(v) for v in by_char.values()), 0
        for name, entries in sorted(by_char.items()):
            kept, lost = _process(ctx, name, entries, tmp, background, found)
            records += kept
            dropped += lost
            done += len(entries)
            ctx.progress(done, total)
        if not records and dropped:
            ctx.log.warning("%s", _empty_set_warning(dropped))
        _assign_split(records, p)
        _layout(records, out, tmp, p)
        shutil.rmtree(tmp)
        return _write_reports(out, records, dropped, skipped, p)


def _empty_set_warning(dropped: list[dict[str, Any]]) -> str:
    """The warning for a training set every image was dropped from, with the counts by
    reason (a folder of fully transparent cut-outs gives an empty set, not a failure)."""
    reasons: dict[str, int] = {}
    for d in dropped:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
    return (
        f"the training set is empty: all {len(dropped)} image(s) were dropped ({why}); "
        "check the segmentation's output (cut-outs with no opaque pixel) and stats.json"
    )


def _check_caption(template: str) -> list[tuple[str, str]]:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return [("caption", f"caption template {template!r}: {exc}")]
    bad = [f for f in fields if f not in CAPTION_FIELDS]
    if bad:
        return [
            (
                "caption",
                f"caption template uses unknown field(s) {bad}; known: "
                f"{', '.join('{' + f + '}' for f in CAPTION_FIELDS)} (in pipemake.yaml write "
                "them with doubled braces: {{trigger}}, {{name}})",
            )
        ]
    return []


def input_problems(inputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Exactly one of ``input_dirs`` and ``input_dir``, and not an empty list of cluster
    folders (a clustering that found no character): before running where the inputs are
    written in the pipeline, when the stage runs where an upstream stage computes them."""
    dirs, whole = inputs.get("input_dirs"), inputs.get("input_dir")
    if dirs == [] and not whole:
        return [("input_dirs", NO_CLUSTERS)]
    if bool(dirs) == bool(whole):
        return [
            (
                "input_dirs",
                "give exactly one of input_dirs (cluster folders, "
                'e.g. "{cluster.cluster_dirs}") or input_dir (a clustering output)',
            )
        ]
    return []


def unknown_clusters(p: Mapping[str, Any], known: set[str]) -> list[tuple[str, str]]:
    """``(key, problem)`` for each cluster that ``names`` or ``clusters`` names and that is
    not among ``known`` (the input folders' names): before anything runs for literal
    ``input_dirs``, else once the folders are known."""
    problems = [("names", _missing(key, known, "names")) for key in p["names"] if key not in known]
    if isinstance(p["clusters"], list):
        problems += [
            ("clusters", _missing(key, known, "clusters"))
            for key in p["clusters"]
            if key not in known
        ]
    return problems


def _missing(key: str, known: set[str], what: str) -> str:
    return f"{what} names cluster {key!r}, which is not an input (have: {', '.join(sorted(known))})"


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _discover(ctx: Context) -> dict[str, Path]:
    """Cluster name → folder, from ``input_dirs`` or the subfolders of ``input_dir``."""
    problems = input_problems(ctx.inputs)
    if problems:
        raise RuleError(problems[0][1])
    dirs = ctx.inputs.get("input_dirs")
    if dirs:
        found: dict[str, Path] = {}
        for d in [Path(x) for x in dirs]:
            if d.name in found:
                raise RuleError(
                    f"two input_dirs are named {d.name!r} ({found[d.name]}, {d}): "
                    "cluster folders must have distinct names"
                )
            found[d.name] = d
        return found
    root = Path(ctx.inputs["input_dir"])
    subs = {
        d.name: d
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and d.name != "contact_sheets"
    }
    if not subs and _images(root):
        return {root.name: root}  # one folder of one character
    return subs


def _select(
    found: dict[str, Path], p: Mapping[str, Any], skip_noise: bool
) -> tuple[dict[str, list[Path]], list]:
    """The chosen clusters' image files, and (cluster, why) for those left out; ``noise/``
    of a clustering output only when listed in ``clusters``."""
    unknown = unknown_clusters(p, set(found))
    if unknown:
        raise RuleError("; ".join(msg for _, msg in unknown))
    wanted = p["clusters"]
    selected, skipped = {}, []
    for name in sorted(found):
        if skip_noise and wanted == "all" and name in SKIP_DIRS:
            skipped.append({"cluster": name, "reason": "noise is only used when listed"})
            continue
        if isinstance(wanted, list) and name not in wanted:
            skipped.append({"cluster": name, "reason": "not selected"})
            continue
        files = _images(found[name])
        if len(files) < p["min_size"]:
            skipped.append({"cluster": name, "reason": f"{len(files)} images < min_size"})
            continue
        selected[name] = files
    if not selected:
        raise RuleError(
            f"empty cluster selection: no cluster left of {sorted(found)} "
            f"(clusters: {wanted!r}, min_size: {p['min_size']}); lower min_size or "
            "check the input"
        )
    return selected, skipped


def _load_curation(ctx: Context) -> cur_mod.Curation | None:
    path = ctx.inputs.get("curation")
    if not path:
        return None
    try:
        return cur_mod.load(path)
    except cur_mod.CurationError as exc:
        raise RuleError(str(exc)) from None


def _place(
    ctx: Context, selected: Mapping[str, list[Path]], roots: Mapping[str, Path]
) -> tuple[dict[str, list[tuple[str, Path, str, Any]]], list[dict]]:
    """Character name → its (cluster, file, content id, placement) entries, and the
    rejected cut-outs: the pipeline's ``names`` and the curation file's corrections applied."""
    cur = _load_curation(ctx) or cur_mod.Curation()
    ids = {(c, f): cur_mod.content_id(f) for c, files in selected.items() for f in files}
    members: dict[str, str] = {}
    for (cluster, _), cid in ids.items():
        members.setdefault(cid, cluster)
    named = cur_mod.cluster_names(members, cur)
    by_char: dict[str, list[tuple[str, Path, str, Any]]] = {}
    rejected = []
    for (cluster, path), cid in ids.items():
        where = cur_mod.place(cid, cluster, cur, named, ctx.params["names"])
        if where.character is None:
            source = f"{cluster}/{path.relative_to(roots[cluster]).as_posix()}"
            rejected.append({"source": source, "reason": "rejected (curation)", "id": cid})
            continue
        by_char.setdefault(where.character, []).append((cluster, path, cid, where))
    moved = sum(1 for entries in by_char.values() for *_, w in entries if w.moved)
    if ctx.inputs.get("curation"):
        ctx.log.info(
            "curation: %d cluster(s) named, %d cut-out(s) moved, %d rejected, %d unreviewed",
            len(named),
            moved,
            len(rejected),
            sum(1 for cid in ids.values() if not cur.covers(cid)),
        )
    return by_char, rejected


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9 _.-]+", "_", name).strip(" .") or "_"


def _process(
    ctx: Context, name: str, entries: list, tmp: Path, background, roots: Mapping[str, Path]
) -> tuple[list, list]:
    """Fit every image of one character, drop empty ones and near-duplicates."""
    from PIL import Image, UnidentifiedImageError

    from pipemake.rules._image_modes import as_rgba
    from pipemake.rules._prep_images import bucket_sizes, dedup, phash, prepare_image

    p = ctx.params
    buckets = bucket_sizes(p["resolution"]) if p["buckets"] else None
    records, dropped = [], []
    for cluster, path, cid, where in entries:
        source = f"{cluster}/{path.relative_to(roots[cluster]).as_posix()}"
        try:
            with Image.open(path) as img:
                rgba = as_rgba(img)
        except (OSError, UnidentifiedImageError) as exc:
            raise RuleError(f"cannot read image {path}: {exc}; remove or replace it") from exc
        out = prepare_image(
            rgba, p["resolution"], p["fit"], buckets, background, p["crop_to_content"]
        )
        if out is None:
            dropped.append({"source": source, "reason": "empty (fully transparent)"})
            continue
        stem = source.rsplit(".", 1)[0].replace("/", "__")
        staged = tmp / f"{len(records):06d}_{_safe(name)}.png"
        out.save(staged)
        records.append(
            {
                "source": source,
                "cluster": cluster,
                "character": name,
                "id": cid,
                "reviewed": where.reviewed,
                "caption_override": where.caption,
                "stem": stem,
                "staged": staged,
                "phash": phash(out),
                "size": out.size,
            }
        )
    if p["dedup"]:
        verdict = dedup([r["phash"] for r in records], p["dedup_threshold"])
        kept = []
        for rec, dup in zip(records, verdict, strict=True):
            if dup is None:
                kept.append(rec)
            else:
                rec["staged"].unlink()
                dropped.append(
                    {
                        "source": rec["source"],
                        "reason": "near duplicate",
                        "duplicate_of": records[dup]["source"],
                    }
                )
        records = kept
    return records, dropped


def _assign_split(records: list[dict], p: Mapping[str, Any]) -> None:
    from pipemake.rules._prep_images import split_validation

    by_char: dict[str, list[dict]] = {}
    for rec in records:
        by_char.setdefault(rec["character"], []).append(rec)
    for recs in by_char.values():
        val = split_validation([r["source"] for r in recs], p["val_fraction"], p["seed"])
        for rec in recs:
            rec["split"] = "validation" if rec["source"] in val else "train"


def _caption(p: Mapping[str, Any], rec: Mapping[str, Any]) -> str:
    """The template's caption; a curated caption replaces it (``+ text`` appends to it)."""
    override = rec.get("caption_override")
    if override and not override.startswith("+"):
        return override
    text = p["caption"].format(trigger=p["trigger"], name=rec["character"], cluster=rec["cluster"])
    if override:
        text = f"{text}, {override[1:].strip()}"
    parts = [part.strip() for part in text.split(",")]
    return ", ".join(part for part in parts if part)  # an empty trigger leaves no ", " behind


def _layout(records: list[dict], out: Path, tmp: Path, p: Mapping[str, Any]) -> None:
    """Move the staged images into the layout and write captions / metadata."""
    metadata: dict[str, list[dict]] = {}
    for rec in records:
        char_dir = _safe(rec["character"])
        if p["layout"] == "kohya":
            repeats = p["repeats"] if rec["split"] == "train" else 1
            folder = f"{rec['split']}/{repeats}_{char_dir}"
        else:
            folder = f"{rec['split']}/{char_dir}"
        rec["caption"] = _caption(p, rec)
        rel = f"{folder}/{rec['stem']}.png"
        (out / folder).mkdir(parents=True, exist_ok=True)
        os.replace(rec.pop("staged"), out / rel)
        rec["file"] = rel
        if p["layout"] == "kohya":
            (out / folder / f"{rec['stem']}.txt").write_text(rec["caption"] + "\n")
        else:
            metadata.setdefault(rec["split"], []).append(
                {"file_name": rel.split("/", 1)[1], "text": rec["caption"]}
            )
    for split, rows in metadata.items():
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / split / "metadata.jsonl").write_text(lines)


def _write_reports(out: Path, records: list, dropped: list, skipped: list, p) -> dict[str, Any]:
    """Write manifest.jsonl and stats.json; return the computed values."""
    records.sort(key=lambda r: r["file"])
    with open(out / "manifest.jsonl", "w") as fh:
        for r in records:
            keys = ("file", "caption", "character", "cluster", "split", "source", "id", "reviewed")
            row = {k: r[k] for k in keys}
            row.update(width=r["size"][0], height=r["size"][1], phash=f"{r['phash']:064x}")
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    chars: dict[str, dict[str, Any]] = {}
    for r in records:
        c = chars.setdefault(r["character"], {"train": 0, "validation": 0, "clusters": []})
        c[r["split"]] += 1
        if r["cluster"] not in c["clusters"]:
            c["clusters"].append(r["cluster"])
    reasons: dict[str, int] = {}
    for d in dropped:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    splits = {s: sum(1 for r in records if r["split"] == s) for s in ("train", "validation")}
    stats = {
        "layout": p["layout"],
        "resolution": p["resolution"],
        "buckets": p["buckets"],
        "images": len(records),
        "splits": splits,
        "characters": chars,
        "dropped": reasons,
        "dropped_files": dropped,
        "skipped_clusters": skipped,
        "unreviewed": sum(1 for r in records if not r["reviewed"]),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n")
    return {
        "characters": sorted(chars),
        "n_train": splits["train"],
        "n_validation": splits["validation"],
    }
