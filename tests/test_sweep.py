"""pathkit sweep: real papermill runs of a purpose-made notebook (and one numbered notebook), real processes.

The probe notebook records ``score = 10 * x + seed`` and the learning rate its Config ends up with, so every
number in results.csv has an independent expected value, and an override that did not reach the Config shows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from sweep_helpers import PROBE_BODY, PROBE_PARAMETERS, write_notebook

from pathkit.io import PathkitError, read_json, read_jsonl
from pathkit.sweep.spec import parse_grid, parse_value, run_id

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "OMP_NUM_THREADS": "1", "PATHKIT_TORCH_THREADS": "1"}


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return write_notebook(tmp_path_factory.mktemp("probe") / "probe.ipynb", PROBE_PARAMETERS, PROBE_BODY)


def pathkit_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pathkit.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def test_values_grid_and_run_ids():
    assert parse_value("1e-4") == 1e-4 and parse_value("8") == 8 and parse_value("true") is True
    assert parse_value("none") is None and parse_value("auto") == "auto"
    assert parse_grid(["*.lr=1e-4,3e-4", "llm.lora_r=4"]) == {"*.lr": [1e-4, 3e-4], "llm.lora_r": [4]}
    a, b = run_id({"x": 1, "seed": 0}), run_id({"seed": 0, "x": 1})
    assert a == b and a != run_id({"x": 1, "seed": 1}) and a != run_id({"x": 1.5, "seed": 0})
    with pytest.raises(PathkitError, match="--grid 'lr'"):
        parse_grid(["lr"])


def test_sweep_cli_results_report_yaml_and_skip(probe, tmp_path):
    out = tmp_path / "sweep"
    res = pathkit_cli("sweep", str(probe), "--grid", "x=1,2", "--grid", "clip.init_temperature=0.0025", "--seeds", "0,1",
                      "--workers", "2", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and set(table["status"]) == {"done"}
    assert list(table.columns[:4]) == ["run_id", "x", "clip.init_temperature", "seed"]
    assert (table["score"] == 10 * table["x"] + table["seed"]).all()
    assert (table["temperature"] == 0.0025).all()  # the override reached the notebook's Config (the preset's is not it)
    assert table["shared_data"].all() and (table["seconds"] > 0).all()
    assert pd.read_parquet(out / "results.parquet")["score"].tolist() == table["score"].tolist()
    for rid in table["run_id"]:
        run = out / "runs" / rid
        params = read_json(run / "params.json")
        assert rid == run_id(params)
        shared = (run / "work" / "synthetic").resolve()  # OUT/data/<preset, seed, synthetic.* key>/synthetic
        assert shared.parent.parent == (out / "data").resolve() and f"seed={params['seed']}" in shared.parent.name
        executed = nbformat.read(run / "probe.ipynb", as_version=4)
        shown = [o["data"]["application/json"] for c in executed.cells if c.cell_type == "code"
                 for o in c.outputs if "application/json" in o.get("data", {})]
        assert shown == [read_json(run / "metrics.json")]  # the recorded values show in the notebook too
        assert (run / "log.txt").is_file()

    # The first run of each seed (it would build that seed's data) finished before the others of its seed began.
    status = {(r.x, r.seed): read_json(out / "runs" / r.run_id / "status.json") for r in table.itertuples()}
    for seed in (0, 1):
        first = status[(1, seed)]
        assert status[(2, seed)]["started"] >= first["started"] + first["seconds"]

    figures = tmp_path / "figures"
    rep = pathkit_cli("sweep", "report", str(out), "--x", "x", "--y", "score", "--figures", str(figures))
    assert rep.returncode == 0, rep.stderr
    summary = pd.read_csv(figures / "sweep_sweep_score.csv")
    assert summary["mean"].tolist() == [10.5, 20.5] and summary["count"].tolist() == [2, 2]
    assert summary["std"].round(4).tolist() == [0.7071, 0.7071]  # sample std of {10, 11}
    assert (figures / "sweep_sweep_score.png").stat().st_size > 1000
    bad = pathkit_cli("sweep", "report", str(out), "--x", "x", "--y", "nope", "--figures", str(figures))
    assert bad.returncode == 2 and "--y 'nope': not a column" in bad.stderr

    # The same sweep written as YAML has the same runs: all skipped, nothing executed again.
    started = {rid: read_json(out / "runs" / rid / "status.json")["started"] for rid in table["run_id"]}
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"notebook: {probe}\ngrid:\n  x: [1, 2]\n  clip.init_temperature: [0.0025]\nseeds: [0, 1]\nworkers: 2\n")
    again = pathkit_cli("sweep", str(spec), "--out", str(out), "--no-progress")
    assert again.returncode == 0 and "4 done (4 already)" in again.stdout
    assert started == {rid: read_json(out / "runs" / rid / "status.json")["started"] for rid in table["run_id"]}


def test_override_that_matches_nothing_fails_the_run(probe, tmp_path):
    out = tmp_path / "sweep"
    res = pathkit_cli("sweep", str(probe), "--grid", "nope.key=1", "--out", str(out), "--no-progress")
    assert res.returncode == 1
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert "PathkitError: overrides['nope.key']: not a Config section" in failure["reason"]
    assert failure["params"] == {"nope.key": 1}


@pytest.mark.slow
def test_one_failing_run_does_not_stop_the_others(probe, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    out = tmp_path / "sweep"
    res = pathkit_cli("sweep", str(probe), "--grid", f"fail_if=none,{flag}", "--grid", "x=1,2", "--workers", "2",
                      "--out", str(out), "--no-progress")
    assert res.returncode == 1
    table = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert sorted(table["status"]) == ["done", "done", "failed", "failed"]
    failures = read_jsonl(out / "failures.jsonl")
    assert sorted(f["params"]["x"] for f in failures) == [1, 2]
    assert all(f["reason"].endswith("AssertionError: asked to fail") and f["reason"].startswith("cell ")
               for f in failures)
    assert all(Path(f["log"]).read_text().rstrip().endswith("AssertionError: asked to fail") for f in failures)
    done = {rid: read_json(out / "runs" / rid / "status.json")["started"]
            for rid in table.loc[table["status"] == "done", "run_id"]}
    flag.unlink()
    again = pathkit_cli("sweep", str(probe), "--grid", f"fail_if=none,{flag}", "--grid", "x=1,2", "--workers", "2",
                        "--out", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr[-1500:]
    assert "4 done (2 already)" in again.stdout  # the two failed runs ran again, the finished ones did not
    assert done == {rid: read_json(out / "runs" / rid / "status.json")["started"] for rid in done}
    assert not (out / "failures.jsonl").exists()


def test_notebook_without_overrides_parameter_is_a_clear_error(tmp_path):
    nb = write_notebook(tmp_path / "plain.ipynb", "x = 1", "print(x)")
    res = pathkit_cli("sweep", str(nb), "--grid", "llm.lora_r=4", "--out", str(tmp_path / "s"))
    assert res.returncode == 2
    assert res.stderr.strip() == (f"error: {nb}: 'llm.lora_r' is not a parameter of this notebook, and it has "
                                  "no 'overrides' parameter to pass config keys through")


@pytest.mark.slow
def test_sigkill_loses_only_the_runs_in_flight(probe, tmp_path):
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "pathkit.cli", "sweep", str(probe), "--grid", "x=1,2,3,4,5,6", "--set",
            "sleep=2.5", "--workers", "2", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = out / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(runs.glob("*/status.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: read_json(p)["started"] for p in runs.glob("*/status.json")}
    assert 2 <= len(finished) < 6
    time.sleep(4)  # longer than a run: the pool workers died with the sweep, nobody finishes the runs in flight
    assert {p.parent.name for p in runs.glob("*/status.json")} == set(finished)
    table = pd.read_csv(out / "results.csv")  # written after every finished run: the kill lost none of them
    assert set(table.loc[table["status"] == "done", "run_id"]) == set(finished)

    res = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-1500:]
    assert f"6 done ({len(finished)} already)" in res.stdout
    assert finished == {rid: read_json(runs / rid / "status.json")["started"] for rid in finished}
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 6 and (table["score"] == 10 * table["x"]).all()


def test_run_folder_is_locked_while_a_run_executes(probe, tmp_path):
    """A second sweep over the same folder waits for the run in progress and then skips it."""
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "pathkit.cli", "sweep", str(probe), "--grid", "x=7", "--set", "sleep=3",
            "--out", str(out), "--no-progress"]
    first = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "runs").glob("*/params.json")):
        time.sleep(0.1)
    second = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=120) == 0 and second.returncode == 0
    (run,) = (out / "runs").iterdir()
    log = (run / "log.txt").read_text()
    assert log.count("x = 7") <= 1  # executed once, not twice over the same folder
    assert read_json(run / "metrics.json")["score"] == 70


@pytest.mark.notebooks
def test_numbered_notebook_takes_overrides_and_records(tmp_path):
    """Notebook 01 with a few small Config overrides: the recorded counts follow them."""
    from pathkit.synthetic.tissue import CLASSES

    nb = REPO / "notebooks" / "01_tour_and_synthetic_data.ipynb"
    res = pathkit_cli("sweep", str(nb), "--grid", "synthetic.tiles_per_class=3", "--set",
                      "synthetic.slide_count=1", "--set", "synthetic.slide_size=1024", "--set",
                      "synthetic.video_count=1", "--set", "synthetic.video_seconds=4", "--out", str(tmp_path / "s"),
                      "--no-progress", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    row = pd.read_csv(tmp_path / "s" / "results.csv").iloc[0]
    assert row["tiles"] == 3 * len(CLASSES) and row["slides"] == 1 and row["videos"] == 1
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"] == 1
