"""Each experiment's runs, declared once: one plan function per notebook, of its parameters.

A :class:`Plan` is named groups of run specs (``{"1cycle, max LR 0.8, 95 epochs": [seed 0,
seed 1, ...]}``), each group ranked: ``"headline"`` (one of the post's own numbers),
``"next"`` (what the post builds on right after them: 06's weight-decay sweep) or ``"rest"``.
A plan also says what it knows about its groups: the post's number for a group
(:attr:`Plan.post`), the settings it sweeps (:attr:`Plan.sweeps`: ``{"weight decay": {1e-4:
"wd 0.0001", ...}}``) and the comparisons the post makes (:attr:`Plan.comparisons`), all by
group name. The notebook calls its plan function through :meth:`clrlib.lab.suite.Experiment.plan`,
gets its runs by group name with :meth:`~clrlib.lab.suite.Experiment.get`, and then only reads,
records and draws; the runner (:mod:`clrlib.lab.runner`) gathers the plans of the chosen
notebooks, removes duplicates by spec key and trains what is missing, headline runs first.

**Stages.** Notebook 07's recipe chooses its weight decay and max LR from range tests, so its
training runs cannot be written down before those tests exist. Its plan declares what is
known up front (the range tests, one per depth and weight decay, and the hand-picked runs)
and leaves the recipe to a second stage: :attr:`Plan.then` is a function of a lab (anything
with ``lr_find_many``, e.g. a :class:`~clrlib.lab.runs.Lab` or the notebook's
``Experiment``) that reads the range tests and returns the second stage's :class:`Plan`, and
:attr:`Plan.pending` lists the runs that stage will add as far as they are known before
(group, depth, epochs, seed), for listings and projections. A runner trains the first stage,
then calls ``plan.then(lab)`` and trains what it returns.

Specs are returned as declared, with the profile's precision (``"auto"`` where the profile
leaves it so, which :meth:`~clrlib.lab.runs.Lab.bind` resolves on its device before the key is
taken); the full and quick profiles pin it, so their keys do not depend on the machine.

Example:
    >>> from clrlib.lab.suite import apply_profile
    >>> plan = plan_for("04_super_convergence", apply_profile("04_super_convergence", "quick"))
    >>> plan.headline
    ['max LR 3, 8 epochs', 'max LR 3, 12 epochs', 'max LR 0.8, 50% annihilation, 12 epochs']
    >>> [(c.a, c.b) for c in plan.comparisons][0], plan.post["max LR 3, 8 epochs"]
    (('max LR 3, 12 epochs', 'max LR 3, 8 epochs'), 92.31)
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import recipe
from .specs import DataSpec, FinderSpec, ModelSpec, ScheduleSpec, TrainSpec

__all__ = ["Plan", "Comparison", "Pending", "RANKS", "PLANS", "common_settings", "plan_for", "clr_policies",
           "momentum_variants", "plan_lr_finder", "plan_cyclical_lr", "plan_1cycle", "plan_super_convergence",
           "plan_momentum", "plan_weight_decay", "plan_auto_recipe", "plan_same_budget"]

Spec = TrainSpec | FinderSpec
_RUN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainSpec) if f.default is not dataclasses.MISSING}
#: How soon a group's first run is wanted: the post's numbers, what comes right after them, the rest.
RANKS = ("headline", "next", "rest")


@dataclass(frozen=True)
class Comparison:
    """A comparison the post makes: group ``a`` against group ``b`` (mean of a minus mean of b).

    ``labels``: how the comparison's row names the two sides (default: the group names);
    ``post_difference``: the post's own difference, where it gives one.
    """

    a: str
    b: str
    labels: tuple[str, str] | None = None
    post_difference: float | None = None


@dataclass(frozen=True)
class Pending:
    """A run a later stage of a plan will add, as far as it is known before that stage."""

    group: str
    depth: int
    epochs: int
    seed: int
    n_train: int


@dataclass
class Plan:
    """The runs of one notebook: named groups of specs (one per seed), in the notebook's order.

    Attributes:
        notebook: the notebook's name.
        groups: ``{name: [spec, ...]}``; a group's specs differ by seed (or are one spec).
        ranks: ``{name: rank}``, one of :data:`RANKS` per group.
        post: ``{name: value}``: the post's number for a group (its final accuracy, a range
            test's stop LR), where it gives one.
        sweeps: ``{setting: {value: group name}}``: a setting the plan varies over groups.
        comparisons: the comparisons the post makes, by group name.
        then: for a plan with a second stage, the function of a lab that reads this stage's
            runs and returns the next stage's :class:`Plan` (see the module's docstring).
        pending: the runs ``then`` will add, as far as they are known before.
        readings: what a stage read to make its choices (07's second stage: the recipe's
            :class:`clrlib.recipe.Plan` per depth).
    """

    notebook: str
    groups: dict[str, list[Spec]] = field(default_factory=dict)
    ranks: dict[str, str] = field(default_factory=dict)
    post: dict[str, float] = field(default_factory=dict)
    sweeps: dict[str, dict[Any, str]] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    then: Callable[[Any], "Plan"] | None = None
    pending: list[Pending] = field(default_factory=list)
    readings: dict[Any, Any] = field(default_factory=dict)

    def add(self, name: str, specs: list[Spec] | Spec, rank: str = "rest", post: float | None = None) -> list[Spec]:
        """Add the group ``name`` (an error if it exists) with its rank and the post's number."""
        if name in self.groups:
            raise ValueError(f"plan {self.notebook}: group {name!r} declared twice")
        if rank not in RANKS:
            raise ValueError(f"plan {self.notebook}: rank must be one of {RANKS}, got {rank!r}")
        self.groups[name] = [specs] if isinstance(specs, (TrainSpec, FinderSpec)) else list(specs)
        self.ranks[name] = rank
        if post is not None:
            self.post[name] = post
        return self.groups[name]

    def compare(self, a: str, b: str, labels: tuple[str, str] | None = None,
                post_difference: float | None = None) -> None:
        """Declare that the post compares group ``a`` with group ``b``."""
        missing = [g for g in (a, b) if g not in self.groups]
        if missing:
            raise ValueError(f"plan {self.notebook}: comparison names unknown group(s) {missing}")
        self.comparisons.append(Comparison(a, b, labels, post_difference))

    @property
    def headline(self) -> list[str]:
        """The names of the groups that give the post's own numbers."""
        return [name for name, rank in self.ranks.items() if rank == "headline"]

    def specs(self) -> list[Spec]:
        """Every spec of the plan, group after group."""
        return [s for group in self.groups.values() for s in group]


def common_settings(p: dict[str, Any], precision: str | None = None) -> dict[str, Any]:
    """The settings every run of a notebook shares, from its parameters: model, data, batch
    size, weight decay, drop-last rule and precision (``precision`` overrides ``p["precision"]``).
    A parameter a notebook lacks takes the specs' default (the post's setting)."""
    model, data = ModelSpec(), DataSpec()
    return dict(model=ModelSpec(p.get("depth", model.depth), p.get("shortcut", model.shortcut),
                                p.get("init", model.init)),
                data=DataSpec(p.get("dataset", data.dataset), p.get("train_subset"), p.get("test_subset"),
                              p.get("synthetic_train", data.synthetic_train),
                              p.get("synthetic_test", data.synthetic_test)),
                **{name: p.get(name, _RUN_DEFAULTS[name]) for name in ("batch_size", "weight_decay", "drop_last")},
                precision=precision or p.get("precision", _RUN_DEFAULTS["precision"]))


def _train(p: dict, schedule: ScheduleSpec, epochs: int, seed: int, model: dict | None = None,
           **overrides) -> TrainSpec:
    spec = TrainSpec(schedule, epochs, seed=seed, **{**common_settings(p), **overrides})
    return spec.replace(model=model) if model else spec


def _finder(p: dict, seed: int, model: dict | None = None, **settings) -> FinderSpec:
    settings.setdefault("best_after", p.get("best_after", 0))  # fastai 0.7's late stop rule: 11
    spec = FinderSpec(seed=seed, **{**common_settings(p), **settings})
    return spec.replace(model=model) if model else spec


def _one_cycle(max_lr, div, final_div, annihilate, moms) -> ScheduleSpec:
    return ScheduleSpec.make("one_cycle", max_lr=max_lr, div=div, final_div=final_div, annihilate=annihilate,
                             moms=moms)


# --- 01 to 06: every run known from the parameters -------------------------------------------------

def plan_lr_finder(p: dict[str, Any]) -> Plan:
    """01: the range test at each initialisation of ``inits`` (the first, the post's, is headline)."""
    plan = Plan("01_lr_finder")
    finder = dict(start_lr=p["start_lr"], end_lr=p["end_lr"], num_it=p["num_it"], beta=p["beta"],
                  stop_factor=p["stop_factor"], accuracy=True)
    sweep = plan.sweeps["init"] = {}
    for k, init in enumerate(p["inits"]):
        sweep[init] = name = f"range test, {init} init"
        plan.add(name, [_finder(p, s, model={"init": init}, **finder) for s in p["seeds"]],
                 rank="rest" if k else "headline", post=None if k else p["post_stop_lr"])
    return plan


def clr_policies(p: dict[str, Any]) -> dict[str, ScheduleSpec]:
    """02's policies: the fixed LR and Smith's three cyclical ones, by name."""
    policies = {"fixed": ScheduleSpec.make("constant", lr=p["fixed_lr"])}
    for mode in ("triangular", "triangular2", "exp_range"):
        policies[mode] = ScheduleSpec.make("cyclic", base_lr=p["base_lr"], max_lr=p["max_lr"],
                                           step_epochs=p["step_epochs"], mode=mode, gamma=p["gamma"])
    return policies


def plan_cyclical_lr(p: dict[str, Any]) -> Plan:
    """02: the fixed LR against two cyclical policies with the same budget, each against fixed."""
    plan = Plan("02_cyclical_lr")
    policies = clr_policies(p)
    for name in ("fixed", "triangular2", "exp_range"):
        plan.add(name, [_train(p, policies[name], p["epochs"], s) for s in p["seeds"]])
    for name in ("triangular2", "exp_range"):
        plan.compare(name, "fixed", labels=(f"CLR {name}, {p['epochs']} epochs", "fixed LR"))
    return plan


def plan_1cycle(p: dict[str, Any]) -> Plan:
    """03: the post's main 1cycle run (headline), its fp32 control and runs from other inits."""
    plan = Plan("03_one_cycle")
    cycle = _one_cycle(p["max_lr"], p["div"], p["final_div"], p["annihilate"], p["moms"])
    main = f"1cycle, max LR {p['max_lr']:g}, {p['epochs']} epochs"
    plan.add(main, [_train(p, cycle, p["epochs"], s) for s in p["seeds"]], rank="headline",
             post=p["post_accuracy"])
    first = p["seeds"][0]
    controls = {"fp32 control": _train(p, cycle, p["epochs"], first, precision="fp32")} if p["fp32_control"] else {}
    controls.update({f"{i} init control": _train(p, cycle, p["epochs"], first, model={"init": i})
                     for i in p["init_controls"]})
    for name, spec in controls.items():
        plan.add(name, spec, post=p["post_accuracy"])
        plan.compare(name, main)
    return plan


def plan_super_convergence(p: dict[str, Any]) -> Plan:
    """04: 1cycle at max LR 3 for each budget and the short cycle (headline), and the full 1cycle
    the short one is compared with (03's main run at the same length)."""
    plan = Plan("04_super_convergence")
    sc = _one_cycle(p["sc_max_lr"], p["sc_div"], p["final_div"], p["sc_annihilate"], p["moms"])
    budgets = plan.sweeps["epochs at max LR 3"] = {}
    for e, post in zip(p["sc_epochs"], p["sc_post"]):
        budgets[e] = name = f"max LR {p['sc_max_lr']:g}, {e} epochs"
        plan.add(name, [_train(p, sc, e, s) for s in p["seeds"]], rank="headline", post=post)
    e = p["short_epochs"]
    short = _one_cycle(p["short_max_lr"], p["short_div"], p["final_div"], p["short_annihilate"], p["moms"])
    full = _one_cycle(p["short_max_lr"], p["short_div"], p["final_div"], p["full_annihilate"], p["moms"])
    short_name = f"max LR {p['short_max_lr']:g}, {100 * p['short_annihilate']:g}% annihilation, {e} epochs"
    full_name = f"max LR {p['short_max_lr']:g}, full 1cycle, {e} epochs"
    plan.add(short_name, [_train(p, short, e, s) for s in p["seeds"]], rank="headline", post=p["short_post"])
    plan.add(full_name, [_train(p, full, e, s) for s in p["seeds"]], post=p["full_post"])
    first = budgets[p["sc_epochs"][0]]
    for longer in list(budgets.values())[1:]:
        plan.compare(longer, first, post_difference=plan.post[longer] - plan.post[first])
    plan.compare(short_name, full_name, post_difference=p["short_post"] - p["full_post"])
    return plan


def momentum_variants(cyclical, constants) -> dict[str, tuple[float, float]]:
    """05's momentum settings: ``{"cyclical": (hi, lo), "constant 0.9": (0.9, 0.9), ...}``."""
    variants = {"cyclical": (float(cyclical[0]), float(cyclical[1]))}
    variants.update({f"constant {m:g}": (float(m), float(m)) for m in constants})
    return variants


def plan_momentum(p: dict[str, Any]) -> Plan:
    """05: each setting's 1cycle with cyclical momentum against constant momenta; the constant
    0.9 runs are headline (the post's numbers), the cyclical ones are 03's and 04's."""
    plan = Plan("05_momentum")
    variants = momentum_variants(p["cyclical_moms"], p["constant_moms"])
    for max_lr, div, annihilate, epochs, post_cyclical, post_constant in p["settings"]:
        setting = plan.sweeps[f"max LR {max_lr:g}, {epochs} epochs"] = {}
        posts = {"cyclical": post_cyclical, "constant 0.9": post_constant}
        for label, moms in variants.items():
            setting[label] = name = f"1cycle max LR {max_lr:g}, {epochs} epochs, momentum {label}"
            cycle = _one_cycle(max_lr, div, p["final_div"], annihilate, moms)
            plan.add(name, [_train(p, cycle, epochs, s) for s in p["seeds"]],
                     rank="headline" if label == "constant 0.9" else "rest", post=posts.get(label))
        if "constant 0.9" in setting:
            plan.compare(setting["cyclical"], setting["constant 0.9"],
                         labels=(f"max LR {max_lr:g}, {epochs} epochs: cyclical momentum", "constant 0.9"),
                         post_difference=post_cyclical - post_constant)
    return plan


def plan_weight_decay(p: dict[str, Any]) -> Plan:
    """06: range tests over weight decay (ranked right after the headline runs) and over batch
    size (at the notebook's weight decay), first seed only."""
    plan = Plan("06_weight_decay")
    finder = dict(start_lr=p["start_lr"], end_lr=p["end_lr"], num_it=p["num_it"])
    first = p["seeds"][0]
    sweeps = {"weight decay": {wd: (f"wd {wd:g}", dict(weight_decay=wd)) for wd in p["wds"]},
              "batch size": {bs: (f"batch {bs}", dict(batch_size=bs)) for bs in p["batch_sizes"]}}
    for sweep, values in sweeps.items():
        plan.sweeps[sweep] = {value: name for value, (name, _) in values.items()}
        for name, change in values.values():
            plan.add(name, _finder(p, first, **finder, **change), rank="next" if sweep == "weight decay" else "rest")
    return plan


# --- 07: a second stage that the range tests decide ------------------------------------------------

def _recipe_base(p: dict, depth: int) -> TrainSpec:
    """The settings the recipe plans 07's run with at ``depth`` (its schedule is replaced)."""
    return _train(p, ScheduleSpec.make("constant", lr=0.1), p["epochs"], p["seeds"][0], model={"depth": depth})


def _recipe_seeds(p: dict, depth: int) -> list[int]:
    """All seeds at the notebook's depth, the first at the other depths."""
    return p["seeds"] if depth == p["depth"] else p["seeds"][:1]


def _hand_picked(p: dict, depth: int) -> str:
    """The name of 07's group of hand-picked runs at ``depth``."""
    return f"ResNet-{depth}, hand-picked: wd {p['hand'][3]:g}, max LR {p['hand'][0]:g}"


def plan_auto_recipe(p: dict[str, Any]) -> Plan:
    """07, first stage: one range test per depth and weight decay (06's sweep at the main depth,
    shared through the store) and the hand-picked 1cycle at the same budget; :attr:`Plan.then`
    adds the recipe's runs once the range tests are in (:func:`recipe_stage`)."""
    plan = Plan("07_auto_recipe")
    finder = dict(start_lr=p["start_lr"], end_lr=p["end_lr"], num_it=p["num_it"])
    n_train = common_settings(p)["data"].n_train
    hand_max_lr, hand_div, hand_annihilate, hand_wd = p["hand"]
    hand = ScheduleSpec.make("one_cycle", max_lr=hand_max_lr, div=hand_div, annihilate=hand_annihilate,
                             final_div=100.0, moms=(0.95, 0.85))  # the recipe's momenta (its default)
    for d in [p["depth"], *p["other_depths"]]:
        tests = plan.sweeps[f"ResNet-{d} range tests"] = {}
        for wd in p["weight_decays"]:  # the recipe's range tests: the run's settings, one weight decay each
            tests[wd] = name = f"ResNet-{d}, range test, wd {wd:g}"
            plan.add(name, _finder(p, p["seeds"][0], model={"depth": d}, weight_decay=wd, **finder))
        plan.add(_hand_picked(p, d), [_train(p, hand, p["epochs"], s, weight_decay=hand_wd, model={"depth": d})
                  for s in _recipe_seeds(p, d)])
        plan.pending += [Pending(f"ResNet-{d}, recipe", d, p["epochs"], s, n_train)
                         for s in _recipe_seeds(p, d)]
    plan.then = functools.partial(recipe_stage, p)
    return plan


def recipe_stage(p: dict[str, Any], lab) -> Plan:
    """07, second stage: the recipe's choice per depth (:func:`clrlib.recipe.plan_one_cycle`, which
    reads the first stage's range tests through ``lab``) and its runs, each against the
    hand-picked run. ``readings``: ``{depth: recipe.Plan}``."""
    stage = Plan("07_auto_recipe")
    rules = dict(weight_decays=p["weight_decays"], within=p["within"], divisor=p["divisor"], div=p["div"],
                 annihilate=p["annihilate"], finder=dict(start_lr=p["start_lr"], end_lr=p["end_lr"],
                                                          num_it=p["num_it"], best_after=p.get("best_after", 0)))
    by_depth = stage.sweeps["recipe"] = {}
    for d in [p["depth"], *p["other_depths"]]:
        chosen = stage.readings[d] = recipe.plan_one_cycle(lab, _recipe_base(p, d), **rules)
        by_depth[d] = name = f"ResNet-{d}, recipe"
        stage.add(name, [chosen.spec.replace(seed=s) for s in _recipe_seeds(p, d)])
        hand = _hand_picked(p, d)  # a group of the first stage
        stage.comparisons.append(Comparison(name, hand, labels=(
            f"ResNet-{d}, recipe: wd {chosen.weight_decay:g}, max LR {chosen.max_lr:.3g}", hand)))
    return stage


# --- 08 ---------------------------------------------------------------------------------------------

def plan_same_budget(p: dict[str, Any]) -> Plan:
    """08: the range test, 1cycle, super-convergence and He et al.'s step schedule, one budget. Not the
    post's own numbers, so none is headline: on a GPU window they come after the post's."""
    plan = Plan("08_same_budget")
    finder = dict(start_lr=p["start_lr"], end_lr=p["end_lr"], num_it=p["num_it"])
    plan.add("range test", [_finder(p, s, **finder) for s in p["seeds"]])
    cycle = _one_cycle(p["max_lr"], p["div"], p["final_div"], p["annihilate"], p["moms"])
    plan.add(f"1cycle, max LR {p['max_lr']:g}", [_train(p, cycle, p["epochs"], s) for s in p["seeds"]])
    step = ScheduleSpec.make("multistep", lr=p["step_lr"], milestones=p["step_milestones"],
                             factor=p["step_factor"])
    plan.add("step schedule (He et al.)", [_train(p, step, p["epochs"], s, batch_size=p["step_batch_size"],
                                                  momentum=p["step_momentum"]) for s in p["seeds"]])
    sc = _one_cycle(p["sc_max_lr"], p["sc_div"], p["final_div"], p["sc_annihilate"], p["moms"])
    plan.add(f"super-convergence, max LR {p['sc_max_lr']:g}", [_train(p, sc, p["epochs"], s) for s in p["seeds"]])
    return plan


#: The plan function of each notebook.
PLANS: dict[str, Callable[[dict[str, Any]], Plan]] = {
    "01_lr_finder": plan_lr_finder,
    "02_cyclical_lr": plan_cyclical_lr,
    "03_one_cycle": plan_1cycle,
    "04_super_convergence": plan_super_convergence,
    "05_momentum": plan_momentum,
    "06_weight_decay": plan_weight_decay,
    "07_auto_recipe": plan_auto_recipe,
    "08_same_budget": plan_same_budget,
}


def plan_for(notebook: str, params: dict[str, Any]) -> Plan:
    """The plan of ``notebook`` under ``params`` (its parameters, a profile applied)."""
    try:
        make = PLANS[notebook]
    except KeyError:
        raise ValueError(f"no plan for notebook {notebook!r}; plans exist for {sorted(PLANS)}") from None
    return make(params)
