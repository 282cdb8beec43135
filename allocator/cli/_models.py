"""`--model` with its `--data` and `--weights`: the files checked first, then the model.

A user model (`package.module:factory`) runs the user's code; its data and weights files are
checked before the factory is imported or called, so a missing file is named as such and
never hidden behind whatever the factory does. A Hugging Face checkpoint (`hf:<folder or
repo id>`) is checked (config, safetensors, no custom code) before anything is loaded, and
what it will use by default (the built-in text when no `--data`) is said on stderr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from allocator.cli._files import check_input
from engine import CLIUsageError

if TYPE_CHECKING:
    from zoo import ModelSpec


def is_user_model(model: str) -> bool:
    """True for `package.module:factory` and `hf:<checkpoint>`: models that take `--data`."""
    return ":" in model


def is_hf_model(model: str) -> bool:
    return model.startswith("hf:")


def model_spec(model: str, data: str | None = None, weights: str | None = None,
               device: str = "auto") -> ModelSpec:
    """The zoo's spec of `--model`, with `--data` / `--weights` for a user model.

    Raises:
        InvalidSpecError: A data or weights file is missing or not a file.
        CLIUsageError: `--data` or `--weights` given with a registered model (it has its own),
            or a user model without `--data`.
        UnknownComponentError: `model` is not registered.
    """
    import zoo

    check_input("--data", data)
    check_input("--weights", weights)
    if not is_user_model(model):
        given = [flag for flag, value in (("--data", data), ("--weights", weights)) if value]
        if given:
            raise CLIUsageError(f"`{given[0]}` applies to user models (`--model "
                                f"package.module:factory`); {model!r} brings its own.")
    elif is_hf_model(model):
        if weights is not None:
            raise CLIUsageError(f"`--weights` applies to `module:factory` models; {model!r} "
                                f"brings its own safetensors.")
    elif data is None:
        raise CLIUsageError(f"user model {model!r} needs `--data` (a .pt or .npy file of "
                            f"inputs), and `--weights` (.safetensors) unless the factory "
                            f"loads its own.")
    spec = zoo.get_model(model, data=data, weights=weights, device=device)
    if isinstance(spec, zoo.HfModelSpec):
        from allocator.cli._render import log

        spec.checkpoint()  # config.json and the weights' format checked before any work
        for note in spec.notes:
            log(note)
    return spec
