"""The packed walk's lean norm and MLP against the HF modules they stand in for: outputs and
every gradient (input, weights, biases), with and without an MLP bias, with an adapter on the
down projection, and falling back to the module where it is not the plain HF one."""

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

from r1lab.forward import lean_ops


def agree(lean, module, x):
    """Same output and the same gradients of a weighted sum, to float32 rounding."""
    torch.manual_seed(0)
    weights = torch.randn(module(x).shape)
    grads = []
    for fn in (lean, module):
        x_ = x.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        out = fn(x_)
        (out * weights).sum().backward()
        grads.append([out.detach(), x_.grad] + [p.grad for p in module.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_class", [LlamaRMSNorm, Qwen2RMSNorm])
def test_rms_norm_equals_hf(norm_class):
    torch.manual_seed(1)
    norm = norm_class(48, eps=1e-5)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    agree(lambda x: lean_ops.rms_norm(norm, x), norm, torch.randn(7, 5, 48) * 3)


@pytest.mark.parametrize("mlp_class,config_class,bias", [(LlamaMLP, LlamaConfig, False), (LlamaMLP, LlamaConfig, True),
                                                         (Qwen2MLP, Qwen2Config, False)])
def test_mlp_equals_hf(mlp_class, config_class, bias):
    torch.manual_seed(2)
    extra = {"mlp_bias": bias} if config_class is LlamaConfig else {}
    mlp = mlp_class(config_class(hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=4, **extra))
    agree(lambda x: lean_ops.mlp(mlp, x), mlp, torch.randn(9, 48))


def test_an_adapter_on_the_down_projection_still_trains():
    from peft import LoraConfig, get_peft_model

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = LlamaMLP(LlamaConfig(hidden_size=48, intermediate_size=80, num_attention_heads=4))

        def forward(self, x):
            return self.mlp(x)

    torch.manual_seed(3)
    model = get_peft_model(Block(), LoraConfig(r=4, target_modules=["down_proj"], init_lora_weights=False))
    assert type(model.base_model.model.mlp.down_proj) is not torch.nn.Linear
    agree(lambda x: lean_ops.mlp(model.base_model.model.mlp, x), model, torch.randn(9, 48))


def test_other_activations_and_classes_use_the_module():
    mlp = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=4, hidden_act="gelu"))
    x = torch.randn(3, 16)
    torch.testing.assert_close(lean_ops.mlp(mlp, x), mlp(x), rtol=0, atol=0)
    layer_norm = torch.nn.LayerNorm(16)
    torch.testing.assert_close(lean_ops.rms_norm(layer_norm, x), layer_norm(x), rtol=0, atol=0)
