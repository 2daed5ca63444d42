import pytest
import torch

from lgiformer.tokens import TokenLayout, patchify, sinusoid_table, unpatchify


@pytest.mark.parametrize("grid,region", [((8, 10, 10), (2, 5, 10)), ((8, 10, 10), (8, 10, 10)),
                                         ((4, 6, 4), (2, 3, 2)), ((2, 4, 4), (1, 1, 1)), ((4, 4, 6), (4, 2, 3))])
def test_region_partition_round_trip(grid, region):
    layout = TokenLayout(grid, region)
    x = torch.randn(2, layout.num_tokens, 3)
    assert torch.equal(layout.to_raster(layout.to_region_major(x)), x)
    # Region-major order really groups tokens region by region: every group shares one region coordinate.
    t, h, w = torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij")
    coords = torch.stack([t.flatten() // region[0], h.flatten() // region[1], w.flatten() // region[2]], -1)
    grouped = layout.split_regions(layout.to_region_major(coords.unsqueeze(0)))[0]
    assert grouped.shape[:2] == (layout.num_regions, layout.tokens_per_region)
    assert bool((grouped == grouped[:, :1]).all())
    # Regions are enumerated t-major, then h, then w (the order of the reference's region tokens).
    nt, nh, nw = layout.regions_per_axis
    expected = torch.stack(torch.meshgrid(torch.arange(nt), torch.arange(nh), torch.arange(nw), indexing="ij"),
                           -1).reshape(-1, 3)
    assert torch.equal(grouped[:, 0], expected)


def test_layout_rejects_indivisible_regions():
    with pytest.raises(ValueError, match="cannot be split into regions"):
        TokenLayout((8, 10, 10), (3, 5, 10))
    with pytest.raises(ValueError, match="not divisible"):
        TokenLayout.for_input(15, 160, 2, 16)


def test_patchify_round_trip_and_raster_order():
    video = torch.randn(2, 3, 4, 32, 48)
    tokens = patchify(video, 2, 16)
    assert tokens.shape == (2, 2 * 2 * 3, 2, 16, 16, 3)
    assert torch.equal(unpatchify(tokens, (2, 2, 3)), video)
    # Token 1 in raster order is the next patch along the width.
    assert torch.equal(tokens[0, 1, :, :, :, 0], video[0, 0, 0:2, 0:16, 16:32])


def test_sinusoid_table_values():
    table = sinusoid_table(5, 6)
    pos, j = 3, 4
    angle = pos / 10000 ** (2 * (j // 2) / 6)
    assert table[pos, j].item() == pytest.approx(torch.tensor(angle).sin().item(), abs=1e-6)
    assert table[pos, j + 1].item() == pytest.approx(torch.tensor(angle).cos().item(), abs=1e-6)
