"""Evaluate spatio-temporal video grounding on one split of a contract dataset (DESIGN sections 6-7).

    python evaluate_stvg.py --dataset D --split S --output-dir E \\
        (--model OUT | --baseline object-similarity [--glove GLOVE.txt] | --predictions P.json) [--temporal-only]

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
    Prediction,
    PredictionsError,
    evaluate,
    format_metrics_table,
    load_predictions,
    parse_predictions,
    save_metrics,
    save_predictions,
)
from stvg_data.schema import DatasetSchemaError


def predict_with_model(model_dir: str | Path, split: Any, progress: bool = True) -> list[dict[str, Any]] | dict[str, Prediction]:
    """Predictions of a trained checkpoint on every query of ``split`` (a ``StvgSplit``).

    Plug-in point for ``--model``: return contract records (``{"query_id", "sted", "boxes"}``, as
    ``stvg_data.inference.predict_split`` produces) or ``{query_id: Prediction}``.
    """
    raise NotImplementedError(
        f"--model {model_dir}: evaluating a trained checkpoint needs the model package (modeling_stvg.StvgModel "
        "with stvg_data.inference), which is not wired into evaluate_stvg.py yet. Use --baseline or --predictions, "
        "or write the model's predictions with stvg_data.inference.predict_split and pass them with --predictions."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate_stvg.py",
        description="Evaluate a model, a baseline or a predictions file on a contract dataset (protocol tubedetr).",
    )
    parser.add_argument("--dataset", required=True, help="dataset folder or Hub dataset id (DESIGN section 5)")
    parser.add_argument("--split", required=True, help="split to evaluate, e.g. test")
    parser.add_argument("--output-dir", required=True, type=Path, help="writes predictions.json and metrics.json here")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="trained checkpoint folder (save_pretrained output)")
    source.add_argument("--baseline", choices=BASELINES, help="a training-free baseline")
    source.add_argument("--predictions", type=Path, help="a predictions JSON file in the contract format")
    parser.add_argument("--glove", type=Path, default=None,
                        help="GloVe text file for the object-similarity baseline (default: lexical label matching)")
    parser.add_argument("--temporal-only", action="store_true",
                        help="evaluate time spans only (m_tIoU); needed when the split has no ground-truth boxes")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Predict (or read predictions), evaluate, write both files; returns the metrics."""
    progress = not args.no_progress
    if args.glove is not None and args.baseline is None:
        raise ValueError("--glove only applies to --baseline object-similarity")
    split = load_stvg_split(args.dataset, args.split)
    if args.predictions is not None:
        predictions = load_predictions(args.predictions)
    elif args.baseline is not None:
        predictions = baseline_predictions(args.baseline, split, glove_path=args.glove, progress=progress)
    else:
        predictions = predict_with_model(args.model, split, progress=progress)
    if not isinstance(predictions, dict):
        predictions = parse_predictions(predictions, source="model predictions")
    elif not all(isinstance(p, Prediction) for p in predictions.values()):
        predictions = parse_predictions(list(predictions.values()), source="model predictions")
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
    except (PredictionsError, DatasetSchemaError, MissingGroundTruthError, NotImplementedError,
            FileNotFoundError, ValueError) as error:
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
