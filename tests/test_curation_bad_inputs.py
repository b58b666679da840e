"""Bad curation files end in a clear one-line error or in rejects naming the item and reason,
never a traceback, and nothing is written outside the run, whatever names the file holds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from _curation_run import CHAINS, draw_images, make_run
from flows.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from curation.items import test_items

    root = tmp_path_factory.mktemp("bad")
    cfg, store = make_run(root)
    return root, cfg, store, [i["chain_id"] for i in test_items(store, cfg.export)]


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error(code: int, err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("hierarcaps: error:")]
    assert (code, len(lines)) == (2, 1), err
    assert all(f in lines[0] for f in fragments), lines[0]


def _review(store, items: list[dict], run_id: str | None = None) -> dict:
    return {"format": "hierarcaps-curation-review", "version": 1, "run_id": run_id or store.run_id,
            "reviewer": "ada", "items": items}


def _item(cid: str, tiers, decision="keep", **kw) -> dict:
    return {"chain_id": cid, "id": kw.pop("id", None), "after": tiers, "decision": decision, **kw}


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if "runs" not in p.relative_to(root).parts[:1]}


def _import(capsys, root, path, *extra):
    code, out, err = _cli(capsys, "curation-import", "cur", str(path), "--root", str(root), *extra)
    return code, (json.loads(out) if code == 0 else None), err


def _rejects(store) -> list[tuple[int, str]]:
    return [(r["row"], r["reason"]) for r in store.stage("curated").read_rejects().to_pylist()]


@pytest.mark.parametrize("text, fragments", [
    ('{"format": "hierarcaps-curation-review", "items": [', ["malformed JSON at line 1 column"]),
    ('{"a": 1}', ["neither the review page's download"]),
    ('{"format": "hierarcaps-curation-review", "run_id": "other", "items": []}', ["for run 'other', not run 'cur'"]),
    ('{"format": "hierarcaps-curation-review", "run_id": "cur", "items": {}}', ["'items' must be a list"]),
    ('[{"id": 1, "data": {"image": "x.jpg", "text": "hi"}, "annotations": []}]',
     ["a Label Studio export of another project: no task has hierarcaps_run='cur'"]),
])
def test_unreadable_files_are_one_line_errors(run, tmp_path, capsys, text, fragments):
    root = run[0]
    (tmp_path / "f.json").write_text(text)
    code, _, err = _import(capsys, root, tmp_path / "f.json")
    _one_error(code, err, "f.json", *fragments)


def test_items_are_validated(run, tmp_path, capsys):
    root, cfg, store, ids = run
    t = [list(c[1]) for c in CHAINS]
    items = [
        _item(ids[0], t[0][:3]),                                              # 3 tiers
        _item(ids[1], [*t[1][:3], "extra", t[1][3]]),                         # 5 tiers
        _item("../../../../etc/passwd", t[2], id="../../x", image="../../evil.jpg"),  # traversal in ids
        _item(ids[2], ["food", "pizza => pie", *t[2][2:]]),                   # the separator in a tier
        _item(ids[3], [*t[3][:3], "A different caption."]),                   # tier 4 changed
        _item(ids[4], ["", *t[4][1:]]),                                       # an empty tier
        _item(ids[4], t[4]),                                                  # duplicate (first was rejected)
        _item(ids[0], t[0], decision="maybe"),
        "not an object",
        _item(ids[1], ["bird", "bird", *t[1][2:]]),                           # breaks the chain rules
    ]
    (tmp_path / "r.json").write_text(json.dumps(_review(store, items)))
    before = _files(root)
    code, m, err = _import(capsys, root, tmp_path / "r.json")
    assert code == 0, err
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (10, 0, 10)
    assert _rejects(store) == [
        (1, "expected 4 tiers, got 3"), (2, "expected 4 tiers, got 5"),
        (3, "unknown chain_id '../../../../etc/passwd': not a test chain of run cur"),
        (4, "tier 2 contains the chain separator '=>': 'pizza => pie'"),
        (5, "tier 4 (the caption) was changed; it stays as captioned unless tier-4 edits are allowed"),
        (6, "tier 1 is empty"), (7, f"duplicate chain_id {ids[4]!r}, first at item 6"),
        (8, f"duplicate chain_id {ids[0]!r}, first at item 1"), (9, "item 9 is not an object"),
        (10, f"duplicate chain_id {ids[1]!r}, first at item 2")]
    assert _files(root) == before                       # nothing written outside runs/
    assert not list(root.parent.glob("evil*")) and not (root / "etc").exists()


def test_rules_and_tier4_setting(run, tmp_path, capsys):
    root, cfg, store, ids = run
    t = [list(c[1]) for c in CHAINS]
    items = [_item(ids[0], ["bird", "bird", *t[0][2:]]), _item(ids[1], [*t[1][:3], "A brown dog on grass."])]
    (tmp_path / "r.json").write_text(json.dumps(_review(store, items)))
    code, m, err = _import(capsys, root, tmp_path / "r.json", "--allow-tier4-edits")
    assert code == 0 and (m["rows_out"], m["rows_rejected"]) == (1, 1), err
    assert _rejects(store) == [(1, "breaks the chain rules: tier 1 repeats tier 2: 'bird'")]


def test_csv_formula_cells(run, tmp_path, capsys):
    """A formula a curator typed is imported as the text it is; the export neutralises formulas."""
    root, cfg, store, ids = run
    code, _, err = _cli(capsys, "curation-export", "cur", str(tmp_path / "c.csv"), "--root", str(root))
    assert code == 0, err
    rows = list(csv.reader(open(tmp_path / "c.csv", newline="", encoding="utf-8")))
    assert all(not c.startswith(("=", "+", "-", "@")) for r in rows for c in r)
    rows[1][4] = '=HYPERLINK("http://evil.example/","x")'                  # tier 2
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows[:2])
    code, m, err = _import(capsys, root, tmp_path / "c.csv")
    assert code == 0 and m["rows_out"] == 1, err
    got = list(csv.reader(open(store.stage("curated").path / "hierarcaps_test.csv", newline="", encoding="utf-8")))
    assert got[1][1].split(" => ")[1] == '=HYPERLINK("http://evil.example/","x")'


def test_label_studio_tasks_of_another_run_are_rejected(run, tmp_path, capsys):
    root, cfg, store, ids = run
    ann = [{"result": [{"from_name": "decision", "to_name": "image", "type": "choices", "value": {"choices": ["keep"]}}]}]
    data = {"hierarcaps_run": "cur", "chain_id": ids[0], "test_id": "0",
            **{f"tier{k}": v for k, v in enumerate(CHAINS[0][1], 1)}}
    doc = [{"id": 1, "data": data, "annotations": ann},
           {"id": 2, "data": {**data, "hierarcaps_run": "other"}, "annotations": ann},
           {"id": 3, "data": {**data, "chain_id": ids[1]}, "annotations": []}]
    (tmp_path / "ls.json").write_text(json.dumps(doc))
    code, m, err = _import(capsys, root, tmp_path / "ls.json")
    assert code == 0 and (m["format"], m["rows_out"]) == ("label-studio", 1), err
    assert _rejects(store) == [(2, "task 2 belongs to run 'other', not 'cur'"), (3, "task 3 has no annotation")]


def test_review_page_escapes_and_names_images_itself(tmp_path, capsys):
    """Markup in a caption stays inside the JSON string; images are copied under names made from
    the COCO id, whatever the url or file names hold; a non-http url is never used as a source."""
    import csv as _csv

    src = tmp_path / "t.csv"
    urls = ["http://x/../../../../tmp/COCO_val2014_000000000139.jpg", "javascript:alert(1)//_776.jpg",
            "file:///etc/passwd_785.jpg"]
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = _csv.writer(f)
        w.writerow(["id", "captions", "image_url"])
        w.writerows([[str(i), " => ".join(CHAINS[i][1] if i else CHAINS[4][1]), u] for i, u in enumerate(urls)])
    sources = json.dumps([{"name": "t", "path": str(src), "split": "test"}])
    assert main(["stage", "ingest", "--no-prefect", "--root", str(tmp_path), "--run", "x", "--preset", "tiny",
                 "--set", f"ingest.sources={sources}"]) == 0
    imgs = draw_images(tmp_path / "imgs")
    (imgs / "..COCO_val2014_000000000785.jpg.txt").write_text("not an image")
    code, out, err = _cli(capsys, "curation-review", "x", "--out", str(tmp_path / "page"), "--images", str(imgs),
                          "--root", str(tmp_path))
    assert code == 0, err
    html = (tmp_path / "page" / "index.html").read_text()
    assert "<script>alert" not in html and "\\u003cscript\\u003ealert(1)" in html
    assert html.count("<script") == 2                                      # the data and the page's own
    assert sorted(p.name for p in (tmp_path / "page" / "images").iterdir()) == ["139.jpg", "776.jpg", "785.jpg"]
    data = json.loads(html.split('type="application/json">')[1].split("</script>")[0])
    assert [i["image"] for i in data["items"]] == ["images/139.jpg", "images/776.jpg", "images/785.jpg"]
    assert {p.name for p in tmp_path.iterdir()} == {"t.csv", "runs", "imgs", "page"}
    (tmp_path / "imgs2").mkdir()                                           # no local files: only http(s) urls show
    code, out, err = _cli(capsys, "curation-review", "x", "--out", str(tmp_path / "page2"), "--images",
                          str(tmp_path / "imgs2"), "--root", str(tmp_path))
    data = json.loads((tmp_path / "page2" / "index.html").read_text().split('type="application/json">')[1]
                      .split("</script>")[0])
    assert [i["image"] for i in data["items"]] == [urls[0], "", ""]
