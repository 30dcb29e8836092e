"""`fmstack serve`: build the Serve config, run it on a Ray cluster, watch it, promote a version
into it in place, and take it down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.dashboard import DEFAULT_ADDRESS, describe
from cluster.recipes import parse_overrides
from cluster.registry import (
    ModelRef,
    PromotionRefused,
    Registry,
    RegistryError,
    default_root,
    is_model_ref,
    parse_ref,
)
from training.storage import is_uri

if TYPE_CHECKING:
    from serving import ServeConfig

app = typer.Typer(
    help="Serve registered models on Ray Serve: build, up, status, promote, down.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Serving config, e.g. configs/serve/sentiment.yaml")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key, e.g. --set http.port=8001")
]
AddressOption = Annotated[
    str,
    typer.Option(
        "--address",
        envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"],
        help="Ray dashboard address of the cluster, e.g. http://head-node:8265",
    ),
]


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _load(config: Path, overrides: list[str] | None) -> ServeConfig:
    from serving import load_serve_config
    from training import RecipeError

    try:
        return absolute_paths(load_serve_config(config, parse_overrides(overrides)))
    except RecipeError as err:
        _fail(str(err), 2)


def absolute_paths(config: ServeConfig) -> ServeConfig:
    """Local paths made absolute: replicas run in other working directories."""
    registry = config.registry or default_root()
    if "://" not in registry:
        registry = str(Path(registry).expanduser().resolve())
    variants = {}
    for name, v in config.variants.items():
        model = v.model
        if not is_model_ref(model) and "://" not in model and Path(model).expanduser().exists():
            model = str(Path(model).expanduser().resolve())
        variants[name] = v.model_copy(update={"model": model})
    return config.model_copy(update={"registry": registry, "variants": variants})


def _check_models(config: ServeConfig) -> None:
    """Fail before deploying when a variant's registry reference does not resolve."""
    registry = Registry(config.registry or default_root())
    for name, v in config.variants.items():
        if is_model_ref(v.model):
            try:
                registry.get(v.model)
            except (RegistryError, ValueError) as err:
                _fail(f"variants.{name}.model: {err}", 2)


def _cluster_notes(cfg: ServeConfig) -> list[str]:
    """What in a serving config only works on this machine, for a config bound elsewhere."""
    notes = []
    if cfg.http.host in ("127.0.0.1", "localhost", "::1"):
        notes.append(
            f"http.host is {cfg.http.host}: in a RayService pod nothing outside the pod reaches "
            "it; add --set http.host=0.0.0.0"
        )
    if cfg.registry and not is_uri(cfg.registry):
        notes.append(
            f"registry is the local path {cfg.registry}: the cluster's pods need it at the same "
            "path (a mounted volume), or use --set registry=s3://..."
        )
    return notes


@app.command()
def build(
    config: ConfigOption,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout")
    ] = None,
    set: SetOption = None,
) -> None:
    """Write the Serve config (`serve deploy` / a RayService's serveConfigV2) for a serving
    config."""
    from serving import serve_config

    cfg = _load(config, set)
    for note in _cluster_notes(cfg):
        err_console.print(f"[yellow]note:[/yellow] {note}")
    text = yaml.safe_dump(serve_config(cfg), sort_keys=False)
    if output is None:
        print(text, end="")
        return
    output.write_text(text)
    console.print(f"wrote {output}")


@app.command()
def up(
    config: ConfigOption,
    address: AddressOption = DEFAULT_ADDRESS,
    set: SetOption = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="CPUs of the local Ray cluster, when one is started")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for RUNNING")] = 600,
) -> None:
    """Deploy the serving config to a Ray cluster (starting a local one when none runs at the
    default address) and wait until every variant serves."""
    from serving import DeployError, pins_of, serve_config

    cfg = _load(config, set)
    _check_models(cfg)
    if address == DEFAULT_ADDRESS and not _reachable(address):
        address = _start_local_ray(num_cpus)
    client = _client(address)
    try:
        details = client.details()
    except (RuntimeError, OSError) as err:
        _fail(describe(err, address))
    running = details.get("applications") or {}
    others = sorted(
        name
        for name, details_of in running.items()
        if name != cfg.name and details_of.get("status") != "DELETING"
    )
    if others:
        # Serve's declarative config holds every application: deploying ours drops theirs.
        _fail(
            f"Serve on {address} also runs {', '.join(others)}, which deploying {cfg.name} "
            "would remove; stop them first (fmstack serve down) or serve on another Ray cluster",
            2,
        )
    http = (details.get("http_options") or {}) if running else {}
    host, port = http.get("host", cfg.http.host), http.get("port", cfg.http.port)
    if (host, port) != (cfg.http.host, cfg.http.port):
        err_console.print(
            f"[yellow]note:[/yellow] Serve already listens on {host}:{port}; http settings "
            "apply when Serve starts (fmstack serve down first to change them)"
        )
    try:
        client.deploy(serve_config(cfg, pins_of(details, cfg)))
        with console.status(f"deploying {cfg.name} ..."):
            client.wait(cfg.name, timeout)
    except DeployError as err:
        _fail(f"application {cfg.name} failed to deploy:\n{err}")
    except (TimeoutError, RuntimeError, OSError) as err:
        _fail(describe(err, address))
    base = _base_url(host, port, cfg.route_prefix)
    console.print(f"[green]serving[/green] {cfg.name} at {base}  (docs: {base}/docs)")
    _print_variants(base)
    key = ' -H "Authorization: Bearer $FMSTACK_API_KEY"' if cfg.auth.enabled else ""
    console.print(
        f"try:  curl -s {base}/v1/classify -H 'Content-Type: application/json'{key} "
        """-d '{"texts": ["A gripping, beautifully acted film."]}'""",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def status(address: AddressOption = DEFAULT_ADDRESS) -> None:
    """Applications, deployments and replicas on the cluster."""
    from serving import summarize

    client = _client(address)
    try:
        rows = summarize(client.details())
    except (RuntimeError, OSError) as err:
        _fail(describe(err, address))
    if not rows:
        console.print(f"no Serve applications on {address}")
        return
    table = Table("application", "deployment", "status", "replicas", "message")
    for r in rows:
        replicas = ", ".join(f"{n} {s.lower()}" for s, n in sorted(r["replicas"].items()))
        table.add_row(
            f"{r['application']} ({r['app_status'].lower()})",
            r["deployment"],
            r["status"],
            replicas,
            escape(r["message"][:200]),
        )
    console.print(table)


@app.command()
def promote(
    variant: Annotated[str, typer.Argument(help="The variant to move, e.g. full")],
    version: Annotated[int, typer.Argument(help="Registry version to serve")],
    require: Annotated[
        list[str] | None,
        typer.Option("--require", help="Metric gate, e.g. accuracy>=0.80 (repeatable)"),
    ] = None,
    application: Annotated[
        str, typer.Option("--app", help="Serve application name (the config's `name`)")
    ] = "fmstack",
    address: AddressOption = DEFAULT_ADDRESS,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the replicas")] = 300,
) -> None:
    """Move the variant's registry alias to VERSION (gated on metrics) and reload its running
    replicas in place: the new model loads beside the old, then takes over. With auth on, the
    replicas are watched with $FMSTACK_API_KEY."""
    from serving import parse_serve_config, running_serve_config, with_pinned_version
    from training import RecipeError, load_model

    client = _client(address)
    try:
        running = running_serve_config(client.details())
    except (RuntimeError, OSError) as err:
        _fail(describe(err, address))
    app_config = next((a for a in running["applications"] if a.get("name") == application), None)
    if app_config is None:
        _fail(f"no application {application} runs on {address} (fmstack serve status)", 2)
    try:
        cfg = parse_serve_config(app_config.get("args") or {}, f"application {application}")
    except RecipeError as err:
        _fail(f"application {application} was not deployed by fmstack: {err}", 2)
    if variant not in cfg.variants:
        _fail(f"unknown variant {variant}; {application} has {', '.join(cfg.variants)}", 2)
    if cfg.auth.enabled and not (os.environ.get("FMSTACK_API_KEY") or "").strip():
        # Checked before anything moves: the promotion is watched through /v1/models.
        _fail(f"{application} has auth on: set FMSTACK_API_KEY to one of its API keys", 2)
    ref = cfg.variants[variant].model
    if not is_model_ref(ref) or parse_ref(ref).alias is None:
        _fail(f"variant {variant} serves {ref}, not a registry alias (models:/name@alias)", 2)
    parsed = parse_ref(ref)
    registry = Registry(cfg.registry or default_root())
    try:
        path = registry.resolve(ModelRef(parsed.name, version=version))  # checksums verified
        load_model(path, verify=False)  # refuses what a replica could not load
        target = registry.promote(parsed.name, version, parsed.alias or "", require or [])
    except PromotionRefused as err:
        _fail(str(err), 3)
    except Exception as err:  # noqa: BLE001 - any reason a version cannot serve is reported
        _fail(f"refused: {parsed.name}@{version} cannot be served: {err}", 3)
    console.print(f"{target.name}@{parsed.alias} -> {target.version}")
    pinned = with_pinned_version(running, application, cfg.deployment_name(variant), version)
    try:
        client.deploy(pinned)
    except (RuntimeError, OSError) as err:
        _fail(describe(err, address))
    http = running.get("http_options") or {}
    base = _base_url(
        http.get("host", "127.0.0.1"), http.get("port", 8000), app_config.get("route_prefix", "/")
    )
    serving_now = _wait_for_version(base, variant, target.name, version, timeout)
    console.print(f"[green]{variant}[/green] now serves {serving_now}")


@app.command()
def ask(
    texts: Annotated[list[str], typer.Argument(help="Texts to classify")],
    model: Annotated[
        str, typer.Option(help="Variant (full, distilled, ...) or auto for the routing policy")
    ] = "auto",
    url: Annotated[
        str, typer.Option(envvar="FMSTACK_URL", help="Base URL of the fmstack application")
    ] = "http://127.0.0.1:8000",
) -> None:
    """Classify texts through the running application; print answers and latency.
    Sends $FMSTACK_API_KEY as the bearer key when set."""
    start = time.perf_counter()
    try:
        answer = _call_api(f"{url.rstrip('/')}/v1/classify", {"texts": texts, "model": model})
    except urllib.error.HTTPError as err:
        _fail(f"HTTP {err.code}: {_error_message(err)}")
    except (urllib.error.URLError, OSError) as err:
        _fail(f"cannot reach {url}: {err}; is it up (fmstack serve up)?")
    latency_ms = (time.perf_counter() - start) * 1000
    table = Table("text", "label", "score", "answered by", box=None)
    for text, p in zip(texts, answer["predictions"], strict=True):
        short = text if len(text) <= 32 else text[:29] + "..."
        table.add_row(
            escape(short), p["label"], f"{p['score']:.3f}", f"{p['variant']} ({p['version']})"
        )
    console.print(table)
    escalated = f", {answer['escalated']} escalated to the fallback" if answer["escalated"] else ""
    console.print(f"model={model}: {latency_ms:.1f} ms for {len(texts)} texts{escalated}")


@app.command()
def down(
    address: AddressOption = DEFAULT_ADDRESS,
    stop_ray: Annotated[
        bool, typer.Option("--stop-ray", help="Also stop Ray on this machine (`ray stop`)")
    ] = False,
) -> None:
    """Shut Serve down with every application on the cluster, fmstack's and any other (and,
    with --stop-ray, stop the local Ray cluster)."""
    if _reachable(address):
        client = _client(address)
        try:
            names = sorted(client.details().get("applications") or {})
            client.delete()
        except (RuntimeError, OSError) as err:
            _fail(describe(err, address))
        deleted = ", ".join(names) or "none were running"
        console.print(f"shut Serve down on {address}; applications: {deleted}")
    else:
        console.print(f"no Ray cluster at {address}")
    if stop_ray:
        subprocess.run([_ray_bin(), "stop"], check=False, capture_output=True)
        console.print("stopped the local Ray cluster")


# ---------------------------------------------------------------- helpers


def _client(address: str) -> Any:
    from serving import ServeClient

    try:
        return ServeClient(address)
    except (RuntimeError, OSError, ValueError) as err:
        _fail(describe(err if str(err) else ConnectionError(), address))


def _reachable(address: str) -> bool:
    """Whether a Ray dashboard answers at `address` (any HTTP answer counts, 401 included)."""
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=3):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _ray_bin() -> str:
    here = Path(os.sys.executable).parent / "ray"  # type: ignore[attr-defined]
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def _start_local_ray(num_cpus: int | None) -> str:
    """`ray start --head` on this machine, in Serve's high-throughput mode; returns its
    dashboard address."""
    import re

    from serving import LOCAL_SERVE_ENV, side_ports_env
    from training.pretrain import venv_first

    cmd = [_ray_bin(), "start", "--head", "--dashboard-host", "127.0.0.1", "--disable-usage-stats"]
    if num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    with console.status("starting a local Ray cluster (ray start --head) ..."):
        moved = side_ports_env(keep_defaults=True)  # another Ray on this machine holds them
        env = {**LOCAL_SERVE_ENV, **moved, **os.environ}  # the caller's settings win
        env["PATH"] = venv_first(env.get("PATH", ""))  # for jobs submitted to it later
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            _fail(f"ray start failed:\n{done.stderr or done.stdout}")
        said = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # no colours
        found = re.search(r"dashboard at\s+(?:http://)?([\w.-]+:\d+)", said)
        address = f"http://{found.group(1)}" if found else DEFAULT_ADDRESS
        deadline = time.monotonic() + 60
        while not _reachable(address) and time.monotonic() < deadline:
            time.sleep(1)
    console.print(
        f"started a local Ray cluster (dashboard {address}); "
        "`fmstack serve down --stop-ray` stops it"
    )
    for name, port in moved.items():
        if name not in os.environ:
            console.print(f"{name}={port}: Serve's default port is taken on this machine")
    return address


def _base_url(host: str, port: int, route_prefix: str) -> str:
    """Where a client on this machine reaches the application."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def _call_api(url: str, body: Any = None, timeout: float = 60) -> Any:
    """GET (or POST `body` as JSON) and decode the JSON answer; sends $FMSTACK_API_KEY."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    key = (os.environ.get("FMSTACK_API_KEY") or "").strip()
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        return json.load(err)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return str(err.reason)


def _print_variants(base: str) -> None:
    try:
        models = _call_api(f"{base}/v1/models")
    except (urllib.error.URLError, OSError, ValueError):
        return
    table = Table("variant", "serves", "task", "parameters")
    for name, info in models.get("variants", {}).items():
        table.add_row(
            name,
            info.get("version", "-"),
            info.get("task", "-"),
            f"{info.get('parameters', 0) / 1e6:.1f}M",
        )
    console.print(table)


def _wait_for_version(base: str, variant: str, name: str, number: int, timeout: float) -> str:
    """Poll /v1/models until the variant serves `name/number`; fail with the replica's error."""
    version = f"{name}/{number}"
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            info = _call_api(f"{base}/v1/models")["variants"][variant]
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                _fail(
                    f"{base}/v1/models refused the key ({err.code}): set FMSTACK_API_KEY to an "
                    "API key of the application to watch the promotion"
                )
            info = {}
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            info = {}
        if info.get("version") == version:
            return version
        if f"version {number}:" in (info.get("last_error") or ""):
            _fail(f"{variant} keeps serving {info.get('version')}: {info['last_error']}")
        time.sleep(1)
    _fail(
        f"{variant} did not report {version} within {timeout:.0f} s (serves {info.get('version')})"
    )
