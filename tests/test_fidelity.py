"""Masks from /remove agree with rembg's u2netp reference masks (IoU of alpha > 0.5 >= 0.99 on every photo).

The model's own mask is compared (refine=false): this checks the pre- and post-processing, which the edge
refinement then starts from (what refinement does is measured by bench/edges.py).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from app import create_app
from app.services.isnet_tiny_service import IsnetTinyService
from tests.conftest import FIXTURES, upload

PHOTOS = sorted((FIXTURES / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    """One app, so u2netp is loaded once for all the photos: their masks are under test, not the loading."""
    home = tmp_path_factory.mktemp("fidelity")
    folders = {name: home / name.lower() for name in ("MODEL_DIR", "UPLOAD_FOLDER", "PROCESSED_FOLDER")}
    for folder in folders.values():
        folder.mkdir()
    IsnetTinyService._instance = None
    yield create_app({"FLASK_ENV": "testing", **{name: str(folder) for name, folder in folders.items()}}).test_client()
    IsnetTinyService._instance = None


def agreement(alpha: np.ndarray, reference: Image.Image) -> tuple[float, float]:
    """IoU of alpha > 0.5 and mean absolute error, the reference resized (bilinear) to our size."""
    ref = np.asarray(reference.convert("L").resize(alpha.shape[::-1], Image.Resampling.BILINEAR))
    ours, theirs = alpha > 127, ref > 127
    union = np.logical_or(ours, theirs).sum()
    iou = np.logical_and(ours, theirs).sum() / union if union else 1.0
    return float(iou), float(np.abs(alpha.astype(np.float32) - ref).mean() / 255)


def test_fixtures_are_present():
    assert len(PHOTOS) == 6


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.stem)
def test_u2netp_masks_match_the_reference(client, photo: Path):
    response = client.post("/api/bg/remove", data=upload(photo.read_bytes(), photo.name, refine="false"))
    assert response.status_code == 200
    result = Image.open(io.BytesIO(response.data))
    assert max(result.size) <= 1024
    iou, mae = agreement(np.asarray(result.getchannel("A")), Image.open(FIXTURES / "masks" / f"{photo.stem}.u2netp.png"))
    assert iou >= 0.99, f"{photo.stem}: IoU {iou:.4f}"
    assert mae <= 0.01, f"{photo.stem}: MAE {mae:.4f}"
