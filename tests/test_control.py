"""casd.control: region names -> token indices, token swap and interpolation (pure tensor arithmetic)."""

from __future__ import annotations

import pytest
import torch

from casd import control
from casd.errors import CasdError
from casd.data.images import REGION_NAMES


def tokens(batch=2, seed=0):
    return torch.randn(batch, len(REGION_NAMES), 6, generator=torch.Generator().manual_seed(seed))


def test_region_names_and_groups():
    assert control.region_indices("upper_clothes") == [REGION_NAMES.index("upper_clothes")]
    assert control.region_indices("hair,face") == sorted([REGION_NAMES.index("hair"), REGION_NAMES.index("face")])
    assert control.region_indices(["head"]) == control.region_indices("hair,face")
    assert control.region_indices("skirt") == control.region_indices("pants")
    assert control.region_indices(" Upper-Clothes ") == control.region_indices("upper_clothes")


@pytest.mark.parametrize("bad", ["shirt", "3", "hair,nose", ""])
def test_unknown_region_is_one_clear_error(bad):
    with pytest.raises(CasdError, match="region"):
        control.region_indices(bad)


def test_swap_changes_exactly_the_named_tokens():
    source, donor = tokens(seed=1), tokens(seed=2)
    edited = control.swap_tokens(source, {"upper_clothes": donor})
    k = REGION_NAMES.index("upper_clothes")
    assert torch.equal(edited[:, k], donor[:, k])
    others = [i for i in range(len(REGION_NAMES)) if i != k]
    assert torch.equal(edited[:, others], source[:, others])
    assert not torch.equal(source[:, k], donor[:, k])  # the source itself is untouched
    assert torch.equal(source, tokens(seed=1))


def test_swap_broadcasts_one_donor_and_takes_several_regions():
    source, donor, other = tokens(3, 1), tokens(1, 2), tokens(1, 3)
    edited = control.swap_tokens(source, {"head": donor, "pants": other})
    hair, face, pants = (REGION_NAMES.index(n) for n in ("hair", "face", "pants"))
    for b in range(3):
        assert torch.equal(edited[b, [hair, face]], donor[0, [hair, face]])
        assert torch.equal(edited[b, pants], other[0, pants])


def test_mix_endpoints_are_exact_and_midpoint_is_linear():
    a, b = tokens(seed=4), tokens(seed=5)
    assert torch.equal(control.mix_tokens(a, b, 0.0), a)
    assert torch.equal(control.mix_tokens(a, b, 1.0), b)
    torch.testing.assert_close(control.mix_tokens(a, b, 0.25), 0.75 * a + 0.25 * b)


def test_mix_only_chosen_regions():
    a, b = tokens(seed=6), tokens(seed=7)
    mixed = control.mix_tokens(a, b, 1.0, regions="hair,face")
    chosen = control.region_indices("hair,face")
    rest = [i for i in range(len(REGION_NAMES)) if i not in chosen]
    assert torch.equal(mixed[:, chosen], b[:, chosen]) and torch.equal(mixed[:, rest], a[:, rest])


def test_mix_per_sample_alpha_and_bad_alpha():
    a, b = tokens(seed=8), tokens(seed=9)
    mixed = control.mix_tokens(a, b, torch.tensor([0.0, 1.0]))
    assert torch.equal(mixed[0], a[0]) and torch.equal(mixed[1], b[1])
    with pytest.raises(CasdError, match="alpha"):
        control.mix_tokens(a, b, 1.5)


def test_token_shape_mismatch_is_an_error():
    with pytest.raises(CasdError, match="do not match"):
        control.swap_tokens(tokens(), {"hair": torch.zeros(2, len(REGION_NAMES), 5)})
