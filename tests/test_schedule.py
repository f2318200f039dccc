"""LR schedule values and gradient clipping."""

import math

import pytest
import torch

from r1lab.train.optim import build_optimizer, build_scheduler, optimizer_step, warmup_cosine


def test_schedule_at_warmup_start_end_and_cosine_end():
    kw = dict(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)          # 1/10 at the first step
    assert warmup_cosine(4, **kw) == pytest.approx(0.5)          # linear
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)          # warmup ends at the peak
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)         # cosine starts at the peak
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)        # half way: 0.1 + 0.9 * 0.5
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)        # the floor
    assert warmup_cosine(500, **kw) == pytest.approx(0.1)        # and it stays there
    assert warmup_cosine(35, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_scheduler_drives_the_optimizer_lr():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    sched = build_scheduler(opt, warmup_steps=4, total_steps=8, min_ratio=0.0)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.5e-3) and lrs[3] == pytest.approx(1e-2)
    assert lrs[8] == pytest.approx(0.0, abs=1e-12)
    # weight decay on matrices only
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["params"][0].dim() == 2


def test_optimizer_step_clips_to_the_max_norm():
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)          # the update is the gradient itself
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])          # global norm 5
    norm = optimizer_step(model, opt, sched, grad_clip=1.0)
    assert norm == pytest.approx(5.0)
    # clipped to norm 1: [0.6, 0.8, 0], and SGD moved the weight by minus that
    assert model.weight.detach()[0].tolist() == pytest.approx([-0.6, -0.8, 0.0], abs=1e-6)
    assert model.weight.grad is None


def test_optimizer_step_leaves_small_gradients_alone():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model.weight.grad = torch.tensor([[0.3, 0.4]])               # norm 0.5 < 1
    optimizer_step(model, opt, sched, grad_clip=1.0)
    assert model.weight.detach()[0].tolist() == pytest.approx([-0.3, -0.4], abs=1e-6)
