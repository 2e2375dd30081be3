"""Feature extraction at scale: real clips, 2 Accelerate processes, kill + resume, equality with one run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_scripts import vidstg
from dataset_scripts.extract import (
    REPORT_FILE,
    STATE_DIR,
    SkipReport,
    VideoIndex,
    chunk_clips,
    shards_of_rank,
)
from stvg_data.dataset_folder import load_stvg_split, read_card_metadata
from stvg_data.schema import validate_video_row, video_features

VIDEOS = {  # stem: (fps, frames, width, height), from shared/videos/SOURCE.md
    "mmaction2_demo": (28, 280, 340, 256),
    "mmaction2_test_video_structuralize": (29.97, 300, 426, 240),
    "mmaction2_tests_test": (30, 300, 340, 256),
}
NUM_REGIONS = 5


def clip_entries() -> list[dict]:
    """VidSTG-format entries over the real clips: 3 short segments per video (3-4 sampled frames each), plus
    one entry whose video file does not exist."""
    entries = []
    for vid, (fps, count, width, height) in [*VIDEOS.items(), ("absent_video", (30, 300, 340, 256))]:
        for begin in ((0, 100, 200) if vid != "absent_video" else (0,)):
            end = begin + 18
            entries.append({
                "vid": vid, "fps": fps, "frame_count": count, "used_segment": {"begin_fid": begin, "end_fid": end},
                "width": width, "height": height,
                "subject/objects": [{"tid": 0, "category": "adult"}, {"tid": 1, "category": "bottle"}],
                "used_relation": {"subject_tid": 0, "object_tid": 1, "predicate": "hold", "begin_fid": begin + 2,
                                  "end_fid": end - 2},
                "temporal_gt": {"begin_fid": begin + 2, "end_fid": end - 2},
                "captions": [{"description": "an adult holds a bottle.", "type": "person", "target_id": 0}],
                "questions": [{"description": "what does the adult hold?", "type": "object", "target_id": 1}],
            })
    return entries


@pytest.fixture(scope="module")
def inputs(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    videos = shared_dir / "videos"
    if not all((videos / f"{stem}.mp4").is_file() for stem in VIDEOS):
        pytest.skip(f"real clips not found in {videos}")
    ann = tmp_path_factory.mktemp("ann")
    (ann / "val_annotations.json").write_text(json.dumps(clip_entries()))
    return {"videos": videos, "annotations": ann}


def common_args(inputs: dict[str, Path], out: Path) -> list[str]:
    return ["--annotations", str(inputs["annotations"]), "--videos", str(inputs["videos"]), "--output-dir", str(out),
            "--random-init-detector", "--seed", "3", "--detector", "fasterrcnn_mobilenet_v3_large_320_fpn",
            "--detector-min-size", "96", "--detector-max-size", "128", "--num-regions", str(NUM_REGIONS),
            "--clips-per-shard", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run (in this process, one thread as each launched process has)."""
    out = tmp_path_factory.mktemp("reference") / "ds"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert vidstg.main(common_args(inputs, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(repo_root: Path, args: list[str], log: Path) -> subprocess.Popen:
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "dataset_scripts/extract.py", "vidstg", *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "STVG_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, cwd=repo_root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Ids of every process below ``pid`` (torchrun starts its workers in sessions of their own, so killing the
    launcher's process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and every worker it started (by id), as a crash or a preempted job would."""
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def shard_stats(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((out / "videos").glob("validation-*.parquet"))}


def assert_same_dataset(a: Path, b: Path) -> None:
    left, right = load_stvg_split(a, "validation"), load_stvg_split(b, "validation")
    assert left.metadata == right.metadata
    lv = sorted(left.videos.with_format("numpy"), key=lambda r: str(r["video_id"]))
    rv = sorted(right.videos.with_format("numpy"), key=lambda r: str(r["video_id"]))
    assert [str(r["video_id"]) for r in lv] == [str(r["video_id"]) for r in rv]
    for x, y in zip(lv, rv):
        for key in ("frame_ids", "segment", "boxes", "box_scores", "box_labels", "region_features", "frame_features"):
            np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=f"{x['video_id']} {key}")
    assert sorted(left.queries.to_list(), key=lambda r: r["query_id"]) == sorted(right.queries.to_list(), key=lambda r: r["query_id"])


def test_reference_run_is_a_valid_feature_dataset(reference: Path) -> None:
    split = load_stvg_split(reference, "validation")
    meta = split.metadata
    assert meta["with_features"] is True and meta["num_regions"] == NUM_REGIONS
    assert meta["feature_extractor"]["random_init"] is True
    assert "Random-initialised networks" in (reference / "README.md").read_text()
    features = video_features(NUM_REGIONS, meta["region_dim"], meta["frame_dim"])
    assert len(split.videos) == 9
    for row in split.videos.with_format("numpy"):
        validate_video_row({k: (v.tolist() if k in ("segment", "frame_ids") else v) for k, v in row.items()}, features)
        assert 3 <= len(row["frame_ids"]) <= 4
    # The clip whose video is absent is skipped and counted; its queries are dropped and counted.
    report = json.loads((reference / REPORT_FILE).read_text())
    assert report["skipped"]["video_missing"]["clips"] == 1
    assert report["skipped"]["video_unavailable"]["queries"] == 2
    assert len(split.queries) == 18
    assert set(split.queries["video_id"]) == set(split.videos["video_id"])
    # One shard per clip; the chunk of the absent video has no shard (an empty parquet file is unloadable),
    # only its finished-marker.
    assert len(list((reference / "videos").glob("*.parquet"))) == 9
    assert len(list((reference / STATE_DIR).glob("videos-validation-*.json"))) == 10


def test_extracted_dataset_feeds_training_and_evaluation(reference: Path, tmp_path: Path, capsys) -> None:
    """The extracted folder loads with ``datasets.load_dataset(folder, config)`` and feeds
    ``train_accelerate.py`` and ``evaluate_stvg.py`` unchanged (tiny model, one epoch)."""
    import datasets
    from _training_data import reset_accelerate_state

    import evaluate_stvg
    import train_accelerate
    from stvg_data.schema import QUERY_FEATURES

    split = "validation"  # VidSTG's val annotations become the folder's only split
    meta = load_stvg_split(reference, split).metadata
    # A private cache: datasets caches a folder loaded by path under its basename and YAML only.
    cache = str(tmp_path / "hf_cache")
    queries = datasets.load_dataset(str(reference), "queries", split=split, cache_dir=cache)
    videos = datasets.load_dataset(str(reference), "videos", split=split, cache_dir=cache)
    assert queries.features == QUERY_FEATURES and queries.num_rows == 18
    assert videos.features == video_features(NUM_REGIONS, meta["region_dim"], meta["frame_dim"])
    assert videos.num_rows == 9 and set(queries["video_id"]) == set(videos["video_id"])
    # Built without VidOR annotations: time spans but no ground-truth boxes, so only m_tIoU is defined.
    assert meta["gt_boxes_available"] is False and not any(queries["gt_boxes"])

    out = tmp_path / "model"
    # The only split is both the training and the evaluation split: training reads video-sentence pairs
    # only (gt_* dropped), so this is fine for a plumbing test.
    args = ["--dataset", str(reference), "--output-dir", str(out), "--train-split", split, "--eval-split", split,
            "--epochs", "1", "--batch-size", "4", "--eval-batch-size", "8", "--seed", "3", "--hidden-size", "32",
            "--num-attention-heads", "2", "--num-layers", "1", "--intermediate-size", "64",
            "--word-embedding-dim", "16", "--report-to", "none", "--no-progress", "--no-plots"]
    reset_accelerate_state()  # the reference fixture's extraction built an Accelerator in this process
    try:
        # Evaluating a split without GT boxes needs --temporal-only: refused before any training step.
        with pytest.raises(train_accelerate.TrainingInputError, match="no ground-truth boxes.*--temporal-only"):
            train_accelerate.run(args)
        assert not out.exists()
        metrics = train_accelerate.run([*args, "--temporal-only"])
    finally:
        reset_accelerate_state()
    assert metrics["protocol"] == "tubedetr" and metrics["temporal_only"] is True
    assert metrics["split"] == split and metrics["num_queries"] == 18
    for block in ("overall", "declarative", "interrogative"):
        assert set(metrics[block]) == {"m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5", "num_queries"}
        assert 0.0 <= metrics[block]["m_tIoU"] <= 1.0
        assert metrics[block]["m_vIoU"] is None and metrics[block]["vIoU@0.5"] is None
    assert json.loads((out / "metrics.json").read_text())["overall"] == metrics["overall"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "predictions.json"):
        assert (out / name).is_file(), name

    evaluation = tmp_path / "eval"
    eval_args = ["--dataset", str(reference), "--split", split, "--output-dir", str(evaluation), "--model", str(out),
                 "--device", "cpu", "--no-progress"]
    assert evaluate_stvg.main(eval_args) == 2  # no GT boxes: refused without --temporal-only
    assert "--temporal-only" in capsys.readouterr().err and not (evaluation / "predictions.json").exists()
    assert evaluate_stvg.main([*eval_args, "--temporal-only"]) == 0
    records = json.loads((evaluation / "predictions.json").read_text())
    assert sorted(r["query_id"] for r in records) == sorted(queries["query_id"])
    for record in records:
        assert set(record) == {"query_id", "sted", "boxes"} and record["sted"][0] < record["sted"][1]
    by_id = lambda rs: sorted(rs, key=lambda r: r["query_id"])  # noqa: E731
    assert by_id(records) == by_id(json.loads((out / "predictions.json").read_text()))  # same model, same tubes
    evaluated = json.loads((evaluation / "metrics.json").read_text())
    assert evaluated["overall"] == pytest.approx(metrics["overall"])


def test_two_processes_killed_and_resumed_equal_one_run(inputs, reference, repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = common_args(inputs, out)
    first = launch(repo_root, args, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and first.poll() is None and not shard_stats(out):
            time.sleep(0.05)
    finally:
        kill_tree(first)
    assert not (out / "README.md").exists(), "the first run finished before it could be interrupted"
    finished = shard_stats(out)
    assert 1 <= len(finished) < 9, (tmp_path / "first.log").read_text()[-3000:]

    second = launch(repo_root, args, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    skipped = sum(int(n) for n in re.findall(r"\[rank \d/2\] \d+ shard\(s\) to write \(\d+ clips\), (\d+) finished", log))
    assert skipped == len(finished), log[-3000:]
    after = shard_stats(out)
    for name, stat in finished.items():
        assert after[name] == stat, f"{name} was rewritten by the rerun"
    assert len(after) == 9
    assert not list(out.rglob("*.tmp"))
    assert_same_dataset(out, reference)


def test_rerun_with_other_settings_is_refused(inputs, reference, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    changed = [a if a != str(NUM_REGIONS) else "4" for a in common_args(inputs, out)]
    assert vidstg.main(changed) == 2
    assert "other settings" in capsys.readouterr().err
    assert (out / "README.md").is_file() and len(list((out / "videos").glob("*.parquet"))) == 9


def test_no_features_card_names_the_feature_run_that_works(inputs, tmp_path: Path, capsys) -> None:
    """The card of a --no-features build says how to add features, and the feature run into that same folder
    refuses without --overwrite (its metadata-only shards are never reused), as the card says."""
    out = tmp_path / "ds"
    no_features = [a for a in common_args(inputs, out)[:6] if a not in ("--videos", str(inputs["videos"]))]
    assert vidstg.main([*no_features, "--no-features"]) == 0
    card = (out / "README.md").read_text()
    assert "`dataset_scripts/vidstg.py`" in card and "`--videos DIR` in place of `--no-features`" in card
    assert "new `--output-dir`" in card and "`--overwrite`" in card
    capsys.readouterr()
    assert vidstg.main(common_args(inputs, out)) == 2
    err = capsys.readouterr().err
    assert "--no-features build" in err and "new --output-dir or pass --overwrite" in err
    assert read_card_metadata(out)["with_features"] is False  # left as it was


def test_detector_weights_required_unless_random_init_is_asked(inputs, tmp_path: Path, capsys) -> None:
    from processing_stvg.feature_extraction_stvg import StvgFeatureExtractor

    if StvgFeatureExtractor(detector="fasterrcnn_mobilenet_v3_large_320_fpn").detector_weight_file().is_file():
        pytest.skip("detector weights are cached on this machine")
    args = [a for a in common_args(inputs, tmp_path / "ds") if a != "--random-init-detector"]
    assert vidstg.main(args) == 2
    err = capsys.readouterr().err
    assert "no weights for detector" in err and "random_init" in err
    assert not (tmp_path / "ds" / "videos").exists()


def test_shard_assignment_is_deterministic_and_complete() -> None:
    clips = [{"video_id": str(i)} for i in range(11)]
    chunks = chunk_clips(clips, 3)
    assert [len(c) for c in chunks] == [3, 3, 3, 2]
    for world in (1, 2, 3, 5):
        owned = [k for rank in range(world) for k in shards_of_rank(len(chunks), rank, world)]
        assert sorted(owned) == list(range(len(chunks)))
    assert shards_of_rank(4, 1, 2) == [1, 3]
    assert chunk_clips([], 3) == [[]]


def test_video_index_and_report_merge(tmp_path: Path) -> None:
    (tmp_path / "0001").mkdir()
    (tmp_path / "0001" / "123.mp4").write_bytes(b"x")
    (tmp_path / "a b.mkv").write_bytes(b"x")
    index = VideoIndex(tmp_path)
    assert index.find("123") == tmp_path / "0001" / "123.mp4"
    assert index.find("0001/123.mp4") == tmp_path / "0001" / "123.mp4"
    assert index.find("a b.mkv") == tmp_path / "a b.mkv"
    assert index.find("nope") is None
    report = SkipReport(max_examples=2)
    report.skip("video_missing", {"id": 1}, clips=1)
    report.merge({"skipped": {"video_missing": {"count": 2, "clips": 2, "examples": [{"id": 2}, {"id": 3}]}},
                  "stats": {"x": 1}})
    data = report.to_dict()
    assert data["skipped"]["video_missing"]["count"] == 3 and data["skipped"]["video_missing"]["clips"] == 3
    assert len(data["skipped"]["video_missing"]["examples"]) == 2 and data["stats"] == {"x": 1}


def test_help_prints_the_full_help_and_exits_0(repo_root: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(repo_root / "dataset_scripts" / "extract.py")
    for flag in ("--help", "-h"):
        result = subprocess.run([sys.executable, script, flag], capture_output=True, text=True, cwd=repo_root,
                                env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: extract.py") and "{vidstg,hcstvg}" in result.stdout
        assert "Feature extraction at scale" in result.stdout and "extract.py vidstg --help" in result.stdout
    # real errors keep the short usage on stderr and exit code 2
    for argv in ([], ["bogus"]):
        result = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, cwd=repo_root,
                                env=env, timeout=120)
        assert result.returncode == 2 and result.stderr.startswith("usage: extract.py") and not result.stdout
