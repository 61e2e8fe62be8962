"""An input edited while its stage runs never leaves a wrong output marked up to date
(issue #13, finding 3): the work of that run is not committed under the old key; the stage
runs again with the new content."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Proj, wait_for

SLOW_COPY = r"""
name: moved
stages:
  - id: s
    type: shell
    config:
      cmd: "echo x >> runs/s.count; touch runs/started.$(cat runs/s.count | wc -l); while [ ! -e go ]; do sleep 0.02; done; rm -f go; cat {inputs.i} > {outputs.o}"
      inputs: {i: data/in.txt}
      outputs: {o: build/out.txt}
"""


@pytest.mark.slow
def test_an_input_edited_while_the_stage_runs_is_not_committed_under_the_old_key(
    project: Callable[..., Proj],
) -> None:
    p = project(SLOW_COPY, {"data/in.txt": "AAAA\n"})
    proc = p.popen("build", "--no-progress")
    wait_for(lambda: p.exists("runs/started.1"), what="the stage to start")
    p.write("data/in.txt", "BBBB\n")
    p.write("go", "")
    wait_for(lambda: p.exists("runs/started.2"), what="the stage to run again")
    p.write("go", "")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "changed while the stage ran" in err, err
    assert p.read("build/out.txt") == "BBBB\n"
    # put AAAA back: the old key has no entry holding BBBB, so it is never "up to date"
    p.write("data/in.txt", "AAAA\n")
    p.write("go", "")
    p.cli("build")
    assert p.read("build/out.txt") == "AAAA\n"


@pytest.mark.slow
def test_an_input_that_keeps_changing_fails_the_stage_clearly(
    project: Callable[..., Proj],
) -> None:
    p = project(SLOW_COPY, {"data/in.txt": "0\n"})
    proc = p.popen("build", "--no-progress")
    for n in range(1, 5):
        wait_for(lambda n=n: p.exists(f"runs/started.{n}"), what=f"run {n}")
        p.write("data/in.txt", f"{n}\n")
        p.write("go", "")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "kept changing while the stage ran" in err + out
    assert "Traceback" not in err
    assert not p.exists("build/out.txt")


FOREACH_SLOW = r"""
name: moved
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "echo {item.name} >> runs/each.count; if [ {item.name} = b.txt ]; then touch runs/b.started; while [ ! -e go ]; do sleep 0.02; done; rm -f go; fi; cat {inputs.src} > {outputs.o}/{item.name}"
      inputs: {src: data}
      outputs: {o: build/each}
"""


@pytest.mark.slow
def test_a_foreach_item_whose_file_is_edited_while_it_runs_runs_again(
    project: Callable[..., Proj],
) -> None:
    p = project(FOREACH_SLOW, {"data/a.txt": "a1\n", "data/b.txt": "AAAA\n"})
    proc = p.popen("build", "--no-progress")
    wait_for(lambda: p.exists("runs/b.started"), what="item b to start")
    p.path("runs/b.started").unlink()
    p.write("data/b.txt", "BBBB\n")
    p.write("go", "")
    wait_for(lambda: p.exists("runs/b.started"), what="item b to run again")
    p.write("go", "")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert p.read("build/each/b.txt") == "BBBB\n"
    p.write("data/b.txt", "AAAA\n")
    p.write("go", "")
    p.cli("build")
    assert p.read("build/each/b.txt") == "AAAA\n"


@pytest.mark.slow
def test_objects_gone_after_deciding_run_their_items_instead_of_failing(
    project: Callable[..., Proj],
) -> None:
    """A ``cache gc`` beside a build removes the objects of items the build decided were
    cached: those items run instead of the stage failing 'a store object is missing'."""
    p = project(FOREACH_SLOW, {"data/a.txt": "a1\n", "data/b.txt": "b1\n"})
    p.write("go", "")
    p.cli("build")
    import shutil

    shutil.rmtree(p.path("build/each"))
    p.write("data/b.txt", "b2\n")
    p.path("runs/b.started").unlink()
    proc = p.popen("build", "--no-progress")
    wait_for(lambda: p.exists("runs/b.started"), what="item b to start")
    objects = p.path(".pipemake/store/objects")
    for f in objects.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
            f.unlink()
    p.write("go", "")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "running them instead" in err, err
    assert p.read("build/each/a.txt") == "a1\n"
    assert p.read("build/each/b.txt") == "b2\n"
    assert p.read("runs/each.count").split() == ["a.txt", "b.txt", "b.txt", "a.txt"]
