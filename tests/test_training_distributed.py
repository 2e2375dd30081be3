"""Two CPU processes (gloo) through ``accelerate launch``: identical weights on both ranks after EM
training, and the contrastive loss scoring each local video against the sentences of the GLOBAL
batch (checked against one process scoring the whole global batch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from _training_data import TINY_MODEL_ARGS, build_tiny_dataset, read_weights

REPO_ROOT = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent(
    '''
    """Runs on every rank: train, dump this rank's weights, check the global-batch negatives, export."""
    import json
    import sys
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    import train_accelerate as ta
    from modeling_stvg import compute_e_step_loss, prepare_stvg_inputs
    from stvg_data.batching import collate_stvg, model_inputs

    argv = sys.argv[1:]
    args = ta.build_parser().parse_args(argv)
    trainer = ta.EMTrainer(args, ta.load_training_data(args))
    acc = trainer.accelerator
    assert acc.num_processes == 2, acc.num_processes
    trainer.train()
    rank = acc.process_index
    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(args.output_dir / f"rank{rank}.safetensors"))

    # global-batch negatives: one E-step batch per rank, dropout off
    trainer.loader.set_epoch(0)
    batch = next(iter(trainer.loader))
    trainer.q_phi.eval()
    trainer.p_theta.eval()
    with torch.no_grad():
        prepared = prepare_stvg_inputs(model_inputs(batch), trainer.config)
        step = compute_e_step_loss(trainer.q_phi, trainer.p_theta, prepared, trainer.config, "both")
    local_ids = [m["query_id"] for m in batch["meta"]]
    global_ids = acc.gather_for_metrics(local_ids, use_gather_object=True)
    # the same global batch scored by one process, gathering switched off
    dataset = trainer.loader.dataset
    position = {qid: i for i, qid in enumerate(dataset.queries["query_id"])}
    full = collate_stvg([dataset[position[qid]] for qid in global_ids])
    trainer.config.gather_negatives = False
    with torch.no_grad():
        full_prepared = prepare_stvg_inputs(model_inputs(full), trainer.config)
        single = compute_e_step_loss(trainer.model.q_phi, trainer.model.p_theta, full_prepared, trainer.config, "both")
    trainer.config.gather_negatives = True
    rows = [global_ids.index(qid) for qid in local_ids]
    report = {
        "rank": rank,
        "local_ids": local_ids,
        "global_ids": global_ids,
        "v2t_shape": list(step.q_output.contrastive_logits_v2t.shape),
        "targets": step.q_output.contrastive_targets.tolist(),
        "max_abs_diff_v2t": float((step.q_output.contrastive_logits_v2t - single.q_output.contrastive_logits_v2t[rows]).abs().max()),
        "max_abs_diff_t2v": float((step.q_output.contrastive_logits_t2v - single.q_output.contrastive_logits_t2v[rows]).abs().max()),
    }
    (args.output_dir / f"negatives_rank{rank}.json").write_text(json.dumps(report))
    acc.wait_for_everyone()
    ta.export(trainer, argv)
    acc.end_training()
    '''
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_identical_weights_and_global_negatives(tmp_path):
    data = build_tiny_dataset(tmp_path / "data", seed=1)
    out = tmp_path / "run"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(driver),
        "--dataset", str(data), "--output-dir", str(out), "--epochs", "2", "--batch-size", "4", "--seed", "5",
        "--dropout", "0.1", "--no-plots", *TINY_MODEL_ARGS,
    ]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    # both ranks hold the same weights (DDP averaged the gradients of both networks), and they moved
    rank0, rank1 = read_weights(out / "rank0.safetensors"), read_weights(out / "rank1.safetensors")
    assert sorted(rank0) == sorted(rank1)
    for name in rank0:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    exported = read_weights(out / "model.safetensors")
    for name in rank0:
        np.testing.assert_array_equal(exported[name], rank0[name], err_msg=name)

    # 16 queries, 2 ranks x batch 4 -> 2 batches per rank per pass: 2 epochs x (2 E + 2 M) optimizer steps
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records if "phase" in r] == ["E", "E", "M", "M"] * 2
    assert json.loads((out / "metrics.json").read_text())["num_queries"] == 4

    # contrastive negatives: every rank scores its 4 videos against the 8 sentences of the global batch
    reports = [json.loads((out / f"negatives_rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["global_ids"] == reports[1]["global_ids"] and len(set(reports[0]["global_ids"])) == 8
    assert set(reports[0]["local_ids"]).isdisjoint(reports[1]["local_ids"])
    for report in reports:
        assert report["v2t_shape"] == [4, 8]
        assert report["targets"] == [report["global_ids"].index(q) for q in report["local_ids"]]
        # and the scores equal those of one process scoring the whole global batch
        assert report["max_abs_diff_v2t"] < 1e-4 and report["max_abs_diff_t2v"] < 1e-4
