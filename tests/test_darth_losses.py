import pytest
import torch

from darth_ray.adapt.losses import roi_consistency_loss, rpn_consistency_loss


def _rpn_case():
    """Two FPN levels, hand-made so that some anchors are masked out of the delta term."""
    # Level 0: A=2 anchors at one location. teacher - student = (1.0, 0.05): only anchor 0 passes the 0.1 margin.
    s_logit0 = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)
    t_logit0 = torch.tensor([1.0, 0.05]).view(1, 2, 1, 1)
    s_delta0 = torch.zeros(1, 8, 1, 1)
    s_delta0[0, 0] = 1.0  # anchor 0 (channels 0..3): counted
    s_delta0[0, 4] = 3.0  # anchor 1 (channels 4..7): masked out
    t_delta0 = torch.zeros(1, 8, 1, 1)
    # Level 1: A=1 at 1x2 locations. teacher - student = (0.5, 0.05): location 0 counted, location 1 masked.
    s_logit1 = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    t_logit1 = torch.tensor([0.5, 1.05]).view(1, 1, 1, 2)
    s_delta1 = torch.zeros(1, 4, 1, 2)
    s_delta1[0, 1, 0, 0] = 2.0  # location 0: counted (4)
    s_delta1[0, 2, 0, 1] = 5.0  # location 1: masked out
    t_delta1 = torch.zeros(1, 4, 1, 2)
    t_delta1[0, 1, 0, 0] = 1.0  # location 0 error: (2 - 1)^2 = 1
    for t in (s_logit0, s_logit1, s_delta0, s_delta1, t_logit0, t_logit1, t_delta0, t_delta1):
        t.requires_grad_()  # the teacher's too: the loss must not let gradients reach them
    return ([s_logit0, s_logit1], [s_delta0, s_delta1]), ([t_logit0, t_logit1], [t_delta0, t_delta1])


def test_rpn_loss_hand_computed_with_masked_anchors():
    (s_logits, s_deltas), (t_logits, t_deltas) = _rpn_case()
    loss = rpn_consistency_loss(s_logits, s_deltas, t_logits, t_deltas)
    logit_sq = (1.0 + 0.05 ** 2) + (0.5 ** 2 + 0.05 ** 2)
    delta_sq = 1.0 + 1.0  # level 0 anchor 0: 1^2; level 1 location 0: (2 - 1)^2; the 3 and 5 are masked
    num_logits = 2 + 2
    assert loss.item() == pytest.approx((logit_sq + delta_sq) / num_logits)


def test_rpn_loss_mask_margin_and_gradients():
    (s_logits, s_deltas), (t_logits, t_deltas) = _rpn_case()
    # Margin 0 lets level 1 location 1 in (difference 0.05): its delta error 5^2 is added; anchor 1 of
    # level 0 (0.05) too: 3^2.
    loss = rpn_consistency_loss(s_logits, s_deltas, t_logits, t_deltas, delta_mask_margin=0.0)
    logit_sq = (1.0 + 0.05 ** 2) + (0.5 ** 2 + 0.05 ** 2)
    assert loss.item() == pytest.approx((logit_sq + 2.0 + 9.0 + 25.0) / 4)
    loss.backward()
    assert all(t.grad is None for t in t_logits + t_deltas)
    # d/ds (s - t)^2 / 4 = (s - t) / 2
    assert s_logits[0].grad.flatten().tolist() == pytest.approx([-0.5, -0.025])
    assert s_deltas[1].grad[0, 2, 0, 1].item() == pytest.approx(2 * 5.0 / 4)


def test_rpn_loss_no_anchors_is_a_connected_zero():
    s_logit = torch.zeros(2, 3, 0, 0, requires_grad=True)
    s_delta = torch.zeros(2, 12, 0, 0, requires_grad=True)
    loss = rpn_consistency_loss([s_logit], [s_delta], [torch.zeros(2, 3, 0, 0)], [torch.zeros(2, 12, 0, 0)])
    assert loss.item() == 0.0
    loss.backward()
    assert s_logit.grad is not None and s_delta.grad is not None


def test_rpn_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        rpn_consistency_loss([torch.zeros(1, 3, 2, 2)], [torch.zeros(1, 12, 2, 2)],
                             [torch.zeros(1, 3, 2, 3)], [torch.zeros(1, 12, 2, 3)])


def test_roi_loss_hand_computed():
    s_cls = torch.tensor([[1.0, 3.0], [0.0, 0.0]], requires_grad=True)  # centred: [-1, 1], [0, 0]
    t_cls = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)  # centred: [0, 0], [1, -1]
    s_deltas = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]], requires_grad=True)
    t_deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], requires_grad=True)
    loss = roi_consistency_loss(s_cls, s_deltas, t_cls, t_deltas)
    # logits: 1 + 1 + 1 + 1; deltas: 1 + 1; divided by N * C = 4
    assert loss.item() == pytest.approx(6.0 / 4)
    loss.backward()
    assert t_cls.grad is None and t_deltas.grad is None
    assert s_deltas.grad[0].tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0])


def test_roi_loss_ignores_a_constant_added_to_a_row_of_logits():
    s_cls = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    t_cls = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    deltas = torch.zeros(2, 4)
    base = roi_consistency_loss(s_cls, deltas, t_cls, deltas)
    shifted = roi_consistency_loss(s_cls + torch.tensor([[7.0], [-2.5]]), deltas,
                                   t_cls + torch.tensor([[0.0], [100.0]]), deltas)
    assert shifted.item() == pytest.approx(base.item())
    assert base.item() == pytest.approx(4.0 / 4)


def test_roi_loss_without_proposals_is_a_connected_zero():
    s_cls = torch.zeros(0, 2, requires_grad=True)
    s_deltas = torch.zeros(0, 4, requires_grad=True)
    loss = roi_consistency_loss(s_cls, s_deltas, torch.zeros(0, 2), torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert s_cls.grad.shape == (0, 2) and s_deltas.grad.shape == (0, 4)
