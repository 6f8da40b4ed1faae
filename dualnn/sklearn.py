"""scikit-learn estimators backed by dualnn: :class:`MLPClassifier` and :class:`MLPRegressor`.

Drop-in replacements for :mod:`sklearn.neural_network`'s estimators of the same names: the
parameters that mean the same thing have the same names and defaults, the fitted attributes
(``classes_``, ``n_features_in_``, ``loss_curve_``, ``n_iter_``...) the same meaning. They
work in a :class:`~sklearn.pipeline.Pipeline`, :class:`~sklearn.model_selection.GridSearchCV`,
with :func:`~sklearn.base.clone` and :mod:`pickle`.

>>> from dualnn.sklearn import MLPClassifier                  # doctest: +SKIP
>>> clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50).fit(X, y)  # doctest: +SKIP

Differences from scikit-learn's:

- ``alpha`` is applied as weight decay ``alpha / batch_size`` on every parameter (scikit-learn
  adds ``alpha / (2 n_batch) ||W||^2`` to the loss of the weights only);
- ``early_stopping`` monitors the validation *loss* (scikit-learn: the validation score);
- a binary classifier has two softmax outputs (scikit-learn: one logistic output);
- ``solver="lbfgs"`` and the ``learning_rate`` schedules are not offered.

Pickling stores the network as ``state_dict`` arrays plus the layer sizes, never live device
arrays; the optimizer state is not kept, so ``warm_start`` after unpickling restarts the
optimizer.

Needs scikit-learn (``pip install "dualnn[sklearn]"``).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "dualnn.sklearn needs scikit-learn: pip install 'dualnn[sklearn]' "
        "(or pip install scikit-learn)") from exc

from .errors import ConfigurationError

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "logistic": "Sigmoid", "identity": "Identity"}
_SOLVERS = ("adam", "sgd")


def _check_number(name, value, low=None, high=None, integer=False, low_open=False,
                  high_open=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigurationError(f"{name} must be {'an int' if integer else 'a number'}, "
                                 f"got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigurationError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigurationError(f"{name} must be {'<' if high_open else '<='} {high}, "
                                 f"got {value!r}")


def _print_loss_callback():
    """A callback printing scikit-learn's verbose line, ``Iteration n, loss = ...``."""
    import dualnn as dn

    class PrintLoss(dn.callbacks.Callback):
        def on_epoch_end(self, run, epoch, logs):
            line = f"Iteration {epoch}, loss = {logs['loss']:.8f}"
            if "val_loss" in logs:
                line += f", validation loss = {logs['val_loss']:.8f}"
            print(line, flush=True)

    return PrintLoss()


class _BaseMLP(BaseEstimator):
    """Shared fitting logic; see :class:`MLPClassifier` for the parameters."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate_init=0.001, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, device="cpu", batch_norm=False, dropout=0.0,
                 dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.batch_norm = batch_norm
        self.dropout = dropout
        self.dtype = dtype

    # ------------------------------------------------------------------ checks
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise ConfigurationError(f"hidden_layer_sizes must be an int or a sequence of ints, "
                                     f"got {self.hidden_layer_sizes!r}") from None
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
                raise ConfigurationError(f"hidden_layer_sizes must hold ints >= 1, got "
                                         f"{self.hidden_layer_sizes!r}")
        return tuple(int(s) for s in sizes)

    def _check_params(self):
        if self.activation not in _ACTIVATIONS:
            raise ConfigurationError(f"activation must be one of {sorted(_ACTIVATIONS)}, got "
                                     f"{self.activation!r}")
        if self.solver not in _SOLVERS:
            raise ConfigurationError(f"solver must be one of {list(_SOLVERS)}, got "
                                     f"{self.solver!r}")
        if self.batch_size != "auto":
            _check_number("batch_size", self.batch_size, low=1, integer=True)
        _check_number("alpha", self.alpha, low=0.0)
        _check_number("learning_rate_init", self.learning_rate_init, low=0.0, low_open=True)
        _check_number("max_iter", self.max_iter, low=1, integer=True)
        _check_number("tol", self.tol, low=0.0)
        _check_number("momentum", self.momentum, low=0.0, high=1.0)
        _check_number("validation_fraction", self.validation_fraction, low=0.0, high=1.0,
                      low_open=True, high_open=True)
        _check_number("beta_1", self.beta_1, low=0.0, high=1.0, high_open=True)
        _check_number("beta_2", self.beta_2, low=0.0, high=1.0, high_open=True)
        _check_number("epsilon", self.epsilon, low=0.0, low_open=True)
        _check_number("n_iter_no_change", self.n_iter_no_change, low=1, integer=True)
        _check_number("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        if self.dtype not in ("float32", "float64"):
            raise ConfigurationError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        return self._hidden_sizes()

    # ------------------------------------------------------------------ the network
    def _build_model(self, sizes):
        """A Sequential with layer widths ``sizes`` = (inputs, hidden..., outputs)."""
        import dualnn as dn

        hidden = len(sizes) - 2
        init = "he" if self.activation == "relu" else "xavier"
        layers = []
        for i in range(len(sizes) - 1):
            last = i == hidden
            layers.append(dn.layers.Linear(sizes[i], sizes[i + 1],
                                           bias=last or not self.batch_norm,
                                           init="xavier" if last else init, dtype=self.dtype))
            if last:
                break
            if self.batch_norm:
                layers.append(dn.layers.BatchNorm(sizes[i + 1], dtype=self.dtype))
            layers.append(getattr(dn.layers, _ACTIVATIONS[self.activation])())
            if self.dropout > 0:
                layers.append(dn.layers.Dropout(self.dropout))
        return dn.Sequential(*layers)

    def _make_optimizer(self, model, batch_size):
        import dualnn as dn

        decay = float(self.alpha) / batch_size
        if self.solver == "adam":
            return dn.optim.Adam(model.parameters(), lr=float(self.learning_rate_init),
                                 betas=(float(self.beta_1), float(self.beta_2)),
                                 eps=float(self.epsilon), weight_decay=decay)
        momentum = float(self.momentum)
        return dn.optim.SGD(model.parameters(), lr=float(self.learning_rate_init),
                            momentum=momentum,
                            nesterov=bool(self.nesterovs_momentum) and momentum > 0,
                            weight_decay=decay)

    def _fit(self, X, y_train, n_outputs, stratify):
        """Train on validated ``X`` (n, d) float64 and encoded targets ``y_train``."""
        import dualnn as dn

        hidden = self._check_params()
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        sizes = (X.shape[1],) + hidden + (n_outputs,)
        reuse = (self.warm_start and getattr(self, "model_", None) is not None
                 and getattr(self, "layer_sizes_", None) == sizes)
        X_val = y_val = None
        if self.early_stopping:
            X, X_val, y_train, y_val = train_test_split(
                X, y_train, test_size=self.validation_fraction, random_state=seed,
                stratify=stratify)
        batch = (min(200, X.shape[0]) if self.batch_size == "auto"
                 else min(int(self.batch_size), X.shape[0]))
        with dn.use_device(self.device):
            dn.seed(seed)
            if not reuse:
                self.model_ = self._build_model(sizes)
                self.layer_sizes_ = sizes
                self.optimizer_ = None
                self.loss_curve_ = []
                self.n_iter_ = 0
                self.t_ = 0
            if getattr(self, "optimizer_", None) is None:
                self.optimizer_ = self._make_optimizer(self.model_, batch)
            monitor = "val_loss" if self.early_stopping else "loss"
            stopper = dn.callbacks.EarlyStopping(
                monitor=monitor, patience=int(self.n_iter_no_change), min_delta=float(self.tol),
                restore_best_weights=bool(self.early_stopping))
            callbacks = [stopper] + ([_print_loss_callback()] if self.verbose else [])
            history = dn.fit(
                self.model_, self._loss(), self.optimizer_, X, y_train,
                epochs=int(self.max_iter), batch_size=batch, shuffle=bool(self.shuffle),
                progress=False, validation_data=None if X_val is None else (X_val, y_val),
                callbacks=callbacks)
        epochs = len(history)
        self.loss_curve_ = list(self.loss_curve_) + list(history["loss"])
        self.loss_ = float(self.loss_curve_[-1])
        self.best_loss_ = None if self.early_stopping else float(min(self.loss_curve_))
        if self.early_stopping:
            self.validation_loss_curve_ = list(history["val_loss"])
            self.best_validation_loss_ = float(np.nanmin(history["val_loss"]))
        self.n_iter_ += epochs
        self.t_ += epochs * X.shape[0]
        self.n_layers_ = len(sizes)
        self.n_outputs_ = n_outputs
        if not history.stopped_early:
            warnings.warn(f"{type(self).__name__}: stopped at max_iter={self.max_iter} epochs "
                          f"before the loss converged (tol={self.tol})", ConvergenceWarning)
        return self

    def _forward(self, X):
        """Network outputs (n, n_outputs) as float64 for validated ``X``."""
        import dualnn as dn

        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        with dn.use_device(self.device):
            return np.asarray(dn.predict(self.model_, X), dtype=np.float64)

    @property
    def coefs_(self):
        """Weight matrices as (in, out) arrays, scikit-learn's layout."""
        check_is_fitted(self, "model_")
        state = self.model_.state_dict()
        return [state[f"{i}.weight"].T for i in self._linear_indices()]

    @property
    def intercepts_(self):
        """Bias vectors (out,) of the Linear layers (zeros where a BatchNorm replaces one)."""
        check_is_fitted(self, "model_")
        state = self.model_.state_dict()
        return [state.get(f"{i}.bias", np.zeros(self.model_[i].out_features))
                for i in self._linear_indices()]

    def _linear_indices(self):
        import dualnn as dn

        return [i for i, layer in enumerate(self.model_) if isinstance(layer, dn.layers.Linear)]

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        model = state.pop("model_", None)
        state.pop("optimizer_", None)
        if model is not None:
            state["_model_state"] = model.state_dict()
        return state

    def __setstate__(self, state):
        state = dict(state)
        weights = state.pop("_model_state", None)
        super().__setstate__(state)
        if weights is not None:
            import dualnn as dn

            with dn.use_device(self.device):
                self.model_ = self._build_model(self.layer_sizes_)
                self.model_.load_state_dict(weights)
            self.optimizer_ = None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by dualnn (softmax cross-entropy).

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default (100,)
        Width of each hidden layer.
    activation : {"relu", "tanh", "logistic", "identity"}, default "relu"
    solver : {"adam", "sgd"}, default "adam"
    alpha : float, default 1e-4
        L2 penalty, applied as weight decay ``alpha / batch_size``.
    batch_size : int or "auto", default "auto"
        ``"auto"`` is ``min(200, n_samples)``.
    learning_rate_init : float, default 1e-3
    max_iter : int, default 200
        Maximum number of epochs.
    shuffle : bool, default True
    random_state : int, RandomState or None
        Seeds initialization, shuffling, dropout and the validation split; applied with
        :func:`dualnn.seed`, so fitting reseeds dualnn's global generators.
    tol : float, default 1e-4
        Training stops when the monitored loss has not improved by ``tol`` for
        ``n_iter_no_change`` epochs.
    verbose : bool, default False
        Print the loss after every epoch, as scikit-learn does.
    warm_start : bool, default False
        Continue training the fitted network (and optimizer) on the next ``fit``.
    momentum : float, default 0.9
        SGD momentum.
    nesterovs_momentum : bool, default True
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the data (stratified) and stop when its loss
        stops improving; the best epoch's weights are kept.
    validation_fraction : float, default 0.1
    beta_1, beta_2, epsilon : float
        Adam's parameters.
    n_iter_no_change : int, default 10
    device : str, default "cpu"
        dualnn device: ``"cpu"``, ``"gpu"``, ``"auto"``.
    batch_norm : bool, default False
        Add a BatchNorm after every hidden Linear (which then has no bias).
    dropout : float, default 0.0
        Dropout rate after every hidden activation.
    dtype : {"float32", "float64"}, default "float32"

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    n_features_in_ : int
    loss_curve_ : list of float
        Mean training loss of every epoch.
    n_iter_ : int
        Epochs trained (summed over warm-started fits).
    model_ : dualnn.Sequential
        The trained network (outputs are logits).
    coefs_, intercepts_ : list of ndarray
        Weights (in, out) and biases of the Linear layers.
    """

    def _loss(self):
        import dualnn as dn

        return dn.losses.SoftmaxCrossEntropy()

    def fit(self, X, y):
        """Train on ``X`` (n, features) and class labels ``y`` (n,); returns self."""
        reuse = self.warm_start and hasattr(self, "classes_")
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), reset=not reuse,
                             y_numeric=False)
        check_classification_targets(y)
        if reuse:
            unknown = np.setdiff1d(np.unique(y), self.classes_)
            if unknown.size:
                raise ValueError(f"warm_start: y holds labels {unknown.tolist()} not seen in "
                                 f"the first fit (classes {self.classes_.tolist()})")
            encoder = LabelEncoder().fit(self.classes_)
        else:
            encoder = LabelEncoder().fit(y)
            if len(encoder.classes_) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes "
                                 f"in the data, got 1 class: {encoder.classes_[0]!r}")
            self.classes_ = encoder.classes_
        codes = encoder.transform(y).astype(np.int64)
        counts = np.bincount(codes, minlength=len(self.classes_))
        stratify = codes if self.early_stopping and counts[counts > 0].min() >= 2 else None
        return self._fit(X, codes, len(self.classes_), stratify)

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        logits = self._forward(X)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        proba = e / e.sum(axis=1, keepdims=True)
        return proba

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba` (n, n_classes)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Most likely class (n,), from ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by dualnn (mean squared error).

    Same parameters as :class:`MLPClassifier`; the output layer is linear. ``y`` may be
    (n,) or (n, targets); :meth:`predict` returns the same rank.
    """

    def _loss(self):
        import dualnn as dn

        return dn.losses.MSE()

    def fit(self, X, y):
        """Train on ``X`` (n, features) and targets ``y`` (n,) or (n, targets); returns self."""
        reuse = self.warm_start and hasattr(self, "n_outputs_")
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), reset=not reuse,
                             multi_output=True, y_numeric=True)
        self._y_1d = y.ndim == 1
        targets = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        return self._fit(X, targets, targets.shape[1], None)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def predict(self, X):
        """Predictions (n,) for a 1-D ``y`` at fit time, else (n, targets)."""
        out = self._forward(X)
        return out.ravel() if self._y_1d else out
