"""Text-only training for a tag-reading decoder: caption text without images joins each batch.

Each step's paired batch (real features, the model's own tags) gets `text_batch` photos of caption
text appended: their image is the learned no-image input, and their tags are simulated from the
words of that photo's captions, with the real tagger's habits measured on the paired training set:
- a mentioned object gets a probability drawn from the probabilities the real tagger gave mentioned
  objects (often high, sometimes tiny: a missed object);
- distractors: the probabilities the tagger gave one random training photo's top unmentioned words,
  put on random words.
Paired images also lose their image (`image_dropout`: the decoder must caption from tags alone) or
their tags (`tag_dropout`). Every draw comes from a generator seeded by (seed, epoch, step), so a
resumed run sees exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from capgen.data.corpus import TextRecord
from capgen.models.base import PAD_ID
from capgen.tags.words import mention_index, mentions
from capgen.training.data import CaptionPairs

DISTRACTORS = 5  # unmentioned words per photo whose probabilities are copied (the tagger's top 5)


class TagHabits:
    """The real tagger's probabilities on the paired training photos, split as the simulation needs.

    Per word: a caption word is not an object the tagger sees alike. On Flickr8k train the tagger
    gives "dog" a median 0.56 where captions say dog, but "shirt", "camera" ("looks at the camera")
    or "watch" (the verb) a median 0.00. A word with MIN_SEEN mentions draws from its own
    probabilities; a word the paired captions rarely name (zebra, pizza) from those of the words the
    tagger does see (median >= SEEN_MEDIAN)."""

    MIN_SEEN = 5
    SEEN_MEDIAN = 0.1

    def __init__(self, word_probs: np.ndarray, mentioned: list[list[int]]):
        per: dict[int, list[float]] = {}
        distract = []
        for row, m in zip(word_probs, mentioned):
            for j in m:
                per.setdefault(j, []).append(float(row[j]))
            rest = np.delete(row, m)
            distract.append(np.sort(rest)[::-1][:DISTRACTORS].astype(np.float32))
        self.per_word = {j: torch.tensor(v) for j, v in per.items() if len(v) >= self.MIN_SEEN}
        seen = [v for v in self.per_word.values() if float(v.median()) >= self.SEEN_MEDIAN]
        # no such word in the paired data (tiny or unusual sets): assume a confident tagger
        self.default = torch.cat(seen) if seen else torch.tensor([0.9])
        self.distract = torch.from_numpy(np.stack(distract))  # (I, DISTRACTORS)

    def simulate(self, mentioned: list[list[int]], num_words: int, g: torch.Generator) -> Tensor:
        """(P, W) simulated word probabilities for P photos with these mentioned words."""
        out = torch.zeros(len(mentioned), num_words)
        for r, m in enumerate(mentioned):
            rows = self.distract[torch.randint(len(self.distract), (1,), generator=g)][0]
            where = torch.randint(num_words, (len(rows),), generator=g)
            out[r, where] = rows
            for j in m:
                pool = self.per_word.get(j, self.default)
                out[r, j] = pool[torch.randint(len(pool), (1,), generator=g)]
        return out


class TextMixer:
    """Appends caption text to each paired batch; see the module docstring."""

    def __init__(
        self,
        records: list[TextRecord],
        vocab,
        max_len: int,
        words: list[str],
        habits: TagHabits,
        photos: int,
        image_dropout: float,
        tag_dropout: float,
        seed: int,
    ):
        self.pairs = CaptionPairs(records, vocab, max_len)
        index, longest = mention_index(words), max(len(w.split()) for w in words)
        self.mentioned = [mentions(r.tokens, index, longest) for r in records]
        self.num_words, self.habits = len(words), habits
        self.photos, self.image_dropout, self.tag_dropout, self.seed = photos, image_dropout, tag_dropout, seed
        # Each corpus gets an equal share of the text photos: the small everyday-scenes corpus must
        # not drown in a large one of people.
        by_corpus: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            by_corpus.setdefault(r.corpus, []).append(i)
        self.corpora = [torch.tensor(v) for _, v in sorted(by_corpus.items())]

    def _generator(self, epoch: int, step: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + step)

    def extend(
        self,
        pooled: Tensor,
        grid: Tensor,
        image_index: Tensor,
        captions: Tensor,
        word_probs: Tensor,
        epoch: int,
        step: int,
    ):
        """The paired batch (I images, their captions) plus the text photos: pooled (I+P, D), grid
        (I+P, N, D), image_index, captions (B', T'), word_probs (I+P, W), has_image (I+P,)."""
        g = self._generator(epoch, step)
        I = pooled.shape[0]
        has_image = torch.rand(I, generator=g) >= self.image_dropout
        keep_tags = torch.rand(I, generator=g) >= self.tag_dropout
        word_probs = word_probs * keep_tags.unsqueeze(1).to(word_probs.dtype)
        if not self.photos:
            return pooled, grid, image_index, captions, word_probs, has_image
        corpus = torch.randint(len(self.corpora), (self.photos,), generator=g)
        picks = [int(self.corpora[c][torch.randint(len(self.corpora[c]), (1,), generator=g)]) for c in corpus.tolist()]
        idx = torch.tensor([p for r in picks for p in self.pairs.pairs_of_image[r]])
        _, text_index, text_caps = self.pairs.batch(idx)
        # pairs.batch numbers photos by sorted row; map back to the order of `picks` (repeats allowed)
        rows = torch.unique(self.pairs.image_rows[idx])
        sim = self.habits.simulate([self.mentioned[int(r)] for r in rows], self.num_words, g)
        P = len(rows)
        T = max(captions.shape[1], text_caps.shape[1])
        return (
            torch.cat([pooled, pooled.new_zeros(P, pooled.shape[1])]),
            torch.cat([grid, grid.new_zeros(P, *grid.shape[1:])]),
            torch.cat([image_index, text_index + I]),
            torch.cat([_pad(captions, T), _pad(text_caps, T)]),
            torch.cat([word_probs, sim.to(word_probs.dtype)]),
            torch.cat([has_image, torch.zeros(P, dtype=torch.bool)]),
        )


def _pad(captions: Tensor, T: int) -> Tensor:
    return torch.nn.functional.pad(captions, (0, T - captions.shape[1]), value=PAD_ID)


def uses_tags(tc) -> bool:
    """Whether a train config asks for text-only photos or modality dropout."""
    return bool(tc.text_batch or tc.image_dropout or tc.tag_dropout)


def make_mixer(model, data, train_records, train_feats, tc) -> TextMixer:
    """The mixer for a tag-reading model, its tagger's habits measured on the training split."""
    from capgen.tags.words import WordMap
    from capgen.training.tag_model import TagModelError

    if not getattr(model, "reads_tags", False):
        raise TagModelError(
            "train.text_batch, image_dropout and tag_dropout need a model that reads tags: "
            "a transformer with model.tag_tokens > 0 (and finetune_blocks 0)"
        )
    text = data.text()
    if tc.text_batch and not text:
        raise TagModelError(
            f"train.text_batch={tc.text_batch}: {data.root} holds no caption text; prepare it with --text FILE.jsonl"
        )
    words = list(WordMap.load(None).words)
    index, longest = mention_index(words), max(len(w.split()) for w in words)
    probs = []
    with torch.no_grad():
        for start in range(0, len(train_records), 512):
            rows = torch.arange(start, min(start + 512, len(train_records)))
            probs.append(model.tags.word_probs(train_feats.batch(rows)[0]).numpy())
    habits = TagHabits(np.concatenate(probs), [mentions(r.tokens, index, longest) for r in train_records])
    return TextMixer(
        text, data.vocab, tc.max_caption_len, words, habits, tc.text_batch, tc.image_dropout, tc.tag_dropout, tc.seed
    )
