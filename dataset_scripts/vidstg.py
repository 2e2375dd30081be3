"""VidSTG -> stvg-vem contract dataset (DESIGN section 5).

    python dataset_scripts/vidstg.py --annotations DIR --output-dir DIR [--vidor-annotations DIR]
        [--videos DIR | --no-features] [--parser annotation|stanza] [--splits val test ...] [--push-to-hub ID]

Inputs:

- ``--annotations DIR``: VidSTG sentence files ``{train,val,test}_annotations.json`` (github.com/Guaranteer/
  VidSTG-Dataset). Each entry is one relation instance of one clip ``(vid, used_segment)``, with one
  caption (declarative) and 0-2 questions (interrogative). VidSTG ``val`` becomes split ``validation``.
- ``--vidor-annotations DIR`` (optional): the VidOR per-video files holding the boxes, laid out as VidOR
  ships them, ``<DIR>/<training|validation>/<group>/<vid>.json`` (any depth works: files are found by
  ``<vid>.json``). VidSTG train/val videos come from VidOR *training*, VidSTG test from VidOR *validation*.
  Without it, queries carry ``gt_sted`` but empty ``gt_frame_ids`` / ``gt_boxes``, and the card says so.
- ``--videos DIR`` (optional): VidOR videos (``<DIR>/<group>/<vid>.mp4``) for feature extraction
  (see ``dataset_scripts/extract.py``); ``--no-features`` writes clips without features instead.

Conventions (documented in the card too):

- one ``videos`` row per ``(vid, used_segment)``: ``video_id = "<vid>_<begin_fid>_<end_fid>"``,
  ``segment = [used_segment.begin_fid, used_segment.end_fid)`` (DESIGN section 6), ``frame_ids`` the
  protocol's sampled frames of that segment;
- one ``queries`` row per caption (``declarative``) and per question (``interrogative``);
  ``query_id = "<video_id>_<entry index>_<d|i><k>"``;
- ``gt_sted = [temporal_gt.begin_fid, temporal_gt.end_fid)`` (VidSTG's ``end_fid`` is exclusive; it can
  equal ``frame_count``);
- ``gt_frame_ids`` = the clip's sampled frames inside ``gt_sted``; ``gt_boxes`` the target's VidOR box
  (``bbox`` xmin ymin xmax ymax, pixels) on each of them.

Parsers (``--parser``):

- ``annotation`` (default; needs no model) -- the rule, one sentence at a time:
  1. the entities are the relation's subject and object (``used_relation.subject_tid`` /
     ``object_tid``), the target is the one whose tid is the sentence's ``target_id``;
  2. in a question, the target entity's phrase is the sentence's wh-word (``who``, ``what``, ``which``,
     ``whom``, ``whose``; the first one in the sentence);
  3. any other entity's phrase is the earliest not-yet-used whole-word occurrence in the lower-cased
     sentence of one of its category's names: the VidOR category itself with ``_`` read as a space and
     each ``/`` alternative (``ball/sports_ball`` -> "ball", "sports ball"), plus the synonyms of
     ``CATEGORY_SYNONYMS`` ("adult" -> "man", "woman", ...), plurals included; the subject is matched
     before the object, the longest name wins at a position. When no name occurs, the phrase is the
     category's first name ("sports ball") and the report counts it (``stats.entity_phrase_not_in_sentence``);
  4. entities are ordered by where their phrase occurs in the sentence (not found: last);
  5. one relation: (subject entity, the VidOR predicate with ``_`` read as a space and a parenthesised
     note dropped -- "lean_on" -> "lean on", "play(instrument)" -> "play", object entity).
- ``stanza``: :class:`processing_stvg.parsing_stvg.StanzaSentenceParser` (``--stanza-dir``: local models);
  sentences it cannot parse are skipped and counted; missing models stop the run with its message.

Malformed records are skipped and counted in ``conversion_report.json`` (reason -> count + examples),
never fatal: missing keys, bad numbers, segment or temporal_gt end not after its begin, temporal_gt
outside the video or the segment, a target or relation tid not among ``subject/objects``, a VidOR
file missing, missing trajectory frames for the target, boxes outside the frame, clip metadata that
disagrees between entries of one clip, empty sentences, sentences the parser rejects.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections import OrderedDict
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

SOURCE_SPLITS = ("train", "val", "test")
WH_WORDS = ("who", "whom", "whose", "what", "which")
# Extra names of VidOR categories seen in VidSTG sentences (the category's own names always count).
CATEGORY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "adult": ("man", "woman", "person", "lady", "gentleman", "guy", "people", "player", "grown-up"),
    "child": ("kid", "boy", "girl", "toddler"),
    "baby": ("infant", "toddler"),
    "screen/monitor": ("tv", "television", "computer"),
    "hamster/rat": ("mouse",),
    "cattle/cow": ("bull", "ox", "calf"),
    "baby_seat": ("car seat",),
    "baby_walker": ("walker",),
    "cellphone": ("phone", "cell phone", "mobile phone", "smartphone"),
    "watercraft": ("boat", "ship", "canoe", "kayak", "yacht"),
    "dish": ("plate", "bowl"),
    "cup": ("mug", "glass"),
    "toy": ("doll",),
    "sofa": ("couch",),
    "table": ("desk",),
    "dog": ("puppy",),
    "cat": ("kitten",),
    "car": ("vehicle",),
    "aircraft": ("plane", "airplane", "helicopter"),
    "motorcycle": ("motorbike",),
    "bicycle": ("bike",),
    "electric_fan": ("fan",),
    "fruits": ("fruit", "apple", "banana", "orange"),
    "vegetables": ("vegetable",),
    "faucet": ("tap",),
    "bird": ("parrot",),
    "snake": ("python",),
}
IRREGULAR_PLURALS = {"man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
                     "gentleman": "gentlemen", "fish": "fish", "sheep": "sheep", "goose": "geese"}
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")

REQUIRED_KEYS = ("vid", "fps", "frame_count", "used_segment", "width", "height", "subject/objects",
                 "used_relation", "temporal_gt", "captions")

CARD = CardText(
    title="VidSTG (stvg-vem format)",
    summary=(
        "VidSTG spatio-temporal video grounding (Zhang et al., CVPR 2020) converted to the stvg-vem dataset "
        "contract: one `videos` row per annotated clip `(vid, used_segment)` of a VidOR video, one `queries` "
        "row per declarative caption or interrogative question, with the target's ground-truth tube taken "
        "from the VidOR box trajectories."
    ),
    sources=(
        "- Sentences: VidSTG, https://github.com/Guaranteer/VidSTG-Dataset (`{split}_annotations.json`).\n"
        "- Boxes and videos: VidOR, https://xdshang.github.io/docs/vidor.html (per-video annotation files, "
        "`trajectories`; videos from YFCC100M).\n"
        "- Converter: `dataset_scripts/vidstg.py` of stvg-vem."
    ),
    citations=(
        "@inproceedings{zhang2020vidstg,\n"
        "  title={Where Does It Exist: Spatio-Temporal Video Grounding for Multi-Form Sentences},\n"
        "  author={Zhang, Zhu and Zhao, Zhou and Zhao, Yang and Wang, Qi and Liu, Huasheng and Gao, Lianli},\n"
        "  booktitle={CVPR}, year={2020}}\n"
        "@inproceedings{shang2019vidor,\n"
        "  title={Annotating Objects and Relations in User-Generated Videos},\n"
        "  author={Shang, Xindi and Di, Donglin and Xiao, Junbin and Cao, Yu and Yang, Xun and Chua, Tat-Seng},\n"
        "  booktitle={ICMR}, year={2019}}"
    ),
    licence=(
        "The VidSTG repository states no licence and asks users to cite VidSTG and VidOR. VidOR's annotations "
        "are released for research use; its videos come from YFCC100M under their uploaders' Creative Commons "
        "licences. Use this derived dataset for research, with both citations; check the original terms "
        "before any other use."
    ),
    conventions="",  # filled per build (parser, GT availability)
)


# ---------------------------------------------------------------------------------------------------
# Annotation parser


def _names_of(category: str) -> list[str]:
    """Names a VidOR category goes by in sentences (lower case, words separated by single spaces)."""
    names: list[str] = []
    for alternative in category.lower().split("/"):
        alternative = re.sub(r"\(.*?\)", "", alternative).replace("_", " ").strip()
        if alternative:
            names.append(alternative)
    names.extend(CATEGORY_SYNONYMS.get(category.lower(), ()))
    with_plurals: list[str] = []
    for name in names:
        words = name.split()
        last = words[-1]
        plurals = {IRREGULAR_PLURALS.get(last, last + ("es" if last.endswith(("s", "x", "ch", "sh")) else "s"))}
        if last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
            plurals.add(last[:-1] + "ies")
        with_plurals.append(name)
        with_plurals.extend(" ".join(words[:-1] + [p]) for p in sorted(plurals) if p != last)
    seen, unique = set(), []
    for name in with_plurals:
        if name not in seen:
            seen.add(name)
            unique.append(name)
    return unique


def _tokens(sentence: str) -> list[tuple[str, int]]:
    """Lower-cased words with their character offsets."""
    return [(m.group(0), m.start()) for m in _WORD.finditer(sentence.lower())]


def _find_name(tokens: list[tuple[str, int]], names: list[str], used: set[int]) -> tuple[int, int] | None:
    """Earliest (start token, end token) where one of ``names`` occurs on unused tokens; longest name first."""
    words = [t for t, _ in tokens]
    split_names = sorted((n.split() for n in names), key=len, reverse=True)
    for start in range(len(words)):
        for name in split_names:
            end = start + len(name)
            if words[start:end] == name and not used.intersection(range(start, end)):
                return start, end
    return None


def predicate_text(predicate: str) -> str:
    """VidOR predicate -> relation phrase: ``lean_on`` -> ``lean on``, ``play(instrument)`` -> ``play``."""
    text = re.sub(r"\(.*?\)", "", str(predicate)).replace("_", " ")
    return " ".join(text.split())


def annotation_parse(sentence: str, categories: Mapping[int, str], subject_tid: int, predicate: str, object_tid: int,
                     target_id: int, is_question: bool, stats: SkipReport | None = None) -> ParsedSentence:
    """Entities / relation / target of a VidSTG sentence from its annotation (rule in the module doc)."""
    tokens = _tokens(sentence)
    if not tokens:
        raise SentenceParseError(f"sentence {sentence!r} has no words")
    tids = [subject_tid] if subject_tid == object_tid else [subject_tid, object_tid]
    used: set[int] = set()
    spans: dict[int, tuple[int, int] | None] = {}
    phrases: dict[int, str] = {}
    if is_question and target_id in tids:
        wh = next((i for i, (word, _) in enumerate(tokens) if word in WH_WORDS or word in ("who's", "what's")), None)
        if wh is not None:
            spans[target_id] = (wh, wh + 1)
            used.add(wh)
            phrases[target_id] = tokens[wh][0].split("'")[0]
        elif stats is not None:
            stats.count("question_without_wh_word")
    for tid in tids:
        if tid in spans:
            continue
        names = _names_of(categories[tid])
        span = _find_name(tokens, names, used)
        spans[tid] = span
        if span is None:
            phrases[tid] = names[0]
            if stats is not None:
                stats.count("entity_phrase_not_in_sentence")
        else:
            used.update(range(*span))
            phrases[tid] = " ".join(word for word, _ in tokens[span[0] : span[1]])
    order = sorted(tids, key=lambda tid: (spans[tid] is None, spans[tid][0] if spans[tid] else 0, tids.index(tid)))
    position = {tid: i for i, tid in enumerate(order)}
    relations = [(position[subject_tid], predicate_text(predicate), position[object_tid])]
    return ParsedSentence(
        entities=[phrases[tid] for tid in order],
        relations=relations,
        target=position[target_id],
        sentence=sentence,
        is_question=is_question,
    )


# ---------------------------------------------------------------------------------------------------
# VidOR boxes


class VidorBoxes:
    """Boxes of one VidOR video as dense arrays: ``boxes[tid]`` is ``(frames, 4)`` float64, NaN where the
    object has no box on a frame."""

    def __init__(self, annotation: Mapping[str, Any], path: Path) -> None:
        self.path = path
        trajectories = annotation.get("trajectories")
        if not isinstance(trajectories, list):
            raise SkipRecord("vidor_file_malformed", f"{path}: no 'trajectories' list")
        self.num_frames = len(trajectories)
        frame_idx, tids, coords = [], [], []
        try:
            for f, boxes in enumerate(trajectories):
                for box in boxes:
                    b = box["bbox"]
                    frame_idx.append(f)
                    tids.append(int(box["tid"]))
                    coords.append((b["xmin"], b["ymin"], b["xmax"], b["ymax"]))
        except (KeyError, TypeError, ValueError) as error:
            raise SkipRecord("vidor_file_malformed", f"{path}: bad trajectory box ({error!r})") from error
        frame_arr = np.asarray(frame_idx, dtype=np.int64)
        tid_arr = np.asarray(tids, dtype=np.int64)
        coord_arr = np.asarray(coords, dtype=np.float64).reshape(-1, 4)
        self.boxes: dict[int, np.ndarray] = {}
        for tid in np.unique(tid_arr):
            dense = np.full((self.num_frames, 4), np.nan)
            mask = tid_arr == tid
            dense[frame_arr[mask]] = coord_arr[mask]
            self.boxes[int(tid)] = dense

    def tube(self, tid: int, frame_ids: np.ndarray, width: int, height: int) -> np.ndarray:
        """``(K, 4)`` boxes of ``tid`` on ``frame_ids``; raises ``SkipRecord`` on missing or bad boxes."""
        frame_ids = np.asarray(frame_ids, dtype=np.int64)
        if tid not in self.boxes:
            raise SkipRecord("missing_trajectory_frames", f"{self.path}: object tid {tid} has no box on any frame")
        if frame_ids.size == 0:
            return np.zeros((0, 4), np.float32)
        if frame_ids.max() >= self.num_frames:
            raise SkipRecord("missing_trajectory_frames",
                             f"{self.path}: trajectories cover {self.num_frames} frames, frame {int(frame_ids.max())} needed")
        boxes = self.boxes[tid][frame_ids]
        missing = np.isnan(boxes).any(axis=1)
        if missing.any():
            raise SkipRecord("missing_trajectory_frames",
                             f"{self.path}: tid {tid} has no box on frame(s) {frame_ids[missing][:5].tolist()}")
        x1, y1, x2, y2 = boxes.T
        if (x2 < x1).any() or (y2 < y1).any():
            raise SkipRecord("box_degenerate", f"{self.path}: tid {tid} has boxes with xmax < xmin or ymax < ymin")
        outside = boxes_outside_frame(boxes, width, height)
        if outside.any():
            bad = int(frame_ids[outside][0])
            raise SkipRecord("box_outside_frame",
                             f"{self.path}: tid {tid} box {boxes[outside][0].tolist()} on frame {bad} is outside the "
                             f"{width}x{height} frame")
        return boxes.astype(np.float32)


def index_vidor_files(root: Path) -> dict[str, Path]:
    """``vid -> path`` of every VidOR annotation file under ``root`` (``<split>/<group>/<vid>.json``)."""
    if not root.is_dir():
        raise ConversionError(f"--vidor-annotations {str(root)!r} is not a folder")
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*.json")):
        index.setdefault(path.stem, path)
    if not index:
        raise ConversionError(f"--vidor-annotations {str(root)!r} holds no VidOR .json files "
                              "(expected <split>/<group>/<vid>.json)")
    return index


# ---------------------------------------------------------------------------------------------------
# Entry checks


def check_entry(entry: Any) -> dict[str, Any]:
    """Validated essentials of one VidSTG entry; raises ``SkipRecord`` naming what is wrong."""
    if not isinstance(entry, Mapping):
        raise SkipRecord("missing_keys", f"entry is a {type(entry).__name__}, not an object")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    relation = entry.get("used_relation")
    for key, sub in (("used_segment", ("begin_fid", "end_fid")), ("temporal_gt", ("begin_fid", "end_fid")),
                     ("used_relation", ("subject_tid", "object_tid", "predicate"))):
        value = entry.get(key)
        if key in entry and not isinstance(value, Mapping):
            missing.append(key)
        elif isinstance(value, Mapping):
            missing.extend(f"{key}.{s}" for s in sub if s not in value)
    if missing:
        raise SkipRecord("missing_keys", f"missing {missing}")
    fps = float(finite_number(entry["fps"], "fps"))
    frame_count = int(finite_number(entry["frame_count"], "frame_count", integer=True))
    width = int(finite_number(entry["width"], "width", integer=True))
    height = int(finite_number(entry["height"], "height", integer=True))
    if fps <= 0 or frame_count <= 0 or width <= 0 or height <= 0:
        raise SkipRecord("bad_value", f"fps/frame_count/width/height must be positive, got {fps}/{frame_count}/{width}/{height}")
    seg, gt = entry["used_segment"], entry["temporal_gt"]
    seg_begin = int(finite_number(seg["begin_fid"], "used_segment.begin_fid", integer=True))
    seg_end = int(finite_number(seg["end_fid"], "used_segment.end_fid", integer=True))
    gt_begin = int(finite_number(gt["begin_fid"], "temporal_gt.begin_fid", integer=True))
    gt_end = int(finite_number(gt["end_fid"], "temporal_gt.end_fid", integer=True))
    if seg_end <= seg_begin:
        raise SkipRecord("segment_end_before_start", f"used_segment [{seg_begin}, {seg_end}) is empty or reversed")
    if seg_begin < 0 or seg_end > frame_count:
        raise SkipRecord("segment_outside_video", f"used_segment [{seg_begin}, {seg_end}) outside {frame_count} frames")
    if gt_end <= gt_begin:
        raise SkipRecord("temporal_gt_end_before_start", f"temporal_gt [{gt_begin}, {gt_end}) is empty or reversed")
    if gt_begin < 0 or gt_end > frame_count:
        raise SkipRecord("temporal_gt_outside_video", f"temporal_gt [{gt_begin}, {gt_end}) outside {frame_count} frames")
    # used_segment.end_fid is the segment's last annotated frame, temporal_gt.end_fid is exclusive: the
    # span may end one frame after the segment's end id, never later.
    if gt_begin < seg_begin or gt_end > seg_end + 1:
        raise SkipRecord("temporal_gt_outside_segment",
                         f"temporal_gt [{gt_begin}, {gt_end}) outside used_segment [{seg_begin}, {seg_end}]")
    objects = entry["subject/objects"]
    if not isinstance(objects, list):
        raise SkipRecord("missing_keys", "subject/objects is not a list")
    try:
        categories = {int(o["tid"]): str(o["category"]) for o in objects}
    except (KeyError, TypeError, ValueError) as error:
        raise SkipRecord("missing_keys", f"subject/objects item without tid/category ({error!r})") from error
    subject_tid, object_tid = relation["subject_tid"], relation["object_tid"]
    for name, tid in (("subject_tid", subject_tid), ("object_tid", object_tid)):
        if not isinstance(tid, int) or tid not in categories:
            raise SkipRecord("relation_tid_not_in_objects", f"used_relation.{name} {tid!r} not in subject/objects")
    if not isinstance(entry["captions"], list) or not isinstance(entry.get("questions", []), list):
        raise SkipRecord("missing_keys", "captions/questions must be lists")
    return {
        "vid": str(entry["vid"]), "fps": fps, "frame_count": frame_count, "width": width, "height": height,
        "segment": (seg_begin, seg_end), "gt_sted": (gt_begin, gt_end), "categories": categories,
        "subject_tid": subject_tid, "object_tid": object_tid, "predicate": predicate_text(relation["predicate"]),
    }


# ---------------------------------------------------------------------------------------------------
# Plan


def load_annotation_files(annotations: Path, splits: list[str] | None) -> "OrderedDict[str, Path]":
    """``contract split -> file`` of the requested (or all present) VidSTG splits."""
    if not annotations.is_dir():
        raise ConversionError(f"--annotations {str(annotations)!r} is not a folder of {{split}}_annotations.json files")
    wanted = SOURCE_SPLITS if not splits else splits
    files: OrderedDict[str, Path] = OrderedDict()
    for name in wanted:
        split = contract_split(name)
        source = {"train": "train", "validation": "val", "test": "test"}[split]
        path = annotations / f"{source}_annotations.json"
        if path.is_file():
            files[split] = path
        elif splits:
            raise ConversionError(f"split {name!r} asked for, but {path} does not exist")
    if not files:
        raise ConversionError(f"no VidSTG annotation file ({', '.join(f'{s}_annotations.json' for s in SOURCE_SPLITS)}) "
                              f"in {annotations}")
    return files


def build_plan(
    annotations: str | Path,
    vidor_annotations: str | Path | None = None,
    parser: str = "annotation",
    splits: list[str] | None = None,
    parse_function: Callable[[str], ParsedSentence] | None = None,
    stanza_dir: str | None = None,
) -> ConversionPlan:
    """Read VidSTG (+ VidOR) annotations into rows; bad records are skipped and counted in ``plan.report``."""
    files = load_annotation_files(Path(annotations), splits)
    if parse_function is None and parser == "stanza":
        parse_function = stanza_parse_function(stanza_dir)  # fails now, with its message, if models are missing
    elif parser not in ("annotation", "stanza"):
        raise ConversionError(f"--parser must be 'annotation' or 'stanza', got {parser!r}")
    vidor_index = index_vidor_files(Path(vidor_annotations)) if vidor_annotations else None
    report = SkipReport()
    videos: dict[str, list[dict[str, Any]]] = {}
    queries: dict[str, list[dict[str, Any]]] = {}
    video_files: dict[str, str] = {}
    for split, path in files.items():
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ConversionError(f"{path} is not readable JSON: {error}") from error
        if not isinstance(entries, list):
            raise ConversionError(f"{path} must hold a JSON list of entries, got {type(entries).__name__}")
        clips, rows = _convert_split(entries, split, vidor_index, parse_function, report)
        videos[split] = list(clips.values())
        queries[split] = rows
        files_of_split = {row["video_id"]: row["video_id"].rsplit("_", 2)[0] for row in videos[split]}
        video_files.update(files_of_split)
        report.count(f"{split}_source_videos", len(set(files_of_split.values())))
    conventions = [
        "- clip = `(vid, used_segment)`, `video_id = <vid>_<begin_fid>_<end_fid>`, `segment = [begin_fid, end_fid)`.",
        "- `gt_sted = [temporal_gt.begin_fid, temporal_gt.end_fid)` (VidSTG's end is exclusive).",
        "- `gt_frame_ids`: the clip's sampled frames inside `gt_sted`; `gt_boxes`: the target's VidOR box there.",
        f"- sentence parse: `{parser}` parser"
        + (" (entities = the relation's subject/object found by category name in the sentence, the wh-word "
           "for a question's target; relation = the VidOR predicate; see `dataset_scripts/vidstg.py`)."
           if parser == "annotation" else " (stanza dependency parse, `processing_stvg.parsing_stvg`)."),
    ]
    if vidor_index is None:
        conventions.append("- built WITHOUT VidOR annotations: no ground-truth boxes (empty `gt_boxes`).")
    return ConversionPlan(
        source="vidstg",
        pretty_name="VidSTG (stvg-vem)",
        videos=videos,
        queries=queries,
        video_files=video_files,
        report=report,
        has_gt_boxes=vidor_index is not None,
        card=dataclasses.replace(CARD, conventions="\n".join(conventions)),
        metadata_extra={"parser": parser, "gt_sted_end": "exclusive"},
    )


def _convert_split(entries: list[Any], split: str, vidor_index: dict[str, Path] | None,
                   parse_function: Callable[[str], ParsedSentence] | None, report: SkipReport):
    clips: OrderedDict[str, dict[str, Any]] = OrderedDict()
    rows: list[dict[str, Any]] = []
    # Group the entries of one video so each VidOR file is read once.
    order: OrderedDict[str, list[int]] = OrderedDict()
    for i, entry in enumerate(entries):
        vid = str(entry.get("vid")) if isinstance(entry, Mapping) else f"<entry {i}>"
        order.setdefault(vid, []).append(i)
    for vid, indices in order.items():
        vidor: VidorBoxes | None = None
        vidor_error: SkipRecord | None = None
        if vidor_index is not None:
            path = vidor_index.get(vid)
            if path is None:
                vidor_error = SkipRecord("vidor_file_missing", f"no VidOR annotation file {vid}.json")
            else:
                try:
                    vidor = VidorBoxes(json.loads(path.read_text(encoding="utf-8")), path)
                except json.JSONDecodeError as error:
                    vidor_error = SkipRecord("vidor_file_malformed", f"{path}: not JSON ({error})")
                except SkipRecord as error:
                    vidor_error = error
        for i in indices:
            entry = entries[i]
            sentences = _sentences(entry)
            try:
                info = check_entry(entry)
                if vidor_error is not None:
                    raise vidor_error
            except SkipRecord as skip:
                report.skip(skip.reason, {"split": split, "entry": i, "vid": vid, "detail": skip.detail},
                            entries=1, queries=len(sentences))
                continue
            begin, end = info["segment"]
            clip_id = f"{info['vid']}_{begin}_{end}"
            clip = clips.get(clip_id)
            if clip is None:
                clip = {
                    "video_id": clip_id, "fps": info["fps"], "width": info["width"], "height": info["height"],
                    "frame_count": info["frame_count"], "segment": [begin, end],
                    "frame_ids": sample_frame_ids(begin, end, info["fps"]),
                }
            elif (clip["fps"], clip["width"], clip["height"], clip["frame_count"]) != (
                    info["fps"], info["width"], info["height"], info["frame_count"]):
                report.skip("clip_metadata_conflict", {"split": split, "entry": i, "vid": vid,
                                                      "detail": f"fps/size/frame_count differ from an earlier entry of {clip_id}"},
                            entries=1, queries=len(sentences))
                continue
            frame_ids = np.asarray(clip["frame_ids"], dtype=np.int64)
            gt_begin, gt_end = info["gt_sted"]
            gt_frames = frame_ids[(frame_ids >= gt_begin) & (frame_ids < gt_end)]
            made = []
            for kind, k, sentence in sentences:
                try:
                    made.append(_query_row(entry, info, clip_id, i, kind, k, sentence, gt_frames, vidor,
                                           parse_function, report))
                except SkipRecord as skip:
                    report.skip(skip.reason, {"split": split, "entry": i, "vid": vid, "sentence": sentence,
                                              "detail": skip.detail}, queries=1)
            if made:
                clips.setdefault(clip_id, clip)
                rows.extend(made)
                if gt_frames.size == 0:
                    report.count("queries_without_sampled_gt_frame", len(made))
    return clips, rows


def _sentences(entry: Any) -> list[tuple[str, int, Any]]:
    if not isinstance(entry, Mapping):
        return []
    out = []
    for kind, key in (("declarative", "captions"), ("interrogative", "questions")):
        items = entry.get(key) or []
        if isinstance(items, list):
            out.extend((kind, k, item) for k, item in enumerate(items))
    return out


def _query_row(entry, info, clip_id, entry_index, kind, k, item, gt_frames, vidor, parse_function, report):
    if not isinstance(item, Mapping) or "description" not in item or "target_id" not in item:
        raise SkipRecord("missing_keys", "sentence without description/target_id")
    sentence, target_id = item["description"], item["target_id"]
    if not isinstance(sentence, str) or not sentence.strip():
        raise SkipRecord("empty_sentence", f"description {sentence!r}")
    if not isinstance(target_id, int) or target_id not in info["categories"]:
        raise SkipRecord("target_not_in_objects", f"target_id {target_id!r} not in subject/objects")
    if target_id not in (info["subject_tid"], info["object_tid"]):
        raise SkipRecord("target_not_in_relation", f"target_id {target_id} is neither the relation's subject nor object")
    is_question = kind == "interrogative"
    try:
        if parse_function is None:
            parsed = annotation_parse(sentence, info["categories"], info["subject_tid"], info["predicate"], info["object_tid"],
                                      target_id, is_question, stats=report)
        else:
            parsed = parse_function(sentence)
    except SentenceParseError as error:
        raise SkipRecord("sentence_unparsable", str(error)) from error
    if vidor is not None:
        boxes = vidor.tube(target_id, gt_frames, info["width"], info["height"])
        gt_frame_ids, gt_boxes = gt_frames.tolist(), boxes.tolist()
    else:
        gt_frame_ids, gt_boxes = [], []
    return {
        "query_id": f"{clip_id}_{entry_index}_{kind[0]}{k}",
        "video_id": clip_id,
        "sentence": sentence,
        "qtype": kind,
        **parsed.to_row(),
        "gt_sted": list(info["gt_sted"]),
        "gt_frame_ids": gt_frame_ids,
        "gt_boxes": gt_boxes,
    }


# ---------------------------------------------------------------------------------------------------
# CLI


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="folder with VidSTG {split}_annotations.json")
    parser.add_argument("--vidor-annotations", default=None,
                        help="VidOR annotation folder (<split>/<group>/<vid>.json) for ground-truth boxes")
    parser.add_argument("--parser", default="annotation", choices=("annotation", "stanza"))
    parser.add_argument("--stanza-dir", default=None, help="local stanza model folder (--parser stanza)")
    parser.add_argument("--splits", nargs="+", default=None, help="VidSTG splits to convert (train val test); default: all present")
    add_output_arguments(parser)
    return parser


def run(argv: list[str] | None = None) -> Any:
    args = build_arg_parser().parse_args(argv)
    return run_conversion(args, lambda: build_plan(args.annotations, args.vidor_annotations, args.parser, args.splits,
                                                   stanza_dir=args.stanza_dir))


def main(argv: list[str] | None = None) -> int:
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
