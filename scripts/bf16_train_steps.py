"""Time one training step of a config's trained part (adapted blocks + head) in fp32 and in bf16 autocast.

The step is what a cached-feature training step runs: the adapted ViT blocks from cached tokens, the head,
cross-entropy at the input size, backward and an AdamW step, on random tokens of the config's image size.
It tells whether ``train.precision: auto`` should train in bf16 on this CPU (docs/benchmarks.md,
"bf16 autocast training on a CPU"); print the CPU flags beside the figures.

    python scripts/bf16_train_steps.py configs/ycor.yaml                      # the config's head
    python scripts/bf16_train_steps.py configs/ycor.yaml model.head.name=dpt  # with overrides
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from offroadseg.config import config_from_dict, parse_override, read_config_dict, set_dotted
from offroadseg.models.factory import build_segmentor


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    data = read_config_dict(argv[0])
    for text in argv[1:]:
        set_dotted(data, *parse_override(text))
    cfg = config_from_dict(data, source=argv[0])
    torch.manual_seed(0)
    model = build_segmentor(cfg.model, num_classes=8).train()
    backbone = model.backbone
    height, width = cfg.data.image_size
    ph, pw = model.padded_size(height, width)
    grid = (ph // model.patch_size, pw // model.patch_size)
    batch, tokens_n = cfg.train.batch_size, grid[0] * grid[1]
    dim, prefix = backbone.hidden_size, backbone.num_prefix_tokens
    early_n = len([i for i in backbone.layer_indices if i < backbone.cache_start])
    tokens = (
        torch.randn(batch, prefix + tokens_n, dim) if backbone.cache_start < backbone.num_layers else None
    )
    early = [torch.randn(batch, tokens_n, dim) for _ in range(early_n)]
    target = torch.randint(0, 8, (batch, height, width))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = {}
    for precision in ("fp32", "bf16"):

        def step(bf16: bool = precision == "bf16") -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model.forward_head(
                    model.features_from_cache(tokens, early, (height, width)), (height, width)
                )
                loss = F.cross_entropy(logits.float(), target)
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(2):  # warm-up
            step()
        start, runs = time.perf_counter(), 4
        for _ in range(runs):
            step()
        times[precision] = (time.perf_counter() - start) / runs
        print(f"{precision}: {times[precision]:.3f} s/step (batch {batch}, {height}x{width})", flush=True)
    print(f"bf16 autocast: {times['fp32'] / times['bf16']:.2f}x fp32; threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main(sys.argv[1:])
