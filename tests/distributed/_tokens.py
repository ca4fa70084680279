"""A tiny token encoder and a labelled dataset of padded token-id sequences, shared by the
single-process and the torchrun (gloo) tests of distributed extraction with ``pool='tokens'``."""
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tests._padding import pad_batch


class TokenEncoder(nn.Module):
    """Embedding and one batch-first transformer layer that ignores the padded keys."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(40, 8)
        self.block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def forward(self, input_ids, attention_mask):
        return self.block(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)


class TokenTexts(Dataset):
    """Sequences of 2 to 7 token ids; class ``c`` mostly uses its own ids. ``.labels`` exposes
    the labels, so class-balanced draws happen up front (the same on every rank)."""

    def __init__(self, n=45, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        lengths = torch.randint(2, 8, (n,), generator=g).tolist()
        self.seqs = [torch.where(torch.rand(t, generator=g) < 0.7,
                                 1 + 12 * int(c) + torch.randint(0, 12, (t,), generator=g),
                                 torch.randint(1, 40, (t,), generator=g))
                     for c, t in zip(self.labels, lengths)]

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return self.seqs[i], int(self.labels[i])


def pad_collate(items):
    """A Hugging Face-style dict batch, padded to its own longest sequence."""
    return pad_batch(items)


def token_loader(batch_size=4):
    return DataLoader(TokenTexts(), batch_size=batch_size, collate_fn=pad_collate)
