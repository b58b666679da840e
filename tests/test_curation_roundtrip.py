"""Curation round trips without a browser: Label Studio tasks out and its export back, the CSV,
several reviewers merged through the audit log, the report, and the NLI re-check of edits."""

from __future__ import annotations

import csv
import json
import os

import pytest

from _curation_run import CHAINS, make_run

from pipeline.align.data import load_chains


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("rt"))


def _curated(store) -> list[list[str]]:
    path = store.stage("curated").path / "hierarcaps_test.csv"
    with open(path, newline="", encoding="utf-8") as f:
        chains = [r[1].split(" => ") for r in list(csv.reader(f))[1:]]
    assert [c.positive for c in load_chains(path)] == chains      # what bench reads as its test set
    return chains


def _ls_export(tasks_path, edits: dict[int, list[dict]]) -> list[dict]:
    """What Label Studio's JSON export holds after annotators worked on the tasks we gave it:
    the tasks with ids, their data and an ``annotations`` list of results per control tag."""
    tasks = json.loads(tasks_path.read_text())
    out = []
    for n, t in enumerate(tasks):
        if n not in edits:
            continue
        result = [{"from_name": name, "to_name": "image", "type": kind, "origin": "manual",
                   "value": {"text": [v]} if kind == "textarea" else {"choices": [v]}}
                  for name, kind, v in edits[n]]
        out.append({"id": 100 + n, "data": t["data"], "project": 7,
                    "annotations": [{"id": 500 + n, "completed_by": {"id": 1, "email": "lin@example.org"},
                                     "result": result, "was_cancelled": False,
                                     "created_at": "2026-12-01T10:00:00.000000Z",
                                     "updated_at": f"2026-12-01T10:0{n}:00.000000Z"}]})
    return out


def test_label_studio_round_trip(run, tmp_path):
    from curation import audit
    from curation.importer import import_curation
    from curation.label_studio import export_label_studio

    cfg, store = run
    res = export_label_studio(store, cfg.export, tmp_path / "tasks.json")
    xml = (tmp_path / "tasks.xml").read_text()
    assert res["items"] == 5 and '<TextArea name="tier3" toName="image" value="$tier3"' in xml
    assert 'name="tier4" toName' not in xml                       # tier 4 is shown, not editable
    export = _ls_export(tmp_path / "tasks.json", {
        0: [("tier2", "textarea", "small blue bird"), ("valid2", "choices", "not valid"), ("decision", "choices", "keep")],
        1: [("decision", "choices", "drop"), ("reason", "textarea", "blurred image")],
        3: [("valid1", "choices", "valid"), ("decision", "choices", "keep")],
    })
    path = tmp_path / "ls_export.json"
    path.write_text(json.dumps(export))
    m = import_curation(store, cfg, path)
    assert (m["format"], m["rows_in"], m["rows_out"], m["rows_rejected"], m["dropped"], m["edited"]) == \
        ("label-studio", 3, 2, 1, 1, 1)
    assert _curated(store) == [["bird", "small blue bird", *CHAINS[0][1][2:]], CHAINS[3][1]]
    log = audit.read_log(store)
    assert [(e["id"], e["action"], e["reviewer"]) for e in log] == [("0", "keep", "lin@example.org"),
                                                                    ("1", "drop", "lin@example.org"),
                                                                    ("3", "keep", "lin@example.org")]
    assert log[0]["before"] == CHAINS[0][1] and log[0]["after"][1] == "small blue bird"
    assert log[1]["reason"] == "blurred image"
    # the same file again changes nothing: no entry appended, the same curated set
    assert import_curation(store, cfg, path)["audit_appended"] == 0 and len(audit.read_log(store)) == 3

    # a second reviewer's CSV merges in: item 0 reverted, item 2 edited; the log holds each change once
    from curation.curate import HEADER, export_for_curation

    export_for_curation(store, cfg.export, tmp_path / "b.csv")
    rows = list(csv.DictReader(open(tmp_path / "b.csv", newline="", encoding="utf-8")))
    rows[2]["tier3"] = "pizza with olives"
    with open(tmp_path / "b.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, HEADER)
        w.writeheader()
        w.writerows([rows[0], rows[2]])
    m = import_curation(store, cfg, tmp_path / "b.csv")
    assert (m["format"], m["rows_out"], m["audit_appended"], m["curated_chains"]) == ("csv", 2, 2, 3)
    assert _curated(store) == [CHAINS[0][1], ["food", "pizza", "pizza with olives", CHAINS[2][1][3]], CHAINS[3][1]]
    log = audit.read_log(store)
    assert len(log) == 5 and log[3]["before"] == log[0]["after"] and log[3]["after"] == CHAINS[0][1]
    r = m["report"]
    assert (r["reviewed"], r["kept"], r["dropped"], r["fully_valid"]) == (4, 3, 1, 2)   # 0 (reverted) and 3
    assert [t["edited"] for t in r["per_tier"]] == [0, 0, 1, 0]
    assert r["drop_reasons"] == {"blurred image": 1}
    sd = store.stage("curated")
    assert (sd.path / "report.png").stat().st_size > 5000
    assert "Fully valid as generated: 2 of 4 (50.0%)" in (sd.path / "report.md").read_text()


def test_recheck_warns_on_edited_links(tmp_path):
    from curation.importer import import_curation

    cfg, store = make_run(tmp_path)
    doc = {"format": "hierarcaps-curation-review", "version": 1, "run_id": store.run_id, "reviewer": "ada",
           "items": [{"chain_id": c, "id": "0", "after": ["furniture", "blue bird", *CHAINS[0][1][2:]],
                      "decision": "keep", "marks": [False, None, None, True], "time": "2026-12-01T10:00:00Z"}
                     for c in _chain_ids(store)[:1]]}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    strict = cfg.model_copy(update={"nli_filter": cfg.nli_filter.model_copy(update={"entail_threshold": 1.0})})
    m = import_curation(store, strict, tmp_path / "r.json", recheck=True, model_cache=os.environ["HIERARCAPS_CACHE"])
    assert m["rows_out"] == 1
    # at threshold 1.0 every re-judged link warns: tier 1 changed, so only link 2->1, named with the item
    assert len(m["warnings"]) == 1 and m["warnings"][0].startswith("item 0: edited link 2->1 not entailed (entailment ")
    assert m["warnings"][0].endswith("< 1.0)")


def _chain_ids(store) -> list[str]:
    from curation.items import test_items

    return [i["chain_id"] for i in test_items(store, store_export(store))]


def store_export(store):
    from pipeline.config import ExportSection

    return ExportSection()


def test_link_probs_come_from_the_stored_scores():
    """The page shows P(entailment) of the adjacent links a judge stored; others are "not judged"."""
    from curation.items import link_probs

    s = lambda p, h, e: {"premise_tier": p, "hypothesis_tier": h, "entailment": e, "neutral": 0.0,  # noqa: E731
                         "contradiction": 1 - e}
    assert link_probs({"link_scores": [s(4, 3, 0.25), s(2, 1, 0.875), s(3, 1, 0.5)]}) == [0.875, None, 0.25]
    assert link_probs({"link_scores": None}) == [None, None, None]
