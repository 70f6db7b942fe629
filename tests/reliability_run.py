"""Training script for the reliability tests: a toy DAPO run with dynamic sampling and checkpoints.

usage: reliability_run.py OUTPUT_DIR MAX_STEPS [--slow-reward S] [--slow-save S] [--seed N]
       [--num-mini-batches M] [--sigterm-at STEP] [--no-auto-resume] [--start-over] [--no-filter]
Prepares the output directory and resumes as train_dapo.main does (lock, run identity, newest complete
checkpoint), then writes OUTPUT_DIR/final.json. Exits 128 + signal when stopped by a signal.
"""

import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transformers import TrainerCallback  # noqa: E402

import reliability  # noqa: E402
from tests.test_train_dapo import small_args  # noqa: E402
from tests.tiny import make_toy_correctness, tiny_llama, toy_dataset, toy_tokenizer  # noqa: E402
from train_dapo import DAPOTrainer  # noqa: E402


class StepReporter(TrainerCallback):
    """Prints "STEP k" after each optimizer step; sends this process a real SIGTERM after step ``sigterm_at``."""

    def __init__(self, sigterm_at):
        self.sigterm_at = sigterm_at

    def on_step_end(self, args, state, control, **kwargs):
        print(f"STEP {state.global_step}", flush=True)
        if state.global_step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--slow-reward", type=float, default=0.0)
    parser.add_argument("--slow-save", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-mini-batches", type=int, default=2)
    parser.add_argument("--sigterm-at", type=int, default=-1)
    parser.add_argument("--no-auto-resume", action="store_true")
    parser.add_argument("--start-over", action="store_true")
    parser.add_argument("--no-filter", action="store_true")
    opts = parser.parse_args()
    from pathlib import Path

    tok = toy_tokenizer()
    reward = make_toy_correctness(tok)

    def correctness(**kwargs):
        time.sleep(opts.slow_reward)
        return reward(**kwargs)

    class Trainer(DAPOTrainer):
        def _save_rng_state(self, output_dir):  # weights and optimizer are written; trainer_state.json is not yet
            time.sleep(opts.slow_save)
            super()._save_rng_state(output_dir)

    filtering = not opts.no_filter
    args = small_args(Path(opts.out), filter_groups_enable=filtering, per_device_train_batch_size=8, num_generations=4,
                      num_mini_batches=opts.num_mini_batches, max_completion_length=2, max_steps=opts.max_steps,
                      gen_batch_multiplier=1, max_filter_gen_batches=0, save_strategy="steps", save_steps=2,
                      output_dir=opts.out, seed=opts.seed)
    identity = reliability.run_identity("tiny-llama", "toy", opts.seed, filtering)
    resume = reliability.prepare_output_dir(opts.out, identity, auto_resume=not opts.no_auto_resume,
                                            start_over=opts.start_over, needs_dapo_state=filtering)
    print(f"RESUME {resume}", flush=True)
    trainer = Trainer(model=tiny_llama(tok), reward_funcs=[correctness], args=args, train_dataset=toy_dataset(),
                      processing_class=tok)
    trainer.add_callback(StepReporter(opts.sigterm_at))  # first: the signal then arrives before the step's check
    preemption = reliability.PreemptionCallback()
    trainer.add_callback(preemption)
    trainer.train(resume_from_checkpoint=resume)
    if preemption.received is not None:
        sys.exit(128 + preemption.received)
    weights = {k: v.flatten()[:50].tolist() for k, v in trainer.model.state_dict().items()}
    rewards = {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    with open(os.path.join(opts.out, "final.json"), "w") as f:
        json.dump({"weights": weights, "rewards": rewards, "losses": losses, "resumed_from": resume}, f)


if __name__ == "__main__":
    main()
