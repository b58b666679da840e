import csv

import pytest

from curation.curate import HEADER, escape_cell, export_for_curation, import_curation, unescape_cell
from pipeline.config import load_config
from pipeline.runner import run_stages
from pipeline.stage import StageError
from pipeline.store import RunStore


def test_curation_export_edit_import(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("id,captions,image_url\n"
                   "0,bird => blue bird => blue bird on a branch => A blue bird on a branch.,http://i/0.jpg\n"
                   "1,dog => brown dog => brown dog on grass => A brown dog lying on grass.,http://i/1.jpg\n"
                   "2,food => pizza => pizza on a plate => A pizza on a white plate.,http://i/2.jpg\n")
    cfg = load_config("tiny", overrides={"run": {"root": str(tmp_path)},
                                         "ingest": {"sources": [{"name": "t", "path": str(src), "split": "test"}]}})
    store = RunStore(cfg.run.root, "c")
    run_stages(cfg, store, ["ingest"])
    out = tmp_path / "curate.csv"
    assert export_for_curation(store, cfg.export, out) == 3
    rows = list(csv.DictReader(open(out, newline="")))
    assert list(rows[0]) == HEADER and rows[0]["tier2"] == "blue bird"
    rows[0]["tier3"] = "blue bird sitting on a branch"      # a correction
    rows[1]["keep"] = "no"                                  # dropped
    rows[2]["tier1"] = ""                                   # an invalid edit
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, HEADER)
        w.writeheader()
        w.writerows(rows)
    m = import_curation(store, cfg.export, out)
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"], m["dropped"], m["edited"]) == (3, 1, 2, 1, 1)
    rej = store.stage("curated").read_rejects().to_pylist()
    assert [(r["row"], r["reason"]) for r in rej] == [(3, "dropped by curator"), (4, "tier 1 is empty")]
    final = list(csv.reader(open(store.stage("curated").path / "hierarcaps_test.csv", newline="")))
    assert final == [["id", "captions", "image_url"],
                     ["0", "bird => blue bird => blue bird sitting on a branch => A blue bird on a branch.", "http://i/0.jpg"]]
    with pytest.raises(StageError, match="missing columns"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        import_curation(store, cfg.export, tmp_path / "bad.csv")


@pytest.mark.parametrize("cell", ["=1+1", "-5 dogs", "+dog", "@dog", "\tdog", "\rdog", "'=x", "''-x", "'dog", "dog",
                                  "", "=", "'", "''", "a=b", "- "])
def test_formula_escape_is_exactly_undone(cell):
    escaped = escape_cell(cell)
    assert unescape_cell(escaped) == cell
    assert escaped[:1] not in ("=", "+", "-", "@", "\t", "\r")
    assert escaped == cell or escaped == "'" + cell
