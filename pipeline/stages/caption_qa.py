"""caption_qa: clean and check what caption_vlm and caption_expand wrote; decide the final captions.

Reads ``caption_vlm``, ``caption_json`` and the structured fields, ``caption`` and ``caption_short``
(as caption_expand wrote them) and the flags earlier stages left in ``caption_qa_flags``. Writes the
cleaned texts, ``caption_faithfulness``, ``caption_support_min``, ``caption_source`` and appends its
flags. Every check is a pure function of the text (tested on real-looking bad answers); faithfulness
uses the real all-MiniLM-L6-v2 sentence encoder.

Flags are ``<which>_<problem>``, ``which`` one of ``vlm``, ``json``, ``expand``, ``short``:
``empty``, ``refusal``, ``repetitive``, ``truncated``, ``too_short``, ``too_long``,
``boilerplate_stripped`` (informational), ``json_invalid``, ``expand_unfaithful`` (the expansion as a
whole is far from the VLM caption), ``expand_unsupported`` (one of its sentences matches nothing the
VLM said: invented detail), and the decisions ``caption_fallback_vlm`` / ``short_fallback_vlm``.

Decisions: a failing VLM caption rejects the clip (``on_vlm_fail = "reject"``) or is kept with its
flags (``"keep"``); a failing expansion falls back to the cleaned VLM caption
(``on_expand_fail = "fallback"``) or rejects the clip (``"reject"``). A failing short caption falls
back to the VLM caption's first sentence, cut to ``short_max_words``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vidsift.pipeline.stages.caption_vlm import FIELDS  # the structured caption fields

# Openings that carry no information; stripped repeatedly ("Sure! The video shows ...").
BOILERPLATE = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^(sure|certainly|of course|okay|ok)[!,.:]?\s+",
        r"^(here is|here's|below is)\s+(a|an|the|my)\s+[^:\n]{0,60}?(description|caption|summary)"
        r"[^:\n]{0,40}:\s*",
        r"^(in|throughout)\s+(this|the)\s+(short\s+)?(video|clip|footage|scene|animation)\s*,?\s+",
        r"^(this|the)\s+(short\s+)?(video|clip|footage|image|images|frames|scene|animation|sequence)\s+"
        r"(shows|depicts|features|displays|captures|presents|showcases|is showing|appears to show|contains)"
        r"(\s+that)?[:,]?\s+",
        r"^(we see|we can see|you can see|it shows|there is a video of)\s+",
        r"^(description|caption|dense description)\s*:\s*",
    )
]

REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i can(?:no|')t (?:help|assist|describe|see|view|watch|"
    r"process|provide)|i am (?:unable|not able)|i'?m (?:unable|not able)|unable to (?:view|see|watch|"
    r"process|access|describe)|as an ai\b|i do not have the ability|i don'?t have the ability|"
    r"no (?:video|image|frames?) (?:was|were|is|are|has been|have been) (?:provided|attached|shared))",
    re.IGNORECASE,
)

TERMINAL = (".", "!", "?", '"', "'", ")", "”")


@dataclass(frozen=True, kw_only=True)
class CaptionQaConfig:
    vlm_min_words: int = 8  # a dense description shorter than this is flagged vlm_too_short
    vlm_max_words: int = 400  # ... longer than this, vlm_too_long
    caption_min_words: int = 20  # bounds for the final long caption
    caption_max_words: int = 500
    short_min_words: int = 3  # bounds for caption_short
    short_max_words: int = 40
    max_repetition: float = 0.3  # share of repeated word 3-grams above which text is "repetitive"
    min_faithfulness: float = 0.55  # MiniLM cosine(expansion, VLM caption) below this: expand_unfaithful
    min_support: float = (
        0.35  # an expansion sentence whose best cosine to any VLM sentence is lower: invented
    )
    on_vlm_fail: str = "reject"  # reject | keep: what a failing VLM caption (or JSON) does
    on_expand_fail: str = "fallback"  # fallback (to the VLM caption) | reject
    encoder: str = ""  # sentence encoder for faithfulness; "" = the bundled all-MiniLM-L6-v2
    offline: bool = False  # encoder from local files or the Hugging Face cache only (no hub requests)
    batch_size: int = 32  # rows per call

    def __post_init__(self) -> None:
        for name in ("vlm", "caption", "short"):
            lo, hi = getattr(self, f"{name}_min_words"), getattr(self, f"{name}_max_words")
            if not 0 <= lo < hi:
                raise ValueError(f"caption_qa.{name}_min_words/{name}_max_words: need 0 <= min < max")
        if not 0 < self.max_repetition <= 1:
            raise ValueError(f"caption_qa.max_repetition must be in (0, 1], got {self.max_repetition}")
        if not -1 <= self.min_faithfulness <= 1 or not -1 <= self.min_support <= 1:
            raise ValueError(
                "caption_qa.min_faithfulness and caption_qa.min_support must be cosines in [-1, 1]"
            )
        if self.on_vlm_fail not in ("reject", "keep"):
            raise ValueError(f"caption_qa.on_vlm_fail must be reject or keep, got {self.on_vlm_fail!r}")
        if self.on_expand_fail not in ("fallback", "reject"):
            raise ValueError(
                f"caption_qa.on_expand_fail must be fallback or reject, got {self.on_expand_fail!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"caption_qa.batch_size must be >= 1, got {self.batch_size}")


# -- pure text checks --------------------------------------------------------------------------


def strip_boilerplate(text: str) -> tuple[str, bool]:
    """Text without its empty openings ("The video shows ..."), first letter capitalised; and whether
    anything was stripped."""
    out = (text or "").strip().strip('"').strip()
    stripped = False
    changed = True
    while changed:
        changed = False
        for pattern in BOILERPLATE:
            new = pattern.sub("", out, count=1)
            if new != out:
                out, stripped, changed = new.lstrip(), True, True
    if stripped and out:
        out = out[0].upper() + out[1:]
    return out, stripped


def words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text.lower())


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: 0 for varied text, near 1 for a loop."""
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if len(grams) < 4:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def looks_truncated(text: str) -> bool:
    return bool(text) and not text.rstrip().endswith(TERMINAL)


def trim_truncated(text: str) -> str:
    """A text cut off mid-sentence, back to its last complete sentence (unchanged when it has none)."""
    if not looks_truncated(text):
        return text
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[: ends[-1]] if ends else text


def text_flags(which: str, text: str, min_words: int, max_words: int, max_repetition: float) -> list[str]:
    """Problems of one answer; empty list when it passes."""
    if not text or not text.strip():
        return [f"{which}_empty"]
    flags = []
    if REFUSAL.search(text):
        flags.append(f"{which}_refusal")
    if repetition(text) > max_repetition:
        flags.append(f"{which}_repetitive")
    n = len(words(text))
    if n < min_words:
        flags.append(f"{which}_too_short")
    elif n > max_words:
        flags.append(f"{which}_too_long")
    if n >= min_words and looks_truncated(text):
        flags.append(f"{which}_truncated")
    return flags


def json_flags(fields: dict[str, str | None]) -> list[str]:
    """``json_invalid`` when the structured answer is missing, or a field is empty or a refusal."""
    if any(not (fields.get(f) or "").strip() or REFUSAL.search(fields.get(f) or "") for f in FIELDS):
        return ["json_invalid"]
    return []


def split_sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if len(words(p)) >= 3] or [text]


def first_sentence(text: str, max_words: int) -> str:
    first = split_sentences(text)[0] if text else ""
    ws = first.split()
    return " ".join(ws[:max_words]).rstrip(",;:") if len(ws) > max_words else first


BLOCKING = ("empty", "refusal", "repetitive", "too_short", "too_long", "unfaithful", "unsupported", "error")


def fails(flags: list[str], which: str) -> bool:
    return any(f.startswith(which + "_") and f.split("_", 1)[1] in BLOCKING for f in flags)


# -- the stage ---------------------------------------------------------------------------------


def faithfulness(encoder, reference: str, expansion: str) -> tuple[float, float]:
    """(cosine of the whole expansion to the reference, lowest best-match cosine of its sentences to the
    reference's sentences). The second catches one invented sentence in an otherwise faithful text."""
    ref_sents, exp_sents = split_sentences(reference), split_sentences(expansion)
    emb = encoder([reference, expansion, *ref_sents, *exp_sents])
    whole = float(emb[0] @ emb[1])
    ref = emb[2 : 2 + len(ref_sents)]
    exp = emb[2 + len(ref_sents) :]
    support = float((exp @ ref.T).max(dim=1).values.min())
    return whole, support


class CaptionQa:
    reads: tuple[str, ...] = (
        "caption_vlm",
        *(f"caption_{f}" for f in FIELDS),
        "caption",
        "caption_short",
        "caption_qa_flags",
    )  # the columns it is given (process.call_clip_stage)
    writes: tuple[str, ...] = (
        "caption_vlm",
        "caption",
        "caption_short",
        "caption_faithfulness",
        "caption_support_min",
        "caption_source",
        "caption_qa_flags",
    )

    def __init__(self, config: CaptionQaConfig) -> None:
        self.config = config
        from vidsift.pipeline.text_encoder import (
            SentenceEncoder,  # the trainer's text-model loader (torch, transformers)
        )

        self.encoder = SentenceEncoder(config.encoder, config.offline)

    def __call__(self, rows: list[dict]) -> list[dict]:
        return [self.check(row) for row in rows]

    def check(self, row: dict) -> dict:
        c = self.config
        row = dict(row)
        flags = list(row.get("caption_qa_flags") or [])
        vlm, s = strip_boilerplate(row.get("caption_vlm") or "")
        flags += ["vlm_boilerplate_stripped"] * s + text_flags(
            "vlm", vlm, c.vlm_min_words, c.vlm_max_words, c.max_repetition
        )
        flags += json_flags({f: row.get(f"caption_{f}") for f in FIELDS})
        vlm = trim_truncated(vlm)
        row["caption_vlm"] = vlm
        if (fails(flags, "vlm") or "json_invalid" in flags) and c.on_vlm_fail == "reject":
            return self.reject(
                row, flags, "caption_vlm_failed_qa", [f for f in flags if f.startswith(("vlm_", "json_"))]
            )

        long, s = strip_boilerplate(row.get("caption") or "")
        flags += ["expand_boilerplate_stripped"] * s + text_flags(
            "expand", long, c.caption_min_words, c.caption_max_words, c.max_repetition
        )
        long = trim_truncated(long)
        row["caption_faithfulness"] = row["caption_support_min"] = None
        if long and vlm:
            whole, support = faithfulness(self.encoder, vlm, long)
            row["caption_faithfulness"], row["caption_support_min"] = round(whole, 4), round(support, 4)
            flags += ["expand_unfaithful"] * (whole < c.min_faithfulness)
            flags += ["expand_unsupported"] * (support < c.min_support)
        if fails(flags, "expand"):
            if c.on_expand_fail == "reject":
                return self.reject(
                    row, flags, "caption_expand_failed_qa", [f for f in flags if f.startswith("expand_")]
                )
            long = vlm
            flags.append("caption_fallback_vlm")
            row["caption_source"] = "vlm"
        else:
            row["caption_source"] = "expand"
        row["caption"] = long

        short, s = strip_boilerplate(row.get("caption_short") or "")
        flags += ["short_boilerplate_stripped"] * s + text_flags(
            "short", short, c.short_min_words, c.short_max_words, c.max_repetition
        )
        if fails(flags, "short") or not short:
            short = first_sentence(vlm, c.short_max_words)
            flags.append("short_fallback_vlm")
        row["caption_short"] = short
        row["caption_qa_flags"] = list(dict.fromkeys(flags))
        return row

    @staticmethod
    def reject(row: dict, flags: list[str], reason: str, why: list[str]) -> dict:
        row["caption_qa_flags"] = list(dict.fromkeys(flags))
        row["reject_stage"] = "caption_qa"
        row["reject_reason"] = reason
        row["reject_detail"] = "QA flags: " + ", ".join(dict.fromkeys(why))
        return row
