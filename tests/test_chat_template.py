"""template: chat: every path that prompts a model renders [system, user] through the tokenizer's
chat template, and a tokenizer without one is refused at config load and at use."""

import json

import pytest
import torch

from r1lab.data.tasks import ArithmeticTask, NoChatTemplate
from r1lab.data.templates import R1_SYSTEM

SYSTEM = "Answer in <answer> tags."


def chat_task(**kw):
    return ArithmeticTask(kind="arithmetic", template="chat", **kw)


def expected(tokenizer, question, system=R1_SYSTEM):
    head = [{"role": "system", "content": system}] if system else []
    return tokenizer.apply_chat_template(head + [{"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)


def test_the_prompt_is_the_chat_template_over_system_and_user(tokenizer):
    q = {"question": "7+8 mod 10"}
    assert chat_task().prompt(q, tokenizer) == expected(tokenizer, "7+8 mod 10")
    assert chat_task().prompt(q, tokenizer).startswith("System: A conversation between User and Assistant.")
    assert chat_task(system_prompt=SYSTEM).prompt(q, tokenizer) == f"System: {SYSTEM}\nUser: 7+8 mod 10\nAssistant:"
    assert chat_task(system_prompt="").prompt(q, tokenizer) == "User: 7+8 mod 10\nAssistant:"


def test_a_tokenizer_without_a_chat_template_is_refused(tokenizer):
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token=tokenizer.eos_token)
    plain.chat_template = None
    with pytest.raises(NoChatTemplate, match="no chat template"):
        chat_task().prompt({"question": "1"}, plain)


class Capture:
    """Stands in for r1lab.rollout.sample: records the prompts, returns fixed completions."""

    def __init__(self):
        self.prompts = []

    def __call__(self, model, tokenizer, prompts, *, n, sampling, seed, **kw):
        from r1lab.rollout.types import Rollout
        self.prompts += prompts
        rows = len(prompts) * n
        ids = torch.full((rows, 2), tokenizer.eos_token_id)
        mask = torch.ones(rows, 2, dtype=torch.bool)
        return [tokenizer(p)["input_ids"] for p in prompts], Rollout(ids, mask, torch.zeros(rows, 2), ["eos"] * rows)


def test_eval_rollouts_rejection_sampling_and_pairs_all_prompt_through_the_chat_template(tokenizer, monkeypatch):
    from r1lab.settings import Sampling
    from r1lab.stages import eval as eval_stage, preference_pairs, rejection_sample
    from r1lab.train import rl_step
    task = chat_task(system_prompt=SYSTEM, n_test=3)
    capture = Capture()
    monkeypatch.setattr("r1lab.rollout.sample", capture)
    monkeypatch.setattr(rl_step, "sample", capture)
    examples = task.sample_train(0, 0, 2)
    want = [expected(tokenizer, e["question"], SYSTEM) for e in examples]

    rl_step.scored_rollout(torch.nn.Linear(1, 1), tokenizer, task, examples, 2, Sampling(), 0, [],
                           rl_step.monitor_scorers(task, {}))
    assert capture.prompts == want

    capture.prompts.clear()
    cfg = eval_stage.EvalConfig(kind="eval", name="e", model="m", samples=1, general=False)
    eval_stage.sample_groups(torch.nn.Linear(1, 1), tokenizer, task, examples, 0, cfg, with_greedy=False)
    assert capture.prompts == want

    capture.prompts.clear()
    rcfg = rejection_sample.RejectionSampleConfig(kind="rejection_sample", name="r", model="m", prompts=2,
                                                  samples=1, batch_size=2)
    stats = rejection_sample.fresh_stats(rcfg)
    rejection_sample.chunk_rows(torch.nn.Linear(1, 1), tokenizer, task, 0, 0, rcfg, stats)
    drawn = task.sample_train(0, "rejection-0", 2)
    assert capture.prompts == [expected(tokenizer, e["question"], SYSTEM) for e in drawn]
    general = rejection_sample.general_rows(task, 0, rcfg.model_copy(update={"non_reasoning": 2}), tokenizer)
    assert [r["prompt"] for r in general] == [expected(tokenizer, r["question"], SYSTEM) for r in general]

    capture.prompts.clear()
    pcfg = preference_pairs.PreferencePairsConfig(kind="preference_pairs", name="p", model="m", prompts=2,
                                                  samples=2, batch_size=2)
    preference_pairs.chunk_pairs(torch.nn.Linear(1, 1), tokenizer, task, 0, 0, pcfg,
                                 {"prompts": 0, "pairs": 0, "no_gap": 0, "judge_sum": 0.0})
    assert capture.prompts and all(p.startswith(f"System: {SYSTEM}\nUser: ") and p.endswith("Assistant:")
                                   for p in capture.prompts)


def test_sft_rows_in_chat_form_render_as_the_rollouts_prompt(tokenizer):
    """A rejection-sampled row (prompt already rendered) and a messages row give the same ids."""
    from r1lab.train.supervised import encode
    task = chat_task(system_prompt=SYSTEM)
    q = {"question": "3+4 mod 10"}
    as_text = {"prompt": task.prompt(q, tokenizer), "completion": " <think></think> <answer>7</answer>"}
    as_messages = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q["question"]},
                                {"role": "assistant", "content": as_text["completion"]}]}
    assert encode([as_text], tokenizer, 256) == encode([as_messages], tokenizer, 256)


def test_config_load_refuses_chat_for_a_model_without_a_chat_template(tmp_path, qwen_dir):
    import shutil
    from r1lab.config import ConfigError, load_config
    plain = tmp_path / "plain"
    shutil.copytree(qwen_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in ("chat_template.jinja", "chat_template.json"):
        (plain / extra).unlink(missing_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(f"name: t\ntask: {{kind: arithmetic, template: chat}}\n"
                    f"stages:\n  - {{kind: eval, name: e, model: {plain}}}\n")
    with pytest.raises(ConfigError, match=r"run.yaml:4: stages\[0\].model: template chat, but the tokenizer"):
        load_config(str(path))
    path.write_text(path.read_text().replace(str(plain), str(qwen_dir)))
    assert load_config(str(path)).task.template == "chat"


def test_conversational_preference_pairs_render_through_the_chat_template(tokenizer, tmp_path):
    """TRL's conversational pairs: the prompt's messages rendered by the stage's tokenizer, for
    DPO and for the reward model alike; a reply given as messages is its assistant's content."""
    from r1lab.data.jsonl import read_pairs
    from r1lab.errors import DataError
    from r1lab.stages import dpo, reward_model
    from r1lab.train.supervised import encode
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "2+2 mod 10"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": prompt, "chosen": [{"role": "assistant", "content": " <answer>4</answer>"}],
                                "rejected": " <answer>5</answer>"}) + "\n")
    row = read_pairs(path)[0]
    assert row["chosen"] == " <answer>4</answer>" and row["prompt_messages"] == prompt
    rendered = f"System: {SYSTEM}\nUser: 2+2 mod 10\nAssistant:"
    want = encode([{"prompt": rendered, "completion": " <answer>4</answer>"}], tokenizer, 64)[0]
    assert dpo.encode_pairs([row], tokenizer, 64)[0][:2] == want
    cfg = reward_model.RewardModelConfig(kind="reward_model", name="rm", init="m", data=str(path))
    chosen_ids = reward_model.encode_pairs([row], tokenizer, cfg)[0][0]
    assert tokenizer.decode(chosen_ids).startswith(rendered)
    path.write_text(json.dumps({"prompt": prompt, "chosen": [{"role": "user", "content": "x"}], "rejected": "y"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:1: field 'chosen': must end with an assistant message"):
        read_pairs(path)
