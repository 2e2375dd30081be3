"""StvgProcessor: video + sentence -> model inputs; model outputs -> tubes in source frame ids and pixels.

``processor(video=path_or_frames, text=sentence, return_tensors="pt")`` decodes and samples the clip
(:class:`~processing_stvg.video_processing_stvg.StvgVideoProcessor`), runs the detector and feature
extractor (:class:`~processing_stvg.feature_extraction_stvg.StvgFeatureExtractor`), parses the sentence
(stanza, built lazily from ``parser_dir``; or give a :class:`ParsedSentence` / a dict with entities,
relations, target) and tokenizes its phrases (word-level tokenizer). The result is a
:class:`~transformers.BatchFeature` with exactly the model-input keys (:data:`MODEL_INPUT_KEYS`) plus
the post-processing keys (:data:`POSTPROCESS_KEYS`): ``frame_ids`` (B, T) absolute ids, -1 = padding;
``segment_end`` (B,) the exclusive end of the sampled clip; ``width``/``height`` (B,); ``pixel_boxes``
(B, T, M, 4). ``processor.model_inputs(batch)`` keeps only
the model-input keys.

:func:`build_model_inputs` turns each (video, sentence) pair into the trainer's item
(``stvg_data.batching.encode_video`` / ``encode_query``) and pads them with the trainer's collation,
``stvg_data.batching.collate_stvg`` (INTERFACES: ``MODEL_INPUT_NAMES``); it only adds input checks (an
empty phrase is an error here and ``[UNK]`` there) and the post-processing keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from modeling_stvg.modeling_stvg import MODEL_INPUT_NAMES
from stvg_data.batching import collate_stvg, encode_query, encode_video, normalise_boxes
from stvg_data.evaluation import write_json_atomic
from stvg_data.inference import clamp_span, span_to_frame_ids  # the one span rule (DESIGN sec. 6, README "Conventions")

from .feature_extraction_stvg import OUTPUT_KEYS as FEATURE_OUTPUT_KEYS, StvgFeatureExtractor
from .parsing_stvg import ParsedSentence, SentenceParseError, StanzaSentenceParser
from .tokenization_stvg import encode_words
from .video_processing_stvg import DecodedVideo, StvgVideoProcessor

# The model owns its input names; the processor produces exactly those.
MODEL_INPUT_KEYS = MODEL_INPUT_NAMES
POSTPROCESS_KEYS = ("frame_ids", "segment_end", "width", "height", "pixel_boxes")
VIDEO_FEATURE_KEYS = FEATURE_OUTPUT_KEYS  # what the feature extractor returns per clip

# Stanza pipelines are cached per (language, folder) outside the processor, so the processor itself
# holds only JSON settings (ProcessorMixin serialises its __dict__).
_PARSERS: dict[tuple[str, str | None], StanzaSentenceParser] = {}


class ProcessorInputError(ValueError):
    """Arguments of the processor or of its post-processing are inconsistent."""


# ---------------------------------------------------------------------------------------------------
# Tensor building shared with the trainer


def _as_parsed(sentence: ParsedSentence | Mapping[str, Any]) -> ParsedSentence:
    if isinstance(sentence, ParsedSentence):
        return sentence
    if isinstance(sentence, Mapping):
        return ParsedSentence.from_row(sentence)
    raise ProcessorInputError(
        f"expected a ParsedSentence or a mapping with entities/relations/target, got {type(sentence).__name__}"
    )


def _check_phrases(b: int, sentence: ParsedSentence, tokenizer: Any) -> None:
    """Raise :class:`ProcessorInputError` for a phrase with no word the tokenizer can encode (the
    trainer would use ``[UNK]``)."""
    phrases = [("entity", e) for e in sentence.entities] + [("relation predicate", r[1]) for r in sentence.relations]
    for what, phrase in phrases:
        if not encode_words(tokenizer, phrase):
            raise ProcessorInputError(f"item {b}: {what} {phrase!r} has no word the tokenizer can encode")


def _checked_clip(b: int, video: Mapping[str, Any]) -> dict[str, Any]:
    """The arrays of one video as numpy (features float32), after checking their shapes and frame size."""
    boxes = np.asarray(video["boxes"], dtype=np.float32)
    labels = np.asarray(video["box_labels"], dtype=np.int64)
    regions = np.asarray(video["region_features"], dtype=np.float32)
    frames = np.asarray(video["frame_features"], dtype=np.float32)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2]:
        raise ProcessorInputError(f"video {b}: boxes {boxes.shape} / box_labels {labels.shape} do not match (T, M, 4)")
    if regions.shape[:2] != boxes.shape[:2] or frames.shape[0] != boxes.shape[0]:
        raise ProcessorInputError(
            f"video {b}: region_features {regions.shape} / frame_features {frames.shape} do not match boxes {boxes.shape}"
        )
    width, height = float(video["width"]), float(video["height"])
    if width <= 0 or height <= 0:
        raise ProcessorInputError(f"video {b}: width/height must be positive, got {width}x{height}")
    return {
        "boxes": boxes,
        "box_labels": labels,
        "region_features": regions,
        "frame_features": frames,
        "width": width,
        "height": height,
    }


def _frame_ids(b: int, video: Mapping[str, Any], num_frames: int) -> np.ndarray | None:
    """The video's ``frame_ids`` (T,) if it gives them (checked against its T), else None."""
    if video.get("frame_ids") is None:
        return None
    ids = np.asarray(video["frame_ids"], dtype=np.int64)
    if ids.shape != (num_frames,):
        raise ProcessorInputError(f"video {b}: frame_ids has {ids.shape} entries, features have {num_frames} frames")
    return ids


def _segment_end(video: Mapping[str, Any], ids: np.ndarray) -> int:
    """Exclusive end of the sampled clip: ``segment[1]`` (or ``segment_end``), else one past the last
    sampled frame id."""
    end = None
    if video.get("segment") is not None:
        end = int(np.asarray(video["segment"]).reshape(-1)[1])
    elif video.get("segment_end") is not None:
        end = int(video["segment_end"])
    last = int(ids[-1]) + 1 if len(ids) else 0
    return last if end is None else max(end, last)


def build_model_inputs(
    videos: Sequence[Mapping[str, Any]],
    sentences: Sequence[ParsedSentence | Mapping[str, Any]],
    tokenizer: Any,
    max_entity_words: int | None = None,
    max_relation_words: int | None = None,
    with_postprocess: bool = True,
    dtype: torch.dtype = torch.float32,
) -> BatchFeature:
    """Model inputs (INTERFACES.md) for B (video, sentence) pairs: each pair becomes the trainer's item
    (``stvg_data.batching.encode_video`` + ``encode_query``; ``region_boxes`` clipped to [0, 1]), padded
    to the batch maxima by ``stvg_data.batching.collate_stvg``.

    Args:
        videos: per item a mapping with ``boxes`` (T, M, 4) pixels, ``box_labels`` (T, M) (-1 =
            padding), ``region_features`` (T, M, Dv), ``frame_features`` (T, Df), ``width``,
            ``height`` and, for post-processing, ``frame_ids`` (T,) and ``segment`` ([begin, end) of the
            sampled clip; or ``segment_end``) -- a ``videos`` row of the dataset or the processor's
            decoded + extracted clip. Arrays may be numpy, torch or nested lists.
        sentences: per item a :class:`ParsedSentence` or a mapping with ``entities``, ``relations``
            (``{"subject", "predicate", "object"}`` dicts or tuples) and ``target`` (a ``queries`` row).
        tokenizer: the word-level tokenizer.
        max_entity_words / max_relation_words: truncate phrases to this many words (None = keep all).
        with_postprocess: also return ``frame_ids`` (B, T; -1 = padding), ``segment_end`` (B,; the
            clip's exclusive end, ``frame_ids[-1] + 1`` when the video gives no segment), ``width``,
            ``height`` (B,) and ``pixel_boxes`` (B, T, M, 4).
        dtype: float dtype of features and boxes.

    Returns:
        BatchFeature of torch tensors with :data:`MODEL_INPUT_KEYS` (and :data:`POSTPROCESS_KEYS`).
    """
    if len(videos) != len(sentences):
        raise ProcessorInputError(f"got {len(videos)} videos but {len(sentences)} sentences (one sentence per video)")
    if not videos:
        raise ProcessorInputError("build_model_inputs needs at least one (video, sentence) pair")
    parsed = [_as_parsed(s) for s in sentences]
    clips = [_checked_clip(b, video) for b, video in enumerate(videos)]
    Dv, Df = clips[0]["region_features"].shape[-1], clips[0]["frame_features"].shape[-1]
    if any(c["region_features"].shape[-1] != Dv or c["frame_features"].shape[-1] != Df for c in clips):
        raise ProcessorInputError("all videos of a batch need the same region/frame feature widths")
    given_ids = [_frame_ids(b, video, len(clip["boxes"])) for b, (video, clip) in enumerate(zip(videos, clips))]
    for b, sentence in enumerate(parsed):
        _check_phrases(b, sentence, tokenizer)
    items = [
        {
            **encode_video(clip, feature_dtype=np.float32),
            **encode_query(sentence.to_row(), tokenizer, max_entity_words, max_relation_words),
        }
        for clip, sentence in zip(clips, parsed)
    ]
    data: dict[str, Any] = collate_stvg(items, dtype=dtype)
    if with_postprocess:
        batch, T, M = data["region_mask"].shape
        frame_ids = torch.full((batch, T), -1, dtype=torch.long)
        segment_end = torch.zeros((batch,), dtype=torch.long)
        pixel_boxes = torch.zeros((batch, T, M, 4), dtype=torch.float32)
        for b, (video, clip, ids) in enumerate(zip(videos, clips, given_ids)):
            t, m = clip["boxes"].shape[:2]
            frame_ids[b, :t] = torch.arange(t) if ids is None else torch.from_numpy(ids)
            segment_end[b] = _segment_end(video, frame_ids[b, :t].numpy())
            pixel_boxes[b, :t, :m] = torch.from_numpy(clip["boxes"])
        data["frame_ids"] = frame_ids
        data["segment_end"] = segment_end
        data["width"] = torch.as_tensor([c["width"] for c in clips], dtype=torch.long)
        data["height"] = torch.as_tensor([c["height"] for c in clips], dtype=torch.long)
        data["pixel_boxes"] = pixel_boxes.to(dtype)
    return BatchFeature(data=data)


# ---------------------------------------------------------------------------------------------------
# Post-processing


def _output_field(outputs: Any, name: str) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def post_process_grounding(outputs: Any, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Model outputs -> one tube per batch item, in source frame ids and pixels.

    Uses ``outputs.box_index`` (B, T) (index into the input's proposal order) and ``outputs.sted``
    (B, 2) ``[start, end)`` on the sampled-frame axis; ``inputs`` must hold ``frame_ids``,
    ``pixel_boxes`` (or ``region_boxes`` with ``width``/``height``), ``frame_mask`` and ``segment_end``
    (without it the clip is taken to end one past its last sampled frame).

    Span rule: :func:`stvg_data.inference.span_to_frame_ids`, the same as training-time evaluation and
    ``evaluate_stvg.py --model``: a sampled frame stands for the raw frames up to the next sampled one,
    so ``[start, end)`` becomes ``[frame_ids[start], frame_ids[end])``, or ``[frame_ids[start],
    segment_end)`` when the span reaches the last sampled frame. An empty or inverted span is widened to
    its first frame; indices are clipped to the real frames.

    Returns a list of ``{"sted": [s, e), "boxes": {frame_id: [x1, y1, x2, y2]}, "score": float | None,
    "frame_ids": [...]}`` with a box for every sampled frame inside the span. A frame where the model chose no proposal (``box_index == -1``: no real
    proposal on it) takes the box of the nearest frame of the span that has one, or the whole frame when
    none has. ``score`` is the mean over the span of ``outputs.box_score`` (the fused z^S of the chosen
    proposals, Eq. 16) when the model gives it, else ``None``.
    """
    box_index = _output_field(outputs, "box_index")
    sted = _output_field(outputs, "sted")
    if box_index is None or sted is None:
        raise ProcessorInputError("model outputs need `box_index` (B, T) and `sted` (B, 2) for post-processing")
    box_index = torch.as_tensor(box_index).detach().cpu().long()
    sted = torch.as_tensor(sted).detach().cpu().long()
    if "frame_ids" not in inputs:
        raise ProcessorInputError("inputs lack `frame_ids`; pass the processor's full output to post-processing")
    frame_ids = torch.as_tensor(inputs["frame_ids"]).cpu().long()
    if "pixel_boxes" in inputs:
        pixel_boxes = torch.as_tensor(inputs["pixel_boxes"]).detach().cpu().float()
    else:
        scale = torch.stack(
            [torch.as_tensor(inputs["width"]), torch.as_tensor(inputs["height"])] * 2, dim=-1
        ).float()
        pixel_boxes = torch.as_tensor(inputs["region_boxes"]).detach().cpu().float() * scale[:, None, None, :]
    if "frame_mask" in inputs:
        frame_mask = torch.as_tensor(inputs["frame_mask"]).cpu().bool()
    else:
        frame_mask = frame_ids >= 0
    batch, T = box_index.shape
    if frame_ids.shape[0] != batch or pixel_boxes.shape[:2] != (batch, T):
        raise ProcessorInputError(
            f"outputs (B={batch}, T={T}) do not match inputs (frame_ids {tuple(frame_ids.shape)}, "
            f"boxes {tuple(pixel_boxes.shape)})"
        )
    box_score = _output_field(outputs, "box_score")
    if box_score is not None:
        box_score = torch.as_tensor(box_score).detach().cpu().float()
    segment_ends = torch.as_tensor(inputs["segment_end"]).cpu().reshape(-1) if "segment_end" in inputs else None
    widths = torch.as_tensor(inputs["width"]).cpu().reshape(-1) if "width" in inputs else None
    heights = torch.as_tensor(inputs["height"]).cpu().reshape(-1) if "height" in inputs else None
    tubes = []
    for b in range(batch):
        real = int(frame_mask[b].sum())
        if real == 0:
            raise ProcessorInputError(f"batch item {b} has no real frame")
        ids = frame_ids[b, :real].tolist()
        start, end = int(sted[b, 0]), int(sted[b, 1])
        clip_end = int(segment_ends[b]) if segment_ends is not None else int(ids[-1]) + 1
        s_frame, e_frame = span_to_frame_ids(ids, clip_end, start, end)
        lo, hi = clamp_span(real, start, end)
        steps = torch.arange(lo, hi)
        chosen = box_index[b, lo:hi]
        have = steps[chosen >= 0]
        if len(have):
            # frames without a proposal take the nearest frame that has one (argmin: ties -> earlier)
            nearest = have[(steps[:, None] - have[None, :]).abs().argmin(dim=1)]
            source = torch.where(chosen >= 0, steps, nearest)
            picked = pixel_boxes[b, source, box_index[b, source]].tolist()
        else:
            width = float(widths[b]) if widths is not None else float(pixel_boxes[b, ..., 2].max())
            height = float(heights[b]) if heights is not None else float(pixel_boxes[b, ..., 3].max())
            picked = [[0.0, 0.0, width, height]] * len(steps)
        boxes = {int(ids[t]): [round(float(v), 2) for v in box] for t, box in zip(steps.tolist(), picked)}
        score = None
        if box_score is not None and len(have):
            score = float(box_score[b, have].mean())
        tubes.append({"sted": [s_frame, e_frame], "boxes": boxes, "score": score, "frame_ids": ids})
    return tubes


def tube_to_json(tube: Mapping[str, Any], query_id: str | None = None) -> dict[str, Any]:
    """A tube as the predictions-file record of DESIGN sec. 6 (frame ids as string keys)."""
    record: dict[str, Any] = {
        "sted": [int(tube["sted"][0]), int(tube["sted"][1])],
        "boxes": {str(k): [float(v) for v in box] for k, box in tube["boxes"].items()},
    }
    if query_id is not None:
        record = {"query_id": query_id, **record}
    if tube.get("score") is not None:
        record["score"] = float(tube["score"])
    return record


# ---------------------------------------------------------------------------------------------------
# The processor


class StvgProcessor(ProcessorMixin):
    """Video processor + feature extractor + word tokenizer + sentence parser of stvg-vem.

    Args:
        video_processor: :class:`StvgVideoProcessor` (decode, sample 5 fps / <= 200 frames).
        feature_extractor: :class:`StvgFeatureExtractor` (proposals + region/frame features).
        tokenizer: the word-level tokenizer (:func:`processing_stvg.tokenization_stvg.build_word_tokenizer`).
        parser_language: stanza language code.
        parser_dir: local stanza model folder (None = stanza's default ``~/stanza_resources``).
        max_entity_words / max_relation_words: truncate phrases (relation predicates must fit the
            decoder: ``config.max_relation_tokens - 2``).
    """

    def __init__(
        self,
        video_processor: StvgVideoProcessor,
        feature_extractor: StvgFeatureExtractor,
        tokenizer: Any,
        parser_language: str = "en",
        parser_dir: str | None = None,
        max_entity_words: int = 16,
        max_relation_words: int = 14,
        **kwargs: Any,
    ) -> None:
        self.parser_language = str(parser_language)
        self.parser_dir = None if parser_dir is None else str(parser_dir)
        self.max_entity_words = int(max_entity_words)
        self.max_relation_words = int(max_relation_words)
        super().__init__(video_processor, feature_extractor, tokenizer, **kwargs)

    # -- saving / loading --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON settings: the sub-processors' dicts and the parser settings (no torch modules copied)."""
        output: dict[str, Any] = {
            "video_processor": self.video_processor.to_dict(),
            "feature_extractor": self.feature_extractor.to_dict(),
            "parser_language": self.parser_language,
            "parser_dir": self.parser_dir,
            "max_entity_words": self.max_entity_words,
            "max_relation_words": self.max_relation_words,
            "processor_class": type(self).__name__,
        }
        if getattr(self, "auto_map", None):
            output["auto_map"] = self.auto_map
        return output

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Sub-processors from ``processor_config.json`` (video processor, feature extractor) and the
        tokenizer files, without going through the Auto classes' model-config lookup."""
        processor_dict = processor_dict or {}
        missing = [k for k in ("video_processor", "feature_extractor") if not isinstance(processor_dict.get(k), dict)]
        if missing:
            raise OSError(
                f"{pretrained_model_name_or_path}: processor_config.json lacks {missing}; was it saved by "
                f"StvgProcessor.save_pretrained?"
            )
        video_processor = StvgVideoProcessor.from_dict(processor_dict["video_processor"])
        feature_extractor = StvgFeatureExtractor.from_dict(processor_dict["feature_extractor"])
        token_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **token_kwargs)
        return [video_processor, feature_extractor, tokenizer]

    # -- parsing -----------------------------------------------------------------------------------
    @property
    def parser(self) -> StanzaSentenceParser:
        key = (self.parser_language, self.parser_dir)
        if key not in _PARSERS:
            _PARSERS[key] = StanzaSentenceParser(language=self.parser_language, model_dir=self.parser_dir)
        return _PARSERS[key]

    def parse(self, text: str | ParsedSentence | Mapping[str, Any]) -> ParsedSentence:
        """A sentence (string, parsed with stanza) or an already-parsed sentence -> :class:`ParsedSentence`."""
        if isinstance(text, (ParsedSentence, Mapping)):
            return _as_parsed(text)
        return self.parser.parse(text)  # checks the text before the stanza pipeline is built

    # -- main call ---------------------------------------------------------------------------------
    def __call__(
        self,
        video: Any = None,
        text: str | ParsedSentence | Mapping[str, Any] | None = None,
        return_tensors: str | None = "pt",
        fps: float | None = None,
        segment: tuple[int, int] | None = None,
        boxes: Any = None,
        videos: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """One video and one sentence -> model inputs (B=1) + post-processing info.

        ``video``: a path, an array (T, H, W, 3), a list of PIL images (``videos=`` is an alias, HF
        style) or a :class:`DecodedVideo` from ``processor.video_processor.decode``.
        ``text``: a sentence (parsed with stanza), a :class:`ParsedSentence`, or a mapping with
        entities / relations / target. ``fps`` / ``segment``: see :class:`StvgVideoProcessor`.
        ``boxes``: optional (T, M, 4) pixel boxes on the sampled frames (skips the detector).
        """
        if kwargs:
            raise TypeError(f"StvgProcessor got unexpected arguments {sorted(kwargs)}")
        if return_tensors not in ("pt", None):
            raise ProcessorInputError(f"return_tensors must be 'pt', got {return_tensors!r}")
        if video is None:
            video = videos
        if video is None:
            raise ProcessorInputError("StvgProcessor needs `video=` (a path, frames array or list of images)")
        if text is None:
            raise ProcessorInputError("StvgProcessor needs `text=` (the sentence to ground)")
        if isinstance(text, (list, tuple)):
            raise ProcessorInputError("StvgProcessor takes one sentence per call (B=1); loop over sentences")
        parsed = self.parse(text)  # parse first: a bad sentence fails before the detector runs
        if isinstance(video, DecodedVideo):
            decoded = video  # already decoded and sampled (e.g. kept for visualisation)
        else:
            decoded = self.video_processor.decode(video, fps=fps, segment=segment)
        features = self.feature_extractor.extract(decoded.frames, boxes=boxes)
        clip = {
            **{k: features[k] for k in VIDEO_FEATURE_KEYS},
            "frame_ids": decoded.frame_ids,
            "segment": decoded.segment,  # post-processing maps a span reaching the last frame to its end
            "width": decoded.width,
            "height": decoded.height,
        }
        return build_model_inputs(
            [clip],
            [parsed],
            self.tokenizer,
            max_entity_words=self.max_entity_words,
            max_relation_words=self.max_relation_words,
        )

    @staticmethod
    def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
        """Only the model-input keys of a processor output (what ``model(**...)`` takes)."""
        return {k: batch[k] for k in MODEL_INPUT_KEYS}

    def post_process_grounding(self, outputs: Any, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
        """See :func:`post_process_grounding`."""
        return post_process_grounding(outputs, inputs)

    @property
    def model_input_names(self) -> list[str]:
        return list(MODEL_INPUT_KEYS)


def save_tube_json(tubes: Sequence[Mapping[str, Any]], path: str | os.PathLike, query_ids: Sequence[str] | None = None) -> None:
    """Write tubes as a predictions JSON list (atomically: temp file then rename)."""
    records = [tube_to_json(t, None if query_ids is None else query_ids[i]) for i, t in enumerate(tubes)]
    write_json_atomic(records, path, indent=1)


__all__ = [
    "MODEL_INPUT_KEYS",
    "POSTPROCESS_KEYS",
    "ProcessorInputError",
    "SentenceParseError",
    "StvgProcessor",
    "build_model_inputs",
    "normalise_boxes",
    "post_process_grounding",
    "save_tube_json",
    "span_to_frame_ids",
    "tube_to_json",
]
