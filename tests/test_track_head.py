import math

import pytest
import torch
from torch.nn import functional as F

from darth_ray.models.track_head import QuasiDenseEmbedHead
from darth_ray.models.track_losses import (
    SampledBoxes,
    assign_and_sample,
    l2_margin_loss,
    multi_pos_cross_entropy,
    track_losses,
)


# ---------------------------------------------------------------- head


def test_head_state_dict_names_match_mmtrack_embed_head():
    head = QuasiDenseEmbedHead()
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    expected = {}
    for i in range(4):
        expected[f"convs.{i}.conv.weight"] = (256, 256, 3, 3)  # no conv bias: GN follows
        expected[f"convs.{i}.gn.weight"] = (256,)
        expected[f"convs.{i}.gn.bias"] = (256,)
    expected["fcs.0.weight"] = (1024, 256 * 7 * 7)
    expected["fcs.0.bias"] = (1024,)
    expected["fc_embed.weight"] = (256, 1024)
    expected["fc_embed.bias"] = (256,)
    assert shapes == expected
    assert head.convs[0].gn.num_groups == 32


def test_head_forward_is_conv_gn_relu_flatten_fc_relu_embed():
    torch.manual_seed(0)
    head = QuasiDenseEmbedHead(in_channels=8, num_convs=2, conv_channels=8, fc_dim=16, embed_dim=4, roi_size=3, gn_groups=2)
    x = torch.randn(5, 8, 3, 3)
    sd = head.state_dict()
    y = x
    for i in range(2):
        y = F.conv2d(y, sd[f"convs.{i}.conv.weight"], padding=1)
        y = F.relu(F.group_norm(y, 2, sd[f"convs.{i}.gn.weight"], sd[f"convs.{i}.gn.bias"]))
    y = F.relu(y.reshape(5, -1) @ sd["fcs.0.weight"].t() + sd["fcs.0.bias"])  # channel-major flatten
    y = y @ sd["fc_embed.weight"].t() + sd["fc_embed.bias"]  # no ReLU on the embedding
    out = head(x)
    assert out.shape == (5, 4)
    torch.testing.assert_close(out, y)
    assert (out < 0).any()


def test_head_default_shapes_init_and_empty_batch():
    torch.manual_seed(0)
    head = QuasiDenseEmbedHead()
    assert head(torch.randn(3, 256, 7, 7)).shape == (3, 256)
    assert head(torch.zeros(0, 256, 7, 7)).shape == (0, 256)
    assert abs(head.fc_embed.weight.std().item() - 0.01) < 1e-3
    assert torch.all(head.fc_embed.bias == 0) and torch.all(head.fcs[0].bias == 0)
    bound = math.sqrt(6 / (256 * 49 + 1024))  # xavier uniform
    assert head.fcs[0].weight.abs().max().item() <= bound
    assert head.fcs[0].weight.abs().max().item() > 0.9 * bound
    # kaiming normal, fan_out = 256 * 9
    assert abs(head.convs[0].conv.weight.std().item() - math.sqrt(2 / (256 * 9))) < 2e-3
    with pytest.raises(ValueError, match="roi_feats"):
        head(torch.zeros(2, 128, 7, 7))


# ---------------------------------------------------------------- multi-positive cross entropy


def _mmtrack_multi_pos_ce_rows(pred, label):
    """Direct transcription of mmtrack's pairwise formulation, as an independent reference."""
    pos_inds = label >= 1
    neg_inds = label == 0
    pred_pos = pred * pos_inds.float()
    pred_neg = pred * neg_inds.float()
    pred_pos[neg_inds] = pred_pos[neg_inds] + float("inf")
    pred_neg[pos_inds] = pred_neg[pos_inds] + float("-inf")
    _pos_expand = torch.repeat_interleave(pred_pos, pred.shape[1], dim=1)
    _neg_expand = pred_neg.repeat(1, pred.shape[1])
    x = F.pad(_neg_expand - _pos_expand, (0, 1), "constant", 0)
    return torch.logsumexp(x, dim=1)


def test_multi_pos_cross_entropy_hand_values_2x3():
    s = torch.tensor([[2.0, 1.0, 0.0], [0.5, 3.0, -1.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    row0 = math.log(1 + math.exp(1 - 2) + math.exp(0 - 2))
    row1 = math.log(1 + math.exp(-1 - 0.5) + math.exp(-1 - 3))
    loss = multi_pos_cross_entropy(s, t, torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # the weight masks rows and the average is over the weight sum
    loss = multi_pos_cross_entropy(s, t, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(row0, rel=1e-5)


def test_multi_pos_cross_entropy_rows_without_pairs_are_zero_and_grad_finite():
    s = torch.tensor([[2.0, 1.0, 0.0], [0.5, 3.0, -1.0], [1.0, 1.0, 1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # row1 no pos, row2 no neg
    loss = multi_pos_cross_entropy(s, t, torch.tensor([1.0, 0.0, 1.0]))
    row0 = math.log(1 + math.exp(-1) + math.exp(-2))
    assert loss.item() == pytest.approx(row0 / 2, rel=1e-5)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    assert torch.all(s.grad[1:] == 0)
    # d row0 / d s_pos = -(e^-1 + e^-2) / (1 + e^-1 + e^-2), halved by the weight sum
    z = 1 + math.exp(-1) + math.exp(-2)
    assert s.grad[0, 0].item() == pytest.approx(-(z - 1) / z / 2, rel=1e-5)


def test_multi_pos_cross_entropy_equals_mmtrack_pairwise_form():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 9, generator=g) * 3
    t = (torch.rand(6, 9, generator=g) < 0.3).float()
    t[0] = 0  # a row without positives
    w = (t.sum(1) > 0).float()
    s1 = s.clone().requires_grad_()
    s2 = s.clone().requires_grad_()
    ours = multi_pos_cross_entropy(s1, t, w)
    ref = (_mmtrack_multi_pos_ce_rows(s2, t) * w).sum() / w.sum()
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)


# ---------------------------------------------------------------- L2 margin loss

COS_3x4 = [[0.9, 0.3, -0.2, 0.05], [0.2, 0.8, 0.6, 0.15], [0.4, 0.12, 0.7, 0.95]]


def test_l2_margin_loss_no_mining_3x4():
    cos = torch.tensor(COS_3x4)
    t = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    cos_before, t_before = cos.clone(), t.clone()
    # 9 negatives / 3 positives is not > 3: all 12 kept. Negatives lose 0.1 then clamp to [0, 1]:
    # negs 0.2,0,0 | 0.1,0.5,0.05 | 0.3,0.02,0.85 ; positives 0.9, 0.8, 0.7 (targets 1).
    pos = 0.1**2 + 0.2**2 + 0.3**2
    neg = 0.2**2 + 0.1**2 + 0.5**2 + 0.05**2 + 0.3**2 + 0.02**2 + 0.85**2
    loss = l2_margin_loss(cos, t)
    assert loss.item() == pytest.approx((pos + neg) / 12, rel=1e-5)
    assert torch.equal(cos, cos_before) and torch.equal(t, t_before)  # inputs untouched


def test_l2_margin_loss_hard_mining_keeps_top_3x_negatives():
    cos = torch.tensor(COS_3x4, requires_grad=True)
    t = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    # 10 negatives > 3 * 2 positives: keep the 6 costliest negatives.
    # neg costs: 0.04,0,0 | 0.01,0.25,0.0025 | 0.09,0.0004,0.36,0.7225
    top6 = 0.7225 + 0.36 + 0.25 + 0.09 + 0.04 + 0.01
    pos = 0.1**2 + 0.2**2
    loss = l2_margin_loss(cos, t)
    assert loss.item() == pytest.approx((top6 + pos) / 8, rel=1e-5)
    loss.backward()
    # kept negative: d/dx (x - 0.1)^2 / 8 ; dropped (cost 0.0025) and clamped entries: 0
    assert cos.grad[2, 3].item() == pytest.approx(2 * 0.85 / 8, rel=1e-5)
    assert cos.grad[1, 3].item() == 0.0
    assert cos.grad[0, 2].item() == 0.0
    # without mining all 12 entries count
    loss_all = l2_margin_loss(cos.detach(), t, hard_mining=True, neg_pos_ub=-1)
    all_negs = 0.04 + 0.01 + 0.25 + 0.0025 + 0.09 + 0.0004 + 0.36 + 0.7225
    assert loss_all.item() == pytest.approx((all_negs + pos) / 12, rel=1e-5)


def test_l2_margin_loss_margins_and_random_subset():
    cos = torch.tensor([[0.9, 0.3], [0.05, 0.5]])
    t = torch.tensor([[1, 0], [0, 1]])
    # pos margin 0.2: 0.7 and 0.3 -> costs 0.09, 0.49; neg margin 0.25: 0.05, 0 -> 0.0025, 0
    loss = l2_margin_loss(cos, t, pos_margin=0.2, neg_margin=0.25)
    assert loss.item() == pytest.approx((0.09 + 0.49 + 0.0025) / 4, rel=1e-5)
    # random negative subset (hard_mining=False): 1 positive, 3 negatives kept out of 5
    cos = torch.tensor([[0.9, 0.6, 0.6, 0.6, 0.6, 0.6]])
    t = torch.tensor([[1, 0, 0, 0, 0, 0]])
    loss = l2_margin_loss(cos, t, hard_mining=False, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx((0.01 + 3 * 0.25) / 4, rel=1e-5)


def test_l2_margin_loss_without_positives_is_zero():
    cos = torch.tensor([[0.5, 0.7]], requires_grad=True)
    loss = l2_margin_loss(cos, torch.zeros(1, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(cos.grad == 0)


# ---------------------------------------------------------------- track_losses


def _samples(ids, is_pos):
    ids = torch.tensor(ids, dtype=torch.long)
    return SampledBoxes(boxes=torch.zeros(len(ids), 4), ids=ids, is_pos=torch.tensor(is_pos, dtype=torch.bool))


def test_track_losses_hand_values_and_empty_image():
    # image 0: key positives ids (1, 2) + one negative; ref samples ids (2, 1, 0)
    key0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], requires_grad=True)
    ref0 = torch.tensor([[0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    ks0 = _samples([1, 2, 0], [True, True, False])
    rs0 = _samples([2, 1, 0], [True, True, False])
    # image 1: no key positives at all
    key1 = torch.tensor([[3.0, 1.0]], requires_grad=True)
    ref1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    ks1 = _samples([0], [False])
    rs1 = _samples([4, 0], [True, False])

    losses = track_losses([key0, key1], [ks0, ks1], [ref0, ref1], [rs0, rs1])
    # dots: row id1 [0, 1, -1] (pos 1); row id2 [2, 1, 0] (pos 2): both log(1 + e^-1 + e^-2)
    ce = math.log(1 + math.exp(-1) + math.exp(-2))
    # cosines: row id1 [0, .7071, -1], row id2 [1, .7071, 0]; negatives -0.1 and clamp
    l2 = ((1 - 1 / math.sqrt(2)) ** 2 + 0 + (1 / math.sqrt(2) - 0.1) ** 2) / 6
    assert losses["loss_track"].item() == pytest.approx(0.25 * ce / 2, rel=1e-5)
    assert losses["loss_track_aux"].item() == pytest.approx(1.0 * l2 / 2, rel=1e-5)
    (losses["loss_track"] + losses["loss_track_aux"]).backward()
    assert torch.isfinite(key0.grad).all() and key0.grad[:2].abs().sum() > 0
    assert torch.all(key0.grad[2] == 0)  # key negatives are not rows
    assert torch.all(key1.grad == 0) and torch.all(ref1.grad == 0)

    # embeddings of only the positives give the same result
    only_pos = track_losses([key0[:2].detach()], [ks0], [ref0.detach()], [rs0])
    assert only_pos["loss_track"].item() == pytest.approx(0.25 * ce, rel=1e-5)


def test_track_losses_all_empty_is_zero_and_backward_works():
    key = torch.zeros(0, 8, requires_grad=True)
    ref = torch.randn(3, 8, requires_grad=True)
    no_ref = torch.zeros(0, 8, requires_grad=True)
    key2 = torch.randn(2, 8, requires_grad=True)
    losses = track_losses(
        [key, key2],
        [_samples([], []), _samples([3, 0], [True, False])],
        [ref, no_ref],
        [_samples([0, 0, 0], [False] * 3), _samples([], [])],
    )
    for value in losses.values():
        assert value.item() == 0.0 and value.requires_grad
    sum(losses.values()).backward()
    assert torch.all(ref.grad == 0) and torch.all(key2.grad == 0)


# ---------------------------------------------------------------- assign_and_sample


def test_assign_and_sample_iou_thresholds_gt_added_and_ids():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1.0 -> positive
            [0.0, 0.0, 10.0, 8.0],  # IoU 0.8 -> positive
            [0.0, 0.0, 10.0, 6.0],  # IoU 0.6 -> ignored (between 0.5 and 0.7)
            [0.0, 0.0, 10.0, 4.0],  # IoU 0.4 -> negative
            [50.0, 50.0, 60.0, 60.0],  # IoU 0 -> negative
        ]
    )
    s = assign_and_sample(proposals, gt, torch.tensor([7]))
    assert s.is_pos.tolist() == [True, True, True, False, False]
    assert s.ids.tolist() == [7, 7, 7, 0, 0]
    # positives first: the gt itself (prepended), then proposals 0 and 1; negatives 3 and 4
    torch.testing.assert_close(s.boxes, torch.cat([gt, proposals[[0, 1, 3, 4]]]))

    s = assign_and_sample(proposals, gt, torch.tensor([7]), add_gt_as_proposals=False)
    torch.testing.assert_close(s.boxes, proposals[[0, 1, 3, 4]])


def test_assign_and_sample_negative_cap_and_no_gt():
    g = torch.Generator().manual_seed(0)
    far = torch.tensor([[100.0 + 20 * i, 100.0, 110.0 + 20 * i, 110.0] for i in range(10)])
    s = assign_and_sample(far, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([3]), generator=g)
    assert s.is_pos.sum() == 1 and (~s.is_pos).sum() == 3  # neg:pos <= 3
    # no ground truth: everything negative, capped at 3 * max(1, 0)
    s = assign_and_sample(far, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), generator=g)
    assert s.boxes.shape == (3, 4) and not s.is_pos.any() and torch.all(s.ids == 0)
    assert all(any(torch.equal(b, f) for f in far) for b in s.boxes)
    # nothing at all
    s = assign_and_sample(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert s.boxes.shape == (0, 4) and s.ids.numel() == 0
    with pytest.raises(ValueError, match="gt_ids"):
        assign_and_sample(far, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0]))


def test_assign_and_sample_instance_balanced_positives():
    big = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    small = torch.tensor([[200.0, 200.0, 210.0, 210.0]])
    # 20 near-copies of the big box (IoU >= 0.9) and 1 copy of the small one, plus negatives
    big_props = torch.tensor([[0.0, 0.0, 100.0, 100.0 - i * 0.5] for i in range(20)])
    negs = torch.tensor([[400.0 + 20 * i, 0.0, 410.0 + 20 * i, 10.0] for i in range(30)])
    proposals = torch.cat([big_props, small, negs])
    for seed in range(5):
        s = assign_and_sample(
            proposals, torch.cat([big, small]), torch.tensor([11, 22]), num=16,
            generator=torch.Generator().manual_seed(seed),
        )
        # 8 positives: per-instance quota round(8/2)+1 = 5 for id 11, both id-22 boxes, 1 top-up
        assert s.is_pos.sum() == 8 and (~s.is_pos).sum() == 8
        assert (s.ids == 22).sum() == 2 and (s.ids == 11).sum() == 6
    a = assign_and_sample(proposals, torch.cat([big, small]), torch.tensor([11, 22]), num=16,
                          generator=torch.Generator().manual_seed(3))
    b = assign_and_sample(proposals, torch.cat([big, small]), torch.tensor([11, 22]), num=16,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.boxes, b.boxes)
