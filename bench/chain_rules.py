"""How many released HierarCaps chains the chain rules accept (pipeline/chain.py, ``ChainRules``).

Runs ``rule_violation(tiers[:3], tier4, rules)`` over the three released sets: the 1,000 curated
test chains, the 23,479 generated positives and their negatives (a negative's tier 4 is its own
tier 4). Reports, per rule set, the acceptance rate and a histogram of rejection reasons (the
quoted tier dropped, counts and ratios replaced by N; tier numbers kept), and the figures the
defaults were calibrated on: per-tier word-count percentiles, and per pair of adjacent tiers how
often the more general one has no more words than the next and the 99.9th percentile of the ratio.

    .venv/bin/python bench/chain_rules.py                 # old and new defaults, writes results
    .venv/bin/python bench/chain_rules.py --rules new --no-write

Data is read from ../shared/data/hierarcaps (never copied here). Results: bench/results/chain_rules.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.chain import ChainRules, chain_problem, rule_violation, split_tiers, word_count  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hierarcaps"
RESULTS = ROOT / "bench" / "results"
# The rules before calibration: word limits (3, 8, 16), each tier no longer than the next.
RULES = {
    "old": ChainRules(max_words=(3, 8, 16), max_growth=(1.0, 1.0, 1.0), copy_share=None),
    "new": ChainRules(),
}
QUANTILE = 99.9


def load_sets(data: Path = DATA) -> dict[str, list[list[str]]]:
    """{"curated", "positive", "negative"} -> chains (four tiers each), in file order."""
    with open(data / "hierarcaps_test.csv", newline="", encoding="utf-8") as f:
        curated = [split_tiers(r["captions"]) for r in csv.DictReader(f)]
    with gzip.open(data / "hierarcaps_test_expanded.csv.gz", "rt", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"curated": curated,
            "positive": [split_tiers(r["positive"]) for r in rows],
            "negative": [split_tiers(r["negative"]) for r in rows]}


def reason_key(reason: str) -> str:
    """A reason without its quoted tier and with counts/ratios as N ("tier 1 has N words (max N)")."""
    reason = re.sub(r""":\s*(['"]).*$""", "", reason)
    return re.sub(r"(?<!tier )\b\d+(?:\.\d+)?%?", "N", reason)


def violation(chain: list[str], rules: ChainRules) -> str | None:
    return chain_problem(chain) or rule_violation(chain[:3], chain[3], rules)


def measure(chains: list[list[str]], rules: ChainRules) -> dict:
    reasons = Counter(reason_key(why) for c in chains if (why := violation(c, rules)))
    rejected = sum(reasons.values())
    return {"n": len(chains), "accepted": len(chains) - rejected,
            "rate": round((len(chains) - rejected) / len(chains), 6) if chains else None,
            "reasons": dict(reasons.most_common())}


def calibration(sets: dict[str, list[list[str]]]) -> dict:
    """The data the defaults come from (well-formed chains only)."""
    words = {k: np.array([[word_count(t) for t in c] for c in v if not chain_problem(c)]) for k, v in sets.items()}
    pooled = np.concatenate(list(words.values()))
    out = {"quantile": QUANTILE,
           "words_pooled": [float(np.percentile(pooled[:, k], QUANTILE)) for k in range(4)],
           "words_max": {s: [int(x) for x in w.max(axis=0)] for s, w in words.items()},
           "pairs": {}}
    for k in range(3):
        ratio = pooled[:, k] / pooled[:, k + 1]
        out["pairs"][f"tier {k + 1} vs {k + 2}"] = {
            "no_more_words": {s: round(float(np.mean(w[:, k] <= w[:, k + 1])), 4) for s, w in words.items()},
            "ratio_pooled_quantile": round(float(np.percentile(ratio, QUANTILE)), 3)}
    return out


def markdown(res: dict) -> str:
    names = list(res["rules"])
    lines = ["# Chain rules on the released HierarCaps chains", "",
             f"`{res['command']}`", "",
             "`rule_violation(tiers[:3], tier4, rules)` on each released chain (a negative's tier 4 is its own). "
             "`old`: the rules before calibration (word limits 3 / 8 / 16, each tier no longer than the next); "
             "`new`: the defaults, `ChainRules()`.", "",
             "| set | chains | " + " | ".join(f"accepted ({n})" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for s in res["sets"]:
        cells = [f"{res['sets'][s][n]['accepted']:,} ({res['sets'][s][n]['rate']:.2%})" for n in names]
        lines.append(f"| {s} | {res['sets'][s][names[0]]['n']:,} | " + " | ".join(cells) + " |")
    for n in names:
        lines += ["", f"## Rules `{n}`: {json.dumps(res['rules'][n])}", "", "| set | reason | chains |", "|---|---|---:|"]
        for s in res["sets"]:
            lines += [f"| {s} | {why} | {c:,} |" for why, c in res["sets"][s][n]["reasons"].items()]
    cal = res["calibration"]
    lines += ["", "## Calibration", "",
              f"Words per tier, pooled {cal['quantile']}th percentile (tiers 1-4): {cal['words_pooled']}; "
              f"maxima: {cal['words_max']}.", "",
              "| pair | share with no more words than the next (curated / positive / negative) | "
              f"pooled {cal['quantile']}th pct of the word ratio |", "|---|---|---:|"]
    for pair, d in cal["pairs"].items():
        shares = " / ".join(f"{v:.2%}" for v in d["no_more_words"].values())
        lines.append(f"| {pair} | {shares} | {d['ratio_pooled_quantile']} |")
    return "\n".join(lines) + "\n"


def run(names: list[str], data: Path = DATA) -> dict:
    sets = load_sets(data)
    return {"rules": {n: RULES[n].model_dump(mode="json") for n in names},
            "sets": {s: {n: measure(chains, RULES[n]) for n in names} for s, chains in sets.items()},
            "calibration": calibration(sets)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", choices=["old", "new", "both"], default="both")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    names = ["old", "new"] if args.rules == "both" else [args.rules]
    res = {"command": " ".join([".venv/bin/python", "bench/chain_rules.py", *(sys.argv[1:] if argv is None else argv)]),
           **run(names, args.data)}
    for s, by in res["sets"].items():
        print(s, "  ".join(f"{n}: {m['accepted']}/{m['n']} = {m['rate']:.4f}" for n, m in by.items()))
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "chain_rules.json").write_text(json.dumps(res, indent=2) + "\n")
        (RESULTS / "chain_rules.md").write_text(markdown(res))
    return res


if __name__ == "__main__":
    main()
