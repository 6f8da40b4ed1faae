"""The ``dualnn`` command: train, evaluate, predict, export, info.

``dualnn train`` with no options trains a 64-128-128-10 network (BatchNorm + ReLU, Adam)
on scikit-learn's bundled handwritten digits for 30 epochs, prints the test accuracy and
the time, and saves a checkpoint (``./dualnn-digits.npz``). ``--data`` takes a bundled
dataset's name or a data file (``.npz``, ``.npy`` pair, ``.csv``: see
:func:`dualnn.data.files.load_data_file`); ``--standardize`` statistics are saved in the
checkpoint and ``dualnn predict`` applies them. ``dualnn export`` writes a checkpoint as
ONNX. ``dualnn train --workers N``
trains data-parallel on N MPI processes (see the "Training on several workers" page).

Errors print one line, ``dualnn: error: ...``, on stderr and exit with status 2 (usage)
or 1 (runtime); ``--debug`` shows the traceback instead.

Why one long module: it is the single place that maps the command line onto the public
API — the argument parser and one small handler per subcommand side by side, so a flag and
what it does are read together. The handlers only plumb arguments; the work lives in the
library (data files in :mod:`dualnn.data.files`, workers in :mod:`dualnn.distributed`,
benchmarks in :mod:`dualnn.benchmarks`).
"""

# Only the standard library before the thread policy: it must be set before NumPy loads.
import os
import sys

from dualnn._threads import apply_thread_policy_env

apply_thread_policy_env()

import argparse
import platform
import time

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line mistake: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``dualnn: error: ...`` and exit status 2."""

    def error(self, message):
        raise UsageError(message)


def _layer_sizes(text):
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"invalid layer sizes {text!r}: give sizes like '128,128'")
    sizes = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(
                f"invalid layer sizes {text!r}: {part!r} is not a positive integer "
                "(expected comma-separated sizes like '128,128')")
        sizes.append(int(part))
    return sizes


def _probability(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid dropout {text!r}: not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"invalid dropout {text!r}: must be in [0, 1)")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _test_split(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid test split {text!r}: not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"invalid test split {text!r}: must be in [0, 1)")
    return value


def _label(text):
    return int(text) if text.lstrip("-").isdigit() else text


DATA_FILE_SUFFIXES = (".npz", ".npy", ".csv")


def is_data_file(name):
    """True when ``--data`` names a file (or ``.npy`` pair prefix) rather than a dataset."""
    from dualnn.datasets import NAMES

    if name in NAMES:
        return False
    return (name.lower().endswith(DATA_FILE_SUFFIXES) or os.sep in name or "/" in name
            or os.path.exists(name) or os.path.exists(name + "X.npy"))


def _data_choice(text):
    from dualnn.datasets import NAMES

    if text in NAMES or is_data_file(text):
        return text
    raise argparse.ArgumentTypeError(
        f"unknown dataset {text!r}: expected one of {', '.join(NAMES)} or a data file "
        f"({', '.join(DATA_FILE_SUFFIXES)}, or the prefix of an X.npy/y.npy pair)")


def build_parser():
    from dualnn.datasets import NAMES

    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback on errors")
    parser = _Parser(prog="dualnn", parents=[debug],
                     description="Feed-forward neural networks on NumPy (CPU) or CuPy (GPU).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    data_help = (f"dataset: {', '.join(NAMES)} (default digits), or a data file: .npz (X, y), "
                 ".npy pair (X.npy beside y.npy) or .csv (label in the last column)")
    train = sub.add_parser("train", parents=[debug], help="train a network on a dataset",
                           description="Train a fully connected network and save a checkpoint.")
    train.add_argument("--data", default="digits", type=_data_choice, metavar="NAME|PATH",
                       help=data_help)
    train.add_argument("--data-dir", help="directory holding the MNIST/Fashion-MNIST files")
    _file_options(train)
    train.add_argument("--hidden", type=_layer_sizes, default=[128, 128], metavar="SIZES",
                       help="hidden layer sizes, comma-separated (default 128,128)")
    train.add_argument("--activation", default="relu",
                       help="hidden activation: relu, leaky_relu, elu, tanh, sigmoid "
                            "(default relu)")
    train.add_argument("--batch-norm", dest="batch_norm", action="store_true", default=True,
                       help="BatchNorm after each hidden Linear (default)")
    train.add_argument("--no-batch-norm", dest="batch_norm", action="store_false")
    train.add_argument("--dropout", type=_probability, default=0.0, metavar="P",
                       help="dropout probability after each hidden activation (default 0)")
    train.add_argument("--optimizer", default="adam",
                       help="sgd, adam, adamw, rmsprop, adagrad, adadelta (default adam)")
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: the optimizer's, e.g. 1e-3 for Adam)")
    train.add_argument("--epochs", type=_positive_int, default=30, help="default 30")
    train.add_argument("--batch-size", type=_positive_int, default=64, help="default 64")
    train.add_argument("--device", default="cpu", help="cpu, gpu, gpu:N or auto (default cpu)")
    train.add_argument("--output", default=None, metavar="CKPT",
                       help="checkpoint path (default ./dualnn-<data>.npz)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--plot", metavar="PNG",
                       help="save the training curves (loss, accuracy per epoch) to this image "
                            "(.png, .svg, .pdf); needs matplotlib")
    train.add_argument("--workers", type=int, default=1, metavar="N",
                       help="train data-parallel on N processes (MPI; --batch-size is per "
                            "worker; needs mpi4py: pip install -e \".[mpi]\"); default 1")

    evaluate = sub.add_parser("evaluate", parents=[debug],
                              help="evaluate a checkpoint on a dataset's test split")
    evaluate.add_argument("checkpoint", metavar="CKPT")
    evaluate.add_argument("--data", default="digits", type=_data_choice, metavar="NAME|PATH",
                          help=data_help + "; a file is split as in training (give the same "
                          "--test-split) and standardized with the checkpoint's "
                          "statistics")
    evaluate.add_argument("--data-dir")
    _file_options(evaluate, standardize=False)
    evaluate.add_argument("--device", default="cpu")

    predict = sub.add_parser(
        "predict", parents=[debug], help="run a checkpoint on the rows of a .npy/.csv file",
        description="Run a checkpoint on a 2-D .npy or .csv file of feature rows (features "
                    "only, no label column). When the checkpoint was trained with "
                    "--standardize, the rows are standardized with its saved training "
                    "statistics first; otherwise they must be preprocessed as in training. "
                    "Prints the predicted class of each row (its name for text CSV labels), "
                    "or writes the raw outputs with --output.")
    predict.add_argument("checkpoint", metavar="CKPT")
    predict.add_argument("file", metavar="FILE")
    predict.add_argument("--output", help="write the model's outputs to this .npy or .csv")
    predict.add_argument("--device", default="cpu")

    export = sub.add_parser(
        "export", parents=[debug], help="write a checkpoint's model as an ONNX file",
        description="Rebuild the model of a checkpoint and write it as ONNX (inference, eval "
                    "mode; needs the onnx package). The file is written atomically: a failed "
                    "export leaves no partial file. Standardization saved with --standardize "
                    "is not part of the graph: apply it to the inputs.")
    export.add_argument("checkpoint", metavar="CKPT")
    export.add_argument("output", metavar="ONNX")
    export.add_argument("--opset", type=_positive_int, default=17,
                        help="ONNX opset, >= 13 (default 17)")

    sub.add_parser("info", parents=[debug],
                   help="versions, devices, BLAS, kernels and thread policy")
    sub.add_parser("bench", add_help=False,
                   help="time a training step side by side with PyTorch (dualnn bench --help); "
                        "with --large-batch, run the large-batch experiment "
                        "(dualnn bench --large-batch --help)")
    return parser


def _file_options(parser, standardize=True):
    """``--label``, ``--test-split`` (and ``--standardize``) for ``--data FILE``."""
    parser.add_argument("--label", type=_label, metavar="NAME",
                        help="--data CSV: the label column's header name or 0-based index "
                             "(default the last column)")
    parser.add_argument("--test-split", type=_test_split, default=None, metavar="F",
                        help="--data file: fraction of rows held out for testing (default 0.2; "
                             "ignored when the file has X_test/y_test)")
    if standardize:
        parser.add_argument("--standardize", action="store_true",
                            help="--data file: scale features to mean 0, std 1 with the "
                                 "training rows' statistics (saved in the checkpoint and "
                                 "applied by dualnn predict)")


# ---------------------------------------------------------------------------------- commands

def _set_device(device):
    import dualnn as dn
    return dn.set_device(device)


def build_model(n_in, n_out, hidden, activation="relu", batch_norm=True, dropout=0.0):
    """The CLI's network: ``[Linear -> (BatchNorm) -> act -> (Dropout)] * len(hidden) -> Linear``."""
    import dualnn as dn

    layers = []
    width = n_in
    init = "he" if activation in ("relu", "leaky_relu", "elu") else "xavier"
    for size in hidden:
        layers.append(dn.layers.Linear(width, size, init=init))
        if batch_norm:
            layers.append(dn.layers.BatchNorm(size))
        layers.append(dn.layers.activation(activation))
        if dropout:
            layers.append(dn.layers.Dropout(dropout))
        width = size
    layers.append(dn.layers.Linear(width, n_out))
    return dn.Sequential(*layers)


# Checkpoint ``extra`` arrays written by ``dualnn train`` and read by evaluate/predict.
EXTRA_MEAN, EXTRA_STD, EXTRA_CLASSES = "standardize_mean", "standardize_std", "classes"


def load_training_data(args, standardize=False):
    """The ``--data`` of ``args``: a bundled dataset or a data file, as a namespace with
    ``name, X_train, y_train, X_test, y_test, n_features, n_classes, mean, std, classes``
    (``X_test`` None without a test split; ``mean``/``std`` None unless standardized)."""
    from types import SimpleNamespace

    import dualnn as dn

    if not is_data_file(args.data):
        given = [flag for flag, value in (("--label", args.label),
                                          ("--test-split", args.test_split),
                                          ("--standardize", standardize)) if value]
        if given:
            note = " (already standardized)" if standardize else ""
            raise UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                             f"--data files; {args.data!r} is a bundled dataset{note}")
        ds = dn.datasets.load(args.data, args.data_dir, seed=0)
        return SimpleNamespace(name=ds.name, X_train=ds.X_train, y_train=ds.y_train,
                               X_test=ds.X_test, y_test=ds.y_test, n_features=ds.n_features,
                               n_classes=ds.n_classes, mean=None, std=None, classes=None)
    from dualnn.data.files import load_data_file

    split = 0.2 if args.test_split is None else args.test_split
    data = load_data_file(args.data, label=args.label, test_split=split,
                          standardize=standardize, seed=0)
    n_classes = _class_count(data)
    stem = os.path.basename(os.path.normpath(data.path))
    name = os.path.splitext(stem)[0]
    if stem.endswith(("X.npy", "y.npy")):  # train_X.npy -> train
        name = name[:-1]
    name = name.rstrip("_-.") or "data"
    return SimpleNamespace(name=name, X_train=data.X_train, y_train=data.y_train,
                           X_test=data.X_test, y_test=data.y_test,
                           n_features=data.X_train.shape[1], n_classes=n_classes,
                           mean=data.mean, std=data.std, classes=data.classes)


def _class_count(data):
    """Number of classes of a data file's integer labels (the CLI trains classifiers)."""
    from dualnn.errors import DataFileFormatError

    labels = [y for y in (data.y_train, data.y_test) if y is not None]
    if any(y.ndim != 1 or y.dtype.kind not in "iu" for y in labels):
        y = data.y_train
        raise DataFileFormatError(
            f"{data.path}: dualnn train needs one integer class label per row, got y of shape "
            f"{y.shape} and dtype {y.dtype} (for regression or one-hot targets use the Python "
            "API: dn.fit with an MSE loss)")
    if data.classes:
        return len(data.classes)
    low = min(int(y.min()) for y in labels)
    if low < 0:
        raise DataFileFormatError(f"{data.path}: class labels must be >= 0, got {low}")
    return max(int(y.max()) for y in labels) + 1


def _check_plot_target(path):
    """Fail before training, not after, when ``--plot`` cannot be written."""
    from dualnn.errors import ConfigurationError

    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigurationError("--plot needs matplotlib: pip install 'dualnn[plot]'") \
            from None
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if suffix not in formats:
        raise ConfigurationError(f"--plot {path!r}: unknown image format {suffix!r}; use one "
                                 f"of {', '.join('.' + f for f in sorted(formats))}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigurationError(f"--plot {path!r}: directory {folder!r} does not exist")


def _checkpoint_extra(dataset):
    import numpy as np

    extra = {}
    if dataset.mean is not None:
        extra[EXTRA_MEAN], extra[EXTRA_STD] = dataset.mean, dataset.std
    if dataset.classes:
        extra[EXTRA_CLASSES] = np.array(dataset.classes, dtype=str)
    return extra


ENV_CLI_WORKER = "DUALNN_CLI_WORKER"
"""Set in the processes ``dualnn train --workers N`` starts: they train, not launch."""


def _launch_workers(args):
    """Run this ``dualnn train`` command again on ``args.workers`` MPI ranks."""
    from dualnn.distributed import _mpi, launch

    if not _mpi.mpi4py_available() or _mpi.find_mpiexec() is None:
        from dualnn.distributed.errors import MPIUnavailableError

        missing = "mpi4py" if not _mpi.mpi4py_available() else "mpiexec"
        raise MPIUnavailableError(
            f"--workers {args.workers} needs mpi4py and mpiexec, and {missing} is not "
            f"installed. Install the MPI extra: {_mpi.INSTALL_HINT}")
    threads = str(max(1, (os.cpu_count() or 1) // args.workers))
    env = {ENV_CLI_WORKER: "1"}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[name] = os.environ.get(name, threads)
    return launch.run_streaming(["-m", "dualnn.cli", *args.argv], args.workers, env=env)


def cmd_train(args, out):
    import dualnn as dn

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1 (processes to train on), got {args.workers}")
    if args.workers > 1 and os.environ.get(ENV_CLI_WORKER) != "1":
        return _launch_workers(args)
    rank = 0
    if args.workers > 1:  # init gives each worker its device: gpu:<local rank> on GPUs
        wanted = args.device.strip().lower()
        wanted = "gpu" if wanted.startswith("gpu") else (None if wanted == "auto" else wanted)
        rank, _, _ = dn.distributed.init(device=wanted)
        device = dn.get_device()
        if rank != 0:  # one result: rank 0 reports, the others only train
            out = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    else:
        device = _set_device(args.device)
    if args.plot:
        _check_plot_target(args.plot)
    dataset = load_training_data(args, standardize=args.standardize)
    dn.seed(args.seed)
    model = build_model(dataset.n_features, dataset.n_classes, args.hidden, args.activation,
                        args.batch_norm, args.dropout)
    options = {} if args.lr is None else {"lr": args.lr}
    optimizer = dn.optim.get(args.optimizer)(model.parameters(), **options)
    loss_fn = dn.losses.SoftmaxCrossEntropy()
    sizes = "-".join(str(s) for s in [dataset.n_features, *args.hidden, dataset.n_classes])
    print(f"dualnn: training {sizes} ({args.activation}"
          f"{', batch norm' if args.batch_norm else ''}"
          f"{f', dropout {args.dropout}' if args.dropout else ''}) with "
          f"{type(optimizer).__name__} lr={optimizer.lr:g} on {dataset.name} "
          f"({len(dataset.X_train)} train / "
          f"{0 if dataset.X_test is None else len(dataset.X_test)} test) for {args.epochs} "
          f"epochs, batch {args.batch_size}"
          f"{f' per worker x {args.workers} workers' if args.workers > 1 else ''}, "
          f"device {device}", file=out)
    started = time.perf_counter()
    # With --plot the test split is also scored each epoch, to draw it beside training.
    validation = ((dataset.X_test, dataset.y_test)
                  if args.plot and dataset.X_test is not None else None)
    history = dn.fit(model, loss_fn, optimizer, dataset.X_train, dataset.y_train,
                     epochs=args.epochs, batch_size=args.batch_size,
                     progress=not args.no_progress, validation_data=validation)
    elapsed = time.perf_counter() - started
    path = args.output or f"dualnn-{dataset.name}.npz"
    extra = _checkpoint_extra(dataset)
    if history.stopped is not None:  # Ctrl-C: fit stopped at a completed step
        if rank == 0:
            dn.save(path, model, optimizer, extra=extra)
        print(f"interrupted after step {history.stopped['step']} of epoch "
              f"{history.stopped['epoch']} ({len(history)} epoch(s) completed); saved "
              f"checkpoint to {os.path.abspath(path)}", file=out)
        _save_plot(args, history, out)
        return 130
    if rank == 0:
        dn.save(path, model, optimizer, extra=extra)
    print(f"train loss {history['loss'][-1]:.4f}, train accuracy "
          f"{100 * history['accuracy'][-1]:.2f}%", file=out)
    timing = (f"trained in {elapsed:.2f} s "
              f"({sum(history['samples_per_sec']) / len(history):.0f} samples/s)")
    if dataset.X_test is None:
        print(f"no test set (--test-split 0); {timing}", file=out)
    else:
        scores = dn.evaluate(model, loss_fn, dataset.X_test, dataset.y_test)
        print(f"test accuracy {100 * scores['accuracy']:.2f}% (test loss "
              f"{scores['loss']:.4f}); {timing}", file=out)
    print(f"saved checkpoint to {os.path.abspath(path)}", file=out)
    _save_plot(args, history, out)
    return 0


def _save_plot(args, history, out):
    if args.plot and len(history):
        history.plot(args.plot)
        print(f"saved training curves to {os.path.abspath(args.plot)}", file=out)


def cmd_evaluate(args, out):
    import dualnn as dn

    _set_device(args.device)
    checkpoint = dn.load(args.checkpoint)
    dataset = load_training_data(args)
    if dataset.X_test is None:
        raise UsageError(f"{args.data!r} has no test rows to evaluate on: give --test-split "
                         "as in training (default 0.2)")
    X_test = _standardize_like_training(checkpoint, dataset.X_test, args.data)
    scores = dn.evaluate(checkpoint.model, dn.losses.SoftmaxCrossEntropy(), X_test,
                         dataset.y_test)
    line = f"{dataset.name} test: loss {scores['loss']:.4f}"
    if "accuracy" in scores:
        line += f", accuracy {100 * scores['accuracy']:.2f}%"
    print(f"{line} ({len(dataset.X_test)} samples, checkpoint epoch {checkpoint.epoch})",
          file=out)
    return 0


def _read_rows(path):
    import numpy as np

    from dualnn.errors import DataFileError, DataFileNotFoundError

    if not os.path.isfile(path):
        raise DataFileNotFoundError(f"no such file {path!r}")
    if path.lower().endswith(".npy"):
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataFileError(f"cannot read {path!r} as .npy ({exc})") from None
    if path.lower().endswith(".csv"):
        for skip in (0, 1):
            try:
                return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip)
            except ValueError as exc:
                error = exc
        raise DataFileError(f"cannot read {path!r} as numeric CSV ({error})")
    raise DataFileError(f"{path!r}: expected a .npy or .csv file")


def cmd_predict(args, out):
    import numpy as np

    import dualnn as dn

    _set_device(args.device)
    checkpoint = dn.load(args.checkpoint)
    rows = _standardize_like_training(checkpoint, _read_rows(args.file), args.file)
    outputs = dn.predict(checkpoint.model, rows)
    if args.output:
        if args.output.lower().endswith(".csv"):
            np.savetxt(args.output, outputs.reshape(len(outputs), -1), delimiter=",")
        else:
            np.save(args.output, outputs)
        print(f"wrote outputs of shape {outputs.shape} to {os.path.abspath(args.output)}",
              file=out)
        return 0
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        values = outputs.argmax(axis=1)
        names = checkpoint.extra.get(EXTRA_CLASSES)
        if names is not None and len(names) == outputs.shape[1]:
            values = names[values]
    else:
        values = outputs.reshape(len(outputs), -1)[:, 0]
    out.write("\n".join(str(v) for v in values.tolist()) + "\n")
    return 0


def _standardize_like_training(checkpoint, X, source):
    """``X`` scaled with the training statistics saved by ``dualnn train --standardize``."""
    from dualnn.data.files import apply_standardization
    from dualnn.errors import ShapeError

    mean = checkpoint.extra.get(EXTRA_MEAN)
    if mean is None:
        return X
    if len(X.shape) != 2 or X.shape[1] != mean.shape[0]:
        raise ShapeError(f"{source}: rows of shape {tuple(X.shape)} have "
                         f"{X.shape[-1] if len(X.shape) else 0} features, the checkpoint's "
                         f"model was trained on {mean.shape[0]} features")
    return apply_standardization(X, mean, checkpoint.extra[EXTRA_STD])


def cmd_export(args, out):
    import dualnn as dn

    _set_device("cpu")
    checkpoint = dn.load(args.checkpoint)
    path = dn.export_onnx(checkpoint.model, args.output, opset=args.opset)
    note = (" (inputs must be standardized with the checkpoint's saved statistics)"
            if EXTRA_MEAN in checkpoint.extra else "")
    print(f"wrote ONNX (opset {args.opset}) of the checkpoint's model to "
          f"{os.path.abspath(path)}{note}", file=out)
    return 0


def _version_of(module_name):
    try:
        module = __import__(module_name)
    except Exception as exc:  # not installed, or broken
        return f"not available ({type(exc).__name__})"
    return getattr(module, "__version__", "unknown")


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        import numpy  # noqa: F401  (load BLAS so threadpoolctl sees it)
        lines = []
        for lib in threadpool_info():
            lines.append(f"{lib.get('internal_api')} {lib.get('version')} "
                         f"({lib.get('user_api')}, {lib.get('num_threads')} threads, "
                         f"{lib.get('threading_layer', 'n/a')} threading) "
                         f"{lib.get('filepath')}")
        return lines or ["none found by threadpoolctl"]
    import numpy as np
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return [f"{blas.get('name')} {blas.get('version')} (install threadpoolctl for threads)"]
    except Exception:
        return ["unknown (install threadpoolctl)"]


def _cuda_kernels_status():
    try:
        from numba import cuda
    except Exception as exc:
        return f"no (numba.cuda not importable: {type(exc).__name__})"
    try:
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            return "simulator only (NUMBA_ENABLE_CUDASIM=1)"
        return "yes" if cuda.is_available() else "no (no CUDA driver or device)"
    except Exception as exc:
        return f"no ({type(exc).__name__}: {exc})"


def _gpu_kernel_rows():
    """The GPU backend's compiled-kernel cache and TF32 setting (when a GPU is in use)."""
    import dualnn as dn

    try:
        gpu = dn.device.backend_for("gpu") if "gpu:0" in dn.available_devices() else None
    except Exception:  # noqa: BLE001 - a diagnostic only
        gpu = None
    if gpu is None or not hasattr(gpu, "kernel_cache"):
        return [("cuda kernel cache", "no GPU in use"), ("tf32 for float32 GEMMs", "n/a")]
    cache = gpu.kernel_cache()
    shown = ", ".join(f"{dtype}: {n}" for dtype, n in sorted(cache.items())) or "empty"
    return [("cuda kernel cache", f"{sum(cache.values())} compiled ({shown}); kernels of a "
                                  "dtype compile when a model of it moves to the GPU"),
            ("tf32 for float32 GEMMs", "on" if gpu.tf32 else "off (CupyBackend(tf32=True))")]


def _float_gemm_status():
    """Which library runs the NumPy backend's float GEMMs (loads oneMKL when present)."""
    from dualnn.backend import mkl_gemm
    from dualnn.benchmarks.compare import gemm_library

    text = gemm_library()
    if text.startswith("oneMKL"):
        text += f" for 2-D products of m*n*k >= {mkl_gemm.MIN_WORK}, NumPy's BLAS below"
    return text


def _bf16_gemm_status():
    """Whether mixed_bfloat16 on the CPU runs bfloat16 GEMMs, and why not (loads the
    library)."""
    from dualnn.backend import bf16_gemm

    state = bf16_gemm.info()
    if state["reason"]:
        return f"no: {state['reason']} (mixed_bfloat16 is emulated in float32)"
    return (f"yes: {bf16_gemm.LIBRARY_NAMES[state['name']]} {state['library']}, "
            f"{state['layer']} threading, {state['threads']} threads")


def cmd_info(args, out):
    import dualnn as dn
    from dualnn._threads import thread_policy_report

    rows = [
        ("dualnn", dn.__version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("numpy", _version_of("numpy")),
        ("numba", _version_of("numba")),
        ("cupy", _version_of("cupy")),
        ("devices", ", ".join(dn.available_devices())),
        ("cuda kernels usable", _cuda_kernels_status()),
    ]
    rows.extend(_gpu_kernel_rows())
    try:
        from dualnn.kernels import cpu as cpu_kernels
        cache_dir = getattr(cpu_kernels, "cache_dir", None)
        rows.append(("numba kernel cache", cache_dir() if callable(cache_dir) else "unknown"))
    except Exception as exc:
        rows.append(("numba kernel cache", f"unavailable ({type(exc).__name__})"))
    from dualnn.backend.allocation import huge_page_status

    rows.append(("huge pages for large arrays", huge_page_status()))
    for index, line in enumerate(_blas_info()):
        rows.append(("blas" if index == 0 else "", line))
    for key, value in thread_policy_report().items():
        rows.append((f"thread policy {key}", value))
    rows.append(("float GEMMs (cpu)", _float_gemm_status()))
    rows.append(("bfloat16 GEMM (cpu)", _bf16_gemm_status()))
    for key, value in dn.distributed.describe().items():  # never starts MPI
        rows.append((f"distributed {key}", value))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    return 0


def _bench_import_orders(argv):
    """``dualnn bench --import-orders``: the thread policy's timings per import order."""
    parser = argparse.ArgumentParser(
        prog="dualnn bench --import-orders",
        description="Time the digits fit and the MLP step (against PyTorch) with dualnn "
                    "imported first, after NumPy, after NumPy + scikit-learn and after NumPy "
                    "+ PyTorch, each row in a fresh process, alternated and repeated.")
    parser.add_argument("--import-orders", action="store_true", required=True)
    parser.add_argument("--repeats", type=_positive_int, default=3, help="default 3")
    parser.add_argument("--epochs", type=_positive_int, default=30,
                        help="digits fit epochs (default 30)")
    parser.add_argument("--steps", type=_positive_int, default=10,
                        help="timed MLP steps per round (default 10)")
    parser.add_argument("--alternatives", action="store_true",
                        help="also time the policies dualnn chose among")
    parser.add_argument("--only", choices=["digits", "step"],
                        help="only the digits-fit rows or only the MLP-step rows")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    from dualnn.benchmarks import import_orders

    return import_orders.main(parser.parse_args(argv))


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "export": cmd_export, "info": cmd_info}


# ---------------------------------------------------------------------------------- main

def _one_line(text):
    return " ".join(str(text).split())


def large_batch_parser():
    """The options of ``dualnn bench --large-batch``."""
    parser = _Parser(prog="dualnn bench",
                     description="Train batch 256 vs 8192 (SGD without and with linear "
                                 "scaling + warmup, LAMB, LARS) for the same epochs on a "
                                 "synthetic task; print the table, optionally save the plot.")
    parser.add_argument("--large-batch", action="store_true", required=True,
                        help="run the large-batch experiment")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="epochs of every run (default 30; 2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a miniature run in seconds: 2048 training rows, batches 128 "
                             "and 1024")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="save test accuracy per epoch of every run to PATH (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-batch-norm", action="store_true",
                        help="train the student without batch norm (the experiment's "
                             "first design)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def cmd_bench_large_batch(argv, out):
    """``dualnn bench --large-batch``: :mod:`dualnn.experiments.large_batch`, table + plot."""
    try:
        args = large_batch_parser().parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    from dualnn.experiments import large_batch as lb

    if args.quick:
        task = lb.make_task(n_train=2048, n_test=512, seed=args.seed)
        configs = lb.default_configs(base_batch=128, large_batch=1024)
        epochs = args.epochs or 2
    else:
        task, configs, epochs = None, None, args.epochs or 30
    start = time.perf_counter()
    results = lb.run_experiment(epochs=epochs, configs=configs, task=task,
                                plot_path=args.plot, seed=args.seed,
                                batch_norm=not args.no_batch_norm, verbose=False)
    print(lb.format_table(results), file=out)
    print(f"total: {time.perf_counter() - start:.0f} s for {len(results)} runs of {epochs} "
          f"epochs (seed {args.seed})", file=out)
    if args.plot:
        print(f"plot saved to {args.plot}", file=out)
    return 0


def _fail(message, code, err):
    print(f"dualnn: error: {_one_line(message)}", file=err)
    return code


def main(argv=None):
    """Run the ``dualnn`` command; returns the exit status (0, 1 runtime, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    out, err = sys.stdout, sys.stderr
    if argv[:1] == ["bench"] and "--import-orders" in argv:
        return _bench_import_orders(argv[1:])
    if argv[:1] == ["bench"] and any(a == "--workers" or a.startswith("--workers=")
                                     for a in argv):
        from dualnn.benchmarks.distributed import main as distributed_bench_main
        distributed_bench_main(argv[1:])
        return 0
    if argv[:1] == ["bench"] and any(a == "--precision" or a.startswith("--precision=")
                                     for a in argv):
        from dualnn.benchmarks.bf16 import main as bf16_bench_main
        return bf16_bench_main(argv[1:])
    large_batch = argv[:1] == ["bench"] and "--large-batch" in argv
    if argv[:1] == ["bench"] and not large_batch:
        # its own option parser, shared with python -m dualnn.bench
        from dualnn.benchmarks import main as bench_main
        return bench_main(argv[1:], prog="dualnn bench")
    try:
        if large_batch:
            return cmd_bench_large_batch(argv[1:], out)
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        if args.version:
            from dualnn import __version__
            print(f"dualnn {__version__}", file=out)
            return 0
        if not args.command:
            raise UsageError("a command is required: train, evaluate, predict, export or "
                             "info")
        args.argv = argv
        return COMMANDS[args.command](args, out)
    except UsageError as exc:
        if debug:
            raise
        return _fail(f"{exc} (see dualnn --help)", EXIT_USAGE, err)
    except KeyboardInterrupt:
        if debug:
            raise
        return _fail("interrupted", 130, err)
    except Exception as exc:
        if debug:
            raise
        from dualnn.errors import DualnnError
        if isinstance(exc, (DualnnError, OSError)):
            return _fail(str(exc), EXIT_RUNTIME, err)
        if isinstance(exc, ImportError):  # an optional extra (onnx, matplotlib) is missing
            return _fail(str(exc), EXIT_RUNTIME, err)
        return _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the "
                     "traceback)", EXIT_RUNTIME, err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
