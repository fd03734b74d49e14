"""``wm demo``: the whole story on the built-in digits data, end to end."""

from __future__ import annotations

from pathlib import Path

import click

from cli.main import Context, wm
from core.arch import build_model
from core.data import load_digits
from core.modelio import load_model, save_model
from core.training import accuracy, predict, train_classifier
from watermark import TriggerSet, WatermarkHook, WatermarkKey, WatermarkSecret, write_secret
from watermark.secret import secret_path


@wm.command("demo")
@click.option("--out", "out", default="demo-out", show_default=True,
              type=click.Path(file_okay=False), help="Where the demo writes its files.")
@click.pass_obj
def demo_cmd(ctx: Context, out: str) -> None:
    """Train a watermarked model on digits and check the mark on it and on an independent model."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = load_digits()
    key = WatermarkKey.generate()
    probes = TriggerSet().probes(key, num_classes=10, input_shape=splits.input_shape)
    click.echo("1. training a watermarked CNN on digits (trigger-set, 100 probes)")
    marked = build_model("cnn", splits.input_shape, 10)
    train_classifier(marked, splits.train.x, splits.train.y, epochs=30, seed=0,
                     hook=WatermarkHook(probes))
    path = save_model(marked, out_dir / "owner.pt2", input_shape=splits.input_shape,
                      num_classes=10, arch="cnn")
    write_secret(secret_path(path), WatermarkSecret(key=key, probes=probes))
    click.echo("2. training an independent CNN (other seed, no watermark)")
    indep = build_model("cnn", splits.input_shape, 10)
    train_classifier(indep, splits.train.x, splits.train.y, epochs=30, seed=1)
    save_model(indep, out_dir / "independent.pt2", input_shape=splits.input_shape,
               num_classes=10, arch="cnn")
    click.echo("3. checking the watermark on each (exact binomial null, p0 = 1/10)\n")
    click.echo(f"{'model':<14} {'clean acc':>9} {'matches':>9} {'p-value':>10}")
    for name in ("owner", "independent"):
        m = load_model(out_dir / f"{name}.pt2")
        k = probes.match_count(predict(m, probes.inputs))
        click.echo(f"{name:<14} {accuracy(m, splits.test.x, splits.test.y):>9.4f} "
                   f"{f'{k}/{len(probes)}':>9} {probes.null.tail(k, len(probes)):>10.2e}")
    click.echo(f"\nfiles in {out_dir}/. This demo checks the models in-process; registration,"
               " fingerprints, the guard and black-box verification over HTTP join it as they land.")
