"""The one-command benchmark report: structure, skipped parts and plots, with stand-in runs."""

from __future__ import annotations

import json

import pytest

from benchmarks.harness import Case, Report, ratio, run_interleaved, select


def _fake_pretrain(size, out):
    figures = iter([{"tokens_per_s": 100.0, "peak_rss_mib": 900.0}, {"tokens_per_s": 80.0}])
    cases = [
        Case("plain fp32", lambda: {"tokens_per_s": 120.0}, "throughput"),
        Case("fmstack fp32 ZeRO-2", lambda: next(figures), "throughput"),
        Case("memory fp32 ZeRO-3", lambda: {"peak_rss_mib": 700.0}, "memory"),
    ]
    results = run_interleaved(cases, 2, log=lambda _: None)
    found = [ratio(results, "ZeRO-2 / plain", "fmstack fp32 ZeRO-2", "plain fp32", "tokens_per_s")]
    report = Report("pretrain-tiny", 2, results, found)
    report.write(out)
    return report


def _broken(size, out):
    raise RuntimeError("ray did not start")


def test_suite_reports_ran_skipped_and_failed_parts_with_plots(tmp_path, monkeypatch):
    from benchmarks.suite import run_suite

    monkeypatch.setenv("FMSTACK_REGISTRY", str(tmp_path / "empty-registry"))
    parts, json_path, md_path = run_suite(
        "tiny",
        ("pretrain", "distill", "serve"),
        tmp_path,
        runners={"pretrain": _fake_pretrain, "distill": _broken, "serve": _broken},
    )
    by_name = {p.name: p for p in parts}
    assert by_name["pretrain"].report is not None and by_name["pretrain"].error is None
    for name in ("distill", "serve"):  # no trained models here: not run, and said why
        assert by_name[name].report is None and "make demo" in by_name[name].skipped

    data = json.loads(json_path.read_text())
    assert data["size"] == "tiny" and set(data["benchmarks"]) == {"pretrain", "distill", "serve"}
    assert data["headline"] == [
        {"benchmark": "pretrain", "ratio": "ZeRO-2 / plain", "value": "0.750 (0.667-0.833)"}
    ]
    assert data["benchmarks"]["pretrain"]["report"]["cases"][0]["name"] == "plain fp32"
    assert data["plots"] and all((tmp_path / p).stat().st_size > 1000 for p in data["plots"])

    md = md_path.read_text()
    assert "| pretrain | ZeRO-2 / plain | 0.750 (0.667-0.833) |" in md
    assert "## distill" in md and "Not run:" in md
    assert f"![{data['plots'][0]}]({data['plots'][0]})" in md


def test_a_failing_benchmark_is_reported_and_the_rest_still_run(tmp_path):
    from benchmarks.suite import run_suite

    parts, json_path, _ = run_suite("tiny", ("pretrain",), tmp_path, runners={"pretrain": _broken})
    assert parts[0].error == "RuntimeError: ray did not start"
    assert json.loads(json_path.read_text())["benchmarks"]["pretrain"]["error"] == parts[0].error


def test_a_case_pattern_that_matches_nothing_names_the_cases():
    cases = [Case("plain fp32"), Case("fmstack fp32 ZeRO-3")]
    assert [c.name for c in select(cases, ["*ZeRO-3"])] == ["fmstack fp32 ZeRO-3"]
    assert select(cases, None) == cases
    with pytest.raises(ValueError, match=r"no case matches 'ZeRO-4'.*plain fp32, fmstack"):
        select(cases, ["ZeRO-4"])


def test_the_report_includes_the_newest_gpu_run_and_not_smoke_runs(tmp_path):
    import shutil
    from pathlib import Path

    from benchmarks.suite import run_suite

    committed = sorted(Path("benchmarks/results").glob("gpu-2*.json"))[-1]
    shutil.copy(committed, tmp_path / "gpu-2000-01-01.json")
    shutil.copy(committed, tmp_path / committed.name)
    (tmp_path / "gpu-smoke-2999-01-01.json").write_text("{}")  # a code check, never reported

    _, _, md_path = run_suite("tiny", ("pretrain",), tmp_path, runners={"pretrain": _fake_pretrain})
    md = md_path.read_text()
    assert f"## On one GPU ({committed.name}, from `benchmarks/gpu.sh`)" in md
    assert "| distilled / full classifier throughput |" in md and "MFU" in md


def test_without_the_full_recipes_models_the_suite_measures_the_demos(tmp_path, monkeypatch):
    from benchmarks.suite import bench_models
    from cluster.registry import Registry
    from tests.conftest import export_tiny_classifier

    registry = Registry(tmp_path / "registry")
    monkeypatch.setenv("FMSTACK_REGISTRY", str(tmp_path / "registry"))
    for name, layers in (("demo-sentiment", 2), ("demo-sentiment-student", 1)):
        export = export_tiny_classifier(tmp_path / name, seed=layers, layers=layers)
        registry.promote(name, registry.register(export, name).version, "candidate")

    models, why = bench_models()
    assert models == {
        "teacher": "models:/demo-sentiment@candidate",
        "student": "models:/demo-sentiment-student@candidate",
    }
    assert "models:/demo-sentiment@candidate (demo-sentiment@1)" in why
