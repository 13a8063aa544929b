"""`capgen export` and the torch-free `capgen.runtime`: same captions as the torch path, no torch
imported, and damaged or mismatched export folders refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import one_line_error

from capgen import Captioner
from capgen.checkpoint import model_payload, read_payload, save_checkpoint
from capgen.cli import main
from capgen.data.vocab import Vocabulary
from capgen.errors import CapgenError, ExportError
from capgen.models import create_model
from capgen.models.onnx import TOLERANCE
from capgen.runtime import Runtime
from capgen.runtime import folder as fmt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _transformer(tiny_run, tmp: Path, name: str, fill=None, **overrides) -> Path:
    """A tiny transformer (random weights) over the tiny encoder's features, saved as a checkpoint;
    fill(model, vocab) may set buffers first."""
    payload = read_payload(tiny_run.checkpoints["show_tell"])
    vocab = Vocabulary.from_dict(payload["vocab"])
    torch.manual_seed(0)
    model = create_model(
        "transformer",
        len(vocab),
        payload["feature_dim"],
        payload["num_regions"],
        overrides={"d_model": 16, "num_heads": 2, "ff_dim": 32, "num_layers": 2, **overrides},
    )
    if fill is not None:
        fill(model, vocab)
    path = tmp / f"{name}.pt"
    save_checkpoint(path, model_payload(model, vocab, payload["encoder"]))
    return path


@pytest.fixture(scope="module")
def checkpoints(tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-ckpts")
    return {
        **tiny_run.checkpoints,
        "transformer": _transformer(tiny_run, tmp, "transformer"),
        "transformer_learned": _transformer(tiny_run, tmp, "learned", positions="learned", max_positions=24),
        "ensemble": [tiny_run.checkpoints["show_tell"], tiny_run.checkpoints["show_attend_tell"]],
    }


@pytest.fixture(scope="module")
def exports(tiny_run, checkpoints, tmp_path_factory):
    """Every model exported once through the CLI: {model: folder}."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, ckpt in checkpoints.items():
        paths = [str(p) for p in (ckpt if isinstance(ckpt, list) else [ckpt])]
        assert main(["export", *paths, "--out", str(root / name), "--encoder", tiny_run.encoder]) == 0
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def photos(tiny_run):
    return [str(r.path) for r in tiny_run.prepared.records()[:8]]


@pytest.mark.parametrize("name", ["show_tell", "show_attend_tell", "transformer", "transformer_learned", "ensemble"])
def test_runtime_captions_equal_torch_captions(name, tiny_run, checkpoints, exports, photos):
    captioner = Captioner.from_pretrained(checkpoints[name], encoder=tiny_run.encoder, backend="onnx")
    rt = Runtime(exports[name], threads=1)
    info = json.loads((exports[name] / fmt.MODEL).read_text())
    assert info["architecture"] == name.split("_learned")[0] and info["step_max_diff"] < 1e-4
    for options in (
        {"beam_size": 1},
        {"beam_size": 3},
        {"beam_size": 3, "n_best": 3, "length_penalty": 0.7},
        {"beam_size": 1, "no_repeat_words": True, "max_len": 5},
        {"beam_size": 3, "min_words": 6, "max_words": 8},
        {"beam_size": 1, "max_words": 3},
    ):
        ref = captioner.caption(photos, **options)
        got = rt.caption(photos, **options)
        assert [r.caption for r in got] == [r.caption for r in ref], options
        assert [r.truncated for r in got] == [r.truncated for r in ref], options
        for r, g in zip(ref, got):  # within the export check's per-step tolerance (ONNX kernels are not torch's)
            assert g.score == pytest.approx(r.score, abs=TOLERANCE * (len(r.caption.split()) + 1)), options
        assert [a for r in got for a, _ in r.alternatives] == [a for r in ref for a, _ in r.alternatives]


def test_step_graphs_match_torch_steps(checkpoints, exports):
    """Feed the ONNX step its own state for several words: log-probs equal torch's to 1e-4."""
    from capgen.checkpoint import load_checkpoint
    from capgen.models.onnx import verify_decoder

    for name in ("show_tell", "show_attend_tell", "transformer"):
        model = load_checkpoint(checkpoints[name]).model
        rt = Runtime(exports[name])
        iface = {"memory": rt.memory_keys, "state": rt.state_keys}
        assert verify_decoder(model, exports[name] / fmt.INIT, exports[name] / fmt.STEP, iface, steps=8) < 1e-4


def test_runtime_never_imports_torch(exports, photos, tiny_run, checkpoints):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from capgen.runtime.__main__ import main\n"
        "rc = main([sys.argv[1], *sys.argv[2:], '--format', 'jsonl'])\n"
        "assert sys.modules['torch'] is None and not any(m.startswith('torch.') for m in sys.modules)\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(exports["transformer"]), *photos[:3]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = [json.loads(line)["caption"] for line in done.stdout.splitlines()]
    captioner = Captioner.from_pretrained(checkpoints["transformer"], encoder=tiny_run.encoder)
    assert got == [r.caption for r in captioner.caption(photos[:3])]


# ---- bad input -----------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _runtime_error(capsys, folder: Path, photo: str, *words) -> str:
    from capgen.runtime.__main__ import main as runtime_main

    code = runtime_main([str(folder), photo])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_damaged_export_folders_are_refused_naming_the_file(exports, photos, tmp_path, capsys):
    good = exports["show_tell"]
    tampered = _copy(good, tmp_path / "tampered")
    data = bytearray((tampered / fmt.STEP).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / fmt.STEP).write_bytes(bytes(data))
    _runtime_error(capsys, tampered, photos[0], "decoder_step.onnx", "content differs from manifest.json")

    missing = _copy(good, tmp_path / "missing")
    (missing / fmt.VOCAB).unlink()
    _runtime_error(capsys, missing, photos[0], "vocab.json", "missing")

    truncated = _copy(good, tmp_path / "truncated")
    (truncated / fmt.ENCODER).write_bytes((truncated / fmt.ENCODER).read_bytes()[:100])
    _runtime_error(capsys, truncated, photos[0], "encoder.onnx")

    unfinished = _copy(good, tmp_path / "unfinished")
    (unfinished / fmt.MANIFEST).unlink()
    _runtime_error(capsys, unfinished, photos[0], "manifest.json", "missing")


def test_wrong_vocabulary_or_graph_is_refused_even_with_a_rewritten_manifest(exports, photos, tmp_path, capsys):
    """Someone swaps in another export's file and regenerates manifest.json to match."""
    from capgen.io import write_json

    swapped = _copy(exports["show_tell"], tmp_path / "vocab")
    vocab = json.loads((swapped / fmt.VOCAB).read_text())
    vocab["itos"][4], vocab["itos"][5] = vocab["itos"][5], vocab["itos"][4]  # same size, other words
    write_json(swapped / fmt.VOCAB, vocab, indent=None)
    write_json(swapped / fmt.MANIFEST, fmt.manifest_for(swapped))
    _runtime_error(capsys, swapped, photos[0], "vocab.json", "not the vocabulary")

    other = _copy(exports["show_tell"], tmp_path / "graph")
    (other / fmt.STEP).write_bytes((exports["show_attend_tell"] / fmt.STEP).read_bytes())
    write_json(other / fmt.MANIFEST, fmt.manifest_for(other))
    line = _runtime_error(capsys, other, photos[0])
    assert "vocab.json" in line or "decoder_step.onnx" in line, line


def test_checkpoints_the_runtime_cannot_express_are_refused(tiny_run, checkpoints, tmp_path, capsys, monkeypatch):
    # Learned positions cover fewer words than the decoding settings ask for.
    short = _transformer(tiny_run, tmp_path, "short", positions="learned", max_positions=8)
    one_line_error(
        capsys,
        ["export", short, "--out", tmp_path / "a", "--encoder", tiny_run.encoder],
        "learned positions",
        "--max-len 7",
    )
    # An export's default decoding is a search; the runtime samples only when asked.
    one_line_error(
        capsys,
        ["export", checkpoints["show_tell"], "--out", tmp_path / "b", "--encoder", tiny_run.encoder, "--sample"],
        "greedy or beam",
    )
    # An encoder whose graph cannot be traced (numpy inside its forward): ONNX would compute constants.
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "capgen_untraceable_encoder.py").write_text(
        "import torch\nfrom capgen_tiny_session_encoder import build as tiny\n"
        "class _Numpy(torch.nn.Module):\n"
        "    def __init__(self, inner):\n        super().__init__(); self.inner = inner\n"
        "    def forward(self, x):\n        return torch.from_numpy(self.inner(x).detach().numpy() ** 2)\n"
        "def build():\n    enc = tiny(); enc.module = _Numpy(enc.module); return enc\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    one_line_error(
        capsys,
        ["export", checkpoints["show_tell"], "--out", tmp_path / "c", "--encoder", "capgen_untraceable_encoder:build"],
        "encoder",
        "cannot express",
    )
    # A decoder step with Python control flow on tensor values: traced once, it would decode wrongly.
    from capgen.export import export_captioner

    captioner = Captioner.from_pretrained(checkpoints["show_tell"], encoder=tiny_run.encoder, backend="onnx")
    step = captioner.model.step

    def branchy(tokens, state, memory):
        logp, new, att = step(tokens, state, memory)
        return (logp if int(tokens[0]) == 1 else logp.roll(1, dims=-1)), new, att  # traced with 1s

    monkeypatch.setattr(captioner.model, "step", branchy)
    with pytest.raises(ExportError, match="cannot express"):
        export_captioner(captioner, tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_export_replaces_only_an_earlier_export(tiny_run, checkpoints, exports, tmp_path, capsys):
    target = _copy(exports["show_tell"], tmp_path / "again")
    assert (
        main(
            [
                "export",
                str(checkpoints["show_attend_tell"]),
                "--out",
                str(target),
                "--encoder",
                tiny_run.encoder,
                "--beam-size",
                "2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert json.loads((target / fmt.MODEL).read_text())["architecture"] == "show_attend_tell"
    assert json.loads((target / fmt.DECODING).read_text())["beam_size"] == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(
        capsys, ["export", checkpoints["show_tell"], "--out", other, "--encoder", tiny_run.encoder], "not empty"
    )
    assert (other / "notes.txt").read_text() == "mine"


def test_export_never_replaces_a_folder_it_did_not_write(tiny_run, checkpoints, tmp_path, capsys):
    """A folder holding some other manifest.json (a web app's, a prepared dataset's) is not an export."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "pwa"}')
    (app / "index.html").write_text("hi")
    one_line_error(
        capsys, ["export", checkpoints["show_tell"], "--out", app, "--encoder", tiny_run.encoder], "not a capgen export"
    )
    assert (app / "index.html").read_text() == "hi"
    prepared = _copy(tiny_run.prepared.root, tmp_path / "prepared")
    one_line_error(
        capsys,
        ["export", checkpoints["show_tell"], "--out", prepared, "--encoder", tiny_run.encoder],
        "not a capgen export",
    )
    assert (prepared / "train.jsonl").is_file()


def test_a_deeply_nested_manifest_is_one_line(exports, photos, tmp_path, capsys):
    folder = _copy(exports["show_tell"], tmp_path / "deep")
    (folder / fmt.MANIFEST).write_text("[" * 100_000)
    _runtime_error(capsys, folder, photos[0], "manifest.json", "nested too deeply")


def _edit_json(name: str, edit):
    def apply(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        edit(data)
        (folder / name).write_text(json.dumps(data))

    return apply


@pytest.mark.parametrize(
    "edit, words",
    [
        (_edit_json(fmt.MODEL, lambda m: m["encoder"].update(grid=["9", "9"])), ["model.json", "'grid'"]),
        (_edit_json(fmt.MODEL, lambda m: m["encoder"].update(dim="8")), ["model.json", "'dim'"]),
        (_edit_json(fmt.MODEL, lambda m: m["state"].append("x")), ["decoder_init.onnx", "outputs"]),
        (_edit_json(fmt.MODEL, lambda m: m["memory"].append(3)), ["model.json", "'memory'"]),
        (_edit_json(fmt.MODEL, lambda m: m.update(max_len_limit="x")), ["model.json", "'max_len_limit'"]),
        (_edit_json(fmt.MODEL, lambda m: m.update(shared_memory="yes")), ["model.json", "'shared_memory'"]),
        (_edit_json(fmt.MODEL, lambda m: m.update(vocab_size="x")), ["model.json", "'vocab_size'"]),
        (_edit_json(fmt.DECODING, lambda m: m.update(beam_size=True)), ["decoding.json", "beam_size", "integer"]),
        (_edit_json(fmt.DECODING, lambda m: m.update(max_len=2.5)), ["decoding.json", "max_len", "integer"]),
        (_edit_json(fmt.DECODING, lambda m: m.update(no_repeat_words=3)), ["decoding.json", "no_repeat_words"]),
    ],
    ids=[
        "grid strings",
        "dim string",
        "extra state key",
        "memory key a number",
        "max_len_limit string",
        "shared_memory string",
        "vocab_size string",
        "beam_size true",
        "max_len float",
        "no_repeat_words int",
    ],
)
def test_edited_fields_of_the_wrong_type_are_refused_by_name(edit, words, exports, photos, tmp_path, capsys):
    """With the manifest re-hashed to match, each gave a raw traceback (TypeError, KeyError...)."""
    from capgen.io import write_json

    folder = _copy(exports["show_attend_tell"], tmp_path / "edited")
    edit(folder)
    write_json(folder / fmt.MANIFEST, fmt.manifest_for(folder))
    _runtime_error(capsys, folder, photos[0], *words)


def test_manifest_sizes_must_be_integers(exports, photos, tmp_path, capsys):
    """It said "25680 bytes, the manifest says 25680" for a size given as a string."""
    folder = _copy(exports["show_tell"], tmp_path / "edited")
    manifest = json.loads((folder / fmt.MANIFEST).read_text())
    manifest["files"][fmt.VOCAB]["bytes"] = str(manifest["files"][fmt.VOCAB]["bytes"])
    (folder / fmt.MANIFEST).write_text(json.dumps(manifest))
    _runtime_error(capsys, folder, photos[0], "manifest.json", "vocab.json", "'bytes'", "integer")


def test_symlinks_and_unlisted_files_in_an_export_are_refused(exports, photos, tmp_path, capsys):
    """A file linked to a copy outside the folder passed (whatever the copy later holds), and a file
    the manifest does not list (an ONNX external-data file, say) was never hash-checked."""
    linked = _copy(exports["show_tell"], tmp_path / "linked")
    outside = _copy(exports["show_tell"], tmp_path / "outside")
    (linked / fmt.VOCAB).unlink()
    (linked / fmt.VOCAB).symlink_to(outside / fmt.VOCAB)
    _runtime_error(capsys, linked, photos[0], "vocab.json", "symbolic link")

    extra = _copy(exports["show_tell"], tmp_path / "extra")
    (extra / "weights.bin").write_bytes(b"\0" * 64)
    _runtime_error(capsys, extra, photos[0], "weights.bin", "not part of the export")


def test_the_manifest_names_the_weights_it_was_exported_from(checkpoints, exports, photos, tmp_path, capsys):
    """Issue 20 #15: the export records each checkpoint's weights_sha256 and the runtime reports it."""
    for name in ("show_tell", "ensemble"):
        paths = checkpoints[name] if isinstance(checkpoints[name], list) else [checkpoints[name]]
        want = [read_payload(p)["weights_sha256"] for p in paths]
        assert json.loads((exports[name] / fmt.MANIFEST).read_text())["weights_sha256"] == want
        assert Runtime(exports[name]).weights_sha256 == tuple(want)
        assert Captioner.from_pretrained(exports[name]).info()["weights_sha256"] == want
    old = _copy(exports["show_tell"], tmp_path / "old")  # an export from before the field: still loads
    manifest = json.loads((old / fmt.MANIFEST).read_text())
    del manifest["weights_sha256"]
    (old / fmt.MANIFEST).write_text(json.dumps(manifest))
    assert Runtime(old).weights_sha256 == ()
    manifest["weights_sha256"] = ["not a hash"]
    (old / fmt.MANIFEST).write_text(json.dumps(manifest))
    _runtime_error(capsys, old, photos[0], "manifest.json", "weights_sha256", "sha256 hex digests")


def test_an_exported_folder_captions_like_its_checkpoint_through_the_captioner(tiny_run, checkpoints, exports, photos):
    ref = Captioner.from_pretrained(checkpoints["show_attend_tell"], encoder=tiny_run.encoder, backend="onnx")
    cap = Captioner.from_pretrained(exports["show_attend_tell"])
    assert type(cap).__name__ == "ExportedCaptioner" and cap.name == ref.name
    for options in ({"beam_size": 1}, {"beam_size": 3, "n_best": 2}):
        got, want = cap.caption(photos, **options), ref.caption(photos, **options)
        assert [r.to_dict() for r in got] == [r.to_dict() for r in want], options
    with pytest.raises(CapgenError, match="needs a .pt checkpoint"):
        cap.caption(photos[0], return_attention=True)
    with pytest.raises(CapgenError, match="needs a .pt checkpoint"):
        Captioner.from_pretrained(exports["show_tell"], backend="torch")


def test_capgen_info_describes_a_model_and_prints_the_bundled_card(exports, capsys):
    import json

    from capgen.cli import main

    assert main(["info", str(exports["show_tell"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["architecture"] == "show_tell" and out["card"] is None
    assert main(["info", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["architecture"] == "transformer" and "## Intended use" in out["card"]
    assert main(["info", str(exports["show_tell"] / "missing")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_the_runtime_samples_when_asked_seeded_from_its_flags(exports, photos, capsys):
    """The one search samples over ONNX Runtime too (numpy's generator, seeded by --seed)."""
    from capgen.runtime.__main__ import main as runtime_main

    rt = Runtime(exports["show_tell"], threads=1)
    a, b = (rt.caption(photos, method="sample", seed=s) for s in (7, 7))
    assert [r.caption for r in a] == [r.caption for r in b] and all(r.caption and r.guided is None for r in a)
    top1 = rt.caption(photos, method="sample", seed=1, top_k=1, guide=None)  # top-k 1 is greedy
    assert [r.caption for r in top1] == [r.caption for r in rt.caption(photos, beam_size=1, guide=None)]
    capsys.readouterr()
    args = [str(exports["show_tell"]), *photos[:3], "--sample", "--seed", "7", "--format", "jsonl"]
    assert runtime_main(args) == 0
    # the same draws for the same batch (a seed seeds the batch's generator)
    same = [r.caption for r in rt.caption(photos[:3], method="sample", seed=7)]
    assert [json.loads(line)["caption"] for line in capsys.readouterr().out.splitlines()] == same


def test_the_runtime_flags_refuse_bad_values_in_one_line(exports, photos, capsys):
    from capgen.runtime.__main__ import main as runtime_main

    for bad in (["--beam-size", "0"], ["--top-p", "2"], ["--greedy", "--sample"]):
        with pytest.raises(SystemExit) as e:
            runtime_main([str(exports["show_tell"]), photos[0], *bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "usage" not in err, err
    assert runtime_main([str(exports["show_tell"]), photos[0], "--n-best", "9"]) == 2  # past the export's beam
    assert "n_best (9) must be <= beam_size" in capsys.readouterr().err


def test_half_precision_weights_are_stored_in_half_with_bit_identical_steps(tiny_run, tmp_path):
    """A checkpoint saved in float16 (as the bundled one is) exports its float32 graphs' weights in
    float16 behind a Cast, and the tied output layer as a Transpose of the word vectors: a smaller
    folder whose log-probs and states equal the plain graphs' bit for bit."""
    import numpy as np
    import onnx

    from capgen.checkpoint import load_checkpoint
    from capgen.models.onnx import export_decoder, store_compact
    from capgen.runtime.graphs import DecoderGraphs

    plain = _transformer(tiny_run, tmp_path, "plain", d_model=64, ff_dim=64)
    ck = load_checkpoint(plain)
    half = tmp_path / "half.pt"
    save_checkpoint(half, model_payload(ck.model, ck.vocab, ck.encoder, half=True))
    model = load_checkpoint(half).model.eval()
    iface = export_decoder(model, tmp_path / "init.onnx", tmp_path / "step.onnx")
    sizes = {name: (tmp_path / name).stat().st_size for name in ("init.onnx", "step.onnx")}
    for name in sizes:
        (tmp_path / f"compact-{name}").write_bytes((tmp_path / name).read_bytes())
        counts = store_compact(tmp_path / f"compact-{name}")
        assert counts["float16"] > 0 and (tmp_path / f"compact-{name}").stat().st_size < sizes[name]
    assert (tmp_path / "compact-step.onnx").stat().st_size < 0.6 * sizes["step.onnx"]
    step = onnx.load(str(tmp_path / "compact-step.onnx"))
    assert "Transpose" in {n.op_type for n in step.graph.node}
    assert {t.data_type for t in step.graph.initializer} >= {onnx.TensorProto.FLOAT16}

    a = DecoderGraphs(tmp_path / "init.onnx", tmp_path / "step.onnx", iface["memory"], iface["state"])
    b = DecoderGraphs(tmp_path / "compact-init.onnx", tmp_path / "compact-step.onnx", iface["memory"], iface["state"])
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((3, model.feature_dim)).astype(np.float32)
    grid = rng.standard_normal((3, model.num_regions, model.feature_dim)).astype(np.float32)
    (mem_a, state_a), (mem_b, state_b) = a.start(pooled, grid), b.start(pooled, grid)
    for _ in range(5):
        tokens = rng.integers(0, model.vocab_size, 3)
        (logp_a, state_a), (logp_b, state_b) = a.step(tokens, state_a, mem_a), b.step(tokens, state_b, mem_b)
        assert np.array_equal(logp_a, logp_b)
        assert all(np.array_equal(state_a[k], state_b[k]) for k in state_a)

    # Float32 weights that are not float16 values stay as they are.
    export_decoder(load_checkpoint(plain).model.eval(), tmp_path / "plain-init.onnx", tmp_path / "plain-step.onnx")
    assert store_compact(tmp_path / "plain-step.onnx")["float16"] == 0


def test_the_runtime_scores_given_captions_as_the_captioner_does(tiny_run, checkpoints, exports, photos):
    """Captions of similar scenes are ranked by the decoder's log-probability of them: the torch
    path, the runtime and the exported captioner give the same, through their own steps."""
    import numpy as np

    cap = Captioner.from_pretrained(checkpoints["transformer"], encoder=tiny_run.encoder, backend="torch")
    rt = Runtime(exports["transformer"], threads=1)
    pooled, grid = rt.encode(photos[:2])
    words = [w for w in cap.vocab.itos if not w.startswith("<")]
    captions = [tuple(words[:5]), tuple(words[3:5]), tuple(reversed(words[:7]))]
    want = cap.scorer(pooled, grid)([1], [captions], None)[0]
    assert want.shape == (3,) and np.all(want < 0)
    # ONNX kernels are not torch's: within the export check's per-step tolerance
    assert rt.scorer(pooled, grid)([1], [captions], None)[0] == pytest.approx(want, abs=TOLERANCE)
    exported = Captioner.from_pretrained(exports["transformer"]).scorer(pooled, grid)
    both = exported([0, 1], [captions[:1], captions], None)
    assert both[1] == pytest.approx(want, abs=TOLERANCE) and both[0].shape == (1,)


def test_a_scene_scorer_scores_as_its_checkpoint_and_refuses_a_changed_file(
    tiny_run, checkpoints, photos, tmp_path, monkeypatch
):
    """The scene scorer folder (a tag-reading decoder that judges captions of similar scenes) gives
    its checkpoint's scores through ONNX Runtime with the tagger's word probabilities as input, is
    used only with the encoder and tagger it was trained with, and a changed file is refused by name."""
    from importlib import resources

    import numpy as np

    from capgen.export.scene_scorer import write_scene_scorer
    from capgen.runtime import scene_scorer as sc
    from capgen.tags.head import LinearHead, tagger_id
    from capgen.tags.tagger import Tagger
    from capgen.tags.words import WordMap

    cap = Captioner.from_pretrained(checkpoints["transformer"], encoder=tiny_run.encoder, backend="torch")
    spec = cap.encoder.spec()
    rng = np.random.default_rng(0)
    head = LinearHead(rng.normal(size=(3, spec["dim"])).astype(np.float32), np.zeros(3, np.float32), "tiny")
    words = WordMap.from_lines(["0\tcat\tcat", "1\tdog\tdog", "2\ttabby\tcat"])
    name = tagger_id(spec["name"], head.weight, head.bias, words.class_words)
    built = {}

    def fill(model, vocab):  # the tag words: two words of the vocabulary
        model.tags.word_ids.copy_(torch.tensor([[vocab.stoi[w]] for w in vocab.itos[4:6]]))
        built.update(model=model, vocab=vocab)

    tags = {"tag_tokens": 2, "tag_classes": 3, "tag_words": 2, "tag_word_len": 1, "tagger": name}
    ckpt = _transformer(tiny_run, tmp_path, "tags", fill=fill, **tags)
    tag_model, vocab = built["model"], built["vocab"]
    folder = tmp_path / "scorer"
    # A decoder that reads no tags cannot judge with the tagger's words; nothing is left behind
    with pytest.raises(ExportError, match="reads no tags"):
        write_scene_scorer(checkpoints["transformer"], tmp_path / "plain", encoder=tiny_run.encoder)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".plain", "plain"))]
    summary = write_scene_scorer(ckpt, folder, half=False, int8=False, encoder=tiny_run.encoder)
    assert set(summary["files"]) == set(sc.FILES) and summary["max_diff"] < TOLERANCE
    scene = sc.SceneScorer(folder)

    pooled, grid = cap.encode(photos[:2])
    probs = np.array([[0.7, 0.2], [0.1, 0.05]], dtype=np.float32)
    captions = [tuple(vocab.itos[4:8]), tuple(vocab.itos[6:13])]
    got = scene.scores(pooled, grid, probs, [captions, captions[:1]])
    assert [g.shape for g in got] == [(2,), (1,)]
    ids = [vocab.encode(c) for c in [*captions, captions[0]]]  # <start> ... <end>
    padded = torch.full((3, max(map(len, ids))), 0, dtype=torch.long)
    for r, c in enumerate(ids):
        padded[r, : len(c)] = torch.tensor(c)
    with torch.no_grad():
        logp = torch.log_softmax(
            tag_model.eval()(
                torch.from_numpy(pooled),
                torch.from_numpy(grid),
                padded,
                torch.tensor([0, 0, 1]),
                torch.from_numpy(probs),
            )["logits"],
            -1,
        )
    want = [float(logp[r, torch.arange(len(c) - 1), torch.tensor(c[1:])].mean()) for r, c in enumerate(ids)]
    assert np.concatenate(got) == pytest.approx(want, abs=TOLERANCE)
    # The shipped form: float16 weights, MatMuls in int8, within the int8 check of its export
    from capgen.models.onnx_score import INT8_TOLERANCE

    small = write_scene_scorer(ckpt, tmp_path / "scorer8", encoder=tiny_run.encoder)
    assert 0 < small["max_diff"] < INT8_TOLERANCE
    assert json.loads((tmp_path / "scorer8" / sc.INDEX).read_text())["int8"] is True
    got8 = sc.SceneScorer(tmp_path / "scorer8").scores(pooled, grid, probs, [captions, captions[:1]])
    assert np.concatenate(got8) == pytest.approx(want, abs=INT8_TOLERANCE)
    # A photo scores the same whatever is scored beside it (int8 activations are scaled per call)
    alone8 = sc.SceneScorer(tmp_path / "scorer8").scores(pooled[1:], grid[1:], probs[1:], [captions[:1]])
    assert np.array_equal(alone8[0], got8[1])

    # Used where it fits (this encoder, this tagger): instead of the captioner's own decoder
    tagger = Tagger(head, words)
    assert scene.fits(spec, tagger) and not scene.fits(spec, None)
    assert not scene.fits(spec, Tagger(head, WordMap.from_lines(["0\tcat\tcat", "1\tdog\tdog", "2\tpug\tdog"])))
    monkeypatch.setattr(sc, "bundled", lambda: scene)
    never = lambda images, captions, word_probs: pytest.fail("the captioner's own decoder scored")  # noqa: E731
    chosen = sc.preferred(spec, tagger, never, pooled[:1], grid[:1])([0], [captions], probs[:1])
    assert chosen[0] == pytest.approx(got[0], rel=1e-6)
    own = lambda images, captions, word_probs: ["own"]  # noqa: E731
    assert sc.preferred({**spec, "dim": 1}, tagger, own, pooled, grid)([1], [captions], probs[1:]) == ["own"]
    # The bundled captioner on the tiny encoder: its own decoder scores, as before
    monkeypatch.undo()
    own = cap.scorer(pooled, grid)([0], [captions], probs[:1])[0]
    assert own.shape == (2,) and np.all(own < 0)

    index = json.loads((folder / sc.INDEX).read_text())
    for edit, words in (
        ({"format": "capgen-export"}, "not a capgen scene scorer"),
        ({"files": ["decoder_init.onnx"]}, "field 'files' must be dict"),
        ({"version": 1}, "not a capgen scene scorer"),  # 0.5.0's init and step graphs
        ({"tagger": None}, "field 'tagger' must be str"),
    ):
        (folder / sc.INDEX).write_text(json.dumps({**index, **edit}))
        with pytest.raises(ExportError, match=words):
            sc.SceneScorer(folder)
    (folder / sc.INDEX).write_text(json.dumps(index))
    graph = folder / sc.GRAPH
    kept = graph.read_bytes()
    graph.write_bytes(kept[:-1] + bytes([kept[-1] ^ 1]))
    with pytest.raises(ExportError, match="scorer.onnx: content differs"):
        sc.SceneScorer(folder)
    graph.write_bytes(kept)
    (folder / "scorer.onnx.data").write_bytes(b"\0" * 64)  # an external-data file nobody hashed
    with pytest.raises(ExportError, match="scorer.onnx.data: not part of the scene scorer"):
        sc.SceneScorer(folder)
    (folder / "scorer.onnx.data").unlink()
    # Another graph in its place, listed in the index: refused as not a scoring graph
    from capgen.models.onnx import export_decoder

    export_decoder(tag_model, tmp_path / "init.onnx", graph)
    entry = {"sha256": fmt.sha256_file(graph), "bytes": graph.stat().st_size}
    (folder / sc.INDEX).write_text(json.dumps({**index, "files": {**index["files"], sc.GRAPH: entry}}))
    with pytest.raises(ExportError, match="scorer.onnx: not a scoring graph"):
        sc.SceneScorer(folder)
    graph.write_bytes(kept[:-1] + bytes([kept[-1] ^ 1]))
    (folder / sc.INDEX).write_text(json.dumps(index))
    # The package's own scorer, damaged: the message says to reinstall
    monkeypatch.setattr(sc, "FOLDER", os.path.relpath(folder, str(resources.files("capgen"))))
    sc.bundled.cache_clear()
    with pytest.raises(ExportError, match="content differs.*reinstall capgen"):
        sc.bundled()
    sc.bundled.cache_clear()
    (folder / sc.INDEX).unlink()
    with pytest.raises(ExportError, match="scorer.json: missing"):
        sc.SceneScorer(folder)


def test_the_bundled_scene_scorer_fits_the_bundled_captioner():
    from capgen.inference.captioner import bundled_export_path
    from capgen.runtime import Runtime
    from capgen.runtime import scene_scorer as sc

    scene = sc.bundled()
    assert scene is not None and len(scene.vocab) > 2539  # COCO's words are its own
    rt = Runtime(bundled_export_path(), verify=False)
    assert scene.fits(rt.encoder_spec, rt.tagger)
