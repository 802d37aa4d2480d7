"""Images per second of the HSAKD distillation step: a plain fp32 reference step vs the project's own step.

The reference is written here exactly as docs/method.md, "Losses" states the step: rotations stacked on the host, then
moved to the device; teacher forward (eval mode) under ``no_grad``; student forward and backward; the loss
``CE(p_S[k=0], y) + alpha * sum_l KL_T(q_l^T || q_l^S) + beta * KL_T(p^T || p^S)``; a plain SGD step; NCHW, fp32,
no host sync per step. The project's step is ``DistillTask`` + ``train_epoch`` with the optimizer and switches from
``engine.runner.setup_step``, i.e. the code a training job runs. Both get the same models, weights and batches;
they run interleaved (ABBA order) after a warm-up, and each repetition's ratio is taken side by side, so load from
other processes hits both. The last line is ``ratio: R`` (project over reference, median over repetitions).

    python benchmarks/step_throughput.py                      # WRN-40-2 -> WRN-16-2, 32 px, batch 64
    python benchmarks/step_throughput.py --no-overlap         # one fast-path feature off at a time
    python benchmarks/step_throughput.py --quick              # smoke test
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hsakd_ray.config import Config
from hsakd_ray.engine.loop import train_epoch
from hsakd_ray.engine.runner import resolve_device, setup_step
from hsakd_ray.engine.tasks import DistillTask
from hsakd_ray.models import HSAKDNet, build_model


def kl_t(teacher_logits: torch.Tensor, student_logits: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over rows."""
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * t * t


class ReferenceStep:
    """docs/method.md, "Losses", in plain fp32 PyTorch, with the optimizer settings of the published recipe."""

    def __init__(self, teacher: HSAKDNet, student: HSAKDNet, cfg: Config, device: torch.device) -> None:
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.student = student.to(device).train()
        self.device, self.distill = device, cfg.distill
        o = cfg.optim
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=o.lr, momentum=o.momentum,
                                         nesterov=o.nesterov, weight_decay=o.weight_decay)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one host batch (B, C, H, W): rotate on the host, then teacher and student on the device."""
        x_rot = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1).reshape(-1, *x.shape[1:])
        x_rot, y = x_rot.to(self.device), y.to(self.device)
        with torch.no_grad():
            t_logits, t_aux = self.teacher(x_rot)
        s_logits, s_aux = self.student(x_rot)
        c = self.distill
        head_t = c.temperature if c.head_temperature is None else c.head_temperature
        heads = sum(kl_t(q_t, q_s, head_t) for q_t, q_s in zip(t_aux, s_aux, strict=True))
        return F.cross_entropy(s_logits[::4], y) + c.alpha * heads + c.beta * kl_t(t_logits, s_logits, c.temperature)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss(x, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--teacher", default="wrn_40_2")
    p.add_argument("--student", default="wrn_16_2")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=64, help="images per step before rotation (4x rows after)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=3, help="steps per timed repetition")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of each step, interleaved")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each before timing")
    p.add_argument("--threads", type=int, default=None, help="intra-op CPU threads for both (default: torch's)")
    p.add_argument("--quick", action="store_true", help="smoke test: batch 8, 1 step, 1 repetition, 1 warm-up")
    f = p.add_argument_group("fast-path features of the project's step (all at their defaults unless given)")
    f.add_argument("--no-channels-last", action="store_true", help="train.channels_last=false")
    f.add_argument("--no-inference-mode", action="store_true", help="train.inference_mode=false (no_grad)")
    f.add_argument("--no-overlap", action="store_true", help="train.teacher_overlap=false")
    f.add_argument("--cpu-chunk-rows", type=int, default=None,
                   help="train.cpu_chunk_rows: teacher forward rows per chunk on CPU (0: whole batch)")
    f.add_argument("--no-fused-sgd", action="store_true", help="train.fused_optimizer=false")
    f.add_argument("--no-device-data", action="store_true",
                   help="hand the project host batches, as a DataLoader would (no effect on CPU)")
    f.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="train.precision (auto: bf16 on CUDA and on CPUs with native bf16, else fp32)")
    f.add_argument("--compile", action="store_true",
                   help="train.compile=true (warm-up includes compiling; default: eager, as compile=auto is for a "
                        "few timed steps)")
    f.add_argument("--compile-mode", default="auto",
                   help="train.compile_mode (with --compile; auto: reduce-overhead on CUDA, default on CPU)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.repeats, args.warmup = 8, 1, 1, 1
    return args


def project_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    t = cfg.train
    t.channels_last, t.inference_mode = not args.no_channels_last, not args.no_inference_mode
    t.teacher_overlap, t.fused_optimizer = not args.no_overlap, not args.no_fused_sgd
    t.device_data, t.precision, t.compile = not args.no_device_data, args.precision, bool(args.compile)
    t.compile_mode = args.compile_mode
    if args.cpu_chunk_rows is not None:
        t.cpu_chunk_rows = args.cpu_chunk_rows
    return cfg


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = project_config(args)
    torch.manual_seed(0)
    teacher = build_model(args.teacher, args.classes, "all")
    student = build_model(args.student, args.classes, "all")

    reference = ReferenceStep(copy.deepcopy(teacher), copy.deepcopy(student), cfg, device)
    task = DistillTask(copy.deepcopy(student), copy.deepcopy(teacher), cfg)
    setup = setup_step(task, cfg, device, args.image_size)

    generator = torch.Generator().manual_seed(1)
    shape = (args.batch, 3, args.image_size, args.image_size)
    host = [(torch.randn(shape, generator=generator),
             torch.randint(0, args.classes, (args.batch,), generator=generator)) for _ in range(args.steps)]
    resident = host if args.no_device_data else [(x.to(device), y.to(device)) for x, y in host]

    def run_reference() -> None:
        for x, y in host:
            reference(x, y)
        sync(device)

    def run_project() -> None:
        train_epoch(task, setup.optimizer, resident, device, setup.channels_last, setup.autocast, setup.overlap)
        sync(device)  # train_epoch already ends with one host sync; this one is for the timer only

    print(f"device: {device.type} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_model()}), "
          f"{torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"pair: {args.teacher} -> {args.student}, {args.classes} classes, {args.image_size}x{args.image_size}, "
          f"batch {args.batch} ({4 * args.batch} rows), {args.steps} steps x {args.repeats} repetitions, "
          f"{args.warmup} warm-up")
    print(f"project: channels_last={setup.channels_last} inference_mode={cfg.train.inference_mode} "
          f"overlap={setup.overlap} chunk_rows={setup.chunk_rows} fused_sgd={cfg.train.fused_optimizer} "
          f"precision={setup.precision.value} ({setup.precision.reason}) "
          f"compile={setup.compile.value} device_data={not args.no_device_data}")
    print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)

    warm: list[float] = []
    for _ in range(args.warmup):
        run_reference()
        start = time.perf_counter()
        run_project()
        warm.append(time.perf_counter() - start)
    # with --compile, the first warm-up run is where torch.compile (and CUDA-graph capture) happens: its excess over
    # the last warm-up run is the compile time that train.compile=auto's step threshold has to repay
    # (engine/compiling.py)
    print(f"project warm-up runs: {', '.join(f'{w:.2f}' for w in warm)} s; first minus last "
          f"(compile_s with --compile): {warm[0] - warm[-1]:.2f}", flush=True)
    runs = {"reference": run_reference, "project": run_project}
    rates: dict[str, list[float]] = {"reference": [], "project": []}
    cpu: dict[str, float] = {"reference": 0.0, "project": 0.0}
    images = args.batch * args.steps
    print("rep  reference img/s  project img/s  ratio")
    for rep in range(args.repeats):
        for name in (("reference", "project") if rep % 2 == 0 else ("project", "reference")):
            wall, cpu0 = time.perf_counter(), time.process_time()
            runs[name]()
            rates[name].append(images / (time.perf_counter() - wall))
            cpu[name] += time.process_time() - cpu0
        print(f"{rep + 1:3d}  {rates['reference'][-1]:15.2f}  {rates['project'][-1]:13.2f}  "
              f"{rates['project'][-1] / rates['reference'][-1]:5.2f}", flush=True)
    ratio = statistics.median(p / r for p, r in zip(rates["project"], rates["reference"], strict=True))
    for name in ("reference", "project"):
        print(f"{name}: {statistics.median(rates[name]):.2f} img/s (median), "
              f"{cpu[name] / (images * args.repeats) * 1000:.0f} ms CPU time per image")
    print(f"load average at end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"ratio: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
