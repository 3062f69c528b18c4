"""Learning-rate schedules as ``torch.optim.lr_scheduler.LambdaLR`` factors."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Callable

from torch.optim.lr_scheduler import LambdaLR

from speechbrain.nnet.schedulers import TriStageLRSchedule


def tri_stage(total_steps: int, warmup: float = 0.1, hold: float = 0.4, init_scale: float = 0.01,
              final_scale: float = 0.05) -> Callable[[int], float]:
    """wav2vec 2.0's tri-stage schedule as a factor of the peak rate, for ``LambdaLR``.

    A linear warm-up from ``init_scale`` over the first ``warmup`` fraction of ``total_steps``,
    the peak rate for the next ``hold`` fraction, then an exponential decay that reaches
    ``final_scale`` at ``total_steps`` (the seed: 10 % / 40 % / 50 %); after ``total_steps``
    the rate stays at ``final_scale``. The values are speechbrain's ``TriStageLRSchedule``
    (which sets a rate on an optimiser rather than returning one, hence the small adapter).

    Example::

        >>> f = tri_stage(100)
        >>> [round(f(s), 4) for s in (0, 10, 50, 100, 200)]
        [0.01, 1.0, 1.0, 0.05, 0.05]
    """
    if total_steps < 1:
        raise ValueError(f"tri_stage needs total_steps >= 1, got {total_steps}")
    if not (0 <= warmup and 0 <= hold and warmup + hold <= 1):
        raise ValueError(f"tri_stage needs warmup, hold >= 0 and warmup + hold <= 1 (got {warmup}, {hold})")
    warmup_steps = max(1, round(warmup * total_steps))  # speechbrain divides by it
    hold_steps = round(hold * total_steps)
    decay_steps = max(1, total_steps - warmup_steps - hold_steps)
    schedule = TriStageLRSchedule(lr=1.0, warmup_steps=warmup_steps, hold_steps=hold_steps, decay_steps=decay_steps,
                                  total_steps=total_steps, init_lr_scale=init_scale, final_lr_scale=final_scale)

    def factor(step: int) -> float:
        holder = SimpleNamespace(param_groups=[{}])
        schedule(holder, min(int(step), total_steps))
        value = float(holder.param_groups[0]["lr"])
        return value if math.isfinite(value) else final_scale

    return factor


def follow_added_param_groups(scheduler: Any) -> None:
    """Let a ``LambdaLR`` schedule parameter groups added to its optimiser after it was made.

    Lightning's ``BackboneFinetuning`` adds the unfrozen backbone as a new group at a fraction of
    the current rate; torch's ``LambdaLR`` then fails at its next step (``zip() argument 2 is
    shorter than argument 1``). Each new group gets the first group's factor and the base rate that
    keeps its present ratio to the first group, so it follows the same schedule at that fraction.
    """
    if not isinstance(scheduler, LambdaLR):
        return
    groups = scheduler.optimizer.param_groups
    first_lr = float(groups[0]["lr"])
    for group in groups[len(scheduler.base_lrs):]:
        base = float(group["lr"]) * scheduler.base_lrs[0] / first_lr if first_lr > 0 else float(group["lr"])
        group["initial_lr"] = base
        scheduler.base_lrs.append(base)
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
