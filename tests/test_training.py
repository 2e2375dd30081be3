"""train_accelerate.py in-process: export, weak supervision, resume, bad input, fake Hub, EM phases.

Tiny model (hidden 16, one layer) on tiny data built in the test (tests/_training_data.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import train_accelerate as ta
from _training_data import TINY_MODEL_ARGS, build_tiny_dataset, read_weights, reset_accelerate_state
from stvg_data.dataset_folder import DatasetFolderWriter, load_stvg_split


def train_args(dataset: Path, output: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ["--dataset", str(dataset), "--output-dir", str(output), "--epochs", str(epochs), "--batch-size", "4",
            "--seed", "3", *TINY_MODEL_ARGS, *extra]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run builds its own Accelerator: reset the singletons between runs."""
    yield
    reset_accelerate_state()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data", seed=0)


@pytest.fixture(scope="module")
def reference_run(dataset, tmp_path_factory) -> Path:
    """Two uninterrupted epochs, no evaluation: the weights the other runs are compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    ta.run(train_args(dataset, out, "--eval-split", "none", "--no-plots"))
    return out


def assert_same_weights(path_a: Path, path_b: Path) -> None:
    a, b = read_weights(path_a / "model.safetensors"), read_weights(path_b / "model.safetensors")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_train_export_evaluate_and_push_to_fake_hub(dataset, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = {"create_repo": [], "create_commit": [], "validate_yaml": []}

    def fake_create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append((repo_id, kwargs))
        return repo_id

    def fake_create_commit(self, repo_id, operations, **kwargs):
        import yaml

        files = {op.path_in_repo: Path(op.path_or_fileobj) for op in operations}
        card = files["README.md"].read_text()
        calls["validate_yaml"].append(yaml.safe_load(card.split("---")[1]))  # the Hub checks the card's YAML
        calls["create_commit"].append((repo_id, sorted(files), kwargs))
        return None

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    out = tmp_path / "run"
    metrics = ta.run(train_args(dataset, out, "--push-to-hub", "--hub-model-id", "someone/stvg-tiny", "--hub-private"))

    # save_pretrained output + tokenizer/processor + card + metrics + log + plots
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "metrics.json",
                 "predictions.json", "train_log.jsonl", "training_curves.png", "tubes.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["protocol"] == "tubedetr" and saved["num_queries"] == 4 and saved["split"] == "test"
    assert saved["overall"] == metrics["overall"]
    assert set(saved["overall"]) >= {"m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5"}
    card = (out / "README.md").read_text()
    assert "accelerate launch train_accelerate.py --dataset" in card and "m_vIoU" in card and "16 queries" in card
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "phase" in r]
    # 16 queries / batch 4 = 4 batches per pass; 2 epochs x (E-pass + M-pass)
    assert [r["phase"] for r in steps] == (["E"] * 4 + ["M"] * 4) * 2
    assert all("loss/contrastive" in r and "loss/assignment" in r for r in steps if r["phase"] == "E")
    assert all("loss/reconstruction" in r for r in steps if r["phase"] == "M")
    assert all(np.isfinite(r["loss/total"]) for r in steps)
    # warm-up then linear decay, per network
    e_lrs = [r["lr"] for r in steps if r["phase"] == "E"]
    # 8 steps per network, warm-up round(0.2 * 8) = 2 steps: 1.5e-3, 3e-3, then 3e-3 * (8 - s) / 6
    assert e_lrs == pytest.approx([1.5e-3, 3e-3] + [3e-3 * (8 - s) / 6 for s in range(2, 8)])

    # the checkpoint reloads through the Auto classes and predicts the same tubes
    from stvg_data.inference import predict_checkpoint

    reloaded = predict_checkpoint(out, load_stvg_split(dataset, "test"))
    assert reloaded == json.loads((out / "predictions.json").read_text())

    # fake Hub: one repo, one commit with the export but not the training checkpoints
    assert calls["create_repo"] == [("someone/stvg-tiny", {"repo_type": "model", "private": True, "exist_ok": True})]
    (repo_id, files, kwargs), = calls["create_commit"]
    assert repo_id == "someone/stvg-tiny"
    assert {"config.json", "model.safetensors", "README.md", "metrics.json", "tokenizer.json"} <= set(files)
    assert not any(f.startswith("checkpoints/") for f in files)
    assert "m_vIoU" in kwargs["commit_message"] and kwargs["repo_type"] == "model"
    assert calls["validate_yaml"][0]["library_name"] == "transformers"


def _scramble_ground_truth(source: Path, target: Path) -> None:
    """Copy a dataset folder, replacing every gt_* value of every split by other (valid) values."""
    shutil.copytree(source, target)
    for shard in (target / "queries").glob("*.parquet"):
        table = pq.read_table(shard)
        rows = table.to_pylist()
        for row in rows:
            start, end = row["gt_sted"]
            row["gt_sted"] = [start + 1, end + 7]
            row["gt_frame_ids"] = list(reversed(row["gt_frame_ids"]))
            row["gt_boxes"] = [[0.0, 0.0, 1.0, 1.0] for _ in row["gt_boxes"]]
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)


def test_weak_supervision_scrambled_ground_truth_gives_identical_weights(dataset, reference_run, tmp_path):
    scrambled = tmp_path / "scrambled"
    _scramble_ground_truth(dataset, scrambled)
    original = load_stvg_split(dataset, "train").queries
    changed = load_stvg_split(scrambled, "train").queries
    assert original["gt_sted"] != changed["gt_sted"] and original["query_id"] == changed["query_id"]
    out = tmp_path / "run"
    ta.run(train_args(scrambled, out, "--eval-split", "none", "--no-plots"))
    assert_same_weights(reference_run, out)


def test_resume_after_an_epoch_matches_an_uninterrupted_run(dataset, reference_run, tmp_path):
    out = tmp_path / "run"
    assert ta.run(train_args(dataset, out, "--eval-split", "none", "--no-plots", "--stop-after-epochs", "1")) is None
    assert [p.name for p in ta.checkpoint_dirs(out)] == ["epoch_1"] and not (out / "model.safetensors").exists()
    # without --resume an output dir with checkpoints is refused
    with pytest.raises(ta.TrainingInputError, match="--resume"):
        ta.run(train_args(dataset, out, "--eval-split", "none", "--no-plots"))
    ta.run(train_args(dataset, out, "--eval-split", "none", "--no-plots", "--resume"))
    assert_same_weights(reference_run, out)
    reference_log = (reference_run / "train_log.jsonl").read_text().splitlines()
    resumed_log = (out / "train_log.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k != "epoch_seconds"} for l in lines]  # noqa: E731
    assert strip(resumed_log) == strip(reference_log)


def _remove_split(source: Path, target: Path, split: str) -> None:
    shutil.copytree(source, target)
    for config in ("videos", "queries"):
        for shard in (target / config).glob(f"{split}-*.parquet"):
            shard.unlink()
    metadata = load_stvg_split(source, "test").metadata
    DatasetFolderWriter(target).finalize(metadata)


@pytest.mark.parametrize("case", ["no-train-split", "no-relations", "unknown-hub-id", "missing-eval-split"])
def test_bad_input_fails_before_training(case, dataset, tmp_path, capsys):
    out = tmp_path / "run"
    extra: list[str] = []
    if case == "no-train-split":
        data, message = tmp_path / "data", "has no 'train' split"
        _remove_split(dataset, data, "train")
    elif case == "no-relations":
        data, message = tmp_path / "data", "no query of the 'train' split has a usable relation"
        build_tiny_dataset(data, relations=False, sizes={"train": 4, "test": 2})
    elif case == "unknown-hub-id":
        data, message = "nobody-xyz/no-such-stvg-dataset", "nobody-xyz/no-such-stvg-dataset"
    else:
        data, message = dataset, "--eval-split 'validation' is not a split"
        extra = ["--eval-split", "validation"]
    with pytest.raises(ta.TrainingInputError, match=message):
        ta.run(train_args(data, out, *extra))
    assert not out.exists()  # nothing was trained or written
    assert ta.main(train_args(data, out, *extra)) == 2
    assert "train_accelerate.py: error:" in capsys.readouterr().err


def test_no_relations_is_fine_for_the_contrastive_only_ablation(tmp_path):
    data = build_tiny_dataset(tmp_path / "data", relations=False, sizes={"train": 4, "test": 2})
    ta.run(train_args(data, tmp_path / "run", "--losses", "contrastive", "--epochs", "1", "--no-plots",
                      "--eval-split", "none"))
    assert (tmp_path / "run" / "model.safetensors").is_file()


def _init_weights(config_path: Path, seed: int) -> dict[str, np.ndarray]:
    from accelerate.utils import set_seed

    from modeling_stvg import StvgConfig, StvgModel

    config = StvgConfig.from_pretrained(str(config_path.parent))
    set_seed(seed)
    return {k: v.detach().numpy().copy() for k, v in StvgModel(config).state_dict().items()}


def test_contrastive_ablation_iteration_alternation_and_accumulation(dataset, tmp_path):
    out = tmp_path / "run"
    ta.run(train_args(dataset, out, "--losses", "contrastive", "--alternate", "iteration",
                      "--gradient-accumulation-steps", "3", "--eval-split", "none", "--no-plots", epochs=1))
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == "contrastive"
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"phase"' in line]
    # 4 batches, accumulation 3 -> 2 optimizer steps (3 + the last 1), E only: no M-step in this ablation
    assert [r["phase"] for r in records] == ["E", "E"]
    assert all("loss/assignment" not in r and "loss/contrastive" in r for r in records)
    init = _init_weights(out / "config.json", seed=3)
    trained = read_weights(out / "model.safetensors")
    assert all(np.array_equal(trained[k], init[k]) for k in trained if k.startswith("p_theta."))
    assert any(not np.array_equal(trained[k], init[k]) for k in trained if k.startswith("q_phi."))


def test_reconstruction_ablation_and_posterior_assignment_switch(dataset, tmp_path):
    out = tmp_path / "run"
    ta.run(train_args(dataset, out, "--losses", "reconstruction", "--reconstruction-assignment", "variational",
                      "--alternate", "iteration", "--eval-split", "none", "--no-plots", epochs=1))
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == "reconstruction" and config["reconstruction_assignment"] == "variational"
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"phase"' in line]
    assert [r["phase"] for r in records] == ["E", "M"] * 4  # iteration alternation: E then M on every batch
    assert not any("loss/contrastive" in r for r in records)


def test_e_step_trains_only_q_phi_and_m_step_only_p_theta(dataset, tmp_path):
    args = ta.build_parser().parse_args(train_args(dataset, tmp_path / "run", "--eval-split", "none"))
    trainer = ta.EMTrainer(args, ta.load_training_data(args))

    def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
        return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())

    q0, p0 = snapshot(trainer.model.q_phi), snapshot(trainer.model.p_theta)
    trainer.run_pass("E", 0, None)
    assert changed(q0, trainer.model.q_phi) and not changed(p0, trainer.model.p_theta)
    q1 = snapshot(trainer.model.q_phi)
    trainer.run_pass("M", 1, None)
    assert not changed(q1, trainer.model.q_phi) and changed(p0, trainer.model.p_theta)
    trainer.accelerator.end_training()


def test_mixed_precision_defaults_to_the_launchers_setting(monkeypatch):
    """No --mixed-precision: the launcher's --mixed_precision (ACCELERATE_MIXED_PRECISION) applies; the flag,
    when given, overrides it."""
    from accelerate import Accelerator

    parser = ta.build_parser()
    base = ["--dataset", "d", "--output-dir", "o"]
    args = parser.parse_args(base)
    assert args.mixed_precision is None and ta.accelerator_options(args) == {}
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    assert Accelerator(**ta.accelerator_options(args), cpu=True).mixed_precision == "bf16"
    reset_accelerate_state()
    explicit = parser.parse_args([*base, "--mixed-precision", "no"])
    assert Accelerator(**ta.accelerator_options(explicit), cpu=True).mixed_precision == "no"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--mixed-precision", "fp32"])
