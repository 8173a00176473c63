"""Settings added to the run specs after runs were stored: at their neutral value they stay out of
the key (stored runs are found again), at any other value they change it and reach lr_find."""
from clrlib.lab.specs import DataSpec, FinderSpec, spec_from_dict


def _finder(**kw):
    return FinderSpec(data=DataSpec("synthetic", fingerprint="abc"), precision="fp32", **kw)


def test_neutral_values_leave_the_key_as_it_was():
    base = _finder()
    assert "best_after" not in base.to_dict() and "accumulation_steps" not in base.to_dict()
    assert _finder(best_after=0, accumulation_steps=1).key() == base.key()
    assert spec_from_dict(base.to_dict()) == base


def test_other_values_change_the_key_and_reach_lr_find():
    fastai = _finder(best_after=11)
    assert fastai.key() != _finder().key()
    assert fastai.finder_args["best_after"] == 11 and fastai.finder_args["accumulation_steps"] == 1
    assert spec_from_dict(fastai.to_dict()) == fastai


def test_the_post_profiles_range_tests_use_fastai_stop_rule():
    from clrlib.lab.plans import plan_for
    from clrlib.lab.suite import apply_profile
    for nb in ("01_lr_finder", "06_weight_decay", "08_same_budget"):
        finders = [s for s in plan_for(nb, apply_profile(nb, "full")).specs() if isinstance(s, FinderSpec)]
        assert finders and all(s.best_after == 11 for s in finders), nb
    quick = plan_for("01_lr_finder", apply_profile("01_lr_finder", "quick")).specs()
    assert all(s.best_after == 0 for s in quick)  # the stored quick runs' setting


def test_asymmetric_cycles_in_epochs():
    from clrlib.lab.specs import ScheduleSpec
    s = ScheduleSpec.make("cyclic", base_lr=0.1, max_lr=1.0, step_epochs=1, step_down_epochs=3)
    f = s.function(steps_per_epoch=2, epochs=8)
    assert [round(f(k), 6) for k in (0, 2, 5, 8)] == [0.1, 1.0, 0.55, 0.1]
