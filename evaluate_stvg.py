"""Evaluate spatio-temporal video grounding on one split of a contract dataset (DESIGN sections 6-7).

    python evaluate_stvg.py --dataset D --split S --output-dir E \\
        (--model OUT [--batch-size N] [--device D] | --baseline object-similarity [--glove GLOVE.txt]
         | --predictions P.json) [--temporal-only]

writes ``E/predictions.json`` (contract format) and ``E/metrics.json`` (protocol ``tubedetr``), both
atomically, and prints a table (rows overall/declarative/interrogative, columns in percent).

When the split's queries carry no ground-truth boxes (a converter run without VidOR boxes), vIoU
cannot be computed: the command refuses unless ``--temporal-only`` is given, which reports m_tIoU
only (vIoU values ``null``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stvg_data.baselines import BASELINES, baseline_predictions
from stvg_data.dataset_folder import load_stvg_split
from stvg_data.evaluation import (
    MissingGroundTruthError,
    PredictionsError,
    as_predictions,
    evaluate,
    format_metrics_table,
    load_predictions,
    save_metrics,
    save_predictions,
)
from stvg_data.schema import DatasetSchemaError


def check_model_dir(model_dir: str | Path) -> Path:
    """``model_dir`` as a Path when it is a ``train_accelerate.py`` output folder, else ``ValueError``
    naming ``--model`` and what to pass."""
    path = Path(model_dir)
    expected = ("pass the --output-dir of a finished train_accelerate.py run (a save_pretrained checkpoint: "
                "config.json, model.safetensors and the tokenizer files)")
    if not path.exists():
        raise ValueError(f"--model {model_dir}: no such folder; {expected}")
    if not path.is_dir():
        raise ValueError(f"--model {model_dir}: not a folder; {expected}")
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise ValueError(f"--model {model_dir}: not a train_accelerate.py output folder: no {name}; {expected}")
    return path


def check_device(device: str | None) -> None:
    """``ValueError`` naming ``--device`` for a device string torch cannot parse or a missing CUDA."""
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"--device {device}: not a torch device ({error}); pass e.g. cpu or cuda:0") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; pass --device cpu")


def predict_with_model(model_dir: str | Path, split: Any, batch_size: int = 16, device: str | None = None,
                       progress: bool = True) -> list[dict[str, Any]]:
    """Contract records (``{"query_id", "sted", "boxes"}``) of a trained checkpoint on every query of
    ``split`` (a ``StvgSplit``), via ``stvg_data.inference.predict_checkpoint``."""
    from stvg_data.inference import predict_checkpoint

    path = check_model_dir(model_dir)
    check_device(device)
    try:
        return predict_checkpoint(path, split, batch_size=batch_size, device=device, progress=progress)
    except OSError as error:  # transformers: unreadable weights, tokenizer files missing, ...
        raise ValueError(f"--model {model_dir}: cannot load the checkpoint ({error}); pass the --output-dir of a "
                         "finished train_accelerate.py run") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate_stvg.py",
        description="Evaluate a model, a baseline or a predictions file on a contract dataset (protocol tubedetr).",
    )
    parser.add_argument("--dataset", required=True, help="dataset folder or Hub dataset id (DESIGN section 5)")
    parser.add_argument("--split", required=True, help="split to evaluate, e.g. test")
    parser.add_argument("--output-dir", required=True, type=Path, help="writes predictions.json and metrics.json here")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="trained checkpoint folder (train_accelerate.py --output-dir)")
    source.add_argument("--baseline", choices=BASELINES, help="a training-free baseline")
    source.add_argument("--predictions", type=Path, help="a predictions JSON file in the contract format")
    parser.add_argument("--glove", type=Path, default=None,
                        help="GloVe text file for the object-similarity baseline (default: lexical label matching)")
    parser.add_argument("--temporal-only", action="store_true",
                        help="evaluate time spans only (m_tIoU); needed when the split has no ground-truth boxes")
    parser.add_argument("--batch-size", type=int, default=None, help="queries per forward pass with --model (default 16)")
    parser.add_argument("--device", default=None, help="torch device for --model, e.g. cpu, cuda:0 (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Predict (or read predictions), evaluate, write both files; returns the metrics."""
    progress = not args.no_progress
    if args.glove is not None and args.baseline is None:
        raise ValueError("--glove only applies to --baseline object-similarity")
    if args.model is None and (args.batch_size is not None or args.device is not None):
        raise ValueError("--batch-size and --device only apply to --model")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.model is not None:
        check_model_dir(args.model)  # before loading the dataset: fail fast on a wrong path
        check_device(args.device)
    split = load_stvg_split(args.dataset, args.split)
    if args.predictions is not None:
        predictions = load_predictions(args.predictions)
    elif args.baseline is not None:
        predictions = baseline_predictions(args.baseline, split, glove_path=args.glove, progress=progress)
    else:
        predictions = predict_with_model(args.model, split, batch_size=args.batch_size or 16, device=args.device,
                                         progress=progress)
    predictions = as_predictions(predictions, source="model predictions")
    metrics = evaluate(split, predictions, temporal_only=args.temporal_only, progress=progress)
    metrics = {**metrics, "dataset": str(args.dataset), "split": args.split}
    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    save_predictions(predictions, output_dir / "predictions.json")
    save_metrics(metrics, output_dir / "metrics.json")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        metrics = run(args)
    except (PredictionsError, DatasetSchemaError, MissingGroundTruthError, FileNotFoundError,
            ValueError) as error:
        print(f"evaluate_stvg.py: error: {error}", file=sys.stderr)
        return 2
    source = args.predictions or (f"baseline {args.baseline}" if args.baseline else args.model)
    print(f"{args.dataset} [{args.split}], {metrics['num_queries']} queries, protocol {metrics['protocol']}, "
          f"predictions: {source}")
    print(format_metrics_table(metrics))
    print(f"wrote {args.output_dir / 'predictions.json'} and {args.output_dir / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
