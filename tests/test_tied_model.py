"""Tiny models whose output layer is their input embedding (`build_tiny_model(tie_word_embeddings=True)`, as
Llama-3.2-1B), and the check the smoke run applies to a tied model's export. The tied model's trip through the
trainer's export and every weight sync, against fresh engines with the engine core out of process, is the TP 1
rows of the smoke check (tests/test_smoke.py)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def keys(path):
    with safe_open(str(path / "model.safetensors"), framework="pt") as sf:
        return set(sf.keys())


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    from east_ds.data.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tied") / "model", seed=0, tie_word_embeddings=True)


def test_tied_model_stores_the_embedding_once_and_loads_tied(tied, tmp_path):
    from transformers import AutoModelForCausalLM

    from east_ds.data.tiny import build_tiny_model

    assert json.loads((tied / "config.json").read_text())["tie_word_embeddings"] is True
    assert "model.embed_tokens.weight" in keys(tied) and "lm_head.weight" not in keys(tied)
    m = AutoModelForCausalLM.from_pretrained(str(tied))
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    again = build_tiny_model(tmp_path / "again", seed=0, tie_word_embeddings=True)  # same arguments, same bits
    a, b = load_file(str(tied / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_tiny_model_stays_untied(tmp_path):
    from east_ds.data.tiny import build_tiny_model

    plain = build_tiny_model(tmp_path / "plain", seed=0)
    assert json.loads((plain / "config.json").read_text())["tie_word_embeddings"] is False
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= keys(plain)
    assert json.loads((plain / "east_ds_tiny.json").read_text()) == {"size": "tiny", "seed": 0}


def test_tied_export_check_accepts_the_embedding_alone_or_an_equal_lm_head(tied, tmp_path):
    import shutil

    from east_ds.checks.smoke import check_tied_export

    assert check_tied_export(tied) == "export holds the embedding only"
    copy = tmp_path / "with_head"
    shutil.copytree(tied, copy)
    weights = load_file(str(copy / "model.safetensors"))
    embed = weights["model.embed_tokens.weight"]
    save_file({**weights, "lm_head.weight": embed.clone()}, str(copy / "model.safetensors"))
    assert check_tied_export(copy) == "export's lm_head equals its embedding"
    save_file({**weights, "lm_head.weight": embed + 1}, str(copy / "model.safetensors"))
    with pytest.raises(AssertionError, match="lm_head differs from its tied input embedding"):
        check_tied_export(copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(AssertionError, match="no longer ties"):
        check_tied_export(copy)
