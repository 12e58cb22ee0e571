#!/usr/bin/env python3
"""The peer pipeline (../shared/bench/peer_pipeline.py) as a user would extend
it for phone photos: `pillow-heif` registered as Pillow's HEIC/HEIF opener,
and the peer's extension filter widened to .heic/.heif/.avif. Pillow reads
AVIF itself where its build has the plugin. Everything else is the peer's own
code, unchanged, run through its `main()`.

    peer_with_heif.py PEER_SCRIPT MODEL DIR [peer flags...]
"""
import importlib.util
import sys

import pillow_heif
from PIL import features

pillow_heif.register_heif_opener()
peer_path = sys.argv[1]
spec = importlib.util.spec_from_file_location("peer_pipeline", peer_path)
peer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peer)
peer.EXTS |= {".heic", ".heif", ".avif"}
print(f"peer: pillow-heif {pillow_heif.__version__}, Pillow AVIF plugin: {features.check('avif')}", file=sys.stderr)
sys.argv = [peer_path] + sys.argv[2:]
peer.main()
