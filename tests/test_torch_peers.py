"""The PyTorch speed peers (benchmarks/torch_peers.py) compute the same step as ccledu's rules.

For every peer that accepts ccledu's tensors: build a tiny float64 model and the rule in ccledu,
copy every parameter and fixed matrix into the peer, run one training step on both sides (the
rule's step plus the benchmark's optimiser: one SGD group per ``param_groups`` entry, lr 0.01,
each clipped to norm 1), and compare what each step changed, tensor by tensor. Random draws
made inside the step (brSF's magnitudes, the TP family's noise) are ccledu's, replayed: ccledu's
``trace_step`` returns them in draw order and the peer consumes them in the same order. So the
noise is on (the rules' default noise_std 0.01), not switched off.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from torch_peers import make_step  # noqa: E402

from ccledu.models import build_model, parse_spec  # noqa: E402
from ccledu.optim import Optimizer, ParamGroup  # noqa: E402
from ccledu.rules import get_rule  # noqa: E402

MLP = "mlp:12-9-7-6-4"           # four blocks: DRL's feedback loss crosses several layers
CNN = "cnn:2x8x8-c3-c4-5"        # two conv blocks (3x3, pad 1, max-pool 2) and a classifier

#: TP options under which every layer's update is far above rounding (at the defaults, feedback
#: weights of size 0.01 shrink the target displacement ~100x per layer: the lowest forward
#: update is ~1e-10, compared to about 1e-6 of itself by the rounding of W + ΔW)
LOUD = {"stepsize": 0.5, "lr_backward": 0.1, "feedback_init": 0.5}

CASES = [
    ("bp", MLP, {}), ("bp", CNN, {}),                    # the shared block function
    ("drtp", MLP, {}), ("drtp", CNN, {}),
    ("sign", MLP, {}), ("sign", CNN, {}),
    ("sign", MLP, {"variant": "brsf"}), ("sign", CNN, {"variant": "brsf"}),
    ("sign", MLP, {"variant": "frsf"}), ("sign", CNN, {"variant": "frsf"}),
    ("kp", MLP, {}), ("kp", CNN, {}),
    ("dtp", MLP, {}), ("dtp", MLP, {**LOUD, "batchnorm": True}), ("dtp", MLP, LOUD),
    ("drl", MLP, {}), ("drl", MLP, {**LOUD, "drl_target": "noisy", "batchnorm": True}),
    ("drl", MLP, LOUD),
    ("ldrl", MLP, {}), ("ldrl", MLP, {**LOUD, "batchnorm": True}), ("ldrl", MLP, LOUD),
    ("fwdtp", MLP, {}), ("fwdtp", MLP, {"stepsize": 0.5, "feedback_init": 0.5, "batchnorm": False}),
]
TP = ("dtp", "drl", "ldrl", "fwdtp")


def _one_step_both(rule_name, spec, options, act, N=16, seed=0):
    model = build_model(spec, activation=act, seed=seed, dtype="float64")
    rule = get_rule(rule_name, **options)
    rule.setup(model, seed=seed)
    opt = Optimizer([ParamGroup(name, params, lr=0.01, clip=1.0)
                     for name, params in rule.param_groups(model).items()])
    g = np.random.default_rng(seed + 7)
    x = g.standard_normal((N,) + model.input_shape)
    y = g.integers(0, model.num_classes, N)
    before = {**model.parameters(), **rule.parameters(), **rule.buffers()}
    before = {k: np.array(v, copy=True) for k, v in before.items()}

    kind, args = parse_spec(spec)
    geometry = dict(sizes=list(args)) if kind == "mlp" else dict(channels=list(args[1]), classes=args[2])
    res, drawn = rule.trace_step(model, x, y)
    opt.step(res.grads)
    after = {**model.parameters(), **rule.parameters(), **rule.buffers()}
    # the peer starts from the same tensors and replays ccledu's draws
    peer = make_step(rule_name, kind, torch.from_numpy(x), torch.from_numpy(y), act=act,
                     weights={k: torch.from_numpy(v) for k, v in before.items()}, options=options,
                     draws=[torch.from_numpy(np.asarray(d)) for d in drawn.values()], **geometry)
    peer()
    return before, after, {k: t.detach().numpy() for k, t in peer.params.items()}, drawn


@pytest.mark.parametrize("rule_name,spec,options", CASES,
                         ids=[f"{r}-{s[:3]}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'defaults'}"
                              for r, s, o in CASES])
def test_peer_step_equals_ccledu(rule_name, spec, options):
    act = "tanh" if rule_name in TP else "elu"       # the activation each rule is run with
    before, after, peer, drawn = _one_step_both(rule_name, spec, options, act)
    assert set(peer) == set(before), (sorted(peer), sorted(before))
    if rule_name in TP[:3] or options.get("variant") == "brsf":
        assert drawn, "the step should have drawn random numbers (noise / magnitudes)"
    moved = []
    for name, b in before.items():
        d_ours, d_peer = np.asarray(after[name]) - b, peer[name] - b
        scale = np.abs(d_ours).max()
        rounding = 8 * np.finfo(np.float64).eps * np.abs(b).max()   # of storing W + ΔW
        assert np.abs(d_peer - d_ours).max() <= 1e-8 * scale + rounding, \
            f"{rule_name} {options} {name}: peer update differs from ccledu's (scale {scale:.3g})"
        if scale > (1e-4 if rule_name not in TP or options.get("stepsize") else 0) * np.abs(b).max():
            moved.append(name)
    trainable = [n for n in before if n.startswith("forward.") or
                 (n.startswith("feedback.") and rule_name != "fwdtp")]
    assert sorted(moved) == sorted(trainable), f"changed: {moved}; trainable: {trainable}"


def test_tp_peer_refuses_a_cnn():
    x, y = torch.zeros((2, 1, 8, 8)), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="MLPs only"):
        make_step("dtp", "cnn", x, y, channels=[3], classes=4)
