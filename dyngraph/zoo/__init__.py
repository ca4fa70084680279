"""Zoo: bundled real data (scikit-learn digits, MNIST-1D, image folders, pitch tones), reference
models, a real pretrained CNN offline (CREPE) and the train-or-reuse helper."""
from ._audio import PITCHES_HZ, crepe, pitch_tones
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

__all__ = ["PITCHES_HZ", "crepe", "pitch_tones",
           "CifarResNet", "DigitsCNN", "DigitsMLP", "PadShortcut", "SignalCNN", "SignalResNet",
           "build_model",
           "cifar_resnet", "digits_dataset", "example_loaders", "folder_layout",
           "image_folder_loaders", "parse_normalize",
           "mnist1d_dataset", "resnet20", "resnet56", "resnet110", "train_cached",
           "train_classifier"]
