"""The shell a foreach task's items share (``Context.sh``): one ``/bin/sh`` per task, each
command in a subshell of its own. What one command sets never reaches the next; each gets
its own environment, an empty stdin and its own output, line by line as it prints; exit
statuses come back as they are; a shell that dies is replaced for the next command; and a
name the shell cannot export falls back to a process of its own."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Proj, alive, shell_foreach, wait_for

from pipemake.executors.base import Task
from pipemake.executors.guardian import Guardian
from pipemake.executors.spawn import Spawner, TaskStopped, ThreadSpawner
from pipemake.rule import Context, exports


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
    # what a starting shell sets itself: only a shell of its own gives what sh -c gives
    assert exports({"IFS": ":"}) is None and exports({"PWD": "/"}) is None


def test_big_output_does_not_block_the_command(spawner: Spawner) -> None:
    code, lines = _run(spawner, "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done")
    assert code == 0 and len(lines) == 20000 and lines[-1] == "line19999"


def test_a_command_killed_by_a_signal_and_a_dead_shell(spawner: Spawner) -> None:
    # the subshell killed: the shell reports 128 + N and goes on
    code, _ = _run(spawner, "kill -KILL $(sh -c 'echo $PPID')")
    assert code == 128 + signal.SIGKILL
    # the shell itself killed: the command fails with the signal, the next gets a new shell
    code, _ = _run(spawner, "kill -TERM $$; sleep 0.2")
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
    cmd = 'echo $$ > {outputs.o}/{item.name}; printf "%s" "${{SEEN-}}" >> {outputs.o}/{item.name}'
    proj = project(
        shell_foreach(cmd + "; SEEN=1; cd /"), {f"data/f{i}.txt": f"{i}\n" for i in range(40)}
    )
    proj.cli("build", "-j", "1")
    got = [proj.read(f"build/each/f{i}.txt") for i in range(40)]
    assert all(text.endswith("\n") for text in got)  # SEEN never reached another item
    assert len(set(got)) < 40  # items shared shells: a shell per item would give 40 pids
    assert int(got[0]) != os.getpid()


def test_a_failing_item_names_its_exit_status(project: Callable[..., Proj]) -> None:
    cmd = (
        "if [ {item.stem} = f1 ]; then echo bad input >&2; exit 7; fi; cp {inputs.src} {outputs.o}/"
    )
    proj = project(shell_foreach(cmd), {f"data/f{i}.txt": f"{i}\n" for i in range(3)})
    result = proj.cli("build", "-j", "1", code=1)
    text = result.output
    assert "f1.txt" in text and "exited with code 7" in text and "bad input" in text
    assert "Traceback" not in text


def test_a_background_job_holding_the_output_holds_its_command(
    spawner: Spawner, tmp_path: Path
) -> None:
    # as with sh -c: the command's output is read to its end, so a job still writing there
    # finishes (and writes its files) before the command counts as done
    code, lines = _run(spawner, "(sleep 0.3; echo late; echo x > bg.txt) & echo now")
    assert (code, lines) == (0, ["now", "late"])
    assert (tmp_path / "bg.txt").read_text() == "x\n"
    assert _run(spawner, "echo next") == (0, ["next"])


def test_carriage_returns_end_lines_and_long_lines_come_whole(spawner: Spawner) -> None:
    assert _run(spawner, "printf 'frame 1\\rframe 2\\r\\nok\\r\\nend\\r'") == (
        0,
        ["frame 1", "frame 2", "ok", "end"],
    )
    code, lines = _run(spawner, "head -c 3000000 /dev/zero | tr '\\0' x")
    assert code == 0 and len(lines) == 1 and len(lines[0]) == 3_000_000


def test_an_output_callback_that_fails_leaves_no_result_to_the_next_command(
    spawner: Spawner,
) -> None:
    def fail(line: str) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        spawner.sh("echo first; exit 5", None, fail)
    assert _run(spawner, "echo second") == (0, ["second"])
    assert _run(spawner, "exit 9") == (9, [])


def test_a_shell_gone_between_commands_is_replaced(spawner: Spawner) -> None:
    code, pid = _run(spawner, "echo $$")
    os.kill(int(pid[0]), signal.SIGKILL)
    wait_for(lambda: not alive(int(pid[0])), what="the shell to end")
    assert _run(spawner, "echo fine") == (0, ["fine"])


def test_commands_from_two_threads_at_once_each_get_their_own_result(spawner: Spawner) -> None:
    got: dict[int, tuple[int | None, list[str]]] = {}

    def one(n: int) -> None:
        lines: list[str] = []
        code = Context(Path(spawner.cwd or "."), {}, {}, {}, spawn=spawner).sh(
            f"sleep 0.0{n}; echo item{n}; exit {n}", output=lines.append
        )
        got[n] = (code, lines)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {n: (n, [f"item{n}"]) for n in range(1, 7)}


def test_a_stop_between_commands_ends_the_idle_shell_as_no_command(tmp_path: Path) -> None:
    guardian = Guardian()
    try:
        task = Task("t#0", "s", "shell", str(tmp_path), "", {}, {}, {}, {})
        sp = ThreadSpawner(task, guardian)
        assert sp.sh("echo $$ > shell.pid", None, None) == 0  # the persistent shell's pid
        pid = int((tmp_path / "shell.pid").read_text())
        assert alive(pid)
        sp.stop(signal.SIGTERM)
        assert not sp.hit  # the task's commands were all done: it is not cut short
        wait_for(lambda: not alive(pid), what="the idle shell to end")
        with pytest.raises(TaskStopped):
            sp.sh("echo two", None, None)
        assert sp.hit
        sp.end_shell()
        sp.close()
    finally:
        guardian.close()


def test_odd_file_names_reach_commands_and_env_as_they_are(project: Callable[..., Proj]) -> None:
    """Quotes, `$`, `;` and a backslash in item names: the command gets them quoted, an env
    value gets the name itself, and a nested output with a backslash in its name is placed."""
    odd = 'it\'s a "file" $x.txt'
    slash = "sub/back\\slash;rm -rf x.txt"
    cmd = 'mkdir -p "$(dirname {outputs.o}/{item.relpath})"; printf "%s" "$NAME" > {outputs.o}/{item.relpath}'
    proj = project(
        shell_foreach(cmd, env='{NAME: "{item.name}"}'),
        {f"data/{odd}": "1\n", f"data/{slash}": "2\n"},
    )
    proj.cli("build", "-j", "1")
    assert proj.read(f"build/each/{odd}") == odd
    assert proj.read(f"build/each/{slash}") == "back\\slash;rm -rf x.txt"
    assert "each: up to date" in proj.cli("build", "--no-progress").output


def test_the_shells_fifo_lives_in_the_stages_staging_and_goes_with_it(
    project: Callable[..., Proj],
) -> None:
    proj = project(
        shell_foreach("ls .pipemake/tmp/*/ > {outputs.o}/{item.name}"), {"data/a.txt": "a\n"}
    )
    proj.cli("build")
    assert "pipemake-sh-" in proj.read("build/each/a.txt")  # not the system's /tmp
    assert not [p for p in proj.path(".pipemake/tmp").rglob("*") if "pipemake-sh-" in p.name]
