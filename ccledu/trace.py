"""Trace files: one training step written down tensor by tensor, and a checker for them.

A trace is a ``.npz`` archive (``numpy.savez``) that describes one step of one learning rule
completely: the network (``meta["layers"]``), the batch (``x``, ``y``), every parameter before the
step (``param/<name>``), what the rule computed (``act/<l>``, ``signal/<l>``, ``loss/<term>``,
``grad/<name>``) and every parameter after the optimiser step (``after/<name>``). The full format
is documented in ``docs/trace-format.md``; this module writes, reads and checks such files.

The code lives in ``ccledu.tracing``, one module per responsibility; this module gathers its
public names:

* ``tracing.format``: the constants, :func:`save`, :func:`read_trace` (loads a file, ours or
  anyone's, and checks that it is well formed, raising :class:`TraceError` otherwise),
  :func:`rebuild` (network and rule from ``meta``);
* ``tracing.record``: :func:`run_step` and :func:`write_trace` (builds a model and a rule, runs
  one step with ccledu, writes the file);
* ``tracing.verify``: :func:`verify_trace` (rebuilds, loads the parameters, recomputes the step
  and compares every tensor the file holds), :func:`compare`, :class:`Report`.

What a rule adds to a trace comes from the rule (``Rule.trace_step``, ``trace_tensors``,
``trace_shapes``, ``trace_meta``, ``grad_order``). Command line (``ccledu trace`` /
``ccledu verify``): ``ccledu/cli.py``.

Naming (0-based block index l, PyTorch layouts):

    x (N, *input_shape), y (N,) int
    param/forward.<l>.weight|bias, param/feedback.<l>.weight (CCL, KP, TP), param/fixed.<l>.weight
                   (FA, DFA, DRTP, frSF sign symmetry)
    act/<l>        output of block l (act/<L-1> = the logits; the input x is not an act)
    signal/<l>     CCL: output of feedback block l, shaped like block l's *input* (C rows);
                   signal/<L> = I_C, the feedback net's input
    overlay/positive|negative|neutral   FF: the inputs with the label written in
    input/<name>   what the step drew at random (an input, replayed by verify, not checked):
                   FF input/negative_labels; TP input/noise/<k>; brSF input/magnitude/<l>
    target/<l>     TP rules: the layer targets t_l
    loss/<term>, loss/total             0-d
    grad/<name>    the rule's gradient (before warm-up, centralization, clipping, SGD)
    after/<name>   the parameter after the optimiser step"""
from __future__ import annotations

from .tracing.format import (FORMAT, LIMITS, NONFINITE_KEY, REQUIRED_META, TOLERANCES,
                             TraceArrays, TraceError, all_parameters, build_rule, declared_size,
                             expected_shapes, read_trace, rebuild, save)
from .tracing.record import (CLIP_EPS, UPDATE_ORDER, make_optimizer, make_trace,
                             optimizer_settings, rule_settings, run_step, write_trace)
from .tracing.verify import Report, Row, check_tolerance, compare, format_report, verify_trace

__all__ = ["FORMAT", "LIMITS", "NONFINITE_KEY", "REQUIRED_META", "TOLERANCES", "CLIP_EPS",
           "UPDATE_ORDER", "TraceArrays", "TraceError", "Report", "Row", "all_parameters",
           "build_rule", "check_tolerance", "compare", "declared_size", "expected_shapes",
           "format_report", "make_optimizer", "make_trace", "optimizer_settings", "read_trace",
           "rebuild", "rule_settings", "run_step", "save", "verify_trace", "write_trace"]
