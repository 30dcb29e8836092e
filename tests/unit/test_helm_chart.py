"""The Helm chart, rendered by the real helm binary and checked offline: lint, every ci/ scenario
validated against the Kubernetes and CRD schemas, and what a platform team relies on (labels,
security contexts, network policies, secrets, monitoring, and the Serve config it deploys)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "fmstack"
SCENARIOS = ["default"] + sorted(
    p.name.removesuffix("-values.yaml") for p in CHART.glob("ci/*.yaml")
)
RELEASE = "demo"
NAMESPACE = "ml"
FULLNAME = f"{RELEASE}-fmstack"
COMMON_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
RAY_INTERNAL_PORTS = {6379, 8265, 10001}
CREDENTIAL_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|CREDENTIAL|ACCESS_KEY", re.IGNORECASE)


def scenario_args(scenario: str) -> list[str]:
    return [] if scenario == "default" else ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    """`helm template` as a list of objects (the helm test pod included)."""
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    return {scenario: render(helm, *scenario_args(scenario)) for scenario in SCENARIOS}


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template or pod) for every pod the object makes."""
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        yield obj["metadata"]["name"], obj
    clusters = []
    if obj["kind"] == "RayService":
        clusters.append(spec["rayClusterConfig"])
    if obj["kind"] == "RayJob":
        clusters.append(spec["rayClusterSpec"])
        yield f"{obj['metadata']['name']} submitter", spec["submitterPodTemplate"]
    for cluster in clusters:
        yield f"{obj['metadata']['name']} head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{obj['metadata']['name']} {group['groupName']}", group["template"]


def ray_clusters(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for obj in objects:
        if obj["kind"] == "RayService":
            yield obj["spec"]["rayClusterConfig"]
        if obj["kind"] == "RayJob":
            yield obj["spec"]["rayClusterSpec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def serve_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])


# ---------------------------------------------------------------- lint, render, validate


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict_passes(helm: str, scenario: str) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), *scenario_args(scenario))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_validates(
    rendered: dict[str, list[dict[str, Any]]], validate_manifest: Any, scenario: str
) -> None:
    objects = rendered[scenario]
    assert {"RayService", "NetworkPolicy", "Pod"} <= {o["kind"] for o in objects}
    for obj in objects:
        validate_manifest(obj)


def test_rendered_objects_carry_the_common_labels(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for scenario, objects in rendered.items():
        for obj in objects:
            labels = obj["metadata"].get("labels", {})
            missing = [k for k in COMMON_LABELS if k not in labels]
            assert not missing, f"{scenario}: {obj['kind']} {obj['metadata']['name']}: {missing}"
            assert labels["app.kubernetes.io/name"] == "fmstack"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert labels["app.kubernetes.io/part-of"] == "fmstack"
            for where, pod in pod_specs(obj):
                pod_labels = pod["metadata"]["labels"]
                assert pod_labels["app.kubernetes.io/part-of"] == "fmstack", where


def _selectors(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every label selector in an object (selector, podSelector, namespaceSelector, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.lower().endswith("selector") and isinstance(value, dict):
                yield f"{path}.{key}", value
            yield from _selectors(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _selectors(item, f"{path}[{i}]")


def test_selectors_and_pod_labels_never_name_a_version(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """A selector or pod template with the chart version would orphan pods, or make KubeRay
    replace the whole serving cluster, on every chart upgrade."""
    checked = 0
    for objects in rendered.values():
        for obj in objects:
            what = f"{obj['kind']} {obj['metadata']['name']}"
            for path, selector in _selectors(obj):
                text = json.dumps(selector)
                assert "helm.sh/chart" not in text and "app.kubernetes.io/version" not in text, (
                    f"{what}{path}"
                )
                checked += 1
            for where, pod in pod_specs(obj):
                if pod is obj:  # a plain Pod (helm test) is an object of its own
                    continue
                assert "helm.sh/chart" not in pod["metadata"]["labels"], where
                assert "app.kubernetes.io/version" not in pod["metadata"]["labels"], where
    assert checked > 10


# ---------------------------------------------------------------- security


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_and_container_runs_locked_down(
    rendered: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    pods = 0
    for obj in rendered[scenario]:
        for where, pod in pod_specs(obj):
            pods += 1
            ctx = pod["spec"]["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for container in pod["spec"]["containers"]:
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert sc["readOnlyRootFilesystem"] is True, where
                # Ray writes under /tmp: it must be a writable volume on a read-only root.
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                if container["name"].startswith("ray-"):
                    assert "/tmp" in mounts, where
        for cluster in ray_clusters([obj]):
            if cluster.get("enableInTreeAutoscaling"):
                sc = cluster["autoscalerOptions"]["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == [
                    "ALL"
                ]
    assert pods >= 3


@pytest.mark.parametrize("serve_type", ["ClusterIP", "LoadBalancer"])
def test_ray_internal_ports_are_never_exposed_outside_the_cluster(
    helm: str, serve_type: str
) -> None:
    objects = render(helm, "--set", f"serve.service.type={serve_type}")
    for service in of_kind(objects, "Service"):
        ports = {p["port"] for p in service["spec"]["ports"]}
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP" or not (
            ports & RAY_INTERNAL_PORTS
        )
    rayservice = one(objects, "RayService")
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
    serve_service = rayservice["spec"]["serveService"]
    assert serve_service["spec"]["type"] == serve_type
    assert [p["port"] for p in serve_service["spec"]["ports"]] == [8000]


def test_an_exposed_head_service_is_refused(helm: str) -> None:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", "head.serviceType=NodePort")
    assert done.returncode != 0
    assert "serviceType" in done.stderr


def test_network_policies_are_on_by_default_and_admit_only_what_is_needed(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    policies = {
        p["metadata"]["name"]: p["spec"] for p in of_kind(rendered["default"], "NetworkPolicy")
    }
    deny = policies[f"{FULLNAME}-default-deny"]
    assert deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "fmstack"}}

    serve = policies[f"{FULLNAME}-serve"]["ingress"]
    assert [p["port"] for rule in serve for p in rule["ports"]] == [8000]
    peers = [peer for rule in serve for peer in rule["from"]]
    assert peers == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    prometheus = policies[f"{FULLNAME}-prometheus"]["ingress"]
    assert [p["port"] for rule in prometheus for p in rule["ports"]] == [8080]
    # Every rule but the intra-fmstack one names its ports: nothing else reaches the dashboard.
    for name, spec in policies.items():
        for rule in spec.get("ingress", []):
            if name.endswith("-ray-internal"):
                assert rule["from"] == [
                    {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "fmstack"}}}
                ]
            else:
                assert rule["ports"], name


def test_network_policies_follow_the_values(
    helm: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    assert not of_kind(render(helm, "--set", "networkPolicy.enabled=false"), "NetworkPolicy")
    closed = render(helm, "--set-json", "networkPolicy.serve.from=[]")
    names = {p["metadata"]["name"] for p in of_kind(closed, "NetworkPolicy")}
    assert f"{FULLNAME}-default-deny" in names and f"{FULLNAME}-serve" not in names
    gateway = one(rendered["monitoring-off"], "NetworkPolicy", f"{FULLNAME}-serve")
    assert gateway["spec"]["ingress"][0]["from"][0]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "envoy"}
    }


def test_api_keys_are_generated_and_reach_ray_only_by_secret_reference(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["default"]
    secret = one(objects, "Secret", f"{FULLNAME}-api-keys")
    assert set(secret["data"]) == {"api-keys", "admin-keys"}
    assert all(len(v) >= 40 for v in secret["data"].values())
    assert "stringData" not in secret
    rayservice = one(objects, "RayService")
    assert serve_config(objects)["applications"][0]["args"]["auth"]["enabled"] is True
    for where, pod in pod_specs(rayservice):
        env = env_of(pod["spec"]["containers"][0])
        for var, key in (("FMSTACK_API_KEYS", "api-keys"), ("FMSTACK_ADMIN_KEYS", "admin-keys")):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": f"{FULLNAME}-api-keys", "key": key}, where


def test_object_storage_registry_reaches_a_user_serve_config_without_args(
    helm: str, tmp_path: Path
) -> None:
    own = "applications:\n  - name: fmstack\n    import_path: serving.app:build_app\n"
    values = tmp_path / "serve.yaml"
    values.write_text(yaml.safe_dump({"serve": {"config": own}}))
    objects = render(helm, *scenario_args("s3-storage"), "-f", str(values))
    assert serve_config(objects)["applications"][0]["args"] == {
        "registry": "s3://fmstack-models/registry"
    }


def test_an_existing_api_key_secret_is_referenced_not_created(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["s3-storage"]
    assert not of_kind(objects, "Secret")
    head = one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    ref = env_of(head["spec"]["containers"][0])["FMSTACK_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "fmstack-api-keys"


def test_object_storage_credentials_come_only_from_secret_references(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["s3-storage"]
    assert not of_kind(objects, "PersistentVolumeClaim")
    assert serve_config(objects)["applications"][0]["args"]["registry"] == (
        "s3://fmstack-models/registry"
    )
    text = yaml.safe_dump_all(objects)
    assert "access-key-id" in text  # the Secret's key name, never a value
    for obj in objects:
        for where, pod in pod_specs(obj):
            for container in pod["spec"]["containers"]:
                env = env_of(container)
                for name, var in env.items():
                    if CREDENTIAL_NAME.search(name):
                        assert "value" not in var, f"{where}: {name} is plaintext"
                if container["name"].startswith("ray-"):
                    assert env["FMSTACK_REGISTRY"]["value"] == "s3://fmstack-models/registry"
                    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
                        "name": "fmstack-s3-credentials",
                        "key": "secret-access-key",
                    }
                    assert "/data" not in {m["mountPath"] for m in container["volumeMounts"]}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "storage.object.env.AWS_SECRET_ACCESS_KEY=hunter2"], "AWS_SECRET_ACCESS_KEY"),
        (["--set", "workers.cpu.replicsa=2"], "replicsa"),
        (["--set", "storage.type=nfs"], "/storage/type"),
        (["--set", "serve.service.type=External"], "/serve/service/type"),
        (["--set", "rayAuthMode=off"], "/rayAuthMode"),
        (["--set-json", 'jobs=[{"name": "x", "kind": "train", "recipe": "a: 1"}]'], "/jobs/0"),
        (["--set", "storage.type=object"], "/storage/object/registry"),
    ],
)
def test_bad_values_fail_with_a_message_that_names_them(
    helm: str, args: list[str], named: str
) -> None:
    for command in (["lint", "--strict", str(CHART)], ["template", RELEASE, str(CHART)]):
        done = run_helm(helm, *command, *args)
        assert done.returncode != 0, f"{command[0]} accepted {args}"
        assert named in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_plaintext_credential_in_extra_env_is_refused(helm: str) -> None:
    bad = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--set-json",
        'extraEnv=[{"name": "HF_TOKEN", "value": "hf_abc"}]',
    )
    assert bad.returncode != 0 and "/extraEnv/0" in bad.stderr
    from_secret = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}}
    ok = render(helm, "--set-json", f"extraEnv={json.dumps([from_secret])}")
    head = one(ok, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert "valueFrom" in env_of(head["spec"]["containers"][0])["HF_TOKEN"]


# ---------------------------------------------------------------- Ray clusters


def test_gpu_workers_get_whole_gpus_with_requests_equal_to_limits(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["gpu"]
    groups = {
        g["groupName"]: g
        for g in one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    }
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]
    container = gpu["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-cu128")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert (
        "nvidia.com/gpu"
        not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    job = one(objects, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in job] == ["gpu"] and job[0]["replicas"] == 4
    for scenario in rendered.values():
        for obj in scenario:
            for where, pod in pod_specs(obj):
                for c in pod["spec"]["containers"]:
                    assert c["resources"]["requests"] == c["resources"]["limits"], where


def test_the_rayservice_autoscales_in_tree_and_exports_metrics(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    cluster = one(rendered["default"], "RayService")["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    container = head["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "metrics": 8080,
        "serve": 8000,
    }
    env = env_of(container)
    assert env["FMSTACK_REGISTRY"]["value"] == "/data/registry"
    assert env["FMSTACK_CACHE"]["value"] == "/opt/fmstack/cache"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] == "data"
    claim = one(rendered["default"], "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{FULLNAME}-data"
    volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-data"
    for group in cluster["workerGroupSpecs"]:
        ports = {p["name"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert ports == {"metrics", "serve"}


def test_the_serve_config_is_what_fmstack_serve_build_prints(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from serving import load_serve_config
    from serving import serve_config as build_serve_config

    cfg = load_serve_config(
        ROOT / "configs" / "serve" / "sentiment.yaml",
        {"registry": "/data/registry", "http.host": "0.0.0.0", "auth.enabled": True},
    )
    expected = build_serve_config(cfg)
    assert serve_config(rendered["default"]) == expected
    assert yaml.safe_load((CHART / "files" / "serve-config.yaml").read_text()) == expected


def test_serve_config_can_be_replaced_from_a_file(helm: str, tmp_path: Path) -> None:
    config = {"applications": [{"name": "other", "import_path": "serving.app:build_app"}]}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    objects = render(helm, "--set-file", f"serve.config={path}")
    assert serve_config(objects) == config


def test_a_recipe_job_becomes_a_rayjob_that_runs_fmstack_on_it(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from training import FinetuneConfig, parse_recipe, read_recipe

    objects = rendered["cpu-only"]
    job = one(objects, "RayJob", f"{FULLNAME}-sentiment")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 3600
    assert spec["backoffLimit"] == 0 and "activeDeadlineSeconds" not in spec
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["fmstack", "finetune", "--config", "/etc/fmstack/recipes/sentiment.yaml"]
    overrides = dict(pair.split("=", 1) for pair in argv[5::2])
    assert overrides == {"checkpoint.storage_path": "/data/runs", "train.epochs": "2"}
    configmap = one(objects, "ConfigMap", f"{FULLNAME}-sentiment-recipe")
    recipe = tmp_path / "sentiment.yaml"
    recipe.write_text(configmap["data"]["sentiment.yaml"])
    parsed = {k: yaml.safe_load(v) for k, v in overrides.items()}
    cfg = parse_recipe(read_recipe(recipe, parsed), str(recipe), FinetuneConfig)
    assert cfg.train.epochs == 2 and cfg.checkpoint.storage_path == "/data/runs"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    assert mounts["/etc/fmstack/recipes"] == "recipes"
    volume = {v["name"]: v for v in head["volumes"]}["recipes"]["configMap"]
    assert volume["name"] == configmap["metadata"]["name"]
    assert "FMSTACK_API_KEYS" not in env_of(head["containers"][0])
    # The training cluster's pods are not serving pods (the PodMonitors tell them apart).
    labels = spec["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert labels["fmstack.io/workload"] == "train"
    assert labels["app.kubernetes.io/component"] == "head"
    assert not of_kind(rendered["default"], "RayJob")


def test_serving_pods_run_serve_in_high_throughput_mode_unless_turned_off(
    helm: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    from serving import HIGH_THROUGHPUT_ENV

    def modes(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
        return {
            where: {
                k: env_of(spec["spec"]["containers"][0]).get(k, {}).get("value")
                for k in HIGH_THROUGHPUT_ENV
            }
            for obj in objects
            if obj["kind"] in ("RayService", "RayJob")
            for where, spec in pod_specs(obj)
            if "submitter" not in where
        }

    found = modes(rendered["cpu-only"])
    assert any("sentiment" in where for where in found)  # a RayJob is among them
    unset = dict.fromkeys(HIGH_THROUGHPUT_ENV)
    for where, env in found.items():
        serving = where.startswith(f"{FULLNAME} ")  # the RayService's pods
        assert env == (HIGH_THROUGHPUT_ENV if serving else unset), where
    off = modes(render(helm, "--set", "serve.highThroughput=false"))
    assert off and all(env == unset for env in off.values())


# ---------------------------------------------------------------- monitoring


def test_monitoring_renders_monitors_rules_and_dashboard(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["default"]
    monitors = of_kind(objects, "PodMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {f"{FULLNAME}-serve", f"{FULLNAME}-jobs"}
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics"
        assert {
            "sourceLabels": ["__name__"],
            "regex": "ray_(fmstack_.*)",
            "targetLabel": "__name__",
            "replacement": "$1",
            "action": "replace",
        } in endpoint["metricRelabelings"]
    serve = one(objects, "PodMonitor", f"{FULLNAME}-serve")["spec"]["selector"]["matchLabels"]
    assert serve["fmstack.io/workload"] == "serve"
    rule = one(objects, "PrometheusRule")
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    dashboard = one(objects, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["fmstack.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )


def test_monitoring_off_renders_no_prometheus_operator_objects(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["monitoring-off"]
    assert not [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert not [o for o in objects if "grafana_dashboard" in o["metadata"].get("labels", {})]
    assert one(objects, "RayService")


# ---------------------------------------------------------------- RBAC, NOTES, helm test


def test_the_cli_role_can_run_fmstack_k8s_in_its_namespace_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["default"]
    assert not of_kind(objects, "ClusterRole")
    rules = one(objects, "Role")["rules"]
    granted = {
        (resource, verb) for r in rules for resource in r["resources"] for verb in r["verbs"]
    }
    for resource in ("rayjobs", "rayservices"):
        for verb in ("create", "get", "patch", "delete"):
            assert (resource, verb) in granted
    assert ("pods/log", "get") in granted and ("pods", "list") in granted
    binding = one(objects, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULLNAME}-cli", "namespace": NAMESPACE}
    ]


def test_notes_give_working_kubectl_commands(helm: str) -> None:
    done = run_helm(
        helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    for line in (
        f"kubectl -n {NAMESPACE} get rayservices {FULLNAME}",
        f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME}-serve-svc 8000:8000",
        f"kubectl -n {NAMESPACE} get secret {FULLNAME}-api-keys -o jsonpath='{{.data.api-keys}}'",
        f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME}-head-svc 8265:8265",
        f"kubectl -n {NAMESPACE} get rayjobs",
    ):
        assert line in notes


def test_helm_test_pod_checks_readyz_and_the_api_key(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    pod = one(rendered["default"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    env = env_of(container)
    assert env["SERVE_URL"]["value"] == f"http://{FULLNAME}-serve-svc.{NAMESPACE}.svc:8000"
    assert env["FMSTACK_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-api-keys"
    script = container["args"][0]
    compile(script, "helm-test", "exec")
    assert '"/readyz"' in script and "401" in script


# ---------------------------------------------------------------- values documentation


def _documented(lines: list[str], row: int) -> bool:
    """Whether the key on `row` has a helm-docs `# --` comment block right above it."""
    first = row
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    return first < row and lines[first].lstrip().startswith("# --")


def test_every_value_is_documented_and_in_the_schema() -> None:
    """helm-docs style: each value, or the object it belongs to, has a `# --` comment and a row
    in the chart's README, and the schema knows every key (so a typo fails lint)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    checked = 0

    def walk(node: dict[str, Any], path: tuple[str, ...], row: int, props: dict[str, Any]) -> None:
        nonlocal checked
        for key, value in node.items():
            where = ".".join((*path, key))
            pattern = re.compile(rf"^{' ' * 2 * len(path)}{re.escape(key)}:")
            at = next(i for i in range(row + 1, len(lines)) if pattern.match(lines[i]))
            assert key in props.get("properties", {}), f"{where} is not in the schema"
            if _documented(lines, at):
                assert f"| `{where}` |" in readme, f"{where} is missing from the chart's README"
                checked += 1
            else:
                assert isinstance(value, dict) and value, f"{where} has no `# --` comment"
                walk(value, (*path, key), at, props["properties"][key])

    walk(yaml.safe_load("\n".join(lines)), (), -1, schema)
    assert checked > 60
