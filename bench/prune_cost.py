"""What a prune costs, in forward passes: the default prune's wall time divided
by the wall time of ONE forward pass of the same calibration batch through the
dense model's layers (transformers, same dtype, device and batch size), plus
peak memory, in one run.

    python bench/prune_cost.py                         # smollm2-135m and the 1.1 B-shaped random model
    python bench/prune_cost.py --models smollm2-135m --device cuda

Each measurement runs in a fresh subprocess, so its peak memory is its own:
``peak_anon_gib`` is the peak of RssAnon (sampled every 50 ms: the memory the
process itself allocated), ``peak_rss_gib`` (VmHWM) also counts the mapped
safetensors pages the kernel may drop at will. The calibration batch is given
to the pruner (128 x 128 tokens; random ids for the random model, the cached
self-sampled stream for real models), so the time to sample calibration text is
not in the prune time; it is reported separately when it was measured.
Results: bench/results/prune_cost.json, with the commit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MEMORY_SAMPLER, commit_hash  # noqa: E402
from olica_prune.eval.suite import _write_atomic  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=1024, num_layers=4,
                 vocab_size=256),  # a smoke test of this script
    # TinyLlama-1.1B's shape
    "random_1b": dict(hidden_size=2048, num_heads=32, num_kv_heads=4, head_dim=64, intermediate_size=5632,
                      num_layers=22, vocab_size=32000),
    # Llama-2-7B's shape (GPU only), written in bfloat16 as such checkpoints ship (13.5 GB)
    "random_7b": dict(hidden_size=4096, num_heads=32, num_kv_heads=32, head_dim=128, intermediate_size=11008,
                      num_layers=32, vocab_size=32000),
}
SOURCE_DTYPE = {"random_7b": "bfloat16"}  # the others: float32

_PRELUDE = """
import json, sys, time, torch
sys.path.insert(0, {root!r})
torch.set_grad_enabled(False)
""" + MEMORY_SAMPLER.replace("{", "{{").replace("}", "}}") + """
ids = torch.load({ids!r})
"""

_FORWARD = _PRELUDE + """
from olica_prune.method.layers import SourceWeights, load_config, read_dense_layer, rotary
from olica_prune.io.adapters import adapter_for
from olica_prune.contract import ModelDims
from olica_prune.io.preflight import parse_device
src = {src!r}
device = parse_device({device!r})
cfg, raw = load_config(src)
qkv_bias = adapter_for(raw).qkv_bias
dims = ModelDims.from_config(cfg)
w = SourceWeights(src)
rope = rotary(cfg, device)
pos = rope(torch.zeros(1, device=device), torch.arange(ids.shape[1], device=device)[None])
def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()
sync()
t = time.perf_counter()
emb = w.get("model.embed_tokens.weight").to(device)
hidden = [torch.nn.functional.embedding(b.to(device), emb) for b in ids.split({batch})]
for i in range(dims.num_layers):
    layer = read_dense_layer(w, cfg, i, qkv_bias=qkv_bias, device=device)
    # the same operations the pruner runs per layer: causal attention, then the FFN
    mid = [h + layer.self_attn(layer.input_layernorm(h), position_embeddings=pos, attention_mask=None)[0]
           for h in hidden]
    hidden = [m + layer.mlp(layer.post_attention_layernorm(m)) for m in mid]
    del layer
sync()
print(json.dumps(dict(seconds=time.perf_counter() - t, peak_anon_gib=peak_anon[0] / 2**20,
                      peak_rss_gib=status("VmHWM") / 2**20)))
"""

_PRUNE = _PRELUDE + """
from olica_prune.method.pruner import PruneConfig, prune
t = time.perf_counter()
rep = prune({src!r}, output={out!r}, overwrite=True, calibration_ids=ids, progress=True,
            config=PruneConfig(sparsity={sparsity}, device={device!r}, batch_size={batch},
                               allocation={allocation!r}))
layer_s = sorted(r["seconds"] for r in rep["layers"])
print(json.dumps(dict(seconds=time.perf_counter() - t, achieved=rep["sparsity"]["achieved"],
                      allocation=rep["config"]["allocation"],
                      timings=rep["timings"], dense_pass=rep["dense_pass"], peak_anon_gib=peak_anon[0] / 2**20,
                      peak_rss_gib=status("VmHWM") / 2**20, device=rep.get("device"),
                      layer_s_median=layer_s[len(layer_s) // 2], peak_memory=rep["peak_memory"],
                      device_name=torch.cuda.get_device_name() if rep["device"].startswith("cuda") else None)))
"""


def _run(code: str) -> dict:
    # stderr (the progress bars, any traceback) goes straight to the terminal
    res = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    if res.returncode:
        raise RuntimeError(f"measurement subprocess failed (exit {res.returncode}); its stderr is above")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _source(kind: str, workdir: Path) -> tuple[str, Path]:
    """(model directory, calibration ids file)."""
    import torch

    ids_file = workdir / f"ids-{kind}.pt"
    if kind in SHAPES:
        src = workdir / f"src-{kind}"
        build = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
from tests.tinymodels import tiny_config, random_checkpoint
random_checkpoint(tiny_config(**{SHAPES[kind]!r}), {str(src)!r}, overwrite=True,
                  dtype=torch.{SOURCE_DTYPE.get(kind, "float32")},
                  device="cuda" if torch.cuda.is_available() else "cpu")
"""
        if not (src / "config.json").is_file():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", build], check=True)
            print(f"{kind}: random source written in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        ids = torch.randint(0, SHAPES[kind]["vocab_size"], (128, 128), generator=torch.Generator().manual_seed(0))
        torch.save(ids, ids_file)
        return str(src), ids_file
    from olica_prune.io.selfcal import self_calibration
    from olica_prune.io.sources import resolve_model
    from transformers import AutoTokenizer

    src = resolve_model(kind)
    ids = self_calibration(src, AutoTokenizer.from_pretrained(str(src)), num_samples=128, seq_len=128, seed=0)
    torch.save(ids, ids_file)
    return str(src), ids_file


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "random_1b"])
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--allocation", default=None, choices=["kl", "uniform", "adaptive"],
                    help="default: the pruner's default (kl)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "prune_cost.json"))
    args = ap.parse_args(argv)
    import torch

    result = {"commit": commit_hash(), "device": args.device, "threads": torch.get_num_threads(),
              "sparsity": args.sparsity, "calibration": "128 x 128 tokens, given to the pruner", "models": {}}
    out = Path(args.out)
    if out.exists():
        prior = json.loads(out.read_text())
        if prior.get("device") == args.device:
            result["models"] = prior.get("models", {})  # other models' rows stay (each records its commit)
    with tempfile.TemporaryDirectory(prefix="olica-prune-cost-") as tmp:
        work = Path(tmp)
        for kind in args.models:
            src, ids = _source(kind, work)
            fmt = dict(root=str(ROOT), ids=str(ids), src=src, device=args.device, batch=args.batch_size,
                       sparsity=args.sparsity, out=str(work / f"out-{kind}"), allocation=args.allocation)
            t = time.perf_counter()
            fwd = _run(_FORWARD.format(**fmt))
            pr = _run(_PRUNE.format(**fmt))
            row = {"commit": result["commit"], "forward_s": round(fwd["seconds"], 2),
                   "prune_s": round(pr["seconds"], 2), "forward_passes": round(pr["seconds"] / fwd["seconds"], 2),
                   "allocation": pr["allocation"],
                   # the one dense pass: kl sensitivity probes and the ranking of branch layers
                   "dense_pass_s": round(pr["timings"].get("dense_pass_s", 0.0), 2),
                   # of it, the kl allocation's probes (their layer forwards and the output KL)
                   "sensitivity_probes_s": round(pr["timings"].get("sensitivity_probes_s", 0.0), 2),
                   # the passes without the probes: what the "adaptive pass apart" counts
                   "forward_passes_without_probes": round(
                       (pr["seconds"] - pr["timings"].get("sensitivity_probes_s", 0.0)) / fwd["seconds"], 2),
                   "dense_pass": pr["dense_pass"],
                   "prune_pass_s": round(pr["timings"]["prune_s"], 2),
                   "achieved": pr["achieved"], "peak_anon_gib": round(pr["peak_anon_gib"], 3),
                   "peak_rss_gib": round(pr["peak_rss_gib"], 3),
                   "forward_peak_anon_gib": round(fwd["peak_anon_gib"], 3),
                   "layer_s_median": round(pr["layer_s_median"], 3), "source_dtype": SOURCE_DTYPE.get(kind, "float32"),
                   **({"device_name": pr["device_name"], "cuda_peak_gib": round(pr["peak_memory"].get(
                       "cuda_max_allocated_gib", 0.0), 2)} if pr.get("device_name") else {}),
                   "bench_s": round(time.perf_counter() - t, 1)}
            result["models"][kind] = row
            print(kind, json.dumps(row), flush=True)
            _write_atomic(out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
