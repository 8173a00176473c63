"""Findings computed from the runs: the words a caption or closing cell states match the numbers.

The last tests read the stored quick-profile runs in results/ and the captions rendered from them:
a caption whose stated direction contradicts its runs fails there.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from clrlib.lab import findings, suite
from clrlib.lab.analysis import epoch_table
from clrlib.lab.plans import plan_for
from clrlib.finder import FinderResult
from clrlib.lab.specs import TrainSpec
from clrlib.lab.store import RunStore
from clrlib.schedules import one_cycle
from test_analysis import history

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "results" / "quick"


def cycle_history(gaps, annihilate=0.5, steps_per_epoch=2):
    """A 1cycle run of len(gaps) epochs whose validation-training gap per epoch is ``gaps``."""
    epochs = len(gaps)
    schedule = partial(one_cycle, total_steps=epochs * steps_per_epoch, max_lr=0.8, annihilate=annihilate)
    train = [1.0] * epochs
    return history(test_acc=[0.5] * epochs, train_loss=train, test_loss=[t + g for t, g in zip(train, gaps)],
                   steps_per_epoch=steps_per_epoch, schedule=schedule)


@pytest.mark.parametrize("before, after, word, gap_word", [(0.1, 0.3, "rises", "opens"), (0.3, 0.1, "falls", "closes"),
                                                           (0.1, 0.12, "stays flat", "stays flat")])
def test_change_words(before, after, word, gap_word):
    c = findings.change(before, after, tolerance=0.05)
    assert (c.direction, c.gap_word) == (word, gap_word)


@pytest.mark.parametrize("bad", [math.nan, math.inf, True])
def test_change_refuses_a_value_that_is_not_a_finite_number(bad):
    with pytest.raises(ValueError, match="before must be a finite number"):
        findings.change(bad, 1.0, 0.1)
    with pytest.raises(ValueError, match="tolerance must be >= 0, got -0.1"):
        findings.change(1.0, 1.0, -0.1)


def test_trend_names_the_direction_and_every_value():
    falls = findings.trend("the stop LR", {1e-2: 3.0, 1e-4: 9.0, 1e-3: 5.0}, "weight decay")
    assert falls.direction == "falls"
    assert falls.text == "the stop LR falls as weight decay grows (0.0001: 9, 0.001: 5, 0.01: 3)"
    assert findings.trend("x", {1: 1.0, 2: 2.0}, "y").direction == "rises"
    mixed = findings.trend("the stop LR", {1e-5: 17.4, 1e-4: 19.1, 1e-3: 15.8}, "weight decay")
    assert mixed.direction == "no single direction" and "does not move one way" in mixed.text
    with pytest.raises(ValueError, match="two or more"):
        findings.trend("x", {1: 1.0}, "y")
    with pytest.raises(ValueError, match="the stop LR at weight decay 0.01 must be a finite number, got None"):
        findings.trend("the stop LR", {1e-3: 5.0, 1e-2: None}, "weight decay")


def test_annihilation_start_is_where_the_lr_stays_below_its_start():
    h = cycle_history([0.0] * 10, annihilate=0.3)
    assert findings.annihilation_start(h) == pytest.approx(0.7, abs=0.051)
    assert findings.annihilation_start(history()) == 1.0  # a constant LR never annihilates


def test_gap_in_annihilation_says_what_each_run_does():
    opening = cycle_history([0.0] * 5 + [0.05, 0.1, 0.2, 0.3, 0.4])
    flat = cycle_history([0.02] * 10)
    f = findings.gap_in_annihilation({"short": opening, "full": flat})
    assert f.numbers["short"]["word"] == "opens" and f.numbers["full"]["word"] == "stays flat"
    assert f.direction == "mixed"
    assert ("short: 0.000 after epoch 5 (the annihilation starts at 50% of training) -> 0.400 after epoch 10 "
            "(opens)") in f.text
    assert "full: 0.020 after epoch 5 (the annihilation starts at 50% of training) -> 0.020 after epoch 10 (stays flat)" in f.text
    assert findings.gap_in_annihilation({"full": flat}).direction == "stays flat"


def test_gap_through_cycle_reports_the_peak_and_the_annihilation():
    f = findings.gap_through_cycle(cycle_history([0.1, 0.2, 0.3, 0.25, 0.2, 0.1, 0.05, 0.02, 0.01, 0.01]))
    assert f.direction == "closes"
    assert f.numbers["peak_in_cycle"] == pytest.approx(0.3)
    assert "between 0.200 and 0.300 during the cycle (past its first 20%), 0.200 at its end (after epoch 5;" in f.text
    assert "the gap closes" in f.text


def test_closing_lines_put_each_number_beside_the_post_and_flag_an_opposite_direction():
    summary = pd.DataFrame([dict(experiment="1cycle", metric="final test accuracy (%)", value=67.66, std=1.75,
                                 ci95=4.3, n_seeds=3, post_value=93.53),
                            dict(experiment="1cycle", metric="gap", value=0.1, std=math.nan, ci95=math.nan,
                                 n_seeds=1, post_value=math.nan)], columns=suite.SUMMARY_COLUMNS)
    comparisons = pd.DataFrame([dict(comparison="cyclical vs constant", metric="acc", difference=-0.5, ci95=0.9,
                                     n_a=3, n_b=3, test="t", verdict="within noise", post_difference=0.4)],
                               columns=suite.COMPARISON_COLUMNS)
    lines = findings.closing_lines(summary, comparisons)
    assert lines[0] == ("- 1cycle, final test accuracy (%): **67.66 +- 1.75** (3 seed(s)) against the post's "
                        "93.53: 25.87 below it")
    assert len(lines) == 2  # the row without a post value is not a claim against the post
    assert "ours -0.50 +- 0.90 (within noise); the post's +0.40: **the opposite direction**" in lines[1]


def test_the_gallery_shows_each_notebooks_findings(tmp_path):
    folder = tmp_path / "03_one_cycle"
    folder.mkdir()
    (folder / "figures.json").write_text(json.dumps([{"name": "seeds", "caption": "accuracy per epoch"}]))
    (folder / "findings.md").write_text("### What this run found (profile smoke)\n\n- The post: x. Here: y.\n")
    suite.write_summary(tmp_path)
    gallery = (tmp_path / "README.md").read_text()
    assert "#### What this run found (profile smoke)" in gallery and "- The post: x. Here: y." in gallery


# --- captions in the notebooks: no finding written as a literal -------------------------------------

CLAIM_WORDS = re.compile(r"\b(opens?|closes?|tracks?|drifts?|overfit\w*|earlier|later|larger|smaller|"
                         r"better|worse|higher|lower|faster|slower|stays?|beats?)\b", re.IGNORECASE)


def _caption_literals(source: str):
    """The literal text of every caption passed to ``save_figure`` in a cell's source."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "save_figure" and len(node.args) > 2:
            for part in ast.walk(node.args[2]):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield part.value


@pytest.mark.parametrize("notebook", suite.NOTEBOOKS)
def test_no_caption_states_a_finding_as_literal_text(notebook):
    """A caption may say what a figure shows; what the data does (opens, earlier, better...) must
    come from the numbers (clrlib.lab.findings), not from words written before the runs."""
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    literals = [text for source in code if "save_figure" in source
                for text in _caption_literals(source.replace("%matplotlib inline", ""))]
    assert literals, f"{notebook}: no caption found"
    claims = [(text, m.group(0)) for text in literals if (m := CLAIM_WORDS.search(text))]
    assert not claims, f"{notebook}: captions state findings as fixed words: {claims}"


# --- the stored quick runs against the captions rendered from them ----------------------------------

def _stored(notebook: str) -> tuple[dict, dict]:
    """The quick profile's plan for ``notebook`` with its runs from results/quick/runs, and its figures."""
    params_path = QUICK / notebook / "params.json"
    if not params_path.exists():
        pytest.skip(f"no quick results for {notebook}")
    info = json.loads(params_path.read_text())
    plan = plan_for(notebook, {**info["parameters"], "precision": info["parameters"].get("precision", "fp32")})
    store = RunStore(QUICK / "runs")
    runs = {}
    for name, specs in plan.groups.items():
        bound = [dataclasses.replace(s, data=dataclasses.replace(s.data, fingerprint=info["data_fingerprint"]))
                 for s in specs]
        stored = [store.get(s) for s in bound]
        assert all(stored), f"{notebook}: {name} is not in results/quick/runs"
        runs[name] = [r.frame if isinstance(r.spec, TrainSpec) else FinderResult.from_frame(
            r.frame, stop_lr=r.meta.get("stop_lr"), settings=r.meta.get("finder_settings", {})) for r in stored]
    figures = {f["name"]: f["caption"] for f in json.loads((QUICK / notebook / "figures.json").read_text())}
    return {"plan": plan, "runs": runs}, figures


def _gap_direction(frame: pd.DataFrame, annihilate: float) -> str:
    """Independently of clrlib.lab.findings: the gap at the last epoch end before the annihilation
    (from the schedule's own fraction) against the last epoch's."""
    epochs = epoch_table(frame)
    gap = (epochs["test_loss"] - epochs["train_loss"]).to_numpy()
    start = int(math.floor((1 - annihilate) * len(gap) + 1e-9)) - 1
    delta = gap[-1] - gap[max(start, 0)]
    return "stays flat" if abs(delta) <= findings.GAP_TOLERANCE else ("opens" if delta > 0 else "closes")


def test_stored_overfitting_gap_caption_matches_its_runs():
    stored, figures = _stored("04_super_convergence")
    caption = figures["overfitting_gap"]
    for name, frames in stored["runs"].items():
        annihilate = stored["plan"].groups[name][0].schedule.kwargs["annihilate"]
        said = re.search(re.escape(name) + r": [-\d.]+ after epoch \d+ \(the annihilation starts at \d+% of training\) "
                         r"-> [-\d.]+ after epoch \d+ \(([a-z ]+)\)", caption)
        assert said, f"the caption does not say what {name}'s gap does: {caption}"
        assert said.group(1) == _gap_direction(frames[0], annihilate), (name, caption)


def test_stored_full_cycle_caption_matches_its_run():
    stored, figures = _stored("03_one_cycle")
    main = stored["plan"].headline[0]
    annihilate = stored["plan"].groups[main][0].schedule.kwargs["annihilate"]
    said = re.search(r"in the annihilation the gap ([a-z ]+)$", figures["losses_full_cycle"])
    assert said and said.group(1) == _gap_direction(stored["runs"][main][0], annihilate), figures["losses_full_cycle"]


def test_stored_weight_decay_caption_matches_its_range_tests():
    stored, figures = _stored("06_weight_decay")
    by_wd = {wd: stored["runs"][name][0] for wd, name in stored["plan"].sweeps["weight decay"].items()}
    stops = [by_wd[wd].blowup_lr for wd in sorted(by_wd)]
    steps = [b - a for a, b in zip(stops, stops[1:])]
    truth = ("rises as weight decay grows" if all(s > 0 for s in steps) else "falls as weight decay grows"
             if all(s < 0 for s in steps) else "does not move one way with weight decay")
    assert f"the stop LR {truth}" in figures["finder_sweeps"], figures["finder_sweeps"]


def test_the_finder_docstrings_quote_the_stored_quick_curves():
    """The numbers FinderResult's docstrings quote are the quick profile's stored read-outs."""
    path = QUICK / "01_lr_finder" / "summary_rows.csv"
    if not path.exists():
        pytest.skip("no quick results")
    rows = pd.read_csv(path)

    def value(init, metric):
        [v] = rows[rows["experiment"].str.contains(f"{init} init") & rows["metric"].str.startswith(metric)]["value"]
        return v

    one_cycle_doc = " ".join(FinderResult.one_cycle_max_lr.__doc__.split())
    for init in ("kaiming", "post"):
        for metric in ("1cycle max LR", "LR at the minimum"):
            assert f"{value(init, metric):.3g}" in one_cycle_doc, (init, metric)
        assert f"{value(init, 'stop LR'):.1f}" in one_cycle_doc, init
    sweep = pd.read_csv(QUICK / "06_weight_decay" / "summary_rows.csv")
    maxima = sweep[sweep["metric"].str.startswith("1cycle max LR") & sweep["experiment"].str.contains(", wd ")]
    by_wd = {float(e.split(", wd ")[1].split(",")[0]): v for e, v in zip(maxima["experiment"], maxima["value"])}
    said = [f"{by_wd[wd]:.2f}" for wd in sorted(by_wd)]
    assert ", ".join(said[:-1]) + f" and {said[-1]}" in one_cycle_doc, said
    suggest_doc = " ".join(FinderResult.suggest.__doc__.split())
    kaiming = [value("kaiming", m) for m in ("1cycle max LR", "CLR max LR", "LR at the minimum")]
    quoted = [f"{kaiming[0]:.2f}", f"{kaiming[1]:.2f}", f"{kaiming[2] / 10:.2f}",
              f"{value('kaiming', 'suggestion valley'):.2g}", f"{value('kaiming', 'suggestion steepest'):.2g}"]
    assert ", ".join(quoted[:4]) + " and " in suggest_doc, (quoted, suggest_doc)


def test_the_results_readme_states_the_stored_quick_numbers():
    """Every number results/README.md puts in bold for the quick profile is one of quick/summary.csv's
    or quick/comparisons.csv's (a value, its spread, the post's value, a difference), as printed."""
    readme = ROOT / "results" / "README.md"
    if not (QUICK / "summary.csv").exists():
        pytest.skip("no quick results")
    text = readme.read_text()
    quick = text[text.index("## The quick profile"):text.index("## Full data on a CPU")]
    summary, comparisons = pd.read_csv(QUICK / "summary.csv"), pd.read_csv(QUICK / "comparisons.csv")
    known = [v for column in ("value", "std", "ci95", "post_value") for v in summary[column].dropna()]
    known += [v for column in ("difference", "ci95", "post_difference") for v in comparisons[column].dropna()]

    def stored(number: str) -> bool:
        x = float(number)
        if "e" in number:
            return any(math.isclose(v, x, rel_tol=1e-9) for v in known)
        digits = len(number.split(".")[1]) if "." in number else 0
        return any(abs(round(scale * v, digits) - x) < 1e-9 for v in known for scale in (1, 100))

    bold = re.findall(r"\*\*([^*]+)\*\*", quick)
    numbers = [n for b in bold for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", b.replace("+-", " "))]
    assert len(numbers) > 20, bold
    unknown = [n for n in numbers if not stored(n)]
    assert not unknown, f"bold numbers in results/README.md that quick/*.csv do not hold: {unknown}"
