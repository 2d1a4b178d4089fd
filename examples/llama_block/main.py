"""The char GPT of examples/char_gpt with LLaMA-style blocks: RMSNorm, SwiGLU feed-forward, rotary positions.

    python examples/llama_block/main.py                 # 2000 iterations, same data, optimizer and schedule
    python examples/llama_block/main.py --iters 20      # a quick smoke run

The feed-forward width is 349 (SwiGLU has three matrices), so the model has 818,113 parameters against
the GPT-2-style model's 818,241; it has no learned position table (RoPE rotates q and k instead).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "char_gpt"))

from main import main  # noqa: E402  (examples/char_gpt/main.py: data, model, training loop, sampling)

if __name__ == "__main__":
    main(["--llama", *sys.argv[1:]])
