"""`hf:<dir-or-id>`: a Hugging Face checkpoint as a model the pipeline can allocate bits for.

The task follows `config.json`'s architecture:

- **causal LM** (next token): windows of tokens; metrics are the mean KL(FP32 ‖ quantized)
  of the next-token distributions (primary, the loss sensitivity is measured on),
  perplexity of the real next tokens and top-1 next-token agreement with FP32.
- **encoder** (feature extraction): mean-pooled, L2-normalized embeddings; cosine to FP32.
- **sequence / image classification**: logits; KL to FP32 as the loss, top-1 agreement
  with FP32 (primary) and KL as metrics.

Every `Linear` and `Conv2d` is quantized (GPT-2's `Conv1D` becomes the `Linear` it is)
except the output head of a causal LM (tied to the input embeddings or not, it stays float
unless `quantize_head`); `describe_layers` lists every weight module with the reason it was
skipped. Layer names are the checkpoint's own (`model.layers.0.self_attn.q_proj`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine import InvalidSpecError
from zoo._base import Batch, ModelSpec
from zoo._hf_checkpoint import (
    HF_PREFIX,
    Checkpoint,
    check_checkpoint,
    load_model,
    load_tokenizer,
    resolve_checkpoint,
)
from zoo._hf_data import (
    BUILTIN_TEXT_NOTE,
    builtin_sources,
    builtin_texts,
    check_data_file,
    is_tensor_file,
    read_texts,
    split_indices,
    token_windows,
)

TASK_METRICS = {
    "causal-lm": ("kl", ("kl", "ppl", "top1_agreement")),
    "feature-extraction": ("cosine", ("cosine", "cosine_min")),
    "sequence-classification": ("agreement", ("agreement", "kl")),
    "image-classification": ("agreement", ("agreement", "kl")),
}
LOWER_IS_BETTER = {"kl", "ppl"}
WINDOW_TOKENS = 256
# (calibration, evaluation) samples per task: token windows, texts, images. A causal LM's
# calibrated rounding fits each layer to all its calibration windows: 4 windows (1024
# tokens, fewer than an MLP projection's 1536 inputs) left GPTQ fitting those windows, not
# the text (SmolLM2 uniform int4 KL on held-out text 0.149 with 4 windows, 0.100 with 32).
# Its losses (sensitivity, FP32 references kept per token) use the first `LOSS_WINDOWS`.
SAMPLES = {"causal-lm": (32, 8), "feature-extraction": (64, 256),
           "sequence-classification": (64, 256), "image-classification": (16, 32)}
LOSS_WINDOWS = 8
MAX_TEXT_TOKENS = 128
MAX_BATCH_TOKENS = 256  # one 256-token window per batch: an LLM pass keeps less alive
IMAGE_BATCH = 16


class HfModelSpec(ModelSpec):
    """A Hugging Face checkpoint with its data, loss and metrics.

    Args:
        source: `hf:<folder>` or `hf:<repo id in the local cache>`.
        data: A data file (see `zoo._hf_data`); text models default to the built-in text.
        name: The name reports and caches use (default: `source`).
        metric: The primary metric (default: the task's; see `TASK_METRICS`).
        estimator: The default sensitivity estimator (default: "fisher" for causal LMs,
            the base default otherwise).
        quantize_head: Quantize a causal LM's output head too.
        seed: Seed of the calibration / evaluation split.
        window_tokens: Tokens per causal-LM window.
        calibration_samples, evaluation_samples: Samples in each part: windows of a causal
            LM, texts of other text models, images (default: the task's, `SAMPLES`).
        device: "auto" (CUDA when present), "cpu" or "cuda": where the model, its batches
            and its quantized copies run.
    """

    default_activation_bits = None  # weight-only: what LLM deployments run
    # `fisher_loss` samples from the FP32 output itself: the Fisher estimator lets the
    # calibration references go (an LLM's take 200 MB) while it runs.
    fisher_loss_reads_targets = False

    def __init__(self, source: str, *, data: str | Path | None = None, name: str | None = None,
                 description: str = "", metric: str | None = None,
                 estimator: str | None = None, quantize_head: bool = False, seed: int = 0,
                 window_tokens: int = WINDOW_TOKENS, calibration_samples: int | None = None,
                 evaluation_samples: int | None = None, device: str = "auto") -> None:
        super().__init__()
        self.source = source if source.startswith(HF_PREFIX) else HF_PREFIX + source
        self.name = name or self.source
        self._data_path = check_data_file(data) if data is not None else None
        self._quantize_head = quantize_head
        self._seed = seed
        self._window = window_tokens
        self._n_samples = (calibration_samples, evaluation_samples)
        self.device = resolve_device(device)
        self._checkpoint: Checkpoint | None = None
        self._tokenizer: Any = None
        self._skip_reasons: dict[str, str] = {}
        self._samples: tuple[list[Any], list[Any]] | None = None
        self._metric_override, self._estimator_override = metric, estimator
        self.description = description or f"Hugging Face checkpoint {self.source}"
        self.notes: list[str] = []

    # -- the checkpoint ----------------------------------------------------------------------

    def checkpoint_folder(self) -> Path:
        """The checkpoint folder (subclasses may build it first)."""
        return resolve_checkpoint(self.source)

    def checkpoint(self) -> Checkpoint:
        if self._checkpoint is None:
            ckpt = check_checkpoint(self.checkpoint_folder(), self.source)
            self._checkpoint = ckpt
            primary, known = TASK_METRICS[ckpt.task]
            metric = self._metric_override or primary
            if metric not in known:
                raise InvalidSpecError(f"`metric` {metric!r} of model {self.name!r}: a "
                                       f"{ckpt.task} model reports {', '.join(known)}.")
            self._metric_override = metric
            if self._data_path is None and ckpt.task != "image-classification":
                self.notes.append(BUILTIN_TEXT_NOTE)
            if self._data_path is not None and ckpt.task == "image-classification" \
                    and not is_tensor_file(self._data_path):
                raise InvalidSpecError(f"`data` {str(self._data_path)!r}: an image model "
                                       f"takes a .npy / .pt tensor of images (N, 3, H, W).")
        return self._checkpoint

    @property
    def task(self) -> str:
        return self.checkpoint().task

    @property  # type: ignore[override]
    def primary_metric(self) -> str:
        self.checkpoint()  # sets the metric: the override, checked, or the task's own
        return self._metric_override or ""

    @property  # type: ignore[override]
    def higher_is_better(self) -> bool:
        return self.primary_metric not in LOWER_IS_BETTER

    @property
    def estimator_options(self) -> dict[str, dict[str, Any]]:
        """Estimator settings for this model: a causal LM's Fisher squares per token (a few
        long sequences per batch make the per-sequence form noisy)."""
        return {"fisher": {"form": "token"}} if self.task == "causal-lm" else {}

    @property  # type: ignore[override]
    def default_estimator(self) -> str:
        if self._estimator_override:
            return self._estimator_override
        return "fisher" if self.task == "causal-lm" else ModelSpec.default_estimator

    @property  # type: ignore[override]
    def default_group_size(self) -> int | None:
        """128, or the largest of 64 and 32 that divides every layer's reduction size (a
        group never straddles a row's end: SmolLM2's 576-wide rows take 64)."""
        sizes = {x.weight_shape[1] for x in self.layers() if len(x.weight_shape) > 1}
        for size in (128, 64, 32):
            if all(k % size == 0 for k in sizes):
                return size
        return 128

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.checkpoint())
        return self._tokenizer

    def _build(self) -> nn.Module:
        model = load_model(self.checkpoint()).to(self.device)
        self._skip_reasons = self._find_skips(model)
        self.skip_layers = tuple(self._skip_reasons)
        return model

    def _find_skips(self, model: nn.Module) -> dict[str, str]:
        """Linear / conv modules left float, with the reason."""
        out: dict[str, str] = {}
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        in_input = {id(m) for m in inputs.modules()} if isinstance(inputs, nn.Module) else set()
        for name, m in model.named_modules():
            if not name or not isinstance(m, nn.Linear | nn.Conv2d):
                continue
            if id(m) in in_input:
                out[name] = "input embedding (e.g. an image patch projection); kept float"
            elif m is head and self.task == "causal-lm":
                if not self._quantize_head:
                    tied = id(m.weight) in embeddings
                    out[name] = ("output head tied to the input embeddings; kept float"
                                 if tied else "output head; kept float") + \
                        " (quantize_head = true quantizes it)"
            elif id(m.weight) in embeddings:
                out[name] = "weights tied to an embedding table; kept float"
        return out

    def skip_reason(self, name: str, module: nn.Module) -> str:
        return self._skip_reasons.get(name) or super().skip_reason(name, module)

    # -- data --------------------------------------------------------------------------------

    def _texts(self) -> list[str]:
        return read_texts(self._data_path) if self._data_path is not None else builtin_texts()

    def _tensor_rows(self) -> torch.Tensor:
        from zoo._user import load_inputs

        assert self._data_path is not None
        return load_inputs(self._data_path)

    def _parts(self) -> tuple[list[Any], list[Any]]:
        """(calibration, evaluation) samples: token windows, token lists or image tensors."""
        task = self.task
        if task == "image-classification":
            return self._image_parts()
        if self._data_path is not None and is_tensor_file(self._data_path):
            rows = self._tensor_rows()
            if rows.is_floating_point() or rows.dim() != 2:
                raise InvalidSpecError(f"`data` {str(self._data_path)!r}: a text model takes "
                                       f"token ids, an integer tensor (N, T); got "
                                       f"{rows.dtype} {tuple(rows.shape)}.")
            vocab = int(self.checkpoint().config.get("vocab_size") or 0)
            if vocab and (int(rows.min()) < 0 or int(rows.max()) >= vocab):
                raise InvalidSpecError(f"`data` {str(self._data_path)!r}: token ids must lie in "
                                       f"0..{vocab - 1} (the model's vocabulary).")
            samples: list[Any] = [r.tolist() for r in rows]
        else:
            if task == "causal-lm" and self._data_path is None:
                return self._builtin_windows()
            texts = self._texts()
            if task == "causal-lm":
                samples = self._windows(texts)
                if len(samples) < 2:
                    raise InvalidSpecError(
                        f"`data` holds too little text: fewer than 2 windows of "
                        f"{self._window} tokens.")
            else:
                samples = texts
        cal, ev = split_indices(len(samples), *self._counts(), self._seed)
        return [samples[i] for i in cal], [samples[i] for i in ev]

    def _windows(self, texts: Sequence[str]) -> list[list[int]]:
        tok = self.tokenizer()
        ids = tok(list(texts), add_special_tokens=False)["input_ids"]
        return token_windows(ids, self._window, separator=tok.eos_token_id)

    def _builtin_windows(self) -> tuple[list[Any], list[Any]]:
        """Evaluation windows of Shakespeare; calibration windows half of the help topics,
        half of other Shakespeare paragraphs (never an evaluation window's text). Paragraphs
        are taken in a seeded order until the windows are full, so only what is used is
        tokenized."""
        n_cal, n_eval = self._counts()
        rng = random.Random(self._seed)
        pydoc, plays = (list(p) for p in builtin_sources())
        rng.shuffle(pydoc)
        rng.shuffle(plays)
        held_out = len(plays) // 2  # evaluation paragraphs: the first half of the shuffle
        evaluation = self._fill(plays[:held_out], n_eval)
        n_plays = n_cal // 2
        help_windows = self._fill(pydoc, n_cal - n_plays)
        play_windows = self._fill(plays[held_out:], n_plays)
        # interleaved, so that any first few (an estimator's `max_batches`) hold both kinds
        calibration = [w for pair in zip(help_windows, play_windows, strict=False)
                       for w in pair]
        calibration += help_windows[len(play_windows):] + play_windows[len(help_windows):]
        return calibration, evaluation

    def _fill(self, paragraphs: Sequence[str], count: int) -> list[list[int]]:
        """The first `count` token windows of `paragraphs` (tokenized 32 at a time)."""
        windows: list[list[int]] = []
        for start in range(0, len(paragraphs), 32):
            windows = self._windows(paragraphs[: start + 32])
            if len(windows) >= count:
                break
        return windows[:count]

    def _image_parts(self) -> tuple[list[Any], list[Any]]:
        size = int(self.checkpoint().config.get("image_size") or 224)
        if self._data_path is not None:
            x = self._tensor_rows()
            if x.dim() != 4 or x.shape[1] != int(self.checkpoint().config.get("num_channels", 3)):
                raise InvalidSpecError(f"`data` {str(self._data_path)!r}: images must be a "
                                       f"float tensor (N, C, H, W); got {tuple(x.shape)}.")
            x = x.float()
        else:
            from zoo._images import normalize, random_resized_crops

            x = normalize(random_resized_crops(sum(self._counts()), seed=self._seed, size=size))
            self.notes.append("no --data: using seeded crops of the photos scikit-learn "
                              "and scikit-image ship")
        cal, ev = split_indices(len(x), *self._counts(), self._seed)
        return [x[i] for i in cal], [x[i] for i in ev]

    def _counts(self) -> tuple[int, int]:
        default = SAMPLES[self.task]
        return (self._n_samples[0] or default[0], self._n_samples[1] or default[1])

    def _inputs(self, samples: Sequence[Any]) -> list[Any]:
        """Model inputs for `samples`, batched."""
        task = self.task
        if task == "image-classification":
            return [{"pixel_values": torch.stack(list(samples[i : i + IMAGE_BATCH]))}
                    for i in range(0, len(samples), IMAGE_BATCH)]
        if samples and isinstance(samples[0], list):  # token windows / rows
            per = max(1, MAX_BATCH_TOKENS // max(len(samples[0]), 1))
            out = []
            for i in range(0, len(samples), per):
                ids = torch.tensor(samples[i : i + per], dtype=torch.long)
                out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
            return out
        tok = self.tokenizer()
        return [dict(tok(list(samples[i : i + 32]), padding=True, truncation=True,
                         max_length=MAX_TEXT_TOKENS, return_tensors="pt"))
                for i in range(0, len(samples), 32)]

    def _batches(self, samples: Sequence[Any]) -> list[Batch]:
        model = self.build()
        out = []
        for cpu_inputs in self._inputs(samples):
            inputs = {k: v.to(self.device) for k, v in cpu_inputs.items()}
            with torch.inference_mode():
                target = self._reference(self.forward(model, inputs), inputs)
            out.append(Batch(inputs, target, len(next(iter(inputs.values())))))
        return out

    def _split(self) -> tuple[list[Any], list[Any]]:
        """The (calibration, evaluation) samples, made once."""
        if self._samples is None:
            self._samples = self._parts()
        return self._samples

    def _calibration_batches(self) -> list[Batch]:
        samples = self._split()[0]
        if self.task == "causal-lm":  # the references of 32 windows would take 0.8 GB
            samples = samples[:LOSS_WINDOWS]
        return self._batches(samples)

    def calibration_inputs(self) -> list[Any]:
        if self._calibration is not None or self.task != "causal-lm":
            return super().calibration_inputs()
        samples = self._split()[0][:LOSS_WINDOWS]  # as `_calibration_batches`, no model run
        return [{k: v.to(self.device) for k, v in inputs.items()}
                for inputs in self._inputs(samples)]

    def rounding_inputs(self) -> list[Any]:
        if self.task != "causal-lm":
            return super().rounding_inputs()
        return [{k: v.to(self.device) for k, v in inputs.items()}
                for inputs in self._inputs(self._split()[0])]

    def _evaluation_batches(self) -> list[Batch]:
        return self._batches(self._split()[1])

    # -- outputs, loss, metrics --------------------------------------------------------------

    def forward(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task's output tensor: logits, or pooled normalized embeddings."""
        out = model(**inputs)
        if self.task == "feature-extraction":
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, dim=-1)
        return out.logits if hasattr(out, "logits") else out[0]

    def _reference(self, output: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What a batch keeps of the FP32 output: log-probabilities, or embeddings."""
        if self.task == "feature-extraction":
            return output.float()
        logp = F.log_softmax(output.float(), dim=-1)
        # An LLM's reference distributions are (tokens x vocabulary): kept in float16, half
        # the memory, with KL errors far below what quantization moves (~1e-5 vs >1e-3).
        return logp.half() if self.task == "causal-lm" else logp

    def outputs(self, model: nn.Module, batches: Sequence[Batch]) -> list[torch.Tensor]:
        with torch.inference_mode():
            return [self.forward(model, b.inputs) for b in batches]

    def _kl(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean KL(FP32 ‖ model) over positions (tokens, or samples)."""
        logq = F.log_softmax(output.float(), dim=-1)
        logp = _log_probs(batch.target)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        mask = batch.inputs.get("attention_mask")
        if self.task == "causal-lm" and mask is not None:
            m = mask.to(kl.dtype)
            return (kl * m).sum() / m.sum().clamp(min=1)
        return kl.mean()

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        output = self.forward(model, batch.inputs)
        if self.task == "feature-extraction":
            return ((output - batch.target) ** 2).sum(-1).mean()
        return self._kl(output, batch)

    def fisher_loss(self, model: nn.Module, batch: Batch,
                    generator: torch.Generator) -> torch.Tensor:
        """A scalar whose gradient's covariance over `generator`'s draws is the Hessian of
        `loss` at the FP32 weights (the Fisher information of the KL; Gauss-Newton for the
        embedding distance): labels sampled from the FP32 distribution, log-likelihood
        scaled by 1/sqrt(positions). The estimator runs the FP32 model, so that distribution
        is the output's own: `batch.target` is not read (`fisher_loss_reads_targets`)."""
        output = self.forward(model, batch.inputs)
        if self.task == "feature-extraction":
            # loss = mean_n ||out_n - t_n||^2: Hessian 2/N per sample; r ~ N(0, 2/N) matches.
            n = output.shape[0]
            r = torch.randn(output.shape, generator=generator).to(output.device)
            r = r * math.sqrt(2.0 / n)
            return (output * r).sum()
        logq = F.log_softmax(output.float(), dim=-1)
        probs = logq.detach().exp().reshape(-1, logq.shape[-1]).cpu()
        labels = torch.multinomial(probs, 1, generator=generator).reshape(logq.shape[:-1])
        labels = labels.to(logq.device)  # drawn on the CPU: the generator's device
        picked = logq.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        mask = batch.inputs.get("attention_mask") if self.task == "causal-lm" else None
        if mask is not None:
            m = mask.to(picked.dtype)
            return (picked * m).sum() / m.sum().clamp(min=1).sqrt()
        return picked.sum() / math.sqrt(picked.numel())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        batches = self.evaluation_batches()
        task = self.task
        if task == "feature-extraction":
            emb = torch.cat(self.outputs(model, batches))
            ref = torch.cat([b.target for b in batches])
            cos = F.cosine_similarity(emb, ref, dim=-1)
            return {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}
        kl_sum = nll_sum = agree_sum = 0.0
        positions = next_tokens = 0
        with torch.inference_mode():
            for b in batches:
                logits = self.forward(model, b.inputs)
                if task == "causal-lm":
                    kl, agree, nll, count, pairs = _causal_lm_sums(logits, b)
                    kl_sum, agree_sum, nll_sum = kl_sum + kl, agree_sum + agree, nll_sum + nll
                    positions, next_tokens = positions + count, next_tokens + pairs
                else:
                    logq = F.log_softmax(logits.float(), dim=-1)
                    logp = _log_probs(b.target)
                    kl_sum += float((logp.exp() * (logp - logq)).sum())
                    agree_sum += float((logq.argmax(-1) == logp.argmax(-1)).float().sum())
                    positions += logq[..., 0].numel()
        if task == "causal-lm":
            return {"kl": kl_sum / positions, "ppl": math.exp(nll_sum / max(next_tokens, 1)),
                    "top1_agreement": agree_sum / positions}
        return {"agreement": agree_sum / positions, "kl": kl_sum / positions}

    def example_inputs(self) -> Any:
        """The first evaluation batch's inputs, without running the FP32 model for its
        reference outputs (an LLM's are 25 MB per window: made when first evaluated)."""
        if self._evaluation is not None:
            return self._evaluation[0].inputs
        first = self._inputs(self._split()[1])[0]
        return {k: v.to(self.device) for k, v in first.items()}

    def latency_batch(self) -> Any:
        return self.example_inputs()


# Positions per slice when a causal LM's metrics are summed: each slice's float32
# (positions x vocabulary) temporaries stay a few MB, not a window's 50 MB apiece.
METRIC_POSITIONS = 32


def _causal_lm_sums(logits: torch.Tensor, batch: Batch) -> tuple[float, float, float, int, int]:
    """A batch's masked sums of KL(FP32 ‖ model), top-1 agreement and next-token NLL, with
    the positions and next-token pairs they cover, a slice of positions at a time."""
    mask = batch.inputs["attention_mask"].float()
    ids = batch.inputs["input_ids"]
    kl_sum = agree_sum = nll_sum = 0.0
    length = logits.shape[1]
    for i in range(0, length, METRIC_POSITIONS):
        j = min(i + METRIC_POSITIONS, length)
        logq = F.log_softmax(logits[:, i:j].float(), dim=-1)
        logp = _log_probs(batch.target[:, i:j])
        m = mask[:, i:j]
        kl = (logp.exp() * (logp - logq)).sum(-1)
        kl_sum += float((kl * m).sum())
        agree_sum += float(((logq.argmax(-1) == logp.argmax(-1)).float() * m).sum())
        # position t predicts token t+1: pairs where both are real tokens
        k = min(j, length - 1)
        if k > i:
            pair = mask[:, i + 1 : k + 1] * mask[:, i:k]
            nll = -logq[:, : k - i].gather(-1, ids[:, i + 1 : k + 1].unsqueeze(-1)).squeeze(-1)
            nll_sum += float((nll * pair).sum())
    pairs = int((mask[:, 1:] * mask[:, :-1]).sum())
    return kl_sum, agree_sum, nll_sum, int(mask.sum()), pairs


def _log_probs(reference: torch.Tensor) -> torch.Tensor:
    """Float32 log-probabilities of a stored reference, renormalized: float16 rounding then
    moves a KL by second-order amounts only (FP32 against itself stays ~0)."""
    return reference if reference.dtype == torch.float32 else \
        F.log_softmax(reference.float(), dim=-1)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a CUDA device is present, else "cpu"; "cuda" without one, or
    any other name, is an `InvalidSpecError` naming it."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidSpecError("`device` 'cuda': this machine has no CUDA device (use auto "
                               "or cpu).")
    if device not in ("cpu", "cuda"):
        raise InvalidSpecError(f"`device` must be auto, cpu or cuda; got {device!r}.")
    return device
