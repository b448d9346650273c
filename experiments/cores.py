"""Pipelines sharing the CPU cores: `experiments/replicate.py` runs its K demos at once with `share_cores`.

Each stage of a pipeline (one console script, one core; a sweep its jobs) holds its cores while it runs
(`cores`). Free cores go to the waiting stage of the earliest pipeline, and a core a stage has just
released stays a moment (`CorePool.keep_s`) for its own pipeline's next stage, so pipeline 1 keeps the cores
it can use and the later ones run on what it leaves idle (while its SFT runs alone, at its uneven tail).
A running stage is never interrupted: pipeline 1 may wait for a later pipeline's stage to end. Stages
are deterministic single-threaded processes, so the outputs are those of running the pipelines one after another.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import os
import sys
import threading
import time
from contextlib import contextmanager

from rmopt.errors import RmoptError


class Stopped(Exception):
    """A stage not started because a pipeline sharing the cores failed or was interrupted."""


def default_cores() -> int:
    """$RMOPT_JOBS (-1: every core of the machine), else 2."""
    raw = os.environ.get("RMOPT_JOBS", "2")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n == -1:
        return os.cpu_count() or 1
    if n < 1:
        raise RmoptError(f"RMOPT_JOBS={raw}: expected a number of CPU cores, at least 1 (or -1 for all)")
    return n


def cores_needed(args, jobs) -> int:
    """The cores a stage runs on: a sweep (``-m``) its ``jobs`` concurrent jobs (-1: every core), any other stage one."""
    if "-m" not in args and "--multirun" not in args:
        return 1
    return (os.cpu_count() or 1) if int(jobs) == -1 else int(jobs)


class CorePool:
    """``size`` cores; ``hold(n, priority)`` waits for ``n`` of them (the lowest priority number first).

    Stages are served in order: a sweep first in line for two cores while one is free keeps the stages
    behind it waiting until a second core frees (the replicates' sweeps hold one core each, so they never do)."""

    def __init__(self, size: int, keep_s: float = 0.5):
        if size < 1:
            raise ValueError(f"a core pool of {size} cores; expected at least 1")
        self.size, self.free, self.keep_s, self.stopped = size, size, keep_s, False
        self.asked: set[int] = set()  # priorities that have asked for cores (or ended)
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []  # heap of (priority, arrival)
        self._arrival = itertools.count()
        self._kept: list[tuple[int, float]] = []  # (priority, until): free cores kept a moment for that priority

    def _live_kept(self) -> list[tuple[int, float]]:
        now = time.monotonic()
        self._kept = [k for k in self._kept if k[1] > now]
        return self._kept

    def _can_take(self, ticket: tuple[int, int], n: int) -> bool:
        """First in line, and ``n`` free cores besides those kept for an earlier pipeline."""
        kept_for_earlier = sum(1 for p, _ in self._live_kept() if p < ticket[0])
        return self._waiting[0] == ticket and self.free - kept_for_earlier >= n

    def _take(self, n: int, priority: int) -> None:
        """The cores kept for this pipeline first, then unkept ones, then those kept for later pipelines."""
        kept = self._live_kept()
        own = [k for k in kept if k[0] == priority][:n]
        later = sorted((k for k in kept if k[0] > priority), key=lambda k: -k[0])
        taken = own + later[:max(0, n - len(own) - (self.free - len(kept)))]
        for k in taken:
            self._kept.remove(k)
        self.free -= n

    def _next_expiry(self) -> float | None:
        kept = self._live_kept()
        return max(0.0, min(u for _, u in kept) - time.monotonic()) + 1e-3 if kept else None

    def mark_asked(self, priority: int) -> None:
        with self._cond:
            self.asked.add(priority)
            self._cond.notify_all()

    @contextmanager
    def hold(self, n: int, priority: int):
        n = min(max(n, 1), self.size)
        with self._cond:
            self.asked.add(priority)
            ticket = (priority, next(self._arrival))
            heapq.heappush(self._waiting, ticket)
            self._cond.notify_all()
            try:
                while not (self.stopped or self._can_take(ticket, n)):
                    self._cond.wait(self._next_expiry())
            finally:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._cond.notify_all()  # the next in line may fit in what is left
            if self.stopped:
                raise Stopped("not started: a pipeline sharing the cores failed or was interrupted")
            self._take(n, priority)
        try:
            yield n
        finally:
            with self._cond:
                self.free += n
                self._kept += [(priority, time.monotonic() + self.keep_s)] * n
                self._cond.notify_all()

    def release_kept(self, priority: int) -> None:
        """A pipeline that has ended needs no core kept for it."""
        with self._cond:
            self._kept = [k for k in self._kept if k[0] != priority]
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()


_SHARED: contextvars.ContextVar = contextvars.ContextVar("rmopt_shared_cores", default=None)  # (CorePool, priority)
_HELD: contextvars.ContextVar = contextvars.ContextVar("rmopt_held_cores", default=0)


@contextmanager
def cores(n: int = 1):
    """Hold ``n`` of the shared cores (``share_cores``) for a block, yielding how many; outside ``share_cores``
    nothing to hold (yields None). Inside a block that already holds at least ``n``, holds nothing more."""
    shared = _SHARED.get()
    if shared is None:
        yield None
        return
    held = _HELD.get()
    if held:
        if n > held:
            raise RuntimeError(f"a block holding {held} core(s) asked for {n}: it would wait for itself")
        yield held
        return
    with shared[0].hold(n, shared[1]) as got:
        token = _HELD.set(got)
        try:
            yield got
        finally:
            _HELD.reset(token)


def shared_cores() -> bool:
    """Whether this pipeline shares its cores with others (runs under ``share_cores``)."""
    return _SHARED.get() is not None


def stop_shared() -> None:
    """Stop the pipelines sharing this one's cores from starting stages (a stage failed)."""
    shared = _SHARED.get()
    if shared is not None:
        shared[0].stop()


def share_cores(*pipelines, size: int | None = None, names=None) -> list:
    """Run the pipelines (functions of no arguments) at once, their stages sharing ``size`` cores (default
    $RMOPT_JOBS, else 2), pipeline 1's first. Returns their results in order. The first failed stage stops
    every stage not yet started; each failure is named on stderr (``names``: the pipelines', default
    "pipeline i") and the first is raised once every pipeline has stopped. An interrupt stops them too."""
    pool = CorePool(default_cores() if size is None else size)
    names = list(names) if names is not None else [f"pipeline {i + 1}" for i in range(len(pipelines))]
    results, failures = [None] * len(pipelines), []

    def run_one(i, pipeline):
        _SHARED.set((pool, i))
        try:
            results[i] = pipeline()
        except BaseException as error:  # noqa: BLE001 - raised below, once the others have stopped
            if not isinstance(error, Stopped):
                failures.append(error)
                print(f"{names[i]} failed: {error}", file=sys.stderr, flush=True)
            pool.stop()
        finally:
            pool.release_kept(i)
            pool.mark_asked(i)

    threads = []
    try:
        for i, pipeline in enumerate(pipelines):  # each starts once the one before has asked for cores (or ended)
            if pool.stopped:
                break
            threads.append(threading.Thread(target=contextvars.copy_context().run, args=(run_one, i, pipeline)))
            threads[-1].start()
            with pool._cond:
                while i not in pool.asked:
                    pool._cond.wait(0.5)
        for t in threads:
            while t.is_alive():
                t.join(0.5)  # a timed wait, so that an interrupt reaches this thread
    except BaseException:
        pool.stop()  # no stage starts after an interrupt; the running ones end (a terminal's Ctrl-C stops them too)
        raise
    if failures:
        raise failures[0]
    return results
