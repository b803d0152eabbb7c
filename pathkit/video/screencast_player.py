"""The lecturer's side of a real screencast: a Tk window plays a lecture script while ``xdotool`` moves the pointer.

Run by :mod:`pathkit.video.screencast` as ``python -m pathkit.video.screencast_player JOB.json`` on an X
display. Tick ``k`` happens at wall-clock ``start + (lead + k + 0.5) / fps``, half-way between the grabs of a
capture that started at ``start``: it shows the lecture at ``k / fps``, then moves the pointer to tick ``k``'s
position and logs when the move began and ended, so every grabbed frame has one unambiguous pointer position.
The window's cursor is the X font cursor ``cursor_name``; libXcursor turns it into the theme's image
(``XCURSOR_THEME``, ``XCURSOR_SIZE`` in the environment).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pathkit.video.lecture_script import Lecture

# Lazy imports: tkinter (Tk, a display). They load inside the functions that need them, not when this module
# is imported.


def play(job: dict) -> list[dict]:
    import tkinter as tk

    lecture = Lecture.from_json(job["lecture"])
    w, h = job["size"]
    fps = float(job["fps"])
    plan = job["pointer"]  # per tick: [x, y] in screen pixels
    root = tk.Tk()
    root.overrideredirect(True)
    root.geometry(f"{w}x{h}+0+0")
    root.configure(cursor=job["cursor_name"])
    label = tk.Label(root, borderwidth=0, highlightthickness=0, cursor=job["cursor_name"])
    label.place(x=0, y=0, width=w, height=h)
    root.configure(background="black")
    root.update()
    header = f"P6 {w} {h} 255 ".encode()
    for k in range(0, len(plan), max(1, int(fps) // 2)):  # build every source canvas before the clock starts
        frame = lecture.frame(k / fps, (w, h))
        tk.PhotoImage(data=header + np.ascontiguousarray(frame).tobytes(), format="PPM")
    label.configure(background="black")
    root.update()
    Path(job["ready_file"]).write_text("ready")
    start_file = Path(job["start_file"])
    while not start_file.exists():  # the capture's first grab time, written once ffmpeg reports it
        root.update()
        time.sleep(0.005)
    start = float(start_file.read_text()) + int(job["lead_frames"]) / fps
    log, image = [], None
    last = tuple(plan[0]) if plan else None  # the recorder put the pointer there: --sync would wait for a move
    for k, (x, y) in enumerate(plan):
        frame = lecture.frame(k / fps, (w, h))
        wait = start + (k + 0.5) / fps - time.time()
        if wait > 0:
            time.sleep(wait)
        image = tk.PhotoImage(data=header + np.ascontiguousarray(frame).tobytes(), format="PPM")
        label.configure(image=image)
        root.update()
        root.winfo_pointerxy()  # a round trip: the X server has drawn the new image before we log it
        t_show = time.time()
        t0 = t1 = t_show
        if (x, y) != last:  # (lists from JSON: compare as tuples)
            # --sync: xdotool returns once the server reports the pointer at its new place
            subprocess.run(["xdotool", "mousemove", "--sync", str(int(x)), str(int(y))], check=True)
            t1 = time.time()
            last = (x, y)
        log.append({"k": k, "t_show": t_show, "t_move0": t0, "t_move1": t1, "x": int(x), "y": int(y)})
    part = Path(job["log"] + ".part")
    part.write_text(json.dumps(log))
    part.replace(job["log"])
    stop_file = Path(job["stop_file"])
    while not stop_file.exists():  # the last view stays on screen until the capture has stopped
        root.update()
        time.sleep(0.01)
    root.destroy()
    return log


def main(argv: list[str] | None = None) -> None:
    job_path = Path((argv or sys.argv[1:])[0])
    play(json.loads(job_path.read_text()))


if __name__ == "__main__":
    main()
