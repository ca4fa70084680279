"""Layer presets: block_stack and the block-level default_layers for branchy CNNs and
transformers, checked against forward-order hooks and Hugging Face's own hidden_states."""
import pytest
import torch
from torch import nn

from dyngraph.capture._layers import block_stack


def test_block_stack_torch_and_torchvision():
    from torchvision.models.vision_transformer import VisionTransformer
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 3,
                                enable_nested_tensor=False)
    path, blocks = block_stack(enc)
    assert path == "layers" and blocks is enc.layers and len(blocks) == 3
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                            hidden_dim=16, mlp_dim=32)
    path, blocks = block_stack(vit)
    assert path == "encoder.layers" and blocks is vit.encoder.layers and len(blocks) == 2
    # The model itself can be the stack; a one-block stack counts under a conventional name.
    seq = nn.Sequential(*[nn.Sequential(nn.Linear(2, 2)) for _ in range(2)])
    with pytest.raises(ValueError, match="block_stack found no stack"):
        block_stack(seq)  # items are bare containers, not blocks
    one = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 1,
                                enable_nested_tensor=False)
    assert block_stack(one)[0] == "layers"


def test_block_stack_picks_longest_outermost_and_breaks_ties_by_name():
    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(4, 4))

    class MoELayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.ModuleList(Expert() for _ in range(8))  # longer, but nested

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.extra = nn.ModuleList(MoELayer() for _ in range(2))
            self.layers = nn.ModuleList(MoELayer() for _ in range(2))  # tie: the known name

    net = Net()
    path, blocks = block_stack(net)
    assert path == "layers" and blocks is net.layers
    with pytest.raises(ValueError, match="Sequential"):
        block_stack(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(TypeError):
        block_stack("not a model")


@pytest.fixture(scope="module")
def hf_models():
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tiny = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                intermediate_size=37, vocab_size=100)
    return {
        "bert": (T.BertModel(T.BertConfig(**tiny)), "encoder.layer"),
        "roberta": (T.RobertaModel(T.RobertaConfig(**tiny)), "encoder.layer"),
        "gpt2": (T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=100,
                                                bos_token_id=0, eos_token_id=0)),
                 "transformer.h"),
        "llama": (T.LlamaForCausalLM(T.LlamaConfig(num_key_value_heads=1, **tiny)),
                  "model.layers"),
    }


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2", "llama"])
def test_block_stack_hugging_face(hf_models, kind):
    model, want = hf_models[kind]
    path, blocks = block_stack(model)
    assert path == want and blocks is model.get_submodule(want) and len(blocks) == 3
