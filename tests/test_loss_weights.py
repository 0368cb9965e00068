"""The two QDTrack track losses (loss_track, loss_track_aux) have a weight each: read from the authors' config files,
used by source training and by DARTH's patch contrastive loss."""
import dataclasses
import textwrap

import pytest
import torch

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.darth import Darth
from darth_ray.data.mot import load_sequences
from darth_ray.io import InputError
from darth_ray.mmconfig import read_config
from darth_ray.models.qdtrack import load_checkpoint
from darth_ray.source_training import SourceTrainConfig, _load_pair_batch, qdtrack_losses
from test_adapt_loop import crafted_pseudo_labels, frames_of
from test_mmconfig import ADAPTERS, CONFIGS, SOURCE

WEIGHTS = "model = dict(track_head=dict(embed_head=dict(loss_track=dict(loss_weight=0.5), " \
          "loss_track_aux=dict(loss_weight=3.0))))"


def _derived(tmp_path, base, body: str):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent(f"""
        _base_ = ['{base}']
        {body}
    """))
    return path


@pytest.mark.skipif(not CONFIGS.is_dir(), reason="the authors' configs (shared/darth-configs) are absent")
def test_config_files_set_each_track_loss_weight(tmp_path):
    source = SOURCE / "qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py"
    adapter = ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py"
    published = {"loss_track_weight": 0.25, "loss_track_aux_weight": 1.0}
    assert {k: read_config(source).training[k] for k in published} == published
    assert {k: read_config(adapter).darth[k] for k in published} == published
    changed = {"loss_track_weight": 0.5, "loss_track_aux_weight": 3.0}
    assert {k: read_config(_derived(tmp_path, source, WEIGHTS)).training[k] for k in changed} == changed
    darth = read_config(_derived(tmp_path, adapter, WEIGHTS)).darth
    assert {k: darth[k] for k in changed} == changed
    assert DarthConfig.from_dict(darth).loss_track_aux_weight == 3.0
    # the losses' other settings are darth_ray's: another value stays an error naming the key
    margin = "model = dict(track_head=dict(embed_head=dict(loss_track_aux=dict(neg_margin=0.3))))"
    with pytest.raises(InputError, match="model.track_head.embed_head.loss_track_aux.neg_margin=0.3"):
        read_config(_derived(tmp_path, source, margin))


def _scaled(losses: dict, reference: dict) -> dict:
    return {k: losses[k].item() / reference[k].item() for k in ("loss_track", "loss_track_aux")}


def test_source_training_weights_each_track_loss_on_its_own(tiny):
    model, _ = load_checkpoint(tiny / "source.pt")
    seq = load_sequences(tiny / "bench" / "source", split="train")[0]
    images, _, targets = _load_pair_batch({seq.name: seq}, [(seq.name, 1, 3)], torch.zeros(1, dtype=torch.bool), [None])

    def losses(*weights):
        torch.manual_seed(0)  # the same proposals sampled for each
        return qdtrack_losses(model, images, targets, 1, *weights)

    published = losses()
    assert published["loss_track_aux"] > 0 and published["loss_track"] > 0
    assert _scaled(losses(0.5, 1.0), published) == pytest.approx({"loss_track": 2.0, "loss_track_aux": 1.0})
    assert _scaled(losses(0.25, 3.0), published) == pytest.approx({"loss_track": 1.0, "loss_track_aux": 3.0})
    assert SourceTrainConfig().loss_track_weight == 0.25 and SourceTrainConfig().loss_track_aux_weight == 1.0
    with pytest.raises(ValueError, match="loss_track_aux_weight must be >= 0"):
        SourceTrainConfig(loss_track_aux_weight=-1.0)


def test_darth_contrastive_loss_weights_each_track_loss_on_its_own(tiny, monkeypatch):
    monkeypatch.setattr(Darth, "pseudo_labels", crafted_pseudo_labels)
    source, _ = load_checkpoint(tiny / "source.pt")
    darth = Darth.from_source(source, DarthConfig())

    def contrastive(track: float, aux: float) -> float:
        darth.config = dataclasses.replace(DarthConfig(), loss_track_weight=track, loss_track_aux_weight=aux)
        return darth.losses(frames_of(tiny), torch.Generator().manual_seed(0))["loss_contrastive"].item()

    track_only, aux_only = contrastive(1.0, 0.0), contrastive(0.0, 1.0)
    assert track_only > 0 and aux_only > 0
    assert contrastive(0.25, 1.0) == pytest.approx(0.25 * track_only + aux_only, rel=1e-5)
    assert contrastive(0.5, 3.0) == pytest.approx(0.5 * track_only + 3.0 * aux_only, rel=1e-5)
    with pytest.raises(ValueError, match="loss_track_weight must be in"):
        DarthConfig(loss_track_weight=-0.1)
