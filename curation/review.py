"""The review page: a self-contained folder (one HTML file, script and style inline, plus the
images it shows) that opens from disk in any browser, with no network.

Images are matched by COCO id: a file in ``--images`` whose name carries the item's image id is
copied to ``images/<id><ext>`` (a name made here from digits, never a name from the data); an
item without a local file shows its image URL. The chains go into the page as JSON inside a
``<script type="application/json">`` with ``<``, ``>`` and ``&`` escaped, and the page sets text
only through ``value``/``textContent``: a caption holding ``<script>`` shows as text.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.hashing import digest
from pipeline.stage import StageError
from pipeline.store import RunStore
from pipeline.testset import coco_image_id

from .items import test_items

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
PAGE = "index.html"


def _template(name: str) -> str:
    return resources.files("curation").joinpath("review_page", name).read_text(encoding="utf-8")


def script_json(obj) -> str:
    """JSON that cannot end the ``<script>`` element it sits in."""
    s = json.dumps(obj, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(ch, esc)
    return s


def image_files(images: Path | None) -> dict[str, Path]:
    """COCO image id -> file, for the image files directly in ``images``."""
    if images is None:
        return {}
    if not images.is_dir():
        raise StageError(f"{images}: not a directory of images")
    out = {}
    for p in sorted(images.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file() and (cid := coco_image_id(p.name)):
            out.setdefault(cid, p)
    return out


def render_page(run_id: str, items: list[dict], *, allow_tier4: bool = False, threshold: float = 0.5) -> str:
    data = {"run_id": run_id, "page_id": digest([run_id, [i["chain_id"] for i in items]]),
            "allow_tier4": allow_tier4, "threshold": threshold, "items": items}
    # replace the data last: nothing in the chains is ever read as a placeholder
    html = _template("page.html").replace("__CSS__", _template("page.css")).replace("__JS__", _template("page.js"))
    return html.replace("__TITLE__", run_id).replace("__DATA__", script_json(data))


def write_review(store: RunStore, config: PipelineConfig, out: str | Path, images: str | Path | None = None,
                 *, allow_tier4: bool = False, link: bool = False) -> dict:
    """Write the review folder for the run's test items; returns what it wrote."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StageError(f"{out}: exists and is not a directory")
    files = image_files(Path(images) if images else None)
    items = test_items(store, config.export)
    if not items:
        raise StageError(f"run {store.run_id} has no test chains to review")
    (out / "images").mkdir(parents=True, exist_ok=True)
    local = 0
    for it in items:
        cid = it["image_id"] if (it["image_id"] or "").isdigit() else coco_image_id(it["image_url"])
        src = files.get(str(int(cid))) if cid and cid.isdigit() else None
        if src is None:
            it["image"] = it["image_url"] if it["image_url"].startswith(("http://", "https://")) else ""
            continue
        name = f"images/{int(cid)}{src.suffix.lower()}"
        dst = out / name
        if not dst.exists():
            if link:
                dst.symlink_to(src.resolve())
            else:
                shutil.copyfile(src, dst)
        it["image"], local = name, local + 1
    html = render_page(store.run_id, items, allow_tier4=allow_tier4, threshold=config.nli_filter.entail_threshold)
    (out / PAGE).write_text(html, encoding="utf-8")
    return {"page": str(out / PAGE), "items": len(items), "local_images": local, "remote_images": len(items) - local}


