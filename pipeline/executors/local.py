"""Units in the stage's own process, one after the other (the default)."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import pyarrow as pa

from .base import Finished, UnitFn, process_unit


class LocalExecutor:
    def map(self, ctx, todo: Iterable[tuple[int, pa.Table]], fn: UnitFn) -> Iterator[Finished]:
        t = time.perf_counter()
        for index, table in todo:
            yield process_unit(fn, index, table)
        # the units' own time (setup ran before), as the Ray executor reports it: bench/scale_out.py
        ctx.stats["executor"] = {"kind": "local", "units_s": round(time.perf_counter() - t, 3)}
