"""Video processor: protocol sampling on real clips, bounded memory on long files, typed errors."""

from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from processing_stvg.video_processing_stvg import (
    StvgVideoProcessor,
    VideoDecodeError,
    VideoInputError,
    decode_video_file,
)

CLIPS = ("mmaction2_demo.mp4", "mmaction2_test_video_structuralize.mp4", "mmaction2_tests_test.mp4")


def direct_protocol_ids(begin: int, end: int, fps: float) -> list[int]:
    """DESIGN sec. 6 written out as a plain loop (independent of stvg_data.protocol)."""
    kept = [begin]
    for f in range(begin + 1, end):
        if math.floor(f * 5 / fps) > math.floor(kept[-1] * 5 / fps):
            kept.append(f)
    if len(kept) > 200:
        kept = [kept[(j * len(kept)) // 200] for j in range(200)]
    return kept


def decode_all(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, float(stream.average_rate)


def level_of(frame_id: int) -> int:
    """Grey level of frame ``frame_id`` in generated videos: neighbours differ by 3 levels."""
    return 20 + 3 * (frame_id % 70)


def write_video(path: Path, num_frames: int, size=(64, 48), fps: int = 30, codec: str = "mpeg4",
                pix_fmt: str = "yuv420p", gop: int = 30, container_format: str | None = None,
                options: dict | None = None) -> None:
    """Uniform grey frames whose level encodes the frame id (see `level`)."""
    width, height = size
    with av.open(str(path), mode="w", format=container_format, options=options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec in ("mpeg4", "libx264"):
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"qp": "0", "preset": "ultrafast"}  # lossless: levels survive exactly
        for i in range(num_frames):
            level = level_of(i)
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def videos_dir(shared_dir):
    path = shared_dir / "videos"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


@pytest.mark.parametrize("name", CLIPS)
def test_real_clip_follows_protocol(videos_dir, name):
    path = videos_dir / name
    all_frames, fps = decode_all(path)
    out = StvgVideoProcessor()(str(path))
    expected = direct_protocol_ids(0, len(all_frames), fps)
    assert out["frame_ids"] == expected
    assert out["frame_count"] == len(all_frames)
    assert out["fps"] == pytest.approx(fps)
    height, width = all_frames[0].shape[:2]
    assert (out["width"], out["height"]) == (width, height)
    assert out["frames"].shape == (len(expected), height, width, 3)
    assert out["frames"].dtype == np.uint8
    # the kept frames are the decoded frames at those absolute ids
    for k in (0, len(expected) // 2, len(expected) - 1):
        np.testing.assert_array_equal(out["frames"][k], all_frames[expected[k]])
    assert out["timestamps"][1] == pytest.approx(expected[1] / fps)
    assert list(out["video_metadata"].frames_indices) == expected


@pytest.mark.parametrize("name", CLIPS)
def test_real_clip_segment_keeps_absolute_ids(videos_dir, name):
    path = videos_dir / name
    all_frames, fps = decode_all(path)
    decoded = StvgVideoProcessor().decode(str(path), segment=(101, 230))
    expected = direct_protocol_ids(101, 230, fps)
    assert decoded.frame_ids == expected
    assert decoded.segment == (101, 230)
    for k, frame_id in enumerate(expected):
        np.testing.assert_array_equal(decoded.frames[k], all_frames[frame_id])
    # the decoder stops after the last sampled frame of the segment
    assert decoded.num_decoded <= expected[-1] + 1


def test_long_video_memory_stays_bounded(tmp_path):
    path = tmp_path / "long.mp4"
    num_frames, size = 3000, (160, 120)  # 100 s at 30 fps: 500 protocol frames, capped to 200
    write_video(path, num_frames, size=size, fps=30, gop=30, codec="libx264")
    frame_bytes = size[0] * size[1] * 3
    tracemalloc.start()
    try:
        decoded = decode_video_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = direct_protocol_ids(0, num_frames, 30.0)
    assert len(expected) == 200 and decoded.frame_ids == expected
    assert decoded.frames.shape == (200, size[1], size[0], 3)
    # the whole video would be 3000 frames; the peak holds the 200 kept ones plus copies in stacking
    assert peak < 2.5 * 200 * frame_bytes, f"peak {peak / 1e6:.1f} MB"
    assert peak < 0.2 * num_frames * frame_bytes
    levels = decoded.frames.reshape(200, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [level_of(f) for f in expected], atol=1.5)

    # a late segment: the decoder seeks to the key frame before it instead of decoding from 0
    late = decode_video_file(path, segment=(2400, 2700))
    assert late.frame_ids == direct_protocol_ids(2400, 2700, 30.0)
    assert late.num_decoded <= 300 + 30
    np.testing.assert_allclose(late.frames.reshape(len(late.frame_ids), -1).mean(axis=1),
                               [level_of(f) for f in late.frame_ids], atol=1.5)


def test_in_memory_inputs():
    processor = StvgVideoProcessor()
    frames = np.random.default_rng(0).integers(0, 255, (61, 20, 24, 3), dtype=np.uint8)
    out = processor(frames, fps=30)
    expected = direct_protocol_ids(0, 61, 30.0)
    assert out["frame_ids"] == expected
    np.testing.assert_array_equal(out["frames"], frames[expected])
    # PIL images, already sampled (fps=None keeps every frame)
    images = [Image.fromarray(f) for f in frames[:7]]
    out = processor(images)
    assert out["frame_ids"] == list(range(7)) and out["fps"] == 5.0
    np.testing.assert_array_equal(out["frames"], frames[:7])
    # a torch tensor, float in [0, 1]
    import torch

    out = processor(torch.from_numpy(frames[:3].astype(np.float32) / 255.0))
    np.testing.assert_allclose(out["frames"].astype(int), frames[:3].astype(int), atol=1)
    # more than 200 already-sampled frames are capped by the protocol's position rule
    many = np.zeros((450, 8, 8, 3), np.uint8)
    assert processor(many)["frame_ids"] == [(j * 450) // 200 for j in range(200)]
    assert processor(frames, fps=30, return_tensors="pt")["frames"].shape == (len(expected), 20, 24, 3)


def test_save_load_and_hf_conventions(tmp_path):
    from transformers.video_utils import VideoMetadata

    processor = StvgVideoProcessor(sample_fps=2.0, max_frames=50, min_side=4)
    again = StvgVideoProcessor.from_dict(processor.to_dict())
    assert again.to_dict() == processor.to_dict()
    assert processor.to_dict()["video_processor_type"] == "StvgVideoProcessor"
    metadata = VideoMetadata(total_num_frames=300, fps=30.0)
    ids = processor.sample_frames(metadata)
    assert list(ids) == [f for f in range(0, 300, 15)]


# ------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoInputError, match="nope.mp4.*does not exist"):
        StvgVideoProcessor()(str(missing))


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="corrupt.mp4"):
        StvgVideoProcessor()(str(path))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(VideoDecodeError, match="notes.mp4"):
        StvgVideoProcessor()(str(text))


def test_truncated_real_clip(videos_dir, tmp_path):
    data = (videos_dir / "mmaction2_tests_test.mp4").read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        StvgVideoProcessor()(str(path))


def cut_in_half(tmp_path: Path, suffix: str, **write_options) -> Path:
    """A 300-frame 30 fps video written to ``full<suffix>``, then its first half as ``cut<suffix>``."""
    path = tmp_path / f"full{suffix}"
    write_video(path, 300, size=(64, 48), fps=30, gop=10, **write_options)
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_truncated_mp4_with_index_first(tmp_path):
    # faststart: the index (with the frame count) comes first, so the cut file opens but is short
    cut = cut_in_half(tmp_path, ".mp4", options={"movflags": "faststart"})
    with pytest.raises(VideoDecodeError, match="cut.mp4.*truncated.*announces 300 frames"):
        StvgVideoProcessor()(str(cut))


def test_truncated_stream_with_header_first(tmp_path):
    # A Matroska file keeps its header first: cutting it leaves a readable but short stream.
    cut = cut_in_half(tmp_path, ".mkv")
    with av.open(str(cut)) as c:
        announced = c.streams.video[0].frames
    processor = StvgVideoProcessor()
    if announced:
        with pytest.raises(VideoDecodeError, match="cut.mkv.*truncated"):
            processor(str(cut))
    else:  # no frame count in the header: the frames that are there are the video
        out = processor(str(cut))
        assert out["frame_ids"] == direct_protocol_ids(0, out["frame_count"], 30.0)
        assert out["frame_count"] < 300


def test_zero_frames(tmp_path):
    processor = StvgVideoProcessor()
    with pytest.raises(VideoInputError, match="zero frames"):
        processor(np.zeros((0, 16, 16, 3), np.uint8))
    with pytest.raises(VideoInputError, match="zero frames"):
        processor([])
    path = tmp_path / "empty.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    with pytest.raises(VideoInputError, match="empty.mp4"):
        processor(str(path))


def test_grayscale_inputs(tmp_path):
    processor = StvgVideoProcessor()
    with pytest.raises(VideoInputError, match="grayscale"):
        processor(np.zeros((4, 16, 16), np.uint8))
    with pytest.raises(VideoInputError, match="grayscale"):
        processor(np.zeros((4, 16, 16, 1), np.uint8))
    with pytest.raises(VideoInputError, match="'L' PIL image"):
        processor([Image.new("L", (16, 16))])
    # a grayscale-coded file is decoded to RGB (documented): three equal channels
    path = tmp_path / "gray.mkv"
    write_video(path, 12, size=(32, 32), codec="ffv1", pix_fmt="gray")
    out = processor(str(path))
    assert out["frames"].shape[-1] == 3
    assert np.array_equal(out["frames"][..., 0], out["frames"][..., 1])


def test_tiny_frames(tmp_path):
    processor = StvgVideoProcessor()
    with pytest.raises(VideoInputError, match="1x1 pixels"):
        processor(np.zeros((3, 1, 1, 3), np.uint8))
    path = tmp_path / "tiny.mkv"
    write_video(path, 5, size=(1, 1), codec="ffv1", pix_fmt="bgr0")
    with pytest.raises(VideoInputError, match="tiny.mkv.*1x1 pixels"):
        processor(str(path))


def test_bad_segment(videos_dir):
    processor = StvgVideoProcessor()
    path = str(videos_dir / "mmaction2_demo.mp4")
    with pytest.raises(VideoInputError, match="segment"):
        processor(path, segment=(50, 50))
    with pytest.raises(VideoInputError, match="after the last frame"):
        processor(path, segment=(5000, 6000))
    with pytest.raises(TypeError, match="unexpected"):
        processor(path, bogus=1)
