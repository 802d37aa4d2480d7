"""The training step (engine/step.py) and the fast path set up around it (engine/loop.py): each step computes exactly
the loss written out from docs/method.md and updates as a plain SGD step does; the teacher's look-ahead thread and
the training thread each keep their own intra-op thread count for the epoch, restored after it even when a step
raises."""
from __future__ import annotations

import copy
import threading
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from hsakd_ray.config import apply_overrides, config_from_dict
from hsakd_ray.engine.loop import TeacherAhead, train_epoch
from hsakd_ray.engine.tasks import DistillTask, MutualTask, TeacherTask
from hsakd_ray.models import build_model

CLASSES, SIZE, BATCH = 5, 16, 4


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    teacher = build_model("resnet8", CLASSES, "all").eval()
    student = build_model("resnet8", CLASSES, "all")
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(BATCH, 3, SIZE, SIZE, generator=generator),
                torch.randint(0, CLASSES, (BATCH,), generator=generator)) for _ in range(3)]
    return teacher, student, batches


def kl_t(t_logits: torch.Tensor, s_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(s_logits / temperature, dim=1), F.log_softmax(t_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature**2


def written_out(kind: str, nets_: tuple, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each step's loss, written out from docs/method.md (the defaults: temperature 3, alpha = beta = 1)."""
    teacher, student, peer = nets_
    x_rot = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1).reshape(-1, *x.shape[1:])
    joint = (4 * y[:, None] + torch.arange(4)).reshape(-1)
    if kind == "teacher":
        logits, aux = student(x_rot)
        return {"loss": F.cross_entropy(logits[::4], y) + sum(F.cross_entropy(q, joint) for q in aux)}
    if kind == "hsakd":
        with torch.no_grad():
            t_logits, t_aux = teacher(x_rot)
        s_logits, s_aux = student(x_rot)
        heads = torch.stack([kl_t(qt, qs, 3.0) for qt, qs in zip(t_aux, s_aux, strict=True)]).sum()
        return {"loss": F.cross_entropy(s_logits[::4], y) + heads + kl_t(t_logits, s_logits, 3.0)}
    if kind == "kd":
        with torch.no_grad():
            t_logits = teacher(x)[0]
        s_logits = student(x)[0]
        return {"loss": F.cross_entropy(s_logits, y) + kl_t(t_logits, s_logits, 3.0)}
    if kind == "ce":
        return {"loss": F.cross_entropy(student(x)[0], y)}
    raise AssertionError(kind)


def build(kind: str, nets_: tuple):
    """The task of ``kind`` on copies of the fixture's networks (``kd`` and ``ce`` students without heads)."""
    teacher, student, _ = nets_
    if kind == "teacher":
        return TeacherTask(copy.deepcopy(student))
    cfg = config_from_dict(apply_overrides({}, ["train.precision=fp32", f"distill.method={kind}"]))
    if kind == "hsakd":
        return DistillTask(copy.deepcopy(student), copy.deepcopy(teacher), cfg)
    torch.manual_seed(3)
    return DistillTask(build_model("resnet8", CLASSES, []), copy.deepcopy(teacher) if kind == "kd" else None, cfg)


@pytest.mark.parametrize("kind", ["teacher", "hsakd", "kd", "ce"])
def test_each_step_is_the_written_out_loss_then_a_plain_sgd_update(nets, kind):
    """Same loss values and same weights after two steps (SGD with momentum) as the loss written out and a plain
    zero_grad / backward / step: the step adds nothing and leaves nothing out."""
    torch.manual_seed(2)
    task = build(kind, nets)
    net = task.network
    twin = copy.deepcopy(net).train()
    teacher = copy.deepcopy(getattr(task, "teacher", None))
    task.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    for x, y in nets[2][:2]:
        parts = task.step(x, y, opt)
        expected = written_out(kind, (teacher, twin, None), x, y)
        twin_opt.zero_grad()
        expected["loss"].backward()
        twin_opt.step()
        torch.testing.assert_close(parts["loss"], expected["loss"], rtol=1e-6, atol=1e-7)
    for (name, p), q in zip(net.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_mutual_step_updates_student_and_peer_from_each_other(nets):
    _, student, batches = nets
    cfg = config_from_dict({"distill": {"method": "mutual"}})
    task = MutualTask(copy.deepcopy(student), copy.deepcopy(student), cfg)
    before = [p.detach().clone() for m in task.trainable_modules() for p in m.parameters()]
    params = [p for m in task.trainable_modules() for p in m.parameters()]
    parts = task.step(*batches[0], torch.optim.SGD(params, lr=0.1))
    assert parts["loss"] == parts["student_loss"] + parts["peer_loss"]
    moved = [not torch.equal(a, p) for a, p in zip(before, params, strict=True)]
    half = len(list(task.model.parameters()))
    assert any(moved[:half]) and any(moved[half:])  # both networks learn in the one step


def hsakd_task(nets_, *overrides: str) -> DistillTask:
    teacher, student, _ = nets_
    cfg = config_from_dict(apply_overrides({}, ["train.precision=fp32", *overrides]))
    return DistillTask(copy.deepcopy(student), copy.deepcopy(teacher), cfg)


def test_look_ahead_and_training_threads_each_keep_their_own_count_for_the_epoch(nets):
    """Counts are per thread (OpenMP's setting of the calling thread): the look-ahead thread runs the teacher with
    its count while this thread trains with its own, every step of the epoch, and this thread's count is back after.
    """
    task = hsakd_task(nets)
    teacher_outputs, seen = task.teacher_outputs, []

    def recording_teacher(views):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return teacher_outputs(views)

    task.teacher_outputs = recording_teacher
    student_counts: list[int] = []
    hook = task.network.register_forward_pre_hook(lambda m, i: student_counts.append(torch.get_num_threads()))
    optimizer = torch.optim.SGD(task.network.parameters(), lr=0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        train_epoch(task, optimizer, nets[2], torch.device("cpu"), overlap_threads=(1, 2))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
        hook.remove()
    assert after == 3
    assert student_counts == [2, 2, 2]  # the last step too: set once for the epoch, not per batch
    assert seen[0] == (threading.main_thread().name, 2)  # the first batch: nothing to overlap with
    assert [(name.startswith("teacher-ahead"), n) for name, n in seen[1:]] == [(True, 1), (True, 1)]


def test_a_step_that_raises_leaves_the_count_restored_and_no_look_ahead_thread(nets):
    task = hsakd_task(nets)
    optimizer = torch.optim.SGD(task.network.parameters(), lr=0.0)
    calls = 0
    step = task.step

    def failing_step(*args):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        return step(*args)

    task.step = failing_step
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        train_epoch(task, optimizer, nets[2], torch.device("cpu"), overlap_threads=(1, 1))
    assert torch.get_num_threads() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("teacher-ahead")]


def test_look_ahead_refuses_rows_other_than_its_batch(nets):
    """A step that asks for other rows than the batch it was handed gets an error, not another batch's outputs."""
    task = hsakd_task(nets)
    batches = nets[2]
    with TeacherAhead(task.teacher_outputs, task.teacher_views, 1, nullcontext) as ahead:
        stream = ahead.batches(batches)
        x, y = next(stream)
        assert torch.equal(ahead(task.teacher_views(x, y))[0], task.teacher_forward(task.teacher_views(x, y))[0])
        x, y = next(stream)
        with pytest.raises(RuntimeError, match="other rows"):
            ahead(task.teacher_views(x + 1, y))


def test_look_ahead_epochs_share_a_stores_teacher_outputs_exactly(nets, tmp_path):
    """The shared store is one more teacher source under the look-ahead: a second trial reads every batch the first
    computed and published (on the look-ahead thread, in batch order), and trains exactly as the first did."""
    from hsakd_ray.engine.teacher_cache import StoreSettings, TeacherOutputs, TeacherStore

    runs = []
    for _ in range(2):
        task = hsakd_task(nets)
        provider = TeacherOutputs(TeacherStore(StoreSettings(root=str(tmp_path)), "stream"), torch.device("cpu"))
        task.share_teacher(provider)
        provider.start_epoch(1)
        optimizer = torch.optim.SGD(task.network.parameters(), lr=0.1, momentum=0.9)
        metrics = train_epoch(task, optimizer, nets[2], torch.device("cpu"), overlap_threads=(1, 1))
        runs.append((metrics, provider.epoch_metrics(), [p.detach().clone() for p in task.network.parameters()]))
    (first, first_cache, first_weights), (second, second_cache, second_weights) = runs
    assert (first_cache["teacher_cache/hits"], second_cache["teacher_cache/hits"]) == (0.0, 3.0)
    assert {k: v for k, v in second.items() if k.startswith("train/")} == \
        {k: v for k, v in first.items() if k.startswith("train/")}
    assert all(torch.equal(a, b) for a, b in zip(first_weights, second_weights, strict=True))
