"""one_cycle against fastai 0.7's CircularLR_beta (the post's code), re-expressed: the numbers
one_cycle's docstring gives for the momentum that fastai runs one batch ahead of the LR."""
from __future__ import annotations

import pytest

from clrlib.schedules import one_cycle

MOMS = (0.95, 0.85)


def fastai_circular_lr_beta(nb: int, div: float = 10, pct: float = 10, moms=MOMS) -> list[tuple[float, float]]:
    """``(lr / max_lr, momentum)`` that fastai 0.7's ``CircularLR_beta(nb, div, pct, momentums)``
    sets for each of ``nb`` batches (``use_clr_beta=(div, pct, *moms)``).

    fastai calls ``calc_lr`` and then ``calc_mom`` before each batch; ``calc_lr`` advances
    ``cycle_iter``, so the momentum of batch ``k`` is computed at ``k + 1``.
    """
    cycle_nb = int(nb * (1 - pct / 100) / 2)

    def lr(it):
        if it > 2 * cycle_nb:
            p = (it - 2 * cycle_nb) / (nb - 2 * cycle_nb)
            return (1 + p * (1 - 100) / 100) / div
        p = 1 - (it - cycle_nb) / cycle_nb if it > cycle_nb else it / cycle_nb
        return (1 + p * (div - 1)) / div

    def mom(it):
        if it > 2 * cycle_nb:
            return moms[0]
        p = 1 - (it - cycle_nb) / cycle_nb if it > cycle_nb else it / cycle_nb
        return moms[0] + p * (moms[1] - moms[0])

    return [(lr(k), mom(k + 1)) for k in range(nb)]


def _ours(n, annihilate, max_lr=0.8):
    return [one_cycle(k, n, max_lr, div=10, final_div=100, annihilate=annihilate, moms=MOMS) for k in range(n + 1)]


@pytest.mark.parametrize("n,annihilate,ahead", [(100, 0.1, 0.0022), (95 * 98, 0.1368, 2.5e-5)])
def test_the_momentum_one_batch_ahead_differs_by_one_steps_slope(n, annihilate, ahead):
    ours = _ours(n, annihilate)
    shift = max(abs(ours[k + 1][1] - ours[k][1]) for k in range(n))
    assert shift == pytest.approx(ahead, rel=0.02)
    cycle = (1 - annihilate) * n
    assert shift == pytest.approx((MOMS[0] - MOMS[1]) / (cycle / 2), rel=1e-6)


def test_post_run_against_fastai_itself():
    """The post's main run (95 epochs of 98 batches, use_clr_beta=(10, 13.68, 0.95, 0.85)): fastai's
    momentum (ahead, and with phases ending at int(c*n/2)) and LR against one_cycle's."""
    n, annihilate, max_lr = 95 * 98, 0.1368, 0.8
    theirs = fastai_circular_lr_beta(n, div=10, pct=100 * annihilate)
    ours = _ours(n, annihilate, max_lr)
    mom_diff = max(abs(t[1] - o[1]) for t, o in zip(theirs, ours))
    lr_diff = max(abs(max_lr * t[0] - o[0]) for t, o in zip(theirs, ours))
    assert mom_diff == pytest.approx(3.5e-5, rel=0.02)
    assert lr_diff == pytest.approx(7.0e-5, rel=0.02)
    # what the docstring says about the effect: at most 0.05% on 1 / (1 - momentum), and less
    # (0.74 times at most) than one batch of the LR's own schedule changes the step
    cycle_end = int((1 - annihilate) * n)
    effect = [abs(ours[k + 1][1] - ours[k][1]) / (1 - ours[k][1]) for k in range(n)]
    lr_move = [abs(ours[k + 1][0] - ours[k][0]) / ours[k][0] for k in range(n)]
    assert max(effect) == pytest.approx(5e-4, rel=0.01)
    assert max(e / m for e, m in zip(effect[:cycle_end - 1], lr_move[:cycle_end - 1])) < 0.75


def test_fastai_reexpression_holds_the_post_numbers():
    """The re-expression itself: 0.08 -> 0.8 -> 0.08 -> 0.0008 and 0.95 -> 0.85 -> 0.95."""
    theirs = fastai_circular_lr_beta(95 * 98, div=10, pct=13.68)
    cycle_nb = int(95 * 98 * (1 - 0.1368) / 2)
    assert 0.8 * theirs[0][0] == pytest.approx(0.08)
    assert 0.8 * theirs[cycle_nb][0] == pytest.approx(0.8)
    assert 0.8 * theirs[2 * cycle_nb][0] == pytest.approx(0.08)
    assert 0.0008 < 0.8 * theirs[-1][0] < 0.0009  # the last batch is one step short of 0.0008
    assert theirs[cycle_nb - 1][1] == pytest.approx(0.85)  # one batch early: the momentum runs ahead
