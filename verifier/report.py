"""A readable HTML report of an evidence bundle, with the evidence drawn query by query.

Self-contained: one HTML file with an inline SVG chart (no scripts, no
network), every value escaped. The chart shows ``log10 E`` of each model's
combined e-process (:mod:`verifier.stats`) against the number of answered
probes, with the decision threshold ``log10(M / alpha)``; ownership is
established where a curve crosses it.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["render_report", "write_report"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _chart(stats: Mapping[str, Any]) -> str:
    w, h, left, right, top, bottom = 640, 320, 60, 20, 20, 40
    models = stats.get("models", [])
    m = max(1, len(models))
    threshold = math.log10(m / float(stats["alpha"]))
    xs = [pt[0] for mdl in models for pt in mdl["trajectory"]] or [1]
    ys = [pt[1] for mdl in models for pt in mdl["trajectory"]] or [0.0]
    x_max = max(1, max(xs))
    y_min = min(0.0, min(ys))
    y_max = max(threshold * 1.1, max(ys), 1.0)

    def sx(x: float) -> float:
        return left + (w - left - right) * x / x_max

    def sy(y: float) -> float:
        return top + (h - top - bottom) * (1 - (y - y_min) / (y_max - y_min))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="evidence against queries">',
        f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
        'fill="#fafafa" stroke="#999"/>',
        f'<line x1="{left}" x2="{w - right}" y1="{sy(threshold):.1f}" y2="{sy(threshold):.1f}" '
        'stroke="#000" stroke-dasharray="6 4"/>',
        f'<text x="{w - right - 4}" y="{sy(threshold) - 4:.1f}" text-anchor="end" font-size="11">'
        f"threshold log10(M/alpha) = {threshold:.2f}</text>",
    ]
    for tick in range(5):
        yv = y_min + (y_max - y_min) * tick / 4
        parts.append(
            f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end" font-size="11">{yv:.1f}</text>'
        )
        xv = x_max * tick / 4
        parts.append(
            f'<text x="{sx(xv):.1f}" y="{h - bottom + 16}" text-anchor="middle" '
            f'font-size="11">{xv:.0f}</text>'
        )
    parts.append(
        f'<text x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle" font-size="12">'
        "answered probe queries</text>"
    )
    parts.append(
        f'<text x="14" y="{(top + h - bottom) / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {(top + h - bottom) / 2})">log10 E</text>'
    )
    for i, mdl in enumerate(models):
        pts = [(0, 0.0)] + [(p[0], p[1]) for p in mdl["trajectory"]]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        colour = _COLOURS[i % len(_COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts.append(
            f'<text x="{left + 8}" y="{top + 16 + 14 * i}" font-size="12" fill="{colour}">'
            f"{html.escape(str(mdl['model']))}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def render_report(payload: Mapping[str, Any], *, bundle_name: str = "", bundle_sha256: str = "") -> str:
    """The HTML report of an evidence bundle's payload."""
    e = html.escape
    stats = payload["statistics"]
    rows = "\n".join(
        "<tr>" + "".join(
            f"<td>{e(str(v))}</td>"
            for v in (
                t["model"], t["kind"], t["null"].get("family"), t["n"], t["matches"],
                f"{t['log10_e_max']:.2f}", f"{t['p_value']:.3g}",
            )
        ) + "</tr>"
        for t in stats["tests"]
    )
    records = payload["transcript"]["records"]
    requests = len(records)
    inputs = sum(len(r["items"]) for r in records)
    suspect = payload["suspect"]
    detected = (suspect.get("detected") or {}).get("detail", "")
    check_command = (f"wm evidence check {bundle_name or 'BUNDLE'} "
                     f"--owner-key {payload['owner']['key_id']}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>wm evidence: {e(str(payload['verdict']))}</title>
<style>body{{font-family:sans-serif;max-width:760px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
.v{{font-size:1.6em;font-weight:bold}}code{{word-break:break-all}}</style></head><body>
<h1>Ownership evidence</h1>
<p class="v">Verdict: {e(str(payload['verdict']))}</p>
<p>p-value {float(payload['p_value']):.3g} at alpha {float(stats['alpha']):.3g}
({e(str(stats['mode']))} test; {e(str(stats['combination']))}); closest model
<b>{e(str(payload.get('model')))}</b>.</p>
<p>Suspect: <code>{e(str(suspect['url']))}</code> ({e(str(suspect['protocol']))}).
{e(str(detected))}</p>
<p>{stats['probes']} probe queries among {inputs} inputs in {requests} requests.</p>
<h2>Evidence against queries</h2>
{_chart(stats)}
<h2>Tests</h2>
<table><tr><th>model</th><th>kind</th><th>null</th><th>n</th><th>matches</th>
<th>max log10 E</th><th>p-value</th></tr>
{rows}
</table>
<h2>Checking</h2>
<p>Owner key id <code>{e(str(payload['owner']['key_id']))}</code> signed the bundle
<code>{e(bundle_name)}</code> (SHA-256 <code>{e(bundle_sha256)}</code>). Anyone can check it offline
against the owner key they pinned themselves (the <code>owner.pub</code> the owner published, or its
key id):</p>
<pre><code>{e(check_command)}</code></pre>
<p>It checks the signature, the registry entries and checkpoint, the nulls, the probe openings
against the registered commitments, that each probe counts once, the transcript, and the
statistics recomputed and corrected for every probe set in the owner's log. Add
<code>--suspect-since TIME</code> with <code>--tsa-ca FILE</code> or <code>--witness-key FILE</code>
to count only commitments proven older than the suspect; without them, the commitments' time
rests on the owner's word.</p>
</body></html>
"""


def write_report(path: str | Path, payload: Mapping[str, Any], *, bundle_name: str = "",
                 bundle_sha256: str = "") -> Path:
    """Write the HTML report atomically; its path."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(render_report(payload, bundle_name=bundle_name, bundle_sha256=bundle_sha256),
                   encoding="utf-8")
    tmp.replace(p)
    return p
