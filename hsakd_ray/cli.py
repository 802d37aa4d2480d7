"""Command line: argument parsing and error presentation only: a user error is one line and exit code 2, an
internal error one line and exit code 1 (its traceback with --debug), an interrupt exit code 130 (Ctrl-C) or 143
(SIGTERM)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from .errors import Terminated, UserError, one_line
from .verbosity import configure as configure_console

DEBUG_ENV = "HSAKD_DEBUG"  # set to 1: an internal error prints its traceback (as --debug does)


def cmd_models(args: argparse.Namespace) -> None:
    import torch

    from .models import build_backbone, build_model, list_architectures

    print(f"{'arch':<20}{'stages':>7}{'backbone params':>17}{'with all heads':>16}")
    for arch in list_architectures():
        with torch.device("meta"):  # shapes only: counting needs no memory and no weight initialisation
            backbone = sum(p.numel() for p in build_backbone(arch, args.num_classes).parameters())
            net = build_model(arch, args.num_classes, "all")
        total = sum(p.numel() for p in net.parameters())
        print(f"{arch:<20}{net.num_stages:>7}{backbone:>17,}{total:>16,}")


def cmd_job(args: argparse.Namespace) -> None:
    from .config import load_config, run_name

    cfg = load_config(args.config, args.set, kind=args.command)
    if args.local:
        from .data import eval_split
        from .engine import run_job
        from .engine.reporting import LocalReporter
        from .engine.runner import Runtime, resolve_device
        from .engine.selection import describe_kept, kept_metric
        from .train.job_checks import check_job

        check_job(cfg, args.command, local=True)
        run_dir = Path(cfg.train.output_dir) / run_name(cfg, args.command)
        keep_by = kept_metric(cfg, args.command)
        reporter = LocalReporter(run_dir, cfg.train.epochs, cfg.train.checkpoint_every, keep_by=keep_by,
                                 split=eval_split(cfg.data))
        run_job(cfg, args.command, Runtime(device=resolve_device(cfg.train.device), report=reporter))
        print(f"done: {reporter.kept} ({describe_kept(keep_by, reporter.best_epoch)})  " +
              ", ".join(f"{k} {v:.2f}" if not k.endswith("_num") else f"{k} {v:.0f}"
                        for k, v in reporter.summary().items()))
        return
    from .train.job import run_ray_job

    run_ray_job(cfg, args.command, config_path=args.config, tracking_uri=args.tracking_uri, resume=args.resume,
                address=args.address)


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from .config import apply_overrides, check_network_unchanged, config_from_dict, read_yaml
    from .data import build_datasets
    from .engine import load_network, read_meta, resolve_device
    from .engine.loop import evaluate
    from .engine.precision import autocast_dtype, cpu_flags, resolve_precision
    from .engine.runner import Runtime, make_loaders
    from .engine.threads import chunk_rows

    ckpt = Path(args.checkpoint)
    read_meta(ckpt)  # "not a checkpoint directory" before anything else is read
    stored = read_yaml(ckpt / "config.yaml")
    cfg = config_from_dict(apply_overrides(stored, args.set))
    check_network_unchanged(config_from_dict(stored), cfg, str(ckpt))
    net = load_network(ckpt, role="checkpoint")
    device = resolve_device(cfg.train.device)
    # evaluate as training evaluated (precision, memory format, chunks), so the stored metrics are reproduced
    precision = resolve_precision(cfg.train.precision, device.type, cpu_flags())
    net.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format)
    data = build_datasets(cfg.data)
    _, loader = make_loaders(data.train, data.eval, cfg, Runtime(device=device))
    with torch.inference_mode():
        metrics = evaluate(net, loader, device, cfg.train.channels_last, autocast_dtype(precision.value),
                           chunk_rows(cfg.train.cpu_chunk_rows, device))
    print(f"{ckpt} ({net.arch}, {data.eval_split} split of {cfg.data.name}, {len(data.eval)} images, "
          f"precision {precision.value})")
    for key, value in metrics.items():
        print(f"  {data.eval_split}/{key:<22}{value:8.2f}")


def cmd_import(args: argparse.Namespace) -> None:
    from .engine.importers import import_checkpoint

    done = import_checkpoint(args.source, args.arch, args.out, kind=args.kind, num_classes=args.num_classes,
                             force=args.force)
    heads = f"heads at stages {done.aux_stages}" if done.aux_stages else "no heads"
    use = "teacher.checkpoint" if done.aux_stages else "teacher.pretrained (mode: frozen)"
    print(f"{done.path}: {done.arch}, {done.num_classes} classes, {heads}; {done.tensors} tensors of a {done.kind} "
          f"file, every one mapped. Use it as {use} or as a probe's student.checkpoint.")


def cmd_export(args: argparse.Namespace) -> None:
    from .engine.deploy import export

    print(f"wrote {export(args.checkpoint, args.format, args.out)} ({args.format}: the backbone, heads stripped)")


def cmd_tune(args: argparse.Namespace) -> None:
    from .tune.sweep_checks import checked_sweep

    sweep = checked_sweep(args.space, args.set, tracking_uri=args.tracking_uri, resume=args.resume,
                          address=args.address)
    if args.no_final:
        sweep.space.tune.final.run = False
    from .tune.experiment import run_sweep  # Ray and MLflow load only once the sweep is known to be runnable

    run_sweep(sweep)


def cmd_cluster(args: argparse.Namespace) -> None:
    from .cluster import local

    if args.action == "up":
        state = local.up(args.dir, nodes=args.nodes, cpus_per_node=args.cpus_per_node, mlflow_port=args.mlflow_port,
                         object_store_mb=args.object_store_mb)
        print("\n".join(local.describe_up(state)), flush=True)
    elif args.action == "down":
        stopped = local.down(args.dir)
        print(f"cluster in {Path(args.dir).resolve()} stopped ({stopped} processes); logs and the MLflow store kept")
    else:
        state = local.read_state(args.dir)
        print("\n".join(local.describe_status(state, local.live_nodes(state))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsakd-ray", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of an internal error (or set {DEBUG_ENV}=1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also show Ray's own logs and worker output")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list architectures with stage and parameter counts")
    models.add_argument("--num-classes", type=int, default=100)
    models.set_defaults(func=cmd_models)
    for kind, text in (("teacher", "train a teacher with auxiliary heads"),
                       ("distill", "distill a student (hsakd / kd / ce / mutual)"),
                       ("probe", "linear probe on a trained network's frozen features")):
        p = sub.add_parser(kind, help=text)
        p.add_argument("config", help="YAML config (keys: docs/configuration.md)")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config key (repeatable)")
        p.add_argument("--local", action="store_true", help="run in this process, without Ray or MLflow")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (else tracking.uri, MLFLOW_TRACKING_URI)")
        p.add_argument("--address", help="Ray cluster to join: auto or host:port (else ray.address)")
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="Ray's logs too")
        p.add_argument("--resume", action="store_true",
                       help="continue the run of the same name from its latest checkpoint")
        p.set_defaults(func=cmd_job)
    tu = sub.add_parser("tune", help="search head placement, temperatures and loss weights with Ray Tune")
    tu.add_argument("space", help="search-space YAML (see search_spaces/)")
    tu.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a key of the space's base config, or with teacher.config.SECTION.KEY of the "
                         "teacher it trains (repeatable)")
    tu.add_argument("--tracking-uri", help="MLflow tracking URI (else tracking.uri, MLFLOW_TRACKING_URI)")
    tu.add_argument("--address", help="Ray cluster to join: auto or host:port (else ray.address)")
    tu.add_argument("--resume", metavar="EXPERIMENT_PATH", help="continue an interrupted experiment")
    tu.add_argument("--no-final", action="store_true",
                    help="stop at best_config.yaml: no final runs (as tune.final.run: false)")
    tu.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="Tune's table, Ray's logs")
    tu.set_defaults(func=cmd_tune)
    cl = sub.add_parser("cluster", help="a local multi-node Ray cluster with an MLflow server (tests, demos)")
    cl.add_argument("action", choices=("up", "down", "status"))
    cl.add_argument("--dir", default="./.hsakd-cluster",
                    help="where the cluster keeps its state, token, logs, MLflow store and shared storage")
    cl.add_argument("--nodes", type=int, default=2, help="up: Ray nodes including the head (default 2)")
    cl.add_argument("--cpus-per-node", type=int, default=1, help="up: CPUs each node offers (default 1)")
    cl.add_argument("--mlflow-port", type=int, help="up: port of the MLflow server on 127.0.0.1 (default: free)")
    cl.add_argument("--object-store-mb", type=int, default=300, help="up: object store size per node (MB)")
    cl.set_defaults(func=cmd_cluster)
    im = sub.add_parser("import", help="convert published weights (the reference HSAKD code's teachers and "
                        "backbones, torchvision ResNets) into a checkpoint folder")
    im.add_argument("source", help="weights file: a reference .pth/.pth.tar ({'net': ...} or {'state_dict': ...}) "
                    "or a torchvision state dict")
    im.add_argument("--arch", required=True,
                    help="architecture (hsakd-ray models), or the reference's name such as wrn_40_2_aux")
    im.add_argument("--out", required=True, help="checkpoint folder to write (refused if it exists, unless --force)")
    im.add_argument("--kind", choices=("auto", "teacher", "backbone", "torchvision"), default="auto",
                    help="teacher: backbone + auxiliary heads; backbone: the network alone; torchvision: an ImageNet "
                    "ResNet state dict; auto (default): told by the file's keys")
    im.add_argument("--num-classes", type=int, help="expected classes (default: read from the classifier)")
    im.add_argument("--force", action="store_true", help="replace --out if it exists")
    im.set_defaults(func=cmd_import)
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint directory on its dataset's test split")
    ev.add_argument("checkpoint")
    ev.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ev.set_defaults(func=cmd_evaluate)
    ex = sub.add_parser("export", help="write a checkpoint's network (heads stripped) as a standalone file")
    ex.add_argument("checkpoint", help="checkpoint directory (with meta.json)")
    ex.add_argument("--format", required=True, choices=("torchscript", "onnx"), help="onnx needs the onnx extra")
    ex.add_argument("--out", required=True, help="file to write")
    ex.set_defaults(func=cmd_export)
    for command in sub.choices.values():  # --debug also after the command name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (one line), 1 an internal error (one line; the traceback with --debug or
    HSAKD_DEBUG=1), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: the runs are closed KILLED, resumable)."""
    args = build_parser().parse_args(argv)
    configure_console(verbose=getattr(args, "verbose", False))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        args.func(args)
    except UserError as exc:
        print(f"hsakd-ray: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"hsakd-ray: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return _leave_ray(143 if terminated else 130)
    except BrokenPipeError:  # the reader of stdout went away (`hsakd-ray models | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(f"hsakd-ray: internal error: {type(exc).__name__}: {one_line(exc, 500)} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _terminate(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


def _leave_ray(code: int) -> int:
    """After an interrupt, stop a Ray this process started within seconds (its MLflow runs are closed already); if
    Ray does not stop in time (its processes were signalled with the driver's process group), leave at once with
    ``code`` rather than waiting on Ray's own timeouts."""
    if "ray" in sys.modules:
        from .train.ray_session import shutdown_within

        if not shutdown_within():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
