"""Tests of modeling_stvg: config, tube linking, padding invariance, EM gradient isolation, reconstruction,
save/load (local Auto classes and trust_remote_code), bf16 autocast, bad inputs, GloVe loading."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from transformers import AutoConfig, AutoModel

from modeling_stvg import (
    StvgConfig,
    StvgInputError,
    StvgModel,
    StvgNetworkOutput,
    link_tubes,
    load_glove_vectors,
    prepare_stvg_inputs,
    reconstruction_loss,
)
from modeling_stvg.modeling_stvg import (
    PADDED_NODE_PENALTY,
    build_reconstruction_targets,
    call_with_frozen_weights,
    relation_geometry,
    temporal_ranking_loss,
    temporal_span,
    tube_linking_edge_scores,
    tube_motion,
)


# the settings that follow the paper's text where our defaults depart from it (README "Modelling choices")
PAPER_LITERAL = dict(reconstruction_memory="frames", relation_evidence="states", temporal_ranking_weight=0.0,
                     temporal_max_width=1.0, temporal_context="frames", box_motion=False)

REPO = Path(__file__).resolve().parents[1]  # hidden from the remote-code subprocess


class StvgModelTester:
    """Tiny config + random inputs made in the test, in the spirit of transformers' ModelTester classes."""

    def __init__(self, batch_size: int = 3, num_frames: int = 6, num_regions: int = 4, num_entities: int = 3,
                 entity_length: int = 3, num_relations: int = 2, relation_length: int = 3, vocab_size: int = 40,
                 region_dim: int = 16, frame_dim: int = 8, hidden_size: int = 32, num_heads: int = 4, **config_kwargs):
        self.batch_size, self.num_frames, self.num_regions = batch_size, num_frames, num_regions
        self.num_entities, self.entity_length = num_entities, entity_length
        self.num_relations, self.relation_length = num_relations, relation_length
        self.config_kwargs = dict(
            vocab_size=vocab_size, word_embedding_dim=12, region_feature_dim=region_dim, frame_feature_dim=frame_dim,
            hidden_size=hidden_size, num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
            num_regions=num_regions, max_frames=24, max_relation_tokens=8, dropout=0.0,
        )
        self.config_kwargs.update(config_kwargs)

    def get_config(self) -> StvgConfig:
        return StvgConfig(**self.config_kwargs)

    def make_model(self, seed: int = 0) -> StvgModel:
        torch.manual_seed(seed)
        return StvgModel(self.get_config()).eval()

    def make_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        cfg = self.config_kwargs
        b, t, m, n, k = self.batch_size, self.num_frames, self.num_regions, self.num_entities, self.num_relations
        corner = torch.rand(b, t, m, 2, generator=g) * 0.6
        boxes = torch.cat([corner, corner + 0.05 + torch.rand(b, t, m, 2, generator=g) * 0.35], dim=-1)
        region_mask = torch.rand(b, t, m, generator=g) > 0.25
        region_mask[:, :, 0] = True
        entity_ids = torch.randint(4, cfg["vocab_size"], (b, n, self.entity_length), generator=g)
        entity_ids[:, :, -1] = 0  # some padded words
        relation_ids = torch.randint(4, cfg["vocab_size"], (b, k, self.relation_length), generator=g)
        relation_ids[0, 0, -1] = 0
        relation_entities = torch.stack(
            [torch.randint(0, n, (b, k), generator=g), torch.randint(-1, n, (b, k), generator=g)], dim=-1
        )
        return {
            "region_features": torch.randn(b, t, m, cfg["region_feature_dim"], generator=g),
            "region_boxes": boxes,
            "region_mask": region_mask,
            "frame_features": torch.randn(b, t, cfg["frame_feature_dim"], generator=g),
            "frame_mask": torch.ones(b, t, dtype=torch.bool),
            "entity_token_ids": entity_ids,
            "entity_mask": torch.ones(b, n, dtype=torch.bool),
            "relation_token_ids": relation_ids,
            "relation_entities": relation_entities,
            "relation_mask": torch.ones(b, k, dtype=torch.bool),
            "target_index": torch.randint(0, n, (b,), generator=g),
        }


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tester() -> StvgModelTester:
    return StvgModelTester()


# ------------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------------


def test_config_defaults_follow_the_paper():
    config = StvgConfig()
    assert config.model_type == "stvg_vem"
    assert (config.hidden_size, config.num_attention_heads, config.num_video_layers) == (256, 8, 2)
    assert (config.num_regions, config.max_frames, config.word_embedding_dim) == (10, 200, 300)
    assert (config.linking_alpha, config.fusion_beta) == (0.5, 0.3)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 2, 3)
    assert config.reconstruction_assignment in ("variational", "posterior")
    # every setting in PAPER_LITERAL is a documented departure of the defaults (README "Modelling choices")
    assert all(getattr(config, name) != value for name, value in PAPER_LITERAL.items())
    paper = StvgModel(StvgConfig(**PAPER_LITERAL, hidden_size=32, num_attention_heads=4, vocab_size=20))
    assert paper.p_theta.geometry_projection is None and paper.p_theta.relation_projection is not None  # W_r of Eq. 14


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"hidden_size": 30}, "hidden_size"),
        ({"reconstruction_assignment": "both"}, "reconstruction_assignment"),
        ({"objective": "nope"}, "objective"),
        ({"fusion_beta": 1.5}, "fusion_beta"),
        ({"contrastive_temperature": 0.0}, "contrastive_temperature"),
        ({"vocab_size": 3}, "eos_token_id"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_video_layers": 0}, "num_video_layers"),
        ({"temporal_context": "regions"}, "temporal_context"),
        ({"reconstruction_memory": "mean"}, "reconstruction_memory"),
        ({"temporal_max_width": 0.01}, "temporal_max_width"),
        ({"temporal_ranking_weight": -1.0}, "temporal_ranking_weight"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        StvgConfig(**kwargs)


def test_config_round_trip(tmp_path):
    config = StvgConfig(hidden_size=64, num_attention_heads=4, reconstruction_assignment="variational")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, StvgConfig)
    assert loaded.hidden_size == 64 and loaded.reconstruction_assignment == "variational"


# ------------------------------------------------------------------------------------------------------------------
# Eq. 4 tube linking
# ------------------------------------------------------------------------------------------------------------------


def _brute_force_tubes(features, boxes, region_mask, frame_mask, alpha):
    """Greedy tube extraction with exhaustive path search (float64), same scoring rules as link_tubes."""
    frames, regions = region_mask.shape
    real = region_mask & frame_mask[:, None]
    edges = tube_linking_edge_scores(features[None], boxes[None], alpha)[0] if frames > 1 else None
    used = torch.zeros(frames, regions, dtype=torch.bool)
    scores, paths = [], []
    for _ in range(regions):
        best, best_path = -float("inf"), None
        for path in itertools.product(range(regions), repeat=frames):
            if any(used[t, j] for t, j in enumerate(path)):
                continue
            score = 0.0
            for t, j in enumerate(path):
                if frame_mask[t] and not region_mask[t, j]:
                    score += PADDED_NODE_PENALTY
                if t > 0 and real[t - 1, path[t - 1]] and real[t, j]:
                    score += float(edges[t - 1, path[t - 1], j])
            if score > best + 1e-9:
                best, best_path = score, path
        scores.append(best)
        paths.append(best_path)
        for t, j in enumerate(best_path):
            used[t, j] = True
    return scores, paths


def _path_score(order_column, features, boxes, region_mask, frame_mask, alpha):
    real = region_mask & frame_mask[:, None]
    edges = tube_linking_edge_scores(features[None], boxes[None], alpha)[0]
    score = 0.0
    for t, j in enumerate(order_column.tolist()):
        if frame_mask[t] and not region_mask[t, j]:
            score += PADDED_NODE_PENALTY
        if t > 0 and real[t - 1, order_column[t - 1]] and real[t, j]:
            score += float(edges[t - 1, order_column[t - 1], j])
    return score


@pytest.mark.parametrize("seed", range(4))
def test_viterbi_linking_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    batch, frames, regions, dim = 3, 4, 3, 5
    features = torch.randn(batch, frames, regions, dim, generator=g)
    corner = torch.rand(batch, frames, regions, 2, generator=g) * 0.5
    boxes = torch.cat([corner, corner + 0.1 + torch.rand(batch, frames, regions, 2, generator=g) * 0.4], dim=-1)
    region_mask = torch.rand(batch, frames, regions, generator=g) > 0.3  # masked boxes, some frames without any
    frame_mask = torch.ones(batch, frames, dtype=torch.bool)
    frame_mask[1, -1] = False  # a padded frame
    order = link_tubes(features, boxes, region_mask & frame_mask[..., None], frame_mask, alpha=0.5)
    assert order.shape == (batch, frames, regions)
    # every frame's tube slots are a permutation of the original proposal indices
    assert torch.equal(order.sort(dim=-1).values, torch.arange(regions).expand(batch, frames, regions))
    for b in range(batch):
        mask_b = region_mask[b] & frame_mask[b][:, None]
        scores, paths = _brute_force_tubes(features[b], boxes[b], mask_b, frame_mask[b], 0.5)
        for k in range(regions):
            got = _path_score(order[b, :, k], features[b], boxes[b], mask_b, frame_mask[b], 0.5)
            assert got == pytest.approx(scores[k], abs=1e-6), (b, k)
            real_got = [(t, j) for t, j in enumerate(order[b, :, k].tolist()) if mask_b[t, j]]
            real_want = [(t, j) for t, j in enumerate(paths[k]) if mask_b[t, j]]
            assert real_got == real_want, (b, k)  # ties only among padded slots


def test_linking_prefers_consistent_boxes():
    """Two objects swap their proposal index between frames: linking must follow appearance + overlap."""
    frames, dim = 5, 8
    a, b = torch.randn(dim), torch.randn(dim)
    features = torch.zeros(1, frames, 2, dim)
    boxes = torch.zeros(1, frames, 2, 4)
    for t in range(frames):
        first, second = (0, 1) if t % 2 == 0 else (1, 0)
        features[0, t, first], features[0, t, second] = a, b
        boxes[0, t, first] = torch.tensor([0.0, 0.0, 0.3, 0.3])
        boxes[0, t, second] = torch.tensor([0.6, 0.6, 0.9, 0.9])
    order = link_tubes(features, boxes, torch.ones(1, frames, 2, dtype=torch.bool), torch.ones(1, frames, dtype=torch.bool), 0.5)
    tube_a = [int(order[0, t, 0]) for t in range(frames)]
    assert tube_a in ([0, 1, 0, 1, 0], [1, 0, 1, 0, 1])


# ------------------------------------------------------------------------------------------------------------------
# Padding invariance
# ------------------------------------------------------------------------------------------------------------------


def _pad(inputs, extra_frames=2, extra_regions=2, extra_entities=1, extra_relations=1, extra_words=1, seed=7):
    g = torch.Generator().manual_seed(seed)
    out = {}
    b, t, m, dv = inputs["region_features"].shape

    def grow(x, sizes, fill):
        new = torch.full(sizes, fill, dtype=x.dtype) if not x.is_floating_point() else torch.randn(sizes, generator=g)
        new[tuple(slice(0, s) for s in x.shape)] = x
        return new

    out["region_features"] = grow(inputs["region_features"], (b, t + extra_frames, m + extra_regions, dv), 0)
    out["region_boxes"] = grow(inputs["region_boxes"], (b, t + extra_frames, m + extra_regions, 4), 0).abs()
    out["region_mask"] = grow(inputs["region_mask"], (b, t + extra_frames, m + extra_regions), False)
    out["region_mask"][:, t:, :] = True  # garbage proposals on padded frames must be ignored too
    out["frame_features"] = grow(inputs["frame_features"], (b, t + extra_frames, inputs["frame_features"].shape[-1]), 0)
    out["frame_mask"] = grow(inputs["frame_mask"], (b, t + extra_frames), False)
    n, le = inputs["entity_token_ids"].shape[1:]
    out["entity_token_ids"] = grow(inputs["entity_token_ids"], (b, n + extra_entities, le + extra_words), 0)
    out["entity_token_ids"][:, n:, 0] = 5  # a padded entity with words in it
    out["entity_mask"] = grow(inputs["entity_mask"], (b, n + extra_entities), False)
    k, lr = inputs["relation_token_ids"].shape[1:]
    out["relation_token_ids"] = grow(inputs["relation_token_ids"], (b, k + extra_relations, lr + extra_words), 0)
    out["relation_token_ids"][:, k:, 0] = 6
    out["relation_entities"] = grow(inputs["relation_entities"], (b, k + extra_relations, 2), 0)
    out["relation_mask"] = grow(inputs["relation_mask"], (b, k + extra_relations), False)
    out["target_index"] = inputs["target_index"].clone()
    return out


@pytest.mark.parametrize(
    "variant",
    [{}, PAPER_LITERAL, {"reconstruction_memory": "pooled"},
     {"reconstruction_memory": "frames", "relation_evidence": "states_and_geometry"},
     {"reconstruction_memory": "pooled", "relation_evidence": "states_and_geometry", "temporal_ranking_weight": 1.0},
     {"reconstruction_memory": "gaussian_attention", "relation_evidence": "geometry", "temporal_ranking_weight": 1.0,
      "temporal_max_width": 0.3}],
    ids=["default", "paper-literal", "pooled-memory", "frames-states-and-geometry", "pooled-geometry-ranking",
         "geometry-gaussian-ranking"],
)
def test_padding_changes_no_real_output(variant):
    tester = StvgModelTester(**variant)
    model = tester.make_model()
    inputs = tester.make_inputs()
    padded = _pad(inputs)
    t, m = tester.num_frames, tester.num_regions
    with torch.no_grad():
        ref, pad = model(**inputs), model(**padded)
        ref_e, pad_e = model.e_step_loss(inputs), model.e_step_loss(padded)
        ref_m, pad_m = model.m_step_loss(inputs), model.m_step_loss(padded)
    assert torch.equal(ref.box_index, pad.box_index[:, :t])
    assert torch.equal(ref.sted, pad.sted)
    torch.testing.assert_close(ref.box_score, pad.box_score[:, :t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref.region_scores, pad.region_scores[:, :t, :m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref.temporal_scores, pad.temporal_scores[:, :t], atol=1e-5, rtol=1e-5)
    assert torch.all(pad.temporal_scores[:, t:] == 0)
    for name in ("loss", "assignment_loss", "contrastive_loss"):
        torch.testing.assert_close(getattr(ref_e, name), getattr(pad_e, name), atol=1e-5, rtol=1e-5)
    assert (ref_m.temporal_ranking_loss is None) == (model.config.temporal_ranking_weight == 0)
    for name in ("loss", "assignment_loss", "reconstruction_loss", "temporal_ranking_loss"):
        if getattr(ref_m, name) is not None:
            torch.testing.assert_close(getattr(ref_m, name), getattr(pad_m, name), atol=1e-5, rtol=1e-5)


def test_tube_motion_is_the_centre_step_along_each_tube():
    # one tube over 3 frames: centre (0.2,0.2) -> (0.3,0.2) -> (0.3,0.5); a second tube missing on frame 1
    boxes = torch.tensor([[[0.1, 0.1, 0.3, 0.3], [0.0, 0.0, 0.2, 0.2]],
                          [[0.2, 0.1, 0.4, 0.3], [0.0, 0.0, 0.0, 0.0]],
                          [[0.2, 0.4, 0.4, 0.6], [0.1, 0.0, 0.3, 0.2]]])[None]  # (1,T=3,M=2,4)
    mask = torch.tensor([[[True, True], [True, False], [True, True]]])
    motion = tube_motion(boxes, mask, scale=1.0)  # (1,3,2,4): (from previous, to next)
    expected_tube0 = torch.tensor([[0.0, 0.0, 0.1, 0.0], [0.1, 0.0, 0.0, 0.3], [0.0, 0.3, 0.0, 0.0]])
    torch.testing.assert_close(motion[0, :, 0], expected_tube0)
    assert torch.all(motion[0, :, 1] == 0), "a step touching a missing box must be zero"


def test_box_index_is_in_original_proposal_order(tester):
    model = tester.make_model()
    inputs = tester.make_inputs()
    with torch.no_grad():
        out = model(**inputs)
        # the chosen proposal's fused score in original order equals box_score
        picked = out.region_scores.gather(2, out.box_index[..., None])[..., 0]
    torch.testing.assert_close(picked, out.box_score)
    assert bool(inputs["region_mask"].gather(2, out.box_index[..., None]).all())
    # permuting the input proposals permutes box_index accordingly
    perm = torch.tensor([2, 0, 3, 1])
    permuted = dict(inputs)
    for key in ("region_features", "region_boxes", "region_mask"):
        permuted[key] = inputs[key][:, :, perm]
    with torch.no_grad():
        out_perm = model(**permuted)
    assert torch.equal(perm[out_perm.box_index], out.box_index)  # permuted slot j holds original proposal perm[j]


def test_temporal_span_rule():
    scores = torch.tensor([[0.1, 0.6, 0.9, 1.0, 0.4, 0.8, 0.0], [1.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 7, [True, True, True, False, False, False, False]])
    assert temporal_span(scores, mask, 0.5).tolist() == [[1, 4], [0, 1]]


# ------------------------------------------------------------------------------------------------------------------
# EM steps
# ------------------------------------------------------------------------------------------------------------------


def _grad_owners(model):
    owners = set()
    for name, param in model.named_parameters():
        if param.grad is not None and param.grad.abs().sum() > 0:
            owners.add(name.split(".")[0])
    return owners


@pytest.mark.parametrize("assignment", ["variational", "posterior"])
def test_e_and_m_steps_touch_only_their_network(tester, assignment):
    tester.config_kwargs.update(reconstruction_assignment=assignment, relation_evidence="states_and_geometry",
                                temporal_ranking_weight=1.0, temporal_max_width=0.5)
    model = tester.make_model().train()
    inputs = tester.make_inputs()
    e_step = model.e_step_loss(inputs)
    assert e_step.contrastive_loss is not None and e_step.assignment_loss is not None
    e_step.loss.backward()
    assert _grad_owners(model) == {"q_phi"}
    q_with_grad = {n for n, p in model.q_phi.named_parameters() if p.grad is not None}
    assert "temporal_head.out.weight" in q_with_grad and "spatial_head.g_v.0.weight" in q_with_grad
    model.zero_grad(set_to_none=True)
    m_step = model.m_step_loss(inputs)
    assert m_step.reconstruction_loss is not None
    m_step.loss.backward()
    assert _grad_owners(model) == {"p_theta"}
    p_grad = model.p_theta.spatial_head.g_s[0].weight.grad
    assert p_grad is not None and p_grad.abs().sum() > 0  # L_z,theta reaches p_theta's assignment head
    for key in ("reconstruction_loss", "assignment_loss"):
        assert torch.isfinite(getattr(m_step, key))
    # the ranking moves p_theta's own z^T; fed q_phi's detached assignment there is nothing to move
    assert (m_step.temporal_ranking_loss is None) == (assignment == "variational")


def test_ablation_objectives(tester):
    tester.config_kwargs["objective"] = "contrastive"
    model = tester.make_model()
    inputs = tester.make_inputs()
    e_step = model.e_step_loss(inputs)
    assert e_step.assignment_loss is None and e_step.contrastive_loss is not None
    assert model.m_step_loss(inputs).loss is None
    e_recon = model.e_step_loss(inputs, objective="reconstruction")
    assert e_recon.contrastive_loss is None and e_recon.assignment_loss is not None
    with torch.no_grad():
        out = model(**inputs)
    assert out.p_output is None and out.box_index.shape == (tester.batch_size, tester.num_frames)


def test_joint_loss_forward(tester):
    model = tester.make_model().train()
    out = model(**tester.make_inputs(), return_loss=True)
    out.loss.backward()
    assert _grad_owners(model) == {"q_phi", "p_theta"}
    torch.testing.assert_close(out.loss, out.e_step.loss + out.m_step.loss)


def test_training_losses_never_read_ground_truth(tester):
    """Weak supervision: the model inputs carry no boxes/spans of the referent; ground-truth keys passed along with
    them are dropped by prepare_inputs and change no loss."""
    model = tester.make_model()
    inputs = tester.make_inputs()
    b, t = tester.batch_size, tester.num_frames
    with_gt = dict(inputs, gt_boxes=torch.rand(b, t, 4), gt_sted=torch.tensor([[0, t]] * b))
    prepared = model.prepare_inputs(with_gt)
    assert not any(key.startswith("gt") for key in prepared)
    with torch.no_grad():
        for step in ("e_step_loss", "m_step_loss"):
            torch.testing.assert_close(getattr(model, step)(with_gt).loss, getattr(model, step)(inputs).loss,
                                       atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# Reconstruction (Eq. 13-15)
# ------------------------------------------------------------------------------------------------------------------


def test_reconstruction_targets():
    ids = torch.tensor([[[7, 8, 0], [9, 0, 0]]])
    inputs, labels, mask = build_reconstruction_targets(ids, bos_id=2, eos_id=3, pad_id=0)
    assert inputs.tolist() == [[[2, 7, 8, 0], [2, 9, 0, 0]]]
    assert labels.tolist() == [[[7, 8, 3, -100], [9, 3, -100, -100]]]
    assert mask.tolist() == [[[True, True, True, False], [True, True, False, False]]]


def _fixed_assignment(batch, frames, entities, regions, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.softmax(torch.randn(batch, frames, entities, regions, generator=g), dim=-1)
    temporal = torch.rand(batch, frames, generator=g)
    return spatial, temporal


@pytest.mark.parametrize("evidence", ["states", "geometry"])
def test_decoder_overfits_tiny_batch_with_fixed_assignment(tester, evidence):
    """Fixed assignment and fixed video states: W_r (or the geometry projection) + decoder must memorise the relation
    words (Eq. 13-15)."""
    tester.config_kwargs["relation_evidence"] = evidence
    model = tester.make_model()
    p_theta = model.p_theta.train()
    prepared = model.prepare_inputs(tester.make_inputs())
    b, t, m = prepared["tube_mask"].shape
    spatial, temporal = _fixed_assignment(b, t, tester.num_entities, m)
    with torch.no_grad():
        video = p_theta(**prepared).video_states
    args = (prepared["relation_token_ids"], prepared["relation_entities"], prepared["relation_mask"],
            prepared["frame_mask"])
    geometry = relation_geometry(prepared["tube_boxes"], spatial, prepared["relation_entities"], prepared["frame_mask"])
    evidence_layer = p_theta.relation_projection if evidence == "states" else p_theta.geometry_projection
    params = [*p_theta.decoder.parameters(), *evidence_layer.parameters(), p_theta.word_embeddings.weight]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(100):
        logits, labels = p_theta.reconstruction_logits(video, spatial, temporal, *args, geometry=geometry)
        loss = reconstruction_loss(StvgNetworkOutput(reconstruction_logits=logits, reconstruction_labels=labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 100, (losses[0], losses[-1])


def test_relation_geometry_hand_case():
    # one video, 3 frames, 2 tubes; entity 0 sits on tube 0, entity 1 on tube 1 (one-hot z^S)
    boxes = torch.tensor([[[0.0, 0.0, 0.2, 0.2], [0.6, 0.0, 0.8, 0.2]],
                          [[0.1, 0.0, 0.3, 0.2], [0.6, 0.0, 0.8, 0.2]],
                          [[0.2, 0.0, 0.4, 0.2], [0.6, 0.4, 0.8, 0.6]]])[None]  # (1,3,2,4)
    spatial = torch.eye(2)[None, None].expand(1, 3, 2, 2)  # (1,T,N=2,M=2)
    relations = torch.tensor([[[0, 1], [1, -1]]])  # subject 0 -> object 1; subject 1 without object
    geometry = relation_geometry(boxes, spatial, relations, torch.ones(1, 3, dtype=torch.bool), motion_scale=1.0)
    assert geometry.shape == (1, 2, 3, 10)
    first = geometry[0, 0]  # (T,10): offset(2) distance(1) | change of those(3) | subject motion(2) object motion(2)
    torch.testing.assert_close(first[:, :2], torch.tensor([[0.6, 0.0], [0.5, 0.0], [0.4, 0.4]]))
    torch.testing.assert_close(first[:, 2], torch.tensor([0.6, 0.5, 0.4 * 2 ** 0.5]))
    torch.testing.assert_close(first[0, 5:], torch.tensor([-0.1, 0.1, 0.0, 0.0, 0.0]))  # dist change, S and O steps
    torch.testing.assert_close(first[1, 3:], torch.tensor([-0.1, 0.4, 0.4 * 2 ** 0.5 - 0.5, 0.1, 0.0, 0.0, 0.4]))
    assert torch.all(first[2, 3:] == 0)  # no next frame
    no_object = geometry[0, 1]
    assert torch.all(no_object[:, :6] == 0) and torch.all(no_object[:, 8:] == 0)
    torch.testing.assert_close(no_object[:, 6:8], torch.tensor([[0.0, 0.0], [0.0, 0.4], [0.0, 0.0]]))


def test_call_with_frozen_weights_passes_gradient_to_inputs_only():
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    torch.testing.assert_close(call_with_frozen_weights(layer, x), layer(x))
    call_with_frozen_weights(layer, x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None and x.grad.abs().sum() > 0


def test_temporal_ranking_loss_hand_case():
    labels = torch.tensor([[[5, 3], [6, -100]]])  # (B=1,K=2,L=2): relation 1 has one real token
    vocab = 8

    def logits_with(probability):  # every real label gets ``probability``
        table = torch.full((1, 2, 2, vocab), 0.0)
        for k, length in ((0, 2), (1, 1)):
            for position in range(length):
                rest = (1 - probability[k]) / (vocab - 1)
                table[0, k, position] = torch.log(torch.full((vocab,), rest))
                table[0, k, position, labels[0, k, position]] = torch.log(torch.tensor(probability[k]))
        return table

    output = StvgNetworkOutput(reconstruction_labels=labels, ranking_selected_logits=logits_with([0.5, 0.5]),
                               ranking_complement_logits=logits_with([0.25, 0.5]))
    # relation 0: NLL 0.693 vs 1.386 -> hinge max(0, 0.1 + 0.693 - 1.386) = 0; relation 1: equal -> 0.1
    torch.testing.assert_close(temporal_ranking_loss(output, margin=0.1), torch.tensor(0.05))
    with pytest.raises(ValueError, match="temporal_ranking_weight"):
        temporal_ranking_loss(StvgNetworkOutput(), margin=0.1)


def test_ranking_gradient_moves_only_the_temporal_assignment():
    """The ranking must not teach the decoder to fail on the left-out frames: its gradient reaches p_theta's temporal
    head (and what feeds it), never the decoder, W_r, the geometry projection or the spatial head."""
    tester = StvgModelTester(reconstruction_memory="gaussian_attention", relation_evidence="states_and_geometry",
                             temporal_ranking_weight=1.0, temporal_max_width=0.3)
    model = tester.make_model().train()
    prepared = model.prepare_inputs(tester.make_inputs())
    output = model.p_theta(**prepared, compute_reconstruction=True)
    temporal_ranking_loss(output, margin=10.0).backward()  # margin large enough that every hinge is active
    with_grad = {name.split(".")[0] for name, param in model.p_theta.named_parameters()
                 if param.grad is not None and param.grad.abs().sum() > 0}
    assert "temporal_head" in with_grad
    assert not with_grad & {"decoder", "relation_projection", "geometry_projection", "spatial_head"}


def test_gaussian_attention_memory_ignores_frames_outside_the_window(tester):
    """reconstruction_memory="gaussian_attention": log z^T is the decoder's attention prior, so a frame with
    z^T = 0 cannot change the reconstruction however its video states change."""
    tester.config_kwargs.update(reconstruction_memory="gaussian_attention", relation_evidence="states")
    model = tester.make_model()
    prepared = model.prepare_inputs(tester.make_inputs())
    b, t, m = prepared["tube_mask"].shape
    spatial, temporal = _fixed_assignment(b, t, tester.num_entities, m)
    temporal[:, -2:] = 0.0
    args = (prepared["relation_token_ids"], prepared["relation_entities"], prepared["relation_mask"],
            prepared["frame_mask"])
    with torch.no_grad():
        video = model.p_theta(**prepared).video_states
        changed = video.clone()
        changed[:, -2:] = torch.randn_like(changed[:, -2:]) * 5
        reference, _ = model.p_theta.reconstruction_logits(video, spatial, temporal, *args)
        outside, _ = model.p_theta.reconstruction_logits(changed, spatial, temporal, *args)
        inside_changed = video.clone()
        inside_changed[:, 0] = torch.randn_like(inside_changed[:, 0]) * 5
        inside, _ = model.p_theta.reconstruction_logits(inside_changed, spatial, temporal, *args)
    torch.testing.assert_close(reference, outside, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(reference, inside, atol=1e-3)


def test_teacher_forcing_is_causal(tester):
    tester.config_kwargs["relation_evidence"] = "states"
    model = tester.make_model()
    prepared = model.prepare_inputs(tester.make_inputs())
    b, t, m = prepared["tube_mask"].shape
    spatial, temporal = _fixed_assignment(b, t, tester.num_entities, m)
    ids = prepared["relation_token_ids"].clone()
    ids[:, :, :] = torch.randint(4, 40, ids.shape)  # full-length predicates
    changed = ids.clone()
    changed[:, :, -1] = (ids[:, :, -1] + 1 - 4) % 36 + 4  # change the last word only
    args = (prepared["relation_entities"], prepared["relation_mask"], prepared["frame_mask"])
    with torch.no_grad():
        video = model.p_theta(**prepared).video_states
        logits, _ = model.p_theta.reconstruction_logits(video, spatial, temporal, ids, *args)
        logits2, _ = model.p_theta.reconstruction_logits(video, spatial, temporal, changed, *args)
    last_word_position = ids.shape[-1]  # decoder input [BOS, w1..wL]: wL sits at position L
    torch.testing.assert_close(logits[..., :last_word_position, :], logits2[..., :last_word_position, :])
    assert not torch.allclose(logits[..., last_word_position, :], logits2[..., last_word_position, :])


# ------------------------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------------------------


def test_save_and_auto_load_offline(tester, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tester.make_model()
    inputs = tester.make_inputs()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert {"configuration_stvg.py", "modeling_stvg.py"} <= {p.name for p in tmp_path.iterdir()}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith("modeling_stvg.StvgModel")
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, StvgModel)
    with torch.no_grad():
        want, got = model(**inputs), loaded(**inputs)
    assert torch.equal(want.box_index, got.box_index) and torch.equal(want.sted, got.sted)
    torch.testing.assert_close(want.region_scores, got.region_scores, atol=0, rtol=0)


def test_remote_code_loads_in_fresh_process(tester, tmp_path):
    model = tester.make_model()
    inputs = tester.make_inputs()
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    with torch.no_grad():
        expected = model(**inputs).region_scores
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "case.pt")
    script = textwrap.dedent(
        f"""
        import sys
        repo = {str(REPO)!r}
        # Hide the checkout and its editable-install finder, keep site-packages (the venv may live in the repo).
        sys.path[:] = [p for p in sys.path if p not in ("", ".", repo)]
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        import importlib.util
        assert importlib.util.find_spec("modeling_stvg") is None, "the repo package must not be importable here"
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert "modeling_stvg" not in sys.modules, "the repo package must not be importable here"
        case = torch.load({str(tmp_path / "case.pt")!r}, weights_only=True)
        with torch.no_grad():
            got = model(**case["inputs"]).region_scores
        torch.testing.assert_close(got, case["expected"], atol=0, rtol=0)
        print("REMOTE_OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "REMOTE_OK" in result.stdout, result.stderr[-3000:]


# ------------------------------------------------------------------------------------------------------------------
# bf16 autocast
# ------------------------------------------------------------------------------------------------------------------


def test_bf16_autocast_matches_fp32(tester):
    """Tolerance: assignments (probabilities) within 0.05 absolute, losses within 5 % relative."""
    model = tester.make_model()
    inputs = tester.make_inputs()
    with torch.no_grad():
        ref = model(**inputs)
        ref_e = model.e_step_loss(inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**inputs)
            low_e = model.e_step_loss(inputs)
    for name in ("region_scores", "temporal_scores", "box_score"):
        got = getattr(low, name).float()
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, getattr(ref, name).float(), atol=0.05, rtol=0)
    torch.testing.assert_close(low_e.loss.float(), ref_e.loss, atol=0, rtol=0.05)


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------


def _break(inputs, key, value):
    broken = dict(inputs)
    broken[key] = value
    return broken


def test_bad_inputs_raise_named_errors(tester):
    model = tester.make_model()
    good = tester.make_inputs()
    b, t, m = tester.batch_size, tester.num_frames, tester.num_regions
    cases = {
        "region_boxes": _break(good, "region_boxes", torch.rand(b, t, m + 1, 4)),
        "frame_features": _break(good, "frame_features", torch.rand(b, t + 1, 8)),
        "region_features": _break(good, "region_features", torch.rand(b, t, m, 17)),
        "entity_mask": _break(good, "entity_mask", torch.ones(b, tester.num_entities + 1, dtype=torch.bool)),
        "target_index": _break(good, "target_index", torch.full((b,), tester.num_entities)),
        "relation_entities": _break(good, "relation_entities", torch.full((b, tester.num_relations, 2), 5)),
        "frame_mask": _break(good, "frame_mask", torch.zeros(b, t, dtype=torch.bool)),
        "entity_token_ids": _break(good, "entity_token_ids", good["entity_token_ids"] + 100),
    }
    for key, broken in cases.items():
        with pytest.raises(StvgInputError, match=f"`{key}`"):
            model(**broken)
        with pytest.raises(ValueError):
            model.e_step_loss(broken)
    # a target that points to a padded entity
    masked_entity = _break(good, "entity_mask", good["entity_mask"].clone())
    masked_entity["entity_mask"][:, -1] = False
    masked_entity["target_index"] = torch.full((b,), tester.num_entities - 1)
    with pytest.raises(StvgInputError, match="`target_index`"):
        model(**masked_entity)
    # a relation whose object is a padded entity
    bad_object = dict(masked_entity, target_index=torch.zeros(b, dtype=torch.long))
    bad_object["relation_entities"] = torch.tensor([[0, tester.num_entities - 1]]).expand(b, tester.num_relations, 2)
    with pytest.raises(StvgInputError, match="`relation_entities`"):
        model(**bad_object)
    nan_features = _break(good, "region_features", good["region_features"].clone())
    nan_features["region_features"][0, 0, 0, 0] = float("nan")
    with pytest.raises(StvgInputError, match="`region_features`"):
        model(**nan_features)
    missing = {k: v for k, v in good.items() if k != "relation_mask"}
    with pytest.raises(StvgInputError, match="`relation_mask`"):
        prepare_stvg_inputs(missing, model.config)


def test_real_frame_without_proposals_gives_finite_outputs(tester):
    model = tester.make_model()
    inputs = tester.make_inputs()
    inputs["region_mask"] = inputs["region_mask"].clone()
    inputs["region_mask"][0, 2] = False
    with torch.no_grad():
        out = model(**inputs)
        e_step = model.e_step_loss(inputs)
        m_step = model.m_step_loss(inputs)
    assert out.box_index[0, 2] == -1
    assert torch.isfinite(out.region_scores).all() and torch.isfinite(e_step.loss) and torch.isfinite(m_step.loss)


# ------------------------------------------------------------------------------------------------------------------
# GloVe
# ------------------------------------------------------------------------------------------------------------------


def test_glove_initialisation_from_local_file(tester, tmp_path):
    tester.config_kwargs["word_embedding_dim"] = 4
    model = tester.make_model()
    glove = tmp_path / "glove.txt"
    glove.write_text("man 1 2 3 4\nDog 0.5 0.5 0.5 0.5\nnot_in_vocab 9 9 9 9\n")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, "man": 4, "dog": 5, "car": 6}
    found = model.init_word_embeddings_from_glove(glove, vocab)
    assert found == 2
    for network in (model.q_phi, model.p_theta):
        assert network.word_embeddings.weight[4].tolist() == [1, 2, 3, 4]
        assert network.word_embeddings.weight[5].tolist() == [0.5] * 4
    vectors, mask = load_glove_vectors(glove, vocab, dim=4)
    assert mask.tolist() == [False, False, False, False, True, True, False]
    with pytest.raises(FileNotFoundError, match="glove"):
        load_glove_vectors(tmp_path / "missing.txt", vocab, dim=4)
    (tmp_path / "bad.txt").write_text("man 1 2\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        load_glove_vectors(tmp_path / "bad.txt", vocab, dim=4)
