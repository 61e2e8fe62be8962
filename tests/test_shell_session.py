"""The shell a foreach task's items share (``Context.sh``): one ``/bin/sh`` per task, each
command in a subshell of its own. What one command sets never reaches the next; each gets
its own environment, an empty stdin and its own output, line by line as it prints; exit
statuses come back as they are; a shell that dies is replaced for the next command; and a
name the shell cannot export falls back to a process of its own."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Proj

from pipemake.rule import Context, exports
from pipemake.worker import Spawner


@pytest.fixture
def spawner(tmp_path: Path) -> Iterator[Spawner]:
    sp = Spawner(cwd=str(tmp_path))
    yield sp
    sp.end_shell()


def _run(sp: Spawner, cmd: str, env: dict[str, str] | None = None) -> tuple[int | None, list[str]]:
    lines: list[str] = []
    return sp.sh(cmd, env, lines.append), lines


def test_commands_share_one_shell_but_nothing_they_set(spawner: Spawner, tmp_path: Path) -> None:
    _, umask = _run(spawner, "umask")
    code, first = _run(spawner, "echo $$; X=1; export Y=2; cd /; umask 077; trap 'echo bye' EXIT")
    assert code == 0 and first == [first[0], "bye"]
    code, second = _run(spawner, 'echo $$; printf "%s|%s|%s|%s\\n" "${X-}" "${Y-}" "$PWD" $(umask)')
    assert (code, second) == (0, [first[0], f"||{tmp_path}|{umask[0]}"])


def test_exit_statuses_and_output_come_back_per_command(spawner: Spawner) -> None:
    assert _run(spawner, "echo one; echo two >&2; printf three; exit 3") == (
        3,
        ["one", "two", "three"],
    )
    assert _run(spawner, "true") == (0, [])
    assert _run(spawner, "printf 'no newline'") == (0, ["no newline"])
    assert _run(spawner, "echo; echo") == (0, ["", ""])
    # a token-like line from a command is just output
    assert _run(spawner, "echo '@@pipemake-0000@@ 5'") == (0, ["@@pipemake-0000@@ 5"])


def test_a_syntax_error_fails_that_command_only(spawner: Spawner) -> None:
    code, lines = _run(spawner, "if then fi")
    assert code == 2 and "yntax error" in " ".join(lines)
    assert _run(spawner, "echo ok") == (0, ["ok"])
    code, lines = _run(spawner, "echo 'unbalanced")
    assert code == 2
    assert _run(spawner, "echo still") == (0, ["still"])


def test_commands_read_an_empty_stdin_not_the_shells_script(spawner: Spawner) -> None:
    assert _run(spawner, "cat; echo after") == (0, ["after"])
    assert _run(spawner, 'read -r line; echo "[${line-}]"') == (0, ["[]"])


def test_each_command_gets_its_own_environment(spawner: Spawner) -> None:
    assert _run(spawner, 'printf "%s\\n" "$A"', {"A": "it's a 'value' $HOME"}) == (
        0,
        ["it's a 'value' $HOME"],
    )
    assert _run(spawner, 'printf "%s\\n" "${A-unset}"') == (0, ["unset"])
    assert _run(spawner, 'printf "%s\\n" "$A"', {"A": "two"}) == (0, ["two"])
    assert spawner.sh("true", {"NOT-A-NAME": "1"}, None) is None  # the caller starts its own
    assert exports({"NOT-A-NAME": "1"}) is None and exports(None) == ""


def test_big_output_does_not_block_the_command(spawner: Spawner) -> None:
    code, lines = _run(spawner, "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done")
    assert code == 0 and len(lines) == 20000 and lines[-1] == "line19999"


def test_a_command_killed_by_a_signal_and_a_dead_shell(spawner: Spawner) -> None:
    # the subshell killed: the shell reports 128 + N and goes on
    code, _ = _run(spawner, "kill -KILL $(sh -c 'echo $PPID')")
    assert code == 128 + signal.SIGKILL
    # the shell itself killed: the command fails with the signal, the next gets a new shell
    code, _ = _run(spawner, "echo $$ > pid; kill -TERM $$; sleep 5")
    assert code == -signal.SIGTERM
    assert _run(spawner, "echo again") == (0, ["again"])


def test_ending_the_shell_counts_what_it_used(spawner: Spawner) -> None:
    assert _run(spawner, "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done") == (0, [])
    spawner.end_shell()
    assert spawner.cpu > 0
    spawner.end_shell()  # twice is fine


def test_without_a_spawner_sh_starts_a_shell_per_command(tmp_path: Path) -> None:
    ctx = Context(tmp_path, {}, {}, {})
    lines: list[str] = []
    assert ctx.sh('echo "$A"; exit 4', env={"A": "x"}, output=lines.append) == 4
    assert lines == ["x"]


def test_a_shell_foreach_runs_its_items_in_one_shell_per_task(
    project: Callable[..., Proj],
) -> None:
    proj = project(
        """
    name: t
    stages:
      - id: each
        type: shell
        foreach: src
        config:
          cmd: 'echo $$ > {outputs.o}/{item.name}; printf "%s" "${{SEEN-}}" >> {outputs.o}/{item.name}; SEEN=1; cd /'
          inputs: {src: data}
          outputs: {o: build/each}
    """,
        {f"data/f{i}.txt": f"{i}\n" for i in range(40)},
    )
    proj.cli("build", "-j", "1")
    got = [proj.read(f"build/each/f{i}.txt") for i in range(40)]
    assert all(text.endswith("\n") for text in got)  # SEEN never reached another item
    assert len(set(got)) < 40  # items shared shells: a shell per item would give 40 pids
    assert int(got[0]) != os.getpid()


def test_a_failing_item_names_its_exit_status(project: Callable[..., Proj]) -> None:
    proj = project(
        """
    name: t
    stages:
      - id: each
        type: shell
        foreach: src
        config:
          cmd: 'if [ {item.stem} = f1 ]; then echo bad input >&2; exit 7; fi; cp {inputs.src} {outputs.o}/'
          inputs: {src: data}
          outputs: {o: build/each}
    """,
        {f"data/f{i}.txt": f"{i}\n" for i in range(3)},
    )
    result = proj.cli("build", "-j", "1", code=1)
    text = result.output
    assert "f1.txt" in text and "exited with code 7" in text and "bad input" in text
    assert "Traceback" not in text
