"""`--model` with its `--data` and `--weights`: the files checked first, then the model.

A user model (`package.module:factory`) runs the user's code; its data and weights files are
checked before the factory is imported or called, so a missing file is named as such and
never hidden behind whatever the factory does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from allocator.cli._files import check_input
from engine import CLIUsageError

if TYPE_CHECKING:
    from zoo import ModelSpec


def is_user_model(model: str) -> bool:
    """True for `package.module:factory` (and other `prefix:...` names the zoo resolves)."""
    return ":" in model


def model_spec(model: str, data: str | None = None, weights: str | None = None) -> ModelSpec:
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
    elif data is None and not model.startswith("hf:"):  # hf: checkpoints may bring data
        raise CLIUsageError(f"user model {model!r} needs `--data` (a .pt or .npy file of "
                            f"inputs), and `--weights` (.safetensors) unless the factory "
                            f"loads its own.")
    return zoo.get_model(model, data=data, weights=weights)
