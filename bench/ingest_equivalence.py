"""The vectorised ingest against the per-row one it replaced: identical rows and rejects.

Runs the ingest stage of two checkouts (this one and an older commit, e.g. ``git worktree add
/tmp/ingest_old eaae2e5``), each in its own process, over every input the ingest tests use
(tests/bad_inputs/ingest, the generated bad inputs, examples/) plus generated ones (empty lines,
CRLF, quoted CSV fields over several lines, duplicates and near-duplicates, Unicode, controls, long
lines, gzip, truncated and damaged gzip, a big file over many units), under several ingest
settings, and compares the tables (or the one error line) case by case.

    .venv/bin/python bench/ingest_equivalence.py --old /tmp/ingest_old
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"default": {}, "global": {"dedup_scope": "global"}, "exact": {"dedup": "exact"},
            "none": {"dedup": "none"}, "units7": {"unit_rows": 7}, "limit5": {"limit": 5, "unit_rows": 3},
            "clean_chains": {"clean_chains": True, "dedup_scope": "global"},
            "chars": {"min_chars": 12, "max_chars": 40}}
UNICODE = ["café au lait", "cafe\u0301 au lait", "ｆｕｌｌｗｉｄｔｈ text", "the ﬁsh", "Straße", "STRASSE",
           "naïve  café\u200b", "\u3000spaced\u3000", "emoji 🐶 dog", "x\u0085y", "a\xa0b", "İstanbul", "ǅemal"]


def worker(cases_file: str, out: str) -> None:
    """In the checkout on sys.path[0]: run each case, write its tables or its error."""
    from pipeline.config import load_config
    from pipeline.execute import run_stage
    from pipeline.io.readers import ReaderError
    from pipeline.registry import get_stage
    from pipeline.stage import StageError
    from pipeline.store import RunStore
    import pyarrow.parquet as pq

    for name, case in json.loads(Path(cases_file).read_text()).items():
        cfg = load_config("tiny", overrides={"run": {"root": f"{out}/art"}, "ingest": case})
        store = RunStore(cfg.run.root, name)
        try:
            m = run_stage(get_stage("ingest", cfg), store)
        except (StageError, ReaderError) as e:
            Path(out, f"{name}.err").write_text(str(e))
            continue
        sd = store.stage("ingest")
        pq.write_table(sd.read(), Path(out, f"{name}.rows.parquet"))
        pq.write_table(sd.read_rejects(), Path(out, f"{name}.rejects.parquet"))
        Path(out, f"{name}.json").write_text(json.dumps({k: m[k] for k in ("rows_in", "rows_out", "rows_rejected")}))


def generated(d: Path) -> list[Path]:
    """Inputs written here: the ingest tests' inline files and harder ones."""
    rng = random.Random(0)

    def w(name: str, data: bytes | str) -> Path:
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        return d / name

    files = [w("edge.tsv", "\r\n".join([
        "\ufeffA dog runs on grass.\thttp://x/1.jpg", "A cat sleeps on a sofa.\thttp://x/2.jpg", "", "only one column",
        "too\tmany\tcolumns", "A dog runs on grass.\thttp://x/3.jpg", "a  DOG runs on grass\thttp://x/4.jpg",
        "x" * 5000 + "\thttp://x/5.jpg", "   \thttp://x/6.jpg", "Two  people\u200b walking.\thttp://x/7.jpg"]).encode()
        + b"\r\nbad \xff\xfe bytes\thttp://x/8.jpg\r\n")]
    files.append(w("exact.tsv", "A dog.\tu\nA dog.\tu\na DOG\tu\n"))
    files.append(w("limit.tsv", "".join(f"caption number {i}\tu{i}\n" for i in range(50))))
    files.append(w("a.csv", "key,cap,url\n1,A red car.,u1\n2,,u2\n3,too,many,cols\n"))
    files.append(w("b.jsonl", '{"key": 4, "cap": "A green tree.", "url": "u4"}\nnot json\n\n{"key": 5}\n'))
    files.append(w("t.csv", 'id,captions,image_url\n0,"bird => blue bird => blue bird on branch => A blue bird on a '
                   'branch.",http://i/0.jpg\n1,bird => blue bird,http://i/1.jpg\n'))
    files.append(w("tr.csv.gz", gzip.compress(b"positive,negative\na => b => c d => e f g,x => y => c z => e f q\n")))
    coco = {"images": [{"id": 1, "coco_url": "http://c/1.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3}],
            "annotations": [{"id": 10 + i, "image_id": rng.choice([1, 2, 3, 4]),
                             "caption": rng.choice(["A man riding a wave.", "a man riding a wave", "A bowl.",
                                                    *UNICODE])} for i in range(60)] + [{"id": 99, "image_id": 1}]}
    files.append(w("coco.json", json.dumps(coco)))
    words = "dog cat red car tree man on in the".split()
    pool = [f"{rng.choice(['A', 'The', 'a'])} {' '.join(rng.choices(words, k=5))}" for _ in range(400)] + UNICODE

    def variant(c: str) -> str:
        k = rng.random()
        return (c if k < .4 else c.upper() if k < .5 else c + "." if k < .6 else "  " + c + " ,"
                if k < .7 else c.replace(" ", "  ") if k < .8 else c + "\x07" if k < .85 else c + f" {rng.random()}")

    lines = []
    for i in range(60_000):
        k = rng.random()
        lines.append("" if k < .01 else "no tab here" if k < .015 else "a\tb\tc" if k < .02 else " \t " if k < .025
                     else f"{variant(rng.choice(pool))}\thttp://x/{rng.randrange(300)}.jpg" + ("\r" if k < .1 else ""))
    big = ("\n".join(lines) + "\n").encode()
    files += [w("big.tsv", big), w("big.tsv.gz", gzip.compress(big, mtime=0))]
    files.append(w("big_trunc.tsv.gz", gzip.compress(big, mtime=0)[:200_000]))
    z = bytearray(gzip.compress(big, mtime=0))
    z[len(z) // 2:len(z) // 2 + 64] = bytes(rng.randrange(256) for _ in range(64))
    files.append(w("big_damaged.tsv.gz", bytes(z)))
    files.append(w("quotes.csv", 'caption,url\n"A ""quoted"" dog.",u1\n"two\nline caption",u2\n\n'
                   '"A ""quoted"" dog.",u1\n"three\nline\ncaption",u3\nplain one,u4\n"a, b",u5\n'))
    files.append(w("long.tsv", b"\xef\xbb\xbf" + b"y" * ((1 << 20) + 10) + b"\nshort line ok\tu\n" + b"z" * (3 << 20)
                   + b"\tu\r\n" + "ünïcode ok\tu\n".encode() + b"q" * ((1 << 20) - 2) + b"\tu\n"))
    files.append(w("controls.tsv", "".join(f"{c}\tu{i}\n" for i, c in enumerate(
        ["tab\x0bvt", "fs\x1cgs\x1d", "del\x7f", "c1\x85x", "bell\x07", "\x1c lead", "trail \x1f", "nul\x00x",
         "zw\u200bsp"]))))
    files.append(w("chains.csv", "positive,negative,image_url\n" + "".join(
        f"{rng.choice(['a', 'b'])} => {rng.choice(['c', 'c '])} => d{rng.randrange(3)} => E {rng.randrange(4)} .,"
        f"x => y => z => q,http://i/{rng.randrange(2)}.jpg\n" for _ in range(40))))
    return files


def cases(d: Path) -> dict:
    spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "tests" / "test_bad_inputs.py")
    bad = sys.modules["bad_inputs"] = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "tests"))
    spec.loader.exec_module(bad)
    (d / "bad").mkdir()
    for f in (REPO / "tests" / "bad_inputs" / "ingest").iterdir():
        (d / "bad" / f.name).write_bytes(f.read_bytes())
    for name, make in bad.GENERATED.items():
        make(d / "bad" / name) if callable(make) else (d / "bad" / name).write_bytes(make)
    inputs = sorted((d / "bad").iterdir()) + sorted((REPO / "examples").glob("*.tsv")) + generated(d)
    out = {}
    for p in inputs:
        for setting, over in SETTINGS.items():
            out[f"{p.name}.{setting}"] = {"sources": [{"name": "s", "path": str(p), "split": "train"}], **over}
    for setting, over in SETTINGS.items():          # several sources in one stream (units cross sources)
        out[f"multi.{setting}"] = {"sources": [{"name": n, "path": str(d / f)} for n, f in
                                               [("a", "edge.tsv"), ("b", "exact.tsv"), ("c", "coco.json"),
                                                ("a", "big.tsv"), ("d", "quotes.csv"), ("e", "t.csv")]], **over}
    return out


def run(root: Path, cases_file: Path, out: Path) -> None:
    out.mkdir()
    code = f"import sys; sys.path.insert(0, {str(root)!r}); sys.path.insert(1, {str(REPO / 'bench')!r}); " \
           f"import ingest_equivalence as e; e.worker({str(cases_file)!r}, {str(out)!r})"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, stderr=subprocess.DEVNULL)


def compare(names, old: Path, new: Path) -> list[str]:
    import pyarrow.parquet as pq

    diff = []
    for name in names:
        for suffix in (".err", ".json", ".rows.parquet", ".rejects.parquet"):
            a, b = old / f"{name}{suffix}", new / f"{name}{suffix}"
            if a.exists() != b.exists():
                diff.append(f"{name}: {suffix} only in {'old' if a.exists() else 'new'}")
            elif a.exists() and (pq.read_table(a).equals(pq.read_table(b)) if suffix.endswith("parquet")
                                 else a.read_text() == b.read_text()) is False:
                diff.append(f"{name}: {suffix} differs")
    return diff


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="a checkout of the per-row ingest (git worktree)")
    ap.add_argument("--only", default="", help="only the cases whose name holds this")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        all_cases = {k: v for k, v in cases(td).items() if args.only in k}
        (td / "cases.json").write_text(json.dumps(all_cases))
        run(Path(args.old), td / "cases.json", td / "old")
        run(REPO, td / "cases.json", td / "new")
        diff = compare(all_cases, td / "old", td / "new")
        errors = sum(1 for n in all_cases if (td / "new" / f"{n}.err").exists())
        rows = sum(json.loads((td / "new" / f"{n}.json").read_text())["rows_in"] for n in all_cases
                   if (td / "new" / f"{n}.json").exists())
    print(json.dumps({"cases": len(all_cases), "whole_file_errors": errors, "rows_in": rows,
                      "identical": not diff, "differences": diff}, indent=2))
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
