"""Rows -> model inputs (stvg_data.batching), model outputs -> predictions (stvg_data.inference),
and the report writers (stvg_data.reporting)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modeling_stvg.modeling_stvg import MODEL_INPUT_NAMES
from processing_stvg.tokenization_stvg import build_word_tokenizer
from stvg_data.batching import (
    StvgQueryDataset,
    WeakSupervisionError,
    assert_weakly_supervised,
    collate_stvg,
    count_usable_relations,
    drop_ground_truth,
    tokenizer_corpus,
)
from stvg_data.dataset_folder import DatasetFolderWriter, default_metadata, load_stvg_split, write_rows
from stvg_data.inference import outputs_to_predictions, span_to_frame_ids
from stvg_data.reporting import format_table, plot_training_curves, plot_tubes
from stvg_data.schema import GROUND_TRUTH_COLUMNS, QUERY_FEATURES, video_features

M, DV, DF = 4, 6, 5


def video_row(video_id: str, num_frames: int, width: int = 80, height: int = 40, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 20, size=(num_frames, M, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + [40, 15]], axis=-1).astype(np.float32)
    labels = rng.integers(0, 3, size=(num_frames, M)).astype(np.int32)
    labels[:, -1] = -1  # the last proposal of every frame is padding
    frame_ids = [6 * t for t in range(num_frames)]
    return {
        "video_id": video_id, "fps": 30.0, "width": width, "height": height, "frame_count": 6 * num_frames,
        "segment": [0, 6 * num_frames], "frame_ids": frame_ids, "boxes": boxes,
        "box_scores": rng.uniform(size=(num_frames, M)).astype(np.float32), "box_labels": labels,
        "region_features": rng.normal(size=(num_frames, M, DV)).astype(np.float16),
        "frame_features": rng.normal(size=(num_frames, DF)).astype(np.float16),
    }


def query_row(query_id: str, video_id: str, entities: list[str], relations: list[dict], target: int = 0) -> dict:
    return {
        "query_id": query_id, "video_id": video_id, "sentence": " ".join(entities), "qtype": "declarative",
        "entities": entities, "relations": relations, "target": target, "gt_sted": [6, 13],
        "gt_frame_ids": [6, 12], "gt_boxes": [[1.0, 2.0, 11.0, 12.0], [2.0, 3.0, 12.0, 13.0]],
    }


@pytest.fixture()
def split(tmp_path):
    writer = DatasetFolderWriter(tmp_path)
    videos = [video_row("a", 3, seed=1), video_row("b", 5, seed=2)]
    queries = [
        query_row("q0", "a", ["the red circle", "the big blue square"],
                  [{"subject": 0, "predicate": "is left of", "object": 1}]),
        query_row("q1", "b", ["a dog"], [{"subject": 0, "predicate": "runs", "object": -1},
                                         {"subject": 0, "predicate": "  ", "object": -1},  # empty: unusable
                                         {"subject": 3, "predicate": "eats", "object": -1}]),  # bad subject
        query_row("q2", "a", ["the red circle", "the dog", "the big blue square"],
                  [{"subject": 1, "predicate": "chases", "object": 0},
                   {"subject": 0, "predicate": "is in front of", "object": 2}], target=1),
    ]
    write_rows(writer, "videos", "train", videos, video_features(M, DV, DF), rows_per_shard=1)
    write_rows(writer, "queries", "train", queries, QUERY_FEATURES, rows_per_shard=10)
    writer.finalize(default_metadata(source="test", label_names=["circle", "square", "dog"], num_regions=M,
                                     region_dim=DV, frame_dim=DF, with_features=True))
    return load_stvg_split(tmp_path, "train")


@pytest.fixture()
def tokenizer(split):
    return build_word_tokenizer(tokenizer_corpus(drop_ground_truth(split.queries)))


def test_ground_truth_is_dropped_before_rows_are_read(split, tokenizer):
    assert set(GROUND_TRUTH_COLUMNS) <= set(split.queries.column_names)
    with pytest.raises(WeakSupervisionError, match="gt_sted"):
        assert_weakly_supervised(split.queries)
    dataset = StvgQueryDataset.from_split(split, tokenizer)
    assert not any(name.startswith("gt_") for name in dataset.queries.column_names)
    item = dataset[0]
    assert not any("gt" in key for key in list(item) + list(item["meta"]))
    assert_weakly_supervised(drop_ground_truth(split.queries))
    # features are read through a float16 numpy view (no silent float32 upcast on the way)
    assert dataset.read_video.features.format["format_kwargs"]["dtype"] == np.float16
    assert item["region_features"].dtype == np.float16


def test_collate_pads_every_axis_and_normalises_boxes(split, tokenizer):
    dataset = StvgQueryDataset.from_split(split, tokenizer)
    batch = collate_stvg([dataset[0], dataset[1], dataset[2]])
    assert set(MODEL_INPUT_NAMES) <= set(batch)
    b, t, n, k = 3, 5, 3, 2
    assert batch["region_features"].shape == (b, t, M, DV) and batch["region_features"].dtype == torch.float32
    assert batch["frame_features"].shape == (b, t, DF)
    assert batch["region_boxes"].shape == (b, t, M, 4)
    assert batch["frame_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5, [True] * 3 + [False] * 2]
    # region_mask = label != -1, and False on padded frames
    assert batch["region_mask"][1, :, -1].any().item() is False
    assert batch["region_mask"][1, :, :-1].all().item() is True
    assert batch["region_mask"][0, 3:].any().item() is False
    # features equal the stored float16 values; padding is zero
    video_b = split.video_row("b")
    np.testing.assert_allclose(batch["region_features"][1].numpy(), np.asarray(video_b["region_features"], np.float32))
    assert batch["region_features"][0, 3:].abs().sum().item() == 0
    # boxes divided by (width, height, width, height)
    expected = np.asarray(video_b["boxes"], np.float32) / np.array([80, 40, 80, 40], np.float32)
    np.testing.assert_allclose(batch["region_boxes"][1].numpy(), np.clip(expected, 0, 1), rtol=1e-6)
    assert 0.0 <= batch["region_boxes"].min().item() and batch["region_boxes"].max().item() <= 1.0
    # entities: N = 3, Le = 3 ("the big blue square" -> 4 words)
    assert batch["entity_token_ids"].shape == (b, n, 4)
    assert batch["entity_mask"].tolist() == [[True, True, False], [True, False, False], [True, True, True]]
    red_circle = tokenizer("the red circle", add_special_tokens=False)["input_ids"]
    assert batch["entity_token_ids"][0, 0].tolist() == red_circle + [0]
    # relations: unusable ones (empty predicate, bad subject) are dropped; K = 2, Lr = 4
    assert batch["relation_mask"].tolist() == [[True, False], [True, False], [True, True]]
    assert batch["relation_token_ids"].shape == (b, k, 4)
    assert batch["relation_token_ids"][2, 1].tolist() == tokenizer("is in front of", add_special_tokens=False)["input_ids"]
    assert batch["relation_entities"][2].tolist() == [[1, 0], [0, 2]]
    assert batch["relation_entities"][1, 0].tolist() == [0, -1]
    assert batch["target_index"].tolist() == [0, 0, 1]
    assert [m["query_id"] for m in batch["meta"]] == ["q0", "q1", "q2"]
    assert count_usable_relations(split.queries) == 4


def test_collate_casts_to_the_requested_dtype(split, tokenizer):
    dataset = StvgQueryDataset.from_split(split, tokenizer)
    batch = collate_stvg([dataset[0]], dtype=torch.bfloat16)
    assert batch["region_features"].dtype == torch.bfloat16 and batch["frame_features"].dtype == torch.bfloat16


def test_no_features_dataset_gets_a_clear_error(tmp_path, tokenizer):
    root = tmp_path / "no_features"
    writer = DatasetFolderWriter(root)
    row = {k: v for k, v in video_row("a", 3).items() if k in video_features(with_features=False)}
    write_rows(writer, "videos", "train", [row], video_features(with_features=False), rows_per_shard=1)
    write_rows(writer, "queries", "train", [query_row("q0", "a", ["a dog"], [])], QUERY_FEATURES, 10)
    writer.finalize(default_metadata(source="test", label_names=[], num_regions=M, region_dim=None, frame_dim=None,
                                     with_features=False))
    with pytest.raises(ValueError, match="--no-features"):
        StvgQueryDataset.from_split(load_stvg_split(root, "train"), tokenizer)


def test_outputs_to_predictions_span_rule_and_boxes(split, tokenizer):
    dataset = StvgQueryDataset.from_split(split, tokenizer)
    batch = collate_stvg([dataset[0], dataset[1]])
    box_index = torch.tensor([[0, 1, 2, 0, 0], [2, 2, 1, 0, 1]])
    sted = torch.tensor([[1, 3], [0, 2]])  # [start, end) indices into the sampled frames
    predictions = outputs_to_predictions(box_index, sted, batch["meta"])
    # clip "a": frames 0, 6, 12 in segment [0, 18); indices [1, 3) -> frames [6, 18)
    assert predictions[0]["query_id"] == "q0" and predictions[0]["sted"] == [6, 18]
    pixel_a = np.asarray(split.video_row("a")["boxes"], np.float32)
    assert predictions[0]["boxes"] == {"6": pixel_a[1, 1].tolist(), "12": pixel_a[2, 2].tolist()}
    # clip "b": indices [0, 2) -> frames [0, 12): a span ends at the next sampled frame
    assert predictions[1]["sted"] == [0, 12] and sorted(predictions[1]["boxes"]) == ["0", "6"]
    json.dumps(predictions)  # plain JSON types only
    assert span_to_frame_ids([0, 6, 12], 18, 2, 2) == (12, 18)  # empty span widened to one frame


def test_outputs_to_predictions_empty_box_without_proposal_and_clamped_span():
    meta = {"query_id": "q", "frame_ids": np.array([0, 6, 12]), "segment": [0, 18],
            "boxes": np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)}
    (prediction,) = outputs_to_predictions(np.array([[1, -1, 0]]), np.array([[-4, 9]]), [meta])
    assert prediction["sted"] == [0, 18]  # indices clamped to the clip
    assert prediction["boxes"] == {"0": [4.0, 5.0, 6.0, 7.0], "6": [0.0, 0.0, 0.0, 0.0], "12": [16.0, 17.0, 18.0, 19.0]}


def test_report_writers(tmp_path, split):
    log = tmp_path / "train_log.jsonl"
    with open(log, "w") as stream:
        for step in range(12):
            phase = "E" if step < 6 else "M"
            stream.write(json.dumps({"step": step, "phase": phase, "loss/total": 3.0 - 0.1 * step}) + "\n")
        stream.write(json.dumps({"step": 12, "eval/m_vIoU": 0.2}) + "\n")
    png = plot_training_curves(log, tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    video = split.video_row("a")
    query = split.queries[0]
    prediction = {"query_id": "q0", "sted": [6, 18], "boxes": {"6": [1, 2, 30, 20], "12": [0, 0, 10, 10]}}
    png = plot_tubes(video, query, prediction, tmp_path / "tubes.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = format_table({"baseline": {"overall": {"m_tIoU": 0.5, "m_vIoU": 0.1, "vIoU@0.3": 0.2, "vIoU@0.5": 0.0}}})
    assert "baseline" in table and "10.00" in table
    with pytest.raises(ValueError, match="no 'loss"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("{}\n")
        plot_training_curves(empty, tmp_path / "x.png")


def test_reporting_cli_compares_metrics_files(tmp_path, capsys):
    from stvg_data.reporting import main as reporting_main

    block = {"m_tIoU": 0.4, "m_vIoU": 0.15, "vIoU@0.3": 0.2, "vIoU@0.5": 0.05}
    (tmp_path / "a.json").write_text(json.dumps({"overall": block}))
    (tmp_path / "b.json").write_text(json.dumps({"overall": {**block, "m_vIoU": 0.35}}))
    assert reporting_main([f"object-similarity={tmp_path / 'a.json'}", f"stvg-vem={tmp_path / 'b.json'}",
                           "--output", str(tmp_path / "table.txt")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[2].split()[:3] == ["object-similarity", "40.00", "15.00"]
    assert printed.splitlines()[3].split()[2] == "35.00"
    assert (tmp_path / "table.txt").read_text().strip() == printed.strip()
    with pytest.raises(ValueError, match="NAME=METRICS_JSON"):
        reporting_main(["no-equals-sign"])


def test_reporting_aggregates_seeds_as_mean_and_sample_std(tmp_path, capsys):
    from stvg_data.reporting import main as reporting_main

    paths = []
    for seed, m_viou in enumerate((0.30, 0.32, 0.34)):
        path = tmp_path / f"s{seed}.json"
        path.write_text(json.dumps({"overall": {"m_tIoU": 0.5, "m_vIoU": m_viou, "vIoU@0.3": 0.4, "vIoU@0.5": 0.1}}))
        paths.append(str(path))
    assert reporting_main([f"full={','.join(paths)}"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    # m_vIoU: mean 32.00, sample std of (30, 32, 34) = 2.00
    assert "32.00 ± 2.00" in row and "50.00 ± 0.00" in row and row.endswith("n=3")
