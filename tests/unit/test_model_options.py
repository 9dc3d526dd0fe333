"""model: each architecture option past GPT-2 (rope and its Llama 3 scaling, rmsnorm, swiglu/relu2,
qk_norm, GQA, head_dim, qkv_bias, untied head, logit soft-capping) pinned down by a property or a
direct formula, and the KV cache for every combination."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml_playground.config import GPTConfig, RopeScaling
from ml_playground.generate import SamplingParams, generate
from ml_playground.model import GPT, MLP, CausalSelfAttention, KVCache, Rotary, rope_frequencies
from ml_playground.train.checkpoint import model_args_of

BASE = GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=4, n_embd=32)
LLAMA = BASE.replace(position="rope", norm="rmsnorm", mlp="swiglu", mlp_hidden=48)

# Each option alone, the Llama set, and everything at once (GQA with qk_norm, untied, capped).
COMBINATIONS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "rope": {"position": "rope"},
    "rmsnorm": {"norm": "rmsnorm"},
    "swiglu": {"mlp": "swiglu", "mlp_hidden": 48},
    "relu2": {"mlp": "relu2"},
    "qk_norm": {"qk_norm": True},
    "gqa": {"n_kv_head": 2},
    "mqa": {"n_kv_head": 1},
    "untied": {"tie_embeddings": False},
    "softcap": {"logit_softcap": 3.0},
    "head_dim": {"position": "rope", "head_dim": 16, "n_kv_head": 2},  # attention 64 wide in a width of 32
    "qkv_bias": {"qkv_bias": True},
    "rope_scaling": {"position": "rope", "rope_scaling": RopeScaling(original_max_position_embeddings=16)},
    "llama": {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "mlp_hidden": 48, "n_kv_head": 2},
    "all": {
        "position": "rope",
        "norm": "rmsnorm",
        "mlp": "relu2",
        "qk_norm": True,
        "n_kv_head": 2,
        "tie_embeddings": False,
        "logit_softcap": 5.0,
        "bias": True,
    },
}


def model_with(seed: int = 0, **options: Any) -> GPT:
    torch.manual_seed(seed)
    model = GPT(BASE.replace(**options))
    with torch.no_grad():  # larger weights than GPT-2's init: varied, clear-cut greedy choices
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    return model.eval()


def attention(config: GPTConfig) -> CausalSelfAttention:
    torch.manual_seed(0)
    return CausalSelfAttention(config).eval()


def reference_attention(attn: CausalSelfAttention, x: Tensor) -> Tensor:
    """Causal attention written out: each key/value head repeated for its group of query heads."""
    B, T, C = x.size()
    q, k, v = attn.heads(x)
    group = attn.n_head // attn.n_kv_head
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, T, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    y = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
    out: Tensor = attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
    return out


class TestParameters:
    def test_gpt2_defaults_keep_nanogpt_names_and_shapes(self) -> None:
        shapes = {name: tuple(p.shape) for name, p in GPT(BASE).state_dict().items()}
        assert shapes["transformer.wpe.weight"] == (16, 32)
        assert shapes["transformer.h.0.attn.c_attn.weight"] == (96, 32)
        assert shapes["transformer.h.0.mlp.c_fc.weight"] == (128, 32)
        assert "transformer.h.0.ln_1.weight" in shapes
        assert not any("norm.weight" in name and "attn" in name for name in shapes)

    def test_llama_options_change_exactly_the_parameters_they_own(self) -> None:
        config = LLAMA.replace(n_kv_head=2, qk_norm=True, tie_embeddings=False)
        model = GPT(config)
        shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
        assert "transformer.wpe.weight" not in shapes  # rotary positions have no weights
        assert shapes["transformer.h.0.attn.c_attn.weight"] == ((4 + 2 * 2) * 8, 32)  # q, then k and v of 2 heads
        assert shapes["transformer.h.0.attn.q_norm.weight"] == (8,)
        assert shapes["transformer.h.0.mlp.c_fc.weight"] == (2 * 48, 32)  # gate and up
        assert shapes["transformer.h.0.mlp.c_proj.weight"] == (32, 48)
        assert isinstance(model.transformer["ln_f"], nn.RMSNorm)
        assert model.lm_head.weight is not model.wte.weight
        assert not any(name.endswith(".bias") for name in shapes)
        assert not any(name.endswith((".cos", ".sin")) for name in shapes)  # derived, not saved

    def test_tied_head_is_the_embedding(self) -> None:
        model = GPT(BASE)
        assert model.lm_head.weight is model.wte.weight

    def test_num_params_counts_the_untied_head(self) -> None:
        tied, untied = GPT(BASE), GPT(BASE.replace(tie_embeddings=False))
        assert untied.num_params() - tied.num_params() == 40 * 32
        rope = GPT(BASE.replace(position="rope"))
        assert rope.num_params() == rope.num_params(non_embedding=False) == tied.num_params()


class TestRotary:
    def test_scores_depend_on_relative_positions_only(self) -> None:
        rotary = Rotary(BASE.replace(block_size=64, position="rope"))
        torch.manual_seed(0)
        q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

        def score(q_pos: int, k_pos: int) -> float:
            return float((rotary(q, q_pos) * rotary(k, k_pos)).sum())

        assert score(10, 7) == pytest.approx(score(3, 0), abs=1e-5)
        assert score(50, 47) == pytest.approx(score(3, 0), abs=1e-5)
        assert score(10, 7) != pytest.approx(score(10, 8), abs=1e-3)  # and they do depend on it

    def test_rotation_keeps_length_and_position_zero_is_identity(self) -> None:
        rotary = Rotary(BASE.replace(position="rope"))
        x = torch.randn(2, 4, 5, 8)
        assert torch.equal(rotary(x[:, :, :1], 0), x[:, :, :1])
        rotated: Tensor = rotary(x, 3)
        assert torch.allclose(rotated.pow(2).sum(-1), x.pow(2).sum(-1), atol=1e-5)  # lengths kept

    def test_theta_sets_the_frequencies(self) -> None:
        slow = Rotary(BASE.replace(position="rope", rope_theta=1e6))
        fast = Rotary(BASE.replace(position="rope"))
        # The lowest-frequency pair turns by 1/theta^(6/8) radians per position.
        assert float(slow.sin[1, 3]) == pytest.approx(math.sin(1e6**-0.75))
        assert float(fast.sin[1, 3]) == pytest.approx(math.sin(1e4**-0.75))

    def test_one_table_per_model_moved_with_it_and_never_saved(self) -> None:
        model = GPT(BASE.replace(position="rope", n_layer=3))
        rotations = {id(block.attn.rotary) for block in model.blocks}
        assert len(rotations) == 1  # every layer rotates with the same module
        tables = [name for name, _ in model.named_buffers() if name.endswith((".cos", ".sin"))]
        assert len(tables) == 2
        model.to(torch.float64)  # buffers follow the model (as to(device) does) ...
        assert {str(buffer.dtype) for _, buffer in model.named_buffers()} == {"torch.float64"}
        assert not any(name.endswith((".cos", ".sin")) for name in model.state_dict())  # ... and stay out of it

    def test_rope_model_sees_order_without_position_embeddings(self) -> None:
        model = model_with(position="rope")
        with torch.no_grad():
            a = model(torch.tensor([[1, 2, 3, 4]])).logits[0, -1]
            b = model(torch.tensor([[3, 2, 1, 4]])).logits[0, -1]
        assert not torch.allclose(a, b, atol=1e-4)


class TestNormsAndMLPs:
    def test_rmsnorm_is_torchs_rms_norm(self) -> None:
        model = GPT(BASE.replace(norm="rmsnorm", norm_eps=1e-6))
        ln = model.blocks[0].ln_1
        assert isinstance(ln, nn.RMSNorm)
        assert ln.weight is not None
        with torch.no_grad():
            ln.weight.uniform_(0.5, 1.5)
        x = torch.randn(2, 5, 32)
        assert torch.allclose(ln(x), F.rms_norm(x, (32,), ln.weight, eps=1e-6))

    def test_layernorm_takes_norm_eps(self) -> None:
        ln = GPT(BASE.replace(norm_eps=1e-3)).blocks[0].ln_1
        assert isinstance(ln, nn.LayerNorm)
        assert ln.eps == 1e-3

    def test_swiglu_is_silu_gate_times_up(self) -> None:
        torch.manual_seed(0)
        mlp = MLP(BASE.replace(mlp="swiglu", mlp_hidden=48))
        x = torch.randn(2, 3, 32)
        gate, up = mlp.c_fc.weight[:48], mlp.c_fc.weight[48:]
        expected = (F.silu(x @ gate.T) * (x @ up.T)) @ mlp.c_proj.weight.T
        assert torch.allclose(mlp(x), expected, atol=1e-6)

    def test_relu2_is_squared_relu(self) -> None:
        torch.manual_seed(0)
        mlp = MLP(BASE.replace(mlp="relu2", bias=True))
        x = torch.randn(2, 3, 32)
        h = torch.clamp(x @ mlp.c_fc.weight.T + mlp.c_fc.bias, min=0) ** 2
        assert torch.allclose(mlp(x), h @ mlp.c_proj.weight.T + mlp.c_proj.bias, atol=1e-6)
        assert mlp.c_fc.out_features == 4 * 32


class TestAttention:
    @pytest.mark.parametrize("n_kv_head", [4, 2, 1])
    def test_grouped_query_attention_repeats_key_value_heads(self, n_kv_head: int) -> None:
        attn = attention(BASE.replace(n_kv_head=n_kv_head))
        x = torch.randn(2, 7, 32)
        with torch.no_grad():
            assert torch.allclose(attn(x), reference_attention(attn, x), atol=1e-5)

    def test_n_kv_head_equal_to_n_head_is_plain_attention(self) -> None:
        plain, gqa = attention(BASE), attention(BASE.replace(n_kv_head=4))
        x = torch.randn(2, 7, 32)
        assert plain.state_dict().keys() == gqa.state_dict().keys()
        gqa.load_state_dict(plain.state_dict())
        with torch.no_grad():
            assert torch.equal(plain(x), gqa(x))

    def test_qk_norm_gives_unit_rms_queries_and_keys(self) -> None:
        attn = attention(BASE.replace(qk_norm=True, norm_eps=1e-8))
        q, k, _ = attn.heads(torch.randn(2, 7, 32) * 5)
        assert torch.allclose(q.pow(2).mean(-1), torch.ones(2, 4, 7), atol=1e-4)
        assert torch.allclose(k.pow(2).mean(-1), torch.ones(2, 4, 7), atol=1e-4)
        with torch.no_grad():
            x = torch.randn(2, 7, 32)
            assert torch.allclose(attn(x), reference_attention(attn, x), atol=1e-5)


class TestLogits:
    def test_softcap_bounds_logits_with_tanh(self) -> None:
        capped = model_with(logit_softcap=2.0)
        with torch.no_grad():
            capped.wte.weight.mul_(3.0)  # the tied head then gives logits past the cap
        plain = GPT(BASE.replace())
        plain.load_state_dict(capped.state_dict())
        idx = torch.tensor([[1, 2, 3, 4]])
        with torch.no_grad():
            raw, out = plain(idx).logits, capped(idx).logits
        assert float(raw.abs().max()) > 2.0  # the cap is reached
        assert float(out.abs().max()) <= 2.0
        assert torch.allclose(out, 2.0 * torch.tanh(raw / 2.0), atol=1e-6)

    def test_softcap_still_masks_padding(self) -> None:
        model = GPT(BASE.replace(logit_softcap=2.0, real_vocab_size=30))
        logits = model(torch.tensor([[1, 2]])).logits
        assert torch.isinf(logits[..., 30:]).all()
        assert torch.isfinite(logits[..., :30]).all()


class TestKVCache:
    def test_cache_holds_kv_heads_only(self) -> None:
        cache = KVCache(3, BASE.replace(n_kv_head=1), torch.device("cpu"), torch.float32)
        assert cache.layers[0].k.shape == (3, 1, 16, 8)

    def test_capacity_bounds_the_cache_and_the_sequence(self) -> None:
        model = model_with(**COMBINATIONS["llama"])
        cache = KVCache(1, model.config, torch.device("cpu"), torch.float32, capacity=6)
        assert cache.layers[0].k.shape == (1, 2, 6, 8)
        with torch.inference_mode():
            model(torch.tensor([[1, 2, 3, 4]]), cache=cache)
            with pytest.raises(ValueError, match="capacity 6"):
                model(torch.tensor([[5, 6, 7]]), cache=cache)
        with pytest.raises(ValueError, match="block_size=16"):
            KVCache(1, model.config, torch.device("cpu"), torch.float32, capacity=17)

    @pytest.mark.parametrize("name", list(COMBINATIONS))
    def test_cached_logits_match_full_forward(self, name: str) -> None:
        model = model_with(**COMBINATIONS[name])
        ids = torch.tensor([[2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]])
        cache = KVCache(2, model.config, torch.device("cpu"), torch.float32)
        with torch.inference_mode():
            steps = [model(ids[:, :4], cache=cache).logits]  # prefill
            steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(4, 8)]  # one at a time
            steps += [model(ids[:, 8:], cache=cache).logits]  # several after a filled cache
            full = model(ids).logits
        assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)

    @pytest.mark.parametrize("name", list(COMBINATIONS))
    def test_greedy_with_and_without_cache_is_identical_past_block_size(self, name: str) -> None:
        model = model_with(**COMBINATIONS[name])
        prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
        params = SamplingParams(temperature=0.0)
        cached = generate(model, prompt, 30, params, keep=10, use_cache=True)
        uncached = generate(model, prompt, 30, params, keep=10, use_cache=False)
        assert torch.equal(cached, uncached)
        assert len({int(v) for v in cached[0, 3:]}) > 3  # a real sequence, not one repeated token


class TestQwenAndLlama3Options:
    def test_head_dim_sets_the_attention_width_whatever_n_embd(self) -> None:
        config = BASE.replace(position="rope", head_dim=16, n_kv_head=2)
        attn = attention(config)
        assert attn.c_attn.weight.shape == ((4 + 2 * 2) * 16, 32)
        assert attn.c_proj.weight.shape == (32, 4 * 16)
        x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
        q, k, _ = attn.heads(x)
        assert (q.shape, k.shape) == ((2, 4, 5, 16), (2, 2, 5, 16))
        assert attn(x).shape == x.shape

    def test_qkv_bias_is_on_the_query_key_value_projection_only(self) -> None:
        model = GPT(BASE.replace(qkv_bias=True))
        biases = {name for name, _ in model.named_parameters() if name.endswith(".bias")}
        assert biases == {f"transformer.h.{i}.attn.c_attn.bias" for i in range(2)}

    def test_llama3_frequencies_are_transformers(self) -> None:
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        scaling = RopeScaling(
            factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
        )
        config = BASE.replace(position="rope", rope_theta=500000.0, head_dim=16, rope_scaling=scaling)
        theirs = LlamaConfig(
            hidden_size=32,
            num_attention_heads=4,
            head_dim=16,
            max_position_embeddings=16,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0} | scaling.model_dump(exclude={"rope_type"}),
        )
        inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](theirs, None)
        ours = rope_frequencies(config)
        assert attention_factor == 1.0
        assert torch.equal(ours, inv_freq.float())
        plain = rope_frequencies(config.replace(rope_scaling=None))
        assert ours[0] == plain[0]
        assert ours[-1] == plain[-1] / 8

    def test_defaults_are_the_earlier_architecture(self) -> None:
        """A checkpoint written before these options (its gpt_config without them) means what it meant."""
        earlier = {
            key: value
            for key, value in LLAMA.model_dump().items()
            if key not in ("head_dim", "qkv_bias", "rope_scaling")
        }
        loaded = GPTConfig.model_validate(earlier, strict=True)
        assert (loaded.head_dim, loaded.qkv_bias, loaded.rope_scaling) == (8, False, None)
        assert loaded == LLAMA
        assert set(model_args_of(BASE)) == {
            "n_layer",
            "n_head",
            "n_embd",
            "block_size",
            "bias",
            "vocab_size",
            "dropout",
        }
        scaled = model_args_of(LLAMA.replace(rope_scaling=RopeScaling()))
        assert scaled["rope_scaling"] == RopeScaling().model_dump()  # a plain dict in the file

    def test_head_dim_and_rope_scaling_rules(self) -> None:
        assert GPTConfig(n_embd=30, n_head=4, head_dim=8).head_dim == 8  # a width n_head does not divide
        with pytest.raises(ValueError, match="rope_scaling needs position = 'rope'"):
            BASE.replace(rope_scaling=RopeScaling())
        with pytest.raises(ValueError, match="must exceed low_freq_factor"):
            RopeScaling(low_freq_factor=4.0, high_freq_factor=1.0)


class TestConfig:
    def test_impossible_combinations_are_refused(self) -> None:
        with pytest.raises(ValueError, match=r"n_head \(4\) must be divisible by n_kv_head \(3\)"):
            BASE.replace(n_kv_head=3)
        with pytest.raises(ValueError, match="even head size"):
            GPTConfig(block_size=8, vocab_size=8, n_layer=1, n_head=4, n_embd=12, position="rope")

    def test_left_out_sizes_are_numbers_that_follow_their_keys(self) -> None:
        assert (BASE.mlp_hidden, BASE.n_kv_head) == (128, 4)  # 4 x n_embd; one key/value head per head
        assert BASE.replace(mlp_hidden=128, n_kv_head=4) == BASE  # the same architecture compares equal
        assert (BASE.replace(n_head=2).n_kv_head, BASE.replace(n_embd=64).mlp_hidden) == (2, 256)
        assert BASE.replace(n_kv_head=2).replace(n_head=8).n_kv_head == 2  # a size given stays
        assert BASE.replace(mlp="swiglu", mlp_multiple=16).mlp_hidden == 96  # 8/3 x 32 rounded up to 16s

    @pytest.mark.parametrize("name", list(COMBINATIONS))
    def test_every_combination_trains(self, name: str) -> None:
        torch.manual_seed(0)
        model = GPT(BASE.replace(**COMBINATIONS[name]))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(0))
        losses = []
        for _ in range(15):
            loss = model(x[:, :-1], x[:, 1:].contiguous()).loss
            assert loss is not None
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.8 * losses[0]
