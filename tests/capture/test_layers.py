"""Layer presets: block_stack and the block-level default_layers for branchy CNNs and
transformers, checked against forward-order hooks and Hugging Face's own hidden_states."""
import pytest
import torch
from torch import nn

import dyngraph as dg
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


# ---------------------------------------------------------------------------- transformers
@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2", "llama"])
def test_default_layers_equal_hugging_face_hidden_states(hf_models, kind):
    model, stack = hf_models[kind]
    model.eval()
    layers = dg.default_layers(model)
    assert layers == [f"{stack}.0:input"] + [f"{stack}.{i}" for i in range(3)]
    assert dg.default_layers(model, point="post") == layers
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    with dg.LayerTaps(model, layers, pool=None) as taps:
        out = taps({"input_ids": ids})
    assert taps.order == layers  # forward order
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(hs) == len(layers)
    got = [out[n] for n in layers]
    for i in range(len(layers) - 1):
        torch.testing.assert_close(got[i], hs[i].flatten(1), atol=1e-6, rtol=0)
    last = got[-1].view(2, 7, 32)
    with torch.no_grad():  # HF's last hidden state is after the final norm, which is no block
        if kind == "gpt2":
            last = model.transformer.ln_f(last)
        elif kind == "llama":
            last = model.model.norm(last)
    torch.testing.assert_close(last, hs[-1], atol=1e-6, rtol=0)


def test_default_layers_torchvision_vit_and_swin():
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                            hidden_dim=16, mlp_dim=32).eval()
    names = [f"encoder.layers.encoder_layer_{i}" for i in range(2)]
    layers = dg.default_layers(vit)
    assert layers == [names[0] + ":input"] + names
    x = torch.randn(3, 3, 32, 32)
    with dg.LayerTaps(vit, layers, pool=None) as taps:
        out = taps(x)
    assert taps.order == layers
    with torch.no_grad():  # the hidden state entering block 0, by hand: patches, class token, pos
        h = vit._process_input(x)
        h = torch.cat([vit.class_token.expand(3, -1, -1), h], 1) + vit.encoder.pos_embedding
        torch.testing.assert_close(out[layers[0]], h.flatten(1), atol=1e-6, rtol=0)
        for name, block in zip(names, vit.encoder.layers):
            h = block(h)
            torch.testing.assert_close(out[name], h.flatten(1), atol=1e-6, rtol=0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 1, 2], num_heads=[1, 1, 1],
                           window_size=[2, 2]).eval()
    blocks = [n for n, m in swin.named_modules() if type(m).__name__ == "SwinTransformerBlock"]
    assert len(blocks) == 5
    layers = dg.default_layers(swin)
    assert layers == [blocks[0] + ":input"] + blocks
    x = torch.randn(2, 3, 32, 32)
    with dg.LayerTaps(swin, layers, pool=None) as taps:
        out = taps(x)
    assert taps.order == layers
    with torch.no_grad():  # the embedding is the patch embedding's output, [B, H/4, W/4, C]
        torch.testing.assert_close(out[layers[0]], swin.features[0](x).flatten(1))


def test_default_layers_transformer_encoder_and_encoder_decoder():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3,
                                enable_nested_tensor=False).eval()
    layers = dg.default_layers(enc)
    assert layers == ["layers.0:input", "layers.0", "layers.1", "layers.2"]
    x = torch.randn(2, 5, 8)
    with dg.LayerTaps(enc, layers, pool=None) as taps:
        out = taps(x)
    with torch.no_grad():
        h = x
        torch.testing.assert_close(out["layers.0:input"], h.flatten(1))
        for i, layer in enumerate(enc.layers):
            h = layer(h)
            torch.testing.assert_close(out[f"layers.{i}"], h.flatten(1), atol=1e-6, rtol=0)
    # encoder-decoder: one stack (the encoder, registered first), never both
    tr = nn.Transformer(8, 2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=16,
                        batch_first=True)
    assert dg.default_layers(tr) == ["encoder.layers.0:input", "encoder.layers.0",
                                     "encoder.layers.1"]


# ---------------------------------------------------------------------------- branchy CNNs
def _called_in_order(model, layers, x):
    """Every listed point runs once, in the listed order (forward hooks record the calls)."""
    with dg.LayerTaps(model, layers, pool="avg") as taps:
        out = taps(x)
    assert taps.order == layers
    return out


def _of_class(model, *classes):
    return [n for n, m in model.named_modules() if type(m) in classes]


def test_default_layers_googlenet_inception_blocks():
    from torchvision.models import googlenet
    from torchvision.models.googlenet import Inception
    torch.manual_seed(0)
    m = googlenet(weights=None, init_weights=False, aux_logits=True).eval()
    before = len(dg.list_layers(m, nn.Conv2d))
    layers = dg.default_layers(m)
    incs = _of_class(m, Inception)
    assert len(incs) == 9 and before == 59  # every conv (57, and 2 in aux heads) before
    assert layers == ["conv1.conv", "conv2.conv", "conv3.conv"] + incs  # no aux1/aux2
    post = dg.default_layers(m, point="post")
    assert post == ["conv1", "conv2", "conv3"] + incs
    out = _called_in_order(m, layers, torch.randn(2, 3, 64, 64))
    with dg.LayerTaps(m, ["conv1.conv", "conv1"], pool=None) as taps:
        o = taps(torch.randn(2, 3, 64, 64))
    with torch.no_grad():  # 'post' of a BasicConv2d stem conv is relu(bn(conv))
        ref = torch.relu(m.conv1.bn(o["conv1.conv"].view(2, 64, 32, 32))).flatten(1)
    torch.testing.assert_close(o["conv1"], ref)
    assert out["inception5b"].shape == (2, 1024)


def test_default_layers_inception_v3_mixed_blocks():
    from torchvision.models import inception
    m = inception.inception_v3(weights=None, init_weights=False, aux_logits=True).eval()
    layers = dg.default_layers(m)
    mixed = _of_class(m, inception.InceptionA, inception.InceptionB, inception.InceptionC,
                      inception.InceptionD, inception.InceptionE)
    assert len(mixed) == 11 and all(n.startswith("Mixed_") for n in mixed)
    stem = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    assert layers == [s + ".conv" for s in stem] + mixed  # AuxLogits left out
    _called_in_order(m, layers, torch.randn(1, 3, 80, 80))


@pytest.mark.parametrize("kind", ["efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small"])
def test_default_layers_mobile_blocks(kind):
    import torchvision.models as tvm
    from torchvision.models.efficientnet import MBConv
    from torchvision.models.mobilenetv2 import InvertedResidual as IR2
    from torchvision.models.mobilenetv3 import InvertedResidual as IR3
    m = getattr(tvm, kind)(weights=None).eval()
    blocks = _of_class(m, MBConv, IR2, IR3)
    head = f"features.{len(m.features) - 1}"
    layers = dg.default_layers(m)
    # stem conv, every block, the head conv (all other convs are inside blocks)
    assert layers == ["features.0.0"] + blocks + [head + ".0"]
    assert len(blocks) == {"efficientnet_b0": 16, "mobilenet_v2": 17,
                           "mobilenet_v3_small": 11}[kind]
    acts = dict(m.named_modules())
    post = dg.default_layers(m, point="post")
    assert post[1:-1] == blocks  # a block's output is the same point for 'post'
    assert isinstance(acts[post[0]], (nn.ReLU6, nn.SiLU, nn.Hardswish))
    assert isinstance(acts[post[-1]], (nn.ReLU6, nn.SiLU, nn.Hardswish))
    _called_in_order(m, layers, torch.randn(1, 3, 32, 32))


def test_default_layers_densenet_convnext_regnet():
    from torchvision.models import convnext_tiny, densenet121, regnet_x_400mf
    from torchvision.models.convnext import CNBlock
    from torchvision.models.densenet import _DenseBlock, _Transition
    from torchvision.models.regnet import ResBottleneckBlock
    d = densenet121(weights=None).eval()
    dense = _of_class(d, _DenseBlock, _Transition)
    assert len(dense) == 7 and dg.default_layers(d) == ["features.conv0"] + dense
    _called_in_order(d, dg.default_layers(d), torch.randn(1, 3, 32, 32))
    c = convnext_tiny(weights=None).eval()
    blocks = _of_class(c, CNBlock)
    layers = dg.default_layers(c)
    assert len(blocks) == 18
    # stem conv, the blocks, and the three downsampling convs between stages
    assert [n for n in layers if n not in blocks] == ["features.0.0", "features.2.1",
                                                      "features.4.1", "features.6.1"]
    _called_in_order(c, layers, torch.randn(1, 3, 32, 32))
    r = regnet_x_400mf(weights=None).eval()
    assert dg.default_layers(r) == ["stem.0"] + _of_class(r, ResBottleneckBlock)
    _called_in_order(r, dg.default_layers(r), torch.randn(1, 3, 32, 32))


def test_default_layers_branchy_user_module_and_known_order():
    class Mixed(nn.Module):  # a user's Inception-style block: parallel branches, concatenated
        def __init__(self, c):
            super().__init__()
            self.branch_a = nn.Conv2d(c, 2, 1)
            self.branch_b = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 3,
                                                                                 padding=1))

        def forward(self, x):
            return torch.cat([self.branch_a(x), self.branch_b(x)], 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.act = nn.ReLU()
            self.mix1, self.mix2 = Mixed(4), Mixed(4)
            self.aux_head = nn.Conv2d(4, 2, 1)  # only used in training: not a depth point
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.mix2(self.mix1(self.act(self.stem(x))))
            return self.fc(x.mean((2, 3)))

    net = Net().eval()
    assert dg.default_layers(net) == ["stem", "mix1", "mix2"]
    assert dg.default_layers(net, point="post") == ["act", "mix1", "mix2"]
    _called_in_order(net, dg.default_layers(net), torch.randn(2, 3, 8, 8))
