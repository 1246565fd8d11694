"""Write a default model as an fp32 Hugging Face folder, optionally with its quantization grid broken.

SmolLM2 ships only as a Q4_1 GGUF, so its "fp32 weights" are 16 levels per block of 32: any
int4 quantizer that finds a float zero point lands back on that grid, which says nothing of how
it does on a model trained in bf16. `--jitter F` adds Gaussian noise of F times each block's
Q4_1 step (range / 15 over 32 consecutive inputs) to every layer matrix, so the weights are
genuinely continuous again. `--uniform` draws the noise uniformly within half a step either side
(F = 1): a float model that rounds back to the file's very blocks, as the original bf16 weights
did. Gaussian noise of F = 0.5 is rougher: it takes SmolLM2's perplexity on our reference text
from 15.4 to 42. bench/quant_sweep.py measures every variant against the jittered model's own
fp32 engine. The embedding (Q8_0 in the file) is left as it is.

    python bench/float_folder.py OUT [--source smollm2-135m-instruct] [--jitter 0.5 [--uniform]] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def jitter_(weight, fraction: float, generator, uniform: bool) -> None:
    """Add noise of `fraction` x the Q4_1 step of each block of 32 inputs, in place ([out, in] weight):
    Gaussian with that deviation, or uniform over that width."""
    import torch

    out_features, in_features = weight.shape
    blocks = weight.reshape(out_features, -1, 32) if in_features % 32 == 0 else weight.reshape(out_features, 1, in_features)
    step = (blocks.amax(dim=2, keepdim=True) - blocks.amin(dim=2, keepdim=True)) / 15
    if uniform:
        noise = (torch.rand(blocks.shape, generator=generator, dtype=blocks.dtype) - 0.5) * step * fraction
    else:
        noise = torch.randn(blocks.shape, generator=generator, dtype=blocks.dtype) * step * fraction
    weight.copy_((blocks + noise).reshape(out_features, in_features))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", default="smollm2-135m-instruct")
    parser.add_argument("--jitter", type=float, default=0.0, help="noise, in Q4_1 steps of each block (default 0: the de-quantized weights as they are)")
    parser.add_argument("--uniform", action="store_true", help="uniform noise over --jitter steps (1: anywhere that rounds back to the block's level)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from export.loading import load_decoder
    from export.sources import resolve_source

    loaded = load_decoder(resolve_source(args.source))
    if args.jitter:
        generator = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for name, parameter in loaded.model.named_parameters():
                if parameter.ndim == 2 and ".layers." in name:
                    jitter_(parameter.data, args.jitter, generator, args.uniform)
    loaded.model.save_pretrained(args.out)
    loaded.tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out}" + (f" (layer matrices jittered by {args.jitter} Q4_1 steps, {'uniform' if args.uniform else 'Gaussian'})" if args.jitter else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
