"""Pretraining data: documents from packaged corpora or the user's files, as Ray Data datasets.

documents -> tokenize -> pack into fixed-length blocks -> stable-hash split into train and
validation -> shuffled once with the recipe's seed -> each worker reads its own equal shard.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.assets import CORPORA, require
from training.config import DataConfig, PretrainConfig, SourceConfig
from training.storage import is_uri

if TYPE_CHECKING:
    import ray.data

TEXT = "text"
INPUT_IDS = "input_ids"
_CHUNK_CHARS = 8000  # long books are cut at paragraph breaks so batches stay balanced


class DataSourceError(FileNotFoundError):
    """A data source named in a recipe cannot be read."""


# ---------------------------------------------------------------- documents


def _paragraph_chunks(text: str, max_chars: int = _CHUNK_CHARS) -> Iterator[str]:
    buf: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        if size and size + len(para) > max_chars:
            yield "\n\n".join(buf)
            buf, size = [], 0
        buf.append(para)
        size += len(para) + 2
    if buf and size:
        yield "\n\n".join(buf)


def _packaged_files(kind: str) -> list[Path]:
    root = require(CORPORA[kind], f"the packaged corpus '{kind}'")
    pattern = {"sotu": "*.json", "moby_dick": "data.txt", "shakespeare": "*_gut.txt"}[kind]
    return sorted(root.glob(pattern))


def packaged_documents(kind: str, limit: int | None = None) -> list[str]:
    """Documents of a packaged corpus, in a fixed order, long ones cut at paragraph breaks."""
    docs: list[str] = []
    for path in _packaged_files(kind):
        raw = path.read_text(encoding="utf-8")
        text = json.loads(raw)["text"] if path.suffix == ".json" else raw
        docs.extend(c for c in _paragraph_chunks(text.strip()) if c.strip())
    return docs[:limit] if limit else docs


def check_sources(cfg: DataConfig) -> None:
    """Fail fast, before Ray starts, when a source's files are missing."""
    for i, src in enumerate(cfg.sources):
        if src.path is None:
            _packaged_files(src.kind)
            continue
        if is_uri(src.path):
            _check_uri(src.path, f"data.sources[{i}].path")
            continue
        p = Path(src.path)
        if not (p.exists() or any(p.parent.glob(p.name))):
            raise DataSourceError(
                f"data.sources[{i}].path: {src.path} does not exist; point it at a "
                f"{src.kind} file, directory or glob"
            )


def source_files(src: SourceConfig) -> list[Path]:
    """The local files a source reads (none for object-storage URIs)."""
    if src.path is None:
        return _packaged_files(src.kind)
    if is_uri(src.path):
        return []
    p = Path(src.path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    return sorted(p.parent.glob(p.name))


def read_paths(src: SourceConfig) -> str | list[str]:
    """What Ray Data reads for a user source: its path (a file, directory or URI), or the files
    a local glob matches, since Ray Data does not expand globs."""
    assert src.path is not None
    if is_uri(src.path) or Path(src.path).exists():
        return src.path
    return [str(f) for f in source_files(src)]


def update_with_files(digest: Any, src: SourceConfig) -> None:
    """Add what a source reads to `digest`: local files' names and bytes; for object storage,
    each file's path, size and modification time (reading every byte back would cost as much
    as the job's own read)."""
    if src.path is not None and is_uri(src.path):
        for path, size, mtime in _remote_files(src.path):
            digest.update(f"{path}:{size}:{mtime}".encode())
        return
    for f in source_files(src):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())


def _remote_files(uri: str) -> list[tuple[str, int | None, float | None]]:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    else:
        infos = [info]
    files = [i for i in infos if i.type == pafs.FileType.File]
    return sorted((i.path, i.size, i.mtime.timestamp() if i.mtime else None) for i in files)


def dataset_fingerprint(cfg: DataConfig) -> str:
    """A hash of what was read: source descriptions and the files behind them."""
    digest = hashlib.sha256()
    for src in cfg.sources:
        digest.update(src.model_dump_json().encode())
        update_with_files(digest, src)
    digest.update(f"{cfg.seq_len}:{cfg.validation_fraction}".encode())
    return digest.hexdigest()


def _check_uri(uri: str, key: str) -> None:
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except Exception as err:  # pyarrow raises several types for bad URIs or credentials
        raise DataSourceError(f"{key}: cannot open {uri}: {err}") from None
    if info.type == pafs.FileType.NotFound:
        raise DataSourceError(f"{key}: {uri} does not exist")


def read_source(src: SourceConfig, limit: int | None) -> ray.data.Dataset:
    """One source as a Ray Dataset with a single `text` column."""
    import ray.data

    if src.path is None:
        return ray.data.from_items([{TEXT: t} for t in packaged_documents(src.kind, limit)])
    ds: ray.data.Dataset
    paths = read_paths(src)
    if src.kind == "text":
        ds = ray.data.read_text(paths)
    elif src.kind == "jsonl":
        ds = ray.data.read_json(paths, lines=True)
    elif src.kind == "csv":
        ds = ray.data.read_csv(paths)
    else:
        ds = ray.data.read_parquet(paths, columns=[src.text_column])
    if src.kind != "text":
        if src.text_column not in ds.columns():
            raise DataSourceError(
                f"data source {src.path} has no column '{src.text_column}'; set text_column "
                f"to one of {ds.columns()}"
            )
        ds = ds.select_columns([src.text_column]).rename_columns({src.text_column: TEXT})
    ds = ds.map_batches(_arrow_text, batch_format="pyarrow")
    return ds.limit(limit) if limit else ds


def _arrow_text(batch: Any) -> Any:
    """A source's rows as an Arrow table of strings. Readers differ (JSON lines come as pandas
    blocks, Parquet as Arrow), and a union of sources must yield one kind of block."""
    import pyarrow as pa

    return pa.table({TEXT: batch.column(TEXT).cast(pa.string())})


def configure_ray_data() -> None:
    """Ray Data settings for fmstack's pipelines, in the driver and in every worker."""
    import ray.data

    context = ray.data.DataContext.get_current()
    # Same recipe, same blocks in the same order: runs with different ZeRO stages stay
    # comparable and a resumed run finds its data position again.
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # fmstack prints its own progress line
    # ...and Ray Data would warn, in every process, that the bars are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def read_documents(cfg: DataConfig) -> ray.data.Dataset:
    sources = [read_source(s, cfg.max_documents) for s in cfg.sources]
    return sources[0].union(*sources[1:]) if len(sources) > 1 else sources[0]


def sample_texts(ds: ray.data.Dataset, max_chars: int = 20_000_000) -> Iterator[str]:
    """Texts for tokenizer training, bounded in size."""
    seen = 0
    for batch in ds.iter_batches(batch_size=512, batch_format="numpy"):
        for text in batch[TEXT]:
            yield str(text)
            seen += len(text)
            if seen >= max_chars:
                return


# ---------------------------------------------------------------- packing


@functools.lru_cache(maxsize=2)
def _cached_tokenizer(path: str) -> Any:
    # The Rust tokenizer alone: packing tasks start fast without importing transformers.
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(path, "tokenizer.json")))


def pack_ids(
    token_lists: list[list[int]], seq_len: int, sep: int, frame: tuple[int, int] | None
) -> np.ndarray:
    """Concatenate documents (each followed by `sep`) and cut them into equal blocks.

    With `frame=(cls, sep)` every block is `[cls] ... [sep]` (BERT style). The tail that does
    not fill a block is dropped.
    """
    body = seq_len - 2 if frame else seq_len
    flat = np.fromiter((t for ids in token_lists for t in (*ids, sep)), dtype=np.int32, count=-1)
    n = len(flat) // body
    blocks = flat[: n * body].reshape(n, body)
    if frame:
        cls_col = np.full((n, 1), frame[0], dtype=np.int32)
        sep_col = np.full((n, 1), frame[1], dtype=np.int32)
        blocks = np.concatenate([cls_col, blocks, sep_col], axis=1)
    return blocks


def is_validation(block: np.ndarray, fraction: float) -> bool:
    """Stable split: a block's place never depends on order, workers or batch boundaries."""
    digest = hashlib.blake2b(block.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 10_000 < fraction * 10_000


def _pack_batch(
    batch: dict[str, np.ndarray],
    tokenizer_dir: str,
    seq_len: int,
    sep: int,
    frame: tuple[int, int] | None,
    fraction: float,
) -> dict[str, np.ndarray]:
    tok = _cached_tokenizer(tokenizer_dir)
    encodings = tok.encode_batch([str(t) for t in batch[TEXT]], add_special_tokens=False)
    blocks = pack_ids([e.ids for e in encodings], seq_len, sep, frame)
    val = np.array([is_validation(b, fraction) for b in blocks], dtype=bool)
    return {INPUT_IDS: blocks, "is_validation": val}


def pack_documents(
    data: DataConfig, documents: ray.data.Dataset, tokenizer_dir: str, *, masked: bool
) -> ray.data.Dataset:
    """Documents tokenized and packed into blocks of `data.seq_len` tokens (`[CLS] ... [SEP]`
    when `masked`), each marked `is_validation`; materialized. The same recipe and tokenizer
    give the same blocks (Ray Data keeps their order), which lets evaluation find a run's
    validation blocks again."""
    from training.tokenizer import load_tokenizer, separator_id

    tokenizer = load_tokenizer(tokenizer_dir)
    if not Path(tokenizer_dir, "tokenizer.json").is_file():
        raise DataSourceError(
            f"tokenizer.path: {tokenizer_dir} has no tokenizer.json; fmstack needs a fast "
            "(Rust) tokenizer. Save one with transformers' AutoTokenizer(use_fast=True)"
        )
    return documents.map_batches(
        _pack_batch,  # type: ignore[arg-type]  # extra arguments arrive through fn_kwargs
        batch_size=256,
        batch_format="numpy",
        fn_kwargs={
            "tokenizer_dir": tokenizer_dir,
            "seq_len": data.seq_len,
            "sep": separator_id(tokenizer),
            "frame": (tokenizer.cls_token_id, tokenizer.sep_token_id) if masked else None,
            "fraction": data.validation_fraction,
        },
    ).materialize()


def build_datasets(
    cfg: PretrainConfig, documents: ray.data.Dataset, tokenizer_dir: str
) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """Packed, split and shuffled train and validation datasets, materialized once."""
    masked = cfg.objective == "masked_lm"
    blocks = pack_documents(cfg.data, documents, tokenizer_dir, masked=masked)
    train = blocks.filter(lambda r: not r["is_validation"]).select_columns([INPUT_IDS])
    val = blocks.filter(lambda r: r["is_validation"]).select_columns([INPUT_IDS])
    train = train.random_shuffle(seed=cfg.train.seed).materialize()
    val = val.materialize()
    per_step = cfg.train.micro_batch_size * cfg.scaling.num_workers
    for name, ds in (("train", train), ("validation", val)):
        if ds.count() < per_step:
            raise DataSourceError(
                f"only {ds.count()} {name} blocks of {cfg.data.seq_len} tokens; need at least "
                f"{per_step} (micro_batch_size x num_workers). Add data, lower data.seq_len"
                + (" or raise data.validation_fraction" if name == "validation" else "")
            )
    return train, val
