"""Run under `accelerate launch --cpu --num_processes 2`: dynamic sampling across processes.

Writes <out>/rank<R>.json with what this process trained on, for tests/test_distributed.py.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_train_dapo import small_args  # noqa: E402
from tests.tiny import make_toy_correctness, tiny_llama, toy_dataset, toy_tokenizer  # noqa: E402
from train_dapo import DAPOTrainer  # noqa: E402


def main(out_dir: str) -> None:
    from pathlib import Path

    tok = toy_tokenizer()
    args = small_args(Path(out_dir), filter_groups_enable=True, per_device_train_batch_size=4, num_generations=4,
                      num_mini_batches=2, max_completion_length=2, max_steps=6, gen_batch_multiplier=1,
                      max_filter_gen_batches=0, use_cpu=True)
    trainer = DAPOTrainer(model=tiny_llama(tok), reward_funcs=[make_toy_correctness(tok)], args=args,
                          train_dataset=toy_dataset(), processing_class=tok)
    batches = []
    original = trainer._dynamic_sampling_batch

    def recording():
        batch = original()
        groups = batch["advantages"].view(-1, 4)
        batches.append({
            "rows": int(batch["completion_ids"].shape[0]),
            "zero_advantage_groups": int((groups.abs().sum(dim=1) == 0).sum()),
            "local_tokens": int(batch["completion_mask"].sum()),
            "num_items_in_batch": int(batch["num_items_in_batch"]),
        })
        return batch

    trainer._dynamic_sampling_batch = recording
    trainer.train()
    keys = ["dynamic_sampling/groups_trained", "dynamic_sampling/groups_kept", "dynamic_sampling/num_gen_batches",
            "dynamic_sampling/zero_spread_frac_trained"]
    history = [{k: h[k] for k in keys if k in h} for h in trainer.state.log_history if keys[0] in h]
    rank = trainer.accelerator.process_index
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world": trainer.accelerator.num_processes, "batches": batches, "history": history}, f)


if __name__ == "__main__":
    main(sys.argv[1])
