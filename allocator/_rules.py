"""Runtime rules as constraints of the solve: tie groups (`--tie`) and pinned layers (`--fix`).

A deployment runtime imposes rules on a mixed-precision configuration: vLLM fuses q/k/v and
gate/up into one matrix, so they must share one scheme; GGUF stores every expert of a MoE
layer in one tensor; a user pins `lm_head` to 8 bits. These rules enter the `Problem`
(`ties`, per-layer `fixed_bits`) before it is solved, so every solver honours them as
constraints, and the result is checked against them afterwards (`rules_summary`).

Rule texts, the same on the command line, in the project file and in job requests:

- tie, by regex: `re:\\.(q|k|v)_proj$`. Layers are grouped per block: the key of a
  matching layer is its name with the matched part removed (`model.layers.3.self_attn.q_proj`
  -> `model.layers.3.self_attn`), so q/k/v of block 3 form one group and those of block 4
  another. A regex with a named group `block` groups by that group's text instead.
- tie, by names: `a,b,c` (one group).
- pin: `lm_head=8`, `a,b=8` or `re:^model\\.layers\\.0\\.=8` (every matching layer).

Torch-free: the API process parses rules to answer bad ones with a 422.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine import (
    MAX_BITS,
    MIN_BITS,
    InvalidSpecError,
    UnknownComponentError,
    UnknownLayerError,
)

if TYPE_CHECKING:
    from allocator._problem import Problem

REGEX_PREFIX = "re:"
BLOCK_GROUP = "block"
# Longest rule text: far above any real pattern, and short enough that no regex a client
# sends runs long against a model's layer names.
MAX_RULE_CHARS = 500
# Most rules of one kind a request may give.
MAX_RULES = 64
TARGETS = ("engine", "onnx", "compressed-tensors", "gguf")

# What each deployment target requires of a configuration, as rule texts (see
# `default_rules`). vLLM (compressed-tensors) loads q/k/v and gate/up as one fused matrix per
# block, and a MoE layer as one fused kernel over all its experts; GGUF stores each
# projection of a MoE layer's experts as one stacked tensor with one ggml type. ONNX Runtime
# and the engine run every layer on its own kernel.
_QKV = r"re:\.(q|k|v)_proj$"
_BERT_QKV = r"re:\.attention\.self\.(query|key|value)$"
_GATE_UP = r"re:\.(gate|up)_proj$"
_MOE_LAYER = r"re:\.experts\.\d+\.[^.]+$"
_MOE_PROJECTION = r"re:\.experts\.\d+(?=\.)"
DEFAULT_TIES: Mapping[str, tuple[str, ...]] = {
    "engine": (),
    "onnx": (),
    "compressed-tensors": (_QKV, _BERT_QKV, _GATE_UP, _MOE_LAYER),
    "gguf": (_MOE_PROJECTION,),
}
DEFAULT_FIX: Mapping[str, tuple[str, ...]] = {target: () for target in TARGETS}


class RuleError(InvalidSpecError):
    """Raised when a tie or pin rule is malformed or does not fit the problem (a regex that
    matches nothing, a width that is not a candidate, a layer pinned to two widths, ...).

    Attributes:
        option: Where the rule was given (`--tie`, `body.fix.0`), or None.
        text: The rule as given, or None.
    """

    def __init__(self, message: str, option: str | None = None,
                 text: str | None = None) -> None:
        super().__init__(message)
        self.option, self.text = option, text


class UnknownRuleLayerError(RuleError, UnknownLayerError):
    """Raised when a rule names a layer the model does not have."""


# Which rule set a tie or pin: (option, text), or None for the problem's own.
_Origin = tuple[str, str] | None


def _q(text: str) -> str:
    """A rule text quoted as typed (repr would double a regex's backslashes)."""
    return f"'{text}'"


def _named(origin: _Origin, own: str) -> str:
    return own if origin is None else f"`{origin[0]}` {_q(origin[1])}"


@dataclass(frozen=True)
class TieRule:
    """One `--tie`: the layers it matches take one bit-width per group.

    Attributes:
        text: The rule as given (`re:REGEX` or `a,b,c`).
        option: Where it was given (`--tie`, `body.ties.0`, `target gguf`), for errors.
        pattern: The compiled regex (None: explicit names).
        names: The explicit layer names (empty for a regex).
        required: A rule that ties nothing is an error (a target's defaults are not).
    """

    text: str
    option: str = "ties"
    pattern: re.Pattern[str] | None = None
    names: tuple[str, ...] = ()
    required: bool = True

    def groups(self, layers: Sequence[str]) -> list[tuple[str, ...]]:
        """The groups of two or more layers this rule ties, in model order.

        Raises:
            InvalidSpecError: A name that is not a layer, or (when `required`) a rule that
                ties no two layers.
        """
        if self.pattern is None:
            _check_names(self.names, layers, self.option, self.text)
            wanted = set(self.names)
            return [tuple(n for n in layers if n in wanted)]
        by_key: dict[str, list[str]] = {}
        for name in layers:
            m = self.pattern.search(name)
            if m is not None:
                by_key.setdefault(_group_key(self.pattern, m, name), []).append(name)
        groups = [tuple(g) for g in by_key.values() if len(g) > 1]
        if not groups and self.required:
            if not by_key:
                raise RuleError(f"`{self.option}` {_q(self.text)} matches no layer "
                                f"(layers: {_shown(layers)}).", self.option, self.text)
            raise RuleError(
                f"`{self.option}` {_q(self.text)} ties nothing: each of the {len(by_key)} "
                "layers it matches is alone in its block (the name without the matched part "
                "differs for every one; a regex matching whole names ties them all).",
                self.option, self.text)
        return groups


@dataclass(frozen=True)
class FixRule:
    """One `--fix`: the layers it matches take exactly `bits`.

    Attributes:
        text: The rule as given (`NAME=BITS`, `a,b=BITS` or `re:REGEX=BITS`).
        bits: The pinned bit-width.
        option: Where it was given, for errors.
        pattern: The compiled regex (None: explicit names).
        names: The explicit layer names (empty for a regex).
        required: A rule that matches no layer is an error.
    """

    text: str
    bits: int
    option: str = "fix"
    pattern: re.Pattern[str] | None = None
    names: tuple[str, ...] = ()
    required: bool = True

    def layers(self, layers: Sequence[str]) -> list[str]:
        """The layers this rule pins, in model order.

        Raises:
            InvalidSpecError: A name that is not a layer, or a required regex matching none.
        """
        if self.pattern is None:
            _check_names(self.names, layers, self.option, self.text)
            wanted = set(self.names)
            return [n for n in layers if n in wanted]
        pattern = self.pattern
        matched = [n for n in layers if pattern.search(n)]
        if not matched and self.required:
            raise RuleError(f"`{self.option}` {_q(self.text)} matches no layer "
                            f"(layers: {_shown(layers)}).", self.option, self.text)
        return matched


@dataclass(frozen=True)
class Rules:
    """Tie and pin rules of a solve, applied to its problem by `apply_rules`.

    Attributes:
        ties: Tie rules, applied in order (groups sharing a layer merge into one).
        fix: Pin rules; two that pin one layer to different widths are an error.
    """

    ties: tuple[TieRule, ...] = ()
    fix: tuple[FixRule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ties or self.fix)

    def __add__(self, other: Rules) -> Rules:
        """Both sets of rules (a target's defaults plus the user's)."""
        return Rules(self.ties + other.ties, self.fix + other.fix)

    def to_dict(self) -> dict[str, list[str]]:
        """The rule texts, as `parse_rules` reads them back."""
        return {"ties": [r.text for r in self.ties], "fix": [r.text for r in self.fix]}


@dataclass(frozen=True)
class RulesCheck:
    """Whether an assignment keeps the ties and pins of a problem.

    Attributes:
        ties: Tie groups, each in model order.
        fixed: Pinned layer -> bit-width.
        broken: One line per group or pin the assignment does not keep.
    """

    ties: tuple[tuple[str, ...], ...]
    fixed: Mapping[str, int]
    broken: tuple[str, ...] = field(default=())

    @property
    def held(self) -> bool:
        return not self.broken

    def to_dict(self) -> dict[str, Any]:
        """The report's `rules`: counts, `held`, the groups and pins, and what broke."""
        out: dict[str, Any] = {"ties": len(self.ties), "fixed": len(self.fixed),
                               "held": self.held,
                               "tied_layers": sum(len(g) for g in self.ties),
                               "groups": [list(g) for g in self.ties],
                               "fixed_bits": dict(self.fixed)}
        if self.broken:
            out["broken"] = list(self.broken)
        return out


# -- parsing -----------------------------------------------------------------------------------


def _text(text: Any, option: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise RuleError(f"`{option}` must be a non-empty rule text, got {text!r}.", option,
                        text if isinstance(text, str) else None)
    if len(text) > MAX_RULE_CHARS:
        raise RuleError(f"`{option}` is {len(text)} characters long; a rule may have at most "
                        f"{MAX_RULE_CHARS}.", option, text[:80])
    return text.strip()


def _compile(regex: str, option: str, text: str) -> re.Pattern[str]:
    if not regex:
        raise RuleError(f"`{option}` {_q(text)} has an empty regex after {REGEX_PREFIX!r}.",
                        option, text)
    try:
        return re.compile(regex)
    except re.error as e:
        raise RuleError(f"`{option}` {_q(text)} is not a valid regex: {e}.", option,
                        text) from None


def _names(text: str, option: str, whole: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",")))
    if not all(names):
        raise RuleError(f"`{option}` {_q(whole)} has an empty layer name; give names separated "
                        "by commas, or re:REGEX.", option, whole)
    return names


def parse_tie(text: str, option: str = "--tie", *, required: bool = True) -> TieRule:
    """A tie rule from its text: `re:REGEX` (grouped per block) or `a,b,c`.

    Raises:
        InvalidSpecError: naming `option` and the text, for an invalid regex or fewer than
            two names.
    """
    text = _text(text, option)
    if text.startswith(REGEX_PREFIX):
        pattern = _compile(text[len(REGEX_PREFIX):], option, text)
        return TieRule(text, option, pattern=pattern, required=required)
    names = _names(text, option, text)
    if len(names) < 2:
        raise RuleError(f"`{option}` {_q(text)} names one layer; a tie needs two or more "
                        "(a,b,c) or a regex (re:REGEX).", option, text)
    return TieRule(text, option, names=names, required=required)


def parse_fix(text: str, option: str = "--fix", *, required: bool = True) -> FixRule:
    """A pin rule from its text: `NAME=BITS`, `a,b=BITS` or `re:REGEX=BITS`.

    Raises:
        InvalidSpecError: naming `option` and the text, for a missing `=BITS`, a width
            outside 2..8 or an invalid regex.
    """
    text = _text(text, option)
    target, sep, width = text.rpartition("=")
    width = width.strip()
    if not sep or not target.strip() or not (width.isascii() and width.isdigit()):
        raise RuleError(f"`{option}` {_q(text)} must read NAME=BITS, a,b=BITS or re:REGEX=BITS "
                        "(e.g. lm_head=8).", option, text)
    bits = int(width)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise RuleError(f"`{option}` {_q(text)}: the width must be between {MIN_BITS} and "
                        f"{MAX_BITS}, got {bits}.", option, text)
    target = target.strip()
    if target.startswith(REGEX_PREFIX):
        pattern = _compile(target[len(REGEX_PREFIX):], option, text)
        return FixRule(text, bits, option, pattern=pattern, required=required)
    return FixRule(text, bits, option, names=_names(target, option, text), required=required)


def _many(texts: Iterable[str] | None, option: str, indexed: bool) -> list[tuple[str, str]]:
    items = list(texts or ())
    if len(items) > MAX_RULES:
        raise RuleError(f"`{option}` has {len(items)} rules; at most {MAX_RULES}.", option)
    return [(t, f"{option}.{i}" if indexed else option) for i, t in enumerate(items)]


def parse_rules(ties: Iterable[str] | None = (), fix: Iterable[str] | None = (), *,
                tie_option: str = "--tie", fix_option: str = "--fix",
                indexed: bool = False) -> Rules:
    """Rules from their texts (command line, project file, job request).

    Args:
        ties: Tie rule texts (`parse_tie`).
        fix: Pin rule texts (`parse_fix`).
        tie_option, fix_option: How errors name where the texts came from.
        indexed: Name each text by its index too (`body.ties.2`), as the API does.

    Raises:
        InvalidSpecError: The first bad text, named by its option.
    """
    return Rules(tuple(parse_tie(t, o) for t, o in _many(ties, tie_option, indexed)),
                 tuple(parse_fix(t, o) for t, o in _many(fix, fix_option, indexed)))


def default_rules(target: str) -> Rules:
    """The rules a deployment target imposes on every configuration it loads.

    `engine` and `onnx` run each layer on its own kernel: none. `compressed-tensors` (vLLM,
    SGLang): q/k/v and gate/up fused per block, every expert of one MoE layer in one scheme.
    `gguf` (llama.cpp): each projection of a MoE layer's experts is one stacked tensor.
    A default rule that matches nothing in a model is skipped, not an error.

    Raises:
        UnknownComponentError: An unknown target (the message lists the known ones).
    """
    if target not in DEFAULT_TIES:
        raise UnknownComponentError(f"unknown target {target!r}; choose one of: "
                                    f"{', '.join(TARGETS)}.")
    option = f"target {target}"
    return Rules(tuple(parse_tie(t, option, required=False) for t in DEFAULT_TIES[target]),
                 tuple(parse_fix(t, option, required=False) for t in DEFAULT_FIX[target]))


# -- resolving against a problem ---------------------------------------------------------------


def _group_key(pattern: re.Pattern[str], m: re.Match[str], name: str) -> str:
    if BLOCK_GROUP in pattern.groupindex and m.group(BLOCK_GROUP) is not None:
        return "block:" + m.group(BLOCK_GROUP)
    return "rest:" + name[:m.start()] + "\x00" + name[m.end():]


def _shown(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_names(names: Sequence[str], layers: Sequence[str], option: str, text: str) -> None:
    known = set(layers)
    for n in names:
        if n not in known:
            raise UnknownRuleLayerError(f"`{option}` {_q(text)}: {n!r} is not a layer of the "
                                        f"model (layers: {_shown(layers)}; a regex: "
                                        "re:REGEX).", option, text)


class _Groups:
    """Union-find over layer names: ties that share a layer merge (ties are transitive)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.origin: dict[str, _Origin] = {}  # layer -> the first rule that tied it

    def find(self, name: str) -> str:
        root = name
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        self.parent[name] = root
        return root

    def tie(self, group: Sequence[str], origin: _Origin) -> None:
        for n in group:
            self.origin.setdefault(n, origin)
        first = self.find(group[0])
        for n in group[1:]:
            self.parent[self.find(n)] = first

    def groups(self, layers: Sequence[str]) -> list[tuple[str, ...]]:
        by_root: dict[str, list[str]] = {}
        for n in layers:
            if n in self.parent:
                by_root.setdefault(self.find(n), []).append(n)
        return [tuple(g) for g in by_root.values() if len(g) > 1]


def apply_rules(problem: Problem, rules: Rules) -> Problem:
    """`problem` with `rules` added: tie groups merged with its own `ties` (groups that share
    a layer become one), pins set as `fixed_bits` (a pin replaces the layer's own).

    Raises:
        RuleError: naming the rule's option and text: a regex matching no layer, a name that
            is not a layer (`UnknownRuleLayerError`), a pinned width that is not a candidate
            width of the problem or that the layer cannot take, a layer pinned to two
            widths, or a tie group whose members are pinned to different widths or share no
            width.
    """
    if not rules:
        return problem
    names = [x.name for x in problem.layers]
    by_name = {x.name: x for x in problem.layers}
    pins: dict[str, tuple[int, _Origin]] = {}
    for rule in rules.fix:
        origin = (rule.option, rule.text)
        if rule.bits not in problem.bits:
            raise RuleError(f"{_named(origin, '')}: {rule.bits} bits is not a candidate width "
                            f"(candidates: {list(problem.bits)}).", *origin)
        for n in rule.layers(names):
            earlier = pins.get(n)
            if earlier is not None and earlier[0] != rule.bits:
                raise RuleError(f"{_named(origin, '')} pins {n!r} to {rule.bits} bits, but "
                                f"{_named(earlier[1], '')} pins it to {earlier[0]}.", *origin)
            if not problem.layer_choices(dataclasses.replace(by_name[n], fixed_bits=rule.bits)):
                raise RuleError(f"{_named(origin, '')}: layer {n!r} cannot take {rule.bits} "
                                f"bits (its widths: {list(problem.layer_choices(by_name[n]))}).",
                                *origin)
            pins[n] = (rule.bits, origin)
    for layer in problem.layers:  # the problem's own pins, where no rule replaced them
        if layer.fixed_bits is not None and layer.name not in pins:
            pins[layer.name] = (layer.fixed_bits, None)
    union = _Groups()
    for group in problem.ties:
        union.tie(group, None)
    for tie in rules.ties:
        for group in tie.groups(names):
            union.tie(group, (tie.option, tie.text))
    layers = tuple(dataclasses.replace(x, fixed_bits=pins[x.name][0]) if x.name in pins else x
                   for x in problem.layers)
    changed = dataclasses.replace(problem, layers=layers, ties=tuple(union.groups(names)))
    _check_groups(changed, union, pins)
    return changed


def _check_groups(problem: Problem, union: _Groups,
                  pins: Mapping[str, tuple[int, _Origin]]) -> None:
    """Every tie group has one width all its members can take (their pins included)."""
    by_name = {x.name: x for x in problem.layers}
    for group in problem.ties:
        origins = [union.origin.get(n) for n in group]
        tie = next((o for o in origins if o is not None), None)
        tied = _named(tie, "the problem's `ties`")
        pinned = [(n, pins[n]) for n in group if n in pins]
        if len({bits for _, (bits, _) in pinned}) > 1:
            a, (bits_a, why_a) = pinned[0]
            b, (bits_b, why_b) = next(p for p in pinned if p[1][0] != bits_a)
            blame = tie or why_b or why_a
            raise RuleError(
                f"{tied} ties {a!r} and {b!r}, but "
                f"{_named(why_a, 'the problem')} pins {a!r} to {bits_a} bits and "
                f"{_named(why_b, 'the problem')} pins {b!r} to {bits_b}.",
                *(blame or (None, None)))
        common = set.intersection(*(set(problem.layer_choices(by_name[n])) for n in group))
        if not common:
            widths = "; ".join(f"{n}: {list(problem.layer_choices(by_name[n]))}"
                               for n in group[:4])
            raise RuleError(f"{tied} ties {_shown(group)}, which share no bit-width (widths: "
                            f"{widths}).", *(tie or (None, None)))


def check_rules(problem: Problem, assignments: Iterable[Mapping[str, int]]) -> RulesCheck:
    """Whether each assignment keeps `problem`'s ties and pins: verified on the bits chosen,
    not assumed from the solver.

    Args:
        problem: The problem that was solved (its `ties` and layers' `fixed_bits`).
        assignments: Layer -> bits, e.g. the config's and each Pareto point's.
    """
    fixed = {x.name: x.fixed_bits for x in problem.layers if x.fixed_bits is not None}
    broken: list[str] = []
    for i, bits in enumerate(assignments):
        where = "" if i == 0 else f" (assignment {i})"
        for group in problem.ties:
            widths = {n: bits.get(n) for n in group}
            if len(set(widths.values())) != 1:
                broken.append(f"tie {list(group)} took {widths}{where}")
        for n, want in fixed.items():
            if bits.get(n) != want:
                broken.append(f"{n!r} pinned to {want} took {bits.get(n)}{where}")
    return RulesCheck(tuple(problem.ties), fixed, tuple(broken))


def rules_summary(problem: Problem,
                  assignments: Iterable[Mapping[str, int]]) -> dict[str, Any] | None:
    """`check_rules(...).to_dict()`, or None when the problem has no ties and no pins."""
    if not problem.ties and all(x.fixed_bits is None for x in problem.layers):
        return None
    return check_rules(problem, assignments).to_dict()
