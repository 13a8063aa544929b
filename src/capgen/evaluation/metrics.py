"""BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) with pycocoevalcap, as the COCO toolkit runs them.

The official path tokenizes with the PTB tokenizer (Java) and scores METEOR (Java). Without Java we
say so and report the Java-free metrics on our own tokenization. SPICE is never run: it downloads
Stanford CoreNLP on first use, which cannot work offline.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import warnings
from functools import lru_cache
from typing import Mapping, Sequence

from capgen.data.text import normalize_caption

METRIC_ORDER = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@lru_cache(maxsize=1)
def java_available() -> bool:
    java = shutil.which("java")
    if not java:
        return False
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _simple_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    return {k: [" ".join(normalize_caption(c)) for c in caps] for k, caps in captions.items()}


def score_captions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    official: bool = True,
    meteor: bool = True,
) -> dict[str, float]:
    """Corpus-level scores (0-1 scale) of one predicted caption per image against its references.

    official=True uses the Java PTB tokenizer (and METEOR when meteor=True) if Java is available;
    official=False (or no Java) tokenizes in Python and skips METEOR, e.g. for per-epoch validation.
    The returned dict has "tokenizer" and, where relevant, "notes".
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    keys = sorted(predictions)
    missing = [k for k in keys if k not in references or not references[k]]
    if missing:
        raise ValueError(f"no references for {len(missing)} predicted images (e.g. {missing[0]})")
    notes = ["SPICE skipped: it needs Stanford CoreNLP models that cannot be downloaded offline"]
    use_java = official and java_available()
    if official and not use_java:
        notes.append(
            "Java not found: METEOR and the PTB tokenizer skipped; BLEU/ROUGE-L/CIDEr use capgen's "
            "tokenizer (install a JRE, e.g. apt-get install default-jre-headless)"
        )
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        with contextlib.redirect_stdout(io.StringIO()):
            gts = tok.tokenize({k: [{"caption": c} for c in references[k]] for k in keys})
            res = tok.tokenize({k: [{"caption": predictions[k]}] for k in keys})
    else:
        gts = _simple_tokenize({k: references[k] for k in keys})
        res = _simple_tokenize({k: [predictions[k]] for k in keys})
    # An empty prediction breaks BLEU's assertions; score it as an empty string token.
    res = {k: [v[0] if v and v[0] else "<empty>"] for k, v in res.items()}

    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores.update({f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)})
        if use_java and meteor:
            from pycocoevalcap.meteor.meteor import Meteor

            try:
                scores["METEOR"] = float(Meteor().compute_score(gts, res)[0])
            except Exception as e:  # METEOR's Java subprocess can fail on odd machines; keep the rest
                warnings.warn(f"METEOR failed: {e}", RuntimeWarning, stacklevel=2)
                notes.append(f"METEOR failed: {e}")
        scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    ordered: dict = {k: scores[k] for k in METRIC_ORDER if k in scores}
    ordered["tokenizer"] = "ptb" if use_java else "capgen"
    ordered["notes"] = notes
    return ordered
