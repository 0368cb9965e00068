"""Frames decoded ahead in background threads, without changing which frames a step sees."""
import threading

import torch

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.darth import Darth
from darth_ray.adapt.loop import AdaptationRun
from darth_ray.data.mot import load_sequences
from darth_ray.data.prefetch import Prefetcher


def recording_loader():
    calls = []

    def load(i):
        calls.append((i, threading.current_thread().name))
        return torch.full((1, 3, 2, 2), i, dtype=torch.uint8)

    return load, calls


def test_prefetcher_returns_what_load_gives_in_any_order_and_reads_ahead():
    load, calls = recording_loader()
    with Prefetcher(load, "cpu", count=6, depth=2) as ahead:
        for i in (0, 1, 2, 5, 3, 3, 0):  # in order, a jump, back, a repeat, a restart
            assert int(ahead.get(i)[0, 0, 0, 0]) == i
        loaded_ahead = {i for i, thread in calls if thread.startswith("frames")}
    assert loaded_ahead >= {1, 2}  # read ahead in the pool's threads (3 and 4 may be cancelled by the jump)
    assert max(i for i, _ in calls) == 5  # never past count
    assert (0, threading.current_thread().name) in calls  # nothing in flight: loaded at once


def test_adaptation_steps_see_the_same_frames_decoded_in_background(tiny, monkeypatch):
    sequences = load_sequences(tiny / "bench" / "night", split="val")
    frames = [(s.name, f) for s in sequences for f in range(1, s.num_frames + 1)]
    run = AdaptationRun(tiny / "source.pt", sequences, frames, DarthConfig(epochs=2, frames_per_batch=3))
    threads, seen = set(), []
    for seq in sequences:
        original = seq.load_image
        monkeypatch.setattr(seq, "load_image", lambda f, original=original: threads.add(
            threading.current_thread().name) or original(f))
    monkeypatch.setattr(Darth, "step", lambda self, batch, generator: seen.append(batch.clone()) or {
        "loss_total": 0.0})
    for _ in range(run.total_steps):
        run.run_step()
    assert any(name.startswith("frames") for name in threads)  # decoded off the training thread
    for step, batch in enumerate(seen):  # exactly the frames batch_frames(step) names, in its order
        expected = torch.stack([run.sequences[name].load_image(f) for name, f in run.batch_frames(step)])
        assert torch.equal(batch, expected), step
