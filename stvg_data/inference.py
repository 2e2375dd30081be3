"""Model outputs -> predictions in the contract format (DESIGN section 6).

``predict_split(model, tokenizer, split)`` is what the trainer's final evaluation and
``evaluate_stvg.py --model`` call: it batches every query of a split (ground truth dropped: a model
must not see it to predict), runs the model in ``eval`` mode and turns its ``box_index`` (B, T) and
``sted`` (B, 2) outputs into ``{"query_id", "sted", "boxes"}`` records.

Span rule (sampled-frame indices -> absolute frame ids): a sampled frame stands for the raw frames
from itself up to the next sampled frame, so the predicted indices ``[s, e)`` become
``[frame_ids[s], frame_ids[e])``, with the clip's segment end when ``e`` is the last frame. The
prediction carries one box per sampled frame inside that span (the proposal ``box_index[t]`` of
frame ``t`` in the clip's pixel boxes; an empty box ``[0, 0, 0, 0]`` where a frame has no real
proposal, ``box_index`` -1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .batching import StvgQueryDataset, collate_stvg, model_inputs


def clamp_span(num_frames: int, start: int, end: int) -> tuple[int, int]:
    """Sampled-frame span ``[start, end)`` clamped to a non-empty span inside ``[0, num_frames)``."""
    start = int(min(max(int(start), 0), num_frames - 1))
    return start, int(min(max(int(end), start + 1), num_frames))


def span_to_frame_ids(frame_ids: Sequence[int], segment_end: int, start: int, end: int) -> tuple[int, int]:
    """Sampled-frame span ``[start, end)`` -> absolute frame span ``[begin, end_exclusive)``."""
    num_frames = len(frame_ids)
    start, end = clamp_span(num_frames, start, end)
    begin = int(frame_ids[start])
    stop = int(frame_ids[end]) if end < num_frames else int(max(segment_end, frame_ids[-1] + 1))
    return begin, stop


def outputs_to_predictions(
    box_index: torch.Tensor | np.ndarray, sted: torch.Tensor | np.ndarray, metas: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One prediction per batch item from the model's ``box_index`` (B, T) and ``sted`` (B, 2)."""
    box_index = np.asarray(box_index.detach().cpu() if isinstance(box_index, torch.Tensor) else box_index)
    sted = np.asarray(sted.detach().cpu() if isinstance(sted, torch.Tensor) else sted)
    predictions = []
    for b, meta in enumerate(metas):
        frame_ids = np.asarray(meta["frame_ids"], dtype=np.int64)
        start, end = clamp_span(len(frame_ids), sted[b, 0], sted[b, 1])
        begin, stop = span_to_frame_ids(frame_ids, meta["segment"][1], start, end)
        frames = np.arange(start, end)
        regions = box_index[b, start:end].astype(np.int64)
        boxes = np.asarray(meta["boxes"], dtype=np.float32)[frames, np.maximum(regions, 0)]
        # -1: the frame has no real proposal; an empty box keeps the prediction complete (IoU 0)
        boxes[regions < 0] = 0.0
        predictions.append({
            "query_id": meta["query_id"],
            "sted": [begin, stop],
            "boxes": dict(zip(map(str, frame_ids[start:end].tolist()), boxes.tolist())),
        })
    return predictions


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    tokenizer: Any,
    split: Any,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Predictions (contract format) for every query of ``split`` (a ``StvgSplit``)."""
    dataset = StvgQueryDataset.from_split(split, tokenizer, keep_ground_truth=False)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    predictions: list[dict[str, Any]] = []
    starts = range(0, len(dataset), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="predict", unit="batch")
    try:
        for start in starts:
            batch = collate_stvg([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            inputs = {
                key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
                for key, value in model_inputs(batch).items()
            }
            outputs = model(**inputs)
            predictions.extend(outputs_to_predictions(outputs.box_index, outputs.sted, batch["meta"]))
    finally:
        model.train(was_training)
    return predictions


def load_checkpoint(model_dir: str | Any, device: str | torch.device | None = None) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` of a ``train_accelerate.py`` output folder (or Hub model id).

    Weights load from safetensors only. The tokenizer comes from the processor/tokenizer files saved
    beside the model.
    """
    from transformers import AutoModel, AutoTokenizer

    import modeling_stvg  # noqa: F401  (registers StvgConfig/StvgModel with the Auto classes)

    model = AutoModel.from_pretrained(str(model_dir), use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def predict_checkpoint(model_dir: str | Any, split: Any, batch_size: int = 16, device: str | None = None,
                       progress: bool = False) -> list[dict[str, Any]]:
    """Predictions (contract format) of a trained checkpoint on every query of ``split``; what
    ``evaluate_stvg.py --model`` calls."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_checkpoint(model_dir, device=device)
    return predict_split(model, tokenizer, split, batch_size=batch_size, device=device, progress=progress)
