"""``evaluate_stvg.py --model OUT`` in-process: a tiny checkpoint written by ``train_accelerate.py``
(tests/_training_data.py) is evaluated through the CLI and compared with the library path
``evaluate(split, predict_split(model, tokenizer, split))``; bad ``--model``/``--device`` values fail
with exit code 2 and a message naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _training_data import TINY_MODEL_ARGS, build_tiny_dataset, reset_accelerate_state

import evaluate_stvg
import train_accelerate
from stvg_data.dataset_folder import load_stvg_split
from stvg_data.evaluation import evaluate
from stvg_data.inference import load_checkpoint, predict_split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data", seed=1, sizes={"train": 8, "test": 5})


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory) -> Path:
    """One epoch of the tiny model, no evaluation, no plots: just the save_pretrained export."""
    out = tmp_path_factory.mktemp("model") / "run"
    try:
        train_accelerate.run(["--dataset", str(dataset), "--output-dir", str(out), "--epochs", "1", "--batch-size", "4",
                              "--seed", "5", "--eval-split", "none", "--no-plots", *TINY_MODEL_ARGS])
    finally:
        reset_accelerate_state()
    return out


def eval_args(dataset: Path, output: Path, *extra: str) -> list[str]:
    return ["--dataset", str(dataset), "--split", "test", "--output-dir", str(output), "--no-progress", *extra]


def test_model_cli_matches_library_predictions_and_metrics(dataset, checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_stvg.main(eval_args(dataset, out, "--model", str(checkpoint), "--batch-size", "2",
                                        "--device", "cpu")) == 0
    printed = capsys.readouterr().out
    assert "5 queries" in printed and any(line.startswith("overall") for line in printed.splitlines())

    split = load_stvg_split(dataset, "test")
    records = json.loads((out / "predictions.json").read_text())
    assert sorted(r["query_id"] for r in records) == sorted(split.queries["query_id"])
    for record in records:
        assert set(record) == {"query_id", "sted", "boxes"} and record["sted"][0] < record["sted"][1]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "tubedetr" and metrics["num_queries"] == 5 and metrics["split"] == "test"
    blocks = [b for b in ("overall", "declarative", "interrogative") if b in metrics]
    assert "overall" in blocks
    for block in blocks:
        assert set(metrics[block]) >= {"m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5"}
        assert all(0.0 <= metrics[block][k] <= 1.0 for k in ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5"))

    model, tokenizer = load_checkpoint(checkpoint, device="cpu")
    direct_records = predict_split(model, tokenizer, split)  # batch 16 (all 5 queries) vs the CLI's 2
    assert records == json.loads(json.dumps(direct_records))
    direct = evaluate(split, direct_records)
    assert blocks == [b for b in ("overall", "declarative", "interrogative") if b in direct]
    for block in blocks:
        assert metrics[block] == pytest.approx(direct[block]), block
    assert metrics["num_queries"] == direct["num_queries"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such folder"),
        ("empty-folder", "not a train_accelerate.py output folder: no config.json"),
        ("no-weights", "not a train_accelerate.py output folder: no model.safetensors"),
    ],
)
def test_bad_model_dir_is_a_clear_error(case, message, dataset, tmp_path, capsys):
    model_dir = tmp_path / "model"
    if case != "missing":
        model_dir.mkdir()
    if case == "no-weights":
        (model_dir / "config.json").write_text("{}")
    out = tmp_path / "eval"
    assert evaluate_stvg.main(eval_args(dataset, out, "--model", str(model_dir))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evaluate_stvg.py: error: --model {model_dir}: ") and message in err
    assert "--output-dir of a finished train_accelerate.py run" in err and "Traceback" not in err
    assert not out.exists()


def test_bad_device_and_model_only_flags(dataset, checkpoint, tmp_path, capsys):
    assert evaluate_stvg.main(eval_args(dataset, tmp_path / "e", "--model", str(checkpoint),
                                        "--device", "warp-drive")) == 2
    assert "--device warp-drive" in capsys.readouterr().err
    assert evaluate_stvg.main(eval_args(dataset, tmp_path / "e", "--baseline", "object-similarity",
                                        "--batch-size", "4")) == 2
    assert "only apply to --model" in capsys.readouterr().err
