"""KubeRay on Kubernetes: manifests for RayJobs, RayClusters and the RayService, and the
operations `fmstack k8s` runs with the `kubernetes` client.

Builders are pure functions returning plain dicts, so they are tested offline and printed by
`--dry-run`. `KubeRay` does the API calls through injected clients; every `ApiException` becomes
a typed error whose message names the object and what to do, never a logged `None`.

Promotion changes only a model deployment's `user_config` inside the RayService's
`serveConfigV2`: KubeRay applies a Serve-config-only change to the running cluster, and Serve
reconfigures the replicas in place (the new version loads beside the old; no request fails).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import typer
import yaml

from cluster.handover import check_gates
from cluster.registry import (
    REGISTRY_ENV,
    ModelRef,
    PromotionRefused,
    Registry,
    default_root,
    is_model_ref,
    parse_ref,
    parse_requirement,
)
from training.storage import is_uri

__all__ = [
    "API_KEYS_SECRET",
    "DATA_CLAIM",
    "DEFAULT_IMAGE",
    "GPU_IMAGE",
    "RAY_GROUP",
    "RAY_VERSION",
    "RAYJOB",
    "RAYSERVICE",
    "AlreadyExists",
    "Forbidden",
    "JobKind",
    "JobManifests",
    "JobStatus",
    "KubeRay",
    "KubeRayError",
    "KubernetesError",
    "NotFound",
    "PodAccess",
    "PodResources",
    "Promotion",
    "RayAuth",
    "ServiceConfigError",
    "WorkerGroup",
    "infer_kind",
    "job_name",
    "labels",
    "raycluster_manifest",
    "rayjob_manifest",
    "rayservice_manifest",
    "to_yaml",
    "validate_recipe",
    "with_promoted_version",
]

# ---------------------------------------------------------------- constants


@dataclasses.dataclass(frozen=True)
class Resource:
    """A custom resource's API coordinates."""

    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


RAY_GROUP = "ray.io"
RAYJOB = Resource("RayJob", RAY_GROUP, "v1", "rayjobs")
RAYSERVICE = Resource("RayService", RAY_GROUP, "v1", "rayservices")
RAYCLUSTER = Resource("RayCluster", RAY_GROUP, "v1", "rayclusters")

RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = "ghcr.io/fmstack/fmstack:0.1.0"
GPU_IMAGE = "ghcr.io/fmstack/fmstack:0.1.0-cu128"
"""The same Dockerfile built on rayproject/ray:2.60.0-py311-cu128."""
DATA_CLAIM = "fmstack-data"
"""The PersistentVolumeClaim mounted at /data (registry, runs)."""
API_KEYS_SECRET = "fmstack-api-keys"
"""The Secret with keys `api-keys` and `admin-keys` (comma-separated bearer keys)."""

DATA_DIR = "/data"
REGISTRY_DIR = "/data/registry"
RUNS_DIR = "/data/runs"
RECIPES_DIR = "/etc/fmstack/recipes"
PACKAGED_CACHE = "/opt/fmstack/cache"  # data and weights packaged into the image
CACHE_DIR = "/tmp/.cache"  # the root filesystem is read-only; caches live in the /tmp emptyDir
TMP_SIZE = "20Gi"

PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}
SERVE_PORT = 8000
METRICS_PORT = PORTS["metrics"]
RUN_AS_USER, RUN_AS_GROUP = 1000, 100  # the `ray` user of rayproject/ray images

# KubeRay's names are built from the RayJob's (e.g. `<name>-xxxxx-head-svc`) and must stay
# within 63 characters.
MAX_NAME = 47
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

JobKind = Literal["pretrain", "finetune", "distill"]
JOB_KINDS: tuple[JobKind, ...] = ("pretrain", "finetune", "distill")

# ---------------------------------------------------------------- errors


class KubeRayError(Exception):
    """Something `fmstack k8s` cannot do; the message says why and what to do."""


class KubernetesError(KubeRayError):
    """The Kubernetes API refused or failed a request about one object."""

    def __init__(
        self, message: str, *, kind: str, namespace: str, name: str, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind, self.namespace, self.name, self.status = kind, namespace, name, status


class NotFound(KubernetesError):
    """The object does not exist (HTTP 404)."""


class AlreadyExists(KubernetesError):
    """An object of that name exists already (HTTP 409)."""


class Forbidden(KubernetesError):
    """RBAC does not allow the request (HTTP 403)."""


class ServiceConfigError(KubeRayError):
    """The RayService's Serve config does not allow what was asked (unknown variant, ...)."""


# ---------------------------------------------------------------- labels and pods


def labels(instance: str, component: str) -> dict[str, str]:
    """The labels every fmstack object carries (selectors use these, never a version)."""
    return {
        "app.kubernetes.io/name": "fmstack",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "fmstack",
    }


@dataclasses.dataclass(frozen=True)
class PodResources:
    """What one Ray pod gets; requests equal limits, so Ray sees exactly what it may use."""

    cpus: float = 2
    memory: str = "8Gi"
    gpus: int = 0

    def spec(self) -> dict[str, dict[str, str | int]]:
        cpu = str(int(self.cpus)) if float(self.cpus).is_integer() else f"{int(self.cpus * 1000)}m"
        amounts: dict[str, str | int] = {"cpu": cpu, "memory": self.memory}
        if self.gpus:
            amounts["nvidia.com/gpu"] = self.gpus
        return {"requests": dict(amounts), "limits": dict(amounts)}


@dataclasses.dataclass(frozen=True)
class WorkerGroup:
    """A Ray worker group; the autoscaler moves replicas between min and max."""

    name: str
    resources: PodResources
    min_replicas: int
    max_replicas: int
    replicas: int | None = None


HEAD = PodResources(cpus=2, memory="8Gi")
SUBMITTER = PodResources(cpus=0.5, memory="1Gi")
AUTOSCALER = PodResources(cpus=0.5, memory="512Mi")


RayAuth = Literal["token", "disabled"]


@dataclasses.dataclass(frozen=True)
class PodAccess:
    """What a job's Ray pods reach beyond the shared volume: object storage, with its settings
    as environment variables and its credentials only from Secrets, under a service account
    (for IRSA or Workload Identity)."""

    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    secret_env: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    """Variable -> (Secret, key)."""
    service_account: str | None = None

    def env_vars(self) -> list[dict[str, Any]]:
        env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in self.env.items()]
        for var, (secret, key) in self.secret_env.items():
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        return env

    def registry(self) -> str | None:
        return self.env.get(REGISTRY_ENV)


def _tmp_volume() -> dict[str, Any]:
    return {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "fsGroup": RUN_AS_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
    }


def _ray_pod(
    *,
    container: str,
    image: str,
    resources: PodResources,
    pod_labels: dict[str, str],
    ports: Mapping[str, int],
    env: list[dict[str, Any]],
    data_claim: str | None,
    recipes: str | None = None,
    service_account_token: bool = False,
    service_account: str | None = None,
) -> dict[str, Any]:
    """A Ray head or worker pod template: non-root, read-only root, writable /tmp (KubeRay
    adds the /dev/shm volume for the object store)."""
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [_tmp_volume()]
    if data_claim:
        mounts.append({"name": "data", "mountPath": DATA_DIR})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": data_claim}})
    if recipes:
        mounts.append({"name": "recipes", "mountPath": RECIPES_DIR, "readOnly": True})
        volumes.append({"name": "recipes", "configMap": {"name": recipes}})
    spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [
            {
                "name": container,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": n, "containerPort": p} for n, p in ports.items()],
                "env": copy.deepcopy(env),
                "resources": resources.spec(),
                "securityContext": _container_security(),
                "volumeMounts": mounts,
                "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
            }
        ],
        "volumes": volumes,
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    if not service_account_token:
        spec["automountServiceAccountToken"] = False
    if resources.gpus:
        spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {"metadata": {"labels": pod_labels}, "spec": spec}


def _env(
    data_claim: str | None,
    api_keys_secret: str | None = None,
    serve: bool = False,
    access: PodAccess | None = None,
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "FMSTACK_CACHE", "value": PACKAGED_CACHE}]
    if data_claim and not (access and access.registry()):
        env.append({"name": REGISTRY_ENV, "value": REGISTRY_DIR})
    env += [  # the root filesystem is read-only: caches go to the /tmp emptyDir
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_DIR}/triton"},
        {"name": "MPLCONFIGDIR", "value": f"{CACHE_DIR}/matplotlib"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]
    if api_keys_secret:
        for var, key in (("FMSTACK_API_KEYS", "api-keys"), ("FMSTACK_ADMIN_KEYS", "admin-keys")):
            ref = {"name": api_keys_secret, "key": key, "optional": key == "admin-keys"}
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    if serve:  # Serve's high-throughput mode: HAProxy on the Serve port, direct gRPC inside
        from serving import HIGH_THROUGHPUT_ENV

        env += [{"name": k, "value": v} for k, v in HIGH_THROUGHPUT_ENV.items()]
    if access:
        env += access.env_vars()
    return env


def _cluster_spec(
    instance: str,
    *,
    image: str,
    head: PodResources,
    workers: Sequence[WorkerGroup],
    data_claim: str | None,
    autoscaling: bool,
    recipes: str | None = None,
    api_keys_secret: str | None = None,
    serve: bool = False,
    access: PodAccess | None = None,
    ray_auth: RayAuth = "token",
) -> dict[str, Any]:
    """A RayCluster spec (also the rayClusterSpec of a RayJob and rayClusterConfig of a
    RayService). The dashboard, GCS and client ports stay on the cluster-internal head Service;
    with `ray_auth` token, KubeRay also puts them behind a token it keeps in a Secret named after
    the cluster (key `auth_token`)."""
    env = _env(data_claim, api_keys_secret, serve, access)
    service_account = access.service_account if access else None
    head_ports = dict(PORTS) | ({"serve": SERVE_PORT} if serve else {})
    head_params = {"dashboard-host": "0.0.0.0", "metrics-export-port": str(METRICS_PORT)}
    if serve:  # replicas go to the workers, which the autoscaler adds and removes
        head_params["num-cpus"] = "0"
    spec: dict[str, Any] = {"rayVersion": RAY_VERSION, "authOptions": {"mode": ray_auth}}
    if autoscaling:
        spec["enableInTreeAutoscaling"] = True
        spec["autoscalerOptions"] = {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": 60,
            "resources": AUTOSCALER.spec(),
            "securityContext": _container_security(),
        }
    spec["headGroupSpec"] = {
        "serviceType": "ClusterIP",
        "rayStartParams": head_params,
        "template": _ray_pod(
            container="ray-head",
            image=image,
            resources=head,
            pod_labels=labels(instance, "head"),
            ports=head_ports,
            env=env,
            data_claim=data_claim,
            recipes=recipes,
            service_account_token=autoscaling,  # the autoscaler sidecar talks to the API
            service_account=service_account,
        ),
    }
    spec["workerGroupSpecs"] = [
        {
            "groupName": group.name,
            "replicas": group.min_replicas if group.replicas is None else group.replicas,
            "minReplicas": group.min_replicas,
            "maxReplicas": group.max_replicas,
            "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
            "template": _ray_pod(
                container="ray-worker",
                image=image,
                resources=group.resources,
                pod_labels=labels(instance, "worker"),
                ports={"metrics": METRICS_PORT} | ({"serve": SERVE_PORT} if serve else {}),
                env=env,
                data_claim=data_claim,
                service_account=service_account,
            ),
        }
        for group in workers
    ]
    return spec


def raycluster_manifest(
    name: str,
    *,
    image: str = DEFAULT_IMAGE,
    namespace: str | None = None,
    head: PodResources = HEAD,
    workers: Sequence[WorkerGroup] = (),
    data_claim: str | None = DATA_CLAIM,
    autoscaling: bool = True,
    ray_auth: RayAuth = "token",
) -> dict[str, Any]:
    """A standalone RayCluster (for `fmstack job submit` or interactive work)."""
    return {
        "apiVersion": RAYCLUSTER.api_version,
        "kind": RAYCLUSTER.kind,
        "metadata": _metadata(name, namespace, "cluster"),
        "spec": _cluster_spec(
            name,
            image=image,
            head=head,
            workers=workers,
            data_claim=data_claim,
            autoscaling=autoscaling,
            ray_auth=ray_auth,
        ),
    }


def _metadata(
    name: str, namespace: str | None, component: str, instance: str | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = labels(instance or name, component)
    return meta


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (recipes, serveConfigV2) as literal blocks, readable as written;
    no anchors or aliases, which kubectl users do not expect."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: Sequence[Mapping[str, Any]]) -> str:
    """Kubernetes objects as a multi-document YAML stream, in their keys' order."""
    return yaml.dump_all([dict(o) for o in objects], Dumper=_Dumper, sort_keys=False, width=1000)


# ---------------------------------------------------------------- RayJobs


class JobManifests(NamedTuple):
    """What one training job needs: the recipe's ConfigMap (created first) and the RayJob."""

    config_map: dict[str, Any]
    rayjob: dict[str, Any]


def infer_kind(recipe: Mapping[str, Any]) -> JobKind:
    """A `distillation` section means distill, `task: classification` finetune, else pretrain."""
    if "distillation" in recipe:
        return "distill"
    if recipe.get("task") == "classification":
        return "finetune"
    return "pretrain"


def validate_recipe(recipe: dict[str, Any], kind: JobKind, source: str) -> Any:
    """The typed config `fmstack <kind>` would run; raises `RecipeError` naming bad keys."""
    from training import DistillConfig, FinetuneConfig, PretrainConfig, RecipeError, parse_recipe

    if kind not in JOB_KINDS:
        raise RecipeError(f"unknown job kind {kind!r}: use one of {', '.join(JOB_KINDS)}")
    cfg: Any
    if kind == "pretrain" or (kind == "distill" and recipe.get("objective") == "causal_lm"):
        if kind == "distill" and "distillation" not in recipe:
            raise RecipeError(f"{source}: a distill recipe needs a distillation section")
        cfg = parse_recipe(recipe, source, PretrainConfig)
    elif kind == "finetune":
        cfg = parse_recipe(recipe, source, FinetuneConfig)
    else:
        cfg = parse_recipe(recipe, source, DistillConfig)
    check_gates(cfg)
    return cfg


def job_name(recipe: Mapping[str, Any], source: str) -> str:
    """A RayJob name from the recipe's run name (else its file name), as DNS allows."""
    run = (recipe.get("checkpoint") or {}).get("run_name") or Path(source).stem
    name = re.sub(r"[^a-z0-9-]+", "-", str(run).lower()).strip("-")[:MAX_NAME].strip("-")
    return name or "fmstack-job"


def check_name(name: str) -> str:
    """`name` if Kubernetes and KubeRay accept it as a RayJob or RayService name."""
    if len(name) > MAX_NAME or not _DNS_LABEL.fullmatch(name):
        raise ValueError(
            f"bad name {name!r}: use at most {MAX_NAME} lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def _recipe_with(recipe_text: str, overrides: Sequence[str], source: str) -> dict[str, Any]:
    """The recipe mapping with `--set KEY=VALUE` overrides applied, as `fmstack <kind>` will."""
    from cluster.recipes import parse_overrides
    from training import RecipeError, recipe_from_text

    try:
        parsed = parse_overrides(list(overrides))
    except typer.BadParameter as err:
        raise RecipeError(err.message) from None
    return recipe_from_text(recipe_text, source, parsed)


def _storage_override(recipe: Mapping[str, Any], overrides: Sequence[str]) -> list[str]:
    """Runs go to the shared volume: a relative checkpoint.storage_path would land in the head
    pod's ephemeral working directory and vanish with the cluster."""
    if any(o.partition("=")[0].strip() == "checkpoint.storage_path" for o in overrides):
        return []
    path = str((recipe.get("checkpoint") or {}).get("storage_path") or "runs")
    if is_uri(path) or path.startswith("/"):
        return []
    return [f"checkpoint.storage_path={RUNS_DIR}"]


def _check_object_storage(cfg: Any, access: PodAccess | None) -> None:
    """Without the shared volume, a job's runs and registered models must go to object storage:
    the pods' own disks vanish with the cluster."""
    runs = str(cfg.checkpoint.storage_path)
    if not is_uri(runs):
        raise ValueError(
            f"checkpoint.storage_path {runs!r} is inside the job's pods and goes away with them; "
            "without --claim, set an object-storage path (--set "
            "checkpoint.storage_path=s3://bucket/runs) or mount a volume with --claim"
        )
    registry = getattr(cfg, "registry", None)
    if registry is None:
        return
    root = registry.root or (access.registry() if access else None)
    if not root or not is_uri(root):
        raise ValueError(
            f"the registry {root or '(default)'} is inside the job's pods and goes away with "
            f"them; without --claim, pass --env {REGISTRY_ENV}=s3://bucket/registry (or set "
            "registry.root) or mount a volume with --claim"
        )


def rayjob_manifest(
    recipe_text: str,
    *,
    recipe_file: str = "recipe.yaml",
    name: str | None = None,
    kind: JobKind | None = None,
    overrides: Sequence[str] = (),
    image: str | None = None,
    namespace: str | None = None,
    workers: int | None = None,
    worker_memory: str = "8Gi",
    head: PodResources = HEAD,
    data_claim: str | None = DATA_CLAIM,
    ttl_seconds_after_finished: int = 3600,
    backoff_limit: int = 0,
    access: PodAccess | None = None,
    ray_auth: RayAuth = "token",
) -> JobManifests:
    """The ConfigMap holding a recipe and the RayJob that runs `fmstack <kind>` on it.

    The recipe is validated first, with its overrides, by the config class of its kind (a
    `RecipeError` names the bad key), so nothing is created for a job that could not start.
    The worker group gets one pod per Ray Train worker, sized from the recipe's `scaling`
    section; `workers` overrides `scaling.num_workers`. GPU recipes (`scaling.use_gpu`) get the
    CUDA image unless `image` is given. The cluster goes away when the job ends, so without a
    `data_claim` the runs and the registry must be on object storage (`access` says how to
    reach it); a job that would leave its results in the pods is refused.
    """
    overrides = list(overrides)
    if workers is not None:
        overrides.append(f"scaling.num_workers={workers}")
    recipe = _recipe_with(recipe_text, overrides, recipe_file)
    kind = kind or infer_kind(recipe)
    cfg = validate_recipe(recipe, kind, recipe_file)
    name = check_name(name or job_name(recipe, recipe_file))
    if data_claim:
        overrides += _storage_override(recipe, overrides)
    else:
        _check_object_storage(cfg, access)
    command = ["fmstack", kind, "--config", f"{RECIPES_DIR}/{recipe_file}"]
    for pair in overrides:
        command += ["--set", pair]
    scaling = cfg.scaling
    image = image or (GPU_IMAGE if scaling.use_gpu else DEFAULT_IMAGE)
    group = WorkerGroup(
        name="gpu" if scaling.use_gpu else "cpu",
        resources=PodResources(
            cpus=max(1, math.ceil(scaling.cpus_per_worker)),
            memory=worker_memory,
            gpus=1 if scaling.use_gpu else 0,
        ),
        min_replicas=scaling.num_workers,
        max_replicas=scaling.num_workers,
    )
    recipes = f"{name}-recipe"
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(recipes, namespace, "job", instance=name),
        "data": {recipe_file: recipe_text},
    }
    submitter = {
        "metadata": {"labels": labels(name, "job")},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": _pod_security(),
            "containers": [
                {
                    "name": "submitter",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "resources": SUBMITTER.spec(),
                    "securityContext": _container_security(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [_tmp_volume()],
        },
    }
    rayjob = {
        "apiVersion": RAYJOB.api_version,
        "kind": RAYJOB.kind,
        "metadata": _metadata(name, namespace, "job"),
        "spec": {
            "entrypoint": shlex.join(command),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            "backoffLimit": backoff_limit,
            "submitterPodTemplate": submitter,
            "rayClusterSpec": _cluster_spec(
                name,
                image=image,
                head=head,
                workers=[group],
                data_claim=data_claim,
                autoscaling=False,
                recipes=recipes,
                access=access,
                ray_auth=ray_auth,
            ),
        },
    }
    return JobManifests(config_map, rayjob)


# ---------------------------------------------------------------- the RayService


def rayservice_manifest(
    name: str,
    serve_config: Mapping[str, Any],
    *,
    image: str = DEFAULT_IMAGE,
    namespace: str | None = None,
    head: PodResources = HEAD,
    workers: Sequence[WorkerGroup] = (
        WorkerGroup("cpu", PodResources(cpus=4, memory="8Gi"), min_replicas=1, max_replicas=4),
    ),
    data_claim: str | None = DATA_CLAIM,
    api_keys_secret: str | None = API_KEYS_SECRET,
    ray_auth: RayAuth = "token",
) -> dict[str, Any]:
    """A RayService that runs `serve_config` (what `fmstack serve build` prints) as its
    serveConfigV2, on an autoscaling cluster whose pods read the API keys from a Secret."""
    return {
        "apiVersion": RAYSERVICE.api_version,
        "kind": RAYSERVICE.kind,
        "metadata": _metadata(name, namespace, "serve"),
        "spec": {
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": yaml.safe_dump(dict(serve_config), sort_keys=False),
            "rayClusterConfig": _cluster_spec(
                name,
                image=image,
                head=head,
                workers=workers,
                data_claim=data_claim,
                autoscaling=True,
                api_keys_secret=api_keys_secret,
                serve=True,
                ray_auth=ray_auth,
            ),
        },
    }


def _serve_application(
    rayservice: Mapping[str, Any], application: str
) -> tuple[dict[str, Any], Any]:
    """The RayService's Serve config and its application's typed serving config."""
    from serving import parse_serve_config
    from training import RecipeError

    what = f"RayService {rayservice.get('metadata', {}).get('name')}"
    text = (rayservice.get("spec") or {}).get("serveConfigV2")
    if not text:
        raise ServiceConfigError(f"{what} has no serveConfigV2")
    try:
        serve_cfg = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ServiceConfigError(f"{what}: serveConfigV2 is not valid YAML: {err}") from None
    apps = [a for a in serve_cfg.get("applications") or [] if a.get("name") == application]
    if not apps:
        have = ", ".join(a.get("name", "?") for a in serve_cfg.get("applications") or [])
        raise ServiceConfigError(
            f"{what} has no application {application} (has: {have or 'none'}); pass --app"
        )
    try:
        cfg = parse_serve_config(apps[0].get("args") or {}, f"{what} application {application}")
    except RecipeError as err:
        raise ServiceConfigError(
            f"{what}: application {application} is not fmstack's: {err}"
        ) from None
    return serve_cfg, cfg


def with_promoted_version(
    rayservice: Mapping[str, Any], variant: str, version: int, application: str = "fmstack"
) -> dict[str, Any]:
    """A merge patch for the RayService that pins `variant` to registry `version`.

    Only that deployment's `user_config.version` changes; the import path, the code and every
    other deployment stay as they are, so KubeRay updates the running cluster and Serve
    reconfigures the replicas in place instead of replacing them."""
    from serving import with_pinned_version

    serve_cfg, cfg = _serve_application(rayservice, application)
    if variant not in cfg.variants:
        raise ServiceConfigError(
            f"unknown variant {variant}; application {application} has {', '.join(cfg.variants)}"
        )
    pinned = with_pinned_version(serve_cfg, application, cfg.deployment_name(variant), version)
    return {"spec": {"serveConfigV2": yaml.safe_dump(pinned, sort_keys=False)}}


# ---------------------------------------------------------------- operations


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """What KubeRay reports about a RayJob."""

    name: str
    job_status: str
    deployment_status: str
    dashboard_url: str
    start_time: str
    end_time: str
    message: str
    ray_cluster: str
    entrypoint: str

    @property
    def finished(self) -> bool:
        return self.deployment_status in ("Complete", "Failed", "ValidationFailed") or (
            self.job_status in ("SUCCEEDED", "FAILED", "STOPPED")
        )

    @property
    def succeeded(self) -> bool:
        return self.job_status == "SUCCEEDED"

    @classmethod
    def of(cls, rayjob: Mapping[str, Any]) -> JobStatus:
        status = rayjob.get("status") or {}
        return cls(
            name=rayjob.get("metadata", {}).get("name", ""),
            job_status=status.get("jobStatus") or "PENDING",
            deployment_status=status.get("jobDeploymentStatus") or "New",
            dashboard_url=status.get("dashboardURL") or "",
            start_time=status.get("startTime") or "",
            end_time=status.get("endTime") or "",
            message=status.get("message") or "",
            ray_cluster=status.get("rayClusterName") or "",
            entrypoint=(rayjob.get("spec") or {}).get("entrypoint", ""),
        )


@dataclasses.dataclass(frozen=True)
class Promotion:
    """A promotion: the model whose alias moves, the versions, and the RayService patch."""

    service: str
    variant: str
    model: str
    alias: str
    previous: int | None
    version: int
    patch: dict[str, Any]


T = TypeVar("T")


class KubeRay:
    """fmstack's KubeRay operations in one namespace, over injected API clients
    (`kubernetes.client.CustomObjectsApi` and `CoreV1Api`)."""

    def __init__(self, custom: Any, core: Any, namespace: str) -> None:
        self.custom, self.core, self.namespace = custom, core, namespace

    # ------------------------------------------------------------ RayJobs

    def submit(self, manifests: JobManifests) -> dict[str, Any]:
        """Create the recipe's ConfigMap, then the RayJob; a ConfigMap left by a failed RayJob
        creation is removed again."""
        config_map = _in(manifests.config_map, self.namespace)
        rayjob = _in(manifests.rayjob, self.namespace)
        name = rayjob["metadata"]["name"]
        self._call(
            "create",
            "ConfigMap",
            config_map["metadata"]["name"],
            lambda: self.core.create_namespaced_config_map(self.namespace, config_map),
        )
        try:
            return self._call(
                "create",
                RAYJOB,
                name,
                lambda: self.custom.create_namespaced_custom_object(
                    RAYJOB.group, RAYJOB.version, self.namespace, RAYJOB.plural, rayjob
                ),
            )
        except KubernetesError:
            self._delete_config_map(config_map["metadata"]["name"])
            raise

    def get_job(self, name: str) -> dict[str, Any]:
        return self._get(RAYJOB, name)

    def status(self, name: str) -> JobStatus:
        return JobStatus.of(self.get_job(name))

    def list_jobs(self) -> list[JobStatus]:
        """fmstack's RayJobs in the namespace, oldest first."""
        found = self._call(
            "list",
            RAYJOB,
            "*",
            lambda: self.custom.list_namespaced_custom_object(
                RAYJOB.group,
                RAYJOB.version,
                self.namespace,
                RAYJOB.plural,
                label_selector="app.kubernetes.io/part-of=fmstack",
            ),
        )
        items = sorted(
            found.get("items") or [], key=lambda o: o["metadata"].get("creationTimestamp") or ""
        )
        return [JobStatus.of(item) for item in items]

    def delete(self, name: str) -> None:
        """Delete the RayJob (KubeRay removes its cluster and submitter) and its recipe."""
        self._call(
            "delete",
            RAYJOB,
            name,
            lambda: self.custom.delete_namespaced_custom_object(
                RAYJOB.group, RAYJOB.version, self.namespace, RAYJOB.plural, name
            ),
        )
        self._delete_config_map(f"{name}-recipe")

    def log_pod(self, name: str) -> tuple[str, str | None]:
        """The pod whose log is the job's: the submitter (K8sJobMode), else the head pod."""
        job = self.get_job(name)
        selectors = [f"batch.kubernetes.io/job-name={name}", f"job-name={name}"]
        cluster = (job.get("status") or {}).get("rayClusterName")
        if cluster:
            selectors.append(f"ray.io/cluster={cluster},ray.io/node-type=head")
        for selector in selectors:
            request = functools.partial(
                self.core.list_namespaced_pod, self.namespace, label_selector=selector
            )
            pods = self._call("list", "Pod", f"{name} ({selector})", request)
            items = sorted(
                pods.items, key=lambda p: str(p.metadata.creation_timestamp or ""), reverse=True
            )
            if items:
                is_head = selector.startswith("ray.io/cluster=")
                return items[0].metadata.name, "ray-head" if is_head else None
        raise NotFound(
            f"RayJob {self.namespace}/{name} has no submitter or head pod yet "
            f"(status: {JobStatus.of(job).deployment_status}); try again in a moment",
            kind="Pod",
            namespace=self.namespace,
            name=name,
        )

    def logs(self, name: str, follow: bool = False) -> Iterator[str]:
        """The job's log, whole or (follow) streamed until the pod ends."""
        pod, container = self.log_pod(name)
        if not follow:
            yield self._call(
                "get",
                "Pod",
                pod,
                lambda: self.core.read_namespaced_pod_log(pod, self.namespace, container=container),
            )
            return
        stream = self._call(
            "get",
            "Pod",
            pod,
            lambda: self.core.read_namespaced_pod_log(
                pod, self.namespace, container=container, follow=True, _preload_content=False
            ),
        )
        for chunk in stream.stream():
            yield chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk

    # ------------------------------------------------------------ the RayService

    def get_service(self, name: str) -> dict[str, Any]:
        return self._get(RAYSERVICE, name)

    def plan_promotion(
        self,
        rayservice: Mapping[str, Any],
        variant: str,
        version: int,
        *,
        require: Sequence[str] = (),
        registry: Registry | None = None,
        application: str = "fmstack",
    ) -> tuple[Promotion, Registry]:
        """Check that `version` exists and meets `require`; nothing is written anywhere."""
        service = rayservice.get("metadata", {}).get("name", "")
        patch = with_promoted_version(rayservice, variant, version, application)
        _, cfg = _serve_application(rayservice, application)
        ref = cfg.variants[variant].model
        if not is_model_ref(ref) or parse_ref(ref).alias is None:
            raise ServiceConfigError(
                f"variant {variant} of RayService {service} serves {ref}, not a registry alias "
                "(models:/name@alias)"
            )
        parsed = parse_ref(ref)
        registry = registry or Registry(_registry_root(cfg.registry, service))
        requirements = [parse_requirement(r) for r in require]
        target = registry.get(ModelRef(parsed.name, version=version))  # unknown: ModelNotFound
        failures = [f for r in requirements if (f := r.failure(target.metrics)) is not None]
        if failures:
            raise PromotionRefused(target.ref, parsed.alias or "", failures)
        previous = registry.aliases(parsed.name).get(parsed.alias or "")
        promotion = Promotion(
            service, variant, parsed.name, parsed.alias or "", previous, version, patch
        )
        return promotion, registry

    def promote(
        self,
        service: str,
        variant: str,
        version: int,
        *,
        require: Sequence[str] = (),
        registry: Registry | None = None,
        application: str = "fmstack",
    ) -> Promotion:
        """Move the variant's registry alias to `version` (gated on `require`, checksums
        verified) and patch the RayService so the running replicas load it in place."""
        rayservice = self.get_service(service)
        promotion, registry = self.plan_promotion(
            rayservice,
            variant,
            version,
            require=require,
            registry=registry,
            application=application,
        )
        registry.resolve(ModelRef(promotion.model, version=version))  # checksums verified
        registry.promote(promotion.model, version, promotion.alias, list(require))
        try:
            self._call(
                "patch",
                RAYSERVICE,
                service,
                lambda: self.custom.patch_namespaced_custom_object(
                    RAYSERVICE.group,
                    RAYSERVICE.version,
                    self.namespace,
                    RAYSERVICE.plural,
                    service,
                    promotion.patch,
                ),
            )
        except KubeRayError:
            # The service still serves the old version: point the alias back at it.
            if promotion.previous is not None:
                registry.promote(promotion.model, promotion.previous, promotion.alias)
            raise
        return promotion

    # ------------------------------------------------------------ plumbing

    def _get(self, resource: Resource, name: str) -> dict[str, Any]:
        return self._call(
            "get",
            resource,
            name,
            lambda: self.custom.get_namespaced_custom_object(
                resource.group, resource.version, self.namespace, resource.plural, name
            ),
        )

    def _delete_config_map(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(
                "delete",
                "ConfigMap",
                name,
                lambda: self.core.delete_namespaced_config_map(name, self.namespace),
            )

    def _call(self, verb: str, what: Resource | str, name: str, request: Callable[[], T]) -> T:
        """Run one API request; its failure becomes a typed error naming the object."""
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return request()
        except ApiException as err:
            raise api_error(err, verb, what, self.namespace, name) from None
        except (HTTPError, OSError) as err:
            kind = what.kind if isinstance(what, Resource) else what
            raise KubernetesError(
                f"cannot reach the Kubernetes API server to {verb} {kind} "
                f"{self.namespace}/{name}: {err}; check your kubeconfig context (kubectl "
                "cluster-info)",
                kind=kind,
                namespace=self.namespace,
                name=name,
            ) from None


def _in(obj: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """A copy of `obj` placed in `namespace`."""
    out = copy.deepcopy(dict(obj))
    out["metadata"]["namespace"] = namespace
    return out


def _registry_root(configured: str | None, service: str) -> str:
    """The registry the RayService's serve config names, when this machine can read it (a URI,
    or a directory that exists here). A path on the cluster's volume that is not mounted here is
    refused: promoting in another registry would pin a version the replicas cannot find."""
    if not configured:
        return default_root()
    if is_uri(configured) or Path(configured).is_dir():
        return configured
    raise ServiceConfigError(
        f"RayService {service} serves models from the registry {configured}, which this machine "
        "cannot read (a path on the cluster's volume); pass --registry with a path or URI where "
        "this machine sees that same registry, put the registry on object storage, or run the "
        "promotion in a pod that mounts the volume"
    )


_RESOURCES = {"ConfigMap": "configmaps", "Pod": "pods"}


def api_error(err: Any, verb: str, what: Resource | str, namespace: str, name: str) -> KubeRayError:
    """The typed error for an `ApiException` about one object."""
    if isinstance(what, Resource):
        kind, resource = what.kind, f"{what.plural}.{what.group}"
    else:
        kind, resource = what, _RESOURCES.get(what, what.lower() + "s")
    if verb == "get" and kind == "Pod":
        resource = "pods/log"
    obj = f"{kind} {namespace}/{name}"
    status = err.status
    fields = {"kind": kind, "namespace": namespace, "name": name, "status": status}
    if status == 404:
        hint = (
            "is KubeRay installed (kubectl get crd rayjobs.ray.io)? "
            if isinstance(what, Resource) and _reason(err).startswith("the server could not")
            else ""
        )
        return NotFound(
            f"{obj} not found: {hint}check the name and the namespace (--namespace)", **fields
        )
    if status == 409:
        command = f"fmstack k8s delete {name}" if kind in ("RayJob", "ConfigMap") else "kubectl"
        return AlreadyExists(
            f"{obj} already exists: delete it first ({command}) or choose another --name",
            **fields,
        )
    if status == 403:
        return Forbidden(
            f"forbidden to {verb} {obj}: RBAC lacks verb '{verb}' on '{resource}' in namespace "
            f"{namespace}; the fmstack Helm chart's ServiceAccount has it (or ask for a Role "
            "that grants it)",
            **fields,
        )
    if status == 401:
        return KubernetesError(
            f"the API server rejected the credentials for {verb} {obj}: refresh your kubeconfig "
            "login",
            **fields,
        )
    return KubernetesError(
        f"could not {verb} {obj}: HTTP {status} {_reason(err)}".rstrip(), **fields
    )


def _reason(err: Any) -> str:
    """The API server's message from an `ApiException` body, else its reason phrase."""
    try:
        return str(json.loads(err.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(err.reason or "")
