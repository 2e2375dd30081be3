"""Frame sampling of the evaluation protocol (DESIGN section 6, protocol ``tubedetr``).

The same rule serves the processor (which frames to decode), the converters (which frames carry
ground-truth boxes) and the evaluator (which frames count in vIoU), so it lives here once.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

PROTOCOL_NAME = "tubedetr"
SAMPLE_FPS = 5.0
MAX_FRAMES = 200


def sample_frame_ids(
    begin: int, end: int, fps: float, sample_fps: float = SAMPLE_FPS, max_frames: int = MAX_FRAMES
) -> list[int]:
    """Absolute frame ids sampled from the clip ``[begin, end)``.

    Start with ``begin``; walk ``f`` over ``[begin, end)`` and keep ``f`` when
    ``floor(f * sample_fps / fps) > floor(last_kept * sample_fps / fps)``. If more than ``max_frames``
    remain, keep positions ``floor(j * len / max_frames)`` for ``j = 0..max_frames-1``.
    """
    # numbers.Real also admits numpy scalars (a float32 ``fps`` read from a videos row).
    if not (isinstance(fps, numbers.Real) and not isinstance(fps, bool) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    if sample_fps <= 0 or max_frames <= 0:
        raise ValueError(f"sample_fps and max_frames must be positive, got {sample_fps}, {max_frames}")
    begin, end = int(begin), int(end)
    if end <= begin:
        raise ValueError(f"clip end {end} must be greater than its begin {begin} (end is exclusive)")
    frames = np.arange(begin, end, dtype=np.int64)
    buckets = np.floor(frames * (sample_fps / fps))
    # Buckets never decrease, so "bucket > bucket of the last kept frame" keeps exactly the first
    # frame of every new bucket; the clip's first frame is always kept.
    first_of_bucket = np.concatenate([[True], buckets[1:] > buckets[:-1]])
    kept = frames[first_of_bucket]
    if len(kept) > max_frames:
        kept = kept[(np.arange(max_frames) * len(kept)) // max_frames]
    return kept.tolist()
