"""The pretraining benchmark at size tiny, on the shared Ray cluster: structure, not timings."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.integration

CEILINGS = {"matmul fp32": "gflop_per_s", "matmul bf16": "gflop_per_s", "memory copy": "gb_per_s"}
NOT_APPLICABLE = "fmstack bf16 ZeRO-0"
MEMORY = ["memory fp32 ZeRO-0", "memory fp32 ZeRO-3"]
# Every kind of case once: fmstack's throughput in bf16 (fp32 runs in the memory cases); the
# other stages and precisions differ only in the recipe, which the unit tests and the ZeRO test
# cover. 3 fmstack runs instead of 8.
SELECTED = [
    "matmul *",
    "memory copy",
    "plain *",
    "fmstack bf16 ZeRO-0",
    "fmstack bf16 ZeRO-3",
    "memory *",
]
RUN = ["plain fp32", "plain bf16", "fmstack bf16 ZeRO-3"]
THROUGHPUT_FIGURES = ["tokens_per_s", "step_s", "gflop_per_s", "mfu"]
MEMORY_FIGURES = ["peak_rss_mib", "params_m"]


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_harness_interleaves_summarises_and_pairs_ratios_by_round(tmp_path):
    from benchmarks.harness import Case, Report, ratio, run_interleaved

    order: list[str] = []
    values = {"a": iter([2.0, 4.0, 6.0]), "b": iter([1.0, 1.0, 2.0])}

    def case(name: str):
        def run():
            order.append(name)
            if name == "c":
                raise RuntimeError("boom")
            return {"x": next(values[name])}

        return run

    cases = [
        Case("a", case("a")),
        Case("b", case("b")),
        Case("c", case("c")),
        Case("d", not_applicable="needs a GPU"),
    ]
    results = run_interleaved(cases, repeats=3, log=lambda _: None)
    assert order == ["a", "b", "c"] * 3
    a, b, c, d = results
    assert (a.summary()["x"].median, a.summary()["x"].min, a.summary()["x"].max) == (4.0, 2.0, 6.0)
    assert c.status == "error" and len(c.errors) == 3 and not c.samples
    assert d.status == "n/a" and d.reason == "needs a GPU"
    r = ratio(results, "a/b", "a", "b", "x")
    assert r.stat is not None and (r.stat.median, r.stat.min, r.stat.max) == (3.0, 2.0, 4.0)
    assert ratio(results, "a/d", "a", "d", "x").stat is None
    report = Report("demo", 3, results, [r], date="2000-01-02")
    json_path, md_path = report.write(tmp_path)
    assert json_path.name == "demo-2000-01-02.json" and md_path.name == "demo-2000-01-02.md"
    md = md_path.read_text()
    assert "| a | 4.00 (2.00-6.00) |" in md
    assert "n/a: needs a GPU" in md and "error: round 0: RuntimeError: boom" in md
    assert "- a/b: **3.000** (2.00-4.00)" in md
    assert json.loads(json_path.read_text())["ratios"][0]["stat"]["median"] == 3.0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pretraining_benchmark_tiny_reports_the_selected_cases(ray_cluster, tmp_path, capsys):
    import ray

    from benchmarks.pretrain import run_benchmark

    report, json_path, md_path = run_benchmark("tiny", repeats=1, out_dir=tmp_path, cases=SELECTED)

    assert ray.is_initialized()  # the session's cluster was used, not replaced or shut down
    assert json_path == tmp_path / f"pretrain-tiny-{report.date}.json"
    assert md_path == tmp_path / f"pretrain-tiny-{report.date}.md"
    data = json.loads(json_path.read_text())
    cases = {c["name"]: c for c in data["cases"]}
    assert set(cases) == {*CEILINGS, *RUN, NOT_APPLICABLE, *MEMORY}

    refused = cases[NOT_APPLICABLE]
    assert refused["status"] == "n/a" and "zero_stage" in refused["reason"]
    assert not refused["samples"]

    expected = {
        **{name: [figure] for name, figure in CEILINGS.items()},
        **dict.fromkeys(RUN, THROUGHPUT_FIGURES),
        **dict.fromkeys(MEMORY, MEMORY_FIGURES),
    }
    for name, figures in expected.items():
        case = cases[name]
        assert case["status"] == "ok", (name, case["errors"])
        assert len(case["samples"]) == 1, name
        for figure in figures:
            stat = case["summary"][figure]
            assert stat["n"] == 1
            assert all(_positive(stat[k]) for k in ("median", "min", "max")), (name, figure, stat)
    for name in MEMORY:  # the memory model's size is reported, counted by count_parameters
        assert cases[name]["summary"]["params_m"]["median"] == pytest.approx(
            data["meta"]["models"]["memory_model"]["parameters"] / 1e6
        )

    ratios = {r["label"]: r for r in data["ratios"]}
    for precision in ("fp32", "bf16"):
        for stage in (0, 2, 3):
            assert f"fmstack ZeRO-{stage} / plain, tokens/s, {precision}" in ratios
    measured = {
        "fmstack ZeRO-3 / plain, tokens/s, bf16",
        "ZeRO-3 / ZeRO-0, peak memory per worker",
        "bf16 / fp32, matmul ceiling",
        "bf16 / fp32, plain loop tokens/s",
    }
    for label in measured:
        assert _positive(ratios[label]["stat"]["median"]), ratios[label]
    not_run = ratios["fmstack ZeRO-2 / plain, tokens/s, fp32"]
    assert not_run["stat"] is None and not_run["reason"] == "fmstack fp32 ZeRO-2 did not run"
    refused_ratio = ratios["fmstack ZeRO-0 / plain, tokens/s, bf16"]
    assert refused_ratio["stat"] is None and "not applicable" in refused_ratio["reason"]

    md = md_path.read_text()
    for name in cases:
        assert f"| {name} |" in md
    assert "### ratios" in md and "n/a: train.precision bf16" in md
    assert "| case | tokens/s | step s | GFLOP/s | of ceiling |" in capsys.readouterr().out
