"""HC-STVG converter: v1 / v2 formats, 1-based frames, 20-second clips, skipped entries, parser injection."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from dataset_scripts import hcstvg
from dataset_scripts.extract import REPORT_FILE, ConversionError, write_without_features
from processing_stvg.parsing_stvg import NoNounPhraseError, ParsedSentence
from stvg_data.dataset_folder import load_stvg_split
from stvg_data.protocol import sample_frame_ids
from stvg_data.schema import validate_query_row

# Hand-written parses of the test sentences (what the stanza parser would give).
PARSES = {
    "The man in the black coat walks to the door and turns around.": ParsedSentence(
        entities=["the man in the black coat", "the door"], relations=[(0, "walks to", 1), (0, "turns around", -1)],
        target=0),
    "The woman sitting on the left picks up the cup.": ParsedSentence(
        entities=["the woman sitting on the left", "the cup"], relations=[(0, "picks up", 1)], target=0),
    "A boy in white runs.": ParsedSentence(entities=["a boy in white"], relations=[(0, "runs", -1)], target=0),
}


def parse(sentence: str) -> ParsedSentence:
    if sentence not in PARSES:
        raise NoNounPhraseError(f"sentence {sentence!r} has no noun phrase")
    return PARSES[sentence]


def xywh_track(rng: np.random.Generator, n: int, width: int, height: int) -> list[list[float]]:
    xy = rng.uniform(0, 0.5, size=(n, 2)) * [width, height]
    wh = rng.uniform(0.1, 0.4, size=(n, 2)) * [width, height]
    return np.round(np.concatenate([xy, wh], axis=1), 2).tolist()


def v1_entries(rng: np.random.Generator) -> dict:
    return {
        "10_abc.mp4": {"img_num": 500, "width": 640, "height": 360, "st_frame": 11, "st_time": 0.4, "ed_time": 1.6,
                       "caption": "The man in the black coat walks to the door and turns around.",
                       "bbox": xywh_track(rng, 30, 640, 360)},
        # tube from the very first frame (1-based 1 -> frame id 0) to the last one (500 -> id 499)
        "11_def.mp4": {"img_num": 500, "width": 640, "height": 360, "st_frame": 1, "st_time": 0.0, "ed_time": 20.0,
                       "caption": "A boy in white runs.", "bbox": xywh_track(rng, 500, 640, 360)},
    }


def v2_entries(rng: np.random.Generator) -> dict:
    return {
        "30_xyz.mp4": {"img_num": 600, "img_size": [480, 854], "st_frame": 5, "ed_frame": 24, "st_time": 0.1,
                       "ed_time": 0.8, "English": "The woman sitting on the left picks up the cup.",
                       "bbox": xywh_track(rng, 20, 854, 480)},
    }


def expected_gt(img_num: int, start0: int, xywh: list[list[float]]) -> tuple[list[int], np.ndarray]:
    """Direct computation: 20-s clip -> fps = img_num / 20; protocol frames inside the tube; xywh -> xyxy."""
    fps, kept = img_num / 20, [0]
    for f in range(img_num):
        if int(f * 5 / fps) > int(kept[-1] * 5 / fps):
            kept.append(f)
    frames = [f for f in kept if start0 <= f < start0 + len(xywh)]
    boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (xywh[f - start0] for f in frames)])
    return frames, boxes


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_v1_conversion_conventions(tmp_path: Path) -> None:
    data = v1_entries(np.random.default_rng(0))
    out = tmp_path / "out"
    assert hcstvg.run(["--version", "v1", "--annotations", str(write(tmp_path / "test.json", data)),
                       "--output-dir", str(out), "--no-features"], parse_function=parse) == {
        "test": {"clips": 2, "queries": 2, "declarative": 2, "interrogative": 0}}
    split = load_stvg_split(out, "test")
    assert split.metadata["source"] == "hcstvg-v1" and split.metadata["frame_base"] == 1
    queries = {row["query_id"]: row for row in split.queries}
    for name, entry in data.items():
        video_id = name[:-4]
        row, video = queries[video_id], split.video_row(video_id)
        start0 = entry["st_frame"] - 1
        assert row["gt_sted"] == [start0, start0 + len(entry["bbox"])]
        assert video["segment"] == [0, entry["img_num"]]
        assert video["fps"] == pytest.approx(entry["img_num"] / 20)
        assert video["frame_ids"] == sample_frame_ids(0, entry["img_num"], entry["img_num"] / 20)
        assert (video["width"], video["height"]) == (entry["width"], entry["height"])
        frames, boxes = expected_gt(entry["img_num"], start0, entry["bbox"])
        assert row["gt_frame_ids"] == frames
        np.testing.assert_allclose(np.asarray(row["gt_boxes"]), boxes, atol=1e-3)
        assert row["qtype"] == "declarative" and row["sentence"] == entry["caption"]
        assert row["entities"] == PARSES[entry["caption"]].entities
        validate_query_row(row)
    # 1-based frame 1 is frame id 0; the last annotated frame (500) is id 499, the span ends at 500.
    assert queries["11_def"]["gt_sted"] == [0, 500]
    assert queries["11_def"]["gt_frame_ids"][0] == 0
    assert len(split.videos[0]["frame_ids"]) == 100  # 20 s at 5 fps
    loaded = datasets.load_dataset(str(out), "queries", split="test")
    assert sorted(loaded["query_id"]) == ["10_abc", "11_def"]


def test_v2_conversion_conventions_and_frame_base(tmp_path: Path) -> None:
    data = v2_entries(np.random.default_rng(1))
    entry = data["30_xyz.mp4"]
    ann = write(tmp_path / "val_v2.json", data)
    out = tmp_path / "out"
    hcstvg.run(["--version", "v2", "--annotations", str(ann), "--output-dir", str(out), "--no-features"],
               parse_function=parse)
    split = load_stvg_split(out, "validation")  # guessed from "val_v2.json"
    row, video = split.queries[0], split.video_row("30_xyz")
    assert row["gt_sted"] == [4, 24]  # st_frame 5 and ed_frame 24 (1-based, inclusive) -> [4, 24)
    assert (video["width"], video["height"]) == (854, 480)  # img_size is [height, width]
    frames, boxes = expected_gt(600, 4, entry["bbox"])
    assert row["gt_frame_ids"] == frames and frames
    np.testing.assert_allclose(np.asarray(row["gt_boxes"]), boxes, atol=1e-3)
    assert row["relations"] == [{"subject": 0, "predicate": "picks up", "object": 1}]

    # --frame-base 0 reads the numbers as 0-based ids (TubeDETR's reading): one frame later.
    plan = hcstvg.build_plan(ann, "v2", parse_function=parse, frame_base=0)
    assert plan.queries["validation"][0]["gt_sted"] == [5, 25]


def test_two_files_make_two_splits_in_one_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    out = tmp_path / "out"
    for split, data in (("train", v1_entries(rng)), ("test", v1_entries(rng))):
        hcstvg.run(["--version", "v1", "--annotations", str(write(tmp_path / f"{split}.json", data)),
                    "--output-dir", str(out), "--no-features"], parse_function=parse)
    assert datasets.get_dataset_split_names(str(out), "queries") == ["train", "test"]
    assert len(load_stvg_split(out, "train").queries) == 2


def test_malformed_entries_are_skipped_and_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    good = v2_entries(rng)["30_xyz.mp4"]
    bad = {
        "missing.mp4": {k: v for k, v in good.items() if k != "ed_frame"},
        "reversed.mp4": {**good, "st_frame": 30, "ed_frame": 10},
        "count.mp4": {**good, "bbox": good["bbox"][:-1]},
        "outside.mp4": {**good, "bbox": [[800.0, 10.0, 100.0, 50.0]] + good["bbox"][1:]},
        "late.mp4": {**good, "st_frame": 590, "ed_frame": 609},
        "unparsable.mp4": {**good, "English": "Runs quickly."},
        "negative.mp4": {**good, "bbox": [[10.0, 10.0, -5.0, 5.0]] + good["bbox"][1:]},
    }
    data = {"30_xyz.mp4": good, **bad}
    out = tmp_path / "out"
    hcstvg.run(["--version", "v2", "--annotations", str(write(tmp_path / "a.json", data)), "--split", "train",
                "--output-dir", str(out), "--no-features"], parse_function=parse)
    report = json.loads((out / REPORT_FILE).read_text())["skipped"]
    assert {reason: slot["count"] for reason, slot in report.items()} == {
        "missing_keys": 1, "tube_end_before_start": 1, "bbox_count_mismatch": 1, "box_outside_frame": 1,
        "tube_outside_video": 1, "sentence_unparsable": 1, "box_degenerate": 1}
    assert report["box_outside_frame"]["examples"][0]["video"] == "outside.mp4"
    assert [row["video_id"] for row in load_stvg_split(out, "train").queries] == ["30_xyz"]


def test_stanza_required_without_models(tmp_path: Path, capsys) -> None:
    ann = write(tmp_path / "train.json", v1_entries(np.random.default_rng(4)))
    code = hcstvg.main(["--version", "v1", "--annotations", str(ann), "--output-dir", str(tmp_path / "o"),
                        "--no-features", "--stanza-dir", str(tmp_path / "empty")])
    assert code == 2
    err = capsys.readouterr().err
    assert "stanza models" in err and "stanza.download" in err
    assert not (tmp_path / "o").exists()


def test_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="split"):
        hcstvg.build_plan(write(tmp_path / "annotations.json", {}), "v1", parse_function=parse)
    with pytest.raises(ConversionError, match="JSON object"):
        hcstvg.build_plan(write(tmp_path / "train.json", []), "v1", parse_function=parse)
    with pytest.raises(ConversionError, match="not a file"):
        hcstvg.build_plan(tmp_path / "nope.json", "v1", parse_function=parse)
    plan = hcstvg.build_plan(write(tmp_path / "test.json", v1_entries(np.random.default_rng(5))), "v1",
                             parse_function=parse)
    write_without_features(plan, tmp_path / "direct")
    assert "20 s" in (tmp_path / "direct" / "README.md").read_text()
    assert "Tang" in (tmp_path / "direct" / "README.md").read_text()
