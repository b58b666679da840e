"""What the tiny builders share: deterministic training in rounds, held to a quality gate.

A build on a new machine (other CPU, other float rounding) must not depend on luck: each builder
trains a round, measures its model on captions it never saw, and trains another round until the
gate holds. The record (``tiny_build.json``) says how many rounds it took and what it measured;
a build that never reaches its gate fails with :class:`TinyBuildError`, not a weak model.
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

DEFAULT_SEED = 0

# captions no tiny model is trained on (none is in prompts/exemplars.jsonl): the quality gates
# measure on them, and the tests reuse them
HELDOUT_CAPTIONS = [
    "a man riding a horse along the beach at sunset",
    "a plate of sushi with chopsticks on a black tray",
    "children playing soccer in a dusty schoolyard",
    "a small wooden cabin in the snowy mountains",
    "a woman jogging with her dog in the park",
    "a red tractor parked next to a barn",
    "a golden retriever catching a frisbee in the air",
    "a young woman reading a book in a hammock",
    "a steam locomotive crossing a stone bridge",
    "a bowl of cereal with milk and blueberries",
]


class TinyBuildError(RuntimeError):
    """A tiny model that did not reach its quality gate within its rounds."""


@dataclass(frozen=True)
class Gate:
    """``measure(model) -> count`` of held-out successes; the build needs at least ``need``."""
    name: str
    need: int
    measure: Callable[[object], int]


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """One thread and deterministic kernels (reproducible reductions; also fastest at this size)."""
    import torch
    from transformers import set_seed

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    set_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """Indices of ``steps`` batches: seeded epochs, each a fresh permutation."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            perm = list(range(n))
            rng.shuffle(perm)
            order.extend(perm)
        yield order[:batch_size]
        del order[:batch_size]


def train_round(model, make_batch: Callable[[list[int]], dict], n: int, steps: int, batch_size: int, lr: float,
                seed: int, desc: str) -> float:
    """One round of AdamW with warm-up and linear decay; returns the last batch's loss."""
    import torch
    from tqdm.auto import tqdm

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.05, 1 - s / steps))
    loss_v = float("nan")
    bar = tqdm(batches(n, batch_size, steps, seed), total=steps, desc=desc, mininterval=2.0)
    for idx in bar:
        out = model(**make_batch(idx))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_v = float(out.loss.detach())
        bar.set_postfix(loss=f"{loss_v:.3f}", refresh=False)
    model.eval()
    return loss_v


def train_until(model, gate: Gate | None, max_rounds: int, seed: int, desc: str, **round_args) -> dict:
    """Rounds of :func:`train_round` until ``gate`` holds; the record of what was measured."""
    rounds = []
    for r in range(max_rounds):
        loss = train_round(model, seed=seed + r, desc=f"{desc} round {r + 1}", **round_args)
        got = gate.measure(model) if gate else None
        rounds.append({"loss": round(loss, 4), **({gate.name: got} if gate else {})})
        if gate is None or got >= gate.need:
            return {"rounds": rounds, **({"gate": {"measure": gate.name, "need": gate.need, "got": got,
                                                    "of": len(HELDOUT_CAPTIONS)}} if gate else {})}
    raise TinyBuildError(f"{desc}: {gate.name} {rounds[-1][gate.name]}/{len(HELDOUT_CAPTIONS)} after {max_rounds} "
                         f"rounds, the build needs {gate.need}; change the builder (steps, data) or the gate")


def set_greedy(model, tok, **extra) -> None:
    """What the saved model generates with when a caller says nothing: greedy, at most 48 new
    tokens, the tokenizer's end and padding ids (``extra``: other generation settings)."""
    gc = model.generation_config
    gc.do_sample = False
    gc.max_new_tokens = 48
    gc.eos_token_id = tok.eos_token_id
    gc.pad_token_id = tok.pad_token_id
    for name, value in extra.items():
        setattr(gc, name, value)


def pad(seqs: list[list[int]], value: int, left: bool = False):
    import torch

    m = max(len(s) for s in seqs)
    rows = [([value] * (m - len(s)) + s) if left else (s + [value] * (m - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def write_record(out_dir: Path, **info) -> None:
    (out_dir / "tiny_build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def prompt_texts(pdir: Path) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(pdir.glob("*.yaml"))]


def chain_texts(exemplars) -> list[str]:
    from ..chain import TIER_SEP

    out = []
    for ex in exemplars:
        out.extend(ex["positive"])
        out.extend(t for t in (ex.get("negative") or []) if t)
        out.append(TIER_SEP.join(ex["positive"]))
    return out


def inputs(exemplars_path, prompts_dir):
    from .. import prompts as P

    ex_path = Path(exemplars_path) if exemplars_path is not None else P.PROMPTS_DIR / P.EXEMPLARS_FILE
    pdir = Path(prompts_dir) if prompts_dir is not None else P.PROMPTS_DIR
    return ex_path, pdir, P.load_exemplars(ex_path)
