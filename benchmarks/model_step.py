"""E-step / M-step throughput of StvgModel at the paper's shapes (B=32, T=200, M=10, D=256, 1024-d features).

Prints samples/s, peak memory, estimated FLOPs per sample (torch.utils.flop_counter.FlopCounterMode: matmuls and
attention; elementwise ops are not counted) and achieved TFLOP/s, for tube linking (Eq. 4), the E-step
(L_z,phi + L_contra; forward, backward, AdamW step on q_phi) and the M-step (L_z,theta + L_rec; on p_theta).
Runs on CPU (fp32) and, when CUDA is available, on the GPU in bf16 autocast. Random weights and inputs (a speed
benchmark, never part of the test suite).

    python benchmarks/model_step.py                      # paper shapes, CPU (+ GPU if present)
    python benchmarks/model_step.py --batch-size 4 --frames 50 --steps 2   # shrink
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _hardware import cpu_name  # noqa: E402
from modeling_stvg import StvgConfig, StvgModel, compute_e_step_loss, compute_m_step_loss  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--entities", type=int, default=4)
    parser.add_argument("--entity-length", type=int, default=3)
    parser.add_argument("--relations", type=int, default=3)
    parser.add_argument("--relation-length", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--region-dim", type=int, default=1024)
    parser.add_argument("--frame-dim", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=20000)
    parser.add_argument("--reconstruction-assignment", choices=["variational", "posterior"], default="posterior")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--devices", default="auto", help="auto | cpu | cuda | cpu,cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    return parser.parse_args(argv)


def make_inputs(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, t, m, n, k = args.batch_size, args.frames, args.regions, args.entities, args.relations
    corner = torch.rand(b, t, m, 2, generator=g) * 0.6
    inputs = {
        "region_features": torch.randn(b, t, m, args.region_dim, generator=g),
        "region_boxes": torch.cat([corner, corner + 0.05 + 0.35 * torch.rand(b, t, m, 2, generator=g)], -1),
        "region_mask": torch.rand(b, t, m, generator=g) > 0.1,
        "frame_features": torch.randn(b, t, args.frame_dim, generator=g),
        "frame_mask": torch.ones(b, t, dtype=torch.bool),
        "entity_token_ids": torch.randint(4, args.vocab_size, (b, n, args.entity_length), generator=g),
        "entity_mask": torch.ones(b, n, dtype=torch.bool),
        "relation_token_ids": torch.randint(4, args.vocab_size, (b, k, args.relation_length), generator=g),
        "relation_entities": torch.stack(
            [torch.randint(0, n, (b, k), generator=g), torch.randint(-1, n, (b, k), generator=g)], -1
        ),
        "relation_mask": torch.ones(b, k, dtype=torch.bool),
        "target_index": torch.zeros(b, dtype=torch.long),
    }
    return {key: value.to(device) for key, value in inputs.items()}


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"{cpu_name()}, {torch.get_num_threads()} torch threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process RSS"


def run_device(args: argparse.Namespace, device: torch.device) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = StvgConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_attention_heads=args.heads,
        region_feature_dim=args.region_dim, frame_feature_dim=args.frame_dim, num_regions=args.regions,
        max_frames=max(200, args.frames), reconstruction_assignment=args.reconstruction_assignment,
    )
    torch.manual_seed(0)
    model = StvgModel(config).to(device).train()
    q_opt = torch.optim.AdamW(model.q_phi.parameters(), lr=5e-5)
    p_opt = torch.optim.AdamW(model.p_theta.parameters(), lr=5e-5)
    inputs = make_inputs(args, device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    print(f"\n== {device.type}: {hardware(device)}; torch {torch.__version__}; "
          f"{'bf16 autocast' if dtype == torch.bfloat16 else 'fp32'}")
    print(f"   shapes B={args.batch_size} T={args.frames} M={args.regions} N={args.entities} K={args.relations} "
          f"D={args.hidden_size} Dv={args.region_dim} Df={args.frame_dim} V={args.vocab_size}; "
          f"params q_phi {sum(p.numel() for p in model.q_phi.parameters()) / 1e6:.2f} M, "
          f"p_theta {sum(p.numel() for p in model.p_theta.parameters()) / 1e6:.2f} M")

    def link():
        return model.prepare_inputs(inputs)

    def e_step(prepared):
        with autocast:
            out = compute_e_step_loss(model.q_phi, model.p_theta, prepared, config)
        q_opt.zero_grad(set_to_none=True)
        out.loss.backward()
        q_opt.step()

    def m_step(prepared):
        with autocast:
            out = compute_m_step_loss(model.q_phi, model.p_theta, prepared, config)
        p_opt.zero_grad(set_to_none=True)
        out.loss.backward()
        p_opt.step()

    prepared = link()
    phases = [("tube linking (Eq. 4)", link), ("E-step (fwd+bwd+AdamW)", lambda: e_step(prepared)),
              ("M-step (fwd+bwd+AdamW)", lambda: m_step(prepared))]
    for name, fn in phases:
        with FlopCounterMode(display=False) as counter:
            fn()
        flops = counter.get_total_flops()
        for _ in range(args.warmup):
            fn()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        synchronize(device)
        seconds = (time.perf_counter() - start) / args.steps
        per_sample = flops / args.batch_size
        print(f"   {name:<24} {args.batch_size / seconds:9.2f} samples/s  {seconds * 1e3:9.1f} ms/step  "
              f"{per_sample / 1e9:8.2f} GFLOP/sample  {flops / seconds / 1e12:7.3f} TFLOP/s  "
              f"peak {peak_memory(device)}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = args.devices.split(",") if args.devices != "auto" else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"python {platform.python_version()} on {platform.platform()}")
    for name in wanted:
        if name == "cuda" and not torch.cuda.is_available():
            print("\n== cuda: not available, skipped")
            continue
        run_device(args, torch.device(name))


if __name__ == "__main__":
    main()
