import pytest
import torch

from lgiformer.masking import MaskGenerator
from lgiformer.tokens import TokenLayout


def test_region_balanced_mask_counts_and_tubes():
    layout = TokenLayout((8, 10, 10), (2, 5, 10))
    masker = MaskGenerator(layout, "region_balanced", 0.9)
    mask = masker(4, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 800) and mask.dtype == torch.bool
    visible_per_region = (~mask).view(4, layout.num_regions, -1).sum(-1)
    assert bool((visible_per_region == 10).all())
    assert masker.num_visible == 80
    raster = layout.to_raster(mask).view(4, 8, 10, 10)
    assert bool((raster == raster[:, :1]).all()), "the mask must be identical across time"
    # Inside each 5 x 10 spatial window exactly 5 positions stay visible.
    windows = (~raster[:, 0]).view(4, 2, 5, 1, 10).sum((2, 4))
    assert bool((windows == 5).all())
    assert not torch.equal(mask[0], mask[1]), "clips get different masks"


def test_tube_and_random_masks():
    layout = TokenLayout((4, 6, 6), (2, 3, 3))
    tube = MaskGenerator(layout, "tube", 0.75)(3)
    raster = layout.to_raster(tube).view(3, 4, 6, 6)
    assert bool((raster == raster[:, :1]).all())
    assert bool(((~raster[:, 0]).sum((1, 2)) == 9).all())
    rnd = MaskGenerator(layout, "random", 0.75)(3)
    assert bool(((~rnd).sum(1) == 36).all())


def test_mask_generator_rejects_bad_settings():
    layout = TokenLayout((8, 10, 10), (2, 5, 10))
    with pytest.raises(ValueError, match="mask_type"):
        MaskGenerator(layout, "blocks")
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskGenerator(layout, "tube", 1.0)
