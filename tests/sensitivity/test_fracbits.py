"""FracBits: the relaxation, its rounding onto the budgets, the estimator and the solver."""

from __future__ import annotations

import pytest

import sensitivity
from allocator import parse_budgets, solve
from allocator.solvers import feasible, get_solver, round_to_budget
from allocator.testing_problems import random_problem
from engine import BitConfig, InvalidSpecError
from tests.zoo.conftest import need

FAST = {"rounding": "rtn", "steps": 80}


def test_estimator_learns_bits_on_the_budget_and_is_seeded():
    spec = need("digits-cnn")
    run = [sensitivity.estimate(spec, "fracbits", bits=(2, 4, 8), seed=3, options=FAST,
                                use_cache=False) for _ in range(2)]
    assert run[0].to_dict()["layers"] == run[1].to_dict()["layers"]
    layers = run[0].layers
    learned = {n: x.extra["fractional_bits"] for n, x in layers.items()}
    params = {n: x.params for n, x in layers.items()}
    mean = sum(learned[n] * params[n] for n in learned) / sum(params.values())
    assert mean == pytest.approx(5.0, abs=1e-6)  # the middle of 2..8, met exactly
    assert all(2.0 <= b <= 8.0 for b in learned.values())
    for x in layers.values():
        assert x.stop_reason == "learned"
        assert x.omega[2] >= x.omega[4] >= x.omega[8] == 0.0


def test_solver_meets_the_budget_and_beats_uniform_on_digits_cnn():
    spec = need("digits-cnn")
    options = {"rounding": "rtn", "bits": (2, 3, 4, 8), "measure": False, "weight_only": True}
    learned = {"solver": "fracbits", "solver_options": {"steps": 120}}
    mixed = solve(spec, ["2.5bits"], **learned, **options).config
    again = solve(spec, ["2.5bits"], **learned, **options).config
    uniform = solve(spec, ["2.5bits"], solver="uniform", **options).config
    assert mixed.bits == again.bits
    assert mixed.status == "feasible"
    assert mixed.cost["avg_bits"] <= 2.5 + 1e-9
    assert set(mixed.extra) >= {"reproducibility"}
    # no layer can take its next candidate without breaking the budget: the budget is spent
    params = {x.name: x.params for x in spec.layers()}
    total = sum(params.values())
    for name, b in mixed.bits.items():
        higher = [c for c in (2, 3, 4, 8) if c > b]
        if higher:
            assert mixed.cost["avg_bits"] + params[name] * (higher[0] - b) / total > 2.5

    def loss(cfg: BitConfig) -> float:
        quantized = spec.quantize(BitConfig(bits=cfg.bits, activation_bits=None, group_size=128))
        return sensitivity.calibration_loss(spec, quantized)

    assert loss(mixed) < 0.5 * loss(uniform)


@pytest.mark.parametrize("seed", range(5))
def test_rounding_meets_budgets_and_spends_them(seed):
    import random

    problem = random_problem(12, seed=seed)
    budgets = parse_budgets(["4.2bits"])
    units = problem.units(budgets)
    rhs = [(b, problem.budget_rhs(b)) for b in budgets]
    rng = random.Random(seed)
    fractional = [rng.uniform(min(u.choices), max(u.choices)) for u in units]
    picks = round_to_budget(units, rhs, fractional)
    assert picks is not None and feasible(units, rhs, picks)
    for i, u in enumerate(units):  # nothing more fits, or the higher bits gain nothing
        for c in (c for c in u.choices if c > picks[i]):
            trial = picks[:i] + [c] + picks[i + 1:]
            assert not feasible(units, rhs, trial) or u.omega[c] >= u.omega[picks[i]]
            break


def test_rounding_reports_an_unreachable_budget():
    problem = random_problem(4, seed=0)
    budgets = parse_budgets(["1bits"])
    units = problem.units(budgets)
    rhs = [(b, problem.budget_rhs(b)) for b in budgets]
    assert round_to_budget(units, rhs, [2.0] * len(units)) is None


def test_solver_without_a_model_says_how_to_run_it():
    with pytest.raises(InvalidSpecError, match="--solver fracbits"):
        get_solver("fracbits").solve(random_problem(3), parse_budgets(["4bits"]))
    with pytest.raises(InvalidSpecError, match="steps"):
        get_solver("fracbits", steps=0)
