"""`raysearch`: the command line of the segmentation core.

    raysearch summary --a 0.125 --t 2 --r 1 --pp 0 --res 512 [--json]
    raysearch synth OUT --n 400 --seed 0
    raysearch train --data synthetic --epochs 5 --res 128 --out runs/quick
    raysearch evaluate --onnx runs/quick/model.onnx --data synthetic --split test --json
    raysearch export --checkpoint runs/quick/best.pt --out model.onnx
    raysearch report --experiment raysearch --out report.html
    raysearch pick --max-latency-ms 33 --min-iou 0.95
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

log = logging.getLogger("raysearch")

DATA_HELP = ("dataset: a folder with <split>/images + <split>/labels (like ../shared/data/packages), a folder "
             "with images + labels, a label-studio COCO export (result.json), or 'synthetic[:N]' (the bundled "
             "generator, N samples in all, default 400)")


def add_spec_args(p: argparse.ArgumentParser, res_default: str = "512") -> None:
    g = p.add_argument_group("model (the fields of ModelSpec)")
    g.add_argument("--arch", default="fastscnn", help="model family: fastscnn, bisenetv2, deeplabv3 (default %(default)s)")
    g.add_argument("--a", type=float, default=1.0, help="width multiplier; channels are int(c*a) (default %(default)s)")
    g.add_argument("--t", type=int, default=6, help="expansion rate of the bottleneck blocks (default %(default)s)")
    g.add_argument("--r", type=int, default=3, help="repetitions of the bottleneck blocks (default %(default)s)")
    g.add_argument("--pp", type=int, default=1, choices=(0, 1), help="pyramid pooling off/on (default %(default)s)")
    g.add_argument("--res", default=res_default, help="input size, N or HxW, multiples of 32 (default %(default)s)")
    g.add_argument("--in-channels", type=int, default=3, choices=(1, 3),
                   help="3 = RGB (ImageNet-normalized), 1 = Y channel of YCrCb (default %(default)s)")
    g.add_argument("--num-classes", type=int, default=1, help="output channels; 1 = binary (default %(default)s)")


def spec_from_args(args: argparse.Namespace):
    from raysearch.models import ModelSpec

    return ModelSpec(arch=args.arch, a=args.a, t=args.t, r=args.r, pp=args.pp, input_hw=args.res,
                     in_channels=args.in_channels, num_classes=args.num_classes)


def add_threshold_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None, metavar="P",
                   help="foreground when the probability exceeds P (default 0.5)")
    g.add_argument("--logit-threshold", type=float, default=None, metavar="L",
                   help="foreground when the raw logit exceeds L; the study's published IoUs use 0.5")


def logit_threshold(args: argparse.Namespace) -> float:
    from raysearch.evaluate import prob_to_logit

    if args.logit_threshold is not None:
        return args.logit_threshold
    return prob_to_logit(args.threshold if args.threshold is not None else 0.5)


# ---- commands ------------------------------------------------------------------------------------
def cmd_summary(args: argparse.Namespace) -> int:
    from raysearch.summary import summarize

    spec = spec_from_args(args)
    s = summarize(spec)
    if args.json:
        print(s.to_json())
        return 0
    print(f"{spec.name}")
    print(f"  params_total     {s.params_total:>14,}   (every parameter, the study's convention)")
    print(f"  params_executed  {s.params_executed:>14,}   (parameters the forward pass uses)")
    print(f"  macs             {s.macs / 1e6:>14,.2f} M")
    print(f"  input_mb         {s.input_mb:>14.2f}")
    print(f"  fwd_pass_mb      {s.fwd_pass_mb:>14.2f}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from raysearch.data.synthetic import write_synthetic
    from raysearch.models import parse_hw

    h, w = parse_hw(args.size)
    counts = write_synthetic(args.out, n=args.n, seed=args.seed, size=(w, h), progress=not args.quiet)
    log.info("wrote %s to %s", ", ".join(f"{k}: {v}" for k, v in counts.items()), args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from raysearch.data import open_split
    from raysearch.evaluate import evaluate_onnx
    from raysearch.export import export_onnx
    from raysearch.summary import summarize
    from raysearch.train import TrainConfig, train

    spec = spec_from_args(args)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      num_workers=args.workers, device=args.device, train_scale=args.train_scale,
                      progress=not args.quiet)
    out = Path(args.out)
    sources = {s: open_split(args.data, s, seed=args.seed, limit=args.limit) for s in ("train", "val", "test")}
    log.info("data %s: %s", args.data, ", ".join(f"{k} {len(v)}" for k, v in sources.items()))
    result = train(spec, sources["train"], sources["val"], cfg, out_dir=out, resume=args.resume)
    report = export_onnx(result.model, out / "model.onnx", exporter=args.exporter)
    thr = logit_threshold(args)
    test = evaluate_onnx(report.path, sources["test"], logit_threshold=thr, progress=not args.quiet)
    metrics = {
        "spec": spec.to_dict(), "name": spec.name, "data": str(args.data),
        "train": result.summary(), "test": test.metrics(), "summary": summarize(spec).to_dict(),
        "onnx": {"path": str(report.path), "size_bytes": report.size_bytes, "max_abs_diff": report.max_abs_diff},
        "history": [h.to_dict() for h in result.history],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{spec.name}: test IoU {test.iou:.4f} (onnxruntime, {test.n_images} images, best epoch "
          f"{result.best_epoch}/{len(result.history)}) -> {report.path}, {out / 'metrics.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raysearch.data import open_split
    from raysearch.evaluate import evaluate_onnx

    source = open_split(args.data, args.split, seed=args.seed, limit=args.limit)
    res = evaluate_onnx(args.onnx, source, logit_threshold=logit_threshold(args), threads=args.threads,
                        progress=not args.json)
    if args.json:
        print(res.to_json(per_image=args.per_image))
    else:
        print(f"{args.onnx} on {args.data} [{args.split}, {res.n_images} images]")
        for k, v in res.metrics().items():
            print(f"  {k:<16} {v:.4f}" if isinstance(v, float) else f"  {k:<16} {v}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from raysearch.export import export_onnx
    from raysearch.train import load_checkpoint

    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
    else:
        from raysearch.models import build_model

        model = build_model(spec_from_args(args))  # untrained: what latency-first benchmarking measures
    r = export_onnx(model, args.out, exporter=args.exporter)
    print(f"{r.path}: {r.spec.name}, input {r.input_name} {list(r.input_shape)}, {r.size_bytes / 1e6:.2f} MB, "
          f"max |onnxruntime - torch| = {r.max_abs_diff:.2g}")
    return 0


def _client(args: argparse.Namespace):
    from mlflow.tracking import MlflowClient

    from raysearch.search import tracking_uri

    return MlflowClient(tracking_uri(args.tracking_uri))


def cmd_report(args: argparse.Namespace) -> int:
    from raysearch.pareto import front_table
    from raysearch.report import candidates, searches, write_html

    client = _client(args)
    for parent in searches(client, args.experiment, args.run_id, args.optimization):
        rows = candidates(client, parent, args.device_class)
        print(f"{parent.info.run_name} ({parent.data.tags.get('stage', '')}): {len(rows)} candidates")
        if rows:
            print(front_table(rows, max_latency_ms=args.max_latency_ms, min_iou=args.min_iou))
        print()
    out = write_html(client, args.experiment, args.out, run_id=args.run_id, optimization=args.optimization,
                     max_latency_ms=args.max_latency_ms, min_iou=args.min_iou, device_class=args.device_class)
    print(f"wrote {out}")
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    from raysearch.report import pick, rows_json

    rows = pick(_client(args), args.experiment, args.max_latency_ms, args.min_iou, args.run_id, args.optimization,
                args.device_class)
    if args.json:
        print(rows_json(rows))
        return 0 if rows else 1
    if not rows:
        print("no candidate meets the requirements; `raysearch report` shows the closest", file=sys.stderr)
        return 1
    for i, r in enumerate(rows, 1):
        print(f"{i}. {r['name']}  IoU {r['iou']:.4f}  {r['latency_ms']:.3f} ms on {r['device_class'] or '?'}  "
              f"({r['stage']}, run {r['run_id']})\n"
              f"   {r['onnx']}")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from raysearch.optimize import optimize, options_from_args, result_json

    res = optimize(options_from_args(args))
    if args.json:
        print(result_json(res))
    return 0 if res.candidates else 1


def add_mlflow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default="raysearch", help="MLflow experiment (default %(default)s)")
    p.add_argument("--run-id", help="only this search (its parent run id)")
    p.add_argument("--optimization", help="only the stage searches of this `raysearch optimize` run (its name)")
    p.add_argument("--device-class", help="only candidates measured on this device class (e.g. rpi4; a quick "
                                          "local run's are 'local')")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    p.add_argument("--max-latency-ms", type=float, help="latency requirement")
    p.add_argument("--min-iou", type=float, help="IoU requirement")


# ---- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raysearch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("summary", help="parameters, MACs and memory of a model variant",
                       description="Parameters (the study's convention and the executed ones), MACs and "
                                   "memory of a model variant, as the reference study reported them.")
    add_spec_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object (params_total, params_executed, "
                                                       "macs, input_mb, fwd_pass_mb)")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("synth", help="write a synthetic conveyor-belt dataset",
                       description="Write a deterministic synthetic conveyor-belt dataset in the folder layout "
                                   "{train,val,test}/{images,labels} (split 75/10/15).")
    s.add_argument("out", help="output folder")
    s.add_argument("--n", type=int, default=400, help="number of samples in all (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same bytes (default %(default)s)")
    s.add_argument("--size", default="540x960", help="image size HxW (default %(default)s)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("train", help="train with the study's recipe, export ONNX, measure test IoU",
                       description="Train a model with the study's recipe (BCE, Adam 0.01, batch 8, poly decay), "
                                   "keep the epoch with the lowest validation loss, export it to ONNX and measure "
                                   "its test IoU through onnxruntime. Writes best.pt, last.pt, model.onnx and "
                                   "metrics.json to --out.")
    add_spec_args(s, res_default="128")
    s.add_argument("--data", default="synthetic", help=DATA_HELP + " (default %(default)s)")
    s.add_argument("--limit", type=int, default=None, help="use at most N samples per split")
    s.add_argument("--epochs", type=int, default=400, help="default %(default)s (the study's)")
    s.add_argument("--batch-size", type=int, default=8, help="default %(default)s")
    s.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="default %(default)s")
    s.add_argument("--workers", type=int, default=0, help="DataLoader workers (default %(default)s)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    s.add_argument("--train-scale", type=float, default=None,
                   help="resize factor before the random crop (default: input size / 512, the study's)")
    s.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"), help="ONNX exporter")
    s.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    s.add_argument("--out", default="runs/train", help="output folder (default %(default)s)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threshold_args(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="test IoU of an ONNX model through onnxruntime",
                       description="Evaluate an ONNX model as the study did: resize each image to the model's "
                                   "input (read from the graph), threshold, resize back to the original size, "
                                   "foreground IoU per image, averaged.")
    s.add_argument("--onnx", required=True, help="the model file")
    s.add_argument("--data", default="synthetic", help=DATA_HELP + " (default %(default)s)")
    s.add_argument("--split", default="test", choices=("train", "val", "test"))
    s.add_argument("--limit", type=int, default=None, help="evaluate at most N images")
    s.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default %(default)s)")
    s.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    s.add_argument("--json", action="store_true", help="print the metrics as JSON")
    s.add_argument("--per-image", action="store_true", help="with --json: include every image's IoU")
    add_threshold_args(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("export", help="export a checkpoint (or an untrained spec) to ONNX",
                       description="Export to one self-contained ONNX file (static H/W, dynamic batch, the spec in "
                                   "its metadata), checked against torch through onnxruntime.")
    s.add_argument("--checkpoint", help="a best.pt/last.pt written by `raysearch train`; without it the model "
                                        "described by the model flags is exported untrained")
    add_spec_args(s)
    s.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"), help="ONNX exporter")
    s.add_argument("--out", required=True, help="output .onnx path")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("report", help="Pareto tables and a self-contained HTML report of the searches",
                       description="Print each search's candidates and write one HTML file (plots and prediction "
                                   "overlays embedded) to send instead of an MLflow link.")
    add_mlflow_args(s)
    s.add_argument("--out", default="raysearch-report.html", help="HTML file to write (default %(default)s)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("pick", help="the candidates that meet the requirements, best first",
                       description="The Pareto-optimal candidates of the experiment's searches that meet "
                                   "--max-latency-ms and --min-iou, best IoU first, with their ONNX files.")
    add_mlflow_args(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_pick)

    from raysearch.optimize import EFFORTS, EPILOG, add_arguments

    s = sub.add_parser("optimize", help="requirements and effort in, qualifying candidate models out",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=f"Run the optimization stages in order of cost for the effort level "
                                   f"({', '.join(EFFORTS)}) and hand back the candidates that meet --max-latency-ms "
                                   f"and --min-iou, registered in the MLflow model registry, with an HTML report. "
                                   f"Nothing qualifies: the closest candidates and what each misses.\n\n"
                                   "example:\n  raysearch optimize --model fastscnn --data DIR --max-latency-ms 33 "
                                   "--min-iou 0.95 --farm clusters/farm.yaml --device-class rpi4 --effort intermediate "
                                   "--time-budget 2h", epilog=EPILOG)
    add_arguments(s)
    s.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    s.set_defaults(func=cmd_optimize)
    for s in sub.choices.values():  # `-v` after the command too (SUPPRESS: the top-level default stands)
        s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging and tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # one clear line, no traceback (-v for one)
        if args.verbose:
            raise
        print(f"raysearch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run the same command again to continue (--fresh to start over)" if args.command == "optimize" else ""
        print(f"raysearch {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
