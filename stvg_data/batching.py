"""Rows of a contract dataset (DESIGN section 5) -> padded model inputs (team agreement, INTERFACES.md).

One item is one query joined to the features of its clip: :func:`encode_video` (features, normalised
boxes, region mask) plus :func:`encode_query` (word ids of the phrases, relations, target).
:class:`StvgQueryDataset` reads the clip's features as float16 (the dataset stores them as float16
``Array2D/Array3D``; formatting with ``dtype=`` keeps them from being upcast through Python floats,
which is ~50x slower) and :func:`collate_stvg` pads a list of items to the batch maxima of T (frames),
N (entities), K (relations) and the word lengths, and casts features to the model dtype. It is the one
padding of model inputs: ``processing_stvg.build_model_inputs`` builds the same items and calls it.

Weak supervision is enforced here, by construction: :func:`drop_ground_truth` removes every
``gt_*`` column (:data:`stvg_data.schema.GROUND_TRUTH_COLUMNS`) from the queries before any row is
read, and :class:`StvgQueryDataset` does so unless it is explicitly built for evaluation
(``keep_ground_truth=True``, which the trainer never passes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from modeling_stvg.modeling_stvg import MODEL_INPUT_NAMES  # the keys StvgModel.forward takes

from .schema import GROUND_TRUTH_COLUMNS, DatasetSchemaError

# Token ids of the word-level tokenizer (processing_stvg/tokenization_stvg.py, team agreement).
PAD_ID, UNK_ID = 0, 1

# Query columns the training path may read (everything a query has but its ground truth).
QUERY_INPUT_COLUMNS = ("query_id", "video_id", "sentence", "qtype", "entities", "relations", "target")
_FEATURE_COLUMNS = ("region_features", "frame_features")
_GEOMETRY_COLUMNS = ("frame_ids", "boxes", "box_labels", "width", "height", "segment")


class WeakSupervisionError(RuntimeError):
    """Ground-truth columns reached a code path that must only see video-sentence pairs."""


def drop_ground_truth(queries: datasets.Dataset) -> datasets.Dataset:
    """``queries`` without the ``gt_*`` columns, so nothing downstream can read them."""
    present = [name for name in GROUND_TRUTH_COLUMNS if name in queries.column_names]
    return queries.remove_columns(present) if present else queries


def assert_weakly_supervised(queries: datasets.Dataset) -> None:
    """Raise :class:`WeakSupervisionError` if any ``gt_*`` column is still present."""
    leaked = [name for name in queries.column_names if name in GROUND_TRUTH_COLUMNS or name.startswith("gt_")]
    if leaked:
        raise WeakSupervisionError(f"ground-truth column(s) {leaked} reached the training data path")


def tokenizer_corpus(queries: datasets.Dataset) -> list[str]:
    """Texts the word tokenizer is built from: sentences, entity phrases and relation predicates."""
    texts: list[str] = []
    for row in queries.select_columns(["sentence", "entities", "relations"]):
        texts.append(row["sentence"])
        texts.extend(row["entities"])
        texts.extend(relation["predicate"] for relation in row["relations"])
    return texts


def encode_phrase(tokenizer: Any, text: str, max_words: int | None = None) -> list[int]:
    """Word ids of a phrase, no special tokens, the first ``max_words`` (None = all); an empty phrase
    becomes ``[UNK]`` so its mean embedding is defined."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return (ids[:max_words] if max_words else ids) or [UNK_ID]


def usable_relations(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Relations of a query that the reconstruction loss can use: a valid subject, an object that is
    -1 or valid, and a non-empty predicate."""
    num_entities = len(row["entities"])
    return [
        relation
        for relation in row["relations"]
        if 0 <= relation["subject"] < num_entities
        and -1 <= relation["object"] < num_entities
        and relation["predicate"].strip()
    ]


def count_usable_relations(queries: datasets.Dataset) -> int:
    """Number of usable relations over all queries (0 means the M-step has nothing to reconstruct)."""
    total = 0
    for row in queries.select_columns(["entities", "relations"]):
        total += len(usable_relations(row))
    return total


def encode_query(
    row: Mapping[str, Any],
    tokenizer: Any,
    max_entity_words: int | None = None,
    max_relation_words: int | None = None,
) -> dict[str, Any]:
    """The language half of one item (lists of word ids; padded by :func:`collate_stvg`) from a
    ``queries`` row (or a mapping with its ``entities`` / ``relations`` / ``target``); phrases are
    truncated to ``max_entity_words`` / ``max_relation_words`` (None = keep all)."""
    if not row["entities"]:
        raise DatasetSchemaError(f"query {row.get('query_id')!r}: sentence {row.get('sentence')!r} has no entity phrase")
    target = int(row["target"])
    if not 0 <= target < len(row["entities"]):
        raise DatasetSchemaError(f"query {row.get('query_id')!r}: target {target} is not an entity index")
    relations = usable_relations(row)
    return {
        "entity_token_ids": [encode_phrase(tokenizer, phrase, max_entity_words) for phrase in row["entities"]],
        "relation_token_ids": [
            encode_phrase(tokenizer, relation["predicate"], max_relation_words) for relation in relations
        ],
        "relation_entities": [[int(relation["subject"]), int(relation["object"])] for relation in relations],
        "target_index": target,
    }


def normalise_boxes(boxes: Any, width: float, height: float) -> np.ndarray:
    """Pixel boxes x1 y1 x2 y2 (..., 4) -> fractions of the frame, clipped to [0, 1] (``region_boxes``)."""
    scale = np.asarray([width, height, width, height], dtype=np.float32)
    return np.clip(np.asarray(boxes, dtype=np.float32) / scale, 0.0, 1.0)


def encode_video(video: Mapping[str, Any], feature_dtype: Any = np.float16) -> dict[str, np.ndarray]:
    """The vision half of one item (padded by :func:`collate_stvg`) from a ``videos`` row (or a clip with
    its ``region_features`` (T, M, Dv), ``frame_features`` (T, Df), ``boxes`` (T, M, 4) pixels,
    ``box_labels`` (T, M), ``width``, ``height``): features as ``feature_dtype``, ``region_boxes``
    (T, M, 4) normalised, ``region_mask`` (T, M) = ``box_labels != -1``."""
    return {
        "region_features": np.asarray(video["region_features"], dtype=feature_dtype),
        "frame_features": np.asarray(video["frame_features"], dtype=feature_dtype),
        "region_boxes": normalise_boxes(video["boxes"], float(video["width"]), float(video["height"])),
        "region_mask": np.asarray(video["box_labels"]) != -1,
    }


class VideoReader:
    """Reads one clip's arrays from a ``videos`` dataset: features as float16 numpy (formatted with
    ``dtype`` so they are not upcast on the way), geometry as float32/int64; a small LRU cache
    serves the many queries of one clip."""

    def __init__(self, videos: datasets.Dataset, cache_size: int = 64) -> None:
        missing = [name for name in _FEATURE_COLUMNS + _GEOMETRY_COLUMNS if name not in videos.column_names]
        if missing:
            raise DatasetSchemaError(
                f"videos have no column(s) {missing}: this dataset was converted with --no-features; "
                "extract features (dataset_scripts) before training or evaluating a model"
            )
        self.features = videos.with_format("numpy", columns=list(_FEATURE_COLUMNS), dtype=np.float16)
        self.geometry = videos.with_format("numpy", columns=list(_GEOMETRY_COLUMNS))
        self.position = {video_id: i for i, video_id in enumerate(videos["video_id"])}
        self.cache_size = cache_size
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __call__(self, video_id: str) -> dict[str, Any]:
        if video_id in self._cache:
            self._cache.move_to_end(video_id)
            return self._cache[video_id]
        if video_id not in self.position:
            raise DatasetSchemaError(f"query refers to video_id {video_id!r}, which is not in the videos config")
        index = self.position[video_id]
        geometry = self.geometry[index]
        video = {
            "video_id": video_id,
            **encode_video({**self.features[index], **geometry}, feature_dtype=np.float16),
            "boxes": np.asarray(geometry["boxes"], dtype=np.float32),
            "frame_ids": np.asarray(geometry["frame_ids"], dtype=np.int64),
            "segment": [int(v) for v in geometry["segment"]],
            "width": int(float(geometry["width"])),
            "height": int(float(geometry["height"])),
        }
        self._cache[video_id] = video
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return video


class StvgQueryDataset(torch.utils.data.Dataset):
    """Queries of one split joined to their clip's features; one item per query.

    ``keep_ground_truth=False`` (the default, and the only thing training uses) drops the ``gt_*``
    columns before any row is read. Items carry the model-input arrays plus ``meta`` (query id, video
    id, qtype, absolute frame ids, width, height, pixel boxes) that post-processing needs.
    """

    def __init__(
        self,
        videos: datasets.Dataset,
        queries: datasets.Dataset,
        tokenizer: Any,
        keep_ground_truth: bool = False,
        cache_size: int = 64,
    ) -> None:
        if not keep_ground_truth:
            queries = drop_ground_truth(queries)
            assert_weakly_supervised(queries)
        columns = [name for name in QUERY_INPUT_COLUMNS if name in queries.column_names]
        self.queries = queries.select_columns(columns)
        self.tokenizer = tokenizer
        self.read_video = VideoReader(videos, cache_size=cache_size)
        self._rows: list[dict[str, Any]] | None = None

    @classmethod
    def from_split(cls, split: Any, tokenizer: Any, **kwargs: Any) -> StvgQueryDataset:
        """Build from a :class:`stvg_data.dataset_folder.StvgSplit`."""
        return cls(split.videos, split.queries, tokenizer, **kwargs)

    def __len__(self) -> int:
        return self.queries.num_rows

    def _row(self, index: int) -> dict[str, Any]:
        if self._rows is None:  # query rows are small: read them once, as plain Python
            self._rows = self.queries.to_list()
        return self._rows[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self._row(index)
        video = self.read_video(row["video_id"])
        item = encode_query(row, self.tokenizer)
        item.update({key: video[key] for key in ("region_features", "frame_features", "region_boxes", "region_mask")})
        item["meta"] = {
            "query_id": row["query_id"],
            "video_id": row["video_id"],
            "qtype": row.get("qtype", "declarative"),
            "frame_ids": video["frame_ids"],
            "segment": video["segment"],
            "width": video["width"],
            "height": video["height"],
            "boxes": video["boxes"],
        }
        return item


def _pad_2d(sequences: Sequence[Sequence[Sequence[int]]], pad: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """List (B) of lists (n_b) of word-id lists -> ids (B, max n, max len) and mask (B, max n)."""
    batch = len(sequences)
    count = max((len(items) for items in sequences), default=0)
    length = max((len(words) for items in sequences for words in items), default=0)
    ids = torch.full((batch, max(count, 1), max(length, 1)), pad, dtype=torch.long)
    mask = torch.zeros((batch, max(count, 1)), dtype=torch.bool)
    for b, items in enumerate(sequences):
        for n, words in enumerate(items):
            ids[b, n, : len(words)] = torch.as_tensor(words, dtype=torch.long)
            mask[b, n] = True
    return ids, mask


def collate_stvg(items: Sequence[Mapping[str, Any]], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Pad items of :class:`StvgQueryDataset` into the model inputs of INTERFACES.md.

    Returns the ``MODEL_INPUT_NAMES`` tensors (``modeling_stvg.modeling_stvg``) plus ``meta`` (a list of
    per-item dicts) when the items carry one. K is at least 1 (an all-False ``relation_mask`` row when a
    query has none).
    """
    if not items:
        raise ValueError("collate_stvg got an empty batch")
    batch = len(items)
    frames = max(item["region_features"].shape[0] for item in items)
    regions = max(item["region_features"].shape[1] for item in items)
    region_dim = items[0]["region_features"].shape[2]
    frame_dim = items[0]["frame_features"].shape[1]
    region_features = torch.zeros((batch, frames, regions, region_dim), dtype=dtype)
    frame_features = torch.zeros((batch, frames, frame_dim), dtype=dtype)
    region_boxes = torch.zeros((batch, frames, regions, 4), dtype=torch.float32)
    region_mask = torch.zeros((batch, frames, regions), dtype=torch.bool)
    frame_mask = torch.zeros((batch, frames), dtype=torch.bool)
    for b, item in enumerate(items):
        t, m = item["region_features"].shape[:2]
        region_features[b, :t, :m] = torch.from_numpy(np.ascontiguousarray(item["region_features"])).to(dtype)
        frame_features[b, :t] = torch.from_numpy(np.ascontiguousarray(item["frame_features"])).to(dtype)
        region_boxes[b, :t, :m] = torch.from_numpy(np.ascontiguousarray(item["region_boxes"], dtype=np.float32))
        region_mask[b, :t, :m] = torch.from_numpy(np.ascontiguousarray(item["region_mask"], dtype=bool))
        frame_mask[b, :t] = True
    entity_token_ids, entity_mask = _pad_2d([item["entity_token_ids"] for item in items])
    relation_token_ids, relation_mask = _pad_2d([item["relation_token_ids"] for item in items])
    relation_entities = torch.zeros((batch, relation_mask.shape[1], 2), dtype=torch.long)
    for b, item in enumerate(items):
        if item["relation_entities"]:
            pairs = torch.as_tensor(item["relation_entities"], dtype=torch.long)
            relation_entities[b, : len(pairs)] = pairs
    output: dict[str, Any] = {
        "region_features": region_features,
        "region_boxes": region_boxes.to(dtype) if dtype != torch.float32 else region_boxes,
        "region_mask": region_mask,
        "frame_features": frame_features,
        "frame_mask": frame_mask,
        "entity_token_ids": entity_token_ids,
        "entity_mask": entity_mask,
        "relation_token_ids": relation_token_ids,
        "relation_entities": relation_entities,
        "relation_mask": relation_mask,
        "target_index": torch.as_tensor([int(item["target_index"]) for item in items], dtype=torch.long),
    }
    if all("meta" in item for item in items):
        output["meta"] = [item["meta"] for item in items]
    return output


def model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Only the tensors StvgModel.forward takes (drops ``meta``)."""
    return {key: batch[key] for key in MODEL_INPUT_NAMES}

