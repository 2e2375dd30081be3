"""StvgProcessor: model inputs, save/load, post-processing, tokenizer, bad inputs, end to end with the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from processing_stvg import (
    MODEL_INPUT_KEYS,
    POSTPROCESS_KEYS,
    EmptySentenceError,
    ParsedSentence,
    ProcessorInputError,
    SentenceParseError,
    StanzaModelsMissingError,
    StvgFeatureExtractor,
    StvgProcessor,
    StvgVideoProcessor,
    VideoInputError,
    build_model_inputs,
    build_word_tokenizer,
    post_process_grounding,
    span_to_frame_ids,
)
from processing_stvg.processing_stvg import save_tube_json, tube_to_json
from processing_stvg.tokenization_stvg import BOS_ID, EOS_ID, PAD_ID, UNK_ID, encode_words
from processing_stvg.visualization_stvg import visualize_tube

CORPUS = [
    "an adult in white plays the guitar on stage.",
    "who is in front of the child in the room?",
    "a child holds a toy on the beach.",
    "there is a table next to a black backpack.",
]
PARSED = ParsedSentence(
    entities=["a child", "a toy", "the beach"],
    relations=[(0, "holds", 1), (0, "holds on", 2)],
    target=0,
    sentence="a child holds a toy on the beach.",
)
DEMO_CLIP = "mmaction2_demo.mp4"


def tiny_feature_extractor(**kwargs) -> StvgFeatureExtractor:
    """Random-initialised detector (asked for explicitly), small input size: fast on CPU."""
    options = dict(random_init=True, detector_min_size=96, detector_max_size=160, num_regions=5, device="cpu")
    options.update(kwargs)
    return StvgFeatureExtractor(**options)


@pytest.fixture(scope="module")
def processor() -> StvgProcessor:
    return StvgProcessor(StvgVideoProcessor(), tiny_feature_extractor(), build_word_tokenizer(CORPUS))


@pytest.fixture(scope="module")
def clip_path(shared_dir) -> Path:
    path = shared_dir / "videos" / DEMO_CLIP
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def small_video(seed: int = 0, frames: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (frames, 48, 64, 3), dtype=np.uint8)


def given_boxes(frames: int, regions: int = 5) -> np.ndarray:
    boxes = np.zeros((frames, regions, 4), np.float32)
    for j in range(regions):
        boxes[:, j] = [2 * j, 3 * j, 20 + 4 * j, 30 + 2 * j]
    return boxes


# ------------------------------------------------------------------------------------------ tokenizer


def test_word_tokenizer_ids_and_round_trip(tmp_path):
    tokenizer = build_word_tokenizer(CORPUS + ["The CHILD, the child!"], min_frequency=1)
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[BOS]", "[EOS]")] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID] == [0, 1, 2, 3]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2, 3)
    ids = encode_words(tokenizer, "The Child is in front-of zebra?")
    words = ["the", "child", "is", "in", "front", "-", "of", "zebra", "?"]
    assert ids == [vocab.get(w, UNK_ID) for w in words]
    assert ids[7] == UNK_ID and ids[0] == vocab["the"] > 3
    # most frequent first: "the" occurs most often
    assert vocab["the"] == 4
    rare = build_word_tokenizer(CORPUS, min_frequency=2)
    assert "guitar" not in rare.get_vocab() and "a" in rare.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert encode_words(again, "The Child is in front-of zebra?") == ids
    with pytest.raises(TypeError):
        build_word_tokenizer(["ok", 3])


# ------------------------------------------------------------------------------ build_model_inputs


def test_build_model_inputs_shapes_and_padding():
    tokenizer = build_word_tokenizer(CORPUS)
    rng = np.random.default_rng(0)
    videos = []
    for t, m in ((3, 4), (5, 2)):
        labels = rng.integers(0, 5, (t, m)).astype(np.int32)
        labels[0, -1] = -1
        videos.append({
            "boxes": np.tile(np.array([10, 20, 30, 40], np.float32), (t, m, 1)),
            "box_labels": labels,
            "region_features": rng.normal(size=(t, m, 6)).astype(np.float16),
            "frame_features": rng.normal(size=(t, 3)).astype(np.float16),
            "width": 100, "height": 80,
            "frame_ids": list(range(10, 10 + 6 * t, 6)),
        })
    rows = [
        PARSED.to_row(),
        {"entities": ["who", "the child in the room"], "relations": [{"subject": 0, "predicate": "is in front of", "object": 1}],
         "target": 0},
    ]
    batch = build_model_inputs(videos, rows, tokenizer)
    assert set(batch.keys()) == set(MODEL_INPUT_KEYS) | set(POSTPROCESS_KEYS)
    expected = {
        "region_features": ((2, 5, 4, 6), torch.float32), "region_boxes": ((2, 5, 4, 4), torch.float32),
        "region_mask": ((2, 5, 4), torch.bool), "frame_features": ((2, 5, 3), torch.float32),
        "frame_mask": ((2, 5), torch.bool), "entity_token_ids": ((2, 3, 5), torch.int64),
        "entity_mask": ((2, 3), torch.bool), "relation_token_ids": ((2, 2, 4), torch.int64),
        "relation_entities": ((2, 2, 2), torch.int64), "relation_mask": ((2, 2), torch.bool),
        "target_index": ((2,), torch.int64), "frame_ids": ((2, 5), torch.int64), "width": ((2,), torch.int64),
        "height": ((2,), torch.int64), "pixel_boxes": ((2, 5, 4, 4), torch.float32),
    }
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    np.testing.assert_allclose(batch["region_boxes"][0, 0, 0].numpy(), [0.1, 0.25, 0.3, 0.5])
    assert batch["region_mask"][0, 0].tolist() == [True, True, True, False]
    assert not batch["region_mask"][1, :, 2:].any() and not batch["region_mask"][0, 3:].any()
    assert batch["frame_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch["frame_ids"][0].tolist() == [10, 16, 22, -1, -1]
    assert batch["segment_end"].tolist() == [23, 35]  # no `segment`: one past the last sampled frame
    with_segment = build_model_inputs([{**videos[0], "segment": [10, 27]}], rows[:1], tokenizer)
    assert with_segment["segment_end"].tolist() == [27]
    assert batch["entity_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["relation_entities"][0].tolist() == [[0, 1], [0, 2]]
    assert batch["relation_mask"].tolist() == [[True, True], [True, False]]
    assert batch["relation_token_ids"][1, 0].tolist() == encode_words(tokenizer, "is in front of")
    assert batch["entity_token_ids"][0, 0].tolist()[:2] == encode_words(tokenizer, "a child")
    assert batch["entity_token_ids"][0, 0, 2:].eq(0).all()
    assert batch["target_index"].tolist() == [0, 0]
    # float16 dataset features are widened exactly
    np.testing.assert_array_equal(batch["region_features"][1, :5, :2].numpy(), videos[1]["region_features"].astype(np.float32))
    with pytest.raises(ProcessorInputError, match="2 videos but 1 sentences"):
        build_model_inputs(videos, rows[:1], tokenizer)
    lone = {"entities": ["a dog"], "relations": [], "target": 0}
    single = build_model_inputs(videos[:1], [lone], tokenizer, with_postprocess=False)
    assert set(single.keys()) == set(MODEL_INPUT_KEYS)
    assert single["relation_token_ids"].shape == (1, 1, 1) and not single["relation_mask"].any()


# ---------------------------------------------------------------------------------- processor call


def test_processor_outputs_exact_model_keys(processor):
    frames = small_video()
    inputs = processor(video=frames, text=PARSED, boxes=given_boxes(4))
    assert set(inputs.keys()) == set(MODEL_INPUT_KEYS) | set(POSTPROCESS_KEYS)
    assert inputs["region_features"].shape == (1, 4, 5, processor.feature_extractor.region_dim)
    assert inputs["frame_ids"].tolist() == [[0, 1, 2, 3]]
    assert inputs["segment_end"].tolist() == [4]  # the decoded segment: all 4 frames
    assert inputs["width"].tolist() == [64] and inputs["height"].tolist() == [48]
    np.testing.assert_allclose(inputs["pixel_boxes"][0].numpy(), given_boxes(4))
    np.testing.assert_allclose(inputs["region_boxes"][0, 0, 1].numpy(), [2 / 64, 3 / 48, 24 / 64, 32 / 48], rtol=1e-6)
    assert set(processor.model_inputs(inputs)) == set(MODEL_INPUT_KEYS)
    as_dict = processor(video=frames, text=PARSED.to_row(), boxes=given_boxes(4))
    for key in inputs:
        assert torch.equal(inputs[key], as_dict[key]), key


def test_processor_save_load_round_trip(processor, clip_path, tmp_path):
    from transformers import AutoProcessor

    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["processor_class"] == "StvgProcessor"
    assert config["video_processor"]["video_processor_type"] == "StvgVideoProcessor"
    assert config["feature_extractor"]["feature_extractor_type"] == "StvgFeatureExtractor"
    assert config["parser_language"] == "en" and config["parser_dir"] is None
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, StvgProcessor)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    # given boxes skip the (slow, random) detector; decoding, features and tokens are all compared
    boxes = given_boxes(3)
    first = processor(video=str(clip_path), text=PARSED, segment=(0, 15), boxes=boxes)
    second = loaded(video=str(clip_path), text=PARSED, segment=(0, 15), boxes=boxes)
    assert first["frame_ids"].tolist() == [[0, 6, 12]]
    assert first["segment_end"].tolist() == [15]  # the end of segment=(0, 15), not frame 12 + 1
    assert set(first.keys()) == set(second.keys())
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_processor_bad_inputs(processor, tmp_path):
    frames = small_video()
    with pytest.raises(EmptySentenceError):
        processor(video=frames, text="   ")
    with pytest.raises(StanzaModelsMissingError, match="stanza.download"):
        StvgProcessor(processor.video_processor, processor.feature_extractor, processor.tokenizer,
                      parser_dir=str(tmp_path / "no_models"))(video=frames, text="a child holds a toy.")
    with pytest.raises(VideoInputError, match="missing.mp4"):
        processor(video=str(tmp_path / "missing.mp4"), text=PARSED)
    with pytest.raises(ProcessorInputError, match="text"):
        processor(video=frames)
    with pytest.raises(ProcessorInputError, match="one sentence"):
        processor(video=frames, text=["a", "b"])
    with pytest.raises(SentenceParseError, match="entity 0 .* has no word"):
        processor(video=frames, text={"entities": ["!!"], "relations": [], "target": 0}, boxes=given_boxes(4))


# ------------------------------------------------------------------------------------ post-processing


def test_span_rule_is_the_evaluation_rule():
    from stvg_data import inference

    assert span_to_frame_ids is inference.span_to_frame_ids  # one home for the rule
    ids = [10, 16, 22, 28, 34]
    assert span_to_frame_ids(ids, 40, 1, 3) == (16, 28)  # sampled frames 16 and 22 stand for 16..27
    assert span_to_frame_ids(ids, 40, 0, 5) == (10, 40)  # reaches the last sampled frame: segment end
    assert span_to_frame_ids(ids, 40, 3, 3) == (28, 34)  # empty span widened to its first frame
    assert span_to_frame_ids(ids, 40, -2, 99) == (10, 40)
    assert span_to_frame_ids(ids, 0, 4, 5) == (34, 35)  # a segment end before the last frame is not used


def test_post_process_grounding_maps_to_frame_ids_and_pixels():
    inputs = {
        "frame_ids": torch.tensor([[10, 16, 22, 28, -1]]),
        "frame_mask": torch.tensor([[True, True, True, True, False]]),
        "pixel_boxes": torch.arange(5 * 3 * 4, dtype=torch.float32).reshape(1, 5, 3, 4),
        "width": torch.tensor([100]),
        "height": torch.tensor([80]),
    }
    outputs = {
        "box_index": torch.tensor([[2, 1, -1, 0, -1]]),
        "sted": torch.tensor([[1, 4]]),
        "box_score": torch.tensor([[0.9, 0.5, 0.0, 0.7, 0.0]]),
    }
    (tube,) = post_process_grounding(outputs, inputs)
    assert tube["sted"] == [16, 29]  # no `segment_end`: the clip ends one past its last sampled frame
    assert post_process_grounding(outputs, {**inputs, "segment_end": torch.tensor([33])})[0]["sted"] == [16, 33]
    inside = post_process_grounding({**outputs, "sted": torch.tensor([[1, 3]])}, inputs)[0]
    assert inside["sted"] == [16, 28] and list(inside["boxes"]) == [16, 22]  # up to the next sampled frame
    assert list(tube["boxes"]) == [16, 22, 28]
    assert tube["boxes"][16] == inputs["pixel_boxes"][0, 1, 1].tolist()
    # frame 22 has no chosen proposal: it takes the nearest frame's box (16 and 28 tie -> earlier)
    assert tube["boxes"][22] == inputs["pixel_boxes"][0, 1, 1].tolist()
    assert tube["boxes"][28] == inputs["pixel_boxes"][0, 3, 0].tolist()
    assert tube["score"] == pytest.approx(0.6)
    # no proposal anywhere in the span: the whole frame
    outputs["box_index"] = torch.full((1, 5), -1)
    (tube,) = post_process_grounding(outputs, inputs)
    assert tube["boxes"][16] == [0.0, 0.0, 100.0, 80.0] and tube["score"] is None
    record = tube_to_json(tube, query_id="q1")
    assert record["query_id"] == "q1" and record["sted"] == [16, 29] and "16" in record["boxes"]
    with pytest.raises(ProcessorInputError, match="box_index"):
        post_process_grounding({"sted": torch.tensor([[0, 1]])}, inputs)


# ----------------------------------------------------------------------------------- end to end


def tiny_model(region_dim: int, vocab_size: int):
    from modeling_stvg import StvgConfig, StvgModel

    torch.manual_seed(0)
    config = StvgConfig(
        vocab_size=vocab_size, word_embedding_dim=12, region_feature_dim=region_dim, frame_feature_dim=region_dim,
        hidden_size=32, num_attention_heads=4, intermediate_size=64, num_regions=5, max_frames=200,
        max_relation_tokens=16, dropout=0.0,
    )
    return StvgModel(config).eval()


@pytest.fixture(scope="module")
def checkpoint(processor, tmp_path_factory) -> Path:
    """A tiny random model + the processor saved together, as training would leave them."""
    out = tmp_path_factory.mktemp("checkpoint")
    model = tiny_model(processor.feature_extractor.region_dim, len(processor.tokenizer.get_vocab()))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _check_tube(record, frame_ids, width, height, segment_end):
    start, end = record["sted"]
    assert frame_ids[0] <= start < end <= segment_end
    assert end in frame_ids[1:] or end == segment_end  # the span rule of stvg_data.inference
    inside = [f for f in frame_ids if start <= f < end]
    assert sorted(int(k) for k in record["boxes"]) == inside
    for box in record["boxes"].values():
        x1, y1, x2, y2 = box
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


def test_end_to_end_real_clip(checkpoint, clip_path, tmp_path):
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModel.from_pretrained(checkpoint).eval()
    decoded = processor.video_processor.decode(str(clip_path), segment=(84, 100))
    inputs = processor(video=decoded, text=PARSED)
    with torch.no_grad():
        outputs = model(**inputs)
    (tube,) = processor.post_process_grounding(outputs, inputs)
    assert tube["frame_ids"] == decoded.frame_ids == [84, 90, 96]
    save_tube_json([tube], tmp_path / "tube.json", query_ids=["demo"])
    (record,) = json.loads((tmp_path / "tube.json").read_text())
    assert record["query_id"] == "demo"
    assert inputs["segment_end"].tolist() == [decoded.segment[1]] == [100]
    _check_tube(record, decoded.frame_ids, decoded.width, decoded.height, decoded.segment[1])
    for sted, expected in (([0, 3], [84, 100]), ([0, 2], [84, 96])):
        (span,) = processor.post_process_grounding({**outputs, "sted": torch.tensor([sted])}, inputs)
        assert span["sted"] == expected
    for suffix in (".mp4", ".gif"):
        path = visualize_tube(decoded.frames, decoded.frame_ids, tube, tmp_path / f"vis{suffix}", label="a child")
        assert path.is_file() and path.stat().st_size > 0
    with av.open(str(tmp_path / "vis.mp4")) as container:
        drawn = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(drawn) == len(decoded.frame_ids)
    assert drawn[0].shape[:2] == (decoded.height, decoded.width)


def test_cli_end_to_end(checkpoint, clip_path, tmp_path, capsys):
    from processing_stvg.cli import main

    out = tmp_path / "tube.json"
    vis = tmp_path / "tube.gif"
    code = main([
        "--model", str(checkpoint), "--video", str(clip_path), "--parsed", json.dumps(PARSED.to_row()),
        "--output", str(out), "--visualize", str(vis), "--segment", "84", "100", "--random-init-detector",
    ])
    assert code == 0, capsys.readouterr().err
    (record,) = json.loads(out.read_text())
    _check_tube(record, [84, 90, 96], 340, 256, 100)
    assert record["parse"]["entities"] == PARSED.entities
    assert vis.is_file() and vis.stat().st_size > 0
    # text needs stanza models, which are absent here: a clear error, exit code 2
    code = main(["--model", str(checkpoint), "--video", str(clip_path), "--text", "a child holds a toy.",
                 "--parser-dir", str(tmp_path / "no_stanza"), "--output", str(tmp_path / "x.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "stanza.download" in err and not (tmp_path / "x.json").exists()
    code = main(["--model", str(checkpoint), "--video", str(tmp_path / "absent.mp4"), "--parsed",
                 json.dumps(PARSED.to_row()), "--output", str(tmp_path / "y.json")])
    assert code == 2 and "absent.mp4" in capsys.readouterr().err


TIMM_BACKBONE = dict(backbone="test_resnet", feature_levels=[1, 2], detector="fasterrcnn_mobilenet_v3_large_320_fpn",
                     detector_min_size=96, detector_max_size=160, num_regions=5, device="cpu")


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint whose features come from a (tiny) timm backbone with pretrained weights, as a user has it:
    the weights are not in the checkpoint; the backbone's and the detector's weights are local files."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("timm_checkpoint")
    torch.manual_seed(1234)  # not the extractor's seed: these weights differ from its random init
    backbone = timm.create_model("test_resnet", pretrained=False)  # the classification checkpoint
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, root / "backbone.safetensors")
    detector = tiny_feature_extractor(**{**TIMM_BACKBONE, "backbone": "detector"})._build_detector()
    torch.save(detector.state_dict(), root / "detector.pth")
    extractor = StvgFeatureExtractor(**TIMM_BACKBONE, backbone_weights_path=str(root / "backbone.safetensors"))
    processor = StvgProcessor(StvgVideoProcessor(), extractor, build_word_tokenizer(CORPUS))
    model = tiny_model(extractor.region_dim, len(processor.tokenizer.get_vocab()))
    extractor.backbone_weights_path = None  # the saved processor names no weight file
    out = root / "checkpoint"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {"checkpoint": out, "backbone": root / "backbone.safetensors", "detector": root / "detector.pth"}


def test_cli_backbone_weights(timm_checkpoint, clip_path, tmp_path, capsys, monkeypatch):
    from processing_stvg.cli import main

    loaded = []
    original = StvgProcessor.from_pretrained
    monkeypatch.setattr(StvgProcessor, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loaded.append(original(*a, **k)) or loaded[-1]))
    common = ["--model", str(timm_checkpoint["checkpoint"]), "--video", str(clip_path),
              "--parsed", json.dumps(PARSED.to_row()), "--segment", "84", "100",
              "--detector-weights", str(timm_checkpoint["detector"])]
    out = tmp_path / "tube.json"
    code = main(common + ["--output", str(out), "--backbone-weights", str(timm_checkpoint["backbone"])])
    assert code == 0, capsys.readouterr().err
    (record,) = json.loads(out.read_text())
    _check_tube(record, [84, 90, 96], 340, 256, 100)
    used = loaded[-1].feature_extractor
    assert used.backbone == "test_resnet" and not used.random_init
    assert used.backbone_weights_path == str(timm_checkpoint["backbone"])
    # the backbone that grounded holds the file's weights, not a random init
    from safetensors.torch import load_file

    saved = load_file(timm_checkpoint["backbone"])
    state = used._timm_model.state_dict()
    shared = [k for k in state if k in saved]
    assert len(shared) >= 10 and all(torch.equal(state[k], saved[k]) for k in shared)
    frames, boxes = small_video(frames=2), given_boxes(2)
    features = used(frames, boxes=boxes)["region_features"]
    reference = StvgFeatureExtractor(**TIMM_BACKBONE, backbone_weights_path=str(timm_checkpoint["backbone"]))
    random = StvgFeatureExtractor(**TIMM_BACKBONE, random_init=True)
    np.testing.assert_allclose(features, reference(frames, boxes=boxes)["region_features"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(features, random(frames, boxes=boxes)["region_features"], atol=1e-3)
    # without the flag (and an empty Hugging Face cache): the extractor asks for the weights
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    code = main(common + ["--output", str(tmp_path / "none.json")])
    assert code == 2 and "backbone_weights_path" in capsys.readouterr().err


def test_cli_backbone_weights_errors(checkpoint, timm_checkpoint, clip_path, tmp_path, capsys):
    from processing_stvg.cli import main

    def ground(model, *extra):
        return main(["--model", str(model), "--video", str(clip_path), "--parsed", json.dumps(PARSED.to_row()),
                     "--output", str(tmp_path / "x.json"), "--segment", "84", "100", *extra])

    missing = tmp_path / "absent.safetensors"
    assert ground(timm_checkpoint["checkpoint"], "--backbone-weights", str(missing)) == 2
    err = capsys.readouterr().err
    assert err.startswith("stvg-ground: error:") and "--backbone-weights" in err and "absent.safetensors" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # a flag that would be silently ignored is an error too
    backbone = str(timm_checkpoint["backbone"])
    assert ground(checkpoint, "--backbone-weights", backbone) == 2  # detector-backbone checkpoint
    assert "--detector-weights" in capsys.readouterr().err
    assert ground(timm_checkpoint["checkpoint"], "--backbone-weights", backbone, "--random-init-detector") == 2
    assert "random-initialised" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_console_script(checkpoint, clip_path, tmp_path):
    script = shutil.which("stvg-ground") or (
        str(Path(sys.executable).parent / "stvg-ground") if (Path(sys.executable).parent / "stvg-ground").exists() else None
    )
    if script is None:
        pytest.skip("the package is not installed (no stvg-ground console script); `pip install -e .` adds it")
    out = tmp_path / "tube.json"
    result = subprocess.run(
        [script, "--model", str(checkpoint), "--video", str(clip_path), "--parsed", json.dumps(PARSED.to_row()),
         "--output", str(out), "--segment", "84", "100", "--random-init-detector"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(out.read_text())
    _check_tube(record, [84, 90, 96], 340, 256, 100)
