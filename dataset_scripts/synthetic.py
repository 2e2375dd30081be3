"""A procedurally generated STVG benchmark (DESIGN section 5 layout), deterministic in ``--seed``.

    python dataset_scripts/synthetic.py --output-dir DIR --seed S [--num-train N --num-val N --num-test N ...]
        [--overwrite] [--push-to-hub REPO_ID [--private] [--hub-token TOKEN]]

``--output-dir`` must be new or empty; ``--overwrite`` replaces an earlier dataset folder there as a whole
(the new build is written beside it and swapped in when finished, so no shard of the old one remains and a
failed build leaves the old one untouched).

What a clip is
--------------
A clip is a short "video" (a 30 fps source, ``frame_ids`` sampled at 5 fps with
``stvg_data.protocol.sample_frame_ids`` from the clip's segment) of coloured shapes moving over a
mildly cluttered background. Frames are really rendered (RGB, anti-aliased, shaded), and the
region / frame features are computed from those pixels by the same code path that serves real
video: ``processing_stvg.feature_extraction_stvg.StvgFeatureExtractor`` with the given proposal
boxes (a seeded random-initialised ``timm`` backbone, requested explicitly, since no pretrained
weights exist offline).

Every clip stages one *event*: a subject object S and an object O satisfy a relation only during a
ground-truth span covering 20-70 % of the clip (on the sampled-frame grid); outside the span they
idle (small wobble) or sit in a configuration where the relation is false.

- motion relations (only visible over time): ``chases`` (both move the same way, S behind O and
  closing in), ``approaches`` (S moves towards a static O until nearly touching), ``moves away from``
  (the reverse), ``circles around`` (S orbits O, 3/4 to 1 turn), ``jumps over`` (S travels from one
  side of O to the other on an arc above it), ``pushes`` (S in contact behind O, both move together);
- spatial relations (visible in a frame): ``is to the left of``, ``is above`` (also available:
  ``is to the right of``, ``is below``). Outside the span S is on the opposite side of O, and it
  moves there around O (never satisfying the relation) just before/after the span. Spatial
  relations are verified on the rendered boxes: true on exactly the span's frames.

Distractors: in a ``--distractor-rate`` share of the clips (allocated exactly, rounding up), every
entity that one of the clip's queries targets gets a *clone* - another object of the same shape AND
colour, not part of the relation, kept away from the event (and, for spatial relations, checked not
to satisfy it) - so only the relation tells the two apart. Fillers (other objects) often share the
colour or the shape of a participant, so both words matter.

Sentences (``--queries-per-clip`` of them per clip, distinct templates, chosen with weights)::

    declarative          "the red circle chases the blue square."            target = subject
    which-subject        "which red circle chases the blue square?"          target = subject
    which-object         "which blue square does the red circle chase?"      target = object
                         "which blue square is the red circle to the left of?"
    what-object          "what does the red circle chase?" / "what is the red circle above?"

The parse is stored as a parser would produce it: ``entities`` are the noun phrases in order of
appearance (with their determiner: "the red circle", "which blue square", "what"), ``relations``
``{"subject", "predicate", "object"}`` with the predicate in the sentence's own verb form ("chases"
in a statement, "chase" after "does", "is to the left of"), ``target`` = the grammatical subject of a
statement or the entity the wh-word asks about.

Proposals imitate a COCO detector's top-10 output: jittered boxes of the objects (IoU with the truth
mostly 0.6-0.95), looser duplicates, false positives on the background, misses (more under
occlusion), order shuffled per frame, M = ``--num-regions`` per frame; ``box_labels`` give the
*shape only* (ids into the card's ``label_names`` = the shape names, never the colour) with
``--label-noise``.

Ground truth: ``gt_sted`` = [first span frame, first frame after the span) in absolute frame ids;
``gt_frame_ids`` / ``gt_boxes`` = the target's exact boxes on the sampled frames inside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:  # running as ``python dataset_scripts/synthetic.py`` without the package installed
    import dataset_scripts  # noqa: F401
    import stvg_data  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the repo is installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset_scripts.extract import REPORT_FILE, STATE_DIR, ConversionError, cli_main, push_to_hub
from stvg_data.dataset_folder import DatasetFolderWriter, default_metadata, write_rows
from stvg_data.evaluation import box_iou
from stvg_data.protocol import sample_frame_ids
from stvg_data.schema import QUERY_CONFIG, QUERY_FEATURES, VIDEO_CONFIG, video_features

SPLITS = ("train", "validation", "test")

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring")
COLOURS = {
    "red": (220, 38, 38),
    "green": (34, 170, 60),
    "blue": (40, 90, 235),
    "yellow": (240, 212, 36),
    "purple": (150, 55, 205),
    "orange": (245, 135, 25),
    "cyan": (35, 205, 215),
    "pink": (245, 120, 185),
    "white": (245, 245, 245),
}
# predicate forms: statement (3rd person), after "does" (base), and whether the relation is spatial.
RELATIONS = {
    "chases": ("chases", "chase", False),
    "approaches": ("approaches", "approach", False),
    "moves away from": ("moves away from", "move away from", False),
    "circles around": ("circles around", "circle around", False),
    "jumps over": ("jumps over", "jump over", False),
    "pushes": ("pushes", "push", False),
    "is to the left of": ("is to the left of", "to the left of", True),
    "is above": ("is above", "above", True),
    "is to the right of": ("is to the right of", "to the right of", True),
    "is below": ("is below", "below", True),
}
SPATIAL_DIRECTIONS = {  # where S sits relative to O while the relation holds
    "is to the left of": (-1.0, 0.0),
    "is to the right of": (1.0, 0.0),
    "is above": (0.0, -1.0),
    "is below": (0.0, 1.0),
}
TEMPLATES = ("declarative", "which-subject", "which-object", "what-object")

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(num_train=24, num_val=8, num_test=8, min_frames=12, max_frames=16, width=128, height=96,
                 min_size=16, max_size=22, max_objects=5),
    "default": {},
    "large": dict(num_train=6000, num_val=1000, num_test=1000, min_frames=24, max_frames=40),
}


@dataclass
class SyntheticConfig:
    """Every knob of the generator; each field is a CLI flag (``--num-train`` for ``num_train``)."""

    output_dir: str = ""
    seed: int = 0
    preset: str = "default"
    num_train: int = field(default=1500, metadata={"help": "train queries"})
    num_val: int = field(default=300, metadata={"help": "validation queries"})
    num_test: int = field(default=300, metadata={"help": "test queries"})
    queries_per_clip: int = field(default=4, metadata={"help": "sentences per clip (distinct templates, <= 4)"})
    template_weights: list[float] = field(
        default_factory=lambda: [0.4, 0.25, 0.25, 0.1],
        metadata={"help": f"weights of the templates {TEMPLATES}"},
    )
    min_frames: int = field(default=20, metadata={"help": "fewest sampled frames per clip"})
    max_frames: int = field(default=28, metadata={"help": "most sampled frames per clip"})
    fps: float = field(default=30.0, metadata={"help": "fps of the simulated source video"})
    sample_fps: float = field(default=5.0, metadata={"help": "protocol sampling rate"})
    width: int = 160
    height: int = 120
    min_size: int = field(default=20, metadata={"help": "smallest object side in pixels"})
    max_size: int = field(default=28, metadata={"help": "largest object side in pixels"})
    shapes: list[str] = field(default_factory=lambda: list(SHAPES[:5]), metadata={"help": f"from {SHAPES}"})
    colours: list[str] = field(default_factory=lambda: list(COLOURS)[:5], metadata={"help": f"from {list(COLOURS)}"})
    relations: list[str] = field(
        default_factory=lambda: list(RELATIONS)[:8], metadata={"help": f"from {list(RELATIONS)}"}
    )
    min_span: float = field(default=0.25, metadata={"help": "smallest GT span, fraction of the clip"})
    max_span: float = field(default=0.65, metadata={"help": "largest GT span, fraction of the clip"})
    distractor_rate: float = field(default=0.5, metadata={"help": "share of clips whose targets get a same-shape-and-colour clone"})
    min_objects: int = field(default=4, metadata={"help": "fewest objects per clip (participants + clones + fillers)"})
    max_objects: int = field(default=6, metadata={"help": "most objects per clip"})
    confuser_rate: float = field(default=0.6, metadata={"help": "share of fillers sharing colour or shape with a participant"})
    wobble_px: float = field(default=1.5, metadata={"help": "idle wobble amplitude in pixels"})
    clutter_blobs: int = field(default=10, metadata={"help": "mean number of low-contrast background blobs"})
    clutter_contrast: float = field(default=18.0, metadata={"help": "background clutter contrast (intensity units)"})
    noise_std: float = field(default=2.0, metadata={"help": "per-frame pixel noise"})
    num_regions: int = field(default=10, metadata={"help": "proposals per frame (M)"})
    box_center_jitter: float = field(default=0.05, metadata={"help": "proposal centre jitter, fraction of the object size"})
    box_scale_jitter: float = field(default=0.07, metadata={"help": "proposal log-size jitter"})
    miss_rate: float = field(default=0.04, metadata={"help": "chance a visible object has no proposal"})
    duplicate_rate: float = field(default=0.25, metadata={"help": "chance of a looser duplicate box per object"})
    label_noise: float = field(default=0.1, metadata={"help": "chance an object's proposal gets a wrong shape label"})
    backbone: str = field(default="resnet18", metadata={"help": "timm backbone of the features (random init)"})
    feature_levels: list[int] = field(default_factory=lambda: [0], metadata={"help": "timm stages pooled (0 = stem)"})
    roi_pool_grid: int = field(default=3, metadata={"help": "RoI features pooled to a g x g grid (keeps shape layout)"})
    backbone_seed: int = field(default=0, metadata={"help": "seed of the random-initialised backbone"})
    feature_norm: str = field(default="none", metadata={"help": "none | l2"})
    feature_batch_frames: int = field(default=128, metadata={"help": "frames per backbone batch"})
    clips_per_shard: int = field(default=200, metadata={"help": "clips (and their queries) per parquet shard"})
    threads: int = field(default=0, metadata={"help": "torch threads (0 = torch default)"})
    no_progress: bool = False

    def validate(self) -> None:
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape(s) {unknown}; choose from {SHAPES}")
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown:
            raise ValueError(f"unknown colour(s) {unknown}; choose from {list(COLOURS)}")
        unknown = [r for r in self.relations if r not in RELATIONS]
        if unknown:
            raise ValueError(f"unknown relation(s) {unknown}; choose from {list(RELATIONS)}")
        if len(set(self.shapes)) * len(set(self.colours)) < 2:
            raise ValueError("need at least two distinct shape/colour descriptions")
        if not 0.0 < self.min_span <= self.max_span < 1.0:
            raise ValueError(f"need 0 < min_span <= max_span < 1, got {self.min_span}, {self.max_span}")
        if not 1 <= self.queries_per_clip <= len(TEMPLATES):
            raise ValueError(f"queries_per_clip must be in 1..{len(TEMPLATES)}")
        if len(self.template_weights) != len(TEMPLATES) or min(self.template_weights) < 0:
            raise ValueError(f"template_weights needs {len(TEMPLATES)} non-negative numbers")
        if np.count_nonzero(self.template_weights) < self.queries_per_clip:
            raise ValueError("fewer templates with positive weight than queries_per_clip")
        if self.min_frames < 8 or self.max_frames < self.min_frames:
            raise ValueError(f"need 8 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if self.min_objects < 4 or self.max_objects < self.min_objects:
            raise ValueError("need min_objects >= 4 (two participants + two clones) and max_objects >= min_objects")
        if not 8 <= self.min_size <= self.max_size <= min(self.width, self.height) / 3:
            raise ValueError("object sizes must satisfy 8 <= min_size <= max_size <= frame side / 3")
        if self.num_regions < self.max_objects:
            raise ValueError("num_regions must be at least max_objects")
        if not 0.0 <= self.distractor_rate <= 1.0:
            raise ValueError("distractor_rate must be in [0, 1]")
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


# ---------------------------------------------------------------------------------------- geometry
def boxes_from_centres(centres: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(..., N, 2) centres and (N,) sides -> (..., N, 4) x1 y1 x2 y2 (shapes fill their square box)."""
    half = np.asarray(sizes, dtype=np.float64)[..., None] / 2.0
    return np.concatenate([centres - half, centres + half], axis=-1)


def spatial_relation_holds(subject: np.ndarray, obj: np.ndarray, relation: str) -> np.ndarray:
    """Per-frame truth of a spatial relation between boxes (..., 4): S entirely on that side of O,
    overlapping it by at least half the smaller extent along the other axis."""
    dx, dy = SPATIAL_DIRECTIONS[relation]
    if dx:
        side = subject[..., 2] <= obj[..., 0] + 1.0 if dx < 0 else subject[..., 0] >= obj[..., 2] - 1.0
        lo, hi = np.maximum(subject[..., 1], obj[..., 1]), np.minimum(subject[..., 3], obj[..., 3])
        extent = np.minimum(subject[..., 3] - subject[..., 1], obj[..., 3] - obj[..., 1])
    else:
        side = subject[..., 3] <= obj[..., 1] + 1.0 if dy < 0 else subject[..., 1] >= obj[..., 3] - 1.0
        lo, hi = np.maximum(subject[..., 0], obj[..., 0]), np.minimum(subject[..., 2], obj[..., 2])
        extent = np.minimum(subject[..., 2] - subject[..., 0], obj[..., 2] - obj[..., 0])
    return side & (hi - lo >= 0.5 * extent)


def _inside(centres: np.ndarray, sizes: np.ndarray, width: int, height: int) -> bool:
    half = np.asarray(sizes, dtype=np.float64) / 2.0 + 1.0
    x, y = centres[..., 0], centres[..., 1]
    return bool(((x >= half) & (x <= width - half) & (y >= half) & (y <= height - half)).all())


def _wobble(rng: np.random.Generator, t: np.ndarray, count: int, amplitude: float) -> np.ndarray:
    """(T, count, 2) slow sinusoidal jitter, so idle objects are never perfectly still."""
    freq = rng.uniform(0.6, 1.8, size=(count, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(count, 2))
    return amplitude * np.sin(2 * np.pi * freq[None] * t[:, None, None] + phase[None])


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def script_relation(
    relation: str, rng: np.random.Generator, sizes: tuple[float, float], num_frames: int, start: int, length: int,
    width: int, height: int,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Centres (T, 2) of S and O for one staged event, true on frames [start, start+length) only.

    Returns (subject centres, object centres, subject drawn on top).
    """
    s_size, o_size = sizes
    gap = (s_size + o_size) / 2.0
    short = min(width, height)
    k = np.arange(num_frames, dtype=np.float64)
    u = np.clip((k - start) / max(length - 1, 1), 0.0, 1.0)[:, None]
    anchor = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
    direction = _unit(rng.uniform(0, 2 * np.pi))
    travel = rng.uniform(0.32, 0.45) * short
    on_top = False
    if relation == "chases":
        gap0, gap1 = gap + 0.9 * s_size, gap + 0.15 * s_size
        obj = anchor + u * travel * direction
        subject = obj - direction * (gap0 + (gap1 - gap0) * u)
    elif relation in ("approaches", "moves away from"):
        far, near = gap + travel, gap + 0.1 * min(sizes)
        distance = far + (near - far) * u if relation == "approaches" else near + (far - near) * u
        obj = np.repeat(anchor[None], num_frames, axis=0)
        subject = obj + distance * direction
    elif relation == "circles around":
        radius = gap + 0.35 * s_size
        theta0, turns = rng.uniform(0, 2 * np.pi), rng.uniform(0.75, 1.0) * rng.choice([-1.0, 1.0])
        theta = theta0 + 2 * np.pi * turns * u[:, 0]
        obj = np.repeat(anchor[None], num_frames, axis=0)
        subject = obj + radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif relation == "jumps over":
        side = rng.choice([-1.0, 1.0])
        reach, arc = gap + 0.5 * s_size, gap + 0.25 * s_size
        obj = np.repeat(anchor[None], num_frames, axis=0)
        x = side * reach * (2 * u[:, 0] - 1)
        y = -arc * np.sin(np.pi * u[:, 0])
        subject = obj + np.stack([x, y], axis=1)
        on_top = True
    elif relation == "pushes":
        contact = gap - 0.06 * min(sizes)
        obj = anchor + u * travel * direction
        subject = obj - direction * contact
    elif relation in SPATIAL_DIRECTIONS:
        rel = np.array(SPATIAL_DIRECTIONS[relation])
        perp = np.array([rel[1], rel[0]]) * rng.choice([-1.0, 1.0])
        d, dv = gap + 0.35 * max(sizes), gap + 0.3 * max(sizes)
        before, during = -rel * d, rel * d
        keys = [  # (frame index, S offset from O): detour around O through its perpendicular side
            (start - 4, before), (start - 3, before + perp * dv), (start - 2, perp * dv),
            (start - 1, during + perp * dv), (start, during),
            (start + length - 1, during), (start + length, during + perp * dv), (start + length + 1, perp * dv),
            (start + length + 2, before + perp * dv), (start + length + 3, before),
        ]
        frames_at = np.array([key[0] for key in keys], dtype=np.float64)
        offsets = np.array([key[1] for key in keys])
        offset = np.stack([np.interp(k, frames_at, offsets[:, 0]), np.interp(k, frames_at, offsets[:, 1])], axis=1)
        drift = _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0.0, 0.15) * short
        obj = anchor + (k / max(num_frames - 1, 1))[:, None] * drift
        subject = obj + offset
    else:
        raise ValueError(f"unknown relation {relation!r}")
    # Centre the whole event in the frame where it fits (shift only; the geometry is unchanged).
    both = np.concatenate([subject, obj])
    half = np.array([max(sizes) / 2 + 1.0] * 2)
    low, high = both.min(0) - half, both.max(0) + half
    room = np.array([width, height]) - (high - low)
    if (room >= 0).all():
        target_low = rng.uniform(0, 1, size=2) * room
        shift = target_low - low
        subject, obj = subject + shift, obj + shift
    return subject, obj, on_top


# ---------------------------------------------------------------------------------------- rendering
def shape_alpha(shape: str, dx: np.ndarray, dy: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of ``shape`` at pixel offsets (dx, dy) from its centre; ``half`` = side / 2
    (broadcastable). Each shape exactly fills its square bounding box."""
    x, y = dx / half, dy / half
    if shape == "circle":
        distance = np.sqrt(x * x + y * y) - 1.0
    elif shape == "square":
        distance = np.maximum(np.abs(x), np.abs(y)) - 1.0
    elif shape == "diamond":
        distance = (np.abs(x) + np.abs(y) - 1.0) / math.sqrt(2.0)
    elif shape == "triangle":  # apex up, base at the bottom of the box
        side_edge = (2 * np.abs(x) - (y + 1.0)) / math.sqrt(5.0)
        distance = np.maximum(np.maximum(side_edge, y - 1.0), -1.0 - y)
    elif shape == "cross":
        bar_h = np.maximum(np.abs(x) - 1.0, np.abs(y) - 1.0 / 3.0)
        bar_v = np.maximum(np.abs(x) - 1.0 / 3.0, np.abs(y) - 1.0)
        distance = np.minimum(bar_h, bar_v)
    elif shape == "star":  # five points, outer radius 1, inner 0.45
        angle = np.arctan2(x, -y)
        sector = np.mod(angle, 2 * np.pi / 5) - np.pi / 5
        radius = 0.45 + 0.55 * np.abs(sector) / (np.pi / 5)
        distance = np.sqrt(x * x + y * y) - radius
    elif shape == "ring":
        distance = np.abs(np.sqrt(x * x + y * y) - 0.72) - 0.28
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - distance * half, 0.0, 1.0)


def render_background(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """(H, W, 3) float: a muted gradient, soft low-contrast blobs and smooth texture (mild clutter)."""
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(95, 165) + rng.uniform(-12, 12, size=3)
    grad = rng.uniform(-22, 22, size=(2, 3))
    image = base + (xx / w - 0.5)[..., None] * grad[0] + (yy / h - 0.5)[..., None] * grad[1]
    count = rng.poisson(cfg.clutter_blobs)
    if count:
        cx, cy = rng.uniform(0, w, count), rng.uniform(0, h, count)
        rx, ry = rng.uniform(6, 30, count), rng.uniform(6, 30, count)
        tint = rng.uniform(-1, 1, size=(count, 3)) * cfg.clutter_contrast
        d = ((xx[None] - cx[:, None, None]) / rx[:, None, None]) ** 2 + ((yy[None] - cy[:, None, None]) / ry[:, None, None]) ** 2
        soft = np.exp(-d * rng.uniform(0.8, 3.0, count)[:, None, None])  # (count, H, W)
        image = image + np.einsum("khw,kc->hwc", soft, tint)
    coarse = rng.normal(0, 6.0, size=(h // 8 + 2, w // 8 + 2, 3))
    iy, ix = np.linspace(0, coarse.shape[0] - 1.001, h), np.linspace(0, coarse.shape[1] - 1.001, w)
    y0, x0 = iy.astype(int), ix.astype(int)
    fy, fx = (iy - y0)[:, None, None], (ix - x0)[None, :, None]
    texture = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
               + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    return (image + texture).astype(np.float32)


def render_clip(
    rng: np.random.Generator, cfg: SyntheticConfig, centres: np.ndarray, sizes: np.ndarray, shapes: list[str],
    colours: np.ndarray, order: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 (T, H, W, 3) and each object's visible fraction (T, N).

    ``order`` is the drawing order (back to front). Objects are composited front to back on a
    transmittance canvas, each one over all T frames at once through a (T, P, P) patch around it
    (P = largest side + margin), so the work is per object, not per pixel of the whole frame.
    """
    num_frames, count = centres.shape[:2]
    h, w = cfg.height, cfg.width
    background = render_background(rng, cfg)
    pad = int(math.ceil(float(np.max(sizes)))) + 4
    patch = np.arange(pad, dtype=np.float32)
    colour_acc = np.zeros((num_frames, h + 2 * pad, w + 2 * pad, 3), dtype=np.float32)
    transmit = np.ones((num_frames, h + 2 * pad, w + 2 * pad), dtype=np.float32)
    visible = np.zeros((num_frames, count), dtype=np.float32)
    frame_index = np.arange(num_frames)[:, None, None]
    for n in order[::-1]:  # front to back; each step is vectorised over frames and patch pixels
        centre = centres[:, n].astype(np.float32)  # (T, 2)
        corner = np.floor(centre - pad / 2).astype(np.int64)  # patch origin in frame pixels
        px = corner[:, 0, None] + patch[None].astype(np.int64)  # (T, P) frame columns
        py = corner[:, 1, None] + patch[None].astype(np.int64)
        dx = (px + 0.5 - centre[:, 0, None])[:, None, :]  # pixel centres relative to the object
        dy = (py + 0.5 - centre[:, 1, None])[:, :, None]
        half = np.float32(sizes[n] / 2.0)
        alpha = shape_alpha(shapes[n], dx, dy, half).astype(np.float32)  # (T, P, P)
        inside = ((px >= 0) & (px < w))[:, None, :] & ((py >= 0) & (py < h))[:, :, None]
        alpha = alpha * inside
        shade = (1.0 + 0.08 * np.clip(-dy / half, -1, 1)) * rng.uniform(0.97, 1.03, size=(num_frames, 1, 1))
        rows, cols = (py + pad)[:, :, None], (px + pad)[:, None, :]
        through = transmit[frame_index, rows, cols]
        weight = alpha * through
        colour_acc[frame_index, rows, cols] += (weight * shade)[..., None] * colours[n]
        transmit[frame_index, rows, cols] = through * (1.0 - alpha)
        visible[:, n] = weight.sum(axis=(1, 2)) / np.maximum(alpha.sum(axis=(1, 2)), 1e-6)
    crop = (slice(None), slice(pad, pad + h), slice(pad, pad + w))
    image = colour_acc[crop] + transmit[crop][..., None] * background[None]
    # Sensor noise: uniform with standard deviation noise_std (much cheaper to draw than Gaussian).
    image += (rng.random(size=image.shape, dtype=np.float32) - 0.5) * np.float32(cfg.noise_std * math.sqrt(12.0))
    frames = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames, visible


# ---------------------------------------------------------------------------------------- proposals
def make_proposals(
    rng: np.random.Generator, cfg: SyntheticConfig, true_boxes: np.ndarray, shape_ids: np.ndarray,
    visible: np.ndarray, num_shapes: int,
) -> dict[str, np.ndarray]:
    """Detector-like proposals (T, M): jittered true boxes, looser duplicates, background false
    positives, misses; top M by score, then shuffled per frame. Labels = shape ids with noise."""
    num_frames, count = true_boxes.shape[:2]
    m, w, h = cfg.num_regions, cfg.width, cfg.height
    size = true_boxes[..., 2:] - true_boxes[..., :2]  # (T, N, 2)
    centre = (true_boxes[..., 2:] + true_boxes[..., :2]) / 2

    def jitter(centre_sigma: float, scale_sigma: float) -> np.ndarray:
        c = centre + rng.normal(0, centre_sigma, size=centre.shape) * size
        s = size * np.exp(rng.normal(0, scale_sigma, size=size.shape))
        return np.concatenate([c - s / 2, c + s / 2], axis=-1)

    limits = np.array([w, h, w, h], dtype=np.float64)
    tight = np.clip(jitter(cfg.box_center_jitter, cfg.box_scale_jitter), 0, limits)
    loose = np.clip(jitter(3 * cfg.box_center_jitter, 3 * cfg.box_scale_jitter), 0, limits)
    detected = (rng.random((num_frames, count)) >= cfg.miss_rate) & (visible >= 0.3)
    tight_score = np.clip(rng.beta(8, 1.6, (num_frames, count)) * (0.55 + 0.45 * visible), 0.05, 0.999)
    duplicate = detected & (rng.random((num_frames, count)) < cfg.duplicate_rate)
    loose_score = tight_score * rng.uniform(0.3, 0.8, (num_frames, count))
    # Background false positives: random boxes of object-like size, low scores.
    fp_size = rng.uniform(0.6, 1.6, size=(num_frames, m, 2)) * rng.uniform(cfg.min_size, cfg.max_size, (num_frames, m, 1))
    fp_corner = rng.uniform(0, 1, size=(num_frames, m, 2)) * (np.array([w, h]) - fp_size)
    fp_boxes = np.concatenate([fp_corner, fp_corner + fp_size], axis=-1)
    fp_score = rng.beta(1.3, 5.0, (num_frames, m))

    def noisy_labels(labels: np.ndarray, rate: float) -> np.ndarray:
        flip = rng.random(labels.shape) < rate
        other = (labels + rng.integers(1, num_shapes, labels.shape)) % num_shapes
        return np.where(flip, other, labels)

    obj_labels = np.broadcast_to(shape_ids[None], (num_frames, count))
    boxes = np.concatenate([tight, loose, fp_boxes], axis=1)
    scores = np.concatenate([np.where(detected, tight_score, -1.0), np.where(duplicate, loose_score, -1.0), fp_score], axis=1)
    labels = np.concatenate([
        noisy_labels(obj_labels, cfg.label_noise),
        noisy_labels(obj_labels, 2 * cfg.label_noise),
        rng.integers(0, num_shapes, (num_frames, m)),
    ], axis=1)
    source = np.concatenate([  # which object a candidate belongs to (-1 = background)
        np.broadcast_to(np.arange(count), (num_frames, count)),
        np.broadcast_to(np.arange(count), (num_frames, count)),
        np.full((num_frames, m), -1),
    ], axis=1)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :m]  # the detector keeps its M best
    shuffle = np.argsort(rng.random((num_frames, m)), axis=1)
    pick = np.take_along_axis(top, shuffle, axis=1)
    take = lambda a: np.take_along_axis(a, pick if a.ndim == 2 else pick[..., None], axis=1)  # noqa: E731
    return {
        "boxes": take(boxes).astype(np.float32),
        "box_scores": take(scores).astype(np.float32),
        "box_labels": take(labels).astype(np.int32),
        "source": take(source).astype(np.int32),
    }


# ---------------------------------------------------------------------------------------- sentences
def make_query(template: str, relation: str, subject: str, obj: str) -> dict[str, Any]:
    """Sentence and parse for one template; ``subject``/``obj`` are descriptions ("red circle")."""
    statement, base, spatial = RELATIONS[relation]
    if template == "declarative":
        sentence = f"the {subject} {statement} the {obj}."
        entities, rel, target = [f"the {subject}", f"the {obj}"], (0, statement, 1), 0
    elif template == "which-subject":
        sentence = f"which {subject} {statement} the {obj}?"
        entities, rel, target = [f"which {subject}", f"the {obj}"], (0, statement, 1), 0
    elif template in ("which-object", "what-object"):
        wh = f"which {obj}" if template == "which-object" else "what"
        if spatial:
            sentence = f"{wh} is the {subject} {base}?"
            predicate = statement
        else:
            sentence = f"{wh} does the {subject} {base}?"
            predicate = base
        entities, rel, target = [wh, f"the {subject}"], (1, predicate, 0), 0
    else:
        raise ValueError(f"unknown template {template!r}")
    return {
        "sentence": sentence,
        "qtype": "declarative" if template == "declarative" else "interrogative",
        "entities": entities,
        "relations": [{"subject": rel[0], "predicate": rel[1], "object": rel[2]}],
        "target": target,
        "target_role": "subject" if template in ("declarative", "which-subject") else "object",
    }


# ---------------------------------------------------------------------------------------- one clip
def _describe(shape: str, colour: str) -> str:
    return f"{colour} {shape}"


def _place_others(
    rng: np.random.Generator, cfg: SyntheticConfig, placed: np.ndarray, placed_sizes: np.ndarray,
    size: float, t: np.ndarray, far_from: list[int], margin_far: float, forbid: list[tuple[int, str, bool]],
    start: int, length: int, candidates: int = 128,
) -> np.ndarray | None:
    """A slowly drifting path (T, 2) for one more object, keeping clear of the placed objects.

    Candidates are drawn together and checked vectorised: inside the frame, boxes never overlapping
    placed objects (with extra ``margin_far`` from the ``far_from`` participants), and, for clones,
    the spatial relation in ``forbid`` (partner index, relation, clone is the subject) false
    during the span.
    """
    w, h = cfg.width, cfg.height
    half = size / 2 + 1.0
    p0 = rng.uniform([half, half], [w - half, h - half], size=(candidates, 2))
    drift = rng.normal(0, 0.12 * min(w, h), size=(candidates, 2))
    p1 = np.clip(p0 + drift, [half, half], [w - half, h - half])
    path = p0[:, None] + (p1 - p0)[:, None] * t[None, :, None]  # (K, T, 2)
    ok = np.ones(candidates, dtype=bool)
    if len(placed):
        gap = np.abs(path[:, :, None, :] - placed[None])  # (K, T, P, 2)
        need = (size + placed_sizes)[None, None, :, None] / 2 + 2.0
        extra = np.zeros(len(placed_sizes))
        extra[far_from] = margin_far
        need = need + extra[None, None, :, None]
        clear = (gap >= need).any(axis=-1)  # separated along x or y
        ok &= clear.all(axis=(1, 2))
    span = slice(start, start + length)
    for partner, relation, clone_is_subject in forbid:
        own = boxes_from_centres(path[:, span], np.array([size]))
        other = boxes_from_centres(placed[None, span, partner], np.array([placed_sizes[partner]]))  # broadcast over K
        holds = spatial_relation_holds(own, other, relation) if clone_is_subject else spatial_relation_holds(other, own, relation)
        ok &= ~holds.any(axis=1)
    good = np.flatnonzero(ok)
    return None if len(good) == 0 else path[good[0]]


def make_clip(
    rng: np.random.Generator, cfg: SyntheticConfig, relation: str, with_clones: bool, clip_id: str, max_tries: int = 60,
) -> dict[str, Any]:
    """One clip: layout, trajectories, rendered frames, proposals, its queries (features added later)."""
    shapes, colours = list(cfg.shapes), list(cfg.colours)
    step = cfg.fps / cfg.sample_fps
    for _ in range(max_tries):
        wanted = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
        begin = int(rng.integers(0, 40)) * int(round(step)) + int(rng.integers(0, int(round(step))))
        end = begin + int(round(wanted * step))
        frame_ids = np.asarray(sample_frame_ids(begin, end, cfg.fps, cfg.sample_fps), dtype=np.int64)
        num_frames = len(frame_ids)
        t = (frame_ids - begin) / (end - begin)
        # GT span on the sampled grid: fraction (frame_ids[i+n] - frame_ids[i]) / clip length in range.
        bounds = np.append(frame_ids, end)
        lengths = np.arange(1, num_frames + 1)
        starts = np.arange(num_frames)
        frac = (bounds[np.minimum(starts[:, None] + lengths[None], num_frames)] - bounds[starts[:, None]]) / (end - begin)
        valid = (starts[:, None] + lengths[None] <= num_frames) & (frac >= cfg.min_span) & (frac <= cfg.max_span)
        options = np.argwhere(valid)
        if not len(options):
            continue
        start, length = options[rng.integers(len(options))]
        start, length = int(start), int(length + 1)
        # Descriptions: S and O differ in shape or colour (or both).
        s_desc = (str(rng.choice(shapes)), str(rng.choice(colours)))
        o_desc = s_desc
        while o_desc == s_desc:
            o_desc = (str(rng.choice(shapes)), str(rng.choice(colours)))
        sizes = rng.uniform(cfg.min_size, cfg.max_size, size=2)
        subject, obj, on_top = script_relation(relation, rng, tuple(sizes), num_frames, start, length, cfg.width, cfg.height)
        wob = _wobble(rng, t, 2, cfg.wobble_px)
        centres = [subject + wob[:, 0], obj + wob[:, 1]]
        if not _inside(np.stack(centres, 1), sizes, cfg.width, cfg.height):
            continue
        descs, obj_sizes, roles = [s_desc, o_desc], list(sizes), ["subject", "object"]
        spatial = relation in SPATIAL_DIRECTIONS
        if spatial:
            truth = spatial_relation_holds(*(boxes_from_centres(c, np.array([s])) for c, s in zip(centres, sizes)), relation)
            expected = np.zeros(num_frames, dtype=bool)
            expected[start:start + length] = True
            if not np.array_equal(truth, expected):
                continue
        total = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        plan: list[tuple[tuple[str, str], str]] = []
        if with_clones:
            plan += [(s_desc, "clone-subject"), (o_desc, "clone-object")]
        while len(plan) + 2 < total:
            if rng.random() < cfg.confuser_rate:  # shares colour or shape with a participant
                ref = s_desc if rng.random() < 0.5 else o_desc
                desc = (str(rng.choice(shapes)), ref[1]) if rng.random() < 0.5 else (ref[0], str(rng.choice(colours)))
            else:
                desc = (str(rng.choice(shapes)), str(rng.choice(colours)))
            if desc in (s_desc, o_desc):
                continue
            plan.append((desc, "filler"))
        failed = False
        for desc, role in plan:
            size = float(rng.uniform(cfg.min_size, cfg.max_size))
            forbid = []
            if spatial and role == "clone-subject":
                forbid = [(1, relation, True)]
            elif spatial and role == "clone-object":
                forbid = [(0, relation, False)]
            margin = 0.5 * cfg.max_size if role.startswith("clone") else 0.0
            path = _place_others(rng, cfg, np.stack(centres, 1), np.array(obj_sizes), size, t, [0, 1], margin,
                                 forbid, start, length)
            if path is None:
                failed = True
                break
            centres.append(path + _wobble(rng, t, 1, cfg.wobble_px)[:, 0])
            descs.append(desc)
            obj_sizes.append(size)
            roles.append(role)
        if failed or not _inside(np.stack(centres, 1), np.array(obj_sizes), cfg.width, cfg.height):
            continue
        break
    else:
        raise RuntimeError(f"{clip_id}: could not lay out a {relation!r} clip in {max_tries} tries; "
                           "use a larger frame, smaller objects or fewer objects")
    centres_a = np.stack(centres, axis=1)  # (T, N, 2)
    sizes_a = np.array(obj_sizes)
    count = len(descs)
    order = rng.permutation(count)
    if on_top:  # the jumping subject passes in front of what it jumps over
        order = np.concatenate([order[order != 0], [0]])
    shape_names = [d[0] for d in descs]
    colour_rgb = np.array([COLOURS[d[1]] for d in descs], dtype=np.float32)
    frames, visible = render_clip(rng, cfg, centres_a, sizes_a, shape_names, colour_rgb, order)
    true_boxes = np.clip(boxes_from_centres(centres_a, sizes_a), 0, [cfg.width, cfg.height] * 2)
    shape_ids = np.array([shapes.index(s) for s in shape_names])
    proposals = make_proposals(rng, cfg, true_boxes, shape_ids, visible, len(shapes))
    # Queries: distinct templates with the configured weights.
    weights = np.asarray(cfg.template_weights, dtype=np.float64)
    templates = rng.choice(len(TEMPLATES), size=cfg.queries_per_clip, replace=False, p=weights / weights.sum())
    gt_sted = [int(frame_ids[start]), int(frame_ids[start + length]) if start + length < num_frames else int(end)]
    queries = []
    for template in sorted(int(x) for x in templates):
        q = make_query(TEMPLATES[template], relation, _describe(*s_desc), _describe(*o_desc))
        target_obj = 0 if q["target_role"] == "subject" else 1
        q.update(
            gt_sted=gt_sted,
            gt_frame_ids=frame_ids[start:start + length].astype(int).tolist(),
            gt_boxes=true_boxes[start:start + length, target_obj].astype(np.float32).tolist(),
            target_object=target_obj,
            has_distractor=bool(any(descs[j] == descs[target_obj] for j in range(2, count))),
            template=TEMPLATES[template],
        )
        queries.append(q)
    return {
        "video_id": clip_id, "fps": cfg.fps, "width": cfg.width, "height": cfg.height,
        "frame_count": int(end + rng.integers(0, 120)), "segment": [begin, end], "frame_ids": frame_ids.astype(int).tolist(),
        "frames": frames, "proposals": proposals, "true_boxes": true_boxes, "descs": descs, "roles": roles,
        "relation": relation, "span": (start, length), "span_fraction": (gt_sted[1] - gt_sted[0]) / (end - begin),
        "queries": queries,
    }


# ---------------------------------------------------------------------------------------- dataset
def build_feature_extractor(cfg: SyntheticConfig):
    from processing_stvg.feature_extraction_stvg import StvgFeatureExtractor

    return StvgFeatureExtractor(
        backbone=cfg.backbone, feature_levels=cfg.feature_levels, random_init=True, seed=cfg.backbone_seed,
        num_regions=cfg.num_regions, batch_size=cfg.feature_batch_frames, feature_norm=cfg.feature_norm,
        roi_pool_grid=cfg.roi_pool_grid,
        label_names=list(cfg.shapes),
    )


def _split_plan(cfg: SyntheticConfig, split: str, num_queries: int) -> tuple[list[str], list[bool], list[int]]:
    """Per clip: relation (balanced), clone flag (exactly ceil(rate * clips) clips), query count."""
    num_clips = math.ceil(num_queries / cfg.queries_per_clip) if num_queries else 0
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), 7919])
    cycle = rng.permutation(len(cfg.relations))  # balanced: every relation once per len(relations) clips
    relations = [cfg.relations[cycle[i % len(cycle)]] for i in range(num_clips)]
    relations = [relations[i] for i in rng.permutation(num_clips)]
    flagged = np.zeros(num_clips, dtype=bool)
    flagged[: math.ceil(cfg.distractor_rate * num_clips - 1e-9)] = True
    flagged = flagged[rng.permutation(num_clips)]
    counts = [cfg.queries_per_clip] * num_clips
    if num_clips and num_queries % cfg.queries_per_clip:
        counts[-1] = num_queries % cfg.queries_per_clip
    return relations, flagged.tolist(), counts


def generate_split(cfg: SyntheticConfig, split: str, num_queries: int, extractor, progress: bool = True):
    """Clips of one split with features: (video rows, query rows, per-clip stats)."""
    from tqdm.auto import tqdm

    relations, flagged, counts = _split_plan(cfg, split, num_queries)
    video_rows, query_rows, stats = [], [], []
    pending: list[dict[str, Any]] = []
    proposal_ious: list[np.ndarray] = []

    def flush() -> None:
        if not pending:
            return
        frames = np.concatenate([c["frames"] for c in pending])
        boxes = np.concatenate([c["proposals"]["boxes"] for c in pending])
        scores = np.concatenate([c["proposals"]["box_scores"] for c in pending])
        labels = np.concatenate([c["proposals"]["box_labels"] for c in pending])
        out = extractor.extract(frames, boxes=boxes, box_scores=scores, box_labels=labels)
        offset = 0
        for clip in pending:
            n = len(clip["frame_ids"])
            part = {key: value[offset:offset + n] for key, value in out.items()}
            offset += n
            video_rows.append({
                **{key: clip[key] for key in ("video_id", "fps", "width", "height", "frame_count", "segment", "frame_ids")},
                "boxes": part["boxes"], "box_scores": part["box_scores"], "box_labels": part["box_labels"],
                "region_features": part["region_features"].astype(np.float16),
                "frame_features": part["frame_features"].astype(np.float16),
            })
        pending.clear()

    bar = tqdm(total=len(relations), desc=f"{split} clips", disable=not progress, leave=False)
    frames_pending = 0
    for index, (relation, with_clones, count) in enumerate(zip(relations, flagged, counts)):
        rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
        clip_id = f"synth-{split}-{index:05d}"
        clip = make_clip(rng, cfg, relation, with_clones, clip_id)
        for q_index, q in enumerate(clip["queries"][:count]):
            query_rows.append({
                "query_id": f"{clip_id}-q{q_index}", "video_id": clip_id, "sentence": q["sentence"], "qtype": q["qtype"],
                "entities": q["entities"], "relations": q["relations"], "target": q["target"],
                "gt_sted": q["gt_sted"], "gt_frame_ids": q["gt_frame_ids"], "gt_boxes": q["gt_boxes"],
            })
            stats.append({
                "relation": relation, "template": q["template"], "has_distractor": q["has_distractor"],
                "span_fraction": clip["span_fraction"],
            })
        proposals, truth = clip["proposals"], clip["true_boxes"]
        src = proposals["source"]
        matched = src >= 0
        iou = box_iou(proposals["boxes"], np.take_along_axis(truth, np.maximum(src, 0)[..., None], axis=1))
        proposal_ious.append(iou[matched])
        bar.update(1)
        pending.append(clip)
        frames_pending += len(clip["frame_ids"])
        if frames_pending >= cfg.feature_batch_frames:
            flush()
            frames_pending = 0
    flush()
    bar.close()
    ious = np.concatenate(proposal_ious) if proposal_ious else np.zeros(0)
    return video_rows, query_rows, stats, ious


# What a dataset folder holds (this script's or a converter's): ``--overwrite`` replaces only such a folder.
DATASET_ENTRIES = frozenset({"README.md", VIDEO_CONFIG, QUERY_CONFIG, REPORT_FILE, STATE_DIR})


def check_output_dir(output_dir: str | Path, overwrite: bool = False) -> Path:
    """``output_dir`` must be new or empty; with ``overwrite``, it may hold a dataset folder (and nothing else)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ConversionError(f"--output-dir {str(path)!r} is a file, not a folder")
    entries = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    if entries and not overwrite:
        raise ConversionError(
            f"--output-dir {str(path)!r} is not empty ({', '.join(entries[:5])}): a rebuild into it could leave "
            "shards of the old dataset behind; pass --overwrite to replace its dataset, or use a new --output-dir"
        )
    foreign = [name for name in entries
               if name not in DATASET_ENTRIES and not (name.startswith(".") and name.endswith(".tmp"))]
    if foreign:
        raise ConversionError(
            f"--output-dir {str(path)!r} holds {', '.join(foreign[:5])}, which are not part of a dataset folder; "
            "--overwrite replaces whole dataset folders only: use a new --output-dir"
        )
    return path


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` (if any) by the finished ``staging`` folder: two renames on one filesystem."""
    if not target.exists():
        os.rename(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old)  # a folder may replace an empty one
    try:
        os.rename(staging, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old)


def build_dataset(cfg: SyntheticConfig, overwrite: bool = False) -> dict[str, Any]:
    """Generate all splits, write the contract folder, return the summary.

    The folder is built beside ``cfg.output_dir`` and swapped in when finished (see ``check_output_dir``)."""
    cfg.validate()
    target = check_output_dir(cfg.output_dir, overwrite).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.building-{os.getpid()}-{time.time_ns()}"
    staging.mkdir()  # the umask's mode, as a folder made in place would have (mkdtemp's is 0700)
    try:
        summary = _build_into(cfg, staging)
        _swap_in(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return summary


def _build_into(cfg: SyntheticConfig, folder: Path) -> dict[str, Any]:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    extractor = build_feature_extractor(cfg)
    features = video_features(cfg.num_regions, extractor.region_dim, extractor.frame_dim, with_features=True)
    writer = DatasetFolderWriter(folder)
    summary: dict[str, Any] = {"splits": {}}
    all_stats = []
    all_ious: list[np.ndarray] = []
    sizes = {"train": cfg.num_train, "validation": cfg.num_val, "test": cfg.num_test}
    for split in SPLITS:
        videos, queries, stats, ious = generate_split(cfg, split, sizes[split], extractor, progress=not cfg.no_progress)
        per_shard = max(1, cfg.clips_per_shard)
        write_rows(writer, "videos", split, videos, features, per_shard)
        write_rows(writer, "queries", split, queries, QUERY_FEATURES, per_shard * cfg.queries_per_clip)
        all_stats += stats
        all_ious.append(ious)
        summary["splits"][split] = {
            "clips": len(videos), "queries": len(queries),
            "frames": int(sum(len(v["frame_ids"]) for v in videos)),
            "distractor_rate": float(np.mean([s["has_distractor"] for s in stats])) if stats else 0.0,
        }
    fractions = np.array([s["span_fraction"] for s in all_stats]) if all_stats else np.zeros(0)
    summary.update(
        queries=len(all_stats),
        clips=sum(s["clips"] for s in summary["splits"].values()),
        distractor_rate=float(np.mean([s["has_distractor"] for s in all_stats])) if all_stats else 0.0,
        span_fraction_mean=float(fractions.mean()) if len(fractions) else 0.0,
        span_fraction_min=float(fractions.min()) if len(fractions) else 0.0,
        span_fraction_max=float(fractions.max()) if len(fractions) else 0.0,
        relations={r: sum(s["relation"] == r for s in all_stats) for r in cfg.relations},
        templates={t: sum(s["template"] == t for s in all_stats) for t in TEMPLATES},
        region_dim=extractor.region_dim, frame_dim=extractor.frame_dim,
    )
    ious = np.concatenate(all_ious) if all_ious else np.zeros(0)
    summary["proposal_iou_in_0.6_0.95"] = float(((ious >= 0.6) & (ious <= 0.95)).mean()) if len(ious) else 0.0
    summary["proposal_iou_median"] = float(np.median(ious)) if len(ious) else 0.0
    generator = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("output_dir", "no_progress", "threads")}
    metadata = default_metadata(
        source="synthetic", label_names=list(cfg.shapes), num_regions=cfg.num_regions,
        region_dim=extractor.region_dim, frame_dim=extractor.frame_dim, with_features=True,
        synthetic={"generator": generator, "feature_extractor": extractor.to_dict(),
                   "summary": {k: v for k, v in summary.items() if k != "build_seconds"}},
    )
    writer.finalize(metadata, description=_card_text(cfg, summary), pretty_name="stvg-vem synthetic benchmark")
    summary["build_seconds"] = time.perf_counter() - started
    return summary


def _card_text(cfg: SyntheticConfig, summary: dict[str, Any]) -> str:
    return (
        "# stvg-vem synthetic STVG benchmark\n\n"
        "Procedurally generated clips of coloured shapes; each sentence describes a relation between two objects "
        "that holds only during a ground-truth span. Built by `dataset_scripts/synthetic.py` "
        f"(seed {cfg.seed}); see that file's docstring for the generation rules.\n\n"
        f"- clips: {summary['clips']}, queries: {summary['queries']}\n"
        f"- distractor rate: {summary['distractor_rate']:.3f}\n"
        f"- mean GT span fraction: {summary['span_fraction_mean']:.3f}\n"
        f"- shapes: {', '.join(cfg.shapes)}; colours: {', '.join(cfg.colours)}\n"
        f"- relations: {', '.join(cfg.relations)}\n"
        f"- features: {cfg.backbone} (random init, seed {cfg.backbone_seed}), stages {cfg.feature_levels}, "
        f"RoI-Align + average pool to a {cfg.roi_pool_grid}x{cfg.roi_pool_grid} grid\n"
    )


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["synthetic STVG benchmark"]
    for split, info in summary["splits"].items():
        lines.append(f"  {split:<10} clips {info['clips']:>5}  queries {info['queries']:>5}  frames {info['frames']:>6}  "
                     f"distractor rate {info['distractor_rate']:.3f}")
    lines += [
        f"  queries {summary['queries']}  clips {summary['clips']}",
        f"  distractor rate {summary['distractor_rate']:.3f}",
        f"  GT span fraction mean {summary['span_fraction_mean']:.3f} "
        f"(min {summary['span_fraction_min']:.3f}, max {summary['span_fraction_max']:.3f})",
        f"  relations {json.dumps(summary['relations'])}",
        f"  templates {json.dumps(summary['templates'])}",
        f"  object proposals: IoU with truth in [0.6, 0.95] {summary['proposal_iou_in_0.6_0.95']:.3f}, "
        f"median {summary['proposal_iou_median']:.3f}",
        f"  features region_dim {summary['region_dim']} frame_dim {summary['frame_dim']}",
        f"  build time {summary['build_seconds']:.1f} s",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(SyntheticConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name == "output_dir":
            parser.add_argument(flag, required=True, help="folder to write (Hub-style dataset layout)")
        elif f.name == "preset":
            parser.add_argument(flag, choices=sorted(PRESETS), default="default", help="size preset; flags override it")
        elif isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        elif isinstance(default, list):
            kind = type(default[0]) if default else str
            parser.add_argument(flag, nargs="+", type=kind, default=None, help=f"{help_text} (default {default})")
        else:
            parser.add_argument(flag, type=type(default), default=None, help=f"{help_text} (default {default})")
    output = parser.add_argument_group("output (not generator settings)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace the dataset folder already at --output-dir (default: refuse a non-empty folder)")
    output.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the finished dataset")
    output.add_argument("--private", action="store_true", help="create the Hub repo as private")
    output.add_argument("--hub-token", default=None, help="Hub token (default: the logged-in one)")
    return parser


OUTPUT_OPTIONS = ("overwrite", "push_to_hub", "private", "hub_token")


def parse_args(argv: list[str] | None = None) -> tuple[SyntheticConfig, dict[str, Any]]:
    """The generator config and the output options (``OUTPUT_OPTIONS``)."""
    args = vars(_parser().parse_args(argv))
    options = {name: args.pop(name) for name in OUTPUT_OPTIONS}
    values = dict(PRESETS[args["preset"]])
    values.update({k: v for k, v in args.items() if v is not None and not (isinstance(v, bool) and not v)})
    return SyntheticConfig(**values), options


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, options = parse_args(argv)
    summary = build_dataset(cfg, overwrite=options["overwrite"])
    print(format_summary(summary))
    if options["push_to_hub"]:
        push_to_hub(cfg.output_dir, options["push_to_hub"], token=options["hub_token"], private=options["private"])
        print(f"pushed {cfg.output_dir} to the Hub dataset repo {options['push_to_hub']}", flush=True)
    return summary


if __name__ == "__main__":
    sys.exit(cli_main(main, None))
