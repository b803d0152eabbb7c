"""Stable chunks, pointer tracking and narratives measured against the synthetic ground truth; bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pathkit.config import VideoConfig
from pathkit.io import PathkitError, read_jsonl
from pathkit.synthetic.video import write_narrated_video
from pathkit.video.chunks import (
    adaptive_threshold,
    chunks_from_signal,
    cursor_masked_difference,
    median_frame,
    stable_chunks,
)
from pathkit.video.cursor import track_cursor
from pathkit.video.decode import iter_frames, probe
from pathkit.video.narratives import build_narratives, read_narratives
from pathkit.video.scoring import box_iou, matched_chunks


@pytest.fixture(scope="module")
def lectures(tmp_path_factory):
    root = tmp_path_factory.mktemp("lectures")
    return [write_narrated_video(root / f"lec_{bg}_{s}.mp4", 16, 10, (320, 240), seed=s, background=bg)
            for s, bg in ((0, "synthetic"), (1, "ihc"), (3, "synthetic"))]  # seed 3: hand pointer


def test_chunk_boundaries_within_half_a_second(lectures):
    for lec in lectures:
        det = stable_chunks(lec.path, VideoConfig())
        got = [(c.start, c.end) for c in det.chunks]
        assert len(got) == len(lec.chunks), (lec.path.name, got, lec.chunks)
        assert matched_chunks(got, lec.chunks, 0.5) == len(lec.chunks), (got, lec.chunks)


def test_moving_pointer_does_not_split_a_chunk():
    """A pointer sweeping over a static textured view: masked difference stays ~0, plain one does not."""
    from pathkit.video.cursor_shapes import ARROW, draw_cursor

    rng = np.random.default_rng(0)
    base = (rng.random((120, 160)) * 60 + 100).astype(np.uint8)
    frames = []
    for k in range(30):
        f = np.repeat(base[..., None], 3, 2).copy()
        draw_cursor(f, 10 + 4 * k, 20 + 2 * k, ARROW)
        frames.append(f[..., 0].copy())
    raw = [float(np.abs(frames[i].astype(int) - frames[i - 1]).mean()) for i in range(1, 30)]
    masked = [cursor_masked_difference(frames[i - 1], frames[i]) for i in range(1, 30)]
    assert min(raw) > 0.5 and max(masked) < 0.05
    det = stable_chunks(cfg=VideoConfig(min_chunk_seconds=1.0), times=np.arange(30) / 10, frames=frames,
                        duration=3.0)
    assert [(c.start, c.end) for c in det.chunks] == [(0.0, 3.0)]


def test_adaptive_threshold_follows_the_signal():
    quiet = np.r_[0, np.full(50, 0.5), 40, np.full(50, 0.5)]
    noisy = quiet + np.r_[0, np.random.default_rng(1).normal(0, 2, 101)]
    assert adaptive_threshold(quiet) == pytest.approx(1.5)  # MAD 0 -> median + min_delta
    thr = adaptive_threshold(noisy, k=6)
    assert 5 < thr < 30  # scales with the noise, still below the cut
    chunks = chunks_from_signal(np.arange(102) * 0.2, noisy, thr, 0.2, 1.0, 20.4)
    assert [(round(c.start, 2), round(c.end, 2)) for c in chunks] == [(0.0, 10.2), (10.2, 20.4)]


def test_min_duration_drops_short_runs():
    sig = np.r_[0, np.zeros(9), 50, 0, 0, 50, np.zeros(9)]  # a 0.6 s run between two cuts
    chunks = chunks_from_signal(np.arange(len(sig)) * 0.2, sig, 1.0, 0.2, 1.0)
    assert len(chunks) == 2


def test_cursor_recall_error_and_false_detections(lectures):
    for lec in lectures:
        rows = track_cursor(lec.path)
        det = {int(round(r["t"] * lec.fps)): r for r in rows}
        visible = [i for i, c in enumerate(lec.cursor) if c is not None]
        hidden = [i for i, c in enumerate(lec.cursor) if c is None]
        recall = np.mean([i in det for i in visible])
        errors = [np.hypot(det[i]["x"] - lec.cursor[i][0], det[i]["y"] - lec.cursor[i][1])
                  for i in visible if i in det]
        assert recall >= 0.95 and np.median(errors) <= 2.0, (lec.path.name, recall, np.median(errors))
        if hidden:
            assert np.mean([i in det for i in hidden]) <= 0.02
        assert {r["shape"].split("@")[0] for r in rows} == {lec.cursor_kind}


def test_default_detector_keeps_the_exact_hotspot_on_pathkit_lectures(lectures):
    """The learned detector (the default) on pathkit's own lectures: as good as the template tracker, to the pixel
    (pathkit's pixel art, matched around the network's detection, gives the exact hotspot)."""
    from pathkit.video.pointer_tracker import track_pointer
    from pathkit.video.scoring import per_frame_detections, pointer_scores

    for lec in lectures:
        times = np.arange(lec.n_frames) / lec.fps
        xy = np.array([c if c is not None else (np.nan, np.nan) for c in lec.cursor], float)
        s = pointer_scores(xy, np.zeros(len(xy), bool), per_frame_detections(track_pointer(lec.path), times))
        assert s["recall"] >= 0.95 and s["median_error_px"] <= 0.5, (lec.path.name, s)
        assert s["false_detection_rate"] <= 0.02, (lec.path.name, s)


def test_representative_frame_removes_the_pointer(lectures):
    lec = lectures[0]
    a, b = lec.chunks[0]
    frames, xy = [], []
    for f in iter_frames(lec.path, grey=False):
        if a <= f.t < b:
            frames.append(f.image)
            xy.append(lec.cursor[f.index])
    rep = median_frame(frames, xy)
    x, y = next(c for c in xy if c is not None)
    patch = rep[y:y + 10, x:x + 4].astype(float)
    # the pointer's white fill and black outline are gone: the patch looks like tissue, not 0/255 pixels
    assert (patch.max(axis=2) < 30).mean() < 0.2 and (patch.min(axis=2) > 245).mean() < 0.5


def test_narratives_contract_and_grounding(lectures, tmp_path):
    items = [(lec.path, lec.transcript) for lec in lectures[:2]]
    rows, failures = build_narratives(items, tmp_path / "nar", VideoConfig())
    assert not failures
    raw = read_jsonl(tmp_path / "nar" / "narratives.jsonl")
    assert raw == rows and len(rows) >= 6
    keys = {"video", "chunk", "start", "end", "frame", "width", "height", "caption", "cursor", "groundings", "heatmap"}
    n_grounded = 0
    for r in read_narratives(tmp_path / "nar"):
        assert keys <= set(r)
        from PIL import Image

        img = Image.open(r["frame"])
        assert img.size == (r["width"], r["height"]) == (320, 240)
        heat = np.load(r["heatmap"])
        assert heat.shape == (240, 320) and heat.dtype == np.float32
        for t, x, y in r["cursor"]:
            assert r["start"] <= t < r["end"] and 0 <= x < 320 and 0 <= y < 240
        if r["cursor"]:
            yx = np.unravel_index(np.argmax(heat), heat.shape)
            pts = np.array(r["cursor"])[:, 1:]
            assert np.min(np.hypot(pts[:, 0] - yx[1], pts[:, 1] - yx[0])) < 10  # hot where the pointer was
        for g in r["groundings"]:
            assert set(g) >= {"text", "start", "end", "box"} and g["text"] in r["caption"]
            x1, y1, x2, y2 = g["box"]
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
            area = (x2 - x1) * (y2 - y1) / (320 * 240)
            assert 0.02 - 0.01 <= area <= 0.7 + 0.01
            n_grounded += 1
    assert n_grounded >= 2
    # grounded boxes overlap the truth box of the same utterance
    truth = {(str(lec.path), round(u.start, 2)): u.box for lec in lectures[:2] for u in lec.utterances if u.box}
    hits = [box_iou(g["box"], truth[r["video"], round(g["start"], 2)]) > 0.1 for r in rows for g in r["groundings"]
            if (r["video"], round(g["start"], 2)) in truth]
    print("grounding hits", hits)
    assert hits and np.mean(hits) >= 0.7


def test_batch_continues_past_bad_videos_and_resumes(lectures, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(lectures[0].path.read_bytes()[:5000])  # truncated: no moov atom
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    vtt = lectures[0].transcript
    items = [(bad, vtt), (lectures[0].path, vtt), (zero, vtt)]
    rows, failures = build_narratives(items, tmp_path / "out", VideoConfig())
    assert len(failures) == 2 and rows and all(r["video"] == str(lectures[0].path) for r in rows)
    fl = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert "broken.mp4" in fl[0]["item"] and "corrupt or truncated" in fl[0]["reason"]
    assert "zero-length" in fl[1]["reason"]
    # resume: the finished video is not redone (its frame file keeps its mtime)
    frame = tmp_path / "out" / rows[0]["frame"]
    mtime = frame.stat().st_mtime_ns
    rows2, _ = build_narratives(items, tmp_path / "out", VideoConfig())
    assert rows2 == rows and frame.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("content, match", [(b"", "zero-length"), (b"\x00garbage" * 100, "cannot open")])
def test_bad_video_one_line_errors(tmp_path, content, match):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(PathkitError, match=match) as err:
        probe(p)
    assert "\n" not in str(err.value) and str(p) in str(err.value)


def test_video_without_cursor_gives_empty_valid_result(tmp_path):
    import av

    path = tmp_path / "plain.mp4"
    rng = np.random.default_rng(0)
    img = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for _ in range(30):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert track_cursor(path) == []
    vtt = tmp_path / "plain.vtt"
    vtt.write_text("WEBVTT\n\n00:00:00.500 --> 00:00:02.000\nA field of noise.\n")
    rows, failures = build_narratives([(path, vtt)], tmp_path / "n", VideoConfig())
    assert not failures and len(rows) == 1
    assert rows[0]["cursor"] == [] and rows[0]["groundings"] == [] and rows[0]["caption"] == "A field of noise."
    assert float(np.load(tmp_path / "n" / rows[0]["heatmap"]).max()) == 0.0


def test_transcript_not_overlapping_the_video(lectures, tmp_path):
    vtt = tmp_path / "late.vtt"
    vtt.write_text("WEBVTT\n\n01:00:00.000 --> 01:00:05.000\nToo late.\n")
    rows, failures = build_narratives([(lectures[0].path, vtt)], tmp_path / "n", VideoConfig())
    assert rows == [] and "no utterance overlaps" in failures.items[0]["reason"]


def test_cli_chunks_cursor_narratives(lectures, tmp_path):
    lec = lectures[1]
    exe = [sys.executable, "-m", "pathkit.cli", "video"]
    r = subprocess.run(exe + ["chunks", str(lec.path), "--out", str(tmp_path / "c.json")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    chunks = json.loads((tmp_path / "c.json").read_text())
    assert matched_chunks([(c["start"], c["end"]) for c in chunks], lec.chunks, 0.5) == len(lec.chunks)
    r = subprocess.run(exe + ["cursor", str(lec.path), "--out", str(tmp_path / "c.jsonl"), "--detector", "template"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(tmp_path / "c.jsonl")
    visible = sum(c is not None for c in lec.cursor)
    assert set(rows[0]) >= {"t", "x", "y", "score"} and len(rows) == visible
    r = subprocess.run(exe + ["cursor", str(lec.path), "--out", str(tmp_path / "n.jsonl")], capture_output=True,
                       text=True)  # the default: the learned detector
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(tmp_path / "n.jsonl")
    hits = sum(1 for row in rows if (c := lec.cursor[int(round(row["t"] * lec.fps))]) is not None
               and np.hypot(row["x"] - c[0], row["y"] - c[1]) <= 8)
    assert hits >= 0.9 * visible and len(rows) <= visible + 2, (hits, len(rows), visible)
    r = subprocess.run(exe + ["narratives", str(lec.path), "--transcript", str(lec.transcript), "--out",
                              str(tmp_path / "nar")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "nar" / "narratives.jsonl").exists()
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    r = subprocess.run(exe + ["chunks", str(zero), "--out", str(tmp_path / "z.json")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "zero-length" in r.stderr
    assert not (tmp_path / "z.json").exists()


def test_default_detector_drops_the_pointer_where_it_vanishes(tmp_path):
    """A screen rendered 1.5x larger and scaled into the video (blurred pointer, crf 32): where the pointer
    vanishes, what it uncovered scores a little like one (0.45 against the pointer's 0.8); the tracker must not
    keep it. Before the falling-score rule this lecture had 27% false detections. Rows come once per frame, in
    time order (pending candidates are reported back into earlier frames)."""
    from pathkit.video.pointer_tracker import track_pointer
    from pathkit.video.scoring import per_frame_detections, pointer_scores

    lec = write_narrated_video(tmp_path / "rescaled.mp4", 20, 25, (320, 240), seed=0, background="synthetic",
                               screen_scale=1.5, crf=32)
    rows = track_pointer(lec.path)
    t = [r["t"] for r in rows]
    assert t == sorted(set(t))
    times = np.arange(lec.n_frames) / lec.fps
    xy = np.array([c if c is not None else (np.nan, np.nan) for c in lec.cursor], float)
    s = pointer_scores(xy, np.zeros(len(xy), bool), per_frame_detections(rows, times))
    assert s["hidden_frames"] >= 100 and s["false_detection_rate"] <= 0.02, s  # measured 0
    assert s["recall"] >= 0.9, s  # measured 0.932


@pytest.mark.parametrize("content, match", [(b"not a safetensors file", "not readable as pointer detector weights"),
                                            (None, "metadata 'widths'")])
def test_bad_pointer_weights_one_line_errors(tmp_path, content, match):
    from safetensors.torch import save_file

    from pathkit.video.pointer_net import PointerNet, load_pointer_net

    path = tmp_path / "w.safetensors"
    if content is None:  # tensors of the default widths, metadata claiming others
        save_file({k: v.contiguous() for k, v in PointerNet().state_dict().items()}, str(path),
                  metadata={"widths": "12,16,32,48,32"})
    else:
        path.write_bytes(content)
    with pytest.raises(PathkitError, match=match) as err:
        load_pointer_net(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_pointer_renders_put_the_hotspot_on_the_drawn_tip():
    """The detector's training renders (arrows upright, rotated, rounded or mirrored like left-handed themes;
    hands; outlines and shadows): the hotspot they report lies on the drawn pointer, within 1.5 px of a pixel it
    covers, for every one of 300 renders (measured <= 1.4 px; with a rounded arrow's hotspot left at the
    sharp tip the rounding cut off, this fails)."""
    from pathkit.video.pointer_renders import render_pointer

    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(300):
        height = float(np.exp(rng.uniform(np.log(9), np.log(72))))
        _, alpha, (hx, hy) = render_pointer(rng, height, int(height * 2.3) + 8)
        ys, xs = np.nonzero(alpha > 0.2)  # a sharp tip's own pixel is only partly covered
        gaps.append(np.hypot(xs - hx, ys - hy).min())
    assert max(gaps) <= 1.5, sorted(gaps)[-5:]
