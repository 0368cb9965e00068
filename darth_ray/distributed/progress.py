"""What a Tune experiment prints: one line when a trial starts (its searched values), one per evaluation (the
ranking metric, the trial's best, trials done / total and the time left), one when it ends. Tune's own console
output (tables of every trial's full config and result) is off; the full records are in the experiment directory
and W&B."""
from __future__ import annotations

import time

from ray import tune

from darth_ray.adapt.loop import ERROR_KEY
from darth_ray.distributed.train import EVALUATED_KEY


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def time_left(elapsed: float, epochs_done: int, epochs_left: int) -> float | None:
    """Seconds left if the trial-epochs left take as long as those done so far took (wall time, so concurrent
    trials count); an upper bound under ASHA, which stops trials early. None before the first epoch is done."""
    if epochs_done == 0:
        return None
    return elapsed / epochs_done * max(0, epochs_left)


class ConsoleProgress(tune.Callback):
    def __init__(self, metric: str, searched: list[str], num_samples: int, epochs: int, out=None):
        self.metric, self.searched, self.num_samples, self.epochs = metric, searched, num_samples, epochs
        # None: print, looked up when a line is written (Tune pickles its callbacks, and Ray Train replaces
        # builtins.print in the driver, so the print of import time no longer pickles)
        self._out = out
        self.started = time.monotonic()
        self.epochs_done: dict[str, int] = {}  # trial id: evaluated epochs
        self.best: dict[str, float] = {}
        self.ended = 0
        self.epochs_skipped = 0  # by trials that ended early (stopped by the scheduler, failed)

    def out(self, line: str) -> None:
        (self._out or print)(line)

    def _status(self) -> str:
        done = sum(self.epochs_done.values())
        left = time_left(time.monotonic() - self.started, done,
                         self.num_samples * self.epochs - done - self.epochs_skipped)
        eta = "" if left is None else f", ~{left / 60:.0f} min left"
        return f"[{self.ended}/{self.num_samples} trials done{eta}]"

    def on_trial_start(self, iteration, trials, trial, **info):
        values = _flat(trial.config)
        shown = ", ".join(f"{k.split('.')[-1]}={_short(values[k])}" for k in self.searched if k in values)
        self.out(f"{trial} started: {shown}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if ERROR_KEY in result or not result.get(EVALUATED_KEY):
            return
        value = result.get(self.metric)
        best = max(self.best.get(trial.trial_id, value), value)
        self.best[trial.trial_id] = best
        self.epochs_done[trial.trial_id] = result.get("epoch", 0)
        self.out(f"{trial} epoch {result.get('epoch')}/{self.epochs}: {self.metric} {value:.2f} "
                 f"(best {best:.2f}) {self._status()}")

    def _end(self, trial, how: str) -> None:
        self.ended += 1
        self.epochs_skipped += max(0, self.epochs - self.epochs_done.get(trial.trial_id, 0))
        self.out(f"{trial} {how} {self._status()}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "ended")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, f"failed (error file: {trial.error_file})")
