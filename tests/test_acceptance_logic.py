"""The NPU acceptance kit's comparison, exercised on CPU: it passes a correct kernel and catches
wrong ones (the reference kernel stands in for the native one)."""

import torch

from torchair_plugin import npu_moe_update_expert_reference as reference
from torchair_plugin.testing.acceptance import SCALE_DTYPES, build_case, compare, corpus, mismatch_report

CASES = list(corpus(seed=1, size=48))


def test_corpus_covers_what_the_kit_promises():
    full = list(corpus(seed=0, size=200))
    assert {c.balance_mode for c in full} == {0, 1}
    assert {c.ids_dtype for c in full} == {torch.int32, torch.int64}
    assert {c.scales_dtype for c in full} == {None, *SCALE_DTYPES}
    assert min(c.bs for c in full) == 1 and max(c.bs for c in full) == 512
    assert min(c.k for c in full) == 1 and max(c.k for c in full) == 16
    assert any(c.with_active_mask for c in full)
    assert build_case(full[5])[0][0].equal(build_case(full[5])[0][0])  # rebuildable from the record


def test_the_reference_agrees_with_itself():
    assert compare(reference, reference, CASES) == []
    assert mismatch_report([]).startswith("native kernel agrees")


def test_a_mode_1_kernel_without_the_plus_one_is_caught():
    def public_doc_mode_1(ids, table, **kw):  # replica i % count instead of i % count + 1
        out, mask = reference(ids, table, **kw)
        if kw["balance_mode"] == 1:
            rows = torch.arange(ids.shape[0]).view(-1, 1).expand_as(ids)
            count = table[ids.long(), 0].long()
            out = torch.where(count == 1, out, table[ids.long(), rows % count].to(out.dtype))
        return out, mask

    found = compare(public_doc_mode_1, reference, CASES)
    assert found and all(m.case.balance_mode == 1 and m.output == "balanced_expert_ids" for m in found)
    report = mismatch_report(found)
    assert "balance_mode=1" in report and "expected" in report


def test_a_strict_comparison_at_the_pruning_boundary_is_caught():
    def prunes_on_equality(ids, table, **kw):
        out, mask = reference(ids, table, **kw)
        scales, threshold = kw.get("expert_scales"), kw.get("pruning_threshold")
        if scales is not None:
            s = scales.float()
            mask = mask & (s > threshold.view(1, -1) * s.sum(dim=1, keepdim=True))
        return out, mask

    found = compare(prunes_on_equality, reference, CASES)
    assert found and all(m.output == "balanced_active_mask" for m in found)


def test_a_kernel_that_refuses_a_valid_case_is_reported():
    def refuses(*args, **kwargs):
        raise RuntimeError("ACLNN error 561002\nmore")

    found = compare(refuses, reference, CASES[:3])
    assert [m.output for m in found] == ["error"] * 3
    assert "RuntimeError: ACLNN error 561002" in mismatch_report(found)
