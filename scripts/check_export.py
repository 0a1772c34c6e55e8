#!/usr/bin/env python3
"""Checks that weights exported by rnn-core load into PyTorch and compute the same outputs.

    RNN_EXPORT_TO=/tmp/export cargo test -p rnn-core --test engine golden::pytorch_weights_roundtrip
    python3 scripts/check_export.py /tmp/export

Each exported file DIR/NAME.safetensors holds the weights of fixture NAME (with and without
recurrent biases, bidirectional, with a token embedding, with LSTM projections), saved by rnn-core. Each must load into a PyTorch model built from its
metadata with load_state_dict(strict=True), and that model, run on the fixture's inputs as
scripts/torch_fixtures.py ran it, must give the fixture's outputs.
"""
import os
import sys
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "rnn-core", "tests", "fixtures")


def model(meta):
    m = nn.Module()
    sizes = (int(meta["input_size"]), int(meta["hidden_size"]))
    bidirectional = meta.get("bidirectional", "false") == "true"
    kw = {"num_layers": int(meta["layers"]), "bias": meta.get("bias", "true") == "true",
          "bidirectional": bidirectional}
    cell = meta.get("cell", "rnn")
    if meta.get("num_embeddings", "none") != "none":
        m.embedding = nn.Embedding(int(meta["num_embeddings"]), sizes[0]).double()
    if cell == "rnn":
        m.rnn = nn.RNN(*sizes, nonlinearity=meta["nonlinearity"], **kw).double()
    else:
        if meta.get("proj_size", "none") != "none":
            kw["proj_size"] = int(meta["proj_size"])
        m.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](*sizes, **kw).double()
    width = (2 if bidirectional else 1) * kw.get("proj_size", int(meta["hidden_size"]))
    m.head = nn.Linear(width, int(meta["output_size"])).double()
    return m, cell


def check(path, name):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    m, cell = model(meta)
    m.load_state_dict(load_file(path), strict=True)
    inputs = load_file(os.path.join(FIXTURES, f"{name}.in.safetensors"))
    with safe_open(os.path.join(FIXTURES, f"{name}.in.safetensors"), "pt") as f:
        fixture_meta = f.metadata()
    expected = load_file(os.path.join(FIXTURES, f"{name}.expected.safetensors"))
    x = m.embedding(inputs["x"]) if hasattr(m, "embedding") else inputs["x"]
    state = (inputs["h0"], inputs["c0"]) if cell == "lstm" else inputs["h0"]
    if "lengths" in inputs:
        packed = pack_padded_sequence(x, inputs["lengths"], enforce_sorted=False)
        out, hn = m.rnn(packed, state)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    else:
        out, hn = m.rnn(x, state)
    if cell == "lstm":
        hn = hn[0]
    last = torch.cat([hn[-2], hn[-1]], dim=1) if m.rnn.bidirectional else hn[-1]
    y = m.head(last) if fixture_meta["many_to_one"] == "true" else m.head(out)
    err = (y - expected["out.y"]).abs().max().item()
    print(f"{name}: loaded {len(m.state_dict())} tensors strictly; max |y - expected| = {err:.3e}")
    return err < 1e-12


directory = sys.argv[1]
files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
results = [check(os.path.join(directory, f), f[: -len(".safetensors")]) for f in files]
sys.exit(0 if files and all(results) else 1)
