"""Per-model cache defaults: a run that names no knob takes the model card's (``cache.defaults``, written by
``ditfarm calibrate defaults``), else its family's, else ditfarm's global one; the dry run and every results row
say which knob applied and where it came from."""

import json

import pytest

from ditfarm.cache.presets import DEFAULT_KNOBS, GIVEN_SOURCE, GLOBAL_SOURCE, build_config, choose_knob
from ditfarm.pipelines.cache_card import ModelCacheSettings
from ditfarm.pipelines.folder_checks import ModelFolderError


def settings_of(card: dict, family_knobs: dict | None = None) -> ModelCacheSettings:
    return ModelCacheSettings.from_card(card, 30, family_knobs, "toy", "/m/ditfarm_model.json")


@pytest.mark.unit
def test_the_card_overrides_the_family_which_overrides_the_global_table():
    model = settings_of(
        {"cache": {"defaults": {"bwcache": 0.3, "taylorseer": 3}, "defaults_rule": "the fastest at +10 dB"}},
        {"bwcache": 0.2, "adaptive": 0.8},
    )
    card = "/m/ditfarm_model.json cache.defaults (the fastest at +10 dB)"

    def chosen(policy, knob=None):
        choice = choose_knob(policy, knob, model)
        return choice.value, choice.source

    assert chosen("bwcache") == (0.3, card)
    assert chosen("taylorseer") == (3, card)
    assert chosen("adaptive") == (0.8, "the toy family's default")
    assert chosen("bac") == (DEFAULT_KNOBS["bac"], GLOBAL_SOURCE)
    assert chosen("bwcache", 0.05) == (0.05, GIVEN_SOURCE)
    assert choose_knob("none", None, model).value is None
    assert build_config("bwcache", None, None, model).threshold == 0.3  # what the cache runs at
    assert build_config("taylorseer", None, None, model).interval == 3
    assert "bwcache threshold 0.3 (" in choose_knob("bwcache", None, model).describe("bwcache")


@pytest.mark.unit
def test_a_bad_card_default_is_refused_naming_where_it_came_from(tmp_path):
    with pytest.raises(ValueError, match="ditfarm_model.json cache.defaults: the taylorseer knob is its interval"):
        choose_knob("taylorseer", None, settings_of({"cache": {"defaults": {"taylorseer": 2.5}}}))
    with pytest.raises(ValueError, match="must map policy names to numbers"):
        settings_of({"cache": {"defaults": {"bwcache": "fast"}}})
    from ditfarm.pipelines.family import family_named

    with pytest.raises(ModelFolderError, match="its cache section cannot be read"):
        family_named("wan").cache_settings(tmp_path, {"cache": {"defaults": ["bwcache"]}})


@pytest.mark.process
def test_results_rows_and_the_dry_run_say_which_knob_applied_and_where_from(small_wan_folder, tmp_path):
    import shutil

    import ditfarm
    from ditfarm.jobs.dry_run import dry_run
    from ditfarm.types import RenderSettings

    folder = tmp_path / "wan"
    shutil.copytree(small_wan_folder, folder)
    card = json.loads((folder / "ditfarm_model.json").read_text())
    card["cache"] = {**card.get("cache", {}), "defaults": {"bwcache": 0.3}}
    (folder / "ditfarm_model.json").write_text(json.dumps(card))
    rows = list(ditfarm.render(["a red cat"], tmp_path / "out", model=str(folder), cache="bwcache", steps=3))
    assert rows[0]["status"] == "ok", rows[0]
    assert rows[0]["cache_knob"] == 0.3
    assert rows[0]["cache_knob_source"] == f"{folder / 'ditfarm_model.json'} cache.defaults"
    given = list(
        ditfarm.render(["a blue dog"], tmp_path / "out2", model=str(folder), cache="bwcache", steps=3, cache_knob=0.1)
    )
    assert (given[0]["cache_knob"], given[0]["cache_knob_source"]) == (0.1, GIVEN_SOURCE)
    manifest = tmp_path / "m.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "prompt": ["a red cat"]}), manifest)
    report = dry_run(str(manifest), tmp_path / "dry", RenderSettings(model=str(folder), cache="bwcache"))
    assert f"  cache: bwcache threshold 0.3 ({folder / 'ditfarm_model.json'} cache.defaults)" in report.lines()


@pytest.mark.unit
def test_the_rule_picks_the_fastest_faithful_knob_else_the_most_faithful_that_skips_enough():
    from ditfarm.tools.calibrate_defaults import Measured, pick

    bar = 33.3
    knobs = [Measured(0.1, 0.9, 40.0), Measured(0.2, 0.7, 35.0), Measured(0.3, 0.6, 30.0)]
    assert pick(knobs, bar).knob == 0.2  # the fastest of the two faithful ones
    assert pick([Measured(1, 0.7, 35.0), Measured(2, 0.7, 36.0)], bar).knob == 2  # a tie: the more faithful
    unfaithful = [Measured(2, 0.5, 24.0), Measured(3, 0.33, 21.0), Measured(1, 0.8, 30.0)]
    assert pick(unfaithful, bar).knob == 2  # 0.8 computed skips too little; of the rest, the most faithful
    assert pick([Measured(0.05, 0.95, 30.0), Measured(0.08, 0.9, 31.0)], bar).knob == 0.08  # skips most


@pytest.mark.process
def test_calibrate_defaults_writes_the_chosen_knobs_into_the_card_and_runs_take_them(small_wan_folder, tmp_path):
    import shutil

    from ditfarm.commands.cli import main
    from ditfarm.pipelines.loading import load_pipeline

    folder = tmp_path / "wan"
    shutil.copytree(small_wan_folder, folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat moving left\na blue dog on the street\n")
    code = main(
        ["calibrate", "defaults", "--model", str(folder), "--prompts", str(prompts), "--steps", "6",
         "--policies", "bwcache:0.05/5,taylorseer:2/3"]
    )  # fmt: skip
    assert code == 0
    card = json.loads((folder / "ditfarm_model.json").read_text())
    section = card["cache"]
    evidence = section["defaults_evidence"]
    assert set(section["defaults"]) == {"bwcache", "taylorseer"}
    assert isinstance(section["defaults"]["taylorseer"], int)
    assert "half steps + 10 dB" in section["defaults_rule"]
    for policy, knob in section["defaults"].items():  # what the rule says of what was measured
        from ditfarm.tools.calibrate_defaults import Measured, pick

        assert pick([Measured(**m) for m in evidence[policy]], evidence["bar_db"]).knob == knob
    assert card["defaults"] == json.loads((small_wan_folder / "ditfarm_model.json").read_text())["defaults"]
    knobs = load_pipeline(folder).cache_settings.knob_defaults
    assert knobs["bwcache"] == (section["defaults"]["bwcache"], f"{folder / 'ditfarm_model.json'} cache.defaults "
                                f"({section['defaults_rule']})")  # fmt: skip
    assert main(["calibrate", "defaults", "--model", str(folder), "--policies", "nocache"]) == 2


@pytest.mark.unit
def test_tinys_card_defaults_follow_the_rule_and_each_skips():
    """tiny's shipped defaults are what the rule picks from the measurements the card keeps, and at each no policy
    computes more than 90% of its steps (or units)."""
    from ditfarm.pipelines.tiny.weights import BUNDLED_FOLDER
    from ditfarm.tools.calibrate_defaults import Measured, pick

    section = json.loads((BUNDLED_FOLDER / "ditfarm_model.json").read_text())["cache"]
    evidence = section["defaults_evidence"]
    assert set(section["defaults"]) == set(DEFAULT_KNOBS)
    for policy, knob in section["defaults"].items():
        measured = [Measured(**m) for m in evidence[policy]]
        assert pick(measured, evidence["bar_db"]).knob == knob, policy
        assert next(m for m in measured if m.knob == knob).computed <= 0.9, policy


@pytest.mark.process
def test_calibrate_defaults_chooses_the_second_experts_knob_with_the_first_held_at_its_own(
    small_wan22_a14b_folder, tmp_path
):
    """On a two-expert folder the shared knob comes first; then the low-noise expert's knobs are measured with the
    high-noise one held at the shared knob (so at the shared knob it measures what the shared run measured, and at
    another it computes between the two shared runs), and its own default is written where the rule picks
    another knob for it."""
    import shutil

    from ditfarm.commands.cli import main
    from ditfarm.pipelines.loading import load_pipeline
    from ditfarm.tools.calibrate_defaults import Measured, pick

    folder = tmp_path / "a14b"
    shutil.copytree(small_wan22_a14b_folder, folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat moving left\n")
    code = main(
        ["calibrate", "defaults", "--model", str(folder), "--prompts", str(prompts), "--steps", "30",
         "--policies", "bwcache:0/5"]
    )  # fmt: skip
    assert code == 0
    section = json.loads((folder / "ditfarm_model.json").read_text())["cache"]
    evidence = section["defaults_evidence"]
    shared = {m["knob"]: Measured(**m) for m in evidence["bwcache"]}  # 0 computes every block, 5 skips most
    own = {m["knob"]: Measured(**m) for m in evidence["expert_measurements"]["transformer_2"]["bwcache"]}
    chosen = section["defaults"]["bwcache"]
    other = 5 if chosen == 0 else 0
    assert own[chosen] == shared[chosen]
    low, high = sorted([shared[0].computed, shared[5].computed])
    assert low < own[other].computed < high, (shared, own)
    second = pick(list(own.values()), evidence["bar_db"]).knob
    expert_knobs = load_pipeline(folder).cache_settings.expert_knobs
    if second != chosen:
        assert section["experts"]["transformer_2"]["defaults"] == {"bwcache": second}
        assert expert_knobs["transformer_2"]["bwcache"][0] == second
    else:
        assert "experts" not in section and not expert_knobs


@pytest.mark.unit
def test_the_card_takes_each_experts_own_knobs_and_a_rerun_that_chooses_none_removes_them(tmp_path):
    from ditfarm.tools.calibrate_defaults import write_card

    card_path = tmp_path / "ditfarm_model.json"
    card_path.write_text(json.dumps({"cache": {"experts": {"transformer_2": {"note": "kept"}}}, "defaults": {}}))
    evidence = {"bar_db": 30.0, "prompts": ["p"], "steps": 30, "experts": {"transformer_2": {"bwcache": 0.25}}}
    write_card(card_path, {"bwcache": 0.1}, evidence)
    card = json.loads(card_path.read_text())
    assert card["cache"]["experts"]["transformer_2"] == {"note": "kept", "defaults": {"bwcache": 0.25}}
    assert settings_of(card).expert_knobs["transformer_2"]["bwcache"][0] == 0.25
    write_card(card_path, {"bwcache": 0.1}, {**evidence, "experts": {}})
    assert json.loads(card_path.read_text())["cache"]["experts"] == {"transformer_2": {"note": "kept"}}
