"""Shared fixtures: 20 % prunes of the real bundled model, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


class RealPrunes:
    """Prunes SmolLM2-135M lazily, once per method, into one session directory."""

    SPARSITY = 0.2

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[str, Path] = {}
        self.reports: dict[str, dict] = {}

    def get(self, method: str) -> Path:
        if method not in self._done:
            from olica_prune.method.pruner import PruneConfig, prune

            out = self.root / f"smollm2-135m-{method}-20"
            self.reports[method] = prune("smollm2-135m", output=out, progress=False,
                                         config=PruneConfig(sparsity=self.SPARSITY, method=method))
            self._done[method] = out
        return self._done[method]


@pytest.fixture(scope="session")
def real_prunes(tmp_path_factory) -> RealPrunes:
    return RealPrunes(tmp_path_factory.mktemp("real-prunes"))
