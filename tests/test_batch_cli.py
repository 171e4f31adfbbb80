"""flask remove INPUT... --out DIR: the same pipeline as HTTP, files and folders, per-file failures."""
from pathlib import Path

from PIL import Image

from tests.conftest import image_bytes, photo


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
