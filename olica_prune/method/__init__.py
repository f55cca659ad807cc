"""The pruning method.

- ``linalg``: the math (OND, activation-aware low rank, ridge fits, neuron scores);
- ``budget``: a target sparsity into per-layer widths;
- ``layers``: the source's decoder layers, streamed one at a time, and pruned ones built;
- ``config``: what a prune is asked to do (``PruneConfig``, presets);
- ``pruner``: :func:`pruner.prune`, the orchestration of one run (``run``): the dense
  pass (``sensitivity``), then layer by layer the attention step (``attention``) and
  the FFN step (``ffn``);
- ``recover``: end-to-end recovery of a pruned checkpoint against its dense model.
"""
