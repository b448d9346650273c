"""A transformers TrainerCallback noting the wall time at the end of every optimizer step (peers share it)."""

import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.times = warmup, []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())

    def steps_per_s(self) -> float:
        t = self.times[self.warmup - 1 :]
        return (len(t) - 1) / (t[-1] - t[0])
