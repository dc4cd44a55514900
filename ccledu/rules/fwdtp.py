"""Fixed-weight difference target propagation (FW-DTP, Shibuya et al. 2023): DTP whose feedback
weights are drawn once and never trained.

Everything else is DTP (:mod:`ccledu.rules.dtp`): the output target t = z − β (softmax(z) − Y),
the difference correction t_{l−1} = g_l(t_l) + a_{l−1} − g_l(a_l) with g_l(s) = σ_b(s Q_lᵀ), and
the local forward losses (1/N) Σ ‖a_l − t_l‖². Q_l ~ U(−0.001, 0.001) (the code's ``random``
feedback with its default ``uniform`` init), named ``feedback.<l>.weight`` and held as
``buffers()`` (never trained). Shibuya et al. show that the difference correction alone makes
the propagated targets informative: t_{l−1} − a_{l−1} ≈ J_{g_l}(t_l − a_l), and the forward
Jacobians adapt to the fixed feedback (a "feedback-alignment" effect for targets).

With such small Q the target displacement shrinks by roughly ‖Q‖ at every layer, which is why
the method is run with batch normalisation (``batchnorm``, the code's ``FWDTP-BN``): the
standardised difference output restores the scale at every layer. The defaults are the
configuration the authors' README gives for FW-DTP with BN on MNIST (``--algorithm=FWDTP-BN
--forward_last_activation=linear-BN --learning_rate=0.1 --stepsize=0.04``) with the code's
other defaults (batch 256, 100 epochs, tanh, orthogonal forward init). ``--no-batchnorm`` gives
their plain ``FWDTP``.
"""
from __future__ import annotations

from .dtp import TargetPropagation


class FWDTP(TargetPropagation):
    """FW-DTP: DTP with fixed random feedback weights (module docstring)."""
    name = "fwdtp"
    feedback_loss = None
    fixed_feedback = True
    OPTIONS = {**TargetPropagation.OPTIONS,
               "batchnorm": (bool, True, "standardise every f, g and difference output over the "
                                         "batch (the code's FWDTP-BN; default on)"),
               "feedback_init": (float, 1e-3, "fixed Q_l ~ U(-s, s)",
                                 TargetPropagation.OPTIONS["feedback_init"][3])}

    def __init__(self, **options):
        options.setdefault("batchnorm", True)
        super().__init__(**options)
