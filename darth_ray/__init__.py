"""darth_ray: DARTH test-time adaptation for multi-object tracking, run as Ray Train/Tune experiments."""

__version__ = "0.1.0"
