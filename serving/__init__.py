"""fmstack serving: the Ray Serve application (FastAPI ingress, one model deployment per
variant, routing policies, auth, metrics) and the Serve config that runs it."""

from serving.config import ServeConfig, VariantConfig, load_serve_config, parse_serve_config
from serving.deploy import (
    HIGH_THROUGHPUT_ENV,
    LOCAL_SERVE_ENV,
    DeployError,
    ServeClient,
    pins_of,
    running_serve_config,
    serve_config,
    side_ports_env,
    summarize,
    with_pinned_version,
)

__all__ = [
    "HIGH_THROUGHPUT_ENV",
    "LOCAL_SERVE_ENV",
    "DeployError",
    "ServeClient",
    "ServeConfig",
    "VariantConfig",
    "load_serve_config",
    "parse_serve_config",
    "pins_of",
    "running_serve_config",
    "serve_config",
    "side_ports_env",
    "summarize",
    "with_pinned_version",
]
