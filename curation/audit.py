"""The run's curation audit log: ``<run>/curation/audit.jsonl``, one JSON line per decision,
only ever appended to.

Each entry says what a reviewer decided about one item (keep with these tiers, or drop with a
reason), what the tiers were before (the state the log held, else the generated chain), who,
when, and from which file. An entry is named by a hash of its content, so importing the same
file twice appends nothing, and files from several sessions and reviewers merge: an item's
current state is its last entry. The curated test set and the report are computed from here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.hashing import digest
from pipeline.store import RunStore


def log_path(store: RunStore) -> Path:
    return store.path / "curation" / "audit.jsonl"


def read_log(store: RunStore) -> list[dict]:
    """Every entry, in the order appended (a torn last line from a crash is skipped)."""
    p = log_path(store)
    if not p.exists():
        return []
    out = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def entry_key(e: dict) -> str:
    return digest([e["chain_id"], e["action"], e["after"], e["valid"], e.get("reason"), e.get("note"),
                   e.get("reviewer"), e.get("reviewed_at")])


def current(entries: list[dict]) -> dict[str, dict]:
    """chain id -> its last entry."""
    return {e["chain_id"]: e for e in entries}


def append(store: RunStore, entries: list[dict]) -> list[dict]:
    """Append the entries the log does not hold yet (by content key); returns those appended.
    Call under the run lock. ``before`` is filled from the log's current state."""
    log = read_log(store)
    seen, state = {e["entry"] for e in log}, current(log)
    new = []
    for e in entries:
        e = {**e, "entry": entry_key(e)}
        if e["entry"] in seen:
            continue
        prior = state.get(e["chain_id"])
        e["before"] = prior["after"] if prior and prior["action"] == "keep" else e["generated"]
        seen.add(e["entry"])
        state[e["chain_id"]] = e
        new.append(e)
    if new:
        p = log_path(store)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in new))
            f.flush()
            os.fsync(f.fileno())
    return new
