"""Cross-process InfoNCE negatives (Eq. 11): two gloo processes, each with half the batch (and a different number of
entity slots), must reproduce the single-process full-batch loss and, after DDP-style gradient averaging, its
gradient."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from modeling_stvg import contrastive_loss
from test_modeling import StvgModelTester

REPO = Path(__file__).resolve().parents[1]  # the workers import the checkout from here

WORKER = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {repo!r})
    torch.set_num_threads(1)
    rank = int(sys.argv[1])
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="file://" + {init!r}, rank=rank, world_size=2)
    from modeling_stvg import StvgModel, contrastive_loss
    model = StvgModel.from_pretrained({ckpt!r}).eval()
    inputs = torch.load({case!r}, weights_only=True)["rank%d" % rank]
    prepared = model.prepare_inputs(inputs)
    out = model.q_phi(**prepared, compute_contrastive=True)
    loss = contrastive_loss(out, model.config.contrastive_temperature)
    loss.backward()
    grads = {{n: p.grad.clone() for n, p in model.q_phi.named_parameters() if p.grad is not None}}
    torch.save({{"loss": loss.detach(), "grads": grads, "logits": out.contrastive_logits_v2t.detach()}},
               {out!r} + "/rank%d.pt" % rank)
    dist.destroy_process_group()
    """
)


def test_gathered_negatives_match_full_batch(tmp_path):
    tester = StvgModelTester(batch_size=4)
    model = tester.make_model()
    inputs = tester.make_inputs()
    # items 2 and 3 (rank 1) have their last entity as padding, so rank 1 can send fewer entity slots
    inputs["entity_mask"][2:, -1] = False
    inputs["target_index"][2:] = 0
    inputs["relation_entities"][2:] = torch.tensor([0, -1])
    model.save_pretrained(tmp_path / "ckpt")
    rank0 = {k: v[:2] for k, v in inputs.items()}
    rank1 = {k: v[2:] for k, v in inputs.items()}
    rank1["entity_token_ids"] = rank1["entity_token_ids"][:, :-1]
    rank1["entity_mask"] = rank1["entity_mask"][:, :-1]
    torch.save({"rank0": rank0, "rank1": rank1}, tmp_path / "case.pt")
    script = WORKER.format(repo=str(REPO), init=str(tmp_path / "init"), ckpt=str(tmp_path / "ckpt"),
                           case=str(tmp_path / "case.pt"), out=str(tmp_path))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(rank)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    prepared = model.prepare_inputs(inputs)
    out = model.q_phi(**prepared, compute_contrastive=True)
    full_loss = contrastive_loss(out, model.config.contrastive_temperature)
    full_loss.backward()
    # local rows of the (B, G) score matrix equal the full matrix rows (G padded per process: 2 + 2 columns)
    torch.testing.assert_close(torch.cat([r["logits"] for r in results]), out.contrastive_logits_v2t.detach(),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((results[0]["loss"] + results[1]["loss"]) / 2, full_loss.detach(), atol=1e-5,
                               rtol=1e-5)
    checked = 0
    for name, param in model.q_phi.named_parameters():
        if param.grad is None:
            continue
        averaged = (results[0]["grads"][name] + results[1]["grads"][name]) / 2  # what DDP's all-reduce gives
        torch.testing.assert_close(averaged, param.grad, atol=1e-5, rtol=1e-4, msg=name)
        checked += 1
    assert checked > 10
