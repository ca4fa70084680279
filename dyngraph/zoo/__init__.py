"""Zoo: bundled real data (scikit-learn digits, MNIST-1D, image folders), reference models and
the train-or-reuse helper."""
from ._data import (
                    digits_dataset,
                    example_loaders,
                    folder_layout,
                    image_folder_loaders,
                    mnist1d_dataset,
                    parse_normalize,
)
from ._models import (
                    CifarResNet,
                    DigitsCNN,
                    DigitsMLP,
                    PadShortcut,
                    SignalCNN,
                    SignalResNet,
                    build_model,
                    cifar_resnet,
                    resnet20,
                    resnet56,
                    resnet110,
                    train_cached,
                    train_classifier,
)

__all__ = ["CifarResNet", "DigitsCNN", "DigitsMLP", "PadShortcut", "SignalCNN", "SignalResNet",
           "build_model",
           "cifar_resnet", "digits_dataset", "example_loaders", "folder_layout",
           "image_folder_loaders", "parse_normalize",
           "mnist1d_dataset", "resnet20", "resnet56", "resnet110", "train_cached",
           "train_classifier"]
