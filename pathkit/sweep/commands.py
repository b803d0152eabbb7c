"""``pathkit sweep NOTEBOOK --grid KEY=V1,V2 ... --out DIR`` and ``pathkit sweep report DIR --x K --y M``."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup


class SweepGroup(TyperGroup):
    """``pathkit sweep NOTEBOOK ...`` runs a sweep (the ``run`` subcommand); ``pathkit sweep report`` reports."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "run", self.commands["run"], args
        return super().resolve_command(ctx, args)


sweep_app = typer.Typer(cls=SweepGroup, no_args_is_help=True, add_completion=False,
                        help="Parameter sweeps over a notebook with papermill, locally or on Ray; reports. "
                        "`pathkit sweep NOTEBOOK ...` is short for `pathkit sweep run NOTEBOOK ...`.")


@sweep_app.command("run")
def run_command(
    notebook: Path = typer.Argument(..., help="the notebook to execute per run, or a sweep YAML file"),
    grid: list[str] = typer.Option(None, "--grid", help="KEY=V1,V2: a notebook parameter or a config/stage "
                                   "key passed through the notebook's overrides (llm.lora_r=4,8; *.lr=1e-4,3e-4)"),
    seeds: str = typer.Option(None, "--seeds", help="seeds to run each grid point with, e.g. 0,1,2"),
    set_: list[str] = typer.Option(None, "--set", help="KEY=VALUE fixed for every run (preset=tiny)"),
    workers: int = typer.Option(None, "--workers", help="runs at once with the local engine (default 1)"),
    engine: str = typer.Option(None, "--engine", help="local (a process pool) or ray"),
    ray_address: str = typer.Option(None, "--ray-address", help="join this Ray cluster (default: start a local "
                                    "Ray with this machine's cores)"),
    cpus: float = typer.Option(None, "--cpus-per-run", help="Ray: CPUs each run reserves (default 1)"),
    gpus: float = typer.Option(None, "--gpus-per-run", help="Ray: GPUs each run reserves (default 0)"),
    data: Path = typer.Option(None, "--data", help="prepared data shared by every run (default OUT/data)"),
    timeout: float = typer.Option(None, "--timeout", help="seconds a single cell may run (default: no limit)"),
    out: Path = typer.Option(..., "--out", help="sweep folder: runs/<run-id>/, results.csv, failures.jsonl"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
) -> None:
    """Execute NOTEBOOK once per grid point and seed into OUT/runs/<run-id>/; collect OUT/results.csv.

    Re-running the same command skips finished runs and retries failed ones. Exit status 1 when any run failed
    (listed in OUT/failures.jsonl with its error line).
    """
    from pathkit.sweep.runner import run_sweep
    from pathkit.sweep.spec import SweepSpec, parse_grid, parse_seeds, parse_set

    cli = dict(grid=parse_grid(grid), seeds=parse_seeds(seeds), fixed=parse_set(set_), workers=workers,
               engine=engine, ray_address=ray_address, num_cpus=cpus, num_gpus=gpus, data_dir=data,
               timeout=timeout)
    if notebook.suffix in (".yaml", ".yml"):
        if not notebook.is_file():
            raise FileNotFoundError(f"{notebook}: sweep file not found")
        spec = SweepSpec.from_yaml(notebook, **cli)
    else:
        given = {k: v for k, v in cli.items() if v not in (None, [], {})}
        spec = SweepSpec(notebook=notebook, **given)
    summary = run_sweep(spec, out, progress=progress)
    typer.echo(f"{summary['runs']} runs: {summary['done']} done ({summary['skipped']} already), "
               f"{summary['failed']} failed, {summary['pending']} pending; results: {summary['results']}")
    if summary["failed"] or summary["pending"]:
        typer.echo(f"failures: {summary['failures']}", err=True)
        raise typer.Exit(1)


@sweep_app.command("report")
def report_command(
    sweep_dir: Path = typer.Argument(..., help="a sweep folder (with results.csv)"),
    x: str = typer.Option(..., "--x", help="parameter on the x axis"),
    y: str = typer.Option(..., "--y", help="recorded metric on the y axis"),
    hue: str = typer.Option(None, "--hue", help="parameter drawn as one line per value"),
    figures: Path = typer.Option(Path("figures"), "--figures", help="folder for the table and the plot"),
    name: str = typer.Option(None, "--name", help="file stem (default sweep_<folder>_<metric>)"),
) -> None:
    """Table (mean ± std over seeds) and plot of METRIC against a parameter: FIGURES/<name>.csv and .png."""
    from pathkit.sweep.report import sweep_report

    res = sweep_report(sweep_dir, x, y, hue, figures, name)
    typer.echo(res["table"].drop(columns=["mean", "std"]).to_string(index=False))
    typer.echo(f"table: {res['csv']}\nplot: {res['png']}")


def register(app: typer.Typer) -> None:
    app.add_typer(sweep_app, name="sweep")
