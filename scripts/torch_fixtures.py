#!/usr/bin/env python3
"""Writes PyTorch parity fixtures for rnn-core's grad_dump format.

    pip install torch safetensors numpy && python3 scripts/torch_fixtures.py

For each case: rnn-core/tests/fixtures/<name>.in.safetensors (grad_dump's input) and
<name>.expected.safetensors (what PyTorch computes: out.loss, out.y, out.h_last, grad.*).
Variable lengths go through pack_padded_sequence, as a PyTorch user would write it.
Also train_*.safetensors (optimizer steps), tbptt_*.safetensors (TBPTT training loops),
half_*.safetensors (models saved in bf16 / f16, for loading) and plateau_*.safetensors
(ReduceLROnPlateau's rates on a metric sequence), ctc_*.safetensors (nn.CTCLoss's losses and
gradients), one_cycle_*.safetensors (OneCycleLR's rates and momenta).
"""
import os
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "rnn-core", "tests", "fixtures")


class Model(nn.Module):
    def __init__(self, i, h, o, layers, nonlinearity, cell="rnn", bias=True, bidirectional=False,
                 vocab=None, proj=0):
        super().__init__()
        if vocab is not None:
            self.embedding = nn.Embedding(vocab, i)
        if cell == "rnn":
            self.rnn = nn.RNN(i, h, num_layers=layers, nonlinearity=nonlinearity, bias=bias,
                              bidirectional=bidirectional)
        else:
            extra = {"proj_size": proj} if proj else {}
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](i, h, num_layers=layers, bias=bias,
                                                              bidirectional=bidirectional, **extra)
        s = proj or h
        self.head = nn.Linear(2 * s if bidirectional else s, o)


M64, M32, GOLDEN = (1 << 64) - 1, (1 << 32) - 1, 0x9E3779B97F4A7C15


def mix64(x):
    """SplitMix64's finaliser, as kernels::dropout::mix64."""
    z = (x + GOLDEN) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def drop_mask(p, seed, layer, T, B, H, dtype):
    """rnn-core's dropout mask of layer `layer`'s output, [T, B, H], kept entries 1/(1-p):
    element j of row r = t*B + b is kept when Murmur3's fmix32 of (the row key ^ j*phi)
    reaches round(p * 2^32), the row key being mix64(layer seed + r*GOLDEN) folded to 32 bits
    (kernels::dropout::DropMask with seed mix64(seed + layer), as rnn_core::dropout)."""
    layer_seed = mix64((seed + layer) & M64)
    threshold = min(int(p * 2**32 + 0.5), M32)
    mask = torch.zeros(T * B, H, dtype=dtype)
    for r in range(T * B):
        z = mix64((layer_seed + r * GOLDEN) & M64)
        key = (z ^ (z >> 32)) & M32
        for j in range(H):
            h = key ^ ((j * 0x9E3779B9) & M32)
            h ^= h >> 16
            h = (h * 0x85EBCA6B) & M32
            h ^= h >> 13
            h = (h * 0xC2B2AE35) & M32
            h ^= h >> 16
            if h >= threshold:
                mask[r, j] = 1.0 / (1.0 - p)
    return mask.reshape(T, B, H)


def dropped_stack(m, cell, x, state, lengths, dropout):
    """m.rnn run a layer at a time, each layer's output but the top's multiplied by rnn-core's
    mask: what nn.RNN(dropout=p) computes, with known masks. The single-layer modules share
    m.rnn's parameters, so the gradients land there."""
    p, seed = dropout
    T, B, _ = x.shape
    L, H = m.rnn.num_layers, m.rnn.hidden_size
    inp, hs, cs = x, [], []
    for k in range(L):
        layer = type(m.rnn)(inp.shape[2], H, bias=m.rnn.bias, **(
            {"nonlinearity": m.rnn.nonlinearity} if cell == "rnn" else {})).to(x.dtype)
        for name in layer._flat_weights_names:
            setattr(layer, name, getattr(m.rnn, name.replace("_l0", f"_l{k}")))
        st = (state[0][k:k + 1], state[1][k:k + 1]) if cell == "lstm" else state[k:k + 1]
        if lengths is not None:
            out, hn = layer(pack_padded_sequence(inp, lengths, enforce_sorted=False), st)
            out, _ = pad_packed_sequence(out, total_length=T)
        else:
            out, hn = layer(inp, st)
        if cell == "lstm":
            hn, cn = hn
            cs.append(cn)
        hs.append(hn)
        inp = out * drop_mask(p, seed, k, T, B, H, x.dtype) if k + 1 < L else out
    hn = torch.cat(hs)
    return out, ((hn, torch.cat(cs)) if cell == "lstm" else hn)


def case(name, T, B, I, H, O, layers=1, nonlinearity="tanh", loss="mse", many_to_one=False,
         reduction="mean", lengths=None, dtype=torch.float64, seed=0, cell="rnn", bias=True,
         dropout=None, huber_delta=None, ignore=0.0, label_smoothing=None, class_weights=None,
         smooth_l1_beta=None, bidirectional=False, vocab=None, sequence_weights=None, proj=0,
         pos_weight=None):
    """`dropout`: (p, seed) for rnn-core's masks between layers (grad_dump's metadata).
    `huber_delta`: HuberLoss's delta, written as metadata (None: PyTorch's default, 1.0, not
    written, so the fixture also pins grad_dump's default). `ignore`: the share of scored
    labels replaced by PyTorch's ignore_index (-100), which grad_dump reads as IGNORED_LABEL.
    `label_smoothing`: CrossEntropyLoss's, written as metadata (None: 0, not written).
    `class_weights`: CrossEntropyLoss's `weight`, one per class (with loss="bce",
    BCEWithLogitsLoss's `weight`, one per output), written as the tensor `class_weights` [O]
    (None: unweighted, not written). `smooth_l1_beta`: SmoothL1Loss's
    beta, written as metadata (None: PyTorch's default, 1.0, not written). `bidirectional`:
    both directions in every layer; many-to-one reads both final states side by side
    (h_n[-2] and h_n[-1]), h0 / h_last are [2L, B, H]. `vocab`: token input through
    nn.Embedding(vocab, I); x is int64 ids [T, B] and has no gradient. `sequence_weights`: a
    weight per sequence, written as the tensor `sequence_weights` [B]: each position's loss
    times its sequence's weight, a mean over the scored positions' total weight (times their
    class weights for labels, times O for float targets). `proj`: an LSTM's proj_size (0:
    none); h0 / h_last are then [D*L, B, proj]. `pos_weight`: BCEWithLogitsLoss's, one per
    output, written as the tensor `pos_weight` [O] (None: not written)."""
    torch.manual_seed(seed)
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=dtype)
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=dtype)
    m = Model(I, H, O, layers, nonlinearity, cell, bias, bidirectional, vocab, proj).to(dtype)
    if vocab is None:
        tokens = None
        x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    else:
        tokens = torch.randint(0, vocab, (T, B))
        x = m.embedding(tokens)
    D = 2 if bidirectional else 1
    h0 = (0.5 * torch.randn(D * layers, B, proj or H, dtype=dtype)).requires_grad_(True)
    c0 = (torch.randn(D * layers, B, H, dtype=dtype)).requires_grad_(True) if cell == "lstm" else None
    state = (h0, c0) if cell == "lstm" else h0
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    if dropout is not None:
        assert not bidirectional and not proj, "dropped_stack runs one direction, unprojected"
        out, hn = dropped_stack(m, cell, x, state, lens, dropout)
    elif lens is not None:
        packed = pack_padded_sequence(x, lens, enforce_sorted=False)
        out, hn = m.rnn(packed, state)
        out, _ = pad_packed_sequence(out, total_length=T)
    else:
        out, hn = m.rnn(x, state)
    if lens is not None:
        valid = (torch.arange(T)[:, None] < lens[None, :])  # [T, B]
    else:
        valid = torch.ones(T, B, dtype=torch.bool)
    cn = None
    if cell == "lstm":
        hn, cn = hn
    last = torch.cat([hn[-2], hn[-1]], dim=1) if bidirectional else hn[-1]
    y = m.head(last) if many_to_one else m.head(out)
    scored = torch.ones(B, dtype=torch.bool) if many_to_one else valid
    if loss in ("l1", "huber", "smooth_l1", "bce"):
        # PyTorch's own functions and reductions where every position is scored; with padded
        # sequences, its per-element losses masked and reduced as the MSE branch does.
        # BCE's targets: probabilities in [0, 1], some exactly 0 or 1.
        target = torch.randn(*y.shape, dtype=dtype)
        if loss == "bce":
            target = torch.rand(*y.shape, dtype=dtype)
            target = torch.where(target < 0.25, torch.zeros_like(target),
                                 torch.where(target > 0.75, torch.ones_like(target), target))
        delta = 1.0 if huber_delta is None else huber_delta
        beta = 1.0 if smooth_l1_beta is None else smooth_l1_beta
        elementwise = {
            "l1": lambda r: F.l1_loss(y, target, reduction=r),
            "huber": lambda r: F.huber_loss(y, target, reduction=r, delta=delta),
            "smooth_l1": lambda r: F.smooth_l1_loss(y, target, reduction=r, beta=beta),
            "bce": lambda r: F.binary_cross_entropy_with_logits(y, target, reduction=r,
                                                                 weight=weight, pos_weight=pw),
        }[loss]
        if bool(scored.all()):
            value = elementwise(reduction)
        else:
            masked = elementwise("none") * scored[..., None]
            value = masked.sum() / (scored.sum() * O) if reduction == "mean" else masked.sum()
        stored_target = target
    elif loss == "mse":
        delta = beta = None
        target = torch.randn(*y.shape, dtype=dtype)
        se = ((y - target) ** 2) * scored[..., None]
        value = se.sum() / (scored.sum() * O) if reduction == "mean" else se.sum()
        stored_target = target
    else:
        labels = torch.randint(0, O, scored.shape)
        if ignore > 0:
            unlabelled = torch.rand(scored.shape, dtype=torch.float64) < ignore
            labels = torch.where(unlabelled, torch.full_like(labels, -100), labels)
        ignore_padded = torch.where(scored, labels, torch.full_like(labels, -100))
        value = F.cross_entropy(y.reshape(-1, O), ignore_padded.reshape(-1), reduction=reduction,
                                ignore_index=-100, label_smoothing=label_smoothing or 0.0,
                                weight=weight)
        stored_target = torch.where(scored, labels, torch.zeros_like(labels))  # unscored: any valid label
    if sequence_weights is not None:
        w = torch.tensor(sequence_weights, dtype=dtype)
        at = w.expand(scored.shape)  # [T, B] or [B]: each position's sequence weight
        if loss == "ce":
            per = F.cross_entropy(y.reshape(-1, O), ignore_padded.reshape(-1), reduction="none",
                                  ignore_index=-100, label_smoothing=label_smoothing or 0.0,
                                  weight=weight).reshape(scored.shape)
            counted = (ignore_padded != -100).to(dtype)
            if weight is not None:
                counted = counted * weight[ignore_padded.clamp(min=0)]
            total = (counted * at).sum()
        else:
            per = {"mse": lambda: (y - target) ** 2,
                   "l1": lambda: F.l1_loss(y, target, reduction="none"),
                   "huber": lambda: F.huber_loss(y, target, reduction="none", delta=delta),
                   "smooth_l1": lambda: F.smooth_l1_loss(y, target, reduction="none", beta=beta),
                   "bce": lambda: F.binary_cross_entropy_with_logits(y, target, reduction="none",
                                                                     weight=weight, pos_weight=pw),
                   }[loss]().sum(-1) * scored
            total = (scored * at).sum() * O
        value = (per * at).sum() / total if reduction == "mean" else (per * at).sum()
    value.backward()

    inputs = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}
    inputs["x"] = x.detach().clone() if tokens is None else tokens.clone()
    inputs["h0"] = h0.detach().clone()
    inputs["target"] = stored_target.detach().clone().contiguous()
    if lengths is not None:
        inputs["lengths"] = torch.tensor(lengths, dtype=torch.int64)
    if cell == "lstm":
        inputs["c0"] = c0.detach().clone()
    if weight is not None:
        inputs["class_weights"] = weight.clone()
    if pw is not None:
        inputs["pos_weight"] = pw.clone()
    if sequence_weights is not None:
        inputs["sequence_weights"] = torch.tensor(sequence_weights, dtype=dtype)
    meta = {"cell": cell, "layers": str(layers), "nonlinearity": nonlinearity, "loss": loss,
            "many_to_one": "true" if many_to_one else "false", "reduction": reduction}
    if dropout is not None:
        meta.update({"dropout": str(dropout[0]), "dropout_seed": str(dropout[1])})
    if huber_delta is not None:
        meta["huber_delta"] = repr(huber_delta)
    if label_smoothing is not None:
        meta["label_smoothing"] = repr(label_smoothing)
    if smooth_l1_beta is not None:
        meta["smooth_l1_beta"] = repr(smooth_l1_beta)
    save_file(inputs, os.path.join(OUT, f"{name}.in.safetensors"), metadata=meta)

    expected = {"out.loss": value.detach().reshape(1), "out.y": y.detach().contiguous(),
                "out.h_last": hn.detach().contiguous(), "grad.h0": h0.grad}
    if tokens is None:
        expected["grad.x"] = x.grad
    if cell == "lstm":
        expected["out.c_last"] = cn.detach().contiguous()
        expected["grad.c0"] = c0.grad
    for k, p in m.named_parameters():
        expected[f"grad.{k}"] = p.grad
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, f"{name}.expected.safetensors"))


def training(name, optimizer, clip=None, steps=4, seed=10, cell="rnn", bias=True, frozen=(),
             groups=(), step_lr=None, one_cycle=None):
    """Initial weights, a fixed batch, and the weights after `steps` optimizer steps.

    `frozen` holds `(parameter, first, end)`: the parameter has requires_grad=False in the
    steps first..end (counted from 0), so it has no gradient there and the optimizer passes
    over it (its own `step` stands still).

    `groups` holds `(parameters, options)`: parameter groups with their own `lr` or
    `weight_decay`, the other parameters in a last group of the optimizer's own. `step_lr`,
    `(step_size, gamma)`, adds a StepLR scheduler stepped after each update; `one_cycle`, a
    dict of OneCycleLR's options, a OneCycleLR scheduler peaking at the optimizer's `lr`."""
    torch.manual_seed(seed)
    T, B, I, H, O = 6, 3, 4, 5, 3
    m = Model(I, H, O, 2, "tanh", cell, bias).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    labels = torch.randint(0, O, (T, B))
    initial = {k: v.detach().clone() for k, v in m.state_dict().items()}
    kind, kw = optimizer
    named = dict(m.named_parameters())
    grouped = {n for names, _ in groups for n in names}
    param_groups = [{"params": [named[n] for n in names], **opts} for names, opts in groups]
    param_groups.append({"params": [p for n, p in named.items() if n not in grouped]})
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[kind](param_groups, **kw)
    sched = torch.optim.lr_scheduler.StepLR(opt, *step_lr) if step_lr else None
    if one_cycle is not None:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=kw["lr"], **one_cycle)
    for step in range(steps):
        for pname, p in m.named_parameters():
            p.requires_grad_(not any(n == pname and first <= step < end for n, first, end in frozen))
        opt.zero_grad()
        y = m.head(m.rnn(x)[0])
        F.cross_entropy(y.reshape(-1, O), labels.reshape(-1)).backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(m.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
    tensors = {f"init.{k}": v for k, v in initial.items()}
    tensors.update({f"final.{k}": v.detach().clone() for k, v in m.state_dict().items()})
    # The optimizer's state after the steps, as `{state key}.{parameter}` (`exp_avg.head.weight`):
    # rnn-core's `Optimizer::named_state` must hold the same buffers under the same names.
    names = {id(p): n for n, p in m.named_parameters()}
    state_keys = set()
    for p, state in opt.state.items():
        for key, value in state.items():
            if key != "step" and torch.is_tensor(value):
                tensors[f"{key}.{names[id(p)]}"] = value.detach().clone()
                state_keys.add(key)
    # A parameter frozen from the first step on has no state yet: Adam's moments start at 0.
    for key in state_keys:
        for pname, p in m.named_parameters():
            tensors.setdefault(f"{key}.{pname}", torch.zeros_like(p.detach()))
    tensors["x"] = x
    tensors["target"] = labels
    meta = {"optimizer": kind, "steps": str(steps), "clip": "none" if clip is None else str(clip),
            "cell": cell, "bias": "true" if bias else "false",
            "state_keys": ",".join(sorted(state_keys))}
    if frozen:
        meta["frozen"] = ";".join(f"{n}:{first}:{end}" for n, first, end in frozen)
    if groups:
        # Per tensor: its learning rate over the optimizer's, and its own weight decay (or -).
        meta["rules"] = ";".join(
            f"{n}:{opts.get('lr', kw['lr']) / kw['lr']!r}:{opts.get('weight_decay', '-')!r}".replace("'", "")
            for names, opts in groups for n in names)
    if step_lr:
        meta["step_lr"] = f"{step_lr[0]}:{step_lr[1]!r}"
    if one_cycle is not None:
        meta["one_cycle"] = one_cycle_meta(one_cycle)
    meta.update({k: str(v) for k, v in kw.items()})
    save_file(tensors, os.path.join(OUT, f"train_{name}.safetensors"), metadata=meta)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    case("tanh_mse", 5, 3, 4, 6, 3)
    case("relu_ce_2layers", 6, 4, 3, 5, 4, layers=2, nonlinearity="relu", loss="ce", seed=1)
    case("lengths_ce_3layers", 5, 3, 4, 7, 5, layers=3, loss="ce", lengths=[5, 2, 4], seed=2)
    case("lengths_mse_sum", 6, 4, 2, 5, 2, lengths=[3, 6, 1, 4], reduction="sum", seed=3)
    case("many_to_one_ce_lengths", 7, 3, 3, 9, 4, layers=2, loss="ce", many_to_one=True, lengths=[7, 3, 5], seed=4)
    case("many_to_one_mse_relu", 4, 2, 3, 6, 2, nonlinearity="relu", many_to_one=True, reduction="sum", seed=5)
    case("batch1_f32", 9, 1, 5, 17, 3, dtype=torch.float32, seed=6)
    case("batch8_ce_f32", 12, 8, 7, 33, 6, loss="ce", layers=2, dtype=torch.float32, seed=7)
    training("sgd_momentum_clip", ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}), clip=0.5)
    training("sgd_nesterov", ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True}))
    training("adam_clip", ("adam", {"lr": 0.01, "weight_decay": 0.001}), clip=0.3)
    training("adamw", ("adamw", {"lr": 0.02, "weight_decay": 0.1}))
    # LSTM and GRU: the same options across cells.
    case("lstm_mse", 5, 3, 4, 6, 3, cell="lstm", seed=20)
    case("lstm_ce_2layers_lengths", 6, 4, 3, 5, 4, layers=2, loss="ce", lengths=[6, 2, 4, 1], cell="lstm", seed=21)
    case("lstm_many_to_one_lengths", 7, 3, 3, 9, 4, layers=2, loss="ce", many_to_one=True, lengths=[7, 3, 5],
         cell="lstm", seed=22)
    case("lstm_batch1_f32", 9, 1, 5, 17, 3, dtype=torch.float32, cell="lstm", seed=23)
    case("gru_mse_sum", 5, 3, 4, 6, 3, reduction="sum", cell="gru", seed=30)
    case("gru_ce_3layers_lengths", 6, 4, 3, 7, 5, layers=3, loss="ce", lengths=[3, 6, 1, 4], cell="gru", seed=31)
    case("gru_many_to_one_mse", 4, 2, 3, 6, 2, many_to_one=True, cell="gru", seed=32)
    case("gru_batch8_ce_f32", 12, 8, 7, 33, 6, loss="ce", layers=2, dtype=torch.float32, cell="gru", seed=33)
    training("lstm_adam_clip", ("adam", {"lr": 0.01, "weight_decay": 0.001}), clip=0.3, cell="lstm")
    training("gru_sgd_momentum", ("sgd", {"lr": 0.1, "momentum": 0.9}), cell="gru")
    # RMSprop: plain with L2 and clipping; momentum; centered; both, on every cell.
    training("rmsprop_clip", ("rmsprop", {"lr": 0.01, "weight_decay": 0.01}), clip=0.5, steps=5)
    training("rmsprop_momentum", ("rmsprop", {"lr": 0.005, "alpha": 0.9, "momentum": 0.8}), steps=5)
    training("lstm_rmsprop_centered", ("rmsprop", {"lr": 0.01, "centered": True}), cell="lstm", steps=5)
    training("gru_rmsprop_centered_momentum_clip",
             ("rmsprop", {"lr": 0.01, "alpha": 0.95, "eps": 1e-6, "momentum": 0.5, "centered": True,
                          "weight_decay": 0.001}), clip=0.3, cell="gru", steps=5)
    # Adagrad: rate decay, L2, a starting accumulator and clipping; PyTorch's defaults on a GRU.
    training("adagrad_clip", ("adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01,
                                          "initial_accumulator_value": 0.1}), clip=0.5, steps=5)
    training("gru_adagrad", ("adagrad", {"lr": 0.05}), cell="gru", steps=5)
    # bias=False: no bias tensors in the state dict, every cell.
    case("rnn_nobias_ce_2layers_lengths", 6, 4, 3, 5, 4, layers=2, loss="ce", lengths=[6, 2, 4, 1],
         bias=False, seed=60)
    case("lstm_nobias_many_to_one_lengths", 7, 3, 3, 9, 4, layers=2, loss="ce", many_to_one=True,
         lengths=[7, 3, 5], cell="lstm", bias=False, seed=61)
    case("gru_nobias_batch8_mse_f32", 12, 8, 7, 33, 6, layers=2, dtype=torch.float32, cell="gru",
         bias=False, seed=62)
    training("gru_adam_clip_nobias", ("adam", {"lr": 0.01}), clip=0.3, cell="gru", bias=False)
    # Dropout between layers with rnn-core's masks: which tensors drop, the 1/(1-p) scale.
    case("rnn_dropout_ce_3layers_lengths", 6, 4, 3, 5, 4, layers=3, loss="ce", lengths=[6, 2, 4, 1],
         dropout=(0.4, 7), seed=70)
    case("lstm_dropout_many_to_one", 7, 3, 3, 9, 4, layers=2, loss="ce", many_to_one=True,
         lengths=[7, 3, 5], cell="lstm", dropout=(0.3, 8), seed=71)
    case("gru_dropout_mse_nobias", 5, 3, 4, 6, 3, layers=2, cell="gru", bias=False,
         dropout=(0.5, 9), seed=72)
    # L1 and Huber (nn.L1Loss, nn.HuberLoss): PyTorch's reductions, a non-default delta,
    # padded sequences, last-step scoring.
    case("gru_l1_2layers", 6, 4, 3, 7, 3, layers=2, loss="l1", cell="gru", seed=80)
    case("rnn_huber_many_to_one_sum", 7, 3, 3, 9, 4, loss="huber", many_to_one=True,
         reduction="sum", huber_delta=0.3, seed=81)
    case("lstm_huber_lengths", 6, 4, 3, 5, 2, layers=2, loss="huber", lengths=[6, 2, 4, 1],
         cell="lstm", seed=82)
    case("lstm_l1_lengths_sum_f32", 12, 8, 7, 33, 6, loss="l1", lengths=[12, 3, 7, 1, 12, 5, 9, 2],
         reduction="sum", dtype=torch.float32, cell="lstm", seed=83)
    # Cross-entropy's ignore_index: labels of -100 among the scored positions.
    case("gru_ce_ignore_lengths", 6, 4, 3, 7, 5, layers=2, loss="ce", lengths=[6, 2, 4, 3],
         cell="gru", ignore=0.3, seed=90)
    case("lstm_ce_ignore_many_to_one", 5, 6, 3, 9, 4, loss="ce", many_to_one=True, cell="lstm",
         ignore=0.4, seed=91)
    case("rnn_ce_ignore_sum_f32", 12, 8, 7, 33, 6, loss="ce", reduction="sum", dtype=torch.float32,
         ignore=0.25, seed=92)
    # Cross-entropy's label_smoothing, with ignored labels, packed lengths, both reductions.
    case("gru_ce_smoothing_ignore_lengths", 6, 4, 3, 7, 5, layers=2, loss="ce",
         lengths=[6, 2, 4, 3], cell="gru", ignore=0.3, label_smoothing=0.1, seed=93)
    case("lstm_ce_smoothing_many_to_one_sum", 5, 6, 3, 9, 4, loss="ce", many_to_one=True,
         reduction="sum", cell="lstm", label_smoothing=0.35, seed=94)
    case("rnn_ce_smoothing_f32", 12, 8, 7, 33, 6, loss="ce", dtype=torch.float32,
         label_smoothing=0.2, seed=95)
    # SmoothL1Loss: beta from the metadata with packed lengths, and PyTorch's default (1.0).
    case("gru_smooth_l1_lengths", 6, 4, 3, 5, 2, layers=2, loss="smooth_l1",
         lengths=[6, 2, 4, 1], cell="gru", smooth_l1_beta=0.4, seed=84)
    case("rnn_smooth_l1_many_to_one_sum_f32", 12, 8, 7, 33, 6, loss="smooth_l1",
         many_to_one=True, reduction="sum", dtype=torch.float32, seed=85)
    # BCEWithLogitsLoss: soft and hard targets, packed lengths, a sequence weight each, both
    # reductions, f32.
    case("lstm_bce_lengths", 6, 4, 3, 5, 3, layers=2, loss="bce", lengths=[6, 2, 4, 1],
         cell="lstm", seed=86)
    case("gru_bce_many_to_one_sum_weighted", 5, 4, 3, 6, 4, loss="bce", many_to_one=True,
         reduction="sum", cell="gru", sequence_weights=[0.5, 2.0, 0.0, 1.5], seed=87)
    case("rnn_bce_f32", 12, 8, 7, 33, 6, loss="bce", dtype=torch.float32, seed=88)
    case("gru_bce_pos_weight_lengths", 6, 4, 3, 5, 3, loss="bce", lengths=[6, 2, 4, 1],
         cell="gru", pos_weight=[0.5, 3.0, 1.0], seed=89)
    # Bidirectional layers: packed lengths (the reverse direction starts at each sequence's own
    # end), many-to-one from both final states, ReLU in f32, no biases.
    case("lstm_bidi_ce_2layers_lengths", 6, 4, 3, 5, 4, layers=2, loss="ce", lengths=[6, 2, 4, 3],
         cell="lstm", ignore=0.2, bidirectional=True, seed=100)
    case("gru_bidi_many_to_one_lengths", 7, 5, 4, 6, 3, layers=2, many_to_one=True,
         lengths=[7, 1, 5, 3, 6], cell="gru", bidirectional=True, seed=101)
    case("rnn_bidi_relu_sum_f32", 12, 8, 7, 33, 6, layers=2, nonlinearity="relu",
         reduction="sum", dtype=torch.float32, bidirectional=True, seed=102)
    case("lstm_bidi_nobias_mse", 5, 3, 2, 4, 2, cell="lstm", bias=False, bidirectional=True,
         seed=103)
    # Token input through nn.Embedding: packed lengths with a stacked bidirectional LSTM,
    # a GRU language model in f32 (a vocabulary of 6, so tokens repeat).
    case("lstm_embedding_bidi_lengths", 6, 4, 3, 5, 4, layers=2, loss="ce", lengths=[6, 2, 4, 3],
         cell="lstm", bidirectional=True, vocab=7, seed=104)
    case("gru_embedding_ce_f32", 12, 8, 7, 33, 6, loss="ce", dtype=torch.float32, cell="gru",
         vocab=6, seed=105)
    # Cross-entropy's weight per class (one of them 0), alone and with label smoothing.
    case("lstm_ce_weights_smoothing_lengths", 6, 4, 3, 7, 5, layers=2, loss="ce",
         lengths=[6, 2, 4, 3], cell="lstm", ignore=0.2, label_smoothing=0.15,
         class_weights=[0.5, 2.0, 0.0, 1.25, 3.0], seed=96)
    case("gru_ce_weights_many_to_one", 5, 6, 3, 9, 4, loss="ce", many_to_one=True, cell="gru",
         class_weights=[1.0, 0.25, 4.0, 2.0], seed=97)
    case("rnn_ce_weights_sum_f32", 12, 8, 7, 33, 6, loss="ce", reduction="sum",
         dtype=torch.float32, ignore=0.25, class_weights=[0.3, 1.7, 1.0, 2.2, 0.0, 0.9], seed=98)
    print("fixtures written to", os.path.normpath(OUT))


def bce_weight_fixtures():
    # BCEWithLogitsLoss(weight=...): each output's terms rescaled, with pos_weight and packed
    # lengths (a mean still over the elements), and summed many-to-one in f32.
    case("gru_bce_weight_pos_weight_lengths", 6, 4, 3, 5, 3, loss="bce", lengths=[6, 2, 4, 1],
         cell="gru", class_weights=[2.0, 0.25, 1.5], pos_weight=[0.5, 3.0, 1.0], seed=91)
    case("lstm_bce_weight_many_to_one_sum_f32", 8, 5, 4, 16, 4, loss="bce", many_to_one=True,
         reduction="sum", cell="lstm", class_weights=[0.5, 1.0, 3.0, 0.0], dtype=torch.float32,
         seed=92)


def tbptt(name, cell, k1, k2, chunks=6, reset=None, seed=40, proj=0):
    """TBPTT(k1, k2) over B streams, written the plain PyTorch way: keep the last k2 - k1
    steps, re-run the window from the state saved at its start, score its last k1 steps,
    detach. `reset` = (chunk, stream): zero that stream's state before that chunk. `proj`: an
    LSTM's proj_size (0: none), written as metadata."""
    torch.manual_seed(seed)
    B, I, H, O, L = 3, 4, 5, 3, 2
    m = Model(I, H, O, L, "tanh", cell, proj=proj).double()
    xs = torch.randn(chunks * k1, B, I, dtype=torch.float64)
    ys = torch.randint(0, O, (chunks * k1, B))
    initial = {k: v.detach().clone() for k, v in m.state_dict().items()}
    opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.5)
    zeros = lambda width: torch.zeros(L, B, width, dtype=torch.float64)
    start = (zeros(proj or H), zeros(H)) if cell == "lstm" else zeros(H)
    hist_x, hist_y = xs[:0], ys[:0]
    for c in range(chunks):
        if reset is not None and reset[0] == c:
            # Zero one stream, drop the replayed history (rnn-core's documented semantics).
            end = run_state(m, hist_x, start)
            for s in (end if cell == "lstm" else (end,)):
                s[:, reset[1]] = 0
            start, hist_x, hist_y = end, xs[:0], ys[:0]
        wx = torch.cat([hist_x, xs[c * k1:(c + 1) * k1]])
        wy = torch.cat([hist_y, ys[c * k1:(c + 1) * k1]])
        out, _ = m.rnn(wx, start)
        y = m.head(out[-k1:])
        opt.zero_grad()
        F.cross_entropy(y.reshape(-1, O), wy[-k1:].reshape(-1)).backward()
        held = min(len(wx), k2 - k1)
        new_start = run_state(m, wx[:len(wx) - held], start)  # weights before the update
        opt.step()
        start, hist_x, hist_y = new_start, wx[len(wx) - held:], wy[len(wy) - held:]
    tensors = {f"init.{k}": v for k, v in initial.items()}
    tensors.update({f"final.{k}": v.detach().clone() for k, v in m.state_dict().items()})
    tensors["x"], tensors["target"] = xs, ys
    meta = {"cell": cell, "k1": str(k1), "k2": str(k2), "chunks": str(chunks),
            "reset": "none" if reset is None else f"{reset[0]},{reset[1]}"}
    if proj:
        meta["proj_size"] = str(proj)
    save_file(tensors, os.path.join(OUT, f"tbptt_{name}.safetensors"), metadata=meta)


def run_state(m, x, start):
    """The state after running `x` from `start`, without gradient."""
    with torch.no_grad():
        if len(x) == 0:
            return tuple(s.clone() for s in start) if isinstance(start, tuple) else start.clone()
        _, state = m.rnn(x, start)
        return tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()


if __name__ == "__main__":
    for cell in ["rnn", "lstm", "gru"]:
        tbptt(f"{cell}_chunks", cell, 4, 4, reset=(3, 1))
        tbptt(f"{cell}_overlap", cell, 2, 5)
    print("tbptt fixtures written")


def half_precision(name, dtype, cell, seed=50):
    """A model saved in half precision, as `model.to(dtype)` leaves it, with its values exactly
    (every bf16 and f16 value is a float64) under `exact.*`: what loading must give."""
    torch.manual_seed(seed)
    m = Model(3, 5, 4, 2, "tanh", cell).to(dtype)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    tensors = dict(state)
    tensors.update({f"exact.{k}": v.to(torch.float64) for k, v in state.items()})
    save_file(tensors, os.path.join(OUT, f"half_{name}.safetensors"))


if __name__ == "__main__":
    half_precision("bf16_lstm", torch.bfloat16, "lstm")
    half_precision("f16_gru", torch.float16, "gru")
    print("half-precision fixtures written")


def plateau(name, metrics, lr, **kw):
    """ReduceLROnPlateau stepped on `metrics` from `lr`: the rate after each observation."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    rates = []
    for m in metrics:
        sched.step(m)
        rates.append(opt.param_groups[0]["lr"])
    meta = {"lr": repr(lr)}
    meta.update({k: repr(v) if isinstance(v, float) else str(v) for k, v in kw.items()})
    save_file({"metrics": torch.tensor(metrics, dtype=torch.float64),
               "rates": torch.tensor(rates, dtype=torch.float64)},
              os.path.join(OUT, f"plateau_{name}.safetensors"), metadata=meta)


def adagrad_fixtures():
    training("adagrad_clip", ("adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01,
                                          "initial_accumulator_value": 0.1}), clip=0.5, steps=5)
    training("gru_adagrad", ("adagrad", {"lr": 0.05}), cell="gru", steps=5)


def sequence_weight_fixtures():
    case("rnn_seqweights_mse_lengths", 6, 4, 3, 5, 2, layers=2, lengths=[6, 2, 4, 1],
         sequence_weights=[0.5, 2.0, 0.0, 1.5], seed=110)
    case("lstm_seqweights_ce_classweights_many_to_one", 5, 6, 3, 9, 4, loss="ce",
         many_to_one=True, cell="lstm", ignore=0.3, label_smoothing=0.1,
         class_weights=[0.5, 2.0, 1.0, 3.0], sequence_weights=[1.0, 0.25, 3.0, 0.0, 2.0, 1.5],
         seed=111)
    case("gru_seqweights_huber_sum_f32", 12, 8, 7, 33, 6, loss="huber", reduction="sum",
         lengths=[12, 3, 7, 1, 12, 5, 9, 2], dtype=torch.float32, cell="gru",
         sequence_weights=[1.0, 2.0, 0.5, 0.0, 3.0, 1.0, 0.75, 4.0], seed=112)
    case("gru_seqweights_ce_ignore_lengths", 6, 4, 3, 7, 5, layers=2, loss="ce",
         lengths=[6, 2, 4, 3], cell="gru", ignore=0.3, sequence_weights=[2.0, 0.5, 1.0, 3.0],
         seed=113)
    print("sequence-weight fixtures written")


def plateau_fixtures():
    g = torch.Generator().manual_seed(80)
    # A noisy loss that falls and stalls; an accuracy that rises and stalls; a negative score.
    walk = (torch.linspace(1.0, 0.2, 60) ** 2 + 0.05 * torch.rand(60, generator=g)).tolist()
    walk[30:] = [walk[30] + 0.02 * v for v in torch.rand(30, generator=g).tolist()]
    acc = [min(0.9, 0.3 + 0.02 * k) + 0.01 * v for k, v in enumerate(torch.rand(60, generator=g).tolist())]
    neg = [-1.0 - 0.01 * k + 0.05 * v for k, v in enumerate(torch.rand(40, generator=g).tolist())]
    plateau("defaults", walk, 0.1)
    plateau("min_rel_cooldown", walk, 0.05, factor=0.5, patience=2, cooldown=3, min_lr=0.002)
    plateau("min_abs", walk, 0.01, factor=0.3, patience=0, threshold=0.02, threshold_mode="abs")
    plateau("max_rel", acc, 0.1, mode="max", factor=0.5, patience=1, threshold=0.01, min_lr=0.01)
    plateau("max_abs_cooldown", acc, 0.1, mode="max", factor=0.2, patience=3, threshold=0.005,
            threshold_mode="abs", cooldown=1)
    plateau("negative_min_rel", neg, 0.1, factor=0.5, patience=1, threshold=0.01)
    plateau("eps_skip", walk, 1e-3, factor=0.99999, patience=0, eps=1e-7, min_lr=0.0)
    print("plateau fixtures written")


if __name__ == "__main__":
    sequence_weight_fixtures()
    plateau_fixtures()


def projection_fixtures():
    """LSTMs with projections (proj_size): h_t = W_hr (o * tanh(c_t)), P wide."""
    case("lstm_proj_mse", 5, 3, 4, 6, 3, cell="lstm", proj=4, seed=120)
    case("lstm_proj_ce_2layers_lengths", 6, 4, 3, 7, 5, layers=2, loss="ce", lengths=[6, 2, 4, 1],
         cell="lstm", proj=3, seed=121)
    case("lstm_proj_bidi_many_to_one_lengths", 7, 5, 4, 6, 3, layers=2, many_to_one=True,
         lengths=[7, 1, 5, 3, 6], cell="lstm", bidirectional=True, proj=2, seed=122)
    case("lstm_proj_nobias_embedding_ce_f32", 12, 8, 7, 33, 6, loss="ce", dtype=torch.float32,
         cell="lstm", bias=False, vocab=6, proj=9, seed=123)
    print("projection fixtures written")


if __name__ == "__main__":
    projection_fixtures()


def frozen_fixtures():
    """Frozen parameters (requires_grad=False) in PyTorch's training loop: from the start,
    for good or for a while, and frozen mid-run, then thawed; Adam's bias correction and
    Adagrad's rate decay count each parameter's own steps."""
    # The clip norms are small enough to act at every step: a frozen gradient must not count.
    training("adam_frozen", ("adam", {"lr": 0.01, "weight_decay": 0.01}), clip=0.05, steps=6,
             cell="lstm", seed=11, frozen=[("rnn.weight_ih_l0", 0, 6), ("head.bias", 0, 2),
                                           ("rnn.weight_hh_l1", 2, 4)])
    training("adagrad_frozen", ("adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01}),
             steps=5, seed=12, frozen=[("rnn.bias_hh_l0", 1, 3), ("head.weight", 0, 5)])
    training("gru_sgd_momentum_frozen", ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
             clip=0.05, steps=5, cell="gru", seed=13, frozen=[("rnn.weight_hh_l0", 1, 3),
                                                              ("rnn.bias_ih_l1", 3, 5)])
    print("frozen fixtures written")


def group_fixtures():
    """Parameter groups with their own learning rate and weight decay (no decay on biases,
    a slower bottom layer), under a StepLR schedule, with frozen tensors among them."""
    bottom = ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    biases = ["rnn.bias_ih_l0", "rnn.bias_hh_l0", "rnn.bias_ih_l1", "rnn.bias_hh_l1", "head.bias"]
    training("adamw_groups", ("adamw", {"lr": 0.02, "weight_decay": 0.1}), clip=0.05, steps=6,
             cell="lstm", seed=14, groups=[(bottom, {"lr": 0.005}), (biases, {"weight_decay": 0.0})],
             step_lr=(2, 0.5))
    training("sgd_groups_frozen", ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
             steps=5, cell="gru", seed=15, groups=[(bottom, {"lr": 0.02, "weight_decay": 0.05}),
                                                   (["head.bias"], {"weight_decay": 0.0})],
             frozen=[("rnn.weight_hh_l0", 1, 3)], step_lr=(3, 0.1))
    training("adagrad_groups", ("adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01}),
             steps=5, seed=16, groups=[(["head.weight"], {"lr": 0.3})])
    print("group fixtures written")


def projected_tbptt_fixtures():
    tbptt("lstmp_chunks", "lstm", 4, 4, reset=(3, 1), proj=3, seed=41)
    tbptt("lstmp_overlap", "lstm", 2, 5, proj=3, seed=42)
    print("projected tbptt fixtures written")


if __name__ == "__main__":
    projected_tbptt_fixtures()


def average(name, kind, dtype, seed, decay=None, updates=6, size=37):
    """torch.optim.swa_utils.AveragedModel of a model whose weights are drawn afresh before
    each update_parameters: every set of weights and the average after each."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(size, 1, bias=False).to(dtype)
    avg_fn = get_ema_multi_avg_fn(decay) if kind == "ema" else get_swa_multi_avg_fn()
    averaged = AveragedModel(model, multi_avg_fn=avg_fn)
    weights, averages = [], []
    for _ in range(updates):
        with torch.no_grad():
            model.weight.copy_(torch.randn(1, size, generator=g, dtype=torch.float64).to(dtype))
        averaged.update_parameters(model)
        weights.append(model.weight.detach().flatten().clone())
        averages.append(averaged.module.weight.detach().flatten().clone())
    meta = {"kind": kind, "decay": repr(decay)}
    save_file({"weights": torch.stack(weights), "averages": torch.stack(averages)},
              os.path.join(OUT, f"average_{name}.safetensors"), metadata=meta)


def average_fixtures():
    average("ema_f64", "ema", torch.float64, 90, decay=0.9)
    average("ema_f32", "ema", torch.float32, 91, decay=0.999)
    average("ema_heavy_f64", "ema", torch.float64, 92, decay=0.3)  # lerp weight above 1/2
    average("uniform_f64", "uniform", torch.float64, 93)
    average("uniform_f32", "uniform", torch.float32, 94)
    print("weight-average fixtures written")


if __name__ == "__main__":
    # Fixtures added after the blocks above (each block writes those defined before it).
    frozen_fixtures()
    group_fixtures()
    average_fixtures()


if __name__ == "__main__":
    bce_weight_fixtures()


def ctc(name, T, B, C, targets, lengths, blank=0, zero_infinity=False, seed=60):
    """nn.CTCLoss on log_softmax of random logits [T, B, C] (f64): the loss under each
    reduction and the gradient of the mean and sum losses with respect to the logits."""
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(T, B, C, generator=g, dtype=torch.float64)).requires_grad_()
    flat = torch.tensor([l for t in targets for l in t], dtype=torch.int64)
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.int64)
    input_lengths = torch.tensor(lengths, dtype=torch.int64)
    out = {"logits": logits.detach().clone(), "targets": flat,
           "target_lengths": target_lengths, "input_lengths": input_lengths}
    for reduction in ("mean", "sum", "none"):
        loss = nn.CTCLoss(blank=blank, reduction=reduction, zero_infinity=zero_infinity)(
            F.log_softmax(logits, dim=-1), flat, input_lengths, target_lengths)
        out[f"loss_{reduction}"] = loss.detach().clone().reshape(-1)
        if reduction != "none":
            (grad,) = torch.autograd.grad(loss, logits)
            out[f"grad_{reduction}"] = grad
    meta = {"blank": str(blank), "zero_infinity": str(zero_infinity)}
    save_file(out, os.path.join(OUT, f"ctc_{name}.safetensors"), metadata=meta)


def ctc_fixtures():
    # Repeats (which need a blank between them), an empty target, ragged lengths.
    ctc("mixed", 12, 4, 6, [[1, 2, 2, 3], [5], [], [4, 4, 4]], [12, 7, 9, 10])
    # Blank last, a target as long as its steps allow, an odd class count.
    ctc("blank_last", 9, 3, 7, [[0, 1, 2, 3, 4], [5, 5], [2]], [9, 5, 1], blank=6, seed=61)
    # An impossible target (3 labels with a repeat in 3 steps), counted as 0.
    ctc("zero_infinity", 6, 3, 5, [[1, 1, 2], [2, 3], [4]], [3, 6, 4], zero_infinity=True,
        seed=62)
    print("CTC fixtures written")


if __name__ == "__main__":
    ctc_fixtures()


def one_cycle_meta(options):
    """OneCycleLR's options as `key=value;...`, PyTorch's defaults filled in."""
    full = {"pct_start": 0.3, "anneal_strategy": "cos", "cycle_momentum": True,
            "base_momentum": 0.85, "max_momentum": 0.95, "div_factor": 25.0,
            "final_div_factor": 1e4, "three_phase": False, **options}
    return ";".join(f"{k}={v!r}".replace("'", "") for k, v in sorted(full.items()))


def one_cycle(name, optimizer, **options):
    """OneCycleLR's rate and momentum (SGD's `momentum`, Adam's `beta1`) before each of its
    `total_steps` updates, peak rate 0.1."""
    p = [nn.Parameter(torch.zeros(1))]
    opt = {"sgd": lambda: torch.optim.SGD(p, lr=0.1, momentum=0.9),
           "adam": lambda: torch.optim.Adam(p, lr=0.1)}[optimizer]()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, **options)
    rates, momenta = [], []
    for _ in range(options["total_steps"]):
        group = opt.param_groups[0]
        rates.append(group["lr"])
        momenta.append(group["betas"][0] if optimizer == "adam" else group["momentum"])
        opt.step()
        sched.step()
    tensors = {"rates": torch.tensor(rates, dtype=torch.float64),
               "momenta": torch.tensor(momenta, dtype=torch.float64)}
    meta = {"one_cycle": one_cycle_meta(options)}
    save_file(tensors, os.path.join(OUT, f"one_cycle_{name}.safetensors"), metadata=meta)


def one_cycle_fixtures():
    one_cycle("defaults", "sgd", total_steps=12)
    one_cycle("linear_adam", "adam", total_steps=13, pct_start=0.25, anneal_strategy="linear",
              div_factor=10.0, final_div_factor=100.0)
    one_cycle("three_phase", "sgd", total_steps=15, pct_start=0.4, three_phase=True)
    one_cycle("three_phase_linear", "adam", total_steps=11, pct_start=0.35, three_phase=True,
              anneal_strategy="linear", base_momentum=0.8, max_momentum=0.9)
    # The climb ends before the first update (pct_start * total_steps < 1).
    one_cycle("short_climb", "sgd", total_steps=20, pct_start=0.03)
    one_cycle("no_momentum", "sgd", total_steps=9, cycle_momentum=False, pct_start=0.5)
    one_cycle("one_step", "adam", total_steps=1)
    # Training through the schedule: the momentum turned on in plain SGD, and Adam's beta1
    # moving under its bias correction.
    training("sgd_one_cycle", ("sgd", {"lr": 0.2, "weight_decay": 0.01}), clip=0.5, steps=6,
             cell="gru", seed=17, one_cycle={"total_steps": 6, "pct_start": 0.4})
    training("adam_one_cycle", ("adam", {"lr": 0.02}), steps=7, cell="lstm", seed=18,
             one_cycle={"total_steps": 7, "three_phase": True, "anneal_strategy": "linear"})
    training("rmsprop_one_cycle", ("rmsprop", {"lr": 0.01, "momentum": 0.5}), steps=5, seed=19,
             one_cycle={"total_steps": 5, "base_momentum": 0.7, "max_momentum": 0.8})
    print("one-cycle fixtures written")


if __name__ == "__main__":
    one_cycle_fixtures()
