"""The online protocol (adapt/online.py): every batch tracked, then adapted on once; episodic and continual reset;
results written, scored and resumed per sequence; bad combinations refused."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.method import Method
from darth_ray.adapt.online import OnlineRun
from darth_ray.cli import main
from darth_ray.data.mot import load_sequences
from darth_ray.eval.track import SequenceTracking, track_sequence
from darth_ray.models.qdtrack import load_checkpoint
from darth_ray.models.tracker import QuasiDenseTracker

LOW_THRESHOLDS = {"init_score_thr": 0.05, "obj_score_thr": 0.05}  # a random-init model still makes tracks


def night(tiny):
    return load_sequences(tiny / "bench" / "night", split="val")  # 2 sequences of 6 frames


def online_run(tiny, method="tent", reset="episodic", **settings) -> OnlineRun:
    config = DarthConfig(method=method, protocol="online", reset=reset, frames_per_batch=3, **settings)
    return OnlineRun(tiny / "source.pt", config, LOW_THRESHOLDS)


def checksum(model) -> float:
    return float(sum(p.double().sum() for p in model.state_dict().values() if p.is_floating_point()))


def test_each_batch_is_tracked_with_the_current_model_then_adapted_on_once(tiny, monkeypatch):
    sequences = night(tiny)
    frame_of = {seq.load_image(f).numpy().tobytes(): (seq.name, f) for seq in sequences
                for f in range(1, seq.num_frames + 1)}
    run = online_run(tiny)  # Tent: target BN statistics, then an entropy step
    events = []
    track, step, bn_stats = SequenceTracking.track, Method.step, Method.use_target_bn_statistics

    def tracked(self, frame_ids, images):
        events.append(("track", [frame_of[i.numpy().tobytes()] for i in images], checksum(self.model)))
        return track(self, frame_ids, images)

    def stepped(self, frames, generator):
        losses = step(self, frames, generator)
        events.append(("step", [frame_of[f.numpy().tobytes()] for f in frames], checksum(self.student)))
        return losses

    def statistics(self, batches, all_reduce_mean=None, restart=True):
        batches = list(batches)
        events.append(("bn", [frame_of[f.numpy().tobytes()] for b in batches for f in b], restart))
        return bn_stats(self, batches, all_reduce_mean, restart)

    monkeypatch.setattr(SequenceTracking, "track", tracked)
    monkeypatch.setattr(Method, "step", stepped)
    monkeypatch.setattr(Method, "use_target_bn_statistics", statistics)
    run.run(sequences)

    batches = [[(s.name, f) for f in range(first, first + 3)] for s in sequences for first in (1, 4)]
    assert [(kind, frames) for kind, frames, _ in events] == [
        (kind, batch) for batch in batches for kind in ("track", "bn", "step")]  # tracked first, in frame order
    stepped_frames = [f for kind, frames, _ in events if kind == "step" for f in frames]
    assert sorted(stepped_frames) == sorted(f for b in batches for f in b)  # every frame adapted on exactly once
    # BN statistics restart with the method (episodic: at each sequence), then average the frames streamed so far.
    assert [restart for kind, _, restart in events if kind == "bn"] == [True, False] * 2
    for i in (0, 2):  # the next batch of a sequence is tracked with the model as the last step left it
        after_step, next_track = events[3 * i + 2][2], events[3 * i + 3][2]
        assert next_track == after_step != events[3 * i][2]
    assert run.steps == 4 and set(run.results) == {s.name for s in sequences}


def test_tracker_state_carries_across_batches_as_when_tracking_the_whole_sequence(tiny):
    sequences = night(tiny)
    results = online_run(tiny, method="source").run(sequences)  # a model that never changes
    source, _ = load_checkpoint(tiny / "source.pt")
    for seq in sequences:
        whole = track_sequence(source, seq, QuasiDenseTracker(**LOW_THRESHOLDS), batch_size=4)
        # Tracks in both batches; a tracker restarted at the second one would forget the first's and number from 1.
        assert len(whole["ids"][whole["frames"] <= 3]) and len(whole["ids"][whole["frames"] >= 4])
        for key in whole:
            np.testing.assert_allclose(results[seq.name][key], whole[key], rtol=0, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("method", ["tent", "kd"])
def test_episodic_restarts_the_method_at_each_sequence_continual_carries_it_on(tiny, monkeypatch, method):
    source = load_checkpoint(tiny / "source.pt")[0].state_dict()
    starts = []  # the method at the first batch of each sequence: it, its networks' weights, its optimiser's state
    track = SequenceTracking.track

    def tracked(self, frame_ids, images):
        if frame_ids[0] == 1:
            state = {k: v for k, v in run.method.state_dict().items() if k in ("student", "teacher")}
            starts.append((run.method, {name: {k: v.clone() for k, v in weights.items()}
                                        for name, weights in state.items()}, dict(run.method.optimizer.state)))
        return track(self, frame_ids, images)

    def at_source(weights: dict) -> bool:
        return all(torch.equal(w[k], source[k]) for w in weights.values() for k in source)

    monkeypatch.setattr(SequenceTracking, "track", tracked)
    sequences = night(tiny)
    for reset in ("episodic", "continual"):
        starts.clear()
        run = online_run(tiny, method, reset, conf_thr=0.05, lr=0.05)
        run.run(sequences)
        (first, first_weights, first_optimizer), (second, second_weights, second_optimizer) = starts
        assert at_source(first_weights) and not first_optimizer
        if reset == "episodic":  # a new student (and teacher, optimiser) from the source model
            assert second is not first and at_source(second_weights) and not second_optimizer
            # so a Ray worker streaming only the second sequence makes the same tracks
            alone = online_run(tiny, method, reset, conf_thr=0.05, lr=0.05).run(sequences, names={sequences[1].name})
            name = sequences[1].name
            assert set(alone) == {name} and all(np.array_equal(v, run.results[name][k]) for k, v in alone[name].items())
        else:  # the same method, adapted on the first sequence
            assert second is first and not at_source(second_weights) and second_optimizer


def test_cli_online_writes_scores_and_records_its_results_and_refuses_bad_combinations(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["adapt", "--source", str(tiny / "source.pt"), "--target", str(tiny / "bench" / "night"), "--split",
            "val", "--out", str(out), "--method", "tent", "--frames-per-batch", "3", "--init-score-thr", "0.05",
            "--obj-score-thr", "0.05", "-q"]
    assert main(args + ["--protocol", "online"]) == 2
    err = capsys.readouterr().err
    assert "the online protocol needs reset episodic or continual, got None" in err and err.count("\n") == 1
    assert main(args + ["--reset", "continual"]) == 2
    assert "reset 'continual' applies to the online protocol only" in capsys.readouterr().err
    assert main(args + ["--protocol", "online", "--reset", "sometimes"]) == 2
    assert not out.exists()

    assert main(args + ["--protocol", "online", "--reset", "episodic"]) == 0
    provenance = json.loads((out / "darth_run.json").read_text())["provenance"]
    assert (provenance["protocol"], provenance["reset"]) == ("online", "episodic")
    names = [s.name for s in night(tiny)]
    assert sorted(p.name for p in (out / "results").iterdir()) == [f"{n}.txt" for n in names]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {*names, "COMBINED"} and 0 <= metrics["COMBINED"]["HOTA"] <= 100
    steps = [json.loads(line) for line in (out / "adapt_log.jsonl").read_text().splitlines()]
    assert [(s["sequence"], s["frames"]) for s in steps] == [(n, f) for n in names for f in ([1, 2, 3], [4, 5, 6])]
    assert not (out / "final.pt").exists()  # episodic: no single adapted model
    assert "Tent:" in capsys.readouterr().out
    assert main(args + ["--protocol", "online", "--reset", "continual"]) == 2
    assert "reset: episodic -> continual" in capsys.readouterr().err


def test_a_stopped_online_run_resumes_after_its_last_finished_sequence(tiny, tmp_path, monkeypatch):
    args = ["adapt", "--source", str(tiny / "source.pt"), "--target", str(tiny / "bench" / "night"), "--split",
            "val", "--method", "tent", "--protocol", "online", "--reset", "continual", "--frames-per-batch", "3",
            "--init-score-thr", "0.05", "--obj-score-thr", "0.05", "-q"]
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    streamed, stream = [], OnlineRun.stream

    def stops_in_the_second(self, index, sequence, *rest):
        streamed.append(sequence.name)
        if index == 1 and len(streamed) == 2:
            raise KeyboardInterrupt
        return stream(self, index, sequence, *rest)

    monkeypatch.setattr(OnlineRun, "stream", stops_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--out", str(tmp_path / "resumed")])
    assert main(args + ["--out", str(tmp_path / "resumed")]) == 0
    names = [s.name for s in night(tiny)]
    assert streamed == [names[0], names[1], names[1]]  # the first sequence is not streamed again
    straight, resumed = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "resumed"))
    assert resumed == straight  # the second sequence went on from the method the first one left
    for d in ("straight", "resumed"):
        assert (tmp_path / d / "final.pt").is_file()  # continual: the model after the last sequence


def test_continual_reset_runs_on_one_ray_worker_only():
    from darth_ray.distributed.train import check_online_workers

    online = DarthConfig(protocol="online", reset="continual").to_dict()
    with pytest.raises(ValueError, match="continual reset .* runs on 1 worker, not 2"):
        check_online_workers(online, 2)
    check_online_workers(online, 1)
    check_online_workers(DarthConfig(protocol="online", reset="episodic").to_dict(), 4)


def test_a_ray_worker_streams_its_sequences_and_reports_their_online_scores(tiny, monkeypatch):
    import ray.train

    from darth_ray.distributed.train import PROGRESS_FILE, TrainLoopConfig, stream_shard
    from darth_ray.eval.metrics import COMBINED, score_results

    reports = []

    def report(metrics, checkpoint=None):  # what the checkpoint holds while Ray copies it
        progress = checkpoint and json.loads((Path(checkpoint.path) / PROGRESS_FILE).read_text())
        reports.append((metrics, progress))

    monkeypatch.setattr(ray.train, "report", report)
    config = DarthConfig(method="adabn", protocol="online", reset="episodic", frames_per_batch=3)
    loop = TrainLoopConfig(source=str(tiny / "source.pt"), target=str(tiny / "bench" / "night"), split="val",
                           darth=config, tracker=LOW_THRESHOLDS)
    sequences = night(tiny)
    assert stream_shard(loop, sequences, rank=0, world=1, device="cpu") is None
    [(metrics, progress)] = reports  # one report, at the end, with the evaluation as its checkpoint
    expected = score_results(sequences, online_run(tiny, "adabn").run(sequences))[COMBINED]
    assert metrics["evaluated"] and metrics["step"] == 4
    assert metrics["HOTA"] == metrics["best_HOTA"] == progress["HOTA"] == pytest.approx(expected["HOTA"])


def test_tune_searches_the_protocol_and_the_reset(tiny):
    from ray import tune

    from darth_ray.distributed.train import TrainLoopConfig
    from darth_ray.distributed.tune import check_search_space

    online = DarthConfig(protocol="online", reset="episodic")
    loop = TrainLoopConfig(source=str(tiny / "source.pt"), target=str(tiny / "bench" / "night"), darth=online)
    check_search_space(loop, {"darth": {"reset": tune.choice(["episodic", "continual"])}})
    with pytest.raises(ValueError, match="search space darth.reset: 'sometimes' is out of range"):
        check_search_space(loop, {"darth": {"reset": tune.choice(["episodic", "sometimes"])}})
    offline = {**loop.to_dict(), "darth": {"protocol": "offline", "reset": None}}
    assert TrainLoopConfig.from_dict(offline).darth.protocol == "offline"
