"""Label-free quality signals (dcjax/quality.py): cohesion, the nmi_prev trend, agreement with
k-means on raw pixels."""

import numpy as np
import pytest

from dcjax import quality


def test_cohesion_is_the_norm_of_the_mean_of_normalised_rows():
    rows = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, -1], [1, 0]], np.float32)
    assignment = np.array([0, 0, 0, 1, 1, 2])
    sizes, values = quality.cohesion(rows, assignment, 4)
    np.testing.assert_array_equal(sizes, [3, 2, 1, 0])
    np.testing.assert_allclose(values[:3], [1.0, 0.0, 1.0], atol=1e-7)
    assert np.isnan(values[3])  # an empty cluster has none


def test_trend_says_whether_clusters_still_move():
    history = [{"nmi_prev": None}] + [{"nmi_prev": v} for v in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85)]
    assert quality.trend(history) == {"clusters_still_moving": True,
                                      "nmi_prev_trend": [0.6, 0.85]}  # the last 5
    flat = [{"nmi_prev": v} for v in (0.9, 0.91, 0.9, 0.905)]
    assert quality.trend(flat)["clusters_still_moving"] is False
    assert quality.trend([{"nmi_prev": None}, {"nmi_prev": 0.3}])["clusters_still_moving"] is None
    lines = quality.lines({"clusters_still_moving": True, "nmi_prev_trend": [0.6, 0.85]}, 30,
                          np.array([0.5, np.nan]))
    assert "more epochs (--config.num_epochs=60, same --workdir)" in lines[-1]
    assert "median 0.500" in lines[0]


class Colours:
    """Records of flat-colour PNG images, three colours in turn."""

    COLOURS = ((220, 30, 30), (30, 200, 40), (40, 40, 230))

    def __init__(self, n):
        import io

        from PIL import Image

        self.records = []
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (40, 40), self.COLOURS[i % 3]).save(buf, format="PNG")
            self.records.append({"image": buf.getvalue(), "label": i % 3})

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


@pytest.mark.parametrize("by_colour,expected", [(True, 1.0), (False, 0.0)])
def test_pixel_agreement_is_high_for_clusters_by_colour(by_colour, expected):
    from conftest import make_config

    source = Colours(30)
    if by_colour:  # the clusters the pixels give, under other cluster ids
        assignment = np.array([(i % 3 + 1) % 3 for i in range(30)])
    else:  # clusters that cut across the colours
        assignment = np.array([(i // 3) % 3 for i in range(30)])
    result = quality.pixel_agreement(make_config(), source, assignment, 3, seed=0)
    assert result["pixel_agreement_images"] == 30
    assert result["pixel_agreement_nmi"] == pytest.approx(expected, abs=0.05)


def test_pixel_agreement_is_not_computed_for_a_k_the_sample_cannot_support():
    from conftest import make_config

    result = quality.pixel_agreement(make_config(), Colours(12), np.arange(12) % 4, 4, seed=0)
    assert result == {"pixel_agreement_nmi": None, "pixel_agreement_images": 12}
