"""`fmstack k8s`: training as RayJobs and promotion into the RayService on Kubernetes (KubeRay).

The API clients come from the kubeconfig (or the pod's service account) only when a command
needs them; `--dry-run` prints what would be sent without any."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from cluster import kuberay
from cluster.kuberay import DEFAULT_IMAGE, GPU_IMAGE, JobKind, KubeRay, KubeRayError, PodAccess
from cluster.output import console, fail, say, styled_status
from cluster.registry import PromotionRefused, Registry, RegistryError

app = typer.Typer(
    help="Run training as RayJobs and promote models in the RayService (KubeRay on Kubernetes).",
    no_args_is_help=True,
)

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace", "-n", help="Namespace (default: the kubeconfig context's, or the pod's)"
    ),
]
NameArgument = Annotated[str, typer.Argument(help="RayJob name, as `submit` prints it")]


# ---------------------------------------------------------------- helpers


def default_namespace() -> str:
    """The kubeconfig's current context namespace, else the pod's, else `default`."""
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()
        namespace = (active or {}).get("context", {}).get("namespace")
        if namespace:
            return str(namespace)
    except (config.ConfigException, OSError, KeyError, TypeError):
        pass
    if _SERVICE_ACCOUNT_NAMESPACE.is_file():
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    return "default"


def make_clients() -> tuple[Any, Any]:
    """`CustomObjectsApi` and `CoreV1Api` from the kubeconfig, else the in-cluster config."""
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except (config.ConfigException, OSError) as kube_err:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise KubeRayError(
                f"no Kubernetes credentials: {kube_err} (set KUBECONFIG or run `kubectl config "
                "use-context`; inside a pod, use a ServiceAccount)"
            ) from None
    return client.CustomObjectsApi(), client.CoreV1Api()


def _kuberay(namespace: str | None) -> KubeRay:
    try:
        custom, core = make_clients()
    except KubeRayError as err:
        fail(str(err))
    return KubeRay(custom, core, namespace or default_namespace())


def _dump(objects: list[dict[str, Any]]) -> None:
    typer.echo(kuberay.to_yaml(objects), nl=False)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _pod_access(env: list[str], secret_env: list[str], service_account: str | None) -> PodAccess:
    """--env NAME=VALUE and --secret-env NAME=SECRET:KEY options as a PodAccess."""
    plain: dict[str, str] = {}
    for pair in env:
        name, sep, value = pair.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise ValueError(f"--env {pair}: use NAME=VALUE, e.g. AWS_REGION=us-east-1")
        plain[name] = value
    secret: dict[str, tuple[str, str]] = {}
    for pair in secret_env:
        name, _, ref = pair.partition("=")
        secret_name, _, key = ref.partition(":")
        if not _ENV_NAME.fullmatch(name) or not secret_name or not key:
            raise ValueError(
                f"--secret-env {pair}: use NAME=SECRET:KEY, e.g. "
                "AWS_SECRET_ACCESS_KEY=s3-credentials:secret-access-key"
            )
        secret[name] = (secret_name, key)
    return PodAccess(plain, secret, service_account)


def _wait(ops: KubeRay, name: str, poll_s: float = 5.0) -> kuberay.JobStatus:
    """Poll the RayJob until it ends, printing each change of state."""
    seen = ""
    while True:
        status = ops.status(name)
        now = f"{status.deployment_status}/{status.job_status}"
        if now != seen:
            say(f"{name}: {status.deployment_status}, job {styled_status(status.job_status)}")
            seen = now
        if status.finished:
            return status
        time.sleep(poll_s)


# ---------------------------------------------------------------- commands


@app.command()
def submit(
    recipe: Annotated[
        Path, typer.Argument(help="YAML recipe, e.g. configs/pretrain/gpt2-demo.yaml")
    ],
    kind: Annotated[
        str | None,
        typer.Option(help="pretrain, finetune or distill (default: inferred from the recipe)"),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set train.max_steps=50"),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="RayJob name (default: the recipe's run name)")
    ] = None,
    namespace: NamespaceOption = None,
    image: Annotated[
        str | None,
        typer.Option(
            help=f"Image of the Ray pods [default: {DEFAULT_IMAGE}, or {GPU_IMAGE} for GPUs]"
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Ray Train workers (default: scaling.num_workers)")
    ] = None,
    claim: Annotated[
        str,
        typer.Option(
            help="PersistentVolumeClaim at /data (the chart's: <fullname>-data, e.g. "
            "fmstack-data); '' for none, with runs and registry on object storage"
        ),
    ] = kuberay.DATA_CLAIM,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="NAME=VALUE for the Ray pods, e.g. FMSTACK_REGISTRY=s3://bucket/registry or "
            "AWS_REGION=us-east-1 (repeatable)",
        ),
    ] = None,
    secret_env: Annotated[
        list[str] | None,
        typer.Option(
            "--secret-env",
            help="NAME=SECRET:KEY, a variable read from a Secret's key, e.g. "
            "AWS_ACCESS_KEY_ID=s3-credentials:access-key-id (repeatable)",
        ),
    ] = None,
    service_account: Annotated[
        str | None,
        typer.Option(help="ServiceAccount of the Ray pods (e.g. for IRSA or Workload Identity)"),
    ] = None,
    ray_auth: Annotated[
        str,
        typer.Option(help="Ray's token auth for the job's cluster: token or disabled"),
    ] = "token",
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the job ends; exit 1 if it fails")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the ConfigMap and RayJob; create nothing")
    ] = False,
) -> None:
    """Run a recipe as a RayJob (validated here first).

    The recipe goes into a ConfigMap; KubeRay starts a Ray cluster for the job and removes it
    when the job ends. Runs and registered models land on the shared volume at /data."""
    from training import RecipeError

    if kind is not None and kind not in kuberay.JOB_KINDS:
        fail(f"--kind {kind}: use one of {', '.join(kuberay.JOB_KINDS)}", 2)
    if not recipe.is_file():
        fail(f"recipe {recipe} does not exist", 2)
    if ray_auth not in ("token", "disabled"):
        fail(f"--ray-auth {ray_auth}: use token or disabled", 2)
    job_kind: JobKind | None = kind  # type: ignore[assignment]  # checked above
    try:
        access = _pod_access(env or [], secret_env or [], service_account)
        manifests = kuberay.rayjob_manifest(
            recipe.read_text(),
            recipe_file=recipe.name,
            name=name,
            kind=job_kind,
            overrides=overrides or [],
            image=image,
            namespace=namespace,
            workers=workers,
            data_claim=claim or None,
            access=access,
            ray_auth=ray_auth,  # type: ignore[arg-type]  # checked above
        )
    except (RecipeError, ValueError) as err:
        fail(str(err), 2)
    if dry_run:
        _dump(list(manifests))
        return
    ops = _kuberay(namespace)
    job = manifests.rayjob["metadata"]["name"]
    try:
        ops.submit(manifests)
        flag = f" -n {ops.namespace}"
        say(f"submitted RayJob [bold]{job}[/bold] in namespace {ops.namespace}")
        say(f"  entrypoint: {escape(manifests.rayjob['spec']['entrypoint'])}")
        say(f"  status: fmstack k8s status {job}{flag}")
        say(f"  logs:   fmstack k8s logs {job} --follow{flag}")
        say(f"  delete: fmstack k8s delete {job}{flag}")
        if not wait:
            return
        status = _wait(ops, job)
    except KubeRayError as err:
        fail(str(err))
    if status.message:
        say(escape(status.message))
    if not status.succeeded:
        raise typer.Exit(1)


@app.command()
def status(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """A RayJob's job status, deployment status, dashboard, times and message."""
    ops = _kuberay(namespace)
    try:
        s = ops.status(name)
    except KubeRayError as err:
        fail(str(err))
    say(f"{name}: job {styled_status(s.job_status)}, deployment {s.deployment_status}")
    for label, value in (
        ("cluster", s.ray_cluster),
        ("dashboard", s.dashboard_url),
        ("started", s.start_time),
        ("ended", s.end_time),
    ):
        if value:
            say(f"  {label + ':':11}{escape(value)}")
    if s.message:
        say(f"  message:   {escape(s.message)}")


@app.command()
def logs(
    name: NameArgument,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming until the pod ends")
    ] = False,
    namespace: NamespaceOption = None,
) -> None:
    """Print a RayJob's log (its submitter pod's, else its head pod's)."""
    ops = _kuberay(namespace)
    try:
        for chunk in ops.logs(name, follow=follow):
            typer.echo(chunk, nl=False)
    except KubeRayError as err:
        fail(str(err))
    except KeyboardInterrupt:
        say(f"stopped following; {name} keeps running", err=True)
        raise typer.Exit(130) from None


@app.command()
def delete(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """Delete a RayJob (KubeRay stops its cluster) and its recipe ConfigMap."""
    ops = _kuberay(namespace)
    try:
        ops.delete(name)
    except KubeRayError as err:
        fail(str(err))
    say(f"deleted RayJob {name} in namespace {ops.namespace}")


@app.command("list")
def list_jobs(namespace: NamespaceOption = None) -> None:
    """fmstack's RayJobs in the namespace, oldest first."""
    ops = _kuberay(namespace)
    try:
        jobs = ops.list_jobs()
    except KubeRayError as err:
        fail(str(err))
    if not jobs:
        say(f"no fmstack RayJobs in namespace {ops.namespace}")
        return
    table = Table(title=f"RayJobs in {ops.namespace}", title_justify="left")
    for column in ("name", "job", "deployment", "started", "entrypoint"):
        table.add_column(column, overflow="fold" if column == "entrypoint" else "ellipsis")
    for j in jobs:
        table.add_row(
            j.name,
            styled_status(j.job_status),
            j.deployment_status,
            j.start_time or "-",
            escape(j.entrypoint),
        )
    console.print(table)


@app.command()
def promote(
    service: Annotated[str, typer.Argument(help="RayService name, e.g. fmstack")],
    variant: Annotated[str, typer.Argument(help="The variant to move, e.g. full")],
    version: Annotated[int, typer.Argument(min=1, help="Registry version to serve")],
    require: Annotated[
        list[str] | None,
        typer.Option("--require", help="Metric gate, e.g. accuracy>=0.80 (repeatable)"),
    ] = None,
    application: Annotated[
        str, typer.Option("--app", help="Serve application name (the serving config's `name`)")
    ] = "fmstack",
    registry: Annotated[
        str | None,
        typer.Option(
            envvar="FMSTACK_REGISTRY",
            help="Registry root as seen from here (default: the serve config's; needed when that "
            "is a path on the cluster's volume)",
        ),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option("--from-file", help="With --dry-run: read the RayService from this file"),
    ] = None,
    namespace: NamespaceOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the gates and print the patch; change nothing")
    ] = False,
) -> None:
    """Serve registry VERSION in a RayService's variant, with no downtime.

    Moves the variant's registry alias to VERSION (gated on --require) and patches the
    RayService's serveConfigV2; Serve reloads the running replicas in place."""
    if from_file is not None and not dry_run:
        fail("--from-file only applies with --dry-run", 2)
    root = Registry(registry) if registry else None
    try:
        if from_file is not None:
            ops = KubeRay(None, None, namespace or "default")
            rayservice = _rayservice_from(from_file, service)
        else:
            ops = _kuberay(namespace)
            rayservice = ops.get_service(service) if dry_run else {}
        if dry_run:
            plan, _ = ops.plan_promotion(
                rayservice,
                variant,
                version,
                require=require or [],
                registry=root,
                application=application,
            )
            say(f"# {plan.model}@{plan.alias}: {plan.previous} -> {plan.version}", err=True)
            _dump([plan.patch])
            return
        done = ops.promote(
            service,
            variant,
            version,
            require=require or [],
            registry=root,
            application=application,
        )
    except PromotionRefused as err:
        fail(str(err), 3)
    except (KubeRayError, RegistryError, ValueError) as err:
        fail(str(err))
    say(f"{done.model}@{done.alias}: {done.previous} -> {done.version}")
    say(
        f"patched RayService {service}: [green]{variant}[/green] reloads {done.model} version "
        f"{version} in place (kubectl get rayservice {service} -n {ops.namespace} -w)"
    )


def _rayservice_from(path: Path, name: str) -> dict[str, Any]:
    """The RayService called `name` from a YAML file (one or more documents)."""
    if not path.is_file():
        raise KubeRayError(f"{path} does not exist")
    for doc in yaml.safe_load_all(path.read_text()):
        is_service = isinstance(doc, dict) and doc.get("kind") == "RayService"
        if is_service and doc.get("metadata", {}).get("name") == name:
            return doc
    raise KubeRayError(f"{path} has no RayService {name}")
