"""Scorer models without processes: the --scorer map, the aggregate of a multi-model objective, and
the spec fields of models through config and store."""

from __future__ import annotations

import pytest

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.client import make_spec
from promptclimb.common.errors import ServiceError
from services.coordinator.convert import config_from_spec, spec_from_config
from services.coordinator.search import Aggregate, Score, SearchConfig, aggregate_scores
from services.coordinator.settings import CoordinatorSettings, ModelEntry, parse_scorer_entries


def test_the_scorer_map_parses_ids_targets_and_one_default() -> None:
    assert parse_scorer_entries(["a:1", "vit-b-16-openai=dns:///s.ns.svc:50051", "rn50=b:1,c:2"]) == [
        ModelEntry("", "a:1"),
        ModelEntry("vit-b-16-openai", "dns:///s.ns.svc:50051"),
        ModelEntry("rn50", "b:1,c:2"),
    ]
    for bad, why in [
        (["a:1", "b:2"], "at most one scorer target without a model id"),
        (["m=a:1", "m=b:2"], "listed twice"),
        (["Big Model=a:1"], "model id must match"),
        (["m="], "no target"),
        ([], "at least one"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_scorer_entries(bad)


def test_the_env_form_is_space_separated_and_a_flag_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTCLIMB_COORDINATOR_SCORER", "dns:///scorer:50051 rn50=dns:///rn50:50051")
    assert CoordinatorSettings().scorer_entries() == [
        ModelEntry("", "dns:///scorer:50051"),
        ModelEntry("rn50", "dns:///rn50:50051"),
    ]
    assert CoordinatorSettings(scorer=["x=h:1", "y=h:2"]).scorer_entries()[1] == ModelEntry("y", "h:2")
    monkeypatch.setenv("PROMPTCLIMB_COORDINATOR_SCORER", "a:1 b:2")
    with pytest.raises(ValueError, match="at most one"):
        CoordinatorSettings()


def test_aggregates_mean_and_min_and_a_rejection_on_any_model() -> None:
    a = Score("t {}", 0.6, 6, 10, None, 1.0)
    b = Score("t {}", 0.2, 2, 10, None, 2.0)
    mean = aggregate_scores([a, b], Aggregate.MEAN)
    assert (mean.accuracy, mean.correct, mean.total, mean.loss) == (pytest.approx(0.4), 8, 20, 1.5)
    worst = aggregate_scores([a, b], Aggregate.MIN)
    assert (worst.accuracy, worst.loss) == (0.2, 2.0)
    tie = aggregate_scores([a, Score("t {}", 0.6, 6, 10, None, 3.0)], Aggregate.MIN)
    assert tie.loss == 3.0  # on equal accuracy the worse loss is the worse score
    assert aggregate_scores([a, Score("t {}", 0.6, 6, 10, None, None)], Aggregate.MEAN).loss is None
    rejected = aggregate_scores([a, Score("t {}", error="too long for model b")], Aggregate.MEAN)
    assert rejected.error == "too long for model b"


def test_model_fields_go_through_spec_config_and_back() -> None:
    spec = make_spec(
        "pets",
        model="rn50",
        transfer_models=["vit-b-16", "vit-l-14"],
        objective_models=["vit-b-16"],
        objective_aggregate="min",
    )
    config = config_from_spec(spec)
    assert (config.model, config.transfer_models, config.objective_models) == (
        "rn50",
        ("vit-b-16", "vit-l-14"),
        ("vit-b-16",),
    )
    assert config.objective_aggregate is Aggregate.MIN
    assert config.selection_models == ("rn50", "vit-b-16")
    assert SearchConfig.from_json(config.to_json()) == config
    back = spec_from_config(config)
    assert back.objective_aggregate == pb.OBJECTIVE_AGGREGATE_MIN and list(back.transfer_models) == [
        "vit-b-16",
        "vit-l-14",
    ]
    old = config.to_json()
    for key in ("model", "transfer_models", "objective_models", "objective_aggregate"):
        old.pop(key)  # a config stored before models
    assert not SearchConfig.from_json(old).names_models


def test_bad_model_fields_are_invalid_arguments() -> None:
    with pytest.raises(ServiceError) as err:
        config_from_spec(make_spec("pets", model="No Such/Model", transfer_models=["a", "a"]))
    fields = {f for f, _ in err.value.field_violations}
    assert fields == {"spec.model", "spec.transfer_models"}
