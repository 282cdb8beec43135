from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from allocator._pareto import non_dominated, pareto_front
from allocator.testing_problems import random_problem


def _dominated(p, q):
    return q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), min_size=1, max_size=40))
def test_non_dominated_matches_quadratic_reference(points):
    keep = set(non_dominated(points))
    for i, p in enumerate(points):
        dominated = any(_dominated(p, q) for q in points)
        if dominated:
            assert i not in keep
        else:  # not dominated: kept unless an identical point was kept
            assert i in keep or any(points[j] == p for j in keep)


def test_front_is_non_dominated_and_spans_both_extremes():
    problem = random_problem(10, seed=4)
    front = pareto_front(problem, "bits", points=12)
    pts = [(p.objective, p.cost["avg_bits"]) for p in front.points]
    assert all(not _dominated(p, q) for p in pts for q in pts)
    assert pts[0][1] == min(problem.bits)  # cheapest: all layers at the lowest bits
    assert pts[-1][1] == max(problem.bits)
    objs = [p[0] for p in pts]
    assert objs == sorted(objs, reverse=True)


def test_latency_axis_and_json():
    problem = random_problem(6, seed=random.Random(1).randint(0, 99))
    front = pareto_front(problem, "latency", points=6)
    data = front.to_dict()
    assert data["format"] == "allocator.pareto/1" and data["cost_key"] == "latency_us"
    assert len(data["points"]) >= 2


def test_front_stops_at_its_total_time_with_the_points_found():
    problem = random_problem(10, seed=4)
    whole = pareto_front(problem, "bits", points=6, total_time_s=60.0)
    assert not whole.time_limit_reached and whole.points
    assert whole.to_dict()["time_limit_reached"] is False
    spent = pareto_front(problem, "bits", points=6, total_time_s=0.0)
    assert spent.time_limit_reached and spent.points == ()
    assert spent.to_dict()["time_limit_reached"] is True


def test_front_total_time_bounds_a_slow_solver():
    import time

    problem = random_problem(8, seed=1)  # 6**8 assignments: brute needs seconds per point
    start = time.perf_counter()
    front = pareto_front(problem, "bits", points=8, solver="brute", time_limit_s=5.0,
                         total_time_s=1.0)
    assert time.perf_counter() - start < 1.0 + 3.0
    assert front.time_limit_reached
