"""The curation CSV: export chains for correction in a spreadsheet, and read the corrected file.

The export is a CSV a person edits in a spreadsheet: one row per chain, one column per tier, a
``keep`` column (yes/no) and a ``note``. A cell a spreadsheet would run as a formula (leading
``=``, ``+``, ``-``, ``@``, tab or CR) is written with a ``'`` in front, as OWASP recommends, and
import takes exactly that quote off again, so a round trip changes nothing. Rows that cannot be
read (wrong column counts, malformed quoting) are named by line; :mod:`curation.importer`
validates the rest as it does the review page's JSON and Label Studio's export. A
file that is not UTF-8 is refused whole, naming the byte: a spreadsheet that saved it in another
encoding has usually changed every non-ASCII row, so it is re-saved rather than partly imported.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from pipeline.chain import N_TIERS
from pipeline.config import ExportSection
from pipeline.io.writers import test_id_of, write_csv
from pipeline.stage import StageError
from pipeline.store import RunStore

from .items import test_chains as _test_chains

TIER_COLS = [f"tier{k}" for k in range(1, N_TIERS + 1)]
HEADER = ["id", "chain_id", "image_url", *TIER_COLS, "keep", "note"]
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


def export_for_curation(store: RunStore, export: ExportSection, out: str | Path) -> int:
    chains = _test_chains(store, export)
    out = Path(out)
    if out.is_dir():
        raise StageError(f"{out}: is a directory; give the CSV file to write")
    rows = [[escape_cell(v) for v in (test_id_of(c, i), c.get("chain_id") or c.get("caption_id"),
                                      c.get("image_url") or "", *c["positive"], "yes", "")]
            for i, c in enumerate(chains)]
    return write_csv(out, HEADER, rows)


def read_text(path: Path) -> str:
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


def csv_submissions(path: Path, text: str):
    """The CSV's records as import submissions (see :mod:`curation.importer`): ``keep`` yes/no is
    the decision, a dropped row's note its reason."""
    for line, r in _records(path, text):
        if isinstance(r, str):
            yield line, r
            continue
        keep = (r.get("keep") or "").strip().lower()
        decision = "drop" if keep in DROP else "keep" if keep in KEEP else None
        yield line, {"chain_id": r["chain_id"].strip(), "id": r["id"], "tiers": [r[c] for c in TIER_COLS],
                     "decision": decision, "reason": r.get("note") if decision == "drop" else "",
                     "note": r.get("note") or "", "marks": None, "reviewer": None, "reviewed_at": None,
                     "bad_decision": None if decision else f"keep must be yes or no, got {r.get('keep')!r}"}


def import_curation(store: RunStore, config, path: str | Path, **kw) -> dict:
    """See :func:`curation.importer.import_curation`; ``config`` may be the run's export section
    alone (the run's saved config gives the rules)."""
    from pipeline.config import PipelineConfig

    from .importer import import_curation as run_import

    if isinstance(config, ExportSection):
        saved = PipelineConfig.model_validate(store.load_config_dict() or {})
        config = saved.model_copy(update={"export": config})
    return run_import(store, config, path, **kw)
