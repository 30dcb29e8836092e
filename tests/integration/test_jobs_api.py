"""`fmstack job` against the shared local Ray cluster's Jobs API."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from cluster.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def job(address: str, *args: str) -> Any:
    """Run `fmstack job ARGS --address ADDRESS` in-process."""
    return CliRunner().invoke(app, ["job", *args, "--address", address])


def submit(address: str, job_id: str, code: str, *flags: str) -> Any:
    """Submit `python -c CODE` under `job_id`; extra `flags` go before the `--`."""
    return CliRunner().invoke(
        app,
        ["job", "submit", "--address", address, "--job-id", job_id, *flags]
        + ["--", sys.executable, "-c", code],
    )


def test_submit_wait_then_logs_status_and_list(ray_cluster: str) -> None:
    job_id = f"fmstack-test-{uuid.uuid4().hex[:8]}"
    result = submit(ray_cluster, job_id, "print('fmstack-ok')", "--wait")
    assert result.exit_code == 0, result.output
    assert "fmstack-ok" in result.stdout
    assert f"fmstack job logs {job_id} --follow" in result.stdout

    logs = job(ray_cluster, "logs", job_id)
    assert logs.exit_code == 0, logs.output
    assert "fmstack-ok" in logs.stdout

    status = job(ray_cluster, "status", job_id)
    assert status.exit_code == 0, status.output
    assert f"{job_id}: SUCCEEDED" in status.stdout

    listing = job(ray_cluster, "list")
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.stdout.splitlines() if job_id in line)
    assert "SUCCEEDED" in row

    unknown = job(ray_cluster, "status", "no-such-job")
    assert unknown.exit_code == 1
    assert unknown.stderr.strip().splitlines() == [
        f"error: Job no-such-job does not exist ({ray_cluster})"
    ]


def test_wait_exits_non_zero_when_the_job_fails(ray_cluster: str) -> None:
    job_id = f"fmstack-fail-{uuid.uuid4().hex[:8]}"
    result = submit(ray_cluster, job_id, "import sys; print('going down'); sys.exit(3)", "--wait")
    assert result.exit_code == 1, result.output
    assert "going down" in result.stdout
    assert f"job {job_id}: FAILED" in result.stdout


def test_stop_ends_a_sleeping_job_as_stopped(ray_cluster: str) -> None:
    job_id = f"fmstack-sleep-{uuid.uuid4().hex[:8]}"
    code = "import time; print('sleeping', flush=True); time.sleep(120)"
    assert submit(ray_cluster, job_id, code).exit_code == 0

    def status() -> str:
        result = job(ray_cluster, "status", job_id)
        assert result.exit_code == 0, result.output
        return result.stdout.split(":")[1].split()[0]

    deadline = time.monotonic() + 30
    while status() == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status() == "RUNNING"

    stopped = job(ray_cluster, "stop", job_id)
    assert stopped.exit_code == 0, stopped.output
    assert f"stopping {job_id}" in stopped.stdout
    deadline = time.monotonic() + 30
    while status() != "STOPPED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status() == "STOPPED"


def test_cli_authenticates_from_a_plain_shell(ray_cluster: str) -> None:
    """`ray.init()` turns on token auth and sets RAY_AUTH_MODE=token in its own process only; a
    user's shell lacks it, and the CLI must still find ~/.ray/auth_token."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    command = [sys.executable, "-c", "from cluster.cli import main; main()"]
    result = subprocess.run(
        [*command, "job", "list", "--address", ray_cluster],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, shlex.join(command) + "\n" + result.stdout + result.stderr
    assert "Ray jobs on" in result.stdout
