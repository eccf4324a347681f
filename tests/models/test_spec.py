import dataclasses

import pytest

from raysearch.models import ModelSpec, build_model, parse_hw


def test_defaults_are_the_study_baseline():
    s = ModelSpec()
    assert (s.arch, s.a, s.t, s.r, s.pp, s.input_hw, s.in_channels, s.num_classes) == (
        "fastscnn", 1.0, 6, 3, 1, (512, 512), 3, 1)


@pytest.mark.parametrize("value,expected", [(512, (512, 512)), ("256", (256, 256)), ("224x160", (224, 160)),
                                            ([96, 128], (96, 128)), ("96X96", (96, 96))])
def test_parse_hw(value, expected):
    assert parse_hw(value) == expected
    assert ModelSpec(input_hw=value).input_hw == expected


@pytest.mark.parametrize("kwargs,needle", [
    (dict(a=0), "a=0.0"), (dict(a=-1), "a=-1.0"), (dict(a="wide"), "a='wide'"), (dict(a=0.01), "a=0.01"),
    (dict(t=0), "t=0"), (dict(r=0), "r=0"), (dict(pp=2), "pp=2"), (dict(input_hw=100), "100x100"),
    (dict(input_hw="abc"), "'abc'"), (dict(input_hw=16), "16x16"), (dict(in_channels=2), "in_channels=2"),
    (dict(num_classes=0), "num_classes=0"), (dict(arch="unet"), "'unet'"), (dict(t=1.5), "t=1.5"),
])
def test_bad_values_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=None) as e:
        ModelSpec(**kwargs)
    assert needle in str(e.value)


def test_round_trip_and_from_dict():
    s = ModelSpec(a=0.25, t=4, r=2, pp=0, input_hw="96x128", in_channels=1)
    assert ModelSpec.from_json(s.to_json()) == s
    cfg = {**s.to_dict(), "lr": 0.01}  # search configs carry more than the spec
    assert ModelSpec.from_dict(cfg) == s
    with pytest.raises(ValueError, match="lr"):
        ModelSpec.from_dict(cfg, strict=True)
    assert ModelSpec.from_dict({"res": 160}).input_hw == (160, 160)
    assert s.replace(a=0.5).a == 0.5 and s.replace(a=0.5).t == 4


def test_mlflow_params_are_plain_numbers_and_read_back():
    s = ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw="96x128", in_channels=1, extra=(("k", 3),))
    p = s.to_params()
    assert p["input_h"] == "96" and p["input_w"] == "128" and "input_size" not in p and "input_hw" not in p
    assert all(isinstance(v, str) and not v.startswith(("[", "{")) for v in p.values())  # plottable, no JSON
    assert float(p["a"]) == 0.125 and p["extra.k"] == "3"
    assert ModelSpec.from_params({**p, "lr": "0.01"}) == s  # other params are ignored
    square = ModelSpec(input_hw=160).to_params()
    assert square["input_size"] == "160" and ModelSpec.from_params(square) == ModelSpec(input_hw=160)
    # a run logged before input_h/input_w still reads back
    legacy = {k: v for k, v in square.items() if not k.startswith("input_")} | {"input_hw": "[160, 160]"}
    assert ModelSpec.from_params(legacy) == ModelSpec(input_hw=160)
    with pytest.raises(ValueError, match="input_h"):
        ModelSpec.from_params({"arch": "fastscnn", "a": "1"})


def test_spec_is_frozen_and_hashable():
    s = ModelSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.a = 2.0  # type: ignore[misc]
    assert len({s, ModelSpec(), ModelSpec(a=0.5)}) == 2


def test_build_model_attaches_the_spec():
    s = ModelSpec(a=0.125, t=2, r=1, pp=0, input_hw=64)
    assert build_model(s).spec is s
    assert s.name == "fastscnn-a0.125-t2-r1-pp0-64x64-c3"
