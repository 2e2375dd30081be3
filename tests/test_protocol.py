"""Frame sampling of protocol ``tubedetr`` (DESIGN section 6) against a direct hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stvg_data.protocol import sample_frame_ids


def by_hand(begin: int, end: int, fps: float, sample_fps: float = 5.0, max_frames: int = 200) -> list[int]:
    """The rule as DESIGN section 6 words it, one frame at a time."""
    kept = [begin]
    for f in range(begin + 1, end):
        if math.floor(f * sample_fps / fps) > math.floor(kept[-1] * sample_fps / fps):
            kept.append(f)
    if len(kept) > max_frames:
        kept = [kept[(j * len(kept)) // max_frames] for j in range(max_frames)]
    return kept


@pytest.mark.parametrize(
    ("begin", "end", "fps", "expected"),
    [
        (0, 30, 30.0, [0, 6, 12, 18, 24]),
        (7, 40, 30.0, [7, 12, 18, 24, 30, 36]),  # first frame kept mid-bucket, then bucket starts
        (10, 40, 25.0, [10, 15, 20, 25, 30, 35]),
        (0, 31, 29.97002997, [0, 6, 12, 18, 24, 30]),  # buckets start at f >= k * 5.994
        (100, 127, 29.97002997, [100, 102, 108, 114, 120, 126]),  # 100 is in bucket 16; 17 starts at 101.9
        (3, 8, 3.0, [3, 4, 5, 6, 7]),  # source slower than 5 fps: every frame
        (0, 5, 12.5, [0, 3]),  # floor(0.4 f) for f = 0..4: 0 0 0 1 1
    ],
)
def test_literal_hand_values(begin, end, fps, expected):
    assert sample_frame_ids(begin, end, fps) == expected


@pytest.mark.parametrize("fps", [30.0, 25.0, 24.0, 29.97002997, 30000 / 1001, 23.976, 59.94, 12.5, 5.0, 3.0])
@pytest.mark.parametrize(("begin", "length"), [(0, 50), (17, 333), (1234, 2000), (5, 6000)])
def test_matches_direct_hand_computation(fps, begin, length):
    assert sample_frame_ids(begin, begin + length, fps) == by_hand(begin, begin + length, fps)


def test_more_than_200_frames_keeps_positions_floor_j_len_over_200():
    # 5 fps source: every frame of [0, 450) survives the rate step; positions floor(2.25 j) remain
    frames = sample_frame_ids(0, 450, 5.0)
    assert len(frames) == 200
    assert frames[:9] == [0, 2, 4, 6, 9, 11, 13, 15, 18] and frames[-1] == 447
    assert frames == [int(math.floor(j * 450 / 200)) for j in range(200)]
    # a clip with begin > 0 at 30 fps: 50 (bucket 8), then the bucket starts 54, 60, ..., 1848: 301 frames
    long = sample_frame_ids(50, 1850, 30.0)
    full = [50, *range(54, 1850, 6)]
    assert len(full) == 301 and long == [full[(j * 301) // 200] for j in range(200)]


def test_exactly_200_frames_are_kept_as_they_are():
    assert sample_frame_ids(0, 200, 5.0) == list(range(200))
    assert len(sample_frame_ids(0, 201, 5.0)) == 200 and sample_frame_ids(0, 201, 5.0)[-1] == 199


def test_numpy_scalars_are_accepted():
    # a videos row read with numpy formatting gives float32 fps and int32 segment bounds
    assert sample_frame_ids(np.int32(0), np.int32(30), np.float32(30.0)) == [0, 6, 12, 18, 24]


@pytest.mark.parametrize(("begin", "end", "fps"), [(10, 10, 30.0), (10, 5, 30.0), (0, 10, 0.0), (0, 10, -5.0),
                                                  (0, 10, float("nan")), (0, 10, float("inf"))])
def test_bad_arguments(begin, end, fps):
    with pytest.raises(ValueError):
        sample_frame_ids(begin, end, fps)
