"""Where a stage's model comes from, so that config load can tell whether two models share a
tokenizer (a distilled student "may be smaller but shares the tokenizer", DeepSeek-R1 sec. 2.4).

A model reference is traced back to its origin: an earlier stage that writes a model is
followed through its ``init`` field until a ``pretrain`` stage, whose tokenizer is a function
of :func:`r1lab.stages.pretrain.tokenizer_settings` (seed, task wording, corpus, vocab_size);
a path is its tokenizer files on disk. Two pretrain origins compare by those settings, with no
work; otherwise both vocabularies are loaded (a pretrain one trained as the stage would, about
a second) and compared token by token, special tokens included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r1lab.locate import MissingReference, resolve
from r1lab.stages import pretrain


@dataclass(frozen=True)
class Origin:
    """A model's tokenizer origin: a pretrain stage (its tokenizer settings) or a path."""
    what: str                                   # for messages: "pretrain stage 'base'", "path '/m'"
    stage: pretrain.PretrainConfig | None = None
    task: object = None
    seed: int = 0
    path: Path | None = None

    @property
    def settings(self) -> dict:
        return pretrain.tokenizer_settings(self.stage, self.task, self.seed)


def trace(config, index: int, ref: str) -> Origin | str:
    """The origin of the model ``ref`` names as stage ``index`` sees it, or why it cannot be traced."""
    earlier = {s.name: s for s in config.stages[:index]}
    while ref in earlier:
        stage = earlier.pop(ref)
        if isinstance(stage, pretrain.PretrainConfig):
            return Origin(f"pretrain stage {stage.name!r}", stage=stage,
                          task=getattr(stage, "task", None) or config.task, seed=config.seed)
        if stage.reads.get("init") != "model":
            return f"stage {stage.name!r} ({stage.kind}) does not start from a model its config names (no 'init')"
        ref = stage.init
    try:
        path = resolve(ref)
    except MissingReference as e:
        return str(e)
    return Origin(f"path {str(path)!r}", path=path)


def vocabulary(origin: Origin) -> tuple[dict[str, int], dict[str, str]] | str:
    """(token -> id, special tokens) of the origin's tokenizer, or why it cannot be read."""
    if origin.stage is not None:
        tokenizer = pretrain.corpus_and_tokenizer(origin.stage, origin.task, origin.seed)[1]
    else:
        from r1lab.models.io import load_tokenizer
        try:
            tokenizer = load_tokenizer(origin.path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{origin.what} has no tokenizer files that load ({str(e).splitlines()[0][:120]})"
    specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    return tokenizer.get_vocab(), specials


def difference(a: Origin, b: Origin, known: dict) -> str | None:
    """How the two origins' tokenizers differ, or None when they are the same; ``known`` holds
    the vocabularies already read (origin.what -> :func:`vocabulary`)."""
    if a.stage is not None and b.stage is not None:
        sa, sb = a.settings, b.settings
        diff = [f"{k} ({sa[k]!r} vs {sb[k]!r})" for k in sa if sa[k] != sb[k]]
        return f"their tokenizers are trained with different {', '.join(diff)}" if diff else None
    (tokens_a, special_a), (tokens_b, special_b) = (known.get(o.what) or vocabulary(o) for o in (a, b))
    if tokens_a != tokens_b:
        changed = sorted(set(tokens_a.items()) ^ set(tokens_b.items()), key=lambda kv: kv[1])
        return (f"their vocabularies differ ({len(tokens_a)} vs {len(tokens_b)} tokens; "
                f"{len({t for t, _ in changed})} tokens differ, e.g. {changed[0][0]!r})")
    if special_a != special_b:
        return f"their special tokens differ ({special_a} vs {special_b})"
    return None


def tokenizer_problem(config) -> tuple[list, str] | None:
    """(location, message) of the first stage whose ``same_tokenizer`` fields name models with
    different tokenizers, or a model whose tokenizer cannot be traced; else None."""
    for i, stage in enumerate(config.stages):
        fields = [f for f in stage.same_tokenizer if getattr(stage, f, None) is not None]
        if len(fields) < 2:
            continue
        origins, known = {}, {}
        for f in fields:
            origin = origins[f] = trace(config, i, getattr(stage, f))
            if not isinstance(origin, str) and origin.path is not None:
                known[origin.what] = vocabulary(origin)
                origin = known[origin.what]
            if isinstance(origin, str):
                return ["stages", i, f], (f"cannot check that {', '.join(fields)} share a tokenizer: "
                                          f"{f} {getattr(stage, f)!r} leads to {origin}")
        first = fields[0]
        for f in fields[1:]:
            problem = difference(origins[f], origins[first], known)     # in the order the message names them
            if problem:
                return ["stages", i, f], (
                    f"{f} {getattr(stage, f)!r} ({origins[f].what}) and {first} {getattr(stage, first)!r} "
                    f"({origins[first].what}) must share a tokenizer, but {problem}")
    return None


def has_chat_template(path: Path) -> bool:
    """Whether the tokenizer at ``path`` (a model folder or a ``.gguf`` file) carries a chat
    template, read from its files without loading it."""
    if path.suffix == ".gguf":
        from r1lab.models.gguf_meta import metadata_keys
        try:
            return "tokenizer.chat_template" in metadata_keys(path)
        except (OSError, ValueError):
            return True                      # not readable here: loading it will say why
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    import json
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def chat_template_problem(config) -> tuple[list, str] | None:
    """(location, message) of the first stage that prompts a model through ``template: chat``
    whose tokenizer has no chat template (a pretrain stage's tokenizer has one), else None."""
    for i, stage in enumerate(config.stages):
        task = getattr(stage, "task", None) or config.task
        if task.template != "chat" or not hasattr(stage, "task"):
            continue
        for field in ("model", "init"):
            if stage.reads.get(field) != "model" or getattr(stage, field, None) is None:
                continue
            origin = trace(config, i, getattr(stage, field))
            if not isinstance(origin, str) and origin.path is not None and origin.path.exists() \
                    and not has_chat_template(origin.path):
                return ["stages", i, field], (f"template chat, but the tokenizer of {getattr(stage, field)!r} "
                                              f"has no chat template (use a template such as r1, or a chat model)")
    return None
