"""The classification report and confusion matrix, checked against hand-computed cases."""

from __future__ import annotations

import pytest

from training.evaluation import (
    classification_metrics,
    classification_report,
    confusion_matrix,
    format_classification_report,
    format_confusion_matrix,
)

# scikit-learn's own docstring example for classification_report.
SK_TRUE = [0, 1, 2, 2, 2]
SK_PRED = [0, 0, 2, 2, 1]
SK_NAMES = ["class 0", "class 1", "class 2"]
SK_TEXT = """\
              precision    recall  f1-score   support

     class 0       0.50      1.00      0.67         1
     class 1       0.00      0.00      0.00         1
     class 2       1.00      0.67      0.80         3

    accuracy                           0.60         5
   macro avg       0.50      0.56      0.49         5
weighted avg       0.70      0.60      0.61         5
"""


def test_report_has_sklearns_structure_and_values():
    report = classification_report(SK_TRUE, SK_PRED, SK_NAMES)
    assert list(report) == [*SK_NAMES, "accuracy", "macro avg", "weighted avg"]
    assert report["class 0"] == {"precision": 0.5, "recall": 1.0, "f1-score": 2 / 3, "support": 1}
    assert report["class 2"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1-score": 0.8, "support": 3}
    )
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["macro avg"] == pytest.approx(
        {"precision": 0.5, "recall": 5 / 9, "f1-score": (2 / 3 + 0.8) / 3, "support": 5}
    )
    assert report["weighted avg"] == pytest.approx(
        {"precision": 0.7, "recall": 0.6, "f1-score": (2 / 3 + 3 * 0.8) / 5, "support": 5}
    )


def test_formatted_report_matches_sklearn_text():
    report = classification_report(SK_TRUE, SK_PRED, SK_NAMES)
    assert format_classification_report(report, digits=2) == SK_TEXT


def test_formatted_report_default_digits_and_long_names():
    names = ["a label longer than weighted avg", "b"]
    text = format_classification_report(classification_report([0, 1, 1], [0, 1, 0], names))
    lines = text.splitlines()
    width = len(names[0])
    assert lines[0] == " " * width + " " + "".join(
        f" {h:>9}" for h in ("precision", "recall", "f1-score", "support")
    )
    assert lines[2] == f"{names[0]}     0.5000    1.0000    0.6667         1"
    assert lines[3] == f"{'b':>{width}}     1.0000    0.5000    0.6667         2"
    assert lines[5] == f"{'accuracy':>{width}}" + " " * 21 + "    0.6667         3"
    assert len({len(line) for line in lines if line}) == 1  # every row has the same width


def test_binary_precision_recall_f1_by_hand():
    y_true = [0, 0, 0, 1, 1, 1, 1, 1]
    y_pred = [0, 0, 1, 1, 1, 1, 0, 0]
    report = classification_report(y_true, y_pred, ["neg", "pos"])
    # neg: tp 2, predicted 4, support 3; pos: tp 3, predicted 4, support 5
    assert report["neg"] == pytest.approx(
        {"precision": 0.5, "recall": 2 / 3, "f1-score": 4 / 7, "support": 3}
    )
    assert report["pos"] == pytest.approx(
        {"precision": 0.75, "recall": 0.6, "f1-score": 2 / 3, "support": 5}
    )
    assert report["accuracy"] == pytest.approx(5 / 8)
    assert report["macro avg"]["f1-score"] == pytest.approx((4 / 7 + 2 / 3) / 2)
    assert report["weighted avg"]["f1-score"] == pytest.approx((3 * 4 / 7 + 5 * 2 / 3) / 8)
    assert report["weighted avg"]["recall"] == pytest.approx(report["accuracy"])


def test_a_class_never_predicted_scores_zero_without_warnings(recwarn):
    # Always "pos" on an imbalanced set: the minority class is never predicted.
    y_true = [0] + [1] * 9
    y_pred = [1] * 10
    report = classification_report(y_true, y_pred, ["neg", "pos"])
    assert report["neg"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 1}
    assert report["pos"]["precision"] == pytest.approx(0.9)
    assert report["pos"]["f1-score"] == pytest.approx(2 * 0.9 / 1.9)
    # Macro treats both classes alike; weighted follows the 1:9 support.
    assert report["macro avg"]["f1-score"] == pytest.approx(0.9 / 1.9)
    assert report["weighted avg"]["f1-score"] == pytest.approx(0.9 * 2 * 0.9 / 1.9)
    assert report["weighted avg"]["f1-score"] > report["macro avg"]["f1-score"]
    assert not recwarn.list


def test_a_class_absent_from_the_data_scores_zero_and_counts_in_the_macro_average():
    report = classification_report([0, 0, 1], [0, 2, 1], ["a", "b", "c"])
    assert report["c"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    assert report["macro avg"]["recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert report["weighted avg"]["recall"] == pytest.approx(2 / 3)


def test_confusion_matrix_rows_are_true_labels():
    matrix = confusion_matrix(SK_TRUE, SK_PRED, 3)
    assert matrix == [[1, 0, 0], [1, 0, 0], [0, 1, 2]]
    assert all(isinstance(v, int) for row in matrix for v in row)
    assert format_confusion_matrix(matrix, ["neg", "neutral", "pos"]) == (
        "true \\ pred  neg  neutral  pos\n"
        "        neg    1        0    0\n"
        "    neutral    1        0    0\n"
        "        pos    0        1    2\n"
    )


def test_flat_metrics_for_manifests_and_gates():
    metrics = classification_metrics(classification_report(SK_TRUE, SK_PRED, SK_NAMES))
    assert metrics == pytest.approx(
        {
            "accuracy": 0.6,
            "macro_f1": (2 / 3 + 0.8) / 3,
            "weighted_f1": (2 / 3 + 3 * 0.8) / 5,
            "macro_precision": 0.5,
            "macro_recall": 5 / 9,
        }
    )
    assert all(type(v) is float for v in metrics.values())


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "message"),
    [
        ([0, 1], [0], ["a", "b"], "2 true labels but 1 predictions"),
        ([0, 2], [0, 1], ["a", "b"], r"true labels must be label indices in \[0, 2\)"),
        ([0, 1], [0, -1], ["a", "b"], "predictions must be label indices"),
        ([0, 1], [0, 1], ["a", "a"], "label names must be unique"),
        ([], [], ["a", "b"], "at least one example"),
    ],
)
def test_bad_inputs_are_refused(y_true, y_pred, names, message):
    with pytest.raises(ValueError, match=message):
        classification_report(y_true, y_pred, names)


def test_length_sorted_batches_group_similar_lengths_and_keep_every_index():
    from training.inference import length_sorted_batches

    batches = length_sorted_batches([5, 1, 9, 1, 5, 3], 2)
    assert batches == [[1, 3], [5, 0], [4, 2]]
    assert length_sorted_batches([], 4) == []


def test_classify_answers_in_the_order_of_the_texts(tmp_path):
    from tests.conftest import export_tiny_classifier
    from training import classify, load_model

    model = load_model(export_tiny_classifier(tmp_path / "m", seed=0))
    texts = [
        "a long and winding review that goes on and on about the film",
        "bad",
        "a fine film",
        "quite good, really",
        "dull",
    ]
    one_by_one = [classify(model, [t])[0] for t in texts]
    together = classify(model, texts, batch_size=2)
    assert together.shape == (5, 2)
    for single, batched in zip(one_by_one, together, strict=True):
        assert batched == pytest.approx(single, abs=1e-5)
    assert classify(model, []).shape == (0, 2)


def test_a_cascade_answers_with_the_fallback_below_the_threshold():
    from training.evaluation import cascade_tradeoffs

    student = [[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.15, 0.85]]
    fallback = [[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4]]
    labels = [0, 1, 1, 1]
    low, mid, high = cascade_tradeoffs(
        student, fallback, labels, thresholds=(0.5, 0.8, 0.99), relative_cost=0.25
    )
    # 0.5: the student answers everything (3 of 4 right).
    assert low == {"threshold": 0.5, "escalated": 0.0, "accuracy": 0.75, "cost": 0.25}
    # 0.8: texts 1 and 2 go to the fallback, which gets text 1 right.
    assert mid == {"threshold": 0.8, "escalated": 0.5, "accuracy": 1.0, "cost": 0.75}
    # 0.99: the fallback answers everything, after the student ran on every text.
    assert high == {"threshold": 0.99, "escalated": 1.0, "accuracy": 0.75, "cost": 1.25}


def test_a_cascade_needs_both_models_scored_on_the_same_texts():
    from training.evaluation import cascade_tradeoffs

    with pytest.raises(ValueError, match="same texts"):
        cascade_tradeoffs([[0.5, 0.5]], [[0.5, 0.5], [0.1, 0.9]], [0, 1])
