"""Dataset card (a Hugging Face dataset README) and the quality report."""

from __future__ import annotations

import json
from collections import Counter

from . import TIER_SEP


def write_dataset_card(ctx, train: list[dict], test: list[dict]) -> str:
    cfg = ctx.config
    name = cfg.export.name
    top = Counter(c["positive"][0].lower() for c in train + test).most_common(15)
    stages = {}
    for s in ("ingest", "seed", "nli_filter", "augment", "distill", "bulk", "negatives"):
        m = ctx.store.stage(s).manifest()
        if m:
            stages[s] = {k: m[k] for k in ("rows_in", "rows_out", "rows_rejected", "wall_s")}
    example = TIER_SEP.join((train + test)[0]["positive"]) if (train or test) else ""
    lines = [
        "---",
        "language: [en]",
        "license: other",
        f"pretty_name: {name}",
        "task_categories: [text-retrieval, zero-shot-image-classification]",
        "tags: [hierarchy, captions, hierarcaps]",
        "---",
        f"# {name}",
        "",
        "Caption hierarchies in the HierarCaps format (Alper & Averbuch-Elor, ECCV 2024): each item",
        "is a 4-tier chain, general to specific, joined by ` => `; train items also carry a negative",
        "chain whose tier k contradicts positive tier k and entails positive tier k-1.",
        "",
        f"Example: `{example}`",
        "",
        "## Counts",
        "",
        "| split | chains |",
        "|---|---|",
        f"| train | {len(train)} |",
        f"| test | {len(test)} |",
        "",
        "## Pipeline stages",
        "",
        "| stage | rows in | rows out | rejected | wall s |",
        "|---|---|---|---|---|",
        *[f"| {s} | {m['rows_in']} | {m['rows_out']} | {m['rows_rejected']} | {m['wall_s']} |" for s, m in stages.items()],
        "",
        "## Top tier-1 concepts",
        "",
        ", ".join(f"{w} ({n})" for w, n in top),
        "",
        "## Pipeline config",
        "",
        "```json",
        json.dumps(cfg.model_dump(mode="json"), indent=2),
        "```",
        "",
    ]
    text = "\n".join(lines)
    (ctx.out.path / "README.md").write_text(text, encoding="utf-8")
    return text
