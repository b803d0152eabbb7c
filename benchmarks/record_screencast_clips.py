"""Record the short real screencasts committed under tests/data/screencasts (TEST_CLIPS), live, ~17 s each.

    .venv/bin/python benchmarks/record_screencast_clips.py [--out tests/data/screencasts]
"""

from __future__ import annotations

import argparse

from pathkit.video.screencast_family import TEST_CLIPS, ensure_clip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/screencasts")
    args = ap.parse_args(argv)
    for clip in TEST_CLIPS:
        print(ensure_clip(args.out, clip, short=True))


if __name__ == "__main__":
    main()
