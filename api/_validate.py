"""Checks of client input beyond its JSON shape: budget grammar, registered names,
problem documents. Each failure is an `ApiError` (422) naming the field and the value."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from allocator import Problem, ProblemDocument
from api._catalog import Catalog
from api._errors import ApiError
from engine import AllocatorError, InvalidSpecError, UnsupportedBitWidthError, check_bits


def budgets(texts: list[str], field: str = "body.budgets") -> list:
    """Parsed budgets (the CLI's grammar); the error names the index of the bad text."""
    from allocator import parse_budget, parse_budgets

    for i, text in enumerate(texts):
        try:
            parse_budget(text)
        except InvalidSpecError as e:
            raise ApiError(422, f"`{field}.{i}`: {e}", f"{field}.{i}", text) from None
    try:
        return parse_budgets(texts)
    except InvalidSpecError as e:
        raise ApiError(422, f"`{field}`: {e}", field, texts) from None


def export_format(value: str, field: str = "query.format") -> str:
    """An export format (`allocator export --format`): onnx, compressed-tensors or gguf."""
    from api._exports import FORMATS

    if value not in FORMATS:
        raise ApiError(422, f"`{field}` must be one of {', '.join(FORMATS)}; got {value!r}.",
                       field, value)
    return value


def target(value: str, *, has_model: bool, field: str = "body.target") -> str:
    """A deployment target of a job (`--target`): a model job's; a problem job's is the
    engine (its costs are the document's own)."""
    from allocator.export import TARGETS

    if value not in TARGETS:
        raise ApiError(422, f"`{field}` must be one of {', '.join(TARGETS.names())}; got "
                            f"{value!r}.", field, value)
    if not has_model and value != "engine":
        raise ApiError(422, f"`{field}` {value!r} applies to model jobs; a problem document "
                            "carries its own costs.", field, value)
    return value


def bits(values: list[int] | None, field: str = "body.bits") -> list[int] | None:
    """Sorted unique candidate bit-widths, each one the engine supports."""
    if values is None:
        return None
    for i, b in enumerate(values):
        try:
            check_bits(b, where=f"{field}.{i}")
        except UnsupportedBitWidthError as e:
            raise ApiError(422, str(e), f"{field}.{i}", b) from None
    return sorted(set(values))


def _known(kind: str, name: str, names, field: str) -> None:
    if name not in names:
        raise ApiError(422, f"`{field}`: unknown {kind} {name!r}; choose one of: "
                            f"{', '.join(names)}.", field, name)


def solver(name: str, field: str = "body.solver", *, in_api: bool = False,
           has_model: bool = False) -> str:
    """A registered, installed solver (`in_api`: one that may run in the API process, see
    `BaseSolver.runs_in_api`; without `has_model`: one that needs only the problem's
    tables)."""
    from allocator.solvers import SOLVERS

    _known("solver", name, SOLVERS.names(), field)
    entry = SOLVERS.entry(name)
    if not has_model and entry.target.needs_model:
        raise ApiError(422, f"`{field}`: solver {name!r} learns bit-widths on the model "
                            "itself: submit a `model` job, not a problem.", field, name)
    if not entry.available():
        raise ApiError(422, f"`{field}`: solver {name!r} is not installed on this service.",
                       field, name)
    if in_api and not entry.target.runs_in_api:
        in_process = ", ".join(e.name for e in SOLVERS if e.target.runs_in_api)
        raise ApiError(422, f"`{field}`: solver {name!r} runs in jobs only (POST /jobs with "
                            f"the problem); synchronous solves take {in_process}.", field, name)
    return name


def model(name: str, catalog: Catalog, field: str = "body.model", *,
          registered: Collection[str] = ()) -> str:
    """A built-in model the service has installed, a `registered` one (models file or
    upload), or `hf:<org>/<name>`: a Hugging Face repo id, never a path (a checkpoint
    folder on the service's disk is registered by the operator or uploaded)."""
    if name.startswith("hf:"):
        from allocator._registered import is_repo_id

        repo = name[3:]
        if "/" not in repo or not is_repo_id(repo):
            raise ApiError(422, f"`{field}`: {name!r}: 'hf:' takes a Hugging Face repo id "
                                "'hf:<org>/<name>' here; a checkpoint folder is registered "
                                "with ALLOCATOR_MODELS_FILE or uploaded with POST /models.",
                           field, name)
        return name
    if name in registered:
        return name
    names = catalog.model_names()
    _known("model", name, [*names, *registered], field)
    if not names[name]:
        raise ApiError(422, f"`{field}`: model {name!r} is not installed on this service.",
                       field, name)
    return name


def estimator(name: str, catalog: Catalog, field: str = "body.estimator") -> str:
    _known("estimator", name, list(catalog.estimator_names()), field)
    return name


def problem(data: ProblemDocument | dict[str, Any], *, max_layers: int,
            field: str = "body.problem", candidate_bits: list[int] | None = None,
            budget_list: list | None = None) -> Problem:
    """A validated `allocator.problem/1` document (or a stored one, as a dict) as a
    `Problem`, checked against the layer limit and the budgets."""
    layers = data.layers if isinstance(data, ProblemDocument) else data.get("layers")
    if isinstance(layers, list) and len(layers) > max_layers:
        raise ApiError(422, f"`{field}.layers` has {len(layers)} layers; this endpoint takes "
                            f"at most {max_layers}.", f"{field}.layers", len(layers))
    try:
        if isinstance(data, ProblemDocument):
            prob = Problem.from_document(data)
        else:
            prob = Problem.from_dict(data)
        if candidate_bits is not None:
            prob = prob.with_bits(candidate_bits)
        if budget_list is not None:
            prob.units(budget_list)
    except AllocatorError as e:
        raise ApiError(422, f"`{field}`: {e}", field, None) from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
        raise ApiError(422, f"`{field}` is malformed: {type(e).__name__}: {e}", field,
                       None) from None
    return prob


def rules(ties: list[str] | None, fix: list[str] | None, *, candidate_bits: list[int],
          problem: Problem | None = None, field: str = "body") -> Problem | None:
    """Tie and pin rules (`body.ties`, `body.fix`): their syntax, each pinned width among the
    candidate bits and, given a problem, every rule against its layers; returns the problem
    with the rules applied (None without one). A model job's layers are known only to its
    worker, where a rule matching none fails the job."""
    from allocator import apply_rules, parse_rules
    from allocator._rules import RuleError

    try:
        parsed = parse_rules(ties, fix, tie_option=f"{field}.ties",
                             fix_option=f"{field}.fix", indexed=True)
        for rule in parsed.fix:
            if rule.bits not in candidate_bits:
                raise RuleError(f"`{rule.option}` {rule.text!r}: {rule.bits} bits is not a "
                                f"candidate width (candidates: {candidate_bits}).",
                                rule.option, rule.text)
        return None if problem is None else apply_rules(problem, parsed)
    except RuleError as e:
        where = e.option if e.option and e.option.startswith(field) else f"{field}.ties"
        raise ApiError(422, str(e), where, e.text) from None
