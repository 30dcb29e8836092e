"""A real Prometheus scrapes a real training run: what the dashboard and alerts see."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request

import pytest

from training import parse_recipe, run_pretraining

pytestmark = pytest.mark.integration

MAX_STEPS = 24


def _query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)["data"]["result"]


def _wait_for(base: str, expr: str, accept, timeout: float) -> list[dict]:
    """Poll an instant query until `accept(result)`; return the last result either way."""
    deadline = time.monotonic() + timeout
    result = _query(base, expr)
    while not accept(result) and time.monotonic() < deadline:
        time.sleep(1)
        result = _query(base, expr)
    return result


def test_training_step_and_loss_reach_a_real_prometheus(ray_cluster, prometheus, recipe_factory):
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    base = prometheus([f"127.0.0.1:{node['MetricsExportPort']}"])
    recipe = recipe_factory(
        train={"max_steps": MAX_STEPS, "log_every": 4, "eval_every": 12},
        checkpoint={"run_name": "scraped", "every_steps": 12},
    )
    started = time.monotonic()
    result = run_pretraining(parse_recipe(recipe))
    assert result.metrics["step"] == MAX_STEPS

    # Ray drops a worker's series once it exits, so ask for the largest value Prometheus
    # scraped (every second) over a range covering the whole run and the wait below.
    def window() -> str:
        return f"{int(time.monotonic() - started) + 120}s"

    steps = _wait_for(
        base,
        f'max by (run, objective) (max_over_time(fmstack_train_step{{run="scraped"}}[{window()}]))',
        lambda r: r and float(r[0]["value"][1]) == MAX_STEPS,
        60,
    )
    assert [(s["metric"], float(s["value"][1])) for s in steps] == [
        ({"run": "scraped", "objective": "causal_lm"}, MAX_STEPS)
    ]

    losses = _query(base, f'fmstack_train_loss{{run="scraped"}}[{window()}]')
    samples = [float(v) for series in losses for _, v in series["values"]]
    assert samples, "no fmstack_train_loss samples for run 'scraped'"
    assert all(math.isfinite(v) and v > 0 for v in samples), samples
    assert {s["metric"]["objective"] for s in losses} == {"causal_lm"}
