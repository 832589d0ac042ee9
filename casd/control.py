"""Style control on CASD's per-region style tokens: swap (try-on, head swap) and interpolation.

The generator's style encoder summarises a person as one token per merged
parsing region (``casd.data.layout.REGION_NAMES``): ``tokens [B, 8, C]``. Editing
those tokens before decoding changes the regions' appearance in the generated
image; everything here is plain tensor arithmetic on them, so it can be tested
without a model.

Region names, never numbers, at the user-facing level. Besides the eight
regions, a few names mean a group (``head`` = hair + face) or another word
for a region (``skirt`` is merged with pants).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from casd.errors import CasdError
from casd.data.images import REGION_NAMES

# Names that stand for several regions or are another word for one (the merged parsing joins
# pants and skirt, hat and hair, sunglasses and face, coat / dress / jumpsuit with upper clothes).
REGION_GROUPS: dict[str, tuple[str, ...]] = {
    "head": ("hair", "face"),
    "skirt": ("pants",),
    "hat": ("hair",),
    "dress": ("upper_clothes",),
    "coat": ("upper_clothes",),
    "shoes": ("legs",),
    "clothes": ("upper_clothes", "pants"),
}


def region_indices(names: str | Iterable[str]) -> list[int]:
    """Region names (or a comma-separated string) -> sorted unique token indices.

    >>> region_indices("hair,face")
    [2, 4]
    >>> region_indices(["head", "upper_clothes"])
    [2, 4, 5]
    """
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out: set[int] = set()
    for raw in names:
        name = raw.strip().lower().replace("-", "_")
        members = REGION_GROUPS.get(name, (name,))
        for member in members:
            if member not in REGION_NAMES:
                known = ", ".join(REGION_NAMES) + "; groups: " + ", ".join(REGION_GROUPS)
                raise CasdError(f"unknown region {raw.strip()!r}; regions are: {known}")
            out.add(REGION_NAMES.index(member))
    if not out:
        raise CasdError("no region named (expected e.g. upper_clothes or hair,face)")
    return sorted(out)


def _check_tokens(tokens: torch.Tensor, other: torch.Tensor, what: str) -> None:
    if tokens.dim() != 3 or tokens.shape[1] != len(REGION_NAMES):
        raise CasdError(f"style tokens must be [B, {len(REGION_NAMES)}, C], got {tuple(tokens.shape)}")
    if other.shape[1:] != tokens.shape[1:] or other.shape[0] not in (1, tokens.shape[0]):
        raise CasdError(f"{what} tokens {tuple(other.shape)} do not match the source tokens {tuple(tokens.shape)}")


def region_mask(regions: str | Iterable[str] | None, like: torch.Tensor) -> torch.Tensor:
    """[1, 8, 1] float mask of the chosen regions (all when ``regions`` is None), on ``like``'s device/dtype."""
    mask = torch.zeros(1, len(REGION_NAMES), 1, dtype=like.dtype, device=like.device)
    if regions is None:
        mask[:] = 1
    else:
        mask[0, region_indices(regions), 0] = 1
    return mask


def swap_tokens(tokens: torch.Tensor, donors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Replace regions' tokens with a donor's: ``{"upper_clothes": donor_tokens}`` -> edited copy.

    tokens: [B, 8, C] of the source; each donor: [B, 8, C] or [1, 8, C]
    (broadcast over the batch). Only the named regions change; later entries
    win where two name the same region.
    """
    edited = tokens.clone()
    for name, donor in donors.items():
        _check_tokens(tokens, donor, f"donor for {name!r}")
        index = region_indices(name)
        edited[:, index] = donor[:, index].to(edited.dtype).expand(tokens.shape[0], -1, -1)
    return edited


def mix_tokens(tokens: torch.Tensor, other: torch.Tensor, alpha: float | torch.Tensor,
               regions: str | Iterable[str] | None = None) -> torch.Tensor:
    """Linear interpolation ``(1 - alpha) * tokens + alpha * other`` in the chosen regions (all by default).

    alpha 0 gives the source tokens exactly, alpha 1 the other person's
    tokens exactly (in the chosen regions); a tensor alpha of shape [B] mixes
    each sample by its own amount. tokens, other: [B, 8, C] (other may be [1, 8, C]).
    """
    _check_tokens(tokens, other, "other person's")
    alpha_t = torch.as_tensor(alpha, dtype=tokens.dtype, device=tokens.device)
    if alpha_t.dim() > 1 or ((alpha_t < 0) | (alpha_t > 1)).any():
        raise CasdError(f"alpha must be a number (or one per sample) in [0, 1], got {alpha}")
    weight = region_mask(regions, tokens) * alpha_t.reshape(-1, 1, 1)  # [B or 1, 8, 1]
    # torch.lerp keeps the endpoints exact: weight 0 -> tokens, weight 1 -> other.
    return torch.lerp(tokens, other.to(tokens.dtype).expand_as(tokens), weight)
