"""The test-time adaptation methods by name (DarthConfig.method, `darth-ray adapt --method`). A new method is a
file in darth_ray/adapt/ with a subclass of adapt/method.py's Method, and one line here."""
from __future__ import annotations

from darth_ray.adapt.adabn import AdaBN
from darth_ray.adapt.darth import Darth
from darth_ray.adapt.kd import KD
from darth_ray.adapt.mean_teacher import MeanTeacher
from darth_ray.adapt.method import Method
from darth_ray.adapt.source_only import SourceOnly
from darth_ray.adapt.tent import Tent

METHODS: dict[str, type[Method]] = {
    "source": SourceOnly,
    "adabn": AdaBN,
    "tent": Tent,
    "mean_teacher": MeanTeacher,
    "kd": KD,
    "darth": Darth,
}
