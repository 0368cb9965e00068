"""KD only (the paper's ablation without the patch contrastive loss): DARTH's detection consistency between student
(student view) and EMA teacher (teacher view), on the RPN and the RoI head.

Not the authors' KDQDTrack (darth/models/adapters/kd_qdtrack.py): that one distils on labelled frames, teacher and
student on the same image, and adds QDTrack's track losses on the ground truth; it needs labels, so it is no
test-time method.

loss_total = rpn_weight * loss_rpn + roi_weight * loss_roi; views, pseudo-labels, EMA and optimiser as DARTH's
(adapt/darth.py), so for the same frames and generator its two losses are DARTH's.
"""
from __future__ import annotations

from darth_ray.adapt.darth import Darth


class KD(Darth):
    title = "KD"
    contrastive = False
