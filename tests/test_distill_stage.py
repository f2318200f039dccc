"""The distill stage on tiny Llamas (a teacher and a narrower student sharing one tokenizer):
sequence mode is SFT, logit mode pulls the student to the teacher, the chunked rung equals
the full-logits reference, on-policy batches are sampled, resume is exact; and the config
check that teacher and student share a tokenizer."""

import json

import pytest
import torch
from safetensors.torch import load_file

from r1lab.config import ConfigError, load_config
from r1lab.data.corpus import CorpusMix, documents
from r1lab.losses.distill import forward_kl_loss, generalized_jsd_loss, reverse_kl_loss
from r1lab.models.tokenizer import train_tokenizer
from r1lab.pipeline import run
from r1lab import forward, rollout
from r1lab.models.io import load_model
from r1lab.stages import distill
from r1lab.stages.context import RunContext
from r1lab.stages.distill import DistillConfig, logit_batch
from r1lab.train.metrics import read_metrics
from r1lab.train.supervised import collate, encode

from conftest import assert_same_stage, broken_and_unbroken, tiny_llama
from test_forward import LogitShapedTensors
from test_sft_stage import ROWS

CPU = RunContext(config=None, run_dir=None, device=torch.device("cpu"))
QUIET = dict(log=lambda *_: None)


def peaked_teacher(tokenizer):
    """A teacher whose next-token distributions are far from uniform (random init, sharp head)."""
    model = tiny_llama(tokenizer, seed=1, hidden=64)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """(teacher dir, student dir): hidden 64 and hidden 32, one tokenizer."""
    root = tmp_path_factory.mktemp("distill-models")
    for name, model in (("teacher", peaked_teacher(tokenizer)), ("student", tiny_llama(tokenizer, seed=2, hidden=32))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "teacher", root / "student"


def rows_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def stage_yaml(**kw) -> str:
    return "  - {" + ", ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in kw.items()) + "}\n"


def write_config(tmp_path, *stages: str) -> str:
    path = tmp_path / "run.yaml"
    # device: cpu: the figures are compared with kl_to_teacher's, computed on the CPU in float32
    path.write_text("name: distill-test\nseed: 0\ndevice: cpu\ntask: {kind: arithmetic}\nstages:\n" + "".join(stages))
    return str(path)


def weights(run_dir, stage):
    return load_file(run_dir / "stages" / stage / "model" / "model.safetensors")


def test_sequence_mode_equals_an_sft_stage(tmp_path, models):
    """R1's distillation is SFT on the teacher's rows: same weights as the sft stage, bit for bit."""
    teacher, student = models
    common = dict(init=str(student), data=str(rows_file(tmp_path)), epochs=2, batch_size=2, val_fraction=0.25,
                  eval_every=1, optim={"lr": 3e-3, "warmup_steps": 1})
    config = load_config(write_config(tmp_path, stage_yaml(kind="sft", name="sft", **common),
                                      stage_yaml(kind="distill", name="distill", teacher=str(teacher), **common)))
    out = run(config, tmp_path / "run", **QUIET)
    a, b = weights(out, "0-sft"), weights(out, "1-distill")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], load_file(student / "model.safetensors")["lm_head.weight"])
    m_sft, m_dis = (read_metrics(out / "stages" / s / "metrics.jsonl") for s in ("0-sft", "1-distill"))
    assert [m["val_loss"] for m in m_sft] == [m["val_loss"] for m in m_dis]


def kl_to_teacher(student, teacher, tokenizer) -> float:
    """Mean KL(teacher || student) over the completion tokens of ROWS."""
    cfg = DistillConfig(kind="distill", name="d", init="s", teacher="t", data="d", method="logit")
    with torch.no_grad():
        return logit_batch(student, teacher, encode(ROWS, tokenizer, 512), tokenizer.pad_token_id,
                           len(tokenizer), cfg, CPU, train=False, micro=0)["loss"]


def test_logit_mode_lowers_the_kl_to_the_teacher(tmp_path, models, tokenizer):
    teacher_dir, student_dir = models
    config = load_config(write_config(tmp_path, stage_yaml(
        kind="distill", name="d", init=str(student_dir), teacher=str(teacher_dir), data=str(rows_file(tmp_path)),
        method="logit", epochs=8, batch_size=4, val_fraction=0, optim={"lr": 2e-2, "warmup_steps": 1, "min_lr_ratio": 1.0})))
    out = run(config, tmp_path / "run", **QUIET)
    teacher, student = (load_model(p, CPU.device)[0] for p in (teacher_dir, student_dir))
    before = kl_to_teacher(student, teacher, tokenizer)
    after = kl_to_teacher(load_model(out / "stages/0-d/model", CPU.device)[0], teacher, tokenizer)
    metrics = read_metrics(out / "stages/0-d/metrics.jsonl")
    assert before > 1.0 and after < 0.5 * before, (before, after)
    assert metrics[0]["forward_kl"] == pytest.approx(before, rel=1e-4)      # step 1 saw the initial student
    assert metrics[-1]["top1_agreement"] > metrics[0]["top1_agreement"]
    assert {m["on_policy"] for m in metrics} == {0.0}


REFERENCES = {"forward_kl": (forward_kl_loss, {}), "reverse_kl": (reverse_kl_loss, {}),
              "jsd": (generalized_jsd_loss, {"beta": 0.3})}


@pytest.mark.parametrize("loss", sorted(REFERENCES))
def test_chunked_micro_batched_rung_equals_the_full_logits_reference(tokenizer, monkeypatch, loss):
    """logit_batch (completion logits only, chunks of 3 positions, one row per micro-batch)
    gives the loss and gradients of the plain loss on full-sequence logits of the whole batch."""
    monkeypatch.setattr(forward, "CHUNK_SIZE", 3)
    teacher, student = peaked_teacher(tokenizer), tiny_llama(tokenizer, seed=2, hidden=32)
    pairs = encode(ROWS, tokenizer, 512)
    cfg = DistillConfig(kind="distill", name="d", init="s", teacher="t", data="d", method="logit", loss=loss,
                        temperature=1.5, beta=0.3)
    stats = logit_batch(student, teacher, pairs, tokenizer.pad_token_id, len(tokenizer), cfg, CPU, train=True, micro=1)
    grads = {k: p.grad.clone() for k, p in student.named_parameters()}
    student.zero_grad()

    batch = collate(pairs, tokenizer.pad_token_id)
    n = batch["completion_mask"].shape[1]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        t_logits = teacher(**inputs).logits[:, -n - 1:-1]                           # [N, L, V]
    ref_fn, kw = REFERENCES[loss]
    ref, ref_stats = ref_fn(student(**inputs).logits[:, -n - 1:-1], t_logits, batch["completion_mask"],
                            temperature=1.5, **kw)
    ref.backward()
    assert stats["loss"] == pytest.approx(ref.item(), abs=1e-5)
    assert stats["top1_agreement"] == pytest.approx(ref_stats["top1_agreement"])
    for k, p in student.named_parameters():
        assert torch.allclose(grads[k], p.grad, atol=1e-5), k


def test_no_full_float_copy_beyond_the_two_models_logits_and_the_gradient(tokenizer, monkeypatch):
    monkeypatch.setattr(forward, "CHUNK_SIZE", 4)
    teacher, student = peaked_teacher(tokenizer), tiny_llama(tokenizer, seed=2, hidden=32)
    rows = [{"prompt": "User: 1+2*3 mod 10\nAssistant:", "completion": " <think>" + "1+2=3 " * 8 + "</think>"}] * 3
    pairs = encode(rows, tokenizer, 512)
    n, length, vocab = len(pairs), len(pairs[0][1]), len(tokenizer)
    cfg = DistillConfig(kind="distill", name="d", init="s", teacher="t", data="d", method="logit", loss="jsd",
                        temperature=2.0)
    with LogitShapedTensors(vocab, n * length * vocab) as big:
        logit_batch(student, teacher, pairs, tokenizer.pad_token_id, vocab, cfg, CPU, train=True, micro=0)
    assert big.peak <= 3, big.shapes                       # teacher logits, student logits, their gradient
    assert n * (length + 1) * vocab in [torch.Size(s).numel() for s in big.shapes]   # completion logits only


def logit_stage(tmp_path, models, **kw):
    teacher, student = models
    settings = dict(kind="distill", name="d", init=str(student), teacher=str(teacher), data=str(rows_file(tmp_path)),
                    method="logit", loss="reverse_kl", batch_size=2, val_fraction=0, checkpoint_every=2,
                    sampling={"max_new_tokens": 6}, optim={"lr": 3e-3, "warmup_steps": 1}) | kw
    return load_config(write_config(tmp_path, stage_yaml(**settings)))


def test_on_policy_steps_train_on_the_students_samples(tmp_path, models, monkeypatch):
    calls = []

    def recording_sample(model, tokenizer, prompts, **kw):
        prompt_ids, rollout = distill_sample(model, tokenizer, prompts, **kw)
        calls.append((prompts, int(rollout.mask.sum()), model.training))
        return prompt_ids, rollout
    distill_sample = rollout.sample
    monkeypatch.setattr(rollout, "sample", recording_sample)
    out = run(logit_stage(tmp_path, models, on_policy=1.0, epochs=1), tmp_path / "run", **QUIET)
    metrics = read_metrics(out / "stages/0-d/metrics.jsonl")
    assert len(calls) == len(metrics) == 2
    assert all(len(prompts) == 2 and prompts[0].startswith(("User:", "Hello")) and not training
               for prompts, _, training in calls)
    assert [m["tokens"] for m in metrics] == [float(n) for _, n, _ in calls]   # the samples, not the rows
    assert all(m["on_policy"] == 1.0 and m["loss"] > 0 for m in metrics)


def test_resume_mid_stage_equals_an_unbroken_run(tmp_path, models, monkeypatch):
    config = logit_stage(tmp_path, models, on_policy=0.5, epochs=3, loss="jsd")   # 6 steps, checkpoints at 2, 4
    unbroken, broken = broken_and_unbroken(config, tmp_path, monkeypatch)          # the second resumes from step 2
    metrics = assert_same_stage(unbroken, broken, "0-d", 6)
    assert {m["on_policy"] for m in metrics} == {0.0, 1.0}                  # both kinds of batch ran


# --- the shared-tokenizer check at config load ---------------------------------------------

def pretrain(name, **kw):
    return stage_yaml(kind="pretrain", name=name, corpus={"documents": 300}, **kw)


def test_smaller_student_from_the_same_pretrain_settings_loads(tmp_path):
    load_config(write_config(
        tmp_path, pretrain("base"), stage_yaml(kind="grpo", name="rl", init="base"),
        pretrain("small", model={"hidden_size": 64, "num_layers": 2}, steps=10),
        stage_yaml(kind="distill", name="d", init="small", teacher="rl", data=str(rows_file(tmp_path)))))


def test_different_vocab_size_fails_at_load_naming_the_field(tmp_path):
    path = write_config(
        tmp_path, pretrain("base"), stage_yaml(kind="grpo", name="rl", init="base"),
        pretrain("small", model={"hidden_size": 64, "vocab_size": 384}),
        stage_yaml(kind="distill", name="d", init="small", teacher="rl", data=str(rows_file(tmp_path))))
    with pytest.raises(ConfigError, match=r"run.yaml:9: stages\[3\]\.teacher: .*pretrain stage 'base'.*"
                                          r"must share a tokenizer.*model\.vocab_size \(512 vs 384\)"):
        load_config(path)


def save_tokenizer(path, tokenizer):
    tokenizer.save_pretrained(path)
    return str(path)


def test_path_checkpoints_compare_their_vocabularies(tmp_path, models, tokenizer):
    teacher, student = models
    rows = str(rows_file(tmp_path))
    same = stage_yaml(kind="distill", name="d", init=str(student), teacher=str(teacher), data=rows)
    load_config(write_config(tmp_path, same))
    other = train_tokenizer([p + c for p, c in documents(1, 300, CorpusMix(), "r1-compact")], 400)
    different = stage_yaml(kind="distill", name="d", init=str(student), data=rows,
                           teacher=save_tokenizer(tmp_path / "other", other))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.teacher: .*must share a tokenizer, but their "
                                          r"vocabularies differ \(\d+ vs \d+ tokens; \d+ tokens differ"):
        load_config(write_config(tmp_path, different))
    (tmp_path / "empty").mkdir()
    untraceable = stage_yaml(kind="distill", name="d", init=str(student), data=rows, teacher=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.teacher: cannot check .* has no tokenizer files"):
        load_config(write_config(tmp_path, untraceable))


def test_pretrain_stage_against_a_path_trains_the_tokenizer_to_compare(tmp_path):
    from r1lab.data.tasks import ArithmeticTask
    from r1lab.stages.pretrain import PretrainConfig, corpus_and_tokenizer
    cfg = PretrainConfig(kind="pretrain", name="small", corpus={"documents": 300})
    built = corpus_and_tokenizer(cfg, ArithmeticTask(kind="arithmetic"), seed=0)[1]
    rows = str(rows_file(tmp_path))
    for seed, ok in ((0, True), (1, False)):            # the seed is one of the tokenizer's settings
        stages = (pretrain("small"), stage_yaml(kind="distill", name="d", init="small", data=rows,
                                                teacher=save_tokenizer(tmp_path / "t", built)))
        path = write_config(tmp_path, *stages)
        text = open(path).read().replace("seed: 0", f"seed: {seed}")
        open(path, "w").write(text)
        if ok:
            load_config(path)
        else:
            with pytest.raises(ConfigError, match=r"stages\[1\]\.teacher: .*vocabularies differ"):
                load_config(path)


def test_modes_need_what_they_use(tmp_path):
    rows = str(rows_file(tmp_path))
    with pytest.raises(ConfigError, match="method 'logit' needs a teacher"):
        load_config(write_config(tmp_path, stage_yaml(kind="distill", name="d", init=rows, data=rows, method="logit")))
    with pytest.raises(ConfigError, match="on_policy > 0 needs method 'logit'"):
        load_config(write_config(tmp_path, stage_yaml(kind="distill", name="d", init=rows, data=rows, on_policy=0.5)))
