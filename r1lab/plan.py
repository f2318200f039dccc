"""``r1lab run --plan``: each stage's parameters and expected peak memory, before anything runs.

For every stage the plan finds the shape of each model it loads (a pretrain stage's ``model:``
block, a path's config.json or GGUF header, an earlier stage followed back through ``init``), its
prompt lengths (a sample of its task's prompts, tokenized as the stage will), and which rollout
engine and training forward will take the model; the stage module's ``memory(cfg, plan)`` turns
them into bytes per phase (r1lab/memory.py). The plan prints each phase's total, flags a stage
that exceeds the device's memory, and, where the run directory holds the stage from a run of the
same config, the peak RSS and seconds a step that run measured.

Estimates are worst cases in one respect: every completion is taken to run to
``max_new_tokens`` and every training row to its longest. Where the earlier run logged its
completions' mean length, the plan also gives the peak at that length.
"""

from __future__ import annotations

import json
import math
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
    if "x" in device:
        device, _, rest = device.partition("x")
        rest = "x" + rest
    size, _, count = rest.partition("x")
    try:
        gb = float(size) if size else (80.0 if device == "cuda" else _mem_total() / GB)
        ranks = int(count) if count else ranks
        if device not in ("cpu", "cuda") or not (0 < gb < math.inf) or ranks < 1:
            raise ValueError
    except ValueError:
        raise PlanError(f"--for {spec}: expected cpu or cuda, with :GB (more than 0) and xRANKS (1 or more), "
                        f"e.g. cuda:80x8") from None
    return Target(device, int(gb * GB), ranks, fsdp)


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
    of its parameters a stage trains, its longest prompt in tokens, the engine and forward that
    take the model, and the target device."""

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
            from r1lab.models.tiny import tiny_config
            # a pretrain stage's vocabulary is the tokenizer it trains, not its vocab_size
            config = tiny_config(what.model, len(self.corpus(what)[1])) if kind == "pretrain" else _hf_config(what)
            self._models[key] = _meta_model(config, what)
        return self._models[key]

    def shape(self, ref: str, scalar_head: bool = False) -> Shape:
        """The shape of the model ``ref`` (an earlier stage or a path) names; ``scalar_head``: as a
        reward or value model (the backbone under a one-output head)."""
        shape = self._model(ref)[0]
        return shape.scalar_head() if scalar_head else shape

    def trained(self, ref: str, lora) -> int:
        """Parameters a stage trains: every one, or with ``lora`` its adapters'."""
        shape, model = self._model(ref)
        return shape.params if lora is None else _lora_params(model, lora)

    def pretrain_shape(self, stage) -> Shape:
        """The shape of the model a pretrain stage builds."""
        index, self.index = self.index, self.config.stages.index(stage) + 1
        try:
            return self.shape(stage.name)
        finally:
            self.index = index

    def engine(self, ref: str, sampling) -> str:
        """The rollout engine that samples the model ``ref`` names: native, hf or vllm
        (r1lab/rollout/__init__.py picks the same way)."""
        from r1lab.rollout import native
        if sampling.backend == "vllm":
            self.notes.append("the vllm backend's own memory (its share of the GPU, vllm_gpu_memory_utilization) "
                              "is not in the plan: its rollout is planned as the native engine's")
            return "native"
        supported = native.supports(self._model(ref)[1])
        return "native" if supported and sampling.backend in ("auto", "native") else "hf"

    def packs(self, ref: str) -> bool:
        """Whether the training forward of the model ``ref`` names is the packed walk (one process,
        a dense Llama/Qwen2 family model with full attention) rather than HF's forward with its
        logits (r1lab/forward/__init__.py: DDP and FSDP2 models, mixtures of experts, others)."""
        from r1lab.forward.packed import supports
        from r1lab.models.moe import is_moe
        model = self._model(ref)[1]
        return self.target.ranks == 1 and supports(model) and not is_moe(model)

    # -- lengths -----------------------------------------------------------------------------
    def used(self, new_tokens: int) -> int:
        """Completion tokens a row is planned to hold: all ``new_tokens`` (the worst case), or, in
        the second pass over a stage an earlier run measured, the mean length it measured."""
        return new_tokens if self.lengths is None else max(1, min(new_tokens, round(self.lengths)))

    def prompt_len(self, cfg, ref: str, general: bool = False) -> int:
        """The longest of a sample of the stage's prompts, in tokens of ``ref``'s tokenizer."""
        task = getattr(cfg, "task", None) or self.config.task
        seed = self.config.seed
        if general:
            examples = task.general_examples(seed, PROMPT_SAMPLE, split="train")
        elif getattr(cfg, "draws_training", False):
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
        """The tokenizer of the model ``ref`` names, or None where it has none that loads."""
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
                except Exception:                # tokenizers raises plain Exception on a bad file
                    self.notes.append(f"{what}: no tokenizer that loads; its prompt lengths are guessed at "
                                      f"{CHARS_PER_TOKEN} characters a token")
                    self._tokenizers[key] = None
        return self._tokenizers[key]

    def row_len(self, cfg) -> int:
        """The longest training row of a supervised stage in tokens, at most its ``max_length``:
        measured on its data file where there is one already, else its prompt and the longest
        completion of the stage that writes the data (at ``max_new_tokens``), else ``max_length``."""
        from r1lab.pipeline import stage_dir
        earlier = {s.name: (i, s) for i, s in enumerate(self.config.stages[:self.index])}
        if cfg.data in earlier:
            i, producer = earlier[cfg.data]
            path = stage_dir(self.run_dir, i, producer.name) / "data.jsonl" if self.run_dir else None
        else:
            producer, path = None, Path(cfg.data).expanduser()
        if path is not None and path.is_file():
            if longest := self._longest_row(path, cfg.init):
                return min(cfg.max_length, longest)
            self.notes.append(f"{path}: no rows read for their length; stage {cfg.name!r} is planned at max_length")
        if producer is not None and hasattr(producer, "sampling") and hasattr(producer, "model"):
            general = producer.kind == "preference_pairs"
            return min(cfg.max_length, self.prompt_len(producer, producer.model, general=general)
                       + producer.sampling.max_new_tokens)
        return cfg.max_length

    def _longest_row(self, path: Path, ref: str, lines: int = 5000) -> int | None:
        """Tokens of the longest of the first ``lines`` rows of a JSONL data file: its prompt and
        its longest response (completion, chosen or rejected), or a chat row's messages; None
        when none reads."""
        rows = []
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for _, line in zip(range(lines), f):
                    if (text := _row_text(line)) is not None:
                        rows.append(text)
        except OSError:
            return None
        if not rows:
            return None
        tokenizer = self._tokenizer(ref)
        if tokenizer is None:
            return int(max(map(len, rows)) / CHARS_PER_TOKEN)
        return max(len(tokenizer(text)["input_ids"]) for text in sorted(rows, key=len)[-8:])

    def corpus(self, stage):
        """(documents, tokenizer) of a pretrain stage, as it builds them."""
        if stage.name not in self._corpora:
            from r1lab.stages import pretrain
            task = getattr(stage, "task", None) or self.config.task
            self._corpora[stage.name] = pretrain.corpus_and_tokenizer(stage, task, self.config.seed)
        return self._corpora[stage.name]

    # -- the parts every stage composes -------------------------------------------------------
    def _weights(self, shape: Shape, trained: int) -> dict[str, int]:
        """The model's float32 weights (an FSDP2 shard), and LoRA's adapters where it has them."""
        t = self.target
        parts = {"weights": shape.weights // t.ranks if t.fsdp and t.ranks > 1 else shape.weights}
        if trained < shape.params:
            parts["adapters"] = memory.FLOAT * trained
        return parts

    def rl(self, ref: str, trained: int, sampling, *, prompts: int, group: int, prompt_len: int,
           micro_batch: int, reference: bool, recompute: bool = False, extra: dict | None = None) -> dict:
        """Rollout and training phases of an RL step on this rank: ``prompts`` x ``group`` rows
        sampled from the model ``ref`` names, trained ``micro_batch`` rows at a time."""
        t, shape = self.target, self.shape(ref)
        rows, new = prompts * group, sampling.max_new_tokens
        used = self.used(new)
        mb = min(micro_batch or rows, rows)
        kept = {**self._weights(shape, trained), **({"reference": shape.weights} if reference else {}), **(extra or {})}
        roll = {**memory.moments(trained, t),
                **memory.rollout(shape, t, prompts, rows, prompt_len, new, used, engine=self.engine(ref, sampling))}
        if t.fsdp and t.ranks > 1:
            roll["gathered weights"] = shape.weights
        packed = self.packs(ref)
        tokens = memory.packed_tokens(mb, group, prompt_len, used) if packed else mb * (prompt_len + used)
        train = {**memory.gradients(trained, t),
                 "activations": memory.activations(shape, t, tokens, mb, prompt_len, recompute=recompute),
                 "logits": memory.head(shape, t, mb, used + 1, packed=packed, kept=not recompute)}
        return {"rollout": {**kept, **roll}, "training": {**kept, **train}}

    def supervised(self, ref: str | None, trained: int, *, rows: int, length: int, shape: Shape | None = None,
                   head: bool = True, packed: bool | None = None, extra: dict | None = None) -> dict:
        """A supervised step: ``rows`` sequences of ``length`` tokens a forward/backward of the
        model ``ref`` names (or of ``shape``, through HF's forward); ``head``: through the LM head
        (a reward model's scalar head holds next to nothing); ``packed``: whether its logits are
        the packed forward's chunks (default: whether the packed forward takes the model)."""
        t = self.target
        shape = shape or self.shape(ref)
        packed = (ref is not None and self.packs(ref)) if packed is None else packed
        return {"training": {**self._weights(shape, trained), **memory.gradients(trained, t), **(extra or {}),
                             "activations": memory.activations(shape, t, rows * length),
                             **({"logits": memory.head(shape, t, rows, length, packed=packed, kept=True)} if head else {})}}

    def sampling(self, ref: str, sampling, *, prompts: int, n: int, prompt_len: int) -> dict:
        """A stage that only samples: the weights and the rollout's parts."""
        shape, new = self.shape(ref), sampling.max_new_tokens
        return {"rollout": {"weights": shape.weights,
                            **memory.rollout(shape, self.target, prompts, prompts * n, prompt_len, new, self.used(new),
                                             engine=self.engine(ref, sampling))}}

    # -- the plan ----------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """One dict a stage: name, kind, params, phases (name -> parts -> bytes), their totals, the
        peak, over (the device's memory), what the run dir measured (:func:`measured`) for this
        config, and the peak at its measured lengths."""
        from r1lab.pipeline import fingerprint, stage_dir
        out, prints = [], {}
        for i, stage in enumerate(self.config.stages):
            self.index, self.lengths = i, None
            prints[stage.name] = fingerprint(self.config, stage, prints)
            phases = offloaded(stage, STAGES[stage.kind].memory(stage, self))
            found = measured(stage_dir(self.run_dir, i, stage.name), prints[stage.name]) if self.run_dir else {}
            at_lengths = None
            if found.get("completion_len") and hasattr(stage, "sampling"):
                self.lengths = found["completion_len"]
                at_lengths = self.floor + max(sum(p.values()) for p in offloaded(stage, STAGES[stage.kind].memory(stage, self)).values())
                self.lengths = None
            if stage.kind == "pretrain":
                params, trained = self.pretrain_shape(stage).params, None
            else:
                ref = stage.init if hasattr(stage, "init") else stage.model
                lora = getattr(stage, "lora", None)
                params, trained = self.shape(ref).params, (self.trained(ref, lora) if lora is not None else None)
            totals = {name: self.floor + sum(parts.values()) for name, parts in phases.items()}
            peak_phase = max(totals, key=totals.get)
            # ranks on one CPU machine share its memory (while rank 0 runs a stage alone, the others
            # wait holding their process's floor); each GPU has its own
            need = totals[peak_phase]
            if self.target.device == "cpu" and self.target.ranks > 1:
                need = need * self.target.ranks if stage.data_parallel else need + (self.target.ranks - 1) * self.floor
            out.append(dict(index=i, name=stage.name, kind=stage.kind, params=params, trained=trained, phases=phases,
                            totals=totals, peak_phase=peak_phase, peak=totals[peak_phase],
                            over=need > self.target.memory, measured=found, at_lengths=at_lengths))
        return out


def offloaded(stage, phases: dict) -> dict:
    """``phases`` without what the stage keeps on disk between its uses (r1lab/train/offload.py):
    the reference (``reference_offload``), back in memory for a forward of its own, and AdamW's
    moments (``optim.offload``), back for the optimizer step, a phase beside the weights and the
    gradients. A PPO critic's moments stay counted (the estimate errs high)."""
    moments_away = getattr(stage, "optim", None) is not None and stage.optim.offload
    reference_away = getattr(stage, "reference_offload", False)
    if not (moments_away or reference_away):
        return phases
    without = lambda key: {name: {k: v for k, v in parts.items() if k != key} for name, parts in phases.items()}
    kept = {k: v for k, v in phases["training"].items() if k in ("weights", "adapters")}
    if reference_away:
        reference = phases["training"]["reference"]
        phases = without("reference")
        phases["reference forward"] = {**kept, "reference": reference,
                                       **{k: v for k, v in phases["training"].items() if k == "AdamW moments"}}
    if moments_away:
        moments = max(parts.get("AdamW moments", 0) for parts in phases.values())
        phases = without("AdamW moments")
        phases["optimizer step"] = {**kept, "gradients": phases["training"].get("gradients", 0), "AdamW moments": moments}
    return phases


def _row_text(line: str) -> str | None:
    """The text of a data row that counts toward its length: prompt and longest response, or a
    chat row's messages; None when the line is not such a row."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("messages"), list):
        return "".join(str(m.get("content", "")) for m in row["messages"] if isinstance(m, dict))
    responses = [row[k] for k in ("completion", "chosen", "rejected") if isinstance(row.get(k), str)]
    return str(row.get("prompt", "")) + max(responses, key=len) if responses else None


def _hf_config(path: Path):
    """The transformers config of a model folder or GGUF file, read without its weights."""
    from transformers import AutoConfig
    try:
        if path.suffix == ".gguf":
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:                 # transformers and the GGUF reader raise many kinds
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise PlanError(f"{path}: no model config to plan from: {first}") from None


def _meta_model(config, where) -> tuple[Shape, object]:
    """(its Shape, the model built on the meta device: every parameter's shape, no memory)."""
    import torch
    from transformers import AutoModelForCausalLM
    from r1lab.rollout.native import _config_window
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        c = model.config
        heads = c.num_attention_heads
        per_token = getattr(c, "moe_intermediate_size", None) or c.intermediate_size
        width = per_token * (getattr(c, "num_experts_per_tok", None) or 1)
        head = model.get_output_embeddings()
        untied = 0 if head is None or head.weight is model.get_input_embeddings().weight else head.weight.numel()
        window = _config_window(c)
        shape = Shape(params=sum(p.numel() for p in model.parameters()), layers=c.num_hidden_layers,
                      hidden=c.hidden_size, intermediate=width, heads=heads,
                      kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                      head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, vocab=c.vocab_size,
                      untied_head=untied, window=window if window and window > 0 else None)
    except (AttributeError, ValueError, TypeError, KeyError) as e:
        raise PlanError(f"{where}: cannot plan a {type(config).__name__} model (not a decoder r1lab plans: "
                        f"{str(e).splitlines()[0][:120]})") from None
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


def measured(folder: Path, fingerprint: str | None = None) -> dict:
    """What an earlier run recorded in a stage's folder, if it ran the same stage (its
    FINGERPRINT is ``fingerprint``): its peak RSS (MB) and seconds (DONE), the median seconds
    between its logged steps (metrics.jsonl), and the largest mean completion length in tokens
    that a step logged, or that an eval measured."""
    from r1lab.pipeline import recorded_fingerprint
    if fingerprint is not None and recorded_fingerprint(folder) != fingerprint:
        return {}
    found = {}
    logged = _lines(folder / "metrics.jsonl")
    lengths = [r["completion_len/mean"] for r in logged or _lines(folder / "eval.json", True)
               if isinstance(r.get("completion_len/mean"), (int, float))]
    if lengths:
        found["completion_len"] = max(lengths)
    done = (_lines(folder / "DONE", whole=True) or [{}])[0]
    if done.get("peak_rss_mb"):
        found.update(peak_mb=done["peak_rss_mb"], seconds=done.get("seconds"))
    times = [r["time_s"] for r in logged if isinstance(r.get("time_s"), (int, float))]
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
    """The plan as text: a table a stage, then each phase's parts.

    ``rollout`` and ``training``: each phase's worst case, where every completion runs to
    max_new_tokens; ``at lengths``: the peak at the mean completion length an earlier run of the
    stage measured; ``measured``: that run's peak RSS (DONE; on a CPU target only, as it is the
    host's), and the ratio to it of the estimate at its lengths where there is one, else of the
    worst case."""
    where = f"{target.device}, {target.memory / GB:.1f} GB" + (f", {target.ranks} ranks" if target.ranks > 1 else "")
    lines = [f"plan for {where}{' (per rank)' if target.ranks > 1 else ''}; the process itself holds "
             f"{floor / GB:.2f} GB before a stage loads anything; worst case: every completion runs to max_new_tokens",
             "", "| # | stage | kind | params | rollout | training | at lengths | measured | est/meas | s/step | fits |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    gb = lambda b: f"{b / GB:.2f} GB" if b else "-"
    for r in rows:
        m, at = r["measured"], r["at_lengths"]
        meas = m.get("peak_mb") and target.device == "cpu" and m["peak_mb"] * 1e6
        ratio = f"{(at or r['peak']) / meas:.2f}" if meas else "-"
        step = f"{m['step_s']:.1f}" if m.get("step_s") else "-"
        params = f"{r['params'] / 1e6:.1f}M" + (f" ({r['trained'] / 1e6:.1f}M trained)" if r["trained"] else "")
        lines.append(f"| {r['index']} | {r['name']} | {r['kind']} | {params} | "
                     f"{gb(r['totals'].get('rollout'))} | {gb(r['totals'].get('training'))} | {gb(at)} | {gb(meas)} | "
                     f"{ratio} | {step} | {'OVER' if r['over'] else 'yes'} |")
    lines.append("")
    for r in rows:
        for phase, parts in r["phases"].items():
            shown = [f"{k} {v / GB:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= 0.005 * GB]
            lines.append(f"[{r['index']}] {r['name']}, {phase}: " + (", ".join(shown) + " GB" if shown else "under 5 MB"))
    over = [r["name"] for r in rows if r["over"]]
    if over:
        lines.append(f"\nOVER: {', '.join(over)} may need more than the device's {target.memory / GB:.1f} GB"
                     + (" (the ranks share it)" if target.device == "cpu" and target.ranks > 1 else ""))
    return "\n".join(lines + [f"note: {n}" for n in dict.fromkeys(notes)])
