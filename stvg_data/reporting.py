"""Pictures and tables for training runs and the demo: a training-curve plot from the trainer's
JSON-lines log, a picture of predicted vs ground-truth tubes, and a plain-text results table.

Matplotlib runs with the non-interactive ``Agg`` backend; every writer writes to a temporary name
and renames, so an interrupted run leaves no half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import box_iou


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(tmp_name, dpi=110, bbox_inches="tight")
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        _pyplot().close(figure)
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines log (blank lines skipped)."""
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line) for line in stream if line.strip()]


def plot_training_curves(log_path: str | Path, output_path: str | Path) -> Path:
    """One panel per loss of the trainer log (``train_log.jsonl``: records with ``step``, ``phase``
    and ``loss/...`` keys), E-step and M-step points coloured apart, plus a panel of the per-epoch
    evaluation metrics when the log has ``eval/...`` records."""
    records = read_jsonl(log_path)
    series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    evals: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in records:
        step = int(record.get("step", 0))
        for key, value in record.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key.startswith("loss/"):
                series[key[5:]][record.get("phase", "train")].append((step, float(value)))
            elif key.startswith("eval/"):
                evals[key[5:]].append((step, float(value)))
    panels = sorted(series) + (["evaluation"] if evals else [])
    if not panels:
        raise ValueError(f"{log_path}: no 'loss/...' or 'eval/...' values to plot")
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    colours = {"E": "tab:blue", "M": "tab:orange"}
    for axis, name in zip(axes.flat, panels):
        if name == "evaluation":
            for metric, points in sorted(evals.items()):
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o", label=metric)
            axis.set_ylabel("metric")
        else:
            for phase, points in sorted(series[name].items()):
                xs, ys = zip(*points)
                axis.plot(xs, ys, ".", markersize=3, color=colours.get(phase), alpha=0.35)
                if len(ys) >= 5:  # running mean to show the trend
                    width = max(2, len(ys) // 20)
                    smooth = np.convolve(ys, np.ones(width) / width, mode="valid")
                    axis.plot(xs[width - 1 :], smooth, color=colours.get(phase), label=f"{phase}-step")
                else:
                    axis.plot(xs, ys, color=colours.get(phase), label=f"{phase}-step")
            axis.set_ylabel("loss")
        axis.set_title(name)
        axis.set_xlabel("optimizer step")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.suptitle("stvg-vem training")
    figure.tight_layout()
    return _save_figure(figure, output_path)


def plot_tubes(
    video: Mapping[str, Any],
    query: Mapping[str, Any],
    prediction: Mapping[str, Any],
    output_path: str | Path,
    num_panels: int = 6,
    label_names: Sequence[str] | None = None,
) -> Path:
    """Predicted vs ground-truth tube of one query.

    Top row: ``num_panels`` sampled frames spread over the union of both spans, each drawn as the
    frame rectangle with every proposal (grey), the ground-truth box (green) and the predicted box
    (red, dashed) with their IoU. Bottom: the clip's time line with both spans.
    ``video`` is a ``videos`` row (pixel ``boxes``, ``frame_ids``, ``width``, ``height``), ``query``
    a ``queries`` row with its ``gt_*`` columns, ``prediction`` a contract prediction.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    frame_ids = [int(f) for f in video["frame_ids"]]
    width, height = float(video["width"]), float(video["height"])
    boxes = np.asarray(video["boxes"], dtype=np.float32)
    labels = np.asarray(video["box_labels"]) if "box_labels" in video else None
    gt_boxes = {int(f): box for f, box in zip(query["gt_frame_ids"], query["gt_boxes"])}
    pred_boxes = {int(f): box for f, box in prediction["boxes"].items()}
    gt_start, gt_end = (int(v) for v in query["gt_sted"])
    pred_start, pred_end = (int(v) for v in prediction["sted"])
    # panels: spread over the ground-truth span (where both boxes can be compared), plus the first
    # and last frame of the prediction outside it
    inside = [i for i, f in enumerate(frame_ids) if gt_start <= f < gt_end] or list(range(len(frame_ids)))
    before = [i for i, f in enumerate(frame_ids) if pred_start <= f < gt_start][:1]
    after = [i for i, f in enumerate(frame_ids) if gt_end <= f < pred_end][-1:]
    count = max(1, min(num_panels - len(before) - len(after), len(inside)))
    picks = sorted({inside[int(round(j))] for j in np.linspace(0, len(inside) - 1, count)} | set(before) | set(after))

    figure = plt.figure(figsize=(2.6 * len(picks), 3.6))
    grid = figure.add_gridspec(2, len(picks), height_ratios=[4, 1])
    for column, t in enumerate(picks):
        axis = figure.add_subplot(grid[0, column])
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
        for m, box in enumerate(boxes[t]):
            if labels is not None and labels[t, m] == -1:
                continue
            axis.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, ec="0.75", lw=0.6))
        frame = frame_ids[t]
        title = f"frame {frame}"
        if frame in gt_boxes:
            g = gt_boxes[frame]
            axis.add_patch(Rectangle((g[0], g[1]), g[2] - g[0], g[3] - g[1], fill=False, ec="tab:green", lw=2))
        if frame in pred_boxes:
            p = pred_boxes[frame]
            axis.add_patch(Rectangle((p[0], p[1]), p[2] - p[0], p[3] - p[1], fill=False, ec="tab:red", lw=1.6, ls="--"))
        if frame in gt_boxes and frame in pred_boxes:
            title += f"\nIoU {float(box_iou(gt_boxes[frame], pred_boxes[frame])):.2f}"
        axis.set_title(title, fontsize=8)
    timeline = figure.add_subplot(grid[1, :])
    first, last = frame_ids[0], frame_ids[-1] + 1
    timeline.set_xlim(first, last)
    timeline.set_ylim(0, 2)
    timeline.barh(1.5, gt_end - gt_start, left=gt_start, height=0.6, color="tab:green", label="ground truth")
    timeline.barh(0.5, pred_end - pred_start, left=pred_start, height=0.6, color="tab:red", label="predicted")
    timeline.plot(frame_ids, [1.0] * len(frame_ids), "|", color="0.5", markersize=4)
    timeline.set_yticks([])
    timeline.set_xlabel("frame id")
    timeline.legend(fontsize=7, loc="upper right", ncol=2)
    target = query["entities"][query["target"]] if query.get("entities") else ""
    figure.suptitle(f"{query.get('sentence', '')}  [target: {target}]", fontsize=9)
    figure.tight_layout()
    return _save_figure(figure, output_path)


METRIC_COLUMNS = ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5")


def format_table(rows: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]], block: str = "overall") -> str:
    """Plain-text table (percent), one line per method: ``{name: metrics}`` or ``{name: [metrics of each seed]}``
    (metrics.json layout). Several runs print ``mean ± sample std (n)``."""
    cells: dict[str, list[str]] = {}
    for name, metrics in rows.items():
        runs = [metrics] if isinstance(metrics, Mapping) else list(metrics)
        values = np.array([[100 * float(run.get(block, run).get(c, float("nan"))) for c in METRIC_COLUMNS]
                           for run in runs])  # (runs, columns)
        if len(runs) == 1:
            cells[name] = [f"{v:.2f}" for v in values[0]]
        else:
            mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
            cells[name] = [f"{m:.2f} ± {d:.2f}" for m, d in zip(mean, std)]
            cells[name].append(f"n={len(runs)}")
    width = max([9] + [len(c) for row in cells.values() for c in row])
    name_width = max(12, *(len(name) for name in rows))
    lines = [f"{'method':<{name_width}}  " + "  ".join(f"{c:>{width}}" for c in METRIC_COLUMNS)]
    lines.append("-" * len(lines[0]))
    for name, row in cells.items():
        lines.append(f"{name:<{name_width}}  " + "  ".join(f"{c:>{width}}" for c in row[:len(METRIC_COLUMNS)])
                     + (f"  {row[-1]}" if len(row) > len(METRIC_COLUMNS) else ""))
    return "\n".join(lines)


def compare_metrics_files(named_paths: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """``["name=path/metrics.json", "name2=a/metrics.json,b/metrics.json", ...]`` -> ``{name: [metrics, ...]}``
    (in the given order; comma-separated paths are runs of one method, e.g. seeds)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for item in named_paths:
        name, sep, paths = item.partition("=")
        if not sep or not name or not paths:
            raise ValueError(f"expected NAME=METRICS_JSON[,METRICS_JSON...], got {item!r}")
        runs = []
        for path in paths.split(","):
            with open(path, encoding="utf-8") as stream:
                runs.append(json.load(stream))
        rows[name] = runs
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stvg_data.reporting NAME=metrics.json[,metrics.json...] ... [--block overall] [--output table.md]``:
    print one table row per method (percent; mean ± std over several runs), optionally write it to a file."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stvg_data.reporting",
                                     description="Compare metrics.json files in one table (percent).")
    parser.add_argument("metrics", nargs="+",
                        help="NAME=path/to/metrics.json, or NAME=run1/metrics.json,run2/metrics.json for mean ± std")
    parser.add_argument("--block", default="overall", help="overall | declarative | interrogative")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    rows = compare_metrics_files(args.metrics)
    table = format_table(rows, block=args.block)
    print(table)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
