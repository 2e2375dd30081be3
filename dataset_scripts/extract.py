"""Feature extraction at scale, and the machinery every stvg-vem converter shares.

Run it through Accelerate to spread the clips of a conversion over processes (or GPUs)::

    accelerate launch dataset_scripts/extract.py vidstg --annotations DIR --vidor-annotations DIR \\
        --videos DIR --output-dir OUT [--detector-weights FILE]
    accelerate launch dataset_scripts/extract.py hcstvg --version v2 --annotations FILE --videos DIR --output-dir OUT

(``python dataset_scripts/vidstg.py ... --videos DIR`` runs the same code in one process.)

How the work is split (resumable, deterministic):

- the main process builds the conversion plan (annotations -> clips + queries, bad records skipped and
  counted) and broadcasts the clip list; every process sees the same ordered clips;
- the clips of a split are cut into chunks of ``--clips-per-shard``; chunk ``k`` is written as shard
  ``videos/<split>-<k:05d>.parquet`` by process ``k % num_processes``. The shard index depends only on
  the chunk, so a rerun (with any number of processes) finds the same file names, and every shard is
  written atomically (temporary name, then rename): a rerun skips the finished shards and redoes only
  the missing ones;
- after all processes finish, the main process writes the ``queries`` shards, the conversion report
  (``conversion_report.json``) and the dataset card (``README.md`` with the YAML ``configs``) -- the
  folder is loadable only once that final step has run.

``.stvg_extract/`` inside the output folder holds the run's manifest (settings + clip list, checked on
a rerun so that shards of different settings are never mixed) and one small JSON per finished shard
(clips skipped because their video was missing or undecodable). It is not uploaded by ``--push-to-hub``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from stvg_data.dataset_folder import DatasetFolderWriter, default_metadata, shard_path, write_rows
from stvg_data.evaluation import write_json_atomic as _write_json_atomic
from stvg_data.protocol import MAX_FRAMES, PROTOCOL_NAME, SAMPLE_FPS
from stvg_data.schema import (
    BOX_TOLERANCE_PX,
    QUERY_CONFIG,
    DatasetSchemaError,
    QUERY_FEATURES,
    VIDEO_CONFIG,
    validate_query_row,
    validate_video_row,
    video_features,
)

STATE_DIR = ".stvg_extract"
REPORT_FILE = "conversion_report.json"
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
# Source split names -> contract split names.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}
SPLIT_ORDER = ("train", "validation", "test")
# Basic columns of a ``videos`` row (everything but the features).
VIDEO_BASE_COLUMNS = ("video_id", "fps", "width", "height", "frame_count", "segment", "frame_ids")


class ConversionError(RuntimeError):
    """A conversion cannot start or finish (bad arguments, missing inputs, inconsistent output folder)."""


def contract_split(name: str) -> str:
    """``val`` -> ``validation`` etc.; raises on names that are not a train/validation/test split."""
    key = str(name).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ConversionError(f"unknown split {name!r}; use one of train, validation (val), test")
    return SPLIT_ALIASES[key]


# ---------------------------------------------------------------------------------------------------
# Skip-and-count report


class SkipReport:
    """Counts of skipped records by reason (with a few examples each) plus free statistics.

    ``skip(reason, example, entries=1, queries=n)``: one skipped record; ``entries``/``queries`` say how
    many annotation entries and sentences were lost with it.
    """

    def __init__(self, max_examples: int = 5) -> None:
        self.max_examples = max_examples
        self.reasons: dict[str, dict[str, Any]] = {}
        self.stats: Counter = Counter()

    def _slot(self, reason: str) -> dict[str, Any]:
        return self.reasons.setdefault(reason, {"count": 0, "entries": 0, "queries": 0, "clips": 0, "examples": []})

    def skip(self, reason: str, example: Any, entries: int = 0, queries: int = 0, clips: int = 0) -> None:
        slot = self._slot(reason)
        slot["count"] += 1
        slot["entries"] += entries
        slot["queries"] += queries
        slot["clips"] += clips
        if len(slot["examples"]) < self.max_examples:
            slot["examples"].append(example)

    def count(self, key: str, amount: int = 1) -> None:
        self.stats[key] += amount

    def merge(self, other: Mapping[str, Any]) -> None:
        """Add a report dict (``to_dict`` output, e.g. from another process) into this one."""
        for reason, slot in (other.get("skipped") or {}).items():
            mine = self._slot(reason)
            for key in ("count", "entries", "queries", "clips"):
                mine[key] += int(slot.get(key, 0))
            room = self.max_examples - len(mine["examples"])
            mine["examples"].extend(list(slot.get("examples", []))[: max(room, 0)])
        self.stats.update(other.get("stats") or {})

    @property
    def total_skipped(self) -> int:
        return sum(slot["count"] for slot in self.reasons.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped": {reason: dict(slot) for reason, slot in sorted(self.reasons.items())},
            "stats": dict(sorted(self.stats.items())),
        }

    def summary_lines(self) -> list[str]:
        lines = [f"  {reason}: {slot['count']} (queries lost: {slot['queries']})" for reason, slot in sorted(self.reasons.items())]
        return lines or ["  none"]


class SkipRecord(Exception):
    """Raised inside a converter to skip one record with a reason (caught and counted, never fatal)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def finite_number(value: Any, what: str, integer: bool = False) -> float:
    """``value`` if it is a finite number (an integral one with ``integer``); else ``SkipRecord("bad_value")``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SkipRecord("bad_value", f"{what} must be a finite number, got {value!r}")
    if integer and int(value) != value:
        raise SkipRecord("bad_value", f"{what} must be an integer, got {value!r}")
    return value


def boxes_outside_frame(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Per box (K, 4) x1 y1 x2 y2: does it leave the frame by more than the contract's ``BOX_TOLERANCE_PX``?"""
    tol = BOX_TOLERANCE_PX
    x1, y1, x2, y2 = np.asarray(xyxy).T
    return (x1 < -tol) | (y1 < -tol) | (x2 > width + tol) | (y2 > height + tol)


def stanza_parse_function(stanza_dir: str | None = None) -> Callable[[str], Any]:
    """The stanza parser's ``parse``; raises its ``StanzaModelsMissingError`` now if models are missing."""
    from processing_stvg.parsing_stvg import StanzaSentenceParser

    parser = StanzaSentenceParser(model_dir=stanza_dir)
    parser.pipeline  # build now: a missing model stops the run before anything is written
    return parser.parse


# ---------------------------------------------------------------------------------------------------
# Plan: what a converter produces before any video is touched


@dataclass
class ConversionPlan:
    """Everything a converter read from its annotations.

    ``videos[split]``: ``videos`` rows without features, in a stable order; ``queries[split]``: ``queries``
    rows; ``video_files[video_id]``: the name of the source video file (file name, relative path or
    stem) looked up under ``--videos``; ``card``: text blocks of the dataset card.
    """

    source: str
    pretty_name: str
    videos: dict[str, list[dict[str, Any]]]
    queries: dict[str, list[dict[str, Any]]]
    video_files: dict[str, str]
    report: SkipReport
    has_gt_boxes: bool
    card: "CardText"
    metadata_extra: dict[str, Any] = field(default_factory=dict)

    def splits(self) -> list[str]:
        return [split for split in SPLIT_ORDER if split in self.videos] + sorted(
            split for split in self.videos if split not in SPLIT_ORDER
        )

    def counts(self, keep_video_ids: Mapping[str, set[str]] | None = None) -> dict[str, dict[str, int]]:
        """Clips, queries and query types per split (only the clips in ``keep_video_ids``, when given)."""
        out = {}
        for split in self.splits():
            videos, queries = self.videos[split], self.queries.get(split, [])
            if keep_video_ids is not None:
                kept = keep_video_ids.get(split, set())
                videos = [row for row in videos if row["video_id"] in kept]
                queries = [row for row in queries if row["video_id"] in kept]
            qtypes = Counter(row["qtype"] for row in queries)
            out[split] = {
                "clips": len(videos),
                "queries": len(queries),
                "declarative": qtypes.get("declarative", 0),
                "interrogative": qtypes.get("interrogative", 0),
            }
        return out


@dataclass
class CardText:
    """Dataset-card blocks a converter supplies (markdown)."""

    title: str
    summary: str
    sources: str
    citations: str
    licence: str
    conventions: str


def validate_rows(plan: ConversionPlan) -> None:
    """Every planned row follows the contract (a bug in a converter must not reach the shards)."""
    base = video_features(with_features=False)
    for split in plan.splits():
        for row in plan.videos[split]:
            validate_video_row(row, base)
        for row in plan.queries.get(split, []):
            validate_query_row(row)


# ---------------------------------------------------------------------------------------------------
# Dataset card


SCHEMA_TEXT = """\
Two configs, one row per clip (`videos`) and one row per sentence (`queries`), joined on `video_id`:

| config | column | type | meaning |
|---|---|---|---|
| videos | `video_id` | string | clip id |
| videos | `fps`, `width`, `height`, `frame_count` | float32 / int32 | of the source video |
| videos | `segment` | [int32, int32] | the clip's [begin, end) in absolute frame ids of the source video |
| videos | `frame_ids` | list<int32> | absolute ids of the frames sampled by the protocol below |
| videos | `boxes` | Array3D (T, M, 4) float32 | detector proposals, pixels, x1 y1 x2 y2 (feature builds only) |
| videos | `box_scores`, `box_labels` | Array2D (T, M) | detector score, class id (-1 = padding) (feature builds only) |
| videos | `region_features` | Array3D (T, M, Dv) float16 | RoI features (feature builds only) |
| videos | `frame_features` | Array2D (T, Df) float16 | pooled frame features (feature builds only) |
| queries | `query_id`, `video_id`, `sentence` | string | |
| queries | `qtype` | string | `declarative` or `interrogative` |
| queries | `entities`, `relations`, `target` | structured | entity phrases; (subject index, predicate, object index or -1); index of the queried entity |
| queries | `gt_sted` | [int32, int32] | ground-truth span, absolute frame ids, end exclusive |
| queries | `gt_frame_ids`, `gt_boxes` | list<int32>, list<[4] float32> | ground-truth boxes (pixels, x1 y1 x2 y2) on the sampled frames inside `gt_sted` |

Weak supervision: training code reads no `gt_*` column; they serve evaluation only."""

PROTOCOL_TEXT = f"""\
Protocol `{PROTOCOL_NAME}` (the 5 fps / 200-frame setup of TubeDETR that the paper follows): start with
the clip's first frame; walk f over [begin, end) and keep f when floor(f·{SAMPLE_FPS:g}/fps) >
floor(last_kept·{SAMPLE_FPS:g}/fps); if more than {MAX_FRAMES} remain keep positions floor(j·len/{MAX_FRAMES}).
tIoU on raw frame ids with exclusive ends; vIoU = sum of box IoU over sampled frames in the
intersection of predicted and GT spans / number of sampled frames in their union."""


def card_description(plan: ConversionPlan, counts: Mapping[str, Mapping[str, int]], with_features: bool,
                     feature_settings: Mapping[str, Any] | None) -> str:
    """Markdown body of the dataset card."""
    card = plan.card
    lines = [f"# {card.title}", "", card.summary.strip(), "", "## Contents", ""]
    lines.append("| split | clips | queries | declarative | interrogative |")
    lines.append("|---|---|---|---|---|")
    for split, c in counts.items():
        lines.append(f"| {split} | {c['clips']} | {c['queries']} | {c['declarative']} | {c['interrogative']} |")
    lines.append("")
    if not plan.has_gt_boxes:
        lines += [
            "**No ground-truth boxes.** This build was made without the per-frame box annotations, so every",
            "`gt_frame_ids` / `gt_boxes` list is empty (the card's `stvg_vem.gt_boxes_available` is `false`).",
            "`gt_sted` is present; spatial evaluation (vIoU) refuses this dataset. Rebuild it with the box",
            "annotations to evaluate.",
            "",
        ]
    if with_features:
        settings = json.dumps(dict(feature_settings or {}), sort_keys=True)
        lines += ["Features: detector proposals and RoI features of `StvgFeatureExtractor` with settings", "",
                  f"`{settings}`", ""]
        if (feature_settings or {}).get("random_init"):
            lines += ["**Random-initialised networks** (`--random-init-detector`): these proposals and features "
                      "carry no visual meaning; this build only exercises the pipeline.", ""]
    else:
        lines += ["Features: none (`--no-features` build: the `videos` config holds clip metadata and sampled",
                  f"frame ids only). {add_features_hint(plan.source)}", ""]
    skipped = plan.report.to_dict()["skipped"]
    lines += ["## Conversion", "", card.conventions.strip(), ""]
    if skipped:
        lines += ["Records skipped (details and examples in `conversion_report.json`):", ""]
        lines += [f"- `{reason}`: {slot['count']}" for reason, slot in skipped.items()]
        lines.append("")
    else:
        lines += ["No record was skipped (see `conversion_report.json`).", ""]
    lines += ["## Schema", "", SCHEMA_TEXT, "", "## Protocol", "", PROTOCOL_TEXT, ""]
    lines += ["## Sources", "", card.sources.strip(), "", "## Licence", "", card.licence.strip(), ""]
    lines += ["## Citation", "", "```bibtex", card.citations.strip(), "```", ""]
    return "\n".join(lines)


def add_features_hint(source: str) -> str:
    """How to get features for a ``--no-features`` build (feature runs never reuse its shards)."""
    script = f"dataset_scripts/{str(source).split('-')[0]}.py"
    return (f"To add features, rerun `{script}` with the same options but `--videos DIR` in place of "
            "`--no-features`, and a new `--output-dir` (or `--overwrite`, which deletes this build first).")


def card_metadata(plan: ConversionPlan, counts, with_features: bool, num_regions: int, region_dim: int | None,
                  frame_dim: int | None, label_names: list[str], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return default_metadata(
        source=plan.source,
        label_names=label_names,
        num_regions=num_regions,
        region_dim=region_dim,
        frame_dim=frame_dim,
        with_features=with_features,
        gt_boxes_available=bool(plan.has_gt_boxes),
        counts={split: dict(c) for split, c in counts.items()},
        **dict(plan.metadata_extra),
        **dict(extra or {}),
    )


# ---------------------------------------------------------------------------------------------------
# Writing helpers


def write_json_atomic(path: Path, data: Any) -> Path:
    """``stvg_data.evaluation.write_json_atomic`` (indent 2) of ``data`` with numpy values, tuples and sets."""
    return _write_json_atomic(plain_json(data), path, indent=2)


def plain_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (numpy scalars -> Python, tuples and sets -> lists)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def remove_shards(root: Path, config: str, split: str, keep: int | None = None) -> None:
    """Delete ``<config>/<split>-*.parquet`` shards (all, or those with index >= ``keep``)."""
    folder = root / config
    if not folder.is_dir():
        return
    for path in folder.glob(f"{split}-*.parquet"):
        index = path.stem.rsplit("-", 1)[-1]
        if keep is None or (index.isdigit() and int(index) >= keep):
            path.unlink()


def remove_stale_temporaries(root: Path) -> int:
    """Temporary files left by a killed writer (``.<name>.<random>.tmp``)."""
    removed = 0
    for folder in (root, root / VIDEO_CONFIG, root / QUERY_CONFIG, root / STATE_DIR):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                path.unlink()
                removed += 1
    return removed


def write_queries(writer: DatasetFolderWriter, plan: ConversionPlan, rows_per_shard: int,
                  keep_video_ids: Mapping[str, set[str]] | None = None) -> dict[str, int]:
    """Write the ``queries`` shards of every split (replacing older ones); returns queries per split."""
    written = {}
    for split in plan.splits():
        rows = plan.queries.get(split, [])
        if keep_video_ids is not None:
            kept = keep_video_ids.get(split, set())
            dropped = [row for row in rows if row["video_id"] not in kept]
            for row in dropped:
                plan.report.skip("video_unavailable", {"query_id": row["query_id"], "video_id": row["video_id"]},
                                 queries=1)
            rows = [row for row in rows if row["video_id"] in kept]
        remove_shards(writer.root, QUERY_CONFIG, split)
        if rows:  # an empty parquet shard would make the split unloadable: write none
            write_rows(writer, QUERY_CONFIG, split, rows, QUERY_FEATURES, rows_per_shard)
        written[split] = len(rows)
    return written


def finalize_folder(writer: DatasetFolderWriter, plan: ConversionPlan, counts, metadata: Mapping[str, Any],
                    with_features: bool, feature_settings: Mapping[str, Any] | None) -> Path:
    write_json_atomic(writer.root / REPORT_FILE, {
        "source": plan.source,
        "counts": counts,
        "gt_boxes_available": plan.has_gt_boxes,
        **plan.report.to_dict(),
    })
    empty = [split for split, c in counts.items() if not c["clips"] or not c["queries"]]
    if len(empty) == len(counts):
        raise ConversionError(f"no clip and query survived the conversion into {writer.root}; see "
                              f"{writer.root / REPORT_FILE} for the skipped records")
    for split in empty:
        print(f"warning: split {split!r} has no clips or no queries left and is left out of the dataset",
              file=sys.stderr)
        remove_shards(writer.root, VIDEO_CONFIG, split)
        remove_shards(writer.root, QUERY_CONFIG, split)
    description = card_description(plan, counts, with_features, feature_settings)
    return writer.finalize(metadata, description=description, pretty_name=plan.pretty_name)


def write_without_features(plan: ConversionPlan, output_dir: str | Path, rows_per_shard: int = 5000) -> dict[str, Any]:
    """The ``--no-features`` build: metadata-only ``videos`` rows + ``queries`` + card + report."""
    validate_rows(plan)
    writer = DatasetFolderWriter(output_dir)
    remove_stale_temporaries(writer.root)
    features = video_features(with_features=False)
    for split in plan.splits():
        remove_shards(writer.root, VIDEO_CONFIG, split)
        if plan.videos[split]:
            write_rows(writer, VIDEO_CONFIG, split, plan.videos[split], features, rows_per_shard)
    write_queries(writer, plan, rows_per_shard)
    counts = plan.counts()
    metadata = card_metadata(plan, counts, False, 0, None, None, [])
    finalize_folder(writer, plan, counts, metadata, False, None)
    return counts


# ---------------------------------------------------------------------------------------------------
# Video files


class VideoIndex:
    """Finds a clip's source video under ``--videos``: by relative path, file name or stem, anywhere
    below the folder (VidOR keeps ``<group>/<vid>.mp4``; HC-STVG a flat or per-folder layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConversionError(f"--videos {str(self.root)!r} is not a folder")
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        for path in sorted(self.root.rglob("*")):
            if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
                self.by_name.setdefault(path.name, path)
                self.by_stem.setdefault(path.stem, path)

    def find(self, name: str) -> Path | None:
        direct = self.root / name
        if direct.is_file():
            return direct
        base = Path(name).name
        return self.by_name.get(base) or self.by_stem.get(Path(base).stem) or self.by_stem.get(base)


# ---------------------------------------------------------------------------------------------------
# Feature extraction (one process or many, via Accelerate)


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("feature extraction (with --videos)")
    group.add_argument("--detector", default="fasterrcnn_resnet50_fpn", help="torchvision detector name")
    group.add_argument("--detector-weights", default=None, help="local detector weights (.pth/.safetensors)")
    group.add_argument("--backbone", default="detector", help="'detector' or a timm model name for region features")
    group.add_argument("--backbone-weights", default=None, help="local weights of the timm backbone")
    group.add_argument("--random-init-detector", action="store_true",
                       help="build random-initialised networks (tests only: the features mean nothing)")
    group.add_argument("--seed", type=int, default=0, help="seed of a random-initialised network")
    group.add_argument("--num-regions", type=int, default=10, help="proposals kept per frame (M)")
    group.add_argument("--detector-min-size", type=int, default=800)
    group.add_argument("--detector-max-size", type=int, default=1333)
    group.add_argument("--region-pooling", default="avgpool", choices=("avgpool", "box_head"))
    group.add_argument("--feature-norm", default="none", choices=("none", "l2"))
    group.add_argument("--frame-batch-size", type=int, default=8, help="frames per forward pass")
    group.add_argument("--device", default="auto", help="'auto' (the process's accelerator device), 'cpu', 'cuda'...")
    group.add_argument("--clips-per-shard", type=int, default=64, help="clips per videos shard (resume unit)")
    group.add_argument("--overwrite", action="store_true",
                       help="delete the shards of an earlier run with other settings instead of refusing")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="dataset folder to write (Hub layout)")
    parser.add_argument("--videos", default=None, help="folder of the source videos (enables feature extraction)")
    parser.add_argument("--no-features", action="store_true", help="write clips without features (videos absent)")
    parser.add_argument("--rows-per-shard", type=int, default=5000, help="queries (and no-feature videos) per shard")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the finished dataset")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--hub-token", default=None, help="Hub token (default: the logged-in one)")
    add_feature_arguments(parser)


def feature_settings(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Keyword arguments of ``StvgFeatureExtractor`` from the CLI options."""
    return {
        "backbone": args.backbone,
        "detector": args.detector,
        "detector_weights_path": args.detector_weights,
        "backbone_weights_path": args.backbone_weights,
        "random_init": bool(args.random_init_detector),
        "seed": args.seed,
        "num_regions": args.num_regions,
        "detector_min_size": args.detector_min_size,
        "detector_max_size": args.detector_max_size,
        "region_pooling": args.region_pooling,
        "feature_norm": args.feature_norm,
        "batch_size": args.frame_batch_size,
        "device": device,
    }


def _settings_fingerprint(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that change the features (device and batch size do not)."""
    return {k: v for k, v in settings.items() if k not in ("device", "batch_size")}


def chunk_clips(rows: list[dict[str, Any]], clips_per_shard: int) -> list[list[dict[str, Any]]]:
    return [rows[i : i + clips_per_shard] for i in range(0, len(rows), clips_per_shard)] or [[]]


def shards_of_rank(num_chunks: int, rank: int, world_size: int) -> list[int]:
    """Chunk ``k`` belongs to process ``k % world_size``: shard index = chunk index (world-size independent)."""
    return list(range(rank, num_chunks, world_size))


def extract_clip(row: Mapping[str, Any], path: Path, video_processor: Any, extractor: Any) -> dict[str, Any]:
    """Decode the protocol frames of one clip and compute its proposals and features (a full ``videos`` row)."""
    begin, end = row["segment"]
    decoded = video_processor.decode(str(path), fps=float(row["fps"]), segment=(int(begin), int(end)))
    out = extractor.extract(decoded.frames)
    boxes = out["boxes"].astype(np.float32)
    if (decoded.width, decoded.height) != (row["width"], row["height"]):
        # The annotation's pixel space is the contract's; rescale proposals from the decoded size.
        scale = np.array([row["width"] / decoded.width, row["height"] / decoded.height] * 2, dtype=np.float32)
        boxes = boxes * scale
    full = {key: row[key] for key in VIDEO_BASE_COLUMNS}
    full["frame_ids"] = [int(f) for f in decoded.frame_ids]
    full.update(
        boxes=boxes,
        box_scores=out["box_scores"].astype(np.float32),
        box_labels=out["box_labels"].astype(np.int32),
        region_features=out["region_features"].astype(np.float16),
        frame_features=out["frame_features"].astype(np.float16),
    )
    return full


def write_with_features(plan_builder: Callable[[], ConversionPlan], args: argparse.Namespace) -> dict[str, Any] | None:
    """Extract features of every planned clip over the Accelerate processes, then finalize (main process).

    ``plan_builder`` runs on the main process only. Returns the counts on the main process, ``None``
    elsewhere.
    """
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list
    from tqdm.auto import tqdm

    from processing_stvg.feature_extraction_stvg import StvgFeatureExtractor
    from processing_stvg.video_processing_stvg import StvgVideoProcessor, VideoInputError

    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    root = Path(args.output_dir)
    device = str(accelerator.device) if args.device == "auto" else args.device
    settings = feature_settings(args, device)

    plan: ConversionPlan | None = None
    message: dict[str, Any] = {}
    failure: Exception | None = None
    if accelerator.is_main_process:
        try:
            preflight_extractor(settings)
            plan = plan_builder()
            validate_rows(plan)
            message = _prepare_output(root, plan, args, settings)
        except Exception as error:  # any failure must reach the other processes, or they wait forever
            message = {"error": f"{type(error).__name__}: {error}"}
            failure = error
    payload = [message]
    if world > 1:
        payload = broadcast_object_list(payload, from_process=0)
    message = payload[0]
    if "error" in message:
        if failure is not None:
            raise failure
        raise SystemExit(f"[rank {rank}] the main process could not prepare the conversion: {message['error']}")

    if world > 1 and torch_device_type(device) == "cpu":
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # no oversubscription of the cores
    extractor = StvgFeatureExtractor(**settings)
    video_processor = StvgVideoProcessor()
    index = VideoIndex(args.videos)
    writer = DatasetFolderWriter(root)
    region_dim, frame_dim = extractor.region_dim, extractor.frame_dim
    features = video_features(args.num_regions, region_dim, frame_dim, with_features=True)

    # Work of this process: (split, shard index, clips).
    jobs, skipped_done = [], 0
    for split, clips in message["clips"].items():
        chunks = chunk_clips(clips, message["clips_per_shard"])
        for k in shards_of_rank(len(chunks), rank, world):
            if chunk_done(writer, split, k):
                skipped_done += 1
                continue
            jobs.append((split, k, chunks[k]))
    total = sum(len(chunk) for _, _, chunk in jobs)
    print(f"[rank {rank}/{world}] {len(jobs)} shard(s) to write ({total} clips), {skipped_done} finished shard(s) skipped",
          flush=True)
    started, frames_done, clips_done = time.perf_counter(), 0, 0
    bar = tqdm(total=total, desc=f"features rank {rank}", unit="clip", position=rank, dynamic_ncols=True,
               disable=os.environ.get("STVG_NO_PROGRESS") == "1")
    for split, k, chunk in jobs:
        rows, skips = [], SkipReport()
        for clip in chunk:
            row = clip["row"]
            path = index.find(clip["file"])
            if path is None:
                skips.skip("video_missing", {"video_id": row["video_id"], "file": clip["file"]}, clips=1)
            else:
                try:
                    full = extract_clip(row, path, video_processor, extractor)
                    validate_video_row(full, features)
                except VideoInputError as error:
                    skips.skip("video_undecodable", {"video_id": row["video_id"], "error": str(error)[:300]}, clips=1)
                except DatasetSchemaError as error:
                    skips.skip("features_invalid", {"video_id": row["video_id"], "error": str(error)[:300]}, clips=1)
                else:
                    rows.append(full)
                    frames_done += len(full["frame_ids"])
                    if full["frame_ids"] != row["frame_ids"]:
                        skips.count("clips_frame_ids_adjusted_to_decoded_video")
            clips_done += 1
            bar.update(1)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(clips_s=f"{clips_done / elapsed:.2f}", frames_s=f"{frames_done / elapsed:.1f}")
        # The shard first (none when no clip of the chunk could be read: an empty parquet file would make the
        # split unloadable), then its sidecar, which marks the chunk as finished.
        if rows:
            writer.write_shard(VIDEO_CONFIG, split, k, rows, features)
        write_json_atomic(sidecar_path(root, split, k), {"video_ids": [r["video_id"] for r in rows], **skips.to_dict()})
    bar.close()
    elapsed = time.perf_counter() - started
    if clips_done:
        print(f"[rank {rank}] {clips_done} clips, {frames_done} frames in {elapsed:.1f}s "
              f"({clips_done / max(elapsed, 1e-9):.2f} clips/s, {frames_done / max(elapsed, 1e-9):.1f} frames/s)",
              flush=True)
    accelerator.wait_for_everyone()
    counts = None
    if accelerator.is_main_process:
        counts = _finish_features(root, plan, message, args, settings, extractor, region_dim, frame_dim)
    accelerator.wait_for_everyone()
    return counts


def preflight_extractor(settings: Mapping[str, Any]) -> None:
    """Build the extractor and run it on one tiny frame: missing weights (``MissingWeightsError``, naming
    the file to download) or bad settings stop the run before any work is split."""
    from processing_stvg.feature_extraction_stvg import StvgFeatureExtractor

    StvgFeatureExtractor(**{**settings, "device": "cpu"}).extract(np.zeros((1, 32, 32, 3), dtype=np.uint8))


def sidecar_path(root: Path, split: str, k: int) -> Path:
    return root / STATE_DIR / f"{VIDEO_CONFIG}-{split}-{k:05d}.json"


def chunk_done(writer: DatasetFolderWriter, split: str, k: int) -> bool:
    """A chunk is finished when its sidecar exists and so does its shard (unless it kept no clip)."""
    sidecar = sidecar_path(writer.root, split, k)
    if not sidecar.is_file():
        return False
    try:
        video_ids = json.loads(sidecar.read_text(encoding="utf-8"))["video_ids"]
    except (json.JSONDecodeError, KeyError):
        return False
    return not video_ids or writer.shard_done(VIDEO_CONFIG, split, k)


def torch_device_type(device: str) -> str:
    return str(device).split(":")[0]


def _prepare_output(root: Path, plan: ConversionPlan, args: argparse.Namespace, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Main process: check/record the manifest, clear leftovers; returns the message for all processes."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = plain_json({
        "source": plan.source,
        "clips_per_shard": int(args.clips_per_shard),
        "num_regions": int(args.num_regions),
        "extractor": _settings_fingerprint(settings),
        "clips": {split: [row["video_id"] for row in plan.videos[split]] for split in plan.splits()},
    })
    manifest_path = root / STATE_DIR / "manifest.json"
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        if previous != manifest:
            if not args.overwrite:
                changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
                raise ConversionError(
                    f"{root} holds shards of an earlier run with other settings ({', '.join(changed)} differ); "
                    "use a new --output-dir or pass --overwrite to delete them"
                )
            _clear_output(root)
    elif (root / VIDEO_CONFIG).is_dir() and any((root / VIDEO_CONFIG).glob("*.parquet")):
        if not args.overwrite:
            raise ConversionError(f"{root} already holds videos shards not made by a feature run (e.g. a "
                                  "--no-features build, whose shards a feature run cannot reuse); "
                                  "use a new --output-dir or pass --overwrite to delete them")
        _clear_output(root)
    removed = remove_stale_temporaries(root)
    if removed:
        print(f"removed {removed} temporary file(s) left by an interrupted run", flush=True)
    write_json_atomic(manifest_path, manifest)
    clips = {
        split: [{"row": row, "file": plan.video_files[row["video_id"]]} for row in plan.videos[split]]
        for split in plan.splits()
    }
    return {"clips": clips, "clips_per_shard": int(args.clips_per_shard)}


def _clear_output(root: Path) -> None:
    for name in (VIDEO_CONFIG, QUERY_CONFIG, STATE_DIR):
        if (root / name).is_dir():
            shutil.rmtree(root / name)
    for name in ("README.md", REPORT_FILE):
        if (root / name).is_file():
            (root / name).unlink()


def _finish_features(root: Path, plan: ConversionPlan, message, args, settings, extractor, region_dim, frame_dim):
    """Main process, after every process finished: check shards, write queries, report and card."""
    writer = DatasetFolderWriter(root)
    kept: dict[str, set[str]] = {}
    for split, clips in message["clips"].items():
        chunks = chunk_clips(clips, message["clips_per_shard"])
        remove_shards(root, VIDEO_CONFIG, split, keep=len(chunks))
        kept[split] = set()
        for k in range(len(chunks)):
            if not chunk_done(writer, split, k):
                raise ConversionError(f"shard {shard_path(root, VIDEO_CONFIG, split, k)} is missing after extraction; rerun")
            info = json.loads(sidecar_path(root, split, k).read_text(encoding="utf-8"))
            if not info["video_ids"]:
                stale = shard_path(root, VIDEO_CONFIG, split, k)
                if stale.is_file():
                    stale.unlink()
            kept[split].update(info["video_ids"])
            plan.report.merge(info)
    write_queries(writer, plan, args.rows_per_shard, keep_video_ids=kept)
    counts = plan.counts(keep_video_ids=kept)
    metadata = card_metadata(plan, counts, True, args.num_regions, region_dim, frame_dim, extractor.get_label_names(),
                             extra={"feature_extractor": dict(_settings_fingerprint(settings))})
    finalize_folder(writer, plan, counts, metadata, True, _settings_fingerprint(settings))
    return counts


# ---------------------------------------------------------------------------------------------------
# Hub


def push_to_hub(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = "Upload stvg-vem dataset") -> Any:
    """Create the dataset repo (if needed) and upload the finished folder in one commit.

    Uploads ``README.md``, ``conversion_report.json`` and the parquet shards; leaves out ``.stvg_extract/``
    and temporary files.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise ConversionError(f"{folder} has no README.md: the conversion did not finish; nothing pushed")
    files = sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    operations = [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
                  for path in files]
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    return api.create_commit(repo_id=repo_id, repo_type="dataset", operations=operations, commit_message=commit_message)


# ---------------------------------------------------------------------------------------------------
# Shared CLI driver


def run_conversion(args: argparse.Namespace, plan_builder: Callable[[], ConversionPlan]) -> dict[str, Any] | None:
    """Build and write a dataset as the options say; returns the counts (main process)."""
    if args.no_features and args.videos:
        raise ConversionError("--no-features and --videos exclude each other")
    if not args.no_features and not args.videos:
        raise ConversionError("pass --videos DIR to extract features, or --no-features to write clips without them")
    if args.clips_per_shard <= 0 or args.rows_per_shard <= 0:
        raise ConversionError("--clips-per-shard and --rows-per-shard must be positive")
    started = time.perf_counter()
    if args.no_features:
        plan = plan_builder()
        counts = write_without_features(plan, args.output_dir, args.rows_per_shard)
        _print_summary(plan, counts, args.output_dir, time.perf_counter() - started)
    else:
        counts = write_with_features(plan_builder, args)
        if counts is None:
            return None
        print(f"wrote {args.output_dir} in {time.perf_counter() - started:.1f}s: {json.dumps(counts)}", flush=True)
    if args.push_to_hub:
        push_to_hub(args.output_dir, args.push_to_hub, token=args.hub_token, private=args.private)
        print(f"pushed {args.output_dir} to the Hub dataset repo {args.push_to_hub}", flush=True)
    return counts


def _print_summary(plan: ConversionPlan, counts, output_dir, seconds: float) -> None:
    print(f"wrote {output_dir} in {seconds:.1f}s", flush=True)
    for split, c in counts.items():
        print(f"  {split}: {c['clips']} clips, {c['queries']} queries "
              f"({c['declarative']} declarative, {c['interrogative']} interrogative)", flush=True)
    print("skipped records:", flush=True)
    for line in plan.report.summary_lines():
        print(line, flush=True)


def cli_main(run: Callable[[list[str] | None], Any], argv: list[str] | None) -> int:
    """Run a converter's ``run(argv)`` turning expected failures into one clear line and exit code 2."""
    from processing_stvg.parsing_stvg import StanzaModelsMissingError

    try:
        run(argv)
    except (ConversionError, StanzaModelsMissingError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


SOURCES = ("vidstg", "hcstvg")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, for ``--help`` only: the converter's own parser handles its options."""
    parser = argparse.ArgumentParser(
        prog="extract.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="`extract.py vidstg --help` / `extract.py hcstvg --help` list a converter's options.",
    )
    parser.add_argument("source", choices=SOURCES, help="which converter runs (dataset_scripts/<source>.py)")
    parser.add_argument("options", nargs=argparse.REMAINDER,
                        help="the converter's options, with --videos DIR (features) and --output-dir DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sources = SOURCES
    if argv and argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    if not argv or argv[0] not in sources:
        print(f"usage: extract.py {{{','.join(sources)}}} <converter options> --videos DIR --output-dir DIR\n"
              "  (the options of dataset_scripts/vidstg.py or dataset_scripts/hcstvg.py)", file=sys.stderr)
        return 2
    if argv[0] == "vidstg":
        from dataset_scripts import vidstg as converter
    else:
        from dataset_scripts import hcstvg as converter
    return converter.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
