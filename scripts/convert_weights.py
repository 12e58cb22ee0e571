"""Converts a PyTorch state dict (.pth, any torch.save format, including the
legacy pre-1.6 one) into .safetensors, which the `training` binary reads.

    .venv/bin/python scripts/convert_weights.py resnet50-11ad3fa6.pth resnet50.safetensors

Only tensors are kept; nothing is executed from the file (weights_only=True).
"""
import sys

import torch
from safetensors.torch import save_file


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        sys.exit(f"error: {src} holds no tensors")
    save_file(tensors, dst)
    print(f"wrote {len(tensors)} tensors to {dst}")


if __name__ == "__main__":
    main()
