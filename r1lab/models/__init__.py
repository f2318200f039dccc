"""Models: HF-format load/save, the tiny-model factory, the locally trained tokenizer."""
