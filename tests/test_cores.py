"""experiments/cores.py: pipelines sharing the CPU cores (make replicates runs its demos at once)."""

import _thread
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.cores import CorePool, Stopped, cores, cores_needed, share_cores  # noqa: E402
from experiments.demo import lanes, run  # noqa: E402
from rmopt.errors import RmoptError  # noqa: E402


def _until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_never_more_stages_than_cores_and_lanes_inside_share_them():
    lock, held, peak, done = threading.Lock(), [0], [0], []

    def stage(name, n=1):
        with cores(n):
            with lock:
                held[0] += n
                peak[0] = max(peak[0], held[0])
            time.sleep(0.02)
            with lock:
                held[0] -= n
                done.append(name)

    def pipeline(p):  # a stage alone, two lanes of two stages, a stage needing both cores
        def go():
            stage(f"{p}.sft")
            lanes(lambda: [stage(f"{p}.a{i}") for i in range(2)], lambda: [stage(f"{p}.b{i}") for i in range(2)], workers=2)
            stage(f"{p}.sweep", n=2)
            return p
        return go

    assert share_cores(*[pipeline(p) for p in range(3)], size=2) == [0, 1, 2]
    assert peak[0] == 2 and len(done) == 18  # three pipelines of 2 + 2 lanes each wanting a core: never more than 2 at once


def test_free_cores_go_to_the_earliest_pipeline_waiting():
    pool, order, lock, release = CorePool(1, keep_s=0.0), [], threading.Lock(), threading.Event()

    def holder():
        with pool.hold(1, priority=9):
            release.wait(5)

    def waiter(priority):
        with pool.hold(1, priority):
            with lock:
                order.append(priority)

    threads = [threading.Thread(target=holder, daemon=True)]
    threads[0].start()
    _until(lambda: pool.free == 0)
    for priority in (2, 0, 1):  # arriving in this order while the core is busy
        threads.append(threading.Thread(target=waiter, args=(priority,), daemon=True))
        threads[-1].start()
        _until(lambda: len(pool._waiting) == len(threads) - 1)
    release.set()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2]
    with pytest.raises(ValueError, match="0 cores"):
        CorePool(0)


def test_the_first_pipeline_keeps_its_cores_between_its_stages_and_asks_first(tmp_path):
    """Real stages (run()): a later pipeline waiting for the core does not slip in between two of the first's."""
    trace = tmp_path / "trace"

    def pipeline(p, setup):
        def go():
            time.sleep(setup)  # e.g. imports and option checks before its first stage
            for i in range(4):
                code = f"open({str(trace)!r}, 'a').write('{p}{i}+ '); import time; time.sleep(0.03); open({str(trace)!r}, 'a').write('{p}{i}- ')"
                run("python", "-c", code)
        return go

    share_cores(pipeline(0, 0.2), pipeline(1, 0.0), size=1)
    events = trace.read_text().split()
    assert events == [f"{p}{i}{e}" for p in "01" for i in range(4) for e in "+-"]  # one at a time, pipeline 1's first


def test_a_pipeline_keeps_only_the_cores_it_released():
    pool = CorePool(2, keep_s=60.0)
    for _ in range(5):  # one pipeline cycling through stages on one core
        with pool.hold(1, priority=0):
            pass
    later = pool.hold(1, priority=1)
    t = threading.Thread(target=later.__enter__, daemon=True)
    t.start()
    t.join(2)
    assert not t.is_alive() and pool.free == 1  # the other core went to a later pipeline, not kept for the first
    with pool.hold(1, priority=0):  # the first's own kept core is still there for it
        assert pool.free == 0


def test_a_stage_holds_one_core_and_a_sweep_its_jobs():
    assert cores_needed(["rmopt-sft", "experiment=toy"], "2") == 1  # RMOPT_JOBS is a sweep's, not every stage's
    assert cores_needed(["rmopt-rm", "-m", "seed=1,2,3"], "2") == 2
    assert cores_needed(["rmopt-rm", "--multirun", "seed=1,2"], 1) == 1
    assert cores_needed(["rmopt-rm", "-m", "seed=1,2"], "-1") == (os.cpu_count() or 1)  # joblib's every core


def test_a_failed_stage_stops_the_other_pipelines_at_once_and_its_error_comes_after_they_end(capsys):
    ran, ended, lane = [], [], []

    def other():
        try:
            for i in range(2000):  # until stopped
                with cores():
                    ran.append(i)
                    time.sleep(0.005)
        finally:
            ended.append(time.monotonic())

    def stages():
        for _ in range(50):
            with cores():
                lane.append(1)
                time.sleep(0.02)

    def failing():  # a stage fails in one lane while the other lane still has stages to run
        def bad():
            time.sleep(0.05)
            run("python", "-c", "raise SystemExit(3)")

        lanes(bad, stages, workers=2)

    with pytest.raises(Exception, match="exit status 3"):  # the real error, not the others' Stopped
        share_cores(other, failing, size=2)
    raised = time.monotonic()
    assert len(lane) < 50 and len(ran) < 2000  # stopped at the failed stage, not once its pipeline's lanes ended
    assert ended and ended[0] <= raised  # raised once the other pipeline had stopped
    assert "pipeline 2 failed" in capsys.readouterr().err


def test_an_interrupt_stops_every_pipeline():
    ran = []

    def pipeline():
        for i in range(400):
            with cores():
                ran.append(i)
                time.sleep(0.005)

    # Python raises KeyboardInterrupt only where SIGINT has its handler: a process started in the background
    # by a non-interactive shell inherits SIGINT ignored, and then interrupt_main does nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.1, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            share_cores(pipeline, pipeline, size=2)
    finally:
        if previous is not None:  # None: a handler installed from C, which Python cannot put back
            signal.signal(signal.SIGINT, previous)
    count = len(ran)
    time.sleep(0.05)
    assert count < 400 and len(ran) == count  # none started after the interrupt reached share_cores


def test_bad_core_counts_are_one_line_errors(monkeypatch):
    monkeypatch.setenv("RMOPT_JOBS", "0")
    with pytest.raises(RmoptError, match="RMOPT_JOBS=0: expected a number of CPU cores"):
        share_cores(lambda: None)
    monkeypatch.setenv("RMOPT_JOBS", "-1")  # joblib's "every core"
    assert share_cores(lambda: 7) == [7]
    with pytest.raises(Stopped):
        pool = CorePool(1)
        pool.stop()
        with pool.hold(1, 0):
            pass
