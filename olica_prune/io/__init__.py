"""What the pruner reads and writes: model sources and families (``sources``,
``adapters``, ``preflight``), calibration text (``data``, ``selfcal``) and the
checkpoint writer (``writer``, ``provenance``)."""
