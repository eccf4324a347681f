import pytest
import torchinfo

from raysearch.models import ModelSpec, build_model
from raysearch.training.model_summary import summarize


def test_baseline_matches_the_study():
    s = summarize(ModelSpec())
    assert s.params_total == 1_122_673
    assert round(s.macs / 1e6, 2) == 830.67
    assert s.params_executed == s.params_total  # pp=1 runs everything


@pytest.mark.parametrize("kwargs", [dict(), dict(a=0.125, t=2, r=1, pp=1, input_hw=256),
                                    dict(a=0.5, t=4, r=2, pp=1, input_hw="96x160", in_channels=1)])
def test_agrees_with_torchinfo(kwargs):
    spec = ModelSpec(**kwargs)
    s = summarize(spec)
    ref = torchinfo.summary(build_model(spec), input_size=spec.input_shape, verbose=0)
    assert s.params_total == ref.total_params
    assert s.macs == ref.total_mult_adds
    assert s.fwd_pass_mb == round(ref.total_output_bytes / 1e6, 2)
    assert s.input_mb == round(spec.height * spec.width * spec.in_channels * 4 / 1e6, 2)


def test_pp0_reports_honest_executed_params_and_macs():
    on, off = summarize(ModelSpec(pp=1)), summarize(ModelSpec(pp=0))
    assert off.params_total == on.params_total  # the study's convention: pp module counted
    # what pp=0 does not execute: the shared 1x1 conv (128*32) and the 1x1 conv + BN (256*128 + 2*128)
    assert on.params_executed - off.params_executed == 128 * 32 + 256 * 128 + 2 * 128
    assert off.macs < on.macs


def test_summary_document():
    s = summarize(ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=64))
    assert s.to_dict() == {"params_total": s.params_total, "params_executed": s.params_executed, "macs": s.macs,
                           "input_mb": s.input_mb, "fwd_pass_mb": s.fwd_pass_mb}
    assert s.input_mb == round(3 * 64 * 64 * 4 / 1e6, 2)  # one float32 input, by hand
    assert 0 < s.params_executed < s.params_total and s.macs > 0 and s.fwd_pass_mb > 0
