"""Dataset card (a Hugging Face dataset README) and the quality report (markdown + PNG plots).

Both hold only what the data and the config determine, never timings or run ids, so the same
config and seed give byte-identical files (timings live in the manifests)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .chain import N_TIERS, join_tiers
from .registry import stage_names


def lineage(store, names) -> dict[str, dict]:
    """The manifests of ``names`` and of every stage they were made from (their upstream, and so on),
    in run order: what a dataset card may report without reading anything its key does not cover."""
    found: dict[str, dict] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        m = store.stage(name).manifest()
        if m is None:
            continue
        found[name] = m
        todo += list(m.get("upstream") or {})
    return {n: found[n] for n in stage_names() if n in found}


def _table(headers: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(str(x) for x in r) + " |" for r in rows]]


def top_concepts(chains: list[dict], n: int = 15) -> list[tuple[str, int]]:
    return Counter(c["positive"][0].lower() for c in chains).most_common(n)


def write_dataset_card(out: Path, name: str, stages: dict[str, dict], train: list[dict], test: list[dict]) -> str:
    example = join_tiers((train + test)[0]["positive"]) if (train or test) else ""
    lines = [
        "---", "language: [en]", "license: other", f"pretty_name: {name}",
        "task_categories: [text-retrieval, zero-shot-image-classification]",
        "tags: [hierarchy, captions, hierarcaps]",
        "configs:", "  - config_name: default", "    data_files:",
        *([f"      - {{split: train, path: {name}_train.csv}}"] if train else []),
        *([f"      - {{split: test, path: {name}_test.csv}}"] if test else []),
        "---", f"# {name}", "",
        "Caption hierarchies in the HierarCaps format (Alper & Averbuch-Elor, ECCV 2024): each item",
        "is a 4-tier chain, general to specific, joined by ` => `; train items also carry a negative",
        "chain whose tier k contradicts positive tier k and entails positive tier k-1.", "",
        f"Example: `{example}`", "", "## Counts", "",
        *_table(["split", "chains"], [["train", len(train)], ["test", len(test)]]), "",
        "## Pipeline stages", "",
        *_table(["stage", "rows in", "rows out", "rejected"],
                [[s, m["rows_in"], m["rows_out"], m["rows_rejected"]] for s, m in stages.items()]),
        "", "## Top tier-1 concepts", "", ", ".join(f"{w} ({n})" for w, n in top_concepts(train + test)), "",
        "## Pipeline config (what each stage was run with)", "", "```json",
        json.dumps({s: m.get("params", {}) for s, m in stages.items()}, indent=2, sort_keys=True), "```", "",
    ]
    text = "\n".join(lines)
    (out / "README.md").write_text(text, encoding="utf-8")
    return text


def _plots(out: Path, chains: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    by_link: dict[str, list[float]] = {}
    for c in chains:
        for s in c.get("link_scores") or []:
            by_link.setdefault(f"{s['premise_tier']}->{s['hypothesis_tier']}", []).append(s["entailment"])
    neg_c = [s["contradicts_pos"] for c in chains for s in (c.get("neg_scores") or [])]
    neg_e = [s["entails_prev"] for c in chains for s in (c.get("neg_scores") or []) if s["tier"] > 1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for k, v in sorted(by_link.items()):
        axes[0].hist(v, bins=20, range=(0, 1), alpha=0.5, label=f"link {k}")
    axes[0].set_title("positive links: P(entailment)")
    axes[0].legend(fontsize=7)
    axes[1].hist(neg_c, bins=20, range=(0, 1), alpha=0.5, label="P(contradiction | pos_k, neg_k)")
    axes[1].hist(neg_e, bins=20, range=(0, 1), alpha=0.5, label="P(entailment | neg_k, pos_k-1)")
    axes[1].set_title("negatives")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "nli_scores.png", dpi=90)
    plt.close(fig)
    files.append("nli_scores.png")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lengths = [[len(c["positive"][k].split()) for c in chains] for k in range(N_TIERS)]
    ax.boxplot(lengths, tick_labels=[f"tier {k + 1}" for k in range(N_TIERS)])
    ax.set_ylabel("words")
    ax.set_title("tier lengths")
    fig.tight_layout()
    fig.savefig(out / "tier_lengths.png", dpi=90)
    plt.close(fig)
    files.append("tier_lengths.png")
    return files


def write_quality_report(out: Path, name: str, stages: dict[str, dict], chains: list[dict]) -> str:
    """Acceptance per stage and per link, score histograms, tier lengths, top tier-1 concepts. Only
    what the data determines: the same work gives the same bytes (timings stay in the manifests)."""
    counts = {s: {**m, "stats": m.get("stats", {})} for s, m in stages.items()}
    lines = [f"# Quality report: {name}", "", "## Acceptance per stage", ""]
    lines += _table(["stage", "in", "out", "rejected", "kept %"],
                    [[s, m["rows_in"], m["rows_out"], m["rows_rejected"],
                      f"{100 * m['rows_out'] / m['rows_in']:.1f}" if m["rows_in"] else "-"] for s, m in counts.items()])
    for s in ("nli_filter",):
        t = counts.get(s, {}).get("stats", {}).get("tables", {}).get("acceptance-per-link")
        if t:
            lines += ["", f"## {s}: acceptance per link (premise tier -> hypothesis tier)", ""]
            lines += _table(["link", "chains", "passed", "rate"], [[r["link"], r["chains"], r["passed"], r["rate"]] for r in t])
    neg = Counter()
    for c in chains:
        for s in c.get("neg_scores") or []:
            neg[s["tier"]] += 1
    if chains:
        lines += ["", "## Negatives found per tier", ""]
        lines += _table(["tier", "items with a negative", "share"],
                        [[k, neg[k], f"{neg[k] / len(chains):.2f}"] for k in range(1, N_TIERS + 1)])
        gen = counts.get("distill", {}).get("stats", {}).get("generation_check")
        if gen:
            lines += ["", f"H generation check on held-out seeds: validity {gen['validity_rate']:.3f} "
                          f"({gen['n_valid']}/{gen['n']}), malformed {gen['n_malformed']}"]
        lines += ["", "## Top tier-1 concepts", "", *_table(["concept", "chains"], top_concepts(chains)), ""]
        for f in _plots(out, chains):
            lines += [f"![{f}]({f})", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text, encoding="utf-8")
    return text
