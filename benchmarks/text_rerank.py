"""Experiment (issue 17): rerank a captioner's caption against human captions of similar scenes.

For each photo:
  1. retrieve the K scenes of a caption-text corpus (../shared/data/text/coco_val2017.jsonl: five
     captions per photo, no images) whose named objects best match the photo's tags: the summed
     tag probabilities of the tag words a scene's captions name (as a share of its captions), plus
     the agreement of the person head with the share of its captions naming a person;
  2. candidates: the 5K captions of those scenes, plus the captioner's own caption (--predictions);
  3. each candidate scores  consensus / max consensus + lambda * mean log-probability per word
     under a scorer model given the photo (teacher forcing), where consensus is its tf-idf n-gram
     agreement (CIDEr-D-like, document frequencies over the corpus) with the retrieved captions,
     weighted by their scene's match; the best candidate is the caption.
Prints CIDEr-D (capgen.evaluation.cider, the COCO toolkit's formula; references' own document
frequencies) of the pipeline caption and of the reranked one per lambda, and how often the
pipeline caption is kept. Not part of capgen: an experiment whose numbers are in BENCHMARKS.md.

    python benchmarks/text_rerank.py --images ../shared/data/coco_dev/images \
        --references ../shared/data/coco_dev/captions.json --predictions runs/eval/final-check/predictions.json \
        --scorer runs/tags-coco/best.pt --text ../shared/data/text/coco_val2017.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from capgen.data.text import normalize_caption
from capgen.evaluation.cider import CiderD, ngram_counts
from capgen.inference.captioner import Captioner
from capgen.tags.vetting import PERSON
from capgen.tags.words import mention_index, phrases_in


class Scenes:
    """The corpus: per scene its captions (token lists), named tag words and share naming a person."""

    def __init__(self, path: Path, words: list[str]):
        self.index, self.longest = index, longest = mention_index(words), max(len(w.split()) for w in words)
        self.captions = [[normalize_caption(c) for c in json.loads(line)["captions"]] for line in open(path)]
        self.named = np.zeros((len(self.captions), len(words)), np.float32)
        self.person = np.zeros(len(self.captions), np.float32)
        for i, caps in enumerate(self.captions):
            for c in caps:
                for j in phrases_in(c, index, longest):
                    self.named[i, j] += 1 / len(caps)
                self.person[i] += any(t in PERSON for t in c) / len(caps)
        df = Counter(g for caps in self.captions for g in {g for c in caps for g in ngram_counts(c)})
        self.log_n, self.log_df = math.log(len(self.captions)), {g: math.log(n) for g, n in df.items()}

    def match(self, word_probs: np.ndarray, person_p: np.ndarray) -> np.ndarray:
        """(B, W), (B,) -> (B, scenes): how well each scene's named objects fit each photo."""
        agree = person_p[:, None] * self.person[None] + (1 - person_p[:, None]) * (1 - self.person[None])
        return word_probs @ self.named.T + agree

    def supported(self, tokens: list[str], word_probs: np.ndarray, person_p: float) -> bool:
        """No person the head doubts (p < 0.5), no tag word the tagger all but rules out (p < 0.001)."""
        if person_p < 0.5 and any(t in PERSON for t in tokens):
            return False
        return all(word_probs[j] >= 0.001 for j in phrases_in(tokens, self.index, self.longest))

    def vector(self, tokens: list[str]):
        v, norm = [{} for _ in range(4)], [0.0] * 4
        for g, tf in ngram_counts(tokens).items():
            k = len(g) - 1
            v[k][g] = w = tf * (self.log_n - self.log_df.get(g, 0.0))
            norm[k] += w * w
        return v, [math.sqrt(x) for x in norm], len(tokens)


def similarity(a, b) -> float:
    (va, na, la), (vb, nb, lb) = a, b
    total = sum(
        sum(w * vb[k][g] for g, w in va[k].items() if g in vb[k]) / (na[k] * nb[k]) for k in range(4) if na[k] and nb[k]
    )
    return total / 4 * math.exp(-((la - lb) ** 2) / 72.0)


def mean_logprob(cap: Captioner, image: str, candidates: list[list[str]]) -> np.ndarray:
    """Per candidate, its mean log-probability per token (<end> included) under cap's model."""
    pooled, grid = cap.encode([image])
    ids = [cap.vocab.encode(c) for c in candidates]
    tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for j, x in enumerate(ids):
        tokens[j, : len(x)] = torch.tensor(x)
    n = len(ids)
    with torch.no_grad():
        logits = cap.model(torch.from_numpy(pooled).repeat(n, 1), torch.from_numpy(grid).repeat(n, 1, 1), tokens)
        logp = torch.log_softmax(logits["logits"].float(), -1)
    target = tokens[:, 1:]
    mask = (target != cap.vocab.pad_id).float()
    return ((logp.gather(2, target.unsqueeze(2)).squeeze(2) * mask).sum(1) / mask.sum(1)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--references", type=Path, required=True, help="COCO-format captions of the photos")
    ap.add_argument("--predictions", type=Path, required=True, help="the pipeline's captions (capgen evaluate --out)")
    ap.add_argument("--scorer", required=True, help="checkpoint whose likelihood scores candidates")
    ap.add_argument("--text", type=Path, required=True, help="caption text (JSON lines, 'captions')")
    ap.add_argument("--k", type=int, default=15, help="scenes retrieved per photo")
    ap.add_argument("--lambdas", default="0,0.2,0.5,1,1.5,2")
    ap.add_argument("--out", type=Path, help="write the captions of each lambda here (JSON)")
    ap.add_argument(
        "--vet",
        action="store_true",
        help="drop retrieved captions naming a person when the person head says < 0.5, or a tag word "
        "whose probability is < 0.001 (another photo's cat, dog, boat)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)

    bundled = Captioner.from_pretrained()  # its tagger and person head (the scorer's encoder must match)
    person_head = bundled.corpus._load()
    scorer = Captioner.from_pretrained(args.scorer)
    scenes = Scenes(args.text, list(bundled.tagger.words.words))
    coco = json.loads(args.references.read_text())
    name = {im["id"]: im["file_name"] for im in coco["images"]}
    refs: dict[str, list[list[str]]] = {}
    for a in coco["annotations"]:
        refs.setdefault(name[a["image_id"]], []).append(normalize_caption(a["caption"]))
    preds = {p["image_id"]: normalize_caption(p["caption"]) for p in json.loads(args.predictions.read_text())}
    files = sorted(refs)
    cider = CiderD(refs)
    lambdas = [float(x) for x in args.lambdas.split(",")]
    chosen: dict[float, dict[str, str]] = {lam: {} for lam in lambdas}
    kept = Counter()
    for f in files:
        pooled, _ = bundled.encode([args.images / f])
        probs, person_p = bundled.tagger.word_probs(pooled), person_head.person_probs(pooled, bundled.tagger.head)
        match = scenes.match(probs, person_p)
        top = np.argsort(-match[0])[: args.k]
        pairs = [(c, math.exp(3 * match[0, t])) for t in top for c in scenes.captions[t]]
        if args.vet:
            pairs = [(c, w) for c, w in pairs if scenes.supported(c, probs[0], person_p[0])] or pairs
        candidates = [c for c, _ in pairs] + [preds[f]]
        weight = [w for _, w in pairs] + [0.0]
        vectors = [scenes.vector(c) for c in candidates]
        consensus = np.array(
            [
                sum(weight[j] * similarity(v, vectors[j]) for j in range(len(vectors)) if j != i) / sum(weight)
                for i, v in enumerate(vectors)
            ]
        )
        logp = mean_logprob(scorer, str(args.images / f), candidates)
        for lam in lambdas:
            best = int(np.argmax(consensus / consensus.max() + lam * logp))
            chosen[lam][f] = " ".join(candidates[best])
            kept[lam] += best == len(candidates) - 1
    print(f"pipeline captions: CIDEr-D {100 * np.mean([cider.score(f, preds[f]) for f in files]):.1f}")
    for lam in lambdas:
        score = np.mean([cider.score(f, chosen[lam][f].split()) for f in files])
        print(f"lambda {lam}: CIDEr-D {100 * score:.1f}, pipeline caption kept for {kept[lam]} of {len(files)}")
    if args.out:
        args.out.write_text(json.dumps({str(k): v for k, v in chosen.items()}, indent=1))


if __name__ == "__main__":
    main()
