"""dualnn.data.files.load_data_file: formats, splits, standardization and error messages."""

import numpy as np
import pytest

from dualnn.data.files import apply_standardization, load_data_file
from dualnn.errors import (
    ConfigurationError,
    DataFileError,
    DataFileFormatError,
    DataFileNotFoundError,
    DualnnError,
    ShapeError,
)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 2.0, size=(50, 3))
    y = rng.integers(0, 3, size=50)
    return X, y


def _rows_of(X, data):
    """Indices of data's rows in X (rows are unique)."""
    return [int(np.flatnonzero((X == row).all(axis=1))[0]) for row in data]


def test_npz_split_is_seeded_and_partitions(tmp_path, arrays):
    X, y = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    data = load_data_file(tmp_path / "d.npz", test_split=0.2, seed=1)
    assert data.X_train.shape == (40, 3) and data.X_test.shape == (10, 3)
    train, test = _rows_of(X, data.X_train), _rows_of(X, data.X_test)
    assert sorted(train + test) == list(range(50))
    np.testing.assert_array_equal(data.y_train, y[train])
    np.testing.assert_array_equal(data.y_test, y[test])
    again = load_data_file(tmp_path / "d.npz", test_split=0.2, seed=1)
    np.testing.assert_array_equal(again.X_test, data.X_test)
    other = load_data_file(tmp_path / "d.npz", test_split=0.2, seed=2)
    assert not np.array_equal(other.X_test, data.X_test)
    assert data.mean is None and data.std is None


def test_npz_own_test_arrays_and_no_split(tmp_path, arrays):
    X, y = arrays
    np.savez(tmp_path / "d.npz", X=X[:40], y=y[:40], X_test=X[40:], y_test=y[40:])
    data = load_data_file(tmp_path / "d.npz", test_split=0.5)
    np.testing.assert_array_equal(data.X_train, X[:40])
    np.testing.assert_array_equal(data.y_test, y[40:])
    np.savez(tmp_path / "e.npz", X=X, y=y)
    whole = load_data_file(tmp_path / "e.npz", test_split=0)
    assert whole.X_test is None and whole.X_train.shape == (50, 3)


def test_standardize_uses_training_rows_only(tmp_path, arrays):
    X, y = arrays
    X[:, 2] = 7.0  # constant feature: std 1, not a division by zero
    np.savez(tmp_path / "d.npz", X=X, y=y)
    data = load_data_file(tmp_path / "d.npz", standardize=True, seed=0)
    raw = load_data_file(tmp_path / "d.npz", seed=0)
    np.testing.assert_allclose(data.mean, raw.X_train.mean(axis=0))
    np.testing.assert_allclose(data.std[:2], raw.X_train.std(axis=0)[:2])
    assert data.std[2] == 1.0
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(data.X_train[:, :2].std(axis=0), 1, rtol=1e-12)
    np.testing.assert_allclose(data.X_test, (raw.X_test - data.mean) / data.std)
    np.testing.assert_allclose(data.standardize(raw.X_test), data.X_test)
    np.testing.assert_allclose(apply_standardization(raw.X_test, data.mean, data.std),
                               data.X_test)
    with pytest.raises(ShapeError, match=r"\(n, 3\)"):
        apply_standardization(np.ones((2, 4)), data.mean, data.std)


@pytest.mark.parametrize("name", ["X.npy", "y.npy", "", "prefix"])
def test_npy_pairs(tmp_path, arrays, name):
    X, y = arrays
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "train_X.npy", X[:10])
    np.save(tmp_path / "train_y.npy", y[:10])
    if name == "prefix":
        data = load_data_file(tmp_path / "train", test_split=0)
        np.testing.assert_array_equal(data.X_train, X[:10])
        data = load_data_file(str(tmp_path / "train_"), test_split=0)
        np.testing.assert_array_equal(data.y_train, y[:10])
        return
    data = load_data_file(tmp_path / name, test_split=0)  # "" is the folder itself
    np.testing.assert_array_equal(data.X_train, X)
    np.testing.assert_array_equal(data.y_train, y)


def test_npy_pair_with_test_files_and_missing_partner(tmp_path, arrays):
    X, y = arrays
    np.save(tmp_path / "X.npy", X[:40])
    np.save(tmp_path / "y.npy", y[:40])
    np.save(tmp_path / "X_test.npy", X[40:])
    np.save(tmp_path / "y_test.npy", y[40:])
    data = load_data_file(tmp_path / "X.npy")
    np.testing.assert_array_equal(data.X_test, X[40:])
    np.save(tmp_path / "a_X.npy", X)
    with pytest.raises(DataFileNotFoundError, match=r"a_y\.npy: no such file"):
        load_data_file(tmp_path / "a_X.npy")


CSV = "sepal,petal,species\n1.0,2.5,setosa\n1.5,0.5,virginica\n\n2.0,1.0,setosa\n3,4,versicolor\n"


def test_csv_header_text_labels(tmp_path):
    (tmp_path / "d.csv").write_text(CSV)
    data = load_data_file(tmp_path / "d.csv", test_split=0)
    np.testing.assert_array_equal(data.X_train, [[1, 2.5], [1.5, 0.5], [2, 1], [3, 4]])
    assert data.classes == ["setosa", "versicolor", "virginica"]
    np.testing.assert_array_equal(data.y_train, [0, 2, 0, 1])
    assert data.y_train.dtype == np.int64
    assert data.feature_names == ["sepal", "petal"] and data.label_name == "species"


def test_csv_label_by_name_or_index_and_no_header(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,c\n1,0.5,7\n2,1.5,8\n3,2.5,9\n")
    by_name = load_data_file(tmp_path / "d.csv", label="a", test_split=0)
    np.testing.assert_array_equal(by_name.y_train, [1, 2, 3])
    np.testing.assert_array_equal(by_name.X_train, [[0.5, 7], [1.5, 8], [2.5, 9]])
    by_index = load_data_file(tmp_path / "d.csv", label=1, test_split=0)
    assert by_index.y_train.dtype == np.float64
    np.testing.assert_array_equal(by_index.y_train, [0.5, 1.5, 2.5])
    (tmp_path / "n.csv").write_text("1,0.5,7\n2,1.5,8\n")
    plain = load_data_file(tmp_path / "n.csv", test_split=0)
    np.testing.assert_array_equal(plain.y_train, [7, 8])
    assert plain.feature_names is None
    features = load_data_file(tmp_path / "n.csv", test_split=0, with_labels=False)
    assert features.X_train.shape == (2, 3) and features.y_train is None


@pytest.mark.parametrize("text,message", [
    ("a,b,y\n1,2,0\n3,4\n", r"ragged CSV row 3: 2 columns, expected 3"),
    ("a,b,y\n1,2,0\n3,x,1\n", r"non-numeric value 'x' at row 3 column 2 \(b\)"),
    ("1,2,0\n3,,1\n", r"non-numeric value '' at row 2 column 2"),
    ("a,b,y\n1,nan,0\n", r"non-finite value 'nan' at row 2 column 2 \(b\)"),
    ("a,b,y\n1,2,\n", r"empty label at row 2"),
    ("a,b,y\n", r"header but no data rows"),
    ("", r"empty"),
])
def test_csv_errors_name_file_row_and_column(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataFileFormatError, match=message) as info:
        load_data_file(tmp_path / "bad.csv", test_split=0)
    assert "bad.csv" in str(info.value)


def test_npz_errors(tmp_path, arrays):
    X, y = arrays
    np.savez(tmp_path / "noy.npz", X=X)
    with pytest.raises(ShapeError, match=r"noy\.npz: missing array y"):
        load_data_file(tmp_path / "noy.npz")
    np.savez(tmp_path / "nox.npz", features=X, y=y)
    with pytest.raises(ShapeError, match=r"missing array X .*'features'"):
        load_data_file(tmp_path / "nox.npz")
    np.savez(tmp_path / "len.npz", X=X, y=y[:10])
    with pytest.raises(ShapeError, match=r"len\.npz: y must have one row per row of X \(50\)"):
        load_data_file(tmp_path / "len.npz")
    np.savez(tmp_path / "half.npz", X=X, y=y, X_test=X)
    with pytest.raises(ShapeError, match="has X_test but not y_test"):
        load_data_file(tmp_path / "half.npz")
    np.savez(tmp_path / "rank.npz", X=X[:, 0], y=y)
    with pytest.raises(ShapeError, match="X must be 2-D"):
        load_data_file(tmp_path / "rank.npz")
    bad = X.copy()
    bad[7, 1] = np.inf
    np.savez(tmp_path / "inf.npz", X=bad, y=y)
    with pytest.raises(ShapeError, match=r"inf\.npz: X .*row 7"):
        load_data_file(tmp_path / "inf.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFileError, match=r"junk\.npz: cannot read"):
        load_data_file(tmp_path / "junk.npz")
    with pytest.raises(DataFileNotFoundError, match=r"gone\.npz: no such file"):
        load_data_file(tmp_path / "gone.npz")


def test_argument_errors(tmp_path, arrays):
    X, y = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    for bad in (1.0, -0.1, True):
        with pytest.raises(ConfigurationError, match="test_split"):
            load_data_file(tmp_path / "d.npz", test_split=bad)
    with pytest.raises(ConfigurationError, match="CSV column"):
        load_data_file(tmp_path / "d.npz", label="y")
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ConfigurationError, match=r"no column 'z'; its columns are \['a', 'b'\]"):
        load_data_file(tmp_path / "d.csv", label="z")
    with pytest.raises(ConfigurationError, match="not a .csv, .npz or .npy"):
        load_data_file(tmp_path / "data.txt")
    with pytest.raises(ShapeError, match="too few"):
        load_data_file(tmp_path / "d.csv", test_split=0.1)
    assert issubclass(ShapeError, DualnnError) and issubclass(ConfigurationError, DualnnError)
