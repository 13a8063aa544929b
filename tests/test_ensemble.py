"""Ensembles: several checkpoints decoded as one model by the one batched decoder."""

import json
from pathlib import Path

import pytest
import torch

from capgen import Captioner
from capgen.checkpoint import CheckpointError, load_checkpoint, load_checkpoints, read_payload, save_checkpoint
from capgen.cli import main
from capgen.decoding import DecodeConfig, decode
from capgen.models import ModelError
from capgen.models.ensemble import EnsembleModel
from test_models import IDS, build, features


def test_an_ensemble_of_one_model_twice_decodes_like_the_model():
    model = build("transformer", vocab_size=20).eval()
    pooled, grid = features(3, seed=1)
    cfg = DecodeConfig(beam_size=3, n_best=2, max_len=6, return_attention=True)
    alone = decode(model, pooled, grid, IDS, cfg)
    both = decode(EnsembleModel([model, model]), pooled, grid, IDS, cfg)
    for a, b in zip(alone, both):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-5)
        assert b[0].attention.shape == a[0].attention.shape


def test_ensemble_averages_member_log_probs():
    a, b = build("show_tell", vocab_size=20).eval(), build("transformer", vocab_size=20).eval()
    ens = EnsembleModel([a, b])
    pooled, grid = features(2, seed=2)
    tokens = torch.full((2,), IDS.start)
    with torch.no_grad():
        ma, mb = a.init_memory(pooled, grid), b.init_memory(pooled, grid)
        la = a.step(tokens, a.init_state(ma), ma)[0]
        lb = b.step(tokens, b.init_state(mb), mb)[0]
        m = ens.init_memory(pooled, grid)
        le, _, att = ens.step(tokens, ens.init_state(m), m)
    torch.testing.assert_close(le, ((la + lb) / 2).log_softmax(-1))
    assert att is None  # show_tell has no attention, so the ensemble offers none
    assert not ens.supports_attention


def test_members_that_do_not_fit_together():
    with pytest.raises(ModelError, match="disagree"):
        EnsembleModel([build("show_tell", vocab_size=20), build("show_tell", vocab_size=21)])
    with pytest.raises(ModelError, match="at least 2"):
        EnsembleModel([build("show_tell", vocab_size=20)])


def test_checkpoint_ensembles_through_captioner_cli_and_errors(tiny_run, tmp_path, capsys):
    ckpts = [tiny_run.checkpoints["show_attend_tell"], tiny_run.checkpoints["show_tell"]]
    ck = load_checkpoints(ckpts)
    assert isinstance(ck.model, EnsembleModel) and ck.vocab.itos == load_checkpoint(ckpts[0]).vocab.itos
    cap = Captioner.from_pretrained(ckpts, encoder=tiny_run.encoder)
    photo = tiny_run.prepared.split("test")[0].path
    assert cap.caption(photo).caption
    args = ["caption", str(photo), "--encoder", tiny_run.encoder, "--format", "jsonl"]
    assert main(args + ["--model", str(ckpts[0]), "--model", str(ckpts[1])]) == 0
    assert json.loads(capsys.readouterr().out)["caption"]
    # evaluate takes several checkpoints
    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                *map(str, ckpts),
                "--data",
                str(tiny_run.prepared.root),
                "--features",
                str(tiny_run.cache.root),
                "--out",
                str(out),
                "--no-meteor",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["checkpoint"] == [str(p) for p in ckpts]
    capsys.readouterr()
    # a member with another vocabulary: one line naming it
    payload = read_payload(ckpts[1])
    payload["vocab"]["itos"] = payload["vocab"]["itos"][:-1] + ["zzz"]
    save_checkpoint(tmp_path / "other.pt", payload)
    with pytest.raises(CheckpointError, match="share the vocabulary"):
        load_checkpoints([ckpts[0], tmp_path / "other.pt"])
    payload = read_payload(ckpts[1])
    payload["encoder"]["name"] = "efficientnet-lite0"
    save_checkpoint(tmp_path / "enc.pt", payload)
    assert main(args + ["--model", str(ckpts[0]), "--model", str(tmp_path / "enc.pt")]) == 2
    err = capsys.readouterr().err
    assert "share the encoder input" in err and len(err.strip().splitlines()) == 1
    assert Path(tmp_path / "enc.pt").exists()
