"""The synthetic narrated lectures: decodable, pointer drawn where the truth says, transcript = truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathkit.synthetic.video import PHRASES, VideoTruth, ensure_video_set, write_narrated_video
from pathkit.video.cursor_shapes import SHAPES
from pathkit.video.decode import iter_frames, probe
from pathkit.video.transcript import read_vtt


@pytest.fixture(scope="module", params=["synthetic", "ihc"])
def lecture(request, tmp_path_factory) -> VideoTruth:
    root = tmp_path_factory.mktemp(f"lecture_{request.param}")
    return write_narrated_video(root / "lec.mp4", seconds=12, fps=10, size=(320, 240), seed=3 if
                                request.param == "synthetic" else 1, background=request.param)


def test_decodes_with_expected_frame_count_and_fps(lecture):
    info = probe(lecture.path)
    assert (info.width, info.height) == (320, 240)
    assert info.fps == pytest.approx(10.0)
    frames = list(iter_frames(lecture.path, grey=False))
    assert len(frames) == lecture.n_frames == 120
    assert frames[-1].t == pytest.approx(11.9, abs=1e-6)


def test_pointer_visible_at_ground_truth_position(lecture):
    """At sampled frames the pixels under the pointer's outline are dark and its fill is bright; a frame
    where the truth says hidden has no pointer drawn there."""
    shape = SHAPES[lecture.cursor_kind]
    outline = (shape.grey == 0) & shape.mask
    fill = (shape.grey == 255) & shape.mask
    frames = {f.index: f.image for f in iter_frames(lecture.path, grey=True)}
    checked = 0
    for i in range(0, lecture.n_frames, 7):
        xy = lecture.cursor[i]
        if xy is None:
            continue
        x0, y0 = xy[0] - shape.hotspot[0], xy[1] - shape.hotspot[1]
        patch = frames[i][y0:y0 + shape.grey.shape[0], x0:x0 + shape.grey.shape[1]].astype(float)
        assert patch.shape == shape.grey.shape, f"frame {i}: pointer at {xy} is cut off"
        assert patch[fill].mean() - patch[outline].mean() > 120, f"frame {i}: no pointer at {xy}"
        checked += 1
    assert checked >= 8
    # shift by 40 px: the pattern is not there (the check above can fail)
    xy = next(c for c in lecture.cursor if c is not None)
    i = lecture.cursor.index(xy)
    x0, y0 = (xy[0] + 40) % 280, (xy[1] + 40) % 200
    patch = frames[i][y0:y0 + shape.grey.shape[0], x0:x0 + shape.grey.shape[1]].astype(float)
    assert patch[fill].mean() - patch[outline].mean() < 120


def test_truth_structure(lecture):
    chunks = np.array(lecture.chunks)
    assert chunks[0, 0] == 0 and chunks[-1, 1] == pytest.approx(12.0)
    assert np.all(chunks[:, 1] > chunks[:, 0]) and np.all(chunks[1:, 0] >= chunks[:-1, 1])
    assert len(lecture.cursor) == lecture.n_frames
    assert len(lecture.transitions) == len(lecture.chunks) - 1
    named = [u for u in lecture.utterances if u.label]
    assert named and all(u.box is not None and PHRASES[u.label] in u.text for u in named)
    for u in named:  # the box holds the pointer during the utterance
        for i in range(int(round(u.start * lecture.fps)), int(round(u.end * lecture.fps))):
            x, y = lecture.cursor[i]
            assert u.box[0] <= x <= u.box[2] and u.box[1] <= y <= u.box[3]


def test_transcript_parses_and_matches_truth(lecture):
    cues = read_vtt(lecture.transcript)
    assert len(cues) == len(lecture.utterances)
    for cue, u in zip(cues, lecture.utterances):
        assert cue.start == pytest.approx(u.start, abs=1e-3) and cue.end == pytest.approx(u.end, abs=1e-3)
        assert cue.text == u.text


def test_deterministic_per_seed_and_differs_across_seeds(tmp_path):
    a = write_narrated_video(tmp_path / "a.mp4", 4, 10, (160, 120), seed=5)
    b = write_narrated_video(tmp_path / "b.mp4", 4, 10, (160, 120), seed=5)
    c = write_narrated_video(tmp_path / "c.mp4", 4, 10, (160, 120), seed=6)
    ja, jb, jc = (json.loads(t.truth_path.read_text()) for t in (a, b, c))
    for j in (ja, jb, jc):
        j.pop("video"), j.pop("transcript")
    assert ja == jb and ja != jc
    fa = [f.image for f in iter_frames(a.path)]
    fb = [f.image for f in iter_frames(b.path)]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))


def test_ensure_video_set_reuses_complete_set(tmp_path):
    from pathkit.config import Config

    cfg = Config.from_name("tiny").synthetic.replace(video_count=2, video_seconds=3.0)
    first = ensure_video_set(tmp_path, cfg, seed=0)
    assert [t.background for t in first] == ["synthetic", "ihc"]
    mtime = first[0].path.stat().st_mtime_ns
    again = ensure_video_set(tmp_path, cfg, seed=0)
    assert again[0].path.stat().st_mtime_ns == mtime and again[1].chunks == first[1].chunks


def test_bad_arguments(tmp_path):
    from pathkit.io import PathkitError

    with pytest.raises(PathkitError, match="even"):
        write_narrated_video(tmp_path / "x.mp4", 4, 10, (161, 120))
    with pytest.raises(PathkitError, match="background"):
        write_narrated_video(tmp_path / "x.mp4", 4, 10, (160, 120), background="cats")
