"""Tiny contract datasets made in the tests of evaluation and baselines (written with the real
``stvg_data.dataset_folder`` writer, loaded back with ``load_stvg_split``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stvg_data.dataset_folder import DatasetFolderWriter, default_metadata, write_rows
from stvg_data.schema import QUERY_FEATURES, video_features

REGIONS, REGION_DIM, FRAME_DIM = 4, 3, 2
WIDTH, HEIGHT = 100, 80


def video_row(
    video_id: str,
    frame_ids: Sequence[int],
    segment: Sequence[int],
    *,
    boxes: Any = None,
    labels: Any = None,
    scores: Any = None,
    fps: float = 5.0,
) -> dict[str, Any]:
    """A ``videos`` row; proposals default to 4 fixed boxes of class 0 on every frame."""
    num = len(frame_ids)
    if boxes is None:
        base = np.array([[0, 0, 10, 10], [10, 10, 30, 30], [40, 20, 60, 60], [70, 0, 100, 80]], np.float32)
        boxes = np.broadcast_to(base, (num, REGIONS, 4))
    if labels is None:
        labels = np.zeros((num, REGIONS), np.int32)
    if scores is None:
        scores = np.full((num, REGIONS), 0.5, np.float32)
    return {
        "video_id": video_id,
        "fps": float(fps),
        "width": WIDTH,
        "height": HEIGHT,
        "frame_count": int(segment[1]) + 10,
        "segment": [int(segment[0]), int(segment[1])],
        "frame_ids": [int(f) for f in frame_ids],
        "boxes": np.asarray(boxes, np.float32),
        "box_scores": np.asarray(scores, np.float32),
        "box_labels": np.asarray(labels, np.int32),
        "region_features": np.zeros((num, REGIONS, REGION_DIM), np.float16),
        "frame_features": np.zeros((num, FRAME_DIM), np.float16),
    }


def query_row(
    query_id: str,
    video_id: str,
    gt_sted: Sequence[int],
    gt_boxes: dict[int, Sequence[float]] | None = None,
    *,
    qtype: str = "declarative",
    entities: Sequence[str] = ("the dog",),
    target: int = 0,
) -> dict[str, Any]:
    gt_boxes = gt_boxes or {}
    frames = sorted(gt_boxes)
    return {
        "query_id": query_id,
        "video_id": video_id,
        "sentence": " ".join(entities) + ".",
        "qtype": qtype,
        "entities": list(entities),
        "relations": [],
        "target": target,
        "gt_sted": [int(gt_sted[0]), int(gt_sted[1])],
        "gt_frame_ids": [int(f) for f in frames],
        "gt_boxes": [[float(v) for v in gt_boxes[f]] for f in frames],
    }


def write_dataset(
    root: Path,
    videos: list[dict[str, Any]],
    queries: list[dict[str, Any]],
    *,
    split: str = "test",
    label_names: Sequence[str] = ("dog",),
    with_features: bool = True,
) -> Path:
    writer = DatasetFolderWriter(root)
    features = video_features(REGIONS, REGION_DIM, FRAME_DIM, with_features=with_features)
    if not with_features:
        videos = [{k: v for k, v in row.items() if k in features} for row in videos]
    write_rows(writer, "videos", split, videos, features, rows_per_shard=2)
    write_rows(writer, "queries", split, queries, QUERY_FEATURES, rows_per_shard=2)
    writer.finalize(
        default_metadata(
            source="test", label_names=list(label_names), num_regions=REGIONS,
            region_dim=REGION_DIM if with_features else None, frame_dim=FRAME_DIM if with_features else None,
            with_features=with_features,
        )
    )
    return Path(root)
