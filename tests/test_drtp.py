"""Direct random target projection (ccledu/rules/drtp.py)."""
import numpy as np
import pytest

from ccledu.losses import one_hot
from ccledu.models import cnn, mlp
from ccledu.rules import get_rule
from ccledu.testing import grad_rel_error, numerical_gradient


def _setup(sizes=(10, 8, 7, 4), N=6, seed=0, **opts):
    model = mlp(list(sizes), activation="tanh", seed=seed, dtype="float64")
    rule = get_rule("drtp", **opts).setup(model, seed=seed)
    g = np.random.default_rng(seed + 1)
    return model, rule, g.standard_normal((N, sizes[0])), g.integers(0, sizes[-1], N)


def test_hidden_gradients_are_gradients_of_the_local_projection_losses():
    """∇W_l = ∂/∂W_l (1/N) Σ_n ⟨sg(y_n D_lᵀ), a_l,n(W_l)⟩ for every hidden block; the classifier
    gets backprop's (cross-entropy) gradient."""
    model, rule, x, y = _setup()
    res = rule.step(model, x, y)
    N, L = x.shape[0], len(model.blocks)
    Y = one_hot(y, 4, np.float64)
    inputs = [x] + [b.out.copy() for b in model.blocks[:-1]]
    for l in range(L - 1):
        b = model.blocks[l]
        W = b.main.params["weight"]
        proj = Y @ rule.fixed[f"fixed.{l}.weight"].T / N
        a_in = inputs[l]
        num = numerical_gradient(lambda: np.sum(np.tanh(a_in @ W.T) * proj), W)
        assert grad_rel_error(res.grads[f"forward.{l}.weight"], num) < 1e-7
    bp = get_rule("bp").step(model, x, y).grads
    np.testing.assert_allclose(res.grads[f"forward.{L - 1}.weight"], bp[f"forward.{L - 1}.weight"], rtol=1e-12)


def test_hidden_updates_do_not_depend_on_the_output_error():
    """Changing the classifier (hence the output error) leaves every hidden update unchanged;
    changing the labels changes them."""
    model, rule, x, y = _setup()
    L = len(model.blocks)
    first = {k: v.copy() for k, v in rule.step(model, x, y).grads.items()}
    model.blocks[L - 1].main.params["weight"][...] *= -5.0
    second = rule.step(model, x, y).grads
    for l in range(L - 1):
        np.testing.assert_array_equal(second[f"forward.{l}.weight"], first[f"forward.{l}.weight"])
    assert not np.allclose(second[f"forward.{L - 1}.weight"], first[f"forward.{L - 1}.weight"])
    third = rule.step(model, x, (y + 1) % 4).grads
    assert not np.allclose(third["forward.0.weight"], first["forward.0.weight"])


def test_feedback_draws():
    model, rule, _, _ = _setup(sizes=(10, 400, 4))
    D = rule.fixed["fixed.0.weight"]
    assert D.shape == (400, 4) and np.abs(D).max() <= np.sqrt(6 / 400)
    assert abs(D.std() - np.sqrt(6 / 400) / np.sqrt(3)) < 0.01
    model, rule, _, _ = _setup(sizes=(10, 400, 4), feedback_std=0.1, feedback_mean=0.05)
    D = rule.fixed["fixed.0.weight"]
    assert abs(D.mean() - 0.05) < 0.01 and abs(D.std() - 0.1) < 0.01
    with pytest.raises(ValueError, match="feedback_std"):
        get_rule("drtp", feedback_std=-1)


def test_drtp_runs_on_a_cnn():
    model = cnn((1, 8, 8), (3, 4), 5, activation="tanh", dtype="float64")
    rule = get_rule("drtp").setup(model, seed=0)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8))
    res = rule.step(model, x, np.array([0, 1, 4]))
    assert set(res.grads) == {"forward.0.weight", "forward.1.weight", "forward.2.weight"}
    assert rule.fixed["fixed.1.weight"].shape == (4 * 2 * 2, 5)


def test_drtp_learns_mnist_subset():
    from ccledu.train import run
    m = run(dict(rule="drtp", model="mlp:784-256-256-10", data="mnist", epochs=2, seed=0,
                 limit_train=4000, limit_test=1000), progress=False)
    assert m["test_accuracy"] > 0.75, m["test_accuracy"]
    assert m["config"]["activation"] == "tanh" and m["config"]["batch_size"] == 100


def test_hidden_updates_are_the_public_codes_divided_by_n():
    """The public code replaces ∂L/∂a_l by Y·D (a tensor hook, no 1/N); re-expressed in PyTorch
    autograd, its hidden-layer gradients are N times ccledu's."""
    torch = pytest.importorskip("torch")
    model, rule, x, y = _setup(N=9)
    res = rule.step(model, x, y)
    N, L = x.shape[0], len(model.blocks)
    W = [torch.tensor(b.main.params["weight"], requires_grad=True) for b in model.blocks]
    Y = torch.tensor(one_hot(y, 4, np.float64))
    h = torch.tensor(x)
    for l in range(L - 1):
        h = torch.tanh(h @ W[l].T)
        D = torch.tensor(rule.fixed[f"fixed.{l}.weight"])
        h.register_hook(lambda grad, D=D: Y @ D.T)       # the code's hook: the gradient becomes Y·Dᵀ
    out = torch.sigmoid(h @ W[L - 1].T)
    torch.nn.functional.binary_cross_entropy(out, Y).backward()
    for l in range(L - 1):
        assert grad_rel_error(res.grads[f"forward.{l}.weight"] * N, W[l].grad.numpy()) < 1e-12
