"""The loop's automation conditions (defs/automation/conditions.py) on a toy graph shaped like the re-selection path:
a watched file -> pool -> rates -> scores -> subset, with a direct pool -> subset edge (selected_subset's edge from
raw_problems), and a gated `trained` below the subset. Evaluated with `dg.evaluate_automation_conditions` at
chosen times, the cursor carried from tick to tick as the automation sensor carries it."""

import datetime

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus

from learnalign_pipeline.defs.automation.conditions import (
    WINDOW_ASSET,
    _window_crons,
    gated,
    loop_busy,
    reselect,
    training_window_hours,
)

AC = dg.AutomationCondition
LOOP = ["pool", "rates", "scores", "subset", "trained"]
BUSY = loop_busy(LOOP)
HOURS = (2, 6)
STATE = {"pool": ["a", "b", "c"], "fail": False}


@dg.observable_source_asset  # observed by the tests, not on a cron
def pool_file():
    return dg.DataVersion(",".join(STATE["pool"]))


@dg.observable_source_asset(name=WINDOW_ASSET)
def training_window():
    return dg.DataVersion(str(datetime.datetime.now().timestamp()))


@dg.asset(deps=[pool_file], code_version="1", automation_condition=reselect(BUSY))
def pool():
    return list(STATE["pool"])


@dg.asset(code_version="1", automation_condition=reselect(BUSY))
def rates(pool):
    if STATE["fail"]:
        raise RuntimeError("rates failed on purpose")
    return {p: len(p) / 3 for p in pool}


@dg.asset(code_version="1", automation_condition=reselect(BUSY))
def scores(rates):
    return {p: r * (1 - r) for p, r in rates.items()}


@dg.asset(code_version="1", automation_condition=reselect(BUSY))
def subset(pool, scores):
    return sorted(pool, key=lambda p: (-scores[p], p))  # KeyError when scores are older than the pool


@dg.asset(code_version="1", automation_condition=gated(BUSY, HOURS))
def trained(subset):
    return list(subset)


DEFS = dg.Definitions(assets=[pool_file, training_window, pool, rates, scores, subset, trained])
KEYS = DEFS.resolve_asset_graph().get_all_asset_keys()
DAY = datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)


class Ticks:
    def __init__(self, instance, start: datetime.datetime):
        self.instance, self.time, self.cursor = instance, start, None

    def at(self, when: datetime.datetime) -> set[str]:
        self.time = when
        result = dg.evaluate_automation_conditions(
            defs=DEFS, instance=self.instance, cursor=self.cursor, evaluation_time=when
        )
        self.cursor = result.cursor
        return {k.to_user_string() for k in KEYS if result.get_num_requested(k)}

    def next(self, minutes: float = 1) -> set[str]:
        return self.at(self.time + datetime.timedelta(minutes=minutes))


def run(instance, keys) -> dg.ExecuteInProcessResult:
    assert keys, "nothing requested"
    job = DEFS.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(k) for k in keys])


def observe(instance, *sources) -> None:
    assert dg.materialize(list(sources), selection=list(sources), instance=instance).success


@pytest.fixture
def world():
    STATE.update(pool=["a", "b", "c"], fail=False)
    with dg.instance_for_test() as instance:
        observe(instance, pool_file)
        assert run(instance, ["pool", "rates", "scores", "subset", "trained"]).success
        ticks = Ticks(instance, DAY.replace(hour=10, minute=1))
        assert ticks.next() == set()  # baseline
        yield instance, ticks


def test_an_edit_requests_the_whole_path_below_it_in_one_tick_and_nothing_after(world):
    instance, ticks = world
    STATE["pool"] = ["b", "c", "dd", "eee"]  # rows removed and added
    observe(instance, pool_file)
    requested = ticks.next()
    # one tick, so one run: executed in dependency order, subset after scores (the old condition ran subset with the
    # pool's new rows and the old scores, and failed on the removed ones)
    assert requested == {"pool", "rates", "scores", "subset"}
    assert run(instance, requested).success
    assert ticks.next() == set()  # the children were in the parent's run: not requested again
    assert ticks.next() == set()
    assert "trained" not in requested  # gated: outside the window, and it waits for the subset's new data version


def test_a_failed_step_skips_its_children_and_is_not_retried_in_a_loop(world):
    instance, ticks = world
    STATE["pool"] = ["a", "b", "c", "zz"]
    observe(instance, pool_file)
    requested = ticks.next()
    STATE["fail"] = True
    result = DEFS.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(k) for k in requested], raise_on_error=False
    )
    STATE["fail"] = False
    assert not result.success
    assert len(instance.fetch_materializations(dg.AssetKey("subset"), limit=10).records) == 1  # not rewritten
    assert ticks.next() == set() and ticks.next() == set()
    STATE["pool"] = ["a", "b", "zz"]  # the next edit re-runs the path
    observe(instance, pool_file)
    assert ticks.next() == {"pool", "rates", "scores", "subset"}


def test_nothing_of_the_loop_starts_while_a_run_of_it_is_in_flight(world):
    instance, ticks = world
    # A cascade run that has materialized `pool` and is still to run rates..subset (a launched run: STARTED, its
    # assets planned). Stages load the latest materialization of their inputs, so re-running `pool` now would hand
    # the running subset a pool that its scores were not computed from.
    job = DEFS.resolve_implicit_global_asset_job_def()
    in_flight = instance.create_run_for_job(
        job_def=job,
        asset_selection=frozenset(dg.AssetKey(k) for k in ["rates", "scores", "subset"]),
        status=DagsterRunStatus.STARTED,
    )
    STATE["pool"] = ["a", "b", "c", "dd"]
    observe(instance, pool_file)
    assert ticks.next() == set()
    assert ticks.next() == set()
    instance.report_run_failed(in_flight)  # it ended (how does not matter here)
    assert ticks.next() == {"pool", "rates", "scores", "subset"}  # the edit was kept, and goes through now


def test_an_edit_observed_on_the_tick_after_a_request_is_not_lost(world):
    instance, ticks = world
    STATE["pool"] = ["a", "b", "c", "dd"]
    observe(instance, pool_file)
    first = ticks.next()
    assert run(instance, first).success
    STATE["pool"] = ["a", "b", "c", "dd", "e"]  # observed before the next tick, the one after the request
    observe(instance, pool_file)
    assert ticks.next() == {"pool", "rates", "scores", "subset"}


def test_a_daemon_started_inside_the_window_opens_it_within_a_minute():
    STATE.update(pool=["a", "b"], fail=False)
    with dg.instance_for_test() as instance:
        observe(instance, pool_file)
        assert run(instance, ["pool", "rates", "scores", "subset", "trained"]).success
        ticks = Ticks(instance, DAY.replace(hour=3, minute=30))
        assert ticks.next(0) == set()  # the sensor's first evaluation, inside the window
        STATE["pool"] = ["a", "b", "cc"]
        observe(instance, pool_file)
        requested = ticks.next()
        assert run(instance, requested).success
        assert ticks.next() == {"trained"}  # inside the window, after the subset's new data version
        assert run(instance, ["trained"]).success
        assert ticks.next() == set()


def test_observing_the_training_window_opens_it_until_its_close():
    STATE.update(pool=["a", "b"], fail=False)
    with dg.instance_for_test() as instance:
        observe(instance, pool_file)
        assert run(instance, ["pool", "rates", "scores", "subset", "trained"]).success
        ticks = Ticks(instance, DAY.replace(hour=10, minute=1))
        ticks.next(0)
        STATE["pool"] = ["a", "b", "cc"]
        observe(instance, pool_file)
        assert run(instance, ticks.next()).success
        assert ticks.next() == set() and ticks.at(DAY.replace(hour=12, minute=7)) == set()  # daytime: training waits
        observe(instance, training_window)
        assert ticks.next() == {"trained"}  # opened now
        assert run(instance, ["trained"]).success
        STATE["pool"] = ["a", "cc"]
        observe(instance, pool_file)
        assert run(instance, ticks.next()).success
        assert ticks.next() == {"trained"}  # still open
        assert run(instance, ["trained"]).success
        STATE["pool"] = ["cc"]
        observe(instance, pool_file)
        requested = ticks.at(DAY.replace(hour=5, minute=59) + datetime.timedelta(days=1))
        assert {"pool", "subset"} <= requested and "trained" not in requested
        assert run(instance, requested).success
        assert "trained" not in ticks.at(DAY.replace(hour=6, minute=1) + datetime.timedelta(days=1))  # closed


@pytest.mark.parametrize(
    ("hours", "inside", "outside"),
    [((2, 6), [2, 5], [1, 6, 12]), ((15, 16), [15], [7, 14, 16]), ((22, 4), [22, 23, 0, 3], [4, 12, 21])],
)
def test_the_window_opener_ticks_inside_the_window_only(hours, inside, outside):
    # Through Dagster's own cron iterator (private, pinned 1.13.27): it reads a one-hour range "15-15" as every
    # hour, which once opened a 15:00-16:00 window at 07:35.
    from dagster._utils.schedules import reverse_cron_string_iterator

    opener, close = _window_crons(hours)
    assert close == f"0 {hours[1]} * * *"
    for hour in inside + outside:
        now = DAY.replace(hour=hour, minute=30)
        tick = next(
            reverse_cron_string_iterator(end_timestamp=now.timestamp(), cron_string=opener, execution_timezone="UTC")
        )
        assert (tick == now.replace(minute=30, second=0)) == (hour in inside), (hours, hour, tick)


def test_window_setting():
    assert training_window_hours("02-06") == (2, 6)
    with pytest.raises(ValueError, match="LEARNALIGN_TRAINING_WINDOW"):
        training_window_hours("2am")
