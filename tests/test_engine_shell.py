"""The ``shell`` rule's contract as DESIGN.md states it: quoting, escapes, working directory,
staging, and what goes into the key (``cmd`` and ``env``, never the inherited environment)."""

from __future__ import annotations

import os

from conftest import Proj


def _one(project, cmd: str) -> Proj:
    return project(
        f"""
        name: sh
        version: 1
        stages:
          - id: s
            type: shell
            config:
              cmd: "echo x >> runs/s.count; {cmd}"
              outputs: {{o: "build/out dir/o.txt"}}
        """
    )


def test_paths_with_spaces_are_quoted(project) -> None:
    p = project(
        """
        name: sh
        version: 1
        stages:
          - id: s
            type: shell
            config:
              cmd: "cat {inputs.i} > {outputs.o}"
              inputs: {i: "data/my file.txt"}
              outputs: {o: "build/out dir/o.txt"}
        """,
        {"data/my file.txt": "spaced\n"},
    )
    p.cli("build")
    assert p.read("build/out dir/o.txt") == "spaced\n"


def test_paths_inside_the_users_own_quotes_are_quoted_for_that_place(project) -> None:
    """A path written inside ``"..."`` or ``'...'`` by the user is escaped for those quotes,
    not wrapped in quotes of its own (which the shell would keep as part of the name)."""
    p = project(
        """
        name: sh
        version: 1
        stages:
          - id: s
            type: shell
            config:
              cmd: "cat \\"{inputs.i}\\" '{inputs.j}' > \\"{outputs.o}\\""
              inputs: {i: "data/my $file.txt", j: "data/it's.txt"}
              outputs: {o: "build/out dir/o.txt"}
        """,
        {"data/my $file.txt": "dollar\n", "data/it's.txt": "quote\n"},
    )
    p.cli("build")
    assert p.read("build/out dir/o.txt") == "dollar\nquote\n"


def test_a_command_that_is_one_path_is_quoted_and_a_path_list_in_env_is_json(project) -> None:
    p = project(
        """
        name: sh
        version: 1
        stages:
          - id: s
            type: shell
            config:
              cmd: "{inputs.script}"
              inputs: {script: "tools/my script.sh", l: [data/a, "data/b c"]}
              env: {L: "{inputs.l}", ONE: "{inputs.script}"}
        """,
        {
            "tools/my script.sh": 'printf "%s|%s" "$L" "$ONE" > runs/out.txt\n',
            "data/a": "a",
            "data/b c": "b",
        },
    )
    os.chmod(p.path("tools/my script.sh"), 0o755)
    p.cli("build")
    assert p.read("runs/out.txt") == '["data/a", "data/b c"]|tools/my script.sh'


def test_double_braces_are_literal(project) -> None:
    p = _one(project, "echo '{{x}} {{vars}}' > {outputs.o}")
    p.cli("build")
    assert p.read("build/out dir/o.txt") == "{x} {vars}\n"


def test_cmd_runs_in_the_project_root_and_output_parent_exists(
    project, tmp_path, monkeypatch
) -> None:
    p = _one(project, "pwd > {outputs.o}")
    monkeypatch.chdir(tmp_path)
    p.cli("build")
    assert p.read("build/out dir/o.txt").strip() == str(p.root)


def test_inherited_environment_is_not_part_of_the_key(project) -> None:
    p = _one(project, "echo $PM_TEST_VAR > {outputs.o}")
    p.cli("build", env={"PM_TEST_VAR": "first"})
    p.cli("build", env={"PM_TEST_VAR": "second"})
    assert p.runs("s") == 1
    assert p.read("build/out dir/o.txt") == "first\n"


def test_env_is_passed_and_is_part_of_the_key(project) -> None:
    p = project(
        """
        name: sh
        version: 1
        stages:
          - id: s
            type: shell
            config:
              cmd: "echo x >> runs/s.count; echo \\"$GREETING\\" > {outputs.o}"
              outputs: {o: build/o.txt}
              env: {GREETING: hello}
        """
    )
    p.cli("build")
    assert p.read("build/o.txt") == "hello\n"
    p.edit("pipemake.yaml", "GREETING: hello", "GREETING: bye")
    line = next(x for x in p.cli("dry-run").stdout.splitlines() if x.startswith("s:"))
    assert "GREETING hello → bye" in line
    p.cli("build")
    assert p.read("build/o.txt") == "bye\n"
    assert p.runs("s") == 2


def test_the_command_writes_to_staging_not_the_output_path(project) -> None:
    p = _one(project, "echo {outputs.o} > where.txt; echo hi > {outputs.o}")
    p.cli("build")
    staged = p.read("where.txt").strip().strip("'")
    assert staged != "build/out dir/o.txt"
    assert not os.path.isabs(staged)  # relative to the project root
    assert p.read("build/out dir/o.txt") == "hi\n"
    assert not p.exists(staged)  # staging is cleared once the output is placed


def test_a_failing_command_leaves_nothing_at_the_output_path(project) -> None:
    p = _one(project, "echo partial > {outputs.o}; exit 1")
    p.cli("build", code=1)
    assert not p.exists("build/out dir/o.txt")
    assert p.read("runs/s.count") == "x\n"


def test_dependency_through_depends_on_and_a_plain_path(project) -> None:
    p = project(
        """
        name: sh
        version: 1
        stages:
          - id: b
            type: shell
            depends_on: [a]
            config:
              cmd: "echo x >> runs/b.count; cat build/a.txt > {outputs.o}"
              outputs: {o: build/b.txt}
          - id: a
            type: shell
            config:
              cmd: "echo x >> runs/a.count; echo A > {outputs.o}"
              outputs: {o: build/a.txt}
        """
    )
    p.cli("build", "-j", "2")
    assert p.read("build/b.txt") == "A\n"
    p.cli("build", "b")
    assert p.run_counts() == {"a": 1, "b": 1}


def test_a_file_name_that_is_not_utf8_is_refused_by_name(project) -> None:
    """Names are text in manifests, keys and the state: a file whose name is not valid
    UTF-8 fails its stage (input) or its item (output), named, without a traceback; the
    dry-run says so; the rest of the build is unharmed."""
    proj = project(
        """
    name: t
    stages:
      - id: up
        type: shell
        foreach: src
        config:
          cmd: 'tr a-z A-Z < {inputs.src} > {outputs.o}/{item.name}'
          inputs: {src: data}
          outputs: {o: build/up}
      - id: odd
        type: shell
        foreach: src
        config:
          cmd: 'printf x > "$(printf "{outputs.o}/\\\\377{item.name}")"'
          inputs: {src: more}
          outputs: {o: build/odd}
    """,
        {"data/ok.txt": "a\n", "more/m.txt": "m\n"},
    )
    bad = os.fsdecode(b"data/\xff\xfe.txt")
    proj.path(bad).write_bytes(b"x\n")
    dry = proj.cli("dry-run").output
    assert "up: run: will fail: foreach input data: the file name data/\\xff\\xfe.txt" in dry
    result = proj.cli("build", "--no-progress", "--keep-going", code=1)
    text = result.output
    assert "data/\\xff\\xfe.txt is not valid UTF-8" in text
    assert "{outputs.o}/\\xffm.txt is not valid UTF-8" in text
    assert "Traceback" not in text
    proj.path(bad).unlink()
    proj.cli("build", "up")
    assert proj.read("build/up/ok.txt") == "A\n"
