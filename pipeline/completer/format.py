"""H's two directions as text, and the training pairs made from chains.

* specific -> general (bulk): ``"generalize: {caption}"`` -> ``"{t1} => {t2} => {t3}"``
* general -> specific (negatives): ``"specify: {tier_k}"`` -> tier k+1; the root (producing tier 1)
  is the empty tier, i.e. the input ``"specify: "``.

distill saves the format beside H (``completer.json``), so whoever loads H writes its inputs the
way it was trained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ..chain import N_TIERS, TIER_SEP, chain_problem

FORMAT_FILE = "completer.json"


class PairFormat(BaseModel):
    """Input / target formats of the two directions."""

    model_config = ConfigDict(extra="forbid")

    generalize_prefix: str = "generalize: "
    specify_prefix: str = "specify: "
    # t3 -> t4 ("specify: clause" -> caption): the negatives stage writes negative tier 4 with it
    include_caption_target: bool = True
    # root -> t1 ("specify: " -> category): negative tier 1 comes from the root
    include_root: bool = True

    def generalize_input(self, caption: str) -> str:
        return f"{self.generalize_prefix}{caption}"

    def specify_input(self, tier: str) -> str:
        return f"{self.specify_prefix}{tier}"   # the root "" gives "specify: " (trailing space kept)


def make_training_pairs(chains: Sequence[Sequence[str]], fmt: PairFormat | None = None) -> list[tuple[str, str]]:
    """(source, target) pairs in both directions, for chains ordered general -> specific.

    Per chain ``[t1, t2, t3, t4]``: ``generalize: t4`` -> ``t1 => t2 => t3``; ``specify: `` -> t1
    (root, ``fmt.include_root``), ``specify: t1`` -> t2, ``specify: t2`` -> t3, ``specify: t3`` -> t4
    (``fmt.include_caption_target``). Raises ValueError naming the chain index for malformed chains.
    """
    fmt = fmt or PairFormat()
    pairs: list[tuple[str, str]] = []
    for i, chain in enumerate(chains):
        if why := chain_problem(chain):
            raise ValueError(f"chain {i}: {why}")
        t = [s.strip() for s in chain]
        pairs.append((fmt.generalize_input(t[3]), TIER_SEP.join(t[:3])))
        if fmt.include_root:
            pairs.append((fmt.specify_input(""), t[0]))
        for k in range(N_TIERS - 1):
            if k == N_TIERS - 2 and not fmt.include_caption_target:
                continue
            pairs.append((fmt.specify_input(t[k]), t[k + 1]))
    return pairs


def save_format(model_dir: Path, fmt: PairFormat, max_source_len: int) -> None:
    info = {"format": PairFormat.model_validate(fmt.model_dump(include=set(PairFormat.model_fields))).model_dump(),
            "max_source_len": max_source_len}
    (Path(model_dir) / FORMAT_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))


def load_format(model_dir: str | Path) -> tuple[PairFormat, int | None]:
    """The format H was trained with (defaults for a seq2seq folder or id without one)."""
    p = Path(model_dir) / FORMAT_FILE
    if not p.is_file():
        return PairFormat(), None
    info = json.loads(p.read_text())
    return PairFormat.model_validate(info["format"]), info.get("max_source_len")
