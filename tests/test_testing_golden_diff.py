"""A golden mismatch shows what changed in the graph, not every op its change renumbered."""

import difflib

import pytest
import torch

from torchair_plugin.testing import capture_ge_graphs
from torchair_plugin.testing.pytest_plugin import GoldenFiles, GoldenMismatch, local_diff, require_ge_capture


def two_casts_later(x, w):
    h = torch.matmul(x, w.to(x.dtype))
    return (h.float().relu() * 2).to(torch.bfloat16), h.float().sum(-1)


def one_cast_more(x, w):
    h = torch.matmul(x, w.half().to(x.dtype))  # the change: w goes through float16 first
    return (h.float().relu() * 2).to(torch.bfloat16), h.float().sum(-1)


def test_one_added_cast_is_a_local_diff(tmp_path):
    require_ge_capture()
    x, w = torch.randn(8, 4, dtype=torch.bfloat16), torch.randn(4, 3)
    before = capture_ge_graphs(two_casts_later, x, w).graph.text
    after = capture_ge_graphs(one_cast_more, x, w).graph.text
    (tmp_path / "g.txt").write_text(before)
    with pytest.raises(GoldenMismatch) as info:
        GoldenFiles(tmp_path, update=False).check(after, "g")
    changed = [line for line in str(info.value).splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    plain = [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="")
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    # The new Cast's block (its header reads Cast_0 or Cast_1, whichever the order gives it).
    assert any("attr dst_type = 1" in line for line in changed)
    assert any("DT_FLOAT16" in line for line in changed)
    assert len(changed) <= 6 < len(plain), (changed, plain)
    assert "differ only in op numbers" in str(info.value)


def test_lines_that_differ_only_in_op_numbers_are_counted_not_shown():
    before = "Cast_0: Cast\n  in x = Data(a):0\nMul_0: Mul\n  in x1 = Cast_0:0\n"
    after = "Cast_0: Cast\n  in x = Data(b):0\nCast_1: Cast\n  in x = Data(a):0\nMul_0: Mul\n  in x1 = Cast_1:0\n"
    diff = local_diff(before, after, "golden", "captured")
    assert diff.splitlines()[:3] == [
        "--- golden",
        "+++ captured",
        "(2 more line(s) differ only in op numbers "
        "<Type>_<k>: an op added or removed renumbers the later ops of its type)",
    ]
    # Only the new Cast is a change; the old one's header (now Cast_1) and Mul's input are not.
    assert [line for line in diff.splitlines()[3:] if line[:1] in "+-"] == ["+Cast_0: Cast", "+  in x = Data(b):0"]


def test_a_pure_renumbering_still_shows_a_diff():
    casts = "Cast_0: Cast\n  in x = Data(a):0\nCast_1: Cast\n  in x = Data(b):0\n"
    before, after = casts + "Mul_0: Mul\n  in x1 = Cast_0:0\n", casts + "Mul_0: Mul\n  in x1 = Cast_1:0\n"
    diff = local_diff(before, after, "golden", "captured")
    assert "-  in x1 = Cast_0:0" in diff and "+  in x1 = Cast_1:0" in diff
