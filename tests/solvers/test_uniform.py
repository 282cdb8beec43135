"""`uniform_assignment`: every layer at b bits, else the nearest width below, else the
smallest, with ties, fixed and allowed bits kept."""

from __future__ import annotations

import dataclasses

import pytest

from allocator._budget import parse_budgets
from allocator.solvers import solve, uniform_assignment
from allocator.testing_problems import random_problem


def _restricted(ties: int):
    """Layers with their own allowed bits and a fixed one, over candidates (3, 4, 6, 8)."""
    problem = random_problem(8, bits=(3, 4, 6, 8), seed=5, ties=ties)
    layers = list(problem.layers)
    layers[1] = dataclasses.replace(layers[1], allowed_bits=(4, 8))
    layers[4] = dataclasses.replace(layers[4], allowed_bits=(6, 8))
    layers[5] = dataclasses.replace(layers[5], fixed_bits=3)
    return dataclasses.replace(problem, layers=tuple(layers))


@pytest.mark.parametrize("bits", range(1, 10))
def test_each_layer_takes_bits_else_the_nearest_below_else_its_smallest(bits):
    problem = _restricted(ties=0)
    expected = {}
    for layer in problem.layers:
        choices = problem.layer_choices(layer)
        below = [c for c in choices if c <= bits]
        expected[layer.name] = max(below) if below else min(choices)
    assert uniform_assignment(problem, bits) == expected
    assert list(uniform_assignment(problem, bits)) == [x.name for x in problem.layers]


def test_examples():
    problem = _restricted(ties=0)
    at5 = uniform_assignment(problem, 5)
    assert (at5["layer0"], at5["layer1"], at5["layer4"], at5["layer5"]) == (4, 4, 6, 3)
    assert set(uniform_assignment(problem, 8).values()) == {3, 8}


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8])
def test_tied_layers_share_a_width_they_all_allow(bits):
    problem = _restricted(ties=1)  # layer0 (any width) with layer1 (4 or 8)
    assignment = uniform_assignment(problem, bits)
    assert assignment["layer0"] == assignment["layer1"] in (4, 8)
    assert assignment["layer0"] == (8 if bits >= 8 else 4)


@pytest.mark.parametrize("budget", ["3.5bits", "4.5bits", "6.2bits", "9bits"])
def test_the_uniform_solver_answers_one_of_them(budget):
    problem = _restricted(ties=1)
    sol = solve(problem, parse_budgets([budget]), "uniform")
    assert sol.bits == uniform_assignment(problem, sol.extra["uniform_bits"])
