"""Building blocks of DAPO dynamic sampling, kept free of trainer state so they can be tested alone.

* ``PromptStream``: the seeded, checkpointable order in which prompts are drawn.
* ``informative_groups``: which prompt groups carry a learning signal (non-zero spread).
* ``concat_rows`` / ``select_rows``: stitch the padded tensor dicts of several generation rounds
  together and pick rows out of them, respecting TRL's padding sides.
* ``usable_group_count``: the largest partial batch that still splits evenly over processes and
  mini-batches (used only when the user lets a run continue at the generation-batch limit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Padding side and value of every per-row tensor that TRL's _generate_and_score_completions returns.
# "pad" is resolved to the tokenizer's pad id at run time.
ROW_TENSOR_PADDING: dict[str, tuple[str, object]] = {
    "prompt_ids": ("left", "pad"),
    "prompt_mask": ("left", 0),
    "completion_ids": ("right", "pad"),
    "completion_mask": ("right", 0),
    "tool_mask": ("right", 1),
    "old_per_token_logps": ("right", 0.0),
    "ref_per_token_logps": ("right", 0.0),
    "sampling_per_token_logps": ("right", 0.0),
    "importance_sampling_ratio": ("right", 1.0),
    "advantages": (None, None),
    "rewards": (None, None),
}
SCALAR_KEYS = ("num_items_in_batch",)


class PromptStream:
    """An endless stream of dataset indices: a fresh seeded permutation per pass over the data.

    Identical on every process (same seed), so all processes draw the same prompts and split them
    by rank. ``state_dict`` is saved in checkpoints so a resumed run continues the same stream.
    """

    def __init__(self, num_prompts: int, seed: int):
        if num_prompts <= 0:
            raise ValueError("PromptStream needs a non-empty dataset")
        self.num_prompts = num_prompts
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._perm: list[int] | None = None

    def _permutation(self) -> list[int]:
        if self._perm is None:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            self._perm = torch.randperm(self.num_prompts, generator=gen).tolist()
        return self._perm

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            perm = self._permutation()
            chunk = perm[self.offset : self.offset + (count - len(out))]
            out.extend(chunk)
            self.offset += len(chunk)
            if self.offset >= self.num_prompts:
                self.epoch += 1
                self.offset = 0
                self._perm = None
        return out

    @property
    def consumed(self) -> int:
        return self.epoch * self.num_prompts + self.offset

    def state_dict(self) -> dict:
        return {"num_prompts": self.num_prompts, "seed": self.seed, "epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        if state["num_prompts"] != self.num_prompts or state["seed"] != self.seed:
            raise ValueError(
                f"The checkpoint's prompt stream was built for {state['num_prompts']} prompts with seed "
                f"{state['seed']}, but this run has {self.num_prompts} prompts and seed {self.seed}. Resume with the "
                "same dataset, filters and --seed, or start a fresh --output_dir."
            )
        self.epoch, self.offset, self._perm = state["epoch"], state["offset"], None


def informative_groups(metric: torch.Tensor, group_size: int) -> torch.Tensor:
    """Keep a group iff its metric is not constant (std > 0) or it has a single member (reference rule).

    Groups with a NaN (an unscorable completion) count as informative only through their finite members.
    """
    if group_size == 1:
        return torch.ones(metric.numel(), dtype=torch.bool, device=metric.device)
    grouped = metric.view(-1, group_size).float()
    finite = torch.isfinite(grouped)
    hi = torch.where(finite, grouped, torch.full_like(grouped, -torch.inf)).max(dim=1).values
    lo = torch.where(finite, grouped, torch.full_like(grouped, torch.inf)).min(dim=1).values
    return (finite.sum(dim=1) > 1) & (hi > lo)


def _pad_to(t: torch.Tensor, width: int, side: str, value) -> torch.Tensor:
    extra = width - t.size(1)
    if extra <= 0:
        return t
    pad = torch.full((t.size(0), extra, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t] if side == "left" else [t, pad], dim=1)


def concat_rows(batches: Sequence[dict], pad_token_id: int) -> dict:
    """Concatenate row-wise batches produced by separate generation rounds (different padded widths)."""
    batches = [b for b in batches if b]
    if not batches:
        return {}
    out: dict = {}
    for key in batches[0]:
        if key in SCALAR_KEYS:
            continue
        if key not in ROW_TENSOR_PADDING:
            raise NotImplementedError(
                f"Dynamic sampling cannot merge the batch field {key!r} (multimodal or tool inputs are not supported "
                "with --filter_groups_enable). Disable filtering for this model/data."
            )
        side, value = ROW_TENSOR_PADDING[key]
        tensors = [b[key] for b in batches]
        if side is not None and tensors[0].dim() >= 2:
            value = pad_token_id if value == "pad" else value
            width = max(t.size(1) for t in tensors)
            tensors = [_pad_to(t, width, side, value) for t in tensors]
        out[key] = torch.cat(tensors, dim=0)
    return out


def select_rows(batch: dict, rows: torch.Tensor | list[int]) -> dict:
    index = torch.as_tensor(rows, dtype=torch.long)
    return {k: (v[index.to(v.device)] if k not in SCALAR_KEYS else v) for k, v in batch.items()}


def trim_padding(batch: dict) -> dict:
    """Drop columns that are padding in every row (after selection the widest rows may be gone)."""
    out = dict(batch)
    if "completion_mask" in out and out["completion_mask"].numel():
        width = int(out["completion_mask"].sum(dim=0).nonzero().max().item()) + 1 if out["completion_mask"].any() else 1
        for key, (side, _) in ROW_TENSOR_PADDING.items():
            if side == "right" and key in out and out[key].dim() >= 2 and out[key].size(1) > 1:
                out[key] = out[key][:, :width]
    if "prompt_mask" in out and out["prompt_mask"].numel():
        used = out["prompt_mask"].sum(dim=0).nonzero()
        start = int(used.min().item()) if used.numel() else 0
        for key in ("prompt_ids", "prompt_mask"):
            out[key] = out[key][:, start:]
    return out


def usable_group_count(available: int, num_processes: int, group_size: int, steps_per_generation: int) -> int:
    """Largest k <= available with k divisible by the process count and each process's rows by the mini-batches."""
    for k in range(available, 0, -1):
        if k % num_processes == 0 and ((k // num_processes) * group_size) % steps_per_generation == 0:
            return k
    return 0


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str, global_std: torch.Tensor | None = None):
    """GRPO advantages r - mean(group), divided by std(group) ("group"), the batch std ("batch") or 1 ("none").

    Mirrors TRL's sum_then_normalize path (unbiased std, +1e-4) so that filtering never changes the
    advantage of a kept group; NaN rewards (unscorable completions) get advantage 0 as in TRL.
    """
    from trl.trainer.utils import nanstd

    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    adv = grouped - mean
    if scale == "group":
        adv = adv / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        adv = adv / ((global_std if global_std is not None else nanstd(rewards)) + 1e-4)
    elif scale != "none":
        raise ValueError(f"unknown scale_rewards {scale!r}")
    return torch.nan_to_num(adv.reshape(-1), nan=0.0)
