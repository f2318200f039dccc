"""``r1lab run --plan``: each stage's parameters and expected peak memory, before anything runs.

For every stage the plan finds the shape of each model it loads (a pretrain stage's ``model:``
block, a path's config.json or GGUF header, an earlier stage followed back through ``init``) and
its prompt lengths (a sample of its task's prompts, tokenized as the stage will); the stage
module's ``memory(cfg, plan)`` turns them into bytes per phase (r1lab/memory.py). The plan
prints the peak phase of each stage, flags one that exceeds the device's memory, and, where the
run directory holds a finished or started stage, its measured peak RSS and seconds a step.

Estimates are worst cases in one respect: every completion is taken to run to
``max_new_tokens`` and every training row to its longest, as nothing stops early.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from r1lab import memory
from r1lab.errors import R1labError
from r1lab.memory import Shape, Target
from r1lab.stages import STAGES

GB = 1e9
PROMPT_SAMPLE = 32               # prompts tokenized to find a stage's longest
CHARS_PER_TOKEN = 3.5            # where no tokenizer is at hand (a folder of config.json alone)


class PlanError(R1labError, ValueError):
    """A ``--for`` target that cannot be read, or a model whose shape cannot be found."""


def parse_target(spec: str | None, config) -> Target:
    """``cpu``, ``cuda``, with ``:GB`` and ``xRANKS`` (``cuda:80x8``); None: this machine."""
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp = config.data_parallel == "fsdp2"
    if spec is None:
        import torch
        if config.device != "cpu" and torch.cuda.is_available():
            return Target("cuda", torch.cuda.get_device_properties(0).total_memory, ranks, fsdp)
        return Target("cpu", _mem_total(), ranks, fsdp)
    device, _, rest = spec.partition(":")
    size, _, count = (rest or "").partition("x")
    if "x" in device:
        device, _, count = device.partition("x")
    try:
        if device not in ("cpu", "cuda"):
            raise ValueError
        gb = float(size) if size else (80.0 if device == "cuda" else _mem_total() / GB)
        return Target(device, int(gb * GB), int(count) if count else ranks, fsdp)
    except ValueError:
        raise PlanError(f"--for {spec}: expected cpu or cuda, with :GB and xRANKS, e.g. cuda:80x8") from None


def process_floor(target: Target) -> int:
    """Bytes a stage's process holds before the stage loads anything: on the CPU this process's
    resident memory once it has imported what a stage imports (torch, transformers, the
    training forward: ~0.4 GB); on CUDA the context and the caching allocator's slack, ~2 GB
    (docs/gpu-memory.md)."""
    if target.device == "cuda":
        return int(2 * GB)
    import r1lab.forward, r1lab.pipeline, r1lab.rewards, r1lab.rollout, r1lab.train.loop  # noqa: F401, E401
    from r1lab.pipeline import rss_mb
    return int((rss_mb() or 0) * 1e6)


def _mem_total() -> int:
    try:
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return 0


class Plan:
    """What ``memory(cfg, plan)`` asks of a config: the shape of a model a stage reads, how many
    of its parameters a stage trains, its longest prompt in tokens, and the target device."""

    def __init__(self, config, target: Target, floor: int, run_dir: Path | None = None):
        self.config, self.target, self.floor, self.run_dir = config, target, floor, run_dir
        self.index = 0
        self.lengths: float | None = None      # mean completion tokens an earlier run measured
        self._models: dict[str, tuple[Shape, object]] = {}
        self._tokenizers: dict[str, object] = {}
        self._corpora: dict[str, tuple] = {}
        self.notes: list[str] = []

    # -- models ------------------------------------------------------------------------------
    def _origin(self, ref: str):
        """(kind, thing): ("pretrain", its config) or ("path", a Path) that ``ref`` leads back to
        (r1lab/lineage.py's trace, as the tokenizer check follows it)."""
        from r1lab.lineage import trace
        origin = trace(self.config, self.index, ref)
        if isinstance(origin, str):
            raise PlanError(f"cannot plan {ref!r}: it leads to {origin}")
        return ("pretrain", origin.stage) if origin.stage is not None else ("path", origin.path)

    def _keyed(self, ref: str):
        """(kind, thing, a key for both) of :meth:`_origin`."""
        kind, what = self._origin(ref)
        return kind, what, f"{kind}:{what.name if kind == 'pretrain' else what}"

    def _model(self, ref: str):
        """(Shape, meta model) of the model ``ref`` names."""
        kind, what, key = self._keyed(ref)
        if key not in self._models:
            if kind == "pretrain":               # its vocabulary: the tokenizer it trains, not vocab_size
                config = _pretrain_config(what.model, len(self.corpus(what)[1]))
            else:
                config = _hf_config(what)
            self._models[key] = _meta_model(config)
        return self._models[key]

    def shape(self, ref: str) -> Shape:
        """The shape of the model ``ref`` (an earlier stage or a path) names."""
        return self._model(ref)[0]

    def trained(self, ref: str, lora) -> int:
        """Parameters a stage trains: every one, or with ``lora`` its adapters'."""
        shape, model = self._model(ref)
        return shape.params if lora is None else _lora_params(model, lora)

    # -- lengths -----------------------------------------------------------------------------
    def used(self, new_tokens: int) -> int:
        """Completion tokens a row is planned to hold: all ``new_tokens`` (the worst case), or, in
        the second pass over a stage an earlier run measured, the mean length it measured."""
        return new_tokens if self.lengths is None else max(1, min(new_tokens, round(self.lengths)))

    # -- prompts -----------------------------------------------------------------------------
    def prompt_len(self, cfg, ref: str, general: bool = False) -> int:
        """The longest of a sample of the stage's prompts, in tokens of ``ref``'s tokenizer."""
        task = getattr(cfg, "task", None) or self.config.task
        seed = self.config.seed
        if general:
            examples = task.general_examples(seed, PROMPT_SAMPLE, split="train")
        elif getattr(cfg, "draws_training", False) or cfg.kind in ("rejection_sample",):
            examples = task.sample_train(seed, 0, PROMPT_SAMPLE)
        else:
            examples = task.test_examples(seed)[:PROMPT_SAMPLE]
        tokenizer = self._tokenizer(ref)
        if tokenizer is None:
            texts = [task.prompt(e, None) for e in examples] if task.template != "chat" else \
                [e["question"] for e in examples]
            return int(max(map(len, texts)) / CHARS_PER_TOKEN) + (64 if task.template == "chat" else 0)
        return max(len(tokenizer(task.prompt(e, tokenizer))["input_ids"]) for e in examples)

    def _tokenizer(self, ref: str):
        """The tokenizer of the model ``ref`` names, or None where it has none on disk."""
        kind, what, key = self._keyed(ref)
        if key not in self._tokenizers:
            if kind == "pretrain":
                self._tokenizers[key] = self.corpus(what)[1]
            else:
                from r1lab.models.io import TOKENIZER_FILES, load_tokenizer
                try:
                    if what.is_dir() and not any((what / f).is_file() for f in TOKENIZER_FILES):
                        raise OSError("no tokenizer files")    # transformers would make an empty one
                    self._tokenizers[key] = load_tokenizer(what)
                except (OSError, ValueError, KeyError, TypeError):
                    self.notes.append(f"{what}: no tokenizer to read; its prompt lengths are guessed at "
                                      f"{CHARS_PER_TOKEN} characters a token")
                    self._tokenizers[key] = None
        return self._tokenizers[key]

    def row_len(self, cfg) -> int:
        """The longest training row of a supervised stage in tokens, at most its ``max_length``:
        measured on its data file where there is one already, else its prompt and the longest
        completion of the stage that writes the data (at ``max_new_tokens``), else ``max_length``."""
        earlier = {s.name: (i, s) for i, s in enumerate(self.config.stages[:self.index])}
        if cfg.data in earlier:
            i, producer = earlier[cfg.data]
            path = self.run_dir / "stages" / f"{i}-{producer.name}" / "data.jsonl" if self.run_dir else None
        else:
            producer, path = None, Path(cfg.data).expanduser()
        if path is not None and path.is_file() and (longest := self._longest_row(path, cfg.init)):
            return min(cfg.max_length, longest)
        if producer is not None and hasattr(producer, "sampling") and hasattr(producer, "model"):
            general = producer.kind == "preference_pairs"
            return min(cfg.max_length, self.prompt_len(producer, producer.model, general=general)
                       + producer.sampling.max_new_tokens)
        return cfg.max_length

    def _longest_row(self, path: Path, ref: str, lines: int = 5000) -> int | None:
        """Tokens of the longest of the first ``lines`` rows of a JSONL data file: its prompt and
        its longest response (completion, chosen or rejected), or None when none reads."""
        rows = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for _, line in zip(range(lines), f):
                try:
                    row = json.loads(line)
                    responses = [row[k] for k in ("completion", "chosen", "rejected") if isinstance(row.get(k), str)]
                    rows.append(str(row.get("prompt", "")) + max(responses, key=len, default=""))
                except (ValueError, AttributeError):
                    continue
        tokenizer = self._tokenizer(ref) if rows else None
        if tokenizer is None:
            return int(max(map(len, rows)) / CHARS_PER_TOKEN) if rows else None
        return max(len(tokenizer(text)["input_ids"]) for text in sorted(rows, key=len)[-8:])

    def corpus(self, stage):
        """(documents, tokenizer) of a pretrain stage, as it builds them."""
        if stage.name not in self._corpora:
            from r1lab.stages import pretrain
            task = getattr(stage, "task", None) or self.config.task
            self._corpora[stage.name] = pretrain.corpus_and_tokenizer(stage, task, self.config.seed)
        return self._corpora[stage.name]

    # -- the parts every stage composes -------------------------------------------------------
    def rl(self, shape: Shape, trained: int, *, prompts: int, group: int, prompt_len: int, new_tokens: int,
           micro_batch: int, reference: bool, recompute: bool = False, extra: dict | None = None) -> dict:
        """Rollout and training phases of an RL step on this rank: ``prompts`` x ``group`` rows."""
        t = self.target
        rows = prompts * group
        mb = min(micro_batch or rows, rows)
        weights = shape.weights // t.ranks if t.fsdp and t.ranks > 1 else shape.weights
        kept = {"weights": weights, **({"reference": shape.weights} if reference else {}), **(extra or {})}
        roll = {**memory.moments(trained, t),
                **memory.rollout(shape, t, prompts, rows, prompt_len, new_tokens, self.used(new_tokens))}
        if t.fsdp and t.ranks > 1:
            roll["gathered weights"] = shape.weights
        tokens = memory.packed_tokens(mb, group, prompt_len, self.used(new_tokens))
        train = {**memory.gradients(trained, t),
                 "activations": memory.activations(shape, t, tokens, mb, prompt_len, recompute=recompute),
                 "logits": memory.head(shape, t, mb, prompt_len + self.used(new_tokens))}
        return {"rollout": {**kept, **roll}, "training": {**kept, **train}}

    def supervised(self, shape: Shape, trained: int, *, rows: int, length: int, packed: bool = True,
                   head: bool = True, extra: dict | None = None) -> dict:
        """A supervised step: ``rows`` sequences of ``length`` tokens a forward/backward (``head``:
        through the LM head; a reward model's scalar head holds next to nothing)."""
        t = self.target
        return {"training": {"weights": shape.weights, **memory.gradients(trained, t),
                             **(extra or {}),
                             "activations": memory.activations(shape, t, rows * length, packed=packed),
                             **({"logits": memory.head(shape, t, rows, length, packed=packed)} if head else {})}}

    def sampling(self, shape: Shape, *, prompts: int, n: int, prompt_len: int, new_tokens: int) -> dict:
        """A stage that only samples: the weights and the rollout's parts."""
        return {"rollout": {"weights": shape.weights,
                            **memory.rollout(shape, self.target, prompts, prompts * n, prompt_len, new_tokens,
                                             self.used(new_tokens))}}

    # -- the plan ----------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """One dict a stage: name, kind, params, phases (name -> parts -> bytes), their totals, the
        peak, over (the device's memory), what the run dir measured (:func:`measured`), and the
        peak at its measured lengths."""
        run_dir = self.run_dir
        out = []
        for i, stage in enumerate(self.config.stages):
            self.index = i
            self.lengths = None
            phases = STAGES[stage.kind].memory(stage, self)
            found = measured(run_dir, i, stage.name) if run_dir else {}
            if found.get("completion_len") and hasattr(stage, "sampling"):
                self.lengths = found["completion_len"]
                at_lengths = STAGES[stage.kind].memory(stage, self)
                self.lengths = None
            else:
                at_lengths = None
            ref = next((getattr(stage, f) for f in ("init", "model") if isinstance(getattr(stage, f, None), str)), None)
            params = self.shape(ref).params if ref else self.pretrain_shape(stage).params
            lora = getattr(stage, "lora", None)
            trained = self.trained(ref, lora) if ref and lora is not None and "training" in phases else None
            totals = {name: self.floor + sum(parts.values()) for name, parts in phases.items()}
            peak_phase = max(totals, key=totals.get)
            out.append(dict(index=i, name=stage.name, kind=stage.kind, params=params, trained=trained, phases=phases,
                            totals=totals, peak_phase=peak_phase, peak=totals[peak_phase],
                            over=totals[peak_phase] > self.target.memory > 0, measured=found,
                            at_lengths=None if at_lengths is None else
                            self.floor + max(sum(parts.values()) for parts in at_lengths.values())))
        return out

    def pretrain_shape(self, stage) -> Shape:
        """The shape of the model a pretrain stage builds."""
        self.index = self.config.stages.index(stage) + 1
        try:
            return self.shape(stage.name)
        finally:
            self.index -= 1


def _pretrain_config(m, vocab: int):
    """The transformers config of the model a pretrain stage builds (r1lab/models/tiny.py)."""
    from transformers import LlamaConfig, MixtralConfig
    shape = dict(vocab_size=vocab, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                 num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                 intermediate_size=m.intermediate_size, tie_word_embeddings=m.tie_embeddings)
    if m.moe is None:
        return LlamaConfig(**shape)
    return MixtralConfig(**shape, num_local_experts=m.moe.experts, num_experts_per_tok=m.moe.experts_per_token)


def _hf_config(path: Path):
    """The transformers config of a model folder or GGUF file, read without its weights."""
    from transformers import AutoConfig
    from r1lab.models.io import CheckpointError
    try:
        if path.suffix == ".gguf":
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: no model config to plan from: {str(e).splitlines()[0][:160]}") from None


def _meta_model(config) -> tuple[Shape, object]:
    """(its Shape, the model built on the meta device: every parameter's shape, no memory)."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    c = model.config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    width = c.intermediate_size * getattr(c, "num_experts_per_tok", 1)
    shape = Shape(params=sum(p.numel() for p in model.parameters()), layers=c.num_hidden_layers,
                  hidden=c.hidden_size, intermediate=width, heads=heads,
                  kv_heads=getattr(c, "num_key_value_heads", None) or heads, head_dim=head_dim, vocab=c.vocab_size)
    return shape, model


def _lora_params(model, lora) -> int:
    """Parameters of the adapters ``lora`` puts on ``model``'s linear layers (not the LM head)."""
    import torch
    targets = lora.target_modules
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        if targets != "all-linear" and name.rsplit(".", 1)[-1] not in targets:
            continue
        total += lora.r * (module.in_features + module.out_features) + (module.out_features if lora.use_dora else 0)
    return total


def measured(run_dir: Path, index: int, name: str) -> dict:
    """What an earlier run of the stage recorded: its peak RSS (MB) and seconds (DONE), the
    median seconds between its logged steps (metrics.jsonl), and its mean completion length in
    tokens (the largest a step logged, an eval's, or the mean of the rows it wrote)."""
    folder = run_dir / "stages" / f"{index}-{name}"
    found = {}
    lengths = []
    for line in _lines(folder / "metrics.jsonl") or _lines(folder / "eval.json", whole=True):
        if isinstance(line.get("completion_len/mean"), (int, float)):
            lengths.append(line["completion_len/mean"])
    if not lengths:
        lengths = [sum(ns) / len(ns)] if (ns := [r["n_tokens"] for r in _lines(folder / "data.jsonl")
                                                 if isinstance(r.get("n_tokens"), int)]) else []
    if lengths:
        found["completion_len"] = max(lengths)
    done = (_lines(folder / "DONE", whole=True) or [{}])[0]
    if done.get("peak_rss_mb"):
        found.update(peak_mb=done["peak_rss_mb"], seconds=done.get("seconds"))
    times = [r["time_s"] for r in _lines(folder / "metrics.jsonl") if isinstance(r.get("time_s"), (int, float))]
    if gaps := [b - a for a, b in zip(times, times[1:]) if b > a]:
        found["step_s"] = statistics.median(gaps)
    return found


def _lines(path: Path, whole: bool = False) -> list[dict]:
    """The JSON objects of a JSONL file (``whole``: of a JSON file); [] when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
        rows = [json.loads(text)] if whole else [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict)]


def render(rows: list[dict], target: Target, floor: int, notes: list[str]) -> str:
    """The plan as text: a table a stage, then the largest parts of each stage's peak phase.

    ``rollout`` and ``training``: each phase's worst case, where every completion runs to
    max_new_tokens; ``at lengths``: the peak at the mean completion length an earlier run of the
    stage measured; ``measured``: that run's peak RSS (DONE), and the ratio to it of the
    estimate at its lengths where there is one, else of the worst case."""
    where = f"{target.device}, {target.memory / GB:.1f} GB" + (f", {target.ranks} ranks" if target.ranks > 1 else "")
    lines = [f"plan for {where}{' (per rank)' if target.ranks > 1 else ''}; the process itself holds "
             f"{floor / GB:.2f} GB before a stage loads anything; worst case: every completion runs to max_new_tokens",
             "", "| # | stage | kind | params | rollout | training | at lengths | measured | est/meas | s/step | fits |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    gb = lambda b: f"{b / GB:.2f} GB" if b else "-"
    for r in rows:
        m, at = r["measured"], r["at_lengths"]
        meas = m.get("peak_mb") and m["peak_mb"] * 1e6
        ratio = f"{(at or r['peak']) / meas:.2f}" if meas else "-"
        step = f"{m['step_s']:.1f}" if m.get("step_s") else "-"
        params = f"{r['params'] / 1e6:.1f}M" + (f" ({r['trained'] / 1e6:.1f}M trained)" if r["trained"] else "")
        lines.append(f"| {r['index']} | {r['name']} | {r['kind']} | {params} | "
                     f"{gb(r['totals'].get('rollout'))} | {gb(r['totals'].get('training'))} | {gb(at)} | {gb(meas)} | "
                     f"{ratio} | {step} | {'OVER' if r['over'] else 'yes'} |")
    lines.append("")
    for r in rows:
        for phase, parts in r["phases"].items():
            top = sorted(parts.items(), key=lambda kv: -kv[1])
            lines.append(f"[{r['index']}] {r['name']}, {phase}: " + ", ".join(
                f"{k} {v / GB:.2f}" for k, v in top if v >= 0.005 * GB) + " GB")
    over = [r["name"] for r in rows if r["over"]]
    if over:
        lines.append(f"\nOVER: {', '.join(over)} may need more than the device's {target.memory / GB:.1f} GB")
    return "\n".join(lines + [f"note: {n}" for n in dict.fromkeys(notes)])
