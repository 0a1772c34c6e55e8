#!/usr/bin/env python3
"""Checks that weights exported by rnn-core load into PyTorch and compute the same outputs.

    RNN_EXPORT_TO=/tmp/export.safetensors cargo test -p rnn-core --test engine golden::pytorch_weights_roundtrip
    python3 scripts/check_export.py /tmp/export.safetensors

The exported model is the `relu_ce_2layers` fixture's; its outputs must equal PyTorch's own.
"""
import os
import sys
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

path = sys.argv[1]
with safe_open(path, "pt") as f:
    meta = f.metadata()
m = nn.Module()
sizes = (int(meta["input_size"]), int(meta["hidden_size"]))
cell = meta.get("cell", "rnn")
if cell == "rnn":
    m.rnn = nn.RNN(*sizes, num_layers=int(meta["layers"]), nonlinearity=meta["nonlinearity"]).double()
else:
    m.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](*sizes, num_layers=int(meta["layers"])).double()
m.head = nn.Linear(int(meta["hidden_size"]), int(meta["output_size"])).double()
m.load_state_dict(load_file(path), strict=True)
fixtures = os.path.join(os.path.dirname(__file__), "..", "rnn-core", "tests", "fixtures")
inputs = load_file(os.path.join(fixtures, "relu_ce_2layers.in.safetensors"))
expected = load_file(os.path.join(fixtures, "relu_ce_2layers.expected.safetensors"))
out, _ = m.rnn(inputs["x"], inputs["h0"])
y = m.head(out)
err = (y - expected["out.y"]).abs().max().item()
print(f"loaded {len(m.state_dict())} tensors strictly; max |y - expected| = {err:.3e}")
sys.exit(0 if err < 1e-12 else 1)
