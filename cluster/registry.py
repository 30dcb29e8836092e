"""The model registry: immutable numbered versions of exported models, and movable aliases.

The root is a local directory or an s3:// or gs:// URI. Reads and uploads go through `pyarrow.fs`,
so the same code serves both; local roots add what object stores lack (rename, fsync, flock).
Layout under the root:

    <name>/versions/<n>/                the export's files and its fmstack.json, as registered
    <name>/versions/<n>/version.json    commit marker (registered_at, source), written last
    <name>/aliases/<alias>.json         {"version": n, "history": [...], "log": [...]}
    <name>/aliases/.lock                local roots: serialises alias updates (fcntl.flock)
    <name>/.tmp/                        local roots: staging and temporary files

A version is visible only once its commit marker exists. Locally a version is staged in
`<name>/.tmp/` and appears in one directory rename; on object stores its files are uploaded first
and the marker last. An alias, with its history, is one JSON file replaced in one step (rename
locally, a single PUT on object stores), so a reader always sees a complete alias.

Object stores offer no rename and no lock here: register and promote into one from a single
process at a time (a CI pipeline, say); concurrent writers there can lose an alias update.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import operator
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

__all__ = [
    "DEFAULT_ROOT",
    "REGISTRY_ENV",
    "CorruptModelError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelVersion",
    "PromotionRefused",
    "Registry",
    "RegistryError",
    "Requirement",
    "default_root",
    "is_model_ref",
    "parse_ref",
    "parse_requirement",
]

DEFAULT_ROOT = "runs/registry"
REGISTRY_ENV = "FMSTACK_REGISTRY"
_URI_PREFIX = "models:/"

# training.storage.MANIFEST; repeated because importing `training` loads torch (seconds), which
# listing and promoting never need. A unit test pins the two together.
_MANIFEST = "fmstack.json"
_MARKER = "version.json"
_LOCK = ".lock"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_VERSION = re.compile(r"[vV]?([0-9]+)")
_LATEST = "latest"
_REF_HELP = "expected NAME, NAME@VERSION, NAME@ALIAS or models:/NAME@ALIAS, e.g. sst2@3"


class RegistryError(Exception):
    """The registry cannot do what was asked (the message says why)."""


class ModelNotFoundError(RegistryError, LookupError):
    """No such model, version or alias."""


class CorruptModelError(RegistryError):
    """A file of an export or a stored version does not match its checksum."""


class PromotionRefused(RegistryError):
    """A version failed the metric requirements of a promotion."""

    def __init__(self, ref: str, alias: str, failures: list[str]) -> None:
        self.ref, self.alias, self.failures = ref, alias, failures
        super().__init__(f"refused to promote {ref} to {alias}: {'; '.join(failures)}")


def default_root() -> str:
    """`$FMSTACK_REGISTRY`, else `runs/registry`."""
    return os.environ.get(REGISTRY_ENV) or DEFAULT_ROOT


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- references


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a version, an alias, or (both None) the latest version."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def is_model_ref(text: str) -> bool:
    """True for a `models:/...` registry reference, as opposed to a directory path or URI."""
    return text.startswith(_URI_PREFIX)


def parse_ref(ref: str) -> ModelRef:
    """Parse `name`, `name@3`, `name@v3`, `name@alias`, `models:/name@alias` or `models:/name/3`."""
    text = ref.strip()
    if is_model_ref(text):
        body = text[len(_URI_PREFIX) :]
        name, sep, selector = body.partition("/") if "/" in body else body.partition("@")
    else:
        name, sep, selector = text.partition("@")
    if not _NAME.fullmatch(name) or (sep and not selector):
        raise ValueError(f"bad model reference {ref!r}: {_REF_HELP}")
    if not sep or selector == _LATEST:
        return ModelRef(name)
    version = _VERSION.fullmatch(selector)
    if version:
        return ModelRef(name, version=_check_version(int(version.group(1))))
    if not _ALIAS.fullmatch(selector):
        raise ValueError(f"bad model reference {ref!r}: {_REF_HELP}")
    return ModelRef(name, alias=selector)


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"bad model name {name!r}: use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit"
        )
    return name


def _check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias) or alias == _LATEST or _VERSION.fullmatch(alias):
        raise ValueError(
            f"bad alias {alias!r}: use letters, digits, '_' and '-', starting with a letter; "
            f"'{_LATEST}' and version-like names (v3) are reserved"
        )
    return alias


def _check_version(version: int) -> int:
    if version < 1:
        raise ValueError(f"bad version {version}: versions are numbered from 1")
    return version


# ---------------------------------------------------------------- metric requirements

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
_REQUIREMENT = re.compile(r"\s*([A-Za-z_][\w./-]*)\s*(>=|<=|==|>|<)\s*(.*?)\s*")


@dataclasses.dataclass(frozen=True)
class Requirement:
    """A metric gate such as `accuracy>=0.80`."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def failure(self, metrics: Mapping[str, Any]) -> str | None:
        """Why `metrics` fail this requirement, or None when they meet it."""
        if self.metric not in metrics:
            have = ", ".join(sorted(metrics)) or "none"
            return f"{self.metric} is missing (metrics: {have}), needed for {self}"
        value = metrics[self.metric]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{self.metric} is {value!r}, not a number, needed for {self}"
        if not _OPS[self.op](float(value), self.threshold):
            return f"{self.metric} is {value:.4g}, needs {self.op} {self.threshold:g}"
        return None


def parse_requirement(text: str) -> Requirement:
    """Parse `METRIC OP NUMBER` (OP one of >=, >, <=, <, ==); ValueError says what is wrong."""
    match = _REQUIREMENT.fullmatch(text)
    if not match:
        raise ValueError(
            f"bad requirement {text!r}: expected METRIC OP NUMBER with OP one of "
            f"{', '.join(_OPS)}, e.g. accuracy>=0.80"
        )
    metric, op, number = match.groups()
    try:
        threshold = float(number)
    except ValueError:
        raise ValueError(
            f"bad requirement {text!r}: threshold {number!r} is not a number, e.g. {metric}{op}0.80"
        ) from None
    if threshold != threshold or threshold in (float("inf"), float("-inf")):
        raise ValueError(f"bad requirement {text!r}: the threshold must be a finite number")
    return Requirement(metric, op, threshold)


# ---------------------------------------------------------------- versions


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One registered version and what its manifest says."""

    name: str
    version: int
    uri: str
    """Where the version's files are: a local path, or a URI under an s3://, gs:// root."""
    manifest: dict[str, Any]
    created_at: str
    """When the model was exported (the manifest's `created_at`, else registered_at)."""
    registered_at: str
    source: str
    """Where it was registered from (the export directory, or what the caller passed)."""
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def task(self) -> str | None:
        return self.manifest.get("task")

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {})


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _listed_files(manifest: Mapping[str, Any], where: str) -> list[str]:
    """The manifest's relative file paths; refuses any that would escape the model directory."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CorruptModelError(f"{where}: {_MANIFEST} has no 'files' checksums")
    for rel in files:
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or rel in (_MANIFEST, _MARKER):
            raise CorruptModelError(f"{where}: {_MANIFEST} lists an invalid file path {rel!r}")
    return sorted(files)


def _verify(directory: Path, manifest: Mapping[str, Any], what: str) -> None:
    """Raise CorruptModelError naming the first file that is missing or differs."""
    from training.checkpoint import sha256_file

    for rel in _listed_files(manifest, what):
        path = directory / rel
        if not path.is_file():
            raise CorruptModelError(f"{what}: {path} is missing (listed in {_MANIFEST})")
        actual, expected = sha256_file(path), manifest["files"][rel]
        if actual != expected:
            raise CorruptModelError(
                f"{what}: {path} does not match its checksum (sha256 {actual[:16]}..., "
                f"{_MANIFEST} says {expected[:16]}...)"
            )


# ---------------------------------------------------------------- the registry


class Registry:
    """A model registry rooted at a directory or an s3://, gs:// URI."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        filesystem: pafs.FileSystem | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """`filesystem`: use it with `root` as a path inside it (instead of parsing `root`).
        `cache_dir`: where versions from a remote root are downloaded (default: the fmstack
        cache)."""
        root = os.fspath(root)
        if filesystem is not None:
            self._fs, base = filesystem, root
        elif "://" in root:
            self._fs, base = pafs.FileSystem.from_uri(root)
        else:
            self._fs, base = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root))
        self.root = root
        self._base = base.rstrip("/")
        # Local disks get renames and locks; anything else is treated as an object store.
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None

    def __repr__(self) -> str:
        return f"Registry({self.root!r})"

    # ------------------------------------------------------------ reading

    def list_models(self) -> list[str]:
        """Names of the models with at least one version, sorted."""
        return [
            info.base_name
            for info in self._list(self._base)
            if info.type == pafs.FileType.Directory
            and _NAME.fullmatch(info.base_name)
            and self._committed(info.base_name)
        ]

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All committed versions of `name`, oldest first."""
        committed = self._committed(name)
        if not committed:
            raise self._no_model(name)
        aliases = self.aliases(name)
        return [v for n in committed if (v := self._load(name, n, aliases)) is not None]

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version for model `name`."""
        result: dict[str, int] = {}
        for info in self._list(self._path(name, "aliases")):
            alias, dot, ext = info.base_name.rpartition(".")
            if ext == "json" and dot and _ALIAS.fullmatch(alias):
                state = self._read_json(info.path)
                if state is not None:
                    result[alias] = int(state["version"])
        return result

    def alias_history(self, name: str, alias: str) -> list[dict[str, Any]]:
        """Every promotion and rollback of `name@alias`, oldest first."""
        state = self._read_json(self._alias_path(name, alias))
        return list(state.get("log", [])) if state else []

    def get(self, ref: str | ModelRef) -> ModelVersion:
        """The version a reference names (see `parse_ref`)."""
        parsed = ref if isinstance(ref, ModelRef) else parse_ref(ref)
        name = parsed.name
        committed = self._committed(name)
        if not committed:
            raise self._no_model(name)
        aliases = self.aliases(name)
        if parsed.alias is not None:
            if parsed.alias not in aliases:
                have = ", ".join(sorted(aliases)) or "none"
                raise ModelNotFoundError(f"{name} has no alias {parsed.alias!r} (aliases: {have})")
            number = aliases[parsed.alias]
        else:
            number = committed[-1] if parsed.version is None else parsed.version
        version = self._load(name, number, aliases) if number in committed else None
        if version is None:
            raise ModelNotFoundError(
                f"{name} has no version {number} (versions: {_spans(committed)})"
            )
        return version

    def resolve(self, ref: str | ModelRef, *, verify: bool = True) -> Path:
        """A local directory with the version's files, checksums verified (downloaded and
        cached first when the root is remote)."""
        version = self.get(ref)
        directory = Path(version.uri) if self._local else self._download(version)
        if verify:
            _verify(directory, version.manifest, version.ref)
        return directory

    # ------------------------------------------------------------ registering

    def register(
        self, model_dir: str | os.PathLike[str], name: str, *, source: str | None = None
    ) -> ModelVersion:
        """Copy an export (verified first) into the next version of `name`."""
        from training.checkpoint import read_manifest
        from training.storage import local_copy

        _check_name(name)
        origin = os.fspath(model_dir)
        src = local_copy(origin)
        try:
            try:
                manifest = read_manifest(src)
            except (FileNotFoundError, json.JSONDecodeError) as err:
                raise RegistryError(f"cannot register {origin}: {err}") from None
            _verify(src, manifest, f"refusing to register {origin}")
            record = {
                "registered_at": _now(),
                "source": source or (origin if "://" in origin else str(Path(origin).resolve())),
            }
            files = [*_listed_files(manifest, origin), _MANIFEST]
            publish = self._publish_local if self._local else self._publish_remote
            number = publish(name, src, files, json.dumps(record, indent=2).encode())
        finally:
            if "://" in origin:  # local_copy downloaded it into a temporary directory
                shutil.rmtree(src, ignore_errors=True)
        version = self._load(name, number, self.aliases(name))
        if version is None:  # only if someone deleted it under us
            raise RegistryError(f"{name}@{number} vanished right after it was registered")
        return version

    def _publish_local(self, name: str, src: Path, files: list[str], marker: bytes) -> int:
        """Stage under a hidden name, then rename to the next free number (retrying if another
        process takes it first). Files are not fsynced: checksums on load catch a torn write."""
        versions = Path(self._path(name, "versions"))
        versions.mkdir(parents=True, exist_ok=True)
        staging = self._scratch(name) / f"version-{uuid.uuid4().hex}"
        try:
            for rel in files:
                self._copy_file(src / rel, str(staging / rel))
            self._write_bytes(str(staging / _MARKER), marker)
            while True:
                number = max(self._numbers(name), default=0) + 1
                try:
                    os.rename(staging, versions / str(number))
                    return number
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _publish_remote(self, name: str, src: Path, files: list[str], marker: bytes) -> int:
        """Upload into the next number (past any abandoned upload), the marker last."""
        number = max(self._numbers(name), default=0) + 1
        dest = self._path(name, "versions", str(number))
        try:
            for rel in files:
                self._copy_file(src / rel, f"{dest}/{rel}")
            self._write_bytes(f"{dest}/{_MARKER}", marker)
        except BaseException:
            # Invisible without a marker anyway; this only saves the storage.
            with suppress(OSError):
                self._fs.delete_dir(dest)
            raise
        return number

    def _copy_file(self, src: Path, dest: str) -> None:
        self._fs.create_dir(dest.rpartition("/")[0], recursive=True)
        with src.open("rb") as fin, self._fs.open_output_stream(dest) as fout:
            shutil.copyfileobj(fin, fout, 8 << 20)

    def _download(self, version: ModelVersion) -> Path:
        """The version in the local cache; immutable versions make the cache always valid."""
        if self._cache_dir is not None:
            cache = self._cache_dir
        else:
            from training.assets import cache_dir

            cache = cache_dir() / "registry"
        key = _sha256_bytes(self.root.encode())[:12]
        target = cache / key / version.name / str(version.version)
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            for rel in [*_listed_files(version.manifest, version.ref), _MANIFEST, _MARKER]:
                local = staging / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                try:
                    pafs.copy_files(
                        self._path(version.name, "versions", str(version.version), rel),
                        str(local),
                        source_filesystem=self._fs,
                        destination_filesystem=pafs.LocalFileSystem(),
                    )
                except FileNotFoundError:
                    raise CorruptModelError(
                        f"{version.ref}: {version.uri}/{rel} is missing (listed in {_MANIFEST})"
                    ) from None
            try:
                staging.rename(target)
            except OSError as err:
                # Another process finished the same download first; theirs is as good.
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    # ------------------------------------------------------------ aliases

    def promote(
        self,
        name: str,
        version: int,
        alias: str = "production",
        require: Iterable[str | Requirement] = (),
    ) -> ModelVersion:
        """Point `alias` at `name@version` if its metrics meet every requirement."""
        _check_alias(alias)
        requirements = [r if isinstance(r, Requirement) else parse_requirement(r) for r in require]
        target = self.get(ModelRef(name, version=_check_version(version)))
        failures = [f for r in requirements if (f := r.failure(target.metrics)) is not None]
        if failures:
            raise PromotionRefused(target.ref, alias, failures)
        with self._alias_lock(name):
            state = self._read_json(self._alias_path(name, alias)) or {}
            history: list[int] = list(state.get("history", []))
            if history[-1:] != [version]:
                history.append(version)
            self._write_alias(name, alias, state, version, history, "promote", requirements)
        return self.get(ModelRef(name, version=version))

    def rollback(self, name: str, alias: str = "production") -> ModelVersion:
        """Point `alias` back at the version it named before the latest promotion."""
        _check_alias(alias)
        self.get(ModelRef(name))  # an unknown model gets its own message, and no lock file
        with self._alias_lock(name):
            state = self._read_json(self._alias_path(name, alias))
            if state is None:
                raise ModelNotFoundError(f"{name} has no alias {alias!r} to roll back")
            history: list[int] = list(state.get("history", []))
            if len(history) < 2:
                raise RegistryError(
                    f"{name}@{alias} has no earlier version to roll back to "
                    f"(it has only pointed at version {state['version']})"
                )
            history.pop()
            self._write_alias(name, alias, state, history[-1], history, "rollback", [])
        return self.get(ModelRef(name, version=history[-1]))

    def _write_alias(
        self,
        name: str,
        alias: str,
        state: Mapping[str, Any],
        version: int,
        history: list[int],
        action: str,
        requirements: list[Requirement],
    ) -> None:
        # History and log live in the alias file itself: one atomic write moves both.
        now = _now()
        entry: dict[str, Any] = {
            "at": now,
            "action": action,
            "version": version,
            "previous": state.get("version"),
        }
        if requirements:
            entry["require"] = [str(r) for r in requirements]
        document = {
            "alias": alias,
            "version": version,
            "updated_at": now,
            "history": history,
            "log": [*state.get("log", []), entry],
        }
        data = json.dumps(document, indent=2).encode()
        scratch = self._scratch(name) if self._local else None
        self._write_bytes(self._alias_path(name, alias), data, scratch)

    @contextmanager
    def _alias_lock(self, name: str) -> Iterator[None]:
        """Serialise alias read-modify-writes between processes on a local root."""
        directory = Path(self._path(name, "aliases"))
        if not self._local:
            yield
            return
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / _LOCK).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ------------------------------------------------------------ storage

    def _path(self, *parts: str) -> str:
        return "/".join(p for p in (self._base, *parts) if p)

    def _uri(self, path: str) -> str:
        """`path` as the user would name it: under the root URI when the root is one."""
        if "://" not in self.root or self._local:
            return path
        prefix, mark, query = self.root.partition("?")  # keep options such as ?region=
        return prefix.rstrip("/") + path[len(self._base) :] + mark + query

    def _alias_path(self, name: str, alias: str) -> str:
        return self._path(name, "aliases", f"{alias}.json")

    def _list(self, path: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(path, allow_not_found=True)
        try:
            infos = self._fs.get_file_info(selector)
        except FileNotFoundError:
            # pyarrow fails a directory it could not list if the directory exists by the time it
            # checks again: another process has just created it. Listing again sees it.
            infos = self._fs.get_file_info(selector)
        return sorted(infos, key=lambda info: info.base_name)

    def _numbers(self, name: str) -> list[int]:
        """Numbered version directories, committed or not, ascending."""
        return sorted(
            int(info.base_name)
            for info in self._list(self._path(name, "versions"))
            if info.type == pafs.FileType.Directory and info.base_name.isdigit()
        )

    def _committed(self, name: str) -> list[int]:
        marker = [self._path(name, "versions", str(n), _MARKER) for n in self._numbers(name)]
        infos = self._fs.get_file_info(marker) if marker else []
        return [int(i.path.split("/")[-2]) for i in infos if i.type == pafs.FileType.File]

    def _load(self, name: str, number: int, aliases: Mapping[str, int]) -> ModelVersion | None:
        directory = self._path(name, "versions", str(number))
        record = self._read_json(f"{directory}/{_MARKER}")
        if record is None:
            return None
        manifest = self._read_json(f"{directory}/{_MANIFEST}")
        if manifest is None:
            raise CorruptModelError(f"{name}@{number}: {directory}/{_MANIFEST} is missing")
        return ModelVersion(
            name=name,
            version=number,
            uri=self._uri(directory),
            manifest=manifest,
            created_at=str(manifest.get("created_at") or record["registered_at"]),
            registered_at=record["registered_at"],
            source=record.get("source", ""),
            aliases=tuple(sorted(a for a, v in aliases.items() if v == number)),
        )

    def _read_json(self, path: str) -> Any:
        """The parsed file, or None if it does not exist."""
        try:
            with self._fs.open_input_stream(path) as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return json.loads(data)
        except json.JSONDecodeError as err:
            raise CorruptModelError(f"{path} is not valid JSON ({err})") from None

    def _scratch(self, name: str) -> Path:
        """A local directory for staging, beside but outside the listed ones: pyarrow fails a
        listing when an entry vanishes (renamed away) between reading and stat-ing it."""
        scratch = Path(self._path(name, ".tmp"))
        scratch.mkdir(parents=True, exist_ok=True)
        return scratch

    def _write_bytes(self, path: str, data: bytes, scratch: Path | None = None) -> None:
        """Replace `path` in one step: temp file (in `scratch`, else beside it) + fsync + rename
        locally; one PUT elsewhere."""
        if not self._local:
            self._fs.create_dir(path.rpartition("/")[0], recursive=True)
            with self._fs.open_output_stream(path) as f:
                f.write(data)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = (scratch or target.parent) / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with temp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def _no_model(self, name: str) -> ModelNotFoundError:
        have = ", ".join(self.list_models()) or "none"
        return ModelNotFoundError(f"no model named {name!r} in {self.root} (models: {have})")


def _spans(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    spans: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(spans)
