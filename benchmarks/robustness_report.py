"""The robustness benchmark's outputs: a CSV line per model, the markdown table, and a chart.

Split from :mod:`benchmarks.robustness`, which runs the attacks and judges
the models; this module only formats what the verifier concluded.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.data import Splits
from core.training import Recipe
from verifier.stats import TestResult

if TYPE_CHECKING:
    from benchmarks.robustness import Evidence, Row, Setting

ALPHA = 1e-6
BUDGET_PP = 5.0
TITLES = {"none": "No attack", "weight theft": "Weight theft (attacker holds the weights)",
          "extraction": "Extraction through the prediction API",
          "control": "Controls (independent models: must never be owned)"}


def test_of(row: Row, kind: str) -> TestResult | None:
    """The row's test of one kind of evidence, if the owner had that evidence."""
    return next((t for t in row.stats.tests if t.kind == kind), None)


def _p(p: float) -> str:
    if p >= 0.01:
        return f"{p:.2f}"
    if p < 1e-300:
        return "<1e-300"
    return f"{p:.0e}".replace("e-0", "e-")


def write_csv(path: Path, rows: list[Row], owner_acc: float, kinds: list[str]) -> None:
    """One line per model: accuracy, each test's counts and anytime-valid p, the verdict."""
    header = ["model", "group", "spec", "clean_accuracy", "drop_pp", "in_budget"]
    for kind in kinds:
        header += [f"{kind}: matches", f"{kind}: n", f"{kind}: p_anytime"]
    header += ["p_value", "verdict", "outcome"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line: list[object] = [r.name, r.group, r.spec, f"{r.accuracy:.4f}", f"{r.drop_pp(owner_acc):.2f}",
                                  r.in_budget(owner_acc)]
            for kind in kinds:
                t = test_of(r, kind)
                line += ["n/a"] * 3 if t is None else [t.matches, t.n, f"{t.p_anytime:.3e}"]
            line += [f"{r.stats.p_value:.3e}", r.stats.verdict, r.outcome(owner_acc)]
            w.writerow(line)


def render_markdown(rows: list[Row], owner_acc: float, evidence: Evidence, splits: Splits, recipe: Recipe,
                    args: argparse.Namespace, load: str, minutes: float, command: str,
                    setting: Setting) -> str:
    """The table, its legend and a plain summary of what escaped."""
    from benchmarks.robustness import owner_mixing

    per_batch, in_place = owner_mixing(splits, recipe)
    kinds = [kind for kind, _ in evidence.sets]
    notes = []
    for kind, ps in evidence.sets:
        null = ps.null
        refs = getattr(null, "references", "?")
        described = (f"exact Binomial(1/{ps.num_classes})" if null.family == "binomial"
                     else f"model-level conformal p over {refs} held-out references (the beta-binomial "
                     f"fitted on them drives the e-process), floor p >= {getattr(null, 'p_floor', 0):.3g} "
                     "(1 / (the smallest architecture group + 1))" if null.family == "conformal"
                     else f"beta-binomial fitted on {refs} held-out references, "
                     f"floor p >= {getattr(null, 'p_floor', 0):.3g}")
        notes.append(f"**{kind}**: {len(ps)} probes ({ps.scheme.split(':')[0]}), {described} null")
    notes += [f"**{kind}**: n/a, {why}" for kind, why in evidence.na.items()]
    pool = splits.attacker_pool
    lines = [
        f"Owner: `{recipe.arch}`, {recipe.epochs} epochs of {recipe.batch_size} on {splits.name} "
        f"owner-train ({len(splits.train)} images), watermark `{evidence.sets[0][1].scheme}` (its hook, "
        f"{per_batch} per batch{', in place of as many examples' if in_place else ''}, as `wm train` mixes "
        f"it); clean test accuracy {owner_acc:.4f}. Attacker: the {len(pool) if pool else 0}-image "
        f"attacker pool. Guard: `wm guard` at rate {args.guard_rate:g} in front of a labels API and a "
        f"probabilities API. Decision: `verifier.stats` as `wm verify` decides (anytime-valid e-values, "
        f"averaged over the owner's tests), alpha = {ALPHA:g}, every probe of every set sent. Budget: "
        f"clean accuracy within {BUDGET_PP:g} points of the owner's (the SoK's criterion).",
        "",
        "Evidence: " + "; ".join(notes) + ". `k/n` = matches / probes; p = that test's anytime-valid "
        "p-value; ✓ = that test alone reaches alpha.",
        "",
        f"`{command}`: {minutes:.0f} min, {load}. Attackers' effort: fine-tuning, retraining and "
        f"fine-pruning {setting.tune_epochs} epochs, distillation {setting.distill_epochs}, extraction "
        f"budgets {', '.join(f'{b:,}' for b in setting.budgets)} queries (at least "
        f"{setting.min_extract_epochs} epochs), controls {setting.control_epochs} epochs.",
        "",
        "| model | clean acc (Δ pp) | " + " | ".join(f"{k} k/n | {k} p" for k in kinds)
        + " | p | verdict | outcome |",
        "|---|---|" + "---|---|" * len(kinds) + "---|---|---|",
    ]
    section = None
    for r in rows:
        if r.group != section:
            section = r.group
            lines.append(f"| **{TITLES[r.group]}** |" + " |" * (2 * len(kinds) + 4))
        cells = [r.name, f"{r.accuracy:.4f} ({round(-r.drop_pp(owner_acc), 1) + 0.0:+.1f})"]
        for kind in kinds:
            t = test_of(r, kind)
            cells += (["n/a", "n/a"] if t is None else
                      [f"{t.matches}/{t.n}", _p(t.p_anytime) + (" ✓" if t.p_anytime <= ALPHA else "")])
        outcome = r.outcome(owner_acc)
        shown = {"ESCAPES": "**ESCAPES**", "FALSE CLAIM": "**FALSE CLAIM**"}.get(outcome, outcome)
        cells += [_p(r.stats.p_value), r.stats.verdict.replace("_", " "), shown]
        lines.append("| " + " | ".join(cells) + " |")
    attacks = [r for r in rows if r.group in ("weight theft", "extraction")]
    in_budget = [r for r in attacks if r.outcome(owner_acc) != "out of budget"]
    escaped = [r for r in in_budget if not r.owned]
    ctrl = [r for r in rows if r.group == "control"]
    false_claims = [r for r in ctrl if r.owned]
    lines += [
        "",
        f"**Summary.** {len(attacks)} attacks: {len(attacks) - len(in_budget)} out of budget "
        f"(destroyed the model), {len(in_budget) - len(escaped)} of {len(in_budget)} within budget "
        f"caught, **{len(escaped)} within budget escape the owner's evidence**"
        + (": " + "; ".join(r.name for r in escaped) + "." if escaped else ".")
        + f" Controls: {len(false_claims)} of {len(ctrl)} owned"
        + (" (**false claims**: " + "; ".join(r.name for r in false_claims) + ")."
           if false_claims else " (no false claim)."),
    ]
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[Row], owner_acc: float, data: str, arch: str) -> None:
    """Two panels: accuracy drop against the budget; -log10 p of each test and of the verdict vs alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cap = 30.0
    rr = rows[::-1]
    y = np.arange(len(rr))
    colours = {"caught": "#2b8a3e", "ESCAPES": "#c92a2a", "out of budget": "#868e96",
               "not owned (correct)": "#1c7ed6", "FALSE CLAIM": "#e8590c"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.28 * len(rr) + 1.6), sharey=True,
                                   gridspec_kw={"width_ratios": [1, 2]})
    drops = [r.drop_pp(owner_acc) for r in rr]
    top = 3 * BUDGET_PP  # larger drops are drawn to the edge and labelled
    ax1.barh(y, [min(d, top) for d in drops], color=[colours[r.outcome(owner_acc)] for r in rr])
    for i, d in enumerate(drops):
        if d > top:
            ax1.text(top, i, f"{d:.0f} ", ha="right", va="center", fontsize=6, color="w")
    ax1.axvline(BUDGET_PP, color="k", ls="--", lw=1)
    ax1.set_xlabel("clean accuracy drop (points)")
    ax1.set_yticks(y, [r.name for r in rr], fontsize=7)
    ax1.set_xlim(min(-2.0, min(drops) - 1), top)

    def lp(p: float) -> float:
        return min(cap, -math.log10(max(p, 1e-300)))

    ax2.barh(y, [lp(r.stats.p_value) for r in rr], color=[colours[r.outcome(owner_acc)] for r in rr],
             alpha=0.35, label="verdict (bar)")
    kinds = list(dict.fromkeys(t.kind for r in rows for t in r.stats.tests))
    for kind, marker in zip(kinds, ("o", "s", "^", "v", "D"), strict=False):
        pts = [(lp(t.p_anytime), i) for i, r in enumerate(rr) if (t := test_of(r, kind)) is not None]
        ax2.scatter([p for p, _ in pts], [i for _, i in pts], marker=marker, s=14, label=kind, zorder=3)
    ax2.axvline(-math.log10(ALPHA), color="k", ls="--", lw=1)
    ax2.text(-math.log10(ALPHA), len(rr) - 0.3, " alpha = 1e-6", fontsize=7, va="bottom")
    ax2.set_xlabel(f"-log10 p (anytime-valid; capped at {cap:g})")
    ax2.set_xlim(0, cap + 1)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax2.legend(loc="lower right", fontsize=7)
    ax1.legend(handles, list(colours), loc="lower right", fontsize=6, title="outcome (bar colour)",
               title_fontsize=6)
    fig.suptitle(f"wm robustness: ownership evidence after removal attacks ({data}, {arch} owner)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
