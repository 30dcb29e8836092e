"""Serving without Ray: the config, routing policies, the Serve config, auth, generation."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from serving import parse_serve_config, serve_config
from serving.auth import AuthError, Keys
from serving.config import AuthConfig, load_serve_config
from serving.routing import UnknownVariant, needs_fallback, pick_variant, should_shadow
from training import RecipeError

CONFIGS = sorted(Path("configs/serve").glob("*.yaml"))


def config(**extra):
    data = {
        "variants": {
            "full": {"model": "models:/sentiment@production"},
            "distilled": {"model": "models:/sentiment-student@production"},
        }
    }
    return parse_serve_config({**data, **extra})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_serving_configs_validate(path):
    cfg = load_serve_config(path)
    assert cfg.variants


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"classify": {"policy": "fixed", "variant": "nope"}}, "routes.classify names nope"),
        ({"classify": {"policy": "cascade", "variant": "distilled"}}, "needs `fallback`"),
        ({"classify": {"policy": "weighted"}}, "needs `weights`"),
        ({"classify": {"policy": "weighted", "weights": {"full": 0}}}, "must not all be zero"),
        ({"summarize": {"variant": "full"}}, "routes.summarize"),
        (
            {"embed": {"policy": "cascade", "variant": "distilled", "fallback": "full"}},
            "routes.embed: policy cascade .* classify only",
        ),
        (
            {"generate": {"variant": "full", "shadow": {"variant": "distilled"}}},
            "routes.generate.shadow: .* classify only",
        ),
    ],
)
def test_bad_routes_name_the_key(routes, message):
    with pytest.raises(RecipeError, match=message):
        config(routes=routes)


def test_compile_is_refused_with_int8():
    with pytest.raises(RecipeError, match="variants.a: compile: dynamic int8 layers"):
        config(variants={"a": {"model": "x", "dtype": "int8", "compile": True}})
    assert config(variants={"a": {"model": "x", "compile": True}}).variants["a"].compile


def test_autoscaling_bounds_are_checked():
    with pytest.raises(RecipeError, match="max_replicas .* at least min_replicas"):
        parse_serve_config({"variants": {"a": {"model": "x", "autoscaling": {"min_replicas": 3}}}})
    with pytest.raises(RecipeError, match="downscale_to_zero_delay_s applies to min_replicas: 0"):
        config(variants={"a": {"model": "x", "autoscaling": {"downscale_to_zero_delay_s": 5}}})


def test_autoscaling_settings_left_unset_keep_serves_defaults():
    from ray.serve.schema import ServeDeploySchema

    tuned = {"min_replicas": 0, "downscale_to_zero_delay_s": 60, "look_back_period_s": 5}
    tuned |= {"upscaling_factor": 2.0, "downscaling_factor": 0.5}
    built = serve_config(config(variants={"a": {"model": "x", "autoscaling": tuned}}))
    app = ServeDeploySchema.model_validate(built).applications[0]
    (deployment,) = [d for d in app.deployments if d.name == "model-a"]
    autoscaling = dict(deployment.autoscaling_config)
    assert {key: autoscaling[key] for key in tuned} == tuned
    plain = serve_config(config(variants={"a": {"model": "x"}}))["applications"][0]
    (options,) = [d for d in plain["deployments"] if d["name"] == "model-a"]
    assert set(options["autoscaling_config"]) == {
        "min_replicas",
        "max_replicas",
        "target_ongoing_requests",
        "upscale_delay_s",
        "downscale_delay_s",
    }


def test_fixed_and_requested_variants():
    cfg = config(routes={"classify": {"policy": "fixed", "variant": "distilled"}})
    route, rng, known = cfg.routes["classify"], random.Random(0), list(cfg.variants)
    assert pick_variant(route, None, known, rng) == "distilled"
    assert pick_variant(route, "auto", known, rng) == "distilled"
    assert pick_variant(route, "full", known, rng) == "full"
    with pytest.raises(UnknownVariant, match="unknown variant 'big'; use one of full, distilled"):
        pick_variant(route, "big", known, rng)


def test_weighted_split_lands_within_tolerance():
    cfg = config(
        routes={"classify": {"policy": "weighted", "weights": {"full": 9, "distilled": 1}}}
    )
    route, rng = cfg.routes["classify"], random.Random(0)
    picks = [pick_variant(route, None, ["full", "distilled"], rng) for _ in range(10_000)]
    assert abs(picks.count("distilled") / len(picks) - 0.1) < 0.01


def test_cascade_escalates_only_unsure_auto_requests():
    cfg = config(
        routes={
            "classify": {
                "policy": "cascade",
                "variant": "distilled",
                "fallback": "full",
                "threshold": 0.8,
            }
        }
    )
    route = cfg.routes["classify"]
    assert needs_fallback(route, None, 0.79)
    assert not needs_fallback(route, None, 0.8)
    assert not needs_fallback(route, "distilled", 0.5)  # an explicit variant is never overruled


def test_shadow_samples_and_never_mirrors_to_itself():
    cfg = config(
        routes={
            "classify": {
                "policy": "fixed",
                "variant": "full",
                "shadow": {"variant": "distilled", "sample": 0.25},
            }
        }
    )
    route, rng = cfg.routes["classify"], random.Random(0)
    mirrored = sum(should_shadow(route, "full", rng) for _ in range(4000))
    assert 900 < mirrored < 1100
    assert not any(should_shadow(route, "distilled", rng) for _ in range(100))


def test_shadow_ledger_totals_every_ingress_replica():
    from serving.app import ShadowLedger

    ledger = ShadowLedger.func_or_class()  # the class behind the Serve deployment
    ledger.record("candidate", {"requests": 1, "texts": 2, "agreed": 2})  # one ingress replica
    ledger.record("candidate", {"requests": 1, "texts": 3, "agreed": 1})  # another
    ledger.record("candidate", {"requests": 1, "errors": 1})
    assert ledger.totals() == {"candidate": {"requests": 3, "texts": 5, "agreed": 3, "errors": 1}}


def test_serve_config_pins_only_change_user_config():
    """A promotion changes user_config and nothing Serve hashes into the code version, so
    Serve reconfigures the running replicas instead of replacing them."""
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeDeploySchema

    cfg = config(registry="/tmp/registry")
    before = serve_config(cfg)
    after = serve_config(cfg, {"full": 2})
    apps = [ServeDeploySchema.model_validate(c).applications[0] for c in (before, after)]
    assert get_app_code_version(apps[0]) == get_app_code_version(apps[1])
    deployments = {d["name"]: d for d in after["applications"][0]["deployments"]}
    assert deployments["model-full"]["user_config"]["version"] == 2
    assert deployments["model-distilled"]["user_config"]["version"] is None
    assert set(deployments) == {"Ingress", "model-full", "model-distilled"}
    assert parse_serve_config(after["applications"][0]["args"]) == cfg
    with pytest.raises(ValueError, match="unknown variant big"):
        serve_config(cfg, {"big": 1})


def test_actor_options_and_ingress_replicas_reach_serve():
    cfg = config(
        ingress_replicas=2,
        variants={
            "full": {
                "model": "x",
                "num_cpus": 2,
                "ray_actor_options": {
                    "memory": 2**30,
                    "resources": {"inference": 1},
                    "env_vars": {"AWS_REGION": "eu-west-1"},
                },
            },
            "distilled": {"model": "y"},
        },
    )
    from ray.serve.schema import ServeDeploySchema

    from serving.app import MODEL_REPLICA_ENV

    built = serve_config(cfg)
    ServeDeploySchema.model_validate(built)  # what `serve deploy` and a RayService accept
    deployments = {d["name"]: d for d in built["applications"][0]["deployments"]}
    assert deployments["Ingress"]["num_replicas"] == 2
    full = deployments["model-full"]["ray_actor_options"]
    assert full["num_cpus"] == 2 and full["memory"] == 2**30
    assert full["resources"] == {"inference": 1}
    # The user's variables join the replicas' own.
    assert full["runtime_env"]["env_vars"] == {**MODEL_REPLICA_ENV, "AWS_REGION": "eu-west-1"}
    assert set(deployments["model-distilled"]["ray_actor_options"]) == {
        "num_cpus",
        "num_gpus",
        "runtime_env",
    }
    with pytest.raises(RecipeError, match="ray_actor_options.runtime_env"):
        config(variants={"a": {"model": "x", "ray_actor_options": {"runtime_env": {}}}})


def test_logging_reaches_serve_only_where_set():
    from ray.serve.schema import ServeDeploySchema

    quiet = serve_config(config(logging={"level": "WARNING", "access_log": False}))
    (app,) = ServeDeploySchema.model_validate(quiet).applications
    assert app.logging_config.log_level == "WARNING"
    assert app.logging_config.enable_access_log is False
    assert "logging_config" not in serve_config(config())["applications"][0]
    with pytest.raises(RecipeError, match="logging.level"):
        config(logging={"level": "LOUD"})


def test_keys_from_env_and_file(tmp_path, monkeypatch):
    secret = tmp_path / "keys"
    secret.write_text("# mounted secret\nfile-key\n")
    monkeypatch.setenv("FMSTACK_API_KEYS", "env-key, other")
    monkeypatch.setenv("FMSTACK_ADMIN_KEYS", "admin-key")
    keys = Keys.from_config(AuthConfig(enabled=True, keys_file=str(secret)))
    for good in ("env-key", "other", "file-key", "admin-key"):
        keys.check(f"Bearer {good}", admin=False)
    keys.check("bearer admin-key", admin=True)
    for header, status in [
        (None, 401),
        ("Bearer ", 401),
        ("Basic env-key", 401),
        ("Bearer wrong", 401),
        ("Bearer # mounted secret", 401),
    ]:
        with pytest.raises(AuthError) as err:
            keys.check(header, admin=False)
        assert err.value.status == status
    with pytest.raises(AuthError) as err:
        keys.check("Bearer env-key", admin=True)
    assert err.value.status == 403
    Keys.from_config(AuthConfig(enabled=False)).check(None, admin=True)


def test_auth_without_keys_refuses_to_start(monkeypatch):
    monkeypatch.delenv("FMSTACK_API_KEYS", raising=False)
    monkeypatch.delenv("FMSTACK_ADMIN_KEYS", raising=False)
    with pytest.raises(ValueError, match="no keys were found"):
        Keys.from_config(AuthConfig(enabled=True))


@pytest.fixture(scope="module")
def tiny_lm(tiny_causal_lm_dir):
    from training import load_model

    return load_model(tiny_causal_lm_dir)


def test_generation_streams_what_it_returns_and_honours_limits(tiny_lm):
    from serving.inference import Generation

    gen = Generation(tiny_lm, "The whale", max_new_tokens=12, temperature=0.8, seed=3)
    pieces = list(gen)
    assert "".join(pieces) == gen.text
    assert gen.tokens == 12 and gen.finish_reason == "length"
    again = Generation(tiny_lm, "The whale", max_new_tokens=12, temperature=0.8, seed=3)
    assert "".join(again) == gen.text  # a seed makes sampling reproducible


def test_generation_cuts_at_a_stop_string(tiny_lm):
    from serving.inference import Generation

    free = Generation(tiny_lm, "Call me", max_new_tokens=16)
    text = "".join(free)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip()
    cut = Generation(tiny_lm, "Call me", max_new_tokens=16, stop=[stop])
    assert "".join(cut) == cut.text == text[: text.find(stop)]
    assert cut.finish_reason == "stop"


def scripted_generation(pieces: list[bytes], **options):
    """A `Generation` whose model emits one token per entry of `pieces` (then EOS) and whose
    tokenizer decodes tokens to those bytes, as byte-level tokenizers do."""
    from types import SimpleNamespace

    import torch

    from serving.inference import Generation
    from training import LoadedModel

    eos = len(pieces)

    class Tokenizer:
        eos_token_id = eos

        def __call__(self, text, return_tensors):
            return {"input_ids": torch.tensor([[eos]])}

        def decode(self, ids, skip_special_tokens):
            return b"".join(pieces[i] for i in ids).decode(errors="replace")

    script = iter(range(eos + 1))

    def model(input_ids, cache, use_cache):
        return SimpleNamespace(logits=torch.eye(eos + 1)[next(script)][None, None], cache=None)

    loaded = LoadedModel(model, Tokenizer(), "causal_lm", [], {}, Path("scripted"))
    return Generation(loaded, "prompt", **options)


def test_generation_holds_back_a_stop_string_that_spans_tokens():
    tokens = [b"A", b"B", b"\n", b"U", b":", b"C"]
    gen = scripted_generation(tokens, max_new_tokens=9, stop=["\nU:"])
    assert "".join(gen) == gen.text == "AB"
    assert gen.finish_reason == "stop" and gen.tokens == 5


def test_generation_releases_held_back_text_that_is_no_stop_string():
    gen = scripted_generation([b"A", b"\n", b"X", b"B"], max_new_tokens=9, stop=["\nU:"])
    pieces = list(gen)
    assert pieces == ["A", "\nX", "B"]
    assert "".join(pieces) == gen.text == "A\nXB" and gen.finish_reason == "stop"  # EOS


def test_generation_that_ends_by_length_returns_held_back_text():
    gen = scripted_generation([b"A", b"\n", b"U", b":"], max_new_tokens=3, stop=["\nU:"])
    assert "".join(gen) == gen.text == "A\nU"
    assert gen.finish_reason == "length"


def test_generation_returns_multi_byte_characters_whole():
    whale = "🐋".encode()
    gen = scripted_generation([b"A", whale[:2], whale[2:], b"B"], max_new_tokens=9)
    assert list(gen) == ["A", "🐋", "B"]
    assert gen.text == "A🐋B"


def test_promotion_pins_one_deployment_of_the_running_config():
    from serving import running_serve_config, with_pinned_version

    deployed = serve_config(config(registry="/tmp/registry"))
    app = deployed["applications"][0]
    details = {
        "http_options": deployed["http_options"],
        "applications": {"fmstack": {"deployed_app_config": app}, "other": {}},
    }
    running = running_serve_config(details)
    assert running["applications"] == [app]
    pinned = with_pinned_version(running, "fmstack", "model-distilled", 4)
    users = {d["name"]: d.get("user_config") for d in pinned["applications"][0]["deployments"]}
    assert users["model-distilled"]["version"] == 4 and users["model-full"]["version"] is None
    assert app["deployments"][2]["user_config"]["version"] is None  # the input is unchanged
    with pytest.raises(LookupError, match="no deployment model-big"):
        with_pinned_version(running, "fmstack", "model-big", 1)


def test_batch_gate_holds_requests_while_a_batch_runs():
    import asyncio

    from serving.model_server import BatchGate

    class Batcher:
        def set_batch_wait_timeout_s(self, seconds: float) -> None:
            events.append(f"wait {seconds}")

    events: list[str] = []

    async def scenario() -> None:
        gate = BatchGate(Batcher(), wait_s=0.005)
        await asyncio.wait_for(gate.admit(), 1)  # idle: admitted at once

        async def request(name: str) -> None:
            await gate.admit()
            events.append(f"admitted {name}")

        async with gate.running(3):
            waiting = [asyncio.create_task(request(n)) for n in ("a", "b")]
            await asyncio.sleep(0.05)
            events.append("batch done")
        await asyncio.wait_for(asyncio.gather(*waiting), 1)
        async with gate.running(2):  # nothing held: the configured wait again
            pass

    asyncio.run(scenario())
    # What was held forms the next batch at once.
    assert events == ["batch done", "wait 0.0", "admitted a", "admitted b", "wait 0.005"]


def test_batch_gate_stops_waiting_at_a_quiet_replica_until_requests_meet_again():
    from serving.model_server import BatchGate

    class Batcher:
        def set_batch_wait_timeout_s(self, seconds: float) -> None:
            waits.append(seconds)

    waits: list[float] = []

    async def scenario() -> None:
        gate = BatchGate(Batcher(), wait_s=0.005)
        for requests in [1] * BatchGate.QUIET_BATCHES + [1, 4, 1]:
            async with gate.running(requests):
                pass

    asyncio.run(scenario())
    quiet = BatchGate.QUIET_BATCHES
    # Requests that keep running alone stop waiting for company; one that has company waits again.
    assert waits == [0.005] * (quiet - 1) + [0.0, 0.0, 0.005, 0.005]


def test_compute_thread_runs_passes_on_one_thread_and_loads_on_their_own():
    import threading

    from serving.model_server import ComputeThread

    def where() -> tuple[int, threading.Thread]:
        return threading.get_ident(), threading.current_thread()

    async def scenario() -> tuple[list[int], threading.Thread]:
        compute = ComputeThread("test")
        # Passes submitted together still run one after another on the same thread.
        passes = await asyncio.gather(*(compute.run(where) for _ in range(8)))
        _, loader = await compute.run_once(where)
        return [ident for ident, _ in passes], loader

    passes, loader = asyncio.run(scenario())
    assert len(set(passes)) == 1
    assert loader.ident not in passes
    loader.join(timeout=5)  # ends with its load, taking its OpenMP team with it
    assert not loader.is_alive()


def test_int8_variant_quantizes_linear_layers_and_keeps_the_answers(tmp_path):
    import torch

    from serving.inference import classify_texts
    from serving.model_server import load_served
    from tests.conftest import export_tiny_classifier

    path = str(export_tiny_classifier(tmp_path / "tiny", seed=0))
    texts = ["a gripping film", "dull and far too long", "fine"]
    full = load_served(path, None, None, "float32")
    int8 = load_served(path, None, None, "int8")
    modules = list(int8.loaded.model.modules())
    assert any("quantized" in type(m).__module__ for m in modules)
    assert not any(isinstance(m, torch.nn.Linear) for m in modules)
    for a, b in zip(
        classify_texts(full.loaded, texts, 64), classify_texts(int8.loaded, texts, 64), strict=True
    ):
        assert abs(a["probabilities"]["fresh"] - b["probabilities"]["fresh"]) < 0.05


@pytest.fixture
def outside_a_replica(monkeypatch):
    """Serve's batcher asks for its deployment's config, which only a replica has: stand in."""
    from types import SimpleNamespace

    from ray import serve

    replica = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: replica)


def test_model_server_batches_requests_that_arrive_during_a_forward_pass(
    tmp_path, monkeypatch, outside_a_replica
):
    """Requests arriving one by one while a slow forward pass runs form one batch after it,
    not a queue of batches of one (Serve's batcher alone forms them while a batch runs)."""
    import asyncio
    import time

    from serving import model_server
    from tests.conftest import export_tiny_classifier

    path = str(export_tiny_classifier(tmp_path / "tiny", seed=0))
    real = model_server.classify_texts

    def slow_classify(*args, **kwargs):
        time.sleep(0.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_server, "classify_texts", slow_classify)

    async def scenario() -> dict:
        server = model_server.ModelServer("full", None)
        await server.reconfigure(
            {"model": path, "threads": 1, "max_batch_size": 32, "batch_wait_timeout_s": 0.005}
        )

        async def request(delay: float) -> dict:
            await asyncio.sleep(delay)
            return await server.classify(["a gripping film"])

        answers = await asyncio.gather(*(request(0.01 * i) for i in range(24)))
        assert all(a["result"][0]["label"] == answers[0]["result"][0]["label"] for a in answers)
        gated = server.info()

        # The batch wait lets requests at a quiet replica batch; requests that queued behind a
        # forward pass start as soon as it ends. (One event loop for both parts: Serve's batch
        # queue stays with the loop that first used it.)
        await server.reconfigure(
            {"model": path, "threads": 1, "max_batch_size": 32, "batch_wait_timeout_s": 1.0}
        )
        start = time.perf_counter()
        first = asyncio.create_task(server.classify(["a gripping film"]))
        await asyncio.sleep(1.05)  # the lone request waited 1 s for company and now runs
        held = [asyncio.create_task(server.classify(["dull"])) for _ in range(3)]
        await first
        first_done = time.perf_counter() - start
        await asyncio.gather(*held)
        assert first_done >= 1.0
        assert time.perf_counter() - start - first_done < 0.6  # one 0.1 s pass, no 1 s wait
        return gated

    info = asyncio.run(scenario())
    assert info["batched_requests"] == 24
    # 24 arrivals over 0.24 s against 0.1 s passes: about 4 batches with the gate, about 15
    # without it.
    assert info["batches"] <= 8, info
    # The forward time a replica reports covers every pass (the serving benchmark reads it).
    assert 0.1 * info["batches"] <= info["inference_seconds"] < 0.1 * info["batches"] + 0.5


def test_a_starting_replica_never_fails_on_a_broken_version_while_another_loads(
    tmp_path, outside_a_replica
):
    """An upscale or restart after a promotion to a version that does not load: the new
    replica serves the alias's latest version that does, as the running ones keep their model,
    and says why."""
    import asyncio
    from pathlib import Path

    from cluster.registry import Registry
    from serving import model_server
    from tests.conftest import export_tiny_classifier

    registry = Registry(tmp_path / "registry")
    good = registry.register(export_tiny_classifier(tmp_path / "good", seed=0), "sentiment")
    broken = registry.register(export_tiny_classifier(tmp_path / "bad", seed=1), "sentiment")
    weights = Path(broken.uri) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    registry.promote("sentiment", good.version, "production")
    pinned = {"model": "models:/sentiment@production", "version": broken.version}

    async def start() -> dict:
        server = model_server.ModelServer("full", str(tmp_path / "registry"))
        await server.reconfigure(pinned)
        return server.info()

    info = asyncio.run(start())
    assert info["version"] == "sentiment/1"
    assert "version 2" in info["last_error"] and "checksum" in info["last_error"]

    # `fmstack models promote` moved the alias itself onto the broken version: a new replica
    # serves the version the alias named before, and says why.
    registry.promote("sentiment", broken.version, "production")
    pinned = {"model": "models:/sentiment@production"}
    info = asyncio.run(start())
    assert info["version"] == "sentiment/1"
    assert "version 2" in info["last_error"] and "checksum" in info["last_error"]

    # An alias that never named a version that loads leaves nothing to serve: the replica fails.
    registry.promote("sentiment", broken.version, "staging")
    pinned = {"model": "models:/sentiment@staging"}
    with pytest.raises(RuntimeError, match="checksum"):
        asyncio.run(start())


def test_a_call_whose_replica_dies_is_repeated_then_reported():
    from ray.exceptions import ActorDiedError

    from serving.app import REPLICA_ATTEMPTS, ReplicaLost, retry_lost_replicas

    calls = []

    def dies(times: int):
        async def call() -> str:
            calls.append(1)
            if len(calls) <= times:
                raise ActorDiedError()
            return "answer"

        return call

    assert asyncio.run(retry_lost_replicas("distilled", dies(REPLICA_ATTEMPTS - 1))) == "answer"
    assert len(calls) == REPLICA_ATTEMPTS
    calls.clear()
    with pytest.raises(ReplicaLost, match="variant 'distilled' lost its model replica"):
        asyncio.run(retry_lost_replicas("distilled", dies(REPLICA_ATTEMPTS)))
    assert len(calls) == REPLICA_ATTEMPTS

    async def refused() -> str:  # anything else is not repeated
        calls.append(1)
        raise ValueError("bad input")

    calls.clear()
    with pytest.raises(ValueError):
        asyncio.run(retry_lost_replicas("distilled", refused))
    assert len(calls) == 1


def test_server_faults_answer_in_the_error_shape():
    from serving.app import _internal

    response = asyncio.run(_internal(None, RuntimeError("no model loaded")))
    assert response.status_code == 500
    assert json.loads(response.body) == {
        "error": {"type": "internal_error", "message": "RuntimeError: no model loaded"}
    }


def test_requests_refuse_text_no_tokenizer_can_encode_and_seeds_out_of_range():
    from pydantic import ValidationError

    from serving.schemas import ClassifyRequest, GenerateRequest

    # FastAPI parses the body with `json`, which lets `\ud800`-style escapes through.
    with pytest.raises(ValidationError, match="lone surrogate U\\+D800 at 2"):
        ClassifyRequest.model_validate(json.loads('{"texts": ["ok", "a \\ud800"]}'))
    with pytest.raises(ValidationError, match="lone surrogate"):
        GenerateRequest.model_validate(json.loads('{"prompt": "hi", "stop": ["\\udfff"]}'))
    with pytest.raises(ValidationError, match="seed"):
        GenerateRequest.model_validate({"prompt": "hi", "seed": 2**64})
    assert ClassifyRequest.model_validate(json.loads('{"texts": ["caf\\u00e9 \\ud83d\\ude00"]}'))


def test_generation_requests_stay_within_the_limits():
    from serving.app import ApiError, generation_request
    from serving.config import LimitsConfig
    from serving.schemas import GenerateRequest

    limits = LimitsConfig(max_new_tokens=16, max_text_chars=20)
    # A request that leaves max_new_tokens out gets the default, capped by a lower limit.
    assert generation_request(GenerateRequest(prompt="Once"), limits)["max_new_tokens"] == 16
    asked = generation_request(GenerateRequest(prompt="Once", max_new_tokens=8, seed=3), limits)
    assert asked == {
        "prompt": "Once",
        "max_new_tokens": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": [],
        "seed": 3,
    }
    for body, message in (
        (GenerateRequest(prompt="Once", max_new_tokens=17), "max_new_tokens: at most 16, got 17"),
        (GenerateRequest(prompt="x" * 21), "prompt: 21 characters, at most 20"),
    ):
        with pytest.raises(ApiError, match=message) as refused:
            generation_request(body, limits)
        assert refused.value.status == 422


def test_a_running_replica_asked_for_a_model_that_does_not_resolve_keeps_its_own(
    tmp_path, outside_a_replica
):
    from serving import model_server
    from tests.conftest import export_tiny_classifier

    path = str(export_tiny_classifier(tmp_path / "tiny", seed=0))

    async def scenario() -> dict:
        server = model_server.ModelServer("full", str(tmp_path / "registry"))
        await server.reconfigure({"model": path})
        await server.reconfigure({"model": "models:/nothing@production"})
        return server.info()

    info = asyncio.run(scenario())
    assert info["model"] == path and info["loaded"]
    assert "could not load models:/nothing@production" in info["last_error"]


def test_side_ports_move_only_those_taken(monkeypatch):
    """A second local Ray cluster gets free ports where Serve's defaults are held."""
    import socket

    from serving import deploy

    with socket.socket() as held, socket.socket() as probe:
        held.bind(("0.0.0.0", 0))
        probe.bind(("0.0.0.0", 0))
        taken, free = held.getsockname()[1], probe.getsockname()[1]
        probe.close()
        monkeypatch.setattr(deploy, "SIDE_PORTS", {"TAKEN": taken, "FREE": free})
        moved = deploy.side_ports_env(keep_defaults=True)
        assert list(moved) == ["TAKEN"] and int(moved["TAKEN"]) != taken
        assert set(deploy.side_ports_env(keep_defaults=False)) == {"TAKEN", "FREE"}


def test_a_compiled_classifier_answers_as_the_eager_one(tmp_path):
    import numpy as np

    from serving.inference import embed_texts
    from tests.conftest import export_tiny_classifier
    from training import classify, compile_classifier, load_model

    eager = load_model(export_tiny_classifier(tmp_path / "clf", seed=0))
    compiled = compile_classifier(eager)
    texts = ["a fine film", "dull", "an uneven but often delightful comedy, and long"] * 6
    for n in (1, 2, 3, 18):  # one text and batches of several sizes and lengths
        assert np.abs(classify(compiled, texts[:n]) - classify(eager, texts[:n])).max() < 1e-4
    # Embeddings run the uncompiled module, so they never stop to compile.
    assert embed_texts(compiled, texts[:3], 64) == embed_texts(eager, texts[:3], 64)


def test_only_classifiers_compile(tiny_lm):
    from training import compile_classifier

    with pytest.raises(ValueError, match="compile serves classifiers; .* is a causal_lm model"):
        compile_classifier(tiny_lm)


def test_a_model_that_cannot_compile_is_served_eagerly_saying_why(tiny_causal_lm_dir):
    import torch

    from serving.model_server import load_served

    served = load_served(str(tiny_causal_lm_dir), None, None, "float32", compile=True)
    assert served.compile_error is not None
    assert "compile serves classifiers" in served.compile_error
    assert served.loaded.model(torch.tensor([[1, 2, 3]])).logits.shape[:2] == (1, 3)


def test_a_new_dtype_or_compile_reloads_the_served_model_in_place(tmp_path):
    from serving.model_server import ModelServer
    from tests.conftest import export_tiny_classifier

    settings = {"model": str(export_tiny_classifier(tmp_path / "clf", seed=0)), "threads": 1}
    server = ModelServer("full", None)

    async def reconfigure(**changes) -> dict:
        # What `reconfigure` does after the batching setters, which need a Serve replica.
        server._settings = {**settings, **changes}
        await server._switch(settings["model"], None)
        return server.info()

    first = asyncio.run(reconfigure())
    assert (first["dtype"], first["compiled"]) == ("float32", False)
    bf16 = asyncio.run(reconfigure(dtype="bfloat16"))
    assert bf16["dtype"] == "bfloat16" and bf16["loaded_at"] > first["loaded_at"]
    compiled = asyncio.run(reconfigure(dtype="bfloat16", compile=True))
    assert compiled["compiled"] is True and compiled["compile_error"] is None
    same = asyncio.run(reconfigure(dtype="bfloat16", compile=True))
    assert same["loaded_at"] == compiled["loaded_at"]  # nothing changed: no reload
