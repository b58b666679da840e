"""Bad inputs through the real CLI: each ends in one ``hierarcaps: error: <where>: <reason>`` line
and exit status 2 (a whole file, a config, a model that cannot be used) or in reject rows with
row and reason, rows in = rows out + rows rejected (a row that cannot be used), never a traceback.

The corpus is ``tests/bad_inputs/`` (small text files) plus the binary and huge files
``GENERATED`` writes. Most cases run ``flows.cli.main`` in this process; the model stages, which
run in a process of their own anyway, and ``--debug`` go through real ``hierarcaps`` processes.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipeline.store import RunStore

BAD = Path(__file__).parent / "bad_inputs"
REPO = Path(__file__).resolve().parents[1]
LINES = b"".join(b"caption number %d of a dog on the grass\thttp://x/%d.jpg\n" % (i, i) for i in range(400))
FIVE_LINES = b"".join(LINES.splitlines(keepends=True)[:5])
COCO_LATIN1 = b'{"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": "caf\xe9"}]}'
HIERARCAPS_ROW = b"0,bird => blue bird => blue bird on a branch => A blue bird on a branch.,http://i/0.jpg\n"


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _bad_crc(data: bytes) -> bytes:
    """A gzip whose CRC trailer is wrong: every line decompresses, the damage shows at the end."""
    z = bytearray(_gz(data))
    z[-8] ^= 0xFF
    return bytes(z)


def _multiline_field() -> bytes:
    """An unclosed quote that gathers lines past the 1 MiB field limit (line 12 crosses it)."""
    return (b"caption,url\n\"" + (b"z" * 100_000 + b"\n") * 10 + b"z" * 100_000 + b"\",http://x/1.jpg\n"
            + b"A good caption of a red car.,http://x/2.jpg\n")


def _parquet(table: pa.Table):
    def write(path: Path) -> None:
        pq.write_table(table, path)
    return write


# binary or huge inputs, written by the fixture: name -> bytes, or a function writing the file
GENERATED = {
    "truncated.tsv.gz": _gz(LINES)[: len(_gz(LINES)) // 2],
    "truncated_header.csv.gz": _gz(b"id,captions,image_url\n" + HIERARCAPS_ROW)[:14],
    "bad_crc.tsv.gz": _bad_crc(FIVE_LINES),
    "empty_content.tsv.gz": _gz(b""),
    "gzip_named_plain.tsv": _gz(LINES[:200]),
    "utf16_bom.tsv": "A dog runs.\thttp://x/1.jpg\n".encode("utf-16"),
    "utf16_no_bom.csv": "id,captions,image_url\n0,a => b => c => d,u\n".encode("utf-16-le"),
    "nul_bytes.tsv": b"A dog\x00 runs on the grass.\thttp://x/1.jpg\nA cat sleeps on a sofa.\thttp://x/2.jpg\n",
    "invalid_utf8.tsv": b"A caf\xe9 on a street.\thttp://x/1.jpg\nA cat sleeps on a sofa.\thttp://x/2.jpg\n",
    "invalid_utf8.csv": b"id,captions,image_url\n" + HIERARCAPS_ROW + b"1,a => b => c => d \xff\xfe,u\n",
    "caption_1mb.tsv": b"x" * 1_000_000 + b"\thttp://x/1.jpg\nA cat sleeps on a sofa.\thttp://x/2.jpg\n",
    "line_2mib.jsonl": b'{"caption": "' + b"y" * (2 << 20) + b'"}\n{"caption": "A cat sleeps on a sofa."}\n',
    "bomb_line.tsv.gz": _gz(b"y" * (20 << 20) + b"\nA cat sleeps on a sofa.\thttp://x/2.jpg\n"),
    "field_too_large.csv": _multiline_field(),
    "deep_nesting.jsonl": b"[" * 100_000 + b'\n{"caption": "A cat sleeps on a sofa."}\n',
    "huge_integer.jsonl": b'{"caption": "A dog.", "id": ' + b"1" * 5000 + b'}\n{"caption": "A cat sleeps."}\n',
    "coco_truncated.json.gz": _gz(json.dumps({"images": [{"id": 1}], "annotations": [
        {"id": i, "image_id": 1, "caption": f"caption {i}"} for i in range(50)]}).encode())[:-30],
    "coco_invalid_utf8.json": COCO_LATIN1,
    "parquet_no_text.parquet": _parquet(pa.table({"key": [1, 2], "cap": ["A red car.", "A blue car."]})),
    "parquet_not_string.parquet": _parquet(pa.table({"caption": pa.array([5, None], pa.int64())})),
    "a_directory.tsv": lambda p: p.mkdir(),
    "missing.tsv": lambda p: None,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """bad_inputs/ingest plus the generated files, in one folder."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    for f in (BAD / "ingest").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    for name, make in GENERATED.items():
        if callable(make):
            make(folder / name)
        else:
            (folder / name).write_bytes(make)
    return folder


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_one_error(code: int, err: str, *fragments: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("hierarcaps: error:")]
    assert (code, len(lines)) == (2, 1), err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def ingest_cli(capsys, root: Path, path: Path, **source) -> tuple[int, str]:
    sources = json.dumps([{"name": "x", "path": str(path), **source}])
    return cli(capsys, "stage", "ingest", "--no-prefect", "--root", str(root), "--run", "r", "--preset", "tiny",
               "--set", f"ingest.sources={sources}")


def ingest_result(root: Path) -> tuple[dict, list[tuple[int, str]], list[dict]]:
    sd = RunStore(root, "r").stage("ingest")
    return sd.manifest(), [(r["row"], r["reason"]) for r in sd.read_rejects().to_pylist()], sd.read().to_pylist()


@dataclass
class Case:
    file: str                         # in bad_inputs/ingest or GENERATED
    error: str = ""                   # whole-file: the one error line holds the file name and this
    rejects: list = field(default_factory=list)   # row errors: (row, reason prefix), in order
    rows_out: int = 0
    source: dict = field(default_factory=dict)    # more source fields (format, columns)


NOT_OBJECT = "JSON line is not an object"
CASES = [
    # whole-file errors
    Case("missing.tsv", error="file not found"),
    Case("a_directory.tsv", error="is a directory"),
    Case("empty.tsv", error="empty file"),
    Case("empty_content.tsv.gz", error="empty file"),
    Case("header_only.csv", error="no data rows (header only)"),
    Case("not_gzip.tsv.gz", error="not a gzip file"),
    Case("gzip_named_plain.tsv", error="gzip-compressed, but the name does not end in .gz"),
    Case("truncated_header.csv.gz", error="file ends early (truncated gzip) before the end of its first line"),
    Case("utf16_bom.tsv", error="UTF-16 text"),
    Case("utf16_no_bom.csv", error="NUL bytes in the first line"),
    Case("cr_only.tsv", error="CR only"),
    Case("captions.txt", error="cannot detect format"),
    Case("not_coco.json", error="no 'annotations' list"),
    Case("coco_list.json", error="no 'annotations' list"),
    Case("coco_no_annotations.json", error="no annotations"),
    Case("coco_truncated.json.gz", error="truncated gzip"),
    Case("coco_invalid_utf8.json", error=f"not UTF-8 at byte {COCO_LATIN1.index(0xE9)}: invalid"),
    Case("not_parquet.parquet", error="not a readable Parquet file"),
    Case("parquet_no_text.parquet", error="no column 'caption' (columns.text)"),
    Case("csv_no_text_column.csv", error="no column 'caption' (columns.text)"),
    Case("csv_duplicate_columns.csv", error="duplicate column names ['caption']"),
    Case("hierarcaps_no_chain_column.csv", error="not a HierarCaps CSV", source={"format": "hierarcaps_csv"}),
    Case("three_tabs.tsv", error="columns: unknown key(s) ['txt']", source={"format": "csv", "columns": {"txt": "a"}}),
    # row errors: reject rows
    Case("three_tabs.tsv", rejects=[(2, "expected 2 tab-separated columns (caption, url), got 4")], rows_out=2),
    Case("nul_bytes.tsv", rejects=[(1, "NUL byte in line")], rows_out=1),
    Case("invalid_utf8.tsv", rejects=[(1, "invalid UTF-8")], rows_out=1),
    Case("invalid_utf8.csv", rejects=[(3, "invalid UTF-8")], rows_out=1),
    Case("bad_crc.tsv.gz", rejects=[(6, "damaged gzip data (CRC check failed")], rows_out=5),
    Case("caption_1mb.tsv", rejects=[(1, "caption longer than 1000 characters (1000000)")], rows_out=1),
    Case("line_2mib.jsonl", rejects=[(1, "line longer than 1048576 bytes (2097168 bytes)")], rows_out=1),
    Case("bomb_line.tsv.gz", rejects=[(1, "line longer than 1048576 bytes (20971521 bytes)")], rows_out=1),
    Case("field_too_large.csv", rejects=[(2, "malformed CSV (lines 2-12): field larger than field limit")],
         rows_out=1),
    Case("csv_bad_quotes.csv", rejects=[(2, "malformed CSV (line 2): ',' expected after '\"'"),
                                        (4, "malformed CSV (line 4): unexpected end of data")], rows_out=1),
    Case("non_object.jsonl", rejects=[(1, NOT_OBJECT), (2, NOT_OBJECT), (3, NOT_OBJECT), (4, NOT_OBJECT)], rows_out=1),
    Case("surrogate.jsonl", rejects=[(1, "invalid Unicode in column 'caption': lone surrogate"),
                                     (3, "invalid Unicode in column 'id': lone surrogate")],
         rows_out=1, source={"columns": {"id": "id"}}),
    Case("invalid_json.jsonl", rejects=[(1, "invalid JSON: Expecting"), (2, "text column 'caption' is not a string"),
                                        (3, "missing text column 'caption'"), (4, "empty line")], rows_out=1),
    Case("deep_nesting.jsonl", rejects=[(1, "invalid JSON: nested too deeply")], rows_out=1),
    Case("huge_integer.jsonl", rejects=[(1, "invalid JSON: Exceeds the limit (4300 digits)")], rows_out=1),
    Case("parquet_not_string.parquet", rejects=[(1, "text column 'caption' is not a string"),
                                                (2, "missing text column 'caption'")]),
    Case("coco_unknown_image.json", rejects=[(2, "image_id 7 not in images"), (3, "image_id '2' not in images"),
                                             (4, "annotation has no image_id")], rows_out=1),
    Case("coco_no_images.json", rejects=[(1, "image_id 1 not in images (the file lists no images)"),
                                         (2, "image_id 2 not in images (the file lists no images)")]),
    Case("coco_empty_images.json", rejects=[(1, "image_id 1 not in images (the file lists no images)")]),
    Case("coco_no_caption.json", rejects=[(1, "annotation has no caption string"), (2, "annotation has no caption"),
                                          (3, "annotation has no caption"), (4, "annotation is not an object")],
         rows_out=1),
    Case("hierarcaps_3tier.csv", rejects=[(2, "positive chain: expected 4 tiers, got 3")], rows_out=1),
    Case("hierarcaps_5tier.csv", rejects=[(2, "positive chain: expected 4 tiers, got 5")], rows_out=1),
    Case("hierarcaps_empty_tier.csv", rejects=[(2, "positive chain: tier 2 is empty"),
                                               (3, "positive chain: tier 4 is empty")], rows_out=1),
    Case("hierarcaps_duplicate_ids.csv", rejects=[(4, "duplicate id 1, first at line 2"), (5, "empty id")],
         rows_out=2),
    Case("hierarcaps_negative_3tier.csv", rejects=[(2, "negative chain: expected 4 tiers, got 3")], rows_out=1),
    Case("hierarcaps_wrong_columns.csv", rejects=[(2, "expected 3 columns"), (3, "expected 3 columns")], rows_out=1),
    Case("bom_crlf.csv", rows_out=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.file}-{'error' if c.error else 'rows'}")
def test_ingest_bad_input(case: Case, corpus, tmp_path, capsys):
    path = corpus / case.file
    code, err = ingest_cli(capsys, tmp_path, path, **case.source)
    if case.error:
        assert_one_error(code, err, path.name, case.error)
        return
    assert code == 0 and "Traceback" not in err, err
    m, rejects, rows = ingest_result(tmp_path)
    assert len(rejects) == len(case.rejects), rejects
    for (row, reason), (want_row, want) in zip(rejects, case.rejects):
        assert row == want_row and reason.startswith(want), (row, reason)
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (
        case.rows_out + len(case.rejects), case.rows_out, len(case.rejects)) == (
        len(rows) + len(rejects), len(rows), len(rejects))


def test_truncated_gzip_keeps_the_rows_before_the_damage(corpus, tmp_path, capsys):
    """The lines that decompress are kept in order; one reject names the line where the file ends."""
    code, err = ingest_cli(capsys, tmp_path, corpus / "truncated.tsv.gz")
    assert code == 0 and "Traceback" not in err, err
    m, rejects, rows = ingest_result(tmp_path)
    n = len(rows)
    assert 0 < n < 400
    assert [r["text"] for r in rows] == [f"caption number {i} of a dog on the grass" for i in range(n)]
    assert rejects == [(n + 1, f"file ends early (truncated gzip) after line {n}; any later lines are lost")]
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (n + 1, n, 1)


def _damaged_parquet(path: Path) -> None:
    """Snappy pages with a run of flipped bytes in the middle: the footer still reads."""
    pq.write_table(pa.table({"caption": [f"caption number {i} of a dog" for i in range(20000)]}), path,
                   row_group_size=5000, compression="snappy")
    data = bytearray(path.read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 200):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


def test_damaged_parquet_keeps_the_records_before_the_damage(tmp_path, capsys):
    """The same rule as a damaged .gz: the records read are kept, one reject says where it broke."""
    path = tmp_path / "damaged.parquet"
    _damaged_parquet(path)
    code, err = ingest_cli(capsys, tmp_path, path)
    assert code == 0 and "Traceback" not in err, err
    m, rejects, rows = ingest_result(tmp_path)
    n = len(rows)
    assert 0 < n < 20000 and [r["text"] for r in rows] == [f"caption number {i} of a dog" for i in range(n)]
    assert len(rejects) == 1 and rejects[0][0] == n + 1
    assert rejects[0][1].startswith(f"damaged Parquet data after record {n} (")
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (n + 1, n, 1)


def test_bom_and_crlf_are_read_as_plain_utf8(corpus, tmp_path, capsys):
    assert ingest_cli(capsys, tmp_path, corpus / "bom_crlf.csv")[0] == 0
    _, _, rows = ingest_result(tmp_path)
    assert [(r["orig_id"], r["positive"][-1], r["image_url"]) for r in rows] == [
        ("0", "A blue bird on a branch.", "http://i/0.jpg"), ("1", "A brown dog lying on grass.", "http://i/1.jpg")]


# ------------------------------------------------------------------ configs and the command line

CONFIG_CASES = [
    ("not_mapping.yaml", "top level must be a mapping, got list"),
    ("invalid.yaml", "invalid YAML"),
    ("unknown_field.yaml", "ingest.sourcse: Extra inputs are not permitted"),
    ("out_of_range.yaml", "ingest.unit_rows: Input should be greater than or equal to 1"),
    ("wrong_type.yaml", "ingest.min_chars: Input should be a valid integer"),
    ("section_not_mapping.yaml", "ingest: Input should be a valid dictionary"),
]


@pytest.mark.parametrize("name,why", CONFIG_CASES)
def test_bad_config_file(name, why, tmp_path, capsys):
    code, err = cli(capsys, "stage", "ingest", "--no-prefect", "--root", str(tmp_path), "--run", "r",
                    "--config", str(BAD / "config" / name))
    assert_one_error(code, err, name, why)


def _stage_args(root, *more):
    return ["stage", "ingest", "--no-prefect", "--root", str(root), "--run", "r", *more]


@pytest.mark.parametrize("argv,fragments", [
    (["--preset", "tiny", "--set", "ingest.unit_rows"], ["--set 'ingest.unit_rows'", "section.field=value"]),
    (["--preset", "tiny", "--set", "ingest.unit_rows=abc"], ["--set 'ingest.unit_rows=abc'", "valid integer"]),
    (["--preset", "tiny", "--set", "ingest.sources=[{path: x.tsv}]"], ["ingest.sources.0.name: Field required"]),
    (["--preset", "tiny", "--set", "ingest.sources=[{name: x, path: x.tsv, limit: -1}]"], ["ingest.sources.0.limit"]),
    (["--preset", "nosuch"], ["unknown preset 'nosuch'"]),
    (["--config", "no/such/config.yaml"], ["config file not found: no/such/config.yaml"]),
    (["--config", str(BAD / "config")], ["bad_inputs/config: is a directory"]),
    (["--preset", "tiny", "--set", "ingest.sources=[]"], ["ingest: no sources configured"]),
])
def test_bad_command_line(argv, fragments, tmp_path, capsys):
    assert_one_error(*cli(capsys, *_stage_args(tmp_path, *argv)), *fragments)


def test_utf16_config_and_other_commands(tmp_path, capsys):
    cfg = tmp_path / "utf16.yaml"
    cfg.write_bytes("ingest:\n  unit_rows: 5\n".encode("utf-16"))
    assert_one_error(*cli(capsys, *_stage_args(tmp_path, "--config", str(cfg))), "utf16.yaml: not UTF-8 text")
    assert_one_error(*cli(capsys, "stage", "nosuch", "--root", str(tmp_path), "--preset", "tiny"),
                     "unknown stage(s) ['nosuch']")
    assert_one_error(*cli(capsys, "status", "nosuch-run", "--root", str(tmp_path)), "no run 'nosuch-run'")
    assert_one_error(*cli(capsys, "no-such-command"), "invalid choice: 'no-such-command'")


def test_debug_reraises_and_a_bug_shows_its_traceback(monkeypatch, tmp_path, capsys):
    from pipeline import runner
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="unknown preset"):
        main(["--debug", *_stage_args(tmp_path, "--preset", "nosuch")])
    with pytest.raises(ConfigError):
        main([*_stage_args(tmp_path, "--preset", "nosuch"), "--debug"])

    def crash(*_, **__):
        raise RuntimeError("stage 'seed' crashed in its process:\nValueError: bad logits\n"
                           "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad logits")
    monkeypatch.setattr(runner, "resolve", crash)
    assert_one_error(*cli(capsys, *_stage_args(tmp_path)), "stage 'seed' crashed in its process: ValueError: bad logits")

    monkeypatch.setattr(runner, "resolve", lambda *a, **k: {}["run"])   # a real bug: a bare KeyError
    code, err = cli(capsys, *_stage_args(tmp_path))
    assert code == 1 and "Traceback" in err and "hierarcaps: error:" not in err
    assert err.splitlines()[-1].startswith("hierarcaps: internal error: KeyError: 'run'")


# ------------------------------------------------------------------ models (real processes)

def _hierarcaps(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow   # ~10 s of CPU: two of the children import transformers before the id fails
def test_models_that_do_not_exist_and_debug_in_real_processes(tmp_path):
    """Model stages open their engines in their own process: the error still comes back as one line
    naming the config field and the id. Run side by side: most of the time is interpreter start-up."""
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"\0")
    base = ["--no-prefect", "--root", str(tmp_path), "--preset", "tiny"]
    models = [("seed", "models.generator.model", "/typo"), ("seed", "models.generator.model", "no/such-model"),
              ("seed", "models.generator.model", "tiny/nope"), ("nli_filter", "models.nli.model", "/typo"),
              ("nli_filter", "models.nli.model", "no/such-model"), ("nli_filter", "models.nli.model", str(a_file))]
    procs = [(_hierarcaps("stage", stage, *base, "--run", f"m{i}", "--set", f"{fld}={mid}"), (f"{fld}: ", repr(mid)))
             for i, (stage, fld, mid) in enumerate(models)]
    not_gz = str(BAD / "ingest" / "not_gzip.tsv.gz")
    src = f"ingest.sources=[{{name: x, path: '{not_gz}'}}]"
    plain = _hierarcaps("stage", "ingest", *base, "--run", "g", "--set", src)
    debug = _hierarcaps("--debug", "stage", "ingest", *base, "--run", "d", "--set", src)
    for proc, fragments in procs + [(plain, ("not_gzip.tsv.gz: not a gzip file",))]:
        _, err = proc.communicate(timeout=300)
        assert_one_error(proc.returncode, err, *fragments)
    _, err = debug.communicate(timeout=300)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1].endswith("not_gzip.tsv.gz: not a gzip file (the name ends in .gz)")


def test_open_engines_refuse_models_before_loading(tmp_path):
    """What augment and bulk share with seed and nli_filter: open_* refuse before any load."""
    from types import SimpleNamespace

    from pipeline.backends.generation import GeneratorConfig
    from pipeline.stage import StageError
    from pipeline.stages.common import open_generator, open_h

    ctx = SimpleNamespace(model_path=lambda m: m, upstream=lambda name: SimpleNamespace(path=tmp_path))
    for mid, why in [("/typo", "no such model folder"), ("~/no/such/model", "no such model folder"),
                     ("a/b/c", "no such model folder"), ("tiny/nope", "unknown tiny model")]:
        with pytest.raises(StageError, match=f"^models.generator.model: .*{why}"):
            open_generator(ctx, GeneratorConfig(model=mid, subprocess=True))   # refused before a process starts
    with pytest.raises(StageError, match="distill's H model .* is missing"):
        open_h(ctx, None)


# ------------------------------------------------------------------ curation

FORMULA_CHAINS = [   # chains whose cells a spreadsheet would run as formulas, and two it would not
    ["bird", "blue bird", "blue bird on a branch", "-A blue bird on a branch."],
    ["=1+1", "+dog", "@dog on grass", "A brown dog lying on grass."],
    ["food", "pizza", "pizza on a plate", "'A pizza on a plate, quoted."],
    ["'=already quoted", "cat", "grey cat on a sofa", "A grey cat asleep on a sofa."],
]


@pytest.fixture(scope="module")
def curation_run(tmp_path_factory):
    """A run whose ingest holds FORMULA_CHAINS as test chains, and its curation export (CSV rows)."""
    root = tmp_path_factory.mktemp("curation")
    src = root / "test.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "captions", "image_url"])
        w.writerows([[str(i), " => ".join(c), f"http://i/{i}.jpg"] for i, c in enumerate(FORMULA_CHAINS)])
    sources = json.dumps([{"name": "t", "path": str(src), "split": "test"}])
    assert main(["stage", "ingest", "--no-prefect", "--root", str(root), "--run", "c", "--preset", "tiny",
                 "--set", f"ingest.sources={sources}"]) == 0
    out = root / "export.csv"
    assert main(["curation-export", "c", str(out), "--root", str(root)]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        return root, list(csv.reader(f))


def _write(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def _import(capsys, root: Path, path: Path) -> tuple[int, str]:
    return cli(capsys, "curation-import", "c", str(path), "--root", str(root))


def test_curation_export_escapes_formulas_and_round_trips(curation_run, tmp_path, capsys):
    root, rows = curation_run
    cells = [c for r in rows[1:] for c in r]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert [r[3:7] for r in rows[1:]] == [
        ["bird", "blue bird", "blue bird on a branch", "'-A blue bird on a branch."],
        ["'=1+1", "'+dog", "'@dog on grass", "A brown dog lying on grass."],
        ["food", "pizza", "pizza on a plate", "'A pizza on a plate, quoted."],
        ["''=already quoted", "cat", "grey cat on a sofa", "A grey cat asleep on a sofa."]]
    code, err = _import(capsys, root, _write(tmp_path / "same.csv", rows))
    assert code == 0, err
    sd = RunStore(root, "c").stage("curated")
    m = sd.manifest()
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"], m["edited"]) == (4, 4, 0, 0)
    with open(sd.path / "hierarcaps_test.csv", newline="", encoding="utf-8") as f:
        assert [r[1].split(" => ") for r in list(csv.reader(f))[1:]] == FORMULA_CHAINS


def _edited(rows, edit) -> list[list[str]]:
    rows = [list(r) for r in rows]
    edit(rows)
    return rows


def _set(row: list[str], column: str, value: str) -> None:
    from curation.curate import HEADER

    row[HEADER.index(column)] = value


def _append_copy_of_first(rows):
    rows.append(list(rows[1]))


def _cut_fourth(rows):
    rows[4] = rows[4][:5]


CURATION_ROW_CASES = {   # name -> (edit of the exported rows, expected rejects (line, reason prefix))
    "unknown_chain_id": (lambda rs: _set(rs[2], "chain_id", "no-such-chain"),
                         [(3, "unknown chain_id 'no-such-chain': not a test chain of run c")]),
    "duplicate_chain_id": (_append_copy_of_first, [(6, "duplicate chain_id '")]),
    "multi_line_tier": (lambda rs: _set(rs[3], "tier2", "pizza\non a plate"), [(4, "tier2 holds a line break")]),
    "too_many_columns": (lambda rs: rs[1].append("extra"), [(2, "expected 9 columns, got 10")]),
    "too_few_columns": (_cut_fourth, [(5, "expected 9 columns, got 5")]),
    "duplicate_id": (lambda rs: _set(rs[3], "id", rs[2][0]), [(4, "duplicate id '1', first at line 3")]),
    "bad_keep": (lambda rs: _set(rs[1], "keep", "maybe"), [(2, "keep must be yes or no, got 'maybe'")]),
    "empty_tier": (lambda rs: _set(rs[2], "tier3", " "), [(3, "tier 3 is empty")]),
    "line_after_multi_line_tier": (lambda rs: (_set(rs[1], "tier4", "a\nb"), _set(rs[2], "keep", "maybe")),
                                   [(2, "tier4 holds a line break"), (4, "keep must be yes or no")]),
}


@pytest.mark.parametrize("name", CURATION_ROW_CASES)
def test_curation_import_rejects_rows(name, curation_run, tmp_path, capsys):
    root, rows = curation_run
    edit, want = CURATION_ROW_CASES[name]
    edited = _edited(rows, edit)
    code, err = _import(capsys, root, _write(tmp_path / f"{name}.csv", edited))
    assert code == 0 and "Traceback" not in err, err
    sd = RunStore(root, "c").stage("curated")
    got = [(r["row"], r["reason"]) for r in sd.read_rejects().to_pylist()]
    assert len(got) == len(want) and all(r == w_row and why.startswith(w) for (r, why), (w_row, w) in zip(got, want)), got
    m = sd.manifest()
    assert m["rows_in"] == len(edited) - 1 == m["rows_out"] + m["rows_rejected"] and m["rows_rejected"] == len(want)


def test_curation_import_refuses_unreadable_files(curation_run, tmp_path, capsys):
    root, rows = curation_run
    good = _write(tmp_path / "good.csv", rows).read_bytes()
    bad_utf8 = tmp_path / "latin1.csv"
    at = good.index(b"blue bird") + 2
    bad_utf8.write_bytes(good[:at] + b"\xe9" + good[at:])
    assert_one_error(*_import(capsys, root, bad_utf8), "latin1.csv: not UTF-8 at byte", f"at byte {at} (line 2)")
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(good.decode().encode("utf-16"))
    assert_one_error(*_import(capsys, root, utf16), "utf16.csv: UTF-16 text")
    assert_one_error(*_import(capsys, root, BAD / "curation" / "missing_columns.csv"),
                     "missing_columns.csv: missing columns ['image_url', 'tier3', 'tier4', 'keep']")
    dupes = _write(tmp_path / "dupes.csv", [[*rows[0], "keep"], *[[*r, "yes"] for r in rows[1:]]])
    assert_one_error(*_import(capsys, root, dupes), "dupes.csv: duplicate columns ['keep']")
    assert_one_error(*_import(capsys, root, tmp_path), f"{tmp_path}: not a file (a directory)")
    assert_one_error(*_import(capsys, root, tmp_path / "nope.csv"), "nope.csv: file not found")
    assert_one_error(*cli(capsys, "curation-export", "c", str(tmp_path), "--root", str(root)), "is a directory")
