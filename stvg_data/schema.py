"""The dataset contract (DESIGN section 5): HF ``Features`` of the ``videos`` and ``queries``
configs, and row validation shared by every converter, the trainer and the evaluator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from datasets import Array2D, Array3D, Features, List, Value

VIDEO_CONFIG = "videos"
QUERY_CONFIG = "queries"
QTYPES = ("declarative", "interrogative")
# Columns whose values would leak supervision: the trainer must never read them.
GROUND_TRUTH_COLUMNS = ("gt_sted", "gt_frame_ids", "gt_boxes")
FEATURE_COLUMNS = ("boxes", "box_scores", "box_labels", "region_features", "frame_features")
# Boxes may overshoot the frame by rounding in a detector or an annotation tool.
BOX_TOLERANCE_PX = 1.0


class DatasetSchemaError(ValueError):
    """A dataset row, shard or folder does not follow the contract of DESIGN section 5."""


def video_features(
    num_regions: int = 10, region_dim: int = 1024, frame_dim: int = 1024, with_features: bool = True
) -> Features:
    """``Features`` of the ``videos`` config; ``with_features=False`` is the ``--no-features`` layout."""
    columns: dict[str, Any] = {
        "video_id": Value("string"),
        "fps": Value("float32"),
        "width": Value("int32"),
        "height": Value("int32"),
        "frame_count": Value("int32"),
        "segment": List(Value("int32"), length=2),
        "frame_ids": List(Value("int32")),
    }
    if with_features:
        columns.update(
            {
                "boxes": Array3D(shape=(None, num_regions, 4), dtype="float32"),
                "box_scores": Array2D(shape=(None, num_regions), dtype="float32"),
                "box_labels": Array2D(shape=(None, num_regions), dtype="int32"),
                "region_features": Array3D(shape=(None, num_regions, region_dim), dtype="float16"),
                "frame_features": Array2D(shape=(None, frame_dim), dtype="float16"),
            }
        )
    return Features(columns)


QUERY_FEATURES = Features(
    {
        "query_id": Value("string"),
        "video_id": Value("string"),
        "sentence": Value("string"),
        "qtype": Value("string"),
        "entities": List(Value("string")),
        "relations": List({"subject": Value("int32"), "predicate": Value("string"), "object": Value("int32")}),
        "target": Value("int32"),
        "gt_sted": List(Value("int32"), length=2),
        "gt_frame_ids": List(Value("int32")),
        "gt_boxes": List(List(Value("float32"), length=4)),
    }
)


def _fail(kind: str, row_id: Any, message: str) -> None:
    raise DatasetSchemaError(f"{kind} {row_id!r}: {message}")


def validate_boxes_in_frame(boxes: np.ndarray, width: int, height: int, what: str, row_id: Any) -> None:
    """Boxes (..., 4) in pixels must have x1 <= x2, y1 <= y2 and lie inside the frame."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if boxes.size == 0:
        return
    if not np.isfinite(boxes).all():
        _fail("video", row_id, f"{what} contain NaN or inf")
    x1, y1, x2, y2 = boxes.T
    if (x2 < x1).any() or (y2 < y1).any():
        _fail("video", row_id, f"{what} have x2 < x1 or y2 < y1 (expected x1 y1 x2 y2 in pixels)")
    tol = BOX_TOLERANCE_PX
    if (x1 < -tol).any() or (y1 < -tol).any() or (x2 > width + tol).any() or (y2 > height + tol).any():
        _fail("video", row_id, f"{what} lie outside the {width}x{height} frame")


def validate_video_row(row: Mapping[str, Any], features: Features | None = None) -> None:
    """Check one ``videos`` row against the contract; raise ``DatasetSchemaError`` naming the clip."""
    features = features if features is not None else video_features()
    row_id = row.get("video_id", "<no video_id>")
    missing = [name for name in features if name not in row]
    if missing:
        _fail("video", row_id, f"missing column(s) {missing}")
    if not (row["fps"] and row["fps"] > 0):
        _fail("video", row_id, f"fps must be positive, got {row['fps']}")
    if row["width"] <= 0 or row["height"] <= 0:
        _fail("video", row_id, f"width/height must be positive, got {row['width']}x{row['height']}")
    begin, end = row["segment"]
    if end <= begin:
        _fail("video", row_id, f"segment end {end} is not after its begin {begin} (end is exclusive)")
    frame_ids = np.asarray(row["frame_ids"], dtype=np.int64)
    if frame_ids.size == 0:
        _fail("video", row_id, "frame_ids is empty")
    if (np.diff(frame_ids) <= 0).any():
        _fail("video", row_id, "frame_ids must be strictly increasing")
    if frame_ids[0] < begin or frame_ids[-1] >= end:
        _fail("video", row_id, f"frame_ids {frame_ids[0]}..{frame_ids[-1]} fall outside segment [{begin}, {end})")
    if "boxes" not in features:
        return
    num_frames = len(frame_ids)
    for name in FEATURE_COLUMNS:
        expected = tuple(num_frames if dim is None else dim for dim in features[name].shape)
        shape = np.shape(row[name])
        if shape != expected:
            _fail("video", row_id, f"column {name!r} has shape {shape}, expected {expected} (T={num_frames} frames)")
    labels = np.asarray(row["box_labels"])
    real = labels != -1
    validate_boxes_in_frame(np.asarray(row["boxes"])[real], row["width"], row["height"], "proposal boxes", row_id)


def validate_query_row(row: Mapping[str, Any]) -> None:
    """Check one ``queries`` row against the contract; raise ``DatasetSchemaError`` naming the query."""
    row_id = row.get("query_id", "<no query_id>")
    missing = [name for name in QUERY_FEATURES if name not in row]
    if missing:
        _fail("query", row_id, f"missing column(s) {missing}")
    if row["qtype"] not in QTYPES:
        _fail("query", row_id, f"qtype must be one of {QTYPES}, got {row['qtype']!r}")
    entities = row["entities"]
    if not entities:
        _fail("query", row_id, f"sentence {row['sentence']!r} has no entity phrase")
    if not 0 <= row["target"] < len(entities):
        _fail("query", row_id, f"target {row['target']} is not an index into its {len(entities)} entities")
    for relation in row["relations"]:
        subject, obj = relation["subject"], relation["object"]
        if not 0 <= subject < len(entities) or not -1 <= obj < len(entities):
            _fail("query", row_id, f"relation {relation} points to a missing entity (have {len(entities)})")
    start, end = row["gt_sted"]
    if end <= start:
        _fail("query", row_id, f"gt_sted end {end} is not after its start {start} (end is exclusive)")
    gt_frames = row["gt_frame_ids"]
    if len(gt_frames) != len(row["gt_boxes"]):
        _fail("query", row_id, f"{len(gt_frames)} gt_frame_ids but {len(row['gt_boxes'])} gt_boxes")
    if any(not start <= frame < end for frame in gt_frames):
        _fail("query", row_id, f"gt_frame_ids fall outside gt_sted [{start}, {end})")


def check_columns(features: Features, expected: Features, where: str) -> None:
    """A loaded config must carry every contract column with the contract's type and shape."""
    missing = [name for name in expected if name not in features]
    if missing:
        raise DatasetSchemaError(f"{where}: missing column(s) {missing}; rebuild it with a dataset_scripts converter")
    for name, feature in expected.items():
        got = features[name]
        if isinstance(feature, (Array2D, Array3D)):
            same = type(got) is type(feature) and got.dtype == feature.dtype and _same_shape(got.shape, feature.shape)
        else:
            same = got == feature
        if not same:
            raise DatasetSchemaError(f"{where}: column {name!r} is {got}, expected {feature}")


def check_storage(table: Any, expected: Features, where: str) -> None:
    """The stored values of a loaded split must fill every contract column with the contract's shape.

    ``datasets`` takes a config's features from its first shard (often another split) and casts every
    other shard to them: a column missing from one shard silently becomes nulls, and an array of the
    wrong inner shape only fails when a row is read. This catches both right after loading, from
    Arrow metadata and list lengths (no row is decoded). ``table`` is a ``pyarrow.Table`` or a
    ``datasets.Dataset``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    table = getattr(getattr(table, "data", None), "table", table)
    for name, feature in expected.items():
        if name not in table.column_names:
            raise DatasetSchemaError(f"{where}: missing column {name!r}; rebuild it with a dataset_scripts converter")
        column = table.column(name)
        if column.null_count:
            raise DatasetSchemaError(
                f"{where}: column {name!r} is empty (null) in {column.null_count} row(s): a shard of this split "
                "lacks the column; rebuild it with a dataset_scripts converter"
            )
        if not isinstance(feature, (Array2D, Array3D)):
            continue
        for chunk in column.chunks:
            level = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
            for depth, size in enumerate(feature.shape[1:], start=1):
                level = level.flatten()
                if level.null_count or len(level) == 0:
                    if level.null_count:
                        raise DatasetSchemaError(f"{where}: column {name!r} holds nulls inside its arrays")
                    break
                lengths = pc.list_value_length(level)
                low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
                if size not in (None, -1) and (low != size or high != size):
                    bad = high if high != size else low
                    raise DatasetSchemaError(
                        f"{where}: column {name!r} has size {bad} along axis {depth}, expected {size} "
                        f"(shape {feature.shape}); a shard of this split was written with another shape"
                    )


def _same_shape(got: tuple, expected: tuple) -> bool:
    """Shapes agree where the expectation fixes a size (``-1`` means any)."""
    return len(got) == len(expected) and all(e == -1 or g == e for g, e in zip(got, expected))
