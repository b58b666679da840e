"""Benchmark report: markdown table (with the paper's CLIP ViT-B/32 numbers as reference) and a bar plot."""

from __future__ import annotations

from pathlib import Path

# Alper & Averbuch-Elor, ECCV 2024 (CLIP ViT-B/32 on the HierarCaps 1K test set).
PAPER_REFERENCE = {
    "paper CLIP ViT-B/32 zero-shot": {"precision": 0.14, "recall": 0.36, "d_corr": 0.89},
    "paper CLIP ViT-B/32 RE fine-tuned": {"precision": 0.15, "recall": 0.47, "d_corr": 0.99},
}
METRICS = ("precision", "recall", "d_corr")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown_table(results: dict[str, dict], reference: bool = True) -> str:
    rows = dict(results)
    if reference:
        rows.update(PAPER_REFERENCE)
    lines = ["| model | P | R | d_corr | tied chains |", "|---|---|---|---|---|"]
    notes = []
    for name, m in rows.items():
        ties = m.get("tie_share")
        tie = "-" if ties is None else f"{100 * ties:.1f}%" + (" FLAG" if m.get("ties_flag") else "")
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in METRICS) + f" | {tie} |")
        if m.get("ties_flag"):
            notes.append(f"FLAG {name}: {100 * ties:.1f}% of the chains tie on a radius (over 1%): ties sort in "
                         "tier order, so its d_corr reflects degenerate embeddings, not a hierarchy.")
        if (leak := m.get("leakage")) and leak.get("allowed"):
            notes.append(f"{name}: scored with allow_test_overlap (training overlap: "
                         f"{leak.get('caption_overlap', '?')} test captions, {leak.get('image_overlap', '?')} test images).")
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)


def plot(results: dict[str, dict], path: str | Path, title: str = "", reference: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = dict(results)
    if reference:
        rows.update(PAPER_REFERENCE)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    w = 0.8 / max(1, len(rows))
    for i, (name, m) in enumerate(rows.items()):
        xs = [j + i * w for j in range(len(METRICS))]
        ax.bar(xs, [m.get(k) or 0.0 for k in METRICS], width=w, label=name)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(METRICS))], ["precision", "recall", "d_corr"])
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict[str, dict], md_path: str | Path, png_path: str | Path, title: str = "",
                 reference: bool = True) -> None:
    Path(md_path).write_text(f"# {title}\n\n" + markdown_table(results, reference))
    plot(results, png_path, title, reference)
