"""Classification metrics: scikit-learn's classification report and a confusion matrix, in numpy.

`classification_report` returns the structure of scikit-learn's
`classification_report(..., output_dict=True)` (labels given as `range(len(label_names))`,
zero division giving 0.0) and `format_classification_report` its text layout, so reports read the
same as anywhere else. `classification_metrics` flattens a report for manifests and registry gates.
`cascade_tradeoffs` scores a cascade of two classifiers (a student that answers, a fallback for
the texts it is unsure of) at a range of confidence thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CASCADE_THRESHOLDS",
    "cascade_tradeoffs",
    "classification_metrics",
    "classification_report",
    "confusion_matrix",
    "format_classification_report",
    "format_confusion_matrix",
    "score_predictions",
]

_HEADERS = ("precision", "recall", "f1-score", "support")
_AVERAGES = ("macro avg", "weighted avg")
_RESERVED = ("accuracy", *_AVERAGES)


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_labels: int) -> list[list[int]]:
    """Counts of (true label, predicted label): rows are true labels, columns predictions."""
    true = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"{true.size} true labels but {pred.size} predictions")
    for name, values in (("true labels", true), ("predictions", pred)):
        if values.size and (values.min() < 0 or values.max() >= n_labels):
            raise ValueError(f"{name} must be label indices in [0, {n_labels})")
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return [[int(v) for v in row] for row in matrix]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0.0 where den is 0 (scikit-learn's zero_division default, without a warning)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _row(precision: float, recall: float, f1: float, support: int) -> dict[str, Any]:
    return dict(
        zip(_HEADERS, (float(precision), float(recall), float(f1), int(support)), strict=True)
    )


def classification_report(
    y_true: ArrayLike, y_pred: ArrayLike, label_names: list[str]
) -> dict[str, Any]:
    """Per-label precision, recall, F1 and support, accuracy, macro and weighted averages.

    Keys: each label name, `accuracy` (a float), `macro avg` and `weighted avg`; each non-accuracy
    entry is {precision, recall, f1-score, support}. Supports are ints.
    """
    if len(set(label_names)) != len(label_names) or set(label_names) & set(_RESERVED):
        raise ValueError(f"label names must be unique and not one of {_RESERVED}: {label_names}")
    matrix = np.array(confusion_matrix(y_true, y_pred, len(label_names)), dtype=np.int64)
    total = int(matrix.sum())
    if total == 0:
        raise ValueError("a classification report needs at least one example")
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    # 2 tp / (2 tp + fp + fn): the harmonic mean of precision and recall, 0.0 when tp is 0.
    f1 = _ratio(2 * tp, predicted + support)

    report: dict[str, Any] = {
        name: _row(precision[i], recall[i], f1[i], support[i]) for i, name in enumerate(label_names)
    }
    report["accuracy"] = float(tp.sum() / total)
    report["macro avg"] = _row(precision.mean(), recall.mean(), f1.mean(), total)
    p, r, f = (float(np.average(v, weights=support)) for v in (precision, recall, f1))
    report["weighted avg"] = _row(p, r, f, total)
    return report


def format_classification_report(report: dict[str, Any], digits: int = 4) -> str:
    """The report as scikit-learn prints it (same columns, widths and blank lines)."""
    labels = [k for k in report if k not in _RESERVED]
    width = max(*(len(k) for k in labels), len("weighted avg"), digits)
    head_fmt = "{:>{width}s} " + " {:>9}" * len(_HEADERS)
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    text = head_fmt.format("", *_HEADERS, width=width) + "\n\n"
    for name in labels:
        row = report[name]
        text += row_fmt.format(
            name, *(row[h] for h in _HEADERS[:3]), int(row["support"]), width=width, digits=digits
        )
    text += "\n"
    total = int(report["macro avg"]["support"])
    accuracy_fmt = "{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n"
    text += accuracy_fmt.format(
        "accuracy", "", "", report["accuracy"], total, width=width, digits=digits
    )
    for name in _AVERAGES:
        row = report[name]
        text += row_fmt.format(
            name, *(row[h] for h in _HEADERS[:3]), int(row["support"]), width=width, digits=digits
        )
    return text


def format_confusion_matrix(matrix: list[list[int]], label_names: list[str]) -> str:
    """A small table: one row per true label, one column per predicted label."""
    corner = "true \\ pred"
    first = max(len(corner), *(len(n) for n in label_names))
    widest = max((len(str(v)) for row in matrix for v in row), default=1)
    cols = [max(len(n), widest) for n in label_names]
    lines = [
        "  ".join(
            [f"{corner:>{first}}", *(f"{n:>{w}}" for n, w in zip(label_names, cols, strict=True))]
        )
    ]
    for name, row in zip(label_names, matrix, strict=True):
        lines.append(
            "  ".join([f"{name:>{first}}", *(f"{v:>{w}}" for v, w in zip(row, cols, strict=True))])
        )
    return "\n".join(lines) + "\n"


def classification_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a report, flat, for manifests and registry gates."""
    macro = report["macro avg"]
    return {
        "accuracy": float(report["accuracy"]),
        "macro_f1": float(macro["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "macro_precision": float(macro["precision"]),
        "macro_recall": float(macro["recall"]),
    }


def score_predictions(
    predictions: ArrayLike, labels: ArrayLike, label_names: list[str]
) -> dict[str, Any]:
    """Report, confusion matrix and flat metrics of predicted label ids against the true ones."""
    truth = [int(x) for x in np.asarray(labels)]
    predicted = [int(x) for x in np.asarray(predictions)]
    report = classification_report(truth, predicted, label_names)
    return {
        "examples": len(truth),
        "report": report,
        "confusion_matrix": confusion_matrix(truth, predicted, len(label_names)),
        "metrics": classification_metrics(report),
    }


CASCADE_THRESHOLDS = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)


def cascade_tradeoffs(
    student_probs: ArrayLike,
    fallback_probs: ArrayLike,
    labels: ArrayLike,
    thresholds: tuple[float, ...] = CASCADE_THRESHOLDS,
    relative_cost: float | None = None,
) -> list[dict[str, float]]:
    """What a cascade answers at each threshold: the student's label where its top probability
    reaches the threshold, else the fallback's (serving's `cascade` route). Per threshold: the
    share of texts escalated to the fallback and the cascade's accuracy; with `relative_cost`
    (the student's compute per text over the fallback's), also `cost`: the cascade's compute
    per text over the fallback's alone (every text runs the student, escalated ones both)."""
    student, fallback = np.asarray(student_probs), np.asarray(fallback_probs)
    truth = np.asarray(labels)
    if student.shape != fallback.shape or len(truth) != len(student):
        raise ValueError(
            f"cascade: probabilities {student.shape} and {fallback.shape} for {len(truth)} "
            "labels; score both models on the same texts with the same labels"
        )
    rows = []
    for threshold in thresholds:
        unsure = student.max(-1) < threshold
        answers = np.where(unsure, fallback.argmax(-1), student.argmax(-1))
        row = {
            "threshold": float(threshold),
            "escalated": float(unsure.mean()) if len(truth) else 0.0,
            "accuracy": float((answers == truth).mean()) if len(truth) else 0.0,
        }
        if relative_cost is not None:
            row["cost"] = relative_cost + row["escalated"]
        rows.append(row)
    return rows
