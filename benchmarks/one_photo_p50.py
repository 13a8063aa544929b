"""One photo at a time: p50 of `Captioner.caption` (the bundled model, `capgen caption`'s defaults)
over the first N photos of a folder, loading excluded; one JSON line.

    python benchmarks/one_photo_p50.py --photos ../shared/data/coco_dev/images [--threads 1] [--scenes]

It measures whichever capgen is imported, so an older tree runs it from a worktree, alternating
with this one in the same session (the machine's speed drifts by 10-20% over minutes):

    git worktree add /tmp/old 8f6f7cf        # the tree issue 17 was filed against
    for i in 1 2 3 4 5; do
      PYTHONPATH=/tmp/old/src python benchmarks/one_photo_p50.py --photos DIR
      python benchmarks/one_photo_p50.py --photos DIR
    done

--scenes: in one process, captions of similar scenes off and on, alternating per photo (this
tree's GuideConfig(scenes=False) against the default), so the scene stage's own cost shows
without the drift between processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True, help="a folder of JPEGs")
    ap.add_argument("--n", type=int, default=40, help="photos, first by file name")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores, as capgen caption")
    ap.add_argument("--scenes", action="store_true", help="scene captions off and on, alternating")
    args = ap.parse_args()

    import capgen
    from capgen import Captioner

    photos = sorted(Path(args.photos).glob("*.jpg"))[: args.n]
    cap = Captioner.from_pretrained(threads=args.threads)
    configs = {"default": {}}
    if args.scenes:
        from capgen.tags.guide import GuideConfig

        configs = {"scenes off": {"guide": GuideConfig(scenes=False)}, "default": {}}
    for options in configs.values():  # sessions, graphs and the scene scorer load before timing
        for p in photos[:3]:
            cap.caption(str(p), **options)
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.rounds):
        for p in photos:
            for k, options in configs.items():
                t = time.perf_counter()
                cap.caption(str(p), **options)
                times[k].append(time.perf_counter() - t)
    p50 = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    print(
        json.dumps(
            {
                "capgen": capgen.__version__,
                "tree": str(Path(capgen.__file__).resolve().parents[2]),
                "threads": args.threads or "all",
                "photos": len(photos),
                "p50_ms": p50,
            }
        )
    )


if __name__ == "__main__":
    main()
