"""``wm train``: train a model on a built-in data set or an .npz, with a watermark mixed in."""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch

from cli.main import Context, wm
from cli.progress import epoch_progress
from core.arch import ARCHITECTURES, build_model, resolve_arch
from core.data import load_data
from core.errors import InputError
from core.modelio import save_model
from core.training import FASHION_MNIST_RECIPE, accuracy, default_recipe, train_classifier
from watermark import (
    DEFAULT_WATERMARK,
    WatermarkKey,
    WatermarkSecret,
    default_per_batch,
    parse_scheme,
    write_secret,
)
from watermark.hook import ChainedHooks, WatermarkHook
from watermark.schemes.base import EXPOSURES, mixing_for_run
from watermark.secret import secret_path


@wm.command("train")
@click.option("--data", "data_spec", default="digits", show_default=True,
              help="'digits' or 'fashion-mnist' (built in) or a path to an .npz with x and y.")
@click.option("--arch", default=None,
              help=f"{', '.join(ARCHITECTURES)}, or MODULE:FUNCTION for your own "
              "(called with input_shape and num_classes, returns an nn.Module). "
              "Default: the data's recipe (digits: cnn, fashion-mnist: convnet, flat features: mlp).")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Default: the data's recipe (digits: 30, fashion-mnist: "
              f"{FASHION_MNIST_RECIPE.epochs}).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seeds initialisation and shuffling (not the watermark key).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help=f"Default: the data's recipe (fashion-mnist: {FASHION_MNIST_RECIPE.batch_size}, else 64).")
@click.option("--watermark", "scheme_spec", default=DEFAULT_WATERMARK, show_default=True,
              help="SCHEME[:k=v,...] (trigger-set, content, noise, unrelated, margin, composite, dark, "
              "sleeper), 'extraction-robust' (the scheme recommended against extraction and "
              "distillation; sleeper is the one against stolen weights) or 'none'; "
              "several joined by '+' (e.g. trigger-set+extraction-robust) embed one set each.")
@click.option("--per-batch", default=None, type=click.IntRange(min=1),
              help="Watermark probes mixed into each batch. Default: the scheme's (margin, composite: 16; "
              f"others enough for each probe to be seen {EXPOSURES} times over the run, at most 6 per 100 "
              f"probes: {default_per_batch(parse_scheme(DEFAULT_WATERMARK).n, 450)} for the default "
              f"watermark on digits, {default_per_batch(parse_scheme(DEFAULT_WATERMARK).n, 2350)} on "
              "fashion-mnist). Where they are at most a tenth of the batch they take the place of "
              "as many examples (the batch keeps its size and cost); otherwise they are appended.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the model (.pt2); the watermark secret goes beside it.")
@click.option("--register", "register_name", default=None, metavar="NAME",
              help="Also register the model and its watermark under NAME (as `wm register`).")
@click.pass_obj
def train_cmd(ctx: Context, data_spec: str, arch: str | None, epochs: int | None, seed: int,
              batch_size: int | None, scheme_spec: str, per_batch: int | None, out: str,
              register_name: str | None) -> None:
    """Train a model, with a key-derived watermark mixed into its batches.

    Writes OUT (.pt2) and, unless --watermark none, OUT.wmkey: the secret
    watermark key and probes (mode 0600). Prints clean and watermark accuracy.
    With --register NAME the owner key is unlocked before training starts, so
    a wrong passphrase costs nothing.
    """
    out_path = Path(out)
    if out_path.suffix != ".pt2":
        raise InputError(f"--out must end in .pt2, got {out_path.name}")
    if arch is not None:
        resolve_arch(arch)
    owner_key = None
    if register_name is not None:
        from core.errors import RegistryError
        from registry import Registry
        from registry.keys import load_owner_key

        owner_key = load_owner_key(ctx.home)
        with Registry.open(ctx.registry_url) as reg:
            try:
                reg.model(register_name)
            except RegistryError:
                pass  # not registered yet: good
            else:
                raise InputError(f"a model named {register_name!r} is already registered")
    splits = load_data(data_spec)
    recipe = default_recipe(splits)
    arch = arch or recipe.arch
    epochs = epochs or recipe.epochs
    batch_size = batch_size or recipe.batch_size
    torch.manual_seed(seed)
    model = build_model(arch, splits.input_shape, splits.num_classes)
    hook = None
    secret = None
    hooks: list[WatermarkHook] = []
    if scheme_spec != "none":
        schemes = [parse_scheme(spec) for spec in scheme_spec.split("+")]
        if len({s.name for s in schemes}) != len(schemes):
            raise InputError(f"--watermark names one scheme twice: {scheme_spec}")
        if per_batch is not None and not any(s.mixes for s in schemes):
            how = ("soften every example's target" if schemes[0].family == "dark"
                   else "are written into the weights")
            raise InputError(f"--per-batch does not apply to {schemes[0].family} marks: they {how} and mix "
                             "nothing in")
        key = WatermarkKey.generate()  # one key; each scheme derives its own set from it
        sets = [s.probes(key, num_classes=splits.num_classes, input_shape=splits.input_shape,
                         data=splits.train, input_range=splits.input_range) for s in schemes]
        secret = WatermarkSecret(key=key, probes=sets[0], more=tuple(sets[1:]))
        for scheme, probes in zip(schemes, sets, strict=True):
            k, in_place = mixing_for_run(scheme, len(probes), train_size=len(splits.train), epochs=epochs,
                                         batch_size=batch_size, per_batch=per_batch)
            h = scheme.hook(probes, key=key, model=model, data=splits.train, per_batch=k)
            h.keep_batch_size = in_place
            hooks.append(h)
        # marks that soften the batch's own targets first; mixing hooks then append one-hot rows
        order = sorted(range(len(schemes)), key=lambda i: schemes[i].mixes)
        hook = ChainedHooks([hooks[i] for i in order])
    cpu = time.process_time()
    with epoch_progress(f"training {arch}", epochs) as progress:
        train_classifier(model, splits.train.x, splits.train.y, epochs=epochs, seed=seed,
                         batch_size=batch_size, lr=recipe.lr, schedule=recipe.schedule, hook=hook,
                         progress=progress)
    for h in hooks:
        if type(h).finish is not WatermarkHook.finish:
            click.echo(f"finishing:         {h.probes.scheme} (after training)", err=True)
        h.finish(model)
    cpu = time.process_time() - cpu
    save_model(model, out_path, input_shape=splits.input_shape, num_classes=splits.num_classes,
               arch=arch, input_range=splits.input_range, data=splits.recorded_name)
    clean = accuracy(model, splits.test.x, splits.test.y)
    click.echo(f"model:             {out_path}")
    click.echo(f"trained:           {arch}, {epochs} epochs of {batch_size} on {len(splits.train)} "
               f"{splits.name} examples, inputs in [{splits.input_range.low:g}, "
               f"{splits.input_range.high:g}]")
    click.echo(f"training time:     {cpu:.0f} s CPU ({cpu / epochs:.1f} s per epoch, "
               f"{torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''})")
    click.echo(f"clean accuracy:    {clean:.4f} on {len(splits.test)} {splits.name} test examples")
    if secret is not None:
        path = write_secret(secret_path(out_path), secret)
        for probes, h in zip(secret.sets, hooks, strict=True):
            rank = probes.rank
            wm_acc = accuracy(model, probes.inputs, probes.expected, rank=rank)
            click.echo(f"watermark:         {probes.scheme}, {h.mixing()}")
            click.echo(f"watermark accuracy: {wm_acc:.4f} on {len(probes)} probes"
                       f"{' (read as second choices)' if rank == 2 else ''} "
                       f"(chance {1 / splits.num_classes:.2f})")
        click.echo(f"watermark secret:  {path} (keep it private)")
    else:
        click.echo("watermark:         none")
    if owner_key is not None and register_name is not None:
        from registry import Registry, register_model

        with Registry.open(ctx.registry_url) as reg:
            result = register_model(reg, owner_key, out_path, register_name)
        click.echo(f"registered:        {register_name} (log entry {result.model_entry}"
                   + (f", watermark probe set {result.probeset_id})" if result.probeset_id is not None
                      else ")"))
