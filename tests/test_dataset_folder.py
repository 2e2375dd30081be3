"""The dataset contract as code: schema, row validation, atomic Hub-style folders, loading."""

from __future__ import annotations

import numpy as np
import pytest

from stvg_data.dataset_folder import (
    DatasetFolderWriter,
    default_metadata,
    load_stvg_split,
    read_card_metadata,
    shard_path,
    write_rows,
)
from stvg_data.schema import (
    QUERY_FEATURES,
    DatasetSchemaError,
    validate_query_row,
    validate_video_row,
    video_features,
)

REGIONS, REGION_DIM, FRAME_DIM = 10, 8, 6


def make_video_row(video_id: str = "clip0", frame_ids=(0, 6, 12), width: int = 64, height: int = 48) -> dict:
    num_frames = len(frame_ids)
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 20, size=(num_frames, REGIONS, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + 20], axis=-1)  # x1 y1 x2 y2, inside 64x48
    return {
        "video_id": video_id,
        "fps": 30.0,
        "width": width,
        "height": height,
        "frame_count": 30,
        "segment": [0, 30],
        "frame_ids": list(frame_ids),
        "boxes": boxes,
        "box_scores": rng.uniform(size=(num_frames, REGIONS)).astype(np.float32),
        "box_labels": np.zeros((num_frames, REGIONS), np.int32),
        "region_features": rng.normal(size=(num_frames, REGIONS, REGION_DIM)).astype(np.float16),
        "frame_features": rng.normal(size=(num_frames, FRAME_DIM)).astype(np.float16),
    }


def make_query_row(query_id: str = "q0", video_id: str = "clip0") -> dict:
    return {
        "query_id": query_id,
        "video_id": video_id,
        "sentence": "the red circle chases the blue square.",
        "qtype": "declarative",
        "entities": ["the red circle", "the blue square"],
        "relations": [{"subject": 0, "predicate": "chases", "object": 1}],
        "target": 0,
        "gt_sted": [6, 13],
        "gt_frame_ids": [6, 12],
        "gt_boxes": [[1.0, 2.0, 11.0, 12.0], [2.0, 3.0, 12.0, 13.0]],
    }


def build_folder(root, splits=("train", "test")) -> None:
    writer = DatasetFolderWriter(root)
    features = video_features(REGIONS, REGION_DIM, FRAME_DIM)
    for split in splits:
        write_rows(writer, "videos", split, [make_video_row(), make_video_row("clip1")], features, rows_per_shard=1)
        write_rows(writer, "queries", split, [make_query_row(), make_query_row("q1", "clip1")], QUERY_FEATURES, 10)
    writer.finalize(
        default_metadata(source="test", label_names=["circle"], num_regions=REGIONS, region_dim=REGION_DIM,
                         frame_dim=FRAME_DIM, with_features=True),
        description="# test dataset",
    )


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    build_folder(tmp_path)
    split = load_stvg_split(tmp_path, "test")
    assert split.videos.num_rows == 2 and split.queries.num_rows == 2
    assert split.metadata["region_dim"] == REGION_DIM and split.label_names == ["circle"]
    row = split.video_row("clip1")
    expected = make_video_row("clip1")
    np.testing.assert_array_equal(np.asarray(row["boxes"], np.float32), expected["boxes"])
    features = split.videos.with_format("torch", columns=["region_features"], dtype=None)[0]["region_features"]
    assert str(features.dtype) == "torch.float16"  # stored once, as float16
    assert split.queries[0]["relations"] == [{"subject": 0, "predicate": "chases", "object": 1}]
    # two shards of one row each, no temporary file left behind
    assert shard_path(tmp_path, "videos", "test", 1).is_file()
    assert not list(tmp_path.rglob("*.tmp"))
    assert shard_path(tmp_path, "videos", "test", 0).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "README.md").stat().st_mode & 0o777 == 0o644


def test_missing_split_and_missing_card_are_clear_errors(tmp_path):
    build_folder(tmp_path, splits=("test",))
    with pytest.raises(DatasetSchemaError, match="no split 'train'"):
        load_stvg_split(tmp_path, "train")
    (tmp_path / "README.md").unlink()
    with pytest.raises(DatasetSchemaError, match="no README.md"):
        read_card_metadata(tmp_path)


def test_resume_sees_finished_shards(tmp_path):
    writer = DatasetFolderWriter(tmp_path)
    assert not writer.shard_done("videos", "train", 0)
    writer.write_shard("videos", "train", 0, [make_video_row()], video_features(REGIONS, REGION_DIM, FRAME_DIM))
    assert writer.shard_done("videos", "train", 0) and not writer.shard_done("videos", "train", 1)


def test_failed_shard_write_leaves_nothing(tmp_path):
    writer = DatasetFolderWriter(tmp_path)
    bad = make_video_row()
    bad["region_features"] = "not an array"
    with pytest.raises(Exception):
        writer.write_shard("videos", "train", 0, [bad], video_features(REGIONS, REGION_DIM, FRAME_DIM))
    assert not writer.shard_done("videos", "train", 0)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(frame_ids=[0, 12, 6]), "strictly increasing"),
        (lambda r: r.update(frame_ids=[0, 6, 30]), "outside segment"),
        (lambda r: r.update(segment=[30, 30]), "not after its begin"),
        (lambda r: r["boxes"].__setitem__((0, 0, 2), 70.0), "outside the 64x48 frame"),
        (lambda r: r["boxes"].__setitem__((0, 0, 0), 50.0), "x2 < x1"),
        (lambda r: r.update(region_features=np.zeros((2, REGIONS, REGION_DIM), np.float16)), "region_features"),
        (lambda r: r.pop("frame_features"), "missing column"),
    ],
)
def test_bad_video_rows_name_the_clip(change, message):
    row = make_video_row("clip7")
    change(row)
    with pytest.raises(DatasetSchemaError, match=message) as error:
        validate_video_row(row, video_features(REGIONS, REGION_DIM, FRAME_DIM))
    assert "clip7" in str(error.value)


def test_padding_proposals_are_not_checked_against_the_frame():
    row = make_video_row()
    row["box_labels"][0, 0] = -1
    row["boxes"][0, 0] = [0, 0, 500, 500]
    validate_video_row(row, video_features(REGIONS, REGION_DIM, FRAME_DIM))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(target=2), "target 2"),
        (lambda r: r.update(relations=[{"subject": 0, "predicate": "x", "object": 5}]), "missing entity"),
        (lambda r: r.update(entities=[], target=0), "no entity phrase"),
        (lambda r: r.update(gt_sted=[10, 5]), "not after its start"),
        (lambda r: r.update(qtype="imperative"), "qtype"),
        (lambda r: r.update(gt_frame_ids=[6, 20]), "outside gt_sted"),
    ],
)
def test_bad_query_rows_name_the_query(change, message):
    row = make_query_row("q42")
    change(row)
    with pytest.raises(DatasetSchemaError, match=message) as error:
        validate_query_row(row)
    assert "q42" in str(error.value)


def test_no_features_layout_validates_without_feature_columns():
    row = {k: v for k, v in make_video_row().items() if k in video_features(with_features=False)}
    validate_video_row(row, video_features(with_features=False))
