"""Training script for tests/test_reliability.py: a toy DAPO run with dynamic sampling and checkpoints.

usage: reliability_run.py OUTPUT_DIR MAX_STEPS [--slow-reward S] [--slow-save S]
Resumes from the newest complete checkpoint (as train_dapo.main does) and writes OUTPUT_DIR/final.json.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reliability  # noqa: E402
from tests.test_train_dapo import small_args  # noqa: E402
from tests.tiny import make_toy_correctness, tiny_llama, toy_dataset, toy_tokenizer  # noqa: E402
from train_dapo import DAPOTrainer  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--slow-reward", type=float, default=0.0)
    parser.add_argument("--slow-save", type=float, default=0.0)
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

    args = small_args(Path(opts.out), filter_groups_enable=True, per_device_train_batch_size=8, num_generations=4,
                      num_mini_batches=2, max_completion_length=2, max_steps=opts.max_steps, gen_batch_multiplier=1,
                      max_filter_gen_batches=0, save_strategy="steps", save_steps=2, output_dir=opts.out)
    trainer = Trainer(model=tiny_llama(tok), reward_funcs=[correctness], args=args, train_dataset=toy_dataset(),
                      processing_class=tok)
    trainer.add_callback(reliability.PreemptionCallback())
    resume = reliability.find_resumable_checkpoint(opts.out, needs_dapo_state=True)
    print(f"RESUME {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    weights = {k: v.flatten()[:50].tolist() for k, v in trainer.model.state_dict().items()}
    rewards = {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}
    with open(os.path.join(opts.out, "final.json"), "w") as f:
        json.dump({"weights": weights, "rewards": rewards, "resumed_from": resume}, f)


if __name__ == "__main__":
    main()
