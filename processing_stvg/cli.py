"""``stvg-ground``: ground a sentence in a video with a trained stvg-vem checkpoint.

    stvg-ground --model CHECKPOINT --video clip.mp4 --text "an adult pushes a baby walker" \\
        --output tube.json [--visualize out.mp4]

Writes ``tube.json``: a one-element predictions list (DESIGN sec. 6 format, plus ``score``,
``sentence`` and the parse used). ``--parsed`` takes an already-parsed sentence (JSON with entities,
relations, target) instead of running stanza; ``--random-init-detector`` builds a random detector
(tests and demos only: its boxes are meaningless). ``--detector-weights`` / ``--backbone-weights`` take
local weight files (checkpoints whose features came from a ``timm`` backbone need the latter, unless its
weights are in the Hugging Face cache).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stvg-ground", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder (save_pretrained of model + processor) or Hub id")
    p.add_argument("--video", required=True, help="video file")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the sentence to ground (parsed with stanza)")
    text.add_argument("--parsed", help="an already-parsed sentence: JSON text or a .json file with "
                      "entities, relations ([{subject, predicate, object}]), target")
    p.add_argument("--output", required=True, help="where to write the tube JSON")
    p.add_argument("--visualize", help="also draw the tube on the clip: .mp4 or .gif")
    p.add_argument("--segment", nargs=2, type=int, metavar=("BEGIN", "END"),
                   help="ground only in frames [BEGIN, END) of the video")
    p.add_argument("--fps", type=float, help="override the container's frame rate")
    p.add_argument("--parser-dir", help="local stanza model folder (default: the processor's setting)")
    p.add_argument("--detector-weights", help="local detector weights (.pth/.safetensors)")
    p.add_argument("--backbone-weights", metavar="PATH",
                   help="local weights of the checkpoint's timm backbone (.safetensors/.pth; default: the "
                   "Hugging Face cache of its hub id)")
    p.add_argument("--random-init-detector", action="store_true",
                   help="use a random-initialised detector/backbone (tests only)")
    p.add_argument("--device", default=None, help="torch device for the model and feature extractor")
    p.add_argument("--query-id", default="query", help="query_id written in the JSON")
    return p


def _load_parsed(value: str) -> dict[str, Any]:
    candidate = Path(value)
    text = candidate.read_text(encoding="utf-8") if value.strip().endswith(".json") and candidate.is_file() else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--parsed {value!r} is neither a JSON file nor JSON text: {err}") from err
    if not isinstance(parsed, dict):
        raise ValueError("--parsed must be a JSON object with entities, relations, target")
    return parsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModel

    import modeling_stvg  # noqa: F401  (registers StvgConfig / StvgModel)
    from processing_stvg import StvgProcessor
    from processing_stvg.feature_extraction_stvg import MissingWeightsError
    from processing_stvg.parsing_stvg import ParsedSentence
    from processing_stvg.processing_stvg import tube_to_json
    from processing_stvg.visualization_stvg import visualize_tube
    from stvg_data.evaluation import write_json_atomic

    if args.backbone_weights and not Path(args.backbone_weights).is_file():
        raise MissingWeightsError(f"--backbone-weights {args.backbone_weights!r} does not exist (or is not a file)")
    processor = StvgProcessor.from_pretrained(args.model)
    extractor = processor.feature_extractor
    if args.parser_dir:
        processor.parser_dir = args.parser_dir
    if args.detector_weights:
        extractor.detector_weights_path = args.detector_weights
    if args.random_init_detector:
        extractor.random_init = True
    if args.backbone_weights:
        # The extractor loads them itself when it builds the backbone (timm: safetensors / weights-only .pth).
        if extractor.uses_detector_backbone:
            raise ValueError(f"--backbone-weights: the checkpoint's features come from the detector "
                             f"({extractor.detector!r}), not a timm backbone; use --detector-weights")
        if extractor.random_init:
            raise ValueError("--backbone-weights has no effect on a random-initialised feature extractor "
                             "(--random-init-detector, or a checkpoint saved with random_init=True)")
        extractor.backbone_weights_path = str(args.backbone_weights)
    if args.device:
        extractor.device = args.device
    model = AutoModel.from_pretrained(args.model).eval()
    if args.device:
        model = model.to(args.device)

    sentence = args.text if args.text is not None else ParsedSentence.from_row(_load_parsed(args.parsed))
    parsed = processor.parse(sentence)
    decoded = processor.video_processor.decode(args.video, fps=args.fps, segment=args.segment)
    inputs = processor(video=decoded, text=parsed)
    with torch.no_grad():
        outputs = model(**{k: v.to(model.device) for k, v in inputs.items()})
    tube = processor.post_process_grounding(outputs, inputs)[0]
    record = tube_to_json(tube, query_id=args.query_id)
    record["sentence"] = args.text if args.text is not None else parsed.sentence
    record["parse"] = parsed.to_row()
    record["video"] = str(args.video)
    write_json_atomic([record], args.output, indent=1)
    if args.visualize:
        label = record["sentence"] if len(record["sentence"]) <= 60 else record["sentence"][:57] + "..."
        visualize_tube(decoded.frames, decoded.frame_ids, tube, args.visualize, label=label)
    return record


def main(argv: list[str] | None = None) -> int:
    from processing_stvg.feature_extraction_stvg import FeatureExtractionError, MissingWeightsError
    from processing_stvg.parsing_stvg import SentenceParseError, StanzaModelsMissingError
    from processing_stvg.processing_stvg import ProcessorInputError
    from processing_stvg.video_processing_stvg import VideoInputError

    args = build_parser().parse_args(argv)
    try:
        record = run(args)
    except (VideoInputError, SentenceParseError, StanzaModelsMissingError, MissingWeightsError,
            FeatureExtractionError, ProcessorInputError, ValueError, OSError) as err:
        print(f"stvg-ground: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    span = record["sted"]
    print(f"stvg-ground: span [{span[0]}, {span[1]}) with {len(record['boxes'])} boxes -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
