"""JPEG files and the RGB bytes PIL reads back from them, for lapidary-data's JPEG decoder tests.

Writes `crates/lapidary-data/tests/jpeg/`: a 4:2:0 baseline, a 4:2:2 progressive and a grayscale
progressive JPEG of odd sizes with noisy content, each beside `<name>.pil.rgb`, the bytes of
`Image.open(f).convert("RGB")` (what transformers' `load_image` gives the image processor).

    .venv/bin/python tools/reference/make_jpeg_fixtures.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, features

out = Path(__file__).resolve().parents[2] / "crates/lapidary-data/tests/jpeg"
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(7)
h, w = 11, 19
y, x = np.mgrid[0:h, 0:w]
base = np.stack([x * 13 % 256, y * 23 % 256, (x * y * 5) % 256], -1).astype(np.int32)
color = np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
Image.fromarray(color).save(out / "color-420-19x11.jpg", quality=85, subsampling=2)
gray = np.clip((x * 17 + y * 9)[..., None] % 256 + rng.integers(-30, 31, (h, w, 1)), 0, 255).astype(np.uint8)[..., 0]
Image.fromarray(gray[:7, :13]).save(out / "gray-progressive-13x7.jpg", quality=80, progressive=True)
Image.fromarray(color[:9, :15]).save(out / "color-422-progressive-15x9.jpg", quality=92, subsampling=1, progressive=True)
for name in ["color-420-19x11", "gray-progressive-13x7", "color-422-progressive-15x9"]:
    rgb = np.asarray(Image.open(out / f"{name}.jpg").convert("RGB"))
    (out / f"{name}.pil.rgb").write_bytes(rgb.tobytes())
print(f"wrote {out} (Pillow with libjpeg-turbo {features.version('libjpeg_turbo')})")
