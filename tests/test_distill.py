"""The rotation task, losses and metrics against hand-written formulas on fixed tensors."""
import math

import pytest
import torch

from hsakd_ray.distill import (
    ce_loss,
    eval_sums,
    finalize_metrics,
    head_class_logits,
    kd_loss,
    kl_div_t,
    mutual_loss,
    rotate_batch,
    student_loss,
    teacher_loss,
)


def test_rotation_rows_are_image_major_with_joint_labels():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    y = torch.tensor([5, 7])
    x_rot, joint = rotate_batch(x, y)
    assert x_rot.shape == (8, 1, 3, 3)
    for i in range(2):
        for k in range(4):
            assert torch.equal(x_rot[4 * i + k], torch.rot90(x[i], k, dims=(-2, -1)))
            assert joint[4 * i + k] == 4 * y[i] + k
    assert torch.equal(x_rot[::4], x)


def test_rotation_by_90_moves_top_left_to_bottom_left():
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, 0] = 1.0
    x_rot, _ = rotate_batch(x, torch.tensor([0]))
    assert x_rot[1, 0, 1, 0] == 1.0  # counter-clockwise quarter turn


def test_rotation_refuses_non_square_images():
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(1, 3, 4, 5), torch.tensor([0]))


def manual_kl(t, s, temp):
    total = 0.0
    for r in range(t.shape[0]):
        pt = torch.softmax(t[r] / temp, 0)
        ps = torch.softmax(s[r] / temp, 0)
        total += sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(t.shape[1]))
    return float(temp**2 * total / t.shape[0])


def manual_ce(logits, y):
    return sum(-torch.log_softmax(logits[r], 0)[y[r]] for r in range(len(y))) / len(y)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    n, b = 3, 2
    y = torch.tensor([0, 2])
    joint = (4 * y.unsqueeze(1) + torch.arange(4)).reshape(-1)
    return dict(
        y=y, joint=joint,
        s=torch.randn(4 * b, n, generator=g), t=torch.randn(4 * b, n, generator=g),
        s_aux=[torch.randn(4 * b, 4 * n, generator=g) for _ in range(2)],
        t_aux=[torch.randn(4 * b, 4 * n, generator=g) for _ in range(2)],
    )


def test_kl_t_matches_formula(batch):
    expected = manual_kl(batch["t"], batch["s"], 3.0)
    assert kl_div_t(batch["t"], batch["s"], 3.0).item() == pytest.approx(expected, rel=1e-5)


def test_teacher_loss_is_ce_on_unrotated_plus_head_ce(batch):
    out = teacher_loss(batch["t"], batch["t_aux"], batch["y"], batch["joint"])
    expect = manual_ce(batch["t"][::4], batch["y"]) + sum(manual_ce(q, batch["joint"]) for q in batch["t_aux"])
    assert out["loss"].item() == pytest.approx(float(expect), rel=1e-5)
    assert set(out) == {"loss", "ce", "aux_ce_0", "aux_ce_1"}


def test_student_loss_matches_section_4(batch):
    b = batch
    out = student_loss(b["s"], b["s_aux"], b["t"], b["t_aux"], b["y"], temperature=3.0, alpha=0.5, beta=2.0,
                       head_temperature=2.0, head_weights=[1.0, 0.25])
    heads = manual_kl(b["t_aux"][0], b["s_aux"][0], 2.0) + 0.25 * manual_kl(b["t_aux"][1], b["s_aux"][1], 2.0)
    final = manual_kl(b["t"], b["s"], 3.0)  # over all 4B rows
    expect = manual_ce(b["s"][::4], b["y"]) + 0.5 * heads + 2.0 * final
    assert out["loss"].item() == pytest.approx(float(expect), rel=1e-5)
    assert out["kl_final"].item() == pytest.approx(final, rel=1e-5)
    assert set(out) == {"loss", "ce", "kl_head_0", "kl_head_1", "kl_final"}


def test_student_loss_published_defaults_and_no_heads(batch):
    b = batch
    out = student_loss(b["s"], [], b["t"], [], b["y"])
    expect = manual_ce(b["s"][::4], b["y"]) + manual_kl(b["t"], b["s"], 3.0)
    assert out["loss"].item() == pytest.approx(float(expect), rel=1e-5)


def test_student_loss_refuses_unpaired_heads(batch):
    with pytest.raises(ValueError, match="pair"):
        student_loss(batch["s"], batch["s_aux"], batch["t"], batch["t_aux"][:1], batch["y"])
    with pytest.raises(ValueError, match="head_weights"):
        student_loss(batch["s"], batch["s_aux"], batch["t"], batch["t_aux"], batch["y"], head_weights=[1.0])


def test_student_head_gradients_reach_student_only(batch):
    """The teacher's logits and heads are targets: gradients reach the student's logits and every student head, and
    none reaches the teacher's outputs, even when they are handed over attached to a graph."""
    s = batch["s"].clone().requires_grad_(True)
    s_aux = [q.clone().requires_grad_(True) for q in batch["s_aux"]]
    t = batch["t"].clone().requires_grad_(True)
    t_aux = [q.clone().requires_grad_(True) for q in batch["t_aux"]]
    student_loss(s, s_aux, t * 1.0, [q * 1.0 for q in t_aux], batch["y"])["loss"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in s_aux)
    assert t.grad is None and all(q.grad is None for q in t_aux)
    kd_loss(s[::4], t[::4] * 1.0, batch["y"])["loss"].backward()
    assert t.grad is None


def test_kd_and_ce_losses(batch):
    b = batch
    s, t, y = b["s"][::4], b["t"][::4], b["y"]
    out = kd_loss(s, t, y, temperature=4.0, beta=0.5)
    assert out["loss"].item() == pytest.approx(float(manual_ce(s, y) + 0.5 * manual_kl(t, s, 4.0)), rel=1e-5)
    assert ce_loss(s, y)["loss"].item() == pytest.approx(float(manual_ce(s, y)), rel=1e-5)


def test_mutual_loss_matches_section_6(batch):
    b = batch
    own = b["s"].clone().requires_grad_(True)
    peer = b["t"].clone().requires_grad_(True)
    out = mutual_loss(own, b["s_aux"], peer, b["t_aux"], b["y"], b["joint"], temperature=3.0, alpha=1.0, beta=1.0)
    expect = (manual_ce(b["s"][::4], b["y"]) + sum(manual_ce(q, b["joint"]) for q in b["s_aux"])
              + sum(manual_kl(tq, sq, 3.0) for sq, tq in zip(b["s_aux"], b["t_aux"])) + manual_kl(b["t"], b["s"], 3.0))
    assert out["loss"].item() == pytest.approx(float(expect), rel=1e-5)
    out["loss"].backward()
    assert peer.grad is None  # the peer's outputs are targets only


def test_mutual_loss_bug_peer_aux_heads_get_no_gradient_from_own_loss(batch):
    """Each network of the pair learns from the peer's heads, never the other way round within one loss: the
    own loss reaches the own logits and heads, while the peer's heads (and logits) keep ``.grad`` None."""
    own = batch["s"].clone().requires_grad_(True)
    own_aux = [q.clone().requires_grad_(True) for q in batch["s_aux"]]
    peer = batch["t"].clone().requires_grad_(True)
    peer_aux = [q.clone().requires_grad_(True) for q in batch["t_aux"]]
    out = mutual_loss(own, own_aux, peer, peer_aux, batch["y"], batch["joint"], temperature=3.0, alpha=1.0,
                      beta=1.0)
    out["loss"].backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in own_aux)
    assert [q.grad for q in peer_aux] == [None, None]
    assert peer.grad is None


def test_metrics_count_topk_and_head_accuracies():
    """Ten classes, so top-5 can miss: row 0 right at top-1, row 1 right only at rank 3, row 2 wrong at rank 7."""
    y = torch.tensor([1, 0, 4])
    logits = torch.zeros(3, 10)
    logits[0] = torch.linspace(0, 1, 10).flip(0)
    logits[0, 1] = 2.0                                                  # rank 1
    logits[1] = torch.arange(10.0)
    logits[1, 0] = 6.5                                                  # 9, 8, 7, 6.5: rank 4
    logits[2] = torch.arange(10.0)                                      # label 4 is at rank 6
    joint = (4 * y.unsqueeze(1) + torch.arange(4)).reshape(-1)
    q = torch.zeros(12, 40)
    q[torch.arange(12), joint] = 5.0  # perfect SSL
    q[11] = 0.0
    q[11, 8] = 5.0  # last row predicts class 2 rotation 0: wrong joint label and wrong class
    m = finalize_metrics(eval_sums(logits, y, [q], joint))
    assert m["top1"] == pytest.approx(100 / 3) and m["top5"] == pytest.approx(200 / 3)
    assert m["head_0_ssl_acc"] == pytest.approx(100 * 11 / 12)
    assert m["head_0_class_acc"] == pytest.approx(100 * 11 / 12)
    assert head_class_logits(torch.arange(8.0).reshape(1, 8)).tolist() == [[6.0, 22.0]]


def test_losses_are_fp32_under_bf16_autocast_and_equal_the_fp32_loss_of_the_upcast_logits(batch):
    """Soft targets, KL and CE in fp32 even when the networks ran under CPU bf16 autocast (bf16 logits in)."""
    b = batch
    low = {k: (v.bfloat16() if k not in ("y", "joint") else v) for k, v in b.items() if not k.endswith("aux")}
    low_aux = {k: [q.bfloat16() for q in b[k]] for k in ("s_aux", "t_aux")}
    up = {k: v.float() for k, v in low.items()}
    up_aux = {k: [q.float() for q in v] for k, v in low_aux.items()}
    y, joint = b["y"], b["joint"]
    calls = {
        "student": lambda s, t, sa, ta: student_loss(s, sa, t, ta, y, head_temperature=2.0),
        "kd": lambda s, t, sa, ta: kd_loss(s[::4], t[::4], y),
        "ce": lambda s, t, sa, ta: ce_loss(s[::4], y),
        "teacher": lambda s, t, sa, ta: teacher_loss(t, ta, y, joint),
        "mutual": lambda s, t, sa, ta: mutual_loss(s, sa, t, ta, y, joint),
    }
    for name, call in calls.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = call(low["s"], low["t"], low_aux["s_aux"], low_aux["t_aux"])
        exact = call(up["s"], up["t"], up_aux["s_aux"], up_aux["t_aux"])
        for part, value in mixed.items():
            assert value.dtype == torch.float32, (name, part)
            assert torch.equal(value, exact[part]), (name, part)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kl = kl_div_t(low["t"], low["s"], 3.0)
    assert kl.dtype == torch.float32 and torch.equal(kl, kl_div_t(up["t"], up["s"], 3.0))
