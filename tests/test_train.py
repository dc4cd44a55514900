"""The trainer and the command line, trained for real on the embedded MNIST."""
import json

import numpy as np
import pytest

from ccledu.cli import main
from ccledu.train import DivergenceError, TrainConfig, resolve, run


def test_resolve_layers_defaults():
    c = resolve(TrainConfig(rule="bp", model="mlp", data="mnist"))
    assert (c.batch_size, c.lr_forward, c.clip_forward, c.epochs) == (256, 1.0, 1.0, 100)
    c = resolve(TrainConfig(rule="bp", batch_size=64, lr_forward=0.1))
    assert (c.batch_size, c.lr_forward) == (64, 0.1)
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({"epoch": 3})


def test_short_run_is_repeatable_and_writes_metrics(tmp_path):
    cfg = dict(rule="bp", model="mlp:784-32-10", data="mnist", epochs=2, seed=3, limit_train=2000,
               limit_test=500, batch_size=100, lr_forward=0.5)
    a = run(TrainConfig(**cfg, out=str(tmp_path)), progress=False)
    b = run(TrainConfig(**cfg), progress=False)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    assert a["test_accuracy"] == b["test_accuracy"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= m["test_accuracy"] <= 1 and m["config"]["seed"] == 3
    assert len(m["history"]) == 2
    for key in ("train_loss", "val_loss", "val_accuracy", "train_seconds"):
        assert key in m["history"][0]
    assert m["history"][1]["train_loss"] < m["history"][0]["train_loss"]
    assert m["machine"]["cores"] >= 1 and m["machine"]["numpy"] == np.__version__


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_names_epoch_and_step():
    with pytest.raises(DivergenceError, match=r"epoch 1, step \d+.*smaller learning rate"):
        run(TrainConfig(rule="bp", model="mlp:784-64-10", data="mnist", epochs=1, limit_train=1000,
                        lr_forward=1e30, clip_forward=0.0), progress=False)


def test_cli_errors_are_one_line(capsys):
    assert main(["train", "--model", "mlp:1-2", "--data", "mnist", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ccledu: error:") and "784" in err
    assert main(["train", "--data", "svhn", "--epochs", "1", "--quiet"]) == 2
    assert "svhn" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_bp_mlp_mnist_two_epochs(tmp_path, capsys):
    """The issue's acceptance run: BP, paper MLP, 2 epochs, seed 0 -> >= 95 % test accuracy."""
    code = main(["train", "--rule", "bp", "--model", "mlp", "--data", "mnist", "--epochs", "2",
                 "--seed", "0", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["test_accuracy"] >= 0.95, m["test_accuracy"]


@pytest.mark.slow
def test_bp_cnn_learns_on_mnist_subset():
    m = run(TrainConfig(rule="bp", model="cnn:1x28x28-c8-c16-10", data="mnist", epochs=2,
                        limit_train=6000, limit_test=2000, batch_size=64, lr_forward=0.1,
                        momentum_forward=0.9, seed=0), progress=False)
    assert m["test_accuracy"] > 0.90, m["test_accuracy"]


def test_track_test_records_test_accuracy_and_selections(tmp_path):
    """--track-test records the test set every epoch; the reported test accuracy (the lowest
    validation loss's checkpoint, restored) equals that epoch's recorded value exactly."""
    from ccledu.train import selections

    code = main(["train", "--rule", "bp", "--model", "mlp:784-32-10", "--epochs", "4", "--seed", "1",
                 "--limit-train", "1500", "--limit-test", "400", "--batch-size", "50",
                 "--lr-forward", "2.0", "--track-test", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    h = m["history"]
    assert all(0 <= e["test_accuracy"] <= 1 and e["test_loss"] > 0 for e in h)
    assert len({e["test_accuracy"] for e in h}) > 1          # it is re-evaluated, not copied
    sel = m["selections"]
    assert sel["lowest_val_loss"]["epoch"] == m["best_epoch"]
    assert m["test_accuracy"] == h[m["best_epoch"] - 1]["test_accuracy"]
    va = [e["val_accuracy"] for e in h]
    assert sel["highest_val_accuracy"]["epoch"] == va.index(max(va)) + 1
    assert sel["last_epoch"] == {k: h[-1][k] for k in ("epoch", "val_loss", "val_accuracy",
                                                       "test_accuracy")}
    # without the flag: no test entries and no selections
    plain = run(TrainConfig(rule="bp", model="mlp:784-32-10", epochs=1, limit_train=500,
                            limit_test=100), progress=False)
    assert "test_accuracy" not in plain["history"][0] and "selections" not in plain
    with pytest.raises(ValueError, match="track_test"):
        selections(plain["history"])


def test_bp_cnn_on_cifar_resolves_to_the_public_bp_cnn_optimiser():
    for data in ("cifar10", "cifar100"):
        c = resolve(TrainConfig(rule="bp", model="cnn", data=data))
        assert (c.batch_size, c.lr_forward, c.momentum_forward, c.weight_decay_forward, c.clip_forward,
                c.warmup, c.cosine_tmax, c.eta_min, c.centralize) == (256, 0.03, 0.5, 1e-5, 0.0, 200,
                                                                       100, 1e-3, True)
    # everything else keeps the project protocol
    for model, data in (("mlp", "cifar10"), ("cnn", "mnist")):
        c = resolve(TrainConfig(rule="bp", model=model, data=data))
        assert (c.batch_size, c.lr_forward, c.momentum_forward, c.clip_forward) == (256, 1.0, 0.0, 1.0)


# numeric rule options carry a Range (4th OPTIONS entry): refused at parse time and by run()
RANGED_OPTIONS = [("ccl", "ssl_scale", "-0.5"), ("ccl", "flood", "1.5"), ("ff", "theta", "nan"),
                  ("ff", "alpha", "0"), ("fa", "feedback_scale", "0"), ("dtp", "stepsize", "-1"),
                  ("dtp", "feedback_iters", "-2"), ("drtp", "feedback_std", "-0.1")]


@pytest.mark.parametrize("rule,option,bad", RANGED_OPTIONS)
def test_rule_option_ranges_are_checked_at_parse_time(rule, option, bad, capsys):
    flag = "--" + option.replace("_", "-")
    code = main(["train", "--rule", rule, flag, bad, "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"argument {flag}: must be" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("rule,option,bad", RANGED_OPTIONS)
def test_rule_option_ranges_are_checked_by_run(rule, option, bad):
    with pytest.raises(ValueError, match=f"rule option {option} .*must be"):
        run(TrainConfig(rule=rule, epochs=1, limit_train=64, limit_test=32,
                        rule_options={option: float(bad)}), progress=False)


def test_every_numeric_rule_option_has_a_range():
    from ccledu.rules import RULES, rule_class
    missing = [f"{r}.{k}" for r in RULES for k, spec in rule_class(r).OPTIONS.items()
               if spec[0] in (int, float) and (len(spec) < 4 or spec[3] is None)]
    assert not missing, missing


def test_help_shows_resolved_settings_and_their_source(capsys):
    code = main(["train", "--rule", "ff", "--model", "mlp", "--epochs", "3", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert "[resolved: 3, from you]" in text                           # --epochs given
    assert "[resolved: 200, from the rule (FF preset 'cpu'" in text      # batch size
    assert "[resolved: 'sgd'" in text and "ROPT_" not in text
    assert "--theta X" in text and "a finite number" in text
    assert "(default float32)" in text and "(default numpy)" in text
    code = main(["train", "--rule", "ccl", "--model", "cnn", "--data", "cifar100", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[resolved: 128, from the rule (public CCL CNN file yaml/cnn/cifar100_ccl.yaml" in text



def test_run_header_names_sources_and_warns_of_a_long_warmup(capsys):
    run(TrainConfig(rule="ccl", model="mlp:784-8-10", epochs=1, limit_train=64, limit_test=32,
                    warmup=50, lr_forward=0.5), progress=True)
    out = capsys.readouterr().out
    assert "settings, given by you: epochs=1, lr_forward=0.5, warmup=50" in out
    assert "settings, from the rule (public CCL MLP files" in out and "lr_feedback=1.0" in out
    assert "warning: the warm-up (50 steps) is longer than the run (1 steps)" in out


def test_interrupted_atomic_write_leaves_nothing_to_complain(tmp_path, capfd):
    """A Ctrl-C inside numpy.savez (a checkpoint being written) leaves no temporary file and no
    'Exception ignored in ZipFile.__del__' on stderr (seen in the Ctrl-C subprocess test)."""
    import gc
    import zipfile

    from ccledu.train import atomic_write

    def interrupted(fh):
        z = zipfile.ZipFile(fh, "w")
        z.writestr("a.npy", b"x" * 100)
        raise KeyboardInterrupt("Ctrl-C")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "checkpoint.npz", interrupted)
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    assert "Exception ignored" not in capfd.readouterr().err
