"""The centre of mass of an image (scoring.image_moments): the model-free statistics of round 12."""

from __future__ import annotations

import torch

from scoring.image_moments import MASS_CENTRE_AXES, mass_centre, mass_centre_statistic


def test_one_bright_pixel_is_its_own_centre_and_a_flip_mirrors_it() -> None:
    images = torch.zeros(2, 1, 6, 10)
    images[0, 0, 1, 7] = 1.0
    images[1, 0, 4, 2] = 0.75
    images[1, 0, 4, 6] = 0.25  # the centre lies at 0.75 * 2 + 0.25 * 6 = 3 along the columns
    assert mass_centre(images, 2).tolist() == [1.0, 4.0]
    assert mass_centre(images, 3).tolist() == [7.0, 3.0]
    for axis, size in ((2, 6), (3, 10)):
        # Measured from the edge, a flip along the axis maps the centre c to size - c.
        flipped = mass_centre_statistic(images.flip(axis), axis)
        torch.testing.assert_close(flipped, size - mass_centre_statistic(images, axis))


def test_an_image_without_mass_has_its_centre_in_the_middle_and_every_statistic_is_positive() -> None:
    images = torch.zeros(3, 2, 5, 4)
    images[1, 1, 0, 0] = 1.0  # mass in the second channel counts as well
    images[2] = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(0))
    assert mass_centre(images, 2)[0] == 2.0 and mass_centre(images, 3)[0] == 1.5
    assert mass_centre(images, 2)[1] == 0.0 and mass_centre(images, 3)[1] == 0.0
    for axis in MASS_CENTRE_AXES.values():
        assert bool((mass_centre_statistic(images, axis) > 0).all())
