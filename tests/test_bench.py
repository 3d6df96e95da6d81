"""The benchmark's arithmetic (the timings themselves are not tested: benchmarks measure, tests
assert behaviour)."""
import pytest

from lesa.bench import n_validations, schedule_estimates


def test_validation_count_matches_the_training_loop():
    for n_iters, interval in [(1, 5), (6, 2), (7, 2), (12, 4), (200_000, 4_000), (9, 1)]:
        loop = sum(1 for i in range(n_iters) if i % interval == 0 or i == n_iters - 1)
        assert n_validations(n_iters, interval) == loop
    assert n_validations(200_000, 4_000) == 51


@pytest.mark.parametrize("n", [2, 10, 3000])
def test_schedule_split_recovers_set_up_iteration_and_validation_time(n):
    # a machine whose lesa train takes exactly set-up + its x per-it + validations x per-validation
    setup, per_val = {"eager": 7.0, "cuda_graph": 11.0}, 0.75
    per_it = {"eager": 0.0135, "cuda_graph": 0.00207}

    def run_seconds(step, n_iters, interval):
        return setup[step] + n_iters * per_it[step] + n_validations(n_iters, interval) * per_val

    results, measured_val = schedule_estimates(run_seconds, ("eager", "cuda_graph"), n)
    assert measured_val == pytest.approx(per_val)
    for step, m, short, long, it, s, estimate in results:
        assert it == pytest.approx(per_it[step]) and s == pytest.approx(setup[step])
        assert estimate == pytest.approx(setup[step] + 200_000 * per_it[step] + 51 * per_val)
    assert [r[1] for r in results] == [max(n // 5, 2), n]  # the eager step runs fewer iterations


def test_a_failing_run_is_reported_not_raised():
    def run_seconds(step, n_iters, interval):
        if step == "eager":
            raise RuntimeError("out of memory")
        return 1.0 + n_iters * 0.002 + n_validations(n_iters, interval) * 0.5

    results, per_val = schedule_estimates(run_seconds, ("eager", "cuda_graph"), 100)
    assert isinstance(results[0], RuntimeError) and results[1][0] == "cuda_graph"
    assert per_val == pytest.approx(0.5)
