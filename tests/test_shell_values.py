"""Computed values reaching a ``shell`` stage are data, never code (issue 13, findings 4 and
8; issue 12, goal 7): in ``cmd`` a value is quoted for where it stands, in ``env`` it is the
text itself, it resolves whether or not the command names an output, and a reference is
never written out as literal text. Values come from a ``python`` stage (its return value)
or from the store (tampered), and a ``frame_extraction`` stage's ``scenes``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj

#: a value that is a shell program in every way a value can be one
NASTY = "x; touch PWNED && echo $(touch PWNED2) `touch PWNED3` \"'{outputs.o}'\" \\ *"

STEPS = """
import json, pathlib
def up(ctx):
    return json.loads(pathlib.Path("data/values.json").read_text())
"""


def _pipeline(*shell_stages: str) -> str:
    stages = "".join(
        f"""
  - id: s{i}
    type: shell
    config:
{stage}"""
        for i, stage in enumerate(shell_stages)
    )
    return f"""
name: values
stages:
  - id: up
    type: python
    config:
      function: "steps:up"
      inputs: {{v: data/values.json}}
{stages}"""


def _project(project, values: dict, *shell_stages: str, name: str = "ws") -> Proj:
    return project(
        _pipeline(*shell_stages),
        {"steps.py": STEPS, "data/values.json": json.dumps(values)},
        name=name,
    )


def _no_pwned(p: Proj) -> None:
    assert not list(p.root.rglob("PWNED*")), "a value ran as shell code"


def test_a_value_in_cmd_is_its_text_wherever_it_stands(project) -> None:
    """Outside quotes, inside double and single quotes, after other words, with and without
    an output in the same command: the command writes exactly the value."""
    p = _project(
        project,
        {"v": NASTY},
        '      cmd: "echo {up.v} > {outputs.o}"\n      outputs: {o: build/plain.txt}\n',
        '      cmd: "echo \\"{up.v}\\" > {outputs.o}"\n      outputs: {o: build/double.txt}\n',
        "      cmd: \"echo '{up.v}' > {outputs.o}\"\n      outputs: {o: build/single.txt}\n",
        '      cmd: "echo v={up.v}-{up.v} > {outputs.o}"\n      outputs: {o: build/glued.txt}\n',
        '      cmd: "echo \\"$(echo {up.v})\\" > {outputs.o}"\n      outputs: {o: build/sub.txt}\n',
        # no output named in cmd (finding 8's other half: "unresolved reference")
        '      cmd: "echo scenes={up.v} > runs/no-output.txt"\n',
        # after an arithmetic expansion inside $( ) inside double quotes
        '      cmd: "echo \\"$(echo $((1+2)) {up.v})\\" > {outputs.o}"\n'
        "      outputs: {o: build/arith.txt}\n",
    )
    p.cli("build")
    _no_pwned(p)
    for name in ("plain", "double", "single", "sub"):
        assert p.read(f"build/{name}.txt") == NASTY + "\n", name
    assert p.read("build/glued.txt") == f"v={NASTY}-{NASTY}\n"
    assert p.read("runs/no-output.txt") == f"scenes={NASTY}\n"
    assert p.read("build/arith.txt") == f"3 {NASTY}\n"


def test_an_arithmetic_expression_takes_a_whole_number_only(project) -> None:
    """Inside $((...)) quotes do not quote, and bash evaluates ``a[$(...)]`` in the text."""
    p = _project(
        project,
        {"n": 41},
        '      cmd: "echo $(( {up.n} + 1 )) > {outputs.o}"\n      outputs: {o: build/n.txt}\n',
    )
    p.cli("build")
    assert p.read("build/n.txt") == "42\n"
    p.write("data/values.json", json.dumps({"n": "a[$(touch PWNED)]"}))
    r = p.cli("build", code=1)
    _no_pwned(p)
    assert "arithmetic expression" in r.output and "whole number" in r.output


def test_a_value_with_a_line_break_in_a_comment_stays_in_the_comment(project) -> None:
    p = _project(
        project,
        {"v": "a\ntouch PWNED #"},
        '      cmd: "echo ok > {outputs.o} # was {up.v}\\necho {up.v} >> {outputs.o}"\n'
        "      outputs: {o: build/c.txt}\n",
    )
    p.cli("build")
    _no_pwned(p)
    assert p.read("build/c.txt") == "ok\na\ntouch PWNED #\n"


def test_a_list_is_its_items_as_separate_words_and_other_values_their_json(project) -> None:
    p = _project(
        project,
        {"l": ["a b", "$(touch PWNED)", 3, True, None], "n": 2.5, "e": [], "f": False},
        "      cmd: \"printf '<%s>' {up.l} {up.n} {up.f} {up.e} > {outputs.o}\"\n"
        "      outputs: {o: build/l.txt}\n",
        '      cmd: "printf \'<%s>\' \\"{up.l}\\" > {outputs.o}"\n'
        "      outputs: {o: build/ldq.txt}\n",
    )
    p.cli("build")
    _no_pwned(p)
    assert p.read("build/l.txt") == "<a b><$(touch PWNED)><3><true><null><2.5><false>"
    assert p.read("build/ldq.txt") == "<a b $(touch PWNED) 3 true null>"


def test_a_value_in_env_is_the_text_itself_and_json_unless_a_string(project) -> None:
    values = {"v": NASTY, "l": ["a b", "c"], "m": {"k": [1, "{x}"]}, "n": 7}
    p = _project(
        project,
        values,
        '      cmd: "printf \'%s\\\\n\' \\"$V\\" \\"$L\\" \\"$M\\" \\"$N\\" > {outputs.o}"\n'
        '      env: {V: "{up.v}", L: "{up.l}", M: "{up.m}", N: "n={up.n}"}\n'
        "      outputs: {o: build/env.txt}\n",
    )
    p.cli("build")
    _no_pwned(p)
    v, lst, m, n = p.read("build/env.txt").splitlines()
    assert v == NASTY
    assert json.loads(lst) == ["a b", "c"]
    assert json.loads(m) == {"k": [1, "{x}"]}
    assert n == "n=7"


def test_values_in_a_foreach_stage_and_item_names_are_quoted_too(project) -> None:
    """The per-item shell pastes cmd and env into one shared shell: quoting holds there."""
    p = project(
        """
name: values
stages:
  - id: up
    type: python
    config:
      function: "steps:up"
      inputs: {v: data/values.json}
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "printf '%s|%s|%s\\n' {up.v} \\"{item.name}\\" \\"$V\\" > {outputs.o}/{item.stem}.txt"
      inputs: {src: items}
      outputs: {o: build/each}
      env: {V: "{up.v}"}
""",
        {
            "steps.py": STEPS,
            "data/values.json": json.dumps({"v": NASTY}),
            "items/a.txt": "a",
            "items/$(touch PWNED4)'b.txt": "b",
        },
    )
    p.cli("build")
    _no_pwned(p)
    assert p.read("build/each/a.txt") == f"{NASTY}|a.txt|{NASTY}\n"
    assert p.read("build/each/$(touch PWNED4)'b.txt") == (
        f"{NASTY}|$(touch PWNED4)'b.txt|{NASTY}\n"
    )


def test_a_value_tampered_in_the_store_never_runs(project, tmp_path: Path) -> None:
    """Finding 4: a shared cache's entry for ``up`` says its value is a shell program; a
    fresh checkout restores ``up`` from it and runs the downstream stage with that value."""
    stage = '      cmd: "echo {up.v} > {outputs.o}"\n      outputs: {o: build/o.txt}\n'
    env_stage = (  # the value in both env and cmd
        '      cmd: "printf \'%s|%s\' \\"$V\\" {up.v} > {outputs.o}"\n'
        '      env: {V: "{up.v}"}\n      outputs: {o: build/e.txt}\n'
    )
    cache = tmp_path / "cache"
    first = _project(project, {"v": "safe"}, stage, env_stage, name="first")
    first.cli("build", "--cache-dir", str(cache))
    assert first.read("build/o.txt") == "safe\n"
    victim = tmp_path / "PWNED"
    evil = f"x; touch {victim}; echo $(touch {victim}2)"
    db = sqlite3.connect(cache / "actions.db")
    with db:
        rows = db.execute("SELECT key, entry FROM actions").fetchall()
        tampered = 0
        for key, text in rows:
            entry = json.loads(text)
            if entry.get("values", {}).get("v") == "safe":
                entry["values"]["v"] = evil
                db.execute("UPDATE actions SET entry = ? WHERE key = ?", (json.dumps(entry), key))
                tampered += 1
    db.close()
    assert tampered == 1
    fresh = _project(project, {"v": "safe"}, stage, env_stage, name="fresh")
    r = fresh.cli("build", "--cache-dir", str(cache), code=None)
    assert TRACEBACK not in r.output
    assert not victim.exists() and not Path(f"{victim}2").exists()
    _no_pwned(fresh)
    assert r.exit_code == 0, r.output
    # the entry taken (the value arrives as its text) or refused (``up`` ran again)
    value = fresh.read("build/o.txt")[:-1]
    assert value in (evil, "safe")
    assert fresh.read("build/e.txt") == f"{value}|{value}"


def test_a_mapping_in_cmd_fails_the_stage_naming_the_reference_and_env(project) -> None:
    p = _project(
        project,
        {"m": {"a": 1}},
        '      cmd: "echo {up.m} > {outputs.o}"\n      outputs: {o: build/m.txt}\n',
    )
    r = p.cli("build", code=1)
    assert TRACEBACK not in r.output
    assert "{up.m} is a mapping" in r.output and "env:" in r.output
    assert not p.exists("build/m.txt")


def test_a_nul_in_a_value_fails_the_stage_with_a_message(project) -> None:
    p = _project(
        project,
        {"v": "a\u0000b"},
        '      cmd: "echo {up.v} > {outputs.o}"\n      outputs: {o: build/n.txt}\n',
        '      cmd: "printf %s \\"$V\\" > {outputs.o}"\n'
        '      env: {V: "{up.v}"}\n      outputs: {o: build/e.txt}\n',
    )
    r = p.cli("build", "-k", code=1)
    assert TRACEBACK not in r.output
    assert r.output.count("NUL character") >= 2


@pytest.mark.parametrize(
    ("cmd", "says"),
    [
        ("echo `echo {up.v}`", "backquotes"),
        ("echo \\\\{up.v}", "backslash"),
        ("echo ${up.v}", "follows a $"),
        ("echo $'{up.v}'", "$'...'"),
        ("echo $(case a in a) echo {up.v};; esac)", "case"),
        ("cat {inputs.x} `echo {outputs.o}`", "backquotes"),
    ],
)
def test_places_no_quoting_can_make_safe_are_refused_before_anything_runs(
    project, cmd: str, says: str
) -> None:
    p = _project(
        project,
        {"v": "v"},
        f'      cmd: "{cmd}"\n      inputs: {{x: data/values.json}}\n'
        "      outputs: {o: build/o.txt}\n",
    )
    r = p.cli("validate", code=2)
    assert TRACEBACK not in r.output
    assert "pipemake.yaml:" in r.output and "stage 's0'" in r.output
    assert says in r.output
    assert not p.exists(".pipemake/store")  # nothing ran


def test_a_here_document_takes_plain_words_and_refuses_anything_else(project) -> None:
    heredoc = '      cmd: "cat > {outputs.o} <<EOF\\nv={up.v}\\nEOF"\n'
    p = _project(project, {"v": "plain-word_1.5"}, heredoc + "      outputs: {o: build/h.txt}\n")
    p.cli("build")
    assert p.read("build/h.txt") == "v=plain-word_1.5\n"
    p.write("data/values.json", json.dumps({"v": "$(touch PWNED)\nEOF\ntouch PWNED"}))
    r = p.cli("build", code=1)
    _no_pwned(p)
    assert "here-document" in r.output and "env:" in r.output


def test_a_python_param_holding_a_value_inside_a_string_resolves(project) -> None:
    """A reference to a computed value inside a longer string of any stage resolves; it
    never reaches the stage as the literal text ``{up.v}``."""
    steps = STEPS + ("def down(ctx):\n    (ctx.outputs['o']).write_text(ctx.params['msg'])\n")
    p = project(
        """
name: values
stages:
  - id: up
    type: python
    config:
      function: "steps:up"
      inputs: {v: data/values.json}
  - id: down
    type: python
    config:
      function: "steps:down"
      outputs: {o: build/msg.txt}
      params: {msg: "n={up.v}!"}
""",
        {"steps.py": steps, "data/values.json": json.dumps({"v": "three"})},
    )
    p.cli("build")
    assert p.read("build/msg.txt") == "n=three!"


def test_a_value_is_quoted_for_where_it_stands_once_variables_are_written(project) -> None:
    """``{vars.q}`` is the pipeline's own text (here a quote): the value after it is quoted
    for the place the variable leaves it in."""
    p = project(
        _pipeline(
            '      cmd: "echo {vars.q}{up.v}{vars.q} > {outputs.o}"\n'
            "      outputs: {o: build/q.txt}\n"
        ).replace("name: values\n", 'name: values\nvars: {q: "\'"}\n'),
        {"steps.py": STEPS, "data/values.json": json.dumps({"v": NASTY})},
    )
    p.cli("build")
    _no_pwned(p)
    assert p.read("build/q.txt") == NASTY + "\n"


def test_an_input_path_built_from_a_value_resolves(project) -> None:
    p = _project(
        project,
        {"d": "data"},
        '      cmd: "cat {inputs.f} > {outputs.o}"\n'
        '      inputs: {f: "{up.d}/sub/f.txt"}\n      outputs: {o: build/f.txt}\n',
    )
    p.write("data/sub/f.txt", "found\n")
    p.cli("validate")
    p.cli("build")
    assert p.read("build/f.txt") == "found\n"


def test_keys_of_stages_without_values_are_unchanged_and_a_value_change_reruns(
    project,
) -> None:
    p = _project(
        project,
        {"v": "one"},
        '      cmd: "echo {up.v} > {outputs.o}"\n      outputs: {o: build/o.txt}\n',
    )
    p.cli("build")
    assert p.read("build/o.txt") == "one\n"
    assert "0 ran" in p.cli("build").output
    p.write("data/values.json", json.dumps({"v": "two words"}))
    p.cli("build")
    assert p.read("build/o.txt") == "two words\n"


def test_literal_braces_in_a_command_without_paths_stay_literal(project) -> None:
    """``{{`` in a command that names no input or output was read as a reference."""
    p = _project(
        project,
        {"v": "{outputs.o}"},
        "      cmd: \"echo '{{a}}' {up.v} > runs/braces.txt\"\n",
        '      cmd: "echo \\"$X\\" > runs/env.txt"\n      env: {X: "{{b}} {up.v}"}\n',
    )
    p.cli("build")
    assert p.read("runs/braces.txt") == "{a} {outputs.o}\n"
    assert p.read("runs/env.txt") == "{b} {outputs.o}\n"


@pytest.mark.slow
def test_frame_extraction_scenes_resolve_in_cmd(project) -> None:
    """Goal 7's own case: ``{x.scenes}`` with and without ``{outputs.o}`` in the command."""
    pytest.importorskip("av")
    from _video_fixtures import write_video

    p = project(
        """
name: values
stages:
  - id: x
    type: frame_extraction
    config: {input_video: data/clip.mp4, output_dir: build/frames, mode: scene}
  - id: a
    type: shell
    config:
      cmd: "echo {x.scenes} > {outputs.o}"
      outputs: {o: build/scenes.txt}
  - id: b
    type: shell
    config:
      cmd: "echo scenes={x.scenes} > runs/b.txt"
"""
    )
    write_video(p.path("data/clip.mp4"), shot_lengths=[12, 12], fps=12)
    p.cli("build")
    scenes = p.read("build/scenes.txt").strip()
    assert scenes.isdigit() and int(scenes) >= 1  # the number, not "{x.scenes}"
    assert p.read("runs/b.txt") == f"scenes={scenes}\n"


@pytest.mark.parametrize(
    ("template", "expect"),
    [
        ("printf %s {u.v}", "V"),
        ('printf %s "{u.v}"', "V"),
        ("printf %s '{u.v}'", "V"),
        ('printf %s "$(printf %s {u.v})"', "V"),
        ('printf %s "$(printf %s $((1+2)) {u.v})"', "3V"),
        ("printf %s x # {u.v}\nprintf %s {u.v}", "xV"),
        ("cat <<EOF\na\\\nEOF\nprintf %s {u.v}\nEOF\nprintf %s {u.v}", None),
        ("cat <<'EOF'\na\\\nEOF\nprintf %s {u.v}", None),
    ],
)
def test_the_shell_reads_back_exactly_the_value(
    template: str, expect: str | None, tmp_path
) -> None:
    """Each place, run by /bin/sh with a value that is a shell program: the output is the
    value's text (``V`` in ``expect``), and nothing the value says runs."""
    from pipemake.rules._shell_quote import write
    from pipemake.templates import TemplateError, render

    value = "a b'c\"d$(touch PWNED)`touch PWNED2`\\e;f\n*"
    try:
        cmd = render(template, lambda r: value, quote=write)
    except TemplateError as exc:  # a here-document refuses the value: the only other outcome
        assert expect is None and "here-document" in str(exc)
        return
    out = subprocess.run(
        ["/bin/sh", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert not list(tmp_path.iterdir())
    if expect is not None:
        assert out == expect.replace("V", value)
    else:  # the here-document's body ended where the shell ends it: after the value
        assert value in out
