"""``wm serve``: parsing and printing only."""

from __future__ import annotations

from pathlib import Path

import click

from cli.main import _set_torch_threads, wm
from core.errors import InputError


@wm.command("serve")
@click.argument("model_path", metavar="MODEL.pt2", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port to bind; 0 lets the system pick a free one (the URL printed says which).")
@click.option("--name", default=None, help="Model name in the URLs (default: the file's stem).")
@click.option("--output", default="labels", show_default=True,
              type=click.Choice(["labels", "probabilities", "logits"]),
              help="What the model answers.")
@click.option("--max-body-bytes", default=64 << 20, show_default=True, type=click.IntRange(min=1024),
              help="Largest request body accepted (larger: 413).")
@click.option("--body-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds a client may take to send a whole request body (longer: 408).")
def serve_cmd(model_path: str, host: str, port: int, name: str | None, output: str,
              max_body_bytes: int, body_timeout: float) -> None:
    """Serve MODEL.pt2 over the Open Inference Protocol V2 (and V1 :predict).

    POST /v2/models/NAME/infer, GET /v2/models/NAME; also
    POST /v1/models/NAME:predict and POST /predictions/NAME. Prints the
    bound URL on stderr once it accepts connections.
    """
    from core.modelio import load_model
    from core.serving import bind, run_server, url_of
    from verifier.server import ServedModel, build_app
    from verifier.wire.incoming import BodyLimits

    model = load_model(model_path)
    _set_torch_threads()
    model_name = name or Path(model_path).stem
    if not model_name or "/" in model_name or ":" in model_name:
        raise InputError(f"--name must not be empty or contain '/' or ':', got {model_name!r}")
    limits = BodyLimits(max_bytes=max_body_bytes, timeout=body_timeout,
                        max_buffered=4 * max_body_bytes)
    app = build_app({model_name: ServedModel(model, output)}, limits)  # type: ignore[arg-type]
    sock = bind(host, port)
    click.echo(f"serving {model_path} as {model_name!r} ({output}) at "
               f"{url_of(sock)}/v2/models/{model_name}/infer", err=True)
    try:
        run_server(app, sock)
    finally:
        app.state.reader.close()
        sock.close()
