"""The executor contract: take a stage's pending units, hand each one back processed. Whatever
runs them, the driver (the stage's process) stays the single writer: it commits what it gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol

import pyarrow as pa

from ..schemas import CHAINS, REJECTS, conform

if TYPE_CHECKING:
    from ..stage import StageContext

UnitFn = Callable[[int, list], tuple[list[dict], list[dict]]]


@dataclass(frozen=True)
class Finished:
    """One processed unit, ready to commit."""

    index: int
    data: pa.Table
    rejects: pa.Table
    rows_in: int


def process_unit(fn: UnitFn, index: int, table: pa.Table) -> Finished:
    """The stage's unit function over one unit: the same code on every executor."""
    chunk = table.to_pylist()
    out, rejects = fn(index, chunk)
    return Finished(index, conform(out, CHAINS), conform(rejects, REJECTS), len(chunk))


class Executor(Protocol):
    def map(self, ctx: StageContext, todo: Iterable[tuple[int, pa.Table]], fn: UnitFn) -> Iterator[Finished]:
        """Each unit of ``todo`` processed, in any order."""
