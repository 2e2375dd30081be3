"""StvgFeatureExtractor: detector proposals + RoI features on real clips, weight loading from local
files, the clear error when weights are missing, given-box mode, settings round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from processing_stvg.feature_extraction_stvg import (
    FeatureExtractionError,
    MissingWeightsError,
    StvgFeatureExtractor,
)

# Small inputs and fewer RPN proposals keep the random-init Faster R-CNN fast on CPU.
SMALL = dict(detector_min_size=192, detector_max_size=256, batch_size=4,
             detector_kwargs={"rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100})


@pytest.fixture(scope="module")
def videos_dir(shared_dir) -> Path:
    path = shared_dir / "videos"
    if not any(path.glob("*.mp4")):
        pytest.skip(f"no real clips under {path}")
    return path


def _decode(path: Path, count: int, step: int = 10) -> np.ndarray:
    av = pytest.importorskip("av")
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % step == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def clips(videos_dir):
    return {path.name: _decode(path, 2) for path in sorted(videos_dir.glob("*.mp4"))[:2]}


@pytest.fixture(scope="module")
def detector():
    return StvgFeatureExtractor(random_init=True, seed=1, **SMALL)


@pytest.fixture(scope="module")
def detected(clips, detector):
    return {name: detector.extract(frames) for name, frames in clips.items()}


def test_random_detector_on_real_clips(clips, detector, detected):
    assert len(detector.get_label_names()) == 91 and detector.get_label_names()[1] == "person"
    for name, frames in clips.items():
        out = detected[name]
        t, h, w = frames.shape[:3]
        assert out["boxes"].shape == (t, 10, 4) and out["boxes"].dtype == np.float32
        assert out["box_scores"].shape == (t, 10) and out["box_labels"].shape == (t, 10)
        assert out["region_features"].shape == (t, 10, detector.region_dim) == (t, 10, 256)
        assert out["frame_features"].shape == (t, detector.frame_dim)
        real = out["box_labels"] != -1
        assert real.any(), name
        boxes = out["boxes"][real]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all(), name
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all(), name
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert (out["box_labels"][real] >= 1).all() and (out["box_labels"] < 91).all()
        scores = np.where(real, out["box_scores"], -1.0)
        assert (np.diff(scores, axis=1) <= 1e-6).all(), "top-M by score"
        assert np.isfinite(out["region_features"]).all()
        assert (out["region_features"][~real] == 0).all()
        assert not np.allclose(out["region_features"][real][0], out["region_features"][real][-1])


def test_missing_weights_error_names_the_file(monkeypatch, tmp_path, clips):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    frames = next(iter(clips.values()))
    with pytest.raises(MissingWeightsError) as error:
        StvgFeatureExtractor(**SMALL).extract(frames)
    message = str(error.value)
    assert "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" in message
    assert "https://download.pytorch.org/models/" in message and str(tmp_path / "torch") in message
    assert "detector_weights_path" in message
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        StvgFeatureExtractor(backbone="resnet18").region_dim


def test_detector_weights_load_from_local_file(tmp_path, clips, detector, detected):
    name, frames = next(iter(clips.items()))
    expected = detected[name]
    state = {k: v.detach().clone().contiguous() for k, v in detector._build_detector().state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "detector.safetensors"))
    loaded = StvgFeatureExtractor(detector_weights_path=str(tmp_path / "detector.safetensors"), seed=99, **SMALL)
    got = loaded.extract(frames)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-4, err_msg=key)
    # A wrapped torch checkpoint (read with weights_only=True) loads the same weights.
    torch.save({"model": state}, str(tmp_path / "detector.pth"))
    from_pth = StvgFeatureExtractor(detector_weights_path=str(tmp_path / "detector.pth"), seed=7, **SMALL)
    for key, value in from_pth._build_detector().state_dict().items():
        assert torch.equal(value, state[key]), key
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights-only"):
        StvgFeatureExtractor(detector_weights_path=str(tmp_path / "bad.pth"), **SMALL).extract(frames)


def test_timm_backbone_given_boxes(tmp_path, clips):
    frames = next(iter(clips.values()))
    t, h, w = frames.shape[:3]
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, [w - 60, h - 60], size=(t, 10, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(10, 60, size=(t, 10, 2))], -1).astype(np.float32)
    labels = np.zeros((t, 10), dtype=np.int32)
    labels[:, -2:] = -1
    extractor = StvgFeatureExtractor(
        backbone="resnet18", feature_levels=[1, 2], random_init=True, seed=5, roi_pool_grid=2, batch_size=1
    )
    assert extractor.region_dim == (64 + 128) * 4 and extractor.frame_dim == 64 + 128
    out = extractor.extract(frames, boxes=boxes, box_labels=labels)
    assert out["region_features"].shape == (t, 10, extractor.region_dim)
    assert out["frame_features"].shape == (t, extractor.frame_dim)
    np.testing.assert_array_equal(out["boxes"][:, :8], boxes[:, :8])
    assert (out["region_features"][:, -2:] == 0).all() and (out["boxes"][:, -2:] == 0).all()
    # A box's feature depends on that box and frame only (not on the batch or the other boxes).
    shuffled = boxes[:, ::-1].copy()
    again = StvgFeatureExtractor(backbone="resnet18", feature_levels=[1, 2], random_init=True, seed=5,
                                 roi_pool_grid=2, batch_size=8).extract(frames, boxes=shuffled)
    np.testing.assert_allclose(again["region_features"][:, ::-1][:, :8], out["region_features"][:, :8], atol=1e-4)
    # Weights from a local file: the classification checkpoint of the same seed gives the same features.
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(tmp_path / "resnet18.safetensors"))
    loaded = StvgFeatureExtractor(backbone="resnet18", feature_levels=[1, 2], roi_pool_grid=2,
                                  backbone_weights_path=str(tmp_path / "resnet18.safetensors"))
    got = loaded.extract(frames, boxes=boxes, box_labels=labels)
    np.testing.assert_allclose(got["region_features"], out["region_features"], atol=1e-4)
    # A different seed is a different network.
    other = StvgFeatureExtractor(backbone="resnet18", feature_levels=[1, 2], random_init=True, seed=6, roi_pool_grid=2)
    assert not np.allclose(other.extract(frames, boxes=boxes)["region_features"], out["region_features"], atol=1e-3)


def test_timm_features_with_detector_proposals(clips):
    frames = next(iter(clips.values()))[:1]
    extractor = StvgFeatureExtractor(backbone="resnet18", feature_levels=[2], random_init=True, **SMALL)
    out = extractor.extract(frames)
    assert out["region_features"].shape == (1, 10, 128) and (out["box_labels"] != -1).any()


def test_bad_inputs_have_clear_errors(clips):
    frames = next(iter(clips.values()))
    extractor = StvgFeatureExtractor(backbone="resnet18", feature_levels=[0], random_init=True)
    with pytest.raises(FeatureExtractionError, match="uint8"):
        extractor.extract(frames.astype(np.float32))
    with pytest.raises(FeatureExtractionError, match=r"\(T, H, W, 3\)"):
        extractor.extract(frames[..., 0])
    with pytest.raises(FeatureExtractionError, match="empty"):
        extractor.extract(frames[:0])
    t, h, w = frames.shape[:3]
    outside = np.tile(np.array([0, 0, w + 50, 10], dtype=np.float32), (t, 10, 1))
    with pytest.raises(FeatureExtractionError, match="outside"):
        extractor.extract(frames, boxes=outside)
    with pytest.raises(FeatureExtractionError, match="shape"):
        extractor.extract(frames, boxes=outside[:, :, :3])
    with pytest.raises(ValueError, match="not supported"):
        StvgFeatureExtractor(detector="yolo")


def test_settings_round_trip(tmp_path):
    extractor = StvgFeatureExtractor(backbone="resnet18", feature_levels=[0], random_init=True, roi_pool_grid=3,
                                     label_names=["circle", "square"])
    _ = extractor.region_dim  # builds the module: it must stay out of the saved settings
    extractor.save_pretrained(str(tmp_path))
    saved = (tmp_path / "preprocessor_config.json").read_text()
    assert "_timm_model" not in saved and '"roi_pool_grid": 3' in saved
    loaded = StvgFeatureExtractor.from_pretrained(str(tmp_path))
    assert loaded.to_dict() == extractor.to_dict()
    assert loaded.region_dim == 64 * 9 and loaded.frame_dim == 64


def test_bfloat16_autocast_matches_float32(clips):
    frames = next(iter(clips.values()))
    boxes = np.tile(np.array([10, 10, 120, 100], dtype=np.float32), (len(frames), 10, 1))
    kwargs = dict(backbone="resnet18", feature_levels=[1], random_init=True)
    full = StvgFeatureExtractor(dtype="float32", **kwargs).extract(frames, boxes=boxes)["region_features"]
    half = StvgFeatureExtractor(dtype="bfloat16", device="cpu", **kwargs).extract(frames, boxes=boxes)["region_features"]
    assert np.corrcoef(full.ravel(), half.ravel())[0, 1] > 0.99
