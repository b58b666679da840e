"""Test-set curation hand-off: export chains for manual correction, import the corrected file.

The export is a CSV a person edits in a spreadsheet: one row per chain, one column per tier, a
``keep`` column (yes/no) and a ``note``. A cell a spreadsheet would run as a formula (leading
``=``, ``+``, ``-``, ``@``, tab or CR) is written with a ``'`` in front, as OWASP recommends, and
import takes exactly that quote off again, so a round trip changes nothing. Import validates every
row (unknown or repeated chain ids, repeated ids, wrong column counts, line breaks in a tier,
broken chains go to rejects with the line and reason) and writes the curated test set in the
official HierarCaps format (``id,captions,image_url``) plus Parquet under ``<run>/curated/``. A
file that is not UTF-8 is refused whole, naming the byte: a spreadsheet that saved it in another
encoding has usually changed every non-ASCII row, so it is re-saved rather than partly imported.
"""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.chain import N_TIERS, chain_problem, is_chain
from pipeline.config import ExportSection
from pipeline.hashing import digest
from pipeline.io.writers import test_id_of, test_rows, write_csv
from pipeline.schemas import CHAINS, REJECTS, conform, reject
from pipeline.stage import StageError
from pipeline.stages.export import CHAIN_TABLES, chain_table
from pipeline.store import RunStore, StageDir

TIER_COLS = [f"tier{k}" for k in range(1, N_TIERS + 1)]
HEADER = ["id", "chain_id", "image_url", *TIER_COLS, "keep", "note"]
# the curated test chains: chain rows plus what the curator said and whether any tier changed
CURATED = CHAINS.append(pa.field("note", pa.string())).append(pa.field("edited", pa.bool_()))
MAX_BYTES = 64 << 20            # a curation file holds about a thousand chains
# a cell a spreadsheet runs as a formula, behind any quotes an earlier escape put there
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_ESCAPED = re.compile(r"'+[=+\-@\t\r]")
DROP, KEEP = ("no", "n", "false", "0", "drop"), ("yes", "y", "true", "1", "")


def escape_cell(value) -> str:
    """``'`` before a cell a spreadsheet would evaluate (also before one already starting with
    quotes, so that :func:`unescape_cell` can always take exactly one off)."""
    value = "" if value is None else str(value)
    return "'" + value if _FORMULA.match(value) else value


def unescape_cell(value: str) -> str:
    return value[1:] if _ESCAPED.match(value) else value


def _rows(sd: StageDir, keep) -> list[dict]:
    """The rows of ``sd`` that ``keep`` (a record batch -> mask) selects, read a batch at a time:
    only those become Python rows, never the whole table."""
    out = []
    for b in sd.iter_batches():
        out += b.filter(keep(b)).to_pylist()
    return out


def _test_chains(store: RunStore, export: ExportSection) -> list[dict]:
    """The test set export drew (one chain per image, ids 0..N-1) when export has run; else the
    test-split chains of the table export reads (the furthest finished of negatives, bulk, ingest)."""
    if store.stage("export").manifest() is not None:
        rows = _rows(store.stage("export"), lambda b: pc.is_valid(b.column("test_id")))
        if rows:
            return sorted(rows, key=lambda r: r["test_id"])
    table = chain_table(store)
    if table is None:
        raise StageError(f"run {store.run_id} has no finished chain table ({', '.join(CHAIN_TABLES)})")
    splits = pa.array(export.test_splits, pa.string())
    rows = _rows(store.stage(table), lambda b: pc.is_in(b.column("split"), value_set=splits))
    return [r for r in rows if is_chain(r.get("positive"))]


def export_for_curation(store: RunStore, export: ExportSection, out: str | Path) -> int:
    chains = _test_chains(store, export)
    out = Path(out)
    if out.is_dir():
        raise StageError(f"{out}: is a directory; give the CSV file to write")
    rows = [[escape_cell(v) for v in (test_id_of(c, i), c.get("chain_id") or c.get("caption_id"),
                                      c.get("image_url") or "", *c["positive"], "yes", "")]
            for i, c in enumerate(chains)]
    return write_csv(out, HEADER, rows)


def _read_text(path: Path) -> str:
    """The whole file as text; not UTF-8 is a whole-file error naming the byte and line."""
    if not path.exists():
        raise StageError(f"{path}: file not found")
    if not path.is_file():
        raise StageError(f"{path}: not a file" + (" (a directory)" if path.is_dir() else ""))
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise StageError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise StageError(f"{path}: larger than {MAX_BYTES} bytes; not a curation file")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise StageError(f"{path}: UTF-16 text; save it as CSV UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise StageError(f"{path}: not UTF-8 at byte {e.start} (line {line}): {e.reason}; "
                         "save it as CSV UTF-8") from None


def _records(path: Path, text: str):
    """(line, {column: value}) per non-blank CSV record, or (line, why) for one that cannot be read;
    cells lose the formula escape the export gave them."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as e:
        raise StageError(f"{path}: unreadable header: {e}") from None
    if missing := [h for h in HEADER[:-1] if h not in header]:
        raise StageError(f"{path}: missing columns {missing}; expected {HEADER}")
    if dupes := sorted({h for h in header if header.count(h) > 1}):
        raise StageError(f"{path}: duplicate columns {dupes}")
    while True:
        start = reader.line_num + 1   # a record (a tier may hold a line break) is named by its first line
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield start, f"malformed CSV: {e}"
            continue
        if not values:
            continue                  # a blank line is no row
        if len(values) != len(header):
            yield start, f"expected {len(header)} columns, got {len(values)}"
            continue
        yield start, {h: unescape_cell(v) for h, v in zip(header, values)}


def _row_problem(r: dict, ids: dict[str, int]) -> str | None:
    """Why a curated row of a known, first-seen chain cannot be kept (None when it can);
    ``dropped by curator`` is a reason too. ``ids``: the ids of the rows kept so far."""
    keep = (r.get("keep") or "").strip().lower()
    if keep in DROP:
        return f"dropped by curator{': ' + r['note'] if r.get('note') else ''}"
    if keep not in KEEP:
        return f"keep must be yes or no, got {r.get('keep')!r}"
    for col in ("id", "image_url", *TIER_COLS):
        if "\n" in r[col] or "\r" in r[col]:
            return f"{col} holds a line break"
    if why := chain_problem([r[c].strip() for c in TIER_COLS]):
        return why
    if (rid := r["id"].strip()) in ids:
        return f"duplicate id {rid!r}, first at line {ids[rid]}"
    return None


def import_curation(store: RunStore, export: ExportSection, path: str | Path) -> dict:
    path = Path(path)
    text = _read_text(path)
    originals = {c.get("chain_id") or c.get("caption_id"): c for c in _test_chains(store, export)}
    kept, rejects, dropped, edited = [], [], 0, 0
    first: dict[str, int] = {}                # chain_id -> the line it first appeared on
    ids: dict[str, int] = {}                  # id -> the line of the kept row that has it
    for line, r in _records(path, text):
        if isinstance(r, str):
            rejects.append(reject("curation", str(path), None, r, "", line))
            continue
        cid = r["chain_id"].strip()
        if not cid:
            why = "empty chain_id"
        elif cid not in originals:
            why = f"unknown chain_id {cid!r}: not a test chain of run {store.run_id}"
        elif cid in first:
            why = f"duplicate chain_id {cid!r}, first at line {first[cid]}"
        else:
            first[cid] = line
            why = _row_problem(r, ids)
        if why:
            dropped += why.startswith("dropped by curator")
            rejects.append(reject("curation", str(path), cid or None, why, ",".join(r.values())[:300], line))
            continue
        tiers = [r[c].strip() for c in TIER_COLS]
        if rid := r["id"].strip():
            ids[rid] = line
        orig = originals[cid]
        changed = orig.get("positive") != tiers
        edited += changed
        kept.append({**orig, "chain_id": cid, "orig_id": r["id"], "image_url": r["image_url"] or None,
                     "positive": tiers, "split": "test", "stage": "curation", "note": r.get("note") or None,
                     "edited": changed})
    with store.lock("curation-import"):     # written aside, then switched in: a failure keeps the last import
        sd = store.attempt("curated", digest(text), fresh=True)
        sd.write_unit(0, conform(kept, CURATED), conform(rejects, REJECTS),
                      {"rows_in": len(kept) + len(rejects), "rows_out": len(kept), "rows_rejected": len(rejects)})
        n = write_csv(sd.path / f"{export.name}_test.csv", *test_rows(kept))
        manifest = {"stage": "curated", "source_file": str(path), "rows_in": len(kept) + len(rejects), "rows_out": n,
                    "rows_rejected": len(rejects), "dropped": dropped, "edited": edited, "wall_s": 0.0,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        sd.write_manifest(manifest)
        store.publish("curated", sd)
    return manifest
