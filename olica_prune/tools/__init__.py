"""Commands around the pruner: the demo, int8 quantization, and the vLLM sampler
that ``io.selfcal`` runs in a child process (``python -m olica_prune.tools.selfcal_vllm``)."""
