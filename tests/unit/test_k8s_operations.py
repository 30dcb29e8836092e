"""`fmstack k8s` against an in-memory Kubernetes API: what it creates is valid, API failures
name the object, promotion changes one deployment's version and nothing else."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException, V1ObjectMeta, V1Pod, V1PodList
from typer.testing import CliRunner

from cluster import k8s_cli, kuberay
from cluster.cli import app
from cluster.kuberay import AlreadyExists, Forbidden, KubeRay, NotFound, ServiceConfigError
from cluster.registry import ModelNotFoundError, PromotionRefused, Registry
from training import RecipeError

ROOT = Path(__file__).resolve().parents[2]
GPT2 = str(ROOT / "configs/pretrain/gpt2-demo.yaml")
NS = "ml"
RECIPES = {
    "configs/pretrain/gpt2-demo.yaml": "pretrain",
    "configs/finetune/minilm-rotten-tomatoes.yaml": "finetune",
    "configs/distill/minilm-student.yaml": "distill",
    "configs/distill/smollm2-tiny.yaml": "distill",
}


class FakeKube:
    """CustomObjectsApi and CoreV1Api in memory: records every call; `fail[method] = status`
    makes that method raise `ApiException(status)`."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}
        self.pods: list[V1Pod] = []
        self.log = "step 10 loss 5.1\n"

    def _record(self, method: str, name: str) -> None:
        self.calls.append((method, name))
        if method in self.fail:
            raise ApiException(status=self.fail[method], reason="Refused")

    @property
    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0].split("_")[0] in ("create", "patch", "delete")]

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        name = body["metadata"]["name"]
        self._record("create_namespaced_custom_object", name)
        if (plural, namespace, name) in self.objects:
            raise ApiException(status=409, reason="Conflict")
        stored = copy.deepcopy(body)
        stored["metadata"]["uid"] = f"uid-{name}"
        self.objects[(plural, namespace, name)] = stored
        return stored

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self._record("get_namespaced_custom_object", name)
        if (plural, namespace, name) not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.objects[(plural, namespace, name)])

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kw):
        self._record("list_namespaced_custom_object", plural)
        items = [o for (p, ns, _), o in self.objects.items() if p == plural and ns == namespace]
        return {"items": copy.deepcopy(items)}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self._record("delete_namespaced_custom_object", name)
        if self.objects.pop((plural, namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")
        return {}

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kw):
        self._record("patch_namespaced_custom_object", name)
        target = self.objects[(plural, namespace, name)]
        _merge(target, body)
        return copy.deepcopy(target)

    def create_namespaced_config_map(self, namespace, body, **kw):
        name = body["metadata"]["name"]
        self._record("create_namespaced_config_map", name)
        if ("configmaps", namespace, name) in self.objects:
            raise ApiException(status=409, reason="Conflict")
        self.objects[("configmaps", namespace, name)] = copy.deepcopy(body)
        return body

    def delete_namespaced_config_map(self, name, namespace, **kw):
        self._record("delete_namespaced_config_map", name)
        if self.objects.pop(("configmaps", namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")
        return {}

    def list_namespaced_pod(self, namespace, label_selector="", **kw):
        self._record("list_namespaced_pod", label_selector)
        wanted = dict(pair.split("=") for pair in label_selector.split(","))
        return V1PodList(
            items=[p for p in self.pods if wanted.items() <= (p.metadata.labels or {}).items()]
        )

    def read_namespaced_pod_log(self, name, namespace, container=None, **kw):
        self._record("read_namespaced_pod_log", f"{name}/{container}")
        if kw.get("_preload_content", True):
            return self.log
        return _Stream(self.log.encode())


class _Stream:
    """What `_preload_content=False` returns: a urllib3 response, read in chunks."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self):
        yield from (self.data[i : i + 4] for i in range(0, len(self.data), 4))


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386), as the API server applies it."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def pod(name: str, **labels: str) -> V1Pod:
    return V1Pod(metadata=V1ObjectMeta(name=name, labels=labels))


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def ops(kube: FakeKube) -> KubeRay:
    return KubeRay(kube, kube, NS)


def manifests(recipe: str = "configs/pretrain/gpt2-demo.yaml", **kw: Any) -> Any:
    path = ROOT / recipe
    return kuberay.rayjob_manifest(path.read_text(), recipe_file=path.name, **kw)


# ---------------------------------------------------------------- submit


@pytest.mark.parametrize("recipe,kind", RECIPES.items())
def test_submit_creates_a_valid_configmap_and_rayjob(
    ops: KubeRay, kube: FakeKube, validate_manifest: Any, recipe: str, kind: str
) -> None:
    created = ops.submit(manifests(recipe))
    name = created["metadata"]["name"]
    assert [c[0] for c in kube.writes] == [
        "create_namespaced_config_map",
        "create_namespaced_custom_object",
    ]
    config_map = kube.objects[("configmaps", NS, f"{name}-recipe")]
    rayjob = kube.objects[("rayjobs", NS, name)]
    for obj in (config_map, rayjob):
        assert obj["metadata"]["namespace"] == NS
        validate_manifest(obj)
    file = Path(recipe).name
    assert config_map["data"] == {file: (ROOT / recipe).read_text()}
    assert rayjob["spec"]["entrypoint"].startswith(
        f"fmstack {kind} --config /etc/fmstack/recipes/{file}"
    )
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True


def test_overrides_are_validated_and_shell_quoted() -> None:
    _, rayjob = manifests(overrides=["train.max_steps=50", "data.sources=[{kind: sotu}]"])
    entrypoint = rayjob["spec"]["entrypoint"]
    assert "--set train.max_steps=50 --set 'data.sources=[{kind: sotu}]'" in entrypoint
    with pytest.raises(RecipeError, match="train.max_steps"):
        manifests(overrides=["train.max_steps=0"])


def test_workers_size_the_worker_group_and_must_fit_the_batch() -> None:
    _, rayjob = manifests(workers=4, overrides=["train.global_batch_size=32"])
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    assert "--set scaling.num_workers=4" in rayjob["spec"]["entrypoint"]
    with pytest.raises(RecipeError, match="global_batch_size"):
        manifests(workers=3)


def test_gpu_recipe_gets_gpu_workers_and_the_cuda_image() -> None:
    _, rayjob = manifests("configs/pretrain/llama-base-gpu.yaml")
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["image"] == kuberay.GPU_IMAGE
    assert group["replicas"] == 8
    # its storage is already on object storage: no redirect to the volume
    assert "storage_path" not in rayjob["spec"]["entrypoint"]


def test_explicit_kind_must_fit_the_recipe() -> None:
    with pytest.raises(RecipeError):
        manifests("configs/finetune/minilm-rotten-tomatoes.yaml", kind="pretrain")


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="bad name"):
        manifests(name="Not_A_DNS_Name")


def test_existing_rayjob_is_a_typed_error_and_leaves_no_configmap(
    ops: KubeRay, kube: FakeKube
) -> None:
    ops.submit(manifests())
    kube.objects.pop(("configmaps", NS, "gpt2-demo-recipe"))
    with pytest.raises(AlreadyExists, match=f"RayJob {NS}/gpt2-demo already exists") as err:
        ops.submit(manifests())
    assert (err.value.kind, err.value.namespace, err.value.name) == ("RayJob", NS, "gpt2-demo")
    assert "fmstack k8s delete gpt2-demo" in str(err.value)
    assert ("configmaps", NS, "gpt2-demo-recipe") not in kube.objects


def test_existing_configmap_is_a_typed_error(ops: KubeRay) -> None:
    ops.submit(manifests())
    with pytest.raises(AlreadyExists, match=f"ConfigMap {NS}/gpt2-demo-recipe"):
        ops.submit(manifests())


def test_forbidden_says_which_rbac_verb_is_missing(ops: KubeRay, kube: FakeKube) -> None:
    kube.fail["create_namespaced_custom_object"] = 403
    with pytest.raises(Forbidden) as err:
        ops.submit(manifests())
    message = str(err.value)
    assert f"RayJob {NS}/gpt2-demo" in message
    assert "'create' on 'rayjobs.ray.io'" in message
    assert "ServiceAccount" in message


# ---------------------------------------------------------------- status, logs, delete, list


def test_status_reports_what_kuberay_says(ops: KubeRay, kube: FakeKube) -> None:
    ops.submit(manifests())
    kube.objects[("rayjobs", NS, "gpt2-demo")]["status"] = {
        "jobStatus": "RUNNING",
        "jobDeploymentStatus": "Running",
        "dashboardURL": "gpt2-demo-abcde-head-svc.ml.svc.cluster.local:8265",
        "startTime": "2026-11-28T10:00:00Z",
        "rayClusterName": "gpt2-demo-abcde",
    }
    status = ops.status("gpt2-demo")
    assert (status.job_status, status.deployment_status) == ("RUNNING", "Running")
    assert status.dashboard_url.endswith(":8265") and not status.finished
    assert [j.name for j in ops.list_jobs()] == ["gpt2-demo"]


def test_status_of_a_missing_job_names_it(ops: KubeRay) -> None:
    with pytest.raises(NotFound, match=f"RayJob {NS}/nope not found"):
        ops.status("nope")


def test_logs_come_from_the_submitter_pod_else_the_head(ops: KubeRay, kube: FakeKube) -> None:
    ops.submit(manifests())
    with pytest.raises(NotFound, match="no submitter or head pod"):
        list(ops.logs("gpt2-demo"))
    kube.objects[("rayjobs", NS, "gpt2-demo")]["status"] = {"rayClusterName": "gpt2-demo-x"}
    kube.pods = [
        pod("gpt2-demo-x-head", **{"ray.io/cluster": "gpt2-demo-x"}, **{"ray.io/node-type": "head"})
    ]
    assert "".join(ops.logs("gpt2-demo")) == kube.log
    assert kube.calls[-1] == ("read_namespaced_pod_log", "gpt2-demo-x-head/ray-head")
    kube.pods.append(pod("gpt2-demo-7xk2p", **{"batch.kubernetes.io/job-name": "gpt2-demo"}))
    assert "".join(ops.logs("gpt2-demo", follow=True)) == kube.log
    assert kube.calls[-1] == ("read_namespaced_pod_log", "gpt2-demo-7xk2p/None")


def test_delete_removes_the_job_and_its_recipe(ops: KubeRay, kube: FakeKube) -> None:
    ops.submit(manifests())
    ops.delete("gpt2-demo")
    assert not kube.objects
    with pytest.raises(NotFound, match=f"RayJob {NS}/gpt2-demo"):
        ops.delete("gpt2-demo")


# ---------------------------------------------------------------- promote


@pytest.fixture
def registry(serving_registry: Path, tmp_path: Path) -> Path:
    """A private copy of the serving registry: promotions here move its aliases."""
    return Path(shutil.copytree(serving_registry, tmp_path / "registry"))


@pytest.fixture
def service(ops: KubeRay, kube: FakeKube, registry: Path) -> dict[str, Any]:
    from serving import parse_serve_config, serve_config
    from training import read_recipe

    overrides = {"registry": str(registry), "http.host": "0.0.0.0", "auth.enabled": True}
    cfg = parse_serve_config(read_recipe(ROOT / "configs/serve/sentiment.yaml", overrides))
    obj = kuberay.rayservice_manifest("fmstack", serve_config(cfg), namespace=NS)
    kube.objects[("rayservices", NS, "fmstack")] = copy.deepcopy(obj)
    return obj


def deployments(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    serve_cfg = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return {d["name"]: d for d in serve_cfg["applications"][0]["deployments"]}


def test_promote_pins_only_that_variants_version(
    ops: KubeRay, kube: FakeKube, service: dict[str, Any], registry: Path, validate_manifest: Any
) -> None:
    done = ops.promote("fmstack", "full", 2, require=["accuracy>=0.75"])
    assert (done.model, done.alias, done.previous, done.version) == (
        "sentiment",
        "production",
        1,
        2,
    )
    assert [c[0] for c in kube.writes] == ["patch_namespaced_custom_object"]
    patched = kube.objects[("rayservices", NS, "fmstack")]
    validate_manifest(patched)
    before, after = deployments(service), deployments(patched)
    assert after["model-full"]["user_config"]["version"] == 2
    after["model-full"]["user_config"]["version"] = None
    assert after == before
    old = yaml.safe_load(service["spec"]["serveConfigV2"])
    new = yaml.safe_load(patched["spec"]["serveConfigV2"])
    for key in ("import_path", "args", "route_prefix", "name"):
        assert new["applications"][0][key] == old["applications"][0][key]
    assert {k: v for k, v in patched.items() if k != "spec"} == {
        k: v for k, v in service.items() if k != "spec"
    }
    assert patched["spec"]["rayClusterConfig"] == service["spec"]["rayClusterConfig"]
    assert Registry(registry).aliases("sentiment")["production"] == 2


def test_a_refused_patch_leaves_the_alias_where_the_service_is(
    ops: KubeRay, kube: FakeKube, service: dict[str, Any], registry: Path
) -> None:
    kube.fail["patch_namespaced_custom_object"] = 403
    with pytest.raises(Forbidden, match="patch"):
        ops.promote("fmstack", "full", 2)
    assert Registry(registry).aliases("sentiment")["production"] == 1
    assert deployments(kube.objects[("rayservices", NS, "fmstack")]) == deployments(service)


def test_promote_refuses_a_version_below_the_gate(
    ops: KubeRay, kube: FakeKube, service: dict[str, Any], registry: Path
) -> None:
    with pytest.raises(PromotionRefused, match="accuracy is 0.8, needs >= 0.9"):
        ops.promote("fmstack", "full", 2, require=["accuracy>=0.9"])
    assert kube.writes == []
    assert Registry(registry).aliases("sentiment")["production"] == 1


def test_promote_refuses_an_unknown_version(
    ops: KubeRay, kube: FakeKube, service: dict[str, Any]
) -> None:
    with pytest.raises(ModelNotFoundError, match="no version 7"):
        ops.promote("fmstack", "full", 7)
    assert kube.writes == []


def test_promote_refuses_unknown_variants_and_non_registry_models(
    ops: KubeRay, kube: FakeKube, service: dict[str, Any]
) -> None:
    with pytest.raises(ServiceConfigError, match="unknown variant tiny"):
        ops.promote("fmstack", "tiny", 1)
    with pytest.raises(ServiceConfigError, match="not a registry alias"):
        ops.promote("fmstack", "generator", 1)
    with pytest.raises(NotFound, match=f"RayService {NS}/other not found"):
        ops.promote("other", "full", 2)
    assert kube.writes == []


def test_promote_refuses_a_registry_on_a_volume_not_mounted_here(
    ops: KubeRay, kube: FakeKube, service: dict[str, Any], tmp_path: Path
) -> None:
    on_cluster = copy.deepcopy(service)
    serve_cfg = yaml.safe_load(on_cluster["spec"]["serveConfigV2"])
    serve_cfg["applications"][0]["args"]["registry"] = str(tmp_path / "not-mounted/registry")
    on_cluster["spec"]["serveConfigV2"] = yaml.safe_dump(serve_cfg)
    kube.objects[("rayservices", NS, "fmstack")] = on_cluster
    with pytest.raises(ServiceConfigError, match="cannot read.*pass --registry"):
        ops.promote("fmstack", "full", 2)
    assert kube.writes == []


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, kube: FakeKube) -> FakeKube:
    monkeypatch.setattr(k8s_cli, "make_clients", lambda: (kube, kube))
    monkeypatch.setattr(k8s_cli, "default_namespace", lambda: NS)
    return kube


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["k8s", *args])


def test_k8s_commands_are_pinned() -> None:
    names = {c.name or c.callback.__name__ for c in k8s_cli.app.registered_commands}
    assert names == {"submit", "status", "logs", "delete", "list", "promote"}


def test_submit_dry_run_prints_valid_yaml_without_the_api(
    monkeypatch: pytest.MonkeyPatch, validate_manifest: Any
) -> None:
    def refuse() -> None:
        raise AssertionError("--dry-run contacted the API")

    monkeypatch.setattr(k8s_cli, "make_clients", refuse)
    recipe = str(ROOT / "configs/distill/minilm-student.yaml")
    result = run("submit", recipe, "--dry-run", "-n", NS, "--claim", "team-data")
    assert result.exit_code == 0, result.output
    config_map, rayjob = yaml.safe_load_all(result.stdout)
    for obj in (config_map, rayjob):
        validate_manifest(obj)
        assert obj["metadata"]["namespace"] == NS
    assert rayjob["spec"]["entrypoint"].startswith("fmstack distill --config")
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for group in [rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]]
        + rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        for v in group["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"team-data"}


def test_submit_creates_the_job_and_says_how_to_follow_it(cli: FakeKube) -> None:
    result = run("submit", GPT2, "--set", "train.max_steps=50")
    assert result.exit_code == 0, result.output
    assert ("rayjobs", NS, "gpt2-demo") in cli.objects
    assert f"fmstack k8s logs gpt2-demo --follow -n {NS}" in result.stdout


def test_submit_waits_for_the_end(cli: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    original = cli.get_namespaced_custom_object

    def finished(*args: Any, **kw: Any) -> dict[str, Any]:
        obj = original(*args, **kw)
        obj["status"] = {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed", "message": "OOM"}
        return obj

    monkeypatch.setattr(cli, "get_namespaced_custom_object", finished)
    result = run("submit", GPT2, "--wait")
    assert result.exit_code == 1
    assert "FAILED" in result.stdout and "OOM" in result.stdout


def test_bad_recipe_exits_2_before_any_api_call(cli: FakeKube, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    recipe = yaml.safe_load((ROOT / "configs/pretrain/gpt2-demo.yaml").read_text())
    recipe["train"]["global_batch_size"] = 15
    bad.write_text(yaml.safe_dump(recipe))
    result = run("submit", str(bad))
    assert result.exit_code == 2
    assert "global_batch_size" in result.stderr and "Traceback" not in result.output
    recipe = yaml.safe_load((ROOT / "configs/distill/minilm-student.yaml").read_text())
    recipe["registry"]["require"] = ["accuracy=0.9"]
    bad.write_text(yaml.safe_dump(recipe))
    result = run("submit", str(bad))
    assert result.exit_code == 2 and "registry.require: bad requirement" in result.stderr
    assert cli.calls == []


@pytest.mark.parametrize(
    "method,status,command,expected",
    [
        (
            "create_namespaced_custom_object",
            403,
            ["submit", "configs/pretrain/gpt2-demo.yaml"],
            "forbidden",
        ),
        ("get_namespaced_custom_object", 404, ["status", "gpt2-demo"], "not found"),
        ("delete_namespaced_custom_object", 404, ["delete", "gpt2-demo"], "not found"),
        ("list_namespaced_custom_object", 500, ["list"], "HTTP 500"),
    ],
)
def test_api_errors_are_one_red_line_and_exit_1(
    cli: FakeKube, method: str, status: int, command: list[str], expected: str
) -> None:
    cli.fail[method] = status
    result = run(*command)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0]
    assert f" {NS}/" in lines[0] and "Traceback" not in result.output


def test_status_and_list_show_the_job(cli: FakeKube) -> None:
    assert run("submit", GPT2).exit_code == 0
    status = run("status", "gpt2-demo")
    assert status.exit_code == 0 and "PENDING" in status.stdout
    listed = run("list")
    assert listed.exit_code == 0 and "gpt2-demo" in listed.stdout


def test_promote_cli_patches_the_service(cli: FakeKube, service: dict[str, Any]) -> None:
    result = run("promote", "fmstack", "full", "2", "--require", "accuracy>=0.8")
    assert result.exit_code == 0, result.output
    assert "sentiment@production: 1 -> 2" in result.stdout
    assert (
        deployments(cli.objects[("rayservices", NS, "fmstack")])["model-full"]["user_config"][
            "version"
        ]
        == 2
    )


def test_promote_refused_exits_3_without_writes(cli: FakeKube, service: dict[str, Any]) -> None:
    result = run("promote", "fmstack", "full", "2", "--require", "accuracy>=0.99")
    assert result.exit_code == 3
    assert "refused" in result.stderr and cli.writes == []


def test_promote_dry_run_from_the_sample_prints_the_patch(
    monkeypatch: pytest.MonkeyPatch, registry: Path
) -> None:
    monkeypatch.setattr(k8s_cli, "make_clients", lambda: pytest.fail("contacted the API"))
    sample = str(ROOT / "k8s/rayservice.fmstack.yaml")
    result = run(
        "promote",
        "fmstack",
        "distilled",
        "1",
        "--dry-run",
        "--from-file",
        sample,
        "--registry",
        str(registry),
    )
    assert result.exit_code == 0, result.output
    patch = yaml.safe_load(result.stdout)
    assert set(patch) == {"spec"} and set(patch["spec"]) == {"serveConfigV2"}
    assert deployments(patch)["model-distilled"]["user_config"]["version"] == 1
    assert Registry(registry).aliases("sentiment-student")["production"] == 1


def test_no_kubeconfig_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = run("list", "-n", NS)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Kubernetes credentials" in lines[0]


def _pods(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    spec = rayjob["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def test_submit_without_a_volume_needs_object_storage_and_secret_credentials(
    monkeypatch: pytest.MonkeyPatch, validate_manifest: Any
) -> None:
    monkeypatch.setattr(k8s_cli, "make_clients", lambda: pytest.fail("contacted the API"))
    recipe = str(ROOT / "configs/finetune/minilm-rotten-tomatoes.yaml")
    base = ["submit", recipe, "--dry-run", "-n", NS, "--claim", ""]

    refused = run(*base)
    assert refused.exit_code == 2 and "checkpoint.storage_path" in refused.output
    runs = ["--set", "checkpoint.storage_path=s3://ml/runs"]
    refused = run(*base, *runs)
    assert refused.exit_code == 2 and "FMSTACK_REGISTRY=s3://" in refused.output
    refused = run(*base, *runs, "--secret-env", "AWS_ACCESS_KEY_ID=no-key-given")
    assert refused.exit_code == 2 and "NAME=SECRET:KEY" in refused.output

    result = run(
        *base,
        *runs,
        "--env",
        "FMSTACK_REGISTRY=s3://ml/registry",
        "--env",
        "AWS_REGION=us-east-1",
        "--secret-env",
        "AWS_ACCESS_KEY_ID=s3-credentials:access-key-id",
        "--service-account",
        "fmstack-jobs",
    )
    assert result.exit_code == 0, result.output
    _, rayjob = yaml.safe_load_all(result.stdout)
    validate_manifest(rayjob)
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    for pod_spec in _pods(rayjob):
        assert pod_spec["serviceAccountName"] == "fmstack-jobs"
        assert not any("persistentVolumeClaim" in v for v in pod_spec["volumes"])
        env = {e["name"]: e for e in pod_spec["containers"][0]["env"]}
        assert env["FMSTACK_REGISTRY"]["value"] == "s3://ml/registry"
        assert env["AWS_REGION"]["value"] == "us-east-1"
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
            "secretKeyRef": {"name": "s3-credentials", "key": "access-key-id"}
        }
    assert "checkpoint.storage_path=s3://ml/runs" in rayjob["spec"]["entrypoint"]

    open_cluster = run(*base, *runs, "--env", "FMSTACK_REGISTRY=s3://r", "--ray-auth", "disabled")
    assert open_cluster.exit_code == 0, open_cluster.output
    _, rayjob = yaml.safe_load_all(open_cluster.stdout)
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "disabled"}
