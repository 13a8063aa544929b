"""capgen info [MODEL]: what a captioner is, and for the bundled model its model card."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

CARD = "assets/MODEL_CARD.md"


def register(sub, parents) -> None:
    p = sub.add_parser(
        "info",
        parents=parents,
        help="describe a model: architecture, encoder, vocabulary; the bundled model's card",
        description="Load MODEL (a checkpoint, a folder from capgen export; default: the bundled model) and "
        "print what it is. For the bundled model, also its model card: training data and terms, metrics "
        "on Flickr8k test and on everyday COCO photos, known failure modes, intended use.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="checkpoint or exported folder (default: bundled)")
    p.add_argument("--json", action="store_true", help="one JSON object: {'model': {...}, 'card': text or null}")
    p.set_defaults(func=run)


def model_card(model: str | None) -> str | None:
    """The bundled model's card (package data), or None for any other model."""
    from capgen.inference.captioner import bundled_export_path, bundled_model_path

    bundled = {bundled_model_path().resolve(), bundled_export_path().resolve()}
    if model is not None and Path(model).resolve() not in bundled:
        return None
    return resources.files("capgen").joinpath(CARD).read_text(encoding="utf-8")


def run(args) -> int:
    from capgen.errors import CapgenError
    from capgen.inference import Captioner

    if args.model is not None and not Path(args.model).exists():
        raise CapgenError(f"{args.model}: no such checkpoint or exported folder")
    facts = Captioner.from_pretrained(args.model).info()
    card = model_card(args.model)
    if args.json:
        print(json.dumps({"model": facts, "card": card}, indent=1))
        return 0
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {v}" for k, v in value.items())
        else:
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown}")
    print()
    print(card if card is not None else "No model card: only the bundled model carries one (capgen info).")
    return 0
