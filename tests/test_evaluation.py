"""Protocol ``tubedetr`` metrics (DESIGN section 6): hand-computed cases, predictions I/O and its
errors, the evaluation CLI, and schema errors of hand-written dataset shards."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from _evaluation_data import REGION_DIM, REGIONS, query_row, video_row, write_dataset

import evaluate_stvg
from stvg_data.dataset_folder import load_stvg_split, shard_path
from stvg_data.evaluation import (
    GroundTruth,
    MissingGroundTruthError,
    PredictionsError,
    QueryScore,
    box_iou,
    evaluate,
    load_predictions,
    make_prediction,
    parse_predictions,
    save_predictions,
    summarize,
    temporal_iou,
    validate_predictions,
    video_iou,
)
from stvg_data.protocol import sample_frame_ids
from stvg_data.schema import DatasetSchemaError

G = [10.0, 10.0, 30.0, 30.0]  # the ground-truth box of most cases (area 400)
FRAMES = [0, 6, 12, 18, 24, 30]  # sample_frame_ids(0, 36, 30.0)


# ---------------------------------------------------------------------------------------------
# Box IoU and tIoU, by hand
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175),  # overlap 5x5, union 100 + 100 - 25
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # apart
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # sharing an edge: zero area in common
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),  # inside
        ([0, 0, 1, 1], [0, 0, 2, 1], 0.5),  # continuous pixels: with "+1" it would be 4/6
        ([5, 5, 5, 5], [5, 5, 5, 5], 0.0),  # two empty boxes
        ([10, 10, 30, 30], [20, 10, 40, 30], 200 / 600),
    ],
)
def test_box_iou_hand_values(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert box_iou(b, a) == pytest.approx(expected, abs=1e-12)


def test_box_iou_is_vectorised_and_broadcasts():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(box_iou(boxes, [0, 0, 10, 10]), [1.0, 25 / 175, 0.0])
    pairwise = box_iou(boxes[:, None, :], boxes[None, :, :])
    assert pairwise.shape == (3, 3)
    np.testing.assert_allclose(np.diag(pairwise), 1.0)
    with pytest.raises(ValueError, match="last dimension of 4"):
        box_iou([0, 0, 1], [0, 0, 1, 1])


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ((0, 10), (20, 30), 0.0),  # no overlap
        ((0, 10), (10, 20), 0.0),  # touching: exclusive ends share no frame
        ((0, 11), (10, 20), 1 / 20),  # one shared frame (frame 10)
        ((12, 18), (10, 20), 6 / 10),  # prediction inside the GT
        ((0, 40), (10, 20), 10 / 40),  # prediction around (outside) the GT
        ((0, 15), (10, 20), 5 / 20),  # partial
        ((10, 20), (10, 20), 1.0),
    ],
)
def test_temporal_iou_hand_values(pred, gt, expected):
    assert temporal_iou(pred, gt) == pytest.approx(expected)
    assert temporal_iou(gt, pred) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# vIoU of one query, by hand
# ---------------------------------------------------------------------------------------------


def test_viou_partial_overlap_hand_value():
    # GT [6, 25): sampled 6 12 18 24; prediction [12, 31): sampled 12 18 24 30.
    # Intersection {12, 18, 24}: IoU 1, 1/3, 1/2. Union {6, 12, 18, 24, 30}: 5 frames.
    pred = {12: G, 18: [20, 10, 40, 30], 24: [10, 10, 30, 50], 30: [0, 0, 5, 5]}
    viou, missing = video_iou(
        FRAMES, (12, 31), list(pred), list(pred.values()), (6, 25), [6, 12, 18, 24], [G] * 4
    )
    assert viou == pytest.approx((1 + 1 / 3 + 1 / 2) / 5)
    assert missing == 0


def test_viou_prediction_inside_and_around_the_gt():
    # inside: GT is the whole clip (6 sampled frames), prediction [12, 24) has 2 perfect boxes -> 2/6
    viou, _ = video_iou(FRAMES, (12, 24), [12, 18], [G, G], (0, 36), FRAMES, [G] * 6)
    assert viou == pytest.approx(2 / 6)
    # around: prediction is the whole clip with perfect boxes, GT [12, 24) -> 2/6 as well
    viou, _ = video_iou(FRAMES, (0, 36), FRAMES, [G] * 6, (12, 24), [12, 18], [G, G])
    assert viou == pytest.approx(2 / 6)


def test_viou_no_overlap_and_touching_spans_are_zero():
    assert video_iou(FRAMES, (0, 12), [0, 6], [G, G], (24, 36), [24, 30], [G, G])[0] == 0.0
    assert video_iou(FRAMES, (0, 12), [0, 6], [G, G], (12, 24), [12, 18], [G, G])[0] == 0.0


def test_viou_ignores_boxes_on_unsampled_frames_and_counts_sampled_frames_only():
    # Prediction [0, 13) covers sampled frames 0, 6, 12; the boxes on frames 1 and 7 are ignored.
    pred = {0: G, 1: [0, 0, 1, 1], 6: G, 7: [0, 0, 1, 1], 12: G}
    viou, _ = video_iou(FRAMES, (0, 13), list(pred), list(pred.values()), (6, 19), [6, 12, 18], [G] * 3)
    assert viou == pytest.approx(2 / 4)  # intersection {6, 12}; union {0, 6, 12, 18}


def test_gt_frame_without_box_counts_zero_but_stays_in_the_union():
    viou, missing = video_iou(FRAMES, (6, 25), [6, 12, 18, 24], [G] * 4, (6, 25), [6, 12], [G, G])
    assert viou == pytest.approx(2 / 4) and missing == 2


def test_viou_exactly_at_threshold_is_not_counted():
    # union {0, 6}, intersection {0, 6}: IoU 1 on frame 0 and 0 on frame 6 -> exactly 0.5
    viou, _ = video_iou(FRAMES, (0, 12), [0, 6], [G, [30, 30, 50, 50]], (0, 12), [0, 6], [G, G])
    assert viou == 0.5
    metrics = summarize([QueryScore("q", "declarative", 1.0, viou)])
    assert metrics["overall"]["vIoU@0.5"] == 0.0 and metrics["overall"]["vIoU@0.3"] == 1.0
    assert metrics["overall"]["m_vIoU"] == 0.5


def test_clip_longer_than_200_sampled_frames():
    # 5 fps source sampled at 5 fps: [0, 450) keeps all 450 frames, so the protocol keeps positions
    # floor(j * 450 / 200) = floor(2.25 j): 0 2 4 6 9 11 13 15 18 ...
    frames = sample_frame_ids(0, 450, 5.0)
    assert len(frames) == 200 and frames[:9] == [0, 2, 4, 6, 9, 11, 13, 15, 18] and frames[-1] == 447
    gt = [f for f in frames if 100 <= f < 200]
    pred = [f for f in frames if 150 <= f < 250]
    # sampled frames in [150, 200): j = 67..88 -> 22; in [100, 250): j = 45..111 -> 67
    assert len(set(gt) & set(pred)) == 22 and len(set(gt) | set(pred)) == 67
    viou, _ = video_iou(frames, (150, 250), pred, [G] * len(pred), (100, 200), gt, [G] * len(gt))
    assert viou == pytest.approx(22 / 67)
    assert temporal_iou((150, 250), (100, 200)) == pytest.approx(50 / 150)


# ---------------------------------------------------------------------------------------------
# A whole split, through the dataset folder
# ---------------------------------------------------------------------------------------------


def three_query_dataset(root, with_interrogative=True):
    videos = [video_row("c0", FRAMES, (0, 36), fps=30.0)]
    queries = [
        query_row("d1", "c0", (6, 25), {6: G, 12: G, 18: G, 24: G}),
        query_row("d2", "c0", (0, 12), {0: G, 6: G}),
    ]
    if with_interrogative:
        queries.append(query_row("i1", "c0", (24, 36), {24: G, 30: G}, qtype="interrogative"))
    return write_dataset(root, videos, queries)


PREDICTIONS = [
    {"query_id": "d1", "sted": [12, 31], "boxes": {"12": G, "18": [20, 10, 40, 30], "24": [10, 10, 30, 50], "30": [0, 0, 5, 5]}},
    {"query_id": "d2", "sted": [0, 12], "boxes": {"0": G, "6": [30, 30, 50, 50]}},
    {"query_id": "i1", "sted": [0, 12], "boxes": {"0": G, "6": G}},
]


def test_split_metrics_by_hand_with_qtype_blocks(tmp_path):
    split = load_stvg_split(three_query_dataset(tmp_path / "data"), "test")
    metrics = evaluate(split, PREDICTIONS)
    # d1: tIoU 13/25, vIoU 11/30; d2: tIoU 1, vIoU 0.5 exactly; i1: no overlap -> 0, 0
    assert metrics["protocol"] == "tubedetr" and metrics["num_queries"] == 3
    overall, declarative, interrogative = metrics["overall"], metrics["declarative"], metrics["interrogative"]
    assert overall["m_tIoU"] == pytest.approx((13 / 25 + 1 + 0) / 3)
    assert overall["m_vIoU"] == pytest.approx((11 / 30 + 0.5 + 0) / 3)
    assert overall["vIoU@0.3"] == pytest.approx(2 / 3) and overall["vIoU@0.5"] == 0.0
    assert declarative["m_tIoU"] == pytest.approx((13 / 25 + 1) / 2)
    assert declarative["m_vIoU"] == pytest.approx((11 / 30 + 0.5) / 2)
    assert declarative["vIoU@0.3"] == 1.0 and declarative["num_queries"] == 2
    assert interrogative == {"m_tIoU": 0.0, "m_vIoU": 0.0, "vIoU@0.3": 0.0, "vIoU@0.5": 0.0, "num_queries": 1}


def test_block_without_queries_is_omitted(tmp_path):
    split = load_stvg_split(three_query_dataset(tmp_path / "data", with_interrogative=False), "test")
    metrics = evaluate(split, PREDICTIONS[:2])
    assert set(metrics) == {"protocol", "num_queries", "overall", "declarative"}
    assert metrics["overall"] == metrics["declarative"]


def test_missing_gt_box_warns(tmp_path, caplog):
    root = write_dataset(tmp_path / "data", [video_row("c0", FRAMES, (0, 36), fps=30.0)],
                         [query_row("q", "c0", (6, 25), {6: G, 12: G})])
    records = [{"query_id": "q", "sted": [6, 25], "boxes": {str(f): G for f in (6, 12, 18, 24)}}]
    with caplog.at_level(logging.WARNING, logger="stvg_data.evaluation"):
        metrics = evaluate(load_stvg_split(root, "test"), records)
    assert metrics["overall"]["m_vIoU"] == pytest.approx(0.5)
    assert "2 sampled frame(s) inside gt_sted of 1 query(ies) have no ground-truth box" in caplog.text


def test_split_without_gt_boxes_refuses_unless_temporal_only(tmp_path):
    root = write_dataset(tmp_path / "data", [video_row("c0", FRAMES, (0, 36), fps=30.0)],
                         [query_row("q1", "c0", (6, 25)), query_row("q2", "c0", (0, 12), qtype="interrogative")])
    split = load_stvg_split(root, "test")
    records = [{"query_id": "q1", "sted": [0, 25]}, {"query_id": "q2", "sted": [0, 12], "boxes": {}}]
    with pytest.raises(MissingGroundTruthError, match="no ground-truth boxes.*--temporal-only"):
        evaluate(split, records)
    metrics = evaluate(split, records, temporal_only=True)  # boxes are not needed for time spans
    assert metrics["temporal_only"] is True
    assert metrics["overall"]["m_tIoU"] == pytest.approx((19 / 25 + 1) / 2)
    assert metrics["overall"]["m_vIoU"] is None and metrics["declarative"]["vIoU@0.5"] is None


def test_gt_box_on_an_unsampled_frame_is_a_schema_error():
    with pytest.raises(DatasetSchemaError, match=r"query 'q'.*frame\(s\) \[7\].*not sampled"):
        GroundTruth.from_rows([query_row("q", "c0", (6, 25), {6: G, 7: G})], [{"video_id": "c0", "frame_ids": FRAMES}])


# ---------------------------------------------------------------------------------------------
# Bad predictions: a clear error naming the query
# ---------------------------------------------------------------------------------------------


def truth():
    return GroundTruth.from_rows(
        [query_row("d1", "c0", (6, 25), {6: G, 12: G, 18: G, 24: G}), query_row("d2", "c0", (0, 12), {0: G, 6: G})],
        [{"video_id": "c0", "frame_ids": FRAMES}],
    )


def test_missing_query_is_named():
    with pytest.raises(PredictionsError, match=r"1 query\(ies\) of the split have no prediction: 'd2'"):
        validate_predictions(truth(), parse_predictions(PREDICTIONS[:1]))


def test_unknown_query_is_named():
    extra = PREDICTIONS[:2] + [{"query_id": "nope", "sted": [0, 6], "boxes": {"0": G}}]
    with pytest.raises(PredictionsError, match="unknown query id.*'nope'"):
        validate_predictions(truth(), parse_predictions(extra))


def test_missing_box_inside_own_span_is_named():
    records = [dict(PREDICTIONS[0], boxes={"12": G, "24": G, "30": G}), PREDICTIONS[1]]
    with pytest.raises(PredictionsError, match=r"query 'd1': no predicted box for sampled frame\(s\) \[18\]"):
        validate_predictions(truth(), parse_predictions(records))
    with pytest.raises(PredictionsError, match="query 'd1'"):
        evaluate(truth(), records)


@pytest.mark.parametrize("sted", [[20, 10], [10, 10]])
def test_end_before_start_is_named(sted):
    with pytest.raises(PredictionsError, match=rf"query 'd1': predicted span end {sted[1]} is not after its start"):
        parse_predictions([{"query_id": "d1", "sted": sted, "boxes": {}}])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"query_id": "d1", "sted": [0]}, "query 'd1': 'sted' must be"),
        ({"query_id": "d1", "sted": [0, "x"]}, "query 'd1': sted end must be an integer"),
        ({"query_id": "d1", "sted": [0, 6], "boxes": {"zero": G}}, "query 'd1': box key must be an integer"),
        ({"query_id": "d1", "sted": [0, 6], "boxes": {"0": [1, 2, 3]}}, "query 'd1': boxes must be lists of 4"),
        ({"query_id": "d1", "sted": [0, 6], "boxes": {"0": [5, 0, 1, 4]}}, "query 'd1': box of frame 0 has x2 < x1"),
        ({"query_id": "d1", "sted": [0, 6], "boxes": {"0": [0, 0, float("nan"), 4]}}, "NaN"),
        ({"sted": [0, 6]}, "entry #0 has no 'query_id'"),
        ({"query_id": "d1"}, "query 'd1' has no 'sted'"),
    ],
)
def test_malformed_records_are_named(record, message):
    with pytest.raises(PredictionsError, match=message):
        parse_predictions([record])


def test_duplicate_query_is_named():
    with pytest.raises(PredictionsError, match="query 'd1' is predicted more than once"):
        parse_predictions([PREDICTIONS[0], PREDICTIONS[0]])


def test_malformed_json_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"query_id": "d1", "sted": [0, 6],,]')
    with pytest.raises(PredictionsError, match=r"p.json: malformed JSON .* line 1, column"):
        load_predictions(path)
    path.write_text('{"query_id": "d1"}')
    with pytest.raises(PredictionsError, match="expected a JSON list"):
        load_predictions(path)
    with pytest.raises(PredictionsError, match="not found"):
        load_predictions(tmp_path / "absent.json")


def test_predictions_round_trip(tmp_path):
    parsed = parse_predictions(PREDICTIONS)
    path = save_predictions(parsed, tmp_path / "out" / "predictions.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(PREDICTIONS))
    again = load_predictions(path)
    assert list(again) == ["d1", "d2", "i1"] and again["d1"].sted == (12, 31)
    np.testing.assert_array_equal(again["d1"].frame_ids, [12, 18, 24, 30])
    assert not list(tmp_path.rglob("*.tmp"))
    # int keys (as post-processing returns them) are accepted too
    assert make_prediction("x", (0, 6), {0: G}).box_map() == {0: G}


# ---------------------------------------------------------------------------------------------
# The CLI, in-process
# ---------------------------------------------------------------------------------------------


def test_cli_with_predictions_file(tmp_path, capsys):
    data = three_query_dataset(tmp_path / "data")
    (tmp_path / "p.json").write_text(json.dumps(PREDICTIONS))
    out = tmp_path / "eval"
    argv = ["--dataset", str(data), "--split", "test", "--output-dir", str(out), "--predictions", str(tmp_path / "p.json"),
            "--no-progress"]
    assert evaluate_stvg.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["m_vIoU"] == pytest.approx((11 / 30 + 0.5) / 3)
    assert json.loads((out / "predictions.json").read_text())[0]["query_id"] == "d1"
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("overall"))
    # percentages: m_tIoU 50.67, m_vIoU 28.89, vIoU@0.3 66.67, vIoU@0.5 0.00
    assert row.split()[1:] == ["3", "50.67", "28.89", "66.67", "0.00"]
    assert any(line.startswith("interrogative") for line in printed.splitlines())


def test_cli_refuses_bad_predictions_without_writing(tmp_path, capsys):
    data = three_query_dataset(tmp_path / "data")
    (tmp_path / "p.json").write_text(json.dumps(PREDICTIONS[:2]))
    out = tmp_path / "eval"
    argv = ["--dataset", str(data), "--split", "test", "--output-dir", str(out), "--predictions", str(tmp_path / "p.json")]
    assert evaluate_stvg.main(argv) == 2
    assert "'i1'" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_cli_model_folder_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    data = three_query_dataset(tmp_path / "data")
    argv = ["--dataset", str(data), "--split", "test", "--output-dir", str(tmp_path / "e"), "--model", str(tmp_path)]
    assert evaluate_stvg.main(argv) == 2
    assert "--model" in (err := capsys.readouterr().err) and "no config.json" in err  # tests/test_evaluate_model.py
    with pytest.raises(SystemExit):  # exactly one source is required
        evaluate_stvg.main(["--dataset", str(data), "--split", "test", "--output-dir", str(tmp_path / "e")])


# ---------------------------------------------------------------------------------------------
# Hand-written shards that break the contract -> DatasetSchemaError from load_stvg_split
# ---------------------------------------------------------------------------------------------


def two_split_dataset(root):
    videos = [video_row("c0", FRAMES, (0, 36), fps=30.0), video_row("c1", FRAMES, (0, 36), fps=30.0)]
    queries = [query_row("d1", "c0", (6, 25), {6: G}), query_row("d2", "c1", (0, 12), {0: G})]
    write_dataset(root, videos, queries, split="train")
    return write_dataset(root, videos, queries, split="test")


@pytest.mark.parametrize("splits", [("test",), ("train", "test")], ids=["one-split", "every-split"])
@pytest.mark.parametrize("config", ["videos", "queries"])
def test_shard_missing_a_column(tmp_path, splits, config):
    root = two_split_dataset(tmp_path / "data")
    column = "box_scores" if config == "videos" else "gt_boxes"
    for split in splits:
        path = shard_path(root, config, split, 0)
        table = pq.read_table(path).drop_columns([column]).replace_schema_metadata(None)
        pq.write_table(table, path)
    with pytest.raises(DatasetSchemaError, match=f"{config}/test.*{column}"):
        load_stvg_split(root, "test")


@pytest.mark.parametrize("splits", [("test",), ("train", "test")], ids=["one-split", "every-split"])
@pytest.mark.parametrize(("column", "shape"), [("boxes", (REGIONS, 5)), ("region_features", (REGIONS, REGION_DIM + 2))])
def test_shard_with_a_wrong_shape(tmp_path, splits, column, shape):
    import datasets

    from stvg_data.schema import video_features

    root = two_split_dataset(tmp_path / "data")
    features = video_features(REGIONS, REGION_DIM, 2)
    dtype = "float32" if column == "boxes" else "float16"
    features[column] = datasets.Array3D(shape=(None, *shape), dtype=dtype)
    rows = [video_row("c0", FRAMES, (0, 36), fps=30.0), video_row("c1", FRAMES, (0, 36), fps=30.0)]
    for row in rows:
        row[column] = np.zeros((len(FRAMES), *shape), dtype)
    for split in splits:
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(shard_path(root, "videos", split, 0)))
    with pytest.raises(DatasetSchemaError, match=f"videos/test.*{column}"):
        load_stvg_split(root, "test")


def test_query_shard_with_a_wrong_box_length(tmp_path):
    import datasets

    from stvg_data.schema import QUERY_FEATURES

    root = two_split_dataset(tmp_path / "data")
    features = QUERY_FEATURES.copy()
    features["gt_boxes"] = datasets.List(datasets.List(datasets.Value("float32"), length=5))
    rows = [query_row("d1", "c0", (6, 25)), query_row("d2", "c1", (0, 12))]
    rows[0]["gt_frame_ids"], rows[0]["gt_boxes"] = [6], [[1, 2, 3, 4, 5]]
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(shard_path(root, "queries", "test", 0)))
    with pytest.raises(DatasetSchemaError, match="queries/test"):
        load_stvg_split(root, "test")


def test_rebuilt_or_same_named_folder_is_not_served_from_a_stale_cache(tmp_path):
    # datasets 5.2 keys the cache of a folder loaded by path on its basename and YAML configs only;
    # load_stvg_split must still see a folder rebuilt in place and a different folder of the same name.
    import shutil

    first = write_dataset(tmp_path / "a" / "data", [video_row("c0", FRAMES, (0, 36), fps=30.0)],
                          [query_row("q1", "c0", (6, 25), {6: G}), query_row("q2", "c0", (6, 25), {6: G})])
    assert load_stvg_split(first, "test").queries["query_id"][:] == ["q1", "q2"]
    other = write_dataset(tmp_path / "b" / "data", [video_row("c0", FRAMES, (0, 36), fps=30.0)],
                          [query_row("other", "c0", (6, 25), {6: G})])
    assert load_stvg_split(other, "test").queries["query_id"][:] == ["other"]
    shutil.rmtree(first)
    write_dataset(first, [video_row("c0", FRAMES, (0, 36), fps=30.0)], [query_row("new", "c0", (6, 25), {6: G})])
    assert load_stvg_split(first, "test").queries["query_id"][:] == ["new"]
