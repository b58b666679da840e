"""The stage contract: declared inputs and parameters, a cache key, setup / process / teardown.

A stage is a small class, constructed with exactly the config objects it declares in ``params``
(attribute -> config path, e.g. ``{"nli": "models.nli"}``): it never sees the whole config, so it
cannot read a field its key omits. The key is the hash of those objects plus ``key_material``
(prompt files, model revisions, input digests) and the upstream manifests. ``inputs`` names the
upstream stages (the registry orders stages by them); ``engines`` the attributes holding model
engines, which a caller may hand in already built (a test's small engine) or ``setup`` opens.
``isolated`` stages (model stages) run in a fresh process (:mod:`pipeline.startup`) so their GPU
memory is released when the stage ends.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import pyarrow as pa
from pydantic import BaseModel

from .errors import UserError
from .hashing import digest
from .schemas import SCHEMA_VERSION
from .store import RunStore, StageDir

log = logging.getLogger("hierarcaps")


class StageError(UserError):
    """A stage failed with a message meant for the user (no traceback needed)."""


def jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


@dataclass
class StageContext:
    """What a running stage may touch: its own folder, finished upstream folders, progress."""

    store: RunStore
    stage: "Stage"
    out: StageDir | None = None                   # where this attempt writes (default: the stage's folder)
    force: bool = False
    on_progress: Callable[[int, int | None, str], None] | None = None
    stats: dict = field(default_factory=dict)     # extra numbers for the manifest
    key: str = ""
    model_cache: Path | None = None               # where tiny models are built (a runtime setting)
    executor: Any = None                          # run.executor / run.ray (ExecutorSettings; None: local)
    _last_progress: float = 0.0

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = self.store.stage(self.stage.name)

    def upstream(self, name: str) -> StageDir:
        """A finished upstream stage's folder; only stages the key covers (``upstream_names``)."""
        if name not in self.stage.upstream_names(self.store):
            raise StageError(f"stage '{self.stage.name}' reads '{name}', which is not among its inputs "
                             f"{list(self.stage.upstream_names(self.store))}")
        sd = self.store.stage(name)
        if sd.manifest() is None:
            raise StageError(f"stage '{self.stage.name}' needs '{name}', which has not finished in run "
                             f"{self.store.run_id}; run it first")
        return sd

    def model_path(self, model_id: str) -> str:
        """Tiny ids build offline on demand; anything else goes to from_pretrained unchanged."""
        from .models.tiny import resolve_model

        return resolve_model(model_id, self.model_cache)

    def done_units(self) -> dict[int, dict]:
        return self.out.done_units()

    def commit(self, index: int, data: pa.Table, rejects: pa.Table | None = None,
               rows_in: int | None = None, **meta) -> None:
        """Commit a unit of work. rows_in defaults to out + rejected (a one-to-one stage)."""
        n_rej = 0 if rejects is None else rejects.num_rows
        meta.update(key=self.key, rows_out=data.num_rows, rows_rejected=n_rej,
                    rows_in=data.num_rows + n_rej if rows_in is None else rows_in)
        self.out.write_unit(index, data, rejects, meta)

    def progress(self, done: int, total: int | None = None, note: str = "", force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_progress < 1.0:
            return
        self._last_progress = now
        self.out.write_progress(done, total, note)
        if self.on_progress:
            self.on_progress(done, total, note)


class Stage:
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    inputs: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[dict[str, str]] = {}     # attribute -> dotted config path
    isolated: ClassVar[bool] = False          # run in its own process (model stages)
    engines: ClassVar[tuple[str, ...]] = ()   # attributes holding engines (handed in, or opened by setup)

    def __init__(self, **values):
        missing = sorted(set(self.params) - set(values))
        unknown = sorted(set(values) - set(self.params) - set(self.engines))
        if missing or unknown:
            raise TypeError(f"stage {self.name}: missing parameters {missing}, unknown {unknown}")
        for e in self.engines:
            setattr(self, e, None)
        for k, v in values.items():
            setattr(self, k, v)
        self._opened: set[str] = set()        # engines setup opened (and teardown closes)

    @classmethod
    def from_config(cls, config, **engines) -> "Stage":
        """The stage with its declared objects taken from a PipelineConfig (and nothing else), and
        any engines handed in already built."""
        return cls(**{attr: config.at(path) for attr, path in cls.params.items()}, **engines)

    def param_values(self) -> dict[str, Any]:
        return {attr: jsonable(getattr(self, attr)) for attr in self.params}

    def key_material(self) -> dict:
        """Extra inputs of the cache key: prompt file hashes, model revisions, input files."""
        return {}

    def upstream_names(self, store: RunStore) -> tuple[str, ...]:
        """Upstream stages this run reads (a stage may choose among its declared inputs)."""
        return self.inputs

    def open_engine(self, name: str, build: Callable[[], Any]) -> Any:
        """The engine handed in under ``name``, else one built now (and closed by teardown)."""
        if getattr(self, name) is None:
            setattr(self, name, build())
            self._opened.add(name)
        return getattr(self, name)

    def preflight(self) -> None:
        """Refuse, before waiting on upstream stages or starting a process, a declared model that
        cannot exist (a typo in a path, an unknown tiny id): the error names the config field."""
        from .stages.common import refuse_missing

        for attr, path in self.params.items():
            model = getattr(getattr(self, attr), "model", None)
            if isinstance(model, str):
                refuse_missing(f"{path}.model", model)

    def setup(self, ctx: StageContext) -> None:
        pass

    def process(self, ctx: StageContext) -> None:
        raise NotImplementedError

    def teardown(self, ctx: StageContext) -> None:
        """Close the engines setup opened (GPU memory, worker processes); handed-in ones stay open."""
        for name in sorted(self._opened):
            engine = getattr(self, name, None)
            if engine is not None:
                engine.close()
            setattr(self, name, None)
        self._opened.clear()

    def __getstate__(self) -> dict:
        """What crosses into an isolated stage's process: parameters, never live engines."""
        if any(getattr(self, e, None) is not None for e in self.engines):
            raise StageError(f"stage '{self.name}' holds live engines; run it in this process (isolate=False)")
        return self.__dict__


def stage_key(stage: Stage, store: RunStore) -> str:
    material = {
        "stage": stage.name,
        "version": stage.version,
        "schema": SCHEMA_VERSION,
        "params": stage.param_values(),
        "extra": stage.key_material(),
        "upstream": {n: store.stage(n).manifest_hash() for n in stage.upstream_names(store)},
    }
    return digest(material, 24)
