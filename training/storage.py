"""Moving directories between local disk and the run's storage (a path or s3://, gs:// URI).

Publishing is all-or-nothing for readers: a local directory appears under its final name in one
rename; on object storage the `fmstack.json` manifest is written last and readers require it.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

MANIFEST = "fmstack.json"


def is_uri(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def exists(path: str) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_text(path: str) -> str | None:
    """The file's text, or None if it does not exist."""
    if not is_uri(path):
        return Path(path).read_text() if Path(path).is_file() else None
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def write_text(path: str, text: str) -> None:
    """Replace the file in one step: a rename locally, one PUT on object storage."""
    if not is_uri(path):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        staging.write_text(text)
        staging.replace(target)
        return
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    fs.create_dir(p.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def list_names(path: str) -> list[str]:
    """Names of the entries directly in the directory `path`; none if it does not exist."""
    if not is_uri(path):
        return sorted(e.name for e in Path(path).iterdir()) if Path(path).is_dir() else []
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def publish_directory(local_dir: Path, dest: str, manifest_last: str | None = None) -> None:
    """Copy `local_dir` to `dest` so that readers never see a half-written directory."""
    if not is_uri(dest):
        target = Path(dest)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        shutil.copytree(local_dir, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(dest)
    fs.create_dir(root, recursive=True)
    last = [manifest_last] if manifest_last else []
    for f in sorted(local_dir.rglob("*")):
        rel = f.relative_to(local_dir).as_posix()
        if f.is_file() and rel not in last:
            pafs.copy_files(str(f), f"{root}/{rel}", destination_filesystem=fs)
    for rel in last:
        pafs.copy_files(str(local_dir / rel), f"{root}/{rel}", destination_filesystem=fs)


def local_copy(path: str) -> Path:
    """A local directory with the contents of `path` (the path itself when it is local)."""
    if not is_uri(path):
        return Path(path)
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(path)
    target = Path(tempfile.mkdtemp(prefix="fmstack-"))
    pafs.copy_files(root, str(target), source_filesystem=fs)
    return target
