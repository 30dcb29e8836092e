"""One local Ray cluster shared by every integration test, shut down cleanly at the end."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's Ray cluster; yields the dashboard (Jobs API) URL."""
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=True, log_to_driver=True)
    try:
        yield f"http://{ctx.dashboard_url}"
    finally:
        ray.shutdown()
