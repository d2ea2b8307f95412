"""The sidecar end to end, over real loopback sockets: the real `aigc-bridge serve` in a subprocess (or a
Server on a thread where the test needs the in-process pipeline), driven by aigc_bridge.client."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from aigc_bridge.assets.writers import png_bytes
from aigc_bridge.client import Client, GenerateResponse, JobCancelled, ServerBusy, ServerUnavailable
from aigc_bridge.errors import AigcError
from aigc_bridge.protocol import new_id
from aigc_bridge.request import GenerateRequest
from aigc_bridge.server import Server, ServerConfig

from .conftest import cli
from .sidecar import SidecarProcess, running, wait_for

LONG = 500  # steps of a job that is still running when the test acts on it (cancelled before it ends)


@pytest.fixture(scope="module")
def shared(tiny_sd, tmp_path_factory):
    """One signed sidecar for the tests that do not change its state."""
    server = SidecarProcess(tmp_path_factory.mktemp("shared"), tiny_sd)
    yield server
    server.stop()


@pytest.fixture
def sidecars(tmp_path, tiny_sd):
    """Start dedicated sidecars: ``sidecars(*args)``; all are stopped after the test."""
    started: list[SidecarProcess] = []

    def start(*args, model=tiny_sd, **kwargs) -> SidecarProcess:
        started.append(SidecarProcess(tmp_path, model, *args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def in_thread(sd_pipeline):
    """A Server on a thread around the test process's own pipeline: ``in_thread(**config)``."""
    servers: list[Server] = []

    def start(**config) -> Server:
        server = Server(sd_pipeline, ServerConfig(bind="tcp://127.0.0.1:0", **config))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        server.join(10)


def local(sd_pipeline, prompt: str, **fields):
    return sd_pipeline.generate(GenerateRequest(prompt, **fields))


# --- results -----------------------------------------------------------------------------------------------


def test_round_trip_is_pixel_exact_with_the_same_metadata(shared, sd_pipeline) -> None:
    with shared.client() as client:
        remote = client.generate("weathered red brick wall", seed=123, steps=4, count=2, future_option=True)
    mine = local(sd_pipeline, "weathered red brick wall", seed=123, steps=4, count=2)

    assert remote.seeds == mine.seeds == [123, 124]
    for i in range(2):
        assert remote.images[i].mime == "image/png"
        assert remote.images[i].data == png_bytes(mine.images[i])  # the very same PNG file
        np.testing.assert_array_equal(remote.images[i].to_numpy(), mine.image_uint8(i))
        ours, theirs = dict(mine.metadata(i)), dict(remote.metadata(i))
        assert ours.pop("timings_ms").keys() == theirs.pop("timings_ms").keys()
        assert theirs == ours
    assert remote.request == mine.request.to_dict()
    assert remote.ignored_fields == ("future_option",)  # a newer option this server does not know is reported


def test_three_clients_at_once_each_get_their_own_images(shared, sd_pipeline) -> None:
    jobs = {"mossy stone": 11, "rusty metal plate": 22, "oak planks": 33}
    barrier = threading.Barrier(len(jobs))

    def run(prompt: str) -> GenerateResponse:
        with shared.client() as client:
            barrier.wait()
            return client.generate(prompt, seed=jobs[prompt], steps=3)

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = dict(zip(jobs, pool.map(run, jobs)))
    for prompt, response in results.items():
        assert response.request["prompt"] == prompt and response.seeds == [jobs[prompt]]
        expected = local(sd_pipeline, prompt, seed=jobs[prompt], steps=3)
        np.testing.assert_array_equal(response.images[0].to_numpy(), expected.image_uint8(0))


def test_cli_generate_through_the_sidecar_writes_the_same_png(shared, sd_pipeline, tmp_path) -> None:
    out = tmp_path / "brick.png"
    proc = cli("generate", "red brick", "-o", str(out), "--connection-file", str(shared.connection_file),
               "--seed", "5", "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    assert "seed 5" in proc.stdout and "sidecar" in proc.stdout
    assert out.read_bytes() == png_bytes(local(sd_pipeline, "red brick", seed=5, steps=2).images[0])


def test_requests_the_engine_refuses_fail_at_once_naming_the_field(shared) -> None:
    with shared.client() as client:
        for fields, where in (({"height": 66}, "height"), ({"width": 66}, "width")):
            start = time.monotonic()
            with pytest.raises(AigcError) as info:
                client.generate("x", steps=2, **fields)
            assert (info.value.code, info.value.field) == ("invalid_request", where)
            assert time.monotonic() - start < 5
        with pytest.raises(AigcError) as info:  # validated by the client before anything is sent
            client.submit("x", steps=0)
        assert info.value.field == "steps"


# --- de-duplication ----------------------------------------------------------------------------------------


def test_a_retry_with_the_same_request_key_never_runs_the_job_twice(shared) -> None:
    key = new_id()
    with shared.client(timeout=2) as first, shared.client(timeout=2) as second:
        done = first.generate("pebbles", steps=2, request_key=key)  # seed drawn by the server
        again = second.generate("pebbles", steps=2, request_key=key)
        assert again.seeds == done.seeds and again.images[0].data == done.images[0].data

        # Two attempts while it runs: the later one takes the stream over, both end with the one result.
        key2 = new_id()
        a = first.submit("gravel", steps=20, request_key=key2)
        b = second.submit("gravel", steps=20, request_key=key2)
        result_b = b.wait()
        assert a.wait().seeds == result_b.seeds

        with pytest.raises(AigcError) as info:  # the same key for other work is refused
            first.generate("not gravel", steps=2, request_key=key2)
        assert (info.value.code, info.value.field) == ("invalid_request", "header.request_key")
    assert len(shared.job_lines(key)) == 1
    assert len(shared.job_lines(key2)) == 1


# --- control while a job runs ------------------------------------------------------------------------------


def test_cancel_stops_within_one_step_and_the_next_job_runs(shared) -> None:
    with shared.client() as a, shared.client() as b, shared.client() as c:
        long = a.submit("endless dunes", steps=LONG, seed=1)
        wait_for(a, lambda: running(long))
        following = b.submit("small cobbles", steps=2, seed=2)
        wait_for(b, lambda: following.progress is not None or bool(following.poll()))

        status = c.status()  # answered while the engine is busy
        assert status["state"] == "busy"
        assert status["running"]["request_key"] == long.request_key
        assert status["queue"] == {"length": 1, "capacity": 8}
        assert status["model"]["id"] == "tiny-sd" and status["memory"]["rss_bytes"] > 0

        reply = c.cancel(long)
        assert reply["cancelled"] and reply["state"] == "running"
        with pytest.raises(JobCancelled) as info:
            long.wait()
        assert info.value.step - reply["step"] <= 1  # the flag is honoured after the step in progress
        assert info.value.step < LONG
        assert following.wait().seeds == [2]  # the server moved on to the next job

        assert c.cancel(long)["state"] == "finished"
        assert c.cancel(new_id())["state"] == "unknown"
    assert "error cancelled" in shared.job_lines(long.request_key)[0]


def test_previews_are_small_pngs_of_the_latents(in_thread) -> None:
    server = in_thread(preview_interval_s=0.0)
    with Client(server.endpoint) as client:
        events = list(client.generate_iter("lava", steps=3, seed=4))
    previews = [e.preview for e in events[:-1] if e.stage == "denoising"]
    assert len(previews) == 3 and all(previews)
    with Image.open(io.BytesIO(previews[-1])) as image:
        assert image.format == "PNG" and image.size == (32, 32)  # latent resolution of a 64 x 64 image
    assert isinstance(events[-1], GenerateResponse)


def test_a_full_queue_answers_busy_at_once(in_thread) -> None:
    server = in_thread(queue_size=1)
    with Client(server.endpoint) as a, Client(server.endpoint) as b:
        long = a.submit("slow", steps=LONG, seed=1)
        wait_for(a, lambda: running(long))
        queued = a.submit("waiting", steps=2, seed=2)
        wait_for(a, lambda: bool(queued.poll()) or queued.progress is not None)

        start = time.monotonic()
        with pytest.raises(ServerBusy) as info:
            b.generate("one too many", steps=2)
        assert time.monotonic() - start < 2.0
        assert info.value.retry_after_s > 0
        assert b.status()["running"]["request_key"] == long.request_key  # still running: nobody waited

        reply = b.cancel(queued)  # a queued job is taken out of the queue and answered at once
        assert (reply["cancelled"], reply["state"], reply["step"]) == (True, "queued", 0)
        with pytest.raises(JobCancelled) as info:
            queued.wait()
        assert info.value.step == 0
        room = b.submit("now there is room", steps=2, seed=3)  # the freed place is taken, not busy
        a.cancel(long)
        with pytest.raises(JobCancelled):
            long.wait()
        assert room.wait().seeds == [3]


def test_fifty_clients_four_requests_each_none_lost_or_duplicated(sidecars) -> None:
    server = sidecars("--queue", "8", "--preview-interval", "-1")
    outcomes: dict[str, object] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def client_run(n: int) -> None:
        with server.client(timeout=30) as client:
            barrier.wait()
            jobs = [(client.submit("tile", steps=2, seed=n * 4 + i), n * 4 + i) for i in range(4)]
            for job, seed in jobs:
                try:
                    outcome: object = job.wait()
                    assert outcome.seeds == [seed]  # type: ignore[union-attr]
                except AigcError as exc:
                    outcome = exc
                with lock:
                    assert job.request_key not in outcomes
                    outcomes[job.request_key] = outcome

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(client_run, range(50)))

    results = [k for k, v in outcomes.items() if isinstance(v, GenerateResponse)]
    refused = [v for v in outcomes.values() if isinstance(v, AigcError)]
    assert len(outcomes) == 200 and results
    assert all(isinstance(e, ServerBusy) for e in refused)
    lines = server.job_lines()
    assert len(lines) == len(results)  # each accepted job ran exactly once, each refusal ran nothing
    assert {line.split(" job ")[1].split()[0] for line in lines} == {k[:8] for k in results}

    with server.client() as client:  # and a drained shutdown exits cleanly
        assert client.shutdown(drain=True)["accepted"]
    assert server.wait() == 0
    assert not server.connection_file.exists()


# --- failures ----------------------------------------------------------------------------------------------


def test_kill_9_mid_job_is_a_clear_error_and_the_client_recovers(sidecars, tmp_path) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    first = sidecars("--key-file", str(key_file))
    client = first.client(timeout=2.0, retries=2)
    session = client.status()["session"]
    job = client.submit("doomed", steps=LONG)
    wait_for(client, lambda: running(job))

    first.signal(signal.SIGKILL)
    first.wait()
    start = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        job.wait()
    assert time.monotonic() - start < 2.0 + 1.0  # its timeout, plus scheduling slack on a busy box
    assert info.value.code == "unavailable" and first.endpoint in info.value.message

    second = sidecars("--key-file", str(key_file), bind=f"tcp://127.0.0.1:{first.port}")
    assert client.status()["session"] not in (None, session)  # the same object, a new server
    assert client.generate("phoenix", steps=2, seed=9).seeds == [9]
    client.close()
    second.stop()


def test_no_server_is_unavailable_within_the_timeout() -> None:
    with Client("tcp://127.0.0.1:9", timeout=0.6, retries=1) as client:
        start = time.monotonic()
        with pytest.raises(ServerUnavailable):
            client.status()
        assert time.monotonic() - start < 1.2


def test_sigterm_cancels_the_running_job_answers_the_queue_and_exits_0(sidecars) -> None:
    server = sidecars()
    with server.client() as client:
        long = client.submit("interrupted", steps=LONG)
        wait_for(client, lambda: running(long))
        queued = client.submit("never started", steps=2)
        wait_for(client, lambda: bool(queued.poll()) or queued.progress is not None)

        server.signal(signal.SIGTERM)
        with pytest.raises(JobCancelled):
            long.wait()
        with pytest.raises(AigcError) as info:
            queued.wait()
        assert info.value.code == "shutting_down"
    assert server.wait() == 0
    assert "server stopped" in server.log


def test_a_server_without_a_model_answers_but_refuses_to_generate() -> None:
    server = Server(None, ServerConfig(bind="tcp://127.0.0.1:0"))
    server.start()
    try:
        with Client(server.endpoint, timeout=5) as client:
            status = client.status()
            assert status["model"] is None and status["state"] == "ready"
            assert client.list_models() == [] and client.ping() < 5
            with pytest.raises(AigcError) as info:
                client.generate("anything")
            assert (info.value.code, info.value.field) == ("no_model", "model")
    finally:
        server.stop()
        server.join(10)


def test_polling_never_blocks_a_ui_timer_even_without_a_server() -> None:
    with Client("tcp://127.0.0.1:9", timeout=1.0, retries=1) as client:  # 0.5 s per attempt
        job, pending = client.submit("x", steps=2), client.send("status")
        start = time.monotonic()
        while not (job.done and pending.done):
            tick = time.monotonic()
            assert job.poll() == [] and pending.poll() in (True, False)
            assert time.monotonic() - tick < 0.2  # never waits for the server (an attempt is 0.5 s)
            time.sleep(0.01)  # the UI's timer interval, not a synchronisation
        assert isinstance(job.error, ServerUnavailable) and isinstance(pending.error, ServerUnavailable)
        assert job.result is None and time.monotonic() - start < 2.0


def test_non_blocking_requests_get_their_replies(in_thread) -> None:
    server = in_thread()
    with Client(server.endpoint) as client:
        pending = client.send("status")
        job = client.submit("glacier", steps=2, seed=8)

        def both_done() -> bool:
            pending.poll()
            job.poll()
            return pending.done and job.done

        wait_for(client, both_done)
        assert pending.reply["session"] == server.session and pending.error is None
        assert job.result.seeds == [8] and job.progress is not None


def test_the_client_imports_only_pyzmq_and_the_standard_library() -> None:
    code = "import aigc_bridge.client, sys; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert "zmq" in loaded
    assert not {"numpy", "PIL", "onnxruntime", "tokenizers", "torch"} & loaded  # Blender bundles it
    assert not {m for m in loaded if m.startswith("aigc_bridge.")} - {
        "aigc_bridge.client", "aigc_bridge.protocol", "aigc_bridge.request", "aigc_bridge.errors",
        "aigc_bridge.project_request",
        "aigc_bridge.input_image"}
