"""Hugging Face-style text batches for the tests: variable-length id sequences padded to the
batch's longest, with an attention mask and the labels."""
from typing import Any, Dict, List, Sequence, Tuple

import torch


def pad_batch(items: Sequence[Tuple[torch.Tensor, int]], label_key: str = "labels"
              ) -> Dict[str, Any]:
    """``[(ids [T_i], label), ...]`` → ``{'input_ids', 'attention_mask', label_key}``, right
    padded with 0 to the longest sequence of this batch."""
    t = max(len(s) for s, _ in items)
    ids = torch.zeros(len(items), t, dtype=torch.long)
    mask = torch.zeros(len(items), t, dtype=torch.long)
    for i, (s, _) in enumerate(items):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    labels: List[int] = [y for _, y in items]
    return {"input_ids": ids, "attention_mask": mask, label_key: torch.tensor(labels)}
