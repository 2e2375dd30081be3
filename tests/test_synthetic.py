"""The synthetic STVG benchmark (dataset_scripts/synthetic.py): determinism, task properties the
issue asks for (distractors, partial spans, relations only true in their span, detector-like
proposals, colour/shape recoverable from the features), and the dataset contract."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stvg_data.dataset_folder import load_stvg_split, read_card_metadata  # noqa: E402
from stvg_data.evaluation import box_iou  # noqa: E402
from stvg_data.protocol import sample_frame_ids  # noqa: E402
from stvg_data.schema import validate_query_row, validate_video_row, video_features  # noqa: E402


def _load_module():
    spec = importlib.util.spec_from_file_location("stvg_synthetic", ROOT / "dataset_scripts" / "synthetic.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["stvg_synthetic"] = module
    spec.loader.exec_module(module)
    return module


S = _load_module()
TINY = ["--preset", "tiny", "--no-progress"]


def _build(path: Path, seed: int, *extra: str) -> dict:
    return S.main(["--output-dir", str(path), "--seed", str(seed), *TINY, *extra])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "seed3"
    summary = _build(path, 3)
    return path, summary


def _rows(dataset):
    return [dict(row) for row in dataset]


def test_dataset_loads_and_validates(built):
    path, summary = built
    meta = read_card_metadata(path)
    assert meta["label_names"] == S.SyntheticConfig().shapes == list(S.SHAPES[:5])
    assert not set(meta["label_names"]) & set(S.COLOURS), "class labels must name shapes only, never colours"
    features = video_features(meta["num_regions"], meta["region_dim"], meta["frame_dim"])
    for split in ("train", "validation", "test"):
        data = load_stvg_split(path, split)
        videos, queries = _rows(data.videos), _rows(data.queries)
        assert len(queries) == summary["splits"][split]["queries"] > 0
        for row in videos:
            validate_video_row(row, features)
            begin, end = row["segment"]
            assert row["frame_ids"] == sample_frame_ids(begin, end, row["fps"])
            assert row["fps"] == 30.0 and np.shape(row["region_features"])[1:] == (10, meta["region_dim"])
        for row in queries:
            validate_query_row(row)
            video = data.video_row(row["video_id"])
            inside = [f for f in video["frame_ids"] if row["gt_sted"][0] <= f < row["gt_sted"][1]]
            assert row["gt_frame_ids"] == inside, "GT boxes must cover exactly the sampled frames inside gt_sted"
            assert row["gt_sted"][0] in video["frame_ids"]


def test_same_seed_same_rows_and_other_seed_differs(built, tmp_path):
    path, _ = built
    again = tmp_path / "again"
    _build(again, 3)
    for split in ("train", "test"):
        a, b = load_stvg_split(path, split), load_stvg_split(again, split)
        assert _rows(a.queries) == _rows(b.queries)
        assert len(a.videos) == len(b.videos) > 0
        for row_a, row_b in zip(_rows(a.videos), _rows(b.videos)):
            for key, value in row_a.items():
                assert np.array_equal(np.asarray(value), np.asarray(row_b[key])), key
    other = tmp_path / "other"
    _build(other, 4)
    a, c = load_stvg_split(path, "train"), load_stvg_split(other, "train")
    assert [r["sentence"] for r in a.queries] != [r["sentence"] for r in c.queries]
    assert not np.array_equal(np.asarray(a.videos[0]["boxes"]), np.asarray(c.videos[0]["boxes"]))


def test_summary_rates_and_spans(built):
    path, summary = built
    assert summary["distractor_rate"] >= 0.5
    assert all(info["distractor_rate"] >= 0.5 for info in summary["splits"].values())
    for split in ("train", "validation", "test"):
        data = load_stvg_split(path, split)
        segments = {row["video_id"]: row["segment"] for row in data.videos}
        for row in data.queries:
            begin, end = segments[row["video_id"]]
            fraction = (row["gt_sted"][1] - row["gt_sted"][0]) / (end - begin)
            assert 0.2 <= fraction <= 0.7, (row["query_id"], fraction)
    stored = read_card_metadata(path)["synthetic"]["summary"]
    assert stored["distractor_rate"] == pytest.approx(summary["distractor_rate"])
    assert 0.2 <= summary["span_fraction_min"] <= summary["span_fraction_mean"] <= summary["span_fraction_max"] <= 0.7


def test_vocabulary_sizes():
    cfg = S.SyntheticConfig()
    motion = [r for r in cfg.relations if not S.RELATIONS[r][2]]
    spatial = [r for r in cfg.relations if S.RELATIONS[r][2]]
    assert len(motion) >= 6 and len(spatial) >= 2
    assert len(cfg.shapes) >= 4 and len(cfg.colours) >= 5
    relations, flagged, counts = S._split_plan(cfg, "train", 1500)
    assert set(relations) == set(cfg.relations)
    assert np.mean(flagged) >= 0.5 and sum(counts) == 1500


def _clip(relation: str, index: int, clones: bool = True, cfg=None):
    cfg = cfg or S.SyntheticConfig()
    return S.make_clip(np.random.default_rng([11, index]), cfg, relation, clones, f"c{index}"), cfg


@pytest.mark.parametrize("relation", list(S.RELATIONS))
def test_relation_true_only_in_span(relation):
    for index in range(3):
        clip, cfg = _clip(relation, index)
        start, length = clip["span"]
        boxes = clip["true_boxes"]
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        subject, obj = centre[:, 0], centre[:, 1]
        inside = np.zeros(len(boxes), dtype=bool)
        inside[start:start + length] = True
        short = min(cfg.width, cfg.height)
        if relation in S.SPATIAL_DIRECTIONS:
            truth = S.spatial_relation_holds(boxes[:, 0], boxes[:, 1], relation)
            assert np.array_equal(truth, inside)
            continue
        # Motion relations: nothing but wobble outside the span.
        steps = np.linalg.norm(np.diff(centre[:, :2], axis=0), axis=-1)  # (T-1, 2)
        outside_steps = ~(inside[1:] | inside[:-1])
        assert (steps[outside_steps] <= 4 * cfg.wobble_px + 1e-6).all()
        s, e = start, start + length - 1
        distance = np.linalg.norm(subject - obj, axis=-1)
        moved_s = np.linalg.norm(subject[e] - subject[s])
        moved_o = np.linalg.norm(obj[e] - obj[s])
        if relation == "chases":
            direction_s, direction_o = subject[e] - subject[s], obj[e] - obj[s]
            cosine = direction_s @ direction_o / (np.linalg.norm(direction_s) * np.linalg.norm(direction_o))
            assert moved_o > 0.25 * short and cosine > 0.9 and distance[e] < distance[s] - 0.3 * cfg.min_size
        elif relation == "approaches":
            assert moved_o < 6 * cfg.wobble_px and distance[e] < distance[s] - 0.2 * short
        elif relation == "moves away from":
            assert moved_o < 6 * cfg.wobble_px and distance[e] > distance[s] + 0.2 * short
        elif relation == "circles around":
            angle = np.unwrap(np.arctan2(*(subject - obj)[s:e + 1].T[::-1]))
            assert abs(angle[-1] - angle[0]) > 1.3 * np.pi
        elif relation == "jumps over":
            dx = subject[:, 0] - obj[:, 0]
            assert np.sign(dx[s]) != np.sign(dx[e])
            top = np.argmin(subject[s:e + 1, 1]) + s
            assert boxes[top, 0, 3] <= boxes[top, 1, 1] + 2.0, "the jumper passes above the object"
        elif relation == "pushes":
            gap = np.maximum(boxes[s:e + 1, 0, :2] - boxes[s:e + 1, 1, 2:], boxes[s:e + 1, 1, :2] - boxes[s:e + 1, 0, 2:])
            assert (gap.max(axis=-1) <= 1.0).all(), "pusher stays in contact"
            assert moved_o > 0.25 * short and moved_s > 0.25 * short


def test_clones_and_ground_truth_boxes():
    cfg = S.SyntheticConfig()
    with_distractor = 0
    for index, relation in enumerate(cfg.relations):
        clip, _ = _clip(relation, 100 + index, clones=index % 2 == 0)
        descs, roles = clip["descs"], clip["roles"]
        frames, boxes = clip["frames"], clip["true_boxes"]
        start, length = clip["span"]
        for query in clip["queries"]:
            target = 0 if query["target_role"] == "subject" else 1
            assert np.allclose(query["gt_boxes"], boxes[start:start + length, target], atol=1e-3)
            clones = [j for j in range(2, len(descs)) if descs[j] == descs[target]]
            assert query["has_distractor"] == bool(clones) == (index % 2 == 0)
            assert all(roles[j].startswith("clone") for j in clones)
            with_distractor += query["has_distractor"]
        # The rendered pixel at each participant's box centre has its colour (unless occluded).
        centre = ((boxes[..., :2] + boxes[..., 2:]) / 2).astype(int)
        for j in (0, 1):
            pixels = frames[np.arange(len(frames)), centre[:, j, 1], centre[:, j, 0]].astype(float)
            close = np.abs(pixels - np.array(S.COLOURS[descs[j][1]])).max(axis=1) < 45
            assert close.mean() > 0.7
    assert with_distractor > 0


def test_sentences_and_parse():
    q = S.make_query("declarative", "chases", "red circle", "blue square")
    assert q["sentence"] == "the red circle chases the blue square." and q["qtype"] == "declarative"
    assert q["entities"] == ["the red circle", "the blue square"] and q["target"] == 0
    assert q["relations"] == [{"subject": 0, "predicate": "chases", "object": 1}]
    q = S.make_query("which-subject", "jumps over", "red circle", "blue square")
    assert q["sentence"] == "which red circle jumps over the blue square?" and q["target"] == 0
    q = S.make_query("which-object", "chases", "red circle", "blue square")
    assert q["sentence"] == "which blue square does the red circle chase?"
    assert q["entities"] == ["which blue square", "the red circle"] and q["target"] == 0
    assert q["relations"] == [{"subject": 1, "predicate": "chase", "object": 0}] and q["qtype"] == "interrogative"
    q = S.make_query("what-object", "is to the left of", "red circle", "blue square")
    assert q["sentence"] == "what is the red circle to the left of?" and q["entities"] == ["what", "the red circle"]
    assert q["relations"][0]["predicate"] == "is to the left of" and q["target"] == 0


def test_proposals_look_like_a_detector():
    cfg = S.SyntheticConfig()
    ious, sorted_frames, frames, wrong, labelled, slots = [], 0, 0, 0, 0, []
    for index in range(12):
        clip, _ = _clip(cfg.relations[index % len(cfg.relations)], 200 + index)
        p, truth = clip["proposals"], clip["true_boxes"]
        assert p["boxes"].shape == (len(clip["frame_ids"]), 10, 4) and p["box_labels"].shape[1] == 10
        assert (p["box_labels"] >= 0).all() and (p["box_labels"] < len(cfg.shapes)).all()
        src = p["source"]
        tight = src >= 0
        matched = np.take_along_axis(truth, np.maximum(src, 0)[..., None], axis=1)
        iou = box_iou(p["boxes"], matched)
        best = np.where(tight, iou, 0).max(axis=1)  # best proposal of any object per frame
        ious.append(iou[tight])
        assert (best > 0.5).all()
        shape_ids = np.array([cfg.shapes.index(d[0]) for d in clip["descs"]])
        true_label = shape_ids[np.maximum(src, 0)]
        wrong += int(((p["box_labels"] != true_label) & tight).sum())
        labelled += int(tight.sum())
        scores = p["box_scores"]
        sorted_frames += int((np.diff(scores, axis=1) <= 0).all(axis=1).sum())
        frames += len(scores)
        slots.append(np.argmax(np.where(src == 0, iou, -1), axis=1))
    ious = np.concatenate(ious)
    in_range = ((ious >= 0.6) & (ious <= 0.95)).mean()
    assert in_range >= 0.75, in_range
    assert sorted_frames / frames < 0.05, "proposal order must be shuffled per frame"
    assert len(np.unique(np.concatenate(slots))) >= 8, "an object's proposal moves between slots"
    assert 0.03 < wrong / labelled < 0.3, "labels carry noise but mostly name the shape"


def test_features_carry_colour_and_shape():
    cfg = S.SyntheticConfig()
    extractor = S.build_feature_extractor(cfg)
    clips = [_clip(cfg.relations[i % len(cfg.relations)], 300 + i)[0] for i in range(16)]
    feats, colour, shape, clip_index = [], [], [], []
    for i, clip in enumerate(clips):
        p = clip["proposals"]
        out = extractor.extract(clip["frames"], boxes=p["boxes"], box_scores=p["box_scores"], box_labels=p["box_labels"])
        assert out["region_features"].shape == (len(clip["frame_ids"]), 10, extractor.region_dim)
        assert out["frame_features"].shape == (len(clip["frame_ids"]), extractor.frame_dim)
        keep = p["source"] >= 0
        descs = clip["descs"]
        feats.append(out["region_features"][keep].astype(np.float16).astype(np.float32))  # as stored
        colour.append(np.array([cfg.colours.index(descs[j][1]) for j in p["source"][keep]]))
        shape.append(np.array([cfg.shapes.index(descs[j][0]) for j in p["source"][keep]]))
        clip_index.append(np.full(keep.sum(), i))
    x, colour, shape, clip_index = map(np.concatenate, (feats, colour, shape, clip_index))
    train, test = clip_index < 10, clip_index >= 10
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mean) / std

    def centroid_accuracy(labels):
        classes = np.unique(labels[train])
        centroids = np.stack([z[train & (labels == k)].mean(0) for k in classes])
        pred = classes[((z[test][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
        return (pred == labels[test]).mean()

    def ridge_accuracy(labels, classes):
        onehot = np.eye(classes)[labels[train]]
        a = np.c_[z[train], np.ones(train.sum())]
        w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ onehot)
        return (np.argmax(np.c_[z[test], np.ones(test.sum())] @ w, 1) == labels[test]).mean()

    assert centroid_accuracy(colour) > 0.9  # chance 0.2
    assert ridge_accuracy(shape, len(cfg.shapes)) > 0.4  # chance 0.2 (measured 0.55 with this little data)


def test_cli_rejects_bad_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="unknown colour"):
        S.main(["--output-dir", str(tmp_path / "x"), "--colours", "red", "mauve", *TINY])


# ---------------------------------------------------------------------------------------- output folder, Hub
SMALL = ["--num-train", "8", "--num-val", "4", "--num-test", "4", "--clips-per-shard", "1"]


def _shards(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*.parquet"))


def test_rebuild_refuses_a_non_empty_folder_and_overwrite_leaves_no_stale_shard(built, tmp_path):
    from dataset_scripts.extract import ConversionError

    out = tmp_path / "ds"
    shutil.copytree(built[0], out)
    stale = out / "videos" / "train-00099.parquet"  # a shard only an earlier, bigger build had
    shutil.copy(out / "videos" / "train-00000.parquet", stale)
    before = _shards(out)
    with pytest.raises(ConversionError, match="not empty.*--overwrite"):
        _build(out, 5, *SMALL)
    assert _shards(out) == before, "a refused build must not touch the folder"

    summary = _build(out, 5, *SMALL, "--overwrite")
    assert not stale.exists()
    assert _shards(out) == sorted(f"{config}/{split}-{k:05d}.parquet" for config in ("queries", "videos")
                                  for split, n in (("train", 2), ("validation", 1), ("test", 1)) for k in range(n))
    assert len(load_stvg_split(out, "train").queries) == summary["splits"]["train"]["queries"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"], "no staging or old folder left beside it"


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    from dataset_scripts.extract import ConversionError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="notes.txt.*new --output-dir"):
        _build(tmp_path, 0, "--overwrite")
    assert S.check_output_dir(tmp_path / "new") == tmp_path / "new"  # a new folder is fine, empty too
    (tmp_path / "empty").mkdir()
    S.check_output_dir(tmp_path / "empty")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_push_to_hub_flag_uses_the_shared_push_and_a_fake_hub(tmp_path):
    from unittest import mock

    from huggingface_hub import HfApi

    out = tmp_path / "ds"
    with mock.patch.object(HfApi, "create_repo") as create_repo, mock.patch.object(HfApi, "create_commit") as create_commit:
        _build(out, 0, *SMALL, "--push-to-hub", "someone/synthetic-stvg", "--private")
    create_repo.assert_called_once()
    assert create_repo.call_args.args[0] == "someone/synthetic-stvg"
    assert create_repo.call_args.kwargs["repo_type"] == "dataset" and create_repo.call_args.kwargs["private"] is True
    kwargs = create_commit.call_args.kwargs
    assert kwargs["repo_type"] == "dataset" and kwargs["repo_id"] == "someone/synthetic-stvg"
    assert sorted(op.path_in_repo for op in kwargs["operations"]) == ["README.md", *_shards(out)]
    assert read_card_metadata(out)["source"] == "synthetic"
