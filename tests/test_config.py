from pathlib import Path

import pytest

from app.config import Config, ConfigError


def test_defaults(tmp_path: Path):
    config = Config.from_env({"MODEL_DIR": str(tmp_path)})
    assert (config.port, config.max_file_size_mb, config.max_dimension, config.ort_threads) == (5000, 8, 1024, 1)
    assert config.bg_model is None and config.model_path is None
    assert config.max_content_length == 8 * 1024 * 1024


def test_values_are_read(tmp_path: Path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    config = Config.from_env(
        {"PORT": "8080", "BG_MODEL": "u2netp", "MODEL_PATH": str(model), "ORT_THREADS": "2",
         "MAX_FILE_SIZE_MB": "4", "MAX_DIMENSION": "512", "MODEL_DIR": str(tmp_path), "PRELOAD_MODEL": "1"}
    )
    assert (config.port, config.bg_model, config.model_path, config.ort_threads) == (8080, "u2netp", model, 2)
    assert (config.max_file_size_mb, config.max_dimension, config.preload_model) == (4, 512, True)


@pytest.mark.parametrize(
    "name, value",
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("ORT_THREADS", "0"),
        ("INFERENCE_SLOTS", "0"),
        ("INFERENCE_SLOTS", "9"),
        ("MAX_FILE_SIZE_MB", "-1"),
        ("MAX_DIMENSION", "big"),
        ("BG_MODEL", "u2net-huge"),
        ("MODEL_PATH", "/nonexistent/model.onnx"),
        ("FLASK_ENV", "staging"),
        ("MODEL_BASE_URL", "ftp://example"),
        ("QUEUE_TIMEOUT_S", "soon"),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({"MODEL_DIR": str(tmp_path), name: value})


def test_unwritable_dir_is_refused(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(ConfigError, match="MODEL_DIR"):
        Config.from_env({"MODEL_DIR": str(blocker / "sub")})


@pytest.mark.parametrize("raw, expected", [("", False), ("0", False), ("1", True), ("true", True), ("no", False)])
def test_ort_arena(tmp_path: Path, raw: str, expected: bool):
    assert Config.from_env({"MODEL_DIR": str(tmp_path), "ORT_ARENA": raw}).ort_arena is expected


def test_ort_arena_rejects_junk(tmp_path: Path):
    with pytest.raises(ConfigError, match="ORT_ARENA"):
        Config.from_env({"MODEL_DIR": str(tmp_path), "ORT_ARENA": "fast"})
