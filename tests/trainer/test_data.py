import numpy as np
import pytest

from customkd.common.errors import UserError
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import epoch_order, epoch_views, select_labeled


def test_label_budget_is_per_class_and_seeded():
    labels = np.repeat(np.arange(3), [50, 20, 10])
    a = select_labeled(labels, DistillConfig(cache="x", labels_per_class=4, seed=1))
    assert [int(a[labels == c].sum()) for c in range(3)] == [4, 4, 4]
    np.testing.assert_array_equal(a, select_labeled(labels, DistillConfig(cache="x", labels_per_class=4, seed=1)))
    assert not np.array_equal(a, select_labeled(labels, DistillConfig(cache="x", labels_per_class=4, seed=2)))
    b = select_labeled(labels, DistillConfig(cache="x", label_fraction=0.1))
    assert [int(b[labels == c].sum()) for c in range(3)] == [5, 2, 1]


def test_epoch_order_and_views_are_pure_functions():
    np.testing.assert_array_equal(epoch_order(10, 3, 0), epoch_order(10, 3, 0))
    assert sorted(epoch_order(10, 3, 0).tolist()) == list(range(10))
    rows = np.arange(6)
    cycle = epoch_views(rows, 4, 0, "cycle", 0)
    assert set(cycle.tolist()) <= {1, 2, 3}
    assert (epoch_views(rows, 4, 1, "cycle", 0) != cycle).all()
    assert (epoch_views(rows, 1, 5, "random", 0) == 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"setting": "semi"}, "unknown --setting"),
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"label_fraction": 1.5}, "label-fraction must be in"),
    ({"setting": "uda"}, "needs --source"),
    ({"labels_per_class": 2, "label_fraction": 0.5}, "not both"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(UserError, match=message):
        DistillConfig(cache="x", **kwargs)


def test_allow_stale_warning_names_paths_escaped(caplog):
    """The warning quotes a sample path, which a store or dataset folder chose: escape sequences stay text."""
    from customkd.contract.listing import ListingDiff
    from customkd.trainer.data import check_listing

    diff = ListingDiff(listing_rows=1, stored_rows=1, changed=((0, "class0/\x1b]0;title\x07.png"),))
    with caplog.at_level("WARNING", logger="customkd.trainer.data"):
        check_listing(diff, allow_stale=True, cache="c.zarr")
    [message] = [record.getMessage() for record in caplog.records]
    assert "\\x1b]0;title\\x07.png" in message and "\x1b" not in message and "\x07" not in message
