"""stvg-vem model: Jin & Mu, "Weakly-Supervised Spatio-Temporal Video Grounding with Variational Cross-Modal
Alignment" (ECCV 2024).

Two networks are trained by alternating variational EM (Algorithm 1 of the paper):

* ``q_phi`` (:class:`StvgVariationalNetwork`): sees the entity phrases only. Trained in the E-step with
  L_z,phi (Eq. 9) + L_contra (Eq. 10-11).
* ``p_theta`` (:class:`StvgPosteriorNetwork`): its language encoder sees the entity AND relation phrases; it owns the
  relation reconstruction decoder (Eq. 13-15). Trained in the M-step with L_z,theta + L_rec.

Both networks read the same tube-linked video (Eq. 4, :func:`link_tubes`, no parameters), so the linking runs once
per batch in :func:`prepare_stvg_inputs` and each network can be wrapped on its own (DDP / Accelerate): the losses
(:func:`cross_assignment_loss`, :func:`contrastive_loss`, :func:`reconstruction_loss`) only read the networks' own
forward outputs. Inference fuses both networks (Eq. 16, :func:`fuse_assignments`).

Shape letters: B batch, T frames, M proposals (= tubes) per frame, N entity phrases, K relations, L words, D hidden
size, G sentences of the global batch (all processes), V vocabulary, H heads.

This file imports only torch, transformers and its sibling ``configuration_stvg`` (it ships as remote code).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_stvg import StvgConfig

# Viterbi node penalty for a padded proposal in a real frame: a tube only passes through one when its frame has no
# unused real proposal left (any real path beats it: one edge scores at most 1 + alpha).
PADDED_NODE_PENALTY = -1.0e4
IGNORE_INDEX = -100

MODEL_INPUT_NAMES = (
    "region_features",
    "region_boxes",
    "region_mask",
    "frame_features",
    "frame_mask",
    "entity_token_ids",
    "entity_mask",
    "relation_token_ids",
    "relation_entities",
    "relation_mask",
    "target_index",
)


class StvgInputError(ValueError):
    """A model input is malformed; the message names the input key and the fix."""

    def __init__(self, name: str, message: str) -> None:
        self.input_name = name
        super().__init__(f"StvgModel input `{name}`: {message}")


# ---------------------------------------------------------------------------------------------------------------------
# Output types
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class StvgNetworkOutput(ModelOutput):
    """Forward output of one network (q_phi or p_theta). Region axes are in TUBE order (see ``tube_order``).

    spatial_logits: (B,T,N,M) Eq. 6 scores g_S(w_i).g_V(v_t,j); padded regions hold a large negative value.
    spatial_assignment: (B,T,N,M) z^S, softmax over the real regions of each frame (zeros where none).
    temporal_assignment: (B,T) z^T, Eq. 7 Gaussian weight of every frame (0 on padded frames).
    temporal_center, temporal_width: (B,) Gaussian centre and width as fractions of the video length.
    video_states: (B,T,M,D) video context (V of Eq. 13). phrase_states: (B,N,D) language context of the entities.
    contrastive_logits_v2t: (B,G) s(V_b, S_g) of local videos against all sentences of the global batch (Eq. 10).
    contrastive_logits_t2v: (B,G) s(V_g, S_b) of local sentences against all videos of the global batch.
    contrastive_mask: (G,) real columns (global batch padded per process). contrastive_targets: (B,) positives.
    reconstruction_logits: (B,K,L+1,V) Eq. 15 decoder logits. reconstruction_labels: (B,K,L+1) targets, -100 = ignore.
    ranking_selected_logits, ranking_complement_logits: (B,K,L+1,V) the decoder (weights and video detached, so only
        z^T gets their gradient) reading the frames z^T selects / leaves out (1 - z^T), for the temporal ranking loss
        (only when ``config.temporal_ranking_weight > 0``).
    """

    spatial_logits: Tensor | None = None
    spatial_assignment: Tensor | None = None
    temporal_assignment: Tensor | None = None
    temporal_center: Tensor | None = None
    temporal_width: Tensor | None = None
    video_states: Tensor | None = None
    phrase_states: Tensor | None = None
    contrastive_logits_v2t: Tensor | None = None
    contrastive_logits_t2v: Tensor | None = None
    contrastive_mask: Tensor | None = None
    contrastive_targets: Tensor | None = None
    reconstruction_logits: Tensor | None = None
    reconstruction_labels: Tensor | None = None
    ranking_selected_logits: Tensor | None = None
    ranking_complement_logits: Tensor | None = None


@dataclass
class StvgStepOutput(ModelOutput):
    """One EM step. ``loss`` is the weighted sum to back-propagate; ``None`` when the objective has no such step
    (``objective="contrastive"`` has no M-step): skip the step then."""

    loss: Tensor | None = None
    assignment_loss: Tensor | None = None
    contrastive_loss: Tensor | None = None
    reconstruction_loss: Tensor | None = None
    temporal_ranking_loss: Tensor | None = None
    q_output: StvgNetworkOutput | None = None
    p_output: StvgNetworkOutput | None = None


@dataclass
class StvgModelOutput(ModelOutput):
    """Fused prediction (Eq. 16).

    loss: (only with ``return_loss=True``) E-step loss + M-step loss; targets are detached each way, so q_phi gets
        only E-step gradients and p_theta only M-step gradients (iteration-wise alternation in one backward).
    box_index: (B,T) long, the chosen proposal per frame in the ORIGINAL proposal order of the input (-1 on padded
        frames or frames without a real proposal).
    box_score: (B,T) fused z^S of the chosen proposal.
    sted: (B,2) long, [start, end) on the sampled-frame axis (end exclusive).
    region_scores: (B,T,M) fused z^S of the target entity, ORIGINAL proposal order.
    temporal_scores: (B,T) fused z^T.
    tube_order: (B,T,M) original proposal index held by tube k on frame t (Eq. 4 linking).
    """

    loss: Tensor | None = None
    box_index: Tensor | None = None
    box_score: Tensor | None = None
    sted: Tensor | None = None
    region_scores: Tensor | None = None
    temporal_scores: Tensor | None = None
    tube_order: Tensor | None = None
    e_step: StvgStepOutput | None = None
    m_step: StvgStepOutput | None = None
    q_output: StvgNetworkOutput | None = None
    p_output: StvgNetworkOutput | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Small tensor helpers
# ---------------------------------------------------------------------------------------------------------------------


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim`` restricted to ``mask`` (float32); all-masked slices give zeros, never NaN."""
    logits = logits.float().masked_fill(~mask, torch.finfo(torch.float32).min)
    return torch.softmax(logits, dim=dim) * mask


def masked_log_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """log-softmax over ``dim`` restricted to ``mask`` (float32); masked entries are 0 (not -inf)."""
    logits = logits.float().masked_fill(~mask, torch.finfo(torch.float32).min)
    return torch.log_softmax(logits, dim=dim).masked_fill(~mask, 0.0)


def masked_mean(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of ``values`` over ``dim`` where ``mask`` (broadcast on trailing dims); empty slices give zeros."""
    weights = mask.to(values.dtype)
    while weights.dim() < values.dim():
        weights = weights.unsqueeze(-1)
    return (values * weights).sum(dim) / weights.sum(dim).clamp_min(1.0)


def pairwise_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """IoU of every box of ``boxes_a`` (...,M,4) with every box of ``boxes_b`` (...,M',4) -> (...,M,M'); x1y1x2y2."""
    area_a = (boxes_a[..., 2] - boxes_a[..., 0]).clamp_min(0) * (boxes_a[..., 3] - boxes_a[..., 1]).clamp_min(0)
    area_b = (boxes_b[..., 2] - boxes_b[..., 0]).clamp_min(0) * (boxes_b[..., 3] - boxes_b[..., 1]).clamp_min(0)
    top_left = torch.maximum(boxes_a[..., :, None, :2], boxes_b[..., None, :, :2])  # (...,M,M',2)
    bottom_right = torch.minimum(boxes_a[..., :, None, 2:], boxes_b[..., None, :, 2:])  # (...,M,M',2)
    inter = (bottom_right - top_left).clamp_min(0).prod(-1)  # (...,M,M')
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return inter / union.clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Eq. 4: tube linking
# ---------------------------------------------------------------------------------------------------------------------


def tube_linking_edge_scores(region_features: Tensor, region_boxes: Tensor, alpha: float) -> Tensor:
    """Eq. 4 edge score between proposals of consecutive frames: cos(v_t,i, v_t+1,j) + alpha * IoU(b_t,i, b_t+1,j).

    region_features (B,T,M,Dv), region_boxes (B,T,M,4) -> (B,T-1,M,M) float64.
    """
    unit = F.normalize(region_features.float(), dim=-1, eps=1e-12)  # (B,T,M,Dv); fp32 matmul, fp64 path sums
    cosine = torch.matmul(unit[:, :-1], unit[:, 1:].transpose(-1, -2)).double()  # (B,T-1,M,M)
    boxes = region_boxes.double()
    iou = pairwise_box_iou(boxes[:, :-1], boxes[:, 1:])  # (B,T-1,M,M)
    return cosine + alpha * iou


@torch.no_grad()
def link_tubes(
    region_features: Tensor, region_boxes: Tensor, region_mask: Tensor, frame_mask: Tensor, alpha: float
) -> Tensor:
    """Eq. 4 tube linking by repeated Viterbi: find the best-scoring path of proposals through all frames, take its
    proposals out, repeat until M tubes. Batched over videos; Python loops run over tubes and frames only.

    Scores: an edge between real proposals of consecutive real frames scores cos + alpha * IoU; edges touching a padded
    proposal or a padded frame score 0; a padded proposal in a real frame costs ``PADDED_NODE_PENALTY`` (so it is used
    only once a frame has no real proposal left); a proposal already used by an earlier tube is forbidden. Every frame
    has M slots and M tubes are drawn, so tube k always finds an unused slot.

    region_features (B,T,M,Dv), region_boxes (B,T,M,4), region_mask (B,T,M) bool, frame_mask (B,T) bool
    -> tube_order (B,T,M) long: tube_order[b,t,k] = original proposal index of tube k on frame t (a permutation of
    0..M-1 on every frame). Tubes come in the order they were found (best first).
    """
    batch, frames, regions = region_mask.shape
    device = region_mask.device
    real_region = region_mask & frame_mask[:, :, None]  # (B,T,M)
    order = torch.zeros(batch, frames, regions, dtype=torch.long, device=device)
    if frames == 0 or regions == 0:
        return order
    if frames > 1:
        edges = tube_linking_edge_scores(region_features, region_boxes, alpha)  # (B,T-1,M,M)
        edge_real = real_region[:, :-1, :, None] & real_region[:, 1:, None, :]  # (B,T-1,M,M)
        edges = edges.masked_fill(~edge_real, 0.0)
    node_penalty = torch.zeros(batch, frames, regions, dtype=torch.float64, device=device)
    padded_in_real_frame = (~region_mask) & frame_mask[:, :, None]  # (B,T,M)
    node_penalty = node_penalty.masked_fill(padded_in_real_frame, PADDED_NODE_PENALTY)
    available = torch.ones(batch, frames, regions, dtype=torch.bool, device=device)
    batch_index = torch.arange(batch, device=device)
    for tube in range(regions):
        node = node_penalty.masked_fill(~available, float("-inf"))  # (B,T,M)
        score = node[:, 0]  # (B,M)
        backpointers = []
        for t in range(1, frames):
            candidates = score[:, :, None] + edges[:, t - 1]  # (B,M_prev,M_next)
            best, argbest = candidates.max(dim=1)  # (B,M_next)
            score = best + node[:, t]
            backpointers.append(argbest)
        current = score.argmax(dim=-1)  # (B,)
        path = [current]
        for t in range(frames - 1, 0, -1):
            current = backpointers[t - 1][batch_index, current]  # (B,)
            path.append(current)
        path_tensor = torch.stack(path[::-1], dim=1)  # (B,T)
        order[:, :, tube] = path_tensor
        available.scatter_(2, path_tensor[:, :, None], False)
    return order


def box_centres(boxes: Tensor) -> Tensor:
    """Centres of x1y1x2y2 boxes: (...,4) -> (...,2)."""
    return 0.5 * (boxes[..., :2] + boxes[..., 2:])


def tube_motion(tube_boxes: Tensor, tube_mask: Tensor, scale: float = 10.0) -> Tensor:
    """Centre displacement of every tube box to the previous and to the next frame of its tube (0 where either box
    is missing), times ``scale`` so a typical step is O(0.1-1). tube_boxes (B,T,M,4), tube_mask (B,T,M) -> (B,T,M,4)."""
    centre = box_centres(tube_boxes)  # (B,T,M,2)
    step = (centre[:, 1:] - centre[:, :-1]) * (tube_mask[:, 1:] & tube_mask[:, :-1])[..., None]  # (B,T-1,M,2)
    from_previous = F.pad(step, (0, 0, 0, 0, 1, 0))  # (B,T,M,2): frame t minus frame t-1
    to_next = F.pad(step, (0, 0, 0, 0, 0, 1))  # (B,T,M,2): frame t+1 minus frame t
    return scale * torch.cat([from_previous, to_next], dim=-1)


def reorder_regions(values: Tensor, tube_order: Tensor) -> Tensor:
    """Gather per-proposal values (B,T,M,...) into tube order (B,T,M,...) with ``tube_order`` (B,T,M)."""
    index = tube_order
    while index.dim() < values.dim():
        index = index.unsqueeze(-1)
    index = index.expand(*tube_order.shape, *values.shape[3:])  # (B,T,M,...)
    return values.gather(2, index)


def tube_to_original_order(values: Tensor, tube_order: Tensor) -> Tensor:
    """Inverse of :func:`reorder_regions` on the region axis: (B,T,M) in tube order -> (B,T,M) in original order."""
    return torch.zeros_like(values).scatter(2, tube_order, values)


# ---------------------------------------------------------------------------------------------------------------------
# Input validation and preparation
# ---------------------------------------------------------------------------------------------------------------------


def _expect_shape(name: str, tensor: Any, shape: tuple[int | None, ...]) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise StvgInputError(name, f"expected a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.dim() != len(shape) or any(want is not None and got != want for got, want in zip(tensor.shape, shape)):
        wanted = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise StvgInputError(name, f"expected shape {wanted}, got {tuple(tensor.shape)}.")
    return tensor


def validate_stvg_inputs(inputs: Mapping[str, Any], config: StvgConfig) -> dict[str, Tensor]:
    """Check the model inputs of INTERFACES.md and return them with normalised dtypes (bool masks, long ids).

    Raises :class:`StvgInputError` (a ``ValueError``) naming the input for: a missing key, shapes that disagree, a
    feature width other than the config's, non-finite features, a video without real frames, a sentence without
    entities, a target index outside the real entities, a relation pointing to a missing entity, word ids outside the
    vocabulary, more than ``config.max_frames`` frames or a predicate longer than ``config.max_relation_tokens - 2``.
    """
    for name in MODEL_INPUT_NAMES:
        if inputs.get(name) is None:
            raise StvgInputError(name, "is missing (see INTERFACES.md for the model input keys).")
    features = _expect_shape("region_features", inputs["region_features"], (None, None, None, None))
    batch, frames, regions, _ = features.shape
    if features.shape[-1] != config.region_feature_dim:
        raise StvgInputError(
            "region_features", f"last dim {features.shape[-1]} != config.region_feature_dim {config.region_feature_dim}."
        )
    if frames > config.max_frames:
        raise StvgInputError("region_features", f"{frames} frames > config.max_frames {config.max_frames}; sample fewer.")
    if batch == 0 or frames == 0 or regions == 0:
        raise StvgInputError("region_features", f"empty batch/frame/proposal axis in shape {tuple(features.shape)}.")
    out: dict[str, Tensor] = {"region_features": features}
    out["region_boxes"] = _expect_shape("region_boxes", inputs["region_boxes"], (batch, frames, regions, 4))
    out["region_mask"] = _expect_shape("region_mask", inputs["region_mask"], (batch, frames, regions)).bool()
    out["frame_features"] = _expect_shape(
        "frame_features", inputs["frame_features"], (batch, frames, config.frame_feature_dim)
    )
    out["frame_mask"] = _expect_shape("frame_mask", inputs["frame_mask"], (batch, frames)).bool()
    entity_ids = _expect_shape("entity_token_ids", inputs["entity_token_ids"], (batch, None, None))
    num_entities = entity_ids.shape[1]
    out["entity_token_ids"] = entity_ids.long()
    out["entity_mask"] = _expect_shape("entity_mask", inputs["entity_mask"], (batch, num_entities)).bool()
    relation_ids = _expect_shape("relation_token_ids", inputs["relation_token_ids"], (batch, None, None))
    num_relations = relation_ids.shape[1]
    out["relation_token_ids"] = relation_ids.long()
    out["relation_entities"] = _expect_shape(
        "relation_entities", inputs["relation_entities"], (batch, num_relations, 2)
    ).long()
    out["relation_mask"] = _expect_shape("relation_mask", inputs["relation_mask"], (batch, num_relations)).bool()
    out["target_index"] = _expect_shape("target_index", inputs["target_index"], (batch,)).long()

    for name in ("region_features", "region_boxes", "frame_features"):
        if not out[name].is_floating_point():
            raise StvgInputError(name, f"expected a floating-point tensor, got {out[name].dtype}.")
        if not bool(torch.isfinite(out[name]).all()):
            raise StvgInputError(name, "contains NaN or infinite values.")
    no_frames = ~out["frame_mask"].any(dim=1)  # (B,)
    if bool(no_frames.any()):
        raise StvgInputError(
            "frame_mask", f"batch items {no_frames.nonzero().flatten().tolist()} have no real frame (all padding)."
        )
    if num_entities == 0 or bool((~out["entity_mask"].any(dim=1)).any()):
        raise StvgInputError("entity_mask", "every sentence needs at least one real entity phrase.")
    for name in ("entity_token_ids", "relation_token_ids"):
        ids = out[name]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size):
            raise StvgInputError(name, f"word ids must be in [0, vocab_size={config.vocab_size}).")
    if relation_ids.shape[2] + 2 > config.max_relation_tokens:
        raise StvgInputError(
            "relation_token_ids",
            f"{relation_ids.shape[2]} predicate words + BOS/EOS exceed config.max_relation_tokens "
            f"{config.max_relation_tokens}.",
        )
    real_words = out["relation_token_ids"] != config.pad_token_id  # (B,K,Lr)
    if bool((real_words[..., 1:] & ~real_words[..., :-1]).any()):
        raise StvgInputError("relation_token_ids", "words must be left-aligned (no word after a pad id).")
    target = out["target_index"]
    target_ok = (target >= 0) & (target < num_entities)
    if bool(target_ok.all()):
        target_ok = out["entity_mask"].gather(1, target[:, None]).squeeze(1)
    if not bool(target_ok.all()):
        raise StvgInputError(
            "target_index",
            f"batch items {(~target_ok).nonzero().flatten().tolist()} point outside their real entities "
            f"(entity_mask); target_index must index a real entity phrase.",
        )
    relation_mask = out["relation_mask"]
    subject, obj = out["relation_entities"].unbind(-1)  # (B,K) each

    def _entity_exists(index: Tensor) -> Tensor:
        in_range = (index >= 0) & (index < num_entities)
        safe = index.clamp(0, max(num_entities - 1, 0))
        return in_range & out["entity_mask"].gather(1, safe)

    bad_subject = relation_mask & ~_entity_exists(subject)
    bad_object = relation_mask & (obj != -1) & ~_entity_exists(obj)
    if bool((bad_subject | bad_object).any()):
        raise StvgInputError(
            "relation_entities",
            "a real relation points to a missing entity (subject must index a real entity; object a real entity or "
            "-1 for none).",
        )
    return out


@torch.no_grad()
def prepare_stvg_inputs(inputs: Mapping[str, Any], config: StvgConfig, validate: bool = True) -> dict[str, Tensor]:
    """Validate the model inputs and link tubes (Eq. 4). Returns the dict both networks' ``forward`` take:

    tube_features (B,T,M,Dv), tube_boxes (B,T,M,4), tube_mask (B,T,M) (real proposal in a real frame), all in tube
    order; tube_order (B,T,M); and the other inputs unchanged (frame_features, frame_mask, entity_*, relation_*,
    target_index).
    """
    checked = validate_stvg_inputs(inputs, config) if validate else dict(inputs)
    region_mask = checked["region_mask"] & checked["frame_mask"][:, :, None]  # (B,T,M)
    with torch.autocast(device_type=checked["region_features"].device.type, enabled=False):
        tube_order = link_tubes(
            checked["region_features"], checked["region_boxes"], region_mask, checked["frame_mask"],
            float(config.linking_alpha),
        )
    prepared = {name: checked[name] for name in MODEL_INPUT_NAMES if not name.startswith("region_")}
    prepared["tube_features"] = reorder_regions(checked["region_features"], tube_order)  # (B,T,M,Dv)
    prepared["tube_boxes"] = reorder_regions(checked["region_boxes"], tube_order)  # (B,T,M,4)
    prepared["tube_mask"] = reorder_regions(region_mask, tube_order)  # (B,T,M)
    prepared["tube_order"] = tube_order
    return prepared


# ---------------------------------------------------------------------------------------------------------------------
# Transformer building blocks (SDPA)
# ---------------------------------------------------------------------------------------------------------------------


class StvgAttention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` with key-padding and optional causal masks."""

    def __init__(self, config: StvgConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = float(config.dropout)
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None,
                causal: bool = False, key_bias: Tensor | None = None) -> Tensor:
        """hidden (S,Lq,D) attends to context (S,Lk,D) (default: itself); key_mask (S,Lk) True = real key;
        key_bias (S,Lk) float, added to every query's attention logits (a log-prior over the keys)."""
        context = hidden if context is None else context
        seqs, q_len, dim = hidden.shape
        k_len = context.shape[1]
        q = self.q_proj(hidden).view(seqs, q_len, self.num_heads, self.head_dim).transpose(1, 2)  # (S,H,Lq,dh)
        k = self.k_proj(context).view(seqs, k_len, self.num_heads, self.head_dim).transpose(1, 2)  # (S,H,Lk,dh)
        v = self.v_proj(context).view(seqs, k_len, self.num_heads, self.head_dim).transpose(1, 2)  # (S,H,Lk,dh)
        mask = None
        if key_mask is not None:
            # a sequence without any real key attends to all keys (its outputs are padding and never read)
            key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)  # (S,Lk)
            mask = key_mask[:, None, None, :]  # (S,1,1,Lk)
        if causal:
            causal_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=hidden.device).tril()  # (Lq,Lk)
            mask = causal_mask if mask is None else mask & causal_mask
        if key_bias is not None:
            bias = key_bias.to(q.dtype)[:, None, None, :]  # (S,1,1,Lk)
            mask = bias if mask is None else torch.where(mask, bias, float("-inf"))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (S,H,Lq,dh)
        out = out.transpose(1, 2).reshape(seqs, q_len, dim)  # (S,Lq,D)
        return self.o_proj(out)


class StvgFeedForward(nn.Module):
    def __init__(self, config: StvgConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(hidden))))


class StvgTransformerLayer(nn.Module):
    """Pre-LN layer: [self-attention] -> [cross-attention] -> feed-forward, each residual."""

    def __init__(self, config: StvgConfig, self_attention: bool = True, cross_attention: bool = False) -> None:
        super().__init__()
        self.self_attn = StvgAttention(config) if self_attention else None
        self.self_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if self_attention else None
        self.cross_attn = StvgAttention(config) if cross_attention else None
        self.cross_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if cross_attention else None
        self.ffn = StvgFeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: Tensor, mask: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, causal: bool = False, context_bias: Tensor | None = None) -> Tensor:
        """hidden (S,L,D), mask (S,L); context (S,Lc,D), context_mask (S,Lc), context_bias (S,Lc) log-prior."""
        if self.self_attn is not None:
            hidden = hidden + self.dropout(self.self_attn(self.self_norm(hidden), key_mask=mask, causal=causal))
        if self.cross_attn is not None:
            hidden = hidden + self.dropout(
                self.cross_attn(self.cross_norm(hidden), context=context, key_mask=context_mask, key_bias=context_bias)
            )
        return hidden + self.dropout(self.ffn(self.ffn_norm(hidden)))


class StvgVideoContextEncoder(nn.Module):
    """Video context: blocks alternating spatial self-attention (the M regions of one frame) and temporal
    self-attention (the T regions of one tube)."""

    def __init__(self, config: StvgConfig) -> None:
        super().__init__()
        self.spatial_layers = nn.ModuleList(StvgTransformerLayer(config) for _ in range(config.num_video_layers))
        self.temporal_layers = nn.ModuleList(StvgTransformerLayer(config) for _ in range(config.num_video_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, regions: Tensor, tube_mask: Tensor) -> Tensor:
        """regions (B,T,M,D) in tube order, tube_mask (B,T,M) -> (B,T,M,D)."""
        batch, frames, tubes, dim = regions.shape
        spatial_mask = tube_mask.reshape(batch * frames, tubes)  # (B*T,M)
        temporal_mask = tube_mask.transpose(1, 2).reshape(batch * tubes, frames)  # (B*M,T)
        for spatial, temporal in zip(self.spatial_layers, self.temporal_layers):
            hidden = spatial(regions.reshape(batch * frames, tubes, dim), mask=spatial_mask)  # (B*T,M,D)
            hidden = hidden.view(batch, frames, tubes, dim).transpose(1, 2).reshape(batch * tubes, frames, dim)
            hidden = temporal(hidden, mask=temporal_mask)  # (B*M,T,D)
            regions = hidden.view(batch, tubes, frames, dim).transpose(1, 2)  # (B,T,M,D)
        return self.norm(regions)


# ---------------------------------------------------------------------------------------------------------------------
# Eq. 6 / Eq. 7 heads
# ---------------------------------------------------------------------------------------------------------------------


class StvgSpatialHead(nn.Module):
    """g_S and g_V of Eq. 6 (Linear + ReLU each)."""

    def __init__(self, config: StvgConfig) -> None:
        super().__init__()
        self.g_s = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU())
        self.g_v = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU())
        self.scale = 1.0 / math.sqrt(config.hidden_size)


def spatial_assignment_logits(phrase_keys: Tensor, region_keys: Tensor, scale: float) -> Tensor:
    """Eq. 6 scores s_t,i,j = g_S(w_i) . g_V(v_t,j) / sqrt(D) for aligned pairs.

    phrase_keys (B,N,D) = g_S(w), region_keys (B,T,M,D) = g_V(v) -> (B,T,N,M).
    """
    return torch.einsum("bnd,btmd->btnm", phrase_keys, region_keys) * scale


def spatial_assignment(logits: Tensor, tube_mask: Tensor) -> Tensor:
    """Eq. 6 z^S_t,i = softmax over the real regions j of frame t. logits (B,T,N,M), tube_mask (B,T,M) -> (B,T,N,M)."""
    return masked_softmax(logits, tube_mask[:, :, None, :], dim=-1)


class StvgTemporalHead(nn.Module):
    """Eq. 7 head: phrase queries cross-attend to the frames (with frame positions), are pooled over the phrases of a
    sentence, and Linear + sigmoid give the Gaussian centre c and width sigma (fractions of the video length)."""

    def __init__(self, config: StvgConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            StvgTransformerLayer(config, self_attention=False, cross_attention=True)
            for _ in range(config.num_temporal_layers)
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.out = nn.Linear(config.hidden_size, 2)
        self.min_width = float(config.temporal_min_width)
        self.max_width = float(config.temporal_max_width)

    def forward(self, frame_states: Tensor, frame_mask: Tensor, phrase_states: Tensor,
                phrase_mask: Tensor) -> tuple[Tensor, Tensor]:
        """frame_states (Bv,T,D), frame_mask (Bv,T); phrase_states (Bv,P,N,D), phrase_mask (Bv,P,N): P sentences per
        video (P=1 for aligned pairs, P=G for contrastive negatives). Sentences never attend to each other.
        -> centre (Bv,P), width (Bv,P)."""
        videos, sentences, phrases, dim = phrase_states.shape
        queries = phrase_states.reshape(videos, sentences * phrases, dim)  # (Bv,P*N,D)
        for layer in self.layers:
            queries = layer(queries, context=frame_states, context_mask=frame_mask)
        queries = self.norm(queries).view(videos, sentences, phrases, dim)  # (Bv,P,N,D)
        pooled = masked_mean(queries, phrase_mask, dim=2)  # (Bv,P,D)
        params = torch.sigmoid(self.out(pooled).float())  # (Bv,P,2)
        centre = params[..., 0]
        width = self.min_width + (self.max_width - self.min_width) * params[..., 1]
        return centre, width


def gaussian_temporal_assignment(centre: Tensor, width: Tensor, frame_mask: Tensor) -> Tensor:
    """Eq. 7 z^T_t = exp(-(t/T - c)^2 / (2 sigma^2)) on real frames, t/T = (t + 0.5) / (number of real frames), so
    padded frames change nothing. centre, width (Bv,P); frame_mask (Bv,T) -> (Bv,P,T), 0 on padded frames."""
    frames = frame_mask.shape[1]
    num_real = frame_mask.sum(dim=1, keepdim=True).clamp_min(1).float()  # (Bv,1)
    position = (torch.arange(frames, device=frame_mask.device).float()[None, :] + 0.5) / num_real  # (Bv,T)
    offset = position[:, None, :] - centre[..., None]  # (Bv,P,T)
    weights = torch.exp(-0.5 * (offset / width[..., None]) ** 2)
    return weights * frame_mask[:, None, :]


def normalise_over_time(temporal_assignment: Tensor, frame_mask: Tensor) -> Tensor:
    """Per-frame weights normalised to sum 1 over the real frames. (...,T) -> (...,T)."""
    weights = temporal_assignment.float() * frame_mask
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Eq. 10-11: contrastive score and InfoNCE, with cross-process negatives
# ---------------------------------------------------------------------------------------------------------------------


def contrastive_similarity(spatial_logits: Tensor, tube_mask: Tensor, entity_mask: Tensor,
                           temporal_assignment: Tensor, frame_mask: Tensor) -> Tensor:
    """Eq. 10 s(V,S) = sum_t z^T_t sum_i max_j s_t,i,j for every (video, sentence) pair.

    Normalisation (documented choice): z^T is normalised over the real frames and the sum over phrases is a mean, so
    s is a weighted average of per-frame best-region scores and does not grow with T or N.
    spatial_logits (Bv,P,T,N,M), tube_mask (Bv,T,M), entity_mask (P,N), temporal_assignment (Bv,P,T),
    frame_mask (Bv,T) -> (Bv,P).
    """
    region_ok = tube_mask[:, None, :, None, :]  # (Bv,1,T,1,M)
    best = spatial_logits.float().masked_fill(~region_ok, torch.finfo(torch.float32).min).amax(dim=-1)  # (Bv,P,T,N)
    best = best.masked_fill(~tube_mask.any(dim=-1)[:, None, :, None], 0.0)  # frames without proposals score 0
    per_frame = masked_mean(best, entity_mask[None, :, None, :].expand_as(best), dim=-1)  # (Bv,P,T)
    weights = normalise_over_time(temporal_assignment, frame_mask[:, None, :])  # (Bv,P,T)
    return (weights * per_frame).sum(dim=-1)


def _distributed_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def gather_with_grad(tensor: Tensor, pad_value: float | bool = 0) -> tuple[Tensor, Tensor]:
    """All-gather ``tensor`` (S, X, ...) from every process along dim 0, autograd-aware (gradients flow back to the
    process that produced each slice), padding dims 0 and 1 to the largest size over processes.

    Returns (gathered (W*S_max, X_max, ...), row_valid (W*S_max,) bool). With one process: (tensor, all True).
    """
    world, _ = _distributed_world()
    if world == 1:
        return tensor, torch.ones(tensor.shape[0], dtype=torch.bool, device=tensor.device)
    import torch.distributed.nn.functional as dist_fn

    sizes = torch.tensor(tensor.shape[:2], device=tensor.device, dtype=torch.long)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    torch.distributed.all_gather(all_sizes, sizes)
    all_sizes_t = torch.stack(all_sizes)  # (W,2)
    rows_max, cols_max = int(all_sizes_t[:, 0].max()), int(all_sizes_t[:, 1].max())
    pad = [0, 0] * (tensor.dim() - 2) + [0, cols_max - tensor.shape[1], 0, rows_max - tensor.shape[0]]
    if tensor.dtype == torch.bool:
        padded = F.pad(tensor.to(torch.uint8), pad, value=int(pad_value)).bool()
        gathered = torch.cat(_gather_no_grad(padded, world), dim=0)
    else:
        padded = F.pad(tensor, pad, value=float(pad_value))
        gathered = torch.cat(dist_fn.all_gather(padded), dim=0)  # (W*S_max, X_max, ...)
    row_index = torch.arange(rows_max, device=tensor.device)
    row_valid = (row_index[None, :] < all_sizes_t[:, :1]).reshape(-1)  # (W*S_max,)
    return gathered, row_valid


def _gather_no_grad(tensor: Tensor, world: int) -> list[Tensor]:
    pieces = [torch.zeros_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(pieces, tensor.contiguous())
    return pieces


def contrastive_loss(output: StvgNetworkOutput, temperature: float) -> Tensor:
    """Eq. 11 InfoNCE over the (global) batch with temperature tau, symmetric: each local video against all sentences
    and each local sentence against all videos; the positive is the pair's own sentence/video."""
    if output.contrastive_logits_v2t is None:
        raise ValueError("contrastive_loss needs a q_phi output computed with compute_contrastive=True.")
    column_ok = output.contrastive_mask[None, :]  # (1,G)
    floor = torch.finfo(torch.float32).min
    v2t = (output.contrastive_logits_v2t.float() / temperature).masked_fill(~column_ok, floor)  # (B,G)
    t2v = (output.contrastive_logits_t2v.float() / temperature).masked_fill(~column_ok, floor)  # (B,G)
    targets = output.contrastive_targets
    return 0.5 * (F.cross_entropy(v2t, targets) + F.cross_entropy(t2v, targets))


# ---------------------------------------------------------------------------------------------------------------------
# Eq. 9: cross-network assignment loss
# ---------------------------------------------------------------------------------------------------------------------


def cross_assignment_loss(prediction: StvgNetworkOutput, target: StvgNetworkOutput, tube_mask: Tensor,
                          entity_mask: Tensor, frame_mask: Tensor) -> Tensor:
    """Eq. 9 (L_z,phi; its M-step twin L_z,theta swaps the roles): cross-entropy from the target network's assignment
    (detached) to the predicting network's, for z^S (per frame and entity, over regions) plus z^T (per-frame weights
    normalised over t). tube_mask (B,T,M), entity_mask (B,N), frame_mask (B,T) -> scalar."""
    region_ok = tube_mask[:, :, None, :]  # (B,T,1,M)
    log_pred = masked_log_softmax(prediction.spatial_logits, region_ok, dim=-1)  # (B,T,N,M)
    target_s = target.spatial_assignment.detach().float()  # (B,T,N,M)
    spatial_ce = -(target_s * log_pred).sum(dim=-1)  # (B,T,N)
    valid = frame_mask[:, :, None] & entity_mask[:, None, :] & tube_mask.any(dim=-1)[:, :, None]  # (B,T,N)
    spatial = (spatial_ce * valid).sum() / valid.sum().clamp_min(1)
    target_t = normalise_over_time(target.temporal_assignment.detach(), frame_mask)  # (B,T)
    pred_t = normalise_over_time(prediction.temporal_assignment, frame_mask)  # (B,T)
    temporal_ce = -(target_t * torch.log(pred_t.clamp_min(1e-12)) * frame_mask).sum(dim=-1)  # (B,)
    return spatial + temporal_ce.mean()


# ---------------------------------------------------------------------------------------------------------------------
# Eq. 13-15: relation reconstruction
# ---------------------------------------------------------------------------------------------------------------------


def entity_video_features(video_states: Tensor, spatial_assignment: Tensor, temporal_assignment: Tensor) -> Tensor:
    """Eq. 13 H_t = z^T_t (z^S_t V_t): the assignment-weighted video feature of every entity on every frame.

    video_states (B,T,M,D), spatial_assignment (B,T,N,M), temporal_assignment (B,T) -> (B,T,N,D).
    """
    pooled = torch.einsum("btnm,btmd->btnd", spatial_assignment.to(video_states.dtype), video_states)  # (B,T,N,D)
    return pooled * temporal_assignment.to(video_states.dtype)[:, :, None, None]


def gather_entities(values: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B,K) of per-entity ``values`` (B,N,...) -> (B,K,...); index -1 (no object) gives zeros."""
    trailing = values.shape[2:]
    safe = index.clamp(0, values.shape[1] - 1).view(*index.shape, *(1,) * len(trailing))
    picked = values.gather(1, safe.expand(*index.shape, *trailing))  # (B,K,...)
    return picked * (index >= 0).view(safe.shape).to(picked.dtype)


def relation_features(entity_features: Tensor, relation_entities: Tensor, projection: nn.Linear) -> Tensor:
    """Eq. 14 h^r_t = W_r [H_t[subject]; H_t[object]] + b_r (object -1 -> zeros).

    entity_features (B,T,N,D), relation_entities (B,K,2) -> (B,K,T,D).
    """
    per_entity = entity_features.transpose(1, 2)  # (B,N,T,D)
    h_subject = gather_entities(per_entity, relation_entities[..., 0].clamp_min(0))  # (B,K,T,D)
    h_object = gather_entities(per_entity, relation_entities[..., 1])  # (B,K,T,D)
    return projection(torch.cat([h_subject, h_object], dim=-1))  # (B,K,T,D)


RELATION_GEOMETRY_DIM = 10


def relation_geometry(tube_boxes: Tensor, spatial_assignment: Tensor, relation_entities: Tensor, frame_mask: Tensor,
                      motion_scale: float = 10.0) -> Tensor:
    """Per-frame layout of each relation's subject and object, from the assignment-weighted box centres
    (differentiable in z^S): object-minus-subject offset (2) and distance (1), their change to the next frame (3), and
    the subject's and the object's own motion (4); changes times ``motion_scale``; object -1 -> zeros.

    tube_boxes (B,T,M,4), spatial_assignment (B,T,N,M), relation_entities (B,K,2), frame_mask (B,T) -> (B,K,T,10).
    """
    centres = box_centres(tube_boxes)  # (B,T,M,2)
    entity_centres = torch.einsum("btnm,btmc->bntc", spatial_assignment.to(centres.dtype), centres)  # (B,N,T,2)
    subject = gather_entities(entity_centres, relation_entities[..., 0].clamp_min(0))  # (B,K,T,2)
    obj = gather_entities(entity_centres, relation_entities[..., 1])  # (B,K,T,2), zeros without an object
    has_object = (relation_entities[..., 1] >= 0)[:, :, None, None].to(centres.dtype)  # (B,K,1,1)
    offset = (obj - subject) * has_object  # (B,K,T,2)
    layout = torch.cat([offset, offset.norm(dim=-1, keepdim=True)], dim=-1)  # (B,K,T,3)
    both_real = (frame_mask[:, 1:] & frame_mask[:, :-1])[:, None, :, None].to(centres.dtype)  # (B,1,T-1,1)

    def change(values: Tensor) -> Tensor:  # (B,K,T,C) -> change to the next frame, 0 on the last / padded frames
        return F.pad((values[:, :, 1:] - values[:, :, :-1]) * both_real, (0, 0, 0, 1)) * motion_scale

    motion = torch.cat([change(layout), change(subject), change(obj)], dim=-1)  # (B,K,T,7)
    return torch.cat([layout, motion], dim=-1) * frame_mask[:, None, :, None].to(centres.dtype)


def build_reconstruction_targets(relation_token_ids: Tensor, bos_id: int, eos_id: int,
                                 pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher-forcing pairs for Eq. 15: decoder input [BOS, w_1..w_L] and labels [w_1..w_L, EOS] (pad -> -100).

    relation_token_ids (B,K,Lr), left-aligned -> (input_ids (B,K,Lr+1), labels (B,K,Lr+1), input_mask (B,K,Lr+1)).
    """
    batch, relations, words = relation_token_ids.shape
    lengths = (relation_token_ids != pad_id).sum(dim=-1, keepdim=True)  # (B,K,1)
    position = torch.arange(words + 1, device=relation_token_ids.device)  # (Lr+1,)
    bos = torch.full((batch, relations, 1), bos_id, dtype=torch.long, device=relation_token_ids.device)
    input_ids = torch.cat([bos, relation_token_ids], dim=-1)  # (B,K,Lr+1)
    input_mask = position <= lengths  # (B,K,Lr+1)
    input_ids = input_ids.masked_fill(~input_mask, pad_id)
    shifted = F.pad(relation_token_ids, (0, 1), value=pad_id)  # (B,K,Lr+1)
    labels = torch.where(position == lengths, torch.full_like(shifted, eos_id), shifted)
    labels = labels.masked_fill(position > lengths, IGNORE_INDEX)
    return input_ids, labels, input_mask


class StvgRelationDecoder(nn.Module):
    """Eq. 15: causal transformer decoder over the predicate words, cross-attending to {h^r_t}_t of its relation."""

    def __init__(self, config: StvgConfig) -> None:
        super().__init__()
        self.word_proj = nn.Linear(config.word_embedding_dim, config.hidden_size)
        self.position = nn.Embedding(config.max_relation_tokens, config.hidden_size)
        self.layers = nn.ModuleList(
            StvgTransformerLayer(config, self_attention=True, cross_attention=True)
            for _ in range(config.num_decoder_layers)
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, word_vectors: Tensor, input_mask: Tensor, memory: Tensor, memory_mask: Tensor,
                memory_bias: Tensor | None = None) -> Tensor:
        """word_vectors (S,L,E) embedded decoder inputs, input_mask (S,L), memory (S,T,D) = h^r_t, memory_mask (S,T)
        -> logits (S,L,V). Position l only sees positions <= l."""
        length = word_vectors.shape[1]
        positions = torch.arange(length, device=word_vectors.device)
        hidden = self.dropout(self.word_proj(word_vectors) + self.position(positions)[None])  # (S,L,D)
        for layer in self.layers:
            hidden = layer(hidden, mask=input_mask, context=memory, context_mask=memory_mask, causal=True,
                           context_bias=memory_bias)
        return self.lm_head(self.norm(hidden))


def reconstruction_loss(output: StvgNetworkOutput) -> Tensor:
    """Eq. 15 token cross-entropy of the relation words (+EOS), mean over real tokens of real relations."""
    if output.reconstruction_logits is None:
        raise ValueError("reconstruction_loss needs a p_theta output computed with compute_reconstruction=True.")
    logits = output.reconstruction_logits.float()  # (B,K,L,V)
    labels = output.reconstruction_labels  # (B,K,L)
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0  # keeps every decoder parameter in the graph (DDP) with a zero gradient
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def call_with_frozen_weights(module: nn.Module, *args: Any) -> Any:
    """``module(*args)`` with its parameters detached: gradients reach the inputs, never the module's weights."""
    weights = {name: param.detach() for name, param in module.named_parameters()}
    return torch.func.functional_call(module, weights, args)


def relation_token_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean token cross-entropy of every relation: logits (B,K,L,V), labels (B,K,L) -> (nll (B,K), real (B,K))."""
    token_nll = F.cross_entropy(
        logits.float().flatten(0, 2), labels.flatten().clamp_min(0), reduction="none"
    ).view(labels.shape)  # (B,K,L)
    real = labels != IGNORE_INDEX  # (B,K,L)
    return (token_nll * real).sum(-1) / real.sum(-1).clamp_min(1), real.any(-1)


def temporal_ranking_loss(output: StvgNetworkOutput, margin: float) -> Tensor:
    """Temporal ranking (our addition, after weakly-supervised moment localisation by reconstruction): every relation
    must be reconstructed better, by ``margin`` nats per word, from the frames z^T selects than from the frames it
    leaves out: mean over real relations of max(0, margin + NLL(z^T) - NLL(1 - z^T)). A relation that holds only on
    part of the video is then only explained by a z^T that covers that part (Eq. 15 alone is as happy with the
    whole video)."""
    if output.ranking_complement_logits is None:
        raise ValueError("temporal_ranking_loss needs config.temporal_ranking_weight > 0 and compute_reconstruction.")
    selected, real = relation_token_nll(output.ranking_selected_logits, output.reconstruction_labels)  # (B,K)
    left_out, _ = relation_token_nll(output.ranking_complement_logits, output.reconstruction_labels)  # (B,K)
    hinge = F.relu(margin + selected - left_out)  # (B,K)
    return (hinge * real).sum() / real.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------------------------------
# Eq. 16: fused inference
# ---------------------------------------------------------------------------------------------------------------------


def fuse_assignments(q_value: Tensor, p_value: Tensor, beta: float) -> Tensor:
    """Eq. 16 Z = beta * Z_q + (1 - beta) * Z_p."""
    return beta * q_value.float() + (1.0 - beta) * p_value.float()


def temporal_span(temporal_scores: Tensor, frame_mask: Tensor, threshold: float) -> Tensor:
    """Span rule (documented choice): take the frame with the highest fused z^T and grow the segment around it while
    z^T >= threshold * max z^T (real frames only). temporal_scores (B,T), frame_mask (B,T) -> (B,2) [start, end)."""
    frames = temporal_scores.shape[1]
    scores = temporal_scores.float().masked_fill(~frame_mask, -1.0)  # (B,T)
    peak_value, peak = scores.max(dim=1)  # (B,)
    keep = (scores >= threshold * peak_value[:, None]) & frame_mask  # (B,T)
    index = torch.arange(frames, device=scores.device)[None, :]  # (1,T)
    before = (~keep) & (index < peak[:, None])
    after = (~keep) & (index > peak[:, None])
    start = torch.where(before, index, -1).amax(dim=1) + 1  # (B,)
    end = torch.where(after, index, frames).amin(dim=1)  # (B,)
    return torch.stack([start, end], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# GloVe
# ---------------------------------------------------------------------------------------------------------------------


def load_glove_vectors(path: str | Path, vocab: Mapping[str, int] | Any, dim: int = 300) -> tuple[Tensor, Tensor]:
    """Read a GloVe text file (``word v_1 .. v_dim`` per line, optionally .gz) for the words of ``vocab`` (a mapping
    word -> id, or a tokenizer with ``get_vocab()``). Never downloads.

    Returns (vectors (V,dim) float32, found (V,) bool) with V = max id + 1; rows not found are zeros.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GloVe file {path} not found. Download e.g. glove.840B.300d.txt (https://nlp.stanford.edu/projects/glove/)"
            " and pass its local path; nothing is downloaded automatically."
        )
    if not isinstance(vocab, Mapping):
        if not hasattr(vocab, "get_vocab"):
            raise TypeError("vocab must be a mapping word -> id or a tokenizer with get_vocab().")
        vocab = vocab.get_vocab()
    size = max(vocab.values()) + 1 if vocab else 0
    vectors = torch.zeros(size, dim)
    found = torch.zeros(size, dtype=torch.bool)
    lower_vocab: dict[str, int] = {word.lower(): index for word, index in vocab.items()}
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").rstrip().split(" ")
            if len(parts) < dim + 1:
                if line_number == 1 and len(parts) == 2:  # word2vec-style header "count dim"
                    continue
                raise ValueError(f"{path}:{line_number}: expected a word and {dim} numbers, got {len(parts)} fields.")
            word = " ".join(parts[:-dim])
            index = vocab.get(word, lower_vocab.get(word.lower()))
            if index is None or (found[index] and word not in vocab):
                continue
            vectors[index] = torch.tensor([float(x) for x in parts[-dim:]])
            found[index] = True
    return vectors, found


# ---------------------------------------------------------------------------------------------------------------------
# The two networks
# ---------------------------------------------------------------------------------------------------------------------


class StvgNetwork(nn.Module):
    """Shared structure of q_phi and p_theta: own word table, language encoder, video encoder and Eq. 6/7 heads."""

    uses_relations: bool = False

    def __init__(self, config: StvgConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, config.word_embedding_dim, padding_idx=config.pad_token_id)
        self.word_embeddings.weight.requires_grad_(config.train_word_embeddings)
        self.phrase_proj = nn.Linear(config.word_embedding_dim, dim)
        self.phrase_type = nn.Embedding(2, dim)  # 0 = entity phrase, 1 = relation phrase
        self.phrase_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.language_layers = nn.ModuleList(StvgTransformerLayer(config) for _ in range(config.num_language_layers))
        self.language_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.region_proj = nn.Linear(config.region_feature_dim, dim)
        self.box_proj = nn.Linear(11 if config.box_motion else 7, dim)
        self.region_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.frame_proj = nn.Linear(config.frame_feature_dim, dim)
        self.frame_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.frame_position = nn.Embedding(config.max_frames, dim)
        self.video_encoder = StvgVideoContextEncoder(config)
        self.spatial_head = StvgSpatialHead(config)
        self.temporal_head = StvgTemporalHead(config)
        self.dropout = nn.Dropout(config.dropout)

    # -- encoders ------------------------------------------------------------------------------------------------------

    def phrase_vectors(self, token_ids: Tensor) -> Tensor:
        """Phrase vector = mean of its word embeddings (pads excluded). token_ids (B,P,L) -> (B,P,E)."""
        words = self.word_embeddings(token_ids)  # (B,P,L,E)
        return masked_mean(words, token_ids != self.config.pad_token_id, dim=2)

    def encode_language(self, entity_token_ids: Tensor, entity_mask: Tensor, **relation_inputs: Tensor) -> Tensor:
        """Language context: self-attention over the entity phrases -> phrase_states (B,N,D)."""
        entities = self.phrase_proj(self.phrase_vectors(entity_token_ids)) + self.phrase_type.weight[0]  # (B,N,D)
        tokens, mask = entities, entity_mask
        if self.uses_relations:
            relations = self.relation_tokens(entities, **relation_inputs)  # (B,K,D)
            tokens = torch.cat([entities, relations], dim=1)  # (B,N+K,D)
            mask = torch.cat([entity_mask, relation_inputs["relation_mask"]], dim=1)  # (B,N+K)
        hidden = self.dropout(self.phrase_norm(tokens))
        for layer in self.language_layers:
            hidden = layer(hidden, mask=mask)
        return self.language_norm(hidden[:, : entity_token_ids.shape[1]])  # (B,N,D)

    def encode_video(self, tube_features: Tensor, tube_boxes: Tensor, tube_mask: Tensor) -> Tensor:
        """Input projection with box embedding and frame position, then the video context encoder -> (B,T,M,D)."""
        frames = tube_features.shape[1]
        x1, y1, x2, y2 = tube_boxes.unbind(-1)
        box = torch.stack([x1, y1, x2, y2, x2 - x1, y2 - y1, (x2 - x1) * (y2 - y1)], dim=-1)  # (B,T,M,7)
        if self.config.box_motion:
            box = torch.cat([box, tube_motion(tube_boxes, tube_mask)], dim=-1)  # (B,T,M,11)
        position = self.frame_position(torch.arange(frames, device=tube_features.device))[None, :, None]  # (1,T,1,D)
        regions = self.region_norm(self.region_proj(tube_features) + self.box_proj(box) + position)
        return self.video_encoder(self.dropout(regions), tube_mask)

    def encode_frames(self, frame_features: Tensor) -> Tensor:
        """Frame projection + position -> (B,T,D)."""
        frames = frame_features.shape[1]
        position = self.frame_position(torch.arange(frames, device=frame_features.device))[None]  # (1,T,D)
        return self.dropout(self.frame_norm(self.frame_proj(frame_features) + position))

    # -- forward -------------------------------------------------------------------------------------------------------

    def forward(
        self,
        tube_features: Tensor,
        tube_boxes: Tensor,
        tube_mask: Tensor,
        frame_features: Tensor,
        frame_mask: Tensor,
        entity_token_ids: Tensor,
        entity_mask: Tensor,
        relation_token_ids: Tensor | None = None,
        relation_entities: Tensor | None = None,
        relation_mask: Tensor | None = None,
        compute_contrastive: bool = False,
        compute_reconstruction: bool = False,
        reconstruction_spatial_assignment: Tensor | None = None,
        reconstruction_temporal_assignment: Tensor | None = None,
        **unused: Any,
    ) -> StvgNetworkOutput:
        """Run the network on prepared inputs (:func:`prepare_stvg_inputs`; extra keys are ignored)."""
        relation_inputs = {}
        if self.uses_relations:
            relation_inputs = {
                "relation_token_ids": relation_token_ids,
                "relation_entities": relation_entities,
                "relation_mask": relation_mask,
            }
        phrase_states = self.encode_language(entity_token_ids, entity_mask, **relation_inputs)  # (B,N,D)
        video_states = self.encode_video(tube_features, tube_boxes, tube_mask)  # (B,T,M,D)
        frame_states = self.encode_frames(frame_features)  # (B,T,D)
        if self.config.temporal_context == "frames_and_regions":
            frame_states = frame_states + masked_mean(video_states, tube_mask, dim=2)  # (B,T,D)

        phrase_keys = self.spatial_head.g_s(phrase_states)  # (B,N,D)
        region_keys = self.spatial_head.g_v(video_states)  # (B,T,M,D)
        logits = spatial_assignment_logits(phrase_keys, region_keys, self.spatial_head.scale)  # (B,T,N,M)
        logits = logits.float().masked_fill(~tube_mask[:, :, None, :], torch.finfo(torch.float32).min)
        z_spatial = spatial_assignment(logits, tube_mask)
        centre, width = self.temporal_head(
            frame_states, frame_mask, phrase_states[:, None], entity_mask[:, None]
        )  # (B,1) each
        z_temporal = gaussian_temporal_assignment(centre, width, frame_mask)[:, 0]  # (B,T)
        output = StvgNetworkOutput(
            spatial_logits=logits,
            spatial_assignment=z_spatial,
            temporal_assignment=z_temporal,
            temporal_center=centre[:, 0],
            temporal_width=width[:, 0],
            video_states=video_states,
            phrase_states=phrase_states,
        )
        if compute_contrastive:
            self._contrastive_logits(output, phrase_keys, region_keys, frame_states, tube_mask, frame_mask,
                                     entity_mask)
        if compute_reconstruction:
            self._reconstruct(
                output, relation_token_ids, relation_entities, relation_mask, frame_mask,
                reconstruction_spatial_assignment, reconstruction_temporal_assignment, tube_boxes,
            )
        return output

    def _contrastive_logits(self, output: StvgNetworkOutput, phrase_keys: Tensor, region_keys: Tensor,
                            frame_states: Tensor, tube_mask: Tensor, frame_mask: Tensor, entity_mask: Tensor) -> None:
        """Eq. 10 scores of every local video against every sentence of the global batch, and back.

        Cross-process negatives: we gather the SENTENCE side (phrase states (B,N,D) + entity mask, a few KB) rather
        than the video side ((B,T,M,D), ~64 MB per process at the paper's sizes): each process scores its own videos
        against all sentences (v2t rows). The (B,G) score rows are then gathered too, so each process reads the
        columns of its own sentences (t2v). Both gathers are autograd-aware (torch.distributed.nn.functional
        .all_gather): the gradient of a score reaches the process that computed its inputs, and DDP's gradient
        averaging then gives the gradient of the global-batch mean loss. All processes must call this together.
        """
        world, rank = _distributed_world() if self.config.gather_negatives else (1, 0)
        if world > 1:
            gathered_states, row_valid = gather_with_grad(output.phrase_states)  # (G,N_max,D), (G,)
            gathered_mask, _ = gather_with_grad(entity_mask, pad_value=False)  # (G,N_max)
            pair_phrase_keys = self.spatial_head.g_s(gathered_states)  # (G,N_max,D)
        else:  # the sentences are the local ones: reuse the aligned pass's g_S(w)
            gathered_states, gathered_mask, pair_phrase_keys = output.phrase_states, entity_mask, phrase_keys
            row_valid = torch.ones_like(entity_mask[:, 0])  # (B,)
        videos = region_keys.shape[0]
        offset = rank * (gathered_states.shape[0] // world)  # each process's slice is padded to the same size
        gathered_mask = gathered_mask & row_valid[:, None]  # (G,N)
        pair_logits = torch.einsum("gnd,btmd->bgtnm", pair_phrase_keys, region_keys) * self.spatial_head.scale
        centre, width = self.temporal_head(
            frame_states, frame_mask,
            gathered_states[None].expand(videos, *gathered_states.shape),  # (B,G,N,D)
            gathered_mask[None].expand(videos, *gathered_mask.shape),  # (B,G,N)
        )  # (B,G)
        z_temporal = gaussian_temporal_assignment(centre, width, frame_mask)  # (B,G,T)
        v2t = contrastive_similarity(pair_logits, tube_mask, gathered_mask, z_temporal, frame_mask)  # (B,G)
        if world > 1:
            all_rows, _ = gather_with_grad(v2t)  # (G,G): rows = videos of all processes
        else:
            all_rows = v2t
        targets = offset + torch.arange(videos, device=v2t.device)  # (B,)
        output.contrastive_logits_v2t = v2t
        output.contrastive_logits_t2v = all_rows[:, targets].transpose(0, 1)  # (B,G)
        output.contrastive_mask = row_valid
        output.contrastive_targets = targets

    def _reconstruct(self, output: StvgNetworkOutput, relation_token_ids: Tensor, relation_entities: Tensor,
                     relation_mask: Tensor, frame_mask: Tensor, spatial_override: Tensor | None,
                     temporal_override: Tensor | None, tube_boxes: Tensor) -> None:
        raise ValueError(f"{type(self).__name__} has no reconstruction decoder; use p_theta.")


class StvgVariationalNetwork(StvgNetwork):
    """q_phi: the variational network; its language encoder sees the entity phrases only."""

    uses_relations = False


class StvgPosteriorNetwork(StvgNetwork):
    """p_theta: the posterior network; its language encoder sees entity AND relation phrases, and it owns the
    relation reconstruction (W_r of Eq. 14, decoder of Eq. 15)."""

    uses_relations = True

    def __init__(self, config: StvgConfig) -> None:
        super().__init__(config)
        dim = config.hidden_size
        self.relation_subject = nn.Linear(dim, dim)
        self.relation_object = nn.Linear(dim, dim)
        # W_r, b_r of Eq. 14 on the entities' states; the geometry projection on their layout
        self.relation_projection = nn.Linear(2 * dim, dim) if config.relation_evidence != "geometry" else None
        self.geometry_projection = (
            nn.Linear(RELATION_GEOMETRY_DIM, dim) if config.relation_evidence != "states" else None
        )
        self.decoder = StvgRelationDecoder(config)

    def relation_tokens(self, entities: Tensor, relation_token_ids: Tensor, relation_entities: Tensor,
                        relation_mask: Tensor) -> Tensor:
        """Relation phrase token = predicate vector + projected subject and object entity vectors (object -1 -> 0).
        entities (B,N,D) -> (B,K,D)."""
        predicate = self.phrase_proj(self.phrase_vectors(relation_token_ids)) + self.phrase_type.weight[1]  # (B,K,D)
        subject_vec = gather_entities(entities, relation_entities[..., 0].clamp_min(0))  # (B,K,D)
        object_vec = gather_entities(entities, relation_entities[..., 1])  # (B,K,D)
        return predicate + self.relation_subject(subject_vec) + self.relation_object(object_vec)

    def reconstruction_logits(self, video_states: Tensor, spatial_assignment: Tensor, temporal_assignment: Tensor,
                              relation_token_ids: Tensor, relation_entities: Tensor, relation_mask: Tensor,
                              frame_mask: Tensor, geometry: Tensor | None = None,
                              frozen: bool = False) -> tuple[Tensor, Tensor]:
        """Eq. 13-15 with a given assignment -> (logits (B,K,L+1,V), labels (B,K,L+1), -100 = ignore).
        ``geometry`` (B,K,T,10): :func:`relation_geometry`, needed unless ``config.relation_evidence == "states"``.
        ``frozen``: run W_r, the word table and the decoder with detached weights (they get no gradient)."""
        cfg = self.config
        run = call_with_frozen_weights if frozen else (lambda module, *args: module(*args))
        if cfg.reconstruction_memory == "pooled":  # sum_t z~_t (.) with z~ normalised over the real frames
            weights = normalise_over_time(temporal_assignment, frame_mask)  # (B,T)
        elif cfg.reconstruction_memory == "gaussian_attention":  # z^T enters as the attention prior instead
            weights = frame_mask.to(video_states.dtype)  # (B,T)
        else:  # Eq. 13 as written
            weights = temporal_assignment  # (B,T)
        pooled = cfg.reconstruction_memory == "pooled"
        memory = 0.0
        if cfg.relation_evidence != "geometry":  # Eq. 14 on the entities' video states (Eq. 13)
            entity_features = entity_video_features(video_states, spatial_assignment, weights)  # (B,T,N,D)
            if pooled:
                entity_features = entity_features.sum(dim=1, keepdim=True)  # (B,1,N,D)
            projection = lambda features: run(self.relation_projection, features)  # noqa: E731
            memory = relation_features(entity_features, relation_entities, projection)  # (B,K,T or 1,D)
        if cfg.relation_evidence != "states":
            if geometry is None:
                raise ValueError(f"relation_evidence={cfg.relation_evidence!r} needs the relation geometry.")
            geometry = geometry * weights.to(geometry.dtype)[:, None, :, None]  # (B,K,T,10), weighted like H_t
            if pooled:
                geometry = geometry.sum(dim=2, keepdim=True)  # (B,K,1,10)
            memory = memory + run(self.geometry_projection, geometry.to(video_states.dtype))  # (B,K,T or 1,D)
        if pooled:
            frame_mask = frame_mask.new_ones(frame_mask.shape[0], 1)  # (B,1)
        batch, relations, frames, dim = memory.shape
        input_ids, labels, input_mask = build_reconstruction_targets(
            relation_token_ids, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id
        )  # (B,K,L+1) each
        labels = labels.masked_fill(~relation_mask[..., None], IGNORE_INDEX)
        length = input_ids.shape[-1]
        word_vectors = run(self.word_embeddings, input_ids).view(batch * relations, length, -1)  # (B*K,L+1,E)
        memory_mask = frame_mask[:, None, :].expand(batch, relations, frames).reshape(batch * relations, frames)
        memory_bias = None
        if cfg.reconstruction_memory == "gaussian_attention":
            log_prior = torch.log(temporal_assignment.float().clamp_min(1e-6))  # (B,T)
            memory_bias = log_prior[:, None, :].expand(batch, relations, frames).reshape(batch * relations, frames)
        logits = run(
            self.decoder, word_vectors, input_mask.view(batch * relations, length),
            memory.reshape(batch * relations, frames, dim), memory_mask, memory_bias,
        )  # (B*K,L+1,V)
        return logits.view(batch, relations, length, -1), labels

    def _reconstruct(self, output: StvgNetworkOutput, relation_token_ids: Tensor, relation_entities: Tensor,
                     relation_mask: Tensor, frame_mask: Tensor, spatial_override: Tensor | None,
                     temporal_override: Tensor | None, tube_boxes: Tensor) -> None:
        if (spatial_override is None) != (temporal_override is None):
            raise ValueError("pass both reconstruction_spatial_assignment and reconstruction_temporal_assignment.")
        z_spatial = output.spatial_assignment if spatial_override is None else spatial_override
        z_temporal = output.temporal_assignment if temporal_override is None else temporal_override
        geometry = None
        if self.config.relation_evidence != "states":
            geometry = relation_geometry(tube_boxes, z_spatial, relation_entities, frame_mask)  # (B,K,T,10)
        logits, labels = self.reconstruction_logits(
            output.video_states, z_spatial, z_temporal, relation_token_ids, relation_entities, relation_mask,
            frame_mask, geometry=geometry,
        )
        output.reconstruction_logits = logits
        output.reconstruction_labels = labels
        if self.config.temporal_ranking_weight > 0 and temporal_override is None:
            # (with an override, e.g. q_phi's detached assignment, there is no z^T of ours to move)
            # the ranking must move z^T, not teach the decoder (or the video encoder) to fail on the left-out frames
            states, spatial = output.video_states.detach(), z_spatial.detach()
            geometry = None if geometry is None else geometry.detach()
            complement = (1.0 - z_temporal.float()) * frame_mask  # (B,T): the frames z^T leaves out
            for name, weights in (("ranking_selected_logits", z_temporal), ("ranking_complement_logits", complement)):
                ranking_logits, _ = self.reconstruction_logits(
                    states, spatial, weights, relation_token_ids, relation_entities, relation_mask, frame_mask,
                    geometry=geometry, frozen=True,
                )
                setattr(output, name, ranking_logits)


# ---------------------------------------------------------------------------------------------------------------------
# EM steps (module-level so the trainer can pass separately wrapped networks)
# ---------------------------------------------------------------------------------------------------------------------


def _weighted_sum(config: StvgConfig, assignment: Tensor | None, contrastive: Tensor | None,
                  reconstruction: Tensor | None, ranking: Tensor | None = None) -> Tensor | None:
    terms = []
    if ranking is not None:
        terms.append(config.temporal_ranking_weight * ranking)
    if assignment is not None:
        terms.append(config.assignment_loss_weight * assignment)
    if contrastive is not None:
        terms.append(config.contrastive_loss_weight * contrastive)
    if reconstruction is not None:
        terms.append(config.reconstruction_loss_weight * reconstruction)
    return sum(terms) if terms else None


def compute_e_step_loss(q_phi: Callable[..., StvgNetworkOutput], p_theta: Callable[..., StvgNetworkOutput],
                        prepared: Mapping[str, Tensor], config: StvgConfig,
                        objective: str | None = None) -> StvgStepOutput:
    """E-step (Algorithm 1): loss for phi = L_z,phi (Eq. 9, target p_theta, run under no_grad) + L_contra (Eq. 11).

    ``q_phi``/``p_theta`` may be DDP/Accelerate wrappers; ``prepared`` comes from :func:`prepare_stvg_inputs`.
    objective: "both" | "contrastive" (L_contra only, p_theta not run) | "reconstruction" (L_z,phi only).
    """
    objective = objective or config.objective
    use_contrastive = objective in ("both", "contrastive")
    q_output = q_phi(**prepared, compute_contrastive=use_contrastive)
    assignment = p_output = None
    if objective != "contrastive":
        with torch.no_grad():
            p_output = p_theta(**prepared)
        assignment = cross_assignment_loss(
            q_output, p_output, prepared["tube_mask"], prepared["entity_mask"], prepared["frame_mask"]
        )
    contrastive = contrastive_loss(q_output, float(config.contrastive_temperature)) if use_contrastive else None
    return StvgStepOutput(
        loss=_weighted_sum(config, assignment, contrastive, None),
        assignment_loss=assignment, contrastive_loss=contrastive, q_output=q_output, p_output=p_output,
    )


def compute_m_step_loss(q_phi: Callable[..., StvgNetworkOutput], p_theta: Callable[..., StvgNetworkOutput],
                        prepared: Mapping[str, Tensor], config: StvgConfig,
                        objective: str | None = None) -> StvgStepOutput:
    """M-step (Algorithm 1): loss for theta = L_z,theta (Eq. 9 twin, target q_phi under no_grad) + L_rec (Eq. 15).

    The reconstruction reads q_phi's assignment (detached) when ``config.reconstruction_assignment == "variational"``,
    p_theta's own otherwise. objective "contrastive" has no M-step: returns ``loss=None``.
    """
    objective = objective or config.objective
    if objective == "contrastive":
        return StvgStepOutput(loss=None)
    with torch.no_grad():
        q_output = q_phi(**prepared)
    override = {}
    if config.reconstruction_assignment == "variational":
        override = {
            "reconstruction_spatial_assignment": q_output.spatial_assignment,
            "reconstruction_temporal_assignment": q_output.temporal_assignment,
        }
    p_output = p_theta(**prepared, compute_reconstruction=True, **override)
    assignment = cross_assignment_loss(
        p_output, q_output, prepared["tube_mask"], prepared["entity_mask"], prepared["frame_mask"]
    )
    reconstruction = reconstruction_loss(p_output)
    ranking = None
    if p_output.ranking_complement_logits is not None:
        ranking = temporal_ranking_loss(p_output, float(config.temporal_ranking_margin))
    return StvgStepOutput(
        loss=_weighted_sum(config, assignment, None, reconstruction, ranking),
        assignment_loss=assignment, reconstruction_loss=reconstruction, temporal_ranking_loss=ranking,
        q_output=q_output, p_output=p_output,
    )


def predict_grounding(q_output: StvgNetworkOutput, p_output: StvgNetworkOutput | None, prepared: Mapping[str, Tensor],
                      config: StvgConfig) -> dict[str, Tensor]:
    """Eq. 16 inference: fuse z^S and z^T of both networks, pick the target entity's best proposal per frame (mapped
    back to the ORIGINAL proposal order) and the time span (:func:`temporal_span`)."""
    beta = 1.0 if (p_output is None or config.objective == "contrastive") else float(config.fusion_beta)
    if p_output is None:
        p_output = q_output
    tube_mask, frame_mask, tube_order = prepared["tube_mask"], prepared["frame_mask"], prepared["tube_order"]
    target = prepared["target_index"]
    spatial = fuse_assignments(q_output.spatial_assignment, p_output.spatial_assignment, beta)  # (B,T,N,M)
    batch, frames, _, tubes = spatial.shape
    target_scores = spatial.gather(2, target[:, None, None, None].expand(batch, frames, 1, tubes))[:, :, 0]  # (B,T,M)
    masked = target_scores.masked_fill(~tube_mask, -1.0)
    box_score, best_tube = masked.max(dim=-1)  # (B,T)
    box_index = tube_order.gather(2, best_tube[..., None])[..., 0]  # (B,T) original proposal index
    has_box = tube_mask.any(dim=-1)  # (B,T)
    box_index = box_index.masked_fill(~has_box, -1)
    box_score = box_score.masked_fill(~has_box, 0.0)
    temporal = fuse_assignments(q_output.temporal_assignment, p_output.temporal_assignment, beta)  # (B,T)
    return {
        "box_index": box_index,
        "box_score": box_score,
        "sted": temporal_span(temporal, frame_mask, float(config.temporal_threshold)),
        "region_scores": tube_to_original_order(target_scores * tube_mask, tube_order),
        "temporal_scores": temporal,
    }


# ---------------------------------------------------------------------------------------------------------------------
# PreTrainedModel
# ---------------------------------------------------------------------------------------------------------------------


class StvgPreTrainedModel(PreTrainedModel):
    config_class = StvgConfig
    config: StvgConfig
    base_model_prefix = "stvg"
    main_input_name = "region_features"
    supports_gradient_checkpointing = False


class StvgModel(StvgPreTrainedModel):
    """Both networks of the paper. ``forward(**inputs)`` predicts (Eq. 16); ``e_step_loss`` / ``m_step_loss`` give the
    training losses (Algorithm 1). ``model.q_phi`` and ``model.p_theta`` can be wrapped separately (DDP); then use the
    module-level :func:`prepare_stvg_inputs`, :func:`compute_e_step_loss`, :func:`compute_m_step_loss`."""

    def __init__(self, config: StvgConfig) -> None:
        super().__init__(config)
        self.q_phi = StvgVariationalNetwork(config)
        self.p_theta = StvgPosteriorNetwork(config)
        self.post_init()

    def prepare_inputs(self, inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """Validate inputs (INTERFACES.md keys) and link tubes (Eq. 4); see :func:`prepare_stvg_inputs`."""
        merged = {**(inputs or {}), **kwargs}
        return prepare_stvg_inputs(merged, self.config)

    def _prepared(self, inputs: Mapping[str, Any]) -> Mapping[str, Tensor]:
        return inputs if "tube_order" in inputs else self.prepare_inputs(inputs)

    def e_step_loss(self, inputs: Mapping[str, Any], objective: str | None = None) -> StvgStepOutput:
        """E-step: L_z,phi + L_contra, gradients to q_phi only. ``inputs``: model inputs or prepared inputs."""
        return compute_e_step_loss(self.q_phi, self.p_theta, self._prepared(inputs), self.config, objective)

    def m_step_loss(self, inputs: Mapping[str, Any], objective: str | None = None) -> StvgStepOutput:
        """M-step: L_z,theta + L_rec, gradients to p_theta only. ``loss`` is None for objective "contrastive"."""
        return compute_m_step_loss(self.q_phi, self.p_theta, self._prepared(inputs), self.config, objective)

    def forward(
        self,
        region_features: Tensor,
        region_boxes: Tensor,
        region_mask: Tensor,
        frame_features: Tensor,
        frame_mask: Tensor,
        entity_token_ids: Tensor,
        entity_mask: Tensor,
        relation_token_ids: Tensor,
        relation_entities: Tensor,
        relation_mask: Tensor,
        target_index: Tensor,
        return_loss: bool = False,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> StvgModelOutput | tuple:
        """Ground the target entity: box per frame + time span (Eq. 16). With ``return_loss=True`` also the E-step and
        M-step losses (summed in ``loss``; their targets are detached, so each network only gets its own step's
        gradient)."""
        inputs = {
            "region_features": region_features, "region_boxes": region_boxes, "region_mask": region_mask,
            "frame_features": frame_features, "frame_mask": frame_mask, "entity_token_ids": entity_token_ids,
            "entity_mask": entity_mask, "relation_token_ids": relation_token_ids,
            "relation_entities": relation_entities, "relation_mask": relation_mask, "target_index": target_index,
        }
        prepared = self.prepare_inputs(inputs)
        loss = e_step = m_step = None
        if return_loss:
            e_step = self.e_step_loss(prepared)
            m_step = self.m_step_loss(prepared)
            losses = [step.loss for step in (e_step, m_step) if step.loss is not None]
            loss = sum(losses)
            q_output = e_step.q_output
            p_output = m_step.p_output if m_step.p_output is not None else e_step.p_output
        else:
            q_output = self.q_phi(**prepared)
            p_output = None if self.config.objective == "contrastive" else self.p_theta(**prepared)
        prediction = predict_grounding(q_output, p_output, prepared, self.config)
        output = StvgModelOutput(
            loss=loss, tube_order=prepared["tube_order"], e_step=e_step, m_step=m_step, q_output=q_output,
            p_output=p_output, **prediction,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def init_word_embeddings_from_glove(self, path: str | Path, vocab: Mapping[str, int] | Any) -> int:
        """Copy GloVe vectors (local text file, see :func:`load_glove_vectors`) into both networks' word tables for
        the words of ``vocab``. Returns how many vocabulary words were found."""
        vectors, found = load_glove_vectors(path, vocab, self.config.word_embedding_dim)
        if vectors.shape[0] > self.config.vocab_size:
            raise ValueError(f"vocab has ids up to {vectors.shape[0] - 1} but config.vocab_size is "
                             f"{self.config.vocab_size}.")
        rows = found.nonzero().flatten()
        rows = rows[rows != self.config.pad_token_id]
        for network in (self.q_phi, self.p_theta):
            weight = network.word_embeddings.weight
            weight[rows.to(weight.device)] = vectors[rows].to(weight.device, weight.dtype)
        return int(rows.numel())


__all__ = [
    "StvgModel",
    "StvgPreTrainedModel",
    "StvgVariationalNetwork",
    "StvgPosteriorNetwork",
    "StvgNetworkOutput",
    "StvgStepOutput",
    "StvgModelOutput",
    "StvgInputError",
    "prepare_stvg_inputs",
    "validate_stvg_inputs",
    "link_tubes",
    "compute_e_step_loss",
    "compute_m_step_loss",
    "cross_assignment_loss",
    "contrastive_loss",
    "reconstruction_loss",
    "predict_grounding",
    "load_glove_vectors",
]
