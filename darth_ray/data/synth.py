"""An embedded DanceTrack-like benchmark with domain shifts, so darth_ray runs end to end with no dataset.

Each sequence is a *scene*: a static dance-floor background, a few look-alike people (head, torso, arms, legs,
sharing 2-3 costumes) dancing on smooth non-linear paths, crossing and occluding each other, some walking in or
out of the frame, and a little camera jitter. A scene is fixed by (seed, split, index) alone, so the same scenes
are rendered in every domain and per-domain numbers are comparable; a domain only changes appearance:

- source:      the clean rendering.
- night:       dark (gamma + gain), blue colour cast, lower contrast, vignette.
- fog:         slight blur, then a blend toward a bluish grey that is denser toward the top (far) of the frame.
- noise_blur:  camera motion blur along one direction per sequence, plus Gaussian sensor noise (luma + chroma).
- texture:     the background is overlaid with a busy, high-frequency pattern in costume-like colours.

Those four change pixels, and re-estimating BatchNorm statistics on the target frames (AdaBN) already undoes most
of them. The scene domains change what is filmed instead (the same scenes, shifted; each has its own ground
truth), which no statistics of the pixels can undo:

- closeup:     the camera is closer: people and balls are 2.2x larger (more of them cut by the frame edges).
- far:         the camera is farther away: people and balls are half as large.
- crowd:       2.8x as many dancers in the same costumes: denser, more and longer occlusions.
- uniform:     everyone wears one costume never seen in the source domain, with the same skin and hair.
- fast:        everyone dances and moves 3.4x faster (larger displacements between frames).

Every shift is the identity at `shift_strength` 0 and grows with it (the factors above are at the default 0.6). Output (MOTChallenge/DanceTrack layout):

    OUT/<domain>/{train,val}/<seq>/img1/00000001.jpg, gt/gt.txt (frame,id,x,y,w,h,1,1,1), seqinfo.ini
    OUT/<domain>/{train,val}_seqmap.txt
    OUT/benchmark.json   (written last: its presence marks a complete benchmark and records the parameters)

With `balls` > 0 a second kind of object bounces around the floor (coloured balls, ids after the people's), and
the benchmark has two classes, CLASSES: gt.txt's class column is 1 for people and 2 for balls (in MOTChallenge
terms a distractor, so the folder still scores pedestrians alone), and both classes are in mmtrack's COCO-video
files, which `load_dataset` reads with their class names (image root `OUT/<domain>/<split>`):

    OUT/<domain>/annotations/{train,val}_cocofmt.json

Ground-truth boxes are the full geometric extent of a person (also while occluded, as in DanceTrack), clipped to
the image, and present only while part of the person is inside the image.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from darth_ray.io import atomic_write_json, atomic_write_text, dataclass_from_dict

SOURCE_DOMAIN = "source"
PIXEL_DOMAINS = ("night", "fog", "noise_blur", "texture")
SCENE_DOMAINS = ("closeup", "far", "crowd", "uniform", "fast")
DEFAULT_TARGET_DOMAINS = PIXEL_DOMAINS + SCENE_DOMAINS
KNOWN_DOMAINS = (SOURCE_DOMAIN,) + DEFAULT_TARGET_DOMAINS
DOMAIN_DESCRIPTIONS = {
    "source": "clean rendering",
    "night": "dark (gamma + gain), blue colour cast, lower contrast, vignette",
    "fog": "slight blur, blend toward bluish grey, denser toward the top of the frame",
    "noise_blur": "camera motion blur (one direction per sequence) + Gaussian luma and chroma sensor noise",
    "texture": "busy high-frequency pattern (checkerboard, stripes, confetti) over the background",
    "closeup": "camera closer: people and balls 1 + 2s times larger",
    "far": "camera farther away: people and balls 1 - 0.8s times as large",
    "crowd": "1 + 3s times as many dancers, in the scene's costumes",
    "uniform": "everyone in one costume unseen in the source domain, same skin and hair",
    "fast": "dancing and moving 1 + 4s times faster",
}
SPLITS = ("train", "val")
BENCHMARK_FILE = "benchmark.json"
BENCHMARK_FORMAT = "darth_ray.synth"
BENCHMARK_VERSION = 2  # bump whenever rendering changes: caches regenerate
CLASSES = ("pedestrian", "ball")  # class k + 1 in gt.txt and the COCO-video category ids

# Sizes below are designed for the default 320x192 frame and scale with the frame height.
_REFERENCE_HEIGHT = 192
_HORIZON = 0.40          # wall/floor boundary, as a fraction of the height
_SPLIT_CODES = {"train": 1, "val": 2}
_SUBPIXEL_BITS = 4       # cv2 drawing `shift`: coordinates in 1/16 px
_SUBPIXEL = 1 << _SUBPIXEL_BITS

# Costumes as BGR (top, bottom). A scene uses 2-3 of them, so several people always wear the same one.
_COSTUMES = (
    ((40, 40, 45), (30, 30, 35)),        # all black
    ((235, 235, 235), (45, 40, 40)),     # white top, black trousers
    ((50, 50, 190), (60, 45, 40)),       # red top, dark trousers
    ((150, 90, 40), (170, 160, 150)),    # blue top, light grey trousers
    ((60, 150, 70), (50, 50, 55)),       # green top
    ((60, 190, 225), (90, 60, 40)),      # yellow top, navy trousers
    ((140, 60, 140), (40, 40, 40)),      # purple top
    ((200, 200, 200), (200, 200, 200)),  # all light grey
)
_UNIFORM = ((190, 190, 40), (40, 130, 190))  # teal top, ochre trousers: in no source costume
_SKIN_TONES = ((150, 185, 225), (110, 145, 190), (75, 100, 140))
_HAIR_COLOURS = ((25, 25, 30), (30, 50, 80), (60, 90, 130))
_BALL_COLOURS = ((0, 140, 255), (40, 220, 255), (200, 60, 240), (60, 60, 230))  # BGR: orange, yellow, pink, red
_WALL_COLOURS = ((120, 130, 150), (150, 140, 120), (110, 120, 110), (135, 120, 140), (100, 110, 130))
_FLOOR_COLOURS = ((70, 100, 140), (90, 90, 95), (60, 80, 110), (110, 110, 115))


# ----------------------------------------------------------------------------------------------------------------
# Configuration


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of one benchmark. Every field is validated on construction (ValueError naming the field)."""

    seed: int = 0
    domains: tuple[str, ...] = (SOURCE_DOMAIN,) + DEFAULT_TARGET_DOMAINS
    train_sequences: int = 3
    val_sequences: int = 2
    frames: int = 100
    width: int = 320
    height: int = 192
    people: int = 7
    shift_strength: float = 0.6
    frame_rate: int = 20
    jpeg_quality: int = 90
    balls: int = 0  # a second class of object per scene; 0: people only (one class, the default benchmark)

    def __post_init__(self) -> None:
        if isinstance(self.domains, str):
            raise ValueError(f"domains must be a sequence of domain names, got the string {self.domains!r}")
        domains = tuple(self.domains)
        object.__setattr__(self, "domains", domains)
        if not domains:
            raise ValueError(f"domains must name at least one domain (known: {', '.join(KNOWN_DOMAINS)})")
        unknown = [d for d in domains if d not in KNOWN_DOMAINS]
        if unknown:
            raise ValueError(f"domains: unknown domain(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(KNOWN_DOMAINS)}")
        if len(set(domains)) != len(domains):
            raise ValueError(f"domains lists a domain twice: {list(domains)}")
        checks = (("seed", 0, "a non-negative integer"), ("train_sequences", 1, "an integer >= 1"),
                  ("val_sequences", 1, "an integer >= 1"), ("frames", 2, "an integer >= 2"),
                  ("people", 1, "an integer >= 1"), ("frame_rate", 1, "an integer >= 1"),
                  ("balls", 0, "an integer >= 0"))
        for name, minimum, wanted in checks:
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ValueError(f"{name} must be {wanted}, got {value!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or value < 64 or value % 32:
                raise ValueError(f"{name} must be an integer multiple of 32 and >= 64, got {value!r}")
        if not _is_int(self.jpeg_quality) or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an integer in 1..100, got {self.jpeg_quality!r}")
        strength = self.shift_strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"shift_strength must be a number in [0, 1], got {strength!r}")
        object.__setattr__(self, "shift_strength", float(strength))
        for name in ("seed", "train_sequences", "val_sequences", "frames", "width", "height", "people",
                     "frame_rate", "jpeg_quality", "balls"):
            object.__setattr__(self, name, int(getattr(self, name)))

    def sequence_names(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        count = self.train_sequences if split == "train" else self.val_sequences
        return [sequence_name(split, k) for k in range(1, count + 1)]

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES if self.balls else CLASSES[:1]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["domains"] = list(self.domains)
        if not self.balls:  # a people-only benchmark keeps the record (and the cache key) it always had
            del d["balls"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SynthConfig":
        return dataclass_from_dict(cls, d)


def sequence_name(split: str, index: int) -> str:
    """Name of the `index`-th (1-based) sequence of a split, e.g. synth-val-01."""
    return f"synth-{split}-{index:02d}"


# ----------------------------------------------------------------------------------------------------------------
# Scenes: people, motion, poses, background


@dataclass
class Person:
    track_id: int
    top: tuple[int, int, int]
    bottom: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    base_height: float          # px at the front of the floor; perspective shrinks it toward the horizon
    build: float                # width multiplier (slim .. broad)
    # Position of the feet: anchor + sum of sinusoids (amplitude, angular frequency per frame, phase).
    anchor: tuple[float, float]
    x_waves: np.ndarray         # [k, 3]
    y_waves: np.ndarray         # [k, 3]
    # Entering (+1) / leaving (-1) the frame sideways between frames t0 and t0 + duration; 0 = stays.
    transit: int
    transit_side: int
    transit_t0: float
    transit_duration: float
    transit_distance: float
    # Pose: arm angles from hanging down (radians, positive = away from the body), legs, lean, bounce.
    arm_base: tuple[float, float]
    arm_swing: float
    arm_omega: float
    arm_phase: float
    arms_mirrored: bool
    elbow_bend: float
    leg_spread: float
    leg_swing: float
    step_omega: float
    step_phase: float
    lean_amplitude: float
    lean_omega: float
    lean_phase: float


@dataclass
class Ball:
    track_id: int
    colour: tuple[int, int, int]
    radius: float               # px at the front of the floor
    anchor: tuple[float, float]  # where it touches the floor: anchor + sum of sinusoids, as a person's feet
    x_waves: np.ndarray
    y_waves: np.ndarray
    bounce_height: float        # px at the front of the floor
    bounce_omega: float
    bounce_phase: float


@dataclass
class Scene:
    config: SynthConfig
    split: str
    index: int
    name: str
    people: list[Person]
    jitter: np.ndarray          # int [frames, 2]: camera offset (dx, dy) in px
    margin: int                 # background canvas is larger than the frame by this on every side
    background: np.ndarray      # uint8 [H + 2m, W + 2m, 3], BGR
    seed_key: tuple[int, ...]   # (seed, split code, index): roots the per-domain random streams
    balls: list[Ball] = dataclasses.field(default_factory=list)

    @property
    def scale(self) -> float:
        return self.config.height / _REFERENCE_HEIGHT


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _domain_code(domain: str) -> int:
    # crc32 rather than hash(): stable across processes (PYTHONHASHSEED) and Python versions.
    return zlib.crc32(domain.encode())


def _jittered(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    c = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return tuple(int(v) for v in c)


def _smoothstep(u: np.ndarray | float) -> np.ndarray | float:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


def make_scene(config: SynthConfig, split: str, index: int, domain: str = SOURCE_DOMAIN) -> Scene:
    """The scene of sequence `index` (1-based) of `split`: identical in every domain but the SCENE_DOMAINS, which
    shift it (with random draws of their own, so the rest of the scene stays as it is)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    count = config.train_sequences if split == "train" else config.val_sequences
    if not 1 <= index <= count:
        raise ValueError(f"index must be in 1..{count} for split {split!r}, got {index}")
    key = (config.seed, _SPLIT_CODES[split], index)
    # Independent streams, so e.g. the background never shifts the people's random draws.
    motion_rng, background_rng = _rng(*key, 0), _rng(*key, 1)
    W, H, T = config.width, config.height, config.frames
    scale = H / _REFERENCE_HEIGHT
    costume_ids = motion_rng.choice(len(_COSTUMES), size=int(motion_rng.integers(2, 4)), replace=False)
    skin_ids = motion_rng.choice(len(_SKIN_TONES), size=2, replace=False)
    n = config.people
    # A quarter of the people (at least one when there are two or more) walk in or out during the sequence.
    n_transit = max(1, round(0.25 * n)) if n >= 2 else 0
    transit_people = set(motion_rng.choice(n, size=n_transit, replace=False).tolist())
    horizon = _HORIZON * H
    floor_top, floor_bottom = horizon + 0.10 * H, 1.0 * H
    people = [_make_person(motion_rng, i + 1, i in transit_people, costume_ids, skin_ids, config, floor_top,
                           floor_bottom) for i in range(n)]

    # Camera jitter: a smoothed random walk of a few pixels, integer so the background crop stays exact.
    max_jitter = max(1, round(3 * scale))
    steps = motion_rng.normal(0, 0.8 * max_jitter, size=(T, 2))
    walk = np.zeros((T, 2))
    for t in range(1, T):
        walk[t] = 0.7 * walk[t - 1] + steps[t]
    jitter = np.clip(np.round(walk), -max_jitter, max_jitter).astype(np.int64)
    margin = max_jitter + 1
    background = _render_background(background_rng, W, H, margin)
    scene = Scene(config=config, split=split, index=index, name=sequence_name(split, index), people=people,
                  jitter=jitter, margin=margin, background=background, seed_key=key,
                  balls=_make_balls(config, _rng(*key, 4), floor_top, floor_bottom))
    if domain in SCENE_DOMAINS and config.shift_strength > 0:
        def extra_person(rng: np.random.Generator, track_id: int) -> Person:
            return _make_person(rng, track_id, False, costume_ids, skin_ids, config, floor_top, floor_bottom)
        _shift_scene(scene, domain, config.shift_strength, extra_person)
    return scene


def _shift_scene(scene: Scene, domain: str, s: float, extra_person) -> None:
    """Apply a SCENE_DOMAINS shift of strength `s` to `scene` in place."""
    rng = _rng(*scene.seed_key, 5, _domain_code(domain))
    replace = dataclasses.replace
    if domain in ("closeup", "far"):
        f = 1 + 2.0 * s if domain == "closeup" else 1 - 0.8 * s
        # A transit still ends with the whole (resized) body outside the frame.
        scene.people = [replace(p, base_height=p.base_height * f,
                                transit_distance=p.transit_distance + 0.6 * p.base_height * (f - 1))
                        for p in scene.people]
        scene.balls = [replace(b, radius=b.radius * f, bounce_height=b.bounce_height * f) for b in scene.balls]
    elif domain == "crowd":
        first = max([p.track_id for p in scene.people] + [b.track_id for b in scene.balls]) + 1
        scene.people += [extra_person(rng, first + k) for k in range(round(3 * s * len(scene.people)))]
    elif domain == "uniform":
        w = min(1.0, 2 * s)

        def mix(own, common) -> tuple[int, int, int]:
            return tuple(int(round((1 - w) * a + w * b)) for a, b in zip(own, common))
        skin, hair = _SKIN_TONES[0], _HAIR_COLOURS[0]
        scene.people = [replace(p, top=mix(p.top, _UNIFORM[0]), bottom=mix(p.bottom, _UNIFORM[1]),
                                skin=mix(p.skin, skin), hair=mix(p.hair, hair)) for p in scene.people]
    elif domain == "fast":
        f = 1 + 4.0 * s

        def faster(waves: np.ndarray) -> np.ndarray:
            return waves * np.array([1.0, f, 1.0])   # (amplitude, angular frequency, phase)
        scene.people = [replace(p, x_waves=faster(p.x_waves), y_waves=faster(p.y_waves), arm_omega=p.arm_omega * f,
                                step_omega=p.step_omega * f, lean_omega=p.lean_omega * f,
                                transit_duration=p.transit_duration / f) for p in scene.people]
        scene.balls = [replace(b, x_waves=faster(b.x_waves), y_waves=faster(b.y_waves),
                               bounce_omega=b.bounce_omega * f) for b in scene.balls]
    else:
        raise AssertionError(domain)


def _make_person(motion_rng: np.random.Generator, track_id: int, transits: bool, costume_ids: np.ndarray,
                 skin_ids: np.ndarray, config: SynthConfig, floor_top: float, floor_bottom: float) -> Person:
    """One dancer: costume, build, path and pose parameters, all drawn from `motion_rng` in a fixed order."""
    W, H, T = config.width, config.height, config.frames
    scale = H / _REFERENCE_HEIGHT
    top, bottom = _COSTUMES[int(costume_ids[motion_rng.integers(len(costume_ids))])]
    y_amplitudes = motion_rng.uniform(0.02, 0.07, size=2) * H
    y_margin = float(y_amplitudes.sum())
    anchor_y = motion_rng.uniform(floor_top + y_margin, floor_bottom - y_margin)
    # Slow wide sway + faster smaller wiggles: smooth, non-linear, with frequent direction changes.
    x_amplitudes = np.array([motion_rng.uniform(0.08, 0.22), motion_rng.uniform(0.03, 0.08),
                             motion_rng.uniform(0.0, 0.03)]) * W
    x_periods = np.array([motion_rng.uniform(60, 160), motion_rng.uniform(25, 60), motion_rng.uniform(10, 25)])
    y_periods = np.array([motion_rng.uniform(40, 140), motion_rng.uniform(15, 40)])
    x_waves = np.stack([x_amplitudes, 2 * np.pi / x_periods, motion_rng.uniform(0, 2 * np.pi, 3)], axis=1)
    y_waves = np.stack([y_amplitudes, 2 * np.pi / y_periods, motion_rng.uniform(0, 2 * np.pi, 2)], axis=1)
    base_height = motion_rng.uniform(38.0, 50.0) * scale
    transit = 0
    if transits:
        transit = 1 if motion_rng.random() < 0.5 else -1
    side = 1 if motion_rng.random() < 0.5 else -1
    anchor_x = motion_rng.uniform(0.12, 0.88) * W
    # Far enough that the whole body (and its sway) is outside the frame at the end of the walk.
    distance = (W - anchor_x if side > 0 else anchor_x) + float(x_amplitudes.sum()) + 0.5 * base_height * 1.2
    duration = motion_rng.uniform(0.25, 0.4) * (T - 1)
    start = motion_rng.uniform(0.05, 0.55) * (T - 1 - duration) + (0.0 if transit > 0 else 0.3 * (T - 1))
    start = min(start, T - 1 - duration)
    arm_base = (motion_rng.uniform(0.2, 2.2), motion_rng.uniform(0.2, 2.2))
    return Person(
        track_id=track_id,
        top=_jittered(top, motion_rng, 12), bottom=_jittered(bottom, motion_rng, 10),
        skin=_jittered(_SKIN_TONES[int(skin_ids[motion_rng.integers(2)])], motion_rng, 10),
        hair=_HAIR_COLOURS[int(motion_rng.integers(len(_HAIR_COLOURS)))],
        base_height=base_height, build=motion_rng.uniform(0.9, 1.15),
        anchor=(anchor_x, anchor_y), x_waves=x_waves, y_waves=y_waves,
        transit=transit, transit_side=side, transit_t0=start, transit_duration=duration,
        transit_distance=distance,
        arm_base=arm_base, arm_swing=motion_rng.uniform(0.3, 1.0), arm_omega=2 * np.pi / motion_rng.uniform(8, 24),
        arm_phase=motion_rng.uniform(0, 2 * np.pi), arms_mirrored=bool(motion_rng.random() < 0.5),
        elbow_bend=motion_rng.uniform(0.0, 1.2), leg_spread=motion_rng.uniform(0.05, 0.3),
        leg_swing=motion_rng.uniform(0.1, 0.4), step_omega=2 * np.pi / motion_rng.uniform(8, 20),
        step_phase=motion_rng.uniform(0, 2 * np.pi), lean_amplitude=motion_rng.uniform(0.0, 0.2),
        lean_omega=2 * np.pi / motion_rng.uniform(15, 50), lean_phase=motion_rng.uniform(0, 2 * np.pi),
    )


def _make_balls(config: SynthConfig, rng: np.random.Generator, floor_top: float, floor_bottom: float) -> list[Ball]:
    """Balls rolling and bouncing across the floor (their own random stream: the people do not change)."""
    W, H = config.width, config.height
    scale = H / _REFERENCE_HEIGHT
    balls = []
    for k in range(config.balls):
        y_amplitude = rng.uniform(0.02, 0.06) * H
        x_waves = np.stack([rng.uniform([0.1, 0.03], [0.3, 0.08]) * W, 2 * np.pi / rng.uniform([50, 15], [120, 40]),
                            rng.uniform(0, 2 * np.pi, 2)], axis=1)
        y_waves = np.array([[y_amplitude, 2 * np.pi / rng.uniform(30, 90), rng.uniform(0, 2 * np.pi)]])
        balls.append(Ball(track_id=config.people + k + 1, colour=_BALL_COLOURS[int(rng.integers(len(_BALL_COLOURS)))],
                          radius=rng.uniform(5.0, 8.0) * scale,
                          anchor=(rng.uniform(0.15, 0.85) * W, rng.uniform(floor_top + y_amplitude,
                                                                           floor_bottom - y_amplitude)),
                          x_waves=x_waves, y_waves=y_waves, bounce_height=rng.uniform(5.0, 20.0) * scale,
                          bounce_omega=2 * np.pi / rng.uniform(12, 30), bounce_phase=rng.uniform(0, 2 * np.pi)))
    return balls


def _sway(anchor: tuple[float, float], x_waves: np.ndarray, y_waves: np.ndarray, t: int) -> tuple[float, float]:
    x = anchor[0] + float(np.sum(x_waves[:, 0] * np.sin(x_waves[:, 1] * t + x_waves[:, 2])))
    y = anchor[1] + float(np.sum(y_waves[:, 0] * np.sin(y_waves[:, 1] * t + y_waves[:, 2])))
    return x, y


def _feet_position(person: Person, t: int) -> tuple[float, float]:
    x, y = _sway(person.anchor, person.x_waves, person.y_waves, t)
    if person.transit:
        progress = float(_smoothstep((t - person.transit_t0) / person.transit_duration))
        away = progress if person.transit < 0 else 1.0 - progress   # 0 = on stage, 1 = fully off to the side
        x += person.transit_side * person.transit_distance * away
    return x, y


def _perspective(feet_y: float, height: int) -> float:
    """Size factor: people near the horizon look smaller than people at the front of the floor."""
    depth = (feet_y - _HORIZON * height) / ((1 - _HORIZON) * height)
    return 0.45 + 0.75 * depth


@dataclass
class Pose:
    """A person's drawing primitives at one frame, in drawing order, in frame pixels (camera jitter applied).

    Parts: ("line", [2, 2] endpoints, thickness, colour), ("polygon", [k, 2] points, colour),
    ("ellipse", centre, half-axes, colour).
    """

    depth: float        # feet y: larger is nearer the camera, drawn later
    parts: list[tuple]

    def extent(self) -> np.ndarray:
        """Full box x1, y1, x2, y2 of everything drawn (thick lines have round caps), in pixel-edge coordinates."""
        lows, highs = [], []
        for kind, *args in self.parts:
            if kind == "line":
                # cv2 draws anti-aliased thick lines about half a pixel thicker than asked.
                ends, reach = args[0], round(args[1]) / 2 + 0.25
                lows.append(ends.min(axis=0) - reach)
                highs.append(ends.max(axis=0) + reach)
            elif kind == "ellipse":
                lows.append(args[0] - args[1])
                highs.append(args[0] + args[1])
            else:
                lows.append(args[0].min(axis=0))
                highs.append(args[0].max(axis=0))
        # Anti-aliasing reaches about half a pixel past the outline at coverage >= 0.5.
        return np.concatenate([np.min(lows, axis=0) - 0.5, np.max(highs, axis=0) + 0.5])


def person_pose(person: Person, t: int, scene: Scene) -> Pose:
    """The person at frame `t` (0-based): a dancing pose (swinging arms, stepping legs, lean, bounce) at its path."""
    config = scene.config
    feet_x, feet_y = _feet_position(person, t)
    h = person.base_height * _perspective(feet_y, config.height)
    b = person.build

    # Skeleton in body units (height 1), y up, origin between the feet.
    bounce = 0.015 * math.sin(2 * person.step_omega * t + person.step_phase)
    step = math.sin(person.step_omega * t + person.step_phase)
    legs = []
    for side, swing in ((-1, step), (1, -step)):
        hip = np.array([side * 0.05 * b, 0.50 + bounce])
        thigh_angle = side * person.leg_spread + person.leg_swing * swing
        knee = hip + 0.25 * np.array([math.sin(thigh_angle), -math.cos(thigh_angle)])
        shin_angle = thigh_angle - 0.5 * person.leg_swing * abs(swing) * side
        ankle = knee + 0.24 * np.array([math.sin(shin_angle), -math.cos(shin_angle)])
        legs.append((hip, knee, ankle))
    lowest = min(ankle[1] for _, _, ankle in legs)
    ground = lowest - 0.02   # shoes below the ankles touch the floor

    lean = person.lean_amplitude * math.sin(person.lean_omega * t + person.lean_phase)
    pelvis = np.array([0.0, 0.50 + bounce])
    rotation = np.array([[math.cos(lean), -math.sin(lean)], [math.sin(lean), math.cos(lean)]])

    def upper(p) -> np.ndarray:   # upper-body points lean around the pelvis
        return pelvis + rotation @ (np.asarray(p, dtype=float) - pelvis)

    swing = person.arm_swing * math.sin(person.arm_omega * t + person.arm_phase)
    arms = []
    for k, side in enumerate((-1, 1)):
        angle = person.arm_base[k] + (swing if (person.arms_mirrored or side < 0) else -swing)
        shoulder = upper([side * 0.11 * b, 0.79 + bounce])
        direction = rotation @ np.array([side * math.sin(angle), -math.cos(angle)])
        elbow = shoulder + 0.16 * direction
        fore = angle + person.elbow_bend
        hand = elbow + 0.15 * (rotation @ np.array([side * math.sin(fore), -math.cos(fore)]))
        arms.append((shoulder, elbow, hand))
    torso = np.array([upper(p) for p in ([-0.12 * b, 0.81 + bounce], [0.12 * b, 0.81 + bounce],
                                         [0.085 * b, 0.62 + bounce], [0.095 * b, 0.48 + bounce],
                                         [-0.095 * b, 0.48 + bounce], [-0.085 * b, 0.62 + bounce])])
    neck = (upper([0, 0.79 + bounce]), upper([0, 0.86 + bounce]))
    hair_centre, face_centre = upper([0, 0.925 + bounce]), upper([0, 0.905 + bounce])

    dx, dy = scene.jitter[t]
    origin = np.array([feet_x - dx, feet_y - dy])

    def px(p) -> np.ndarray:   # body units -> frame pixels (y down)
        p = np.asarray(p, dtype=float)
        return origin + h * np.array([p[..., 0], -(p[..., 1] - ground)]).T

    def thick(units: float) -> float:
        return max(1.0, units * h)

    shoe = (30, 30, 35)
    parts: list[tuple] = []
    for hip, knee, ankle in legs:
        parts.append(("line", px([hip, knee]), thick(0.075 * b), person.bottom))
        parts.append(("line", px([knee, ankle]), thick(0.065 * b), person.bottom))
        parts.append(("line", px([ankle, ankle + np.array([0.0, -0.015])]), thick(0.06), shoe))
    parts.append(("polygon", px(torso), person.top))
    parts.append(("line", px(neck), thick(0.05), person.skin))
    for shoulder, elbow, hand in arms:
        parts.append(("line", px([shoulder, elbow]), thick(0.055 * b), person.top))
        parts.append(("line", px([elbow, hand]), thick(0.045 * b), person.skin))
    parts.append(("ellipse", px(hair_centre), np.array([0.068, 0.07]) * h, person.hair))
    parts.append(("ellipse", px(face_centre), np.array([0.056, 0.068]) * h, person.skin))
    return Pose(depth=feet_y, parts=parts)


def ball_pose(ball: Ball, t: int, scene: Scene) -> Pose:
    """The ball at frame `t` (0-based): a disc above its floor point, bouncing."""
    x, y = _sway(ball.anchor, ball.x_waves, ball.y_waves, t)
    size = _perspective(y, scene.config.height)
    r = ball.radius * size
    lift = ball.bounce_height * size * abs(math.sin(ball.bounce_omega * t + ball.bounce_phase))
    dx, dy = scene.jitter[t]
    return Pose(depth=y, parts=[("ellipse", np.array([x - dx, y - dy - r - lift]), np.array([r, r]), ball.colour)])


def _poses(scene: Scene, t: int) -> list[tuple[int, Pose]]:
    """(track id, pose) of every person and ball at frame `t`."""
    return [(p.track_id, person_pose(p, t, scene)) for p in scene.people] + \
        [(b.track_id, ball_pose(b, t, scene)) for b in scene.balls]


def _visible_box(pose: Pose, width: int, height: int) -> tuple[float, float, float, float] | None:
    """Full extent clipped to the image, rounded to 0.1 px; None when (almost) nothing is inside the image."""
    x1, y1, x2, y2 = (float(v) for v in pose.extent())
    x1, x2 = round(min(max(x1, 0.0), width), 1), round(min(max(x2, 0.0), width), 1)
    y1, y2 = round(min(max(y1, 0.0), height), 1), round(min(max(y2, 0.0), height), 1)
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        return None
    return x1, y1, round(x2 - x1, 1), round(y2 - y1, 1)


def scene_ground_truth(scene: Scene) -> list[tuple[int, int, float, float, float, float]]:
    """Rows (frame, id, x, y, w, h) of people and balls sorted by frame then id; frames are 1-based."""
    config = scene.config
    rows = []
    for t in range(config.frames):
        for track_id, pose in _poses(scene, t):
            box = _visible_box(pose, config.width, config.height)
            if box is not None:
                rows.append((t + 1, track_id) + box)
    return rows


def object_classes(scene: Scene) -> dict[int, int]:
    """{track id: class} with class 1 (pedestrian) or 2 (ball), indices into CLASSES + 1."""
    return {**{p.track_id: 1 for p in scene.people}, **{b.track_id: 2 for b in scene.balls}}


def format_ground_truth(rows: list[tuple[int, int, float, float, float, float]],
                        classes: dict[int, int] | None = None) -> str:
    """gt.txt: `frame,id,x,y,w,h,1,class,1`, class 1 unless `classes` ({id: class}) says otherwise."""
    classes = classes or {}
    return "".join(f"{f},{i},{x:.1f},{y:.1f},{w:.1f},{h:.1f},1,{classes.get(i, 1)},1\n" for f, i, x, y, w, h in rows)


def coco_video(config: SynthConfig, scenes: list[tuple[Scene, list[tuple]]]) -> dict[str, Any]:
    """mmtrack's CocoVideoDataset JSON for one split: `scenes` are (scene, its ground-truth rows); file names are
    relative to the split's folder."""
    videos, images, annotations = [], [], []
    for video_id, (scene, rows) in enumerate(scenes, start=1):
        classes = object_classes(scene)
        videos.append({"id": video_id, "name": scene.name, "fps": config.frame_rate})
        first = len(images) + 1
        images += [{"id": first + t, "video_id": video_id, "frame_id": t, "width": config.width,
                    "height": config.height, "file_name": f"{scene.name}/img1/{t + 1:08d}.jpg"}
                   for t in range(config.frames)]
        annotations += [{"id": len(annotations) + k + 1, "image_id": first + f - 1, "category_id": classes[i],
                         "instance_id": i, "bbox": [x, y, w, h], "iscrowd": 0}
                        for k, (f, i, x, y, w, h) in enumerate(rows)]
    return {"categories": [{"id": k, "name": name} for k, name in enumerate(CLASSES, start=1)],
            "videos": videos, "images": images, "annotations": annotations}


# ----------------------------------------------------------------------------------------------------------------
# Drawing


def _subpixel(point) -> tuple[int, int]:
    return int(round(float(point[0]) * _SUBPIXEL)), int(round(float(point[1]) * _SUBPIXEL))


def _draw_pose(colour: np.ndarray, alpha: np.ndarray, pose: Pose, offset: np.ndarray) -> None:
    """Draw onto a small canvas whose top-left is at `offset` (frame px): the colour canvas (over black, so it
    ends up premultiplied by coverage) and the coverage itself."""
    aa, shift = cv2.LINE_AA, _SUBPIXEL_BITS
    # cv2 puts integer coordinates at pixel centres; boxes put pixel i at [i, i + 1].
    offset = offset + 0.5
    for kind, *args in pose.parts:
        if kind == "line":
            start, end, thickness = _subpixel(args[0][0] - offset), _subpixel(args[0][1] - offset), int(round(args[1]))
            cv2.line(colour, start, end, args[-1], thickness, aa, shift)
            cv2.line(alpha, start, end, 255, thickness, aa, shift)
        elif kind == "polygon":
            points = np.round((args[0] - offset) * _SUBPIXEL).astype(np.int32)
            cv2.fillPoly(colour, [points], args[-1], aa, shift)
            cv2.fillPoly(alpha, [points], 255, aa, shift)
        else:
            centre, axes = _subpixel(args[0] - offset), _subpixel(args[1])
            cv2.ellipse(colour, centre, axes, 0.0, 0.0, 360.0, args[-1], -1, aa, shift)
            cv2.ellipse(alpha, centre, axes, 0.0, 0.0, 360.0, 255, -1, aa, shift)


def _people_layer(poses: list[Pose], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """All people of one frame as one premultiplied layer: colour float32 [H, W, 3] and coverage [H, W, 1].

    People are stacked far-to-near, so nearer people occlude farther ones. The layer is drawn once per frame and
    put over every domain's background (premultiplied "over" is associative, so this equals drawing each person
    directly onto the background).
    """
    layer_colour = np.zeros((height, width, 3), np.float32)
    layer_alpha = np.zeros((height, width, 1), np.float32)
    for pose in sorted(poses, key=lambda p: p.depth):
        x1, y1, x2, y2 = pose.extent()
        left, top = int(math.floor(x1)) - 2, int(math.floor(y1)) - 2
        right, bottom = int(math.ceil(x2)) + 2, int(math.ceil(y2)) + 2
        if right <= 0 or bottom <= 0 or left >= width or top >= height:
            continue
        colour = np.zeros((bottom - top, right - left, 3), np.uint8)
        alpha = np.zeros((bottom - top, right - left), np.uint8)
        _draw_pose(colour, alpha, pose, np.array([left, top], dtype=float))
        # Clip the canvas to the frame.
        fx1, fy1, fx2, fy2 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
        cx1, cy1 = fx1 - left, fy1 - top
        a = alpha[cy1:cy1 + fy2 - fy1, cx1:cx1 + fx2 - fx1, None].astype(np.float32) / 255.0
        # AA edges between overlapping parts can brighten the colour canvas past its coverage: clamp.
        c = np.minimum(colour[cy1:cy1 + fy2 - fy1, cx1:cx1 + fx2 - fx1].astype(np.float32), 255.0 * a)
        region_colour, region_alpha = layer_colour[fy1:fy2, fx1:fx2], layer_alpha[fy1:fy2, fx1:fx2]
        region_colour[:] = region_colour * (1.0 - a) + c
        region_alpha[:] = region_alpha * (1.0 - a) + a
    return layer_colour, layer_alpha


def _render_background(rng: np.random.Generator, width: int, height: int, margin: int) -> np.ndarray:
    """A static stage: wall with panels and windows, wooden floor in perspective, speakers, light pools."""
    W, H = width + 2 * margin, height + 2 * margin
    scale = height / _REFERENCE_HEIGHT
    horizon = int(round(_HORIZON * height)) + margin
    wall = np.asarray(_WALL_COLOURS[rng.integers(len(_WALL_COLOURS))], np.float32) + rng.uniform(-15, 15, 3)
    floor = np.asarray(_FLOOR_COLOURS[rng.integers(len(_FLOOR_COLOURS))], np.float32) + rng.uniform(-10, 10, 3)
    rows = np.arange(H, dtype=np.float32)[:, None, None]
    wall_shade = 0.75 + 0.25 * rows / max(horizon, 1)                         # darker toward the ceiling
    floor_shade = 0.8 + 0.35 * (rows - horizon) / max(H - horizon, 1)         # lighter toward the camera
    image = np.where(rows < horizon, wall * wall_shade, floor * floor_shade)
    image = np.broadcast_to(image, (H, W, 3)).astype(np.float32).copy()

    # Wall panels: alternate slightly lighter vertical strips.
    x = 0
    panel = int(rng.integers(24, 48) * scale) + 4
    lighter = False
    while x < W:
        if lighter:
            image[:horizon, x:x + panel] *= 1.08
        lighter = not lighter
        x += panel
    canvas = np.clip(image, 0, 255).astype(np.uint8)
    aa = cv2.LINE_AA
    # Windows / mirrors on the wall.
    for _ in range(int(rng.integers(1, 4))):
        w, h = int(rng.uniform(0.08, 0.2) * width), int(rng.uniform(0.12, 0.22) * height)
        x0, y0 = int(rng.uniform(0, W - w)), int(rng.uniform(0.05, 0.6) * max(horizon - h, 1))
        glass = tuple(int(v) for v in rng.uniform([150, 140, 110], [220, 200, 170]))
        cv2.rectangle(canvas, (x0, y0), (x0 + w, y0 + h), glass, -1, aa)
        cv2.rectangle(canvas, (x0, y0), (x0 + w, y0 + h), (60, 60, 60), max(1, int(2 * scale)), aa)
        cv2.line(canvas, (x0 + w // 2, y0), (x0 + w // 2, y0 + h), (60, 60, 60), max(1, int(scale)), aa)
    # Skirting board at the wall/floor boundary.
    cv2.rectangle(canvas, (0, horizon - max(2, int(3 * scale))), (W, horizon), (50, 55, 60), -1)
    # Floor boards converging to a vanishing point above the frame.
    vanish = np.array([W / 2 + rng.uniform(-0.2, 0.2) * W, horizon - 0.8 * height])
    board_colour = tuple(int(v) for v in np.clip(floor * 0.7, 0, 255))
    for bx in np.linspace(-W, 2 * W, 28):
        # Line from the bottom edge at bx toward the vanishing point, cut at the horizon.
        u = (H - horizon) / (H - vanish[1])
        top = np.array([bx, H]) + u * (vanish - np.array([bx, H]))
        cv2.line(canvas, (int(bx), H), (int(top[0]), horizon), board_colour, 1, aa)
    # Speakers standing against the wall.
    for _ in range(int(rng.integers(1, 3))):
        w, h = int(rng.uniform(0.05, 0.08) * width), int(rng.uniform(0.18, 0.28) * height)
        x0 = int(rng.choice([rng.uniform(0, 0.15), rng.uniform(0.8, 0.95)]) * W)
        y1 = horizon + int(0.04 * height)
        cv2.rectangle(canvas, (x0, y1 - h), (x0 + w, y1), (35, 35, 40), -1, aa)
        for frac, radius in ((0.3, 0.3), (0.7, 0.4)):
            cv2.circle(canvas, (x0 + w // 2, y1 - h + int(frac * h)), max(1, int(radius * w)), (80, 80, 85), -1, aa)
    # Soft pools of stage light on the floor, plus faint static grain.
    light = np.zeros((H, W), np.float32)
    for _ in range(int(rng.integers(2, 4))):
        centre = (int(rng.uniform(0.1, 0.9) * W), int(rng.uniform(horizon + 0.1 * height, H)))
        axes = (int(rng.uniform(0.1, 0.2) * width), int(rng.uniform(0.04, 0.08) * height))
        cv2.ellipse(light, centre, axes, 0.0, 0.0, 360.0, 1.0, -1)
    light = cv2.GaussianBlur(light, (0, 0), 6 * scale)
    out = canvas.astype(np.float32) * (1.0 + 0.35 * light[..., None])
    grain = cv2.GaussianBlur(rng.normal(0, 6, (H, W)).astype(np.float32), (0, 0), 1.0)
    out += grain[..., None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _texture_overlay(rng: np.random.Generator, width: int, height: int, margin: int, strength: float,
                     clean: np.ndarray) -> np.ndarray:
    """The `texture` domain's background: the clean stage under a busy high-frequency pattern."""
    W, H = width + 2 * margin, height + 2 * margin
    scale = height / _REFERENCE_HEIGHT
    cell = max(2, int(round(rng.uniform(3, 5) * scale)))
    # Checkerboard of random costume-like colours ...
    palette = np.asarray([c for pair in _COSTUMES for c in pair] + list(_SKIN_TONES), np.float32)
    grid = rng.integers(len(palette), size=(H // cell + 1, W // cell + 1))
    busy = palette[grid].repeat(cell, axis=0).repeat(cell, axis=1)[:H, :W]
    # ... under fine diagonal stripes ...
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    period = max(2.5, rng.uniform(3, 6) * scale)
    stripes = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (xx + yy * rng.uniform(0.5, 1.5)) / period))
    busy = busy * (0.55 + 0.45 * stripes[..., None])
    # ... and confetti of small blobs and bars.
    confetti = busy.astype(np.uint8)
    for _ in range(int(60 * (W * H) / (320 * 192))):
        colour = tuple(int(v) for v in palette[rng.integers(len(palette))])
        x0, y0 = int(rng.uniform(0, W)), int(rng.uniform(0, H))
        if rng.random() < 0.5:
            r = max(1, int(rng.uniform(1, 4) * scale))
            cv2.circle(confetti, (x0, y0), r, colour, -1, cv2.LINE_AA)
        else:
            dx, dy = rng.uniform(-8, 8, 2) * scale
            cv2.line(confetti, (x0, y0), (int(x0 + dx), int(y0 + dy)), colour, max(1, int(2 * scale)), cv2.LINE_AA)
    mix = min(1.0, 1.2 * strength)
    out = clean.astype(np.float32) * (1 - mix) + confetti.astype(np.float32) * mix
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Domain shifts (on float32 BGR frames in [0, 255])


class _DomainRenderer:
    """Per-scene state of one domain (its background and fixed blur direction) and its photometric shift."""

    def __init__(self, scene: Scene, domain: str, strength: float):
        if domain not in KNOWN_DOMAINS:
            raise ValueError(f"domain must be one of {KNOWN_DOMAINS}, got {domain!r}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"shift_strength must be in [0, 1], got {strength!r}")
        self.scene, self.domain, self.strength = scene, domain, strength
        config = scene.config
        code = _domain_code(domain)
        self.scene_rng = _rng(*scene.seed_key, 2, code)
        self.background = scene.background
        if domain == "texture" and strength > 0:
            self.background = _texture_overlay(self.scene_rng, config.width, config.height, scene.margin, strength,
                                               scene.background)
        if domain == "noise_blur":
            # One camera-shake direction per sequence; the streak length varies a little per frame.
            self.blur_angle = float(self.scene_rng.uniform(0, np.pi))
        if domain == "night":
            H, W = config.height, config.width
            yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
            r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
            self.vignette = (1.0 - 0.3 * strength * np.clip(r2 / 2, 0, 1))[..., None]
        if domain == "fog":
            H = config.height
            rows = np.arange(H, dtype=np.float32)[:, None, None] / H
            # Denser toward the top of the frame: the far end of the room.
            self.fog_density = np.clip(0.55 * strength * (1.25 - 0.5 * rows), 0, 0.95)

    def frame_background(self, t: int) -> np.ndarray:
        config, scene = self.scene.config, self.scene
        dx, dy = scene.jitter[t]
        m = scene.margin
        crop = self.background[m + dy:m + dy + config.height, m + dx:m + dx + config.width]
        return crop.astype(np.float32)

    def render(self, t: int, people: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        layer_colour, layer_alpha = people
        image = self.frame_background(t) * (1.0 - layer_alpha) + layer_colour
        return np.clip(np.round(self.shift(image, t)), 0, 255).astype(np.uint8)

    def shift(self, image: np.ndarray, t: int) -> np.ndarray:
        s, scale = self.strength, self.scene.scale
        if self.domain in (SOURCE_DOMAIN, "texture") + SCENE_DOMAINS or s == 0:
            return image
        if self.domain == "night":
            cast = np.array([1.0, 1.0 - 0.15 * s, 1.0 - 0.3 * s], np.float32)    # BGR: blue-ish moonlight
            x = (image / 255.0) ** (1.0 + 0.5 * s) * (1.0 - 0.35 * s)
            x = x * cast * self.vignette
            x = x.mean() + (x - x.mean()) * (1.0 - 0.25 * s) + 0.02 * s           # lifted, flatter blacks
            return x * 255.0
        if self.domain == "fog":
            blurred = cv2.GaussianBlur(image, (0, 0), max(0.3, 1.5 * s * scale))
            fog_colour = np.array([200, 195, 185], np.float32)
            return blurred * (1 - self.fog_density) + fog_colour * self.fog_density
        if self.domain == "noise_blur":
            rng = _rng(*self.scene.seed_key, 3, _domain_code(self.domain), t)
            length = max(1.0, (3 + 14 * s) * scale * rng.uniform(0.7, 1.3))
            blurred = cv2.filter2D(image, -1, _line_kernel(length, self.blur_angle), borderType=cv2.BORDER_REFLECT)
            H, W = image.shape[:2]
            luma = rng.standard_normal((H, W, 1), dtype=np.float32) * np.float32(60 * s)
            chroma = rng.standard_normal((H, W, 3), dtype=np.float32) * np.float32(20 * s)
            return blurred + luma + chroma
        raise AssertionError(self.domain)


def _line_kernel(length: float, angle: float) -> np.ndarray:
    size = int(math.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    dx, dy = math.cos(angle) * (length - 1) / 2, math.sin(angle) * (length - 1) / 2
    cv2.line(kernel, (int(round((c - dx) * _SUBPIXEL)), int(round((c - dy) * _SUBPIXEL))),
             (int(round((c + dx) * _SUBPIXEL)), int(round((c + dy) * _SUBPIXEL))), 1.0, 1, cv2.LINE_AA, _SUBPIXEL_BITS)
    if kernel.sum() == 0:
        kernel[int(c), int(c)] = 1.0
    return kernel / kernel.sum()


def render_frame(scene: Scene, t: int, domain: str = SOURCE_DOMAIN, strength: float | None = None) -> np.ndarray:
    """One frame (0-based `t`) of a scene in a domain, as uint8 BGR. For previews and tests. For a SCENE_DOMAINS
    domain, pass its scene (`make_scene(..., domain)`): the renderer only draws it."""
    if not 0 <= t < scene.config.frames:
        raise ValueError(f"frame must be in 0..{scene.config.frames - 1}, got {t}")
    renderer = _DomainRenderer(scene, domain, scene.config.shift_strength if strength is None else strength)
    return renderer.render(t, _frame_layer(scene, t))


def _frame_layer(scene: Scene, t: int) -> tuple[np.ndarray, np.ndarray]:
    poses = [pose for _, pose in _poses(scene, t)]
    return _people_layer(poses, scene.config.width, scene.config.height)


# ----------------------------------------------------------------------------------------------------------------
# Writing the benchmark


def _seqinfo(name: str, config: SynthConfig) -> str:
    return (f"[Sequence]\nname={name}\nimDir=img1\nframeRate={config.frame_rate}\nseqLength={config.frames}\n"
            f"imWidth={config.width}\nimHeight={config.height}\nimExt=.jpg\n")


def generate_benchmark(out: str | Path, config: SynthConfig | None = None, progress: bool = True,
                       **overrides: Any) -> dict[str, Any]:
    """Write the benchmark under `out` and return the contents of OUT/benchmark.json.

    `config` defaults to SynthConfig(); keyword overrides (seed=..., frames=..., ...) replace its fields.
    An existing benchmark.json is removed first, so an interrupted run never looks complete.
    """
    from tqdm import tqdm

    if config is None:
        config = SynthConfig(**overrides)
    elif not isinstance(config, SynthConfig):
        raise ValueError(f"config must be a SynthConfig, got {type(config).__name__}")
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / BENCHMARK_FILE).unlink(missing_ok=True)
    jpeg_options = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality, cv2.IMWRITE_JPEG_OPTIMIZE, 0,
                    cv2.IMWRITE_JPEG_PROGRESSIVE, 0]

    summary: dict[str, Any] = {d: {"description": DOMAIN_DESCRIPTIONS[d]} for d in config.domains}
    total = (config.train_sequences + config.val_sequences) * len(config.domains)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)   # the machine is shared; the images are small
    try:
        with tqdm(total=total, desc="synth benchmark", unit="seq", disable=not progress) as bar:
            for split in SPLITS:
                names = config.sequence_names(split)
                split_scenes: dict[str, list] = {d: [] for d in config.domains}
                for domain in config.domains:
                    split_dir = out / domain / split
                    split_dir.mkdir(parents=True, exist_ok=True)
                    # Drop sequences of an earlier, larger generation so the tree matches the seqmap.
                    for stale in sorted(split_dir.glob("synth-*")):
                        if stale.is_dir() and stale.name not in names:
                            shutil.rmtree(stale)
                    summary[domain][split] = {"sequences": names, "frames": 0, "boxes": 0}
                for index, name in enumerate(names, start=1):
                    # The pixel domains share one scene; each scene domain films its own shifted copy.
                    scenes = {d: make_scene(config, split, index, d) for d in config.domains if d in SCENE_DOMAINS}
                    if any(d not in SCENE_DOMAINS for d in config.domains):
                        scenes[SOURCE_DOMAIN] = make_scene(config, split, index)
                    rows = {key: scene_ground_truth(scene) for key, scene in scenes.items()}
                    scene_of = {d: d if d in SCENE_DOMAINS else SOURCE_DOMAIN for d in config.domains}
                    for domain, key in scene_of.items():
                        split_scenes[domain].append((scenes[key], rows[key]))
                    renderers = [_DomainRenderer(scenes[scene_of[d]], d, config.shift_strength) for d in config.domains]
                    seq_dirs = []
                    for domain in config.domains:
                        seq_dir = out / domain / split / name
                        if seq_dir.exists():
                            shutil.rmtree(seq_dir)
                        (seq_dir / "img1").mkdir(parents=True)
                        (seq_dir / "gt").mkdir()
                        seq_dirs.append(seq_dir)
                    # Frame-major: the people's poses are computed once and drawn into every domain.
                    for t in range(config.frames):
                        layers = {key: _frame_layer(scene, t) for key, scene in scenes.items()}
                        for domain, renderer, seq_dir in zip(config.domains, renderers, seq_dirs):
                            image = renderer.render(t, layers[scene_of[domain]])
                            ok, encoded = cv2.imencode(".jpg", image, jpeg_options)
                            if not ok:
                                raise RuntimeError(f"JPEG encoding failed for {seq_dir} frame {t + 1}")
                            (seq_dir / "img1" / f"{t + 1:08d}.jpg").write_bytes(encoded.tobytes())
                    for domain, seq_dir in zip(config.domains, seq_dirs):
                        key = scene_of[domain]
                        atomic_write_text(seq_dir / "gt" / "gt.txt",
                                          format_ground_truth(rows[key], object_classes(scenes[key])))
                        atomic_write_text(seq_dir / "seqinfo.ini", _seqinfo(name, config))
                        summary[domain][split]["frames"] += config.frames
                        summary[domain][split]["boxes"] += len(rows[key])
                        bar.update(1)
                for domain in config.domains:
                    atomic_write_text(out / domain / f"{split}_seqmap.txt", "name\n" + "".join(f"{n}\n" for n in names))
                    if config.balls:
                        atomic_write_json(out / domain / "annotations" / f"{split}_cocofmt.json",
                                          coco_video(config, split_scenes[domain]))
    finally:
        cv2.setNumThreads(threads)

    manifest = {"format": BENCHMARK_FORMAT, "version": BENCHMARK_VERSION, "config": config.to_dict(),
                "domains": summary}
    atomic_write_json(out / BENCHMARK_FILE, manifest)
    return manifest


def read_benchmark(out: str | Path) -> dict[str, Any] | None:
    """The manifest of a complete benchmark under `out`, or None if there is none (or it is unreadable)."""
    path = Path(out) / BENCHMARK_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != BENCHMARK_FORMAT:
        return None
    return manifest


def source_split_key(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the source domain's train split depends on, from a manifest (or an earlier key): a source model
    trained on it stays valid when only the target domains, their shift strength or the val split change."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        return None
    unused = ("domains", "shift_strength", "val_sequences")
    return {"version": manifest.get("version"),
            "config": {k: v for k, v in manifest["config"].items() if k not in unused}}


def benchmark_matches(out: str | Path, config: SynthConfig) -> bool:
    """True when `out` holds a complete benchmark generated with exactly `config` (a cache can reuse it)."""
    manifest = read_benchmark(out)
    return (manifest is not None and manifest.get("version") == BENCHMARK_VERSION
            and manifest.get("config") == config.to_dict())
