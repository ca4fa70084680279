"""Bundled real data (no download) and loaders for users' own image folders."""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader, TensorDataset

from .._validate import check_choice

EXAMPLES = ("digits", "mnist1d")


def _require_sklearn():
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the bundled 'digits' data comes from scikit-learn: "
                          "pip install 'dyngraph[examples]'") from exc


def digits_dataset(split: str = "train", test_size: float = 0.3, seed: int = 0,
                   flat: bool = False) -> TensorDataset:
    """scikit-learn's handwritten digits (1,797 images, 8×8, 10 classes), shipped with the package.

    The split is stratified and seeded, so every class keeps its share in both parts.

    Args:
        split: ``'train'``, ``'test'`` or ``'all'``.
        test_size: Share of each class held out for ``'test'``.
        seed: Seed of the split.
        flat: ``[N, 64]`` instead of ``[N, 1, 8, 8]``.

    Returns:
        ``TensorDataset(x, y)``: float32 pixels scaled to [0, 1], long labels.

    Example:
        >>> import dyngraph as dg
        >>> ds = dg.zoo.digits_dataset('test')
        >>> len(ds), tuple(ds.tensors[0].shape[1:]), int(ds.tensors[1].max()) + 1
        (539, (1, 8, 8), 10)
    """
    check_choice(split, "split", ("train", "test", "all"))
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}")
    _require_sklearn()
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    if split != "all":
        gen = torch.Generator().manual_seed(int(seed))
        test_mask = torch.zeros(len(y), dtype=torch.bool)
        for c in y.unique():
            pos = (y == c).nonzero().flatten()
            pos = pos[torch.randperm(pos.numel(), generator=gen)]
            test_mask[pos[: int(round(test_size * pos.numel()))]] = True
        keep = test_mask if split == "test" else ~test_mask
        x, y = x[keep], y[keep]
    if flat:
        x = x.reshape(x.shape[0], -1)
    return TensorDataset(x, y)


def mnist1d_dataset(split: str = "train", num_samples: int = 5000) -> TensorDataset:
    """MNIST-1D (Greydanus 2020): 10 classes of 40-sample 1-D signals, generated locally by the
    ``mnist1d`` package from its templates with the published settings (seed 42), no download.

    Much harder than digits for a kNN on raw inputs, so a random network's representations stay
    poorly separated while a trained CNN separates them.

    Args:
        split: ``'train'`` (80%), ``'test'`` (20%) or ``'all'``.
        num_samples: Size of the generated set (5,000 in the paper).

    Returns:
        ``TensorDataset(x [N, 1, 40] float32, y [N] long)``.

    Example:
        >>> import dyngraph as dg
        >>> ds = dg.zoo.mnist1d_dataset('test')
        >>> len(ds), tuple(ds.tensors[0].shape[1:])
        (1000, (1, 40))
    """
    check_choice(split, "split", ("train", "test", "all"))
    try:
        import mnist1d  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the 'mnist1d' example needs: pip install 'dyngraph[examples]'") from exc
    d = _mnist1d_arrays(int(num_samples))
    parts = {"train": [(d["x"], d["y"])], "test": [(d["x_test"], d["y_test"])],
             "all": [(d["x"], d["y"]), (d["x_test"], d["y_test"])]}[split]
    x = torch.cat([torch.as_tensor(a, dtype=torch.float32) for a, _ in parts]).unsqueeze(1)
    y = torch.cat([torch.as_tensor(b, dtype=torch.long) for _, b in parts])
    return TensorDataset(x, y)


@functools.lru_cache(maxsize=2)
def _mnist1d_arrays(num_samples: int) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples = num_samples
    return make_dataset(args)


def example_loaders(name: str = "digits", batch_size: int = 64, seed: int = 0,
                    flat: bool = False) -> Tuple[DataLoader, DataLoader]:
    """Train (shuffled, seeded) and test loaders of a bundled dataset, `digits` or `mnist1d`."""
    check_choice(name, "example", EXAMPLES)
    if name == "mnist1d":
        train, test = mnist1d_dataset("train"), mnist1d_dataset("test")
        if flat:
            train = TensorDataset(train.tensors[0].flatten(1), train.tensors[1])
            test = TensorDataset(test.tensors[0].flatten(1), test.tensors[1])
    else:
        train = digits_dataset("train", seed=seed, flat=flat)
        test = digits_dataset("test", seed=seed, flat=flat)
    gen = torch.Generator().manual_seed(int(seed))
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
            DataLoader(test, batch_size=256, shuffle=False))


def image_folder_loaders(root: str, image_size: int = 32, batch_size: int = 128,
                         num_workers: int = 2, val_root: Optional[str] = None,
                         mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)):
    """Loaders over a torchvision ``ImageFolder`` tree (``root/<class>/<image>``), e.g. CIFAR-10
    exported to folders. ``val_root`` defaults to ``root/../test`` or ``root`` itself.

    Returns:
        ``(train_loader, test_loader, num_classes)``.
    """
    import os

    from torchvision import datasets, transforms
    if not os.path.isdir(root):
        raise ValueError(f"data folder {root!r} does not exist")
    norm = transforms.Normalize(mean, std)
    tf_train = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    tf_test = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                  transforms.ToTensor(), norm])
    train = datasets.ImageFolder(root, transform=tf_train)
    if val_root is None:
        sibling = os.path.join(os.path.dirname(os.path.abspath(root)), "test")
        val_root = sibling if os.path.isdir(sibling) and sibling != os.path.abspath(root) else root
    test = datasets.ImageFolder(val_root, transform=tf_test)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers),
            DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers),
            len(train.classes))
