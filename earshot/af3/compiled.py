"""A cheap decode step: a static KV cache, optionally compiled with CUDA graphs.

Eager decoding with transformers' dynamic cache spends most of a GPU decode step in Python
and kernel launches (bench/results/gpu_af3_h200.json: 55.8 ms per step at batch 1 and
54.6 ms at batch 32, about 6 % of what memory bandwidth allows). A static cache gives every
step the same tensor shapes, which lets ``torch.compile(mode="reduce-overhead")`` capture
the step as CUDA graphs and replay it with one launch.

The option only changes how ``generate`` runs, never what it computes: greedy output on the
same batch must equal eager output (tested on CPU for the static cache, on a GPU for the
compiled step; see docs/triton.md). It is applied through ``AF3Runtime.decode_kwargs``,
which the runtime merges into every ``generate`` call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

from earshot.errors import ConfigError

if TYPE_CHECKING:
    from earshot.af3.runtime import AF3Runtime

DecodeMode = Literal["eager", "static", "compiled"]
DECODE_MODES: tuple[str, ...] = get_args(DecodeMode)


def decode_kwargs(mode: str, *, device: str, max_cache_len: int | None = None) -> dict[str, Any]:
    """``generate`` keyword arguments for a decode mode.

    - ``eager``: transformers' default (dynamic cache, no compilation).
    - ``static``: a static KV cache without compilation (the shapes the compiled step uses;
      runs anywhere, which is how CPU tests check that the cache alone changes nothing).
    - ``compiled``: static cache + the decode step compiled with CUDA graphs. CUDA only:
      compiling on CPU takes tens of seconds and gains nothing.

    ``max_cache_len`` sizes the cache for the longest call expected (prompt + new tokens), so
    later calls reuse one cache and one compiled graph instead of recompiling when a longer
    prompt arrives. Without it transformers grows the cache to the longest call seen so far.
    """
    if mode not in DECODE_MODES:
        raise ConfigError(
            f"decode mode {mode!r} is not one of {', '.join(DECODE_MODES)}", code="bad_decode_mode"
        )
    if mode == "eager":
        return {}
    kwargs: dict[str, Any] = {"cache_implementation": "static"}
    if max_cache_len is not None:
        kwargs["max_cache_len"] = int(max_cache_len)
    if mode == "static":
        kwargs["disable_compile"] = True
        return kwargs
    if not device.startswith("cuda"):
        raise ConfigError(
            f"decode mode 'compiled' needs a CUDA device (this runtime is on {device}); "
            "use 'static' or 'eager'",
            code="bad_decode_mode",
        )
    from transformers import CompileConfig

    # fullgraph: a graph break would silently fall back to eager and hide the cost.
    kwargs["compile_config"] = CompileConfig(fullgraph=True, mode="reduce-overhead")
    return kwargs


def apply_decode_mode(runtime: AF3Runtime, mode: str, *, max_cache_len: int | None = None) -> None:
    """Switch a loaded runtime's decode step (the hook: ``runtime.decode_kwargs``)."""
    runtime.decode_kwargs = decode_kwargs(mode, device=runtime.device, max_cache_len=max_cache_len)
