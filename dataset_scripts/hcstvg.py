"""HC-STVG (v1 / v2) -> stvg-vem contract dataset (DESIGN section 5).

    python dataset_scripts/hcstvg.py --version v1|v2 --annotations FILE --output-dir DIR
        [--videos DIR | --no-features] [--split train|validation|test] [--stanza-dir DIR] [--push-to-hub ID]

One annotation file is one split (default: guessed from the file name, ``train*`` / ``val*`` / ``test*``);
convert several files into the same ``--output-dir`` to get several splits (the card lists every split
on disk). The file is a JSON object ``{"<video file name>": entry}``:

- v1 entry: ``img_num`` (frames of the clip), ``width``, ``height``, ``st_frame`` (first frame of the
  tube, 1-based), ``st_time``/``ed_time`` (seconds), ``caption``, ``bbox``: one ``[x, y, w, h]`` per
  frame from ``st_frame`` on (so the tube ends after ``st_frame + len(bbox) - 1``);
- v2 entry: ``img_num``, ``img_size`` = ``[height, width]``, ``st_frame`` and ``ed_frame`` (1-based,
  both inclusive), ``st_time``/``ed_time``, ``English`` (the sentence), ``bbox`` (one ``[x, y, w, h]``
  per frame of ``st_frame..ed_frame``).

Conventions (also written into the card):

- frame numbers: HC-STVG counts frames from 1 (``--frame-base 1``, default). The contract's frame ids
  are 0-based positions in the decoded video, so annotation frame ``n`` is frame id ``n - 1``:
  ``gt_sted = [st_frame - 1, st_frame - 1 + len(bbox))`` for v1 and ``[st_frame - 1, ed_frame)`` for v2
  (end exclusive). ``--frame-base 0`` takes the numbers as 0-based ids instead (TubeDETR's
  preprocessing does that: its GT tube starts one frame later than this default);
- clips: every HC-STVG video is a 20-second clip (``--clip-seconds 20``) with no fps in the annotation,
  so ``fps = img_num / 20`` and ``segment = [0, img_num)`` (the whole clip); the protocol then samples
  5 fps (about 100 frames);
- boxes: ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]`` (pixels, continuous coordinates, no +-1);
- one clip and one declarative query per video: ``video_id = query_id`` = the file name without extension.

Sentences are free text, so they are parsed with the stanza parser
(:class:`processing_stvg.parsing_stvg.StanzaSentenceParser`, ``--stanza-dir`` for local models; without
models the run stops with the parser's message naming what to download). Library users can pass any
``parse_function(sentence) -> ParsedSentence`` to :func:`build_plan`.

Malformed entries are skipped and counted in ``conversion_report.json``: missing keys, bad numbers, tube
end before start, tube outside the clip, a ``bbox`` count that disagrees with ``st_frame``/``ed_frame``,
malformed or degenerate boxes, boxes outside the frame, sentences the parser rejects.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from dataset_scripts.extract import (
    CardText,
    ConversionError,
    ConversionPlan,
    SkipRecord,
    SkipReport,
    add_output_arguments,
    boxes_outside_frame,
    cli_main,
    contract_split,
    finite_number,
    run_conversion,
    stanza_parse_function,
)
from processing_stvg.parsing_stvg import ParsedSentence, SentenceParseError
from stvg_data.protocol import sample_frame_ids

CLIP_SECONDS = 20.0
VERSIONS = {
    "v1": {"sentence": "caption", "required": ("img_num", "width", "height", "st_frame", "caption", "bbox")},
    "v2": {"sentence": "English", "required": ("img_num", "img_size", "st_frame", "ed_frame", "English", "bbox")},
}

CITATIONS = (
    "@article{tang2021hcstvg,\n"
    "  title={Human-centric Spatio-Temporal Video Grounding With Visual Transformers},\n"
    "  author={Tang, Zongheng and Liao, Yue and Liu, Si and Li, Guanbin and Jin, Xiaojie and Jiang, Hongxu and Yu, Qian and Xu, Dong},\n"
    "  journal={IEEE Transactions on Circuits and Systems for Video Technology}, year={2021}}"
)


def guess_split(path: Path) -> str:
    name = path.stem.lower()
    for prefix, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        if name.startswith(prefix) or f"_{prefix}" in name or f"-{prefix}" in name:
            return split
    raise ConversionError(f"cannot tell the split of {path.name!r} from its name; pass --split train|validation|test")


def check_entry(entry: Any, version: str, frame_base: int) -> dict[str, Any]:
    """Validated essentials of one HC-STVG entry (0-based, end-exclusive tube); raises ``SkipRecord``."""
    spec = VERSIONS[version]
    if not isinstance(entry, Mapping):
        raise SkipRecord("missing_keys", f"entry is a {type(entry).__name__}, not an object")
    missing = [key for key in spec["required"] if key not in entry]
    if missing:
        raise SkipRecord("missing_keys", f"missing {missing}")
    frame_count = int(finite_number(entry["img_num"], "img_num", integer=True))
    if version == "v1":
        width = int(finite_number(entry["width"], "width", integer=True))
        height = int(finite_number(entry["height"], "height", integer=True))
    else:
        size = entry["img_size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise SkipRecord("bad_value", f"img_size must be [height, width], got {size!r}")
        height = int(finite_number(size[0], "img_size[0] (height)", integer=True))
        width = int(finite_number(size[1], "img_size[1] (width)", integer=True))
    if frame_count <= 0 or width <= 0 or height <= 0:
        raise SkipRecord("bad_value", f"img_num/width/height must be positive, got {frame_count}/{width}/{height}")
    boxes = entry["bbox"]
    if not isinstance(boxes, list):
        raise SkipRecord("bad_box", f"bbox must be a list of [x, y, w, h], got {type(boxes).__name__}")
    start = int(finite_number(entry["st_frame"], "st_frame", integer=True)) - frame_base
    if version == "v1":
        end = start + len(boxes)
    else:
        end = int(finite_number(entry["ed_frame"], "ed_frame", integer=True)) - frame_base + 1
    if end <= start:
        raise SkipRecord("tube_end_before_start", f"tube [{start}, {end}) (0-based, end exclusive) is empty or reversed")
    if start < 0 or end > frame_count:
        raise SkipRecord("tube_outside_video", f"tube [{start}, {end}) outside the clip's {frame_count} frames "
                                               f"(frame numbers taken as {frame_base}-based)")
    if len(boxes) != end - start:
        raise SkipRecord("bbox_count_mismatch", f"{len(boxes)} boxes for the {end - start} frames of st_frame..ed_frame")
    try:
        xywh = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise SkipRecord("bad_box", f"bbox is not a list of 4 numbers per frame ({error})") from error
    if xywh.ndim != 2 or xywh.shape[1] != 4 or not np.isfinite(xywh).all():
        raise SkipRecord("bad_box", f"bbox must hold 4 finite numbers per frame, got shape {xywh.shape}")
    if (xywh[:, 2:] < 0).any():
        raise SkipRecord("box_degenerate", "bbox with negative width or height")
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    outside = boxes_outside_frame(xyxy, width, height)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise SkipRecord("box_outside_frame", f"box {xyxy[first].tolist()} (x1 y1 x2 y2) on frame id {start + first} "
                                              f"is outside the {width}x{height} frame")
    sentence = entry[spec["sentence"]]
    if not isinstance(sentence, str) or not sentence.strip():
        raise SkipRecord("empty_sentence", f"{spec['sentence']} {sentence!r}")
    return {"frame_count": frame_count, "width": width, "height": height, "tube": (start, end), "boxes": xyxy,
            "sentence": sentence.strip()}


def build_plan(
    annotations: str | Path,
    version: str,
    split: str | None = None,
    parse_function: Callable[[str], ParsedSentence] | None = None,
    stanza_dir: str | None = None,
    frame_base: int = 1,
    clip_seconds: float = CLIP_SECONDS,
) -> ConversionPlan:
    """Read one HC-STVG annotation file into rows; bad entries are skipped and counted in ``plan.report``."""
    if version not in VERSIONS:
        raise ConversionError(f"--version must be v1 or v2, got {version!r}")
    if frame_base not in (0, 1):
        raise ConversionError(f"--frame-base must be 0 or 1, got {frame_base}")
    if not clip_seconds > 0:
        raise ConversionError(f"--clip-seconds must be positive, got {clip_seconds}")
    path = Path(annotations)
    if not path.is_file():
        raise ConversionError(f"--annotations {str(path)!r} is not a file")
    split = contract_split(split) if split else guess_split(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path} is not readable JSON: {error}") from error
    if not isinstance(data, Mapping):
        raise ConversionError(f"{path} must hold a JSON object {{video file name: entry}}, got {type(data).__name__}")
    if parse_function is None:
        parse_function = stanza_parse_function(stanza_dir)
    report = SkipReport()
    videos, queries, video_files = [], [], {}
    for name, entry in data.items():
        video_id = Path(str(name)).stem if Path(str(name)).suffix else str(name)
        example = {"video": name}
        try:
            if video_id in video_files:
                raise SkipRecord("duplicate_video", f"{name!r} maps to video_id {video_id!r}, already used")
            info = check_entry(entry, version, frame_base)
            try:
                parsed = parse_function(info["sentence"])
            except SentenceParseError as error:
                raise SkipRecord("sentence_unparsable", str(error)) from error
        except SkipRecord as skip:
            report.skip(skip.reason, {**example, "detail": skip.detail}, entries=1, queries=1)
            continue
        fps = info["frame_count"] / clip_seconds
        frame_ids = sample_frame_ids(0, info["frame_count"], fps)
        start, end = info["tube"]
        sampled = np.asarray(frame_ids, dtype=np.int64)
        gt_frames = sampled[(sampled >= start) & (sampled < end)]
        gt_boxes = info["boxes"][gt_frames - start].astype(np.float32)
        videos.append({"video_id": video_id, "fps": fps, "width": info["width"], "height": info["height"],
                       "frame_count": info["frame_count"], "segment": [0, info["frame_count"]], "frame_ids": frame_ids})
        queries.append({"query_id": video_id, "video_id": video_id, "sentence": info["sentence"], "qtype": "declarative",
                        **parsed.to_row(), "gt_sted": [start, end], "gt_frame_ids": gt_frames.tolist(),
                        "gt_boxes": gt_boxes.tolist()})
        video_files[video_id] = str(name)
    conventions = "\n".join([
        f"- HC-STVG {version}, file `{path.name}` -> split `{split}`.",
        f"- frame numbers of the annotation are {frame_base}-based: annotation frame n = frame id n - {frame_base}; "
        "`gt_sted` is 0-based with an exclusive end "
        + ("(`[st_frame - 1, st_frame - 1 + len(bbox))`)." if version == "v1" else "(`[st_frame - 1, ed_frame)`)."),
        f"- every clip lasts {clip_seconds:g} s: `fps = img_num / {clip_seconds:g}`, `segment = [0, img_num)`.",
        "- boxes `[x, y, w, h]` -> `[x, y, x + w, y + h]` pixels.",
        "- sentences parsed by the stanza dependency parser (`processing_stvg.parsing_stvg`).",
    ])
    card = CardText(
        title=f"HC-STVG {version} (stvg-vem format)",
        summary=(f"HC-STVG {version} human-centric spatio-temporal video grounding (Tang et al., 2021) converted to "
                 "the stvg-vem dataset contract: one 20-second movie clip and one declarative sentence per video, "
                 "with the described person's ground-truth tube."),
        sources=("- HC-STVG annotations and videos: https://github.com/tzhhhh123/HC-STVG "
                 "(v1: train/test; v2: train/val, test boxes withheld).\n"
                 "- Converter: `dataset_scripts/hcstvg.py` of stvg-vem."),
        citations=CITATIONS,
        licence=("The HC-STVG release states no licence; its clips are cut from movies and are distributed for "
                 "research use only. Use this derived dataset for research, cite HC-STVG, and check the "
                 "original terms before any other use."),
        conventions=conventions,
    )
    return ConversionPlan(
        source=f"hcstvg-{version}",
        pretty_name=f"HC-STVG {version} (stvg-vem)",
        videos={split: videos},
        queries={split: queries},
        video_files=video_files,
        report=report,
        has_gt_boxes=True,
        card=card,
        metadata_extra={"parser": "stanza", "frame_base": frame_base, "clip_seconds": clip_seconds,
                        "gt_sted_end": "exclusive"},
    )


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, choices=tuple(VERSIONS))
    parser.add_argument("--annotations", required=True, help="one HC-STVG annotation JSON file (one split)")
    parser.add_argument("--split", default=None, help="split name (default: from the file name)")
    parser.add_argument("--stanza-dir", default=None, help="local stanza model folder")
    parser.add_argument("--frame-base", type=int, default=1, choices=(0, 1),
                        help="numbering of st_frame/ed_frame in the file (HC-STVG: 1)")
    parser.add_argument("--clip-seconds", type=float, default=CLIP_SECONDS, help="duration of every clip")
    add_output_arguments(parser)
    return parser


def run(argv: list[str] | None = None, parse_function: Callable[[str], ParsedSentence] | None = None) -> Any:
    args = build_arg_parser().parse_args(argv)
    return run_conversion(args, lambda: build_plan(args.annotations, args.version, args.split, parse_function,
                                                   args.stanza_dir, args.frame_base, args.clip_seconds))


def main(argv: list[str] | None = None) -> int:
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
