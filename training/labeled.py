"""Labeled examples for classification: read, clean, de-duplicate and split them.

source (packaged Rotten Tomatoes, or the user's csv/jsonl/parquet read with Ray Data) -> pandas
(`text`, `label` as str) -> strip, drop empty and duplicate texts -> per label, order rows by a
stable hash of (seed, text) and cut test, validation and train -> optional stratified sample.

Everything after reading is pure pandas: the labeled sets are small, and the same recipe and seed
give the same splits on any machine.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.assets import ROTTEN_TOMATOES, require
from training.config import LabeledDataConfig, LabeledSourceConfig, SourceConfig
from training.data import (
    DataSourceError,
    _check_uri,
    read_paths,
    source_files,
    update_with_files,
)
from training.storage import is_uri

__all__ = [
    "LABEL",
    "LABELED",
    "ROTTEN_TOMATOES_LABELS",
    "TEXT",
    "LabeledSplits",
    "all_rows",
    "check_labeled_source",
    "label_names_for",
    "labeled_fingerprint",
    "load_splits",
    "perturbed_copies",
    "prepare_splits",
    "read_labeled",
]

TEXT = "text"
LABEL = "label"
LABELED = "labeled"
"""1 for a labeled example, 0 for a copy that only the teacher labels (distillation)."""
ROTTEN_TOMATOES_LABELS = ["rotten", "fresh"]
"""Negative first, so that label 1 means a positive review."""
_SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------- reading


def _packaged_file() -> Path:
    return require(ROTTEN_TOMATOES, "the packaged Rotten Tomatoes set")


def _as_source(src: LabeledSourceConfig) -> SourceConfig:
    """The user's files as a pretraining source, to share data.py's file and URI helpers."""
    return SourceConfig.model_validate({"kind": src.kind, "path": src.path})


def check_labeled_source(src: LabeledSourceConfig) -> None:
    """Fail fast, before Ray starts, when the source's files are missing."""
    if src.path is None:
        _packaged_file()
        return
    if is_uri(src.path):
        _check_uri(src.path, "data.source.path")
        return
    if not source_files(_as_source(src)):
        state = "has no files" if Path(src.path).exists() else "does not exist"
        raise DataSourceError(
            f"data.source.path: {src.path} {state}; point it at a {src.kind} file, "
            "directory or glob"
        )


def _label_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # integer labels read as floats (e.g. 1.0) when a column has gaps
    return str(value).strip()


def _labeled_frame(frame: pd.DataFrame, text_column: str, label_column: str) -> pd.DataFrame:
    """The text and label columns of a frame as `text` and `label`, both str.

    Rows without a text or a label are dropped; integer labels become "0", "1", ...
    """
    for key, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in frame.columns:
            raise DataSourceError(
                f"data.source.{key}: the files have no column '{column}'; set it to one of "
                f"{[str(c) for c in frame.columns]}"
            )
    frame = frame[[text_column, label_column]].dropna()
    return pd.DataFrame(
        {
            TEXT: frame[text_column].astype(str).to_numpy(),
            LABEL: [_label_text(v) for v in frame[label_column]],
        },
    ).astype({TEXT: str, LABEL: str})


def read_labeled(src: LabeledSourceConfig) -> pd.DataFrame:
    """All examples of a source, columns `text` and `label` (both str). Row order is not
    guaranteed for user files (Ray Data reads them in parallel); `prepare_splits` does not
    depend on it."""
    if src.path is None:  # the packaged Rotten Tomatoes set
        raw = pd.read_csv(_packaged_file(), usecols=["category", "text"])
        raw = raw[raw["category"] != "plot"]  # plot summaries carry no sentiment
        return _labeled_frame(raw, "text", "category")

    import ray.data

    paths = read_paths(_as_source(src))
    if src.kind == "csv":
        ds = ray.data.read_csv(paths)
    elif src.kind == "jsonl":
        ds = ray.data.read_json(paths, lines=True)
    else:
        ds = ray.data.read_parquet(paths)
    return _labeled_frame(ds.to_pandas(), src.text_column, src.label_column)


def label_names_for(labels: Iterable[str], kind: str) -> list[str]:
    """Label names in index order: Rotten Tomatoes negative first; else sorted (numerically when
    every label is an integer)."""
    if kind == "rotten_tomatoes":
        return list(ROTTEN_TOMATOES_LABELS)
    names = sorted(set(labels))
    if all(_is_int(n) for n in names):
        names.sort(key=int)
    if len(names) < 2:
        raise DataSourceError(
            f"data.source.label_column: found labels {names}; a classifier needs at least two"
        )
    return names


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- splitting


@dataclass(frozen=True)
class LabeledSplits:
    """Train, validation and test examples: `text` (str) and `label` (index into label_names)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str]

    def summary(self) -> dict[str, dict[str, int]]:
        """Examples per split and label, e.g. {"train": {"rotten": 3000, "fresh": 4100}}."""
        out: dict[str, dict[str, int]] = {}
        for name in _SPLITS:
            counts = getattr(self, name)[LABEL].value_counts()
            out[name] = {n: int(counts.get(i, 0)) for i, n in enumerate(self.label_names)}
        return out


def _order_key(seed: int, text: str) -> int:
    # hashlib, not hash(): Python salts str hashes per process.
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _cut(n: int, test_fraction: float, validation_fraction: float) -> tuple[int, int]:
    """(test, validation) rows out of n: rounded shares, at least one each when n allows, and
    at least one row left for train."""
    n_test = max(math.floor(n * test_fraction + 0.5), 1 if n >= 2 else 0)
    n_val = max(math.floor(n * validation_fraction + 0.5), 1 if n >= 3 else 0)
    while n > 0 and n_test + n_val > n - 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def _quotas(counts: list[int], total: int) -> list[int]:
    """Stratified sample sizes summing to `total` (largest remainders, ties to the first label)."""
    n = sum(counts)
    exact = [total * c / n for c in counts]
    quotas = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(counts)), key=lambda i: (quotas[i] - exact[i], i))
    for i in by_remainder[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _dedup(df: pd.DataFrame) -> pd.DataFrame:
    text = df[TEXT].astype(str).str.strip()
    df = pd.DataFrame({TEXT: text, LABEL: df[LABEL].to_numpy()})[text != ""]
    # A text that appears under two different labels is dropped entirely: keeping either copy
    # would teach (or test) a label that the data itself contradicts. Exact repeats keep one copy,
    # so no text can land in two splits.
    consistent = df.groupby(TEXT)[LABEL].transform("nunique") == 1
    return df[consistent].drop_duplicates(TEXT)


def _encoded(df: pd.DataFrame, label_names: list[str], seed: int) -> pd.DataFrame:
    """De-duplicated rows, labels as indices of `label_names`, in the split order."""
    unknown = sorted(set(df[LABEL].astype(str)) - set(label_names))
    if unknown:
        raise DataSourceError(f"labels {unknown[:5]} are not among the label names {label_names}")
    rows = _dedup(df)
    index = {name: i for i, name in enumerate(label_names)}
    return rows.assign(
        label=rows[LABEL].astype(str).map(index).astype("int64"),
        _key=np.array([_order_key(seed, t) for t in rows[TEXT]], dtype=np.uint64),
    ).sort_values(["_key", TEXT], kind="stable")


def all_rows(df: pd.DataFrame, label_names: list[str], seed: int = 0) -> pd.DataFrame:
    """Every row of `df` (`text`, `label` as str) as `prepare_splits` cleans it, unsplit:
    duplicates dropped, labels as indices of `label_names` (e.g. a model's own)."""
    return _encoded(df, label_names, seed)[[TEXT, LABEL]].reset_index(drop=True)


def prepare_splits(
    df: pd.DataFrame,
    label_names: list[str],
    *,
    validation_fraction: float,
    test_fraction: float,
    max_examples: int | None,
    seed: int,
) -> LabeledSplits:
    """Clean, de-duplicate and split `df` (`text`, `label` as str) deterministically.

    Within each label, rows are ordered by sha256(seed, text); the first rows go to test, the
    next to validation, the rest to train. `max_examples` takes a stratified sample from the
    front of each of those segments (in the same proportions), so a quick run's test rows are
    also test rows of the full run, and a model trained on a sample (a distillation teacher, say)
    never saw a row of the full run's validation or test split.
    """
    rows = _encoded(df, label_names, seed)
    groups = [rows[rows[LABEL] == i] for i in range(len(label_names))]
    counts = [len(g) for g in groups]
    wanted = counts
    if max_examples is not None and max_examples < sum(counts):
        wanted = _quotas(counts, max_examples)

    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in _SPLITS}
    for group, n, q in zip(groups, counts, wanted, strict=True):
        n_test, n_val = _cut(n, test_fraction, validation_fraction)
        segments = {
            "test": group[:n_test],
            "validation": group[n_test : n_test + n_val],
            "train": group[n_test + n_val :],
        }
        q_test, q_val = _cut(q, test_fraction, validation_fraction)
        want = {"test": q_test, "validation": q_val, "train": q - q_test - q_val}
        take = {name: min(want[name], len(segments[name])) for name in _SPLITS}
        for name in _SPLITS:  # rounding can ask a segment for a row more than it has
            take[name] += min(q - sum(take.values()), len(segments[name]) - take[name])
        for name in _SPLITS:
            parts[name].append(segments[name][: take[name]])

    frames: dict[str, pd.DataFrame] = {}
    for name in _SPLITS:
        # Interleave the labels again (hash order), so that reading a split in order is fair.
        split = pd.concat(parts[name]).sort_values(["_key", TEXT], kind="stable")
        if split.empty:
            fix = "add examples"
            if name != "train":
                more = "data.max_examples or " if max_examples is not None else ""
                fix += f" or raise {more}data.{name}_fraction"
            raise DataSourceError(
                f"the {name} split would be empty ({sum(counts)} examples after dropping empty "
                f"and duplicate texts); {fix}"
            )
        frames[name] = split[[TEXT, LABEL]].reset_index(drop=True)
    return LabeledSplits(label_names=list(label_names), **frames)


def load_splits(data: LabeledDataConfig, seed: int) -> LabeledSplits:
    """Read a recipe's labeled source and split it exactly as its job did."""
    frame = read_labeled(data.source)
    return prepare_splits(
        frame,
        label_names_for(frame[LABEL], data.source.kind),
        validation_fraction=data.validation_fraction,
        test_fraction=data.test_fraction,
        max_examples=data.max_examples,
        seed=seed,
    )


# ---------------------------------------------------------------- augmentation


def perturbed_copies(
    frame: pd.DataFrame,
    copies: int,
    *,
    word_dropout: float,
    swap_probability: float,
    seed: int,
) -> pd.DataFrame:
    """`copies` perturbed versions of every row's text, for the teacher to label.

    Each copy leaves out each word with probability `word_dropout` (never all of them) and, with
    probability `swap_probability`, swaps one pair of neighbouring words. The same frame and seed
    give the same copies. Columns: `text`, and `label`, the original's, kept only for
    bookkeeping: a copy's meaning may have changed, so training uses the teacher's targets.
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(copies):
        for text, label in zip(frame[TEXT], frame[LABEL], strict=True):
            words = text.split()
            draws = rng.random(len(words))
            kept = [w for w, r in zip(words, draws, strict=True) if r >= word_dropout] or words
            if len(kept) > 1 and rng.random() < swap_probability:
                i = int(rng.integers(len(kept) - 1))
                kept[i], kept[i + 1] = kept[i + 1], kept[i]
            texts.append(" ".join(kept))
            labels.append(label)
    return pd.DataFrame({TEXT: texts, LABEL: labels})


# ---------------------------------------------------------------- lineage


def labeled_fingerprint(data_cfg: LabeledDataConfig, seed: int) -> str:
    """A hash of what was read and how it was split: the source description, its files (see
    `update_with_files`; the packaged file's bytes), the split parameters and the seed that
    orders them."""
    src = data_cfg.source
    digest = hashlib.sha256()
    digest.update(src.model_dump_json().encode())
    if src.path is None:
        packaged = _packaged_file()
        digest.update(packaged.name.encode())
        digest.update(packaged.read_bytes())
    else:
        update_with_files(digest, _as_source(src))
    digest.update(
        f"{data_cfg.validation_fraction}:{data_cfg.test_fraction}:{data_cfg.max_examples}:"
        f"{seed}".encode()
    )
    return digest.hexdigest()
