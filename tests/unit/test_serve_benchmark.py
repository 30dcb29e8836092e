"""The serving benchmark's bookkeeping: forward-pass time and batch size per case, CPU time per
request, and how the overheads are split between the model and the rest."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from benchmarks.harness import CaseResult, Sample
from benchmarks.serve import counted_case, cpu_case, escalation_case, target_notes


def test_a_case_reports_forward_time_and_batch_size_from_the_counters() -> None:
    readings = iter([(10, 30, 1.0), (14, 50, 1.2)])  # 4 passes, 20 requests, 0.2 s
    run = counted_case(lambda: {"qps": 5.0}, lambda: next(readings), batching=True)
    assert run() == {"qps": 5.0, "forward_ms": pytest.approx(50.0), "mean_batch": 5.0}

    readings = iter([(3, 3, 0.3), (5, 5, 0.34)])
    run = counted_case(lambda: {"qps": 5.0}, lambda: next(readings), batching=False)
    assert run() == {"qps": 5.0, "forward_ms": pytest.approx(20.0)}

    idle = counted_case(lambda: {"qps": 0.0}, lambda: (7, 7, 0.7), batching=True)
    assert idle() == {"qps": 0.0}  # nothing ran: no figure made up


def test_a_cascade_case_reports_the_share_of_requests_the_fallback_answered() -> None:
    readings = iter([(5, 40, 0.5), (9, 70, 0.9)])  # the fallback took 30 more requests
    run = escalation_case(lambda: {"qps": 5.0}, lambda: next(readings), requests=120)
    assert run() == {"qps": 5.0, "escalated": 0.25}


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

    results.append(_result("fmstack-full-c1", p50_ms=40.0))
    (note,) = target_notes(results, [], 32)
    assert note.endswith("With batching on (fmstack-full): 40.0 ms, +9.0 ms.")


def test_throughput_targets_are_checked_only_at_their_concurrency() -> None:
    from benchmarks.harness import Ratio, Stat

    def found(top: int) -> list[Ratio]:
        label = f"fmstack-distilled / fmstack-full, QPS at c{top}"
        return [Ratio(label, "", "", "qps", "qps", Stat.of([2.5]))]

    (note,) = target_notes([], found(32), 32)
    assert note == "FAIL: fmstack-distilled / fmstack-full, QPS at c32 >= 3 (median 2.50)."
    (note,) = target_notes([], found(8), 8)
    assert note.startswith("NOT CHECKED: fmstack-distilled / fmstack-full, QPS at c8 >= 3")
    assert "the target is at concurrency 32; this run went up to 8" in note


def _spin(seconds: float) -> dict[str, float]:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return {"qps": 1.0}


def _spin_case_in_this_process() -> dict[str, float]:
    return cpu_case(lambda: _spin(0.4), lambda: [os.getpid()], requests=4)()


def test_a_case_reports_cpu_per_request_of_the_machine_and_of_the_model_process() -> None:
    # The "model process" spins 0.4 s of CPU over 4 requests. It is a fresh process, so that no
    # other thread (torch's, Inductor's, from earlier tests) adds CPU time to it meanwhile.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        figures = pool.apply(_spin_case_in_this_process)
    assert figures["qps"] == 1.0
    assert figures["model_cpu_ms"] == pytest.approx(100.0, abs=10.0)
    assert figures["cpu_ms"] >= figures["model_cpu_ms"] - 5.0  # the machine includes it

    gone = cpu_case(lambda: _spin(0.05), lambda: [2**22 + 7], requests=1)  # no such process
    assert gone()["model_cpu_ms"] == 0.0


def test_the_cpu_note_bounds_the_distilled_to_full_ratio_by_the_model_replicas() -> None:
    results = [
        CaseResult(name, "concurrency 32", {}, samples=[Sample(0, figures, 1.0, 0.0)])
        for name, figures in [
            ("fmstack-full-c32", {"cpu_ms": 13.0, "model_cpu_ms": 10.0}),
            ("fmstack-distilled-c32", {"cpu_ms": 7.5, "model_cpu_ms": 4.0}),
        ]
    ]
    (note,) = target_notes(results, [], 32)
    assert "full 13.0 / 10.0 / 3.0 ms, distilled 7.5 / 4.0 / 3.5 ms" in note
    assert note.endswith("distilled / full 2.50x.")
