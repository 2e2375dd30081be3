"""VidSTG converter: the real validation annotations, VidOR ground truth, malformed records, parser, Hub push."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import datasets
import numpy as np
import pytest

from dataset_scripts import vidstg
from dataset_scripts.extract import REPORT_FILE, ConversionError, push_to_hub
from stvg_data.dataset_folder import load_stvg_split, read_card_metadata
from stvg_data.protocol import sample_frame_ids
from stvg_data.schema import validate_query_row, validate_video_row, video_features


@pytest.fixture(scope="module")
def real_val(shared_dir: Path) -> list[dict]:
    path = shared_dir / "data" / "vidstg" / "val_annotations.json"
    if not path.is_file():
        pytest.skip(f"real VidSTG annotations not found at {path}")
    return json.loads(path.read_text())


def write_annotations(folder: Path, entries: list[dict], split: str = "val") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_annotations.json").write_text(json.dumps(entries))
    return folder


def convert(args: list[str]) -> int:
    return vidstg.main(args)


# ---------------------------------------------------------------------------------------------------
# The real validation split


def test_real_validation_split_converts_with_exact_counts(shared_dir: Path, tmp_path: Path, capsys) -> None:
    """The whole real val file (no features, annotation parser): exact counts, loadable, contract rows."""
    out = tmp_path / "vidstg"
    started = time.perf_counter()
    code = convert(["--annotations", str(shared_dir / "data" / "vidstg"), "--output-dir", str(out), "--no-features",
                    "--parser", "annotation", "--splits", "val"])
    seconds = time.perf_counter() - started
    printed = capsys.readouterr().out
    assert code == 0, printed
    print(f"\nreal VidSTG val conversion: {seconds:.1f}s\n{printed}")

    queries = datasets.load_dataset(str(out), "queries", split="validation")
    videos = datasets.load_dataset(str(out), "videos", split="validation")
    assert len(queries) == 8956
    assert Counter(queries["qtype"]) == {"declarative": 3996, "interrogative": 4960}
    assert len(videos) == 2048
    assert len({vid.rsplit("_", 2)[0] for vid in videos["video_id"]}) == 602
    assert set(queries["video_id"]) == set(videos["video_id"])
    assert len(set(queries["query_id"])) == len(queries)

    split = load_stvg_split(out, "validation")
    assert split.metadata["gt_boxes_available"] is False
    assert split.metadata["with_features"] is False
    assert split.metadata["counts"]["validation"]["queries"] == 8956
    base = video_features(with_features=False)
    for row in split.videos:
        validate_video_row(row, base)
        begin, end = row["segment"]
        assert row["frame_ids"] == sample_frame_ids(begin, end, row["fps"])
    for row in split.queries:
        validate_query_row(row)
        assert row["gt_frame_ids"] == [] and row["gt_boxes"] == []
    card = (out / "README.md").read_text()
    assert "No ground-truth boxes" in card and "Zhang" in card and "Shang" in card
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["skipped"] == {}
    assert "8956 queries" in printed and "2048 clips" in printed


def test_real_entries_gt_sted_and_clip_ids(real_val: list[dict], tmp_path: Path) -> None:
    """gt_sted is temporal_gt (end exclusive), including spans ending at frame_count; clip = (vid, used_segment)."""
    at_end = [e for e in real_val if e["temporal_gt"]["end_fid"] == e["frame_count"]][:3]
    entries = real_val[:20] + at_end
    plan = vidstg.build_plan(write_annotations(tmp_path / "ann", entries))
    rows = plan.queries["validation"]
    by_id = {row["query_id"]: row for row in rows}
    for i, entry in enumerate(entries):
        seg = entry["used_segment"]
        clip_id = f"{entry['vid']}_{seg['begin_fid']}_{seg['end_fid']}"
        caption = by_id[f"{clip_id}_{i}_d0"]
        assert caption["gt_sted"] == [entry["temporal_gt"]["begin_fid"], entry["temporal_gt"]["end_fid"]]
        assert caption["sentence"] == entry["captions"][0]["description"]
        for k, question in enumerate(entry["questions"]):
            assert by_id[f"{clip_id}_{i}_i{k}"]["sentence"] == question["description"]
    assert plan.report.total_skipped == 0


# ---------------------------------------------------------------------------------------------------
# Ground truth from VidOR files


def make_vidor_file(root: Path, entry: dict, rng: np.random.Generator, group: str = "0001",
                    drop: tuple[int, int] | None = None, outside: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """A VidOR-format annotation file (``training/<group>/<vid>.json``) with a random box for every object on
    every frame; returns ``tid -> (frame_count, 4)`` boxes. ``drop=(tid, frame)`` leaves one box out,
    ``outside=(tid, frame)`` puts one box outside the frame."""
    width, height, count = entry["width"], entry["height"], entry["frame_count"]
    tids = [obj["tid"] for obj in entry["subject/objects"]]
    corners = rng.uniform(0, 0.5, size=(len(tids), count, 2)) * [width, height]
    sizes = rng.uniform(0.1, 0.5, size=(len(tids), count, 2)) * [width, height]
    boxes = np.round(np.concatenate([corners, corners + sizes], axis=-1), 2)
    if outside is not None:
        boxes[tids.index(outside[0]), outside[1]] = [10, 10, width + 50, height - 1]
    trajectories = []
    for f in range(count):
        frame = []
        for j, tid in enumerate(tids):
            if drop is not None and (tid, f) == drop:
                continue
            x1, y1, x2, y2 = boxes[j, f].tolist()
            frame.append({"tid": tid, "bbox": {"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2},
                          "generated": 0, "tracker": "none"})
        trajectories.append(frame)
    annotation = {
        "version": "VERSION 1.0", "video_id": entry["vid"], "video_hash": "0", "video_path": f"{group}/{entry['vid']}.mp4",
        "frame_count": count, "fps": entry["fps"], "width": width, "height": height,
        "subject/objects": entry["subject/objects"], "trajectories": trajectories, "relation_instances": [],
    }
    path = root / "training" / group / f"{entry['vid']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(annotation))
    return {tid: boxes[j] for j, tid in enumerate(tids)}


def test_gt_boxes_match_direct_protocol_computation(real_val: list[dict], tmp_path: Path) -> None:
    at_end = [e for e in real_val if e["temporal_gt"]["end_fid"] == e["frame_count"]]
    vids = list(dict.fromkeys([e["vid"] for e in real_val[:12]] + [at_end[0]["vid"], at_end[1]["vid"]]))
    entries = [e for e in real_val if e["vid"] in vids]
    assert any(e["temporal_gt"]["end_fid"] == e["frame_count"] for e in entries)
    rng = np.random.default_rng(0)
    vidor = tmp_path / "vidor"
    truth = {}
    for vid in vids:
        first = next(e for e in entries if e["vid"] == vid)
        truth[vid] = make_vidor_file(vidor, first, rng, group=f"{len(truth):04d}")
    out = tmp_path / "out"
    assert convert(["--annotations", str(write_annotations(tmp_path / "ann", entries)), "--vidor-annotations",
                    str(vidor), "--output-dir", str(out), "--no-features"]) == 0
    split = load_stvg_split(out, "validation")
    assert split.metadata["gt_boxes_available"] is True
    queries = {row["query_id"]: row for row in split.queries}
    checked = ended_at_frame_count = 0
    for i, entry in enumerate(entries):
        seg, gt = entry["used_segment"], entry["temporal_gt"]
        # Direct computation of DESIGN section 6, written out independently of the converter.
        fps, kept = entry["fps"], [seg["begin_fid"]]
        for f in range(seg["begin_fid"], seg["end_fid"]):
            if int(f * 5 / fps) > int(kept[-1] * 5 / fps):
                kept.append(f)
        if len(kept) > 200:
            kept = [kept[(j * len(kept)) // 200] for j in range(200)]
        expected_frames = [f for f in kept if gt["begin_fid"] <= f < gt["end_fid"]]
        clip_id = f"{entry['vid']}_{seg['begin_fid']}_{seg['end_fid']}"
        sentences = [("d", k, s) for k, s in enumerate(entry["captions"])] + [("i", k, s) for k, s in enumerate(entry["questions"])]
        for kind, k, sentence in sentences:
            row = queries[f"{clip_id}_{i}_{kind}{k}"]
            assert row["gt_frame_ids"] == expected_frames
            expected_boxes = [truth[entry["vid"]][sentence["target_id"]][f].tolist() for f in expected_frames]
            np.testing.assert_allclose(np.asarray(row["gt_boxes"]).reshape(-1, 4),
                                       np.asarray(expected_boxes).reshape(-1, 4), rtol=0, atol=1e-3)
            checked += 1
            ended_at_frame_count += gt["end_fid"] == entry["frame_count"]
    assert checked == len(split.queries) > 20
    assert ended_at_frame_count > 0


def test_malformed_entries_are_skipped_counted_and_reported(real_val: list[dict], tmp_path: Path) -> None:
    good = real_val[0]
    rng = np.random.default_rng(1)
    broken = {}
    broken["missing_keys"] = {k: v for k, v in good.items() if k != "temporal_gt"}
    reversed_gt = copy.deepcopy(good)
    reversed_gt["temporal_gt"] = {"begin_fid": 540, "end_fid": 520}
    broken["temporal_gt_end_before_start"] = reversed_gt
    reversed_seg = copy.deepcopy(good)
    reversed_seg["used_segment"] = {"begin_fid": 595, "end_fid": 496}
    broken["segment_end_before_start"] = reversed_seg
    foreign_target = copy.deepcopy(good)
    foreign_target["captions"][0]["target_id"] = 99
    broken["target_not_in_objects"] = foreign_target
    entries = [good] + list(broken.values())
    # Two more videos, with a box outside the frame / a missing trajectory frame on the target's GT frames.
    outside_entry, missing_entry = copy.deepcopy(good), copy.deepcopy(good)
    outside_entry["vid"], missing_entry["vid"] = "outside1", "missing1"
    entries += [outside_entry, missing_entry]
    frames = sample_frame_ids(good["used_segment"]["begin_fid"], good["used_segment"]["end_fid"], good["fps"])
    gt_frame = next(f for f in frames if good["temporal_gt"]["begin_fid"] <= f < good["temporal_gt"]["end_fid"])
    target = good["captions"][0]["target_id"]
    vidor = tmp_path / "vidor"
    make_vidor_file(vidor, good, rng)
    make_vidor_file(vidor, outside_entry, rng, outside=(target, gt_frame))
    make_vidor_file(vidor, missing_entry, rng, drop=(target, gt_frame))
    entries.append({**copy.deepcopy(good), "vid": "no_vidor_file"})
    out = tmp_path / "out"
    code = convert(["--annotations", str(write_annotations(tmp_path / "ann", entries)), "--vidor-annotations",
                    str(vidor), "--output-dir", str(out), "--no-features"])
    assert code == 0
    report = json.loads((out / REPORT_FILE).read_text())
    skipped = report["skipped"]
    for reason in broken:
        assert skipped[reason]["count"] >= 1, reason
        assert skipped[reason]["examples"], reason
    assert skipped["target_not_in_objects"]["queries"] == 1  # only the caption; the question survives
    assert skipped["box_outside_frame"]["queries"] == 2  # the caption and the question share the target
    assert skipped["missing_trajectory_frames"]["queries"] == 2
    assert skipped["vidor_file_missing"]["entries"] == 1
    queries = datasets.load_dataset(str(out), "queries", split="validation")
    # good entry: caption + question; foreign_target: its question only.
    assert len(queries) == 3
    assert {vid.rsplit("_", 2)[0] for vid in queries["video_id"]} == {good["vid"]}
    card = (out / "README.md").read_text()
    assert "box_outside_frame" in card


def test_splits_and_missing_inputs(tmp_path: Path, real_val: list[dict], capsys) -> None:
    ann = write_annotations(tmp_path / "ann", real_val[:3])
    assert convert(["--annotations", str(ann), "--output-dir", str(tmp_path / "o"), "--no-features",
                    "--splits", "train"]) == 2
    assert "train_annotations.json" in capsys.readouterr().err
    assert convert(["--annotations", str(ann), "--output-dir", str(tmp_path / "o")]) == 2
    assert "--no-features" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="unknown split"):
        vidstg.build_plan(ann, splits=["dev"])
    plan = vidstg.build_plan(ann, splits=["validation"])
    assert plan.splits() == ["validation"]


def test_stanza_parser_without_models_fails_with_its_message(tmp_path: Path, real_val: list[dict], capsys) -> None:
    ann = write_annotations(tmp_path / "ann", real_val[:2])
    code = convert(["--annotations", str(ann), "--output-dir", str(tmp_path / "o"), "--no-features",
                    "--parser", "stanza", "--stanza-dir", str(tmp_path / "no_models")])
    assert code == 2
    err = capsys.readouterr().err
    assert "stanza models" in err and "stanza.download" in err
    assert not (tmp_path / "o" / "README.md").exists()


# ---------------------------------------------------------------------------------------------------
# Annotation parser


CATEGORIES = {0: "adult", 1: "ball/sports_ball", 2: "adult", 3: "child"}


@pytest.mark.parametrize(
    "sentence, subject, predicate, obj, target_id, is_question, entities, relations, target",
    [
        ("An adult in red kicks a sports ball on the grass.", 0, "kick", 1, 0, False,
         ["adult", "sports ball"], [(0, "kick", 1)], 0),
        # Target is the object; the object is mentioned first ("there is a ball ... ").
        ("there is a ball beneath the man.", 0, "above", 1, 1, False, ["ball", "man"], [(1, "above", 0)], 0),
        # Questions: the wh-word is the target's phrase.
        ("what does the child in blue lean_on?", 3, "lean_on", 1, 1, True, ["what", "child"], [(1, "lean on", 0)], 0),
        ("who plays the ball?", 0, "play(instrument)", 1, 0, True, ["who", "ball"], [(0, "play", 1)], None),
        # Same category twice; plural names.
        ("an adult speaks to another adult.", 0, "speak_to", 2, 0, False, ["adult", "adult"], [(0, "speak to", 1)], None),
        ("two women talk to the kids.", 0, "speak_to", 3, 0, False, ["women", "kids"], None, None),
    ],
)
def test_annotation_parser(sentence, subject, predicate, obj, target_id, is_question, entities, relations, target) -> None:
    parsed = vidstg.annotation_parse(sentence, CATEGORIES, subject, predicate, obj, target_id, is_question)
    assert parsed.entities == entities
    if relations is not None:
        assert parsed.relations == relations
    if target is not None:
        assert parsed.target == target


def test_annotation_parser_missing_name_falls_back_to_category() -> None:
    stats = vidstg.SkipReport()
    parsed = vidstg.annotation_parse("something moves.", CATEGORIES, 0, "towards", 1, 1, False, stats=stats)
    assert parsed.entities == ["adult", "ball"]  # category names, counted
    assert stats.stats["entity_phrase_not_in_sentence"] == 2
    assert parsed.target == 1


# ---------------------------------------------------------------------------------------------------
# Hub


def test_push_to_hub_uses_a_fake_hub(tmp_path: Path, real_val: list[dict]) -> None:
    out = tmp_path / "out"
    assert convert(["--annotations", str(write_annotations(tmp_path / "ann", real_val[:5])), "--output-dir", str(out),
                    "--no-features"]) == 0
    (out / ".stvg_extract").mkdir()
    (out / ".stvg_extract" / "manifest.json").write_text("{}")
    from huggingface_hub import HfApi

    with mock.patch.object(HfApi, "create_repo") as create_repo, mock.patch.object(HfApi, "create_commit") as create_commit:
        push_to_hub(out, "someone/vidstg-stvg", private=True)
    create_repo.assert_called_once()
    assert create_repo.call_args.args[0] == "someone/vidstg-stvg"
    assert create_repo.call_args.kwargs["repo_type"] == "dataset"
    kwargs = create_commit.call_args.kwargs
    assert kwargs["repo_type"] == "dataset" and kwargs["repo_id"] == "someone/vidstg-stvg"
    paths = sorted(op.path_in_repo for op in kwargs["operations"])
    assert "README.md" in paths and REPORT_FILE in paths
    assert "videos/validation-00000.parquet" in paths and "queries/validation-00000.parquet" in paths
    assert not any(p.startswith(".") for p in paths)
    # The card read back from the folder that was pushed.
    assert read_card_metadata(out)["source"] == "vidstg"


def test_push_refuses_unfinished_folder(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    with pytest.raises(ConversionError, match="README.md"):
        push_to_hub(tmp_path, "someone/x")


def test_cli_push_to_hub_flag(tmp_path: Path, real_val: list[dict]) -> None:
    from huggingface_hub import HfApi

    with mock.patch.object(HfApi, "create_repo"), mock.patch.object(HfApi, "create_commit") as create_commit:
        assert convert(["--annotations", str(write_annotations(tmp_path / "ann", real_val[:2])), "--output-dir",
                        str(tmp_path / "out"), "--no-features", "--push-to-hub", "me/ds"]) == 0
    assert create_commit.call_args.kwargs["repo_id"] == "me/ds"


def test_injected_parser_is_used_and_its_failures_are_counted(real_val: list[dict], tmp_path: Path) -> None:
    from processing_stvg.parsing_stvg import NoNounPhraseError, ParsedSentence

    def parse(sentence: str) -> ParsedSentence:
        if sentence.startswith("who"):
            raise NoNounPhraseError(f"sentence {sentence!r} has no noun phrase")
        return ParsedSentence(entities=["x", "y"], relations=[(0, "near", 1)], target=1, sentence=sentence)

    entries = real_val[:10]
    plan = vidstg.build_plan(write_annotations(tmp_path / "ann", entries), parser="stanza", parse_function=parse)
    rows = plan.queries["validation"]
    whos = sum(q["description"].startswith("who") for e in entries for q in e["captions"] + e["questions"])
    total = sum(len(e["captions"]) + len(e["questions"]) for e in entries)
    assert whos > 0 and len(rows) == total - whos
    assert all(row["entities"] == ["x", "y"] and row["target"] == 1 for row in rows)
    assert plan.report.to_dict()["skipped"]["sentence_unparsable"]["queries"] == whos
