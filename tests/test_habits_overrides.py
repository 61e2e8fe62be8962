"""Habits from Snakemake and DVC: `--set vars.x=…` for one build, and a params file whose
keys are tracked one by one (issue 14)."""

from __future__ import annotations

from conftest import TRACEBACK, Proj

PARAMS = r"""
name: p
vars: {src: data/a.txt, n: 1}
params: params.yaml
stages:
  - id: head
    type: shell
    config:
      cmd: "echo x >> runs/head.count; head -n {params.lines} {inputs.src} > {outputs.o}"
      inputs: {src: "{vars.src}"}
      outputs: {o: build/head.txt}
  - id: train
    type: shell
    config:
      cmd: "echo x >> runs/train.count; echo lr={params.train.lr} n={vars.n} > {outputs.o}"
      outputs: {o: build/train.txt}
"""
PARAMS_FILES = {
    "data/a.txt": "one\ntwo\nthree\n",
    "data/b.txt": "bee\n",
    "params.yaml": "lines: 2\ntrain:\n  lr: 0.1\n  epochs: 3\n",
}


def _dry(p: Proj, *args: str) -> dict[str, str]:
    out = p.cli("dry-run", *args).stdout
    return {line.split(":")[0]: line.split(": ", 1)[1] for line in out.splitlines()}


# --set ------------------------------------------------------------------------------------
def test_set_a_variable_for_one_build_is_part_of_the_key(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    p.cli("build")
    assert p.read("build/head.txt") == "one\ntwo\n"
    assert _dry(p, "--set", "vars.src=data/b.txt")["head"].startswith("run: ")
    assert _dry(p, "--set", "vars.src=data/b.txt")["train"] == "up to date"
    p.cli("build", "--set", "vars.src=data/b.txt")
    assert p.read("build/head.txt") == "bee\n"
    assert p.run_counts() == {"head": 2, "train": 1}
    p.cli("build", "-S", "vars.src=data/b.txt")  # the same override again: a no-op
    assert p.run_counts() == {"head": 2, "train": 1}
    # without it the file's value is back: restored from the store, not rerun
    assert _dry(p)["head"].startswith("restore")
    p.cli("build")
    assert p.read("build/head.txt") == "one\ntwo\n"
    assert p.run_counts() == {"head": 2, "train": 1}


def test_set_reads_the_value_as_yaml_like_the_file(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    p.cli("build")
    # n: 1 in the file; --set vars.n=1 is the same number, so nothing changes
    assert _dry(p, "--set", "vars.n=1")["train"] == "up to date"
    p.cli("build", "--set", "vars.n=2")
    assert p.read("build/train.txt") == "lr=0.1 n=2\n"
    p.edit("pipemake.yaml", "n: 1}", "n: 2}")  # editing the file gives the same key
    assert _dry(p)["train"] == "up to date"


def test_set_an_unknown_variable_names_the_known_ones(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    r = p.cli("build", "--set", "vars.scr=data/b.txt", code=2)
    assert "'scr'" in r.output and "did you mean 'src'" in r.output
    assert "vars: n, src" in r.output
    assert TRACEBACK not in r.output
    assert p.run_counts() == {}
    for bad in ("vars.src", "video=x", "stages.head=1", "vars.=x"):
        r = p.cli("dry-run", "--set", bad, code=2)
        assert "--set vars.NAME=VALUE" in r.output, r.output


def test_set_on_status_and_validate(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    p.cli("build")
    out = p.cli("status", "--set", "vars.src=data/b.txt").stdout
    assert "head: stale" in out and "train: up to date" in out
    p.cli("validate", "-S", "vars.src=data/b.txt")
    r = p.cli("validate", "-S", "vars.src=data/missing.txt", code=2)
    assert "data/missing.txt does not exist" in r.output


# params file ----------------------------------------------------------------------------
def test_params_keys_are_tracked_one_by_one(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    p.cli("build")
    assert p.read("build/train.txt") == "lr=0.1 n=1\n"
    p.edit("params.yaml", "epochs: 3", "epochs: 4")  # used by no stage
    assert _dry(p) == {"head": "up to date", "train": "up to date"}
    p.edit("params.yaml", "lr: 0.1", "lr: 0.2")
    rows = _dry(p)
    assert rows["head"] == "up to date"
    assert rows["train"] == "run: params.train.lr 0.1 → 0.2"
    p.cli("build")
    assert p.read("build/train.txt") == "lr=0.2 n=1\n"
    assert p.run_counts() == {"head": 1, "train": 2}


def test_set_a_params_key(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    p.cli("build")
    p.cli("build", "--set", "params.train.lr=0.5")
    assert p.read("build/train.txt") == "lr=0.5 n=1\n"
    assert p.run_counts() == {"head": 1, "train": 2}
    r = p.cli("build", "--set", "params.train.lrr=1", code=2)
    assert "params.yaml has no key 'lrr'" in r.output and "epochs, lr" in r.output


def test_a_whole_params_value_keeps_its_type(project) -> None:
    p = project(
        r"""
        name: p
        params: [params.yaml, local.yaml]
        stages:
          - id: s
            type: python
            config:
              function: "habits_params_steps:go"
              params: {sec: "{params.sec}", n: "{params.n}"}
              outputs: {o: build/o.json}
        """,
        {
            "params.yaml": "n: 1\nsec: {a: 1, b: [x, y]}\n",
            "local.yaml": "sec: {a: 2}\n",  # later files override key by key
            "habits_params_steps.py": "import json\n"
            "def go(ctx):\n"
            "    ctx.outputs['o'].write_text(json.dumps(ctx.params))\n",
        },
    )
    p.cli("build")
    import json

    assert json.loads(p.read("build/o.json")) == {"sec": {"a": 2, "b": ["x", "y"]}, "n": 1}


def test_params_mistakes_are_load_errors_with_file_line_stage(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    p.edit("pipemake.yaml", "{params.train.lr}", "{params.train.rate}")
    r = p.cli("validate", code=2)
    assert "pipemake.yaml:14: stage 'train': {params.train.rate}" in r.output
    assert "no key 'train.rate'" in r.output and "(params.train: epochs, lr)" in r.output
    assert TRACEBACK not in r.output
    p.edit("pipemake.yaml", "{params.train.rate}", "{params.train}")
    r = p.cli("validate", code=2)
    assert "is a mapping and cannot be used inside the string" in r.output
    p.edit("pipemake.yaml", "params: params.yaml", "params: nope.yaml")
    r = p.cli("validate", code=2)
    assert "pipemake.yaml:3: params file nope.yaml does not exist" in r.output


def test_a_broken_params_file_says_which_and_where(project) -> None:
    p = project(PARAMS, dict(PARAMS_FILES, **{"params.yaml": "lines: [\n"}))
    r = p.cli("dry-run", code=2)
    assert "params file params.yaml at line 2 is not valid YAML" in r.output
    p.write("params.yaml", "- 1\n")
    r = p.cli("dry-run", code=2)
    assert "must be a mapping" in r.output


def test_a_stage_named_params_clashes_only_with_a_params_file(project) -> None:
    text = r"""
        name: p
        stages:
          - id: params
            type: shell
            config: {cmd: "echo 1 > {outputs.o}", outputs: {o: build/p.txt}}
          - id: use
            type: shell
            config:
              cmd: "cat {inputs.i} > {outputs.o}"
              inputs: {i: "{params.o}"}
              outputs: {o: build/u.txt}
        """
    p = project(text, {"params.yaml": "a: 1\n"})
    p.cli("build")  # without a params file, {params.o} is the stage's output
    assert p.read("build/u.txt") == "1\n"
    p.edit("pipemake.yaml", "name: p", "name: p\nparams: params.yaml")
    r = p.cli("validate", code=2)
    assert "may not be called 'params'" in r.output


def test_a_params_edit_defeats_the_noop_snapshot(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    p.sub("build")
    p.sub("build")  # no-op: may answer from its snapshot next time
    p.edit("params.yaml", "lines: 2", "lines: 1")
    p.sub("build")
    assert p.read("build/head.txt") == "one\n"
    assert p.run_counts() == {"head": 2, "train": 1}


def test_set_before_the_command_and_the_last_one_wins(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    p.cli("--set", "vars.src=data/a.txt", "build", "-S", "vars.src=data/b.txt")
    assert p.read("build/head.txt") == "bee\n"


def test_set_and_the_noop_snapshot(project) -> None:
    p = project(PARAMS, PARAMS_FILES)
    p.sub("build", "--set", "vars.src=data/b.txt")
    p.sub("build", "--set", "vars.src=data/b.txt")  # a no-op, which may write a snapshot
    p.sub("build", "--set", "vars.src=data/b.txt")  # answered from it, if so
    assert p.read("build/head.txt") == "bee\n"
    p.sub("build")  # another command line: the file's value (never built with it: runs)
    assert p.read("build/head.txt") == "one\ntwo\n"
    assert p.run_counts() == {"head": 2, "train": 1}
    p.sub("build", "--set", "vars.src=data/b.txt")  # back: restored from the store
    assert p.read("build/head.txt") == "bee\n"
    assert p.run_counts() == {"head": 2, "train": 1}
    p.write("data/b.txt", "wasp\n")
    p.sub("build", "--set", "vars.src=data/b.txt")
    assert p.read("build/head.txt") == "wasp\n"
    assert p.run_counts() == {"head": 3, "train": 1}
