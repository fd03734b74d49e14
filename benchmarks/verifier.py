"""Probes per verdict, and how many suspects one default watermark checks (issue 15).

The owner trains a model with ``wm train``'s defaults (its default watermark,
:data:`watermark.DEFAULT_WATERMARK`, and the data's recipe unless ``--arch`` /
``--epochs`` say otherwise) and registers it in a fresh SQLite registry. Then
``wm verify`` (:func:`verifier.verify.verify_suspect`, default options but
``--alpha``) checks suspects one after the other against that registry, so
every probe a verification spends stays spent for the next:

* ``--innocents`` independently trained models (architectures in turn from
  :data:`INDEPENDENT`, fresh seeds), the common case;
* then the three derived ones: the exact copy, a copy fine-tuned on the
  attacker pool (all layers, lr 1e-3) and a 50% magnitude-pruned copy, last,
  when fewest probes are left;
* then the independent models again, one after the other, until the
  watermark has too few unspent probes left for a verification to start
  (``--no-drain``: stop after the derived ones).

Each suspect is served by the reference server (:mod:`verifier.server`) on
loopback, over the Open Inference Protocol (V2) and KServe V1 in turn, with
labels and with probabilities in turn. Reported per verification: the
verdict, the probes it spent, its p-value, the futility evidence against
"derived, matching a share >= q" and the rule's stated error, and the unspent
probes left after it. The exact copy's row shows how early an exact copy is
decided: ``wm verify`` sizes its first batch for it (10 probes to 1e-9 with 10
classes; a perfect match on ``n`` probes gives at most ``C^n``, so 9 is the
floor).

Trained models are cached under ``--cache`` (default ``$WM_HOME/cache/verifier-bench``).

Run: ``python -m benchmarks.verifier [--data digits|fashion-mnist] [--alpha 1e-9]``;
writes its data set's section of ``benchmarks/results/verifier.md`` (the other
data sets' sections are kept).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from click.testing import CliRunner
from torch import nn

from core.data import BUILTIN, Splits, load_data
from core.errors import WmError
from core.modelio import load_model, save_model, to_trainable
from core.serving import running_server
from core.training import accuracy, default_recipe, predict, train_classifier, train_new
from registry.keys import generate_owner_key
from registry.log import Registry
from registry.register import register_model
from verifier.server import ServedModel, build_app
from verifier.verify import VerifyOptions, verify_suspect
from watermark import DEFAULT_WATERMARK, read_secret
from watermark.secret import secret_path

INDEPENDENT = ("cnn", "mlp", "cnn-wide", "mlp-wide")
PROTOCOLS = (("oip", "/v2/models/{}/infer"), ("tfserving", "/v1/models/{}:predict"))
OUTPUTS = ("labels", "probabilities")


def prune(model: nn.Module, fraction: float = 0.5) -> nn.Module:
    """Zero the smallest-magnitude ``fraction`` of every weight matrix or kernel."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for p in pruned.parameters():
            if p.ndim > 1:
                threshold = p.abs().flatten().kthvalue(int(p.numel() * fraction)).values
                p[p.abs() <= threshold] = 0.0
    return pruned.eval()


@dataclass
class Suspect:
    name: str
    kind: str  # "derived" or "independent"
    path: Path
    clean: float
    marks: float  # share of the watermark's probes it answers with the committed label


def train_owner(cache: Path, splits: Splits, arch: str | None, epochs: int | None) -> tuple[Path, str]:
    """The owner's model, trained by ``wm train`` with its default watermark (cached); its output."""
    tag = f"{splits.name}-{arch or 'recipe'}-{epochs or 'recipe'}-{DEFAULT_WATERMARK}".replace(":", "_")
    path = cache / f"owner-{tag}.pt2"
    log = path.with_suffix(".log")
    if path.exists() and secret_path(path).exists() and log.exists():
        return path, log.read_text()
    from cli.main import _register_commands, wm

    _register_commands()
    args = ["--home", str(cache / "home"), "train", "--data", splits.spec, "--out", str(path)]
    args += ["--arch", arch] if arch else []
    args += ["--epochs", str(epochs)] if epochs else []
    r = CliRunner().invoke(wm, args)
    if r.exit_code != 0:
        raise SystemExit(f"wm train failed: {r.output}")
    log.write_text(r.output)
    return path, r.output


def suspects(cache: Path, splits: Splits, owner_path: Path, innocents: int, epochs: int,
             tune_epochs: int) -> list[Suspect]:
    """The derived and independent suspects (trained once, cached), with their figures."""
    owner = to_trainable(load_model(owner_path)).eval()
    probes = read_secret(secret_path(owner_path)).probes
    meta = {"input_shape": splits.input_shape, "num_classes": splits.num_classes,
            "input_range": splits.input_range, "data": splits.recorded_name}
    stem = owner_path.stem
    pool = splits.attacker_pool if splits.attacker_pool is not None else splits.train

    def cached(name: str, make: object) -> Path:
        path = cache / f"{stem}-{name}.pt2"
        if not path.exists():
            model = make()  # type: ignore[operator]
            save_model(model.eval(), path, **meta)  # type: ignore[arg-type]
        return path

    def tuned() -> nn.Module:
        m = copy.deepcopy(owner)
        return train_classifier(m, pool.x, pool.y, epochs=tune_epochs, seed=101, lr=1e-3)

    paths = {"exact copy": ("derived", owner_path),
             "fine-tuned (attacker pool)": ("derived", cached(f"ft{tune_epochs}", tuned)),
             "pruned 50% (magnitude)": ("derived", cached("pruned", lambda: prune(owner)))}
    for j in range(innocents):
        arch = INDEPENDENT[j % len(INDEPENDENT)]
        paths[f"independent {j + 1} ({arch})"] = ("independent", cached(
            f"ind{j}-{arch}-{epochs}",
            lambda arch=arch, j=j: train_new(arch, splits.train.x, splits.train.y,
                                             num_classes=splits.num_classes, epochs=epochs,
                                             seed=1000 + j)))
    out = []
    for name, (kind, path) in paths.items():
        m = load_model(path)
        marks = float((predict(m, probes.inputs) == probes.expected).float().mean())
        out.append(Suspect(name, kind, path, accuracy(m, splits.test.x, splits.test.y), marks))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", choices=BUILTIN)
    ap.add_argument("--alpha", type=float, default=1e-9)
    ap.add_argument("--innocents", type=int, default=10)
    ap.add_argument("--arch", default=None, help="owner architecture (default: the data's recipe)")
    ap.add_argument("--epochs", type=int, default=None, help="owner epochs (default: the data's recipe)")
    ap.add_argument("--suspect-epochs", type=int, default=None,
                    help="epochs of each independent model (default: the owner's)")
    ap.add_argument("--tune-epochs", type=int, default=None,
                    help="fine-tuning epochs (default: a third of the owner's, at least 1)")
    ap.add_argument("--no-drain", action="store_true",
                    help="stop after the derived suspects instead of spending the whole watermark")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("WM_HOME", "~/.wm")).expanduser()
                    / "cache" / "verifier-bench")
    ap.add_argument("--out", default="benchmarks/results/verifier.md",
                    help="results file; this data set's section is replaced, others kept")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        splits = load_data(args.data)
    except WmError as exc:
        raise SystemExit(f"error: {exc}") from None
    args.cache.mkdir(parents=True, exist_ok=True)
    recipe = default_recipe(splits)
    epochs = args.epochs or recipe.epochs
    owner_path, train_log = train_owner(args.cache, splits, args.arch, args.epochs)
    found = re.search(r"watermark:\s+(\S+)", train_log)
    scheme = found.group(1) if found else DEFAULT_WATERMARK
    zoo = suspects(args.cache, splits, owner_path, args.innocents, args.suspect_epochs or epochs,
                   args.tune_epochs or max(1, epochs // 3))
    derived = [s for s in zoo if s.kind == "derived"]
    independent = [s for s in zoo if s.kind == "independent"]
    queue = independent + derived
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        key = generate_owner_key(home, "benchmark-owner", "benchmark passphrase", kdf_rounds=1)
        url = f"sqlite:///{home / 'registry.db'}"
        with Registry.open(url) as reg:
            reg_result = register_model(reg, key, owner_path, "owner")
            pid = reg_result.probeset_id
            assert pid is not None
            total = len(reg.unspent_indices(pid))
        app = build_app({f"s{i}-{out}": ServedModel(load_model(s.path), out)  # type: ignore[arg-type]
                         for i, s in enumerate(zoo) for out in OUTPUTS})
        with running_server(app) as srv:
            n = 0
            while True:
                if not queue:
                    if args.no_drain:
                        break
                    queue = list(independent)
                s = queue.pop(0)
                protocol, route = PROTOCOLS[n % 2]
                output = OUTPUTS[(n // 2) % 2]
                options = VerifyOptions(
                    suspect=srv.url + route.format(f"s{zoo.index(s)}-{output}"), models=("owner",),
                    protocol=protocol, alpha=args.alpha, evidence=Path(tmp) / f"ev{n}.json")
                with Registry.open(url) as reg:
                    if len(reg.unspent_indices(pid)) == 0:
                        break
                    t0 = time.perf_counter()
                    try:
                        out = verify_suspect(reg, key, options, None).to_json()
                    except WmError as exc:
                        rows.append({"n": n + 1, "suspect": s, "error": str(exc)})
                        break
                    wall = time.perf_counter() - t0
                    left = len(reg.unspent_indices(pid))
                test = out["tests"][0]
                fut = out["futility"] or {}
                rows.append({
                    "n": n + 1, "suspect": s, "protocol": protocol, "output": output,
                    "verdict": out["verdict"], "probes": out["queries"], "p": out["p_value"],
                    "matches": test["matches"], "log10_f": test["log10_f_max"],
                    "error": None, "share": fut.get("share"), "beta": fut.get("error"), "left": left,
                    "wall": wall,
                })
                n += 1
                if left == 0:
                    break
    write(args, splits, scheme, total, zoo, rows, train_log)


def _fmt_p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def write(args: argparse.Namespace, splits: Splits, scheme: str, total: int, zoo: list[Suspect],
          rows: list[dict[str, object]], train_log: str) -> None:
    ok = [r for r in rows if not r.get("error")]
    first13 = ok[: args.innocents + 3]
    ind = [r for r in ok if r["suspect"].kind == "independent"]  # type: ignore[attr-defined]
    der = [r for r in first13 if r["suspect"].kind == "derived"]  # type: ignore[attr-defined]
    exact = next((r for r in der if r["suspect"].name == "exact copy"), None)  # type: ignore[attr-defined]
    load = os.getloadavg()
    clean_line = re.search(r"clean accuracy:\s+(.*)", train_log)
    wm_line = re.search(r"watermark accuracy:\s+(.*)", train_log)
    fut = next((r for r in ok if r.get("beta") is not None), None)
    lines = [
        f"## {_section_name(splits, args.alpha)}",
        "",
        f"Owner: `wm train --data {splits.spec}"
        + (f" --arch {args.arch}" if args.arch else "") + (f" --epochs {args.epochs}" if args.epochs else "")
        + f"` (watermark `{scheme}`, {total} probes), registered in a fresh SQLite registry; "
        f"clean accuracy {clean_line.group(1) if clean_line else '?'}; "
        f"watermark accuracy {wm_line.group(1) if wm_line else '?'}. "
        f"Each row is one `wm verify` (alpha = {args.alpha:g}, budget 100, batch 16, decoys 1:1) "
        "against the same registry, in this order: every probe spent stays spent. "
        f"Futility rule: \"derived, matching a share >= {fut['share'] if fut else '?'} of the "
        f"unspent probes\" ruled out at error <= {fut['beta'] if fut else '?'} (Ville), "
        "stated in each evidence bundle.",
        "",
        f"`python -m benchmarks.verifier --data {splits.spec}"
        + (f" --arch {args.arch}" if args.arch else "") + (f" --epochs {args.epochs}" if args.epochs else "")
        + (f" --suspect-epochs {args.suspect_epochs}" if args.suspect_epochs else "")
        + (f" --tune-epochs {args.tune_epochs}" if args.tune_epochs else "")
        + f" --alpha {args.alpha:g}`; {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} (1 thread), load average {load[0]:.1f} / {load[1]:.1f} at the end.",
        "",
        "### Summary",
        "",
    ]
    if exact is not None:
        lines.append(f"- exact copy: `{exact['verdict']}` at p = {_fmt_p(exact['p'])} "  # type: ignore[arg-type]
                     f"after {exact['probes']} probes"
                     + (" (target: <= 10 probes at p <= 1e-9)" if args.alpha <= 1e-9 else ""))
    if ind:
        probes = [int(r["probes"]) for r in ind]  # type: ignore[call-overload]
        wrong = [r for r in ind if r["verdict"] != "not_owned"]
        lines.append(f"- independent models: {len(ind)} verifications, "
                     f"{len(ind) - len(wrong)} `not_owned`, {len(wrong)} other; "
                     f"probes mean {statistics.mean(probes):.1f}, median {statistics.median(probes):g}, "
                     f"max {max(probes)} (target: mean <= 20)")
    first_ind = [r for r in first13 if r["suspect"].kind == "independent"]  # type: ignore[attr-defined]
    lines.append(
        f"- one watermark of {total} probes: the first {len(first_ind)} innocent and "
        f"{len(der)} derived suspects decided "
        + ("correctly" if all(r["verdict"] == "not_owned" for r in first_ind)
           and all(r["verdict"] == "owned" for r in der) else "NOT all correctly")
        + f" with {sum(int(r['probes']) for r in first13)} probes "  # type: ignore[call-overload]
        f"(target: >= 10 innocent and 3 derived); {len(ok)} verifications in all before "
        f"the set ran out")
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines.append(f"- stopped by: {errors[0]['error']}")
    lines += [
        "",
        "### Suspects",
        "",
        "| suspect | clean acc. | watermark match |",
        "| --- | --- | --- |",
        *(f"| {s.name} | {s.clean:.3f} | {s.marks:.2f} |" for s in zoo),
        "",
        "### Verifications, in order",
        "",
        "| # | suspect | API | verdict | probes | matches | p-value | log10 F (futility) | "
        "unspent left | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ok:
        lf = r["log10_f"]
        lines.append(
            f"| {r['n']} | {r['suspect'].name} | {r['protocol']} {r['output']} | "  # type: ignore[attr-defined]
            f"{r['verdict']} | {r['probes']} | {r['matches']} | {_fmt_p(r['p'])} | "  # type: ignore[arg-type]
            f"{'-' if lf is None else f'{lf:.2f}'} | {r['left']} | {r['wall']:.1f} |")
    section = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(merge_section(out.read_text() if out.exists() else "", _section_name(splits, args.alpha),
                                 section))
    print(section)


def _section_name(splits: Splits, alpha: float) -> str:
    return f"{splits.name}, alpha {alpha:g}"


TITLE = "# Verifier: probes per verdict, and suspects checked by one default watermark\n"


def merge_section(text: str, name: str, section: str) -> str:
    """``text`` with its ``## NAME`` section replaced by ``section`` (added if missing), in name order."""
    parts: dict[str, str] = {}
    for chunk in re.split(r"(?m)^(?=## )", text):
        if chunk.startswith("## "):
            parts[chunk.split("\n", 1)[0][3:].strip()] = chunk.rstrip() + "\n"
    parts[name] = section.rstrip() + "\n"
    return TITLE + "".join("\n" + parts[k] for k in sorted(parts))


if __name__ == "__main__":
    main()
