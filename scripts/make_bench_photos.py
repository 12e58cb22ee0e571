#!/usr/bin/env python3
"""Makes full-size test photos for the benchmarks (deterministic): each of N
224 px dataset images is upscaled to a phone-camera size (1.2, 3, 6 or 12 MP,
cycling), given sensor-like noise so it compresses like a photo, and saved as a
quality-90 JPEG.   make_bench_photos.py SRC_DIR OUT_DIR [N]"""
import os, sys
import numpy as np
from PIL import Image

SIZES = [(1280, 960), (2048, 1536), (3000, 2000), (4032, 3024)]
src, out = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 120
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.lower().endswith(".jpg"))
step = max(1, len(files) // n)
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
for i, f in enumerate(files[::step][:n]):
    w, h = SIZES[i % len(SIZES)]
    img = Image.open(f).convert("RGB").resize((w, h), Image.BICUBIC)
    a = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(os.path.join(out, f"photo{i:04d}.jpg"), quality=90)
print(f"{min(n, len(files[::step]))} photos in {out}")
