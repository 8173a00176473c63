"""The plan-first runner: gather the chosen notebooks' plans, order their runs, train the missing ones.

The order gives the most of the post first when time runs short: seed 0 of every headline
group (notebooks in the suite's order), then every other group's first spec, then the
further seeds. A spec that two notebooks share (same key) is trained once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .suite import ORDER, apply_profile, profile_notebooks
from .plans import Plan, plan_for

__all__ = ["PlannedRun", "gather", "ordered_runs"]


@dataclass(frozen=True)
class PlannedRun:
    """One run of the suite: its spec, the notebook and group that declared it first, its tier."""

    spec: object
    notebook: str
    group: str
    tier: int        # 0: seed 0 of a headline group, 1: first spec of another group, 2: further seeds

    @property
    def label(self) -> str:
        return f"{self.notebook}: {self.group} (seed {self.spec.seed})"


def gather(profile: str, names: Sequence[str] = ()) -> list[Plan]:
    """The plans of ``names`` (default: every notebook the profile runs), in the suite's order."""
    chosen = [n for n in profile_notebooks(profile) if not names or n in names]
    return [plan_for(n, apply_profile(n, profile)) for n in chosen]


def ordered_runs(plans: Sequence[Plan], bind: Callable = lambda s: s) -> list[PlannedRun]:
    """Every run of ``plans`` once (by bound spec), in tier order, stable within a tier."""
    runs: dict[object, PlannedRun] = {}
    for plan in plans:
        for group, specs in plan.groups.items():
            for i, spec in enumerate(specs):
                tier = 2 if i else (0 if group in plan.headline else 1)
                bound = bind(spec)
                if bound not in runs or tier < runs[bound].tier:
                    runs[bound] = PlannedRun(bound, plan.notebook, group, tier)
    return sorted(runs.values(), key=lambda r: r.tier)
