"""Prompt templates. A template turns a question into the text the model continues.

``r1`` is the DeepSeek-R1 paper's template (Table 1) verbatim. ``r1-compact`` keeps its
contract (reasoning in <think></think>, answer in <answer></answer>, shown in the prompt)
in a few words, so a tiny model on a laptop spends its compute on the problem, not on
re-reading a paragraph.
"""

R1 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {question}. Assistant:"
)

R1_COMPACT = (
    "Think in <think> </think>, then answer in <answer> </answer>.\n"
    "User: {question}\nAssistant:"
)

R1_SYSTEM = R1.split(" User:")[0]
"""The system prompt of ``template: chat`` by default: R1's contract without the turn markers
(the chat template brings its own), as open-r1 prompts chat models."""

TEMPLATES = {"r1": R1, "r1-compact": R1_COMPACT}

SUMMARY = {"en": "The answer is {answer}.", "zh": "答案是{answer}。"}
"""A one-sentence summary of an answer, per language: the readable pattern's summary
(r1lab/rewards/readable.py), and how the corpus's malformed answers state theirs."""


def render(template: str, question: str) -> str:
    """``render('r1-compact', '2+3')`` ends with ``'User: 2+3\\nAssistant:'``."""
    return TEMPLATES[template].format(question=question)
