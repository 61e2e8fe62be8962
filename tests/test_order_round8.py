"""Order by what a stage finds it reads (round 8): a stage whose input is a computed value
naming a path inside another stage's output, with no edge saying so, waits for that stage
once the value is known (a dynamic dependency), so one build settles; a cycle formed that
way, or a stage the build leaves out, fails the stage naming both, never hangs; ``dry-run``
plans that stage first and says the reader waits on it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from conftest import TRACEBACK, Proj

from pipemake.dag import Graph
from pipemake.events import Bus, Event
from pipemake.executors import get_executor
from pipemake.executors.base import Message, Task
from pipemake.scheduler import Outcome, Scheduler, StageFailure, WaitFor

#: ``pick`` returns the path of a file inside ``mk``'s output folder; ``use`` reads it
#: through ``{pick.f}`` and nothing declares use → mk (listed before mk, so it would be
#: begun first)
PICKED = """
name: t
stages:
  - id: pick
    type: python
    config: {function: "steps:pick", inputs: {s: src/s}, outputs: {o: build/pick.txt}}
  - id: use
    type: shell
    config:
      inputs: {p: "{pick.f}"}
      outputs: {o: build/use.txt}
      cmd: "echo x >> runs/use.count; cat {inputs.p} > {outputs.o}"
  - id: mk
    type: shell
    config:
      inputs: {y: src/y MORE}
      outputs: {d: build/mk}
      cmd: "echo x >> runs/mk.count; SLOW mkdir -p {outputs.d}; cp {inputs.y} {outputs.d}/y.txt"
"""
STEPS = """
def pick(ctx):
    ctx.outputs["o"].write_text("picked\\n")
    return {"f": "build/mk/y.txt", "g": "build/use.txt"}
"""
FILES = {"steps.py": STEPS, "src/y": "y1\n", "src/s": "s\n"}


def _picked(project: Callable[..., Proj], slow: str = "", more: str = "") -> Proj:
    return project(PICKED.replace("SLOW ", slow).replace(" MORE", more), dict(FILES))


def _built(proj: Proj) -> Proj:
    """``proj`` built once (in two builds where the first one does not settle it)."""
    proj.cli("build", code=None)
    proj.cli("build")
    return proj


def test_a_fresh_build_runs_the_stage_a_value_leads_into_first(
    project: Callable[..., Proj],
) -> None:
    proj = _picked(project)
    out = proj.cli("build", "-j", "1").output  # was: use ran first and failed (exit 1)
    assert proj.read("build/use.txt") == "y1\n"
    assert "use| waits for stage mk: its input p is build/mk/y.txt (from {pick.f})" in out
    assert "inside stage mk's output build/mk" in out
    assert proj.run_counts() == {"mk": 1, "use": 1}
    out = proj.cli("build").output  # settled in one build
    assert proj.run_counts() == {"mk": 1, "use": 1}
    assert "use: up to date" in out


def test_the_reader_waits_for_the_stage_while_it_runs_and_reads_its_new_output(
    project: Callable[..., Proj],
) -> None:
    proj = _built(_picked(project, slow="sleep 1; "))
    proj.write("src/y", "y2\n")
    out = proj.cli("build", "-j", "4").output
    # was: "use: running (upstream mk will run)" beside mk, reading mk's old y (y1)
    assert proj.read("build/use.txt") == "y2\n"
    assert "use: running (input build/mk/y.txt changed)" in out
    assert out.index("mk: done") < out.index("use: running")


def test_dry_run_plans_that_stage_first_and_says_the_reader_waits_on_it(
    project: Callable[..., Proj],
) -> None:
    proj = _built(_picked(project))
    out = proj.cli("dry-run", "--check").output  # was: use: maybe: upstream mk will run
    assert "use: up to date" in out and "mk: up to date" in out
    proj.write("src/y", "y2\n")
    out = proj.cli("dry-run").output
    assert "mk: run: input src/y changed" in out
    assert "use: maybe: upstream mk will run" in out


def test_a_cycle_through_a_value_fails_the_stage_naming_both(
    project: Callable[..., Proj],
) -> None:
    # mk reads use's output (an edge); use reads mk's through a value: use → mk → use
    proj = _picked(project, more=', u: "{use.o}"')
    proc = proj.sub("build", "--no-progress", code=1, timeout=60)
    out = proc.stdout + proc.stderr
    assert "use: FAILED: its input p is build/mk/y.txt (from {pick.f})" in out
    assert "but stage mk needs use first (a cycle: use → mk → use)" in out
    assert "mk: upstream use failed" in out and TRACEBACK not in out
    assert proj.run_counts() == {}
    out = proj.cli("dry-run").output
    assert "use: run: will fail: its input p is build/mk/y.txt" in out
    assert "(a cycle: use → mk → use)" in out


def test_two_stages_whose_values_lead_into_each_other_fail_never_hang(
    project: Callable[..., Proj],
) -> None:
    # no edge either way: use waits for mk, and mk then finds it reads use's output
    proj = _picked(project, more=', u: "{pick.g}"')
    proc = proj.sub("build", "--no-progress", "-j", "4", code=1, timeout=60)
    out = proc.stdout + proc.stderr
    assert "mk: FAILED: its input u is build/use.txt (from {pick.g})" in out
    assert "which is stage use's output build/use.txt" in out
    assert "(a cycle: mk → use → mk)" in out
    assert "use: upstream mk failed" in out and TRACEBACK not in out
    assert proj.run_counts() == {}


def test_a_build_leaving_that_stage_out_says_to_build_it_too(
    project: Callable[..., Proj],
) -> None:
    proj = _picked(project)
    out = proj.cli("build", "use", code=1).output  # was: use ran reading a missing file
    assert "use: FAILED: its input p is build/mk/y.txt" in out
    assert "this build leaves stage mk out: build it too (`pipemake build use mk`)" in out
    assert "add `depends_on: [mk]` to stage use" in out
    assert proj.run_counts() == {}


def test_the_reader_is_skipped_when_that_stage_fails(project: Callable[..., Proj]) -> None:
    proj = _built(_picked(project))
    runs = proj.run_counts()
    proj.write("src/y", "y2\n")
    proj.edit("pipemake.yaml", "cp {inputs.y}", "exit 3; cp {inputs.y}")
    out = proj.cli("build", "-k", "-j", "4", code=1).output
    assert "use: upstream mk failed" in out
    assert proj.read("build/use.txt") == "y1\n"  # the old one, not rebuilt from stale input
    assert proj.run_counts() == {"mk": runs["mk"] + 1, "use": runs["use"]}


# the scheduler's side: WaitFor through a fake handler ---------------------------------------
class Needing:
    """A StageHandler whose stages have no tasks; ``needs[stage]``: stages it finds it needs
    once begun (raising WaitFor until they are done); ``fail``: stages whose begin fails."""

    def __init__(self, needs: Mapping[str, list[str]], fail: tuple[str, ...] = ()):
        self.needs = dict(needs)
        self.fail = fail
        self.began: list[str] = []
        self.done: set[str] = set()

    def begin(self, stage: str) -> list[Task]:
        self.began.append(stage)
        if stage in self.fail:
            raise StageFailure(f"{stage} failed")
        missing = [d for d in self.needs.get(stage, []) if d not in self.done]
        if missing:
            raise WaitFor({d: f"it reads {d}'s output" for d in missing})
        return []

    def task_started(self, stage: str, task: Task) -> None:
        pass

    def on_message(self, stage: str, message: Message) -> list[Task]:
        return []

    def complete(self, stage: str) -> list[Task] | None:
        self.done.add(stage)
        return None

    def idle(self) -> None:
        pass


def _run(
    handler: Needing, deps: dict[str, list[str]], order: list[str] | None = None, **kw: object
) -> tuple[Outcome, list[Event]]:
    events: list[Event] = []
    bus = Bus()
    bus.subscribe(events.append)
    with get_executor("inline", 1) as executor:
        sched = Scheduler(Graph(deps), order or list(deps), handler, executor, bus, **kw)  # type: ignore[arg-type]
        return sched.run(), events


def test_a_stage_waiting_for_what_it_found_begins_again_once_that_is_done(
    tmp_path: Path,
) -> None:
    handler = Needing({"a": ["b"]})
    out, events = _run(handler, {"a": [], "b": [], "c": ["a"]})
    assert handler.began == ["a", "b", "a", "c"]
    assert out.done == ["b", "a", "c"] and not out.failed and not out.skipped
    said = [e.data["text"] for e in events if e.kind == "log" and e.stage == "a"]
    assert said == ["waits for stage b: it reads b's output"]


def test_what_a_stage_cannot_wait_for_fails_or_skips_it(tmp_path: Path) -> None:
    # b needs a (an edge); a finds it needs b: a cycle
    out, _ = _run(Needing({"a": ["b"]}), {"a": [], "b": ["a"]})
    assert out.failed["a"].startswith("it reads b's output, but stage b needs a first")
    assert "(a cycle: a → b → a)" in out.failed["a"]
    assert out.skipped == {"b": "upstream a failed"}
    # each finds it needs the other once begun
    out, _ = _run(Needing({"a": ["b"], "b": ["a"]}), {"a": [], "b": []}, keep_going=True)
    assert "(a cycle: b → a → b)" in out.failed["b"]
    assert out.skipped == {"a": "upstream b failed"}
    # left out of the build
    out, _ = _run(Needing({"a": ["b"]}), {"a": [], "b": []}, order=["a"])
    assert "this build leaves stage b out" in out.failed["a"]
    # it failed already (keep going): skipped
    handler = Needing({"a": ["b"]}, fail=("b",))
    out, _ = _run(handler, {"b": [], "a": []}, keep_going=True)
    assert out.failed == {"b": "b failed"} and out.skipped == {"a": "upstream b failed"}
    # it fails while a waits
    handler = Needing({"a": ["b"]}, fail=("b",))
    out, _ = _run(handler, {"a": [], "b": []}, keep_going=True)
    assert handler.began == ["a", "b"]
    assert out.failed == {"b": "b failed"} and out.skipped == {"a": "upstream b failed"}
