"""r1lab's compiled C loops (r1lab/compiled.py): where no compiler is found, each loader warns
once and returns None, so its caller keeps the PyTorch reference; its switch set to ``torch``
asks for the same without a warning, and nothing is built."""

import pytest

from r1lab import elementwise
from r1lab.forward import packed_attention
from r1lab.losses import logit_tiles
from r1lab.rollout import decode_attention, sampling

LOOPS = {"packed attention": (packed_attention, "R1LAB_PACKED_ATTENTION"),
         "logit tiles": (logit_tiles, "R1LAB_LOGIT_TILES"),
         "elementwise passes": (elementwise, "R1LAB_ELEMENTWISE"),
         "decode attention": (decode_attention, "R1LAB_DECODE_ATTENTION"),
         "sampling pass": (sampling, "R1LAB_SAMPLING")}


@pytest.mark.parametrize("what", LOOPS)
def test_without_a_compiler_the_pytorch_calls_stay(what, monkeypatch, tmp_path):
    module, switch = LOOPS[what]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    module.load.cache_clear()
    try:
        with pytest.warns(UserWarning, match=f"{what}: .*no C compiler"):
            assert module.load() is None
        module.load.cache_clear()
        monkeypatch.setenv(switch, "torch")
        monkeypatch.delenv("CC")
        assert module.load() is None
        assert not list(tmp_path.rglob("*.so"))
    finally:
        module.load.cache_clear()
