"""Which frames to keep: shot detection, the per-mode selectors and the per-shot picker.

Private to the ``frame_extraction`` rule, used by :mod:`pipemake.rules._video` (which the
rule imports lazily). :class:`SceneDetector` compares numpy thumbnails made by its caller;
this module imports nothing of numpy itself, so modes without shot detection never load
it. The frames handled are opaque objects (PyAV frames in practice).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["SceneDetector", "ShotPicker", "selector"]


#: a cut's change must also be this many times the mean change around it
ADAPTIVE_RATIO = 2.0
#: frames on each side of a candidate cut that make up "around it"
ADAPTIVE_WINDOW = 2
#: after a cut, frames differ from those before it by at least this share of its change
LASTING_SHARE = 0.5


class SceneDetector:
    """Finds hard cuts in a stream of frame thumbnails, online.

    The change of a frame is the mean absolute difference (0-255) between its thumbnail
    and the previous one. A frame starts a new shot when its change exceeds the mean change
    of the :data:`ADAPTIVE_WINDOW` frames on each side by at least ``threshold`` and is at
    least :data:`ADAPTIVE_RATIO` times that mean (so motion, which changes many frames in a
    row, is not a cut, while a cut in a busy shot still is), when the frames after it stay at
    least :data:`LASTING_SHARE` of that change away from each of the frames before it (so a
    flash, after which the picture comes back, is not a cut), and when the shot it ends is
    at least ``min_scene_len`` frames long. Decisions lag the input by the window.
    """

    def __init__(self, threshold: float, min_scene_len: int) -> None:
        self.threshold = threshold
        self.min_scene_len = min_scene_len
        self.cuts: list[int] = []
        self._prev: np.ndarray | None = None
        self._window: deque[tuple[int, float, np.ndarray]] = deque()
        self._decided = 0
        self._shot_start: int | None = None
        #: the last frame index decided: no cut at or before it can be found any more
        self.settled = -1

    def push(self, index: int, thumb: np.ndarray) -> list[int]:
        """Add the thumbnail of frame ``index``; return the cuts this confirms."""
        change = 0.0 if self._prev is None else float(abs(thumb - self._prev).mean())
        if self._shot_start is None:
            self._shot_start = index
        self._prev = thumb
        self._window.append((index, change, thumb))
        found = []
        while len(self._window) - self._decided > ADAPTIVE_WINDOW:
            found += self._decide(self._decided)
        return found

    def finish(self) -> list[int]:
        """Decide the last frames (the stream has ended); return the cuts this confirms."""
        found = []
        while self._decided < len(self._window):
            found += self._decide(self._decided)
        return found

    def _lasts(self, pos: int, change: float) -> bool:
        """Whether the frames after ``pos`` stay about as different from each of the frames
        before it as the change at ``pos`` (after a cut they do; around a flash they are
        alike but for motion)."""
        before = [self._window[i][2] for i in range(max(0, pos - ADAPTIVE_WINDOW), pos)]
        after = [self._window[i][2] for i in range(pos + 1, len(self._window))]
        least = max(self.threshold, LASTING_SHARE * change)
        return all(float(abs(a - b).mean()) >= least for a in after for b in before)

    def _decide(self, pos: int) -> list[int]:
        index, change, _ = self._window[pos]
        self.settled = index
        around = [
            w[1] for i, w in enumerate(self._window) if i != pos and abs(i - pos) <= ADAPTIVE_WINDOW
        ]
        base = sum(around) / len(around) if around else 0.0
        is_cut = (
            change - base >= self.threshold
            and change >= ADAPTIVE_RATIO * max(base, 1.0)
            and index - (self._shot_start or 0) >= self.min_scene_len
            and self._lasts(pos, change)
        )
        self._decided += 1
        while self._decided > ADAPTIVE_WINDOW:  # forget what no decision needs any more
            self._window.popleft()
            self._decided -= 1
        if is_cut:
            self._shot_start = index
            self.cuts.append(index)
            return [index]
        return []


def selector(opts: Any, rate: float) -> Callable[[int, float], bool]:
    """For the modes that keep frames as they come: is frame (index, time) kept?"""
    if opts.mode == "fps":
        period, eps = 1.0 / opts.fps, 0.5 / rate if rate else 1e-3
        state = {"next": None}

        def by_time(_index: int, time: float) -> bool:
            if state["next"] is None:
                state["next"] = time
            if time + eps < state["next"]:
                return False
            state["next"] += period * (math.floor((time + eps - state["next"]) / period) + 1)
            return True

        return by_time
    if opts.mode == "every_n":
        first: list[int] = []

        def by_count(index: int, _time: float) -> bool:
            if not first:
                first.append(index)
            return (index - first[0]) % opts.n == 0

        return by_count
    return lambda _index, _time: True  # all, keyframes (only key frames are decoded)


class ShotPicker:
    """Keeps a bounded, evenly thinned set of candidate frames of the open shot and, when
    the shot closes, picks ``per_scene`` frames spread evenly over it.

    It must only ever be offered frames of the open shot (frames after a cut go in after
    :meth:`close`): then a shot's picks depend on its own frames alone, so a shot gives the
    same picks whatever follows it (the last shot of a video and the same shot followed by
    an appended one pick the same frames).
    """

    def __init__(self, per_scene: int) -> None:
        self.per_scene = per_scene
        self.cap = max(16, 4 * per_scene)
        self.start: int | None = None
        self.stride = 1
        self.items: list[tuple[int, Any]] = []

    def add(self, index: int, frame: Any) -> None:
        """Offer frame ``index`` of the open shot."""
        if self.start is None:
            self.start = index
        if self.items and index - self.items[-1][0] < self.stride:
            return
        self.items.append((index, frame))
        if len(self.items) > self.cap:
            self.items = self.items[::2]
            self.stride *= 2

    def close(self, end: int) -> list[tuple[int, Any]]:
        """Close the shot before frame ``end`` (every frame offered is before it): return
        its picks, the candidates nearest to the middles of ``per_scene`` equal parts, and
        start the next shot at ``end``."""
        shot = self.items
        picks: dict[int, Any] = {}
        if shot:
            start = self.start if self.start is not None else shot[0][0]
            length = end - start
            for j in range(self.per_scene):
                target = start + length * (2 * j + 1) / (2 * self.per_scene)
                index, frame = min(shot, key=lambda it: (abs(it[0] - target), it[0]))
                picks[index] = frame
        self.items, self.stride, self.start = [], 1, end
        return sorted(picks.items(), key=lambda it: it[0])
