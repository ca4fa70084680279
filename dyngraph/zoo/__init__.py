"""Zoo: bundled real data (scikit-learn digits, MNIST-1D, image folders, pitch tones, wordfreq's
words, labelled text files), reference models, real pretrained models offline (CREPE, MiniLM-L6)
and the train-or-reuse helper."""
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
from ._text import (
                    DEFAULT_LANGUAGES,
                    TextDataset,
                    TokenizeCollate,
                    load_minilm,
                    minilm_path,
                    text_file_dataset,
                    text_loader,
                    wordfreq_words,
)

__all__ = ["PITCHES_HZ", "crepe", "pitch_tones", "DEFAULT_LANGUAGES", "TextDataset",
           "TokenizeCollate", "load_minilm",
           "minilm_path", "text_file_dataset", "text_loader", "wordfreq_words",
           "CifarResNet", "DigitsCNN", "DigitsMLP", "PadShortcut", "SignalCNN", "SignalResNet",
           "build_model",
           "cifar_resnet", "digits_dataset", "example_loaders", "folder_layout",
           "image_folder_loaders", "parse_normalize",
           "mnist1d_dataset", "resnet20", "resnet56", "resnet110", "train_cached",
           "train_classifier"]
