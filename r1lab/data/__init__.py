"""Data: synthetic tasks, JSONL loading with validation, prompt templates, corpora."""
