"""The Tune console: one line per trial event, with trials done / total and the time left."""
from types import SimpleNamespace

from darth_ray.distributed.progress import ConsoleProgress, time_left


class FakeTrial(SimpleNamespace):
    def __str__(self):
        return self.trial_id


def test_time_left_scales_the_time_per_trial_epoch_so_far():
    assert time_left(elapsed=60.0, epochs_done=0, epochs_left=8) is None
    assert time_left(elapsed=60.0, epochs_done=2, epochs_left=6) == 180.0
    assert time_left(elapsed=60.0, epochs_done=2, epochs_left=-1) == 0.0


def test_a_line_per_trial_event_with_its_searched_values_best_and_progress(monkeypatch):
    lines = []
    clock = iter([0.0, 100.0, 200.0, 300.0])
    monkeypatch.setattr("darth_ray.distributed.progress.time.monotonic", lambda: next(clock))
    progress = ConsoleProgress("HOTA", ["darth.lr", "darth.conf_thr"], num_samples=2, epochs=2, out=lines.append)
    a = FakeTrial(trial_id="a", config={"darth": {"lr": 0.002, "conf_thr": 0.7, "epochs": 2}, "split": "val"})
    progress.on_trial_start(0, [], a)
    assert lines[-1] == "a started: lr=0.002, conf_thr=0.7"
    progress.on_trial_result(0, [], a, {"step": 3, "epoch": 0, "HOTA": float("nan"), "evaluated": False})
    assert len(lines) == 1  # a step without an evaluation prints nothing
    progress.on_trial_result(0, [], a, {"step": 6, "epoch": 1, "HOTA": 50.0, "evaluated": True})
    # 1 trial-epoch done in 100 s; 3 of the 4 left
    assert lines[-1] == "a epoch 1/2: HOTA 50.00 (best 50.00) [0/2 trials done, ~5 min left]"
    progress.on_trial_result(0, [], a, {"step": 12, "epoch": 2, "HOTA": 40.0, "evaluated": True})
    assert lines[-1].startswith("a epoch 2/2: HOTA 40.00 (best 50.00) [0/2")
    b = FakeTrial(trial_id="b", config={"darth": {"lr": 0.001}}, error_file="/x/error.txt")
    progress.on_trial_error(0, [], b)  # failed before its first epoch: its 2 epochs will not run
    assert lines[-1] == "b failed (error file: /x/error.txt) [1/2 trials done, ~0 min left]"


def test_it_pickles_after_print_was_replaced(monkeypatch, capsys):
    """Tune pickles its callbacks with the experiment state; Ray Train replaces builtins.print in the driver."""
    import builtins
    import pickle

    original = builtins.print
    monkeypatch.setattr(builtins, "print", lambda *a, **k: original(*a, **k))
    progress = pickle.loads(pickle.dumps(ConsoleProgress("HOTA", [], num_samples=1, epochs=1)))
    progress.on_trial_start(0, [], FakeTrial(trial_id="a", config={}))
    assert capsys.readouterr().out == "a started: \n"
