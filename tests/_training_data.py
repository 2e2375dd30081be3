"""Tiny contract datasets for the training tests (built in the test, seconds on a CPU).

Clips of T in [6, 8] frames, M = 4 proposals, small feature sizes; every query has an entity pair
and one relation (``relations=False`` gives queries without any). Features carry a weak signal:
the region features of the target's proposal are shifted by a per-word code, so a model can learn
something, but the tests only check mechanics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stvg_data.dataset_folder import DatasetFolderWriter, default_metadata, write_rows
from stvg_data.schema import QUERY_FEATURES, video_features

M, DV, DF = 4, 8, 8
WIDTH, HEIGHT = 64, 48
COLOURS = ("red", "blue", "green")
SHAPES = ("circle", "square")
PREDICATES = ("chases", "is left of", "jumps over")

TINY_MODEL_ARGS = [
    "--hidden-size", "16", "--num-attention-heads", "2", "--num-layers", "1", "--intermediate-size", "32",
    "--word-embedding-dim", "8", "--learning-rate", "3e-3", "--warmup-ratio", "0.2", "--no-progress",
    "--report-to", "none",
]


def _video(rng: np.random.Generator, video_id: str, codes: dict[str, np.ndarray]) -> tuple[dict[str, Any], list]:
    frames = int(rng.integers(6, 9))
    frame_ids = [6 * t for t in range(frames)]
    corners = rng.uniform(0, 30, size=(frames, M, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + [20, 14]], axis=-1).astype(np.float32)
    labels = rng.integers(0, len(SHAPES), size=(frames, M)).astype(np.int32)
    labels[rng.uniform(size=(frames, M)) < 0.1] = -1
    labels[:, 0] = 0  # proposal 0 is the target's and always real
    region = rng.normal(scale=0.5, size=(frames, M, DV)).astype(np.float32)
    start = int(rng.integers(0, frames // 2))
    end = int(rng.integers(start + 2, frames + 1))
    words = [str(rng.choice(COLOURS)), str(rng.choice(SHAPES))]
    for word in words:
        region[start:end, 0] += codes[word]
    row = {
        "video_id": video_id, "fps": 30.0, "width": WIDTH, "height": HEIGHT, "frame_count": 6 * frames,
        "segment": [0, 6 * frames], "frame_ids": frame_ids, "boxes": boxes,
        "box_scores": rng.uniform(size=(frames, M)).astype(np.float32), "box_labels": labels,
        "region_features": region.astype(np.float16),
        "frame_features": rng.normal(size=(frames, DF)).astype(np.float16),
    }
    span = (frame_ids[start], frame_ids[end - 1] + 6 if end == frames else frame_ids[end])
    gt = [frame_ids[t] for t in range(start, end)], [boxes[t, 0].tolist() for t in range(start, end)]
    return row, [words, span, gt]


def _query(rng: np.random.Generator, query_id: str, video_id: str, words: list[str], span, gt,
           relations: bool) -> dict[str, Any]:
    subject = f"the {words[0]} {words[1]}"
    obj = f"the {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    predicate = str(rng.choice(PREDICATES))
    interrogative = bool(rng.uniform() < 0.3)
    sentence = f"{'which' if interrogative else 'the'} {words[0]} {words[1]} {predicate} {obj}{'?' if interrogative else '.'}"
    return {
        "query_id": query_id, "video_id": video_id, "sentence": sentence,
        "qtype": "interrogative" if interrogative else "declarative",
        "entities": [subject, obj],
        "relations": [{"subject": 0, "predicate": predicate, "object": 1}] if relations else [],
        "target": 0, "gt_sted": [int(span[0]), int(span[1])], "gt_frame_ids": gt[0], "gt_boxes": gt[1],
    }


def build_tiny_dataset(root: str | Path, seed: int = 0, sizes: dict[str, int] | None = None,
                       relations: bool = True, queries_per_clip: int = 2) -> Path:
    """Write a contract folder with the given ``{split: number of queries}`` (default train 16, test 4)."""
    sizes = sizes or {"train": 16, "test": 4}
    rng = np.random.default_rng(seed)
    codes = {word: rng.normal(scale=1.5, size=DV).astype(np.float32) for word in COLOURS + SHAPES}
    writer = DatasetFolderWriter(root)
    for split, count in sizes.items():
        videos, queries = [], []
        for clip in range((count + queries_per_clip - 1) // queries_per_clip):
            video_id = f"{split}-{clip:03d}"
            row, (words, span, gt) = _video(rng, video_id, codes)
            videos.append(row)
            for q in range(queries_per_clip):
                if len(queries) < count:
                    queries.append(_query(rng, f"{video_id}-q{q}", video_id, words, span, gt, relations))
        write_rows(writer, "videos", split, videos, video_features(M, DV, DF), rows_per_shard=50)
        write_rows(writer, "queries", split, queries, QUERY_FEATURES, rows_per_shard=100)
    writer.finalize(default_metadata(source="tiny-test", label_names=list(SHAPES), num_regions=M, region_dim=DV,
                                     frame_dim=DF, with_features=True), description="# tiny test dataset")
    return Path(root)


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a ``model.safetensors`` file as numpy arrays."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def reset_accelerate_state() -> None:
    """Forget the Accelerate singletons, so the next in-process ``train_accelerate.run`` builds its own."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
