"""Multirun sweeps where one failing job does not stop the others.

Hydra's basic launcher stops at the first exception, and the joblib launcher re-raises it. So a
stage's main runs its task through :func:`run_job`: in a multirun, an exception is recorded as a
JSON file in ``<sweep dir>/failures/`` and the job returns; :class:`SweepSummary` (a Hydra
callback, configured under ``hydra.callbacks`` of the entry config) prints which jobs failed and
why once the sweep ends, and makes the process exit non-zero. Single runs raise as usual.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path

from hydra.experimental.callback import Callback

FAILURES = "failures"

# conf/hydra/launcher/joblib.yaml shares its name with the plugin's schema, which Hydra 1.3 still
# honours (it validates the YAML against it) but warns about on every run.
warnings.filterwarnings(
    "ignore", message=r"(?s).*is validated against ConfigStore schema", category=UserWarning
)


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def in_multirun() -> bool:
    from hydra.types import RunMode

    hc = _hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def run_job(fn, cfg):
    """Run one job (see :func:`_run_job`), then close its W&B run so the next job of a sweep starts its own."""
    try:
        return _run_job(fn, cfg)
    finally:
        finish_wandb()


def finish_wandb() -> None:
    """End the process's W&B run, if a logger started one (Lightning would hand it to the next job)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _run_job(fn, cfg):
    """``fn(cfg)``; in a multirun, a failure is recorded for :class:`SweepSummary` instead of raised.

    In a single run, a user error (:data:`rmopt.errors.USER_ERRORS`) is printed as one line and the
    process exits 1, before Hydra can add its own "Error executing job" line; other exceptions raise
    as usual (``RMOPT_TRACEBACK=1`` shows user errors' tracebacks too).
    """
    from rmopt.errors import check_value_types

    def task():
        check_value_types(cfg)  # seed=abc: one line naming the key, not a ValueError inside the stage
        return fn(cfg)

    if not in_multirun():
        from rmopt.errors import one_line, user_error

        try:
            return task()
        except Exception as e:
            cause = user_error(e)
            if cause is None or os.environ.get("RMOPT_TRACEBACK"):
                raise
            print(f"error: {one_line(cause)}", file=sys.stderr)
            raise SystemExit(1) from None
    try:
        return task()
    except Exception as e:  # any failure of one member: record it, let the sweep go on
        from rmopt.utils import atomic_write_json

        hc = _hydra()
        num = hc.job.num
        from rmopt.errors import RmoptError, one_line, user_error

        cause = user_error(e) or e
        error = (
            one_line(cause) if isinstance(cause, RmoptError) else f"{type(cause).__name__}: {one_line(cause)}"
        )
        print(f"error: job {num} ({' '.join(hc.overrides.task)}) failed: {error}", file=sys.stderr)
        atomic_write_json(
            Path(hc.sweep.dir) / FAILURES / f"job{num}.json",
            {
                "job": num,
                "overrides": list(hc.overrides.task),
                "output_dir": hc.runtime.output_dir,
                "error": error,
                "traceback": traceback.format_exc(),
            },
        )
        return None


def read_failures(sweep_dir) -> list[dict]:
    folder = Path(sweep_dir) / FAILURES
    if not folder.is_dir():
        return []
    return sorted((json.loads(p.read_text()) for p in folder.glob("job*.json")), key=lambda f: f["job"])


SWEEP_ID_VAR = "RMOPT_SWEEP_ID"


class SweepSummary(Callback):
    """At the end of a multirun: a line per failed job, and exit code 1 if any failed."""

    def on_multirun_start(self, config, **kwargs) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / FAILURES, ignore_errors=True)  # a re-run starts clean
        # One id for every job of this sweep, read by logger/wandb.yaml's group; jobs in other processes
        # (joblib) inherit it. Each job re-resolves ${now:...}, so a timestamp there would differ by job.
        import datetime

        os.environ[SWEEP_ID_VAR] = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = read_failures(sweep_dir)
        if not failures:
            print(f"sweep finished: every job succeeded (logs in {sweep_dir})")
            return
        print(
            f"sweep finished: {len(failures)} job(s) failed (details in {sweep_dir / FAILURES}):",
            file=sys.stderr,
        )
        for f in failures:
            print(f"  job {f['job']} [{' '.join(f['overrides'])}]: {f['error']}", file=sys.stderr)
        sys.exit(1)
