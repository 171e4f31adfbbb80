"""Flask CLI commands: `flask --app app_isnet_tiny prepare-model NAME [--source FILE]`."""
from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app

from app.config import Config
from app.services import model_store
from app.services.model_prepare import prepare_tiny


def register_cli(app: Flask) -> None:
    @app.cli.command("prepare-model")
    @click.argument("name", type=click.Choice(list(model_store.CATALOGUE)))
    @click.option("--source", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="isnet-general-tiny only: a local IS-Net general-use file (fp32 or fp16) to build from")
    def prepare_model(name: str, source: Path | None) -> None:
        """Put model NAME into MODEL_DIR (download, copy or build), verified by sha256."""
        config: Config = current_app.config["PIXPORT"]
        spec = model_store.CATALOGUE[name]
        if source is not None and name != model_store.TINY:
            raise click.UsageError("--source is only for isnet-general-tiny")
        try:
            if name == model_store.TINY:
                found = prepare_tiny(config.model_dir, source or config.isnet_source, config.model_base_url)
            else:
                found = model_store.fetch_into_dir(spec, config.model_dir, config.model_base_url)
        except model_store.ModelUnavailable as exc:
            raise click.ClickException(str(exc)) from None
        digest = model_store.sha256_of(found.path)
        click.echo(f"{name}: {found.path} ({found.path.stat().st_size / 1e6:.1f} MB, sha256 {digest}, {found.source})")
