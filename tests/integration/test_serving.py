"""The Serve application on the shared local Ray cluster, called over HTTP on loopback.

One module-scoped deployment holds two applications: `fmstack` (three variants: a tiny full
classifier, its smaller "student" and a tiny causal LM) and `secure` (auth on). Tiny random
models keep it fast; what is checked is the serving behaviour, not the answers' quality.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from serving import ServeClient, parse_serve_config, serve_config
from tests.conftest import free_port

pytestmark = pytest.mark.integration

TEXTS = [
    "A gripping, beautifully acted film.",
    "Dull, overlong and badly written.",
    "The whale watched the harbour at dawn.",
    "An uneven but often delightful comedy.",
    "I wanted to leave after ten minutes.",
    "Its score is the best thing about it.",
    "Every scene feels like a rehearsal.",
    "Quietly devastating and very funny.",
]
API_KEY, ADMIN_KEY = "test-key", "test-admin-key"


def request(
    base: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    key: str | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def _cascade_threshold(student_dir: Path) -> float:
    """A threshold between the student's scores, so that the cascade escalates about half."""
    from serving.inference import classify_texts
    from training import load_model

    scores = sorted(p["score"] for p in classify_texts(load_model(student_dir), TEXTS, 128))
    mid = len(scores) // 2
    return (scores[mid - 1] + scores[mid]) / 2


@pytest.fixture(scope="module")
def served(ray_cluster, serving_registry, tmp_path_factory):
    from cluster.registry import Registry

    tmp = tmp_path_factory.mktemp("serving")
    keys = tmp / "keys"
    keys.write_text(f"{API_KEY}\n")
    admin_keys = tmp / "admin-keys"
    admin_keys.write_text(f"{ADMIN_KEY}\n")
    registry = Registry(serving_registry)
    threshold = _cascade_threshold(registry.resolve("sentiment-student@production"))
    port = free_port()
    small = {"num_cpus": 0.1, "watch_interval_s": 1}
    main = {
        "registry": str(serving_registry),
        "http": {"host": "127.0.0.1", "port": port},
        "variants": {
            "full": {
                "model": "models:/sentiment@production",
                **small,
                "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.05},
                "autoscaling": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "target_ongoing_requests": 1,
                    "upscale_delay_s": 1,
                    "downscale_delay_s": 3,
                },
            },
            "distilled": {
                "model": "models:/sentiment-student@production",
                **small,
                "batching": {"max_batch_size": 1},
            },
            "lm": {
                "model": "models:/tiny-lm@production",
                **small,
                "max_ongoing_requests": 1,
                "max_queued_requests": 1,
            },
        },
        "routes": {
            "classify": {
                "policy": "cascade",
                "variant": "distilled",
                "fallback": "full",
                "threshold": threshold,
                "shadow": {"variant": "full", "sample": 1.0},
            },
            "embed": {"policy": "weighted", "weights": {"full": 1, "distilled": 1}},
        },
        "limits": {"max_texts": 8, "max_text_chars": 200, "max_new_tokens": 64},
    }
    secure = {
        "name": "secure",
        "route_prefix": "/secure",
        "registry": str(serving_registry),
        "http": main["http"],
        "variants": {
            "distilled": {
                "model": "models:/sentiment-student@production",
                **small,
                "compile": True,
            },
            "shadow": {"model": "models:/sentiment-student@production", **small},
            # Scaled to zero until asked: /readyz must not wake it.
            "spare": {
                "model": "models:/sentiment-student@production",
                **small,
                "autoscaling": {
                    "min_replicas": 0,
                    "max_replicas": 1,
                    "initial_replicas": 0,
                    "upscale_delay_s": 0,
                    "downscale_delay_s": 2,
                },
            },
        },
        # Two ingress replicas, each counting the texts it mirrors to `shadow`.
        "routes": {
            "classify": {
                "policy": "fixed",
                "variant": "distilled",
                "shadow": {"variant": "shadow", "sample": 1.0},
            }
        },
        "ingress_replicas": 2,
        "auth": {"enabled": True, "keys_file": str(keys), "admin_keys_file": str(admin_keys)},
    }
    main_cfg, secure_cfg = parse_serve_config(main), parse_serve_config(secure)
    client = ServeClient(ray_cluster)
    deploy = _deployer(client, main_cfg, secure_cfg)
    deploy({})
    try:
        yield {
            "base": f"http://127.0.0.1:{port}",
            "client": client,
            "config": main_cfg,
            "deploy": deploy,
            "registry": registry,
            "address": ray_cluster,
            "threshold": threshold,
        }
    finally:
        client.delete()


def _deployer(client: ServeClient, main_cfg, secure_cfg):
    """Deploy both applications, `pins` applying to the main one; wait until RUNNING."""

    def deploy(pins: dict[str, int]) -> None:
        combined = serve_config(main_cfg, pins)
        combined["applications"] += serve_config(secure_cfg)["applications"]
        client.deploy(combined)
        for name in ("fmstack", "secure"):
            client.wait(name, timeout_s=300)

    return deploy


def _variant_info(served, variant: str) -> dict[str, Any]:
    return request(served["base"], "/v1/models")[2]["variants"][variant]


# ---------------------------------------------------------------- endpoints


def test_health_readiness_models_and_openapi(served):
    base = served["base"]
    assert request(base, "/healthz")[:3:2] == (200, {"status": "ok"})
    status, _, ready = request(base, "/readyz")
    assert status == 200 and ready["variants"] == ["distilled", "full", "lm"]
    _, _, models = request(base, "/v1/models")
    full = models["variants"]["full"]
    assert full["version"] == "sentiment/1" and full["task"] == "classification"
    assert full["labels"] == ["rotten", "fresh"] and full["metrics"]["accuracy"] == 0.8
    assert full["lineage"]["base_model"] == "tiny-bert"
    assert models["routes"]["classify"]["policy"] == "cascade"
    with urllib.request.urlopen(base + "/openapi.json") as r:
        paths = json.load(r)["paths"]
    assert {"/v1/classify", "/v1/embed", "/v1/generate", "/v1/models"} <= set(paths)


def test_classify_names_the_variant_and_version(served):
    status, headers, body = request(
        served["base"], "/v1/classify", {"texts": TEXTS[:2], "model": "full"}
    )
    assert status == 200 and body["variant"] == "full" and body["version"] == "sentiment/1"
    assert headers["x-fmstack-variant"] == "full"
    for p in body["predictions"]:
        assert p["label"] in ("rotten", "fresh")
        assert p["score"] == max(p["probabilities"].values())
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5


def test_embed_returns_unit_vectors(served):
    status, _, body = request(served["base"], "/v1/embed", {"texts": TEXTS[:3], "model": "full"})
    assert status == 200 and body["dimensions"] == 32 and len(body["embeddings"]) == 3
    for vector in body["embeddings"]:
        assert abs(sum(x * x for x in vector) - 1) < 1e-4
    _, _, raw = request(
        served["base"], "/v1/embed", {"texts": TEXTS[:1], "model": "full", "normalize": False}
    )
    assert abs(sum(x * x for x in raw["embeddings"][0]) - 1) > 1e-3


def test_generate_whole_and_streamed(served):
    base = served["base"]
    body = {"prompt": "The whale", "max_new_tokens": 24, "seed": 1}
    status, _, whole = request(base, "/v1/generate", body)
    assert status == 200 and whole["tokens"] == 24 and whole["finish_reason"] == "length"
    assert whole["variant"] == "lm" and whole["version"] == "tiny-lm/1"

    req = urllib.request.Request(
        base + "/v1/generate",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    events: list[tuple[float, str]] = []
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for line in r:
            if line.startswith(b"data: "):
                events.append((time.monotonic(), line[6:].decode()))
    tokens = [json.loads(data)["token"] for _, data in events[:-1]]
    done = json.loads(events[-1][1])
    assert "".join(tokens) == done["text"] == whole["text"]  # greedy: the same answer
    assert len(tokens) > 5
    # Tokens arrive one by one as they are generated, not all at once at the end.
    arrivals = [t for t, _ in events]
    assert arrivals[-1] - arrivals[0] > 0
    assert len({round(t, 3) for t in arrivals}) > len(arrivals) // 2


# ---------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_with_unbatched_answers(served):
    base = served["base"]
    alone = [
        request(base, "/v1/classify", {"texts": [t], "model": "full"})[2]["predictions"][0]
        for t in TEXTS
    ]
    before = _variant_info(served, "full")["max_batch_size_seen"]
    with ThreadPoolExecutor(len(TEXTS)) as pool:
        together = list(
            pool.map(
                lambda t: request(base, "/v1/classify", {"texts": [t], "model": "full"}), TEXTS
            )
        )
    assert all(status == 200 for status, _, _ in together)
    for single, (_, _, body) in zip(alone, together, strict=True):
        batched = body["predictions"][0]
        assert batched["label"] == single["label"]
        for name, p in single["probabilities"].items():
            assert abs(batched["probabilities"][name] - p) < 1e-4
    info = _variant_info(served, "full")
    assert max(before, info["max_batch_size_seen"]) > 1
    assert info["batched_requests"] > info["batches"]  # some batch held more than one request


# ---------------------------------------------------------------- routing


def test_cascade_answers_confident_texts_with_the_student(served):
    base, threshold = served["base"], served["threshold"]
    student = request(base, "/v1/classify", {"texts": TEXTS, "model": "distilled"})[2]
    full = request(base, "/v1/classify", {"texts": TEXTS, "model": "full"})[2]
    status, _, cascade = request(base, "/v1/classify", {"texts": TEXTS})
    assert status == 200 and cascade["variant"] == "distilled"
    escalated = 0
    for s, f, c in zip(
        student["predictions"], full["predictions"], cascade["predictions"], strict=True
    ):
        if s["score"] >= threshold:
            assert c["variant"] == "distilled" and c["label"] == s["label"]
        else:
            escalated += 1
            assert c["variant"] == "full" and c["label"] == f["label"]
    assert cascade["escalated"] == escalated and 0 < escalated < len(TEXTS)


def test_shadow_compares_off_the_request_path(served):
    base = served["base"]
    before = request(base, "/v1/models")[2]["shadow"].get("full", {"requests": 0})["requests"]
    answers = [request(base, "/v1/classify", {"texts": TEXTS[:2]})[2] for _ in range(5)]
    assert all(a["variant"] == "distilled" for a in answers)  # the shadow never answers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = request(base, "/v1/models")[2]["shadow"].get("full", {})
        if stats.get("requests", 0) >= before + 5 and stats["texts"] >= 10:
            break
        time.sleep(0.2)
    assert stats["requests"] >= before + 5 and 0 <= stats["agreed"] <= stats["texts"]
    assert stats["errors"] == 0


def test_weighted_split_lands_within_tolerance(served):
    base = served["base"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: request(base, "/v1/embed", {"texts": ["hi"]})[2], range(120))
        )
    share = sum(a["variant"] == "full" for a in answers) / len(answers)
    assert 0.35 < share < 0.65  # 1:1 weights; 120 draws: 4.5 standard deviations either way


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("path", "body", "raw", "status", "kind"),
    [
        ("/v1/classify", {"texts": []}, None, 422, "invalid_request"),
        ("/v1/classify", {"texts": ["a"] * 9}, None, 413, "too_many_texts"),
        ("/v1/classify", {"texts": ["x" * 201]}, None, 413, "text_too_long"),
        ("/v1/classify", {"texts": "not a list"}, None, 422, "invalid_request"),
        ("/v1/classify", {"texts": [1, 2]}, None, 422, "invalid_request"),
        ("/v1/classify", {"texts": ["a"], "model": "huge"}, None, 400, "unknown_variant"),
        ("/v1/classify", {"texts": ["a"], "temperature": 1}, None, 422, "invalid_request"),
        ("/v1/classify", None, b'{"texts": ["a",', 400, "invalid_request"),
        ("/v1/classify", None, b'{"texts": ["\xff\xfe"]}', 400, "invalid_request"),
        ("/v1/classify", None, b'{"texts": ["a \\ud800"]}', 422, "invalid_request"),
        ("/v1/embed", None, b'{"texts": ["\\udfff"]}', 422, "invalid_request"),
        ("/v1/generate", None, b'{"prompt": "hi", "stop": ["\\ud83d"]}', 422, "invalid_request"),
        ("/v1/generate", {"prompt": "hi", "seed": 2**70}, None, 422, "invalid_request"),
        ("/v1/generate", {"prompt": "hi", "model": "full"}, None, 400, "wrong_task"),
        ("/v1/generate", {"prompt": "hi", "max_new_tokens": 65}, None, 422, "invalid_request"),
        ("/v1/generate", {"prompt": "hi", "top_p": 0}, None, 422, "invalid_request"),
        ("/v1/nowhere", {"texts": ["a"]}, None, 404, "not_found"),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what_to_fix(served, path, body, raw, status, kind):
    got, _, answer = request(served["base"], path, body, raw=raw)
    assert got == status, answer
    assert answer["error"]["type"] == kind and answer["error"]["message"]


def test_a_body_that_is_not_json_by_its_type_is_a_415(served):
    req = urllib.request.Request(
        served["base"] + "/v1/classify", data=b'{"texts": ["a"]}', method="POST"
    )
    req.add_header("Content-Type", "text/plain")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 415
    answer = json.loads(refused.value.read())
    assert answer["error"]["type"] == "unsupported_media_type"
    assert "application/json" in answer["error"]["message"]


def test_over_capacity_is_a_503_with_retry_after(served):
    base = served["base"]
    body = {"prompt": "The whale", "max_new_tokens": 64}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: request(base, "/v1/generate", body), range(8)))
    statuses = sorted(status for status, _, _ in answers)
    assert 200 in statuses and 503 in statuses and set(statuses) == {200, 503}
    status, headers, refused = next(a for a in answers if a[0] == 503)
    assert refused["error"]["type"] == "over_capacity" and headers["retry-after"] == "1"
    assert request(base, "/v1/generate", body)[0] == 200


def test_server_stays_healthy_after_bad_input(served):
    base = served["base"]
    for raw in (b"\x00\x01", b"[]", b'{"texts": null}'):
        assert 400 <= request(base, "/v1/classify", raw=raw)[0] < 500
    assert request(base, "/readyz")[0] == 200
    assert request(base, "/v1/classify", {"texts": ["fine"]})[0] == 200


def test_a_variant_scaled_to_zero_loads_on_demand(served):
    """`/readyz` leaves a `min_replicas: 0` variant asleep; `/v1/models` answers without
    waiting for it; a request names it and is answered once a replica has started. The
    application runs two ingress replicas."""
    from serving.app import INFO_TIMEOUT_S, INGRESS

    base = served["base"] + "/secure"
    assert _replicas(served, INGRESS, app="secure") == 2
    status, _, ready = request(base, "/readyz")
    assert status == 200 and ready["variants"] == ["distilled", "shadow"]
    assert ready["on_demand"] == ["spare"]
    assert _replicas(served, "model-spare", app="secure") == 0

    started = time.monotonic()
    status, _, models = request(base, "/v1/models", key=API_KEY)
    assert status == 200 and time.monotonic() - started < INFO_TIMEOUT_S + 5
    spare = models["variants"]["spare"]
    # The call above woke the variant; its replica may have loaded within the limit.
    assert spare["loaded"] or f"within {INFO_TIMEOUT_S:g} s" in spare["last_error"]

    body = {"texts": ["a fine film"], "model": "spare"}
    status, _, answer = request(base, "/v1/classify", body, key=API_KEY, timeout=120)
    assert status == 200 and answer["variant"] == "spare"
    assert request(base, "/readyz")[0] == 200


def test_auth_guards_v1_but_not_health(served):
    base = served["base"] + "/secure"
    body = {"texts": ["a fine film"]}
    assert request(base, "/healthz")[0] == 200
    status, headers, answer = request(base, "/v1/classify", body)
    assert status == 401 and headers.get("www-authenticate") == "Bearer"
    assert "Authorization: Bearer" in answer["error"]["message"]
    assert request(base, "/v1/classify", body, key="wrong")[0] == 401
    assert request(base, "/v1/classify", body, key=API_KEY)[0] == 200
    assert request(base, "/v1/models", key=ADMIN_KEY)[0] == 200
    promote = {"model": "sentiment-student", "version": 1}
    assert request(base, "/v1/admin/promote", promote, key=API_KEY)[0] == 403
    status, _, moved = request(base, "/v1/admin/promote", promote, key=ADMIN_KEY)
    assert status == 200 and moved == {
        "model": "sentiment-student",
        "version": 1,
        "alias": "production",
    }
    # The main application has auth off.
    assert request(served["base"], "/v1/classify", body)[0] == 200


def test_a_compiled_variant_answers_as_the_eager_model(served):
    """`secure`'s distilled variant runs through torch.compile; its probabilities are those of
    the same registry version run eagerly."""
    from training import classify, load_model

    base = served["base"] + "/secure"
    status, _, models = request(base, "/v1/models", key=API_KEY)
    distilled = models["variants"]["distilled"]
    assert status == 200 and distilled["compiled"] is True, distilled["compile_error"]
    status, _, answer = request(base, "/v1/classify", {"texts": TEXTS}, key=API_KEY)
    assert status == 200 and answer["variant"] == "distilled"
    name, version = answer["version"].split("/")
    eager = load_model(served["registry"].resolve(f"{name}@{version}"))
    expected = classify(eager, TEXTS)
    for row, probs in zip(answer["predictions"], expected, strict=True):
        got = [row["probabilities"][label] for label in eager.label_names]
        assert max(abs(g - p) for g, p in zip(got, probs, strict=True)) < 1e-4


def test_shadow_counts_total_every_ingress_replica(served):
    """Whichever of the two ingress replicas answers `/v1/models`, it reports the shadow
    requests that both of them mirrored."""
    base = served["base"] + "/secure"

    def mirrored() -> int:
        return (
            request(base, "/v1/models", key=API_KEY)[2]["shadow"]
            .get("shadow", {})
            .get("requests", 0)
        )

    before = max(mirrored() for _ in range(4))
    body = {"texts": ["a fine film"]}
    for _ in range(12):
        status, _, answer = request(base, "/v1/classify", body, key=API_KEY)
        assert status == 200 and answer["variant"] == "distilled"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = [mirrored() for _ in range(6)]
        if min(seen) >= before + 12:
            break
        time.sleep(0.2)
    assert min(seen) >= before + 12, seen


# ---------------------------------------------------------------- autoscaling and recovery


def _replicas(served, deployment: str, app: str = "fmstack") -> int:
    details = served["client"].details()
    replicas = details["applications"][app]["deployments"][deployment]["replicas"]
    return sum(r["state"] == "RUNNING" for r in replicas)


class Traffic:
    """Bounded background traffic: `workers` clients until stopped (or `limit_s`)."""

    def __init__(self, base: str, body: dict, workers: int = 4, limit_s: float = 120) -> None:
        self.results: list[tuple[int, Any]] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit_s
        self._threads = [
            threading.Thread(target=self._run, args=(base, body), daemon=True)
            for _ in range(workers)
        ]

    def _run(self, base: str, body: dict) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                status, _, answer = request(base, "/v1/classify", body, timeout=30)
            except OSError as err:
                status, answer = 0, str(err)
            except ValueError as err:  # a body that is not JSON
                status, answer = -1, str(err)
            self.results.append((status, answer))

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    @property
    def failures(self) -> list[tuple[int, Any]]:
        return [r for r in self.results if r[0] != 200]


def _wait(condition, timeout: float, what: str, state=None) -> None:
    """Wait for `condition`; a timeout says what was awaited and, given `state`, what it saw."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    seen = f" ({state()})" if state else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{seen}")


def test_load_scales_replicas_up_and_back_down(served):
    assert _replicas(served, "model-full") == 1
    with Traffic(served["base"], {"texts": TEXTS, "model": "full"}, workers=8) as traffic:
        _wait(lambda: _replicas(served, "model-full") >= 2, 90, "a second replica")
    assert not traffic.failures
    _wait(lambda: _replicas(served, "model-full") == 1, 90, "scaling back to one replica")


def test_promotion_under_traffic_fails_no_request(served):
    from cluster.cli import app

    body = {"texts": TEXTS[:2], "model": "full"}
    with Traffic(served["base"], body) as traffic:
        time.sleep(1)
        result = CliRunner().invoke(
            app,
            [
                "serve",
                "promote",
                "full",
                "2",
                "--address",
                served["address"],
                "--require",
                "accuracy>=0.75",
            ],
        )
        assert result.exit_code == 0, result.output
        assert "full now serves sentiment/2" in result.output
        time.sleep(2)
    assert traffic.results and not traffic.failures
    versions = [answer["version"] for _, answer in traffic.results]
    assert versions[0] == "sentiment/1" and versions[-1] == "sentiment/2"
    assert served["registry"].aliases("sentiment")["production"] == 2


def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(served):
    from cluster.cli import app

    registry = served["registry"]
    source = registry.resolve("sentiment@1")
    broken = registry.register(source, "sentiment")
    weights = Path(broken.uri) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # a truncated upload
    promote = [
        "serve",
        "promote",
        "full",
        str(broken.version),
        "--address",
        served["address"],
    ]
    result = CliRunner().invoke(app, promote)
    assert result.exit_code == 3 and "refused" in result.output
    assert registry.aliases("sentiment")["production"] == 2

    # Forced past the CLI's check, the replicas refuse it too and keep serving version 2.
    body = {"texts": TEXTS[:2], "model": "full"}
    with Traffic(served["base"], body, workers=2) as traffic:
        served["deploy"]({"full": broken.version})
        _wait(
            lambda: (
                f"version {broken.version}:" in (_variant_info(served, "full")["last_error"] or "")
            ),
            60,
            "the replica to report the failed load",
        )
    assert not traffic.failures
    assert {answer["version"] for _, answer in traffic.results} == {"sentiment/2"}
    info = _variant_info(served, "full")
    assert info["version"] == "sentiment/2" and "checksum" in info["last_error"].lower()
    served["deploy"]({"full": 2})


def test_alias_moves_are_followed_in_place(served):
    """`fmstack models promote` alone: replicas watching the alias reload it."""
    served["registry"].promote("sentiment", 1, "production")
    _wait(lambda: _variant_info(served, "full")["version"] == "sentiment/1", 30, "sentiment/1")


def test_a_killed_replica_is_replaced(served):
    import ray

    actors = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA") and "fmstack#model-distilled" in a["name"]
    ]
    assert len(actors) == 1
    body = {"texts": TEXTS[:1], "model": "distilled"}

    def recovered() -> bool:
        return (
            _replicas(served, "model-distilled") == 1
            and request(served["base"], "/v1/classify", body)[0] == 200
        )

    with Traffic(served["base"], body, workers=2) as traffic:  # killed while answering
        time.sleep(1)
        ray.kill(
            ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True
        )
        time.sleep(1)
        _wait(recovered, 120, "a replacement replica")
    # The requests the dead replica held were sent again and answered by its replacement.
    assert len(traffic.results) > 4
    assert traffic.failures == []
    results = [request(served["base"], "/v1/classify", body)[0] for _ in range(10)]
    assert results == [200] * 10


# ---------------------------------------------------------------- metrics


def _metrics_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _fmstack_series(text: str) -> str:
    """The exposition lines of fmstack's series (HELP, TYPE, samples), without the labels that
    Ray's agent adds to every application metric (SessionName, WorkerId, ...: CamelCase, which
    promtool's lint rejects, and not fmstack's to name)."""
    import re

    keep = []
    for line in text.splitlines():
        name = line.split()[2] if line.startswith("# ") and len(line.split()) > 2 else line
        if name.startswith("ray_fmstack_"):
            keep.append(re.sub(r'[A-Z]\w*="[^"]*",?', "", line).replace(",}", "}"))
    return "\n".join(keep) + "\n"


def test_serving_metrics_reach_a_real_prometheus(served, prometheus):
    import subprocess

    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    target = f"127.0.0.1:{node['MetricsExportPort']}"
    for model in ("full", "distilled", "auto"):
        assert (
            request(served["base"], "/v1/classify", {"texts": TEXTS[:2], "model": model})[0] == 200
        )
    request(served["base"], "/v1/classify", {"texts": []})
    wanted = ("requests_total", "texts_total", "request_seconds", "batch_size", "model_loaded_info")
    _wait(
        lambda: all(
            f"ray_fmstack_serve_{m}" in _metrics_text(f"http://{target}/metrics") for m in wanted
        ),
        60,
        "Ray's agent to export the serving metrics",
    )
    ours = _fmstack_series(_metrics_text(f"http://{target}/metrics"))
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=ours, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # Ray's agent, serving every metric of a long-lived cluster, may take over a second to answer
    # on a busy machine; a scrape fails when it takes longer than the interval.
    base = prometheus([target], interval="5s")

    def query(expr: str) -> list[dict]:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)["data"]["result"]

    def scrapes() -> str:
        with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=10) as r:
            targets = json.load(r)["data"]["activeTargets"]
        return "; ".join(
            f"{t['scrapeUrl']} {t['health']} in {t['lastScrapeDuration']:.2f} s {t['lastError']}"
            for t in targets
        )

    expr = 'sum by (variant, status) (fmstack_serve_requests_total{route="classify"})'
    _wait(lambda: query(expr), 60, "Prometheus to scrape fmstack_serve_requests_total", scrapes)
    statuses = {(s["metric"]["variant"], s["metric"]["status"]) for s in query(expr)}
    assert {("distilled", "200"), ("full", "200"), ("none", "422")} <= statuses
    loaded = query("fmstack_serve_model_loaded_info == 1")
    assert {s["metric"]["variant"] for s in loaded} >= {"full", "distilled", "lm"}
