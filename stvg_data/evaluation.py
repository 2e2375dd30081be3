"""Spatio-temporal grounding metrics, protocol ``tubedetr`` (DESIGN section 6), and the predictions
and metrics files of the contract.

Definitions (one query, clip sampled at ``frame_ids`` by :func:`stvg_data.protocol.sample_frame_ids`):

* **tIoU** on raw (absolute) frame ids, spans ``[start, end)`` with exclusive ends::

      tIoU = max(0, min(pe, ge) - max(ps, gs)) / (max(pe, ge) - min(ps, gs))

  so ``[0, 10)`` and ``[10, 20)`` touch but share no frame: tIoU 0.
* **Box IoU** on continuous pixel coordinates ``x1 y1 x2 y2`` (area ``(x2-x1)(y2-y1)``, no ``+1``);
  two empty boxes have IoU 0.
* **vIoU** = (sum of box IoU over the sampled frames in the intersection of the predicted and GT
  spans) / (number of sampled frames in their union). When the spans overlap, their union is one
  interval (the same set TubeDETR counts, ``[min start, max end)``); when they do not, the
  intersection is empty and vIoU is 0 either way. A union without any sampled frame gives vIoU 0.
* Ground-truth boxes are the query's ``gt_frame_ids`` / ``gt_boxes``. Normally every sampled frame
  inside ``gt_sted`` has one; a sampled frame inside ``gt_sted`` **without** a GT box (a converter
  that lacked the annotation) counts IoU 0 in the numerator but is still counted in the union, and
  :func:`score_queries` warns with the number of such frames. A GT box on a frame that is not one
  of the clip's sampled frames means the converter disagrees with the protocol: that is a
  :class:`~stvg_data.schema.DatasetSchemaError` naming the query.
* **vIoU@R** counts queries with vIoU **strictly greater** than R (0.5 exactly is not counted at
  0.5). ``m_tIoU`` / ``m_vIoU`` are means over queries. All values are fractions in [0, 1].
* Blocks: ``overall`` and one block per ``qtype`` (``declarative``, ``interrogative``); a block with
  no queries is omitted. Each block also carries its ``num_queries``.

Ground truth without boxes: a converter run without VidOR boxes writes empty ``gt_boxes``; then
vIoU cannot be computed. :func:`evaluate` refuses such a split with :class:`MissingGroundTruthError`
unless ``temporal_only=True``, which computes ``m_tIoU`` only, writes the three vIoU values as
``null`` and adds ``"temporal_only": true`` to the metrics; in that mode predictions need no boxes.

Predictions file (JSON list)::

    [{"query_id": "q0", "sted": [start, end_exclusive], "boxes": {"<frame id>": [x1, y1, x2, y2]}}, ...]

A prediction needs a box for every sampled frame inside its own span; boxes on other frames are
ignored. Every problem is a :class:`PredictionsError` naming the query (or the file position).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import PROTOCOL_NAME
from .schema import QTYPES, DatasetSchemaError

logger = logging.getLogger(__name__)

VIOU_THRESHOLDS = (0.3, 0.5)
METRIC_KEYS = ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5")
BLOCKS = ("overall", *QTYPES)
_MAX_NAMED = 5  # how many query ids an error message lists


class PredictionsError(ValueError):
    """A predictions file or record does not follow the contract (DESIGN section 6)."""


class MissingGroundTruthError(ValueError):
    """The split's queries carry no ground-truth boxes, so vIoU cannot be computed."""


# --------------------------------------------------------------------------------------------------
# Metrics of one query
# --------------------------------------------------------------------------------------------------


def box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """Element-wise IoU of two broadcastable arrays of boxes ``(..., 4)`` in pixels ``x1 y1 x2 y2``.

    Continuous coordinates: area is ``(x2 - x1) * (y2 - y1)`` (no ``+1``). Pairs whose union is
    empty (two degenerate boxes) get IoU 0.
    """
    a = np.asarray(boxes_a, dtype=np.float64)
    b = np.asarray(boxes_b, dtype=np.float64)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have a last dimension of 4 (x1 y1 x2 y2), got {a.shape} and {b.shape}")
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    intersection = width * height
    area_a = np.clip(a[..., 2] - a[..., 0], 0.0, None) * np.clip(a[..., 3] - a[..., 1], 0.0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0.0, None) * np.clip(b[..., 3] - b[..., 1], 0.0, None)
    union = area_a + area_b - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def temporal_iou(pred_sted: Sequence[int], gt_sted: Sequence[int]) -> float:
    """tIoU of two frame spans ``[start, end)`` (exclusive ends, raw frame ids)."""
    ps, pe = int(pred_sted[0]), int(pred_sted[1])
    gs, ge = int(gt_sted[0]), int(gt_sted[1])
    union = max(pe, ge) - min(ps, gs)
    intersection = max(0, min(pe, ge) - max(ps, gs))
    return intersection / union if union > 0 else 0.0


def video_iou(
    frame_ids: Sequence[int],
    pred_sted: Sequence[int],
    pred_frame_ids: Sequence[int],
    pred_boxes: Any,
    gt_sted: Sequence[int],
    gt_frame_ids: Sequence[int],
    gt_boxes: Any,
) -> tuple[float, int]:
    """vIoU of one query and the number of sampled GT-span frames that lack a GT box.

    ``frame_ids``: the clip's sampled frames; ``pred_frame_ids``/``pred_boxes`` (K, 4) and
    ``gt_frame_ids``/``gt_boxes`` (G, 4): boxes keyed by absolute frame id. Every sampled frame of
    the intersection must have a predicted box (:func:`validate_predictions` checks it first).
    """
    frames = np.asarray(frame_ids, dtype=np.int64)
    in_pred = (frames >= pred_sted[0]) & (frames < pred_sted[1])
    in_gt = (frames >= gt_sted[0]) & (frames < gt_sted[1])
    union = int(np.count_nonzero(in_pred | in_gt))
    gt_ids = np.asarray(gt_frame_ids, dtype=np.int64)
    missing_gt = int(np.count_nonzero(~np.isin(frames[in_gt], gt_ids)))
    both = frames[in_pred & in_gt]
    if union == 0 or both.size == 0:
        return 0.0, missing_gt
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    has_gt, gt_rows = _lookup(gt_ids, both)
    has_pred, pred_rows = _lookup(np.asarray(pred_frame_ids, dtype=np.int64), both)
    if not has_pred.all():
        raise PredictionsError(f"no predicted box for sampled frame(s) {both[~has_pred].tolist()} inside the span")
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    ious = box_iou(pred_boxes[pred_rows[has_gt]], gt_boxes[gt_rows[has_gt]])
    return float(ious.sum()) / union, missing_gt


def _lookup(keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query value: whether it is in ``keys`` and its row there (vectorised dict lookup)."""
    if keys.size == 0:
        return np.zeros(queries.shape, bool), np.zeros(queries.shape, np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    positions = np.clip(np.searchsorted(sorted_keys, queries), 0, len(keys) - 1)
    found = sorted_keys[positions] == queries
    return found, order[positions]


# --------------------------------------------------------------------------------------------------
# Predictions: parsing, validation, files
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # arrays inside: compare .to_json() instead
class Prediction:
    """One predicted tube: span ``sted = (start, end_exclusive)`` in absolute frame ids and boxes
    (K, 4) in pixels on absolute frames ``frame_ids`` (K,), sorted by frame id."""

    query_id: str
    sted: tuple[int, int]
    frame_ids: np.ndarray = field(repr=False)
    boxes: np.ndarray = field(repr=False)

    def box_map(self) -> dict[int, list[float]]:
        return {int(f): [float(v) for v in box] for f, box in zip(self.frame_ids, self.boxes)}

    def to_json(self) -> dict[str, Any]:
        """The contract record ``{"query_id", "sted", "boxes": {"<frame id>": [x1, y1, x2, y2]}}``."""
        return {
            "query_id": self.query_id,
            "sted": [int(self.sted[0]), int(self.sted[1])],
            "boxes": {str(f): box for f, box in self.box_map().items()},
        }


def _as_frame_id(value: Any, what: str, query_id: str) -> int:
    """An integer frame id (ints, integral floats and digit strings are accepted; bools are not)."""
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
    elif isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    elif isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise PredictionsError(f"query {query_id!r}: {what} must be an integer frame id, got {value!r}")


def make_prediction(
    query_id: str, sted: Sequence[Any], boxes: Mapping[Any, Sequence[float]] | None
) -> Prediction:
    """Check one tube and build a :class:`Prediction`; raises :class:`PredictionsError` naming the query."""
    if not isinstance(query_id, str) or not query_id:
        raise PredictionsError(f"prediction has no valid 'query_id' (a non-empty string), got {query_id!r}")
    if isinstance(sted, (str, bytes)) or not isinstance(sted, Sequence) and not isinstance(sted, np.ndarray):
        raise PredictionsError(f"query {query_id!r}: 'sted' must be [start, end_exclusive], got {sted!r}")
    if len(sted) != 2:
        raise PredictionsError(f"query {query_id!r}: 'sted' must be [start, end_exclusive], got {list(sted)!r}")
    start = _as_frame_id(sted[0], "sted start", query_id)
    end = _as_frame_id(sted[1], "sted end", query_id)
    if end <= start:
        raise PredictionsError(
            f"query {query_id!r}: predicted span end {end} is not after its start {start} "
            "(sted is [start, end_exclusive] in absolute frame ids)"
        )
    boxes = {} if boxes is None else boxes
    if not isinstance(boxes, Mapping):
        raise PredictionsError(f"query {query_id!r}: 'boxes' must map frame ids to [x1, y1, x2, y2], got {type(boxes).__name__}")
    frame_ids = np.array([_as_frame_id(key, "box key", query_id) for key in boxes], dtype=np.int64)
    if len(set(frame_ids.tolist())) != len(frame_ids):
        raise PredictionsError(f"query {query_id!r}: two boxes for the same frame id")
    values = list(boxes.values())
    try:
        array = np.asarray(values, dtype=np.float64).reshape(len(values), -1) if values else np.zeros((0, 4))
    except (TypeError, ValueError) as error:
        raise PredictionsError(f"query {query_id!r}: boxes must be lists of 4 numbers [x1, y1, x2, y2] ({error})") from None
    if array.shape[1] != 4 or any(np.ndim(v) != 1 for v in values):
        raise PredictionsError(f"query {query_id!r}: boxes must be lists of 4 numbers [x1, y1, x2, y2]")
    if not np.isfinite(array).all():
        bad = frame_ids[~np.isfinite(array).all(axis=1)]
        raise PredictionsError(f"query {query_id!r}: box of frame {int(bad[0])} contains NaN or inf")
    flipped = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    if flipped.any():
        raise PredictionsError(
            f"query {query_id!r}: box of frame {int(frame_ids[flipped][0])} has x2 < x1 or y2 < y1 "
            "(expected x1 y1 x2 y2 in pixels)"
        )
    order = np.argsort(frame_ids, kind="stable")
    return Prediction(query_id, (start, end), frame_ids[order], array[order])


def parse_predictions(records: Any, source: str = "predictions") -> dict[str, Prediction]:
    """Contract records (a list of dicts, or :class:`Prediction` objects) -> ``{query_id: Prediction}``.

    Raises :class:`PredictionsError` naming the query (or the entry number) for a malformed record
    and for a query predicted twice.
    """
    if isinstance(records, Mapping) or not isinstance(records, Iterable) or isinstance(records, (str, bytes)):
        raise PredictionsError(f"{source}: expected a JSON list of predictions, got {type(records).__name__}")
    predictions: dict[str, Prediction] = {}
    for index, record in enumerate(records):
        if isinstance(record, Prediction):
            prediction = record
        elif isinstance(record, Mapping):
            if "query_id" not in record:
                raise PredictionsError(f"{source}: entry #{index} has no 'query_id'")
            if "sted" not in record:
                raise PredictionsError(f"{source}: query {record['query_id']!r} has no 'sted' [start, end_exclusive]")
            prediction = make_prediction(record["query_id"], record["sted"], record.get("boxes"))
        else:
            raise PredictionsError(f"{source}: entry #{index} is a {type(record).__name__}, expected an object")
        if prediction.query_id in predictions:
            raise PredictionsError(f"{source}: query {prediction.query_id!r} is predicted more than once")
        predictions[prediction.query_id] = prediction
    return predictions


def as_predictions(predictions: Mapping[str, Any] | Iterable[Any], source: str = "predictions") -> dict[str, Prediction]:
    """``{query_id: Prediction}`` from that mapping itself, a mapping of records, or an iterable of
    contract records / :class:`Prediction` objects (what the baselines and ``predict_split`` return)."""
    if not isinstance(predictions, Mapping):
        return parse_predictions(predictions, source=source)
    if not all(isinstance(p, Prediction) for p in predictions.values()):
        return parse_predictions(list(predictions.values()), source=source)
    return dict(predictions)


def load_predictions(path: str | Path) -> dict[str, Prediction]:
    """Read and parse a predictions JSON file; every problem is a :class:`PredictionsError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PredictionsError(f"{path}: predictions file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PredictionsError(f"{path}: cannot read the predictions file ({error})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise PredictionsError(
            f"{path}: malformed JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
            'expected a list of {"query_id", "sted", "boxes"} objects'
        ) from None
    return parse_predictions(records, source=str(path))


def save_predictions(predictions: Mapping[str, Prediction] | Iterable[Prediction], path: str | Path) -> Path:
    """Write predictions as the contract's JSON list (atomically: temporary name, then rename)."""
    items = predictions.values() if isinstance(predictions, Mapping) else predictions
    return write_json_atomic([p.to_json() for p in items], path)


def save_metrics(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Write the metrics JSON (atomically)."""
    return write_json_atomic(dict(metrics), path, indent=2)


def write_json_atomic(value: Any, path: str | Path, indent: int | None = None) -> Path:
    """``json.dump`` to a temporary file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(value, stream, indent=indent)
            stream.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return path


# --------------------------------------------------------------------------------------------------
# Ground truth of a split
# --------------------------------------------------------------------------------------------------

_GT_QUERY_COLUMNS = ("query_id", "video_id", "qtype", "gt_sted", "gt_frame_ids", "gt_boxes")


@dataclass
class GroundTruth:
    """What evaluation needs from a split: each query's ground truth and each clip's sampled frames
    (no feature columns are read)."""

    queries: list[dict[str, Any]]
    frame_ids: dict[str, np.ndarray]

    @classmethod
    def from_split(cls, split: Any) -> GroundTruth:
        """From a :class:`~stvg_data.dataset_folder.StvgSplit` (``.videos``/``.queries`` datasets)."""
        missing = [c for c in _GT_QUERY_COLUMNS if c not in split.queries.column_names]
        if missing:
            raise DatasetSchemaError(f"queries lack the ground-truth column(s) {missing} needed for evaluation")
        videos = split.videos.select_columns(["video_id", "frame_ids"])
        queries = split.queries.select_columns(list(_GT_QUERY_COLUMNS))
        return cls.from_rows(queries.to_list(), videos.to_list())

    @classmethod
    def from_rows(cls, queries: Iterable[Mapping[str, Any]], videos: Iterable[Mapping[str, Any]]) -> GroundTruth:
        """From plain ``queries`` rows and ``videos`` rows (only ``video_id``/``frame_ids`` are read)."""
        frame_ids: dict[str, np.ndarray] = {}
        for video in videos:
            frames = np.asarray(video["frame_ids"], dtype=np.int64)
            if frames.size == 0 or (np.diff(frames) <= 0).any():
                raise DatasetSchemaError(f"video {video['video_id']!r}: frame_ids must be non-empty and strictly increasing")
            frame_ids[str(video["video_id"])] = frames
        rows = []
        for query in queries:
            query_id = query.get("query_id", "<no query_id>")
            missing = [c for c in _GT_QUERY_COLUMNS if c not in query]
            if missing:
                raise DatasetSchemaError(f"query {query_id!r}: missing column(s) {missing}")
            if query["video_id"] not in frame_ids:
                raise DatasetSchemaError(f"query {query_id!r} refers to video_id {query['video_id']!r}, which is not in the videos config")
            if query["qtype"] not in QTYPES:
                raise DatasetSchemaError(f"query {query_id!r}: qtype must be one of {QTYPES}, got {query['qtype']!r}")
            start, end = (int(v) for v in query["gt_sted"])
            if end <= start:
                raise DatasetSchemaError(f"query {query_id!r}: gt_sted end {end} is not after its start {start}")
            gt_frames = np.asarray(query["gt_frame_ids"], dtype=np.int64).reshape(-1)
            gt_boxes = np.asarray(query["gt_boxes"], dtype=np.float64).reshape(-1, 4) if len(gt_frames) else np.zeros((0, 4))
            if len(gt_boxes) != len(gt_frames):
                raise DatasetSchemaError(f"query {query_id!r}: {len(gt_frames)} gt_frame_ids but {len(gt_boxes)} gt_boxes")
            outside = gt_frames[(gt_frames < start) | (gt_frames >= end)]
            if outside.size:
                raise DatasetSchemaError(f"query {query_id!r}: gt_frame_ids {outside.tolist()} fall outside gt_sted [{start}, {end})")
            unsampled = gt_frames[~np.isin(gt_frames, frame_ids[query["video_id"]])]
            if unsampled.size:
                raise DatasetSchemaError(
                    f"query {query_id!r}: ground-truth boxes on frame(s) {unsampled[:_MAX_NAMED].tolist()} that are not "
                    f"sampled frames of clip {query['video_id']!r}; rebuild the dataset (the converter and the "
                    "protocol disagree)"
                )
            rows.append(
                {
                    "query_id": str(query_id),
                    "video_id": query["video_id"],
                    "qtype": query["qtype"],
                    "gt_sted": (start, end),
                    "gt_frame_ids": gt_frames,
                    "gt_boxes": gt_boxes,
                }
            )
        ids = [row["query_id"] for row in rows]
        if len(set(ids)) != len(ids):
            raise DatasetSchemaError("query_id values are not unique in this split")
        return cls(rows, frame_ids)

    @property
    def has_boxes(self) -> bool:
        """Whether any query carries a ground-truth box (a converter without boxes writes none)."""
        return any(len(row["gt_frame_ids"]) for row in self.queries)


def split_has_gt_boxes(split: Any) -> bool:
    """Whether any query of ``split`` (``StvgSplit`` or :class:`GroundTruth`) carries a ground-truth box,
    i.e. whether :func:`evaluate` can compute vIoU without ``temporal_only``. Reads only ``gt_frame_ids``,
    so a caller (the trainer) can check an evaluation split before any training step."""
    if isinstance(split, GroundTruth):
        return split.has_boxes
    return any(len(frames) for frames in split.queries["gt_frame_ids"])


def _ground_truth(split_or_gt: Any) -> GroundTruth:
    return split_or_gt if isinstance(split_or_gt, GroundTruth) else GroundTruth.from_split(split_or_gt)


def _name_some(ids: Sequence[str]) -> str:
    named = ", ".join(repr(i) for i in ids[:_MAX_NAMED])
    return named + (f" and {len(ids) - _MAX_NAMED} more" if len(ids) > _MAX_NAMED else "")


def validate_predictions(
    split: Any, predictions: Mapping[str, Prediction], *, require_boxes: bool = True
) -> None:
    """Check predictions against a split (a ``StvgSplit`` or :class:`GroundTruth`).

    Raises :class:`PredictionsError` naming the query for: a query of the split without prediction,
    a prediction for a query the split does not have, and (``require_boxes``) a prediction without a
    box on a sampled frame of its clip inside its own span.
    """
    truth = _ground_truth(split)
    known = {row["query_id"]: row for row in truth.queries}
    unknown = [qid for qid in predictions if qid not in known]
    if unknown:
        raise PredictionsError(
            f"prediction(s) for unknown query id(s) {_name_some(unknown)}: not in this split "
            "(wrong --split or wrong dataset?)"
        )
    missing = [qid for qid in known if qid not in predictions]
    if missing:
        raise PredictionsError(f"{len(missing)} query(ies) of the split have no prediction: {_name_some(missing)}")
    if not require_boxes:
        return
    for qid, prediction in predictions.items():
        frames = truth.frame_ids[known[qid]["video_id"]]
        start, end = prediction.sted
        inside = frames[(frames >= start) & (frames < end)]
        lacking = inside[~np.isin(inside, prediction.frame_ids)]
        if lacking.size:
            raise PredictionsError(
                f"query {qid!r}: no predicted box for sampled frame(s) {lacking[:_MAX_NAMED].tolist()}"
                f"{' ...' if lacking.size > _MAX_NAMED else ''} inside its own span [{start}, {end}) "
                "(a prediction needs a box on every sampled frame of its span)"
            )


# --------------------------------------------------------------------------------------------------
# Scoring and summaries
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryScore:
    query_id: str
    qtype: str
    tiou: float
    viou: float | None  # None in temporal-only mode
    gt_frames_without_box: int = 0


def score_queries(
    split: Any, predictions: Mapping[str, Prediction], *, temporal_only: bool = False, progress: bool = False
) -> list[QueryScore]:
    """tIoU and vIoU of every query of the split (predictions must be validated first)."""
    truth = _ground_truth(split)
    rows: Iterable[dict[str, Any]] = truth.queries
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="evaluate", unit="query")
    scores = []
    for row in rows:
        prediction = predictions[row["query_id"]]
        tiou = temporal_iou(prediction.sted, row["gt_sted"])
        viou, missing = None, 0
        if not temporal_only:
            try:
                viou, missing = video_iou(
                    truth.frame_ids[row["video_id"]], prediction.sted, prediction.frame_ids, prediction.boxes,
                    row["gt_sted"], row["gt_frame_ids"], row["gt_boxes"],
                )
            except PredictionsError as error:
                raise PredictionsError(f"query {row['query_id']!r}: {error}") from None
        scores.append(QueryScore(row["query_id"], row["qtype"], tiou, viou, missing))
    without_box = sum(score.gt_frames_without_box for score in scores)
    if without_box:
        affected = sum(1 for score in scores if score.gt_frames_without_box)
        logger.warning(
            "%d sampled frame(s) inside gt_sted of %d query(ies) have no ground-truth box; they count IoU 0 in vIoU",
            without_box, affected,
        )
    return scores


def summarize(scores: Sequence[QueryScore], *, temporal_only: bool = False) -> dict[str, Any]:
    """The metrics file: protocol, query count, and the ``overall``/per-``qtype`` blocks."""
    metrics: dict[str, Any] = {"protocol": PROTOCOL_NAME, "num_queries": len(scores)}
    if temporal_only:
        metrics["temporal_only"] = True
    for block in BLOCKS:
        chosen = [s for s in scores if block == "overall" or s.qtype == block]
        if not chosen:
            continue
        tious = np.array([s.tiou for s in chosen], dtype=np.float64)
        values: dict[str, Any] = {"m_tIoU": float(tious.mean())}
        if temporal_only:
            values.update({"m_vIoU": None, **{f"vIoU@{r}": None for r in VIOU_THRESHOLDS}})
        else:
            vious = np.array([s.viou for s in chosen], dtype=np.float64)
            values["m_vIoU"] = float(vious.mean())
            for threshold in VIOU_THRESHOLDS:
                values[f"vIoU@{threshold}"] = float(np.mean(vious > threshold))  # strict, as the protocol says
        values["num_queries"] = len(chosen)
        metrics[block] = values
    return metrics


def evaluate(
    split: Any, predictions: Mapping[str, Prediction] | Iterable[Any], *, temporal_only: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Validate ``predictions`` against ``split`` (``StvgSplit`` or :class:`GroundTruth`) and return
    the metrics dict of the contract.

    ``predictions`` may be ``{query_id: Prediction}`` or contract records (e.g. the list
    ``stvg_data.inference.predict_split`` returns). Raises :class:`MissingGroundTruthError` when no
    query carries a ground-truth box, unless ``temporal_only``.
    """
    truth = _ground_truth(split)
    predictions = as_predictions(predictions)
    if not truth.queries:
        raise DatasetSchemaError("the split has no queries to evaluate")
    if not temporal_only and not truth.has_boxes:
        raise MissingGroundTruthError(
            "the split's queries carry no ground-truth boxes (empty gt_boxes: was the dataset converted without "
            "VidOR box annotations?), so vIoU cannot be computed. Rebuild it with the box annotations "
            "(dataset_scripts/vidstg.py --vidor-annotations DIR), or evaluate the time spans only with "
            "temporal_only=True (--temporal-only)."
        )
    validate_predictions(truth, predictions, require_boxes=not temporal_only)
    return summarize(score_queries(truth, predictions, temporal_only=temporal_only, progress=progress),
                     temporal_only=temporal_only)


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """Plain-text table: rows overall/declarative/interrogative, columns in percent."""
    header = f"{'':<14}{'queries':>8}" + "".join(f"{key:>10}" for key in METRIC_KEYS)
    lines = [header, "-" * len(header)]
    for block in BLOCKS:
        if block not in metrics:
            continue
        values = metrics[block]
        cells = "".join(
            f"{'n/a':>10}" if values.get(key) is None else f"{100.0 * values[key]:>10.2f}" for key in METRIC_KEYS
        )
        lines.append(f"{block:<14}{values.get('num_queries', ''):>8}{cells}")
    return "\n".join(lines)
