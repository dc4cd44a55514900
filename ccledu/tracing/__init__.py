"""Trace files (docs/trace-format.md), one module per responsibility: ``format`` (constants,
write, read, validate, rebuild), ``record`` (run and write one step), ``verify`` (recompute and
compare). ``ccledu.trace`` gathers their public names."""
