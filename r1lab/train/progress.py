"""A progress bar per stage with the live figures that matter."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(desc: str, total: int, initial: int = 0, disable: bool = False) -> tqdm:
    """A tqdm bar on stderr; in a non-interactive log it prints a line at most every 10 s."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True, disable=disable,
                mininterval=0.5 if interactive else 10.0, file=sys.stderr)


def show(bar: tqdm, values: dict[str, float]) -> None:
    """Put ``values`` on the bar, short and rounded."""
    bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
