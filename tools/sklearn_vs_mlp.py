"""Accuracy and fit time: dualnn.sklearn.MLPClassifier against scikit-learn's MLPClassifier.

Run:  python tools/sklearn_vs_mlp.py [--max-iter 100] [--repeats 3] [--hidden 128 64]

Both estimators get the same settings (hidden layers, relu, adam, alpha, batch size,
learning rate, max_iter, tol, random_state) on scikit-learn's digits data (1797 8x8 images,
10 classes), standardized, with a stratified 75/25 split. Fit time is the best of
``--repeats`` fits (the first dualnn fit also compiles Numba kernels, so one untimed warm-up
fit runs first); accuracy is on the held-out quarter.
"""

# ruff: noqa: I001  (dualnn is imported first on purpose)
from __future__ import annotations

import argparse
import time
import warnings

import dualnn  # noqa: F401  (first: thread policy before NumPy's BLAS starts)
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SkMLP
from sklearn.preprocessing import StandardScaler

from dualnn.sklearn import MLPClassifier as DnMLP


def compare(hidden=(128, 64), max_iter=100, repeats=3, random_state=0, dtype="float32"):
    """Fit both classifiers on digits; returns ``{name: {"accuracy", "fit_s", "n_iter"}}``."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=random_state)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    settings = {"hidden_layer_sizes": tuple(hidden), "activation": "relu", "solver": "adam",
                    "alpha": 1e-4, "batch_size": 200, "learning_rate_init": 1e-3, "max_iter": max_iter,
                    "tol": 1e-4, "random_state": random_state}
    makers = {"sklearn": lambda: SkMLP(**settings),
              f"dualnn ({dtype})": lambda: DnMLP(dtype=dtype, **settings)}
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, make in makers.items():
            make().fit(X_train, y_train)  # warm-up: Numba compilation, BLAS threads
            best = float("inf")
            for _ in range(repeats):
                est = make()
                start = time.perf_counter()
                est.fit(X_train, y_train)
                best = min(best, time.perf_counter() - start)
            results[name] = {"accuracy": float(est.score(X_test, y_test)), "fit_s": best,
                             "n_iter": int(est.n_iter_)}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    results = compare(args.hidden, args.max_iter, args.repeats, dtype=args.dtype)
    print(f"digits, hidden={tuple(args.hidden)}, max_iter={args.max_iter}, "
          f"best of {args.repeats} fits")
    print(f"{'estimator':<18} {'accuracy':>9} {'fit s':>8} {'epochs':>7} {'ms/epoch':>9}")
    for name, row in results.items():
        per_epoch = 1e3 * row["fit_s"] / row["n_iter"]
        print(f"{name:<18} {row['accuracy']:>9.4f} {row['fit_s']:>8.3f} {row['n_iter']:>7d} "
              f"{per_epoch:>9.1f}")


if __name__ == "__main__":
    main()
