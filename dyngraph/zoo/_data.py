"""Bundled real data (no download) and loaders for users' own image folders."""
from __future__ import annotations

import functools
import os
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader, TensorDataset

from .._validate import check_choice

EXAMPLES = ("digits", "mnist1d")


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
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the bundled 'digits' data comes from scikit-learn: "
                          "pip install 'dyngraph[examples]'") from exc
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
    """Train (shuffled, seeded) and test loaders of a bundled dataset, `digits` or `mnist1d`.

    Args:
        name: ``'digits'`` (:func:`digits_dataset`, images ``[1, 8, 8]``) or ``'mnist1d'``
            (:func:`mnist1d_dataset`, signals ``[1, 40]``).
        batch_size: Training batch size (the test loader uses 256).
        seed: Seed of the digits split and of the training loader's shuffling.
        flat: Flatten each sample to ``[D]`` (for MLPs).

    Returns:
        ``(train_loader, test_loader)``: batches ``(x, y)``; the test loader is not shuffled.

    Example:
        >>> import dyngraph as dg
        >>> train, test = dg.zoo.example_loaders('digits', batch_size=32)
        >>> x, y = next(iter(train))
        >>> tuple(x.shape), tuple(y.shape), len(test.dataset)
        ((32, 1, 8, 8), (32,), 539)
    """
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


NORMALIZE = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
             "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
EVAL_SPLITS = ("val", "validation", "valid", "test")


def parse_normalize(spec: str) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """``'cifar10'``, ``'imagenet'``, ``'none'`` or ``'m1,...,mC,s1,...,sC'`` (C means then C
    standard deviations) → ``(mean, std)`` or ``None``.

    Args:
        spec: The ``--normalize`` value of the command line.

    Returns:
        ``(means, stds)`` per channel for ``transforms.Normalize``, or ``None`` for ``'none'``.

    Raises:
        ValueError: Anything else: an odd count, a non-number, or a std that is not positive.

    Example:
        >>> import dyngraph as dg
        >>> dg.zoo.parse_normalize('0.5,0.25')
        ((0.5,), (0.25,))
        >>> dg.zoo.parse_normalize('none') is None, dg.zoo.parse_normalize('imagenet')[0]
        (True, (0.485, 0.456, 0.406))
    """
    if spec in NORMALIZE:
        return NORMALIZE[spec]
    if spec == "none":
        return None
    try:
        vals = [float(v) for v in spec.split(",")]
    except ValueError:
        vals = []
    if not vals or len(vals) % 2 or any(v <= 0 for v in vals[len(vals) // 2:]):
        raise ValueError(f"normalize must be cifar10, imagenet, none or 'means,stds' (C means "
                         f"then C positive stds), got {spec!r}")
    half = len(vals) // 2
    return tuple(vals[:half]), tuple(vals[half:])


def folder_layout(root: str, eval_root: Optional[str] = None) -> Dict[str, str]:
    """Where the training and the held-out images are, stated, never guessed silently.

    * ``root`` holds ``train/`` and one of ``val/``, ``validation/``, ``valid/``, ``test/``;
    * ``root`` is itself ``.../train`` beside such a folder;
    * or ``eval_root`` names the held-out folder.

    Args:
        root: The data folder (see the layouts above).
        eval_root: The held-out folder, when it is elsewhere.

    Returns:
        ``{'train': path, 'eval': path, 'layout': description}``.

    Raises:
        ValueError: A folder does not exist, split folders are incomplete (they would be read as
            classes), or there are no held-out images (the training images are never used as
            the test set).

    Example:
        >>> import os, tempfile, dyngraph as dg
        >>> root = tempfile.mkdtemp()
        >>> for split in ('train', 'val'):
        ...     os.makedirs(os.path.join(root, split, 'cat'))
        >>> dg.zoo.folder_layout(root)['layout']
        'root with train/ and val/'
        >>> dg.zoo.folder_layout(os.path.join(root, 'train'))['layout']
        'train/ with its sibling val/'
    """
    if not os.path.isdir(root):
        raise ValueError(f"data folder {root!r} does not exist")
    root = os.path.abspath(root)
    if eval_root is not None:
        if not os.path.isdir(eval_root):
            raise ValueError(f"eval data folder {eval_root!r} does not exist")
        return {"train": root, "eval": os.path.abspath(eval_root),
                "layout": "explicit training and held-out folders"}
    subs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    held = [d for d in EVAL_SPLITS if d in subs]
    if "train" in subs and held:
        return {"train": os.path.join(root, "train"), "eval": os.path.join(root, held[0]),
                "layout": f"root with train/ and {held[0]}/"}
    parent = os.path.dirname(root)
    held = [d for d in EVAL_SPLITS if os.path.isdir(os.path.join(parent, d))]
    if os.path.basename(root) == "train" and held:
        return {"train": root, "eval": os.path.join(parent, held[0]),
                "layout": f"train/ with its sibling {held[0]}/"}
    splits = sorted(set(subs) & {"train", *EVAL_SPLITS})
    if splits:
        raise ValueError(f"{root!r} holds split folders {splits} but not both train/ and one "
                         f"of {list(EVAL_SPLITS)}: its splits would be read as classes; name "
                         f"the folders explicitly")
    raise ValueError(f"{root!r} has no held-out images: use root/train + root/val (or test), "
                     f"or name the held-out folder explicitly (the training images are never "
                     f"used as the test set)")


def image_folder_loaders(root: str, image_size: int = 32, batch_size: int = 128,
                         num_workers: int = 2, eval_root: Optional[str] = None,
                         normalize: str = "cifar10", augment: bool = True
                         ) -> Tuple[DataLoader, DataLoader, int]:
    """Loaders over torchvision ``ImageFolder`` trees (``<split>/<class>/<image>``), with the
    layout of :func:`folder_layout` and the classes matched by name across splits.

    The held-out split's labels are the training split's class indices (a held-out folder that
    lacks a class keeps the others' indices; a class the training split does not have is an
    error). The held-out images are never augmented; ``augment`` flips the training images.

    Args:
        root: The image folder; its layout is read by :func:`folder_layout`.
        image_size: Images are resized (shorter side) and centre-cropped to this size.
        batch_size: Batch size of both loaders.
        num_workers: Loader worker processes.
        eval_root: The held-out folder, when it is not beside ``root/train``.
        normalize: ``'cifar10'``, ``'imagenet'``, ``'none'`` or ``'means,stds'``
            (:func:`parse_normalize`).
        augment: Random horizontal flips of the training images.

    Returns:
        ``(train_loader, test_loader, num_classes)``; ``test_loader.dataset.dyngraph_data`` records
        the layout, the folders, the classes and the normalisation.

    Example:
        >>> import os, tempfile, dyngraph as dg
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> for split in ('train', 'test'):
        ...     for c in ('cat', 'dog'):
        ...         os.makedirs(os.path.join(root, split, c))
        ...         Image.new('RGB', (40, 30)).save(os.path.join(root, split, c, '0.png'))
        >>> train, test, n = dg.zoo.image_folder_loaders(root, image_size=16, num_workers=0)
        >>> x, y = next(iter(test))
        >>> tuple(x.shape), y.tolist(), n, test.dataset.dyngraph_data['layout']
        ((2, 3, 16, 16), [0, 1], 2, 'root with train/ and test/')
    """
    from torchvision import datasets, transforms
    where = folder_layout(root, eval_root)
    stats = parse_normalize(normalize)
    tail = [transforms.ToTensor()] + ([transforms.Normalize(*stats)] if stats else [])
    size = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    flip = [transforms.RandomHorizontalFlip()] if augment else []
    train = datasets.ImageFolder(where["train"], transform=transforms.Compose(size + flip + tail))
    test = datasets.ImageFolder(where["eval"], transform=transforms.Compose(size + tail))
    extra = sorted(set(test.classes) - set(train.classes))
    if extra:
        raise ValueError(f"the held-out folder {where['eval']!r} has classes the training folder "
                         f"lacks: {extra[:10]}")
    missing = sorted(set(train.classes) - set(test.classes))
    to_train = [train.class_to_idx[c] for c in test.classes]   # by name, not by position
    test.samples = [(p, to_train[t]) for p, t in test.samples]
    test.targets = [t for _, t in test.samples]
    test.dyngraph_data = {**where, "classes": train.classes, "eval_missing_classes": missing,
                          "normalize": normalize, "image_size": image_size}
    if missing:
        warnings.warn(f"the held-out folder lacks classes {missing[:10]}; the others keep the "
                      f"training indices", stacklevel=2)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers),
            DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers),
            len(train.classes))
