"""The serving benchmark's bookkeeping: forward-pass time and batch size per case, and how the
concurrency-1 overhead is split between the model and the request path."""

from __future__ import annotations

import pytest

from benchmarks.harness import CaseResult, Sample
from benchmarks.serve import counted_case, target_notes


def test_a_case_reports_forward_time_and_batch_size_from_the_counters() -> None:
    readings = iter([(10, 30, 1.0), (14, 50, 1.2)])  # 4 passes, 20 requests, 0.2 s
    run = counted_case(lambda: {"qps": 5.0}, lambda: next(readings), batching=True)
    assert run() == {"qps": 5.0, "forward_ms": pytest.approx(50.0), "mean_batch": 5.0}

    readings = iter([(3, 3, 0.3), (5, 5, 0.34)])
    run = counted_case(lambda: {"qps": 5.0}, lambda: next(readings), batching=False)
    assert run() == {"qps": 5.0, "forward_ms": pytest.approx(20.0)}

    idle = counted_case(lambda: {"qps": 0.0}, lambda: (7, 7, 0.7), batching=True)
    assert idle() == {"qps": 0.0}  # nothing ran: no figure made up


def _result(name: str, **figures: float) -> CaseResult:
    return CaseResult(name, "concurrency 1", {}, samples=[Sample(0, figures, 1.0, 0.0)])


def test_the_concurrency_1_overhead_is_split_into_model_and_path() -> None:
    results = [
        _result("fmstack-full-nobatch-c1", p50_ms=50.0, forward_ms=38.0),
        _result("plain-full-c1", p50_ms=31.0, forward_ms=27.0),
    ]
    (note,) = target_notes(results, [], 32)
    assert note.startswith("FAIL: Serve adds at most 5 ms")
    assert "= +19.0 ms" in note
    assert "+11.0 ms is a slower forward pass" in note
    assert "+8.0 ms the longer request path" in note
