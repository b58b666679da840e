"""The curation report (markdown, JSON and a PNG) over every item's current audit entry.

Valid as generated: a tier that the reviewer kept unchanged and did not mark not valid; a chain
is fully valid when the item was kept with all four tiers valid (a dropped item is not). Shares
per tier are over kept items; the full share over every reviewed item. This is what the paper's
"about 75% of generated chains are fully valid" measures.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.chain import N_TIERS, word_count


def summarize(entries: list[dict], rejects_in_file: int = 0) -> dict:
    kept = [e for e in entries if e["action"] == "keep"]
    dropped = [e for e in entries if e["action"] == "drop"]
    n = len(entries)

    def mean(xs):
        return round(sum(xs) / len(xs), 2) if xs else None

    per_tier = []
    for k in range(N_TIERS):
        per_tier.append({
            "tier": k + 1,
            "valid_as_generated": sum(e["valid"][k] is True for e in kept),
            "valid_share": round(sum(e["valid"][k] is True for e in kept) / len(kept), 4) if kept else None,
            "edited": sum(e["after"][k] != e["generated"][k] for e in kept),
            "words_before": mean([word_count(e["generated"][k]) for e in kept]),
            "words_after": mean([word_count(e["after"][k]) for e in kept]),
        })
    fully = sum(all(v is True for v in e["valid"]) for e in kept)
    reasons = Counter((e.get("reason") or "(no reason)") for e in dropped)
    return {"reviewed": n, "kept": len(kept), "dropped": len(dropped),
            "fully_valid": fully, "fully_valid_share": round(fully / n, 4) if n else None,
            "any_tier_edited": sum(e["after"] != e["generated"] for e in kept),
            "reviewers": sorted({e.get("reviewer") or "(unnamed)" for e in entries}),
            "per_tier": per_tier, "drop_reasons": dict(reasons.most_common()),
            "rejected_in_last_file": rejects_in_file}


def markdown(s: dict, title: str = "Curation report") -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = [f"# {title}", "",
             f"Reviewed items: {s['reviewed']} (kept {s['kept']}, dropped {s['dropped']}); "
             f"reviewers: {', '.join(s['reviewers']) or '-'}.", "",
             f"**Fully valid as generated: {s['fully_valid']} of {s['reviewed']} ({pct(s['fully_valid_share'])})**; "
             f"kept chains with at least one tier edited: {s['any_tier_edited']}.", "",
             "| tier | valid as generated (of kept) | edited | words before | words after |",
             "|---|---|---|---|---|"]
    for t in s["per_tier"]:
        lines.append(f"| {t['tier']} | {t['valid_as_generated']} ({pct(t['valid_share'])}) | {t['edited']} "
                     f"| {t['words_before']} | {t['words_after']} |")
    lines += ["", "Dropped items by reason:", ""]
    lines += [f"- {r}: {c}" for r, c in s["drop_reasons"].items()] or ["- none"]
    lines += ["", f"Rows the last imported file had rejected (see the rejects table): {s['rejected_in_last_file']}.", ""]
    return "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiers = [t["tier"] for t in s["per_tier"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.bar(tiers, [100 * (t["valid_share"] or 0) for t in s["per_tier"]], color="#4a8a4a")
    a.axhline(100 * (s["fully_valid_share"] or 0), color="#b33", ls="--", label="fully valid chains")
    a.set(title="valid as generated (% of kept)", xlabel="tier", ylim=(0, 100), xticks=tiers)
    a.legend(loc="lower left", fontsize=8)
    w = 0.38
    b.bar([x - w / 2 for x in tiers], [t["words_before"] or 0 for t in s["per_tier"]], w, label="generated")
    b.bar([x + w / 2 for x in tiers], [t["words_after"] or 0 for t in s["per_tier"]], w, label="curated")
    b.set(title="mean words per tier", xlabel="tier", xticks=tiers)
    b.legend(fontsize=8)
    fig.suptitle(f"{s['reviewed']} reviewed, {s['kept']} kept, {s['dropped']} dropped", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(folder: Path, entries: list[dict], rejects_in_file: int = 0, title: str = "Curation report") -> dict:
    s = summarize(entries, rejects_in_file)
    (folder / "report.json").write_text(json.dumps(s, indent=2), encoding="utf-8")
    (folder / "report.md").write_text(markdown(s, title), encoding="utf-8")
    plot(s, folder / "report.png")
    return s
