"""Fast-SCNN against the study's table and its own knobs (expectations derived from the spec)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from raysearch.models import ModelSpec, build_model
from raysearch.models.fastscnn import PPM_BINS, BinPool, adaptive_pool_matrix
from raysearch.models.layers import InvertedResidual


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("kwargs,params", [
    (dict(a=1, t=6, r=3, pp=1), 1_122_673),
    (dict(a=1, t=6, r=3, pp=0, in_channels=1), 1_122_097),
    (dict(a=0.125, t=2, r=1, pp=0), 4_519),
])
def test_parameter_counts_match_the_study(kwargs, params):
    assert n_params(build_model(ModelSpec(**kwargs))) == params


def test_channels_scale_by_truncation():
    m = build_model(ModelSpec(a=0.75))
    convs = [mod for mod in m.downsample.modules() if isinstance(mod, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24, 24, 36, 36, 48]  # int(c * 0.75), no rounding
    assert m.classifier[-1].in_channels == 96


@pytest.mark.parametrize("r", [1, 2, 3, 5])
def test_any_number_of_repetitions(r):
    m = build_model(ModelSpec(a=0.25, t=2, r=r, input_hw=64))
    blocks = [b for b in m.global_features.stages.modules() if isinstance(b, InvertedResidual)]
    assert len(blocks) == 3 * r
    # residual only in the repeated blocks (stride 1, same width)
    assert sum(b.use_residual for b in blocks) == 3 * (r - 1)


@pytest.mark.parametrize("hw", [(512, 512), (256, 256), (224, 224), (160, 160), (96, 96), (32, 32), (96, 160)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shape_every_resolution(hw, in_channels):
    spec = ModelSpec(a=0.125, t=2, r=1, pp=1, input_hw=hw, in_channels=in_channels)
    m = build_model(spec).eval()
    with torch.no_grad():
        y = m(torch.randn(2, in_channels, *hw))
    assert y.shape == (2, spec.num_classes, *hw)
    assert torch.isfinite(y).all()


def test_bin_pool_equals_adaptive_pooling_for_every_map_size():
    for m_h, m_w in [(16, 16), (8, 8), (7, 7), (5, 3), (3, 3), (1, 1), (6, 10)]:
        x = torch.randn(1, 4, m_h, m_w)
        for b in PPM_BINS:
            pool = BinPool((m_h, m_w), b)
            bins = (min(b, m_h), min(b, m_w))
            assert pool.bins_hw == bins
            assert torch.allclose(pool(x), F.adaptive_avg_pool2d(x, bins), atol=1e-6)


def test_pooling_windows_at_512_are_the_studys():
    m = build_model(ModelSpec(input_hw=512))
    windows = [p.pool.kernel_size for p in m.global_features.ppm.pools]
    assert windows == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert not list(m.global_features.ppm.pools[0].buffers())  # plain avg pools, no matrices


def test_adaptive_pool_matrix_rows_average():
    p = adaptive_pool_matrix(5, 2)  # windows rows 0..2 and 2..4 (adaptive pooling overlaps)
    assert torch.allclose(p.sum(1), torch.ones(2))
    assert p[0].nonzero().flatten().tolist() == [0, 1, 2] and p[1].nonzero().flatten().tolist() == [2, 3, 4]


def test_pp_switch_changes_the_forward_not_the_parameters():
    torch.manual_seed(0)
    on = build_model(ModelSpec(a=0.25, t=2, r=1, pp=1, input_hw=96)).eval()
    off = build_model(ModelSpec(a=0.25, t=2, r=1, pp=0, input_hw=96)).eval()
    off.load_state_dict(on.state_dict())  # same parameters, the pp module included
    high = torch.randn(1, 16, 12, 12)  # the 1/8 features the global extractor takes (64a channels)
    with torch.no_grad():
        y_on, y_off = on.global_features(high), off.global_features(high)
    assert y_on.shape == y_off.shape == (1, 32, 3, 3)  # 128a channels at 1/32
    assert (y_on - y_off).abs().max() > 1e-3


def test_gradients_reach_every_executed_parameter():
    m = build_model(ModelSpec(a=0.125, t=2, r=1, pp=1, input_hw=64))
    m(torch.randn(2, 3, 64, 64)).mean().backward()
    assert all(p.grad is not None for p in m.parameters())
