"""The learning-rate schedule: one multiplier of every param group's base_lr per step, so an optimizer's ratios
(LionMuon's ηL/ηM, the backup AdamW's lr) stay fixed while the schedule runs.

    warmup   (torch LinearLR semantics) start + (1 - start)·step/warmup for step < warmup_steps; then one of
    cosine   min + (1 - min)·½(1 + cos(π·p)), p = 0 right after warmup .. 1 at max_steps
    wsd      warmup-stable-decay: 1 until the last decay_fraction of the steps, then a cooldown to min whose shape
             is cooldown_shape: "linear" 1 - t, "sqrt" 1 - √t (Hägele et al. 2024, "Scaling Laws and
             Compute-Optimal Training Beyond Fixed Training Durations": sqrt cools down better than linear),
             "cosine" ½(1 + cos(πt)); t = the fraction of the cooldown done, reaching 1 at its last step
             A cooldown branch (schedule.cooldown_from = a stable-phase checkpoint) starts its cooldown at that
             checkpoint's step: one long stable run plus short branches gives the loss at several budgets.
    step     gamma ** ((step - warmup) // step_size), torch's StepLR
    constant 1
"""

import math


def lr_factor(step: int, s, max_steps: int, cooldown_start: int | None = None) -> float:
    """The schedule's multiplier of every group's base lr at `step` (0-based); s is a config.ScheduleSection.
    cooldown_start: a wsd branch (schedule.cooldown_from) cools down from that step to max_steps instead."""
    if step < s.warmup_steps:
        return s.warmup_start_factor + (1.0 - s.warmup_start_factor) * step / s.warmup_steps
    if s.kind == "constant":
        return 1.0
    if s.kind == "step":
        return s.gamma ** ((step - s.warmup_steps) // s.step_size)
    if s.kind == "cosine":
        progress = (step - s.warmup_steps) / max(1, max_steps - s.warmup_steps)
        return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    decay_start = max_steps - max(1, round(s.decay_fraction * max_steps)) if cooldown_start is None else cooldown_start
    decay_steps = max(1, max_steps - decay_start)  # wsd
    if step < decay_start:
        return 1.0
    t = min(1.0, (step - decay_start + 1) / decay_steps)
    shape = {"linear": 1.0 - t, "sqrt": 1.0 - math.sqrt(t), "cosine": 0.5 * (1.0 + math.cos(math.pi * t))}
    return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * shape[s.cooldown_shape]
