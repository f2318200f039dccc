"""State kept on disk between uses (r1lab/train/offload.py) comes back bit for bit: the files'
bytes, AdamW's steps, its state_dict and load_state_dict, a frozen model's forward."""

import copy

import pytest
import torch

from r1lab.train.offload import OffloadedWeights, like, offload_optimizer_state, read_tensors, write_tensors


@pytest.mark.parametrize("direct", [True, False], ids=["O_DIRECT", "page cache"])
def test_tensors_come_back_as_written(tmp_path, monkeypatch, direct):
    """Past the page cache where the system allows it, and through it where not; tensors larger
    than the buffer a call moves (``CHUNK``, made small here) go in pieces."""
    from r1lab.train import offload
    if not direct:
        monkeypatch.delattr(offload.os, "O_DIRECT", raising=False)
    monkeypatch.setattr(offload, "CHUNK", 2 * offload.ALIGN)
    tensors = [torch.randn(3, 5), torch.arange(7), torch.randn(2, 3).to(torch.bfloat16), torch.randn(5000),
               torch.tensor([True, False]), torch.empty(0, 4), torch.randn(1), torch.randn(2048)]
    write_tensors(tmp_path / "t.bin", tensors)
    back = read_tensors(tmp_path / "t.bin", [like(t) for t in tensors])
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(tensors, back))
    # each from a multiple of 4,096 bytes: 1 page each, 5 for the 20,000 bytes, none for the empty one
    assert (tmp_path / "t.bin").stat().st_size == 4096 * (3 + 5 + 1 + 0 + 1 + 2)
    assert len({b.untyped_storage().data_ptr() for b in back if b.numel()}) == 1   # one block


def test_a_cut_file_is_an_error_naming_it(tmp_path):
    write_tensors(tmp_path / "t.bin", [torch.randn(100)])
    with open(tmp_path / "t.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(OSError, match="t.bin: the file holds 100 bytes, not the 4096 written to it"):
        read_tensors(tmp_path / "t.bin", [(torch.Size([100]), torch.float32, torch.device("cpu"))])


def model_and_adamw(offload_to=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    if offload_to is not None:
        offload_optimizer_state(opt, offload_to)
    return model, opt


def train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model(torch.randn(4, 6, generator=g)).square().mean().backward()
        opt.step()
        opt.zero_grad()


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_offloaded_adamw_steps_as_adamw_does(tmp_path):
    plain, plain_opt = model_and_adamw()
    model, opt = model_and_adamw(tmp_path / "opt.bin")
    train(plain, plain_opt, 3)
    train(model, opt, 3)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))
    # between steps the moments are on disk and their keys gone; the scalar step stays
    assert all(set(s) == {"step"} for s in opt.state.values())
    assert (tmp_path / "opt.bin").stat().st_size >= 2 * 4 * sum(p.numel() for p in model.parameters())
    # state_dict brings them back for the caller, and puts them away again
    saved, plain_saved = opt.state_dict(), plain_opt.state_dict()
    assert saved["state"].keys() == plain_saved["state"].keys()
    assert all(same_state(saved["state"][k], plain_saved["state"][k]) for k in saved["state"])
    assert all(set(s) == {"step"} for s in opt.state.values())
    train(plain, plain_opt, 1, seed=2)
    train(model, opt, 1, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))


def test_a_loaded_state_is_offloaded_and_resumes_the_same(tmp_path):
    plain, plain_opt = model_and_adamw()
    train(plain, plain_opt, 2)
    checkpoint = copy.deepcopy({"model": plain.state_dict(), "opt": plain_opt.state_dict()})
    train(plain, plain_opt, 2, seed=3)

    model, opt = model_and_adamw(tmp_path / "opt.bin")
    train(model, opt, 1, seed=9)                   # a state of its own, replaced by the checkpoint's
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    assert all(set(s) == {"step"} for s in opt.state.values())
    train(model, opt, 2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))


def test_offloaded_weights_give_the_same_forward_and_leave_memory_between(tmp_path):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(11, 4)
    head = torch.nn.Linear(4, 11, bias=False)
    head.weight = emb.weight                                                 # tied: written once
    model = torch.nn.Sequential(emb, torch.nn.Linear(4, 4), head).requires_grad_(False)
    ids = torch.tensor([[1, 5, 7]])
    expected = model(ids)
    ref = OffloadedWeights(model, tmp_path / "ref.bin")
    assert all(p.numel() == 0 for p in model.parameters())
    assert (tmp_path / "ref.bin").stat().st_size == 3 * 4096                  # [11, 4] once, [4, 4], [4]
    with ref.loaded():
        assert torch.equal(model(ids), expected)
        assert model[2].weight is model[0].weight
    assert all(p.numel() == 0 for p in model.parameters())
    with pytest.raises(ValueError, match="only a frozen model"):
        OffloadedWeights(torch.nn.Linear(2, 2), tmp_path / "x.bin")


def test_fsdp2_refuses_the_offload_before_anything_runs(tmp_path):
    from types import SimpleNamespace
    from r1lab.errors import R1labError
    from r1lab.settings import Optim
    from r1lab.train.distributed import Dist
    from r1lab.train.loop import TrainLoop
    cfg = SimpleNamespace(name="rl", kind="grpo", optim=Optim(offload=True), checkpoint_every=10, checkpoint_every_s=None)
    with pytest.raises(R1labError, match="stage 'rl': optim.offload does not run under FSDP2"):
        TrainLoop(torch.nn.Linear(2, 2), cfg, tmp_path, 3, dist=Dist(rank=0, world=2, strategy="fsdp2"))
