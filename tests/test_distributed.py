"""Two CPU processes (torchrun, gloo backend, DDP) with dynamic sampling on.

`accelerate launch --cpu` starts a single process (its multi-CPU mode needs MPI), so CPU runs with several
processes use torch's own launcher, as run_dapo.sh does with USE_CPU=1. The same runs are the reference for
the sharded runs of tests/test_sharded.py.
"""

import pytest

from tests.distributed import check_run, check_saved_model_reproduces_logits, groups_of


def test_resampling_and_carry_over_train_whole_groups_with_identical_decisions(ddp_run):
    out, ranks = ddp_run("carry")
    trained = check_run(ranks, "carry")
    history = ranks[0]["history"]
    # 3 rollouts; each process trains 4 rows x 2 mini-batches = 8 completions = 2 whole groups per rollout.
    assert len(trained) == 3 and all(len(groups) == 4 for groups in trained)
    assert all(len(b["prompts"]) == 8 for r in ranks for b in r["rollouts"])
    assert any(h["dynamic_sampling/num_gen_batches"] > 1 for h in history), "resampling was exercised"
    assert any(h["dynamic_sampling/groups_carried_over"] > 0 for h in history)
    assert any(h["dynamic_sampling/groups_reused"] > 0 for h in history), "a carried group was trained"
    check_saved_model_reproduces_logits(out)


def test_generation_limit_continue_trains_a_smaller_batch_of_whole_groups(ddp_run):
    _, ranks = ddp_run("limit")
    trained = check_run(ranks, "limit")
    partial = [h for h in ranks[0]["history"] if h["dynamic_sampling/partial_batch"] == 1]
    assert partial and any(0 < h["dynamic_sampling/groups_trained"] < 4 for h in partial)
    assert any(len(groups) == 2 for groups in trained)


@pytest.mark.parametrize("mix", ["swap-rows-across-groups", "split-group-across-ranks", "train-group-twice"])
def test_check_run_catches_mixed_split_or_repeated_groups(ddp_run, mix):
    """The checks above fail on a run that mixes rows of different groups, splits one group over the two
    processes, or trains a group twice."""
    import copy

    _, ranks = ddp_run("carry")
    bad = copy.deepcopy(ranks)
    b0, b1 = bad[0]["rollouts"][0], bad[1]["rollouts"][0]
    if mix == "swap-rows-across-groups":
        b0["prompts"][3], b0["prompts"][4] = b0["prompts"][4], b0["prompts"][3]
    elif mix == "split-group-across-ranks":
        b0["prompts"][-2:], b1["prompts"][:2] = b1["prompts"][:2], b0["prompts"][-2:]
    else:
        bad[0]["rollouts"][1]["prompts"][:4] = [b0["prompts"][0]] * 4
    assert groups_of(ranks[0]["rollouts"][0]["prompts"], 4)  # the untouched run passes
    with pytest.raises(AssertionError):
        check_run(bad, "carry")
