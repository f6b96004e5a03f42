"""Load the language model of a checkpoint (either layout of its family) for text inference.

Only text tensors are read ("conditional parameter loading"): the model is built on the meta
device, the text tensors are read shard by shard and assigned, and the non-persistent buffers
(RoPE frequencies, embedding scales) are initialized by transformers' own `_init_weights`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from matlab.arch.facts import ArchFacts, facts_from_checkpoint
from matlab.core.memory import AUTO, check_model_fits, choose_dtype
from matlab.errors import CheckpointError, InputError, shown_value
from matlab.io.reader import CheckpointFiles, TensorInfo
from matlab.io.resolve import resolve_checkpoint
from matlab.plan import SlicePlan
from matlab.slicing.adapters import cut_adapter, quiet_peft
from matlab.util.dtypes import RUN_DTYPES, torch_dtype


@dataclass
class LoadedModel:
    """A text model ready to run, with the facts of its (text-layout) architecture."""

    model: PreTrainedModel  # the family's causal LM (Gemma 3n: Gemma3nForCausalLM)
    facts: ArchFacts  # of the text model, in the text-only layout
    directory: Path
    tokenizer: object | None
    device: torch.device
    dtype: torch.dtype
    # Round trips of the weights through weight formats (`matlab.formats.cache.FormatCache`),
    # made on the first submodel that names formats and kept for the next.
    format_cache: object | None = field(default=None, repr=False)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def empty_model(facts: ArchFacts, dtype: torch.dtype) -> PreTrainedModel:
    """A text model whose parameters are on the meta device and whose buffers are real (CPU)."""
    # Parameters stay on the meta device, so initializing them is wasted work (a third of an
    # elastic build on nano); transformers' own switch turns the initializers off.
    with _default_dtype(dtype), torch.device("meta"), no_init_weights():
        model = facts.family.text_model(facts.text_config)
    for module in model.modules():
        if not module._buffers:
            continue
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.empty_like(buffer, device="cpu")
        facts.family.init_buffers(model, module)
    model.config._attn_implementation = "sdpa"
    return model


def keep_on_cpu(module: torch.nn.Module, device: torch.device) -> None:
    """Run `module` on the CPU inside a model on `device`: its inputs go to the CPU and its
    outputs to `device`, per batch. Hooks rather than a wrapper keep the parameter names the
    plan and the elastic submodels look for."""
    module.register_forward_pre_hook(lambda _, args: tuple(arg.to("cpu") for arg in args))
    module.register_forward_hook(lambda _, args, output: output.to(device, non_blocking=True))


# Bytes read through one memory map before it is closed, when tensors are copied out of it.
COPY_BATCH_BYTES = 1 << 30


def _read_text_tensors(files: CheckpointFiles, facts: ArchFacts, wanted: set[str],
                       dtype: torch.dtype, mapped: bool = True) -> dict[str, torch.Tensor]:
    """Text tensors by their `gemma3n_text` names. On the CPU, safetensors returns tensors
    backed by the file's memory map when no dtype conversion is needed. With `mapped` False,
    every tensor but the tables read by rows is copied into the process's own memory, through
    maps closed every COPY_BATCH_BYTES: freeing one of them then frees its memory (a mapped
    tensor's pages stay resident, and counted, while any tensor of its map lives)."""
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, TensorInfo]]] = {}
    for name, info in files.tensors.items():
        target = facts.family.text_only_name(name, facts.is_multimodal)  # None: audio and vision, never read
        if target in wanted:
            by_file.setdefault(info.file, []).append((target, info))
    kept_mapped = {facts.family.text_prefix + facts.family.ple_table}
    for path, entries in by_file.items():  # one shard open at a time
        copied = [] if mapped else [entry for entry in entries if entry[0] not in kept_mapped]
        with safe_open(path, framework="pt") as handle:
            for target, info in entries:
                if (target, info) not in copied:
                    state[target] = handle.get_tensor(info.name).to(dtype)
        while copied:
            batch, size = [], 0
            while copied and (not batch or size + copied[0][1].nbytes <= COPY_BATCH_BYTES):
                batch.append(copied.pop(0))
                size += batch[-1][1].nbytes
            with safe_open(path, framework="pt") as handle:
                for target, info in batch:
                    tensor = handle.get_tensor(info.name)
                    state[target] = tensor.to(dtype, copy=True) if tensor.dtype == dtype else tensor.to(dtype)
    return state


def load_model(checkpoint: str | Path, device: str = "cpu", dtype: str | torch.dtype = "float32",
               ple_on_cpu: bool = False, adapter: str | Path | None = None, mapped: bool = True) -> LoadedModel:
    """Load the language model of a checkpoint for text inference.

    Args:
        ple_on_cpu: keep `embed_tokens_per_layer` on the CPU (memory-mapped from the file when
            the dtype matches it) with the lookup done per batch, while the rest runs on `device`.
        adapter: a PEFT LoRA adapter trained on the checkpoint, merged into the weights (so every
            elastic submodel of the result is the slice of the fine-tuned model).
        mapped: False to copy the weights out of the files' memory maps (all but the per-layer
            table), for a run that frees weights as it goes (a formats search).
    """
    directory, facts, run_dtype, model = _unloaded(checkpoint, dtype, None if ple_on_cpu else str(device))
    files = CheckpointFiles(directory)
    tied = {f"{facts.family.head_prefix}weight"} if model.config.tie_word_embeddings else set()
    wanted = set(model.state_dict()) - tied
    state = _read_text_tensors(files, facts, wanted, run_dtype, mapped)
    missing = sorted(wanted - set(state))
    if missing:
        raise CheckpointError(f"{directory}: missing text tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    expected = model.state_dict()
    wrong = [f"{name} is {list(tensor.shape)}, config.json implies {list(expected[name].shape)}"
             for name, tensor in state.items() if tensor.shape != expected[name].shape]
    if wrong:
        raise CheckpointError(f"{directory}: tensor shapes disagree with config.json ({'; '.join(wrong[:3])}"
                              f"{f'; and {len(wrong) - 3} more' if len(wrong) > 3 else ''}); the weights and "
                              "config.json come from different models")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if adapter is not None:
        model = _merged(model, Path(adapter), files, facts)
    target = torch.device(device)
    if ple_on_cpu and target.type != "cpu":
        owner_name, _, attribute = facts.family.ple_module.rpartition(".")
        owner = model.get_submodule(owner_name)
        ple = getattr(owner, attribute)
        setattr(owner, attribute, None)  # so that moving the model leaves the table where it is
        model.to(target)
        setattr(owner, attribute, ple)
        keep_on_cpu(ple, target)
    else:
        model.to(target)
    model.tie_weights()  # moving to the meta device unties them
    model.eval()
    return LoadedModel(model, facts.text_only(), directory, load_tokenizer(directory), target, run_dtype)


def _merged(model: PreTrainedModel, adapter: Path, files: CheckpointFiles, facts: ArchFacts) -> PreTrainedModel:
    """`model` with the LoRA adapter merged in by PEFT, the adapter's names first mapped to the
    text model's (an adapter trained on the multimodal class names `model.language_model.*`)."""
    from peft import get_peft_model, set_peft_model_state_dict

    # Checked whole (config against tensors, tensors against the model) before PEFT builds anything.
    sliced = cut_adapter(adapter, files, SlicePlan.identity(facts), text_only=True)
    with quiet_peft():
        try:
            peft_model = get_peft_model(model, sliced.config)
            result = set_peft_model_state_dict(peft_model, sliced.tensors)
        except (ValueError, RuntimeError, KeyError) as error:  # what the checks above did not foresee
            raise InputError(f"--adapter {adapter}: PEFT cannot apply it to this model "
                             f"({shown_value(str(error))}); an adapter for another base model?") from None
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise InputError(f"--adapter {adapter}: {len(unexpected)} of its tensors fit no module of the model "
                             f"(first: {unexpected[0]}); an adapter for another base model?")
        return peft_model.merge_and_unload()


def load_shapes(checkpoint: str | Path, dtype: str | torch.dtype = "float32") -> LoadedModel:
    """The model with its parameters on the meta device and none read: shapes, costs and the
    tokenizer, for a process that plans work others run (a search's driver with workers)."""
    directory, facts, run_dtype, model = _unloaded(checkpoint, dtype)
    CheckpointFiles(directory)  # the weights' headers are checked here, before the workers read them
    model.tie_weights()
    return LoadedModel(model.eval(), facts.text_only(), directory, load_tokenizer(directory), torch.device("meta"),
                       run_dtype)


def _unloaded(checkpoint: str | Path, dtype: str | torch.dtype, device: str | None = None):
    """(directory, checkpoint facts, torch dtype, the text model with meta parameters). With a
    `device`, the model at that dtype must fit in what the device has available ("auto" picks
    float32 where it fits, else bfloat16)."""
    if isinstance(dtype, str) and dtype not in (*RUN_DTYPES, AUTO):
        raise InputError(f"--dtype {dtype}: choose one of {', '.join(RUN_DTYPES)} or {AUTO}")
    directory = resolve_checkpoint(checkpoint)
    if isinstance(dtype, str) and device is not None:
        dtype = choose_dtype(directory, dtype, device)
        check_model_fits(directory, dtype, device)
    run_dtype = torch_dtype("float32" if dtype == AUTO else dtype) if isinstance(dtype, str) else dtype
    facts = facts_from_checkpoint(directory)
    return directory, facts, run_dtype, empty_model(facts.text_only(), run_dtype)


def load_tokenizer(directory: Path):
    """The checkpoint's own tokenizer, or None if it ships none (never a hub lookup)."""
    if not any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)
