"""Transcript readers: WebVTT, SRT, Whisper JSON; malformed input names the file and line."""

from __future__ import annotations

import json

import pytest

from pathkit.io import PathkitError
from pathkit.video.transcript import read_transcript, utterances_in

VTT = """WEBVTT
Kind: captions

NOTE a comment
spanning lines

intro
00:00:01.000 --> 00:00:03.500 align:start
Here we see <b>tumor</b> cells.

00:00:04.000 --> 00:00:06.250
Notice the stroma
with spindle nuclei.

1:02:03.040 --> 1:02:04.000
Late remark.
"""

SRT = """1
00:00:01,000 --> 00:00:03,500
Here we see tumor cells.

2
00:00:04,000 --> 00:00:06,250
Notice the stroma
with spindle nuclei.
"""


def test_vtt(tmp_path):
    p = tmp_path / "t.vtt"
    p.write_text(VTT)
    u = read_transcript(p)
    assert [(x.start, x.end) for x in u] == [(1.0, 3.5), (4.0, 6.25), (3723.04, 3724.0)]
    assert u[0].text == "Here we see tumor cells." and u[1].text == "Notice the stroma with spindle nuclei."
    assert u[1].n_words == 6


def test_srt_matches_vtt(tmp_path):
    (tmp_path / "t.srt").write_text(SRT)
    (tmp_path / "t.vtt").write_text(VTT)
    srt, vtt = read_transcript(tmp_path / "t.srt"), read_transcript(tmp_path / "t.vtt")
    assert [(u.start, u.end, u.text) for u in srt] == [(u.start, u.end, u.text) for u in vtt[:2]]


def test_whisper_json_with_words(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"text": "...", "segments": [
        {"id": 0, "start": 0.5, "end": 2.0, "text": " Here we see tumor.",
         "words": [{"word": " Here", "start": 0.5, "end": 0.7}, {"word": " we", "start": 0.7, "end": 0.8},
                   {"word": " see", "start": 0.8, "end": 1.0}, {"word": " tumor.", "start": 1.1, "end": 2.0}]},
        {"id": 1, "start": 2.5, "end": 3.0, "text": "Moving on."}]}))
    u = read_transcript(p)
    assert u[0].text == "Here we see tumor." and [w.word for w in u[0].words] == ["Here", "we", "see", "tumor."]
    assert u[0].words[3].start == 1.1 and u[1].words == []


@pytest.mark.parametrize("name, text, line", [
    ("bad.vtt", "WEBVTT\n\n00:00:01.000 -> 00:00:02.000\nbroken arrow\n", 3),
    ("bad.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nok\n\n00:00:0x.000 --> 00:00:03.000\nbad\n", 6),
    ("bad.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\nabc\n00:00:03,000 --> 00:00:04,000\nx\n", 5),
    ("bad.vtt", "00:00:01.000 --> 00:00:02.000\nno header\n", 1),
    ("bad.vtt", "WEBVTT\n\n00:00:05.000 --> 00:00:02.000\nbackwards\n", 3),
])
def test_malformed_line_names_file_and_line(tmp_path, name, text, line):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(PathkitError) as err:
        read_transcript(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}:{line}:") and "\n" not in msg


def test_bad_json_and_unknown_suffix(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('{"segments": [{"start": 0, "text": "no end"}]}')
    with pytest.raises(PathkitError, match="segment 0"):
        read_transcript(p)
    p.write_text("{not json")
    with pytest.raises(PathkitError, match=r"t.json:1: invalid JSON"):
        read_transcript(p)
    with pytest.raises(PathkitError, match="unknown transcript format"):
        read_transcript(tmp_path / "t.txt")


def test_utterances_in_assigns_each_once(tmp_path):
    p = tmp_path / "t.vtt"
    p.write_text(VTT)
    u = read_transcript(p)
    a, b = utterances_in(u, 0, 3.9), utterances_in(u, 3.9, 10)
    assert [x.start for x in a] == [1.0] and [x.start for x in b] == [4.0]
