"""mpezeshki preset, one full batch of the first 2000 MNIST training images, 300 Adam steps (lr
0.03): does the joint schedule leave the log-2 plateau? Output: mpezeshki_subset.txt."""
import numpy as np, time
from ccledu import data as D, peer_presets
from ccledu.models import build_model
from ccledu.rules import get_rule
from ccledu.optim import Optimizer, ParamGroup
ds = D.load_dataset("mnist")
x = D.normalize(ds.train_x[:2000], ds.info.mean, ds.info.std, "float32").reshape(2000, -1); y = ds.train_y[:2000].astype(np.int64)
print("xmax", x.max())
m = build_model("mlp:784-500-500-10", activation="relu", bias=True, seed=0, dtype="float32")
r = get_rule("ff", **peer_presets.settings("mpezeshki", "ff")["rule_options"]).setup(m, 0)
opt = Optimizer([ParamGroup("forward", m.parameters(), lr=0.03, optimizer="adam")])
for t in range(301):
    res = r.step(m, x, y); opt.step(res.grads)
    if t % 50 == 0:
        acc = (r.class_scores(m, x[:500]).argmax(1) == y[:500]).mean()
        print(t, {k: round(float(v), 4) for k, v in res.terms.items()}, "acc", acc, flush=True)
