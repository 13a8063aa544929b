"""What a training step minimises. The loop (trainer.py) is the same for every objective: it asks the
objective for a loss on a batch, then does backward, clipping, the optimiser step and logging.

- CrossEntropy: teacher forcing on the reference captions (masked, optional label smoothing).
- SelfCritical: the "new self-critical" recipe (Rennie et al. 2017; Luo 2020): k sampled captions per
  image, each rewarded by CIDEr-D against the image's references (document frequencies from the
  training split, computed once), with the mean reward of the other k-1 samples as its baseline.
  <end> is a word of the reward, so a caption cut at the length limit earns less.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from capgen.data.prepared import ImageRecord
from capgen.data.vocab import END, Vocabulary
from capgen.decoding import DecodeConfig, TokenIds, decode
from capgen.decoding.rules import Rules
from capgen.evaluation.cider import CiderD


@dataclass
class Batch:
    pooled: Tensor  # (I, D) each image once
    grid: Tensor  # (I, R, D)
    image_index: Tensor  # (B,) image row of each reference caption
    captions: Tensor  # (B, T) <start> w1 .. wn <end> <pad>...
    images: list[str]  # (I,) image ids, for rewards
    word_probs: Tensor | None = None  # (I, W) tag word probabilities, for a tag-reading model
    has_image: Tensor | None = None  # (I,) False: the image is hidden (text-only rows, image dropout)

    def inputs(self) -> dict[str, Tensor]:
        """The extra forward inputs of a tag-reading model (none for the others)."""
        if self.word_probs is None:
            return {}
        return {"word_probs": self.word_probs, "has_image": self.has_image}


class CrossEntropy:
    name = "xe"

    def __init__(self, vocab: Vocabulary, label_smoothing: float):
        self.pad_id, self.smoothing = vocab.pad_id, label_smoothing

    def __call__(self, ddp, model, b: Batch) -> tuple[Tensor, dict[str, float]]:
        out = ddp(b.pooled, b.grid, b.captions, b.image_index, **b.inputs())  # logits (B, T-1, V)
        logits, targets = out["logits"], b.captions[:, 1:]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=self.pad_id,
            label_smoothing=self.smoothing,
        )
        return loss + out["aux_loss"], {"loss": loss.item()}


class SelfCritical:
    name = "scst"

    def __init__(self, vocab: Vocabulary, train_records: list[ImageRecord], samples: int, max_len: int):
        self.vocab, self.samples = vocab, samples
        self.ids = TokenIds.from_vocab(vocab)
        # The policy is the model itself: no n-gram blocking, only the rules every caption keeps.
        self.sampling = DecodeConfig(
            method="sample", n_best=samples, max_len=max_len, no_repeat_ngram=0, no_repeat_words=False
        )
        self.cider = CiderD({r.image: [[*t, END] for t in r.tokens] for r in train_records})

    def __call__(self, ddp, model, b: Batch) -> tuple[Tensor, dict[str, float]]:
        hyps = decode(model, b.pooled, b.grid, self.ids, self.sampling)  # eval mode, no grad
        rows, words, seqs = [], [], []
        for i, image_hyps in enumerate(hyps):
            for h in image_hyps:
                rows.append(i)
                ended = [] if h.truncated else [END]
                words.append([self.vocab.itos[t] for t in h.tokens] + ended)
                seqs.append([self.ids.start, *h.tokens] + ([] if h.truncated else [self.ids.end]))
        reward = torch.as_tensor(self.cider.scores([b.images[r] for r in rows], words), dtype=torch.float32)
        index = torch.tensor(rows)  # (S,) image row of each sample
        per_image_sum = torch.zeros(len(hyps)).index_add_(0, index, reward)
        per_image_n = torch.zeros(len(hyps)).index_add_(0, index, torch.ones_like(reward))
        # mean reward of the image's other samples
        baseline = (per_image_sum[index] - reward) / (per_image_n[index] - 1).clamp_min(1)
        advantage = (reward - baseline).to(b.pooled.device)  # (S,)

        T = max(len(s) for s in seqs)
        captions = torch.full((len(seqs), T), self.ids.pad, dtype=torch.long)
        for j, s in enumerate(seqs):
            captions[j, : len(s)] = torch.tensor(s)
        captions = captions.to(b.pooled.device)  # (S, T)
        # Dropout off: the log-probs are those of the policy that drew the samples.
        was_training = ddp.training
        ddp.eval()
        try:
            logits = ddp(b.pooled, b.grid, captions, index.to(b.pooled.device))["logits"]  # (S, T-1, V)
        finally:
            ddp.train(was_training)
        targets = captions[:, 1:]  # (S, T-1)
        mask = targets != self.ids.pad
        # The policy is the distribution the samples were drawn from: the decoder's rules (no <unk>,
        # no <end> first or after "a", the forced last <end>) applied, then renormalised. Scoring the
        # raw softmax instead lets the gradient park probability on tokens the sampler never draws,
        # and training collapses (measured: sampled-token NLL 2 -> 14 in two epochs).
        rules = Rules(self.ids, self.sampling, logits.shape[-1])
        fed, history = captions.cpu().numpy(), targets.cpu().numpy()
        ban = np.stack([rules.ban(t, fed[:, t], history) for t in range(targets.shape[1])], axis=1)  # (S, T-1, V)
        policy = logits.masked_fill(torch.from_numpy(ban).to(logits.device), float("-inf")).log_softmax(-1)
        logp = policy.gather(2, targets.unsqueeze(2)).squeeze(2).masked_fill(~mask, 0.0)
        mask = mask.float()
        loss = -(advantage.unsqueeze(1) * logp).sum() / mask.sum()
        return loss, {
            "loss": loss.item(),
            "reward": reward.mean().item(),
            "baseline": baseline.mean().item(),
            "entropy": (-logp.sum() / mask.sum()).item(),
            "sample_words": float(mask.sum(1).mean() - 1),
        }
