"""Flask CLI commands: `prepare-model NAME [--source FILE]` and the batch `remove INPUT... --out DIR [options]`."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, TypeVar

import click
from flask import Flask, current_app
from tqdm import tqdm

from app import pipeline
from app.config import ALLOWED_EXTENSIONS, Config
from app.errors import ApiError
from app.services import model_prepare, model_store


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
            if name in model_store.BUILT_FROM:
                source = source or (config.isnet_source if name == model_store.TINY else None)
                found = model_prepare.prepare_model(name, config.model_dir, source, config.model_base_url)
            else:
                found = model_store.fetch_into_dir(spec, config.model_dir, config.model_base_url)
        except model_store.ModelUnavailable as exc:
            raise click.ClickException(str(exc)) from None
        digest = model_store.sha256_of(found.path)
        click.echo(f"{name}: {found.path} ({found.path.stat().st_size / 1e6:.1f} MB, sha256 {digest}, {found.source})")


@dataclass(frozen=True)
class Job:
    """One input image and where its result goes: `folder` (relative to --out) and the result's stem."""

    path: Path
    folder: Path
    stem: str


def collect_inputs(inputs: tuple[Path, ...], skip: Path | None = None) -> list[Job]:
    """Files as given (their results go straight under --out) and the accepted images inside folders,
    recursively and sorted, keeping their sub-folders. `skip` (the output folder) is never read from.

    Two inputs whose results would land on the same name (x.png and x.jpg side by side) get their
    extension added to the stem (x_png, x_jpg); any clash left after that is a usage error.
    """
    found: list[tuple[Path, Path]] = []
    skip = skip.resolve() if skip is not None else None
    for item in inputs:
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                if not path.is_file() or path.suffix.lower().lstrip(".") not in ALLOWED_EXTENSIONS:
                    continue
                if skip is not None and path.resolve().is_relative_to(skip):
                    continue
                found.append((path, path.parent.relative_to(item)))
        else:
            found.append((item, Path()))
    by_target: dict[tuple[Path, str], list[Path]] = {}
    for path, folder in found:
        by_target.setdefault((folder, path.stem or "image"), []).append(path)
    jobs: list[Job] = []
    taken: dict[tuple[Path, str], Path] = {}
    for path, folder in found:
        stem = path.stem or "image"
        if len(by_target[(folder, stem)]) > 1:
            stem = f"{stem}_{path.suffix.lstrip('.').lower()}" if path.suffix else stem
        if (folder, stem) in taken:
            raise click.UsageError(f"{taken[(folder, stem)]} and {path} would both be written to "
                                   f"{folder / stem}; process them separately or give different --out folders")
        taken[(folder, stem)] = path
        jobs.append(Job(path, folder, stem))
    return jobs


T = TypeVar("T")


def _flag(flag: str, parse: Callable[[str | None], T], text: str | None) -> T:
    """Parse a flag with the HTTP form's parser, so both give the same message; a bad value is a usage error."""
    try:
        return parse(text)
    except ApiError as exc:
        raise click.BadParameter(exc.message, param_hint=flag) from None


@dataclass(frozen=True)
class Framing:
    """The flags shared with the HTTP options of the same names (each parsed by the pipeline's own parser)."""

    roi: str | None = None
    scale: str | None = None
    position: str | None = None
    max_megapixels: str | None = None
    semitransparency: bool = True
    refine: bool = True
    decontaminate: bool = True


def _batch_options(fmt: str | None, only_mask: bool, crop: bool, crop_margin: str | None, color: str | None,
                   bg_image: Path | None, framing: Framing = Framing()) -> pipeline.Options:
    """The same rules as the HTTP form: each bad or misplaced option is a usage error naming the flag."""
    if crop_margin is not None and not crop:
        raise click.UsageError("--crop-margin needs --crop")
    if color is not None and bg_image is not None:
        raise click.UsageError("use either --color or --bg-image, not both")
    if only_mask and (color is not None or bg_image is not None):
        raise click.UsageError("--only-mask writes the mask alone; it does not combine with --color or --bg-image")
    output_format = _flag("--format", pipeline.parse_format, fmt)
    rgba = _flag("--color", pipeline.parse_color, color)
    if rgba is not None and rgba[3] < 255 and output_format == "jpeg":
        raise click.UsageError("a colour with alpha below 255 needs --format png or webp; JPEG has no transparency")
    return pipeline.Options(fmt=output_format, only_mask=only_mask, crop=crop,
                            crop_margin=_flag("--crop-margin", pipeline.parse_margin, crop_margin), color=rgba,
                            roi=_flag("--roi", pipeline.parse_roi, framing.roi),
                            scale=_flag("--scale", pipeline.parse_scale, framing.scale),
                            position=_flag("--position", pipeline.parse_position, framing.position),
                            max_megapixels=_flag("--max-megapixels", pipeline.parse_megapixels,
                                                 framing.max_megapixels),
                            semitransparency=framing.semitransparency, refine=framing.refine,
                            decontaminate=framing.decontaminate)


def register_batch(app: Flask) -> None:
    @app.cli.command("remove")
    @click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                  help="output folder; input folders keep their sub-folders under it (default: PROCESSED_FOLDER)")
    @click.option("--format", "fmt", type=click.Choice(list(pipeline.FORMATS), case_sensitive=False),
                  help="output format (default png; jpeg with --color or --bg-image); auto: PNG where the result "
                       "has transparency, else JPEG; zip: color.jpg and alpha.png")
    @click.option("--only-mask", is_flag=True, help="write the 8-bit mask alone")
    @click.option("--crop", is_flag=True, help="crop to the subject")
    @click.option("--crop-margin", help="with --crop: margin around the subject, '20', '20px' or '10%%'; "
                                        "1, 2 or 4 values as in CSS")
    @click.option("--roi", help="region of interest 'x1 y1 x2 y2' in px or %%: only the subject inside is kept")
    @click.option("--scale", help="the subject's size on the canvas, 10%%-100%% (implies --position center)")
    @click.option("--position", help="'center' or one or two percentages (horizontal vertical) on the canvas")
    @click.option("--max-megapixels", help="at most this many million pixels in each result")
    @click.option("--semitransparency/--no-semitransparency", default=True,
                  help="--no-semitransparency: every pixel fully opaque or fully transparent")
    @click.option("--refine/--no-refine", default=True,
                  help="--no-refine: the model's mask as it is, not refined along the edge against the photo")
    @click.option("--decontaminate/--no-decontaminate", default=True,
                  help="--no-decontaminate: the photo's own colours in semi-transparent pixels")
    @click.option("--color", "--bg-color", "color",
                  help="put the subject on this colour instead of transparency (#RRGGBB, #RRGGBBAA, R,G,B, name)")
    @click.option("--bg-image", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="put the subject over this image, scaled to cover")
    @click.option("--max-dimension", type=click.IntRange(min=1),
                  help="long side of the results in pixels (default: each input's own size, up to MAX_PIXELS)")
    def remove(inputs: tuple[Path, ...], out_dir: Path | None, fmt: str | None, only_mask: bool, crop: bool,
               crop_margin: str | None, roi: str | None, scale: str | None, position: str | None,
               max_megapixels: str | None, semitransparency: bool, refine: bool, decontaminate: bool,
               color: str | None, bg_image: Path | None, max_dimension: int | None) -> None:
        """Remove the background of image files or folders without the HTTP server, at full size by default."""
        config: Config = current_app.config["PIXPORT"]
        service = current_app.extensions["isnet_tiny"]
        options = _batch_options(fmt, only_mask, crop, crop_margin, color, bg_image,
                                 Framing(roi, scale, position, max_megapixels, semitransparency, refine,
                                         decontaminate))
        # config.max_dimension caps HTTP results; here the default is the input's own size. No image that
        # passed open_checked's MAX_PIXELS check has a long side above max_pixels, so that never shrinks.
        run_config = replace(config, max_dimension=max_dimension or config.max_pixels)
        out_dir = out_dir or config.processed_folder
        jobs = collect_inputs(inputs, skip=out_dir if out_dir.exists() else None)
        background = bg_image.read_bytes() if bg_image is not None else None
        failures: list[tuple[Path, str]] = []
        written = 0
        for job in tqdm(jobs, unit="image", disable=len(jobs) < 2):
            try:
                data = job.path.read_bytes()
                if color is None and background is None:
                    result = pipeline.remove_background(data, job.stem, options, service, run_config)
                else:
                    result = pipeline.change_background(data, job.stem, options, service, run_config, background)
                target = out_dir / job.folder / result.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(result.payload)
            except ApiError as exc:
                failures.append((job.path, exc.message))
                continue
            except OSError as exc:
                failures.append((job.path, exc.strerror or str(exc)))
                continue
            written += 1
        for path, reason in failures:
            click.echo(f"failed: {path}: {reason}", err=True)
        click.echo(f"{written} written to {out_dir}, {len(failures)} failed, {len(jobs)} in all")
        if failures:
            raise SystemExit(1)
