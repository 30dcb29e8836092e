"""`fmstack job`: submit, watch and stop jobs on a Ray cluster through the Ray Jobs API."""

from __future__ import annotations

import asyncio
import shlex
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cluster.dashboard import (
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    address_env_cleared,
    auth_headers,
    describe,
)
from cluster.output import console, fail, say, styled_status
from cluster.recipes import parse_overrides

if TYPE_CHECKING:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from training import PretrainConfig

app = typer.Typer(
    help="Submit and manage jobs on a Ray cluster (Ray Jobs API).", no_args_is_help=True
)

AddressOption = Annotated[
    str,
    typer.Option(
        "--address",
        envvar=list(ADDRESS_ENV),
        help="Ray dashboard (Jobs API) address, e.g. http://head-node:8265",
    ),
]
JobIdArgument = Annotated[str, typer.Argument(help="Job (submission) id, as `submit` prints it")]


# ---------------------------------------------------------------- helpers


@contextmanager
def _jobs_api(address: str) -> Iterator[JobSubmissionClient]:
    """A connected client; Ray and network failures inside become a one-line error and exit 1."""
    import aiohttp
    from ray.exceptions import AuthenticationError, RayError
    from ray.job_submission import JobSubmissionClient

    try:
        with address_env_cleared():
            client = JobSubmissionClient(address, headers=auth_headers())
        yield client
    except (typer.Exit, typer.Abort):
        raise
    except AuthenticationError:
        fail(
            f"{address} requires a valid authentication token: set RAY_AUTH_TOKEN or "
            "RAY_AUTH_TOKEN_PATH, or put the cluster's token in ~/.ray/auth_token"
        )
    except (OSError, RuntimeError, ValueError, RayError, aiohttp.ClientError) as err:
        fail(describe(err, address))


def _follow(client: JobSubmissionClient, job_id: str) -> JobStatus:
    """Stream the job's logs to stdout until it ends; returns its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            typer.echo(chunk, nl=False)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        say(f"stopped following; {job_id} keeps running (fmstack job stop {job_id})", err=True)
        raise typer.Exit(130) from None
    status = client.get_job_status(job_id)
    deadline = time.monotonic() + 30
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return status


def _cluster_relative_paths(cfg: PretrainConfig) -> list[str]:
    """Recipe keys holding relative local paths, which a job resolves inside its upload dir."""
    from training.storage import is_uri

    paths = {
        "checkpoint.storage_path": cfg.checkpoint.storage_path,
        "tokenizer.path": cfg.tokenizer_config.path,
    }
    paths.update({f"data.sources[{i}].path": s.path for i, s in enumerate(cfg.data.sources)})
    return [
        f"{key}={value}"
        for key, value in paths.items()
        if value and not is_uri(value) and not Path(value).expanduser().is_absolute()
    ]


# ---------------------------------------------------------------- commands


@app.command()
def submit(
    entrypoint: Annotated[
        list[str] | None,
        typer.Argument(help="A command to run instead of a recipe, after --", show_default=False),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML recipe to pretrain with")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set train.max_steps=50"),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Tail the logs until the job ends")
    ] = False,
    job_id: Annotated[
        str | None, typer.Option("--job-id", help="Submission id (default: Ray picks one)")
    ] = None,
    address: AddressOption = DEFAULT_ADDRESS,
) -> None:
    """Submit a recipe (validated here, uploaded alone) or any command after `--`."""
    if (config is None) == (not entrypoint):
        fail(
            "give exactly one of --config RECIPE or a command after --, "
            "e.g. `fmstack job submit -c recipe.yaml` or `fmstack job submit -- python train.py`",
            code=2,
        )
    if overrides and config is None:
        fail("--set only applies to a --config recipe", code=2)

    with tempfile.TemporaryDirectory(prefix="fmstack-job-") as upload:
        runtime_env: dict[str, object] | None = None
        command = shlex.join(entrypoint or [])
        if config is not None:
            import yaml

            from cluster.handover import check_gates
            from training import RecipeError, load_recipe

            try:
                cfg = load_recipe(config, parse_overrides(overrides))
                check_gates(cfg)
            except RecipeError as err:
                say(f"[red]{escape(str(err))}[/red]", err=True)
                raise typer.Exit(2) from None
            recipe = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
            (Path(upload) / "recipe.yaml").write_text(recipe)
            runtime_env = {"working_dir": upload}
            command = "fmstack pretrain --config recipe.yaml"
            for path in _cluster_relative_paths(cfg):
                say(
                    f"[yellow]note:[/yellow] {escape(path)} is relative: the job resolves it "
                    "inside its uploaded working_dir on the cluster; use an absolute path or URI",
                    err=True,
                )

        with _jobs_api(address) as client:
            job_id = client.submit_job(
                entrypoint=command, runtime_env=runtime_env, submission_id=job_id
            )
            flag = "" if address == DEFAULT_ADDRESS else f" --address {shlex.quote(address)}"
            say(f"submitted job [bold]{job_id}[/bold] to {address}")
            say(f"  follow: fmstack job logs {job_id} --follow{flag}")
            say(f"  status: fmstack job status {job_id}{flag}")
            say(f"  stop:   fmstack job stop {job_id}{flag}")
            if not wait:
                return
            status = _follow(client, job_id)
            message = client.get_job_info(job_id).message or ""

    say(f"job {job_id}: {styled_status(status)} {escape(message)}")
    if str(status) != "SUCCEEDED":
        raise typer.Exit(1)


@app.command()
def status(job_id: JobIdArgument, address: AddressOption = DEFAULT_ADDRESS) -> None:
    """Show a job's status and message."""
    with _jobs_api(address) as client:
        info = client.get_job_info(job_id)
    say(f"{job_id}: {styled_status(info.status)}")
    if info.message:
        say(escape(info.message))


@app.command()
def logs(
    job_id: JobIdArgument,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends")
    ] = False,
    address: AddressOption = DEFAULT_ADDRESS,
) -> None:
    """Print a job's logs (stdout and stderr of its entrypoint)."""
    with _jobs_api(address) as client:
        if follow:
            client.get_job_info(job_id)  # an unknown id fails here with a clear 404
            _follow(client, job_id)
        else:
            typer.echo(client.get_job_logs(job_id), nl=False)


@app.command()
def stop(job_id: JobIdArgument, address: AddressOption = DEFAULT_ADDRESS) -> None:
    """Ask a running job to stop (SIGTERM, then SIGKILL after a grace period)."""
    with _jobs_api(address) as client:
        stopping = client.stop_job(job_id)
        status = client.get_job_status(job_id)
    if stopping:
        say(f"stopping {job_id}")
    else:
        say(f"{job_id} has already ended: {styled_status(status)}")


@app.command("list")
def list_jobs(address: AddressOption = DEFAULT_ADDRESS) -> None:
    """List the cluster's jobs, oldest first."""
    with _jobs_api(address) as client:
        jobs = client.list_jobs()
    table = Table(title=f"Ray jobs on {address}", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("entrypoint", overflow="fold")
    table.add_column("started", no_wrap=True)
    for job in sorted(jobs, key=lambda j: j.start_time or 0):
        started = (
            datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if job.start_time
            else "-"
        )
        table.add_row(
            escape(job.submission_id or job.job_id or "?"),
            styled_status(job.status),
            escape(job.entrypoint or ""),
            started,
        )
    console.print(table)
