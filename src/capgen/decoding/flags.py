"""The decoding flags of every command that decodes (`capgen caption`, `evaluate`, `export`, `alt`
and the torch-free `python -m capgen.runtime`), written once. Their defaults are DecodeConfig's (and
GuideConfig's for tag guidance), so every entry point decodes the same way unless told otherwise;
with `model_defaults` a flag left out is left to the model's own settings (an export's decoding.json)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from capgen.argtypes import (
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    unit_interval,
)
from capgen.decoding.config import MAX_GUIDE_PENALTY, DecodeConfig
from capgen.decoding.rules import MAX_BEAM
from capgen.tags.guide import GuideConfig

_D = DecodeConfig()


class _ModelDefaults:
    """Every flag left out stays unset (None): the model's own decoding settings apply."""

    def __getattr__(self, name):
        return None


def add_decode_args(p: argparse.ArgumentParser, model_defaults: bool = False) -> None:
    d = _ModelDefaults() if model_defaults else _D
    p.set_defaults(decode_model_defaults=model_defaults)
    title = "the model's own settings, else DecodeConfig's" if model_defaults else "DecodeConfig's, for every command"
    g = p.add_argument_group(f"decoding (defaults: {title})")
    method = g.add_mutually_exclusive_group()
    method.add_argument(
        "--beam-size",
        type=positive_int,
        default=d.beam_size,
        help=f"beam width, at most {MAX_BEAM} (default {_D.beam_size}; 1 = greedy)",
    )
    method.add_argument("--greedy", action="store_true", help="greedy decoding")
    method.add_argument("--sample", action="store_true", help="sample captions (see --temperature, --seed)")
    g.add_argument("--n-best", type=positive_int, default=d.n_best, help="also report the next best captions")
    g.add_argument(
        "--max-len",
        type=positive_int,
        default=d.max_len,
        help=f"maximum caption length in words (default {_D.max_len})",
    )
    g.add_argument(
        "--min-words",
        type=positive_int,
        default=d.min_words,
        help="no caption shorter than this many words (default 1)",
    )
    g.add_argument(
        "--max-words",
        type=positive_int,
        default=d.max_words,
        help="captions of at most this many words, ending on a word a caption may end on (default: --max-len)",
    )
    _ranking_and_sampling_args(g, d)


def _ranking_and_sampling_args(g, d) -> None:
    """How candidates are scored and blocked, consensus, and the sampling knobs."""
    g.add_argument(
        "--length-penalty",
        type=finite_float,
        default=d.length_penalty,
        help="GNMT length normalisation alpha (default 0: raw log-prob sums)",
    )
    g.add_argument(
        "--no-repeat-ngram",
        type=non_negative_int,
        default=d.no_repeat_ngram,
        help=f"block repeated n-grams of this size (default {_D.no_repeat_ngram}; 0 = off)",
    )
    repeat = g.add_mutually_exclusive_group()
    repeat.add_argument(
        "--no-repeat-words",
        dest="no_repeat_words",
        action="store_true",
        default=d.no_repeat_words,
        help="block a second use of any content word, 'a woman and a woman' (the default)",
    )
    repeat.add_argument(
        "--repeat-words",
        dest="no_repeat_words",
        action="store_false",
        help="let content words repeat (only --no-repeat-ngram blocks repeats)",
    )
    g.add_argument(
        "--consensus",
        type=non_negative_int,
        default=d.consensus,
        metavar="K",
        help="rerank K beam candidates by their agreement with each other (minimum Bayes risk, "
        "CIDEr-D-like utility); 0 = off (the default)",
    )
    g.add_argument(
        "--guide-penalty",
        type=non_negative_float,
        default=d.guide_penalty,
        metavar="NATS",
        help="tag guidance: a caption that does not name the tag still wins when it is this much likelier "
        f"(log-prob; default {_D.guide_penalty}; {MAX_GUIDE_PENALTY:g} = always name it)",
    )
    g.add_argument(
        "--allow-unk", action="store_true", default=d.allow_unk, help="let <unk> appear in captions (research use)"
    )
    g.add_argument("--temperature", type=positive_float, default=d.temperature, help="sampling temperature")
    g.add_argument("--top-k", type=non_negative_int, default=d.top_k, help="sample from the k best words")
    g.add_argument("--top-p", type=unit_interval, default=d.top_p, help="nucleus sampling threshold")
    g.add_argument("--seed", type=int, default=None, help="random seed for --sample")


def decode_options(args: argparse.Namespace) -> dict:
    """The DecodeConfig keywords the flags ask for (method None lets DecodeConfig pick greedy/beam)."""
    names = {f.name for f in fields(DecodeConfig)}
    options = {k: v for k, v in vars(args).items() if k in names and k != "method"}
    options["method"] = "greedy" if args.greedy else "sample" if args.sample else None
    if args.greedy or args.sample:
        options["beam_size"] = 1
    if getattr(args, "decode_model_defaults", False):  # left out: the model's own setting
        options = {k: v for k, v in options.items() if v is not None}
        if "beam_size" in options and "n_best" not in options:
            options["n_best"] = 1  # a narrower beam than the model's n-best: one caption
    return options


def add_guide_args(p, default: GuideConfig | None) -> None:
    """--guide-threshold / --novel-guide-threshold (and --no-guide when guidance is on by default)."""
    on = default is not None
    d = default or GuideConfig()
    p.add_argument(
        "--guide-threshold",
        type=probability,
        default=d.threshold,
        metavar="P",
        help=f"{'' if on else 'with --guide: '}a tag this probable makes the caption name it (default "
        f"{d.threshold}); jsonl says which in 'guided'",
    )
    p.add_argument(
        "--novel-guide-threshold",
        type=probability,
        default=d.novel_threshold,
        metavar="P",
        help=f"the same for a word the model never learned (default {d.novel_threshold})",
    )
    p.add_argument(
        "--no-corpus-captions",
        action="store_true",
        help="never take a caption from human captions of an object the model barely knows "
        "(zebra, pizza, bus: see capgen.tags.corpus_captions)",
    )
    p.add_argument(
        "--no-scene-captions",
        action="store_true",
        help="never let human captions of similar scenes replace the model's caption of a photo "
        "without people, nor their share of people doubt the person head (see capgen.tags.scenes)",
    )
    p.add_argument(
        "--no-neighbour-captions",
        action="store_true",
        help="keep the beam's best caption instead of the candidate that agrees most with the captions "
        "of the nearest training photos (see capgen.tags.neighbours)",
    )
    if on:
        p.add_argument("--no-guide", action="store_true", help="captions from the model alone, without tag guidance")
    else:
        p.add_argument(
            "--guide", action="store_true", help="tag guidance as in capgen caption (default: off, the model alone)"
        )


def guide_config(args) -> GuideConfig | None:
    """The GuideConfig the flags ask for, or None without guidance."""
    if getattr(args, "no_guide", False) or not getattr(args, "guide", True):
        return None
    return guide_settings(args)


def guide_settings(args) -> GuideConfig:
    """The GuideConfig of the threshold and caption-text flags, whether guidance is on or not."""
    return GuideConfig(
        args.guide_threshold,
        args.novel_guide_threshold,
        corpus=not args.no_corpus_captions,
        scenes=not args.no_scene_captions,
        neighbours=not args.no_neighbour_captions,
    )
