"""Data (bench/data/readers.py): where a dataset is found. A folder the user names (VITBENCH_DATA) is used, or refused
with one line saying what it lacks; never replaced by another place without a word."""

import pytest

from bench.data import readers
from bench.data import DataNotFoundError, load_train
from tests.conftest import fake_fashion


@pytest.fixture
def named_and_default(tmp_path, monkeypatch):
    """VITBENCH_DATA names tmp/mine; a complete Fashion-MNIST and a CIFAR-10 folder sit in a default place
    (./data, a torchvision root)."""
    fake_fashion(tmp_path / "cwd" / "data" / "FashionMNIST" / "raw", value=2)
    (tmp_path / "cwd" / "data" / "cifar-10-batches-py").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("VITBENCH_DATA", str(tmp_path / "mine"))
    monkeypatch.setenv("VITBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "mine"


def test_a_named_data_folder_is_used_or_refused_never_replaced(named_and_default):
    named = named_and_default / "fashion-mnist"
    fake_fashion(named, value=1)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):  # the training files only
        (named / name).unlink()
    assert readers.fashion_mnist_search_path() == [named, named_and_default / "FashionMNIST" / "raw"]
    with pytest.raises(DataNotFoundError) as err:
        load_train("fashion-mnist", 28)  # used the Debian package's folder or ./data before, without a word
    message = str(err.value)
    assert "\n" not in message and "Fashion-MNIST is not in the folder VITBENCH_DATA names" in message
    assert f"{named} lacks t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in message
    assert f"{named_and_default / 'FashionMNIST' / 'raw'} lacks all four idx files" in message
    assert "unset VITBENCH_DATA to search the default places" in message
    with pytest.raises(DataNotFoundError) as err:
        load_train("cifar10", 32)  # CIFAR's roots likewise: the named one alone
    assert "\n" not in str(err.value) and f"searched {named_and_default / 'cifar-10-batches-py'})" in str(err.value)


def test_the_default_search_order_falls_back_when_no_folder_is_named(named_and_default, monkeypatch):
    monkeypatch.delenv("VITBENCH_DATA")
    monkeypatch.setattr(readers, "fashion_mnist_search_path",
                        lambda: [named_and_default / "absent", readers.Path("data") / "FashionMNIST" / "raw"])
    assert int(load_train("fashion-mnist", 28).train.x.max()) == 2
