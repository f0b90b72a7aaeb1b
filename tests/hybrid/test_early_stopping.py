"""EarlyStopping: the best value is kept; stop after `patience` epochs without a gain > min_delta."""

from jaxthink.hybrid.early_stopping import EarlyStopping


def test_keeps_the_best_and_stops_after_patience_epochs_without_gain():
    stop = EarlyStopping(patience=2, min_delta=0.1, best="initial")
    assert [
        stop.update(e, loss, f"v{e}") for e, loss in enumerate([1.0, 0.95, 0.5, 0.45, 0.42])
    ] == [
        False,
        False,
        False,
        False,
        True,
    ]
    assert (stop.best, stop.best_loss, stop.best_epoch) == ("v2", 0.5, 2)


def test_without_an_improvement_the_initial_value_stays():
    stop = EarlyStopping(patience=1, best="initial")
    assert stop.update(0, float("nan"), "v0") and stop.best == "initial" and stop.best_epoch == -1
