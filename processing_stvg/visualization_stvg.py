"""Draw a predicted (and optionally a ground-truth) tube on the sampled frames of a clip.

Every frame gets a timeline bar at the bottom (the clip's sampled frames; the predicted span in
green, the ground-truth span in red when given, a white tick at the current frame) and, inside the
span, the tube's box. The result is written as ``.mp4`` (PyAV, H.264 or MPEG-4 Part 2) or ``.gif``
(PIL), atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

PRED_COLOR = (40, 220, 60)
GT_COLOR = (230, 40, 40)
BAR_HEIGHT = 8


def _box_for(boxes: Mapping[Any, Sequence[float]], frame_id: int) -> Sequence[float] | None:
    if frame_id in boxes:
        return boxes[frame_id]
    return boxes.get(str(frame_id))


def draw_tube_frames(
    frames: np.ndarray,
    frame_ids: Sequence[int],
    tube: Mapping[str, Any],
    ground_truth: Mapping[str, Any] | None = None,
    label: str | None = None,
) -> list[Image.Image]:
    """RGB frames ``(T, H, W, 3)`` with the tube drawn -> PIL images (same size as the frames)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) != len(frame_ids):
        raise ValueError(f"frames {frames.shape} must be (T, H, W, 3) with one frame id each ({len(frame_ids)} ids)")
    if len(frame_ids) == 0:
        raise ValueError("no frames to draw")
    first, last = int(frame_ids[0]), int(frame_ids[-1]) + 1
    length = max(last - first, 1)
    images = []
    for frame, frame_id in zip(frames, frame_ids):
        image = Image.fromarray(np.ascontiguousarray(frame.astype(np.uint8)))
        draw = ImageDraw.Draw(image)
        width, height = image.size
        for spec, color in ((ground_truth, GT_COLOR), (tube, PRED_COLOR)):
            if not spec:
                continue
            start, end = int(spec["sted"][0]), int(spec["sted"][1])
            if start <= frame_id < end:
                box = _box_for(spec.get("boxes", {}), int(frame_id))
                if box is not None:
                    x1, y1, x2, y2 = (float(v) for v in box)
                    draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=2)
            # timeline: the span as a coloured segment of the bar
            y0 = height - BAR_HEIGHT if color == PRED_COLOR else height - 2 * BAR_HEIGHT
            xs = (max(start, first) - first) / length * width
            xe = (min(end, last) - first) / length * width
            draw.rectangle([0, y0, width - 1, y0 + BAR_HEIGHT - 1], fill=(30, 30, 30))
            if xe > xs:
                draw.rectangle([xs, y0, max(xs, xe - 1), y0 + BAR_HEIGHT - 1], fill=color)
        tick = (int(frame_id) - first) / length * width
        draw.line([tick, height - 2 * BAR_HEIGHT, tick, height - 1], fill=(255, 255, 255), width=1)
        text = f"frame {int(frame_id)}" + (f" | {label}" if label else "")
        draw.text((4, 4), text, fill=(255, 255, 0))
        images.append(image)
    return images


def write_clip(images: Sequence[Image.Image], path: str | os.PathLike, fps: float = 5.0) -> Path:
    """Write frames as ``.mp4`` (PyAV) or ``.gif`` (PIL), chosen by the file extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"visualisation file {str(path)!r} must end with .mp4 or .gif")
    if not images:
        raise ValueError("no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + suffix)
    if suffix == ".gif":
        duration = max(int(round(1000.0 / fps)), 20)
        images[0].save(tmp, save_all=True, append_images=list(images[1:]), duration=duration, loop=0)
    else:
        _write_mp4(images, tmp, fps)
    os.replace(tmp, path)
    return path


def _write_mp4(images: Sequence[Image.Image], path: Path, fps: float) -> None:
    from fractions import Fraction

    import av

    width, height = images[0].size
    # yuv420p needs even sizes: pad by one pixel where needed
    even_w, even_h = width + width % 2, height + height % 2
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        for image in images:
            array = np.zeros((even_h, even_w, 3), dtype=np.uint8)
            array[:height, :width] = np.asarray(image.convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def visualize_tube(
    frames: np.ndarray,
    frame_ids: Sequence[int],
    tube: Mapping[str, Any],
    output_path: str | os.PathLike,
    ground_truth: Mapping[str, Any] | None = None,
    label: str | None = None,
    fps: float = 5.0,
) -> Path:
    """Draw ``tube`` (and ``ground_truth``) on the sampled ``frames`` and write ``output_path``."""
    return write_clip(draw_tube_frames(frames, frame_ids, tube, ground_truth, label), output_path, fps=fps)
