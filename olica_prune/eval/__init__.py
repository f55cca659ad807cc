"""Evaluation: the text suite (``suite``), perplexity (``evaluate``), behaviour sets
(``behaviour``), lm-evaluation-harness tasks (``lmeval``) and the sparsity sweep
(``sweep``). Imported by the CLI only inside the commands that need it."""
