"""Flask CLI commands: `prepare-model NAME [--source FILE]` and the batch `remove INPUT... --out DIR`."""
from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app
from tqdm import tqdm

from app import pipeline
from app.config import ALLOWED_EXTENSIONS, Config
from app.errors import ApiError
from app.services import model_store
from app.services.model_prepare import prepare_tiny


def register_cli(app: Flask) -> None:
    register_batch(app)

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


def collect_inputs(inputs: tuple[Path, ...]) -> list[Path]:
    """Files as given, and the accepted images inside folders (recursively, sorted)."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in ALLOWED_EXTENSIONS)
        else:
            found.append(item)
    return found


def _unique(path: Path, taken: set[Path]) -> Path:
    candidate, counter = path, 1
    while candidate in taken:
        candidate = path.with_name(f"{path.stem}_{counter}{path.suffix}")
        counter += 1
    taken.add(candidate)
    return candidate


def register_batch(app: Flask) -> None:
    @app.cli.command("remove")
    @click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                  help="output folder (default: PROCESSED_FOLDER)")
    @click.option("--color", help="put the subject on this colour instead of transparency (#RRGGBB, R,G,B, name)")
    @click.option("--format", "fmt", type=click.Choice(["png", "webp", "jpeg"]), help="output format")
    @click.option("--only-mask", is_flag=True, help="write the mask alone")
    @click.option("--crop", is_flag=True, help="crop to the subject")
    def remove(inputs: tuple[Path, ...], out_dir: Path | None, color: str | None, fmt: str | None,
               only_mask: bool, crop: bool) -> None:
        """Remove the background of image files or folders without the HTTP server."""
        config: Config = current_app.config["PIXPORT"]
        service = current_app.extensions["isnet_tiny"]
        out_dir = out_dir or config.processed_folder
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            options = pipeline.Options(fmt=fmt, only_mask=only_mask, crop=crop, color=pipeline.parse_color(color))
        except ApiError as exc:
            raise click.BadParameter(exc.message, param_hint="--color") from None
        files = collect_inputs(inputs)
        failures: list[tuple[Path, str]] = []
        taken: set[Path] = set()
        written = 0
        for path in tqdm(files, unit="image", disable=len(files) < 2):
            stem = path.stem or "image"
            try:
                data = path.read_bytes()
                if color is None:
                    result = pipeline.remove_background(data, stem, options, service, config)
                else:
                    result = pipeline.change_background(data, stem, options, service, config)
            except ApiError as exc:
                failures.append((path, exc.message))
                continue
            except OSError as exc:
                failures.append((path, exc.strerror or str(exc)))
                continue
            _unique(out_dir / result.filename, taken).write_bytes(result.payload)
            written += 1
        for path, reason in failures:
            click.echo(f"failed: {path}: {reason}", err=True)
        click.echo(f"{written} written to {out_dir}, {len(failures)} failed, {len(files)} in all")
        if failures:
            raise SystemExit(1)
