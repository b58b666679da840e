"""The run store: artifacts/runs/<run_id>/<stage>/part-NNNNN.parquet plus a manifest per stage.

A stage writes its output in numbered *units*. Each unit is one data shard and one rejects shard,
written to temp files and renamed; the data shard's rename is the commit point, so a killed stage
keeps every finished unit and redoes only the unit it was in. Per-unit counts live in the shard's
Parquet metadata, so totals survive a resume exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .hashing import digest
from .schemas import REJECTS

MANIFEST = "manifest.json"
PROGRESS = "_progress.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def _write_table(path: Path, table: pa.Table, meta: dict | None = None) -> None:
    if meta:
        md = dict(table.schema.metadata or {})
        md[b"hierarcaps"] = json.dumps(meta, sort_keys=True).encode()
        table = table.replace_schema_metadata(md)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def shard_meta(path: Path) -> dict:
    md = pq.read_schema(path).metadata or {}
    raw = md.get(b"hierarcaps")
    return json.loads(raw) if raw else {}


@dataclass
class StageDir:
    """One stage's folder in a run."""

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

    def ensure(self) -> None:
        self.rejects_dir.mkdir(parents=True, exist_ok=True)

    def done_units(self) -> dict[int, dict]:
        """Committed units -> their metadata (counts, input range)."""
        out = {}
        if not self.path.exists():
            return out
        for p in sorted(self.path.glob("part-*.parquet")):
            out[int(p.stem.split("-")[1])] = shard_meta(p)
        return out

    def write_unit(self, index: int, data: pa.Table, rejects: pa.Table | None, meta: dict) -> None:
        """Commit one unit: rejects first, then data (the data rename is the commit point)."""
        self.ensure()
        rejects = rejects if rejects is not None else REJECTS.empty_table()
        _write_table(self.reject_path(index), rejects.cast(REJECTS), meta)
        _write_table(self.unit_path(index), data, meta)

    def clear(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)

    def clean_orphans(self) -> None:
        """Drop temp files and rejects of uncommitted units left by a killed process."""
        if not self.path.exists():
            return
        for p in self.path.rglob(".*.tmp-*"):
            p.unlink(missing_ok=True)
        done = set(self.done_units())
        if self.rejects_dir.exists():
            for p in self.rejects_dir.glob("part-*.parquet"):
                if int(p.stem.split("-")[1]) not in done:
                    p.unlink()

    def data_files(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def reject_files(self) -> list[Path]:
        return sorted(self.rejects_dir.glob("part-*.parquet")) if self.rejects_dir.exists() else []

    def read(self, columns: list[str] | None = None) -> pa.Table:
        files = self.data_files()
        if not files:
            raise FileNotFoundError(f"stage '{self.name}' has no output in {self.path}")
        return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])

    def read_unit(self, index: int, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.unit_path(index), columns=columns)

    def iter_tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for f in self.data_files():
            yield pq.read_table(f, columns=columns)

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
        except FileNotFoundError:
            return None

    def manifest_hash(self) -> str | None:
        m = self.manifest()
        return digest(m) if m else None

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
        except (FileNotFoundError, json.JSONDecodeError):
            return None


class RunStore:
    """artifacts/runs/<run_id>/ with one StageDir per stage and the run's resolved config."""

    def __init__(self, root: str | Path, run_id: str):
        self.root = Path(root)
        self.run_id = run_id
        self.path = self.root / "runs" / run_id

    def stage(self, name: str) -> StageDir:
        return StageDir(self.path / name)

    def exists(self) -> bool:
        return self.path.exists()

    def save_config(self, config_dict: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / "config.json", config_dict)

    def load_config_dict(self) -> dict | None:
        p = self.path / "config.json"
        return json.loads(p.read_text()) if p.exists() else None
