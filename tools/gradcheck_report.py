"""Print the float64 gradient-check error of every layer and loss (figures for the notes).

Run: python tools/gradcheck_report.py
"""
import numpy as np, dualnn as dn
L = dn.layers
rng = np.random.default_rng(42)
x = rng.standard_normal((8, 5))
dn.seed(0)
rows = []
for name, layer in [("Linear", L.Linear(5, 4, dtype="float64")), ("BatchNorm(train, n=8)", L.BatchNorm(5, dtype="float64")),
                    ("Sigmoid", L.Sigmoid()), ("Tanh", L.Tanh()), ("ReLU", L.ReLU()), ("LeakyReLU", L.LeakyReLU()),
                    ("ELU", L.ELU()), ("Softmax", L.Softmax()), ("Dropout(0.3)", L.Dropout(0.3)), ("Identity", L.Identity())]:
    rows.append((name, dn.gradcheck(layer, x).max_error))
for n in (2, 3, 64):
    bn = L.BatchNorm(3, eps=1.0 if n == 2 else 1e-5, dtype="float64")
    rows.append((f"BatchNorm batch {n}", dn.gradcheck(bn, rng.standard_normal((n, 3))).max_error))
m = dn.Sequential(L.Linear(5, 6, dtype="float64"), L.Tanh(), L.Linear(6, 3, dtype="float64"))
y = rng.integers(0, 3, 8)
for lname, t in [("SoftmaxCrossEntropy", y), ("Hinge", y), ("MSE", rng.standard_normal((8, 3))), ("BinaryCrossEntropy", rng.uniform(0, 1, (8, 3)))]:
    rows.append((lname, dn.gradcheck(m, x, getattr(dn.losses, lname)(), t).max_error))
for r in rows: print(f"{r[0]:<24} {r[1]:.1e}")
