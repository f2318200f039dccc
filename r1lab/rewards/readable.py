"""R1's readable output pattern, and measures of how readable a completion is.

DeepSeek-R1 (arXiv 2501.12948, sec. 2.3.1) writes its cold-start data in a readable pattern,
the reasoning then a summary, ``|special_token|<reasoning_process>|special_token|<summary>``.
Here the reasoning stays in ``<think>...</think>`` and the answer in ``<answer>...</answer>``
(so the accuracy and format rewards read it unchanged), with a one-sentence summary between
them: :func:`readable` rewrites a completion into that pattern, :func:`has_summary` tells
whether one follows it. :func:`direct_completion` is a non-reasoning answer with no CoT, and
:func:`repeat_ratio` measures degenerate repetition.
"""

from __future__ import annotations

import re

from r1lab.data.templates import SUMMARY
from r1lab.rewards.accuracy import extract_answer
from r1lab.rewards.language import _HAN, detect_language, extract_think

_SUMMARY_TEXT = re.compile(r"</think>((?:(?!</?think>|</?answer>).)*)<answer>", re.DOTALL)
_WORD = re.compile(rf"[{_HAN}]|[^\s{_HAN}]+")   # a CJK ideograph, or a run of anything else but space


def readable(completion: str, example: dict) -> str | None:
    """``completion`` rewritten as ``<think>reasoning</think> summary <answer>answer</answer>``,
    the summary (:data:`SUMMARY`) in ``example["lang"]``, else the language of its question
    ("en" for a language without a summary); None unless the completion holds exactly one
    think block and one answer block. Text outside the two blocks is dropped.

    >>> readable("<think> 3+4=7 </think>7<answer> 7 </answer>", {"question": "3+4", "lang": "en"})
    ' <think>3+4=7</think> The answer is 7. <answer>7</answer>'
    >>> readable("<think>3加4得7</think> <answer>7</answer>", {"question": "3加4等于几？"})
    ' <think>3加4得7</think> 答案是7。 <answer>7</answer>'
    >>> readable("<think>3+4=7</think> <answer>7</answer>", {"question": "3+4", "lang": "ru"})
    ' <think>3+4=7</think> The answer is 7. <answer>7</answer>'
    >>> readable("<think>3+4=7</think> 7", {"question": "3+4"}) is None                 # no answer
    True
    >>> readable("<think>a</think><think>b</think><answer>7</answer>", {"question": "3+4"}) is None
    True
    """
    think, answer = extract_think(completion), extract_answer(completion)
    if think is None or answer is None or completion.count("<think>") != 1:
        return None
    lang = example.get("lang") or detect_language(example["question"])
    summary = SUMMARY.get(lang, SUMMARY["en"]).format(answer=answer.strip())
    return f" <think>{think.strip()}</think> {summary} <answer>{answer.strip()}</answer>"


def direct_completion(example: dict) -> str:
    """A non-reasoning answer: an empty think block (no CoT), then the reference answer.

    >>> direct_completion({"question": "Capital of France?", "answer": "Paris"})
    ' <think></think> <answer>Paris</answer>'
    """
    return f" <think></think> <answer>{example['answer']}</answer>"


def has_summary(completion: str) -> bool:
    """True when non-blank text, holding no tag, stands between ``</think>`` and ``<answer>``.

    >>> has_summary("<think>3+4=7</think> The answer is 7. <answer>7</answer>")
    True
    >>> has_summary("<think>3+4=7</think> \\n <answer>7</answer>"), has_summary("<answer>7</answer>")
    (False, False)
    """
    return any(m.group(1).strip() for m in _SUMMARY_TEXT.finditer(completion))


def repeat_ratio(text: str, n: int = 4) -> float:
    """1 - distinct word n-grams / all word n-grams: 0.0 for text that never repeats an n-gram,
    towards 1.0 for a loop; 0.0 when there are fewer than ``n`` words. Words are
    whitespace-separated tokens, except that each CJK ideograph is a word of its own.

    >>> repeat_ratio("a b c d a b c d a b c d")     # 9 4-grams, 4 distinct: 1 - 4/9
    0.5555555555555556
    >>> repeat_ratio("so 7+8=15, then 15-3=12")   # 5 words, 2 4-grams, both distinct
    0.0
    >>> repeat_ratio("一二一二一二", n=2)            # 6 words, 5 2-grams, 2 distinct: 1 - 2/5
    0.6
    >>> repeat_ratio("a a a")                       # fewer than 4 words
    0.0
    """
    words = _WORD.findall(text)
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)
