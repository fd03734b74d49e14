"""``wm fingerprint NAME``: a calibrated fingerprint, committed to the registry.

``--method cae`` generates conferrable adversarial examples of a registered
model (:mod:`fingerprint`, after Lukas, Zhang, Kerschbaum, ICLR 2021) and
calibrates their null on held-out references. ``--method akh`` (the owner's
mistakes that independent models get right) and ``--method sac`` (SAC-w or
SAC-m inputs) choose probes with generation references and commit a
model-level conformal null of ``--references`` K others
(:mod:`fingerprint.pipeline`), trained on the task's reference split (the
owner's own training data where the task has none) and kept in the reference
zoo under ``$WM_HOME/cache/zoo``. Either way the ``ProbeSet`` is stored for
NAME: sealed for the owner, its Merkle root and null signed and logged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import torch

from cli.main import Context, wm
from cli.progress import interactive
from core.arch import resolve_arch
from core.data import load_data
from core.errors import InputError, ModelFileError
from core.modelio import check_input_shape, file_digest, load_model, to_trainable, weights_digest
from fingerprint import EnsembleConfig, build_fingerprint, parse_cae
from fingerprint.akh import parse_akh
from fingerprint.pipeline import SelectionScheme, build_zoo_fingerprint
from fingerprint.sac import parse_sac
from fingerprint.zoo import ReferenceZoo, ZooRecipe

__all__ = ["fingerprint_cmd", "model_progress"]


@contextmanager
def model_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback: a bar per stage on a terminal, else silent."""
    if not interactive():
        yield lambda stage, done, total: None
        return
    bars: dict[str, Any] = {}
    last: dict[str, int] = {}
    try:

        def update(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                for b in bars.values():
                    b.render_finish()
                bars[stage] = click.progressbar(length=total, label=f"training {stage}",
                                                file=sys.stderr)
                bars[stage].__enter__()
                last[stage] = 0
            bars[stage].update(done - last[stage])
            last[stage] = done

        yield update
    finally:
        for b in bars.values():
            b.__exit__(None, None, None)


@wm.command("fingerprint")
@click.argument("name")
@click.option("--data", "data_spec", required=True,
              help="'digits' or 'fashion-mnist' (built in) or the .npz the model was trained on.")
@click.option("--model", "model_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The registered model file (.pt2); its SHA-256 must match the registry.")
@click.option("--size", default=100, show_default=True, type=click.IntRange(min=1),
              help="Fingerprint probes to keep.")
@click.option("--method", type=click.Choice(["cae", "akh", "sac"]), default="cae", show_default=True,
              help="cae: conferrable adversarial examples; akh: the owner's mistakes that "
              "references get right; sac: sample-correlation inputs (SAC-w, or sac-m by --scheme).")
@click.option("--surrogates", default=4, show_default=True, type=click.IntRange(min=1),
              help="cae: surrogates per architecture, in each of the generation and held-out sets.")
@click.option("--references", default=None, type=click.IntRange(min=2),
              help="cae: references per architecture per set (default 6); akh/sac: K, the "
              "conformal null's references (default 99; floor 1/(K+1)).")
@click.option("--generation", default=10, show_default=True, type=click.IntRange(min=1),
              help="akh: references that help choose the probes (disjoint from the null's).")
@click.option("--scheme", "scheme_spec", default=None,
              help="cae[:k=v,...] (eps, steps, lr, alpha, beta, gamma, conf, candidates, "
              "ref-weight, select); akh[:agree=F]; sac-w|sac-m[:seed=N]. Default: the method's.")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Training epochs of every ensemble member or reference (default: cae 30; "
              "akh/sac 30 on small data, 5 from 5,000 examples on).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seeds the ensembles, the seed inputs and the optimisation.")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Parallel training processes (default: CPU count).")
@click.option("--no-cache", is_flag=True, help="Retrain every ensemble member.")
@click.option("--reference-arch", "reference_archs", multiple=True,
              help="akh/sac: another architecture among the null's references (repeatable); the "
              "K references are split between the groups and the floor is the smallest group's.")
@click.option("--ray", "ray_address", default=None, envvar="WM_RAY_ADDRESS",
              help="akh/sac: train the references as Ray tasks on this cluster ('local' starts "
              "one here; extra wm[ray]). Default: local processes.")
@click.pass_obj
def fingerprint_cmd(ctx: Context, name: str, data_spec: str, model_path: Path, size: int,
                    method: str, surrogates: int, references: int | None, generation: int,
                    scheme_spec: str | None, epochs: int | None, seed: int, workers: int | None,
                    no_cache: bool, reference_archs: tuple[str, ...], ray_address: str | None) -> None:
    """Fingerprint registered model NAME (conferrable examples, AKH or SAC).

    cae: trains surrogates (on the model's answers) and references (on ground
    truth) of the model's own architecture and of the other family, optimises
    conferrable examples and calibrates the null on held-out models. akh/sac:
    chooses probes with generation references and commits the match bits of K
    other references as a conformal null. Either way the fingerprint is
    committed to the registry (sealed, signed, logged).
    """
    from registry.keys import load_owner_key

    if method != "cae":
        _zoo_fingerprint(ctx, name, data_spec, model_path, size, method, references or 99,
                         generation, scheme_spec, epochs, seed, workers, no_cache, ray_address,
                         reference_archs)
        return
    if ray_address is not None or reference_archs:
        raise InputError("--ray and --reference-arch apply to --method akh or sac")
    from registry.log import Registry

    base = parse_cae(scheme_spec or "cae")
    scheme = type(base)(**{**base.__dict__, "n": size})
    ensembles = EnsembleConfig(surrogates=surrogates, references=references or 6,
                               epochs=epochs or 30)
    key = load_owner_key(ctx.home)
    with Registry.open(ctx.registry_url, create=False) as reg:
        splits, loaded = _open_owner(reg, key, name, data_spec, model_path)
        owner = to_trainable(loaded).eval()
        seeds_x = torch.cat([splits.train.x, splits.test.x])
        seeds_y = torch.cat([splits.train.y, splits.test.y])
        with model_progress() as progress:
            fp = build_fingerprint(
                owner, owner_arch=loaded.arch, owner_digest=weights_digest(loaded.state_dict),
                train_x=splits.train.x, train_y=splits.train.y, seeds_x=seeds_x,
                seeds_y=seeds_y, num_classes=splits.num_classes, scheme=scheme,
                ensembles=ensembles, seed=seed,
                cache_dir=None if no_cache else ctx.home / "cache" / "fingerprint",
                workers=workers or os.cpu_count() or 1, progress=progress,
            )
        probeset_id = reg.add_probeset(key, name, fp.probes)
    cal = fp.calibration
    n = len(fp.probes)
    click.echo(f"fingerprint:       {fp.probes.scheme}")
    click.echo(f"committed:         probe set {probeset_id} for {name}, root "
               f"{fp.probes.root.hex()}")
    for g in cal.groups:
        rates = ", ".join(f"{k / n:.2f}" for k in g.matches)
        click.echo(f"held-out refs {g.group + ':':<8} match rates {rates} "
                   f"(upper bound on mean {g.mean_upper:.2f})")
    srates = ", ".join(f"{k / n:.2f}" for k in fp.surrogate_matches)
    click.echo(f"held-out surrogates: match rates {srates}")
    worst = min(fp.surrogate_matches)
    click.echo(f"null:              beta-binomial, mean {cal.null.mean:.3f}, fitted on "
               f"{cal.null.references} held-out references")
    click.echo(f"p-value floor:     {cal.null.p_floor:.3g} (what {cal.null.references} "
               "references can vouch for; train more references to lower it)")
    click.echo(f"weakest held-out surrogate: {worst}/{n} matches, p = {cal.p_value(worst):.3g}")


def _open_owner(reg: Any, key: Any, name: str, data_spec: str, model_path: Path) -> tuple[Any, Any]:
    """The registered model NAME's file, checked against the registry and the data: (splits, loaded)."""
    info = reg.model(name)
    if info.owner_key_id != key.key_id:
        raise InputError(f"model {name!r} belongs to another owner key")
    if not model_path.is_file():
        raise ModelFileError(f"model file {model_path} does not exist")
    if file_digest(model_path) != info.file_sha256:
        raise ModelFileError(f"{model_path} is not the file registered as {name!r} (SHA-256 differs)")
    splits = load_data(data_spec)
    loaded = load_model(model_path)
    check_input_shape(loaded, splits.input_shape, what=f"data {data_spec}")
    if loaded.num_classes != splits.num_classes:
        raise ModelFileError(f"{model_path} has {loaded.num_classes} classes, but data "
                             f"{data_spec} has {splits.num_classes}")
    return splits, loaded


def _zoo_fingerprint(ctx: Context, name: str, data_spec: str, model_path: Path, size: int,
                     method: str, references: int, generation: int, scheme_spec: str | None,
                     epochs: int | None, seed: int, workers: int | None, no_cache: bool,
                     ray_address: str | None, reference_archs: tuple[str, ...] = ()) -> None:
    """``--method akh|sac``: probes chosen with the zoo, a conformal null of K references."""
    from registry.keys import load_owner_key
    from registry.log import Registry

    spec = scheme_spec or ("akh" if method == "akh" else "sac-w")
    scheme: SelectionScheme
    if method == "akh":
        scheme = parse_akh(spec)
        scheme = type(scheme)(n=size, agree=scheme.agree)
    else:
        sac = parse_sac(spec)
        scheme = type(sac)(n=size, mode=sac.mode, seed=sac.seed if "seed=" in spec else seed)
    key = load_owner_key(ctx.home)
    with Registry.open(ctx.registry_url, create=False) as reg:
        splits, loaded = _open_owner(reg, key, name, data_spec, model_path)
        if loaded.arch is None:
            raise ModelFileError(f"{model_path} does not record its architecture; the references "
                                 "must include it")
        owner = to_trainable(loaded).eval()
        ref = splits.reference if splits.reference is not None else splits.train
        big = len(ref) >= 5000
        archs = list(dict.fromkeys([loaded.arch, *reference_archs]))
        for a in archs:
            resolve_arch(a)
        recipes = [ZooRecipe(a, epochs=epochs or (5 if big else 30), batch_size=128 if big else 64)
                   for a in archs]
        recipe = recipes[0]
        zoo = ReferenceZoo(ref.x, ref.y, splits.num_classes,
                           cache_dir=None if no_cache else ctx.home / "cache" / "zoo")
        with model_progress() as progress:
            fp = build_zoo_fingerprint(
                owner, scheme, owner_arch=loaded.arch,
                pool_x=torch.cat([splits.train.x, splits.test.x]),
                pool_y=torch.cat([splits.train.y, splits.test.y]), zoo=zoo, recipes=recipes,
                references=references, generation=generation, input_range=splits.input_range,
                workers=workers or os.cpu_count() or 1, progress=progress, ray_address=ray_address,
            )
        probeset_id = reg.add_probeset(key, name, fp.probes)
    n = len(fp.probes)
    scores = fp.null.reference_scores(list(range(n)))
    where = ("reference split" if splits.reference is not None
             else "owner's training data (no reference split)")
    click.echo(f"fingerprint:       {fp.probes.scheme} ({fp.selection.candidates} candidates)")
    click.echo(f"committed:         probe set {probeset_id} for {name}, root {fp.probes.root.hex()}")
    groups = ", ".join(f"{k} {a}" for a, k in fp.null.group_sizes.items())
    click.echo(f"null:              conformal, K = {fp.null.references} references ({groups}; "
               f"{recipe.name}) on the {where}; their match rates "
               f"{min(scores) / n:.2f}-{max(scores) / n:.2f} (mean {sum(scores) / len(scores) / n:.2f})")
    click.echo(f"p-value floor:     {fp.null.p_floor:.3g} (1/(K+1) of the smallest group; train more "
               "references to lower it)")
    click.echo(f"CPU time:          {fp.cpu_s:.1f} s (references from the zoo cost nothing)")
