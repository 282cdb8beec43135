"""`ddpg`: a HAQ-style agent (stable-baselines3 DDPG) that walks the layers choosing bits.

Each episode visits the layers in model order; the observation describes the current layer
(position, size, MACs, sensitivity at the lowest and highest bits) and the budget spent so
far; a continuous action in [0, 1] picks one of the layer's allowed bit-widths. After the
last layer the assignment is repaired to meet the budgets by lowering the bits of the
layers that lose the least Ω per unit of cost saved (not HAQ's last-layers-first rule), and
the episode's reward is minus the repaired objective: the Problem's Ω as a proxy (default),
or with `reward="measured"` the model's measured calibration loss with that assignment's
weights as the engine rounds them (`sensitivity.CandidateWeights`; needs `model=`, which the
pipeline passes). The best repaired assignment seen is returned, with its gap to the ILP
(in Ω) where one is installed.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from allocator._problem import Unit
from allocator.solvers._base import Answer, ModelSolver, SolverConfig, register_solver
from allocator.solvers._feasibility import Rhs
from allocator.solvers._ilp_program import available_backends, solve_ilp
from allocator.solvers._repair import repair
from engine import BitConfig, InvalidSpecError, MissingDependencyError

N_FEATURES = 9


class _AllocationEnv:
    """A gymnasium environment over the units of one problem (built lazily: gymnasium is
    an optional dependency)."""

    def __new__(cls, units: list[Unit], rhs, measure=None):
        import gymnasium as gym

        class Env(gym.Env):
            metadata: dict[str, Any] = {}

            def __init__(self) -> None:
                super().__init__()
                self.units, self.rhs = units, rhs
                self.observation_space = gym.spaces.Box(-10.0, 10.0, (N_FEATURES,), np.float32)
                self.action_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
                n = len(units)
                log_p = np.log1p([u.params for u in units])
                self._size = log_p / max(log_p.max(), 1e-9)
                all_om = [max(v, 1e-30) for u in units for v in u.omega.values()]
                lo, hi = math.log10(min(all_om)), math.log10(max(all_om))
                span = max(hi - lo, 1e-9)

                def scaled(omega: float) -> float:
                    return (math.log10(max(omega, 1e-30)) - lo) / span

                self._om_lo = np.array([scaled(u.omega[min(u.choices)]) for u in units])
                self._om_hi = np.array([scaled(u.omega[max(u.choices)]) for u in units])
                self._n = n
                self.best: tuple[float, list[int]] | None = None

            def _obs(self) -> np.ndarray:
                i = min(self.i, self._n - 1)
                picked = list(zip(self.units, self.picks, strict=False))
                spent = [sum(u.costs[b.kind][c] for u, c in picked) / max(lim, 1e-12)
                         for b, lim in self.rhs] or [0.0]
                floor = [sum(min(u.costs[b.kind].values()) for u in self.units[i:])
                         / max(lim, 1e-12) for b, lim in self.rhs] or [0.0]
                return np.array([i / self._n, self._size[i], self._om_lo[i], self._om_hi[i],
                                 max(spent), max(floor), 1.0 - max(spent) - max(floor),
                                 len(self.units[i].choices) / 8.0, self.last_action],
                                dtype=np.float32)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.i, self.picks, self.last_action = 0, [], 0.0
                return self._obs(), {}

            def step(self, action):
                a = float(np.clip(action[0], 0.0, 1.0))
                choices = self.units[self.i].choices
                self.picks.append(choices[min(len(choices) - 1, int(a * len(choices)))])
                self.last_action = a
                self.i += 1
                if self.i < self._n:
                    return self._obs(), 0.0, False, False, {}
                repaired = repair(self.units, self.rhs, self.picks)
                if repaired is None:
                    return self._obs(), -10.0, True, False, {}
                if measure is None:
                    objective = sum(u.omega[c] for u, c in zip(self.units, repaired, strict=True))
                else:
                    objective = measure(repaired)
                if self.best is None or objective < self.best[0]:
                    self.best = (objective, repaired)
                return self._obs(), float(-objective / self.reward_scale), True, False, {}

        env = Env()
        worst = [min(u.choices) for u in units]
        scale = sum(u.omega[c] for u, c in zip(units, worst, strict=True)) if measure is None \
            else measure(worst)
        env.reward_scale = max(scale, 1e-12)
        return env


class _MeasuredLoss:
    """Assignment (choice per unit) -> the model's calibration loss, memoized."""

    def __init__(self, units: list[Unit], cands: Any) -> None:
        self.units, self.cands = units, cands
        self.evaluations: dict[tuple[int, ...], float] = {}

    def __call__(self, picks: list[int]) -> float:
        key = tuple(picks)
        if key not in self.evaluations:
            self.evaluations[key] = self.cands.loss(
                {n: c for u, c in zip(self.units, picks, strict=True) for n in u.names})
        return self.evaluations[key]


REWARDS = ("proxy", "measured")


@dataclass(frozen=True)
class DdpgConfig(SolverConfig):
    """Settings of the `ddpg` solver.

    Attributes:
        episodes: Training episodes (one episode = one pass over the layers).
        sigma: Standard deviation of the exploration noise on actions in [0, 1].
        report_gap: Also solve the ILP (in the time left) to report the optimality gap.
        reward: "proxy" (minus the summed Ω) or "measured" (minus the model's calibration
            loss with the assignment's engine-rounded weights; needs the model).
        rounding: Rounding of the weights the measured reward scores ("gptq" or "rtn").
        group_size: Their group size below 8 bits (None: per channel).
    """

    name: ClassVar[str] = "ddpg"
    positive_ints: ClassVar[tuple[str, ...]] = ("episodes",)
    episodes: int = 300
    sigma: float = 0.3
    report_gap: bool = True
    reward: str = "proxy"
    rounding: str = "gptq"
    group_size: int | None = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.sigma, int | float) or not 0 <= self.sigma < math.inf:
            raise InvalidSpecError(f"`sigma` must be a finite number >= 0, got {self.sigma!r}.")
        if not isinstance(self.report_gap, bool):
            raise InvalidSpecError(f"`report_gap` must be true or false, got "
                                   f"{self.report_gap!r}.")
        if self.reward not in REWARDS:
            raise InvalidSpecError(f"`reward` must be one of {REWARDS}, got {self.reward!r}.")
        # `rounding` and `group_size` follow the engine's rules
        BitConfig(bits={}, rounding=self.rounding, group_size=self.group_size)


def _rl_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("stable_baselines3", "gymnasium"))


@register_solver(DdpgConfig, available=_rl_available, extra="rl")
class DdpgSolver(ModelSolver):
    """HAQ-style DDPG agent (stable-baselines3), Ω proxy reward.

    See the module docstring. The model spec is what the measured reward evaluates; the
    proxy reward needs none."""

    config: DdpgConfig

    def __init__(self, config: DdpgConfig | None = None, *, model: Any = None) -> None:
        super().__init__(config, model=model)
        if self.config.reward == "measured" and model is None:
            raise InvalidSpecError("`reward` 'measured' evaluates configs on the model: run it "
                                   "through the pipeline (`allocator solve --model M`).")

    def _measure(self, units: list[Unit]) -> _MeasuredLoss:
        from sensitivity import CandidateWeights

        bits = sorted({c for u in units for c in u.choices})
        cands = CandidateWeights(self.model, bits, [n for u in units for n in u.names],
                                 rounding=self.config.rounding,
                                 group_size=self.config.group_size)
        return _MeasuredLoss(units, cands)

    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        deadline = time.monotonic() + time_limit_s
        try:
            import torch
            from stable_baselines3 import DDPG
            from stable_baselines3.common.callbacks import BaseCallback
            from stable_baselines3.common.noise import NormalActionNoise
        except ImportError as e:
            raise MissingDependencyError(
                "solver 'ddpg' needs the `rl` extra (stable-baselines3, gymnasium).") from e
        fallback = repair(units, rhs, [min(u.choices) for u in units])
        if fallback is None:
            return None, "infeasible", {}
        config = self.config
        torch.manual_seed(seed)
        measure = self._measure(units) if config.reward == "measured" else None
        env = _AllocationEnv(units, rhs, measure)
        steps = config.episodes * len(units)

        class _Deadline(BaseCallback):
            def _on_step(self) -> bool:
                return time.monotonic() < deadline

        # One update per four layer steps, at episode ends: the cost of training is in the
        # gradient steps, not in the environment.
        model = DDPG("MlpPolicy", env, seed=seed, verbose=0, learning_starts=min(steps // 4, 1000),
                     action_noise=NormalActionNoise(np.zeros(1), config.sigma * np.ones(1)),
                     train_freq=(1, "episode"), gradient_steps=max(1, len(units) // 4),
                     batch_size=128, policy_kwargs={"net_arch": [64, 64]}, device="cpu")
        start = time.perf_counter()
        model.learn(total_timesteps=steps, callback=_Deadline())
        out_of_time = time.monotonic() >= deadline  # training was cut short
        # one greedy (noise-free) episode of the trained policy
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, done, _, _ = env.step(action)
        if env.best is None:  # no episode's assignment could be repaired: the lowest one
            objective = sum(u.omega[c] for u, c in zip(units, fallback, strict=True))
            env.best = (objective if measure is None else measure(fallback), fallback)
        extra: dict[str, Any] = {"episodes": config.episodes, "reward": config.reward,
                                 "train_s": time.perf_counter() - start,
                                 "best_objective": env.best[0]}
        if out_of_time:
            extra["time_limit_reached"] = True
        if measure is not None:
            extra["measured_configs"] = len(measure.evaluations)
        elif config.report_gap:
            extra |= _gap_to_ilp(units, rhs, env.best[0], deadline - time.monotonic())
        return env.best[1], "feasible", extra


def _gap_to_ilp(units: list[Unit], rhs: Rhs, objective: float,
                time_limit_s: float) -> dict[str, Any]:
    """The ILP's optimum and the gap to it, when an ILP backend finds it in time."""
    if time_limit_s <= 0 or not available_backends():
        return {}
    picks, status, _ = solve_ilp(units, rhs, [u.omega for u in units], time_limit_s=time_limit_s)
    if picks is None:
        return {}
    best = sum(u.omega[c] for u, c in zip(units, picks, strict=True))
    return {"ilp_objective": best, "gap_to_ilp": (objective - best) / best if best > 0 else 0.0}
