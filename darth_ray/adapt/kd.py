"""KD only (the authors' KDQDTrack): DARTH's detection consistency between student (student view) and EMA teacher
(teacher view), on the RPN and the RoI head, without the patch contrastive loss.

loss_total = rpn_weight * loss_rpn + roi_weight * loss_roi; views, pseudo-labels, EMA and optimiser as DARTH's
(adapt/darth.py), so for the same frames and generator its two losses are DARTH's.
"""
from __future__ import annotations

from darth_ray.adapt.darth import Darth


class KD(Darth):
    title = "KD"
    contrastive = False
