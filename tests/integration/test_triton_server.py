"""The model repository on a real tritonserver (CPU variant, tiny checkpoint).

Ensembles over gRPC and HTTP, the voice path, streaming, bad audio, and the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype
from typer.testing import CliRunner

from earshot.af3.chat import Turn
from earshot.audio.synth import tone_with_silences
from earshot.config import Settings
from earshot.engines.base import Ask
from earshot.engines.triton import TritonEngine
from earshot.errors import InputError
from earshot.triton import protocol as p
from earshot.triton.repository import default_repository, get_parameter, prepare_repository, set_parameter
from earshot.triton.server import TritonServer, free_port, port_in_use

PROMPTS = ["Transcribe the input speech.", "Describe the audio in one sentence."]


def _inputs(module: object, **arrays: np.ndarray) -> list[object]:
    out = []
    for name, arr in arrays.items():
        tensor = module.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(arr)
        out.append(tensor)
    return out


def _request(seconds: float = 4.0, max_new_tokens: int = 8) -> dict[str, np.ndarray]:
    return {
        p.AUDIO: tone_with_silences(seconds, [(1.0, 1.5)]).reshape(1, -1),
        p.PROMPTS: np.array([[s.encode() for s in PROMPTS]], dtype=np.object_),
        p.MAX_NEW_TOKENS: np.array([[max_new_tokens]], dtype=np.int32),
    }


def test_cpu_variant_rewrites_kind_and_weights(tmp_path: Path) -> None:
    repo = prepare_repository(default_repository(), tmp_path / "repo", cpu=True, model_path="s3://bucket/af3/")
    llm = (repo / "af3_llm" / "config.pbtxt").read_text()
    assert "KIND_GPU" not in llm and "KIND_CPU" in llm
    assert get_parameter(llm, p.PARAM_MODEL_PATH) == "s3://bucket/af3/"
    shipped = (default_repository() / "af3_llm" / "config.pbtxt").read_text()
    assert "KIND_GPU" in shipped and get_parameter(shipped, p.PARAM_MODEL_PATH) == "${EARSHOT_MODEL_PATH}"
    # memory bounds only: CPU attention masks are rows x L x L floats
    assert get_parameter(shipped, p.PARAM_MAX_BATCH_TOKENS) == "262144"
    assert get_parameter(llm, p.PARAM_MAX_BATCH_TOKENS) == "8192"


def test_server_command_binds_every_listener_to_the_given_address(tmp_path: Path) -> None:
    from earshot.triton.server import TritonInstall

    install = TritonInstall(tmp_path)  # command() only names paths inside it
    default = TritonServer(tmp_path, install=install).command()
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(default)
    pod = TritonServer(tmp_path, host="0.0.0.0", grpc_port=9001, install=install)
    assert "--grpc-address=0.0.0.0" in pod.command() and pod.grpc_url == "127.0.0.1:9001"


def test_ensemble_over_grpc_and_http_agree(triton_server: TritonServer) -> None:
    req = _request()
    g = grpcclient.InferenceServerClient(triton_server.grpc_url)
    h = httpclient.InferenceServerClient(triton_server.http_url)
    by_grpc = g.infer(p.ENSEMBLE, _inputs(grpcclient, **req))
    by_http = h.infer(p.ENSEMBLE, _inputs(httpclient, **req))
    texts = by_grpc.as_numpy(p.TEXT)
    assert texts.shape == (1, len(PROMPTS))
    assert all(isinstance(t, bytes) and t for t in texts.reshape(-1))
    assert by_http.as_numpy(p.TEXT).tolist() == texts.tolist()
    assert by_grpc.as_numpy(p.THINK_ADAPTER).tolist() == [[True]]  # the tiny checkpoint has one


def test_text_only_llm_and_stage_by_stage_equals_ensemble(triton_server: TritonServer) -> None:
    """af3_llm alone (the reduce step's text-only call) and af_whisper -> af3_llm by hand."""
    g = grpcclient.InferenceServerClient(triton_server.grpc_url)
    req = _request()
    text_only = g.infer(p.LLM, _inputs(grpcclient, prompts=req[p.PROMPTS], max_new_tokens=req[p.MAX_NEW_TOKENS]))
    assert text_only.as_numpy(p.TEXT).shape == (1, len(PROMPTS))

    embeds = g.infer(p.ENCODER, _inputs(grpcclient, audio=req[p.AUDIO])).as_numpy(p.AUDIO_EMBEDS)
    assert embeds.shape[0] == 1 and embeds.shape[1] == 100  # 25 audio tokens per second
    staged = g.infer(
        p.LLM,
        _inputs(grpcclient, prompts=req[p.PROMPTS], audio_embeds=embeds, max_new_tokens=req[p.MAX_NEW_TOKENS]),
    )
    fused = g.infer(p.ENSEMBLE, _inputs(grpcclient, **req))
    assert staged.as_numpy(p.TEXT).tolist() == fused.as_numpy(p.TEXT).tolist()


def test_voice_ensemble_returns_audio(triton_server: TritonServer) -> None:
    g = grpcclient.InferenceServerClient(triton_server.grpc_url)
    result = g.infer(p.VOICE_ENSEMBLE, _inputs(grpcclient, **_request()))
    wave = result.as_numpy(p.WAVEFORM)
    n = int(result.as_numpy(p.SAMPLES)[0, 0])
    rate = int(result.as_numpy(p.SAMPLE_RATE)[0, 0])
    assert wave.dtype == np.float32 and wave.shape[0] == 1 and n == wave.shape[1]
    assert rate == 22050 and n > rate * 0.2  # eSpeak NG speaks at 22.05 kHz
    assert 0 < float(np.abs(wave).max()) <= 1.0
    assert result.as_numpy(p.VOICE)[0, 0].decode().startswith("espeak-ng:")
    assert result.as_numpy(p.TEXT).shape == (1, len(PROMPTS))


def test_streaming_is_incremental_and_ends_with_final_flag(triton_server: TritonServer) -> None:
    audio = tone_with_silences(3.0)
    responses: list[tuple[float, str, bool]] = []
    errors: list[object] = []

    def on_response(result: object, error: object) -> None:
        if error is not None:
            errors.append(error)
            return
        responses.append(
            (
                time.monotonic(),
                result.as_numpy(p.TEXT)[0].decode(),  # type: ignore[attr-defined]
                bool(result.as_numpy(p.FINAL)[0]),  # type: ignore[attr-defined]
            )
        )

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    client.start_stream(callback=on_response)
    client.async_stream_infer(
        p.LLM_STREAM,
        _inputs(
            grpcclient,
            prompt=np.array([PROMPTS[0].encode()], dtype=np.object_),
            audio=audio,
            max_new_tokens=np.array([12], dtype=np.int32),
        ),
    )
    deadline = time.monotonic() + 60
    while not (responses and responses[-1][2]) and not errors and time.monotonic() < deadline:
        time.sleep(0.02)
    client.stop_stream()
    assert not errors, errors
    pieces = [r for r in responses if not r[2]]
    assert len(pieces) >= 2, responses  # several responses, not one blob at the end
    assert [r[2] for r in responses] == [False] * (len(responses) - 1) + [True]
    assert responses[0][0] < responses[-1][0]
    assert all(r[1] for r in pieces)

    engine = TritonEngine(Settings(triton_url=triton_server.grpc_url, max_new_tokens=12))
    streamed = "".join(r[1] for r in responses)
    assert streamed == engine.generate([Ask(PROMPTS[0], audio=0)], audios=[audio])[0].text
    turn = [Turn("user", PROMPTS[0], audio=1)]
    assert "".join(engine.chat_stream(turn, [audio])) == streamed


@pytest.mark.parametrize(
    ("samples", "code"), [(0, "empty_audio"), (16000 * 600 + 1600, "audio_too_long")]
)
def test_bad_audio_is_a_clear_error_and_the_server_stays_healthy(
    triton_server: TritonServer, samples: int, code: str
) -> None:
    g = grpcclient.InferenceServerClient(triton_server.grpc_url)
    bad = np.zeros((1, samples), dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        g.infer(p.ENCODER, _inputs(grpcclient, audio=bad))
    assert "INVALID_ARGUMENT" in str(info.value.status())
    assert f"[earshot:input:{code}]" in info.value.message()
    assert ("empty" if samples == 0 else "at most 600 s") in info.value.message()

    engine = TritonEngine(Settings(triton_url=triton_server.grpc_url, max_new_tokens=4))
    with pytest.raises(InputError) as err:
        engine.generate([Ask("Describe.", audio=0)], audios=[bad[0]])
    assert err.value.code == code

    assert g.is_server_ready() and g.is_model_ready(p.ENCODER)
    assert len(engine.generate([Ask("Describe.", audio=0)], audios=[tone_with_silences(2.0)])) == 1


def test_cli_health_and_models_report_ready_models_and_a_down_server(triton_server: TritonServer) -> None:
    from services.cli.main import app

    runner = CliRunner()
    health = runner.invoke(app, ["triton", "health", "--url", triton_server.grpc_url, "--json"])
    assert health.exit_code == 0, health.output
    report = json.loads(health.stdout)
    assert report["ready"] and set(report["models"]) == set(p.ALL_MODELS) and all(report["models"].values())

    models = runner.invoke(app, ["triton", "models", "--url", triton_server.grpc_url, "--json"])
    assert models.exit_code == 0, models.output
    assert {(m["name"], m["state"]) for m in json.loads(models.stdout)} == {(n, "READY") for n in p.ALL_MODELS}

    down = runner.invoke(app, ["triton", "health", "--url", f"127.0.0.1:{free_port()}", "--json"])
    assert down.exit_code == 1 and json.loads(down.stdout)["ready"] is False


def _tiny_vits(out: Path) -> Path:
    """A random VITS (text-to-speech) small enough to load in a second; its speech is noise."""
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    out.mkdir(parents=True)
    vocab = {c: i for i, c in enumerate(["<pad>", *" abcdefghijklmnopqrstuvwxyz.,'-"])}
    (out / "vocab.json").write_text(json.dumps(vocab))
    VitsTokenizer(str(out / "vocab.json"), language=None, add_blank=True, phonemize=False).save_pretrained(out)
    config = VitsConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
        flow_size=16, spectrogram_bins=17, upsample_initial_channel=16, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        prior_encoder_num_flows=1, prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1, duration_predictor_filter_channels=16, depth_separable_num_layers=1,
        sampling_rate=16000,
    )
    VitsModel(config).save_pretrained(out)
    return out


def test_cli_serve_runs_in_the_foreground_with_a_neural_voice(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`earshot triton serve --cpu` on a one-model repository: tts with a transformers voice."""
    repo = tmp_path / "repo"
    shutil.copytree(default_repository() / "tts", repo / "tts")
    cfg = repo / "tts" / "config.pbtxt"
    voice_dir = _tiny_vits(tmp_path / "vits")
    cfg.write_text(set_parameter(cfg.read_text(), p.PARAM_NEURAL_VOICE_PATH, str(voice_dir)))
    http, grpc, metrics = free_port(), free_port(), free_port()
    cmd = [
        sys.executable, "-m", "services.cli.main", "triton", "serve", "--cpu",
        "--model-path", str(tiny_model_dir), "--model-repository", str(repo),
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    lines: list[str] = []
    # Read the CLI's output as it comes: the test acts on the CLI's own "ready" claim, not on
    # the server's, so a CLI that says ready too early (or never) fails here.
    reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not any("ready" in line for line in lines):
            time.sleep(0.25)
        assert any("ready" in line for line in lines), "".join(lines)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        assert client.is_model_ready(p.TTS)
        text = np.array([["Hello, naïve café."]], dtype=np.object_)
        spoken = client.infer(p.TTS, _inputs(grpcclient, text=text))
        assert int(spoken.as_numpy(p.SAMPLES)[0, 0]) > 0
        assert int(spoken.as_numpy(p.SAMPLE_RATE)[0, 0]) == 16000
        assert spoken.as_numpy(p.VOICE)[0, 0].decode() == "transformers:vits"
        # Every listener on loopback only: 127.0.0.2 is this machine too, but not the bound
        # address (tritonserver alone would bind 0.0.0.0 and answer there).
        for port in (http, grpc, metrics):
            assert port_in_use(port, "127.0.0.1") and not port_in_use(port, "127.0.0.2"), port
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    # Ctrl-C stopped the server itself, not only the CLI: its listeners are closed.
    assert not port_in_use(grpc, "127.0.0.1"), out


def _stats(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(executions, inferences) of a model: fewer executions than inferences = batched."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("execution_count", 0)), int(stats.get("inference_count", 0))


def test_concurrent_requests_decode_together_and_get_the_tokens_they_get_alone(triton_server: TritonServer) -> None:
    """Segments from several workers at once: the dynamic batcher hands af_whisper and af3_llm
    several requests per execute (one encoder forward, one batched generate), and each request
    gets exactly the tokens it gets alone (CPU float32: batching changes no token)."""
    from concurrent.futures import ThreadPoolExecutor

    engine = TritonEngine(Settings(triton_url=triton_server.grpc_url, max_new_tokens=16, triton_max_concurrency=8))
    clips = [tone_with_silences(4.0 + i * 3.0, [(1.0, 1.2 + i * 0.3)], seed=10 + i) for i in range(6)]
    asks = [Ask(text, audio=0) for text in PROMPTS]
    alone = [engine.generate(asks, audios=[c]) for c in clips]
    g = grpcclient.InferenceServerClient(triton_server.grpc_url)
    before = {m: _stats(g, m) for m in (p.ENCODER, p.LLM)}
    with ThreadPoolExecutor(max_workers=len(clips)) as pool:
        together = list(pool.map(lambda c: engine.generate(asks, audios=[c]), clips))
    after = {m: _stats(g, m) for m in (p.ENCODER, p.LLM)}
    assert together == alone
    for model in (p.ENCODER, p.LLM):
        executions, inferences = (after[model][i] - before[model][i] for i in (0, 1))
        assert inferences == len(clips) and executions < inferences, (model, executions)


def test_one_request_with_audios_of_different_lengths_equals_each_alone(triton_server: TritonServer) -> None:
    """Rows are zero-padded to the longest; ``audio_samples`` keeps the padding out of the
    encoder, and ``clip_tokens`` keeps padded embeddings out of the prompt."""
    g = grpcclient.InferenceServerClient(triton_server.grpc_url)
    clips = [tone_with_silences(s, [(0.4, 0.7)], seed=int(s)) for s in (1.5, 6.0, 3.0)]
    width = max(len(c) for c in clips)
    audio = np.zeros((len(clips), width), dtype=np.float32)
    for i, c in enumerate(clips):
        audio[i, : len(c)] = c
    prompts = np.array([[PROMPTS[0].encode()]] * len(clips), dtype=np.object_)
    limits = np.array([[6], [9], [4]], dtype=np.int32)
    together = g.infer(
        p.ENSEMBLE,
        _inputs(
            grpcclient, audio=audio, audio_samples=np.array([[len(c)] for c in clips], dtype=np.int32),
            prompts=prompts, max_new_tokens=limits,
        ),
    )
    embeds = g.infer(p.ENCODER, _inputs(grpcclient, audio=audio[:1, : len(clips[0])]))
    assert int(embeds.as_numpy(p.CLIP_TOKENS)[0, 0]) == 37  # 1.5 s (~25 tokens/s), not the padded 6 s
    for i, c in enumerate(clips):
        alone = g.infer(
            p.ENSEMBLE,
            _inputs(grpcclient, audio=c.reshape(1, -1), prompts=prompts[:1], max_new_tokens=limits[i : i + 1]),
        )
        for name in (p.TEXT, p.STOP_REASON, p.NEW_TOKENS, p.PROMPT_TOKENS):
            assert together.as_numpy(name)[i].tolist() == alone.as_numpy(name)[0].tolist(), (i, name)
    assert all(n <= limit for n, limit in zip(together.as_numpy(p.NEW_TOKENS).reshape(-1), [6, 9, 4], strict=True))
