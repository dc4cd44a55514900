"""Presets of public implementations: train or trace ccledu the way a popular peer does.

A researcher who validates against ccledu usually starts from someone else's code. Each entry
of :data:`PEERS` is one peer's whole configuration for one rule: the rule options that make
ccledu compute that peer's gradients (tested to 1e-10 in ``tests/test_presets_peers.py``), the
training settings of its published run, the peer's files, what every setting reproduces, and
what ccledu still does differently. docs/validating.md says which preset, which trace command
and what tolerance to use for each peer.

=============  =====================  ===============================================================
preset         rules                  peer
=============  =====================  ===============================================================
``loewex``     ff                     loeweX/Forward-Forward (src/ff_model.py, config.yaml)
``mpezeshki``  ff                     mpezeshki/pytorch_forward_forward (main.py)
``biotorch``   fa, dfa                jsalbert/biotorch (layers/fa, layers/dfa, benchmark_configs)
``public``     ccl                    IandRover/CCL-NeurIPS24 (warm-up as its training loop counts it)
=============  =====================  ===============================================================

Values are :class:`ccledu.train.TrainConfig` field names plus ``rule_options``, in the form of
``ccledu.presets.NAMED`` (rule -> {preset name: settings}); :func:`named_for` gives that form and
``ccledu.presets.named`` adds these presets to each rule's own, so ``ccledu train --rule ff
--preset loewex`` and ``ccledu trace --rule ff --preset loewex ...`` use them (the caller's
explicit settings win). ``python -m ccledu.peer_presets show NAME`` prints what an entry
reproduces. This module imports nothing of ccledu.
"""
from __future__ import annotations

import argparse
import sys

#: (preset, rule) -> {"settings", "peer", "reproduces", "differs"}
PEERS: dict = {
    ("loewex", "ff"): {
        "peer": "loeweX/Forward-Forward: src/ff_model.py (FF_model), src/utils.py (optimiser, "
                "cooldown), src/ff_mnist.py (overlay, negatives), config.yaml",
        "settings": {
            "model": "mlp:784-1000-1000-1000-10", "activation": "relu", "bias": True,
            "epochs": 100, "batch_size": 100, "optimizer": "sgd", "cooldown": "linear",
            "inputs": "pixels",
            "lr_forward": 1e-3, "momentum_forward": 0.9, "weight_decay_forward": 3e-4,
            "lr_feedback": 1e-2, "momentum_feedback": 0.9, "weight_decay_feedback": 3e-3,
            "clip_forward": 0.0, "clip_feedback": 0.0, "centralize": False, "warmup": 0,
            "cosine_tmax": 0, "val_fraction": 1 / 6, "diagnostics": True,
            "rule_options": {
                "loss": "threshold", "goodness": "sum", "theta_mode": "width",
                "loss_mean": "rows", "norm": "rms", "norm_eps": 1e-8, "peer_norm": 0.03,
                "peer_momentum": 0.9, "label_value": 1.0, "head_input": "skip_first",
                "predict": "softmax", "relu_grad": "identity", "init": "normal_fan_out",
                "negatives": "uniform", "ff_layers": "skip_first",
            },
        },
        "reproduces": {
            "model": "hidden_dim 1000, num_layers 3 (the 784 -> 1000 x 3 stack; the head is "
                     "the rule's own head.weight, see head_input)",
            "bias": "nn.Linear layers with bias (zero-initialised by _init_weights)",
            "norm": "_layer_norm: z / (sqrt(mean(z^2)) + 1e-8), on the input and between layers",
            "theta_mode": "_calc_ff_loss: logits = sum(z^2) - z.shape[1] (theta = the width)",
            "loss_mean": "nn.BCEWithLogitsLoss over the 2N rows [pos; neg] (mean)",
            "peer_norm": "_calc_peer_normalization_loss, coefficient 0.03, running mean "
                         "momentum 0.9 started at 0.5, positive rows only",
            "relu_grad": "ReLU_full_grad: the backward passes the gradient through unchanged",
            "init": "_init_weights: W ~ N(0, 1/out), b = 0; the classifier zero",
            "head_input": "linear_classifier (no bias) on the normalised layers idx >= 1, "
                          "neutral input (label 1/C everywhere)",
            "label_value": "one-hot written into the first 10 pixels (value 1)",
            "lr_forward": "training.learning_rate 1e-3, weight_decay 3e-4, momentum 0.9",
            "lr_feedback": "training.downstream_learning_rate 1e-2, downstream_weight_decay "
                           "3e-3 (the head is trained with the feedback group's settings)",
            "batch_size": "input.batch_size 100",
            "inputs": "get_MNIST_partition: ToTensor() alone, pixels in [0, 1] (then the "
                      "model's RMS normalisation)",
            "cooldown": "utils.get_linear_cooldown_lr: lr * 2 (1 + E - e) / E for 0-based epoch "
                        "e > E // 2, both groups, set at the start of each epoch",
            "val_fraction": "50000 training / 10000 validation images",
            "predict": "the test accuracy is the downstream classifier's",
        },
        "differs": [
            "checkpoint: ccledu reports the epoch of lowest validation loss, the peer the last",
            "batches: drop_last and the peer's data order (torch generator) are not reproduced",
        ],
    },
    ("mpezeshki", "ff"): {
        "peer": "mpezeshki/pytorch_forward_forward: main.py (Layer, Net, overlay_y_on_x)",
        "settings": {
            "model": "mlp:784-500-500-10", "activation": "relu", "bias": True,
            "epochs": 2000, "batch_size": 50000, "optimizer": "adam", "lr_forward": 0.03,
            "eval_every": 50,
            "lr_feedback": 0.03, "momentum_forward": 0.0, "weight_decay_forward": 0.0,
            "clip_forward": 0.0, "clip_feedback": 0.0, "centralize": False, "warmup": 0,
            "cosine_tmax": 0, "val_fraction": 1 / 6, "diagnostics": True,
            "rule_options": {
                "loss": "threshold", "theta": 2.0, "theta_mode": "fixed", "goodness": "mean",
                "loss_mean": "rows", "norm": "l2", "norm_eps": 1e-4, "label_value": 0.0,
                "label_max": "batch", "predict": "goodness", "ff_layers": "all",
                "negatives": "permuted_once", "schedule": "layerwise",
            },
        },
        "reproduces": {
            "negatives": "main.py: x_neg = overlay_y_on_x(x, y[torch.randperm(x.size(0))]), made "
                         "once before training and used by both layers: one permutation of the "
                         "labels of the one full batch (about 10 % of the rows get their own "
                         "label); the batch is the whole training set, unshuffled",
            "schedule": "Net.train: layer 0 for num_epochs = 1000 full-batch steps, then layer 1 "
                        "for 1000 on layer 0's frozen output (epochs 2000 = 2 x 1000; each "
                        "layer's Adam starts at its first step, as the peer's per-layer Adam)",
            "model": "Net([784, 500, 500]): two ReLU layers (the classifier block only holds "
                     "ccledu's softmax head, unused by predict='goodness')",
            "norm_eps": "Layer.forward: x / (x.norm(2, 1) + 1e-4)",
            "goodness": "h.pow(2).mean(1) (mean of squares), threshold 2.0",
            "loss_mean": "log(1 + exp(cat[theta - g+, g- - theta])).mean() over the 2N rows",
            "label_max": "overlay_y_on_x: x_[:, :10] = 0, x_[n, y_n] = x.max() (the batch's "
                         "largest value)",
            "optimizer": "Adam(lr=0.03) per layer, one full batch of 50000 images, 1000 steps "
                         "per layer",
            "predict": "Net.predict: argmax over labels of the goodness summed over layers",
            "eval_every": "the peer evaluates once, after the last step; ccledu every 50 steps "
                          "(evaluating 10 candidate labels costs about as much as a step), the "
                          "last one included (with --track-test, selections.last_epoch is the "
                          "peer's choice)",
        },
        "differs": [
            "the peer computes layer 0's output once and trains layer 1 on that fixed tensor; "
            "ccledu recomputes it at each step from the frozen layer 0 (the same values)",
            "the peer takes the first 50000 images of a shuffled training set; ccledu the "
            "split of its seed (50000 train / 10000 validation)",
        ],
    },
    ("biotorch", "fa"): {
        "peer": "jsalbert/biotorch: biotorch/layers/fa/{linear,conv}.py, "
                "benchmark_configs/cifar10/le_net/sgd/fa.yaml",
        "settings": {
            "batch_size": 128, "epochs": 250, "optimizer": "sgd", "lr_forward": 1e-3,
            "momentum_forward": 0.9, "weight_decay_forward": 1e-4, "clip_forward": 0.0,
            "centralize": False, "warmup": 0, "cosine_tmax": 0,
            "rule_options": {"feedback_init": "xavier", "feedback_scale": 1.0},
        },
        "reproduces": {
            "feedback_init": "layer_config init 'xavier': xavier_uniform_(weight_backward)",
            "lr_forward": "SGD lr 0.001, momentum 0.9, weight_decay 1e-4, batch 128, 250 epochs",
        },
        "differs": [
            "BioTorch's multistep schedule (x0.1 at epochs 100, 150, 200) is not in ccledu "
            "(constant learning rate here)",
            "BioTorch also initialises the forward weights with xavier_uniform_ and zero "
            "biases; ccledu keeps its model initialisation (PyTorch's default law)",
        ],
    },
    ("biotorch", "dfa"): {
        "peer": "jsalbert/biotorch: biotorch/layers/dfa/{linear,conv}.py, "
                "benchmark_configs/cifar10/le_net/sgd/dfa.yaml",
        "settings": {
            "batch_size": 128, "epochs": 250, "optimizer": "sgd", "lr_forward": 1e-4,
            "momentum_forward": 0.9, "weight_decay_forward": 1e-4, "clip_forward": 0.0,
            "centralize": False, "warmup": 0, "cosine_tmax": 0,
            "rule_options": {"conv_feedback": "kernel", "feedback_init": "xavier",
                             "feedback_scale": 1.0},
        },
        "reproduces": {
            "conv_feedback": "dfa Conv2d.dfa_backward_hook: conv2d_input(weight_backward, "
                             "loss_gradient repeated over the output positions)",
            "feedback_init": "xavier_uniform_(weight_backward) of shape (C, in) or (C, in, k, k)",
            "lr_forward": "SGD lr 0.0001, momentum 0.9, weight_decay 1e-4, batch 128, 250 epochs",
        },
        "differs": [
            "BioTorch's multistep schedule (x0.1 at epochs 100, 150, 200) is not in ccledu",
            "forward-weight initialisation (xavier there, PyTorch's default law here)",
        ],
    },
    ("public", "ccl"): {
        "peer": "IandRover/CCL-NeurIPS24: the training loops (loss *= (batch_idx + 1) / warmup "
                "while train_steps < warmup) and yaml/{mlp,cnn}/*_ccl.yaml",
        "settings": {"warmup_mode": "epoch"},
        "reproduces": {
            "warmup_mode": "the warm-up factor uses the batch index within the epoch, restarting "
                           "each epoch, while the global step is below warmup",
            "(the rest)": "the public configuration of the model kind and dataset, from the "
                          "presets table (batch, lr, momentum, clip, warm-up length, cosine, "
                          "flooding, lambda)",
        },
        "differs": [],
    },
}


def names() -> list:
    """Sorted preset names."""
    return sorted({name for name, _ in PEERS})


def rules_of(name: str) -> list:
    """The rules preset ``name`` has an entry for."""
    return sorted(r for n, r in PEERS if n == name)


def lookup(name: str, rule: str) -> dict:
    """The :data:`PEERS` entry of (name, rule); ValueError saying what exists otherwise."""
    if (name, rule) not in PEERS:
        if name not in names():
            raise ValueError(f"no peer preset {name!r}; available: {', '.join(names())}")
        raise ValueError(f"peer preset {name!r} is for rule(s) {', '.join(rules_of(name))}, "
                         f"not {rule!r}; pass --rule {rules_of(name)[0]}")
    return PEERS[(name, rule)]


def settings(name: str, rule: str) -> dict:
    """A copy of the settings of (name, rule) (rule_options copied too)."""
    s = lookup(name, rule)["settings"]
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in s.items()}


def named_for(rule: str) -> dict:
    """{preset name: settings} for ``rule``: the form of ``ccledu.presets.NAMED[rule]``."""
    return {n: settings(n, r) for (n, r) in PEERS if r == rule}


def describe(name: str, rule: str) -> str:
    """A few lines: the peer's files, each setting and what it reproduces, what differs."""
    e = lookup(name, rule)
    lines = [f"preset {name} ({rule}): {e['peer']}"]
    for k, v in e["reproduces"].items():
        lines.append(f"  {k}: {v}")
    for d in e["differs"]:
        lines.append(f"  differs: {d}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m ccledu.peer_presets show NAME [--rule RULE]``: what a preset reproduces."""
    p = argparse.ArgumentParser(
        prog="python -m ccledu.peer_presets",
        description="Describe a public implementation's preset (train or trace with it: "
                    "ccledu train|trace --rule RULE --preset NAME).")
    p.add_argument("action", choices=("show",))
    p.add_argument("preset", choices=names())
    p.add_argument("--rule", default=None, help="rule of the preset (default: its first)")
    a = p.parse_args(argv)
    try:
        print(describe(a.preset, a.rule or rules_of(a.preset)[0]))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
