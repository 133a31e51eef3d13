"""Model/parallel config validation: each mistake gets a ValueError that names the fix."""
import pytest

from megatron_patch.config import PRESETS, ModelConfig, ParallelConfig, get_preset, validate_for


def test_paper_presets_match_design_table():
    expected = {  # name: (hidden, ffn, layers, heads, params in millions, rounded)
        "370m": (1024, 2752, 24, 16, 369), "780m": (1536, 4128, 24, 16, 781),
        "1.3b": (2048, 5504, 24, 16, 1345), "2.7b": (2560, 6880, 32, 32, 2694),
    }
    for name, (h, f, L, a, m) in expected.items():
        c = PRESETS[name]
        assert (c.hidden_size, c.ffn_hidden_size, c.num_layers, c.num_attention_heads) == (h, f, L, a)
        assert round(c.num_params() / 1e6) == m
        assert not c.tie_embeddings and c.vocab_size == 32000


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_at_its_intended_layouts(name):
    cfg = PRESETS[name]
    for tp in (1, 2, 4) if cfg.num_attention_heads >= 4 else (1,):
        validate_for(cfg, ParallelConfig(tensor_model_parallel_size=tp), 4, 256)


def test_seq_length_not_multiple_of_k():
    with pytest.raises(ValueError, match="not a multiple of --patch-size 4; use e.g. 64"):
        validate_for(get_preset("tiny"), ParallelConfig(), 4, 66)


def test_max_position_embeddings_counts_positions_not_tokens():
    validate_for(get_preset("tiny"), ParallelConfig(), 4, 4096)  # 1024 patches of 4 tokens fit
    with pytest.raises(ValueError, match="2048 transformer positions, more than --max-position-embeddings 1024"):
        validate_for(get_preset("tiny"), ParallelConfig(), 4, 8192)


def test_heads_must_divide_hidden():
    with pytest.raises(ValueError, match="--num-attention-heads 5 does not divide --hidden-size 64"):
        get_preset("tiny", num_attention_heads=5)


def test_query_groups_must_divide_heads():
    with pytest.raises(ValueError, match="--num-query-groups 3 must divide"):
        get_preset("tiny", num_query_groups=3)


def test_tp_must_divide_heads():
    with pytest.raises(ValueError, match="must divide num_attention_heads"):
        validate_for(get_preset("tiny"), ParallelConfig(tensor_model_parallel_size=8), 1, 64)


def test_tp_must_divide_ffn():
    with pytest.raises(ValueError, match="does not divide ffn_hidden_size 170"):
        validate_for(get_preset("tiny", ffn_hidden_size=170), ParallelConfig(tensor_model_parallel_size=4), 1, 64)


def test_layers_must_split_over_pipeline():
    with pytest.raises(ValueError, match="num_layers=4 is not divisible"):
        validate_for(get_preset("tiny"), ParallelConfig(pipeline_model_parallel_size=3), 1, 64)


def test_sequence_parallel_needs_whole_patches_per_rank():
    par = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True)
    with pytest.raises(ValueError, match="T=15"):
        validate_for(get_preset("tiny"), par, 4, 60)


@pytest.mark.parametrize("vocab,tp", [(32000, 1), (32000, 8), (32001, 2), (1000, 4)])
def test_vocab_is_padded_for_tp(vocab, tp):
    cfg = get_preset("tiny", vocab_size=vocab)
    padded = cfg.padded_vocab_size(tp)
    assert padded >= vocab and padded % (128 * tp) == 0 and padded - vocab < 128 * tp


def test_bad_vocab_padding_setting():
    with pytest.raises(ValueError, match="--make-vocab-size-divisible-by"):
        ModelConfig(num_layers=1, hidden_size=8, ffn_hidden_size=8, num_attention_heads=1,
                    make_vocab_size_divisible_by=0)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("7b")
