"""What `capgen evaluate --out DIR` writes (both of its forms: a prepared split, a folder of photos)."""

from __future__ import annotations

from pathlib import Path

from capgen.io import write_json

# metrics.json says its format; predictions.json is COCO's results format (a list of {image_id,
# caption}), which the COCO toolkit and leaderboards read as it is.
METRICS_KEY, METRICS_VERSION = "capgen_metrics", 1


def write_results(out: str | Path | None, predictions: list[dict], metrics: dict) -> None:
    """OUT/predictions.json and OUT/metrics.json (nothing when out is None)."""
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "predictions.json", predictions)
        write_json(out / "metrics.json", {METRICS_KEY: METRICS_VERSION, **metrics})
