"""Each experiment's runs, declared once: a function of the notebook's parameters per notebook.

A plan is named groups of run specs (``{"1cycle, max LR 0.8": [seed 0, seed 1, ...]}``), some
marked as headline runs (the post's own numbers). The notebook calls its plan function with
its parameters and gets its runs by group name; the runner gathers the plans of the chosen
notebooks, removes duplicates by spec key and trains what is missing, headline runs first.

Example:
    >>> from clrlib.lab.suite import apply_profile
    >>> plan = PLANS["08_same_budget"](apply_profile("08_same_budget", "cpu"))
    >>> list(plan.groups)[:2], plan.groups["step schedule (He et al.)"][0].batch_size
    (['range test', '1cycle, max LR 0.8'], 128)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .specs import DataSpec, FinderSpec, ModelSpec, ScheduleSpec, TrainSpec

__all__ = ["Plan", "PLANS", "common_settings", "plan_for"]

Spec = TrainSpec | FinderSpec


@dataclass
class Plan:
    """The runs of one notebook: named groups of specs (one per seed), in the notebook's order.

    Attributes:
        notebook: the notebook's name.
        groups: ``{name: [spec, ...]}``; a group's specs differ by seed (or are one spec).
        headline: the names of the groups whose first spec gives one of the post's numbers.
    """

    notebook: str
    groups: dict[str, list[Spec]] = field(default_factory=dict)
    headline: list[str] = field(default_factory=list)

    def add(self, name: str, specs: list[Spec] | Spec, headline: bool = False) -> list[Spec]:
        """Add the group ``name`` (an error if it exists); returns its specs."""
        if name in self.groups:
            raise ValueError(f"plan {self.notebook}: group {name!r} declared twice")
        self.groups[name] = [specs] if isinstance(specs, (TrainSpec, FinderSpec)) else list(specs)
        if headline:
            self.headline.append(name)
        return self.groups[name]

    def specs(self) -> list[Spec]:
        """Every spec of the plan, group after group."""
        return [s for group in self.groups.values() for s in group]


def common_settings(p: dict[str, Any], precision: str | None = None) -> dict[str, Any]:
    """The settings every run of a notebook shares, from its parameters: model, data, batch
    size, weight decay, drop-last rule and precision (``precision`` overrides ``p["precision"]``)."""
    model = ModelSpec(p.get("depth", 56), p.get("shortcut", "B"), p.get("init", "post"))
    data = DataSpec(p.get("dataset", "cifar10"), p.get("train_subset"), p.get("test_subset"),
                    p.get("synthetic_train", 512), p.get("synthetic_test", 256))
    return dict(model=model, data=data, batch_size=p.get("batch_size", 512),
                weight_decay=p.get("weight_decay", 1e-4), drop_last=p.get("drop_last", False),
                precision=precision or p.get("precision", "auto"))


def _train(p: dict, schedule: ScheduleSpec, epochs: int, seed: int, **overrides) -> TrainSpec:
    return TrainSpec(schedule, epochs, seed=seed, **{**common_settings(p), **overrides})


def plan_same_budget(p: dict[str, Any]) -> Plan:
    """08: the range test, 1cycle, super-convergence and He et al.'s step schedule, one budget."""
    plan = Plan("08_same_budget")
    finder = dict(start_lr=p["start_lr"], end_lr=p["end_lr"], num_it=p["num_it"])
    plan.add("range test", [FinderSpec(seed=s, **finder, **common_settings(p)) for s in p["seeds"]])
    cycle = ScheduleSpec.make("one_cycle", max_lr=p["max_lr"], div=p["div"], final_div=p["final_div"],
                              annihilate=p["annihilate"], moms=p["moms"])
    plan.add(f"1cycle, max LR {p['max_lr']:g}", [_train(p, cycle, p["epochs"], s) for s in p["seeds"]],
             headline=True)
    step = ScheduleSpec.make("multistep", lr=p["step_lr"], milestones=p["step_milestones"],
                             factor=p["step_factor"])
    plan.add("step schedule (He et al.)", [_train(p, step, p["epochs"], s, batch_size=p["step_batch_size"],
                                                  momentum=p["step_momentum"]) for s in p["seeds"]],
             headline=True)
    sc = ScheduleSpec.make("one_cycle", max_lr=p["sc_max_lr"], div=p["sc_div"], final_div=p["final_div"],
                           annihilate=p["sc_annihilate"], moms=p["moms"])
    plan.add(f"super-convergence, max LR {p['sc_max_lr']:g}", [_train(p, sc, p["epochs"], s) for s in p["seeds"]],
             headline=True)
    return plan


#: The plan function of each notebook.
PLANS: dict[str, Callable[[dict[str, Any]], Plan]] = {
    "08_same_budget": plan_same_budget,
}


def plan_for(notebook: str, params: dict[str, Any]) -> Plan:
    """The plan of ``notebook`` under ``params`` (its parameters, a profile applied)."""
    try:
        return PLANS[notebook](params)
    except KeyError:
        raise ValueError(f"no plan for notebook {notebook!r}; plans exist for {sorted(PLANS)}") from None
