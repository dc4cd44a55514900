"""Every rule's step (and evaluate) refuses a batch it cannot train on with a message that says what is wrong
(ccledu.rules.base.check_batch, run by the wrapper Rule.__init_subclass__ puts around each
subclass's step). Before, a label of -1 trained silently on the last class, a label of C ended
in an IndexError, float labels were taken by some rules and refused by others, and an empty
batch gave a NaN loss."""
import numpy as np
import pytest

from ccledu.models import build_model
from ccledu.rules import RULES, get_rule, rule_class
from ccledu.rules.base import Rule, StepResult, check_batch

MLP_RULES = sorted(r for r in RULES if "mlp" in rule_class(r).MODEL_KINDS)
AE_RULES = sorted(r for r in RULES if "autoencoder" in rule_class(r).MODEL_KINDS)

X = np.zeros((4, 20), np.float32)
Y = np.array([0, 1, 2, 3])

BAD = [
    ("wrong width", np.zeros((4, 21), np.float32), Y, r"x has shape \(4, 21\), but the model takes \(N, 20\)"),
    ("one example", np.zeros(20, np.float32), Y[:1], r"this is one example: x\[None\] makes it a batch of one"),
    ("images", np.zeros((4, 1, 4, 5), np.float32), Y, r"x.reshape\(len\(x\), 20\) if each row holds one example's 20 numbers"),
    ("empty", np.zeros((0, 20), np.float32), Y[:0], "the batch is empty"),
    ("integer x", np.zeros((4, 20), np.int64), Y, r"x holds int64 numbers; convert it with x.astype"),
    ("list x", [[0.0] * 20] * 4, Y, "x must be an array"),
    ("label = C", X, np.array([0, 1, 2, 4]), r"labels must lie in 0..3 .* from 0 to 4"),
    ("label -1", X, np.array([0, 1, 2, -1]), r"labels must lie in 0..3 .* from -1 to 2"),
    ("float labels", X, Y.astype(float), r"y holds float64 values; labels are integers 0..3"),
    ("one-hot labels", X, np.eye(4, dtype=np.int64), r"y has shape \(4, 4\), but x has 4 rows"),
    ("too few labels", X, Y[:3], r"y has shape \(3,\), but x has 4 rows"),
    ("no labels", X, None, "y must be an integer array of 4 labels"),
]


@pytest.fixture(scope="module")
def model():
    return build_model("mlp:20-8-4", seed=0, dtype="float64")


@pytest.mark.parametrize("rule", MLP_RULES)
def test_every_rule_refuses_a_bad_batch(rule, model):
    r = get_rule(rule)
    r.setup(model, seed=0)
    assert getattr(type(r).step, "checks_batch", False), f"{rule}: step is not wrapped"
    for what, x, y, msg in BAD:
        with pytest.raises(ValueError, match=msg):
            r.step(model, x, y)
        with pytest.raises(ValueError, match=msg):        # evaluation reads labels too
            r.evaluate(model, x, y)
    res = r.step(model, X.astype(np.float64), Y)       # a good batch still trains
    assert np.isfinite(float(res.loss)) and res.grads
    loss, correct = r.evaluate(model, X.astype(np.float64), Y)
    assert np.isfinite(float(loss)) and 0 <= int(correct) <= 4


@pytest.mark.parametrize("rule", AE_RULES)
def test_autoencoder_rules_check_x_and_ignore_y(rule):
    r = get_rule(rule)
    model = build_model("autoencoder:4-8", data="mnist", seed=0, dtype="float64",
                        **r.model_options())
    r.setup(model, seed=0)
    x = np.zeros((2,) + model.input_shape)
    with pytest.raises(ValueError, match="but the model takes"):
        r.step(model, x[:, :, :-1], None)
    assert np.isfinite(float(r.step(model, x, None).loss))


def test_a_new_rule_is_checked_without_calling_anything():
    """A researcher's rule written against the base class gets the check too."""
    calls = []

    class Mine(Rule):
        name = "mine"

        def step(self, model, x, y):
            """my step"""
            calls.append(len(y))
            return StepResult(loss=0.0, grads={})

    m = build_model("mlp:20-8-4", seed=0)
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        Mine().step(m, X, np.array([0, 1, 2, 9]))
    assert calls == []                                   # refused before the rule's code ran
    Mine().step(m, X, Y)
    assert calls == [4] and Mine.step.__doc__ == "my step"


def test_unsigned_labels_and_other_float_dtypes_accepted(model):
    check_batch(model, X.astype(np.float16), Y.astype(np.uint8))
    check_batch(model, X, Y.astype(np.int32))
