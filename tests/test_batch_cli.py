"""flask remove INPUT... --out DIR: the same pipeline as HTTP, files and folders, per-file failures.

make_app runs the 64 px disc model (the disc_model mark), which finds photo()'s disc; `fast` a
32 px model that finds nothing, for the tests of files and options alone.
"""
from pathlib import Path

import pytest

from PIL import Image

from tests.conftest import image_bytes, photo, tiny_onnx

pytestmark = pytest.mark.disc_model


def write_inputs(folder: Path) -> None:
    folder.mkdir()
    (folder / "one.png").write_bytes(image_bytes(photo((40, 30)), "PNG"))
    (folder / "two.jpg").write_bytes(image_bytes(photo((30, 40)), "JPEG"))
    (folder / "notes.txt").write_text("ignored: not an image extension")


def test_folder_to_transparent_pngs(make_app, tmp_path: Path):
    write_inputs(tmp_path / "in")
    result = make_app().test_cli_runner().invoke(args=["remove", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "2 written" in result.output and "0 failed" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["nobg_one.png", "nobg_two.png"]
    assert Image.open(tmp_path / "out" / "nobg_one.png").mode == "RGBA"


def test_colour_and_format(make_app, tmp_path: Path):
    write_inputs(tmp_path / "in")
    result = make_app().test_cli_runner().invoke(
        args=["remove", str(tmp_path / "in" / "one.png"), "--out", str(tmp_path / "out"), "--color", "#00FF00", "--format", "webp"]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "colored_one.webp"
    assert Image.open(out).format == "WEBP"


def test_failures_are_reported_and_exit_non_zero(make_app, tmp_path: Path):
    write_inputs(tmp_path / "in")
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not really a png")
    result = make_app().test_cli_runner().invoke(args=["remove", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "failed: " in result.output and "broken.png" in result.output and "2 written" in result.output


def test_bad_colour_is_a_usage_error(make_app, tmp_path: Path):
    write_inputs(tmp_path / "in")
    result = make_app().test_cli_runner().invoke(args=["remove", str(tmp_path / "in"), "--color", "nope"])
    assert result.exit_code == 2 and "#RRGGBB" in result.output


def test_default_output_is_processed_folder(make_app, env, tmp_path: Path):
    write_inputs(tmp_path / "in")
    result = make_app().test_cli_runner().invoke(args=["remove", str(tmp_path / "in" / "one.png")])
    assert result.exit_code == 0, result.output
    assert (Path(env["PROCESSED_FOLDER"]) / "nobg_one.png").is_file()


@pytest.fixture
def fast(make_app, tmp_path: Path):
    """make_app on a 32 px model: these tests are about files and options, not mask quality."""
    model = tiny_onnx(tmp_path / "tiny.onnx")

    def factory(**env: str):
        return make_app(MODEL_PATH=str(model), **env)

    return factory


def run(make_app, *args: str, **env: str):
    return make_app(**env).test_cli_runner().invoke(args=["remove", *args])


def test_full_size_by_default_whatever_max_dimension_says(fast, tmp_path: Path):
    """MAX_DIMENSION caps HTTP results only; the command keeps the input's size unless asked."""
    (tmp_path / "big.png").write_bytes(image_bytes(photo((300, 200)), "PNG"))
    result = run(fast, str(tmp_path / "big.png"), "--out", str(tmp_path / "out"), MAX_DIMENSION="64")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "nobg_big.png").size == (300, 200)
    smaller = run(fast, str(tmp_path / "big.png"), "--out", str(tmp_path / "small"), "--max-dimension", "150")
    assert smaller.exit_code == 0, smaller.output
    assert Image.open(tmp_path / "small" / "nobg_big.png").size == (150, 100)
    assert run(fast, str(tmp_path / "big.png"), "--max-dimension", "0").exit_code == 2


def test_folder_structure_is_kept(fast, tmp_path: Path):
    source = tmp_path / "in"
    (source / "a" / "b").mkdir(parents=True)
    (source / "top.png").write_bytes(image_bytes(photo((20, 20)), "PNG"))
    (source / "a" / "b" / "deep.jpg").write_bytes(image_bytes(photo((20, 20)), "JPEG"))
    (source / "a" / "top.png").write_bytes(image_bytes(photo((20, 20)), "PNG"))  # same name, another folder
    (source / "a" / "twin.png").write_bytes(image_bytes(photo((20, 20)), "PNG"))
    (source / "a" / "twin.webp").write_bytes(image_bytes(photo((20, 20)), "WEBP"))  # same stem, same folder
    loose = tmp_path / "loose.png"
    loose.write_bytes(image_bytes(photo((20, 20)), "PNG"))
    result = run(fast, str(source), str(loose), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["a/b/nobg_deep.png", "a/nobg_top.png", "a/nobg_twin_png.png", "a/nobg_twin_webp.png",
                       "nobg_loose.png", "nobg_top.png"]


def test_output_inside_the_input_is_not_read_again(fast, tmp_path: Path):
    write_inputs(tmp_path / "in")
    out = tmp_path / "in" / "out"
    assert run(fast, str(tmp_path / "in"), "--out", str(out)).exit_code == 0
    again = run(fast, str(tmp_path / "in"), "--out", str(out))
    assert again.exit_code == 0 and "2 in all" in again.output, again.output


def test_two_inputs_onto_one_name_is_a_usage_error(fast, tmp_path: Path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.png").write_bytes(image_bytes(photo((20, 20)), "PNG"))
    result = run(fast, str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "would both be written" in result.output


def test_mask_crop_margin_and_format(make_app, tmp_path: Path):
    """make_app, not fast: cropping needs a mask that finds the subject."""
    (tmp_path / "p.png").write_bytes(image_bytes(photo((120, 90)), "PNG"))
    tight = run(make_app, str(tmp_path / "p.png"), "--out", str(tmp_path / "tight"), "--only-mask", "--crop")
    loose = run(make_app, str(tmp_path / "p.png"), "--out", str(tmp_path / "loose"), "--only-mask", "--crop",
                "--crop-margin", "10px", "--format", "WEBP")
    assert tight.exit_code == 0 and loose.exit_code == 0, tight.output + loose.output
    small = Image.open(tmp_path / "tight" / "mask_p.png")
    large = Image.open(tmp_path / "loose" / "mask_p.webp")
    assert small.mode == "L" and large.format == "WEBP"
    assert small.width < 120 and large.width > small.width


def test_bg_image(fast, tmp_path: Path):
    (tmp_path / "p.png").write_bytes(image_bytes(photo((80, 60)), "PNG"))
    (tmp_path / "red.png").write_bytes(image_bytes(Image.new("RGB", (10, 10), (255, 0, 0)), "PNG"))
    result = run(fast, str(tmp_path / "p.png"), "--out", str(tmp_path / "out"), "--bg-image", str(tmp_path / "red.png"))
    assert result.exit_code == 0, result.output
    composed = Image.open(tmp_path / "out" / "colored_p.jpg")
    assert composed.size == (80, 60)
    red, green, blue = composed.getpixel((1, 1))
    assert red > 200 and green < 60 and blue < 60


def test_bg_color_alias_and_translucent_colour(fast, tmp_path: Path):
    (tmp_path / "p.png").write_bytes(image_bytes(photo((40, 30)), "PNG"))
    result = run(fast, str(tmp_path / "p.png"), "--out", str(tmp_path / "out"), "--bg-color", "#0000FF80")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "colored_p.png").mode == "RGBA"


@pytest.mark.parametrize("args, message", [
    (["--crop-margin", "5"], "--crop-margin needs --crop"),
    (["--crop", "--crop-margin", "lots"], "crop_margin"),
    (["--color", "red", "--bg-image", "BG"], "either --color or --bg-image"),
    (["--only-mask", "--color", "red"], "--only-mask"),
    (["--color", "#0000FF80", "--format", "jpeg"], "JPEG has no transparency"),
    (["--format", "gif"], "gif"),
])
def test_conflicting_or_bad_options_are_usage_errors(fast, tmp_path: Path, args, message):
    (tmp_path / "p.png").write_bytes(image_bytes(photo((20, 20)), "PNG"))
    args = [str(tmp_path / "p.png") if a == "BG" else a for a in args]
    result = run(fast, str(tmp_path / "p.png"), "--out", str(tmp_path / "out"), *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()
