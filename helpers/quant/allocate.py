"""Allocation: a greedy multiple-choice knapsack spends a bits-per-weight budget
where it buys the most KL reduction per stored bit; every method compared at
equal size.
"""
from __future__ import annotations

import time

from helpers.quant.anchors import allocate_by_score, bracketing_bits, rule_based_bits, uniform_at
from helpers.quant.gptq_rounding import gptq_aware
from helpers.quant.units import bits_per_weight, protected_units, stored_bits, uniform_bits


def allocate(sens: dict, target_bpw: float, candidate_bits, protect=()) -> dict:
    """{path: bits} with stored bits per weight <= target_bpw, minimising the summed per-unit KL.

    Greedy multiple-choice knapsack: every unit starts at the lowest candidate bit-width
    (protected units at the highest); then, while the budget allows, the single upgrade (unit,
    higher bit-width) with the largest KL reduction per extra stored bit is taken."""
    units, group = sens["units"], sens["group_size"]
    bits = sorted(candidate_bits)
    missing = [b for b in bits if str(b) not in next(iter(sens["kl"].values()))]
    if missing:
        raise ValueError(f"sensitivity has no KL for bit-width(s) {missing}; rerun the scan "
                         "with them in candidate_bits")
    fixed = protected_units(units, protect)
    kl = {u: {b: sens["kl"][u][str(b)]["mean"] for b in bits} for u in units}
    cost = {u: {b: sum(stored_bits(s, b, group) for s in units[u]["shapes"]) for b in bits}
            for u in units}
    choice = {u: bits[-1] if u in fixed else bits[0] for u in units}
    budget = target_bpw * sum(u["n_weights"] for u in units.values())
    spent = sum(cost[u][choice[u]] for u in units)
    if spent > budget:
        raise ValueError(f"target {target_bpw} bpw is below the {spent / budget * target_bpw:.3f}"
                         f" bpw that bits {bits} with protections {tuple(protect)} need at least")
    while True:
        best = None  # (KL reduction per extra bit, unit, bits, extra bits)
        for u in units:
            if u in fixed:
                continue
            for b in bits:
                extra = cost[u][b] - cost[u][choice[u]]
                if extra > 0 and spent + extra <= budget:
                    rate = (kl[u][choice[u]] - kl[u][b]) / extra
                    if best is None or rate > best[0]:
                        best = (rate, u, b, extra)
        if best is None or best[0] <= 0:
            break
        _, u, b, extra = best
        choice[u] = b
        spent += extra
    return {p: choice[u] for u in units for p in units[u]["paths"]}


def equal_size_methods(model, sens: dict, targets, candidate_bits, rounding=None,
                       gradient=None, protect=(), gptq_ratios=None) -> list[dict]:
    """Every method at every target bpw, as rows {"method", "target", "plan"} for `compare`:
    uniform round-to-nearest (where a uniform bit-width and group size store exactly the
    target), the rule-based mixed_4_6 recipe (at its own bpw, with our methods beside it there),
    mlx-lm's gradient-sensitivity allocation (`gradient` {(low, high): scores}), our KL
    knapsack, and with `rounding` (GPTQRounding) uniform and knapsack with GPTQ rounding; with
    `gptq_ratios` (gptq_error_ratios) also the GPTQ-aware knapsack with GPTQ rounding."""
    units, group = sens["units"], sens["group_size"]
    rule = rule_based_bits(model, units, "mixed_4_6", group, protect)
    rows = [{"method": "rule mixed_4_6", "target": round(bits_per_weight(rule, units, group), 3),
             "plan": rule}]
    clock = time.perf_counter()

    def add(method, target, plan):  # seconds: building this plan, past the shared passes
        nonlocal clock
        rows.append({"method": method, "target": target, "plan": plan,
                     "seconds": time.perf_counter() - clock})
        clock = time.perf_counter()

    for target in sorted(targets) + [rows[0]["target"]]:
        uniform = uniform_at(units, target, candidate_bits) if target in targets else None
        if uniform:
            bits = uniform_bits(units, uniform[0])
            add("uniform", target, {"bits": bits, "group_size": uniform[1]})
            if rounding is not None:
                add("uniform + GPTQ", target, rounding.plan(bits, uniform[1]))
        if gradient is not None and target in targets:
            low, high = bracketing_bits(target, candidate_bits, group)
            add("gradient (mlx-lm)", target, allocate_by_score(
                units, gradient[low, high], target, low, high, group, protect))
        knapsack = allocate(sens, target, candidate_bits, protect)
        add("KL knapsack", target, knapsack)
        if rounding is not None:
            add("KL knapsack + GPTQ", target, rounding.plan(knapsack))
        if rounding is not None and gptq_ratios is not None:
            aware = allocate(gptq_aware(sens, gptq_ratios), target, candidate_bits, protect)
            add(GPTQ_AWARE, target, rounding.plan(aware))
    rows[0]["seconds"] = 0.0
    return rows

GPTQ_AWARE = "GPTQ-aware knapsack + GPTQ"
