"""The review page in a real headless Chromium (Debian's package, driven by Playwright): open it
from disk, edit a tier with the keyboard, mark a tier not valid, drop an item, reload (the work is
still there), download the JSON, import it and check the curated CSV and the audit log."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

from _curation_run import CHAINS, draw_images, make_run

CHROMIUM = os.environ.get("HIERARCAPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh does where it can)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=30_000)
        yield b
        b.close()


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    from curation.review import write_review

    root = tmp_path_factory.mktemp("review")
    cfg, store = make_run(root)
    res = write_review(store, cfg, root / "page", draw_images(root / "imgs"))
    assert (res["items"], res["local_images"]) == (5, 5)
    return cfg, store, root / "page" / "index.html"


def test_review_page_round_trip(browser, review, tmp_path):
    from curation import audit
    from curation.importer import import_curation

    cfg, store, page_path = review
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 720})
    page = ctx.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_path.as_uri())
    page.fill("#reviewer", "ada")
    page.keyboard.press("Escape")       # leave the field: keys act on the page again
    assert page.text_content("#progress") == "0 / 5 reviewed"
    assert page.evaluate("document.getElementById('image').naturalWidth") == 320     # the local copy loaded

    # item 1: edit tier 3 with the keyboard (tier 4 stays read-only)
    page.keyboard.press("e")
    assert page.evaluate("document.activeElement.id") == "tier1"
    page.keyboard.press("Tab")          # tier 1's mark
    page.keyboard.press("Tab")          # tier 2
    page.keyboard.press("Tab")          # tier 2's mark
    page.keyboard.press("Tab")          # tier 3
    page.keyboard.press("Control+A")
    page.keyboard.type("blue bird sitting on a branch")
    assert page.is_editable("#tier4") is False
    page.keyboard.press("Escape")
    page.keyboard.press("n")
    # item 2: tier 1 not valid as generated, kept as it is
    page.keyboard.press("1")
    assert page.text_content("#mark1") == "not valid \u2717"
    page.keyboard.press("k")
    page.keyboard.press("n")
    # item 3: dropped with a reason
    page.keyboard.press("d")
    page.keyboard.type("caption does not match the image")
    page.keyboard.press("Escape")
    page.keyboard.press("ArrowRight")
    # item 4: the whole chain valid as generated (moves on to item 5)
    page.keyboard.press("v")
    assert page.text_content("#position").startswith("Item 5 of 5")
    assert page.input_value("#tier4") == CHAINS[4][1][3]                  # markup shows as text
    assert page.evaluate("document.querySelectorAll('#tiers b, #tiers script').length") == 0
    assert page.text_content("#progress") == "4 / 5 reviewed"

    page.reload()                                                         # nothing is lost
    assert page.text_content("#progress") == "4 / 5 reviewed"
    assert page.input_value("#reviewer") == "ada"
    for _ in range(4):
        page.keyboard.press("p")
    assert page.text_content("#position").startswith("Item 1 of 5")
    assert page.input_value("#tier3") == "blue bird sitting on a branch"
    assert "edited" in page.get_attribute("#tier3", "class") and page.text_content("#mark3") == "not valid \u2717"
    page.screenshot(path=str(tmp_path / "review.png"))                   # the README's docs/curation_review.png
    assert (tmp_path / "review.png").stat().st_size > 10_000
    page.check("#unreviewed")                                             # the filter skips reviewed items
    page.keyboard.press("n")
    assert page.text_content("#position").startswith("Item 5 of 5")
    with page.expect_download() as dl:
        page.click("#download")
    got = tmp_path / "corrections.json"
    dl.value.save_as(got)
    assert not dialogs and not errors, (dialogs, errors)
    ctx.close()

    doc = json.loads(got.read_text())
    assert [i["decision"] for i in doc["items"]] == ["keep", "keep", "drop", "keep"]
    assert {i["reviewer"] for i in doc["items"]} == {"ada"}
    m = import_curation(store, cfg, got)
    assert (m["format"], m["rows_in"], m["rows_out"], m["rows_rejected"], m["dropped"], m["edited"]) == \
        ("review", 4, 3, 1, 1, 1)
    with open(store.stage("curated").path / "hierarcaps_test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    want = [CHAINS[0][1][:2] + ["blue bird sitting on a branch", CHAINS[0][1][3]], CHAINS[1][1], CHAINS[3][1]]
    assert rows == [["id", "captions", "image_url"]] + [[i, " => ".join(t), u] for i, t, u in
                                                         zip(["0", "1", "3"], want, [r[2] for r in rows[1:]])]
    log = audit.read_log(store)
    assert [(e["id"], e["action"], e["reviewer"]) for e in log] == [("0", "keep", "ada"), ("1", "keep", "ada"),
                                                                    ("2", "drop", "ada"), ("3", "keep", "ada")]
    assert log[1]["valid"] == [False, True, True, True] and log[2]["reason"] == "caption does not match the image"
    r = m["report"]
    assert (r["reviewed"], r["fully_valid"], [t["edited"] for t in r["per_tier"]]) == (4, 1, [0, 0, 1, 0])
    assert import_curation(store, cfg, got)["audit_appended"] == 0 and len(audit.read_log(store)) == 4
