"""The transformers model of an Olica checkpoint (``modeling``) and the
``AutoModelForCausalLM`` hook (``automodel``)."""
