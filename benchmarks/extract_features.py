"""Throughput of the feature path on real clips: decode (PyAV), detect (Faster R-CNN proposals +
RoI features from its FPN, one backbone pass) and timm features for given boxes.

    python benchmarks/extract_features.py [--videos DIR] [--frames 16] [--detector-min-size 800]

Networks are random-initialised (no pretrained weights offline): the cost is the same as with
trained weights. Prints the hardware it ran on and frames/s per stage.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _hardware import cpu_name  # noqa: E402
from processing_stvg.feature_extraction_stvg import StvgFeatureExtractor  # noqa: E402


def hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"CPU {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, GPU {gpu}, "
            f"torch {torch.__version__}, python {platform.python_version()}")


def decode(path: Path) -> tuple[np.ndarray, float, float]:
    """All frames of a clip as uint8 RGB; returns (frames, fps, seconds spent)."""
    import av

    start = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or 30)
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
    return frames, fps, time.perf_counter() - start


def timed(extractor: StvgFeatureExtractor, frames: np.ndarray, **kwargs) -> tuple[dict, float]:
    extractor.extract(frames[:1], **{k: (v[:1] if v is not None else None) for k, v in kwargs.items()})  # warm-up
    start = time.perf_counter()
    out = extractor.extract(frames, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", default=str(ROOT.parent / "shared" / "videos"), help="folder of .mp4 clips")
    parser.add_argument("--frames", type=int, default=16, help="sampled frames per clip pushed through the networks")
    parser.add_argument("--detector-min-size", type=int, default=800, help="Faster R-CNN resize (torchvision default 800)")
    parser.add_argument("--detector-max-size", type=int, default=1333)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timm-backbone", default="resnet18")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    paths = sorted(Path(args.videos).glob("*.mp4"))
    if not paths:
        raise SystemExit(f"no .mp4 clips under {args.videos}")
    print(hardware())
    detector = StvgFeatureExtractor(
        random_init=True, detector_min_size=args.detector_min_size, detector_max_size=args.detector_max_size,
        batch_size=args.batch_size, device=args.device,
    )
    timm_features = StvgFeatureExtractor(
        backbone=args.timm_backbone, feature_levels=[2, 3], random_init=True, batch_size=args.batch_size,
        resize_shortest_edge=224, device=args.device,
    )
    totals = {"decode": [0, 0.0], "detect+features": [0, 0.0], "timm features": [0, 0.0]}
    print(f"{'clip':<42} {'size':>9} {'decode f/s':>11} {'detect+feat f/s':>16} {'timm feat f/s':>14}")
    for path in paths:
        frames, fps, seconds = decode(path)
        totals["decode"][0] += len(frames)
        totals["decode"][1] += seconds
        step = max(1, len(frames) // args.frames)
        sample = frames[::step][: args.frames]
        out, det_seconds = timed(detector, sample)
        _, timm_seconds = timed(timm_features, sample, boxes=out["boxes"], box_labels=out["box_labels"])
        totals["detect+features"][0] += len(sample)
        totals["detect+features"][1] += det_seconds
        totals["timm features"][0] += len(sample)
        totals["timm features"][1] += timm_seconds
        h, w = frames.shape[1:3]
        print(f"{path.name:<42} {w:>4}x{h:<4} {len(frames) / seconds:>11.0f} {len(sample) / det_seconds:>16.2f} "
              f"{len(sample) / timm_seconds:>14.1f}")
    print("overall frames/s: " + ", ".join(f"{k} {n / s:.2f}" for k, (n, s) in totals.items()))
    print(f"(detector {detector.detector}, min_size {args.detector_min_size}, device {detector.torch_device}, "
          f"autocast {detector.autocast_dtype}; timm {args.timm_backbone} stages [2, 3] at short side 224)")


if __name__ == "__main__":
    main()
