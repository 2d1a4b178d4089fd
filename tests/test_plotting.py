"""neuronet.plotting: images in rows and the history's curves, as PNG files written atomically."""

import numpy as np
import pytest

import neuronet as nn

pytest.importorskip("matplotlib")


def _png(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_save_images_draws_each_row_where_it_belongs(tmp_path):
    """A white row above a black one (value_range maps -1 to black, 1 to white), no labels: the centre of
    each top tile is white, of each bottom tile black; nothing but the PNG is left in the folder."""
    rows = [np.ones((3, 16)), -np.ones((3, 16))]
    path = nn.plotting.save_images(tmp_path / "grid.png", rows, image_shape=(4, 4), value_range=(-1.0, 1.0),
                                   tile_inches=1.0, dpi=20)
    image = _png(path)[..., :3].mean(axis=-1)
    assert image.shape == (40, 60)  # 2 rows x 3 images of one inch at 20 dpi
    centres = [20 * c + 10 for c in range(3)]
    np.testing.assert_allclose(image[10, centres], 1.0)
    np.testing.assert_allclose(image[30, centres], 0.0)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_save_images_rejects_rows_of_different_lengths_and_labels_that_do_not_match(tmp_path):
    with pytest.raises(ValueError, match=r"one length, got lengths \[3, 2\]"):
        nn.plotting.save_images(tmp_path / "a.png", [np.zeros((3, 784)), np.zeros((2, 784))])
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        nn.plotting.save_images(tmp_path / "a.png", [np.zeros((3, 784))] * 2, ["only one"])
    with pytest.raises(ValueError, match="reshape"):  # 10 values are no 28 x 28 image
        nn.plotting.save_images(tmp_path / "a.png", [np.zeros((1, 10))])
    assert list(tmp_path.iterdir()) == []


def test_plot_history_draws_one_panel_per_name(tmp_path):
    history = {"loss": [1.0, 0.5, 0.25], "accuracy": [0.5, 0.7, 0.9], "val_loss": [1.1, 0.6, 0.4]}
    one = _png(nn.plotting.plot_history({"loss": history["loss"]}, tmp_path / "one.png"))
    two = _png(nn.plotting.plot_history(history, tmp_path / "two.png", title="run"))
    assert one.shape[0] == two.shape[0] and two.shape[1] == 2 * one.shape[1]  # 5 inches per panel
