"""GGUF / mlx-lm export of a fused humanizer: a tiny random Llama with SFT + DPO adapters whose B
matrices are non-zero (so the fuse matters), the real SmolLM2 tokenizer, read back three ways."""
import json

import mlx.core as mx
import numpy as np
import pytest

from helpers.core.config import get_config
from helpers.core.gguf import gguf_config, gguf_to_mlx_names, load_gguf, unpermute_rope_rows
from helpers.core.models import resolve
from helpers.core.prompt import rewrite_request
from helpers.infer import systems
from helpers.infer.decode import prompt_tokens
from helpers.infer.systems import use_system
from helpers.tools import export
from helpers.train.adapters import load_stacked, save_dpo_adapter, save_sft_adapter
from helpers.train.lora import add_lora, lora_config, lora_layers
from helpers.train.stacked import add_dpo_adapter, stacked_layers

from conftest import WORKSHOP_MODEL, make_tiny_model

IDS = mx.array([[1, 9690, 198, 2683, 314, 253, 1842, 28, 5000, 12000, 2]])
DRAFT = "The results were remarkable, showcasing a 42% improvement in overall efficiency."
# worst |logit difference| / largest |logit| measured on this tiny model: f32 0, f16 7e-4,
# q8_0 1.2e-2; the bounds leave room for other seeds and BLAS summation orders
RELATIVE_TOLERANCE = {"f32": 1e-6, "f16": 3e-3, "q8_0": 4e-2}


def tiny_cfg():
    return get_config("smoke", lora_layers=2)


def train_like_adapters(folder, seed=0):
    """SFT and DPO adapters on the tiny model, B drawn at random (as if trained), saved as
    notebooks 04 and 05 save them."""
    cfg = tiny_cfg()
    model, _ = make_tiny_model(seed=seed)
    add_lora(model, lora_config(cfg, "sft"), seed=1)
    for _, m in lora_layers(model):
        m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape, key=mx.random.key(2))
    save_sft_adapter(model, folder / "sft", lora_config(cfg, "sft"))
    add_dpo_adapter(model, lora_config(cfg, "dpo"), seed=3)
    for _, m in stacked_layers(model):
        m.dpo_b = 0.05 * mx.random.normal(m.dpo_b.shape, key=mx.random.key(4))
    save_dpo_adapter(model, folder / "dpo", lora_config(cfg, "dpo"))


def stacked_logits(folder, which):
    model, _ = make_tiny_model(seed=0)
    load_stacked(model, folder / "sft", folder / "dpo")
    use_system(model, which)
    return model(IDS)


def relative_error(a, b):
    return (mx.abs(a - b).max() / mx.abs(b).max()).item()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tokenizer):
    """The tiny base as the run's base (Humanizer.load loads it) with trained-like adapters."""
    folder = tmp_path_factory.mktemp("adapters")
    train_like_adapters(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(systems, "adapter_dir", lambda cfg, name: folder / name)
        patch.setattr(systems, "load_base", lambda cfg: (make_tiny_model(seed=0)[0], tokenizer))
        yield folder


@pytest.fixture(scope="module")
def exported(adapters, tmp_path_factory):
    """The whole export path (fused sft+dpo, tokenizer keys from the source GGUF) in f32."""
    out = tmp_path_factory.mktemp("gguf") / "humanizer.gguf"
    return export.export_gguf(tiny_cfg(), "sft+dpo", out=out, outtype="f32")


@pytest.fixture(scope="module")
def source_fields():
    return export.tokenizer_fields_from_gguf(resolve(WORKSHOP_MODEL))


def read_with_gguf_reader(path):
    """An mlx-lm Llama from `gguf`'s own reader and dequantizer (not mx.load's GGUF reader)."""
    from gguf import GGUFReader, quants
    from mlx_lm.models import llama

    reader = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    raw = {t.name: mx.array(quants.dequantize(t.data, t.tensor_type).astype(np.float32))
           for t in reader.tensors}
    config = gguf_config(meta, raw)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.load_weights(list(gguf_to_mlx_names(raw, config).items()), strict=True)
    return model, reader


def test_permute_rope_rows_is_undone_by_the_loader():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)  # 4 heads of dim 8
    permuted = export.permute_rope_rows(w, 4)
    assert not np.array_equal(permuted, w)
    assert permuted[1, 0] == w[4, 0]  # row 1 of head 0 is the first row of its second half
    np.testing.assert_array_equal(np.array(unpermute_rope_rows(mx.array(permuted), 4)), w)


@pytest.mark.parametrize("which", systems.SYSTEMS)
def test_fused_humanizer_computes_what_the_adapters_compute(adapters, which):
    model, _, config = export.fused_humanizer(tiny_cfg(), which)
    assert not lora_layers(model)  # plain linears: any runtime can run it
    reference = stacked_logits(adapters, which)
    assert mx.abs(model(IDS) - reference).max().item() < 1e-5
    base = make_tiny_model(seed=0)[0](IDS)
    assert (which == "base") == (mx.abs(reference - base).max().item() < 1e-6)
    assert config["eos_token_id"] == 2 and config["num_hidden_layers"] == 2


def test_missing_adapter_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(systems, "adapter_dir", lambda cfg, name: tmp_path / name)
    with pytest.raises(FileNotFoundError, match=r"sft: no SFT adapter.*--adapter base"):
        export.fused_humanizer(tiny_cfg(), "sft")


def test_gguf_reads_back_through_the_project_loader(exported, adapters, tokenizer):
    model, gguf_tokenizer, config = load_gguf(str(exported))
    assert "quantization" not in config and config["num_key_value_heads"] == 2
    assert relative_error(model(IDS), stacked_logits(adapters, "sft+dpo")) < RELATIVE_TOLERANCE["f32"]
    # the tokenizer travelled; a chat without a system message gets the trained system prompt
    cfg = tiny_cfg()
    trained = prompt_tokens(tokenizer, DRAFT, cfg.system_prompt)
    user_only = [{"role": "user", "content": rewrite_request(DRAFT)}]
    no_system = gguf_tokenizer.apply_chat_template(user_only, add_generation_prompt=True,
                                                   return_dict=False)
    assert no_system == trained
    assert prompt_tokens(gguf_tokenizer, DRAFT, "Be brief.") == \
        prompt_tokens(tokenizer, DRAFT, "Be brief.")


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_gguf_reads_back_through_gguf_reader(outtype, adapters, source_fields, tmp_path):
    from gguf import GGMLQuantizationType as Q

    model, _, config = export.fused_humanizer(tiny_cfg(), "sft+dpo")
    path = export.write_gguf(tmp_path / f"tiny-{outtype}.gguf", model, config, source_fields, outtype)
    reread, reader = read_with_gguf_reader(path)
    assert relative_error(reread(IDS), model(IDS)) < RELATIVE_TOLERANCE[outtype]
    types = {t.name: t.tensor_type for t in reader.tensors}
    matrix_type = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[outtype]
    assert types["blk.1.attn_q.weight"] == types["token_embd.weight"] == matrix_type
    assert types["blk.0.attn_norm.weight"] == Q.F32 and "output.weight" not in types
    assert len(types) == 1 + 1 + 2 * 9  # embeddings, final norm, 9 tensors per block
    assert reader.fields["llama.rope.dimension_count"].contents() == 16
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    source = dict((k, v) for k, v, *_ in source_fields)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert reader.fields[key].contents() == source[key]
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == 2


def test_q8_0_reads_the_same_through_mlx_and_gguf(adapters, source_fields, tmp_path):
    model, _, config = export.fused_humanizer(tiny_cfg(), "sft+dpo")
    path = export.write_gguf(tmp_path / "tiny-q8.gguf", model, config, source_fields, "q8_0")
    quantized, _, mlx_config = load_gguf(str(path))
    assert mlx_config["quantization"]["bits"] == 8 and mlx_config["quantization"]["group_size"] == 32
    assert relative_error(quantized(IDS), read_with_gguf_reader(path)[0](IDS)) < 1e-5


def test_hf_tokenizer_route_builds_the_source_gguf_keys(tokenizer, source_fields, tmp_path):
    tokenizer.save_pretrained(str(tmp_path))
    built = {k: v for k, v, *_ in export.tokenizer_fields_from_hf(tmp_path, 49152)}
    source = {k: v for k, v, *_ in source_fields}
    for key in ("model", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id",
                "unknown_token_id", "padding_token_id", "add_bos_token"):
        assert built[f"tokenizer.ggml.{key}"] == source[f"tokenizer.ggml.{key}"], key
    # this tokenizer splits like GPT-2; digits are single tokens in this vocabulary, so llama.cpp's
    # "gpt-2" and "smollm" (digits split apart) rules cut text the same way
    assert built["tokenizer.ggml.pre"] == "gpt-2" and source["tokenizer.ggml.pre"] == "smollm"
    assert built["tokenizer.chat_template"] == source["tokenizer.chat_template"]


def test_unknown_pre_tokenizer_is_an_error(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path))
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="tokenizer.json: pre_tokenizer .*Metaspace"):
        export.tokenizer_fields_from_hf(tmp_path, 49152)


def test_modelfile_carries_template_system_prompt_and_decoding(exported):
    text = (exported.parent / "Modelfile").read_text()
    cfg = tiny_cfg()
    assert text.splitlines()[0] == f"FROM ./{exported.name}"
    assert f'SYSTEM """{cfg.system_prompt}"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert f"PARAMETER temperature {cfg.temperature}\n" in text
    assert f"PARAMETER repeat_penalty {cfg.repetition_penalty}\n" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # the ChatML turns of the chat template, in order, ending on the assistant's open turn
    for piece in ("<|im_start|>system\n{{ .System }}<|im_end|>\n",
                  "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n",
                  "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"):
        assert piece in template
    assert template.endswith("<|im_start|>assistant\n")


def test_mlx_folder_loads_with_mlx_lm(adapters, tmp_path):
    import mlx_lm

    out = export.export_mlx(tiny_cfg(), "sft+dpo", out=tmp_path / "fused")
    model, tokenizer = mlx_lm.load(str(out))
    assert mx.abs(model(IDS) - stacked_logits(adapters, "sft+dpo")).max().item() < 1e-5
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": DRAFT}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.startswith(f"<|im_start|>system\n{tiny_cfg().system_prompt}<|im_end|>\n")
    assert tokenizer.eos_token_id == 2 and not (tmp_path / "fused.tmp").exists()


def test_quantized_or_unsupported_models_are_refused(source_fields, tmp_path):
    import mlx.nn as nn

    model, config = make_tiny_model()
    with pytest.raises(ValueError, match="rope_scaling"):
        export.gguf_tensors(model, {**config, "rope_scaling": {"type": "linear", "factor": 2.0}})
    nn.quantize(model, group_size=32, bits=4)
    with pytest.raises(ValueError, match=r"embed_tokens\.scales: the model is quantized"):
        export.write_gguf(tmp_path / "q.gguf", model, config, source_fields)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_llama_cpp_runs_the_export_like_mlx(exported, adapters, tokenizer):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it "
                                    "builds from source: pip install llama-cpp-python)")
    from mlx_lm.generate import generate_step

    llm = llama_cpp.Llama(model_path=str(exported), n_ctx=128, logits_all=True, verbose=False,
                          n_threads=1, seed=0)
    prompt = prompt_tokens(tokenizer, DRAFT, tiny_cfg().system_prompt)
    text = tokenizer.decode(prompt)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt
    llm.eval(prompt)
    model, _, _ = export.fused_humanizer(tiny_cfg(), "sft+dpo")
    ours = model(mx.array(prompt)[None])[0]
    theirs = mx.array(np.asarray(llm.scores[:len(prompt)], dtype=np.float32))
    # llama.cpp keeps its KV cache in f16: measured 4e-4 here (1e-3 on the real 135M model)
    assert relative_error(theirs, ours) < 1e-3
    llm.reset()
    greedy = [t for _, t in zip(range(8), llm.generate(prompt, temp=0.0, top_k=1,
                                                        repeat_penalty=1.0))]
    expected = [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=8,
                                                 sampler=lambda lp: mx.argmax(lp, axis=-1))]
    assert greedy == expected
