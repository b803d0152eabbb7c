"""Fast grey decoding and cursor-masked differencing agree with independent references.

``iter_frames(grey=True)`` reads the luma plane directly instead of asking libswscale; these tests decode the
same files with plain PyAV + libswscale and require the same pixels, across pixel formats and colour ranges
(including a full-range video that opens on black frames, where the two candidate conversions agree).
``cursor_masked_difference`` takes shortcuts (no labelling when every changed blob must be small); it is checked
against a plain scipy labelling of the same definition.
"""

from __future__ import annotations

import numpy as np
import pytest

from pathkit.video.chunks import cursor_masked_difference
from pathkit.video.decode import GreyReader, iter_frames


def _write(path, codec: str, pix_fmt: str, n: int = 12, size=(64, 48), black_first: int = 0, seed: int = 0):
    import av

    w, h = size
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for i in range(n):
            if i < black_first:
                img = np.zeros((h, w, 3), np.uint8)
            else:  # smooth gradient + texture: the full grey range, and something for a downscale to average
                ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
                img = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _libswscale_grey(path, size=None) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        if size is None:
            return [f.to_ndarray(format="gray") for f in container.decode(video=0)]
        return [f.reformat(width=size[0], height=size[1], format="gray", interpolation="AREA").to_ndarray()
                for f in container.decode(video=0)]


@pytest.fixture(autouse=True)
def fresh_grey_cache():
    GreyReader._decided.clear()  # each test decides the conversion from its own frames
    yield
    GreyReader._decided.clear()


@pytest.mark.parametrize("name,codec,pix_fmt,black_first", [
    ("limited.mp4", "libx264", "yuv420p", 0),  # the usual web video: limited range, table needed
    ("full_black_start.mp4", "libx264", "yuvj420p", 3),  # full range; black frames cannot tell the two apart
    ("limited_black_start.mp4", "libx264", "yuv420p", 3),
    ("yuv444.mkv", "ffv1", "yuv444p", 0),
    ("ten_bit.mp4", "libx264", "yuv420p10le", 0),  # not one byte per pixel: libswscale path
    ("rgb.mov", "png", "rgb24", 0),  # no luma plane: libswscale path
])
def test_grey_frames_match_libswscale_exactly(tmp_path, name, codec, pix_fmt, black_first):
    path = _write(tmp_path / name, codec, pix_fmt, black_first=black_first)
    expected = _libswscale_grey(path)
    got = [f.image for f in iter_frames(path, grey=True)]
    assert len(got) == len(expected) == 12
    for k, (a, b) in enumerate(zip(got, expected)):
        assert a.dtype == np.uint8 and a.shape == b.shape, (name, k)
        assert np.array_equal(a, b), f"{name} frame {k}: max difference {np.abs(a.astype(int) - b).max()}"
    assert got[-1].std() > 20  # real content was compared, not a flat frame


def test_full_range_video_after_limited_one_is_not_stretched(tmp_path):
    """The decision is per pixel format and range: a limited-range video first must not make a full-range one
    go through the limited-range table."""
    limited = _write(tmp_path / "a.mp4", "libx264", "yuv420p")
    full = _write(tmp_path / "b.mp4", "libx264", "yuvj420p", seed=1)
    for path in (limited, full):
        got = [f.image for f in iter_frames(path, grey=True)]
        assert all(np.array_equal(a, b) for a, b in zip(got, _libswscale_grey(path), strict=True)), path.name


def test_downscaled_grey_is_an_area_average_like_libswscale(tmp_path):
    path = _write(tmp_path / "v.mp4", "libx264", "yuv420p", size=(320, 240))
    expected = _libswscale_grey(path, size=(160, 120))
    got = [f.image for f in iter_frames(path, width=160, grey=True)]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == (120, 160)
        assert np.abs(a.astype(int) - b).mean() < 1.0  # same filter up to rounding and edge handling


def _reference_masked_difference(prev, cur, pixel_threshold=12.0, blob_fraction=0.02, max_extent=0.2) -> float:
    """The definition, written plainly: changed pixels, joined into blobs when within 4 px (5 x 5 dilation,
    8-connected), drop blobs with few changed pixels that are also compact (a pointer; a long thin line of new
    text counts), unless the change covers more than half the frame (a cut); mean over the frame."""
    from scipy import ndimage

    diff = np.abs(prev.astype(np.int64) - cur.astype(np.int64))
    changed = diff > pixel_threshold
    if changed.sum() > 0.5 * diff.size:
        return float((diff * changed).sum()) / diff.size
    W = diff.shape[1]
    joined = ndimage.binary_dilation(changed, np.ones((5, 5), bool))
    labels, n = ndimage.label(joined, structure=np.ones((3, 3)))
    keep = np.zeros_like(changed)
    for k in range(1, n + 1):
        blob = labels == k
        ys, xs = np.nonzero(blob)
        long = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) > max_extent * W
        if (changed & blob).sum() >= blob_fraction * diff.size or long:
            keep |= changed & blob
    return float((diff * keep).sum()) / diff.size


def test_masked_difference_matches_plain_labelling():
    rng = np.random.default_rng(0)
    kinds = []
    for trial in range(120):
        prev = (rng.random((120, 160)) * 200 + 20).astype(np.uint8)
        cur = prev.copy()
        kind = trial % 6
        if kind == 0:  # a pointer-sized change only
            cur[40:52, 60:70] = 255
        elif kind == 1:  # a large region changes, plus a pointer elsewhere
            cur[10:60, 10:90] = rng.integers(0, 255, (50, 80))
            cur[100:110, 140:150] = 0
        elif kind == 2:  # a cut
            cur = (rng.random((120, 160)) * 255).astype(np.uint8)
        elif kind == 3:  # flicker below the pixel threshold everywhere
            cur = np.clip(prev.astype(int) + rng.integers(-12, 13, prev.shape), 0, 255).astype(np.uint8)
        elif kind == 4:  # a new line of text: few pixels, but long
            cur[70:74, 20:120] = 0
        else:  # many small blobs that together exceed 2% of the frame
            for _ in range(40):
                y, x = rng.integers(0, 114), rng.integers(0, 154)
                cur[y:y + 5, x:x + 5] = 255 - cur[y:y + 5, x:x + 5]
        ref = _reference_masked_difference(prev, cur)
        assert cursor_masked_difference(prev, cur) == pytest.approx(ref, abs=1e-9), (trial, kind)
        kinds.append((kind, ref > 0))
    # the cases exercise both outcomes: masked to zero and real change
    assert {k for k, positive in kinds if positive} >= {1, 2, 4}
    assert {k for k, positive in kinds if not positive} >= {0, 3}
