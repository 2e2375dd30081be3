"""Video processor of stvg-vem: decode a clip and keep the frames of the evaluation protocol.

The sampling rule itself (5 fps, at most 200 frames, DESIGN section 6) lives in
:func:`stvg_data.protocol.sample_frame_ids`; this module only decides *which clip* is sampled and
decodes exactly those frames, keeping their absolute frame ids so that predictions map back to the
source video.

Inputs accepted by :class:`StvgVideoProcessor`:

- a path to a video file (decoded with PyAV; only the sampled frames are converted to RGB arrays, the
  decoder seeks to the clip's first frame, so a long file never sits in memory);
- a ``numpy`` array / torch tensor ``(T, H, W, 3)`` of ``uint8`` RGB frames;
- a list of PIL images (RGB) or of ``(H, W, 3)`` arrays.

For in-memory frames the frame ids are the positions in the given sequence. Pass ``fps=`` (the rate
of the given frames) to have them sampled at 5 fps; with ``fps=None`` the frames are taken as already
sampled (every frame is kept, up to the 200-frame cap, and ``fps`` is reported as the sample rate).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from transformers.feature_extraction_utils import BatchFeature
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import VideoMetadata

from stvg_data.protocol import MAX_FRAMES, SAMPLE_FPS, sample_frame_ids

# A file may legitimately decode a frame or two fewer than its header announces; more than this is
# a truncated or corrupt file.
FRAME_COUNT_TOLERANCE = 0.02


class VideoInputError(ValueError):
    """The video given to the processor cannot be used (missing file, wrong array layout, no frames,
    grayscale frames, a frame too small, a clip outside the video)."""


class VideoDecodeError(VideoInputError):
    """The video file exists but cannot be decoded (corrupt, truncated, not a video)."""


@dataclass
class DecodedVideo:
    """Frames of one sampled clip.

    ``frames`` is ``(T, H, W, 3)`` uint8 RGB; ``frame_ids`` the absolute ids of the frames in the source
    video; ``timestamps`` their times in seconds (``frame_id / fps``); ``frame_count`` the number of
    frames of the source video; ``segment`` the sampled clip ``[begin, end)``; ``num_decoded`` how many
    frames the decoder produced to get them (bounded by the clip, not by the file).
    """

    frames: np.ndarray
    frame_ids: list[int]
    timestamps: list[float]
    fps: float
    width: int
    height: int
    frame_count: int
    segment: tuple[int, int]
    source: str
    num_decoded: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


def _describe(video: Any) -> str:
    if isinstance(video, (str, os.PathLike)):
        return f"video file {str(video)!r}"
    if isinstance(video, np.ndarray):
        return f"video array of shape {video.shape}"
    if isinstance(video, (list, tuple)):
        return f"list of {len(video)} frames"
    return f"video of type {type(video).__name__}"


def resolve_segment(segment: tuple[int, int] | None, frame_count: int, what: str) -> tuple[int, int]:
    """The clip ``[begin, end)`` to sample: the whole video by default; checked against the video."""
    if frame_count <= 0:
        raise VideoInputError(f"{what} has zero frames; give a video with at least one frame")
    if segment is None:
        return 0, frame_count
    begin, end = int(segment[0]), int(segment[1])
    if begin < 0 or end <= begin:
        raise VideoInputError(f"{what}: segment {list(segment)} must satisfy 0 <= begin < end (end exclusive)")
    if begin >= frame_count:
        raise VideoInputError(f"{what}: segment {list(segment)} starts after the last frame ({frame_count} frames)")
    return begin, min(end, frame_count)


def _check_frame_size(height: int, width: int, min_side: int, what: str) -> None:
    if min(height, width) < min_side:
        raise VideoInputError(
            f"{what}: frames are {width}x{height} pixels; the detector needs at least {min_side} pixels on "
            f"each side (resize the video or lower `min_side`)"
        )


def _frames_from_memory(video: Any, what: str) -> np.ndarray | list[Any]:
    """Validate in-memory frames; returns an array (T, H, W, 3) or a list of per-frame items."""
    try:
        import torch

        if isinstance(video, torch.Tensor):
            video = video.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(video, np.ndarray):
        if video.ndim == 3 or (video.ndim == 4 and video.shape[-1] == 1):
            raise VideoInputError(
                f"{what} looks grayscale; the processor needs RGB frames (T, H, W, 3): repeat the channel, "
                f"e.g. np.repeat(frames[..., None], 3, axis=-1)"
            )
        if video.ndim != 4 or video.shape[-1] != 3:
            raise VideoInputError(f"{what}: expected an array of shape (T, H, W, 3) with RGB frames")
        if video.shape[0] == 0:
            raise VideoInputError(f"{what} has zero frames; give a video with at least one frame")
        return video
    if isinstance(video, (list, tuple)):
        if len(video) == 0:
            raise VideoInputError(f"{what} has zero frames; give a video with at least one frame")
        return list(video)
    raise VideoInputError(f"{what}: expected a file path, an array (T, H, W, 3) or a list of PIL images")


def _frame_to_rgb_array(frame: Any, index: int, what: str) -> np.ndarray:
    from PIL import Image

    if isinstance(frame, Image.Image):
        if frame.mode not in ("RGB", "RGBA", "P"):
            raise VideoInputError(
                f"{what}: frame {index} is a {frame.mode!r} PIL image; convert it with image.convert('RGB')"
            )
        frame = np.asarray(frame.convert("RGB"))
    try:
        import torch

        if isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    frame = np.asarray(frame)
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[-1] == 1):
        raise VideoInputError(f"{what}: frame {index} is grayscale; give RGB frames (H, W, 3)")
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise VideoInputError(f"{what}: frame {index} has shape {frame.shape}, expected (H, W, 3)")
    return frame


def _to_uint8(frames: np.ndarray, what: str) -> np.ndarray:
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.floating):
        if not np.isfinite(frames).all():
            raise VideoInputError(f"{what} contains NaN or inf pixel values")
        scale = 255.0 if frames.size and frames.max() <= 1.0 else 1.0
        return np.clip(np.rint(frames * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(frames.dtype, np.integer):
        return np.clip(frames, 0, 255).astype(np.uint8)
    raise VideoInputError(f"{what}: unsupported pixel dtype {frames.dtype}")


def sample_in_memory_frames(
    video: Any,
    fps: float | None = None,
    segment: tuple[int, int] | None = None,
    sample_fps: float = SAMPLE_FPS,
    max_frames: int = MAX_FRAMES,
    min_side: int = 8,
) -> DecodedVideo:
    """Sample frames given as an array (T, H, W, 3) or a list of PIL images / arrays.

    Frame ids are positions in the given sequence. ``fps=None`` means the frames are already sampled:
    all of them are kept (up to ``max_frames``) and ``fps`` is reported as ``sample_fps``.
    """
    what = _describe(video)
    frames_in = _frames_from_memory(video, what)
    count = len(frames_in)
    begin, end = resolve_segment(segment, count, what)
    source_fps = float(fps) if fps is not None else float(sample_fps)
    if not (math.isfinite(source_fps) and source_fps > 0):
        raise VideoInputError(f"{what}: fps must be a positive number, got {fps!r}")
    frame_ids = sample_frame_ids(begin, end, source_fps, sample_fps=sample_fps, max_frames=max_frames)
    if isinstance(frames_in, np.ndarray):
        frames = frames_in[np.asarray(frame_ids)]
    else:
        picked = [_frame_to_rgb_array(frames_in[i], i, what) for i in frame_ids]
        shapes = {f.shape for f in picked}
        if len(shapes) != 1:
            raise VideoInputError(f"{what}: frames have different sizes {sorted(shapes)}")
        frames = np.stack(picked)
    frames = _to_uint8(np.ascontiguousarray(frames), what)
    height, width = int(frames.shape[1]), int(frames.shape[2])
    _check_frame_size(height, width, min_side, what)
    return DecodedVideo(
        frames=frames,
        frame_ids=frame_ids,
        timestamps=[f / source_fps for f in frame_ids],
        fps=source_fps,
        width=width,
        height=height,
        frame_count=count,
        segment=(begin, end),
        source="memory",
        num_decoded=len(frame_ids),
    )


def _stream_fps(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return None


def _probe_frame_count(container: Any, stream: Any) -> int:
    """Frames in the stream: the header's count, else the number of video packets (no decoding)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    container.seek(0)
    return count


def _frame_index(frame: Any, stream: Any, fps: float, fallback: int) -> int:
    """Absolute frame id of a decoded frame, from its timestamp (``fallback`` when it has none)."""
    if frame.pts is None or stream.time_base is None:
        return fallback
    start = stream.start_time or 0
    return int(round(float((frame.pts - start) * stream.time_base) * fps))


def decode_video_file(
    path: str | os.PathLike,
    segment: tuple[int, int] | None = None,
    fps: float | None = None,
    sample_fps: float = SAMPLE_FPS,
    max_frames: int = MAX_FRAMES,
    min_side: int = 8,
) -> DecodedVideo:
    """Decode only the protocol frames of ``[begin, end)`` from a video file with PyAV.

    The decoder seeks to the key frame before ``begin``, walks forward, converts to RGB only the sampled
    frames and stops after the last one, so memory is bounded by the sampled frames (<= ``max_frames``)
    whatever the file's length. ``fps`` overrides the container's frame rate (e.g. the annotation's).
    """
    import av

    what = f"video file {str(path)!r}"
    path = Path(path)
    if not path.exists():
        raise VideoInputError(f"{what} does not exist; check the path")
    if not path.is_file():
        raise VideoInputError(f"{what} is not a file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise VideoDecodeError(f"{what} cannot be opened as a video ({err}); is it corrupt or truncated?") from err
    try:
        if not container.streams.video:
            raise VideoDecodeError(f"{what} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        source_fps = float(fps) if fps is not None else _stream_fps(stream)
        if source_fps is None or not (math.isfinite(source_fps) and source_fps > 0):
            raise VideoDecodeError(f"{what} has no usable frame rate; pass fps=")
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        _check_frame_size(height, width, min_side, what)
        try:
            frame_count = _probe_frame_count(container, stream)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"{what} cannot be read ({err}); is it corrupt or truncated?") from err
        begin, end = resolve_segment(segment, frame_count, what)
        wanted = sample_frame_ids(begin, end, source_fps, sample_fps=sample_fps, max_frames=max_frames)
        frames, kept_ids, decoded, last_index = _decode_wanted(container, stream, wanted, begin, source_fps, what)
        missing = len(wanted) - len(kept_ids)
        if missing:
            # The header promised more frames than the file holds. A frame or two is normal rounding in
            # some containers; more is a truncated or corrupt file.
            true_count = last_index + 1
            if true_count <= begin or frame_count - true_count > max(2, FRAME_COUNT_TOLERANCE * frame_count):
                raise VideoDecodeError(
                    f"{what} is truncated or corrupt: its header announces {frame_count} frames but only "
                    f"{max(true_count, 0)} could be decoded"
                )
            frame_count = true_count
            begin, end = resolve_segment((begin, end), frame_count, what)
            wanted = sample_frame_ids(begin, end, source_fps, sample_fps=sample_fps, max_frames=max_frames)
            if not set(wanted) <= set(kept_ids):
                container.seek(0)
                frames, kept_ids, more, _ = _decode_wanted(container, stream, wanted, begin, source_fps, what)
                decoded += more
            else:
                keep = [kept_ids.index(f) for f in wanted]
                frames = [frames[i] for i in keep]
                kept_ids = wanted
    finally:
        container.close()
    if not frames:
        raise VideoDecodeError(f"{what} has zero decodable frames")
    stacked = np.stack(frames)
    return DecodedVideo(
        frames=stacked,
        frame_ids=list(kept_ids),
        timestamps=[f / source_fps for f in kept_ids],
        fps=source_fps,
        width=int(stacked.shape[2]),
        height=int(stacked.shape[1]),
        frame_count=frame_count,
        segment=(begin, end),
        source=str(path),
        num_decoded=decoded,
    )


def _decode_wanted(
    container: Any, stream: Any, wanted: list[int], begin: int, fps: float, what: str
) -> tuple[list[np.ndarray], list[int], int, int]:
    """Walk the decoder from the key frame before ``begin``; keep RGB arrays of the ``wanted`` ids."""
    import av

    wanted_set = set(wanted)
    last_wanted = wanted[-1]
    use_pts = True
    if begin > 0 and stream.time_base is not None:
        start = stream.start_time or 0
        target = start + int(math.floor(begin / fps / float(stream.time_base)))
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            container.seek(0)
    frames: list[np.ndarray] = []
    kept: list[int] = []
    decoded = 0
    index = -1
    sequential = -1
    try:
        for frame in container.decode(stream):
            decoded += 1
            sequential += 1
            if frame.pts is None:
                use_pts = False
            index = _frame_index(frame, stream, fps, sequential) if use_pts else sequential
            if index in wanted_set and (not kept or index > kept[-1]):
                frames.append(frame.to_ndarray(format="rgb24"))
                kept.append(index)
            if index >= last_wanted:
                break
    except av.error.FFmpegError as err:
        if not kept:
            raise VideoDecodeError(f"{what} cannot be decoded ({err}); is it corrupt or truncated?") from err
        # A decode error after some frames: treat as the end of the stream (checked by the caller).
    return frames, kept, decoded, index


class StvgVideoKwargs(TypedDict, total=False):
    sample_fps: float
    max_frames: int
    min_side: int
    fps: float | None
    segment: tuple[int, int] | None
    return_tensors: str | None


class StvgVideoProcessor(VideoProcessorMixin):
    """Decode and sample a clip by the stvg-vem protocol (5 fps, at most 200 frames, absolute ids).

    ``processor(video, fps=None, segment=None)`` returns a :class:`~transformers.BatchFeature` with
    ``frames`` (T, H, W, 3) uint8, ``frame_ids`` (absolute ids of the sampled frames), ``timestamps``
    (seconds), ``fps``, ``width``, ``height``, ``frame_count``, ``segment`` and ``video_metadata``
    (a :class:`transformers.video_utils.VideoMetadata` with ``frames_indices``). It does no resizing or
    normalisation: the feature extractor owns those, and boxes stay in source pixels.
    """

    model_input_names = ["frames"]
    valid_kwargs = StvgVideoKwargs

    def __init__(
        self, sample_fps: float = SAMPLE_FPS, max_frames: int = MAX_FRAMES, min_side: int = 8, **kwargs: Any
    ) -> None:
        kwargs.pop("video_processor_type", None)
        super().__init__(**kwargs)
        if sample_fps <= 0 or max_frames <= 0 or min_side <= 0:
            raise ValueError(
                f"sample_fps, max_frames and min_side must be positive, got {sample_fps}, {max_frames}, {min_side}"
            )
        self.sample_fps = float(sample_fps)
        self.max_frames = int(max_frames)
        self.min_side = int(min_side)

    def decode(
        self, video: Any, fps: float | None = None, segment: tuple[int, int] | None = None
    ) -> DecodedVideo:
        """Decode and sample one video (path, array or list of frames) into a :class:`DecodedVideo`."""
        options = dict(sample_fps=self.sample_fps, max_frames=self.max_frames, min_side=self.min_side)
        if isinstance(video, (str, os.PathLike)):
            return decode_video_file(video, segment=segment, fps=fps, **options)
        return sample_in_memory_frames(video, fps=fps, segment=segment, **options)

    def sample_frames(self, metadata: VideoMetadata, **kwargs: Any) -> np.ndarray:
        """Frame indices the protocol keeps for a video described by ``metadata`` (HF convention)."""
        if metadata.fps is None:
            raise VideoInputError("video metadata has no fps; cannot sample by the protocol")
        return np.asarray(
            sample_frame_ids(0, metadata.total_num_frames, metadata.fps, self.sample_fps, self.max_frames)
        )

    def preprocess(self, videos: Any, **kwargs: Any) -> BatchFeature:
        unknown = set(kwargs) - set(StvgVideoKwargs.__annotations__)
        if unknown:
            raise TypeError(f"StvgVideoProcessor got unexpected arguments {sorted(unknown)}")
        return_tensors = kwargs.pop("return_tensors", None)
        decoded = self.decode(videos, fps=kwargs.get("fps"), segment=kwargs.get("segment"))
        metadata = VideoMetadata(
            total_num_frames=decoded.frame_count,
            fps=decoded.fps,
            width=decoded.width,
            height=decoded.height,
            duration=decoded.frame_count / decoded.fps,
            video_backend="pyav" if decoded.source != "memory" else None,
            frames_indices=list(decoded.frame_ids),
        )
        data = {
            "frames": decoded.frames,
            "frame_ids": list(decoded.frame_ids),
            "timestamps": list(decoded.timestamps),
            "fps": decoded.fps,
            "width": decoded.width,
            "height": decoded.height,
            "frame_count": decoded.frame_count,
            "segment": list(decoded.segment),
            "video_metadata": metadata,
        }
        if return_tensors is None:
            return BatchFeature(data=data)
        batch = BatchFeature(data={"frames": decoded.frames}, tensor_type=return_tensors)
        batch.update({k: v for k, v in data.items() if k != "frames"})
        return batch

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_fps": self.sample_fps,
            "max_frames": self.max_frames,
            "min_side": self.min_side,
            "video_processor_type": type(self).__name__,
        }
