"""Labeled data: cleaning, de-duplication, deterministic stratified splits, sources, lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.assets import ROTTEN_TOMATOES, AssetMissingError, cache_dir
from training.config import LabeledDataConfig, LabeledSourceConfig, SourceConfig
from training.data import DataSourceError, read_paths
from training.labeled import (
    _labeled_frame,
    check_labeled_source,
    label_names_for,
    labeled_fingerprint,
    perturbed_copies,
    prepare_splits,
    read_labeled,
)

NAMES = ["neg", "neu", "pos"]
SPLIT = {"validation_fraction": 0.1, "test_fraction": 0.2}


def labeled(n_per_label: dict[str, int]) -> pd.DataFrame:
    rows = [
        (f"review {label} number {i}", label) for label, n in n_per_label.items() for i in range(n)
    ]
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.fixture
def messy() -> pd.DataFrame:
    """Imbalanced labels, plus repeats, whitespace variants, empty texts and conflicting labels."""
    base = labeled({"neg": 300, "neu": 100, "pos": 600})
    extra = pd.DataFrame(
        [
            ("review neg number 1", "neg"),  # exact repeat
            ("  review pos number 2\n", "pos"),  # repeat after stripping
            ("review pos number 3", "neg"),  # same text, other label: both copies go
            ("   ", "neu"),
            ("", "pos"),
            ("contested", "pos"),
            ("contested", "neg"),
            ("contested", "pos"),
        ],
        columns=["text", "label"],
    )
    return pd.concat([base, extra], ignore_index=True)


def split(df: pd.DataFrame, seed: int = 0, max_examples: int | None = None):
    return prepare_splits(df, NAMES, **SPLIT, max_examples=max_examples, seed=seed)


def texts(splits) -> dict[str, set[str]]:
    return {n: set(getattr(splits, n)["text"]) for n in ("train", "validation", "test")}


# ---------------------------------------------------------------- splits


def test_no_text_is_in_two_splits_and_conflicts_are_dropped(messy):
    s = split(messy)
    by_split = texts(s)
    all_rows = pd.concat([s.train, s.validation, s.test])
    assert not all_rows["text"].duplicated().any()
    assert not (by_split["train"] & by_split["validation"])
    assert not (by_split["train"] & by_split["test"])
    assert not (by_split["validation"] & by_split["test"])
    seen = set().union(*by_split.values())
    assert "contested" not in seen and "review pos number 3" not in seen
    assert "review pos number 2" in seen and "" not in seen
    # 1000 distinct texts, less the one with two labels.
    assert len(all_rows) == 999
    assert s.summary() == {
        name: {label: int((getattr(s, name)["label"] == i).sum()) for i, label in enumerate(NAMES)}
        for name in ("train", "validation", "test")
    }


def test_splits_have_the_promised_columns_and_types(messy):
    s = split(messy)
    assert s.label_names == NAMES
    for frame in (s.train, s.validation, s.test):
        assert list(frame.columns) == ["text", "label"]
        assert frame["label"].dtype == np.int64
        assert all(isinstance(t, str) and t == t.strip() and t for t in frame["text"])
        assert list(frame.index) == list(range(len(frame)))


def test_splits_are_stratified(messy):
    s = split(messy)
    sizes = {n: sum(c.values()) for n, c in s.summary().items()}
    total = sum(sizes.values())
    assert sizes["test"] / total == pytest.approx(0.2, abs=0.01)
    assert sizes["validation"] / total == pytest.approx(0.1, abs=0.01)
    overall = [300 / 999, 100 / 999, 599 / 999]
    for name, counts in s.summary().items():
        shares = [counts[label] / sizes[name] for label in NAMES]
        assert shares == pytest.approx(overall, abs=0.02), name


def test_labels_are_interleaved_not_grouped(messy):
    train = split(messy).train["label"].tolist()
    assert train != sorted(train)
    assert len(set(train[:30])) == 3


def test_same_seed_same_splits_other_seed_other_splits(messy):
    first, again = split(messy, seed=7), split(messy.sample(frac=1.0, random_state=1), seed=7)
    for name in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(again, name))
    other = split(messy, seed=8)
    assert texts(other)["test"] != texts(first)["test"]
    assert len(other.test) == len(first.test)


def test_split_is_pinned_across_machines():
    # sha256-based order: this exact assignment holds on every machine and Python version.
    s = prepare_splits(
        labeled({"neg": 5, "pos": 5}),
        ["neg", "pos"],
        validation_fraction=0.2,
        test_fraction=0.2,
        max_examples=None,
        seed=0,
    )
    assert sorted(s.test["text"]) == ["review neg number 4", "review pos number 0"]
    assert sorted(s.validation["text"]) == ["review neg number 1", "review pos number 2"]


def test_max_examples_is_a_stratified_sample_nested_in_the_full_splits(messy):
    full, sample = split(messy), split(messy, max_examples=200)
    counts = sample.summary()
    assert sum(sum(c.values()) for c in counts.values()) == 200
    per_label = [sum(c[label] for c in counts.values()) for label in NAMES]
    assert per_label == [60, 20, 120]  # 300 : 100 : 599 of 999
    assert sum(counts["test"].values()) == 40 and sum(counts["validation"].values()) == 20
    # A quick run never trains on a row of the full run's test or validation split.
    full_texts, sample_texts = texts(full), texts(sample)
    for name in ("train", "validation", "test"):
        assert sample_texts[name] <= full_texts[name]
    assert split(messy, max_examples=5000).summary() == full.summary()


@pytest.mark.parametrize("max_examples", [10, 57, 399])
def test_max_examples_is_exact_even_when_shares_round_badly(max_examples):
    df = labeled({"neg": 399, "pos": 1})
    kwargs = {"validation_fraction": 0.49, "test_fraction": 0.49, "seed": 3}
    full = prepare_splits(df, ["neg", "pos"], **kwargs, max_examples=None)
    sample = prepare_splits(df, ["neg", "pos"], **kwargs, max_examples=max_examples)
    assert sum(len(f) for f in (sample.train, sample.validation, sample.test)) == max_examples
    assert set(sample.train["text"]) <= set(full.train["text"])


def test_every_label_reaches_every_split_when_it_can():
    df = labeled({"neg": 200, "pos": 200, "rare": 3})
    s = prepare_splits(df, ["neg", "pos", "rare"], **SPLIT, max_examples=None, seed=0)
    assert all(counts["rare"] == 1 for counts in s.summary().values())


def test_an_empty_split_is_a_clear_error():
    with pytest.raises(DataSourceError, match=r"validation split would be empty \(2 examples"):
        prepare_splits(
            labeled({"neg": 1, "pos": 1}), ["neg", "pos"], **SPLIT, max_examples=None, seed=0
        )


def test_labels_outside_the_names_are_refused(messy):
    with pytest.raises(DataSourceError, match=r"labels \['neu'\] are not among"):
        prepare_splits(messy, ["neg", "pos"], **SPLIT, max_examples=None, seed=0)


# ---------------------------------------------------------------- labels and columns


def test_label_names():
    assert label_names_for(["fresh", "rotten"], "rotten_tomatoes") == ["rotten", "fresh"]
    assert label_names_for(["pos", "neg", "pos"], "csv") == ["neg", "pos"]
    assert label_names_for(["10", "2", "1", "2"], "jsonl") == ["1", "2", "10"]
    assert label_names_for(["-1", "0", "1"], "csv") == ["-1", "0", "1"]
    with pytest.raises(DataSourceError, match="at least two"):
        label_names_for(["spam", "spam"], "csv")


def test_frames_are_normalised_to_text_and_string_labels():
    raw = pd.DataFrame(
        {
            "review": ["good", "bad", None, "meh", "fine"],
            "stars": [1.0, 0.0, 1.0, np.nan, 2.0],  # integers read as floats around a gap
            "other": range(5),
        }
    )
    frame = _labeled_frame(raw, "review", "stars")
    assert frame.to_dict("list") == {"text": ["good", "bad", "fine"], "label": ["1", "0", "2"]}
    ints = _labeled_frame(pd.DataFrame({"text": ["a", "b"], "label": [3, 0]}), "text", "label")
    assert ints["label"].tolist() == ["3", "0"]


@pytest.mark.parametrize(
    ("text_column", "label_column", "key"),
    [("body", "stars", "data.source.text_column"), ("review", "label", "data.source.label_column")],
)
def test_a_missing_column_names_the_key_and_the_columns(text_column, label_column, key):
    raw = pd.DataFrame({"review": ["x"], "stars": [1]})
    with pytest.raises(DataSourceError, match=key) as err:
        _labeled_frame(raw, text_column, label_column)
    assert "['review', 'stars']" in str(err.value)


# ---------------------------------------------------------------- sources and lineage


def test_missing_files_fail_before_ray_starts(tmp_path: Path):
    missing = LabeledSourceConfig(kind="csv", path=str(tmp_path / "nope.csv"))
    with pytest.raises(DataSourceError, match=r"data.source.path: .*nope.csv does not exist"):
        check_labeled_source(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="has no files"):
        check_labeled_source(LabeledSourceConfig(kind="jsonl", path=str(tmp_path / "empty")))
    (tmp_path / "a.csv").write_text("text,label\nx,1\n")
    check_labeled_source(LabeledSourceConfig(kind="csv", path=str(tmp_path / "a.csv")))
    check_labeled_source(LabeledSourceConfig(kind="csv", path=str(tmp_path / "*.csv")))
    check_labeled_source(LabeledSourceConfig(kind="csv", path=str(tmp_path)))


def test_ray_data_is_given_the_files_a_glob_matches(tmp_path: Path):
    # Ray Data reads files, directories and URIs, but does not expand globs.
    for name in ("b.csv", "a.csv", "notes.txt"):
        (tmp_path / name).write_text("text,label\nx,1\n")
    glob = SourceConfig(kind="csv", path=str(tmp_path / "*.csv"))
    assert read_paths(glob) == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    for path in (str(tmp_path / "a.csv"), str(tmp_path), "s3://bucket/data/*.csv"):
        assert read_paths(SourceConfig(kind="csv", path=path)) == path


def test_missing_packaged_set_says_how_to_fetch_it(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FMSTACK_CACHE", str(tmp_path))
    with pytest.raises(AssetMissingError, match="make setup"):
        check_labeled_source(LabeledSourceConfig(kind="rotten_tomatoes"))


def test_fingerprint_follows_bytes_and_split_parameters(tmp_path: Path):
    data = tmp_path / "labels.csv"
    data.write_text("text,label\ngood,1\nbad,0\n")
    src = LabeledSourceConfig(kind="csv", path=str(data))
    cfg = LabeledDataConfig(source=src)
    first = labeled_fingerprint(cfg, seed=0)
    assert labeled_fingerprint(cfg, seed=0) == first
    assert labeled_fingerprint(cfg, seed=1) != first
    assert labeled_fingerprint(cfg.model_copy(update={"test_fraction": 0.3}), seed=0) != first
    assert labeled_fingerprint(cfg.model_copy(update={"max_examples": 100}), seed=0) != first
    data.write_text("text,label\ngood,1\nbad,1\n")
    assert labeled_fingerprint(cfg, seed=0) != first


# ---------------------------------------------------------------- Rotten Tomatoes

needs_rt = pytest.mark.skipif(
    not (cache_dir() / ROTTEN_TOMATOES).exists(),
    reason=f"Rotten Tomatoes is not in the cache ({cache_dir() / ROTTEN_TOMATOES}); run make setup",
)


@needs_rt
def test_rotten_tomatoes_reads_and_splits_as_documented():
    src = LabeledSourceConfig(kind="rotten_tomatoes")
    check_labeled_source(src)
    df = read_labeled(src)
    # DESIGN.md: 12,808 snippets once the plot rows are gone (fresh 7,403 / rotten 5,405).
    assert len(df) == 12_808
    assert df["label"].value_counts().to_dict() == {"fresh": 7_403, "rotten": 5_405}
    names = label_names_for(df["label"], src.kind)
    assert names == ["rotten", "fresh"]
    s = prepare_splits(df, names, **SPLIT, max_examples=None, seed=0)
    counts = s.summary()
    per_label = {label: sum(c[label] for c in counts.values()) for label in names}
    # 56 repeated snippets (21 rotten, 35 fresh); no snippet carries both labels.
    assert per_label == {"rotten": 5_384, "fresh": 7_368}
    assert sum(counts["test"].values()) == pytest.approx(0.2 * 12_752, abs=2)
    assert len(labeled_fingerprint(LabeledDataConfig(source=src), seed=0)) == 64


def test_perturbed_copies_are_deterministic_shortened_and_never_empty():
    frame = pd.DataFrame(
        {
            "text": ["a quietly devastating and beautiful film", "dull", "overlong but fun"],
            "label": [1, 0, 1],
        }
    )
    copies = perturbed_copies(frame, 3, word_dropout=0.3, swap_probability=0.5, seed=7)
    again = perturbed_copies(frame, 3, word_dropout=0.3, swap_probability=0.5, seed=7)
    other = perturbed_copies(frame, 3, word_dropout=0.3, swap_probability=0.5, seed=8)
    assert copies.equals(again) and not copies.equals(other)
    assert list(copies.columns) == ["text", "label"] and len(copies) == 9
    assert copies["label"].tolist() == [1, 0, 1] * 3
    for copy, original in zip(copies["text"], frame["text"].tolist() * 3, strict=True):
        assert copy and set(copy.split()) <= set(original.split())
    words = copies["text"].str.split().str.len().sum()
    assert words < 3 * frame["text"].str.split().str.len().sum()


def test_perturbed_copies_without_perturbation_repeat_the_texts():
    frame = pd.DataFrame({"text": ["one two three", "four five"], "label": [0, 1]})
    copies = perturbed_copies(frame, 2, word_dropout=0.0, swap_probability=0.0, seed=0)
    assert copies["text"].tolist() == frame["text"].tolist() * 2


def test_fingerprint_of_object_storage_follows_its_files(tmp_path: Path):
    # A file:// URI stands in for s3:// and gs://: the same pyarrow.fs code lists them.
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("text,label\ngood,1\n")
    cfg = LabeledDataConfig(source=LabeledSourceConfig(kind="csv", path=f"file://{data}"))
    first = labeled_fingerprint(cfg, seed=0)
    assert labeled_fingerprint(cfg, seed=0) == first
    (data / "b.csv").write_text("text,label\nbad,0\n")
    second = labeled_fingerprint(cfg, seed=0)
    assert second != first
    (data / "b.csv").write_text("text,label\nbad,0\nawful,0\n")
    assert labeled_fingerprint(cfg, seed=0) != second
