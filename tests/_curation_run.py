"""A small run for the curation tests: five test chains (one with markup in its caption) over
COCO-named images drawn here with PIL, ingested by the real ingest stage."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.config import load_config
from pipeline.runner import run_stages
from pipeline.store import RunStore

URL = "http://images.cocodataset.org/val2014/COCO_val2014_{:012d}.jpg"
CHAINS = [
    (139, ["bird", "blue bird", "blue bird on a branch", "A blue bird sitting on a branch in autumn."]),
    (776, ["animal", "brown dog", "brown dog on grass", "A brown dog lying on the grass in a park."]),
    (785, ["food", "pizza", "pizza on a plate", "A pizza with olives on a white plate."]),
    (872, ["vehicle", "red bus", "red bus on a street", "A red double decker bus driving down a street."]),
    (885, ["text", "sign", "sign with markup", "A sign that reads <script>alert(1)</script> & <b>bold</b>."]),
]
COLOURS = [(70, 110, 200), (150, 100, 60), (220, 180, 60), (200, 40, 40), (90, 160, 90)]


def draw_images(folder: Path) -> Path:
    """One made-up picture per chain (shapes and the image id), named like COCO val images."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for (cid, tiers), col in zip(CHAINS, COLOURS):
        im = Image.new("RGB", (320, 240), (235, 238, 242))
        d = ImageDraw.Draw(im)
        d.rectangle([20, 150, 300, 225], fill=(120, 170, 110))
        d.ellipse([110, 50, 210, 150], fill=col)
        d.text((12, 10), f"{tiers[1]}  (made-up image {cid})", fill=(20, 20, 20))
        im.save(folder / f"COCO_val2014_{cid:012d}.jpg", quality=90)
    return folder


def make_run(root: Path, run_id: str = "cur"):
    """(config, store) of a run whose ingest holds CHAINS as the test split."""
    src = root / "test.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "captions", "image_url"])
        w.writerows([[str(i), " => ".join(t), URL.format(cid)] for i, (cid, t) in enumerate(CHAINS)])
    cfg = load_config("tiny", overrides={"run": {"root": str(root)},
                                         "ingest": {"sources": [{"name": "t", "path": str(src), "split": "test"}]}})
    store = RunStore(cfg.run.root, run_id)
    run_stages(cfg, store, ["ingest"])
    return cfg, store
