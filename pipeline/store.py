"""The run store: artifacts/runs/<run_id>/<stage>/part-NNNNN.parquet plus a manifest per stage.

A stage writes its output in numbered *units*. Each unit is a data shard, a rejects shard and a
commit record (``part-NNNNN.json``: counts, sizes and checksums), written to temp files and
renamed; the record's rename is the commit point, so a killed stage keeps every finished unit and
redoes only the unit it was in.

Every attempt of a stage works in its own folder, ``.attempts/<stage>/<key>-<id>/``; the stage's
name in the run (``<stage>``) is a link to the attempt that finished last, switched atomically.
A failed or killed rerun therefore never touches the finished version, and downstream stages
always read a finished one. The manifest lists every unit's and file's size and checksum:
:meth:`StageDir.verify` finds damage, which status reports and a rerun repairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UserError
from .hashing import digest
from .io.atomic import atomic_write_json, fsync_path
from .schemas import REJECTS

MANIFEST = "manifest.json"
PROGRESS = "_progress.json"
ATTEMPTS = ".attempts"
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# what a manifest may change between two runs of the same work (timings, where it ran)
VOLATILE = ("wall_s", "finished_at", "versions", "stats", "cache_hit")


class StoreError(UserError):
    """The run store cannot do what was asked (a bad run id, damage, a path outside the root)."""


def check_run_id(run_id: str) -> str:
    """A run id is a plain folder name: letters, digits, '.', '_' and '-', not starting with a dot."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise StoreError(f"run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', not starting with '.'")
    return run_id


def file_sum(path: Path) -> list:
    """[size, blake2b] of a file: what a manifest records to find damage later."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return [path.stat().st_size, h.hexdigest()]


def _write_table(path: Path, table: pa.Table, meta: dict | None = None) -> Path:
    """Write to a temp file (fsynced) and return it: the caller renames it into place."""
    if meta:
        md = dict(table.schema.metadata or {})
        md[b"hierarcaps"] = json.dumps(meta, sort_keys=True).encode()
        table = table.replace_schema_metadata(md)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    fsync_path(tmp)
    return tmp


def shard_meta(path: Path) -> dict:
    md = pq.read_schema(path).metadata or {}
    raw = md.get(b"hierarcaps")
    return json.loads(raw) if raw else {}


def manifest_identity(manifest: dict) -> dict:
    """What a manifest says about the work itself (not when or how fast it ran)."""
    return {k: v for k, v in manifest.items() if k not in VOLATILE}


@dataclass
class StageDir:
    """One stage's folder: a finished version (the run's ``<stage>`` link) or an attempt."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def rejects_dir(self) -> Path:
        return self.path / "rejects"

    def unit_path(self, index: int) -> Path:
        return self.path / f"part-{index:05d}.parquet"

    def reject_path(self, index: int) -> Path:
        return self.rejects_dir / f"part-{index:05d}.parquet"

    def record_path(self, index: int) -> Path:
        return self.path / f"part-{index:05d}.json"

    def ensure(self) -> None:
        self.rejects_dir.mkdir(parents=True, exist_ok=True)

    def done_units(self) -> dict[int, dict]:
        """Committed units -> their commit record (key, counts, sizes and checksums)."""
        out = {}
        if not self.path.exists():
            return out
        for p in sorted(self.path.glob("part-*.json")):
            try:
                out[int(p.stem.split("-")[1])] = json.loads(p.read_text())
            except (ValueError, OSError):
                continue              # a damaged record: the unit is not committed
        return out

    def write_unit(self, index: int, data: pa.Table, rejects: pa.Table | None, meta: dict) -> None:
        """Commit one unit: data and rejects shards, then the record (the commit point)."""
        self.ensure()
        rejects = rejects if rejects is not None else REJECTS.empty_table()
        tmp_rej = _write_table(self.reject_path(index), rejects.cast(REJECTS), meta)
        tmp_data = _write_table(self.unit_path(index), data, meta)
        record = {**meta, "data": file_sum(tmp_data), "rejects": file_sum(tmp_rej)}
        os.replace(tmp_rej, self.reject_path(index))
        os.replace(tmp_data, self.unit_path(index))
        atomic_write_json(self.record_path(index), record)

    def drop_unit(self, index: int) -> None:
        for p in (self.record_path(index), self.unit_path(index), self.reject_path(index)):
            p.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove this folder; for a stage's finished version, the version it links to as well."""
        if self.path.is_symlink():
            target = self.path.resolve()
            self.path.unlink()
            shutil.rmtree(target, ignore_errors=True)
        elif self.path.exists():
            shutil.rmtree(self.path)

    def clean_orphans(self) -> None:
        """Drop temp files and the shards of uncommitted units left by a killed process."""
        if not self.path.exists():
            return
        for p in self.path.rglob(".*.tmp-*"):
            p.unlink(missing_ok=True)
        done = set(self.done_units())
        for p in [*self.path.glob("part-*.parquet"), *self.rejects_dir.glob("part-*.parquet")]:
            if int(p.stem.split("-")[1]) not in done:
                p.unlink()

    def unit_problems(self, index: int, record: dict) -> list[str]:
        """Why a committed unit's shards no longer match its record (missing, resized, changed)."""
        out = []
        for what, path in (("data", self.unit_path(index)), ("rejects", self.reject_path(index))):
            want = record.get(what)
            if not path.is_file():
                out.append(f"{path.name} ({what}) is missing")
            elif want and path.stat().st_size != want[0]:
                out.append(f"{path.name} ({what}) has {path.stat().st_size} bytes, {want[0]} were written")
            elif want and file_sum(path) != want:
                out.append(f"{path.name} ({what}) changed since it was written (checksum differs)")
        return out

    def verify(self) -> list[str]:
        """Damage of a finished stage: units or recorded files missing or changed (empty: intact)."""
        m = self.manifest()
        if m is None:
            return ["no manifest"]
        problems = []
        for index, record in sorted((int(i), r) for i, r in (m.get("unit_sums") or {}).items()):
            problems += self.unit_problems(index, record)
        for rel, want in sorted((m.get("files") or {}).items()):
            p = self.path / rel
            if not p.is_file():
                problems.append(f"{rel} is missing")
            elif file_sum(p) != want:
                problems.append(f"{rel} changed since it was written (size or checksum differs)")
        return problems

    def data_files(self) -> list[Path]:
        return [self.unit_path(i) for i in sorted(self.done_units())]

    def reject_files(self) -> list[Path]:
        return [self.reject_path(i) for i in sorted(self.done_units())]

    def read(self, columns: list[str] | None = None) -> pa.Table:
        files = self.data_files()
        if not files:
            raise FileNotFoundError(f"stage '{self.name}' has no output in {self.path}")
        return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])

    def read_unit(self, index: int, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.unit_path(index), columns=columns)

    def iter_batches(self, columns: list[str] | None = None, batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        """The stage's rows in unit order, a record batch at a time, only ``columns``: what a stage
        reads from a big upstream instead of ``read()`` (memory holds one batch, whatever the size)."""
        for f in self.data_files():
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)

    def num_rows(self) -> int:
        """Rows over all finished units, from the Parquet footers (nothing is read)."""
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.data_files())

    def read_rejects(self) -> pa.Table:
        files = self.reject_files()
        if not files:
            return REJECTS.empty_table()
        return pa.concat_tables([pq.read_table(f).cast(REJECTS) for f in files])

    # manifest -----------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, OSError):
            return None               # a damaged manifest: the stage is not finished

    def manifest_hash(self) -> str | None:
        """Identity of a finished stage for downstream keys: its key, counts and unit checksums,
        never its timings (two runs of the same work have the same hash)."""
        m = self.manifest()
        return digest(manifest_identity(m)) if m else None

    def write_manifest(self, manifest: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.manifest_path, manifest)

    def invalidate(self) -> None:
        self.manifest_path.unlink(missing_ok=True)

    # progress -----------------------------------------------------------------------------
    def write_progress(self, done: int, total: int | None, note: str = "") -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / PROGRESS, {"done": done, "total": total, "note": note, "t": time.time()})

    def progress(self) -> dict | None:
        try:
            return json.loads((self.path / PROGRESS).read_text())
        except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
            return None


class RunStore:
    """artifacts/runs/<run_id>/ with one StageDir per stage, the stages' attempts, the run's
    resolved config and its lock."""

    def __init__(self, root: str | Path, run_id: str):
        self.root = Path(root)
        self.run_id = check_run_id(run_id)
        self.path = self.root / "runs" / run_id

    def stage(self, name: str) -> StageDir:
        """The finished version of a stage (what downstream stages read)."""
        return StageDir(self.path / name)

    def attempts(self, name: str) -> list[StageDir]:
        d = self.path / ATTEMPTS / name
        return [StageDir(p) for p in sorted(d.iterdir())] if d.is_dir() else []

    def working(self, name: str) -> StageDir | None:
        """The newest attempt that is not the finished version (what a running stage writes to)."""
        published = self.stage(name).path.resolve()
        left = [a for a in self.attempts(name) if a.path != published]
        return max(left, key=lambda a: a.path.stat().st_mtime_ns) if left else None

    def attempt(self, name: str, key: str, fresh: bool = False) -> StageDir:
        """Where work for ``key`` goes: the finished version when it is for this key (a repair),
        else an unfinished attempt for it (a resume), else (or with ``fresh``) a new one."""
        if not fresh:
            published = self.stage(name)
            if published.path.is_symlink() and published.path.resolve().name.startswith(f"{key}-"):
                return StageDir(published.path.resolve())
            for a in reversed(self.attempts(name)):
                if a.name.startswith(f"{key}-") and a.path != self.stage(name).path.resolve():
                    return a
        return StageDir(self.path / ATTEMPTS / name / f"{key}-{time.time_ns():x}")

    def publish(self, name: str, attempt: StageDir) -> None:
        """Make a finished attempt the stage's version (one atomic rename of a link), then drop
        the older versions and every other attempt of the stage."""
        link = self.path / name
        target = os.path.relpath(attempt.path, self.path)
        tmp = self.path / f".{name}.link-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        if link.exists() and not link.is_symlink():      # a stage folder from before attempts existed
            shutil.rmtree(link)
        os.replace(tmp, link)
        for other in self.attempts(name):
            if other.path != attempt.path:
                shutil.rmtree(other.path, ignore_errors=True)

    def exists(self) -> bool:
        return self.path.exists()

    def save_config(self, config_dict: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / "config.json", config_dict)

    def load_config_dict(self) -> dict | None:
        p = self.path / "config.json"
        try:
            return json.loads(p.read_text()) if p.exists() else None
        except ValueError as e:
            raise StoreError(f"{p}: not a readable run config ({e})") from None

    def lock(self, what: str = ""):
        """Hold this run for the calling process (see :mod:`pipeline.locks`)."""
        from .locks import RunLock

        return RunLock(self.path, what)
