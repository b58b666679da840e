"""Import a curation file into the run: the review page's JSON, a Label Studio JSON export or the CSV.

Each format is read into the same submissions (item, tiers, keep/drop, reason, note, marks,
reviewer, time); every submission is validated the same way: a known chain id seen once, exactly
four non-empty tiers without the separator or line breaks, tier 4 unchanged unless allowed, the
pipeline's chain rules. Valid decisions are appended to the audit log; the rest go to the rejects
table with file, item and reason (a drop is a reject too, reason ``dropped by curator``). The
curated test set (``<run>/curated/<name>_test.csv`` and Parquet) and the report are rebuilt from
the whole log. Only fixed names under the run directory are written, whatever the file holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa

from pipeline.chain import N_TIERS, chain_problem, rule_violation
from pipeline.config import PipelineConfig
from pipeline.hashing import digest
from pipeline.io.writers import test_rows, write_csv
from pipeline.schemas import CHAINS, REJECTS, conform, reject
from pipeline.stage import StageError
from pipeline.store import RunStore

from . import audit, curate, label_studio, report
from .items import item_key, test_chains

CURATED = CHAINS.append(pa.field("note", pa.string())).append(pa.field("edited", pa.bool_()))
REVIEW_FORMAT = "hierarcaps-curation-review"
_TEXT = (str, type(None))
UNITS = {"csv": "line", "review": "item", "label-studio": "task"}   # what a reject row number counts


def _json_doc(path: Path, text: str):
    try:
        return json.loads(text)
    except ValueError as e:
        where = f" at line {e.lineno} column {e.colno}" if hasattr(e, "lineno") else ""
        raise StageError(f"{path}: malformed JSON{where}: {getattr(e, 'msg', e)}") from None


def review_submissions(path: Path, doc: dict, run_id: str):
    """The review page's download -> submissions (or (row, why) for an item that cannot be read)."""
    if doc.get("run_id") != run_id:
        raise StageError(f"{path}: corrections for run {doc.get('run_id')!r}, not run {run_id!r}")
    items = doc.get("items")
    if not isinstance(items, list):
        raise StageError(f"{path}: 'items' must be a list")
    for n, it in enumerate(items, 1):
        if not isinstance(it, dict):
            yield n, f"item {n} is not an object"
            continue
        bad = [k for k in ("chain_id", "id", "decision", "reason", "note", "reviewer", "time")
               if not isinstance(it.get(k), _TEXT)]
        marks = it.get("marks")
        if bad:
            yield n, f"fields {bad} must be text"
        elif marks is not None and not (isinstance(marks, list) and all(m in (True, False, None) for m in marks)):
            yield n, "marks must be a list of true/false/null"
        else:
            yield n, {"chain_id": (it.get("chain_id") or "").strip(), "id": it.get("id"), "tiers": it.get("after"),
                      "decision": it.get("decision"), "reason": it.get("reason") or "", "note": it.get("note") or "",
                      "marks": marks, "reviewer": it.get("reviewer") or doc.get("reviewer") or None,
                      "reviewed_at": it.get("time") or doc.get("exported_at")}


def submissions(path: Path, text: str, run_id: str) -> tuple[str, object]:
    """(format, iterator of (row, submission | why)) for the file's text."""
    head = text.lstrip()[:1]
    if head in ("{", "["):
        doc = _json_doc(path, text)
        if isinstance(doc, dict) and doc.get("format") == REVIEW_FORMAT:
            return "review", review_submissions(path, doc, run_id)
        if isinstance(doc, list):
            return "label-studio", label_studio.submissions(path, doc, run_id)
        raise StageError(f"{path}: JSON that is neither the review page's download (format {REVIEW_FORMAT!r}) "
                         "nor a Label Studio export (a list of tasks)")
    return "csv", curate.csv_submissions(path, text)


def problem(s: dict, orig: dict, allow_tier4: bool, rules, ids: dict[str, int], unit: str = "row") -> str | None:
    """Why a submission for a known, first-seen item cannot be kept (None: it can);
    ``dropped by curator`` is a reason too."""
    if s.get("bad_decision"):
        return s["bad_decision"]
    decision = (s.get("decision") or "").strip().lower()
    if decision == "drop":
        return "dropped by curator" + (f": {s['reason']}" if s.get("reason") else "")
    if decision != "keep":
        return f"decision must be keep or drop, got {s.get('decision')!r}"
    tiers = s["tiers"]
    if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
        return f"tiers must be a list of {N_TIERS} texts"
    for col, v in [("id", str(s.get("id") or "")), *((f"tier{k}", t) for k, t in enumerate(tiers, 1))]:
        if "\n" in v or "\r" in v:
            return f"{col} holds a line break"
    tiers = [t.strip() for t in tiers]
    if why := chain_problem(tiers):
        return why
    if not allow_tier4 and tiers[3] != orig["positive"][3].strip():
        return "tier 4 (the caption) was changed; it stays as captioned unless tier-4 edits are allowed"
    if tiers != [t.strip() for t in orig["positive"]] and (why := rule_violation(tiers[:3], tiers[3], rules)):
        return f"breaks the chain rules: {why}"
    if (rid := str(s.get("id") or "").strip()) and rid in ids:
        return f"duplicate id {rid!r}, first at {unit} {ids[rid]}"
    return None


def _valid(s: dict, orig: list[str], after: list[str] | None) -> list[bool | None]:
    """Per tier: valid as generated (kept and unchanged, unless marked not valid); None unknown."""
    marks = list(s.get("marks") or [None] * N_TIERS)[:N_TIERS] + [None] * N_TIERS
    if after is None:                                   # dropped: only what the reviewer marked
        return [marks[k] for k in range(N_TIERS)]
    return [after[k] == orig[k].strip() and marks[k] is not False for k in range(N_TIERS)]


def import_curation(store: RunStore, config: PipelineConfig, path: str | Path, *, allow_tier4: bool = False,
                    recheck: bool = False, model_cache=None) -> dict:
    path = Path(path)
    text = curate.read_text(path)
    fmt, subs = submissions(path, text, store.run_id)
    unit = UNITS[fmt]
    chains = test_chains(store, config.export)
    originals = {item_key(c): c for c in chains}
    sha = digest(text.encode("utf-8"), 64)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entries, rejects, kept = [], [], 0
    first: dict[str, int] = {}
    ids: dict[str, int] = {}
    for row, s in subs:
        if isinstance(s, str):
            rejects.append(reject("curation", str(path), None, s, "", row))
            continue
        cid = s["chain_id"]
        orig = originals.get(cid)
        if not cid:
            why = "empty chain_id"
        elif orig is None:
            why = f"unknown chain_id {cid[:80]!r}: not a test chain of run {store.run_id}"
        elif cid in first:
            why = f"duplicate chain_id {cid!r}, first at {unit} {first[cid]}"
        else:
            first[cid] = row
            why = problem(s, orig, allow_tier4, config.rules, ids, unit)
        excerpt = json.dumps({k: s.get(k) for k in ("id", "tiers", "decision", "reason", "note")}, ensure_ascii=False)
        if why:
            rejects.append(reject("curation", str(path), cid or None, why, excerpt[:300], row))
            if not why.startswith("dropped by curator"):
                continue
        gen = [t.strip() for t in orig["positive"]]
        after = None if why else [t.strip() for t in s["tiers"]]
        if after is not None:
            kept += 1
            if rid := str(s.get("id") or "").strip():
                ids[rid] = row
        entries.append({"chain_id": cid, "id": str(s.get("id") or ""), "action": "drop" if why else "keep",
                        "generated": gen, "after": after, "valid": _valid(s, gen, after),
                        "reason": s.get("reason") or None, "note": s.get("note") or None,
                        "reviewer": s.get("reviewer") or None, "reviewed_at": s.get("reviewed_at") or None,
                        "source_file": str(path.resolve()), "source_sha256": sha, "format": fmt, "imported_at": now})
    warnings = recheck_links(store, config, entries, model_cache) if recheck else []
    with store.lock("curation-import"):     # written aside, then switched in: a failure keeps the last import
        appended = audit.append(store, entries)
        state = audit.current(audit.read_log(store))
        curated = [_curated_row(c, state[item_key(c)]) for c in chains
                   if item_key(c) in state and state[item_key(c)]["action"] == "keep"]
        sd = store.attempt("curated", digest([sha, len(state)]), fresh=True)
        sd.write_unit(0, conform(curated, CURATED), conform(rejects, REJECTS),
                      {"rows_in": len(curated) + len(rejects), "rows_out": len(curated), "rows_rejected": len(rejects)})
        n = write_csv(sd.path / f"{config.export.name}_test.csv", *test_rows(curated))
        summary = report.write_report(sd.path, list(state.values()), rejects_in_file=len(rejects))
        dropped = sum(r["reason"].startswith("dropped by curator") for r in rejects)
        manifest = {"stage": "curated", "source_file": str(path), "format": fmt,
                    "rows_in": kept + len(rejects), "rows_out": kept, "rows_rejected": len(rejects),
                    "dropped": dropped, "edited": sum(e["action"] == "keep" and e["after"] != e["generated"] for e in entries),
                    "audit_appended": len(appended), "curated_chains": n, "warnings": warnings,
                    "report": summary, "wall_s": 0.0, "finished_at": now}
        sd.write_manifest(manifest)
        store.publish("curated", sd)
    return manifest


def _curated_row(chain: dict, e: dict) -> dict:
    return {**chain, "orig_id": e["id"] or chain.get("orig_id"), "positive": e["after"], "split": "test",
            "stage": "curation", "note": e.get("note"), "edited": e["after"] != [t.strip() for t in chain["positive"]]}


def recheck_links(store: RunStore, config: PipelineConfig, entries: list[dict], model_cache=None) -> list[str]:
    """NLI over the links an edit touched (premise tier k+1, hypothesis tier k): a warning per
    link below the judge's threshold. Warnings only: a curator may know better than the judge."""
    from pipeline.backends.nli import NliScorer
    from pipeline.judge import Judge
    from pipeline.models.tiny import resolve_model

    edited = [e for e in entries if e["action"] == "keep" and e["after"] != e["generated"]]
    if not edited:
        return []
    nli = config.models.nli
    judge = Judge(NliScorer(nli.model_copy(update={"model": resolve_model(nli.model, model_cache)})), config.nli_filter)
    out = []
    for e, v in zip(edited, judge.chains([e["after"] for e in edited])):
        changed = {k + 1 for k in range(N_TIERS) if e["after"][k] != e["generated"][k]}
        for s in v.scores:
            if (s["premise_tier"] in changed or s["hypothesis_tier"] in changed) and s["entailment"] < judge.cfg.entail_threshold:
                out.append(f"item {e['id'] or e['chain_id']}: edited link {s['premise_tier']}->{s['hypothesis_tier']} "
                           f"not entailed (entailment {s['entailment']:.3f} < {judge.cfg.entail_threshold})")
    return out
