"""The pruning method: the math (``linalg``), the width planner (``budget``), the
streamed layers (``layers``), the prune pass (``pruner``) and end-to-end recovery
(``recover``)."""
