"""Parse raw LLM completions into caption-hierarchy tiers.

Survives what real chat models write: numbering (``1.``, ``1)``, ``Tier 1:``), bullets, quotes,
markdown bold/code, trailing explanations, chatty preambles, the model repeating the caption,
``=>`` joined chains, and the chain written specific -> general. Never raises on any string.

``parse_chain(raw, caption)`` -> tiers ``[t1, t2, t3]`` (general -> specific) or a ``reason``.
``parse_tier(raw, more_specific)`` -> one tier (``tiers == [text]``) or a ``reason``.

What a parsed chain must keep is :class:`pipeline.chain.ChainRules` (word limits, how much longer
than the next more specific text a tier may be, no repeats, no copy of the caption), checked by
:func:`pipeline.chain.rule_violation`. Tiers 1-3 are normalised: whitespace collapsed,
quotes/markdown/trailing period removed, lowercased except all-caps tokens (``USA``, ``NYC``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .chain import ChainRules, rule_violation, text_key, word_count

__all__ = ["ParseResult", "parse_chain", "parse_tier", "normalize_tier"]

DEFAULT_RULES = ChainRules()
MAX_RAW_CHARS = 20000   # longer completions are cut before parsing (runaway generation)


@dataclass
class ParseResult:
    tiers: list[str] | None = None
    reason: str | None = None
    raw: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.tiers is not None and self.reason is None

    def __bool__(self) -> bool:
        return self.ok


# --------------------------------------------------------------------------- text helpers

_WS = re.compile(r"\s+")
_ARROW = re.compile(r"\s*(?:=>|->|→|⇒|-->|==>|>>)\s*")
_NUM_ITEM = re.compile(
    r"""^\s*(?:[-*•]\s*)?(?:\*\*|__)?\s*
        (?:(?:tier|level|step|line)\s*)?
        [(\[]?\s*([1-4])\s*[)\].:\-–—]*\s*
        (?:\([^)]{0,40}\)\s*)?      # "Tier 1 (category):"
        [:.\-–—)]?\s*(?:\*\*|__)?\s*[:.\-–—]?\s*
        (.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
_LABELLED_NUM = re.compile(r"^\s*(?:[-*•]\s*)?(?:\*\*|__)?\s*(?:tier|level|step)\s*\d", re.IGNORECASE)
_PLAIN_NUM = re.compile(r"^\s*(?:[-*•]\s*)?(?:\*\*|__)?\s*[(\[]?[1-4]\s*[.):\]]\s*\S")
_BULLET = re.compile(r"^\s*(?:[-*•·‣▪–]|\d+[.)])\s+")
_PREAMBLE = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)|absolutely|great|happy to|"
    r"below is|the (?:hierarchy|chain|tiers?|answer|result|output) (?:is|are)|i (?:would|will|'d|'ll|think|can)|"
    r"let me|answer|output|result|response|chain|hierarchy|tiers?)\b",
    re.IGNORECASE,
)
_EXPLANATION = re.compile(
    r"^\s*(?:this is because|because|this (?:is|captures|describes|works|chain|hierarchy)|these|"
    r"note|explanation|reasoning|each (?:tier|level)|the (?:first|second|third|general|specific)|"
    r"i hope|let me know|hope this|in this|here,|as you can see)\b",
    re.IGNORECASE,
)
_CAPTION_LABEL = re.compile(r"^\s*(?:caption|input|text|original(?: caption)?|sentence|image)\s*:", re.IGNORECASE)
_LABEL_PREFIX = re.compile(
    r"^\s*(?:(?:tier|level)\s*\d\s*(?:\([^)]{0,40}\))?|category|general|broad|noun phrase|phrase|clause|"
    r"short clause|specific|answer|output|result)\s*[:\-–—]\s*",
    re.IGNORECASE,
)
_TRAIL_SPLIT = re.compile(
    r"""\s+(?:[-–—]{1,2}|\|)\s+          # " - explanation"
      | \s*\((?!s\))[^()]*\)\s*$          # "(general category)" at the end
      | (?<=[a-z0-9])\.\s+(?=[A-Z])      # "dog. This is ..."
      | \s*;\s+(?:this|because|it|since)\b
      | ,?\s+(?:because|since|as it|which is|this is)\b.*$
    """,
    re.VERBOSE,
)
_QUOTES = "\"'`“”‘’«»"


def _strip_markdown(s: str) -> str:
    s = re.sub(r"(\*\*|__)(.+?)\1", r"\2", s)
    s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\1", s)
    s = s.replace("**", "").replace("__", "")
    s = s.replace("`", "")
    s = re.sub(r"^\s*#+\s*", "", s)
    return s


def _strip_quotes(s: str) -> str:
    s = s.strip()
    for _ in range(3):
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1].strip()
        else:
            break
    s = s.strip(_QUOTES + " ") if (s[:1] in _QUOTES) != (s[-1:] in _QUOTES) else s
    return s


def _lower_token(tok: str) -> str:
    letters = [c for c in tok if c.isalpha()]
    if len(letters) >= 2 and all(c.isupper() for c in letters):
        return tok
    return tok.lower()


def normalize_tier(text: str) -> str:
    """Whitespace collapsed, quotes/markdown/label/trailing punctuation removed, lowercased
    except all-caps tokens."""
    s = _strip_markdown(text or "")
    s = _WS.sub(" ", s).strip()
    s = _strip_quotes(s)
    s = _LABEL_PREFIX.sub("", s, count=1)
    s = _strip_quotes(s)
    s = s.rstrip(" .,;:!?…")
    s = s.lstrip(" .,;:-–—*•")
    s = _strip_quotes(s)
    s = " ".join(_lower_token(t) for t in s.split())
    return s


def _clean_item(text: str) -> str:
    """Drop trailing explanations from one tier's text, then normalise."""
    s = _strip_markdown(text)
    s = _WS.sub(" ", s).strip()
    s = _strip_quotes(s)
    s = _LABEL_PREFIX.sub("", s, count=1)
    s = _strip_quotes(s)
    m = _TRAIL_SPLIT.search(s)
    if m and m.start() > 0:
        s = s[: m.start()]
    return normalize_tier(s)


def _is_caption_echo(line: str, caption: str) -> bool:
    if not caption:
        return False
    k, c = text_key(line), text_key(caption)
    if not k:
        return False
    return k == c or (len(k) > 10 and (c == k or (k in c and word_count(k) >= word_count(c) - 1)))


# --------------------------------------------------------------------------- extraction

def _prep_lines(raw: str) -> list[str]:
    s = raw.replace("\r\n", "\n").replace("\r", "\n")
    s = re.sub(r"```[a-zA-Z]*", "\n", s)
    lines = []
    for ln in s.split("\n"):
        ln = _WS.sub(" ", ln).strip()
        if ln:
            lines.append(ln)
    return lines


def _split_arrows(line: str) -> list[str]:
    body = _strip_markdown(line)
    body = re.sub(r"^\s*(?:chain|hierarchy|answer|output|result)\s*:\s*", "", body, flags=re.IGNORECASE)
    return [p for p in _ARROW.split(body)]


def _candidate_from_arrows(lines: list[str], caption: str) -> list[str] | None:
    best: list[str] | None = None
    for ln in lines:
        if not _ARROW.search(ln):
            continue
        parts = [_clean_item(p) for p in _split_arrows(ln)]
        parts = [p for p in parts if p]
        if len(parts) >= 2 and (best is None or len(parts) > len(best)):
            best = parts
    return best


def _candidate_from_numbers(lines: list[str]) -> list[str] | None:
    items: dict[int, str] = {}
    order: list[int] = []
    for ln in lines:
        if not (_PLAIN_NUM.match(ln) or _LABELLED_NUM.match(ln)):
            continue
        m = _NUM_ITEM.match(ln)
        if not m:
            continue
        num, text = int(m.group(1)), m.group(2)
        if num in items:  # a second list (e.g. explanations): keep the first
            continue
        items[num] = text
        order.append(num)
    if not items:
        return None
    if all(k in items for k in (1, 2, 3)):
        return [_clean_item(items[k]) for k in (1, 2, 3)]
    return [_clean_item(items[k]) for k in sorted(items) if k <= 3]


def _candidate_from_lines(lines: list[str], caption: str) -> list[str]:
    kept = []
    for ln in lines:
        body = _BULLET.sub("", ln)
        stripped = _strip_markdown(body).strip()
        if _CAPTION_LABEL.match(stripped):
            continue
        if _is_caption_echo(stripped, caption):
            continue
        if _EXPLANATION.match(stripped):
            break  # explanations come after the answer
        if _PREAMBLE.match(stripped) and (stripped.rstrip().endswith((":", "!")) or word_count(stripped) > 6):
            continue
        if stripped.endswith(":") and not kept:
            continue
        c = _clean_item(body)
        if c:
            kept.append(c)
    return kept


def _finish(tiers: list[str], caption: str, rules: ChainRules, raw: str, notes: list[str]) -> ParseResult:
    # drop caption echoes and a 4th tier that is the caption
    tiers = [t for t in tiers if t and not _is_caption_echo(t, caption)]
    if len(tiers) > 3:
        notes.append(f"kept the first 3 of {len(tiers)} items")
        tiers = tiers[:3]
    if len(tiers) < 3:
        return ParseResult(None, f"found {len(tiers)} tier(s), need 3", raw, notes)
    # written specific -> general?
    wc = [word_count(t) for t in tiers]
    if wc[0] > wc[2] and wc[0] >= wc[1] >= wc[2]:
        tiers = tiers[::-1]
        notes.append("reversed specific->general order")
    reason = rule_violation(tiers, caption, rules)
    if reason:
        return ParseResult(None, reason, raw, notes)
    return ParseResult(tiers, None, raw, notes)


def parse_chain(raw: str, caption: str, rules: ChainRules = DEFAULT_RULES) -> ParseResult:
    """Parse a whole-chain completion into ``[t1, t2, t3]`` (general -> specific)."""
    try:
        return _parse_chain(raw, caption, rules)
    except Exception as e:  # pragma: no cover - the parser must never raise
        return ParseResult(None, f"parser error: {type(e).__name__}: {e}", raw if isinstance(raw, str) else "")


def _parse_chain(raw, caption, rules: ChainRules) -> ParseResult:
    if not isinstance(raw, str):
        return ParseResult(None, "empty output" if raw is None else f"output is not text ({type(raw).__name__})", "")
    caption = caption if isinstance(caption, str) else ""
    text = raw[:MAX_RAW_CHARS]
    notes: list[str] = []
    lines = _prep_lines(text)
    if not lines:
        return ParseResult(None, "empty output", raw, notes)
    if len(lines) == 1 and _is_caption_echo(_strip_quotes(_strip_markdown(lines[0])), caption):
        return ParseResult(None, "output repeats the caption", raw, notes)

    arrows = _candidate_from_arrows(lines, caption)
    if arrows is not None and len([a for a in arrows if not _is_caption_echo(a, caption)]) >= 3:
        notes.append("arrows")
        return _finish(arrows, caption, rules, raw, notes)
    numbered = _candidate_from_numbers(lines)
    if numbered is not None and len(numbered) >= 3:
        notes.append("numbered")
        return _finish(numbered, caption, rules, raw, notes)
    plain = _candidate_from_lines(lines, caption)
    if len(plain) >= 3:
        notes.append("lines")
        return _finish(plain, caption, rules, raw, notes)
    # one line, comma/semicolon separated?
    if len(plain) == 1 or (len(lines) == 1):
        src = plain[0] if plain else lines[0]
        for sep in (";", "|", ","):
            parts = [_clean_item(p) for p in src.split(sep)]
            parts = [p for p in parts if p]
            if len(parts) == 3:
                notes.append(f"split on {sep!r}")
                return _finish(parts, caption, rules, raw, notes)
    best = max([c for c in (arrows, numbered, plain) if c is not None], key=len, default=[])
    return _finish(best, caption, rules, raw, notes)


def parse_tier(
    raw: str,
    more_specific: str,
    tier: int | None = None,
    rules: ChainRules = DEFAULT_RULES,
) -> ParseResult:
    """Parse a single-tier completion; ``tiers == [text]`` on success.

    ``tier`` (1..3) selects the word limit (default: the loosest, tier 3's).
    """
    try:
        return _parse_tier(raw, more_specific, tier, rules)
    except Exception as e:  # pragma: no cover
        return ParseResult(None, f"parser error: {type(e).__name__}: {e}", raw if isinstance(raw, str) else "")


def _parse_tier(raw, more_specific, tier, rules: ChainRules) -> ParseResult:
    if not isinstance(raw, str):
        return ParseResult(None, "empty output", "")
    more_specific = more_specific if isinstance(more_specific, str) else ""
    notes: list[str] = []
    lines = _prep_lines(raw[:MAX_RAW_CHARS])
    if not lines:
        return ParseResult(None, "empty output", raw, notes)
    candidate = None
    # a line labelled with the wanted tier wins ("Tier 2: blue bird")
    if tier is not None:
        for ln in lines:
            m = re.match(rf"^\s*(?:\*\*)?\s*(?:tier|level)\s*{tier}\b[^:]*:\s*(?:\*\*)?\s*(.+)$", ln, re.IGNORECASE)
            if m and m.group(1).strip():
                candidate = m.group(1)
                notes.append("labelled")
                break
    if candidate is None:
        arrows = _candidate_from_arrows(lines, more_specific)
        if arrows:
            # "blue bird => blue bird on a branch": the most general part is the answer
            parts = [p for p in arrows if not _is_caption_echo(p, more_specific)]
            if parts:
                candidate = min(parts, key=word_count)
                notes.append("arrows")
    if candidate is None:
        for ln in lines:
            body = _BULLET.sub("", ln)
            stripped = _strip_markdown(body).strip()
            if _CAPTION_LABEL.match(stripped) or _is_caption_echo(_strip_quotes(stripped), more_specific):
                continue
            if _EXPLANATION.match(stripped):
                break
            if _PREAMBLE.match(stripped) and (stripped.endswith((":", "!")) or word_count(stripped) > 6):
                continue
            if stripped.endswith(":") and word_count(stripped) > 2:
                continue
            candidate = body
            break
    if candidate is None:
        if any(_is_caption_echo(_strip_quotes(_strip_markdown(_BULLET.sub("", ln))), more_specific) for ln in lines):
            return ParseResult(None, "output repeats the input", raw, notes)
        return ParseResult(None, "no tier found in output", raw, notes)
    t = _clean_item(_NUM_ITEM.sub(r"\2", candidate) if (_PLAIN_NUM.match(candidate) or _LABELLED_NUM.match(candidate)) else candidate)
    if not t:
        return ParseResult(None, "empty tier", raw, notes)
    idx = tier if tier in (1, 2, 3) else 3
    if reason := rule_violation([t], more_specific, rules, first=idx, below_name="the more specific text"):
        return ParseResult(None, reason, raw, notes)
    return ParseResult([t], None, raw, notes)
