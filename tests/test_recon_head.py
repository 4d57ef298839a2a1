"""The reconstruction heads are the authors': Croc's BertLayer block and ViCToR's linear layer, as
built and initialised in their code (recipes/authors.yaml has the lines)."""
import math
from importlib import resources

import pytest
import torch
import yaml
from torch import nn
from transformers import BertConfig, BertLayer
from transformers.activations import GELUActivation

from victor.config import ComprehensionConfig, ConfigError
from victor.model.comprehension import ReconstructionHead

FACTS = yaml.safe_load((resources.files("victor") / "recipes" / "authors.yaml").read_text())["facts"]


def authors(recipe: str, setting: str):
    """The authors' stage-1.5 value of `setting` for `recipe` (exactly one fact)."""
    found = [f["value"] for f in FACTS if f["recipe"] == recipe and f["setting"] == setting and "1.5" in f["stage"]]
    assert len(found) == 1, f"{recipe} {setting}: {len(found)} facts"
    return found[0]


def per_hidden(rule, hidden: int) -> int:
    """A fact such as 'hidden // 64' or '4 * hidden' evaluated at `hidden`."""
    return {"hidden // 64": hidden // 64, "4 * hidden": 4 * hidden}[rule]


class AuthorsCrocHead(nn.Module):
    """Croc's head as croc_llama.py:45-63 builds it (our own transcription, not their code): an
    nn.Embedding of 576 positions, one BertLayer from a BertConfig with width, 4x intermediate and
    width // 64 heads (everything else BertConfig's defaults), then a linear map."""

    def __init__(self, hidden: int):
        super().__init__()
        self.position_embeddings = nn.Embedding(576, hidden)
        self.layers = nn.ModuleList([BertLayer(BertConfig(hidden_size=hidden, intermediate_size=hidden * 4,
                                                          num_attention_heads=hidden // 64))])
        self.resize = nn.Linear(hidden, hidden)

    def forward(self, x):
        x = x + self.position_embeddings(torch.arange(x.size(1))).unsqueeze(0).expand_as(x)
        for layer in self.layers:
            x = layer(x)  # transformers 5 returns the tensor (4.37, the authors' version: a tuple, hence their [0])
        return self.resize(x)


def test_croc_head_is_a_bert_layer_with_the_authors_config():
    """At the published width (Vicuna-7B: 4096, 576 CLIP tokens), built on the meta device."""
    hidden, n_visual = 4096, 576
    with torch.device("meta"):
        head = ReconstructionHead("transformer", hidden, hidden, n_visual)
    layer = head.layer
    assert authors("croc-7b", "recon_head") == "transformer" and authors("croc-7b", "recon_head_block") == "BertLayer"
    assert type(layer) is BertLayer and not layer.is_decoder and not layer.add_cross_attention
    attention = layer.attention.self
    assert attention.num_attention_heads == per_hidden(authors("croc-7b", "recon_head_heads"), hidden) == 64
    assert attention.attention_head_size == 64 and not attention.is_causal
    assert layer.intermediate.dense.out_features == per_hidden(authors("croc-7b", "recon_head_intermediate_size"),
                                                               hidden) == 16384
    assert authors("croc-7b", "recon_head_act") == "gelu" and isinstance(layer.intermediate.intermediate_act_fn,
                                                                           GELUActivation)
    dropout = authors("croc-7b", "recon_head_dropout")
    assert attention.dropout.p == layer.attention.output.dropout.p == layer.output.dropout.p == dropout == 0.1
    eps = authors("croc-7b", "recon_head_layer_norm_eps")
    assert layer.attention.output.LayerNorm.eps == layer.output.LayerNorm.eps == eps == 1e-12
    assert authors("croc-7b", "recon_head_positions") == "learned" and head.positions.shape == (n_visual, hidden)
    assert head.proj.in_features == head.proj.out_features == hidden


def copy_into_authors(ours: ReconstructionHead, theirs: AuthorsCrocHead) -> None:
    with torch.no_grad():
        theirs.position_embeddings.weight.normal_(std=5.0)  # rows past n_visual stay different: unused
        theirs.position_embeddings.weight[: ours.positions.shape[0]].copy_(ours.positions)
    theirs.layers[0].load_state_dict(ours.layer.state_dict())
    theirs.resize.load_state_dict(ours.proj.state_dict())


def test_croc_head_computes_what_the_authors_block_computes():
    """Weights copied from ours into the authors' structure: the same outputs in eval mode, and in
    train mode with the same dropout seed (the dropout draws follow the same order of operations)."""
    torch.manual_seed(0)
    hidden, n_visual = 128, 16  # 2 heads of 64, as the authors' rule gives at this width
    ours = ReconstructionHead("transformer", hidden, hidden, n_visual)
    with torch.no_grad():
        ours.positions.normal_(std=1.0)  # large enough that a missing or misplaced term shows
        for p in ours.layer.parameters():
            p.add_(0.05 * torch.randn_like(p))  # not the fresh init's zeros and ones
    theirs = AuthorsCrocHead(hidden)
    copy_into_authors(ours, theirs)
    x = torch.randn(3, n_visual, hidden)
    with torch.no_grad():
        ours.eval(), theirs.eval()
        assert torch.equal(ours(x), theirs(x))
        ours.train(), theirs.train()
        torch.manual_seed(7)
        out = ours(x)
        torch.manual_seed(7)
        assert torch.equal(out, theirs(x))
        torch.manual_seed(8)
        assert (out - ours(x)).abs().max() > 1e-2  # dropout is on (0.1) and draws with the seed
        assert (out - ours.eval()(x)).abs().max() > 1e-2


def assert_normal(values: torch.Tensor, std: float, name: str) -> None:
    """Mean 0 and standard deviation `std`, each within 6 standard errors of its estimate
    (mean: std / sqrt(n); sample std of a normal: about std / sqrt(2n))."""
    n = values.numel()
    mean, sample_std = float(values.mean()), float(values.std())
    assert abs(mean) < 6 * std / math.sqrt(n), f"{name}: mean {mean:.2e} over {n}"
    assert abs(sample_std - std) < 6 * std / math.sqrt(2 * n), f"{name}: std {sample_std:.5f} over {n}, not {std}"


@pytest.mark.parametrize("kind,recipe", [("transformer", "croc-7b"), ("linear", "victor-7b")])
def test_fresh_head_is_initialised_as_the_authors(kind, recipe):
    """Every Linear weight (q, k, v, attention out, FFN in and out, proj; and the positions) N(0, 0.02), every bias 0, LayerNorm 1 and 0."""
    std = authors(recipe, "recon_head_init_std")
    assert std == 0.02
    torch.manual_seed(0)
    head = ReconstructionHead(kind, hidden=256, out=256, n_visual=64)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in head.modules() if isinstance(m, nn.LayerNorm)]
    assert len(linears) == (7 if kind == "transformer" else 1) and len(norms) == (2 if kind == "transformer" else 0)
    for i, m in enumerate(linears):
        assert_normal(m.weight.detach(), std, f"linear {i} {tuple(m.weight.shape)}")
        assert torch.count_nonzero(m.bias) == 0
    for m in norms:
        assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0
    if kind == "transformer":
        assert_normal(head.positions.detach(), std, "positions")
    # the check can fail: PyTorch's default Linear init (uniform, std 1/sqrt(3*256) = 0.036) is not this
    with pytest.raises(AssertionError):
        assert_normal(nn.Linear(256, 256).weight.detach(), std, "default")


def test_head_dropout_is_a_setting_and_zero_makes_training_deterministic():
    torch.manual_seed(0)
    head = ReconstructionHead("transformer", 64, 8, 16, dropout=0.0).train()
    layer = head.layer
    assert layer.attention.self.dropout.p == layer.attention.output.dropout.p == layer.output.dropout.p == 0.0
    x = torch.randn(3, 16, 64)
    with torch.no_grad():
        out = head(x)
        assert out.shape == (3, 16, 8) and torch.equal(out, head(x))
        # each image is its own sequence: image 0's output does not depend on the others
        assert torch.allclose(head(x[:1]), out[:1], atol=1e-6)
    assert ComprehensionConfig().recon_head_dropout == 0.1  # the authors' value is the default
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="recon_head_dropout"):
            ComprehensionConfig(recon_head_dropout=bad).validate()


@pytest.mark.parametrize("hidden,heads", [(4096, 64), (3584, 56), (192, 3), (64, 1), (48, 1), (200, 2)])
def test_heads_follow_the_authors_rule_and_always_divide_the_width(hidden, heads):
    """hidden // 64 heads (the authors' rule, exact where 64 divides the width); otherwise the largest
    count below it that divides the width (200: 3 does not, 2 does), at least one."""
    with torch.device("meta"):
        layer = ReconstructionHead("transformer", hidden, 8, 4).layer
    assert layer.attention.self.num_attention_heads == heads and hidden % heads == 0
