"""SGD (and Adam) with the extras the public CCL configs use, matching PyTorch's semantics step
for step.

One :class:`Optimizer` holds several :class:`ParamGroup` s (CCL: the forward weights and the
feedback weights), each with its own learning rate, momentum, weight decay, clipping norm and
gradient-centralization switch. :meth:`Optimizer.step` applies, in this order (the order of the
public CCL training loop):

1. **Warm-up.** At global step t (0-based) with t < ``warmup``, every gradient is multiplied by
   (t + 1)/warmup. This equals scaling the loss by that factor before back-propagation.
   ``warmup_mode="epoch"`` follows the public CCL scripts instead: the factor is (b + 1)/warmup
   with b the batch index *within the current epoch* (it restarts at 0 after every
   :meth:`Optimizer.end_epoch`), still only while t < ``warmup``. The two agree whenever the
   warm-up fits in the first epoch; with a longer one the epoch form drops back at each epoch
   start (e.g. warmup 100, 40 steps an epoch: factors 0.01 … 0.40, then 0.01 … 0.40 again, then
   0.01 … 0.20, then 1).
2. **Gradient centralization** (groups with ``centralize=True``). For every gradient g with
   more than one dimension (weights, not biases):
   g ← g − mean(g over all dims but the first), i.e. each output unit's gradient row has zero
   mean.
3. **Clipping per group** (groups with ``clip > 0``), as ``torch.nn.utils.clip_grad_norm_``:
   ‖g‖ = sqrt(Σ_p ‖g_p‖²) over the group's gradients, coef = clip / (‖g‖ + 1e-6), and when
   coef < 1 every gradient of the group is multiplied by coef. Each group is clipped on its own.
4. **SGD** (``torch.optim.SGD``, dampening 0, no Nesterov), for each parameter p:
   g ← g + λ p (weight decay λ);
   with momentum μ > 0: b ← g on the group's first update of p, else b ← μ b + g; then g ← b;
   p ← p − η g.

   **Adam** instead (groups with ``optimizer="adam"``; ``torch.optim.Adam`` with amsgrad off),
   for each parameter p, with its own step count k = 1, 2, … (the updates p has received):
   g ← g + λ p (weight decay λ is L2 added to the gradient, as in torch.optim.Adam, not AdamW);
   m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²   (m, v start at 0);
   p ← p − (η / (1 − β₁ᵏ)) · m / (√v / √(1 − β₂ᵏ) + ε).
   ``momentum`` is not used by Adam (β₁ plays its part).

:meth:`Optimizer.end_epoch` advances the cosine schedule (``torch.optim.lr_scheduler.
CosineAnnealingLR`` stepped once per epoch): after e epochs
η_e = η_min + (η_0 − η_min) · (1 + cos(π e / T_max)) / 2, for every group, when
``cosine_tmax > 0``. With ``cooldown="linear"`` instead (loeweX/Forward-Forward's
``get_linear_cooldown_lr``, E = ``epochs``): after e epochs (e = the 0-based index of the next
epoch) η_e = η_0 for e ≤ ⌊E/2⌋, else η_0 · 2 (1 + E − e) / E: constant for the first half, then
linear down to 2η_0/E in the last epoch.

Parameters are updated **in place** (``p -= ...``), so the layers that own the arrays see the new
values. The caller's gradient arrays are never modified. Works on NumPy and CuPy arrays alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .backend import get_array_module, to_numpy

__all__ = ["ParamGroup", "Optimizer", "build_groups", "cooldown_lr", "cosine_lr", "group_settings"]


@dataclass
class ParamGroup:
    """A set of parameters sharing one set of hyper-parameters.

    ``params``: {name: array}, the arrays themselves (updated in place). ``lr`` η, ``momentum``
    μ, ``weight_decay`` λ, ``clip`` (max global L2 norm of the group's gradient; 0 = off),
    ``centralize`` (gradient centralization of every gradient with ndim > 1), ``optimizer``
    ("sgd" | "adam"), ``betas`` (β₁, β₂) and ``eps`` ε of Adam (unused by SGD).
    """
    name: str
    params: dict
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip: float = 0.0
    centralize: bool = False
    optimizer: str = "sgd"
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    initial_lr: float = field(init=False)

    def __post_init__(self):
        for key in ("lr", "momentum", "weight_decay", "clip"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float, np.floating, np.integer)) and value >= 0
                    and math.isfinite(value)):
                raise ValueError(f"parameter group {self.name!r}: {key} must be a finite "
                                 f"number >= 0, got {value!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"parameter group {self.name!r}: optimizer must be 'sgd' or 'adam', "
                             f"got {self.optimizer!r}")
        b1, b2 = (float(b) for b in self.betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0) or not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"parameter group {self.name!r}: betas must lie in [0, 1) and eps "
                             f"be >= 0, got {self.betas!r}, {self.eps!r}")
        self.betas = (b1, b2)
        self.eps = float(self.eps)
        if not isinstance(self.params, dict):
            raise TypeError(f"parameter group {self.name!r}: params must be a dict "
                            f"{{name: array}}, got {type(self.params).__name__}")
        for pname, p in self.params.items():
            if not hasattr(p, "dtype") or np.dtype(p.dtype).kind != "f":
                raise TypeError(f"parameter group {self.name!r}: parameter {pname!r} must be a "
                                f"floating-point array (updated in place), got "
                                f"{getattr(p, 'dtype', type(p).__name__)}")
        self.initial_lr = float(self.lr)


def group_settings(name: str, settings: dict) -> dict:
    """The hyper-parameters of the optimiser group ``name`` from training settings named as
    :class:`ccledu.train.TrainConfig` fields: group 'forward' reads ``lr_forward``,
    ``momentum_forward``, ``weight_decay_forward``, ``clip_forward``; any other group (the
    rule's own weights) the ``*_feedback`` ones; both read ``centralize`` and ``optimizer``."""
    sfx = "forward" if name == "forward" else "feedback"
    return {"lr": float(settings[f"lr_{sfx}"]), "momentum": float(settings[f"momentum_{sfx}"]),
            "weight_decay": float(settings[f"weight_decay_{sfx}"]),
            "clip": float(settings[f"clip_{sfx}"] or 0.0),
            "centralize": bool(settings.get("centralize")),
            "optimizer": settings.get("optimizer") or "sgd"}


def build_groups(param_groups: dict, settings: dict) -> list:
    """One :class:`ParamGroup` per entry of ``param_groups`` ({group name: {parameter name:
    array}}, a rule's ``param_groups(model)``), with :func:`group_settings`. The one place
    optimiser groups are made (trainer, traces)."""
    return [ParamGroup(name, params, **group_settings(name, settings))
            for name, params in param_groups.items()]


def cosine_lr(lr0: float, epoch: int, t_max: int, eta_min: float = 0.0) -> float:
    """η_e = η_min + (η_0 − η_min)(1 + cos(π e / T_max)) / 2 (closed form of CosineAnnealingLR)."""
    return eta_min + (lr0 - eta_min) * (1.0 + math.cos(math.pi * epoch / t_max)) / 2.0


def cooldown_lr(lr0: float, epoch: int, epochs: int) -> float:
    """η_0 for epoch ≤ ⌊E/2⌋, else η_0 · 2 (1 + E − epoch) / E (``epoch`` 0-based, E = ``epochs``:
    loeweX/Forward-Forward's linear cooldown over the second half)."""
    if epoch <= epochs // 2:
        return lr0
    return lr0 * 2 * (1 + epochs - epoch) / epochs


class Optimizer:
    """Multi-group SGD or Adam with warm-up, gradient centralization, per-group clipping and a cosine
    schedule (see the module docstring for the exact order and equations).

    Parameters
    ----------
    groups : list of ParamGroup (names of groups and of parameters must be unique).
    warmup : number of warm-up steps (0 = none).
    cosine_tmax : T_max of the per-epoch cosine schedule (0 = constant learning rate).
    eta_min : the schedule's floor η_min.
    warmup_mode : "global" (default: factor (t + 1)/warmup, t the global step) or "epoch" (the
        public CCL code: (b + 1)/warmup, b the batch index within the epoch, while t < warmup).
    cooldown : "none" (default) or "linear": loeweX's linear cooldown over the second half of
        ``epochs`` epochs (:func:`cooldown_lr`); not combined with a cosine schedule.
    epochs : the run's length E, needed by ``cooldown="linear"``.
    """

    def __init__(self, groups, warmup: int = 0, cosine_tmax: int = 0, eta_min: float = 0.0,
                 warmup_mode: str = "global", cooldown: str = "none", epochs: int = 0):
        if warmup_mode not in ("global", "epoch"):
            raise ValueError(f"warmup_mode must be 'global' or 'epoch', got {warmup_mode!r}")
        if cooldown not in ("none", "linear"):
            raise ValueError(f"cooldown must be 'none' or 'linear', got {cooldown!r}")
        if cooldown == "linear" and (cosine_tmax or 0) > 0:
            raise ValueError("cooldown='linear' and a cosine schedule (cosine_tmax > 0) both set "
                             "the learning rate per epoch; choose one (cosine_tmax=0 or "
                             "cooldown='none')")
        if cooldown == "linear" and int(epochs) < 1:
            raise ValueError(f"cooldown='linear' needs the run's length: epochs >= 1, got {epochs}")
        self.cooldown, self.epochs = cooldown, int(epochs)
        self.warmup_mode = warmup_mode
        self.epoch_step = 0                 # steps taken in the current epoch (warmup_mode="epoch")
        groups = list(groups)
        if not groups:
            raise ValueError("Optimizer needs at least one ParamGroup")
        if warmup < 0 or cosine_tmax < 0:
            raise ValueError(f"warmup and cosine_tmax must be >= 0, got {warmup}, {cosine_tmax}")
        self.groups = groups
        self.warmup = int(warmup)
        self.cosine_tmax = int(cosine_tmax)
        self.eta_min = float(eta_min)
        self.step_count = 0
        self.epoch = 0
        self.momentum_buffers: dict = {}
        self.adam_state: dict = {}          # {param name: {"step": k, "m": array, "v": array}}
        self._owner: dict[str, ParamGroup] = {}
        seen_groups = set()
        for g in groups:
            if g.name in seen_groups:
                raise ValueError(f"two parameter groups are called {g.name!r}; names must differ")
            seen_groups.add(g.name)
            for pname in g.params:
                if pname in self._owner:
                    raise ValueError(f"parameter {pname!r} is in groups "
                                     f"{self._owner[pname].name!r} and {g.name!r}; put it in one")
                self._owner[pname] = g

    # -- schedule ---------------------------------------------------------------------------
    @property
    def lrs(self) -> dict:
        """{group name: current learning rate}."""
        return {g.name: g.lr for g in self.groups}

    def warmup_factor(self, step: int | None = None, batch: int | None = None) -> float:
        """(t + 1)/warmup for t < warmup, else 1 (t = the given or the current global step);
        with warmup_mode="epoch", (b + 1)/warmup for t < warmup, b = ``batch`` or the current
        batch index within the epoch."""
        t = self.step_count if step is None else step
        if t >= self.warmup:
            return 1.0
        if self.warmup_mode == "epoch":
            b = self.epoch_step if batch is None else batch
            return (b + 1) / self.warmup
        return (t + 1) / self.warmup

    def end_epoch(self) -> dict:
        """Count one finished epoch and, with ``cosine_tmax > 0``, set every group's lr to
        η_min + (η_0 − η_min)(1 + cos(π e / T_max))/2 (with ``cooldown="linear"``,
        :func:`cooldown_lr`). Returns {group: lr}."""
        self.epoch += 1
        self.epoch_step = 0
        if self.cosine_tmax > 0:
            for g in self.groups:
                g.lr = cosine_lr(g.initial_lr, self.epoch, self.cosine_tmax, self.eta_min)
        elif self.cooldown == "linear":
            for g in self.groups:
                g.lr = cooldown_lr(g.initial_lr, self.epoch, self.epochs)
        return self.lrs

    # -- the update -------------------------------------------------------------------------
    def step(self, grads: dict) -> dict:
        """Apply one update from ``grads`` ({parameter name: gradient}, same shapes as the
        parameters). Parameters without a gradient (absent or None) are left alone, as PyTorch
        does with ``p.grad is None``.

        Returns {group name: {"grad_norm": ‖g‖ before clipping (after warm-up scaling and
        centralization), "clip_coef": factor applied (1.0 when not clipped), "lr": η used,
        "warmup_factor": warm-up factor}}. Norms and factors are 0-d arrays on the parameters'
        device (``float()`` reads one back); nothing here waits for the device.
        """
        unknown = [k for k in grads if k not in self._owner]
        if unknown:
            raise KeyError(f"gradients for unknown parameters {unknown}: no ParamGroup holds "
                           f"them (known: {sorted(self._owner)}). Add them to a group or drop "
                           f"them from the gradient dict.")
        factor = self.warmup_factor()
        info = {}
        for group in self.groups:
            # (1) warm-up scaling into an array of our own: the caller's arrays are never
            # touched. Without scaling or centralization the copy waits (work[name] is then the
            # caller's array itself): clipping makes it as g * coef (one pass instead of a copy
            # and a multiplication), else the update does.
            work = {}
            for pname, p in group.params.items():
                g = grads.get(pname)
                if g is None:
                    continue
                if not hasattr(g, "shape") or not hasattr(g, "dtype"):
                    raise TypeError(f"gradient {pname!r} must be an array shaped like the "
                                    f"parameter {tuple(p.shape)}, got {type(g).__name__}")
                if tuple(g.shape) != tuple(p.shape):
                    raise ValueError(f"gradient {pname!r} has shape {tuple(g.shape)} but the "
                                     f"parameter has shape {tuple(p.shape)}")
                xp = get_array_module(p, g)
                if factor != 1.0 and g.dtype == p.dtype:
                    g = g * factor                      # the copy and the scaling in one pass
                elif factor != 1.0 or g.dtype != p.dtype:
                    g = xp.array(g, dtype=p.dtype, copy=True)
                    if factor != 1.0:
                        g *= factor
                elif group.centralize and g.ndim > 1:
                    g = g.copy()
                # (2) gradient centralization
                if group.centralize and g.ndim > 1:
                    g -= g.mean(axis=tuple(range(1, g.ndim)), keepdims=True)
                work[pname] = g
            # (3) per-group clipping, computed on the device (no host sync): the factor
            # min(1, clip/(‖g‖ + 1e-6)) multiplies every gradient of the group; a factor of
            # exactly 1 leaves them unchanged, as torch.nn.utils.clip_grad_norm_ does.
            norm = 0.0
            coef = 1.0
            if work:
                sq = None
                for g in work.values():
                    gf = g.reshape(-1)
                    s = gf @ gf
                    sq = s if sq is None else sq + s
                xp = get_array_module(sq)
                norm = xp.sqrt(sq)
                if group.clip > 0:
                    coef = xp.minimum(group.clip / (norm + 1e-6), 1.0)
                    for pname, g in work.items():
                        if g is grads[pname]:
                            work[pname] = g * coef      # the copy and the clipping in one pass
                        else:
                            g *= coef
            # (4) SGD with momentum and weight decay, or Adam
            for pname, g in work.items():
                if g is grads[pname]:
                    g = g.copy()
                p = group.params[pname]
                if group.weight_decay:
                    g += group.weight_decay * p
                if group.optimizer == "adam":
                    self._adam_update(group, pname, p, g)
                    continue
                if group.momentum:
                    buf = self.momentum_buffers.get(pname)
                    if buf is None:
                        buf = g.copy()
                        self.momentum_buffers[pname] = buf
                    else:
                        buf *= group.momentum
                        buf += g
                    get_array_module(g).multiply(buf, group.lr, out=g)   # η b, into our g
                    p -= g
                else:
                    g *= group.lr                   # g is this step's own copy: scale it in place
                    p -= g
            info[group.name] = {"grad_norm": norm, "clip_coef": coef, "lr": group.lr,
                                "warmup_factor": factor}
        self.step_count += 1
        self.epoch_step += 1
        return info

    def _adam_update(self, group, pname, p, g):
        """One torch.optim.Adam update of p (in place) from the prepared gradient g."""
        xp = get_array_module(p, g)
        st = self.adam_state.get(pname)
        if st is None:
            st = {"step": 0, "m": xp.zeros_like(p), "v": xp.zeros_like(p)}
            self.adam_state[pname] = st
        b1, b2 = group.betas
        st["step"] += 1
        k = st["step"]
        m, v = st["m"], st["v"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        step_size = group.lr / (1.0 - b1 ** k)
        denom = xp.sqrt(v) / math.sqrt(1.0 - b2 ** k) + group.eps
        p -= step_size * (m / denom)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Step and epoch counters, learning rates, momentum buffers and Adam moments (as NumPy
        arrays)."""
        return {"step": self.step_count, "epoch": self.epoch,
                "lrs": self.lrs, "initial_lrs": {g.name: g.initial_lr for g in self.groups},
                "momentum": {k: np.array(to_numpy(v)) for k, v in self.momentum_buffers.items()},
                "adam": {k: {"step": st["step"], "m": np.array(to_numpy(st["m"])),
                             "v": np.array(to_numpy(st["v"]))}
                         for k, st in self.adam_state.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved; buffers move to each parameter's back-end."""
        by_name = {g.name: g for g in self.groups}
        for key in ("lrs", "initial_lrs"):
            missing = set(state.get(key, {})) - set(by_name)
            if missing:
                raise KeyError(f"state_dict has groups {sorted(missing)} this optimizer lacks "
                               f"(it has {sorted(by_name)})")
        self.step_count = int(state["step"])
        self.epoch = int(state["epoch"])
        for name, lr in state.get("lrs", {}).items():
            by_name[name].lr = float(lr)
        for name, lr in state.get("initial_lrs", {}).items():
            by_name[name].initial_lr = float(lr)
        self.momentum_buffers = {}
        for pname, buf in state.get("momentum", {}).items():
            if pname not in self._owner:
                raise KeyError(f"state_dict has a momentum buffer for unknown parameter {pname!r}")
            p = self._owner[pname].params[pname]
            xp = get_array_module(p)
            self.momentum_buffers[pname] = xp.array(buf, dtype=p.dtype)
        self.adam_state = {}
        for pname, st in state.get("adam", {}).items():
            if pname not in self._owner:
                raise KeyError(f"state_dict has Adam moments for unknown parameter {pname!r}")
            p = self._owner[pname].params[pname]
            xp = get_array_module(p)
            self.adam_state[pname] = {"step": int(st["step"]), "m": xp.array(st["m"], dtype=p.dtype),
                                      "v": xp.array(st["v"], dtype=p.dtype)}
