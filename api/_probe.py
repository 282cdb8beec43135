"""Prints the torch-side catalog (models, estimators, hardware profiles) as one JSON line.

Run as `python -m api._probe` by `api._catalog`, so that the API process itself never
imports torch.
"""

from __future__ import annotations

import json
import sys


def catalog() -> dict:
    """Models, sensitivity estimators and stored hardware profiles, from their registries."""
    import hwprofiles
    import sensitivity
    import zoo

    models = zoo.describe_models()
    estimators = [{"name": e.name, "available": bool(e.available()),
                   "description": e.description} for e in sensitivity.ESTIMATORS]
    profiles = [p.to_dict() for p in hwprofiles.list_profiles()]
    return {"models": models, "estimators": estimators, "hwprofiles": profiles}


def main() -> None:
    sys.stdout.write(json.dumps(catalog()) + "\n")


if __name__ == "__main__":
    main()
