"""Every sample in k8s/ is valid, pinned, hardened, and equal to what `fmstack k8s` builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cluster import kuberay
from cluster.cli import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "k8s").glob("*.yaml"))
RAYJOB_SAMPLES = {
    "rayjob.pretrain.yaml": "configs/pretrain/gpt2-demo.yaml",
    "rayjob.distill.yaml": "configs/distill/minilm-student.yaml",
}
SERVE_BUILD = [
    "serve",
    "build",
    "--config",
    str(ROOT / "configs/serve/sentiment.yaml"),
    "--set",
    "registry=/data/registry",
    "--set",
    "http.host=0.0.0.0",
    "--set",
    "auth.enabled=true",
]


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def cluster_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The Ray cluster spec of a RayCluster, RayJob or RayService; None for other kinds."""
    spec = obj.get("spec") or {}
    if obj["kind"] == "RayCluster":
        return spec
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig")


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec inside a Ray custom resource."""
    cluster = cluster_spec(obj)
    pods = []
    if cluster:
        pods.append(cluster["headGroupSpec"]["template"]["spec"])
        pods += [g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in (obj.get("spec") or {}):
        pods.append(obj["spec"]["submitterPodTemplate"]["spec"])
    return pods


def test_the_documented_samples_are_all_there() -> None:
    names = {p.name for p in SAMPLES}
    assert {
        "raycluster.gpu.yaml",
        "rayjob.pretrain.yaml",
        "rayjob.distill.yaml",
        "rayservice.fmstack.yaml",
        "podmonitor.ray.yaml",
        "servicemonitor.fmstack.yaml",
    } <= names
    readme = (ROOT / "k8s" / "README.md").read_text()
    assert all(name in readme for name in names)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_validates_against_the_schemas(path: Path, validate_manifest: Any) -> None:
    docs = objects(path)
    assert docs, f"{path.name} is empty"
    for obj in docs:
        validate_manifest(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fmstack"
    assert path.read_text().lstrip().startswith("#"), f"{path.name} explains itself up front"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_pins_its_versions(path: Path) -> None:
    text = path.read_text()
    assert ":latest" not in text
    for obj in objects(path):
        for pod in pod_specs(obj):
            for container in pod["containers"]:
                repo, _, tag = container["image"].rpartition(":")
                assert repo and tag.startswith("0.1.0"), container["image"]
        cluster = cluster_spec(obj)
        if cluster:
            assert cluster["rayVersion"] == kuberay.RAY_VERSION == "2.60.0"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_ray_pods_are_hardened_and_internal(path: Path) -> None:
    for obj in objects(path):
        assert obj["kind"] != "Secret", "secrets are referenced, never written into samples"
        for pod in pod_specs(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"] == {"drop": ["ALL"]}
                assert sc["readOnlyRootFilesystem"] is True
                assert c["resources"]["requests"] == c["resources"]["limits"]
                assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
                for env in c.get("env", []):
                    if "KEY" in env["name"] and env["name"] != "FMSTACK_CACHE":
                        assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]
        cluster = cluster_spec(obj)
        if cluster:
            assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_rayservice_embeds_the_serve_config_that_serve_build_prints() -> None:
    (service,) = objects(ROOT / "k8s" / "rayservice.fmstack.yaml")
    built = CliRunner().invoke(app, SERVE_BUILD)
    assert built.exit_code == 0, built.output
    assert service["spec"]["serveConfigV2"] == built.stdout
    env = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert keys["FMSTACK_API_KEYS"] == {
        "name": "fmstack-api-keys",
        "key": "api-keys",
        "optional": False,
    }
    assert keys["FMSTACK_ADMIN_KEYS"]["key"] == "admin-keys"


def test_rayservice_pods_run_serve_in_high_throughput_mode() -> None:
    from serving import HIGH_THROUGHPUT_ENV

    (service,) = objects(ROOT / "k8s" / "rayservice.fmstack.yaml")
    for pod in pod_specs(service):
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert {k: env.get(k) for k in HIGH_THROUGHPUT_ENV} == HIGH_THROUGHPUT_ENV
    for sample in RAYJOB_SAMPLES:  # training clusters serve nothing
        for obj in objects(ROOT / "k8s" / sample):
            for pod in pod_specs(obj):
                names = {e["name"] for e in pod["containers"][0].get("env", [])}
                assert not names & set(HIGH_THROUGHPUT_ENV), sample


def test_rayservice_sample_equals_the_builder() -> None:
    (service,) = objects(ROOT / "k8s" / "rayservice.fmstack.yaml")
    serve_cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert service == kuberay.rayservice_manifest("fmstack", serve_cfg)


@pytest.mark.parametrize("sample,recipe", RAYJOB_SAMPLES.items())
def test_rayjob_sample_holds_the_repo_recipe_and_equals_the_builder(
    sample: str, recipe: str
) -> None:
    config_map, rayjob = objects(ROOT / "k8s" / sample)
    text = (ROOT / recipe).read_text()
    assert config_map["data"] == {Path(recipe).name: text}
    built = kuberay.rayjob_manifest(text, recipe_file=Path(recipe).name)  # validates the recipe
    assert [config_map, rayjob] == list(built)
    volumes = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "recipes", "configMap": {"name": config_map["metadata"]["name"]}} in volumes


def test_gpu_cluster_requests_gpus_and_autoscales() -> None:
    (cluster,) = objects(ROOT / "k8s" / "raycluster.gpu.yaml")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (gpu,) = spec["workerGroupSpecs"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == kuberay.GPU_IMAGE
    assert gpu["minReplicas"] < gpu["maxReplicas"]


@pytest.mark.parametrize("name", ["podmonitor.ray.yaml", "servicemonitor.fmstack.yaml"])
def test_monitors_rename_fmstack_series(name: str) -> None:
    monitor = next(o for o in objects(ROOT / "k8s" / name) if o["kind"].endswith("Monitor"))
    endpoints = monitor["spec"].get("podMetricsEndpoints") or monitor["spec"]["endpoints"]
    (endpoint,) = endpoints
    assert endpoint["port"] == "metrics"
    assert {
        "sourceLabels": ["__name__"],
        "regex": "ray_(fmstack_.*)",
        "targetLabel": "__name__",
        "replacement": "$1",
        "action": "replace",
    } in endpoint["metricRelabelings"]
